//! Event identity end to end, over real sockets: a genuine notification of
//! every provider is delivered once, and the same notification reshaped by
//! an attacker who holds it (its id blanked, padded, folded into a
//! neighbouring value, a fallback field removed) never reaches the shop
//! again; two merchants of one route whose ids collide both reach their
//! shops; a GBK notification on a route that says nothing about charset is
//! delivered; a signature type the route pins out is refused; sub-merchants are
//! bound; a buyer's legacy Alipay return-URL copy is not a second event. Most reshaped bodies are derived from the committed fixtures
//! (signed by openssl / python cryptography, tests/fixtures/*/make.py)
//! without signing again: each keeps its genuine signature valid, which is
//! the point. WeChat v3 variants are signed here by the openssl CLI.

mod support;

use support::*;

/// Replaces the one occurrence of `old` in `body`.
fn swap(body: &[u8], old: &str, new: &str) -> Vec<u8> {
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(text.matches(old).count(), 1, "`{old}` in {text}");
    text.replacen(old, new, 1).into_bytes()
}

// === Alipay ===

#[tokio::test]
async fn alipay_reshaped_ids_never_reach_the_shop_again() {
    let (up, gw) = start_one(RouteSpec::alipay).await;
    let genuine = fixture("alipay", "rsa2_trade_success.form");
    let nid = "2026112200222000000000000000000001";
    let r = gw.post_form("/notify/alipay", &genuine).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);

    // `invoice_amount` sorts just before `notify_id`: moving
    // `&notify_id=<id>` into its value and blanking (or dropping) the id
    // leaves the string Alipay's Java rule signs byte for byte the same.
    let folded = swap(
        &genuine,
        "invoice_amount=88.88&",
        &format!("invoice_amount=88.88%26notify_id%3D{nid}&"),
    );
    let mut reshaped: Vec<(String, Vec<u8>)> = ["%20", "%20%20", "%09", "%E3%80%80", ""]
        .iter()
        .map(|blank| {
            (
                format!("id blanked as `{blank}`, folded"),
                swap(
                    &folded,
                    &format!("notify_id={nid}&"),
                    &format!("notify_id={blank}&"),
                ),
            )
        })
        .collect();
    reshaped.push((
        "id removed, folded".into(),
        swap(&folded, &format!("notify_id={nid}&"), ""),
    ));
    for (what, body) in &reshaped {
        let r = gw.post_form("/notify/alipay", body).await;
        r.assert_is(400, "fail", what);
    }
    assert_eq!(
        gw.rejections("shop-alipay", "alipay", "ambiguous_fields")
            .await,
        reshaped.len() as f64
    );
    // Padding is not trimmed by Alipay's rule: the signature fails.
    let padded = swap(
        &genuine,
        &format!("notify_id={nid}&"),
        &format!("notify_id=%20{nid}&"),
    );
    assert_eq!(gw.post_form("/notify/alipay", &padded).await.status, 401);
    // A blank field added to the genuine body is outside the signature: it
    // verifies, as the same event, so it is a duplicate.
    let extra = [genuine.as_slice(), b"&x=%20"].concat();
    let r = gw.post_form("/notify/alipay", &extra).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(gw.requests("duplicate").await, 1.0);
    assert_eq!(up.count(), 1, "no reshaped copy reached the shop");
}

/// An order number folded into the value before it (and dropped) leaves
/// the signed string as it was, and the shop without an order number: a
/// shop that answers `success` to an order it cannot find would have the
/// event recorded as delivered, and the platform's own copy would then be
/// answered as a duplicate, never reaching it.
#[tokio::test]
async fn an_order_number_folded_away_never_reaches_the_shop() {
    let (up, gw) = start_one(RouteSpec::alipay).await;
    let genuine = fixture("alipay", "rsa2_trade_success.form");
    let order = "out_trade_no=CG20261122000001&";
    // `notify_type` sorts just before `out_trade_no`.
    let folded = swap(
        &swap(&genuine, order, ""),
        "notify_type=trade_status_sync&",
        "notify_type=trade_status_sync%26out_trade_no%3DCG20261122000001&",
    );
    let r = gw.post_form("/notify/alipay", &folded).await;
    r.assert_is(400, "fail", "alipay: out_trade_no folded away");
    // A blank one put back is outside the signature (and never reaches the
    // shop): the order number is still missing.
    let blank = [folded.as_slice(), b"&out_trade_no="].concat();
    let r = gw.post_form("/notify/alipay", &blank).await;
    r.assert_is(400, "fail", "alipay: folded away, a blank one added");
    assert_eq!(
        gw.rejections("shop-alipay", "alipay", "ambiguous_fields")
            .await,
        2.0
    );
    assert_eq!(up.count(), 0);
    // The platform's own copy is then delivered, order number and all.
    let r = gw.post_form("/notify/alipay", &genuine).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert!(String::from_utf8_lossy(&up.received()[0].body).contains(order));

    // WeChat v2: `openid` sorts just before `out_trade_no`.
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = TestGateway::start(GatewaySpec::new(vec![RouteSpec::wechat_v2(&up)])).await;
    let genuine = fixture("wechat", "v2_md5_pay.xml");
    let folded = swap(
        &swap(
            &genuine,
            "<out_trade_no><![CDATA[CG20261122000001]]></out_trade_no>",
            "",
        ),
        "<openid><![CDATA[oUpF8uMEb4qRXf22hE3X68TekukE]]></openid>",
        "<openid><![CDATA[oUpF8uMEb4qRXf22hE3X68TekukE&out_trade_no=CG20261122000001]]></openid>",
    );
    let r = gw.post_xml(&folded).await;
    assert_eq!(r.status, 400, "wechat_v2: {}", r.text());
    assert_eq!(
        gw.rejections("shop-wechat-v2", "wechat_v2", "ambiguous_fields")
            .await,
        1.0
    );
    assert_eq!(gw.post_xml(&genuine).await.status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn alipay_blank_fields_added_to_a_genuine_notification_never_reach_the_shop() {
    // Under the Java rule a blank value is not signed, so anyone can add
    // `refund_fee=%20` to a genuine payment. The shop gets the notification
    // without it (a naive shop would take the field's presence for a
    // refund), in original and in normalized mode.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let normalized = RouteSpec::alipay(&up).with(|r| {
        r.name = "shop-alipay-json".into();
        r.path = "/notify/alipay-json".into();
        r.forward = "normalized".into();
    });
    let gw = TestGateway::start(GatewaySpec::new(vec![RouteSpec::alipay(&up), normalized])).await;
    let genuine = fixture("alipay", "rsa2_trade_success_2.form");
    let added = [
        &b"refund_fee=%20&gmt_refund=&"[..],
        genuine.as_slice(),
        b"&out_biz_no=%E3%80%80",
    ]
    .concat();
    let r = gw.post_form("/notify/alipay", &added).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.received()[0].body.as_ref(), genuine.as_slice());

    let r = gw.post_form("/notify/alipay-json", &added).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let v: serde_json::Value = serde_json::from_slice(&up.received()[1].body).unwrap();
    for blank in ["refund_fee", "gmt_refund", "out_biz_no"] {
        assert!(v["fields"].get(blank).is_none(), "{blank}: {v}");
    }
    assert_eq!(v["status"], "paid");
}

