//! The gateway end to end for `alipay`, over real sockets: every row of the
//! contract's outcome table that applies, asserting status, ack body, what
//! the upstream received, and the metrics line. Fixtures are signed by the
//! openssl CLI or are real public vectors (tests/fixtures/alipay/README.md).

mod support;

use std::sync::Arc;

use support::*;
use tokio::sync::Notify;

const FORM: &str = "application/x-www-form-urlencoded";

async fn gateway_with(upstream: &Upstream, f: impl FnOnce(&mut GatewaySpec)) -> TestGateway {
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(upstream)]);
    f(&mut spec);
    TestGateway::start(spec).await
}

#[tokio::test]
async fn forwards_original_bytes_with_trusted_headers() {
    let up = Upstream::start(Behaviour::Reply(200, "<html>success</html>")).await;
    let gw = gateway_with(&up, |_| {}).await;
    let body = fixture("alipay", "rsa2_trade_success.form");

    let reply = gw
        .send(
            "POST",
            "/notify/alipay?code=alipay",
            &[
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("x-callgate-event-id", "forged"),
                ("x-callgate-signature", "t=1,v1=forged"),
                ("x-callgate-verified", "yes"),
                ("x-forwarded-for", "6.6.6.6"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "secret hop"),
                ("user-agent", "Mozilla/4.0"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "success"));

    let got = up.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.uri, "/plus/notify.php",
        "incoming query must not be forwarded"
    );
    assert_eq!(
        r.body.as_ref(),
        body.as_slice(),
        "body must be byte for byte"
    );
    let h = &r.headers;
    assert_eq!(
        h["content-type"],
        "application/x-www-form-urlencoded; charset=utf-8"
    );
    assert_eq!(h["x-callgate-provider"], "alipay");
    assert_eq!(h["x-callgate-route"], "shop-alipay");
    assert_eq!(
        h["x-callgate-event-id"],
        "2026112200222000000000000000000001"
    );
    assert_eq!(h.get_all("x-callgate-event-id").iter().count(), 1);
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(h["user-agent"], "Mozilla/4.0");
    assert!(
        h.get("x-hop").is_none(),
        "a header named by Connection is hop-by-hop"
    );
    assert!(h.get("connection").is_none_or(|v| v != "keep-alive, x-hop"));

    // X-Callgate-Signature checked with openssl, not with callgate's code.
    let sig = h["x-callgate-signature"].to_str().unwrap();
    let (t, v1) = sig.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let signed = [t.as_bytes(), b".", &body].concat();
    assert_eq!(v1, openssl_hmac_hex(SECRET.trim_end(), &signed));

    assert_eq!(gw.requests("forwarded").await, 1.0);
    let hist = gw
        .metric(
            "callgate_upstream_duration_seconds_count",
            &[("route", "shop-alipay")],
        )
        .await;
    assert_eq!(hist, Some(1.0));
    let hist = gw
        .metric(
            "callgate_request_duration_seconds_count",
            &[("route", "shop-alipay")],
        )
        .await;
    assert_eq!(hist, Some(1.0));
}

