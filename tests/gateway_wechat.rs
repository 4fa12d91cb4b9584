//! The gateway end to end for `wechat_v2` and `wechat_v3`, over real
//! sockets: every row of the contract's outcome table that applies,
//! asserting status, ack body, what the upstream received, and the metrics
//! line. v2 fixtures are signed by the openssl CLI or are public vectors;
//! v3 notifications are signed here, at test time, by the openssl CLI (the
//! timestamp must be fresh), over bodies whose resources were encrypted by
//! Python `cryptography` (tests/fixtures/wechat/README.md).

mod support;

use std::sync::Arc;

use base64::Engine as _;
use support::*;
use tokio::sync::Notify;

const V2_OK: &str = "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";
const V2: &str = "shop-wechat-v2";
const V3: &str = "shop-wechat-v3";
const V3_PATH: &str = "/notify/wechat-v3";

type Headers = Vec<(String, String)>;

fn is_v2_fail(body: &str) -> bool {
    body.starts_with("<xml><return_code><![CDATA[FAIL]]></return_code>")
}

async fn v2_gateway(up: &Upstream) -> TestGateway {
    TestGateway::start(GatewaySpec::new(vec![RouteSpec::wechat_v2(up)])).await
}

async fn v3_gateway(up: &Upstream) -> TestGateway {
    TestGateway::start(GatewaySpec::new(vec![RouteSpec::wechat_v3(up)])).await
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// The decrypted resource of a v3 fixture, as Python's encryptor saw it.
fn v3_plain(name: &str) -> Vec<u8> {
    expected("wechat")[name]["plain"]
        .as_str()
        .unwrap()
        .as_bytes()
        .to_vec()
}

fn v3_fail(reply: &Reply) -> bool {
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    v["code"] == "FAIL" && v["message"].is_string()
}

// === wechat_v2 ===

#[tokio::test]
async fn v2_payment_is_forwarded_byte_for_byte_with_the_xml_ack() {
    let up = Upstream::start(Behaviour::Reply(200, "<xml>SUCCESS</xml>")).await;
    let gw = v2_gateway(&up).await;
    let body = fixture("wechat", "v2_md5_pay.xml");
    let r = gw
        .send(
            "POST",
            "/notify/wechat?showwxpaytitle=1",
            &[
                ("content-type", "text/xml; charset=UTF-8"),
                ("x-callgate-resource", "forged"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, V2_OK));
    assert_eq!(r.headers["content-type"], "text/xml; charset=utf-8");

    let got = up.received();
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert_eq!(g.uri, "/plus/notify.php");
    assert_eq!(g.body.as_ref(), body.as_slice());
    assert_eq!(g.headers["content-type"], "text/xml; charset=UTF-8");
    assert_eq!(g.headers["x-callgate-provider"], "wechat_v2");
    assert_eq!(g.headers["x-callgate-route"], V2);
    assert_eq!(
        g.headers["x-callgate-event-id"],
        "4200002026112200000000000001:SUCCESS"
    );
    assert!(
        g.headers.get("x-callgate-resource").is_none(),
        "a payment has nothing decrypted, and the forged header is stripped"
    );
    check_callgate_hmac(g.headers["x-callgate-signature"].to_str().unwrap(), &body);
    assert_eq!(gw.requests_of(V2, "wechat_v2", "forwarded").await, 1.0);
}

#[tokio::test]
async fn v2_md5_hmac_and_real_world_shapes_verify() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = v2_gateway(&up).await;
    let fixtures = [
        "v2_md5_pay_sign_type.xml",
        "v2_hmac_pay.xml",
        "v2_hmac_no_sign_type.xml",
        "v2_entities.xml",
        "v2_trimmed_value.xml",
        "v2_untrimmed_value.xml",
        "v2_pay_result_fail.xml",
    ];
    for (i, f) in fixtures.iter().enumerate() {
        let body = fixture("wechat", f);
        let r = gw.post_xml(&body).await;
        assert_eq!((r.status, r.text().as_str()), (200, V2_OK), "{f}");
        assert_eq!(up.received()[i].body.as_ref(), body.as_slice(), "{f}");
    }
    assert_eq!(gw.requests_of(V2, "wechat_v2", "forwarded").await, 7.0);
}

#[tokio::test]
async fn v2_duplicate_is_acked_and_not_forwarded() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = v2_gateway(&up).await;
    let body = fixture("wechat", "v2_md5_pay.xml");
    assert_eq!(gw.post_xml(&body).await.status, 200);
    let again = gw.post_xml(&body).await;
    assert_eq!((again.status, again.text().as_str()), (200, V2_OK));
    assert_eq!(up.count(), 1);
    assert_eq!(gw.requests_of(V2, "wechat_v2", "duplicate").await, 1.0);
    // Another payment is another event.
    assert_eq!(
        gw.post_xml(&fixture("wechat", "v2_md5_pay_2.xml"))
            .await
            .status,
        200
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn v2_same_event_in_flight_is_409() {
    let gate = Arc::new(Notify::new());
    let up = Upstream::start(Behaviour::Hold(gate.clone())).await;
    let gw = Arc::new(v2_gateway(&up).await);
    let body = fixture("wechat", "v2_md5_pay.xml");
    let first = {
        let (gw, body) = (gw.clone(), body.clone());
        tokio::spawn(async move { gw.post_xml(&body).await })
    };
    up.next().await;
    let second = gw.post_xml(&body).await;
    assert_eq!(second.status, 409);
    assert!(is_v2_fail(&second.text()), "{}", second.text());
    gate.notify_one();
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(up.count(), 1);
    assert_eq!(gw.requests_of(V2, "wechat_v2", "in_flight").await, 1.0);
}

#[tokio::test]
async fn v2_bad_signatures_and_other_merchants_are_401() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = v2_gateway(&up).await;
    let fixtures = [
        "v2_tampered.xml",
        "v2_lowercase_sign.xml",
        "v2_wrong_key.xml",
        "v2_sign_type_unknown.xml",
        "v2_other_mch.xml",
        "v2_other_appid.xml",
        "v2_refund_tampered.xml",
        "v2_refund_wrong_key.xml",
        "v2_refund_other_mch.xml",
    ];
    for f in fixtures {
        let r = gw.post_xml(&fixture("wechat", f)).await;
        assert_eq!(r.status, 401, "{f}");
        assert!(is_v2_fail(&r.text()), "{f}: {}", r.text());
    }
    // No sign at all.
    let text = String::from_utf8(fixture("wechat", "v2_md5_pay_3.xml")).unwrap();
    let unsigned: String = text
        .lines()
        .filter(|l| !l.starts_with("<sign>"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(gw.post_xml(unsigned.as_bytes()).await.status, 401);
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests_of(V2, "wechat_v2", "bad_signature").await, 10.0);
}

#[tokio::test]
async fn v2_doctype_repeats_nesting_and_bad_content_are_400() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = v2_gateway(&up).await;
    for f in [
        "v2_doctype.xml",
        "v2_duplicate_element.xml",
        "v2_nested.xml",
    ] {
        let r = gw.post_xml(&fixture("wechat", f)).await;
        assert_eq!(r.status, 400, "{f}");
        assert!(is_v2_fail(&r.text()), "{f}");
    }
    let good = fixture("wechat", "v2_md5_pay.xml");
    let r = gw
        .send(
            "POST",
            "/notify/wechat",
            &[("content-type", "application/x-www-form-urlencoded")],
            good.clone(),
        )
        .await;
    assert_eq!(r.status, 400, "wrong content type");
    assert_eq!(gw.post_xml(b"").await.status, 400, "empty");
    assert_eq!(
        gw.post_xml(b"<root><return_code>SUCCESS</return_code></root>")
            .await
            .status,
        400,
        "root must be <xml>"
    );
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests_of(V2, "wechat_v2", "malformed").await, 6.0);
}

