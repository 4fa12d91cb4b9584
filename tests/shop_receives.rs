//! What the shop receives: only the allowlisted platform headers (in both
//! forward modes, and in the journal a redelivery works from), callgate's
//! own headers, and two signatures that never verify as each other. The
//! PHP check of docs/shop.md runs here, extracted from the page itself,
//! under a real `php -S` that callgate forwards to.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use base64::Engine as _;
use support::*;

/// What a hostile caller (or a careless proxy in front of callgate) adds to
/// a genuine notification.
const HOSTILE: &[(&str, &str)] = &[
    ("cookie", "PHPSESSID=admin-session"),
    ("authorization", "Basic YWRtaW46YWRtaW4="),
    ("proxy-authorization", "Basic YWRtaW46YWRtaW4="),
    ("x-original-url", "/admin/orders.php?mark=paid"),
    ("x-rewrite-url", "/admin/orders.php?mark=paid"),
    ("x-http-method-override", "PUT"),
    ("client-ip", "10.0.0.1"),
    ("true-client-ip", "10.0.0.1"),
    ("x-real-ip", "10.0.0.1"),
    ("x-client-ip", "10.0.0.1"),
    ("forwarded", "for=10.0.0.1;proto=https"),
    ("x-forwarded-host", "admin.shop.example"),
    ("x-forwarded-proto", "https"),
    ("referer", "https://evil.example/"),
    ("origin", "https://evil.example"),
    ("x-callgate-verified", "yes"),
    ("x-callgate-resource", "Zm9yZ2Vk"),
    ("x-request-id", "req-42"),
    ("user-agent", "Mozilla/4.0"),
    ("accept", "*/*"),
];

