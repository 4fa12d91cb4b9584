//! Criterion benches for the per-notification work that is not I/O:
//! form parsing, Alipay RSA2 verification (canonical string + RSA-2048),
//! the replay store claim, and the upstream HMAC.
//!
//!     cargo bench --bench verify

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use callgate::body::Form;
use callgate::provider::alipay::Keys;
use callgate::replay::{Claim, Key, KeyKind, ReplayStore};
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

fn replay(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = ReplayStore::memory(1_000_000);
    let mut i = 0u64;
    c.bench_function("replay/claim_confirm_new_event", |b| {
        b.iter(|| {
            i += 1;
            let key = Key::new("shop-alipay", KeyKind::Event, &i.to_string());
            rt.block_on(async {
                if let Claim::New(t) = store.claim(key, Duration::from_secs(40)).await.unwrap() {
                    store
                        .confirm(key, t, Duration::from_secs(3600))
                        .await
                        .unwrap();
                }
            })
        })
    });
    let dup = Key::new("shop-alipay", KeyKind::Event, "dup");
    rt.block_on(async {
        if let Claim::New(t) = store.claim(dup, Duration::from_secs(40)).await.unwrap() {
            store
                .confirm(dup, t, Duration::from_secs(3600))
                .await
                .unwrap();
        }
    });
    c.bench_function("replay/claim_duplicate", |b| {
        b.iter(|| {
            rt.block_on(store.claim(black_box(dup), Duration::from_secs(40)))
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

criterion_group!(benches, alipay, alipay_md5, replay, upstream_hmac);
criterion_main!(benches);