/// Characters XML 1.0 does not allow (C0 controls but tab, LF and CR, as
/// literals or character references, and U+FFFE/U+FFFF) make a document
/// that is not well-formed: the official SDKs' parsers (Java's DOM, PHP's
/// libxml2) throw on it, so it never verifies there. Under the Java rule a
/// control character at either end of a value is trimmed off, so without
/// this check an attacker could append one to a non-identity field of a
/// captured notification (here `out_trade_no`, `total_fee`) and have it
/// verify and reach the shop; Python's expat refuses each body too.
#[tokio::test]
async fn v2_characters_xml_forbids_are_400_and_never_forwarded() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = v2_gateway(&up).await;
    let good = fixture("wechat", "v2_md5_pay.xml");
    let text = String::from_utf8(good.clone()).unwrap();
    let variants = [
        (
            "reference to U+0001 after a CDATA value",
            text.replacen("]]></out_trade_no>", "]]>&#1;</out_trade_no>", 1),
        ),
        (
            "hex reference to U+001F",
            text.replacen("<total_fee>8888<", "<total_fee>8888&#x1F;<", 1),
        ),
        (
            "literal U+0001 in a value",
            text.replacen("<total_fee>8888<", "<total_fee>8888\u{1}<", 1),
        ),
        (
            "literal U+001F inside CDATA",
            text.replacen("CG20261122000001]]>", "CG20261122000001\u{1F}]]>", 1),
        ),
        (
            "reference to U+FFFE",
            text.replacen("]]></out_trade_no>", "]]>&#xFFFE;</out_trade_no>", 1),
        ),
    ];
    for (what, body) in &variants {
        assert_ne!(body.as_bytes(), good.as_slice(), "{what}: not changed");
        let r = gw.post_xml(body.as_bytes()).await;
        assert_eq!(r.status, 400, "{what}");
        assert!(is_v2_fail(&r.text()), "{what}: {}", r.text());
    }
    assert_eq!(up.count(), 0);
    // Tab, LF and CR are XML characters: the genuine document still passes.
    let r = gw.post_xml(&good).await;
    assert_eq!((r.status, r.text().as_str()), (200, V2_OK));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn v2_return_code_fail_is_acked_and_never_forwarded() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = v2_gateway(&up).await;
    let r = gw.post_xml(&fixture("wechat", "v2_return_fail.xml")).await;
    assert_eq!((r.status, r.text().as_str()), (200, V2_OK));
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests_of(V2, "wechat_v2", "ignored").await, 1.0);
    assert_eq!(gw.requests_of(V2, "wechat_v2", "forwarded").await, 0.0);
}

