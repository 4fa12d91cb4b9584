//! The gateway end to end for legacy Alipay (`alipay_md5`: MD5 partner key,
//! UTF-8 and GBK, the notify_verify confirmation) and for `alipay` in
//! certificate mode, over real sockets: status, ack body, what the upstream
//! (and the notify_verify stand-in) received, and the metrics line.
//! Fixtures: tests/fixtures/alipay_md5 (MD5 by `openssl dgst -md5`, checked by
//! PHP's parse_str + md5) and tests/fixtures/alipay_cert (openssl chain and
//! signatures, plus public sandbox certificates).

mod support;

use support::*;

const MD5: &str = "/notify/alipay_md5";
const ROUTE: &str = "shop-legacy";
const PROVIDER: &str = "alipay_md5";

fn md5_fixture(name: &str) -> Vec<u8> {
    fixture("alipay_md5", name)
}

fn cert_fixture(name: &str) -> Vec<u8> {
    fixture("alipay_cert", name)
}

fn expected_md5() -> serde_json::Value {
    serde_json::from_slice(&md5_fixture("expected.json")).unwrap()
}

/// What the shop gets of a legacy fixture signed the demo's way: the body
/// without its empty `extra_common_param=`, which that signature does not
/// cover (anyone could add or drop it), every other byte as sent.
fn without_unsigned_empty(body: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(body).unwrap();
    assert_eq!(text.matches("&extra_common_param=").count(), 1, "{text}");
    text.replace("&extra_common_param=", "").into_bytes()
}

async fn md5_gateway(route: RouteSpec) -> TestGateway {
    TestGateway::start(GatewaySpec::new(vec![route])).await
}

/// POSTs `body` to the MD5 route with `content_type`.
async fn post_md5_as(gw: &TestGateway, content_type: &str, body: &[u8]) -> Reply {
    gw.send(
        "POST",
        MD5,
        &[("content-type", content_type)],
        body.to_vec(),
    )
    .await
}

/// A notify_verify stand-in answering `body`, and a route that asks it.
async fn with_atn(up: &Upstream, atn: &Upstream) -> RouteSpec {
    RouteSpec::alipay_md5(up).with(|r| {
        r.keys.push_str(&format!(
            "notify_verify_url = \"http://127.0.0.1:{}/gateway.do\"\n",
            atn.addr.port()
        ))
    })
}

// === alipay_md5 ===

#[tokio::test]
async fn md5_forwards_the_original_bytes_but_no_unsigned_empty_field() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = md5_gateway(RouteSpec::alipay_md5(&up)).await;
    let body = md5_fixture("md5_trade_success.form");
    let r = gw
        .send(
            "POST",
            "/notify/alipay_md5?code=alipay&dopost=return",
            &[("content-type", "application/x-www-form-urlencoded")],
            body.clone(),
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let got = up.received();
    assert_eq!(got.len(), 1);
    let body = without_unsigned_empty(&body);
    assert_eq!(got[0].body.as_ref(), body.as_slice());
    assert_eq!(got[0].uri, "/plus/notify.php");
    assert_eq!(got[0].headers["x-callgate-provider"], "alipay_md5");
    assert_eq!(got[0].headers["x-callgate-route"], ROUTE);
    assert_eq!(
        got[0].headers["x-callgate-event-id"],
        "a7f3c1e9b2d84f6e8c0b5a4d3e2f1c0001"
    );
    let sig = got[0].headers["x-callgate-signature"].to_str().unwrap();
    let (t, v1) = sig.split_once(",v1=").unwrap();
    let signed = [t.trim_start_matches("t=").as_bytes(), b".", &body].concat();
    assert_eq!(v1, openssl_hmac_hex(SECRET.trim_end(), &signed));
    assert_eq!(gw.requests_of(ROUTE, PROVIDER, "forwarded").await, 1.0);
}

