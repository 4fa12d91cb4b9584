//! The gateway end to end for `unionpay` and `jdpay`, over real sockets:
//! valid, tampered, wrong key or certificate, wrong merchant, duplicate,
//! stale and malformed notifications for each, asserting status, ack body,
//! what the upstream received and the metrics line; and the normalized JSON
//! of payments and refunds. Fixtures are signed by the openssl CLI or are
//! real public vectors (tests/fixtures/{unionpay,jdpay}/README.md).

mod support;

use base64::Engine as _;
use support::*;

const FORM: &str = "application/x-www-form-urlencoded";
const XML: &str = "text/xml; charset=UTF-8";

fn up_fixture(name: &str) -> Vec<u8> {
    fixture("unionpay", name)
}

fn jd_fixture(name: &str) -> Vec<u8> {
    fixture("jdpay", name)
}

async fn gateway(routes: Vec<RouteSpec>) -> TestGateway {
    TestGateway::start(GatewaySpec::new(routes)).await
}

/// A gateway with one route (`route`'s defaults) holding the platform's
/// published test `keys`, whose vectors are years old: (upstream, gateway).
async fn published_vector_gateway(
    route: fn(&Upstream) -> RouteSpec,
    keys: String,
) -> (Upstream, TestGateway) {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = route(&up).with(|r| {
        r.max_age = Some("200000h".into());
        r.keys = keys;
    });
    (up, gateway(vec![route]).await)
}

async fn post_xml(gw: &TestGateway, path: &str, body: Vec<u8>) -> Reply {
    gw.send("POST", path, &[("content-type", XML)], body).await
}

/// POSTs the UnionPay fixture `name` to the UnionPay route.
async fn post_unionpay(gw: &TestGateway, name: &str) -> Reply {
    gw.post_form("/notify/unionpay", &up_fixture(name)).await
}

/// POSTs the JD Pay fixture `name` to the JD Pay route.
async fn post_jdpay(gw: &TestGateway, name: &str) -> Reply {
    post_xml(gw, "/notify/jdpay", jd_fixture(name)).await
}

/// `callgate_requests_total` of the UnionPay route for `outcome`.
async fn unionpay_requests(gw: &TestGateway, outcome: &str) -> f64 {
    gw.requests_of("shop-unionpay", "unionpay", outcome).await
}

/// `callgate_requests_total` of the JD Pay route for `outcome`.
async fn jdpay_requests(gw: &TestGateway, outcome: &str) -> f64 {
    gw.requests_of("shop-jdpay", "jdpay", outcome).await
}

/// Decrypts a JD envelope's payload with the openssl CLI (independently of
/// callgate): Base64 → hex → 3DES-ECB → length-prefixed XML.
fn openssl_jd_decrypt(envelope: &[u8], des_key_file: &str) -> Vec<u8> {
    let text = String::from_utf8(envelope.to_vec()).unwrap();
    let a = text.find("<encrypt>").unwrap() + "<encrypt>".len();
    let b = text.find("</encrypt>").unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let hex_text = b64.decode(text[a..b].trim()).unwrap();
    let cipher = hex::decode(hex_text).unwrap();
    let key_text = std::fs::read_to_string(fixture_path("jdpay", des_key_file)).unwrap();
    let key = hex::encode(b64.decode(key_text.trim()).unwrap());
    let plain = openssl_pipe(&["enc", "-d", "-des-ede3", "-nopad", "-K", &key], &cipher);
    let n = u32::from_be_bytes(plain[..4].try_into().unwrap()) as usize;
    plain[4..4 + n].to_vec()
}

// === unionpay ===