fn names(headers: &http::HeaderMap) -> BTreeSet<String> {
    headers.keys().map(|k| k.as_str().to_owned()).collect()
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// callgate's own headers and what hyper's client always writes.
const ALWAYS: &[&str] = &[
    "host",
    "content-length",
    "x-callgate-provider",
    "x-callgate-route",
    "x-callgate-event-id",
    "x-callgate-request-id",
    "x-callgate-attempt",
    "x-forwarded-for",
    "x-callgate-signature",
];

fn with_hostile(base: &[(String, String)]) -> Vec<(String, String)> {
    let mut h = base.to_vec();
    h.extend(
        HOSTILE
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    h
}

#[tokio::test]
async fn only_allowlisted_headers_reach_the_shop_in_original_mode() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route =
        RouteSpec::alipay(&up).with(|r| r.extra = "forward_headers = [\"X-Request-Id\"]\n".into());
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let form = [(
        "content-type".to_owned(),
        "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
    )];
    let body = fixture("alipay", "rsa2_trade_success.form");
    // WeChat Pay v3's signature headers are not Alipay's: on this route
    // they are only a caller's.
    let mut headers = with_hostile(&form);
    for (k, v) in [
        (
            "wechatpay-serial",
            "PUB_KEY_ID_0000000000000024101100397200000006",
        ),
        ("wechatpay-signature", "Zm9yZ2Vk"),
    ] {
        headers.push((k.to_owned(), v.to_owned()));
    }
    let r = gw.send_owned("/notify/alipay", &headers, &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let got = &up.received()[0];
    let mut want = set(ALWAYS);
    want.extend(set(&[
        "content-type",
        "user-agent",
        "accept",
        "x-request-id",
    ]));
    assert_eq!(names(&got.headers), want);
    assert_eq!(got.headers["x-request-id"], "req-42");
    assert_eq!(got.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got.body.as_ref(), body.as_slice());
}

#[tokio::test]
async fn wechat_v3_signature_headers_travel_with_the_platform_body_only() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let original = RouteSpec::wechat_v3(&up);
    let normalized = RouteSpec::wechat_v3(&up).with(|r| {
        r.name = "shop-wechat-v3-json".into();
        r.path = "/notify/wechat-v3-json".into();
        r.forward = "normalized".into();
    });
    let gw = TestGateway::start(GatewaySpec::new(vec![original, normalized])).await;
    let body = fixture("wechat", "v3_pay.json");
    for (path, nonce) in [
        ("/notify/wechat-v3", "nonce-allowlist-original"),
        ("/notify/wechat-v3-json", "nonce-allowlist-normalized"),
    ] {
        let signed = v3_headers(
            "platform_private.pem",
            WECHAT_PLATFORM_SERIAL,
            unix_now(),
            nonce,
            &body,
        );
        let r = gw.send_owned(path, &with_hostile(&signed), &body).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let got = up.received();
    let wechatpay = [
        "wechatpay-timestamp",
        "wechatpay-nonce",
        "wechatpay-serial",
        "wechatpay-signature",
    ];

    // original: the platform's body with everything that signs it.
    let mut want = set(ALWAYS);
    want.extend(set(&["content-type", "user-agent", "accept"]));
    want.extend(set(&wechatpay));
    want.extend(set(&[
        "x-callgate-resource",
        "x-callgate-resource-signature",
    ]));
    assert_eq!(names(&got[0].headers), want);
    assert_eq!(got[0].headers["content-type"], "application/json");
    assert_eq!(got[0].body.as_ref(), body.as_slice());

    // normalized: callgate's JSON; the platform's signature headers would
    // sign a body the shop does not get.
    let mut want = set(ALWAYS);
    want.extend(set(&["content-type", "user-agent", "accept"]));
    assert_eq!(names(&got[1].headers), want);
    assert_eq!(got[1].headers["content-type"], "application/json");
    let event: serde_json::Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(event["event_id"], "EV-2026112200000001");
}

/// A caller may name any header in `Connection` (RFC 9110 §7.6.1: the
/// fields it lists are hop-by-hop, dropped by a proxy). Honoured for the
/// body's Content-Type and the platform's signature headers, that let
/// anyone holding a captured notification send a copy the shop cannot
/// read or check (a PHP `$_POST` is empty without the form Content-Type;
/// a shop checking WeChat Pay v3 itself has no signature), and a shop
/// that answers 200 to what it could not read makes callgate record the
/// event as delivered: the platform's own retry is then a duplicate and
/// the payment is never credited. In `original` mode the shop gets the
/// platform's body with its Content-Type and its signature headers
/// (CONTRACT §5), whatever `Connection` says; before the fix both were
/// stripped.
#[tokio::test]
async fn a_connection_header_cannot_strip_what_the_shop_needs_to_read_and_check_the_body() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = TestGateway::start(GatewaySpec::new(vec![
        RouteSpec::alipay(&up),
        RouteSpec::wechat_v3(&up),
    ]))
    .await;
    let wechatpay = [
        "wechatpay-timestamp",
        "wechatpay-nonce",
        "wechatpay-serial",
        "wechatpay-signature",
    ];

    let form = fixture("alipay", "rsa2_trade_success.form");
    let headers = [
        (
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        ),
        ("connection", "keep-alive, Content-Type, user-agent"),
        ("user-agent", "Mozilla/4.0"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let r = gw.send_owned("/notify/alipay", &headers, &form).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));

    let json = fixture("wechat", "v3_pay.json");
    let mut headers = v3_headers(
        "platform_private.pem",
        WECHAT_PLATFORM_SERIAL,
        unix_now(),
        "nonce-connection-listed",
        &json,
    );
    headers.push((
        "connection".into(),
        format!("content-type, {}", wechatpay.join(", ")),
    ));
    let r = gw.send_owned("/notify/wechat-v3", &headers, &json).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let got = up.received();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/x-www-form-urlencoded; charset=utf-8"[..])
    );
    assert_eq!(got[0].body.as_ref(), form.as_slice());
    assert!(
        !got[0].headers.contains_key("user-agent"),
        "a header a route merely passes may still be hop-by-hop"
    );
    assert_eq!(
        got[1].headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    for (name, value) in &headers {
        if name.starts_with("wechatpay-") {
            assert_eq!(
                got[1].headers.get(name.as_str()).map(|v| v.as_bytes()),
                Some(value.as_bytes()),
                "{name}"
            );
        }
    }
    assert_eq!(got[1].body.as_ref(), json.as_slice());
}

/// Content-Type is one field (RFC 9110 §8.3), and callgate checks the
/// first one a request carries; a copy of a captured notification with a
/// second one (`multipart/form-data`) used to reach the shop with both, so
/// a shop reading the last could not parse the body, and one answering 200
/// anyway had the event recorded as delivered. Likewise a second
/// `Wechatpay-Signature`: the shop gets the one callgate verified.
#[tokio::test]
async fn the_shop_gets_the_content_type_and_signature_callgate_checked_and_no_other() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = TestGateway::start(GatewaySpec::new(vec![
        RouteSpec::alipay(&up),
        RouteSpec::wechat_v3(&up),
    ]))
    .await;
    let form = fixture("alipay", "rsa2_trade_success.form");
    let headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-type", "multipart/form-data; boundary=x"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let r = gw.send_owned("/notify/alipay", &headers, &form).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));

    let json = fixture("wechat", "v3_pay.json");
    let mut headers = v3_headers(
        "platform_private.pem",
        WECHAT_PLATFORM_SERIAL,
        unix_now(),
        "nonce-second-signature",
        &json,
    );
    let signature = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("wechatpay-signature"))
        .map(|(_, v)| v.clone())
        .unwrap();
    headers.push(("wechatpay-signature".into(), "Zm9yZ2Vk".into()));
    headers.push(("content-type".into(), "text/plain".into()));
    let r = gw.send_owned("/notify/wechat-v3", &headers, &json).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let got = up.received();
    assert_eq!(got.len(), 2);
    let values = |i: usize, name: &str| -> Vec<Vec<u8>> {
        got[i]
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    };
    assert_eq!(
        values(0, "content-type"),
        vec![b"application/x-www-form-urlencoded".to_vec()]
    );
    assert_eq!(
        values(1, "content-type"),
        vec![b"application/json".to_vec()]
    );
    assert_eq!(
        values(1, "wechatpay-signature"),
        vec![signature.into_bytes()]
    );
}

