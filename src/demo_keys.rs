//! The public demo keys of `certs/dev/`, recognised by their content
//! wherever they were copied to. Part of loading (`config::load`): a
//! configuration that uses one still loads, with a warning for `check` and
//! the start-up log, because anyone can read these keys in the repository
//! and sign with them.
//!
//! Only SHA-256 digests are kept here, never the keys; a unit test
//! recomputes them from `certs/dev/`, so regenerating the demo keys
//! (`certs/dev/make.sh`) without updating this list fails the tests.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::load::{Located, Warning};

/// `certs/dev/` file name and SHA-256 (hex) of its content, one trailing
/// newline removed (as secret files are read).
const DEMO_KEYS: &[(&str, &str)] = &[
    (
        "alipay_md5.key",
        "145734b56f35f0dc9f1d8927d968d02fd4f2894e47e89c691cd1eb1cc6d5bb94",
    ),
    (
        "alipay_private.pem",
        "e65636d7ab7094a528ccf38b76bb7fb48ce201e11bdce90237ef4632153ebb93",
    ),
    (
        "alipay_public.pem",
        "eadb6f1d7ddff164fd78cca715e5e3f73aa76d8dcd9d7221e96f17431a2f9bbe",
    ),
    (
        "jdpay_des.key",
        "796974c2b4e944f3a9d636855e952062c82c4db538704b2d426e4a639ab11095",
    ),
    (
        "jdpay_private.pem",
        "117e8055d02555daa54286575fbe55ff81e65d42c9af996b68d95ae220c1b208",
    ),
    (
        "jdpay_public.pem",
        "d99189d4b14f566b0289b4e77e1f3704016fdc1c513818263120cf482b9940cb",
    ),
    (
        "server.crt",
        "2253512c943516820b30a72933329661ed38ac4480ad11b81309eb1d42a7210e",
    ),
    (
        "server.key",
        "0dcc23b8f204c2b42be38ef86a840f9afaeada1ed106dd0e7d6e229468c13649",
    ),
    (
        "unionpay_middle.pem",
        "93485d6f71e0fbf04a20f46fc3097b373e8fb105ab8031756918dc17f3a2d75e",
    ),
    (
        "unionpay_root.pem",
        "f01b118d8680dc5912f72c53cccbca1d6e819952e372e883872b8bd1714987d3",
    ),
    (
        "unionpay_sign.pem",
        "9732aa4c389a8bcb0576c8f1e6229cf873e9abb325f144d0ad874b099bda417d",
    ),
    (
        "unionpay_sign_key.pem",
        "e18bfce52af03a2ebb72f36382029c6c3f1e81cbb2d03c5e9432d65f09d6425e",
    ),
    (
        "upstream.secret",
        "6f9f777119c3628ebbd57b71d0d21a91480f5ad4f4abd6e54f5b808921f24964",
    ),
    (
        "wechat_v2_api.key",
        "7cfe3f838ded44e54ba4e2bf26e77540703b1c8a0cebadd3abf01180f5ecabdc",
    ),
    (
        "wechat_v3_api_v3.key",
        "7bd0d9f0423f9355e97d23278062fa757a20f9d7fc9221baff7ac26ce40a19dd",
    ),
    (
        "wechatpay_platform_cert.pem",
        "6786abbdb7df73748f553980eee5a73dde6cf684cd8f2ef2e644833427674d69",
    ),
    (
        "wechatpay_platform_private.pem",
        "d31ea9c0310aeb09de20d147a4dfd5cb130cfd04299a01ee35f04c63b3cd6d46",
    ),
    (
        "wechatpay_pub_private.pem",
        "298a83fb1afa7aef4dfd25bfd537d218bf6781f93b488c6900f09319b43e5ed5",
    ),
    (
        "wechatpay_pub_public.pem",
        "c6117194185cc144a5ae9b7bdf89625fc69da68172a885023e83baae65e8f636",
    ),
];

/// Larger files are not keys of ours: not read.
const MAX_KEY_BYTES: u64 = 64 * 1024;

/// The demo key `bytes` is a copy of (by content), if any.
pub fn demo_key_of(bytes: &[u8]) -> Option<&'static str> {
    let content = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let digest = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        content,
    ));
    DEMO_KEYS
        .iter()
        .find(|(_, d)| *d == digest)
        .map(|(name, _)| *name)
}

/// A warning, `PATH: warning: ...`, for every file of `files` that is one of
/// the demo keys. Directories and unreadable files are skipped (the loader
/// reports those that matter).
pub fn warnings(files: &[PathBuf]) -> Vec<Located<Warning>> {
    let mut out = Vec::new();
    for path in files {
        if let Some(name) = read_small(path).as_deref().and_then(demo_key_of) {
            out.push(Located {
                file: path.clone(),
                line: None,
                error: Warning(format!(
                    "a public demo key (a copy of certs/dev/{name}): anyone can read it in the repository and sign with it; use your own key or secret (README, per platform)"
                )),
            });
        }
    }
    out
}

fn read_small(path: &Path) -> Option<Vec<u8>> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_KEY_BYTES {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_KEY_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digests_are_those_of_certs_dev() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/dev");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "README.md" && n != "make.sh")
            .collect();
        names.sort();
        let listed: Vec<&str> = DEMO_KEYS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, listed, "certs/dev/ and DEMO_KEYS differ");
        for (name, _) in DEMO_KEYS {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            assert_eq!(demo_key_of(&bytes), Some(*name), "{name}: digest outdated");
        }
    }

    #[test]
    fn other_content_is_not_a_demo_key() {
        assert_eq!(demo_key_of(b"my own secret\n"), None);
        let mut key =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/dev/upstream.secret"))
                .unwrap();
        key.push(b'x');
        assert_eq!(demo_key_of(&key), None);
    }
}