#[tokio::test]
async fn unionpay_payment_is_forwarded_byte_for_byte_and_acked_ok() {
    let (up, gw) = start_one(RouteSpec::unionpay).await;
    let body = up_fixture("v510_payment.form");
    let reply = gw
        .send(
            "POST",
            "/notify/unionpay?code=unionpay",
            &[
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=UTF-8",
                ),
                ("x-callgate-event-id", "forged"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));

    let got = up.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.body.as_ref(), body.as_slice(), "body byte for byte");
    assert_eq!(r.uri, "/plus/notify.php");
    let h = &r.headers;
    assert_eq!(h["x-callgate-provider"], "unionpay");
    assert_eq!(h["x-callgate-route"], "shop-unionpay");
    assert_eq!(h["x-callgate-event-id"], "782261122100000000001:01");
    assert_eq!(h.get_all("x-callgate-event-id").iter().count(), 1);
    assert!(
        h.get("x-callgate-resource").is_none(),
        "nothing was encrypted"
    );
    let (t, v1) = split_signature(h["x-callgate-signature"].to_str().unwrap());
    let signed = [t.as_bytes(), b".", &body].concat();
    assert_eq!(v1, openssl_hmac_hex(SECRET.trim_end(), &signed));
    assert_eq!(unionpay_requests(&gw, "forwarded").await, 1.0);
}