#[tokio::test]
async fn md5_gbk_verifies_and_reaches_the_upstream_as_sent() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay_md5(&up).with(|r| r.keys.push_str("charset = \"gbk\"\n"));
    let gw = md5_gateway(route).await;
    let body = md5_fixture("md5_gbk.form");
    let r = post_md5_as(
        &gw,
        "application/x-www-form-urlencoded; text/html; charset=GBK",
        &body,
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let got = &up.received()[0];
    assert_eq!(got.body.as_ref(), without_unsigned_empty(&body).as_slice());
    assert_eq!(
        got.headers["content-type"],
        "application/x-www-form-urlencoded; text/html; charset=GBK"
    );

    // Normalized: decoded from GBK for the JSON.
    let up2 = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay_md5(&up2).with(|r| {
        r.keys.push_str("charset = \"gbk\"\n");
        r.forward = "normalized".into();
    });
    let gw = md5_gateway(route).await;
    assert_eq!(gw.post_form(MD5, &body).await.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&up2.received()[0].body).unwrap();
    assert_eq!(v["fields"]["subject"], "测试商品 中文GBK");
    assert_eq!(v["fields"]["body"], "支付宝即时到账");
    assert_eq!(v["amount_fen"], 600);

    // The same GBK bytes on a route that says nothing about its charset,
    // sent with a Content-Type that says utf-8: the MD5 covers the raw
    // bytes, they are not UTF-8 but are GBK, so they are GBK: delivered,
    // and decoded as GBK for the JSON.
    let up3 = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw =
        md5_gateway(RouteSpec::alipay_md5(&up3).with(|r| r.forward = "normalized".into())).await;
    let r = post_md5_as(
        &gw,
        "application/x-www-form-urlencoded; charset=utf-8",
        &body,
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let v: serde_json::Value = serde_json::from_slice(&up3.received()[0].body).unwrap();
    assert_eq!(v["fields"]["subject"], "测试商品 中文GBK");
    assert_eq!(gw.requests_of(ROUTE, PROVIDER, "forwarded").await, 1.0);
}

#[tokio::test]
async fn md5_real_world_shapes_verify() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = md5_gateway(RouteSpec::alipay_md5(&up)).await;
    for f in [
        "md5_whitespace_value.form",
        "md5_empty_included.form",
        "md5_escrow_paid.form",
        "md5_trade_finished_2.form",
    ] {
        let body = md5_fixture(f);
        let r = gw.post_form(MD5, &body).await;
        r.assert_is(200, "success", f);
        // Signed with its empty field, it is covered and stays.
        let want = if f == "md5_empty_included.form" {
            body
        } else {
            without_unsigned_empty(&body)
        };
        assert_eq!(
            up.received().last().unwrap().body.as_ref(),
            want.as_slice(),
            "{f}"
        );
    }
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn md5_bad_signatures_and_wrong_merchant_are_401_and_never_forwarded() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = md5_gateway(RouteSpec::alipay_md5(&up)).await;
    let bad = [
        "md5_tampered_amount.form",
        "md5_wrong_key.form",
        "md5_plus_as_space.form",
        "md5_uppercase_sign.form",
        "md5_missing_sign.form",
        "md5_sign_type_rsa.form",
        "md5_sign_type_dsa.form",
        "md5_other_seller.form",
    ];
    for f in bad {
        let r = gw.post_form(MD5, &md5_fixture(f)).await;
        r.assert_is(401, "fail", f);
    }
    assert_eq!(up.count(), 0);
    assert_eq!(
        gw.requests_of(ROUTE, PROVIDER, "bad_signature").await,
        bad.len() as f64
    );
}

