use std::path::{Path, PathBuf};

use http::HeaderValue;

use super::*;
use crate::ack::Outcome;

/// The committed samples are signed at 2026-11-22T02:00:00Z.
const NOW: i64 = 1_795_312_800;

/// `verify` takes the time only for certificate validity: the platform
/// certificate is made by `openssl req -x509 -days 3650` when the fixtures
/// are first generated, so it is valid now, not at a pinned instant.
fn now() -> i64 {
    crate::clock::unix_now()
}
const PUB_KEY_ID: &str = "PUB_KEY_ID_0119000001092026112200000000000001";
const PLATFORM_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wechat")
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn cert(name: &str) -> PlatformKey {
    PlatformKey::certificate(load_certificate(&fixtures().join(name)).unwrap())
}

fn keys() -> Keys {
    let api_v3 = std::fs::read(fixtures().join("v3_api_v3.key")).unwrap();
    Keys::new(
        "1900000109",
        &api_v3,
        vec![
            cert("platform_cert.pem"),
            PlatformKey::public_key(
                PUB_KEY_ID,
                RsaKey::from_file(&fixtures().join("pubkey_public.pem")).unwrap(),
            ),
            cert("expired_cert.pem"),
            cert("future_cert.pem"),
        ],
    )
    .unwrap()
}

/// Headers and body of a committed signed sample (`file` or `file#variant`).
fn sample(name: &str) -> (HeaderMap, JsonBody) {
    let e = expected();
    let s = &e["signed_samples"][name];
    let mut h = HeaderMap::new();
    for (header, field) in [
        ("wechatpay-timestamp", "timestamp"),
        ("wechatpay-nonce", "nonce"),
        ("wechatpay-serial", "serial"),
        ("wechatpay-signature", "signature"),
    ] {
        h.insert(
            header,
            HeaderValue::from_str(s[field].as_str().unwrap()).unwrap(),
        );
    }
    let file = name.split('#').next().unwrap();
    let body = JsonBody::parse(&std::fs::read(fixtures().join(file)).unwrap()).unwrap();
    (h, body)
}

fn verify(name: &str) -> Result<Verified, VerifyError> {
    let (h, b) = sample(name);
    keys().verify(&h, &b, now())
}

#[test]
fn certificate_and_public_key_entries_verify_side_by_side() {
    let e = expected();
    for (name, id) in [
        ("v3_pay.json", "EV-2026112200000001"),
        ("v3_pay_2.json", "EV-2026112200000002"),
        ("v3_refund.json", "EV-2026112200000003"),
    ] {
        let v = verify(name).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(v.event_id(), id);
        assert_eq!(v.signed_at(), NOW);
        assert_eq!(
            v.nonce(),
            e["signed_samples"][name]["nonce"].as_str(),
            "{name}"
        );
        assert_eq!(
            v.decrypted().unwrap(),
            e[name]["plain"].as_str().unwrap().as_bytes()
        );
        let Fields::Json { resource, .. } = v.fields() else {
            panic!()
        };
        assert_eq!(resource["mchid"], "1900000109");
    }
}

#[test]
fn refusals_name_their_reason() {
    assert!(matches!(
        verify("v3_other_mch.json").unwrap_err(),
        VerifyError::MerchantMismatch { field: "mchid", .. }
    ));
    let e = verify("v3_tampered_ciphertext.json").unwrap_err();
    assert!(matches!(e, VerifyError::Decrypt(_)), "{e:?}");
    assert_eq!(e.outcome(), Outcome::BadSignature);
    assert_eq!(
        verify("v3_algorithm_unknown.json").unwrap_err(),
        VerifyError::UnsupportedAlgorithm("AEAD_SM4_GCM".into())
    );
    assert_eq!(
        verify("v3_pay.json#wrong_key").unwrap_err(),
        VerifyError::SignatureMismatch
    );
}

#[test]
fn certificates_are_refused_outside_their_validity() {
    for name in ["v3_pay.json#expired", "v3_pay.json#future"] {
        let e = verify(name).unwrap_err();
        assert!(
            matches!(e, VerifyError::CertificateNotValid { .. }),
            "{name}: {e:?}"
        );
        assert_eq!(e.outcome(), Outcome::BadSignature);
    }
    // The same signature while the certificate was valid: the time is what
    // refuses it.
    let (h, b) = sample("v3_pay.json#expired");
    assert!(keys().verify(&h, &b, 1_590_969_600).is_ok()); // 2020-06-01
    // And the platform certificate itself after its ten years.
    let (h, b) = sample("v3_pay.json");
    assert!(matches!(
        keys().verify(&h, &b, now() + 20 * 365 * 86400),
        Err(VerifyError::CertificateNotValid { .. })
    ));
}