#[tokio::test]
async fn alipay_md5_reshaped_ids_never_reach_the_shop_again() {
    let (up, gw) = start_one(RouteSpec::alipay_md5).await;
    let genuine = fixture("alipay_md5", "md5_trade_success.form");
    let nid = "a7f3c1e9b2d84f6e8c0b5a4d3e2f1c0001";
    let path = "/notify/alipay_md5";
    assert_eq!(gw.post_form(path, &genuine).await.status, 200);
    // `is_total_fee_adjust` sorts just before `notify_id`; the legacy
    // demo leaves empty values out of the signed string.
    let folded = swap(
        &genuine,
        "is_total_fee_adjust=N&",
        &format!("is_total_fee_adjust=N%26notify_id%3D{nid}&"),
    );
    for (what, body) in [
        (
            "id emptied",
            swap(&folded, &format!("notify_id={nid}&"), "notify_id=&"),
        ),
        (
            "id removed",
            swap(&folded, &format!("notify_id={nid}&"), ""),
        ),
    ] {
        let r = gw.post_form(path, &body).await;
        r.assert_is(400, "fail", what);
    }
    assert_eq!(
        gw.rejections("shop-legacy", "alipay_md5", "ambiguous_fields")
            .await,
        2.0
    );
    assert_eq!(gw.post_form(path, &genuine).await.status, 200);
    assert_eq!(up.count(), 1);
}

/// A legacy Alipay (MAPI) payment signed with the fixture partner key by
/// the openssl CLI the way the legacy demo checks it: sorted `k=v` joined
/// by `&`, the key appended, MD5 in lower-case hex; values form-encoded.
fn alipay_md5_openssl(params: &[(&str, &str)]) -> Vec<u8> {
    let key = std::fs::read_to_string(fixture_path("alipay_md5", "md5_key.txt")).unwrap();
    let (sorted, content) = sorted_content(params);
    let digest = openssl_pipe(
        &["dgst", "-md5", "-r"],
        format!("{content}{}", key.trim_end()).as_bytes(),
    );
    let sign = String::from_utf8(digest).unwrap()[..32].to_owned();
    form_body(
        &sorted,
        &["sign_type=MD5".to_owned(), format!("sign={sign}")],
    )
}

/// The buyer's browser comes back from a legacy Alipay payment to the
/// shop's `return_url` with the payment's fields signed by the same
/// partner key as the server notification, but under a `notify_id` of its
/// own (`RqPnCoPT3K9%2F...`, the `%2F` part of the signed value: every
/// real return URL in the wild has it, double-encoded in the URL). Posted
/// to the notify URL, that copy verifies: were its id taken, the one
/// payment would reach the shop a second time as a new event. The id's
/// syntax (letters and digits) refuses it.
#[tokio::test]
async fn a_buyers_return_url_copy_of_a_legacy_alipay_payment_is_not_a_second_event() {
    let (up, gw) = start_one(RouteSpec::alipay_md5).await;
    let path = "/notify/alipay_md5";
    let payment = |extra: &[(&'static str, &'static str)]| {
        let mut p = vec![
            ("buyer_email", "buyer@example.com"),
            ("buyer_id", "2088102177846880"),
            ("notify_time", "2026-11-22 10:00:00"),
            ("notify_type", "trade_status_sync"),
            ("out_trade_no", "CG20261122100077"),
            ("payment_type", "1"),
            ("seller_email", "shop@example.com"),
            ("seller_id", "2088101122334455"),
            ("subject", "callgate test order"),
            ("total_fee", "88.88"),
            ("trade_no", "2026112221001004880200000077"),
            ("trade_status", "TRADE_SUCCESS"),
        ];
        p.extend_from_slice(extra);
        p
    };
    // The server notification: delivered once.
    let notify = alipay_md5_openssl(&payment(&[(
        "notify_id",
        "b5e0c2a7d4f84e1c9a3b6d8e0f2a4c0077",
    )]));
    gw.post_form(path, &notify)
        .await
        .assert_is(200, "success", "the server notification");

    // The return URL's fields, as the shop's return handler reads them
    // (one decode of `notify_id=RqPnCoPT3K9%252F...`), posted to the notify
    // URL (encoded once more, so callgate decodes them back to the signed
    // bytes).
    let returned = [
        ("exterface", "create_direct_pay_by_user"),
        ("is_success", "T"),
        (
            "notify_id",
            "RqPnCoPT3K9%2Fvwbh3InR8tGjRXYpexpaRGyeCWBjSZV1%2BqqtUD1W5T58ANYJw2sMq9G4",
        ),
    ];
    gw.post_form(path, &alipay_md5_openssl(&payment(&returned)))
        .await
        .assert_is(400, "fail", "the return URL copy");
    assert_eq!(
        gw.rejections("shop-legacy", "alipay_md5", "bad_event_id")
            .await,
        1.0
    );
    // Decoded once more (an id of `/` and `+`), it no longer verifies.
    let text = String::from_utf8(alipay_md5_openssl(&payment(&returned))).unwrap();
    let decoded_again = text.replace("%252F", "%2F").replace("%252B", "%2B");
    gw.post_form(path, decoded_again.as_bytes())
        .await
        .assert_is(401, "fail", "the return URL copy decoded twice");
    assert_eq!(up.count(), 1);
}