#[tokio::test]
async fn v2_stale_and_future_time_end_are_401() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let route = RouteSpec::wechat_v2(&up).with(|r| r.max_age = Some("1s".into()));
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let r = gw.post_xml(&fixture("wechat", "v2_md5_pay.xml")).await;
    assert_eq!(r.status, 401, "time_end 2026-11-22, max_age 1s");
    assert!(is_v2_fail(&r.text()));
    let r = gw.post_xml(&fixture("wechat", "v2_future.xml")).await;
    assert_eq!(r.status, 401, "time_end 2099");
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests_of(V2, "wechat_v2", "stale").await, 2.0);
}

#[tokio::test]
async fn v2_refund_is_authenticated_by_decryption_and_its_req_info_is_shared() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = v2_gateway(&up).await;
    let body = fixture("wechat", "v2_refund.xml");
    let r = gw.post_xml(&body).await;
    assert_eq!((r.status, r.text().as_str()), (200, V2_OK));
    let g = &up.received()[0];
    assert_eq!(g.body.as_ref(), body.as_slice());
    assert_eq!(
        g.headers["x-callgate-event-id"],
        "50300002026112200000000000001:SUCCESS"
    );

    // Decrypt req_info with the openssl CLI, independently of callgate.
    let text = String::from_utf8(body).unwrap();
    let req_info = text
        .split("<req_info><![CDATA[")
        .nth(1)
        .unwrap()
        .split("]]>")
        .next()
        .unwrap();
    let key = String::from_utf8(fixture("wechat", "v2_api.key")).unwrap();
    let aes_key = hex::encode(md5_hex(key.trim()).as_bytes());
    let plain = openssl_aes_ecb_decrypt(&aes_key, &unb64(req_info));
    assert!(plain.starts_with(b"<root>"));

    let resource = g.headers["x-callgate-resource"].to_str().unwrap();
    assert_eq!(unb64(resource), plain);
    let t = check_callgate_resource_hmac(
        g.headers["x-callgate-resource-signature"].to_str().unwrap(),
        &plain,
    );
    let (sig_t, _) = g.headers["x-callgate-signature"]
        .to_str()
        .unwrap()
        .split_once(',')
        .unwrap();
    assert_eq!(format!("t={t}"), sig_t, "both headers use the same t");

    // A refund that did not succeed has no success_time: still delivered.
    let r = gw
        .post_xml(&fixture("wechat", "v2_refund_closed.xml"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 2);

    // One that succeeded always has it: without it (a genuine old refund
    // with the ECB blocks holding it cut out) it is refused, not taken as
    // sent now.
    let r = gw
        .post_xml(&fixture("wechat", "v2_refund_success_no_time.xml"))
        .await;
    assert_eq!(r.status, 400);
    assert!(is_v2_fail(&r.text()), "{}", r.text());
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn v2_wechatpy_real_refund_vector_passes() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let route = RouteSpec::wechat_v2(&up).with(|r| {
        r.max_age = Some("200000h".into()); // refunded in 2020
        r.keys = format!(
            "mch_id = \"12345678\"\nappid = \"wx4f4bc4dec97d474b\"\napi_key_file = {:?}\n",
            fixture_path("wechat", "v2_wechatpy_refund.key")
        );
    });
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let r = gw
        .post_xml(&fixture("wechat", "v2_wechatpy_refund.xml"))
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, V2_OK));
    let g = &up.received()[0];
    assert_eq!(
        g.headers["x-callgate-event-id"],
        "50300103182020010413419046597:SUCCESS"
    );
    let plain = unb64(g.headers["x-callgate-resource"].to_str().unwrap());
    assert!(
        String::from_utf8(plain)
            .unwrap()
            .contains("招商银行信用卡8915")
    );
}

