//! Criterion benches for the per-notification work that is not I/O:
//! form parsing, Alipay RSA2 verification (canonical string + RSA-2048),
//! WeChat v2 XML parsing and MD5 verification, WeChat v3 verification
//! (header RSA-2048 + AES-256-GCM resource) and the upstream HMAC. The
//! replay store is in `benches/store.rs`.
//!
//!     cargo bench --bench verify

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};

use callgate::body::Form;
use callgate::provider::alipay::Keys;
use callgate::secret::Secret;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/alipay")
        .join(name);
    std::fs::read(p).unwrap()
}

fn alipay(c: &mut Criterion) {
    let body = fixture("rsa2_trade_success.form");
    let keys = Keys::for_bench(
        "2021000000000001",
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alipay/alipay_public.pem"),
    )
    .unwrap();
    let form = Form::parse(&body).unwrap();
    c.bench_function("alipay/parse_form", |b| {
        b.iter(|| Form::parse(black_box(&body)).unwrap())
    });
    c.bench_function("alipay/verify_rsa2", |b| {
        b.iter(|| keys.verify(black_box(&form)).unwrap())
    });
    c.bench_function("alipay/parse_and_verify", |b| {
        b.iter(|| {
            keys.verify(&Form::parse(black_box(&body)).unwrap())
                .unwrap()
        })
    });
}

fn wechat_fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/wechat")
            .join(name),
    )
    .unwrap()
}

fn wechat(c: &mut Criterion) {
    use callgate::body::{JsonBody, XmlMap};
    use callgate::provider::{wechat_v2, wechat_v3};

    let body = wechat_fixture("v2_md5_pay.xml");
    let keys = wechat_v2::Keys::new(
        "1900000109",
        Some("wx2421b1c4370ec43b"),
        Secret::new(wechat_fixture("v2_api.key")),
    );
    let xml = XmlMap::parse(&body).unwrap();
    c.bench_function("wechat_v2/parse_xml", |b| {
        b.iter(|| XmlMap::parse(black_box(&body)).unwrap())
    });
    c.bench_function("wechat_v2/verify_md5", |b| {
        b.iter(|| keys.verify(black_box(&xml), 0).unwrap())
    });

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wechat");
    let expected: serde_json::Value =
        serde_json::from_slice(&wechat_fixture("expected.json")).unwrap();
    let sample = &expected["signed_samples"]["v3_pay.json"];
    let mut headers = http::HeaderMap::new();
    for (h, f) in [
        ("wechatpay-timestamp", "timestamp"),
        ("wechatpay-nonce", "nonce"),
        ("wechatpay-serial", "serial"),
        ("wechatpay-signature", "signature"),
    ] {
        headers.insert(h, sample[f].as_str().unwrap().parse().unwrap());
    }
    let keys = wechat_v3::Keys::new(
        "1900000109",
        &wechat_fixture("v3_api_v3.key"),
        vec![wechat_v3::PlatformKey::certificate(
            wechat_v3::load_certificate(&dir.join("platform_cert.pem")).unwrap(),
        )],
    )
    .unwrap();
    let raw = wechat_fixture("v3_pay.json");
    let now = callgate::replay::unix_now();
    c.bench_function("wechat_v3/parse_and_verify", |b| {
        b.iter(|| {
            keys.verify(&headers, &JsonBody::parse(black_box(&raw)).unwrap(), now)
                .unwrap()
        })
    });
}

fn alipay_md5(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alipay_md5");
    let body = std::fs::read(dir.join("md5_trade_success.form")).unwrap();
    let key = std::fs::read_to_string(dir.join("md5_key.txt")).unwrap();
    let keys = callgate::provider::alipay_md5::Keys::for_bench(
        "2088101122334455",
        key.trim_end().as_bytes(),
        false,
    );
    let form = Form::parse(&body).unwrap();
    c.bench_function("alipay_md5/verify", |b| {
        b.iter(|| keys.verify(black_box(&form)).unwrap())
    });
}

fn upstream_hmac(c: &mut Criterion) {
    let secret = Secret::new(b"0123456789abcdef0123456789abcdef".to_vec());
    let body = fixture("rsa2_trade_success.form");
    c.bench_function("forward/x_callgate_signature", |b| {
        b.iter(|| callgate::forward::signature(&secret, 1_795_312_800, black_box(&body)))
    });
}

criterion_group!(benches, alipay, alipay_md5, wechat, upstream_hmac);
criterion_main!(benches);