#[tokio::test]
async fn over_tls_too() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with(&up, |s| s.tls = true).await;
    assert!(gw.base.starts_with("https://"));
    let reply = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn https_upstream_with_its_own_ca() {
    let up = Upstream::start_tls(Behaviour::Reply(200, "success")).await;
    assert!(up.url.starts_with("https://"));
    let route =
        RouteSpec::alipay(&up).with(|r| r.upstream_ca = Some(root().join("certs/dev/server.crt")));
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let reply = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn https_upstream_not_trusted_is_an_upstream_error() {
    let up = Upstream::start_tls(Behaviour::Reply(200, "success")).await;
    let other_ca = tempfile::NamedTempFile::new().unwrap();
    // A valid CA file that did not sign the upstream's certificate.
    openssl_self_signed("other", 1, &[], "/dev/null".as_ref(), other_ca.path());
    let route =
        RouteSpec::alipay(&up).with(|r| r.upstream_ca = Some(other_ca.path().to_path_buf()));
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let reply = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!((reply.status, reply.text().as_str()), (502, "fail"));
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn duplicate_after_delivery_is_acked_not_forwarded() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with(&up, |_| {}).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 200);
    let again = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((again.status, again.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
    assert_eq!(gw.requests("forwarded").await, 1.0);
    assert_eq!(gw.requests("duplicate").await, 1.0);
    // A different notification is forwarded.
    let other = gw.post_alipay("rsa2_trade_success_2.form").await;
    assert_eq!(other.status, 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn same_event_in_flight_gets_409_and_is_not_forwarded() {
    let gate = Arc::new(Notify::new());
    let up = Upstream::start(Behaviour::Hold(gate.clone())).await;
    let gw = Arc::new(gateway_with(&up, |_| {}).await);
    let body = fixture("alipay", "rsa2_trade_success.form");

    let first = {
        let (gw, body) = (gw.clone(), body.clone());
        tokio::spawn(async move { gw.post_form("/notify/alipay", &body).await })
    };
    up.next().await; // the first one is now being forwarded
    let second = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((second.status, second.text().as_str()), (409, "fail"));
    gate.notify_one();
    let first = first.await.unwrap();
    assert_eq!((first.status, first.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
    assert_eq!(gw.requests("in_flight").await, 1.0);
}

#[tokio::test]
async fn twenty_concurrent_copies_reach_the_upstream_once() {
    let gate = Arc::new(Notify::new());
    let up = Upstream::start(Behaviour::Hold(gate.clone())).await;
    let gw = Arc::new(gateway_with(&up, |_| {}).await);
    let body = fixture("alipay", "rsa2_trade_success.form");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..20 {
        let (gw, body, tx) = (gw.clone(), body.clone(), tx.clone());
        tokio::spawn(async move {
            let r = gw.post_form("/notify/alipay", &body).await;
            let _ = tx.send((r.status, r.text()));
        });
    }
    // One is held at the upstream; the other nineteen must be answered 409.
    up.next().await;
    let mut statuses = Vec::new();
    for _ in 0..19 {
        statuses.push(rx.recv().await.unwrap());
    }
    assert!(
        statuses.iter().all(|(s, b)| *s == 409 && b == "fail"),
        "{statuses:?}"
    );
    gate.notify_one();
    assert_eq!(rx.recv().await.unwrap(), (200, "success".to_owned()));
    assert_eq!(up.count(), 1);
    assert_eq!(gw.requests("forwarded").await, 1.0);
    assert_eq!(gw.requests("in_flight").await, 19.0);
}

#[tokio::test]
async fn twenty_concurrent_copies_racing_a_fast_upstream_reach_it_once() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = Arc::new(gateway_with(&up, |_| {}).await);
    let body = fixture("alipay", "rsa2_trade_success_3.form");
    let mut handles = Vec::new();
    for _ in 0..20 {
        let (gw, body) = (gw.clone(), body.clone());
        handles.push(tokio::spawn(async move {
            gw.post_form("/notify/alipay", &body).await.status
        }));
    }
    let mut ok = 0;
    for h in handles {
        let s = h.await.unwrap();
        assert!(s == 200 || s == 409, "status {s}");
        ok += usize::from(s == 200);
    }
    assert!(ok >= 1);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn failed_delivery_is_retried_and_then_remembered() {
    let up = Upstream::start(Behaviour::Reply(500, "oops")).await;
    let gw = gateway_with(&up, |_| {}).await;
    let body = fixture("alipay", "rsa2_trade_success.form");

    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (502, "fail"));
    assert_eq!(gw.requests("upstream_error").await, 1.0);

    // The platform retries: forwarded again, now successfully.
    up.set(Behaviour::Reply(200, "success"));
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 2);

    // And a retry after success is answered without the upstream.
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_2xx_without_the_success_body_is_not_a_delivery() {
    let up = Upstream::start(Behaviour::Reply(200, "<html>Thank you!</html>")).await;
    let gw = gateway_with(&up, |_| {}).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (502, "fail"));
    // Not remembered: the retry is forwarded again.
    up.set(Behaviour::Reply(200, "<html>success</html>"));
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_shop_error_text_holding_the_success_body_is_not_a_delivery() {
    // `success_body = "success"`: a PHP handler that failed and said
    // "Payment unsuccessful" with 200 did not record the payment.
    let up = Upstream::start(Behaviour::Reply(200, "Payment unsuccessful")).await;
    let gw = gateway_with(&up, |_| {}).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (502, "fail"));
    up.set(Behaviour::Reply(200, "success"));
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 200);
    assert_eq!(up.count(), 2, "the retry reached the shop");
}

#[tokio::test]
async fn without_success_body_any_2xx_confirms() {
    let up = Upstream::start(Behaviour::Reply(204, "")).await;
    let route = RouteSpec::alipay(&up).with(|r| r.success_body = None);
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
}

#[tokio::test]
async fn upstream_timeout_is_504_and_the_retry_goes_through() {
    let up = Upstream::start(Behaviour::Hang).await;
    let gw = gateway_with(&up, |s| s.upstream_timeout = "300ms".into()).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (504, "fail"));
    assert_eq!(gw.requests("upstream_error").await, 1.0);
    up.set(Behaviour::Reply(200, "success"));
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 200);
}

#[tokio::test]
async fn upstream_down_is_502() {
    // Bind then drop: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay(&up).with(|r| r.upstream = format!("http://127.0.0.1:{port}/n"));
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!((r.status, r.text().as_str()), (502, "fail"));
}

#[tokio::test]
async fn bad_and_missing_signatures_are_401_and_never_forwarded() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with(&up, |_| {}).await;
    for name in [
        "rsa2_tampered_amount.form",
        "rsa2_wrong_key.form",
        "rsa2_missing_sign.form",
        "rsa2_sign_type_unknown.form",
        "rsa2_other_app.form",
    ] {
        let r = gw.post_alipay(name).await;
        r.assert_is(401, "fail", name);
    }
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests("bad_signature").await, 5.0);
}