#[tokio::test]
async fn v2_normalized_payment_and_refund() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let route = RouteSpec::wechat_v2(&up).with(|r| r.forward = "normalized".into());
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    assert_eq!(
        gw.post_xml(&fixture("wechat", "v2_md5_pay.xml"))
            .await
            .status,
        200
    );
    assert_eq!(
        gw.post_xml(&fixture("wechat", "v2_refund.xml"))
            .await
            .status,
        200
    );
    let got = up.received();
    let pay: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(got[0].headers["content-type"], "application/json");
    assert_eq!(pay["provider"], "wechat_v2");
    assert_eq!(pay["event_id"], "4200002026112200000000000001:SUCCESS");
    assert_eq!(pay["out_trade_no"], "CG20261122000001");
    assert_eq!(pay["provider_trade_no"], "4200002026112200000000000001");
    assert_eq!(pay["amount_fen"], 8888);
    assert_eq!(pay["currency"], "CNY");
    assert_eq!(pay["status"], "paid");
    assert_eq!(pay["occurred_at"], "2026-11-22T10:00:00+08:00");
    assert_eq!(pay["fields"]["attach"], "order=1&shop=主店");
    assert!(pay["fields"].get("sign").is_none());
    let refund: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(refund["status"], "refunded");
    assert_eq!(refund["amount_fen"], 1200);
    assert_eq!(refund["occurred_at"], "2026-11-22T10:05:00+08:00");
    assert_eq!(
        refund["fields"]["refund_id"],
        "50300002026112200000000000001"
    );
    assert!(refund["fields"].get("req_info").is_none());
    // The refund's outer XML is signed by nothing: only what callgate
    // checked of it is a verified field.
    assert_eq!(refund["fields"]["mch_id"], "1900000109");
    assert!(refund["fields"].get("nonce_str").is_none(), "{refund}");
    assert!(
        got[1].headers.get("x-callgate-resource").is_none(),
        "normalized mode carries the decrypted fields in the body"
    );
    check_callgate_hmac(
        got[1].headers["x-callgate-signature"].to_str().unwrap(),
        &got[1].body,
    );
}

#[tokio::test]
async fn v2_normalized_failures_are_never_paid_or_refunded() {
    // A payment whose result_code is FAIL did not take the money; a refund
    // in CHANGE failed and waits for the merchant; REFUNDCLOSE is closed.
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let route = RouteSpec::wechat_v2(&up).with(|r| r.forward = "normalized".into());
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let cases = [
        ("v2_pay_result_fail.xml", "pending"),
        ("v2_refund_change.xml", "pending"),
        ("v2_refund_closed.xml", "closed"),
    ];
    for (name, status) in cases {
        let r = gw.post_xml(&fixture("wechat", name)).await;
        assert_eq!((r.status, r.text().as_str()), (200, V2_OK), "{name}");
        let got = up.received();
        let v: serde_json::Value = serde_json::from_slice(&got.last().unwrap().body).unwrap();
        assert_eq!(v["status"], status, "{name}: {v}");
        assert_eq!(v["currency"], "CNY", "{name}");
        assert!(v["amount_fen"].is_i64(), "{name}: {v}");
        // RFC 3339 even for a refund that has no time of its own.
        assert!(v["occurred_at"].is_string(), "{name}: {v}");
    }
    assert_eq!(up.count(), cases.len());
}

#[tokio::test]
async fn v2_withholding_debits_are_paid_only_when_the_money_moved() {
    // A withholding debit result says result_code SUCCESS when WeChat took
    // the request; its trade_state says whether the debit succeeded. Each
    // state of one debit is an event of its own: a failure after the
    // acceptance is not a duplicate of it.
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let route = RouteSpec::wechat_v2(&up).with(|r| r.forward = "normalized".into());
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let cases = [
        ("v2_papay_accept.xml", "ACCEPT", "pending"),
        ("v2_papay_pay_fail.xml", "PAY_FAIL", "pending"),
        ("v2_papay_success.xml", "SUCCESS", "paid"),
    ];
    for (i, (name, state, status)) in cases.into_iter().enumerate() {
        let r = gw.post_xml(&fixture("wechat", name)).await;
        assert_eq!((r.status, r.text().as_str()), (200, V2_OK), "{name}");
        let got = up.received();
        assert_eq!(got.len(), i + 1, "{name} forwarded");
        let v: serde_json::Value = serde_json::from_slice(&got[i].body).unwrap();
        assert_eq!(v["status"], status, "{name}: {v}");
        assert_eq!(
            v["event_id"],
            format!("4200002026112200000000000017:SUCCESS:{state}"),
            "{name}"
        );
        assert_eq!(v["fields"]["trade_state"], state, "{name}");
    }
}

// === wechat_v3 ===

