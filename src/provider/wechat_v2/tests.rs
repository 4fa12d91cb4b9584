use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::ack::Outcome;

/// 2026-11-22T02:00:00Z, the fixtures' signing time.
const NOW: i64 = 1_795_312_800;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wechat")
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn keys_with(mch_id: &str, appid: Option<&str>, key_file: &str) -> Keys {
    let key = Secret::from_file(&fixtures().join(key_file)).unwrap();
    Keys::new(mch_id, appid, key)
}

fn keys() -> Keys {
    keys_with("1900000109", Some("wx2421b1c4370ec43b"), "v2_api.key")
}

fn xml(name: &str) -> XmlMap {
    XmlMap::parse(&std::fs::read(fixtures().join(name)).unwrap()).unwrap()
}

#[test]
fn official_doc_example_vector() {
    // pay.weixin.qq.com signing rules (PROVIDERS.md §9 item 7).
    let fields: BTreeMap<&str, &str> = [
        ("appid", "wxd930ea5d5a258f4f"),
        ("mch_id", "10000100"),
        ("device_info", "1000"),
        ("body", "test"),
        ("nonce_str", "ibuaiVcKdpRxkhJA"),
    ]
    .into_iter()
    .collect();
    let key = b"192006250b4c09247ec02edce69f6a2d";
    let it = || fields.iter().map(|(k, v)| (*k, *v));
    assert_eq!(
        signature(it(), key, SignAlgo::Md5, true),
        "9A0A8659F005D6984697E2CA0A9CF3B7"
    );
    assert_eq!(
        signature(it(), key, SignAlgo::HmacSha256, true),
        "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"
    );
}

#[test]
fn every_fixture_matches_expected_json() {
    let e = expected();
    let mut checked = 0;
    for (name, want) in e.as_object().unwrap() {
        if !name.starts_with("v2_") {
            continue;
        }
        let body = std::fs::read(fixtures().join(name)).unwrap();
        let Ok(map) = XmlMap::parse(&body) else {
            assert!(!want["verifies"].as_bool().unwrap(), "{name} should parse");
            checked += 1;
            continue;
        };
        let k = match want.get("mch_id") {
            Some(m) => keys_with(
                m.as_str().unwrap(),
                want["appid"].as_str(),
                "v2_wechatpy_refund.key",
            ),
            None => keys(),
        };
        let got = k.verify(&map, NOW);
        assert_eq!(
            got.is_ok(),
            want["verifies"].as_bool().unwrap(),
            "{name}: {got:?}"
        );
        if let Ok(v) = got {
            assert_eq!(v.event_id(), want["event_id"].as_str().unwrap(), "{name}");
            assert_eq!(v.kind(), ProviderKind::WechatV2);
            assert!(v.nonce().is_none());
        }
        checked += 1;
    }
    assert!(checked >= 28, "only {checked} v2 fixtures");
}

#[test]
fn refusals_name_their_reason() {
    let k = keys();
    let err = |name: &str| k.verify(&xml(name), NOW).unwrap_err();
    assert_eq!(err("v2_tampered.xml"), VerifyError::SignatureMismatch);
    assert_eq!(err("v2_lowercase_sign.xml"), VerifyError::SignatureMismatch);
    assert_eq!(err("v2_wrong_key.xml"), VerifyError::SignatureMismatch);
    assert_eq!(
        err("v2_sign_type_unknown.xml"),
        VerifyError::UnsupportedSignType("SHA256".into())
    );
    assert!(matches!(
        err("v2_other_mch.xml"),
        VerifyError::MerchantMismatch {
            field: "mch_id",
            ..
        }
    ));
    assert!(matches!(
        err("v2_other_appid.xml"),
        VerifyError::MerchantMismatch { field: "appid", .. }
    ));
    for refund in [
        "v2_refund_tampered.xml",
        "v2_refund_wrong_key.xml",
        "v2_refund_wrong_root.xml",
    ] {
        let e = err(refund);
        assert!(matches!(e, VerifyError::Decrypt(_)), "{refund}: {e:?}");
        assert_eq!(e.outcome(), Outcome::BadSignature);
    }
    assert!(matches!(
        err("v2_refund_other_mch.xml"),
        VerifyError::MerchantMismatch { .. }
    ));
    let fail = err("v2_return_fail.xml");
    assert!(
        matches!(fail, VerifyError::PlatformFailure { .. }),
        "{fail:?}"
    );
    assert_eq!(fail.outcome(), Outcome::Ignored);
}

#[test]
fn appid_is_checked_only_when_configured() {
    let k = keys_with("1900000109", None, "v2_api.key");
    assert!(k.verify(&xml("v2_other_appid.xml"), NOW).is_ok());
}

