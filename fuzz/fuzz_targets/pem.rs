//! Key and certificate loading: the input is written to a file and handed
//! to every loader a rule file can reach (RSA public keys as PEM or bare
//! Base64, WeChat platform certificates, Alipay certificate mode with the
//! file as all three certificates, UnionPay root/middle/verify certificates,
//! JD's public key and 3DES key file).
#![no_main]

use callgate::provider::{RsaKey, alipay_cert, jdpay, unionpay, wechat_v3};
use callgate_fuzz::*;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("callgate-fuzz-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let file = scratch().join("input.pem");
    std::fs::write(&file, data).expect("write scratch file");
    let good_key = fixtures().join("jdpay/jd_public.pem");
    let des_key = fixtures().join("jdpay/des.key");
    let _ = RsaKey::from_file(&file);
    let _ = wechat_v3::load_certificate(&file);
    let _ = alipay_cert::load(
        &alipay_cert::CertFiles {
            alipay_cert: &file,
            alipay_root_cert: &file,
            app_cert: Some(&file),
        },
        now(),
    );
    let _ = unionpay::Keys::from_files("777290058110097", Some((&file, &file)), &[&file]);
    let _ = jdpay::Keys::from_files("110000000001", &des_key, &file);
    let _ = jdpay::Keys::from_files("110000000001", &file, &good_key);
});
