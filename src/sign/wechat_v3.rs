//! `callgate sign wechat_v3`: a WeChat Pay API v3 notification. The
//! resource is sealed with AEAD_AES_256_GCM under the APIv3 key (a fresh
//! 12-byte nonce, `original_type` as associated data), wrapped in a
//! notification body, and `timestamp\nnonce\nbody\n` signed with
//! SHA256withRSA, as the platform signs its `Wechatpay-*` headers.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use base64::Engine as _;

use super::{SignError, key_error, random_alnum, read_secret, rsa_sign_b64, shell_quote};

#[derive(Debug, clap::Args)]
pub struct WechatV3Args {
    /// PEM private key standing in for WeChat Pay's platform key.
    #[arg(long)]
    pub private_key: PathBuf,
    /// `Wechatpay-Serial`: the certificate serial or `PUB_KEY_ID_...` the route lists.
    #[arg(long)]
    pub serial: String,
    /// File holding the 32-byte APIv3 key (the route's `api_v3_key_file`).
    #[arg(long)]
    pub api_v3_key_file: PathBuf,
    /// The decrypted resource: a file holding JSON, or the JSON itself.
    #[arg(long, value_name = "FILE_OR_JSON")]
    pub resource_json: String,
    /// `event_type` (default TRANSACTION.SUCCESS, or REFUND.SUCCESS for a
    /// resource with `refund_status`).
    #[arg(long)]
    pub event_type: Option<String>,
    /// Print a curl command that POSTs the notification to URL.
    #[arg(long, value_name = "URL")]
    pub curl: Option<String>,
}

pub(super) fn run(args: &WechatV3Args) -> Result<String, SignError> {
    let text = match std::fs::read_to_string(&args.resource_json) {
        Ok(t) => t,
        Err(_) if args.resource_json.trim_start().starts_with('{') => args.resource_json.clone(),
        Err(e) => {
            return Err(SignError::Resource(format!(
                "`{}` is neither a readable file nor a JSON object: {}",
                args.resource_json,
                crate::load::io_reason(&e)
            )));
        }
    };
    let text = text.trim();
    let resource: serde_json::Value =
        serde_json::from_str(text).map_err(|e| SignError::Resource(format!("not JSON: {e}")))?;
    if !resource.is_object() {
        return Err(SignError::Resource("not a JSON object".to_owned()));
    }
    let refund = resource.get("refund_status").is_some();
    let event_type = args.event_type.clone().unwrap_or_else(|| {
        if refund {
            "REFUND.SUCCESS".to_owned()
        } else {
            "TRANSACTION.SUCCESS".to_owned()
        }
    });
    let (original_type, summary) = if event_type.starts_with("REFUND.") {
        ("refund", "退款成功")
    } else if event_type.starts_with("TRANSACTION.") {
        ("transaction", "支付成功")
    } else {
        ("", "callgate sample")
    };

    let key = read_secret(&args.api_v3_key_file)?;
    let gcm_nonce = random_alnum(12);
    let ciphertext = seal(
        text.as_bytes(),
        key.expose(),
        &gcm_nonce,
        original_type,
        &args.api_v3_key_file,
    )?;

    let now = chrono::Utc::now();
    let beijing = chrono::FixedOffset::east_opt(8 * 3600).ok_or(SignError::Sign)?;
    let create_time = now
        .with_timezone(&beijing)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
    let id = random_alnum(32).to_ascii_lowercase();
    let id = format!(
        "{}-{}-{}-{}-{}",
        &id[..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..]
    );
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let body = format!(
        "{{\"id\":{},\"create_time\":{},\"resource_type\":\"encrypt-resource\",\"event_type\":{},\"summary\":{},\"resource\":{{\"original_type\":{},\"algorithm\":\"AEAD_AES_256_GCM\",\"ciphertext\":{},\"associated_data\":{},\"nonce\":{}}}}}",
        q(&id),
        q(&create_time),
        q(&event_type),
        q(summary),
        q(original_type),
        q(&ciphertext),
        q(original_type),
        q(&gcm_nonce),
    );
    let timestamp = now.timestamp().to_string();
    let header_nonce = random_alnum(32);
    let signature = signature(
        &args.private_key,
        &timestamp,
        &header_nonce,
        body.as_bytes(),
    )?;
    let headers = [
        ("Content-Type", "application/json"),
        ("Wechatpay-Timestamp", timestamp.as_str()),
        ("Wechatpay-Nonce", header_nonce.as_str()),
        ("Wechatpay-Serial", args.serial.as_str()),
        ("Wechatpay-Signature", signature.as_str()),
        ("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048"),
    ]
    .iter()
    .map(|(k, v)| format!("-H {}", shell_quote(&format!("{k}: {v}"))))
    .collect::<Vec<_>>()
    .join(" ");
    Ok(match &args.curl {
        None => format!("{headers}\n{body}"),
        Some(url) => format!(
            "{} -X POST {headers} --data-binary {} {}",
            super::curl(url),
            shell_quote(&body),
            shell_quote(url)
        ),
    })
}