#[tokio::test]
async fn md5_seller_email_and_seller_id_are_the_routes() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay_md5(&up)
        .with(|r| r.keys.push_str("seller_email = \"shop@example.com\"\n"));
    let gw = md5_gateway(route).await;
    let r = gw
        .post_form(MD5, &md5_fixture("md5_other_seller_email.form"))
        .await;
    assert_eq!((r.status, r.text().as_str()), (401, "fail"));
    let r = gw
        .post_form(MD5, &md5_fixture("md5_trade_success.form"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1);

    // keys.seller_id names the seller when it is not the partner.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route =
        RouteSpec::alipay_md5(&up).with(|r| r.keys.push_str("seller_id = \"2088999988887777\"\n"));
    let gw = md5_gateway(route).await;
    assert_eq!(
        gw.post_form(MD5, &md5_fixture("md5_other_seller.form"))
            .await
            .status,
        200
    );
    assert_eq!(
        gw.post_form(MD5, &md5_fixture("md5_trade_success.form"))
            .await
            .status,
        401
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn md5_duplicate_is_acked_and_not_forwarded() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = md5_gateway(RouteSpec::alipay_md5(&up)).await;
    let body = md5_fixture("md5_trade_success.form");
    assert_eq!(gw.post_form(MD5, &body).await.status, 200);
    let again = gw.post_form(MD5, &body).await;
    assert_eq!((again.status, again.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
    assert_eq!(gw.requests_of(ROUTE, PROVIDER, "duplicate").await, 1.0);
}

#[tokio::test]
async fn md5_stale_and_future_are_401() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = md5_gateway(RouteSpec::alipay_md5(&up).with(|r| r.max_age = Some("1s".into()))).await;
    let r = gw
        .post_form(MD5, &md5_fixture("md5_trade_success.form"))
        .await;
    assert_eq!((r.status, r.text().as_str()), (401, "fail"));
    let r = gw.post_form(MD5, &md5_fixture("md5_future.form")).await;
    assert_eq!(r.status, 401);
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests_of(ROUTE, PROVIDER, "stale").await, 2.0);
}

#[tokio::test]
async fn md5_malformed_bodies_are_400() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = md5_gateway(RouteSpec::alipay_md5(&up)).await;
    let good = md5_fixture("md5_trade_success.form");
    let dup = [good.as_slice(), b"&total_fee=0.01"].concat();
    assert_eq!(gw.post_form(MD5, &dup).await.status, 400, "repeated key");
    let broken = [good.as_slice(), b"&x=%ZZ"].concat();
    assert_eq!(
        gw.post_form(MD5, &broken).await.status,
        400,
        "broken escape"
    );
    let r = gw
        .send("POST", MD5, &[("content-type", "text/plain")], good.clone())
        .await;
    assert_eq!((r.status, r.text().as_str()), (400, "fail"), "content type");
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests_of(ROUTE, PROVIDER, "malformed").await, 3.0);
}

#[tokio::test]
async fn md5_normalized_mode_maps_every_status() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw =
        md5_gateway(RouteSpec::alipay_md5(&up).with(|r| r.forward = "normalized".into())).await;
    let expected = expected_md5();
    let mut n = 0;
    for (name, e) in expected.as_object().unwrap() {
        let Some(status) = e["status"].as_str() else {
            continue;
        };
        if e["charset"] == "gbk" {
            continue; // covered on a GBK route above
        }
        let r = gw.post_form(MD5, &md5_fixture(name)).await;
        assert_eq!(r.status, 200, "{name}");
        let got = up.received().pop().unwrap();
        assert_eq!(got.headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert_eq!(v["provider"], "alipay_md5", "{name}");
        assert_eq!(v["event_id"], e["notify_id"], "{name}");
        assert_eq!(v["status"], status, "{name}");
        assert_eq!(v["amount_fen"], e["amount_fen"], "{name}");
        assert_eq!(v["out_trade_no"], e["out_trade_no"], "{name}");
        assert_eq!(v["currency"], "CNY");
        assert!(
            v["occurred_at"].as_str().unwrap().ends_with("+08:00"),
            "{name}"
        );
        assert!(v["fields"].get("sign").is_none());
        n += 1;
    }
    assert_eq!(n, 11);
    let paid = serde_json::from_slice::<serde_json::Value>(&up.received()[0].body).unwrap();
    assert!(paid["provider_trade_no"].is_string());
}

// === notify_verify ===