#[test]
fn sign_type_rules() {
    let k = keys();
    // With no sign_type, the sign's length picks the algorithm.
    assert!(k.verify(&xml("v2_md5_pay.xml"), NOW).is_ok());
    assert!(k.verify(&xml("v2_hmac_no_sign_type.xml"), NOW).is_ok());
    // A named sign_type must match the signature's algorithm: an MD5 sign
    // presented as HMAC-SHA256 fails (sign_type is signed too, so rewrite
    // it in the map by re-parsing edited text).
    let text = std::fs::read_to_string(fixtures().join("v2_md5_pay_sign_type.xml")).unwrap();
    let swapped = text.replace("<![CDATA[MD5]]>", "<![CDATA[HMAC-SHA256]]>");
    assert_eq!(
        k.verify(&XmlMap::parse(swapped.as_bytes()).unwrap(), NOW)
            .unwrap_err(),
        VerifyError::SignatureMismatch
    );
    // A sign of another length without sign_type is refused outright.
    let text = std::fs::read_to_string(fixtures().join("v2_md5_pay.xml")).unwrap();
    let short = text.replace("93C716642D3ABF362CB4C7095F236561", "93C716642D3ABF36");
    assert_eq!(
        k.verify(&XmlMap::parse(short.as_bytes()).unwrap(), NOW)
            .unwrap_err(),
        VerifyError::SignatureEncoding
    );
}

#[test]
fn java_and_php_canonical_forms() {
    let k = keys();
    // Java-style (trimmed) and PHP-style (as is) both verify ...
    assert!(k.verify(&xml("v2_trimmed_value.xml"), NOW).is_ok());
    let php = xml("v2_untrimmed_value.xml");
    assert!(k.verify(&php, NOW).is_ok());
    // ... and the PHP one needs the fallback.
    let java = signature(
        php.iter(),
        b"8934e7d15453e97507ef794cf7b0519d",
        SignAlgo::Md5,
        true,
    );
    assert_ne!(java, php.get("sign").unwrap());
}

#[test]
fn entities_are_signed_decoded() {
    let v = keys().verify(&xml("v2_entities.xml"), NOW).unwrap();
    let Fields::Xml { xml, .. } = v.fields() else {
        panic!()
    };
    assert_eq!(xml.get("attach"), Some("order=15&shop=主店"));
}

#[test]
fn payment_fields_and_time() {
    let v = keys().verify(&xml("v2_md5_pay.xml"), 0).unwrap();
    assert_eq!(v.signed_at(), NOW); // 20261122100000 Beijing
    assert_eq!(v.event_id(), "4200002026112200000000000001:SUCCESS");
    assert!(v.decrypted().is_none());
}

#[test]
fn refunds_decrypt_and_expose_req_info() {
    let v = keys().verify(&xml("v2_refund.xml"), 0).unwrap();
    assert_eq!(v.event_id(), "50300002026112200000000000001:SUCCESS");
    // success_time 2026-11-22 10:05:00 Beijing.
    assert_eq!(v.signed_at(), NOW + 300);
    let plain = std::str::from_utf8(v.decrypted().unwrap()).unwrap();
    assert!(plain.starts_with("<root>"), "{plain}");
    let Fields::Xml {
        refund: Some(refund),
        ..
    } = v.fields()
    else {
        panic!()
    };
    assert_eq!(refund.get("refund_fee"), Some("1200"));
    assert_eq!(refund.get("refund_recv_accout"), Some("招商银行信用卡8915"));

    // No success_time: treated as sent now.
    let closed = keys().verify(&xml("v2_refund_closed.xml"), 42).unwrap();
    assert_eq!(closed.signed_at(), 42);
    // ... unless it says it succeeded: a success always has its time, and
    // one without could be a genuine old refund with the ECB blocks that
    // held it cut out.
    let e = keys()
        .verify(&xml("v2_refund_success_no_time.xml"), 42)
        .unwrap_err();
    assert_eq!(e, VerifyError::MissingField("success_time"));
    assert_eq!(e.outcome(), Outcome::Malformed);
}

#[test]
fn wechatpy_real_refund_vector() {
    let k = keys_with(
        "12345678",
        Some("wx4f4bc4dec97d474b"),
        "v2_wechatpy_refund.key",
    );
    let v = k.verify(&xml("v2_wechatpy_refund.xml"), 0).unwrap();
    assert_eq!(v.event_id(), "50300103182020010413419046597:SUCCESS");
    let Fields::Xml {
        refund: Some(r), ..
    } = v.fields()
    else {
        panic!()
    };
    assert_eq!(r.get("out_refund_no"), Some("1234"));
    assert_eq!(r.get("out_trade_no"), Some("2020010418301551404339261814"));
    assert_eq!(
        r.get("transaction_id"),
        Some("4200000483202001042069747825")
    );
    // The same notification for another merchant is refused.
    let other = keys_with("87654321", None, "v2_wechatpy_refund.key");
    assert!(other.verify(&xml("v2_wechatpy_refund.xml"), 0).is_err());
    // And with another key it does not decrypt.
    let wrong = keys_with("12345678", None, "v2_api.key");
    assert!(matches!(
        wrong.verify(&xml("v2_wechatpy_refund.xml"), 0),
        Err(VerifyError::Decrypt(_))
    ));
}

#[test]
fn secrets_stay_out_of_debug() {
    let text = format!("{:?}", keys());
    assert!(!text.contains("8934e7d1"), "{text}");
}

#[test]
fn java_trim_strips_what_string_trim_strips() {
    for s in [
        "",
        " ",
        "\u{0}\t\n\r \u{1F}",
        "abc",
        " abc ",
        "\u{0}a b\u{1F}",
        " 主店 ",
        "\u{3000}a\u{3000}",
        "\u{85}a\u{A0}",
        "a\u{7F}",
        "\u{20}\u{21}\u{20}",
    ] {
        assert_eq!(
            super::java_trim(s),
            s.trim_matches(|c: char| c <= ' '),
            "{s:?}"
        );
    }
}