// === WeChat Pay ===

#[tokio::test]
async fn wechat_v2_reshaped_ids_never_reach_the_shop_again() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = TestGateway::start(GatewaySpec::new(vec![RouteSpec::wechat_v2(&up)])).await;
    let genuine = fixture("wechat", "v2_md5_pay.xml");
    let id = "4200002026112200000000000001";
    assert_eq!(gw.post_xml(&genuine).await.status, 200);
    assert_eq!(up.count(), 1);

    // WeChat's Java SDK trims values and skips blank ones; `trade_type`
    // sorts just before `transaction_id`. Before, a missing id fell back to
    // `out_trade_no`.
    let id_element = format!("<transaction_id><![CDATA[{id}]]></transaction_id>");
    let folded = swap(
        &genuine,
        "<trade_type><![CDATA[JSAPI]]></trade_type>",
        &format!("<trade_type><![CDATA[JSAPI&transaction_id={id}]]></trade_type>"),
    );
    let reshaped = [
        (
            "id padded (trimmed by the signer)",
            swap(
                &genuine,
                &id_element,
                &format!("<transaction_id><![CDATA[ {id}\t]]></transaction_id>"),
            ),
            "bad_event_id",
        ),
        (
            "id blanked, folded",
            swap(
                &folded,
                &id_element,
                "<transaction_id><![CDATA[ ]]></transaction_id>",
            ),
            "ambiguous_fields",
        ),
        (
            "id removed, folded (the old fallback to out_trade_no)",
            swap(&folded, &id_element, ""),
            "ambiguous_fields",
        ),
    ];
    for (what, body, _) in &reshaped {
        let r = gw.post_xml(body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
    }
    for reason in ["bad_event_id", "ambiguous_fields"] {
        let want = reshaped.iter().filter(|(_, _, r)| *r == reason).count();
        assert_eq!(
            gw.rejections("shop-wechat-v2", "wechat_v2", reason).await,
            want as f64,
            "{reason}"
        );
    }
    assert_eq!(gw.post_xml(&genuine).await.status, 200);
    assert_eq!(up.count(), 1, "no reshaped copy reached the shop");
}

#[tokio::test]
async fn wechat_v2_blank_elements_added_to_a_genuine_notification_never_reach_the_shop() {
    // WeChat's SDKs leave blank values out of the signed string, so blank
    // elements can be added to a genuine payment: the shop never gets them.
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let normalized = RouteSpec::wechat_v2(&up).with(|r| {
        r.name = "shop-wechat-v2-json".into();
        r.path = "/notify/wechat-json".into();
        r.forward = "normalized".into();
    });
    let gw = TestGateway::start(GatewaySpec::new(vec![
        RouteSpec::wechat_v2(&up),
        normalized,
    ]))
    .await;
    let genuine = fixture("wechat", "v2_md5_pay_2.xml");
    let added = swap(
        &genuine,
        "</xml>",
        "<refund_fee></refund_fee><coupon_fee><![CDATA[ ]]></coupon_fee><settlement_total_fee/></xml>",
    );
    assert_eq!(gw.post_xml(&added).await.status, 200);
    assert_eq!(up.received()[0].body.as_ref(), genuine.as_slice());
    let r = gw
        .send(
            "POST",
            "/notify/wechat-json",
            &[("content-type", "text/xml")],
            added,
        )
        .await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&up.received()[1].body).unwrap();
    for blank in ["refund_fee", "coupon_fee", "settlement_total_fee"] {
        assert!(v["fields"].get(blank).is_none(), "{blank}: {v}");
    }
    assert_eq!(v["amount_fen"], 1990);
}