#[tokio::test]
async fn v3_original_body_and_decrypted_resource_reach_the_shop() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = v3_gateway(&up).await;
    let (headers, body) = v3_signed("v3_pay.json", "fresh-nonce-original-0001");
    let r = gw.send_owned(V3_PATH, &headers, &body).await;
    assert_eq!((r.status, r.body.len()), (200, 0), "{}", r.text());

    let g = &up.received()[0];
    assert_eq!(
        g.body.as_ref(),
        body.as_slice(),
        "the signed bytes, untouched"
    );
    assert_eq!(g.headers["content-type"], "application/json");
    assert_eq!(g.headers["wechatpay-nonce"], "fresh-nonce-original-0001");
    assert_eq!(g.headers["x-callgate-provider"], "wechat_v3");
    assert_eq!(g.headers["x-callgate-event-id"], "EV-2026112200000001");
    check_callgate_hmac(g.headers["x-callgate-signature"].to_str().unwrap(), &body);

    // The resource as Python's encryptor saw it, Base64, with its own HMAC.
    let plain = v3_plain("v3_pay.json");
    assert_eq!(
        g.headers["x-callgate-resource"].to_str().unwrap(),
        b64(&plain)
    );
    check_callgate_resource_hmac(
        g.headers["x-callgate-resource-signature"].to_str().unwrap(),
        &plain,
    );
    assert_eq!(gw.requests_of(V3, "wechat_v3", "forwarded").await, 1.0);
}

#[tokio::test]
async fn v3_normalized_payment_and_refund() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let route = RouteSpec::wechat_v3(&up).with(|r| r.forward = "normalized".into());
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let (h, b) = v3_signed("v3_pay.json", "nonce-normalized-pay");
    assert_eq!(gw.send_owned(V3_PATH, &h, &b).await.status, 200);
    let (h, b) = v3_signed("v3_refund.json", "nonce-normalized-refund");
    assert_eq!(gw.send_owned(V3_PATH, &h, &b).await.status, 200);
    let got = up.received();
    let pay: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(pay["provider"], "wechat_v3");
    assert_eq!(pay["event_id"], "EV-2026112200000001");
    assert_eq!(pay["event_type"], "TRANSACTION.SUCCESS");
    assert_eq!(pay["out_trade_no"], "CG20261122000001");
    assert_eq!(pay["provider_trade_no"], "4200002026112200000000000001");
    assert_eq!(pay["amount_fen"], 8888);
    assert_eq!(pay["status"], "paid");
    assert_eq!(pay["occurred_at"], "2026-11-22T10:00:00+08:00");
    assert_eq!(
        pay["fields"]["payer"]["openid"],
        "oUpF8uMEb4qRXf22hE3X68TekukE"
    );
    let refund: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(refund["status"], "refunded");
    assert_eq!(refund["amount_fen"], 1200);
    assert_eq!(
        refund["fields"]["refund_id"],
        "50300002026112200000000000001"
    );
    assert!(got[0].headers.get("x-callgate-resource").is_none());
}

#[tokio::test]
async fn v3_normalized_every_trade_state() {
    // Every trade_state of the v3 Transaction model, as the shop is told
    // it. REFUND says part or all of a paid trade went back, but not how
    // much: `amount.total` is the order's total, and a shop that debits
    // `amount_fen` on `refunded` would take a partial refund for the
    // whole order. So its amount is null, as for any refund whose
    // notification does not say the refunded sum; and its success_time is
    // when the trade was paid, not when it was refunded, so the event's
    // time is the notification's create_time.
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let route = RouteSpec::wechat_v3(&up).with(|r| r.forward = "normalized".into());
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let cases = [
        ("refund", "refunded", None),
        ("notpay", "pending", Some(8888)),
        ("closed", "closed", Some(8888)),
        ("revoked", "closed", Some(8888)),
        ("userpaying", "pending", Some(8888)),
        ("payerror", "pending", Some(8888)),
    ];
    for (state, status, amount) in cases {
        let (h, b) = v3_signed(
            &format!("v3_state_{state}.json"),
            &format!("nonce-state-{state}"),
        );
        gw.send_owned(V3_PATH, &h, &b)
            .await
            .assert_is(200, "", state);
        let got = up.received();
        let v: serde_json::Value = serde_json::from_slice(&got.last().unwrap().body).unwrap();
        assert_eq!(
            (
                v["status"].as_str(),
                v["amount_fen"].as_i64(),
                v["currency"].as_str()
            ),
            (Some(status), amount, Some("CNY")),
            "{state}: {v}"
        );
        assert_eq!(v["fields"]["trade_state"], state.to_uppercase(), "{state}");
        // None of these has the time of its own event: that is the
        // body's create_time.
        assert_eq!(v["occurred_at"], "2026-11-22T10:00:00+08:00", "{state}");
    }
    assert_eq!(up.count(), cases.len());
}