#[tokio::test]
async fn notify_verify_true_forwards_and_asks_with_the_legacy_query() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let atn = Upstream::start(Behaviour::Reply(200, "true\n")).await;
    let gw = md5_gateway(with_atn(&up, &atn).await).await;
    let r = gw
        .post_form(MD5, &md5_fixture("md5_trade_success.form"))
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let asked = atn.received();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].method, "GET");
    assert_eq!(
        asked[0].uri,
        "/gateway.do?service=notify_verify&partner=2088101122334455&notify_id=a7f3c1e9b2d84f6e8c0b5a4d3e2f1c0001"
    );
    assert!(asked[0].body.is_empty());
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn notify_verify_false_or_invalid_is_401() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let atn = Upstream::start(Behaviour::Reply(200, "false")).await;
    let gw = md5_gateway(with_atn(&up, &atn).await).await;
    let body = md5_fixture("md5_trade_success.form");
    let r = gw.post_form(MD5, &body).await;
    assert_eq!((r.status, r.text().as_str()), (401, "fail"));
    atn.set(Behaviour::Reply(200, "invalid"));
    assert_eq!(gw.post_form(MD5, &body).await.status, 401);
    // The demo's /true$/i would take this; callgate wants exactly `true`.
    atn.set(Behaviour::Reply(200, "untrue"));
    assert_eq!(gw.post_form(MD5, &body).await.status, 401);
    // A page instead of a word (a captive portal, an error page): not `true`.
    atn.set(Behaviour::Reply(200, "true ".repeat(400).leak()));
    assert_eq!(gw.post_form(MD5, &body).await.status, 401);
    assert_eq!(atn.count(), 4);
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests_of(ROUTE, PROVIDER, "bad_signature").await, 4.0);
}

#[tokio::test]
async fn notify_verify_down_is_502_and_the_retry_goes_through() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let atn = Upstream::start(Behaviour::Reply(503, "true")).await;
    let mut spec = GatewaySpec::new(vec![with_atn(&up, &atn).await]);
    spec.upstream_timeout = "300ms".into();
    let gw = TestGateway::start(spec).await;
    let body = md5_fixture("md5_trade_success.form");

    // Non-2xx.
    let r = gw.post_form(MD5, &body).await;
    assert_eq!((r.status, r.text().as_str()), (502, "fail"));
    // No answer within limits.upstream_timeout.
    atn.set(Behaviour::Hang);
    let r = gw.post_form(MD5, &body).await;
    assert_eq!((r.status, r.text().as_str()), (502, "fail"));
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests_of(ROUTE, PROVIDER, "upstream_error").await, 2.0);

    // Alipay retries once the endpoint answers: nothing was claimed.
    atn.set(Behaviour::Reply(200, "true"));
    let r = gw.post_form(MD5, &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn notify_verify_redirect_or_untrusted_tls_never_forwards_and_stays_retryable() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    // A redirect is not followed: its body is not Alipay's answer.
    let atn = Upstream::start(Behaviour::Reply(302, "true")).await;
    let gw = md5_gateway(with_atn(&up, &atn).await).await;
    let body = md5_fixture("md5_trade_success.form");
    let r = gw.post_form(MD5, &body).await;
    assert_eq!((r.status, r.text().as_str()), (502, "fail"));
    // `false` is a refusal, not a delivery: the retry asks again.
    atn.set(Behaviour::Reply(200, "false"));
    assert_eq!(gw.post_form(MD5, &body).await.status, 401);
    assert_eq!(up.count(), 0);
    atn.set(Behaviour::Reply(200, "true"));
    let r = gw.post_form(MD5, &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!((atn.count(), up.count()), (3, 1));

    // https with a certificate no system root vouches for: no answer, 502,
    // and nothing is remembered (the retry is asked again, not a duplicate).
    let tls_atn = Upstream::start_tls(Behaviour::Reply(200, "true")).await;
    let up2 = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay_md5(&up2).with(|r| {
        r.keys.push_str(&format!(
            "notify_verify_url = \"https://127.0.0.1:{}/gateway.do\"\n",
            tls_atn.addr.port()
        ))
    });
    let gw = md5_gateway(route).await;
    for _ in 0..2 {
        let r = gw.post_form(MD5, &body).await;
        assert_eq!((r.status, r.text().as_str()), (502, "fail"));
    }
    assert_eq!((tls_atn.count(), up2.count()), (0, 0));
    assert_eq!(gw.requests_of(ROUTE, PROVIDER, "upstream_error").await, 2.0);
}

#[tokio::test]
async fn notify_verify_unreachable_is_502() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay_md5(&up).with(|r| {
        r.keys.push_str(&format!(
            "notify_verify_url = \"http://127.0.0.1:{port}/gateway.do\"\n"
        ))
    });
    let gw = md5_gateway(route).await;
    let r = gw
        .post_form(MD5, &md5_fixture("md5_trade_success.form"))
        .await;
    assert_eq!((r.status, r.text().as_str()), (502, "fail"));
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests_of(ROUTE, PROVIDER, "upstream_error").await, 1.0);
}