#[tokio::test]
async fn unionpay_5_0_0_and_gbk_and_failure_notifications_are_forwarded() {
    let (up, gw) = start_one(RouteSpec::unionpay).await;
    for name in [
        "v500_payment.form",
        "v510_gbk.form",
        "v510_failed.form",
        "v510_empty_value.form",
    ] {
        let reply = gw.post_form("/notify/unionpay", &up_fixture(name)).await;
        reply.assert_is(200, "ok", name);
    }
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn unionpay_forgeries_and_bad_certificates_get_401() {
    let (up, gw) = start_one(RouteSpec::unionpay).await;
    let refused = [
        "v510_tampered_amount.form",
        "v510_attacker_selfsigned.form",
        "v510_impostor_middle.form",
        "v510_expired_cert.form",
        "v510_wrong_cn.form",
        "v510_wrong_key.form",
        "v510_empty_value_skipped.form",
        "v510_signmethod_11.form",
        "v600.form",
        "v510_missing_signature.form",
        "v500_tampered_amount.form",
        "v500_unknown_cert_id.form",
        "v500_sha256_signature.form",
    ];
    for name in refused {
        let reply = gw.post_form("/notify/unionpay", &up_fixture(name)).await;
        reply.assert_is(401, "fail", name);
    }
    assert_eq!(up.count(), 0);
    assert_eq!(
        unionpay_requests(&gw, "bad_signature").await,
        refused.len() as f64
    );
}

#[tokio::test]
async fn unionpay_real_sandbox_vector_is_refused_now_its_certificate_expired() {
    // Real UnionPay sandbox notification, with UnionPay's published test
    // chain: the signature is genuine, but the certificate expired on
    // 2025-07-31, and expired certificates are refused.
    let keys = format!(
        "mer_id = \"777290058167151\"\nroot_cert = {:?}\nmiddle_cert = {:?}\n",
        fixture_path("unionpay", "acp_test_root.pem"),
        fixture_path("unionpay", "acp_test_middle.pem")
    );
    let (up, gw) = published_vector_gateway(RouteSpec::unionpay, keys).await;
    let reply = gw
        .post_form(
            "/notify/unionpay",
            &up_fixture("yansongda_sandbox_510.form"),
        )
        .await;
    assert_eq!((reply.status, reply.text().as_str()), (401, "fail"));
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn unionpay_other_merchant_is_401() {
    // UnionPay signs every merchant's notifications with one certificate:
    // another merchant's genuine notification is refused by merId (and a
    // route cannot leave mer_id out: see tests/cli.rs).
    let (up, gw) = start_one(RouteSpec::unionpay).await;
    let body = up_fixture("v510_other_merchant.form");
    let reply = gw.post_form("/notify/unionpay", &body).await;
    assert_eq!((reply.status, reply.text().as_str()), (401, "fail"));
    assert_eq!(up.count(), 0);
    assert_eq!(
        gw.rejections("shop-unionpay", "unionpay", "merchant_mismatch")
            .await,
        1.0
    );
}

#[tokio::test]
async fn unionpay_duplicate_is_acked_not_forwarded_and_refund_is_its_own_event() {
    let (up, gw) = start_one(RouteSpec::unionpay).await;
    let body = up_fixture("v510_payment.form");
    assert_eq!(gw.post_form("/notify/unionpay", &body).await.status, 200);
    let again = gw.post_form("/notify/unionpay", &body).await;
    assert_eq!((again.status, again.text().as_str()), (200, "ok"));
    assert_eq!(up.count(), 1);
    assert_eq!(unionpay_requests(&gw, "duplicate").await, 1.0);
    let refund = post_unionpay(&gw, "v510_refund.form").await;
    assert_eq!(refund.status, 200);
    assert_eq!(up.count(), 2);
    assert_eq!(
        up.received()[1].headers["x-callgate-event-id"],
        "782261122100000000003:04"
    );
}

#[tokio::test]
async fn unionpay_stale_txn_time_is_401() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::unionpay(&up).with(|r| r.max_age = Some("25h".into()));
    let gw = gateway(vec![route]).await;
    let reply = post_unionpay(&gw, "v510_old.form").await;
    assert_eq!((reply.status, reply.text().as_str()), (401, "fail"));
    assert_eq!(up.count(), 0);
    assert_eq!(unionpay_requests(&gw, "stale").await, 1.0);
}

#[tokio::test]
async fn unionpay_malformed_bodies_get_400() {
    let (up, gw) = start_one(RouteSpec::unionpay).await;
    let cases: [(&str, Vec<u8>); 4] = [
        (FORM, up_fixture("v510_duplicate_key.form")),
        (FORM, b"txnAmt=%zz".to_vec()),
        (FORM, Vec::new()),
        ("application/json", up_fixture("v510_payment.form")),
    ];
    for (ct, body) in cases {
        let reply = gw
            .send("POST", "/notify/unionpay", &[("content-type", ct)], body)
            .await;
        assert_eq!((reply.status, reply.text().as_str()), (400, "fail"));
    }
    assert_eq!(up.count(), 0);
    assert_eq!(unionpay_requests(&gw, "malformed").await, 4.0);
}

#[tokio::test]
async fn unionpay_normalized_payment_refund_and_failure() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::unionpay(&up).with(|r| r.forward = "normalized".into());
    let gw = gateway(vec![route]).await;
    for name in [
        "v510_payment.form",
        "v510_refund.form",
        "v510_failed.form",
        "v510_gbk.form",
    ] {
        let reply = gw.post_form("/notify/unionpay", &up_fixture(name)).await;
        assert_eq!(reply.status, 200, "{name}");
    }
    let got = up.received();
    let json = |i: usize| -> serde_json::Value { serde_json::from_slice(&got[i].body).unwrap() };
    assert_eq!(got[0].headers["content-type"], "application/json");
    let (t, v1) = split_signature(got[0].headers["x-callgate-signature"].to_str().unwrap());
    let signed = [t.as_bytes(), b".", &got[0].body].concat();
    assert_eq!(v1, openssl_hmac_hex(SECRET.trim_end(), &signed));

    let pay = json(0);
    assert_eq!(pay["provider"], "unionpay");
    assert_eq!(pay["event_id"], "782261122100000000001:01");
    assert_eq!(pay["out_trade_no"], "CG20261122000001");
    assert_eq!(pay["provider_trade_no"], "782261122100000000001");
    assert_eq!(pay["amount_fen"], 8888);
    assert_eq!(pay["currency"], "CNY");
    assert_eq!(pay["status"], "paid");
    assert_eq!(pay["occurred_at"], "2026-11-22T10:00:00+08:00");
    assert_eq!(pay["fields"]["respMsg"], "成功[0000000]");
    assert_eq!(pay["fields"]["merId"], "777290058110097");
    assert!(pay["fields"].get("signature").is_none());

    let refund = json(1);
    assert_eq!(refund["status"], "refunded");
    assert_eq!(refund["amount_fen"], 1000);
    assert_eq!(refund["event_id"], "782261122100000000003:04");
    assert_eq!(refund["fields"]["origQryId"], "782261122100000000001");

    let failed = json(2);
    assert_eq!(failed["status"], "closed");
    assert_eq!(failed["fields"]["respCode"], "01");
    assert_eq!(failed["fields"]["respMsg"], "交易失败[1000001]");

    let gbk = json(3);
    assert_eq!(gbk["fields"]["reqReserved"], "测试 GBK", "decoded from GBK");
}