#[tokio::test]
async fn real_alipay_production_notification_passes() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay(&up).with(|r| {
        r.max_age = Some("200000h".into()); // signed in 2019
        r.keys = format!(
            "public_key = {:?}\napp_id = \"2019073166072302\"\n",
            fixture_path("alipay", "nodejs_sdk_real_public.pem")
        );
    });
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let r = gw.post_alipay("nodejs_sdk_real_notify.form").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let r = gw.post_alipay("nodejs_sdk_real_notify_tampered.form").await;
    assert_eq!(r.status, 401);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn real_world_shapes_verify_and_arrive_intact() {
    // GBK charset, SHA1 "RSA" (accepted by default, with the same 2048-bit
    // key), an empty value (both SDK conventions), a value holding & and =
    // — each verifies and reaches the shop as sent, except fields the
    // signature does not cover (blank values under the Java rule), which
    // are left out.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with(&up, |_| {}).await;
    let skipped = String::from_utf8(fixture("alipay", "rsa2_empty_value_skipped.form")).unwrap();
    let fixtures = [
        ("rsa2_gbk.form", None),
        ("rsa_sha1_trade_success.form", None),
        // `body=` and `point_amount=%20%20` are outside its signature.
        (
            "rsa2_empty_value_skipped.form",
            Some(
                skipped
                    .replacen("&body=&", "&", 1)
                    .replacen("&point_amount=%20%20&", "&", 1),
            ),
        ),
        // Signed with its empty value: covered, so it stays.
        ("rsa2_empty_value_included.form", None),
        ("rsa2_unsorted_decoding.form", None),
    ];
    for (i, (f, stripped)) in fixtures.iter().enumerate() {
        let body = fixture("alipay", f);
        let r = gw.post_form("/notify/alipay", &body).await;
        r.assert_is(200, "success", f);
        let want = stripped.clone().map_or(body, String::into_bytes);
        assert_eq!(up.received()[i].body.as_ref(), want.as_slice(), "{f}");
    }
}