#[tokio::test]
async fn a_wechat_v2_refund_that_changes_status_is_two_events() {
    // One refund_id, first CHANGE (no success_time), then SUCCESS: the shop
    // must hear of both; a repeat of either is a duplicate.
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = TestGateway::start(GatewaySpec::new(vec![RouteSpec::wechat_v2(&up)])).await;
    for name in [
        "v2_refund_change.xml",
        "v2_refund.xml",
        "v2_refund_change.xml",
    ] {
        assert_eq!(
            gw.post_xml(&fixture("wechat", name)).await.status,
            200,
            "{name}"
        );
    }
    let ids: Vec<String> = up
        .received()
        .iter()
        .map(|g| {
            g.headers["x-callgate-event-id"]
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        ids,
        [
            "50300002026112200000000000001:CHANGE",
            "50300002026112200000000000001:SUCCESS"
        ]
    );
    assert_eq!(
        gw.requests_of("shop-wechat-v2", "wechat_v2", "duplicate")
            .await,
        1.0
    );
}

/// POSTs `body` to the v3 route, signed now by `key` (openssl) with `nonce`.
async fn post_v3(gw: &TestGateway, body: &[u8], nonce: &str) -> Reply {
    let h = v3_headers(
        "platform_private.pem",
        WECHAT_PLATFORM_SERIAL,
        unix_now(),
        nonce,
        body,
    );
    gw.send_owned("/notify/wechat-v3", &h, body).await
}

#[tokio::test]
async fn wechat_v3_reshaped_ids_never_reach_the_shop_again() {
    let up = Upstream::start(Behaviour::Reply(200, "")).await;
    let gw = TestGateway::start(GatewaySpec::new(vec![RouteSpec::wechat_v3(&up)])).await;
    let genuine = fixture("wechat", "v3_pay.json");
    assert_eq!(
        post_v3(&gw, &genuine, "identityNonce0001").await.status,
        200
    );
    // The platform's retry (a fresh nonce): a duplicate.
    assert_eq!(
        post_v3(&gw, &genuine, "identityNonce0002").await.status,
        200
    );
    assert_eq!(up.count(), 1);
    // v3 signs the raw body, so a reshaped id needs a new signature: these
    // are signed with the platform key, as a compromised or confused signer
    // would. None of them is an event id the platform issues.
    let id = "\"id\":\"EV-2026112200000001\",";
    for (i, (what, new)) in [
        ("padded", "\"id\":\" EV-2026112200000001\","),
        ("blank", "\"id\":\" \","),
        ("empty", "\"id\":\"\","),
        ("removed", ""),
        ("not a string", "\"id\":2026112200000001,"),
    ]
    .iter()
    .enumerate()
    {
        let body = swap(&genuine, id, new);
        let r = post_v3(&gw, &body, &format!("identityNonce01{i:02}")).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
    }
    assert_eq!(
        gw.rejections("shop-wechat-v3", "wechat_v3", "bad_event_id")
            .await,
        5.0
    );
    assert_eq!(up.count(), 1);
}

// === UnionPay and JD ===

#[tokio::test]
async fn unionpay_reshaped_ids_never_reach_the_shop_again() {
    let (up, gw) = start_one(RouteSpec::unionpay).await;
    let genuine = fixture("unionpay", "v510_payment.form");
    let qid = "782261122100000000001";
    let path = "/notify/unionpay";
    assert_eq!(gw.post_form(path, &genuine).await.status, 200);
    // UnionPay joins values unescaped and keeps empty ones: `orderId` sorts
    // just before `queryId`, so `queryId` folded into it (and dropped)
    // leaves the signed string the same.
    let folded = swap(
        &genuine,
        "orderId=CG20261122000001&",
        &format!("orderId=CG20261122000001%26queryId%3D{qid}&"),
    );
    let removed = swap(&folded, &format!("queryId={qid}&"), "");
    let r = gw.post_form(path, &removed).await;
    assert_eq!((r.status, r.text().as_str()), (400, "fail"));
    assert_eq!(
        gw.rejections("shop-unionpay", "unionpay", "ambiguous_fields")
            .await,
        1.0
    );
    // Blank or padded ids change the signed string (values are verbatim,
    // empty ones kept): 401.
    for new in ["queryId=&", &format!("queryId=%20{qid}&")] {
        let body = swap(&genuine, &format!("queryId={qid}&"), new);
        assert_eq!(gw.post_form(path, &body).await.status, 401, "{new}");
    }
    assert_eq!(gw.post_form(path, &genuine).await.status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn jdpay_reshaped_ids_never_reach_the_shop_again() {
    let (up, gw) = start_one(RouteSpec::jdpay).await;
    let post = |name: &'static str| {
        let gw = &gw;
        async move {
            gw.send(
                "POST",
                "/notify/jdpay",
                &[("content-type", "text/xml")],
                fixture("jdpay", name),
            )
            .await
        }
    };
    assert_eq!(post("payment.xml").await.status, 200);
    // Line breaks around the tradeNum text: JD's formatter removes them, so
    // the genuine signature holds, and it is the same event.
    let r = post("payment_split_trade_num.xml").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(
        gw.requests_of("shop-jdpay", "jdpay", "duplicate").await,
        1.0
    );
    // Signed (with the test JD key) without tradeType, or with a padded
    // tradeNum: a missing id part is never defaulted.
    for name in ["payment_no_trade_type.xml", "payment_padded_trade_num.xml"] {
        let r = post(name).await;
        r.assert_is(400, "fail", name);
    }
    assert_eq!(
        gw.rejections("shop-jdpay", "jdpay", "bad_event_id").await,
        2.0
    );
    assert_eq!(up.count(), 1);
}

// === merchants ===

#[tokio::test]
async fn two_merchants_of_one_route_with_colliding_ids_both_reach_their_shops() {
    // JD's tradeNum is the merchant's own order number: two merchants of one
    // route can send the same `tradeNum:tradeType:status`. Keyed by route and
    // id alone, the second was acknowledged as a duplicate and never
    // delivered: a lost payment.
    let shop_a = Upstream::start(Behaviour::Reply(200, "success")).await;
    let shop_b = Upstream::start(Behaviour::Reply(200, "success")).await;
    let f = |n: &str| fixture_path("jdpay", n);
    let rules = format!(
        r#"[[route]]
name = "jd-market"
path = "/notify/jdpay"
provider = "jdpay"
allow = ["127.0.0.1/32"]
upstream = {a:?}
upstream_secret_file = "../upstream.secret"
max_age = "87600h"
success_body = "success"

[[route.merchant]]
[route.merchant.keys]
merchant = "110000000001"
des_key_file = {des_a:?}
jd_public_key = {jd:?}

[[route.merchant]]
upstream = {b:?}
[route.merchant.keys]
merchant = "110000000002"
des_key_file = {des_b:?}
jd_public_key = {jd:?}
"#,
        a = shop_a.url,
        b = shop_b.url,
        des_a = f("des.key"),
        des_b = f("other_des.key"),
        jd = f("jd_public.pem"),
    );
    let gw = TestGateway::start_rules(GatewaySpec::new(vec![]), &rules).await;
    for (name, shop) in [("payment.xml", &shop_a), ("payment_merchant2.xml", &shop_b)] {
        let body = fixture("jdpay", name);
        let r = gw
            .send(
                "POST",
                "/notify/jdpay",
                &[("content-type", "text/xml")],
                body.clone(),
            )
            .await;
        r.assert_is(200, "success", name);
        let got = shop.received();
        assert_eq!(got.len(), 1, "{name}");
        assert_eq!(
            got[0].headers["x-callgate-event-id"],
            "CG20261122000001:0:2"
        );
        // Each merchant's own retry is still a duplicate.
        let again = gw
            .send(
                "POST",
                "/notify/jdpay",
                &[("content-type", "text/xml")],
                body,
            )
            .await;
        assert_eq!(again.status, 200, "{name}");
    }
    assert_eq!((shop_a.count(), shop_b.count()), (1, 1));
    assert_eq!(gw.requests_of("jd-market", "jdpay", "forwarded").await, 2.0);
    assert_eq!(gw.requests_of("jd-market", "jdpay", "duplicate").await, 2.0);
}

#[tokio::test]
async fn sub_merchant_notifications_are_bound_to_the_configured_sub_merchant() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let sp = fixture("wechat", "v2_sp_pay.xml");
    // A route for the provider itself refuses its sub-merchants'.
    let gw = TestGateway::start(GatewaySpec::new(vec![RouteSpec::wechat_v2(&up)])).await;
    assert_eq!(gw.post_xml(&sp).await.status, 401);
    assert_eq!(
        gw.rejections("shop-wechat-v2", "wechat_v2", "merchant_unbound")
            .await,
        1.0
    );
    // Bound to another sub-merchant: refused; to this one: delivered.
    for (sub, want) in [("1900000999", 401), ("1900000119", 200)] {
        let route =
            RouteSpec::wechat_v2(&up).with(|r| r.keys.push_str(&format!("sub_mch_id = {sub:?}\n")));
        let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
        assert_eq!(gw.post_xml(&sp).await.status, want, "sub_mch_id {sub}");
    }
    // The loud setting accepts any.
    let any =
        RouteSpec::wechat_v2(&up).with(|r| r.keys.push_str("accept_any_sub_merchant = true\n"));
    let gw = TestGateway::start(GatewaySpec::new(vec![any])).await;
    assert_eq!(gw.post_xml(&sp).await.status, 200);
    assert_eq!(up.count(), 2);
}

/// An ISV app's notification on behalf of another merchant (`auth_app_id`
/// other than `app_id`) reaches the shop only when the route binds that
/// merchant's `seller_id` (and the notification names it) or accepts any
/// sub-merchant; the app's own notification (`auth_app_id` = `app_id`)
/// needs neither.
#[tokio::test]
async fn alipay_isv_notifications_are_bound_to_the_configured_seller() {
    const APP: &str = "2021000000000001";
    const OTHER_APP: &str = "2021000000000077";
    const SELLER: &str = "2088101122334455";
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let note = |id: &str, auth: &str, seller: Option<&str>| {
        let mut p = vec![
            ("app_id", APP),
            ("auth_app_id", auth),
            ("charset", "utf-8"),
            ("notify_id", id),
            ("notify_time", "2026-11-22 10:00:00"),
            ("notify_type", "trade_status_sync"),
            ("out_trade_no", id),
            ("total_amount", "88.88"),
            ("trade_no", "2026112222001400000000000001"),
            ("trade_status", "TRADE_SUCCESS"),
            ("version", "1.0"),
        ];
        if let Some(s) = seller {
            p.push(("seller_id", s));
        }
        alipay_openssl(&p)
    };

    let gw = TestGateway::start(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    let r = gw
        .post_form("/notify/alipay", &note("isv1", APP, Some(SELLER)))
        .await;
    r.assert_is(200, "success", "the app's own notification");
    let r = gw
        .post_form("/notify/alipay", &note("isv2", OTHER_APP, Some(SELLER)))
        .await;
    r.assert_is(401, "fail", "on behalf of an unbound merchant");
    assert_eq!(
        gw.rejections("shop-alipay", "alipay", "merchant_unbound")
            .await,
        1.0
    );
    assert_eq!(up.count(), 1);

    // Bound to the seller: its notifications pass, another seller's (401)
    // or one without seller_id (400) do not.
    let bound =
        RouteSpec::alipay(&up).with(|r| r.keys.push_str(&format!("seller_id = {SELLER:?}\n")));
    let gw = TestGateway::start(GatewaySpec::new(vec![bound])).await;
    let r = gw
        .post_form("/notify/alipay", &note("isv3", OTHER_APP, Some(SELLER)))
        .await;
    r.assert_is(200, "success", "bound seller");
    let r = gw
        .post_form(
            "/notify/alipay",
            &note("isv4", OTHER_APP, Some("2088999999999999")),
        )
        .await;
    r.assert_is(401, "fail", "another seller");
    let r = gw
        .post_form("/notify/alipay", &note("isv5", OTHER_APP, None))
        .await;
    // A signed field the check needs is missing: malformed, like any other.
    r.assert_is(400, "fail", "no seller_id");
    assert_eq!(up.count(), 2);

    // The loud setting accepts any merchant.
    let any = RouteSpec::alipay(&up).with(|r| r.keys.push_str("accept_any_sub_merchant = true\n"));
    let gw = TestGateway::start(GatewaySpec::new(vec![any])).await;
    let r = gw
        .post_form("/notify/alipay", &note("isv6", OTHER_APP, None))
        .await;
    r.assert_is(200, "success", "accept_any_sub_merchant");
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn wechat_v3_sub_merchants_sharing_a_platform_key_reach_their_own_shops() {
    // A service provider's sub-merchants share its platform keys and APIv3
    // key: the sub-merchant is only known once the resource is decrypted,
    // so each candidate merchant table is tried in turn.
    let shop_a = Upstream::start(Behaviour::Reply(200, "")).await;
    let shop_b = Upstream::start(Behaviour::Reply(200, "")).await;
    let keys = RouteSpec::wechat_v3(&shop_a).keys;
    let rules = format!(
        r#"[[route]]
name = "sp-v3"
path = "/notify/wechat-v3"
provider = "wechat_v3"
allow = ["127.0.0.1/32"]
upstream = {a:?}
upstream_secret_file = "../upstream.secret"

[[route.merchant]]
[route.merchant.keys]
{keys}sub_mch_id = "1900000999"

[[route.merchant]]
upstream = {b:?}
[route.merchant.keys]
{keys}sub_mch_id = "1900000119"
"#,
        a = shop_a.url,
        b = shop_b.url,
    );
    let gw = TestGateway::start_rules(GatewaySpec::new(vec![]), &rules).await;
    let body = fixture("wechat", "v3_sp_pay.json");
    let r = post_v3(&gw, &body, "spNonce000000001").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((shop_a.count(), shop_b.count()), (0, 1));
    // A route that does not list the sub-merchant refuses it.
    let up = Upstream::start(Behaviour::Reply(200, "")).await;
    let gw = TestGateway::start(GatewaySpec::new(vec![RouteSpec::wechat_v3(&up)])).await;
    let r = post_v3(&gw, &body, "spNonce000000002").await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        gw.rejections("shop-wechat-v3", "wechat_v3", "merchant_unbound")
            .await,
        1.0
    );
    // Combined payments are refused with their own reason.
    let combine = fixture("wechat", "v3_combine_pay.json");
    let r = post_v3(&gw, &combine, "spNonce000000003").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        gw.rejections(
            "shop-wechat-v3",
            "wechat_v3",
            "combined_payment_unsupported"
        )
        .await,
        1.0
    );
    assert_eq!(up.count(), 0);
}

// === charset and signature types ===

#[tokio::test]
async fn a_gbk_notification_on_a_route_that_says_nothing_about_charset_is_delivered() {
    // What Alipay is reported to do: GBK bytes in a notification whose
    // `charset` field says utf-8. The signature covers the raw bytes; the
    // values are not UTF-8 but are GBK, so they are read as GBK.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let alipay = RouteSpec::alipay(&up).with(|r| r.forward = "normalized".into());
    let unionpay = RouteSpec::unionpay(&up).with(|r| r.forward = "normalized".into());
    let gw = TestGateway::start(GatewaySpec::new(vec![alipay, unionpay])).await;

    let r = gw.post_alipay("rsa2_gbk_declared_utf8.form").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let v: serde_json::Value = serde_json::from_slice(&up.received()[0].body).unwrap();
    assert_eq!(v["fields"]["subject"], "测试商品 中文GBK");
    assert_eq!(v["fields"]["body"], "支付宝通知");

    let r = gw
        .post_form(
            "/notify/unionpay",
            &fixture("unionpay", "v510_gbk_declared_utf8.form"),
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let v: serde_json::Value = serde_json::from_slice(&up.received()[1].body).unwrap();
    assert_eq!(v["fields"]["reqReserved"], "测试 GBK");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_signature_type_the_route_pins_out_is_refused() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let hmac_only =
        RouteSpec::wechat_v2(&up).with(|r| r.keys.push_str("sign_types = [\"HMAC-SHA256\"]\n"));
    let rsa2_only = RouteSpec::alipay(&up).with(|r| r.keys.push_str("sign_types = [\"RSA2\"]\n"));
    let gw = TestGateway::start(GatewaySpec::new(vec![rsa2_only, hmac_only])).await;
    // A genuine SHA1withRSA notification by the route's own 2048-bit key,
    // on a route pinned to RSA2 (by default both are accepted).
    let r = gw.post_alipay("rsa_sha1_trade_success.form").await;
    assert_eq!((r.status, r.text().as_str()), (401, "fail"));
    assert_eq!(
        gw.rejections("shop-alipay", "alipay", "sign_type_not_allowed")
            .await,
        1.0
    );
    // A WeChat v2 route pinned to HMAC-SHA256: an MD5 one is refused, with
    // or without `sign_type`.
    for name in ["v2_md5_pay.xml", "v2_md5_pay_sign_type.xml"] {
        let r = gw.post_xml(&fixture("wechat", name)).await;
        assert_eq!(r.status, 401, "{name}");
    }
    assert_eq!(
        gw.rejections("shop-wechat-v2", "wechat_v2", "sign_type_not_allowed")
            .await,
        2.0
    );
    assert_eq!(
        gw.post_xml(&fixture("wechat", "v2_hmac_pay.xml"))
            .await
            .status,
        200
    );
    assert_eq!(up.count(), 1);
}

/// A genuine Alipay partial-refund notification (what Alipay sends when
/// part of a paid trade is refunded: `trade_status` stays TRADE_SUCCESS,
/// `refund_fee`, `gmt_refund` and `out_biz_no` say it is a refund), signed
/// RSA2 by the openssl CLI.
fn alipay_partial_refund(notify_id: &str) -> Vec<u8> {
    alipay_openssl(&[
        ("app_id", "2021000000000001"),
        ("buyer_pay_amount", "88.88"),
        ("charset", "utf-8"),
        ("gmt_create", "2026-11-22 09:59:00"),
        ("gmt_payment", "2026-11-22 09:59:30"),
        ("gmt_refund", "2026-11-22 10:00:00.123"),
        ("notify_id", notify_id),
        ("notify_time", "2026-11-22 10:00:01"),
        ("notify_type", "trade_status_sync"),
        ("out_biz_no", "R20261122000001"),
        ("out_trade_no", "20261122000001"),
        ("receipt_amount", "88.88"),
        ("refund_fee", "10.00"),
        ("total_amount", "88.88"),
        ("trade_no", "2026112222001400000000000009"),
        ("trade_status", "TRADE_SUCCESS"),
        ("version", "1.0"),
    ])
}

#[tokio::test]
async fn alipay_refund_folded_into_neighbours_never_reaches_the_shop_as_a_payment() {
    // Folding `&refund_fee=...`, `&gmt_refund=...` and `&out_biz_no=...`
    // into the values that sort before them leaves the string Alipay signs
    // byte for byte the same, and the body reads like a payment: same
    // order, TRADE_SUCCESS, the full amount, nothing about a refund. None
    // of those fields names the event, so the identity rule let it through
    // as "paid". The fields that decide what the shop is told happened must
    // be as fixed as the event id.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let normalized = RouteSpec::alipay(&up).with(|r| {
        r.name = "shop-alipay-json".into();
        r.path = "/notify/alipay-json".into();
        r.forward = "normalized".into();
    });
    let gw = TestGateway::start(GatewaySpec::new(vec![RouteSpec::alipay(&up), normalized])).await;
    let fold = |body: &[u8]| {
        let body = swap(
            body,
            "&gmt_refund=2026-11-22%2010%3A00%3A00.123",
            "%26gmt_refund%3D2026-11-22%2010%3A00%3A00.123",
        );
        let body = swap(&body, "&out_biz_no=R", "%26out_biz_no%3DR");
        swap(&body, "&refund_fee=10.00", "%26refund_fee%3D10.00")
    };
    for (path, nid) in [
        ("/notify/alipay", "2026112200222000000000000000000071"),
        ("/notify/alipay-json", "2026112200222000000000000000000072"),
    ] {
        let genuine = alipay_partial_refund(nid);
        let r = gw.post_form(path, &fold(&genuine)).await;
        r.assert_is(400, "fail", format!("{path}: refund folded away"));
        let r = gw.post_form(path, &genuine).await;
        r.assert_is(200, "success", format!("{path}: the genuine refund"));
    }
    let got = up.received();
    assert_eq!(got.len(), 2, "only the genuine refunds reached the shop");
    assert!(String::from_utf8_lossy(&got[0].body).contains("&refund_fee=10.00&"));
    let v: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["amount_fen"].as_i64()),
        (Some("refunded"), Some(1000))
    );
}

