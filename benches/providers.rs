//! Criterion benches for the per-notification work that is not I/O, one
//! group per provider, each step alone: `parse` (the body parser the
//! pipeline picks for the provider), `canonical` (the string the signature
//! covers), `decrypt` (where the platform encrypts), `verify` (everything
//! `Provider::verify` does on a parsed body: canonical string, digest or
//! RSA, decryption, field checks, building `Verified`), plus the primitive
//! each scheme spends most of its time in, and the upstream HMAC.
//!
//! Every notification is a committed fixture signed by an independent signer
//! (openssl, official SDK vectors: see `tests/fixtures/*/README.md`).
//! The replay store is in `benches/store.rs`, the whole flow in
//! `benches/pipeline.rs`.
//!
//!     cargo bench --bench providers [-- FILTER]

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;

use callgate::body::{self, Form, Format, JsonBody, Payload, XmlMap};
use callgate::provider::{Provider, bench, jdpay, unionpay, wechat_v2, wechat_v3};
use callgate::secret::Secret;

/// The allocator `callgate` itself runs on (`src/main.rs`), so that the
/// figures are the ones a request costs in the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn dir(provider: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(provider)
}

fn read(provider: &str, name: &str) -> Vec<u8> {
    std::fs::read(dir(provider).join(name)).unwrap()
}

fn headers(content_type: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
    h
}

/// `parse` and `verify` through the same dispatch the pipeline uses.
fn parse_and_verify(
    c: &mut Criterion,
    name: &str,
    provider: &Provider,
    headers: &HeaderMap,
    raw: &[u8],
    now: i64,
) -> Payload {
    let format = provider.kind().format();
    c.bench_function(&format!("{name}/parse"), |b| {
        b.iter(|| body::parse(format, headers, black_box(raw)).unwrap())
    });
    let payload = body::parse(format, headers, raw).unwrap();
    let body = bytes::Bytes::copy_from_slice(raw);
    provider.verify(headers, &body, &payload, now).unwrap();
    c.bench_function(&format!("{name}/verify"), |b| {
        b.iter(|| {
            provider
                .verify(headers, &body, black_box(&payload), now)
                .unwrap()
        })
    });
    payload
}

fn form(payload: &Payload) -> &Form {
    match payload {
        Payload::Form(f) => f,
        _ => unreachable!("a form provider"),
    }
}

fn alipay(c: &mut Criterion) {
    let raw = read("alipay", "rsa2_trade_success.form");
    let keys = callgate::provider::alipay::Keys::for_bench(
        "2021000000000001",
        &dir("alipay").join("alipay_public.pem"),
    )
    .unwrap();
    let provider = Provider::Alipay(keys);
    let h = headers("application/x-www-form-urlencoded; charset=utf-8");
    let payload = parse_and_verify(c, "alipay_rsa2", &provider, &h, &raw, 0);
    c.bench_function("alipay_rsa2/canonical", |b| {
        b.iter(|| bench::alipay_canonical(black_box(form(&payload))))
    });
}

fn alipay_md5(c: &mut Criterion) {
    let raw = read("alipay_md5", "md5_trade_success.form");
    let key = std::fs::read_to_string(dir("alipay_md5").join("md5_key.txt")).unwrap();
    let keys = callgate::provider::alipay_md5::Keys::for_bench(
        "2088101122334455",
        key.trim_end().as_bytes(),
        false,
    );
    let provider = Provider::AlipayMd5(keys);
    let h = headers("application/x-www-form-urlencoded");
    let payload = parse_and_verify(c, "alipay_md5", &provider, &h, &raw, 0);
    c.bench_function("alipay_md5/canonical", |b| {
        b.iter(|| bench::alipay_md5_canonical(black_box(form(&payload))))
    });
}

fn wechat_v2_keys() -> wechat_v2::Keys {
    wechat_v2::Keys::new(
        "1900000109",
        Some("wx2421b1c4370ec43b"),
        Secret::new(read("wechat", "v2_api.key")),
    )
}

fn wechat_v2(c: &mut Criterion) {
    let h = headers("text/xml");
    let provider = Provider::WechatV2(wechat_v2_keys());
    let now = 1_795_312_800;
    let md5 = read("wechat", "v2_md5_pay.xml");
    parse_and_verify(c, "wechat_v2_md5", &provider, &h, &md5, now);
    let hmac = read("wechat", "v2_hmac_pay.xml");
    let payload = parse_and_verify(c, "wechat_v2_hmac", &provider, &h, &hmac, now);
    let Payload::Xml(xml) = &payload else {
        unreachable!()
    };
    let key = read("wechat", "v2_api.key");
    c.bench_function("wechat_v2_hmac/canonical+hmac", |b| {
        b.iter(|| {
            wechat_v2::signature(
                black_box(xml).iter(),
                &key,
                wechat_v2::SignAlgo::HmacSha256,
                true,
            )
        })
    });
    let refund = read("wechat", "v2_refund.xml");
    let payload = parse_and_verify(c, "wechat_v2_refund", &provider, &h, &refund, now);
    let Payload::Xml(xml) = &payload else {
        unreachable!()
    };
    let req_info = xml.get("req_info").unwrap().to_owned();
    let keys = wechat_v2_keys();
    c.bench_function("wechat_v2_refund/decrypt", |b| {
        b.iter(|| bench::wechat_v2_decrypt(&keys, black_box(&req_info)).unwrap())
    });
}

fn wechat_v3_keys() -> wechat_v3::Keys {
    wechat_v3::Keys::new(
        "1900000109",
        &read("wechat", "v3_api_v3.key"),
        vec![wechat_v3::PlatformKey::certificate(
            wechat_v3::load_certificate(&dir("wechat").join("platform_cert.pem")).unwrap(),
        )],
    )
    .unwrap()
}