#[tokio::test]
async fn unionpay_normalized_pre_authorisation_revocations_collection_and_payout() {
    // A pre-authorisation holds funds (pending), its completion takes them
    // (paid); revoking the completion (txnType 33) gives them back, which
    // the shop must hear as `refunded` like a 31 or 04, not `pending`
    // (the order would stay paid after the money went back); revoking the
    // authorisation (32) means nothing will be captured: `closed`.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::unionpay(&up).with(|r| r.forward = "normalized".into());
    let gw = gateway(vec![route]).await;
    let cases = [
        ("v510_preauth.form", "02", "pending"),
        ("v510_preauth_complete.form", "03", "paid"),
        ("v510_preauth_complete_revoked.form", "33", "refunded"),
        ("v510_preauth_revoked.form", "32", "closed"),
        // 代收 debits the card to the merchant: paid. 代付 pays the
        // merchant's money out: never paid.
        ("v510_collection.form", "11", "paid"),
        ("v510_payout.form", "12", "pending"),
    ];
    for (name, txn_type, status) in cases {
        let reply = gw.post_form("/notify/unionpay", &up_fixture(name)).await;
        assert_eq!(reply.status, 200, "{name}");
        let got = up.received();
        let v: serde_json::Value = serde_json::from_slice(&got.last().unwrap().body).unwrap();
        assert_eq!(v["fields"]["txnType"], txn_type, "{name}");
        assert_eq!(
            (v["status"].as_str(), v["amount_fen"].as_i64()),
            (Some(status), Some(8888)),
            "{name}: {v}"
        );
    }
    assert_eq!(up.count(), cases.len());
}

// === jdpay ===

#[tokio::test]
async fn jdpay_payment_is_forwarded_with_the_decrypted_payload_and_acked_success() {
    let (up, gw) = start_one(RouteSpec::jdpay).await;
    let body = jd_fixture("payment.xml");
    let reply = post_xml(&gw, "/notify/jdpay", body.clone()).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "success"));

    let got = up.received();
    assert_eq!(got.len(), 1);
    let h = &got[0].headers;
    assert_eq!(
        got[0].body.as_ref(),
        body.as_slice(),
        "envelope byte for byte"
    );
    assert_eq!(h["content-type"], XML);
    assert_eq!(h["x-callgate-provider"], "jdpay");
    assert_eq!(h["x-callgate-event-id"], "CG20261122000001:0:2");
    let (t, v1) = split_signature(h["x-callgate-signature"].to_str().unwrap());
    assert_eq!(
        v1,
        openssl_hmac_hex(SECRET.trim_end(), &[t.as_bytes(), b".", &body].concat())
    );

    // X-Callgate-Resource is the decrypted XML exactly as openssl decrypts it,
    // with its own HMAC under the same t.
    let resource = base64::engine::general_purpose::STANDARD
        .decode(h["x-callgate-resource"].as_bytes())
        .unwrap();
    assert_eq!(resource, openssl_jd_decrypt(&body, "des.key"));
    assert!(String::from_utf8_lossy(&resource).contains("<sign>"));
    let rt = check_callgate_resource_hmac(
        h["x-callgate-resource-signature"].to_str().unwrap(),
        &resource,
    );
    assert_eq!(rt, t);
    assert_eq!(jdpay_requests(&gw, "forwarded").await, 1.0);
}