#[tokio::test]
async fn v3_normalized_refund_outcomes_and_a_neighbours_refund() {
    // Every refund event_type as the shop is told it: only REFUND.SUCCESS
    // is `refunded`. REFUND.ABNORMAL (the money did not reach the buyer)
    // and REFUND.CLOSED name the refund's sum but never say it was paid
    // back; neither has a success_time, so the event's time is the body's
    // create_time. A neighbour merchant's refund is bound like its
    // payments: 401, never forwarded.
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let route = RouteSpec::wechat_v3(&up).with(|r| r.forward = "normalized".into());
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let cases = [
        ("v3_refund.json", "REFUND.SUCCESS", "refunded"),
        ("v3_refund_abnormal.json", "REFUND.ABNORMAL", "pending"),
        ("v3_refund_closed.json", "REFUND.CLOSED", "closed"),
    ];
    for (name, event_type, status) in cases {
        let (h, b) = v3_signed(name, &format!("nonce-refund-{name}"));
        gw.send_owned(V3_PATH, &h, &b)
            .await
            .assert_is(200, "", name);
        let got = up.received();
        let v: serde_json::Value = serde_json::from_slice(&got.last().unwrap().body).unwrap();
        assert_eq!(v["event_type"], event_type, "{name}");
        assert_eq!(
            (v["status"].as_str(), v["amount_fen"].as_i64()),
            (Some(status), Some(1200)),
            "{name}: {v}"
        );
        assert_eq!(v["out_trade_no"], "CG20261122000001", "{name}");
        assert_eq!(v["fields"]["mchid"], WECHAT_MCH_ID, "{name}");
    }
    let times: Vec<serde_json::Value> = up
        .received()
        .iter()
        .map(|g| {
            serde_json::from_slice::<serde_json::Value>(&g.body).unwrap()["occurred_at"].clone()
        })
        .collect();
    assert_eq!(
        times,
        [
            "2026-11-22T10:05:00+08:00",
            "2026-11-22T10:00:00+08:00",
            "2026-11-22T10:00:00+08:00"
        ]
    );

    let (h, b) = v3_signed("v3_refund_other_mch.json", "nonce-refund-neighbour");
    let r = gw.send_owned(V3_PATH, &h, &b).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(v3_fail(&r));
    assert_eq!(up.count(), cases.len());
    assert_eq!(
        gw.rejections(V3, "wechat_v3", "merchant_mismatch").await,
        1.0
    );
}

#[tokio::test]
async fn v3_rotation_certificate_and_public_key_on_one_route() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = v3_gateway(&up).await;
    let (h, b) = v3_signed("v3_pay.json", "nonce-rotation-cert");
    assert_eq!(gw.send_owned(V3_PATH, &h, &b).await.status, 200);
    let body = fixture("wechat", "v3_pay_2.json");
    let h = v3_headers(
        "pubkey_private.pem",
        WECHAT_PUB_KEY_ID,
        unix_now(),
        "nonce-rotation-pubkey",
        &body,
    );
    assert_eq!(gw.send_owned(V3_PATH, &h, &body).await.status, 200);
    // A public-key signature presented under the certificate's serial fails.
    let body = fixture("wechat", "v3_refund.json");
    let h = v3_headers(
        "pubkey_private.pem",
        WECHAT_PLATFORM_SERIAL,
        unix_now(),
        "nonce-rotation-crossed",
        &body,
    );
    assert_eq!(gw.send_owned(V3_PATH, &h, &body).await.status, 401);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn v3_a_signed_timestamp_that_is_not_unix_seconds_is_400_bad_time() {
    // The contract's rule for every provider's signed time: blank, or
    // holding what the platform never sends, is 400 naming the field. The
    // signature (openssl, over the timestamp's bytes as sent) covers it,
    // so the refusal is for the field, not the signature.
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = v3_gateway(&up).await;
    let body = fixture("wechat", "v3_pay.json");
    let now = unix_now();
    let signed_at = |ts: &str, nonce: &str| -> Vec<(String, String)> {
        let message = [ts.as_bytes(), b"\n", nonce.as_bytes(), b"\n", &body, b"\n"].concat();
        vec![
            ("content-type".into(), "application/json".into()),
            ("wechatpay-timestamp".into(), ts.into()),
            ("wechatpay-nonce".into(), nonce.into()),
            ("wechatpay-serial".into(), WECHAT_PLATFORM_SERIAL.into()),
            (
                "wechatpay-signature".into(),
                openssl_sign_b64(&fixture_path("wechat", "platform_private.pem"), &message),
            ),
        ]
    };
    let odd = [
        String::new(),
        format!("0{now}"),
        format!("{now}.0"),
        format!("+{now}"),
        "now".to_owned(),
    ];
    for (i, ts) in odd.iter().enumerate() {
        let h = signed_at(ts, &format!("nonce-bad-time-{i}"));
        let r = gw.send_owned(V3_PATH, &h, &body).await;
        assert_eq!(r.status, 400, "timestamp {ts:?}: {}", r.text());
        assert!(v3_fail(&r), "{}", r.text());
    }
    assert_eq!(
        gw.rejections(V3, "wechat_v3", "bad_time").await,
        odd.len() as f64
    );
    // The same odd value put in place of a signed good one: the signature
    // no longer covers it, 401.
    let mut h = signed_at(&now.to_string(), "nonce-bad-time-unsigned");
    h[1].1 = format!("0{now}");
    assert_eq!(gw.send_owned(V3_PATH, &h, &body).await.status, 401);
    // No timestamp at all: the signature cannot be checked, 401.
    let mut h = signed_at(&now.to_string(), "nonce-bad-time-absent");
    h.remove(1);
    assert_eq!(gw.send_owned(V3_PATH, &h, &body).await.status, 401);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn v3_replayed_nonce_is_401_and_a_fresh_retry_is_a_duplicate() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = v3_gateway(&up).await;
    let (h, b) = v3_signed("v3_pay.json", "nonce-replay-0001");
    assert_eq!(gw.send_owned(V3_PATH, &h, &b).await.status, 200);

    // The same bytes again: a replay.
    let r = gw.send_owned(V3_PATH, &h, &b).await;
    assert_eq!(r.status, 401);
    assert!(v3_fail(&r), "{}", r.text());
    assert_eq!(gw.requests_of(V3, "wechat_v3", "replay").await, 1.0);

    // A replayed nonce on another (validly signed) body is refused too.
    let other = fixture("wechat", "v3_refund.json");
    let h2 = v3_headers(
        "platform_private.pem",
        WECHAT_PLATFORM_SERIAL,
        unix_now(),
        "nonce-replay-0001",
        &other,
    );
    assert_eq!(gw.send_owned(V3_PATH, &h2, &other).await.status, 401);

    // WeChat's retry of the same event: fresh nonce and timestamp.
    let (h3, b3) = v3_signed("v3_pay.json", "nonce-replay-0002");
    let r = gw.send_owned(V3_PATH, &h3, &b3).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(up.count(), 1);
    assert_eq!(gw.requests_of(V3, "wechat_v3", "duplicate").await, 1.0);
    assert_eq!(gw.requests_of(V3, "wechat_v3", "replay").await, 2.0);
}