#[tokio::test]
async fn the_journal_keeps_what_redelivery_needs_and_nothing_the_shop_would_not_get() {
    let up = Upstream::start(Behaviour::Reply(500, "down")).await;
    let route = RouteSpec::wechat_v3(&up).with(|r| r.forward = "normalized".into());
    let gw = TestGateway::start(GatewaySpec::new(vec![route])).await;
    let body = fixture("wechat", "v3_pay.json");
    let signed = v3_headers(
        "platform_private.pem",
        WECHAT_PLATFORM_SERIAL,
        unix_now(),
        "nonce-journal-headers",
        &body,
    );
    let r = gw
        .send_owned("/notify/wechat-v3", &with_hostile(&signed), &body)
        .await;
    assert_eq!(r.status, 502);

    gw.flush_journal().await;
    let mut received = Vec::new();
    callgate::journal::read_dir(&gw.dir.path().join("journal"), |rec| {
        if let callgate::journal::Record::Received(r) = rec {
            received.push(r);
        }
    })
    .unwrap();
    assert_eq!(received.len(), 1);
    let kept: BTreeSet<String> = received[0].headers.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        kept,
        set(&[
            "content-type",
            "user-agent",
            "accept",
            "wechatpay-timestamp",
            "wechatpay-nonce",
            "wechatpay-serial",
            "wechatpay-signature",
        ])
    );

    // Enough to verify the notification again and deliver it.
    up.set(Behaviour::Reply(200, "ok"));
    let outcome = callgate::redeliver::redeliver(&gw.gateway.state, &received[0], 1)
        .await
        .unwrap();
    assert_eq!(outcome, callgate::ack::Outcome::Forwarded);
    let got = up.received();
    assert_eq!(got.len(), 2);
    let mut want = set(ALWAYS);
    want.extend(set(&["content-type", "user-agent", "accept"]));
    assert_eq!(names(&got[1].headers), want);
}

#[tokio::test]
async fn a_route_listing_a_header_callgate_never_passes_is_a_config_error_with_its_line() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    for (list, want) in [
        (
            "[\"X-Request-Id\", \"Cookie\"]",
            "forward_headers: `Cookie` is never passed to the shop: a credential",
        ),
        (
            "[\"X-Callgate-Event-Id\"]",
            "`X-Callgate-Event-Id` is never passed to the shop: callgate's own headers",
        ),
        ("[\"Transfer-Encoding\"]", "hop-by-hop"),
        ("[\"X-Forwarded-Host\"]", "X-Forwarded-For"),
        ("[\"X-Original-URL\"]", "rewrites the URL"),
        ("[\"bad name\"]", "`bad name` is not a header name"),
    ] {
        let route =
            RouteSpec::alipay(&up).with(|r| r.extra = format!("forward_headers = {list}\n"));
        let dir = tempfile::tempdir().unwrap();
        let file = GatewaySpec::new(vec![route]).write(dir.path());
        let err = callgate::config::load(&file).unwrap_err().to_string();
        assert!(err.contains(want), "{list}: {err}");
        // The route's `forward_headers` line: name, path, provider, allow,
        // upstream, secret, forward, max_age, success_body, then extra.
        assert!(err.contains("routes.toml:11:"), "{list}: {err}");
    }
}

// === the documented PHP check ===

/// The ```php block after the "tested by tests/shop_receives.rs" marker in
/// docs/shop.md, exactly as an operator copies it.
fn documented_php() -> String {
    let doc = std::fs::read_to_string(root().join("docs/shop.md")).unwrap();
    let (_, after) = doc
        .split_once("<!-- tested by tests/shop_receives.rs")
        .expect("docs/shop.md marks its tested PHP block");
    let (_, code) = after.split_once("```php\n").expect("a ```php block");
    let (code, _) = code.split_once("\n```").expect("the block ends");
    code.to_owned()
}