#[tokio::test]
async fn a_1024_bit_alipay_key_verifies_sign_type_rsa() {
    // Apps on Alipay's older RSA (SHA1withRSA) keys verify with a 1024-bit
    // Alipay public key; the fixture is signed with one by openssl.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay(&up).with(|r| {
        r.keys = format!(
            "public_key = {:?}\napp_id = \"2021000000000001\"\n",
            fixture_path("alipay", "rsa1024_public.pem")
        )
    });
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let body = fixture("alipay", "rsa_sha1_1024_trade_success.form");
    gw.post_form("/notify/alipay", &body)
        .await
        .assert_is(200, "success", "1024-bit key");
    assert_eq!(up.received()[0].body.as_ref(), body.as_slice());
    // The 2048-bit key's notification does not verify under it.
    let other = fixture("alipay", "rsa_sha1_trade_success.form");
    gw.post_form("/notify/alipay", &other)
        .await
        .assert_is(401, "fail", "another key");
    assert_eq!(up.received().len(), 1);
}

#[tokio::test]
async fn an_unsigned_field_cannot_switch_the_charset() {
    // rsa2_trade_success.form says charset=utf-8 and is UTF-8, and its
    // subject's bytes (测试 商品+1) happen to be valid GBK as well. `zz=%A1%A1`
    // is not UTF-8; in GBK it is U+3000, Java whitespace: blank, so outside
    // the signature. Falling back to GBK because of it would accept the
    // added field (and drop it) where the Java SDK, reading the UTF-8 the
    // notification names, signs it and refuses; and `normalized` fields
    // would be the UTF-8 text read as GBK. The fallback rests on signed
    // fields only: refused, 401, saying why.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with(&up, |_| {}).await;
    let good = fixture("alipay", "rsa2_trade_success.form");
    let added = [good.as_slice(), b"&zz=%A1%A1"].concat();
    gw.post_form("/notify/alipay", &added).await.assert_is(
        401,
        "fail",
        "unsigned field valid only in GBK",
    );
    assert_eq!(
        gw.rejections("shop-alipay", "alipay", "charset_unsigned")
            .await,
        1.0
    );
    assert_eq!(up.count(), 0);

    // The genuine notification is untouched by the rule.
    gw.post_form("/notify/alipay", &good)
        .await
        .assert_is(200, "success", "genuine UTF-8");
    // A genuine GBK notification that says utf-8: its signed GBK fields
    // make it GBK; a GBK-blank field added beside them is outside the
    // signature like any blank one, and left out of what the shop gets.
    let gbk = fixture("alipay", "rsa2_gbk_declared_utf8.form");
    let added = [gbk.as_slice(), b"&zz=%A1%A1"].concat();
    gw.post_form("/notify/alipay", &added).await.assert_is(
        200,
        "success",
        "GBK notification with a blank field",
    );
    let got = up.received();
    assert_eq!(got[0].body.as_ref(), good.as_slice());
    assert_eq!(got[1].body.as_ref(), gbk.as_slice());
}