#[tokio::test]
async fn v3_undelivered_event_verbatim_retry_goes_through() {
    let up = Upstream::start(Behaviour::Reply(500, "oops")).await;
    let gw = v3_gateway(&up).await;
    let (h, b) = v3_signed("v3_pay.json", "nonce-retry-0001");
    let r = gw.send_owned(V3_PATH, &h, &b).await;
    assert_eq!(r.status, 502);
    assert!(v3_fail(&r));
    up.set(Behaviour::Reply(200, "ok"));
    let r = gw.send_owned(V3_PATH, &h, &b).await;
    assert_eq!(
        r.status, 200,
        "the nonce was forgotten with the failed delivery"
    );
    assert_eq!(up.count(), 2);
    // Now delivered: the verbatim copy is a replay.
    assert_eq!(gw.send_owned(V3_PATH, &h, &b).await.status, 401);
}

#[tokio::test]
async fn v3_same_event_in_flight_is_409() {
    let gate = Arc::new(Notify::new());
    let up = Upstream::start(Behaviour::Hold(gate.clone())).await;
    let gw = Arc::new(v3_gateway(&up).await);
    let first = {
        let gw = gw.clone();
        let (h, b) = v3_signed("v3_pay.json", "nonce-inflight-0001");
        tokio::spawn(async move { gw.send_owned(V3_PATH, &h, &b).await })
    };
    up.next().await;
    let (h, b) = v3_signed("v3_pay.json", "nonce-inflight-0002");
    let second = gw.send_owned(V3_PATH, &h, &b).await;
    assert_eq!(second.status, 409);
    assert!(v3_fail(&second));
    gate.notify_one();
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(up.count(), 1);
    assert_eq!(gw.requests_of(V3, "wechat_v3", "in_flight").await, 1.0);
    // The in-flight copy's nonce was forgotten: its verbatim retry is a duplicate.
    assert_eq!(gw.send_owned(V3_PATH, &h, &b).await.status, 200);
    assert_eq!(gw.requests_of(V3, "wechat_v3", "duplicate").await, 1.0);
}

