//! Criterion benches for the per-notification work that is not I/O:
//! form parsing, Alipay RSA2 verification (canonical string + RSA-2048)
//! and the upstream HMAC. The replay store is in `benches/store.rs`.
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

fn upstream_hmac(c: &mut Criterion) {
    let secret = Secret::new(b"0123456789abcdef0123456789abcdef".to_vec());
    let body = fixture("rsa2_trade_success.form");
    c.bench_function("forward/x_callgate_signature", |b| {
        b.iter(|| callgate::forward::signature(&secret, 1_795_312_800, black_box(&body)))
    });
}

criterion_group!(benches, alipay, upstream_hmac);
criterion_main!(benches);