/// `php -S` serving `notify.php`: the documented check, then `success`.
struct PhpShop {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PhpShop {
    async fn start() -> PhpShop {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("callgate_check.php"), documented_php()).unwrap();
        std::fs::write(dir.path().join("secret"), SECRET.trim_end()).unwrap();
        std::fs::write(
            dir.path().join("notify.php"),
            "<?php\n$secret = file_get_contents(getenv('CALLGATE_SECRET_FILE'));\n\
             require __DIR__ . '/callgate_check.php';\necho 'success';\n",
        )
        .unwrap();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if let Some(child) = spawn_php(dir.path(), port).await {
                return PhpShop {
                    child: Some(child),
                    port,
                    _dir: dir,
                };
            }
        }
        panic!("php -S did not start on a free port");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/notify.php", self.port)
    }
}

impl Drop for PhpShop {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `php -S 127.0.0.1:PORT -t DIR`; `None` when it could not listen.
async fn spawn_php(dir: &Path, port: u16) -> Option<Child> {
    let mut php = tool("php");
    php.arg("-S")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-t")
        .arg(dir)
        .env("CALLGATE_SECRET_FILE", dir.join("secret"));
    spawn_php_server(php, None).await
}

/// A POST straight to PHP, around callgate.
async fn post_to_php(php: &PhpShop, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    TestClient::new()
        .send("POST", &php.url(), headers, body.to_vec())
        .await
}

fn header<'a>(got: &'a Received, name: &str) -> &'a str {
    got.headers[name].to_str().unwrap()
}

#[tokio::test]
async fn the_documented_php_check_accepts_what_callgate_forwards_and_nothing_else() {
    let php = PhpShop::start().await;
    let recorder = Upstream::start(Behaviour::Reply(200, "success")).await;
    // Two routes with one secret: one forwards to the PHP check, the other
    // to a recorder, so the test holds a real forwarded request to rework.
    let to_php = RouteSpec::jdpay(&recorder).with(|r| {
        r.name = "shop-jdpay-php".into();
        r.path = "/notify/jdpay-php".into();
        r.upstream = php.url();
    });
    let gw = TestGateway::start(GatewaySpec::new(vec![to_php, RouteSpec::jdpay(&recorder)])).await;
    let body = fixture("jdpay", "payment.xml");
    let xml = ("content-type", "application/xml");

    // Through callgate: PHP accepts both signatures and prints `success`,
    // so callgate acknowledges JD.
    let r = gw
        .send("POST", "/notify/jdpay-php", &[xml], body.clone())
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(
        gw.requests_of("shop-jdpay-php", "jdpay", "forwarded").await,
        1.0
    );

    let r = gw.send("POST", "/notify/jdpay", &[xml], body.clone()).await;
    assert_eq!(r.status, 200);
    let got = &recorder.received()[0];
    let sig = header(got, "x-callgate-signature");
    let resource = header(got, "x-callgate-resource");
    let resource_sig = header(got, "x-callgate-resource-signature");
    let decrypted = base64::engine::general_purpose::STANDARD
        .decode(resource)
        .unwrap();

    // The forwarded request as it was: accepted.
    let forwarded = [
        xml,
        ("x-callgate-signature", sig),
        ("x-callgate-resource", resource),
        ("x-callgate-resource-signature", resource_sig),
    ];
    let r = post_to_php(&php, &forwarded, &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));

    // The decrypted resource posted as a body under its own signature.
    let r = post_to_php(
        &php,
        &[xml, ("x-callgate-signature", resource_sig)],
        &decrypted,
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (403, "not from callgate"));

    // A changed resource under the real resource signature.
    let changed = base64::engine::general_purpose::STANDARD
        .encode([decrypted.as_slice(), b"<!-- -->"].concat());
    let mut tampered = forwarded;
    tampered[2] = ("x-callgate-resource", &changed);
    let r = post_to_php(&php, &tampered, &body).await;
    assert_eq!(r.status, 403);

    // The body signature offered for the resource.
    let mut swapped = forwarded;
    swapped[3] = ("x-callgate-resource-signature", sig);
    let r = post_to_php(&php, &swapped, &body).await;
    assert_eq!(r.status, 403);

    // A changed body, and no signature at all.
    let mut other = body.clone();
    other.extend_from_slice(b" ");
    assert_eq!(post_to_php(&php, &forwarded, &other).await.status, 403);
    assert_eq!(post_to_php(&php, &[xml], &body).await.status, 403);
}

#[test]
fn the_documented_php_block_parses() {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("check.php");
    std::fs::write(&file, documented_php()).unwrap();
    let out = Command::new("php").arg("-l").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