#[tokio::test]
async fn jdpay_envelope_edits_never_reach_the_shop() {
    // A genuine failed payment (signed result 999999, status 3) whose
    // unsigned envelope says 000000 and carries a status, a trade number
    // and an amount of its own: the shop gets the envelope without them,
    // and the signature it checks covers what it got.
    let (up, gw) = start_one(RouteSpec::jdpay).await;
    let body = jd_fixture("payment_failed_envelope_edited.xml");
    let reply = post_xml(&gw, "/notify/jdpay", body.clone()).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "success"));
    let mut want = String::from_utf8(body.clone()).unwrap();
    for cut in [
        "<result>\n    <code>000000</code>\n    <desc>success</desc>\n  </result>",
        "<status>2</status>",
        "<tradeNum>ORDER-VICTIM</tradeNum>",
        "<amount>100000</amount>",
    ] {
        assert!(want.contains(cut), "{cut}");
        want = want.replacen(cut, "", 1);
    }
    let got = up.received();
    assert_eq!(got.len(), 1);
    assert_eq!(String::from_utf8_lossy(&got[0].body), want);
    let h = &got[0].headers;
    assert_eq!(h["x-callgate-event-id"], "CG20261122000015:0:3");
    let (t, v1) = split_signature(h["x-callgate-signature"].to_str().unwrap());
    assert_eq!(
        v1,
        openssl_hmac_hex(
            SECRET.trim_end(),
            &[t.as_bytes(), b".", want.as_bytes()].concat()
        )
    );
    // The payload the shop is given says what JD signed.
    let resource = base64::engine::general_purpose::STANDARD
        .decode(h["x-callgate-resource"].as_bytes())
        .unwrap();
    assert_eq!(resource, openssl_jd_decrypt(&body, "des.key"));
    assert!(String::from_utf8_lossy(&resource).contains("<code>999999</code>"));

    // The same event with its genuine envelope is a duplicate.
    let reply = post_jdpay(&gw, "payment_failed.xml").await;
    reply.assert_is(200, "success", "the unedited copy");
    assert_eq!(up.count(), 1);
    assert_eq!(jdpay_requests(&gw, "duplicate").await, 1.0);
}

#[tokio::test]
async fn jdpay_formatting_variants_and_content_types_are_accepted() {
    let (up, gw) = start_one(RouteSpec::jdpay).await;
    for (name, ct) in [
        ("payment_pretty.xml", Some(XML)),
        ("payment_decl_space.xml", Some("application/xml")),
        ("payment_no_decl.xml", Some("text/plain")),
        ("payment_2.xml", None),
    ] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let reply = gw
            .send("POST", "/notify/jdpay", &headers, jd_fixture(name))
            .await;
        reply.assert_is(200, "success", name);
    }
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn jdpay_real_demo_vector_is_forwarded() {
    // JD's own demo notification (merchant 110148035005, signed with JD's
    // test key in 2016).
    let keys = format!(
        "merchant = \"110148035005\"\ndes_key_file = {:?}\njd_public_key = {:?}\n",
        fixture_path("jdpay", "jd_demo.des"),
        fixture_path("jdpay", "jd_test_public.pem")
    );
    let (up, gw) = published_vector_gateway(RouteSpec::jdpay, keys).await;
    let body = jd_fixture("jd_demo_payment.xml");
    let reply = post_xml(&gw, "/notify/jdpay", body.clone()).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "success"));
    let got = up.received();
    assert_eq!(got[0].headers["x-callgate-event-id"], "160927496812634:0:2");
    let resource = base64::engine::general_purpose::STANDARD
        .decode(got[0].headers["x-callgate-resource"].as_bytes())
        .unwrap();
    assert_eq!(resource, openssl_jd_decrypt(&body, "jd_demo.des"));
}

#[tokio::test]
async fn jdpay_forgeries_and_wrong_keys_get_401() {
    let (up, gw) = start_one(RouteSpec::jdpay).await;
    let refused = [
        "tampered_amount.xml",
        "wrong_rsa_key.xml",
        "wrong_des_key.xml",
        "version_v3.xml",
        "no_sign.xml",
        "markup_in_sign.xml",
        "length_above_limit.xml",
        "length_beyond_payload.xml",
    ];
    for name in refused {
        let reply = post_xml(&gw, "/notify/jdpay", jd_fixture(name)).await;
        reply.assert_is(401, "fail", name);
    }
    assert_eq!(up.count(), 0);
    assert_eq!(
        jdpay_requests(&gw, "bad_signature").await,
        refused.len() as f64
    );
}