#[tokio::test]
async fn malformed_bodies_are_400() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with(&up, |_| {}).await;
    let good = fixture("alipay", "rsa2_trade_success.form");

    let r = gw.post_alipay("rsa2_duplicate_key.form").await;
    assert_eq!((r.status, r.text().as_str()), (400, "fail"), "repeated key");

    let r = gw
        .send(
            "POST",
            "/notify/alipay",
            &[("content-type", "application/json")],
            good.clone(),
        )
        .await;
    assert_eq!(r.status, 400, "wrong content type");
    let r = gw.send("POST", "/notify/alipay", &[], good.clone()).await;
    assert_eq!(r.status, 400, "no content type");

    let broken = [good.as_slice(), b"&x=%G1"].concat();
    assert_eq!(
        gw.post_form("/notify/alipay", &broken).await.status,
        400,
        "broken escape"
    );
    assert_eq!(
        gw.post_form("/notify/alipay", b"").await.status,
        400,
        "empty"
    );

    let bad_utf8 = [good.as_slice(), b"&x=%FF%FE"].concat();
    assert_eq!(
        gw.post_form("/notify/alipay", &bad_utf8).await.status,
        400,
        "invalid UTF-8"
    );

    let no_time = String::from_utf8(good.clone()).unwrap();
    let no_time: String = no_time
        .split('&')
        .filter(|p| !p.starts_with("notify_time="))
        .collect::<Vec<_>>()
        .join("&");
    // Removing a signed field breaks the signature first: 401, not 400.
    assert_eq!(
        gw.post_form("/notify/alipay", no_time.as_bytes())
            .await
            .status,
        401
    );

    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests("malformed").await, 6.0);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_on_content_length_and_on_read() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with(&up, |s| s.max_body_bytes = 1024).await;
    let big = vec![b'a'; 4096];
    let r = gw.post_form("/notify/alipay", &big).await;
    assert_eq!((r.status, r.text().as_str()), (413, "fail"));

    // Chunked (no Content-Length) is refused before a byte of it is read
    // (hyper drops Content-Length when Transfer-Encoding is
    // present, so any Transfer-Encoding is 400; tests/hostile.rs).
    let raw = format!(
        "POST /notify/alipay HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        big.len(),
        String::from_utf8(big.clone()).unwrap()
    );
    let resp = raw_exchange(gw.gateway.addr, raw.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");

    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests("too_large").await, 1.0);
    assert_eq!(gw.requests("malformed").await, 1.0);
}