#[test]
fn serial_selects_the_key() {
    let k = keys();
    let (mut h, b) = sample("v3_pay.json");
    // Certificate serials compare as numbers, as wechatpay-java's BigInteger.
    for serial in [
        PLATFORM_SERIAL.to_ascii_lowercase(),
        format!("00{PLATFORM_SERIAL}"),
    ] {
        h.insert("wechatpay-serial", HeaderValue::from_str(&serial).unwrap());
        assert!(k.verify(&h, &b, now()).is_ok(), "{serial}");
    }
    for serial in ["ABCDEF", "PUB_KEY_ID_0000", "not hex", PUB_KEY_ID] {
        h.insert("wechatpay-serial", HeaderValue::from_str(serial).unwrap());
        let e = k.verify(&h, &b, now()).unwrap_err();
        if serial == PUB_KEY_ID {
            // Another known key: the signature is not by it.
            assert_eq!(e, VerifyError::SignatureMismatch);
        } else {
            assert!(
                matches!(e, VerifyError::KeySerialUnknown { .. }),
                "{serial}: {e:?}"
            );
        }
    }
}

#[test]
fn headers_are_checked() {
    let k = keys();
    let (h, b) = sample("v3_pay.json");
    for name in [
        "wechatpay-timestamp",
        "wechatpay-nonce",
        "wechatpay-serial",
        "wechatpay-signature",
    ] {
        let mut missing = h.clone();
        missing.remove(name);
        let e = k.verify(&missing, &b, now()).unwrap_err();
        assert!(matches!(e, VerifyError::MissingHeader(_)), "{name}: {e:?}");
        assert_eq!(e.outcome(), Outcome::BadSignature);
    }
    let mut typed = h.clone();
    typed.insert(
        "wechatpay-signature-type",
        HeaderValue::from_static("WECHATPAY2-SHA256-RSA2048"),
    );
    assert!(k.verify(&typed, &b, now()).is_ok());
    typed.insert(
        "wechatpay-signature-type",
        HeaderValue::from_static("WECHATPAY2-SM2-WITH-SM3"),
    );
    assert!(matches!(
        k.verify(&typed, &b, now()),
        Err(VerifyError::UnsupportedSignType(_))
    ));
    for ts in [
        "01795312800",
        "-1795312800",
        "1795312800.0",
        "17953128000000",
    ] {
        let mut bad = h.clone();
        bad.insert("wechatpay-timestamp", HeaderValue::from_str(ts).unwrap());
        // Not what was signed (tests/gateway_wechat.rs signs odd ones: 400).
        assert_eq!(
            k.verify(&bad, &b, now()).unwrap_err(),
            VerifyError::SignatureMismatch,
            "{ts}"
        );
    }
    // Another nonce or timestamp: the signature no longer covers it.
    let mut other = h.clone();
    other.insert(
        "wechatpay-nonce",
        HeaderValue::from_static("nonceCertPay0002"),
    );
    assert_eq!(
        k.verify(&other, &b, now()).unwrap_err(),
        VerifyError::SignatureMismatch
    );
}

#[test]
fn signature_probes_fail_cleanly() {
    let k = keys();
    let (mut h, b) = sample("v3_pay.json");
    for probe in [
        "WECHATPAY/SIGNTEST/",
        "WECHATPAY/SIGNTEST/dGVzdA==",
        "WECHATPAY/SIGNTEST/c2lnbmF0dXJlIHByb2JlIGZyb20gd2VjaGF0IHBheQ==AAAA",
    ] {
        h.insert("wechatpay-signature", HeaderValue::from_static(probe));
        let e = k.verify(&h, &b, now()).unwrap_err();
        assert_eq!(e.outcome(), Outcome::BadSignature, "{probe}");
    }
}

#[test]
fn the_raw_body_is_what_is_signed() {
    let k = keys();
    let (h, b) = sample("v3_pay.json");
    let reformatted = serde_json::to_vec_pretty(b.value()).unwrap();
    let b2 = JsonBody::parse(&reformatted).unwrap();
    assert_eq!(
        k.verify(&h, &b2, now()).unwrap_err(),
        VerifyError::SignatureMismatch
    );
}