#[tokio::test]
async fn jdpay_other_merchant_is_401_in_the_envelope_and_in_the_payload() {
    let (up, gw) = start_one(RouteSpec::jdpay).await;
    for name in ["other_merchant.xml", "inner_merchant_differs.xml"] {
        let reply = post_xml(&gw, "/notify/jdpay", jd_fixture(name)).await;
        reply.assert_is(401, "fail", name);
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn jdpay_duplicate_is_acked_not_forwarded() {
    let (up, gw) = start_one(RouteSpec::jdpay).await;
    let body = jd_fixture("payment.xml");
    assert_eq!(
        post_xml(&gw, "/notify/jdpay", body.clone()).await.status,
        200
    );
    let again = post_xml(&gw, "/notify/jdpay", body).await;
    assert_eq!((again.status, again.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
    assert_eq!(jdpay_requests(&gw, "duplicate").await, 1.0);
    let refund = post_jdpay(&gw, "refund.xml").await;
    assert_eq!(refund.status, 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn jdpay_stale_trade_time_is_401() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::jdpay(&up).with(|r| r.max_age = Some("25h".into()));
    let gw = gateway(vec![route]).await;
    let reply = post_jdpay(&gw, "stale.xml").await;
    assert_eq!((reply.status, reply.text().as_str()), (401, "fail"));
    assert_eq!(up.count(), 0);
    assert_eq!(jdpay_requests(&gw, "stale").await, 1.0);
}

#[tokio::test]
async fn jdpay_malformed_bodies_get_400() {
    let (up, gw) = start_one(RouteSpec::jdpay).await;
    let mut cases: Vec<(&str, Vec<u8>)> = [
        "doctype.xml",
        "repeated_encrypt.xml",
        "nested.xml",
        "truncated.xml",
        "encrypt_not_base64.xml",
        "root_xml.xml",
        "repeated_inner_amount.xml",
    ]
    .into_iter()
    .map(|n| (XML, jd_fixture(n)))
    .collect();
    cases.push((XML, Vec::new()));
    cases.push((FORM, jd_fixture("payment.xml")));
    cases.push(("application/json", jd_fixture("payment.xml")));
    let n = cases.len();
    for (ct, body) in cases {
        let reply = gw
            .send("POST", "/notify/jdpay", &[("content-type", ct)], body)
            .await;
        assert_eq!((reply.status, reply.text().as_str()), (400, "fail"));
    }
    assert_eq!(up.count(), 0);
    assert_eq!(jdpay_requests(&gw, "malformed").await, n as f64);
}

#[tokio::test]
async fn jdpay_normalized_payment_and_refund() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::jdpay(&up).with(|r| r.forward = "normalized".into());
    let gw = gateway(vec![route]).await;
    for name in ["payment.xml", "refund.xml"] {
        let reply = post_xml(&gw, "/notify/jdpay", jd_fixture(name)).await;
        assert_eq!(reply.status, 200, "{name}");
    }
    let got = up.received();
    assert_eq!(got[0].headers["content-type"], "application/json");
    assert!(
        got[0].headers.get("x-callgate-resource").is_none(),
        "the decrypted fields are in the JSON already"
    );
    let pay: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(pay["provider"], "jdpay");
    assert_eq!(pay["event_id"], "CG20261122000001:0:2");
    assert_eq!(pay["out_trade_no"], "CG20261122000001");
    assert_eq!(pay["provider_trade_no"], serde_json::Value::Null);
    assert_eq!(pay["amount_fen"], 8888);
    assert_eq!(pay["currency"], "CNY");
    assert_eq!(pay["status"], "paid");
    assert_eq!(pay["occurred_at"], "2026-11-22T10:00:00+08:00");
    assert_eq!(pay["fields"]["payList"]["pay"][0]["amount"], "8888");
    assert_eq!(
        pay["fields"]["payList"]["pay"][0]["detail"]["cardHolderName"],
        "*三"
    );
    assert!(pay["fields"].get("sign").is_none());

    let refund: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(refund["status"], "refunded");
    assert_eq!(refund["event_id"], "CG20261122000001R:2:1");
    assert_eq!(refund["out_trade_no"], "CG20261122000001");
    assert_eq!(refund["fields"]["tradeNum"], "CG20261122000001R");
    assert_eq!(refund["amount_fen"], 1000);
    assert_eq!(refund["fields"]["note"], "退款");
}