#[tokio::test]
async fn notify_verify_is_asked_once_per_event_after_signature_and_freshness() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let atn = Upstream::start(Behaviour::Reply(200, "true")).await;
    let gw = md5_gateway(with_atn(&up, &atn).await).await;
    for f in ["md5_tampered_amount.form", "md5_future.form"] {
        assert_eq!(gw.post_form(MD5, &md5_fixture(f)).await.status, 401, "{f}");
    }
    assert_eq!(
        atn.count(),
        0,
        "a forgery or a stale one never reaches Alipay"
    );
    // After the claim: a platform retry after delivery is a duplicate,
    // answered without the shop and without asking Alipay again (Alipay
    // invalidates a notify_id once it has seen `success`).
    let body = md5_fixture("md5_trade_success.form");
    assert_eq!(gw.post_form(MD5, &body).await.status, 200);
    let r = gw.post_form(MD5, &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(atn.count(), 1);
    assert_eq!(up.count(), 1);
}

// === alipay certificate mode ===

#[tokio::test]
async fn cert_mode_verifies_with_the_alipay_certificate() {
    let (up, gw) = start_one(RouteSpec::alipay_cert).await;
    for f in ["cert_trade_success.form", "cert_with_sn.form"] {
        let body = cert_fixture(f);
        let r = gw.post_form("/notify/alipay", &body).await;
        r.assert_is(200, "success", f);
        assert_eq!(up.received().last().unwrap().body.as_ref(), body.as_slice());
    }
    assert_eq!(gw.requests("forwarded").await, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cert_mode_accepts_another_alipay_cert_sn_on_the_configured_key_and_warns() {
    // The SDK's rsaCertCheckV1 verifies with the configured certificate's
    // key and never reads alipay_cert_sn: a notification naming another SN
    // (Alipay renewed its certificate on the same key) is genuine. The
    // fixture is signed by openssl with the configured certificate's key.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let config = GatewaySpec::new(vec![RouteSpec::alipay_cert(&up)]).write(dir.path());
    let mut run = GatewayProcess::start(&config);
    let body = cert_fixture("cert_sn_mismatch.form");
    let r = TestClient::new()
        .send(
            "POST",
            &format!("http://{}/notify/alipay", run.addr),
            &[("content-type", "application/x-www-form-urlencoded")],
            body.clone(),
        )
        .await;
    r.assert_is(200, "success", "another alipay_cert_sn");
    assert_eq!(up.received()[0].body.as_ref(), body.as_slice());
    let warning = run.wait_for(|v| v["level"] == "WARN" && v.get("alipay_cert_sn").is_some());
    let named = String::from_utf8_lossy(&body)
        .split('&')
        .find_map(|kv| kv.strip_prefix("alipay_cert_sn=").map(str::to_owned))
        .unwrap();
    assert_eq!(warning["alipay_cert_sn"], named.as_str(), "{warning}");
    assert_ne!(warning["configured"], named.as_str(), "{warning}");
    assert_eq!(warning["app_id"], "2021000000000001", "{warning}");
}

#[tokio::test]
async fn cert_mode_wrong_certificate_is_401() {
    let (up, gw) = start_one(RouteSpec::alipay_cert).await;
    for f in ["cert_wrong_key.form", "cert_tampered.form"] {
        let r = gw.post_form("/notify/alipay", &cert_fixture(f)).await;
        r.assert_is(401, "fail", f);
    }
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests("bad_signature").await, 2.0);

    // Configured with the other certificate, its key's notification passes.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay_cert(&up).with(|r| {
        r.keys = r.keys.replace(
            "alipayCertPublicKey_RSA2.crt",
            "other_alipayCertPublicKey_RSA2.crt",
        )
    });
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    assert_eq!(
        gw.post_form("/notify/alipay", &cert_fixture("cert_wrong_key.form"))
            .await
            .status,
        200
    );
    assert_eq!(
        gw.post_form("/notify/alipay", &cert_fixture("cert_trade_success.form"))
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn cert_mode_loads_certificates_shipped_without_their_intermediate() {
    // Alipay ships alipayCertPublicKey_RSA2.crt and appCertPublicKey_*.crt
    // as the leaf alone, and alipayRootCert.crt holds only roots (see the
    // production copies from alipay-sdk-nodejs-all in the fixture README):
    // the SDK verifies with the leaf's key all the same. Here both files are
    // the openssl leaves alone, their intermediate in neither file.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay_cert(&up).with(|r| {
        r.keys = r
            .keys
            .replace("alipayCertPublicKey_RSA2.crt", "alipay_leaf.crt")
            .replace("appCertPublicKey_2021000000000001.crt", "app_leaf.crt")
    });
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let body = cert_fixture("cert_trade_success.form");
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.received()[0].body.as_ref(), body.as_slice());
    // The key is still the one that decides.
    for f in ["cert_wrong_key.form", "cert_tampered.form"] {
        let r = gw.post_form("/notify/alipay", &cert_fixture(f)).await;
        r.assert_is(401, "fail", f);
    }
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn cert_mode_duplicate_is_acked_once() {
    let (up, gw) = start_one(RouteSpec::alipay_cert).await;
    let body = cert_fixture("cert_trade_success.form");
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 200);
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
    assert_eq!(gw.requests("duplicate").await, 1.0);
}