#[tokio::test]
async fn method_path_and_address_checks() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let denied = RouteSpec::alipay(&up).with(|r| {
        r.name = "denied".into();
        r.path = "/notify/denied".into();
        r.allow = vec!["110.75.0.0/16".into()];
    });
    let nobody = RouteSpec::alipay(&up).with(|r| {
        r.name = "nobody".into();
        r.path = "/notify/nobody".into();
        r.allow = vec![];
    });
    let gw = TestGateway::start(GatewaySpec::new(vec![
        RouteSpec::alipay(&up),
        denied,
        nobody,
    ]))
    .await;
    let body = fixture("alipay", "rsa2_trade_success.form");

    let r = gw.send("GET", "/notify/alipay", &[], vec![]).await;
    assert_eq!((r.status, r.text().as_str()), (405, "fail"));
    assert_eq!(r.headers["allow"], "POST");

    let r = gw.post_form("/notify/elsewhere", &body).await;
    assert_eq!(r.status, 404);
    let r = gw.post_form("/notify/alipay/", &body).await;
    assert_eq!(r.status, 404, "paths match exactly");

    for path in ["/notify/denied", "/notify/nobody"] {
        let r = gw.post_form(path, &body).await;
        r.assert_is(403, "fail", path);
    }
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests("method_not_allowed").await, 1.0);
    assert_eq!(
        gw.metric(
            "callgate_requests_total",
            &[("route", "-"), ("provider", "-"), ("outcome", "not_found")]
        )
        .await,
        Some(2.0)
    );
    assert_eq!(
        gw.metric(
            "callgate_requests_total",
            &[
                ("route", "nobody"),
                ("provider", "alipay"),
                ("outcome", "ip_denied")
            ]
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay(&up).with(|r| r.allow = vec!["110.75.0.0/16".into()]);
    let body = fixture("alipay", "rsa2_trade_success.form");
    let xff = [
        ("content-type", FORM),
        ("x-forwarded-for", "6.6.6.6, 110.75.3.4"),
    ];

    // Not trusted: the header is ignored, 127.0.0.1 is not allowed.
    let gw = TestGateway::start(GatewaySpec::new(vec![route.clone()])).await;
    assert_eq!(
        gw.send("POST", "/notify/alipay", &xff, body.clone())
            .await
            .status,
        403
    );

    // Trusted: the right-most untrusted hop is the source.
    let mut spec = GatewaySpec::new(vec![route]);
    spec.trusted_proxies = vec!["127.0.0.1/32".into()];
    let gw = TestGateway::start(spec).await;
    let r = gw.send("POST", "/notify/alipay", &xff, body.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.received()[0].headers["x-forwarded-for"], "110.75.3.4");

    // A chain of trusted proxies is walked past, right to left.
    let chain = [
        ("content-type", FORM),
        ("x-forwarded-for", "110.75.9.9, 127.0.0.1"),
    ];
    let body3 = fixture("alipay", "rsa2_trade_success_3.form");
    assert_eq!(
        gw.send("POST", "/notify/alipay", &chain, body3)
            .await
            .status,
        200
    );
    assert_eq!(up.received()[1].headers["x-forwarded-for"], "110.75.9.9");

    // A spoofed left-most entry does not help an attacker behind the proxy.
    let spoof = [
        ("content-type", FORM),
        ("x-forwarded-for", "110.75.3.4, 6.6.6.6"),
    ];
    let body2 = fixture("alipay", "rsa2_trade_success_2.form");
    assert_eq!(
        gw.send("POST", "/notify/alipay", &spoof, body2)
            .await
            .status,
        403
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn stale_and_future_notifications_are_401() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay(&up).with(|r| r.max_age = Some("1s".into()));
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (401, "fail"),
        "signed 2026-11-22, max_age 1s"
    );
    let r = gw.post_alipay("rsa2_future.form").await;
    assert_eq!(r.status, 401, "signed for 2099");
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests("stale").await, 2.0);

    let gw = gateway_with(&up, |_| {}).await;
    let r = gw.post_alipay("rsa2_future.form").await;
    assert_eq!(r.status, 401, "the future stays refused whatever max_age");
}

#[tokio::test]
async fn normalized_mode_sends_the_contract_json() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay(&up).with(|r| r.forward = "normalized".into());
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!(r.status, 200);
    let got = &up.received()[0];
    assert_eq!(got.headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(v["provider"], "alipay");
    assert_eq!(v["event_id"], "2026112200222000000000000000000001");
    assert_eq!(v["out_trade_no"], "CG20261122000001");
    assert_eq!(v["amount_fen"], 8888);
    assert_eq!(v["currency"], "CNY");
    assert_eq!(v["status"], "paid");
    assert!(v["occurred_at"].as_str().unwrap().ends_with("+08:00"));
    assert!(v["provider_trade_no"].is_string());
    assert_eq!(
        v["fields"]["passback_params"],
        "merchantBizType%3DpeerPay%26orderId%3D42"
    );
    assert!(v["fields"].get("sign").is_none());
    // The signature header covers the JSON body.
    let sig = got.headers["x-callgate-signature"].to_str().unwrap();
    let (t, v1) = sig.split_once(",v1=").unwrap();
    let signed = [t.trim_start_matches("t=").as_bytes(), b".", &got.body].concat();
    assert_eq!(v1, openssl_hmac_hex(SECRET.trim_end(), &signed));
}

/// A genuine trade notification (openssl-signed) of order
/// `CG20261122000050` in `status`, with `extra` fields on top.
fn alipay_trade(notify_id: &str, status: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut params = vec![
        ("app_id", "2021000000000001"),
        ("charset", "utf-8"),
        ("gmt_create", "2026-11-22 09:59:00"),
        ("notify_id", notify_id),
        ("notify_time", "2026-11-22 10:30:00"),
        ("notify_type", "trade_status_sync"),
        ("out_trade_no", "CG20261122000050"),
        ("seller_id", "2088101122136241"),
        ("subject", "order 50"),
        ("total_amount", "88.88"),
        ("trade_no", "2026112222001400000000000050"),
        ("trade_status", status),
        ("version", "1.0"),
    ];
    params.extend_from_slice(extra);
    alipay_openssl(&params)
}