/// The `Wechatpay-*` headers a real vector of expected.json was sent with.
fn vector_headers(v: &serde_json::Value) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (header, field) in [
        ("wechatpay-timestamp", "timestamp"),
        ("wechatpay-nonce", "nonce"),
        ("wechatpay-serial", "serial"),
        ("wechatpay-signature", "signature"),
    ] {
        h.insert(
            header,
            HeaderValue::from_str(v[field].as_str().unwrap()).unwrap(),
        );
    }
    h
}

#[test]
fn wechatpay_go_real_vector() {
    // wechatpay-go core/notify/notify_test.go (PROVIDERS.md §9 item 10).
    let e = expected();
    let v = &e["v3_wechatpay_go.json"];
    let loaded = load_certificate(&fixtures().join("v3_wechatpay_go_cert.pem")).unwrap();
    assert_eq!(loaded.serial, "D7CE59D1F522D701");
    let k = Keys::new(
        "1234567890",
        b"an-aes-256-key-of-32-bytes-long!",
        vec![PlatformKey::certificate(loaded)],
    )
    .unwrap();
    let h = vector_headers(v);
    let body =
        JsonBody::parse(&std::fs::read(fixtures().join("v3_wechatpay_go.json")).unwrap()).unwrap();
    let signed = k.check_signature(&h, body.raw(), 1_624_523_846).unwrap();
    assert_eq!(signed.timestamp, 1_624_523_846);
    // Its APIv3 key is 16 bytes (Go falls back to AES-128): no AES-256 key
    // opens it, and the failure is a refusal, not a crash.
    assert!(matches!(
        k.verify(&h, &body, 1_624_523_846),
        Err(VerifyError::Decrypt(_))
    ));
    assert!(Keys::new("1", b"testMchAPIv3Key0", vec![]).is_err());
}

#[test]
fn yansongda_real_vector() {
    // yansongda/pay CallbackPluginTest::testNormal (PROVIDERS.md §9 item 11).
    let e = expected();
    let v = &e["v3_yansongda.json"];
    let loaded = load_certificate(&fixtures().join("v3_yansongda_cert.pem")).unwrap();
    // yansongda maps the header's serial to this certificate in its test config.
    let key = PlatformKey {
        serial: Serial::Certificate(v["serial"].as_str().unwrap().to_owned()),
        key: loaded.key,
        validity: Some(loaded.validity),
    };
    let k = Keys::new(
        "1600314069",
        v["api_v3_key"].as_str().unwrap().as_bytes(),
        vec![key],
    )
    .unwrap();
    let h = vector_headers(v);
    let read = |f: &str| JsonBody::parse(&std::fs::read(fixtures().join(f)).unwrap()).unwrap();
    let escaped = read("v3_yansongda.json");
    let now = 1_626_444_144;
    assert!(k.check_signature(&h, escaped.raw(), now).is_ok());
    // The same JSON without PHP's `\/` escapes is not what was signed.
    let unescaped = read("v3_yansongda_unescaped.json");
    assert_eq!(escaped.value(), unescaped.value());
    assert!(matches!(
        k.check_signature(&h, unescaped.raw(), now),
        Err(VerifyError::SignatureMismatch)
    ));
    let plain = k.decrypt_resource(&escaped.value()["resource"]).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &plain);
    assert_eq!(hex::encode(digest), v["plain_sha256"].as_str().unwrap());
    // A one-bit change of the associated data fails authentication.
    let mut resource = escaped.value()["resource"].clone();
    resource["associated_data"] = "certificatf".into();
    assert!(matches!(
        k.decrypt_resource(&resource),
        Err(VerifyError::Decrypt(_))
    ));
}

#[test]
fn serials_normalise_like_big_integers() {
    assert_eq!(serial_hex("00abC").as_deref(), Some("ABC"));
    assert_eq!(serial_hex("000").as_deref(), Some("0"));
    assert_eq!(serial_hex(""), None);
    assert_eq!(serial_hex("12G"), None);
}

#[test]
fn the_api_v3_key_is_never_printed() {
    let text = format!("{:?}", keys());
    assert!(!text.contains("cG9sbHV0"), "{text}");
}