#[tokio::test]
async fn v3_stale_and_future_timestamps_are_401() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = v3_gateway(&up).await;
    let body = fixture("wechat", "v3_pay.json");
    for (ts, nonce) in [
        (unix_now() - 600, "nonce-stale-past"),
        (unix_now() + 600, "nonce-stale-future"),
    ] {
        let h = v3_headers(
            "platform_private.pem",
            WECHAT_PLATFORM_SERIAL,
            ts,
            nonce,
            &body,
        );
        let r = gw.send_owned(V3_PATH, &h, &body).await;
        assert_eq!(r.status, 401, "{nonce}");
        assert!(v3_fail(&r));
    }
    assert_eq!(gw.requests_of(V3, "wechat_v3", "stale").await, 2.0);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn v3_bad_keys_ciphertexts_and_signatures_are_401() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = v3_gateway(&up).await;
    let now = unix_now();
    let pay = fixture("wechat", "v3_pay.json");
    let mut cases: Vec<(&str, Headers, Vec<u8>)> = vec![
        (
            "unknown serial",
            v3_headers(
                "platform_private.pem",
                "1234ABCD",
                now,
                "n-unknown-serial",
                &pay,
            ),
            pay.clone(),
        ),
        (
            "not-yet-valid certificate",
            v3_headers(
                "future_private.pem",
                WECHAT_FUTURE_SERIAL,
                now,
                "n-future-cert",
                &pay,
            ),
            pay.clone(),
        ),
        (
            "wrong key",
            v3_headers(
                "other_private.pem",
                WECHAT_PLATFORM_SERIAL,
                now,
                "n-wrong-key",
                &pay,
            ),
            pay.clone(),
        ),
    ];
    for (why, name) in [
        ("tampered ciphertext", "v3_tampered_ciphertext.json"),
        ("unknown algorithm", "v3_algorithm_unknown.json"),
        ("other merchant", "v3_other_mch.json"),
    ] {
        let (h, b) = v3_signed(name, &format!("n-{name}"));
        cases.push((why, h, b));
    }
    // The body changed after signing.
    let (h, _) = v3_signed("v3_pay.json", "n-body-changed");
    let changed = String::from_utf8(pay.clone())
        .unwrap()
        .replace("支付成功", "支付失败");
    cases.push(("body changed", h, changed.into_bytes()));
    // WeChat's deliberate probe.
    let (mut h, b) = v3_signed("v3_pay.json", "n-probe");
    for (k, v) in h.iter_mut() {
        if k == "wechatpay-signature" {
            *v = "WECHATPAY/SIGNTEST/c2lnbmF0dXJlIHByb2Jl".into();
        }
    }
    cases.push(("signature probe", h, b));
    // A signature scheme callgate does not accept.
    let (mut h, b) = v3_signed("v3_pay.json", "n-sm2");
    h.push((
        "wechatpay-signature-type".into(),
        "WECHATPAY2-SM2-WITH-SM3".into(),
    ));
    cases.push(("SM2 signature type", h, b));
    // No signature at all.
    let (h, b) = v3_signed("v3_pay.json", "n-unsigned");
    let h: Vec<_> = h
        .into_iter()
        .filter(|(k, _)| k != "wechatpay-signature")
        .collect();
    cases.push(("unsigned", h, b));

    let n = cases.len() as f64;
    for (why, h, b) in cases {
        let r = gw.send_owned(V3_PATH, &h, &b).await;
        assert_eq!(r.status, 401, "{why}: {}", r.text());
        assert!(v3_fail(&r), "{why}");
    }
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests_of(V3, "wechat_v3", "bad_signature").await, n);
    // Each is counted under its own reason; the probe never looks like an attack.
    let text = gw.get_admin("/metrics").await.text();
    let reason = |r: &str| {
        find_metric(
            &text,
            "callgate_rejections_total",
            &[("route", V3), ("provider", "wechat_v3"), ("reason", r)],
        )
    };
    assert_eq!(reason("probe_signature"), Some(1.0));
    assert_eq!(reason("unknown_serial"), Some(1.0));
    assert!(reason("bad_digest").unwrap_or(0.0) >= 2.0);
    // Still serving after the probe.
    let (h, b) = v3_signed("v3_pay.json", "n-after-probe");
    assert_eq!(gw.send_owned(V3_PATH, &h, &b).await.status, 200);
}

#[tokio::test]
async fn v3_malformed_bodies_are_400() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = v3_gateway(&up).await;
    let (mut h, b) = v3_signed("v3_pay.json", "n-content-type");
    for (k, v) in h.iter_mut() {
        if k == "content-type" {
            *v = "text/xml".into();
        }
    }
    assert_eq!(gw.send_owned(V3_PATH, &h, &b).await.status, 400);
    // A repeated key, even correctly signed, is malformed.
    let dup = br#"{"id":"EV-1","id":"EV-2","resource":{}}"#;
    let h = v3_headers(
        "platform_private.pem",
        WECHAT_PLATFORM_SERIAL,
        unix_now(),
        "n-dup",
        dup,
    );
    let r = gw.send_owned(V3_PATH, &h, dup).await;
    assert_eq!(r.status, 400);
    assert!(v3_fail(&r));
    let h = v3_headers(
        "platform_private.pem",
        WECHAT_PLATFORM_SERIAL,
        unix_now(),
        "n-broken",
        b"{",
    );
    assert_eq!(gw.send_owned(V3_PATH, &h, b"{").await.status, 400);
    // A repeated key inside the encrypted resource is as malformed as one
    // in the body: with `amount` twice, a shop parsing first-wins and
    // callgate parsing last-wins would read two amounts.
    let (h, b) = v3_signed("v3_duplicate_resource_key.json", "n-dup-resource");
    let r = gw.send_owned(V3_PATH, &h, &b).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(v3_fail(&r));
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests_of(V3, "wechat_v3", "malformed").await, 4.0);
}

// === helpers ===

fn md5_hex(text: &str) -> String {
    openssl_dgst_hex(&["-md5"], text.as_bytes())
}

fn openssl_aes_ecb_decrypt(key_hex: &str, data: &[u8]) -> Vec<u8> {
    openssl_pipe(&["enc", "-d", "-aes-256-ecb", "-K", key_hex], data)
}