/// A case of `normalized_mode_tells_the_shop_every_trade_status`: what it
/// is, the body, then the status, amount, currency and time the shop must
/// be told.
type TradeCase = (
    &'static str,
    Vec<u8>,
    &'static str,
    Option<i64>,
    &'static str,
    &'static str,
);

#[tokio::test]
async fn normalized_mode_tells_the_shop_every_trade_status() {
    // Every trade_status Alipay documents, and the refunds, as the shop is
    // told them: status, amount in fen, currency, and the time of the
    // event itself.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay(&up).with(|r| r.forward = "normalized".into());
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let paid = ("gmt_payment", "2026-11-22 09:59:30");
    let cases: Vec<TradeCase> = vec![
        (
            "paid",
            alipay_trade(
                "2026112200222000000000000000000051",
                "TRADE_SUCCESS",
                &[paid],
            ),
            "paid",
            Some(8888),
            "CNY",
            "2026-11-22T09:59:30+08:00",
        ),
        (
            "finished (no refunds any more)",
            alipay_trade(
                "2026112200222000000000000000000052",
                "TRADE_FINISHED",
                &[paid, ("gmt_close", "2026-11-22 10:20:00")],
            ),
            "paid",
            Some(8888),
            "CNY",
            "2026-11-22T09:59:30+08:00",
        ),
        (
            "closed unpaid",
            alipay_trade(
                "2026112200222000000000000000000053",
                "TRADE_CLOSED",
                &[("gmt_close", "2026-11-22 10:20:00")],
            ),
            "closed",
            Some(8888),
            "CNY",
            "2026-11-22T10:20:00+08:00",
        ),
        (
            "awaiting payment",
            alipay_trade("2026112200222000000000000000000054", "WAIT_BUYER_PAY", &[]),
            "pending",
            Some(8888),
            "CNY",
            "2026-11-22T10:30:00+08:00",
        ),
        (
            "partly refunded",
            alipay_trade(
                "2026112200222000000000000000000055",
                "TRADE_SUCCESS",
                &[
                    paid,
                    ("gmt_refund", "2026-11-22 10:10:00.250"),
                    ("out_biz_no", "RF50A"),
                    ("refund_fee", "10.00"),
                ],
            ),
            "refunded",
            Some(1000),
            "CNY",
            "2026-11-22T10:10:00.250+08:00",
        ),
        (
            "fully refunded (closes the trade)",
            alipay_trade(
                "2026112200222000000000000000000056",
                "TRADE_CLOSED",
                &[
                    paid,
                    ("gmt_close", "2026-11-22 10:15:00"),
                    ("gmt_refund", "2026-11-22 10:15:00.100"),
                    ("out_biz_no", "RF50B"),
                    ("refund_fee", "88.88"),
                ],
            ),
            "refunded",
            Some(8888),
            "CNY",
            "2026-11-22T10:15:00.100+08:00",
        ),
        (
            "priced in another currency (cross-border)",
            alipay_trade(
                "2026112200222000000000000000000057",
                "TRADE_SUCCESS",
                &[paid, ("trans_currency", "USD")],
            ),
            "paid",
            Some(8888),
            "USD",
            "2026-11-22T09:59:30+08:00",
        ),
    ];
    for (what, body, status, amount, currency, when) in &cases {
        gw.post_form("/notify/alipay", body)
            .await
            .assert_is(200, "success", what);
        let got = up.received();
        let v: serde_json::Value = serde_json::from_slice(&got.last().unwrap().body).unwrap();
        assert_eq!(
            (
                v["status"].as_str(),
                v["amount_fen"].as_i64(),
                v["currency"].as_str(),
                v["occurred_at"].as_str()
            ),
            (Some(*status), *amount, Some(*currency), Some(*when)),
            "{what}: {v}"
        );
        assert_eq!(v["out_trade_no"], "CG20261122000050", "{what}");
    }
    assert_eq!(up.count(), cases.len());

    // A blank trans_currency is not signed (the Java rule skips blank
    // values): anyone can add one to a genuine notification, and it names
    // no currency.
    let mut body = alipay_trade(
        "2026112200222000000000000000000058",
        "TRADE_SUCCESS",
        &[paid],
    );
    body.extend_from_slice(b"&trans_currency=%20");
    gw.post_form("/notify/alipay", &body).await.assert_is(
        200,
        "success",
        "blank trans_currency added",
    );
    let got = up.received();
    let v: serde_json::Value = serde_json::from_slice(&got.last().unwrap().body).unwrap();
    assert_eq!(v["currency"], "CNY", "{v}");
    assert!(v["fields"].get("trans_currency").is_none(), "{v}");
}