#[tokio::test]
async fn wechat_v2_amounts_padded_or_taking_in_a_neighbour_never_reach_the_shop() {
    // WeChat's Java signer trims values, and joins them unescaped: a padded
    // `total_fee`, or one that took `&trade_type=JSAPI` into its value (the
    // element itself dropped), leaves the signed string byte for byte the
    // same. The shop would read an amount the signature never saw
    // (normalized: none at all).
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let route = RouteSpec::wechat_v2(&up).with(|r| r.forward = "normalized".into());
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let genuine = fixture("wechat", "v2_md5_pay.xml");
    let fee = "<total_fee>8888</total_fee>";
    let reshaped = [
        (
            "padded",
            swap(&genuine, fee, "<total_fee> 8888\n</total_fee>"),
        ),
        (
            "took in trade_type",
            swap(
                &swap(
                    &genuine,
                    fee,
                    "<total_fee><![CDATA[8888&trade_type=JSAPI]]></total_fee>",
                ),
                "<trade_type><![CDATA[JSAPI]]></trade_type>",
                "",
            ),
        ),
        (
            "order number padded",
            swap(
                &genuine,
                "<![CDATA[CG20261122000001]]>",
                "<![CDATA[CG20261122000001 ]]>",
            ),
        ),
    ];
    for (what, body) in &reshaped {
        let r = gw.post_xml(body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
    }
    assert_eq!(
        gw.rejections("shop-wechat-v2", "wechat_v2", "ambiguous_fields")
            .await,
        reshaped.len() as f64
    );
    assert_eq!(gw.post_xml(&genuine).await.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&up.received()[0].body).unwrap();
    assert_eq!(v["amount_fen"], 8888);
    assert_eq!(
        up.count(),
        1,
        "only the genuine notification reached the shop"
    );
}

/// A WeChat v2 refund notification for `sub_mch_id` (outer XML, as WeChat
/// sends a service provider's), its `req_info` encrypted by the openssl
/// CLI (AES-256-ECB, PKCS#7, key the lower-case hex MD5 of the API key).
fn wechat_v2_sp_refund(req_info: &str, sub_mch_id: &str) -> Vec<u8> {
    format!(
        "<xml><return_code>SUCCESS</return_code><appid><![CDATA[{WECHAT_APPID}]]></appid>\
<mch_id><![CDATA[{WECHAT_MCH_ID}]]></mch_id><sub_mch_id><![CDATA[{sub_mch_id}]]></sub_mch_id>\
<nonce_str><![CDATA[9b5b1c0d2e4f6a8c]]></nonce_str><req_info><![CDATA[{req_info}]]></req_info></xml>"
    )
    .into_bytes()
}

/// A WeChat v2 refund `req_info`, encrypted by the openssl CLI.
fn wechat_v2_req_info(plain: &str) -> String {
    use base64::Engine as _;
    let api_key = std::fs::read(fixture_path("wechat", "v2_api.key")).unwrap();
    let aes_key = openssl_dgst_hex(&["-md5"], &api_key);
    let ct = openssl_pipe(
        &[
            "enc",
            "-aes-256-ecb",
            "-K",
            &hex::encode(aes_key.as_bytes()),
        ],
        plain.as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(ct)
}

#[tokio::test]
async fn a_wechat_v2_refund_readdressed_to_another_sub_merchant_reaches_no_second_shop() {
    // A v2 refund carries no signature, and the sub-merchant is named only
    // in the outer XML: `req_info` (under the service provider's key, which
    // every sub-merchant shares) does not hold it. So anyone who holds one
    // refund notification, e.g. the sub-merchant's own shop, which receives
    // it, can post it again naming another sub-merchant. Before, the replay
    // state held `mch_id/sub_mch_id`, and the copy reached that other
    // sub-merchant's shop as a refund of an order it may share the number
    // of. The refund id is WeChat's, unique for the key that decrypts it.
    let shop_a = Upstream::start(Behaviour::Reply(200, "SUCCESS")).await;
    let shop_b = Upstream::start(Behaviour::Reply(200, "SUCCESS")).await;
    let keys = RouteSpec::wechat_v2(&shop_a).keys;
    let rules = format!(
        r#"[[route]]
name = "sp-v2"
path = "/notify/wechat"
provider = "wechat_v2"
allow = ["127.0.0.1/32"]
max_age = "87600h"
upstream = {a:?}
upstream_secret_file = "../upstream.secret"

[[route.merchant]]
[route.merchant.keys]
{keys}sub_mch_id = "1900000999"

[[route.merchant]]
upstream = {b:?}
[route.merchant.keys]
{keys}sub_mch_id = "1900000119"
"#,
        a = shop_a.url,
        b = shop_b.url,
    );
    let gw = TestGateway::start_rules(GatewaySpec::new(vec![]), &rules).await;
    let plain = "<root><out_refund_no><![CDATA[RF0001]]></out_refund_no>\
<out_trade_no><![CDATA[100023]]></out_trade_no><refund_fee><![CDATA[1200]]></refund_fee>\
<refund_id><![CDATA[50300002026112200000000000077]]></refund_id>\
<refund_status><![CDATA[SUCCESS]]></refund_status>\
<success_time><![CDATA[2026-11-22 10:05:00]]></success_time>\
<total_fee><![CDATA[8888]]></total_fee>\
<transaction_id><![CDATA[4200002026112200000000000077]]></transaction_id></root>";
    let req_info = wechat_v2_req_info(plain);
    // Genuine: for sub-merchant 1900000119, shop B.
    let r = gw
        .post_xml(&wechat_v2_sp_refund(&req_info, "1900000119"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((shop_a.count(), shop_b.count()), (0, 1));
    // Readdressed to sub-merchant 1900000999: answered as the duplicate it
    // is, never forwarded to shop A.
    let r = gw
        .post_xml(&wechat_v2_sp_refund(&req_info, "1900000999"))
        .await;
    assert!(r.text().contains("SUCCESS"), "{}", r.text());
    assert_eq!(r.status, 200);
    assert_eq!(
        (shop_a.count(), shop_b.count()),
        (0, 1),
        "the readdressed refund reached another sub-merchant's shop"
    );
    assert_eq!(gw.requests_of("sp-v2", "wechat_v2", "duplicate").await, 1.0);
}

#[tokio::test]
async fn a_signed_payment_wrapped_around_a_refunds_req_info_reaches_no_shop_as_a_payment() {
    // A refund is authenticated by its `req_info` alone: nothing covers
    // the outer XML. Before, every outer element reached the shop, so a
    // genuine payment notification (its `sign`, `result_code` SUCCESS,
    // `out_trade_no`, `total_fee`, all still valid for a shop that checks
    // WeChat's signature over the fields it knows) with any refund's
    // `req_info` added went through under the refund's event id: the same
    // payment under a second id. A refund that did not succeed has no time
    // of its own, so an old REFUNDCLOSE `req_info` does (once the replay
    // store has forgotten it), around a payment of any age. Now the shop
    // gets only the elements a refund notification carries.
    let plain = "<root><out_refund_no><![CDATA[RF0002]]></out_refund_no>\
<out_trade_no><![CDATA[CG20261122000001]]></out_trade_no><refund_fee><![CDATA[1200]]></refund_fee>\
<refund_id><![CDATA[50300002026112200000000000078]]></refund_id>\
<refund_status><![CDATA[REFUNDCLOSE]]></refund_status><total_fee><![CDATA[8888]]></total_fee>\
<transaction_id><![CDATA[4200002026112200000000000001]]></transaction_id></root>";
    let req_info = wechat_v2_req_info(plain);
    let payment = String::from_utf8(fixture("wechat", "v2_md5_pay.xml")).unwrap();
    let wrapped = payment.replace(
        "</xml>",
        &format!("<req_info><![CDATA[{req_info}]]></req_info></xml>"),
    );
    for forward in ["original", "normalized"] {
        let up = Upstream::start(Behaviour::Reply(200, "SUCCESS")).await;
        let route = RouteSpec::wechat_v2(&up).with(|r| r.forward = forward.into());
        let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
        let r = gw.post_xml(wrapped.as_bytes()).await;
        assert_eq!(r.status, 200, "{forward}: {}", r.text());
        let got = up.received();
        assert_eq!(got.len(), 1, "{forward}");
        let body = String::from_utf8_lossy(&got[0].body).into_owned();
        assert!(
            body.contains(&req_info) || forward == "normalized",
            "{body}"
        );
        for payment_only in [
            "sign",
            "result_code",
            "time_end",
            "openid",
            "cash_fee",
            "trade_type",
        ] {
            let shape = if forward == "original" {
                format!("<{payment_only}>")
            } else {
                format!("\"{payment_only}\"")
            };
            assert!(
                !body.contains(&shape),
                "{forward}: the payment's `{payment_only}` reached the shop: {body}"
            );
        }
        if forward == "original" {
            assert!(!body.contains("<total_fee>"), "{body}");
        } else {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["status"], "closed", "{body}");
            assert_eq!(v["amount_fen"], 1200, "{body}");
        }
    }
}