/// The resource sealed with the 32-byte APIv3 key: Base64 of ciphertext
/// and tag.
fn seal(
    plain: &[u8],
    key: &[u8],
    nonce: &str,
    associated_data: &str,
    key_file: &Path,
) -> Result<String, SignError> {
    if key.len() != 32 {
        return Err(key_error(key_file)(format!(
            "the APIv3 key must be 32 bytes, not {}",
            key.len()
        )));
    }
    let aead = UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| key_error(key_file)("not an AES-256 key".to_owned()))?;
    let nonce = Nonce::try_assume_unique_for_key(nonce.as_bytes()).map_err(|_| SignError::Sign)?;
    let mut sealed = plain.to_vec();
    aead.seal_in_place_append_tag(nonce, Aad::from(associated_data.as_bytes()), &mut sealed)
        .map_err(|_| SignError::Sign)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(&sealed))
}

/// `Wechatpay-Signature`: SHA256withRSA over `timestamp\nnonce\nbody\n`.
fn signature(
    private_key: &Path,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
) -> Result<String, SignError> {
    let message = [
        timestamp.as_bytes(),
        b"\n",
        nonce.as_bytes(),
        b"\n",
        body,
        b"\n",
    ]
    .concat();
    rsa_sign_b64(private_key, false, &message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::fixtures;

    /// Sealing a fixture's resource with its nonce gives the fixture's
    /// ciphertext (made by Python's `cryptography`: see
    /// tests/fixtures/wechat/README.md).
    #[test]
    fn seals_fixtures_as_python_did() {
        let expected: serde_json::Value =
            serde_json::from_slice(&fixtures::read("wechat", "expected.json")).unwrap();
        let key_file = fixtures::path("wechat", "v3_api_v3.key");
        let key = read_secret(&key_file).unwrap();
        for name in ["v3_pay.json", "v3_refund.json"] {
            let body: serde_json::Value =
                serde_json::from_slice(&fixtures::read("wechat", name)).unwrap();
            let r = &body["resource"];
            let plain = expected[name]["plain"].as_str().unwrap();
            let sealed = seal(
                plain.as_bytes(),
                key.expose(),
                r["nonce"].as_str().unwrap(),
                r["associated_data"].as_str().unwrap(),
                &key_file,
            )
            .unwrap();
            assert_eq!(sealed, r["ciphertext"].as_str().unwrap(), "{name}");
        }
    }

    /// The header signature is openssl's SHA256withRSA of the same message.
    #[test]
    fn signs_as_openssl_does() {
        let key = fixtures::path("wechat", "platform_private.pem");
        let body = fixtures::read("wechat", "v3_pay.json");
        let mut child = crate::test_tools::tool("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(b"1795312800\nnonce-1\n").unwrap();
            stdin.write_all(&body).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            signature(&key, "1795312800", "nonce-1", &body).unwrap(),
            base64::engine::general_purpose::STANDARD.encode(out.stdout)
        );
    }

    /// What the signer makes, the verifier accepts.
    #[test]
    fn the_verifier_accepts_what_it_signs() {
        let platform = crate::provider::wechat_v3::PlatformKey::certificate(
            crate::provider::wechat_v3::load_certificate(&fixtures::path(
                "wechat",
                "platform_cert.pem",
            ))
            .unwrap(),
        );
        let key = read_secret(&fixtures::path("wechat", "v3_api_v3.key")).unwrap();
        let keys =
            crate::provider::wechat_v3::Keys::new("1900000109", key.expose(), vec![platform])
                .unwrap();
        let args = WechatV3Args {
            private_key: fixtures::path("wechat", "platform_private.pem"),
            serial: "5157F09EFDC096DE15EBE81A47057A7232F1B8E1".to_owned(),
            api_v3_key_file: fixtures::path("wechat", "v3_api_v3.key"),
            resource_json: r#"{"mchid":"1900000109","out_trade_no":"CG1","transaction_id":"4200000000000000000000000001","trade_state":"SUCCESS"}"#.to_owned(),
            event_type: None,
            curl: None,
        };
        let out = run(&args).unwrap();
        let (header_line, body) = out.split_once('\n').unwrap();
        let mut headers = http::HeaderMap::new();
        for h in header_line.split(" -H ") {
            let h = h.trim_start_matches("-H ").trim_matches('\'');
            let (k, v) = h.split_once(": ").unwrap();
            headers.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let json = crate::body::JsonBody::parse(body.as_bytes()).unwrap();
        let v = keys
            .verify(&headers, &json, crate::clock::unix_now())
            .unwrap();
        assert_eq!(v.merchant(), "1900000109");
    }
}