fn wechat_v3(c: &mut Criterion) {
    let expected: serde_json::Value =
        serde_json::from_slice(&read("wechat", "expected.json")).unwrap();
    let sample = &expected["signed_samples"]["v3_pay.json"];
    let mut h = headers("application/json");
    for (name, field) in [
        ("wechatpay-timestamp", "timestamp"),
        ("wechatpay-nonce", "nonce"),
        ("wechatpay-serial", "serial"),
        ("wechatpay-signature", "signature"),
    ] {
        h.insert(name, sample[field].as_str().unwrap().parse().unwrap());
    }
    let raw = read("wechat", "v3_pay.json");
    // The platform certificate is valid now (made with -days 3650).
    let now = callgate::clock::unix_now();
    let provider = Provider::WechatV3(wechat_v3_keys());
    parse_and_verify(c, "wechat_v3", &provider, &h, &raw, now);
    let body = JsonBody::parse(&raw).unwrap();
    let resource = body.value()["resource"].clone();
    let keys = wechat_v3_keys();
    c.bench_function("wechat_v3/decrypt", |b| {
        b.iter(|| bench::wechat_v3_decrypt(&keys, black_box(&resource)).unwrap())
    });
}

fn unionpay(c: &mut Criterion) {
    let d = dir("unionpay");
    let keys = || {
        unionpay::Keys::from_files(
            "777290058110097",
            Some((&d.join("root.pem"), &d.join("middle.pem"))),
            &[&d.join("sign.pem")],
        )
        .unwrap()
    };
    let provider = Provider::Unionpay(keys());
    let h = headers("application/x-www-form-urlencoded");
    // Inside the fixtures' certificates' validity (see unionpay.rs tests).
    let now = 1_795_316_400;
    // 5.1.0 carries its signing certificate, checked against the chain on
    // every notification; 5.0.0 names a configured one by certId.
    let v510 = read("unionpay", "v510_payment.form");
    let payload = parse_and_verify(c, "unionpay_510", &provider, &h, &v510, now);
    c.bench_function("unionpay_510/canonical", |b| {
        b.iter(|| bench::unionpay_canonical(black_box(form(&payload))))
    });
    let v500 = read("unionpay", "v500_payment.form");
    parse_and_verify(c, "unionpay_500", &provider, &h, &v500, now);
}

fn jdpay(c: &mut Criterion) {
    let d = dir("jdpay");
    let keys = || {
        jdpay::Keys::from_files("110000000001", &d.join("des.key"), &d.join("jd_public.pem"))
            .unwrap()
    };
    let provider = Provider::Jdpay(keys());
    let h = headers("text/xml");
    let raw = read("jdpay", "payment.xml");
    assert_eq!(provider.kind().format(), Format::JdXml);
    let payload = parse_and_verify(c, "jdpay", &provider, &h, &raw, 0);
    let Payload::JdXml(envelope) = &payload else {
        unreachable!()
    };
    let keys = keys();
    c.bench_function("jdpay/decrypt", |b| {
        b.iter(|| bench::jdpay_decrypt(&keys, black_box(&envelope.encrypt)).unwrap())
    });
    let plain = String::from_utf8(bench::jdpay_decrypt(&keys, &envelope.encrypt).unwrap()).unwrap();
    c.bench_function("jdpay/canonical", |b| {
        b.iter(|| bench::jdpay_signed_string(black_box(&plain)).unwrap())
    });
}

/// The primitives, on 1 KB, for comparison with the steps above.
fn primitives(c: &mut Criterion) {
    let secret = Secret::new(b"0123456789abcdef0123456789abcdef".to_vec());
    let kb = vec![b'a'; 1024];
    c.bench_function("primitive/x_callgate_signature_1k", |b| {
        b.iter(|| callgate::forward::signature(&secret, 1_795_312_800, black_box(&kb)))
    });
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"key");
    c.bench_function("primitive/hmac_sha256_1k", |b| {
        b.iter(|| aws_lc_rs::hmac::sign(&key, black_box(&kb)))
    });
    c.bench_function("primitive/md5_1k", |b| {
        use md5::Digest as _;
        b.iter(|| md5::Md5::digest(black_box(&kb)))
    });
    c.bench_function("primitive/xml_parse_wechat_v2", |b| {
        let raw = read("wechat", "v2_hmac_pay.xml");
        b.iter(|| XmlMap::parse(black_box(&raw)).unwrap())
    });
    // What an unsigned body may make the parser do before any signature
    // is checked: the most distinct fields it accepts, each tiny.
    let mut hostile = b"<xml>".to_vec();
    for i in 0..body::xml::MAX_ELEMENTS - 1 {
        hostile.extend_from_slice(format!("<f{i}>1</f{i}>").as_bytes());
    }
    hostile.extend_from_slice(b"</xml>");
    c.bench_function("primitive/xml_parse_most_fields", |b| {
        b.iter(|| XmlMap::parse(black_box(&hostile)).unwrap())
    });
    // The same for a form: distinct keys up to the default body limit.
    let mut form = Vec::new();
    let mut i = 0;
    while form.len() < 65_536 - 16 {
        form.extend_from_slice(format!("k{i}=1&").as_bytes());
        i += 1;
    }
    form.pop();
    c.bench_function("primitive/form_parse_64k_of_fields", |b| {
        b.iter(|| Form::parse(black_box(&form)).unwrap())
    });
}

criterion_group!(
    benches, alipay, alipay_md5, wechat_v2, wechat_v3, unionpay, jdpay, primitives
);
criterion_main!(benches);