#[tokio::test]
async fn health_and_readiness() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with(&up, |_| {}).await;
    assert_eq!(gw.get_admin("/healthz").await.status, 200);
    assert_eq!(gw.get_admin("/readyz").await.status, 200);
    assert_eq!(gw.get_admin("/nope").await.status, 404);
    assert_eq!(
        gw.metric("callgate_rules_loaded_routes", &[]).await,
        Some(1.0)
    );
    // Series exist at zero before the first notification.
    assert_eq!(gw.requests("bad_signature").await, 0.0);
    assert!(
        gw.metric("callgate_replay_store_entries", &[])
            .await
            .is_some()
    );
}

/// Writes raw bytes to the gateway and reads until it closes.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn allow_mode_log_lets_denied_addresses_through_and_counts_them() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay(&up).with(|r| {
        r.allow = vec!["110.75.0.0/16".into()];
        r.extra = "allow_mode = \"log\"\n".into();
    });
    let spec = GatewaySpec::new(vec![route]);
    let dir = tempfile::tempdir().unwrap();
    let loaded = callgate::config::load(&spec.write(dir.path())).unwrap();
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.to_string().contains("allow_mode = \"log\"")),
        "{:?}",
        loaded.warnings
    );
    let gw = TestGateway::start(spec).await;
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
    assert_eq!(gw.requests("forwarded").await, 1.0);
    assert_eq!(gw.requests("ip_denied").await, 0.0);
    let dry = gw
        .metric(
            "callgate_rejections_total",
            &[
                ("route", "shop-alipay"),
                ("provider", "alipay"),
                ("reason", "ip_denied_dry_run"),
            ],
        )
        .await;
    assert_eq!(dry, Some(1.0));
    // Everything else is still enforced in log mode.
    let r = gw.post_alipay("rsa2_tampered_amount.form").await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn refusals_are_counted_by_detailed_reason() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with(&up, |_| {}).await;
    for f in [
        "rsa2_tampered_amount.form",
        "rsa2_other_app.form",
        "rsa2_sign_type_unknown.form",
        "rsa2_missing_sign.form",
        "rsa2_duplicate_key.form",
    ] {
        gw.post_alipay(f).await;
    }
    gw.send("GET", "/notify/alipay", &[], vec![]).await;
    let text = gw.get_admin("/metrics").await.text();
    for reason in [
        "bad_digest",
        "merchant_mismatch",
        "sign_type_unsupported",
        "signature_missing",
        "duplicate_key",
        "method_not_allowed",
    ] {
        let n = find_metric(
            &text,
            "callgate_rejections_total",
            &[
                ("route", "shop-alipay"),
                ("provider", "alipay"),
                ("reason", reason),
            ],
        );
        assert_eq!(n, Some(1.0), "{reason}");
    }
}