#[tokio::test]
async fn cert_mode_expired_certificate_still_verifies() {
    // Same key as the valid certificate, validity 2020-2021: loads with a
    // warning, verifies as the SDK would. A notification naming the renewed
    // certificate's SN (same key) verifies too: the SDK never reads it.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay_cert(&up).with(|r| {
        r.keys = r.keys.replace(
            "alipayCertPublicKey_RSA2.crt",
            "expired_alipayCertPublicKey_RSA2.crt",
        )
    });
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let r = gw
        .post_form("/notify/alipay", &cert_fixture("cert_trade_success.form"))
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let r = gw
        .post_form("/notify/alipay", &cert_fixture("cert_with_sn.form"))
        .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "success"),
        "alipay_cert_sn names the renewed certificate"
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn cert_mode_real_sandbox_notification_with_a_literal_plus() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay(&up).with(|r| {
        r.max_age = Some("200000h".into()); // signed 2023-12-21
        r.keys = format!(
            "app_id = \"9021000122682882\"\nalipay_cert = {:?}\nalipay_root_cert = {:?}\napp_cert = {:?}\n",
            fixture_path("alipay", "yansongda_alipayPublicCert.crt"),
            fixture_path("alipay_cert", "fzlee_alipay_root_cert.crt"),
            fixture_path("alipay_cert", "yansongda_alipayAppPublicCert.crt"),
        );
    });
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let r = gw.post_alipay("yansongda_sandbox_plus.form").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let r = gw.post_alipay("yansongda_sandbox_plus_as_space.form").await;
    assert_eq!(r.status, 401);
    assert_eq!(up.count(), 1);
}
