//! The console on the admin listener: its JSON API and its page, read
//! from a running gateway that served real signed notifications
//! (delivered, duplicate, refused), and the page loaded by a real headless
//! Chromium that may reach nothing but the admin listener.

mod support;

use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The signed fixture's merchant order number and event id.
const ORDER: &str = "CG20261122000001";
const EVENT: &str = "2026112200222000000000000000000001";
/// Buyer identifiers in the fixture: never shown.
const BUYER_ID: &str = "2088102177846880";
const BUYER_LOGON: &str = "159****5620";

/// A gateway with an `alipay` route (public key) and an Alipay
/// certificate-mode route, after: one delivery, its duplicate, a tampered
/// copy (bad signature), a notification signed with another key, a
/// hostile unverified body, and a request for an unknown path.
async fn gateway_with_traffic(up: &Upstream) -> TestGateway {
    let cert = RouteSpec::alipay_cert(up).with(|r| {
        r.name = "shop-alipay-cert".into();
        r.path = "/notify/alipay-cert".into();
    });
    let gw =
        TestGateway::start_with_admin_token(GatewaySpec::new(vec![RouteSpec::alipay(up), cert]))
            .await;
    assert_eq!(gw.post_alipay("rsa2_trade_success.form").await.status, 200);
    assert_eq!(gw.post_alipay("rsa2_trade_success.form").await.status, 200);
    assert_eq!(
        gw.post_alipay("rsa2_tampered_amount.form").await.status,
        401
    );
    assert_eq!(gw.post_alipay("rsa2_wrong_key.form").await.status, 401);
    assert_eq!(
        gw.post_form("/notify/alipay", HOSTILE_BODY.as_bytes())
            .await
            .status,
        401
    );
    assert_eq!(gw.post_form("/wp-login.php", b"x=1").await.status, 404);
    assert_eq!(up.count(), 1, "one delivery");
    gw
}

/// An unsigned Alipay form whose order number is markup.
const HOSTILE_BODY: &str = "app_id=2021000000000001&notify_id=2026112200222000000000000000000099&out_trade_no=%3Cscript%3Ealert(1)%3C%2Fscript%3E%22%3E%3Cimg+src%3Dx%3E&sign_type=RSA2&sign=AAAA&notify_time=2026-11-22+10%3A00%3A00&trade_status=TRADE_SUCCESS&total_amount=1.00";
const HOSTILE_ORDER: &str = "<script>alert(1)</script>\"><img src=x>";

async fn json(gw: &TestGateway, path: &str) -> Value {
    let r = gw.get_admin(path).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["cache-control"], "no-store");
    serde_json::from_slice(&r.body).unwrap()
}

fn entries(v: &Value) -> &Vec<Value> {
    v["entries"].as_array().unwrap()
}

#[tokio::test]
async fn events_show_the_delivery_and_its_duplicate_with_the_shops_answer() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with_traffic(&up).await;
    let events = json(&gw, "/api/events").await;
    let list = entries(&events);
    let outcomes: Vec<&str> = list
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["duplicate", "forwarded"],
        "newest first: {events:#}"
    );
    let delivered = &list[1];
    assert_eq!(delivered["route"], "shop-alipay");
    assert_eq!(delivered["provider"], "alipay");
    assert_eq!(delivered["event_id"], EVENT);
    assert_eq!(delivered["order_number"], ORDER);
    assert_eq!(delivered["order_verified"], true);
    assert_eq!(delivered["merchant"], "2021000000000001");
    assert_eq!(delivered["status"], 200);
    assert_eq!(delivered["shop_status"], 200);
    assert!(delivered["shop_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(delivered["client"], "127.0.0.1");
    assert!(delivered["reason"].is_null());
    // The request id is the one the shop received.
    let shop_rid = up.received()[0].headers["x-callgate-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(delivered["request_id"], shop_rid.as_str());
    let duplicate = &list[0];
    assert_eq!(duplicate["event_id"], EVENT);
    assert!(duplicate["shop_status"].is_null(), "the shop was not asked");

    // Filters.
    let only = json(&gw, "/api/events?outcome=duplicate").await;
    assert_eq!(entries(&only).len(), 1);
    let other_route = json(&gw, "/api/events?route=shop-alipay-cert").await;
    assert_eq!(entries(&other_route).len(), 0);
    let limited = json(&gw, "/api/events?limit=1").await;
    assert_eq!(entries(&limited).len(), 1);
    let future = json(&gw, "/api/events?since=2999-01-01T00:00:00Z").await;
    assert_eq!(entries(&future).len(), 0);
    let recent = json(&gw, "/api/events?since=1h").await;
    assert_eq!(entries(&recent).len(), 2);
    let bad = gw.get_admin("/api/events?since=yesterday").await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    let unknown = gw.get_admin("/api/events?sort=asc").await;
    assert_eq!(unknown.status, 400, "{}", unknown.text());
    // A mistyped outcome is refused, not answered with nothing.
    let typo = gw.get_admin("/api/events?outcome=forwrded").await;
    assert_eq!(typo.status, 400, "{}", typo.text());
    assert!(
        typo.text().contains("not an outcome label"),
        "{}",
        typo.text()
    );
    // Errors carry the headers every console answer does.
    for bad in [&bad, &unknown, &typo] {
        assert_eq!(bad.headers["cache-control"], "no-store");
        assert_eq!(bad.headers["x-content-type-options"], "nosniff");
        assert_eq!(bad.headers["referrer-policy"], "no-referrer");
        assert_eq!(bad.headers["x-frame-options"], "DENY");
        assert_eq!(bad.headers["content-type"], "application/json");
    }
}

#[tokio::test]
async fn rejections_carry_the_reason_the_fix_and_the_peer() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with_traffic(&up).await;
    let refused = json(&gw, "/api/rejections").await;
    let list = entries(&refused);
    let reasons: Vec<&str> = list.iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        ["not_found", "bad_digest", "bad_digest", "bad_digest"],
        "{refused:#}"
    );
    let tampered = &list[3];
    assert_eq!(tampered["outcome"], "bad_signature");
    assert_eq!(tampered["status"], 401);
    assert_eq!(tampered["route"], "shop-alipay");
    assert_eq!(
        tampered["peer"].as_str().unwrap().split(':').next(),
        Some("127.0.0.1")
    );
    assert_eq!(tampered["order_number"], ORDER);
    assert_eq!(tampered["order_verified"], false, "claimed, not verified");
    assert!(tampered["event_id"].is_null());
    assert!(
        tampered["reason_text"]
            .as_str()
            .unwrap()
            .contains("does not verify"),
        "{tampered:#}"
    );
    assert_eq!(
        tampered["fix"].as_str().unwrap(),
        readme_fix("bad_digest"),
        "the README's words"
    );
    let unknown_path = &list[0];
    assert_eq!(unknown_path["route"], "-");
    assert_eq!(unknown_path["path"], "/wp-login.php");
    assert_eq!(
        unknown_path["fix"].as_str().unwrap(),
        readme_fix("not_found")
    );
}

#[tokio::test]
async fn a_search_by_order_number_lists_every_record_of_the_order() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with_traffic(&up).await;
    let found = json(&gw, &format!("/api/events?q={ORDER}")).await;
    let outcomes: Vec<(&str, bool)> = entries(&found)
        .iter()
        .map(|e| {
            (
                e["outcome"].as_str().unwrap(),
                e["order_verified"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("bad_signature", false),
            ("duplicate", true),
            ("forwarded", true)
        ],
        "{found:#}"
    );
    // By event id: the verified records.
    let by_event = json(&gw, &format!("/api/events?q={EVENT}")).await;
    assert_eq!(entries(&by_event).len(), 2);
    // An order only ever refused says so, with the reason and the fix.
    let page = gw.get_admin("/?q=CG20261122000007").await.text();
    assert!(
        page.contains(
            "<span class=\"bad\">Not delivered</span>: refused before its signature checked out"
        ) && page.contains("bad_digest")
            && page.contains("fetch the key again"),
        "{page}"
    );

    // The page's search box gives the same list, with reasons and fixes.
    let page = gw.get_admin(&format!("/?q={ORDER}")).await;
    assert_eq!(page.status, 200);
    let html = page.text();
    let section = html
        .split("id=\"search\"")
        .nth(1)
        .and_then(|s| s.split("<h2").next())
        .expect("a search section");
    assert!(section.contains("(3 found)"), "{section}");
    assert!(
        section.contains("<span class=\"ok\">Delivered</span> to the shop at ")
            && section.contains("the shop answered 200"),
        "{section}"
    );
    for want in [
        "forwarded",
        "duplicate",
        "bad_signature",
        "bad_digest",
        "(unverified)",
    ] {
        assert!(section.contains(want), "{want} missing in {section}");
    }
}

#[tokio::test]
async fn routes_store_and_reload_are_reported() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with_traffic(&up).await;
    let routes = json(&gw, "/api/routes").await;
    let list = routes["routes"].as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["shop-alipay", "shop-alipay-cert"]);
    let alipay = &list[0];
    assert_eq!(alipay["provider"], "alipay");
    assert_eq!(alipay["path"], "/notify/alipay");
    assert_eq!(
        alipay["allow"],
        serde_json::json!(["127.0.0.1/32", "::1/128"])
    );
    assert_eq!(alipay["merchants"][0]["upstream"], up.url.as_str());
    assert_eq!(alipay["merchants"][0]["merchant_id"], "2021000000000001");
    assert_eq!(
        alipay["last_hour"],
        serde_json::json!({"forwarded": 1, "duplicate": 1, "bad_signature": 3})
    );
    let cert = &list[1];
    let keys = cert["keys"].as_array().unwrap();
    let alipay_cert = keys
        .iter()
        .find(|k| k["key"].as_str().unwrap().starts_with("alipay_cert:"))
        .expect("the alipay_cert key");
    assert_eq!(
        alipay_cert["days_left"].as_i64().unwrap(),
        openssl_days_left("alipayCertPublicKey_RSA2.crt")
    );
    assert_eq!(routes["last_reload"]["ok"], true);
    assert_eq!(routes["last_reload"]["routes"], 2);

    let store = json(&gw, "/api/store").await;
    assert_eq!(store["kind"], "memory");
    assert_eq!(store["health"], "up");
    assert_eq!(store["bound"], 100_000);
    assert!(store["entries"].as_u64().unwrap() >= 1, "{store:#}");
}

#[tokio::test]
async fn after_a_restart_the_journal_still_answers_the_search() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    let gw = TestGateway::start(spec.clone()).await;
    assert_eq!(gw.post_alipay("rsa2_trade_success.form").await.status, 200);
    let before = json(&gw, &format!("/api/events?q={ORDER}")).await;
    let TestGateway { dir, gateway, .. } = gw;
    gateway.shutdown().await;
    let gw = TestGateway::start_in(dir, spec).await;
    let after = json(&gw, &format!("/api/events?q={ORDER}")).await;
    let list = entries(&after);
    assert_eq!(list.len(), 1, "{after:#}");
    let e = &list[0];
    let was = &entries(&before)[0];
    for field in [
        "request_id",
        "route",
        "provider",
        "event_id",
        "order_number",
        "shop_status",
        "outcome",
        "merchant",
    ] {
        assert_eq!(e[field], was[field], "{field}");
    }
    assert_eq!(e["order_verified"], true);
    assert_eq!(e["shop_status"], 200);
    // The platform's retry after the restart is a duplicate, listed too.
    assert_eq!(gw.post_alipay("rsa2_trade_success.form").await.status, 200);
    let again = json(&gw, &format!("/api/events?q={ORDER}")).await;
    let outcomes: Vec<&str> = entries(&again)
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["duplicate", "forwarded"]);
}

#[tokio::test]
async fn no_secret_body_or_buyer_id_ever_appears() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with_traffic(&up).await;
    let body = String::from_utf8(fixture("alipay", "rsa2_trade_success.form")).unwrap();
    let sign = body
        .split('&')
        .find_map(|kv| kv.strip_prefix("sign="))
        .unwrap();
    let signature_head = &percent_decode(sign)[..24];
    let secret = SECRET.trim();
    let forbidden = [
        secret,
        ADMIN_TOKEN,
        signature_head,
        BUYER_ID,
        BUYER_LOGON,
        "fund_bill_list",
        "passback_params",
        "callgate test order",
    ];
    for path in [
        "/",
        &format!("/?q={ORDER}"),
        "/api/routes",
        "/api/events",
        "/api/rejections",
        &format!("/api/events?q={ORDER}"),
        "/api/store",
    ] {
        let text = gw.get_admin(path).await.text();
        for f in forbidden {
            assert!(!text.contains(f), "{path} shows `{f}`");
        }
    }
}

#[tokio::test]
async fn the_page_escapes_what_came_from_the_network_and_may_load_nothing() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with_traffic(&up).await;
    // The hostile order number is kept (and searchable) as sent.
    let refused = json(&gw, "/api/rejections").await;
    assert!(
        entries(&refused)
            .iter()
            .any(|e| e["order_number"] == HOSTILE_ORDER),
        "{refused:#}"
    );
    for path in [
        "/".to_owned(),
        format!("/?q={}", query_escape(HOSTILE_ORDER)),
    ] {
        let page = gw.get_admin(&path).await;
        assert_eq!(page.status, 200);
        assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
        let csp = page.headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'none'; style-src 'sha256-"),
            "{csp}"
        );
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("script-src"),
            "{csp}"
        );
        assert_eq!(page.headers["x-content-type-options"], "nosniff");
        let html = page.text();
        assert!(!html.contains("<script"), "{path}: markup got through");
        assert!(!html.contains("<img"), "{path}: markup got through");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img src=x&gt;"),
            "{path}: the hostile order is shown escaped"
        );
        assert_only_relative_links(&html);
        // The inline style sheet is the one the policy's hash allows.
        let style = html
            .split("<style>")
            .nth(1)
            .and_then(|s| s.split("</style>").next())
            .unwrap();
        let hash = openssl_sha256_b64(style.as_bytes());
        assert!(csp.contains(&format!("'sha256-{hash}'")), "{csp} vs {hash}");
    }
}

#[tokio::test]
async fn the_console_is_loopback_only_unless_the_token_is_presented() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    // Loopback, no token configured: readable, but only under a loopback
    // name (a page that rebinds its DNS name to 127.0.0.1 gets nothing).
    let gw = TestGateway::start(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    let client = TestClient::new();
    assert_eq!(gw.get_admin("/api/events").await.status, 200);
    for host in ["evil.example", "evil.example:80", "127.0.0.1.evil.example"] {
        let r = client
            .send(
                "GET",
                &format!("{}/api/events", gw.admin),
                &[("host", host)],
                vec![],
            )
            .await;
        assert_eq!(r.status, 421, "{host}");
        let r = client
            .send("GET", &format!("{}/", gw.admin), &[("host", host)], vec![])
            .await;
        assert_eq!(r.status, 421, "{host}");
    }
    for host in ["localhost", "localhost:9090", "[::1]:9090", "127.0.0.1"] {
        let r = client
            .send(
                "GET",
                &format!("{}/api/store", gw.admin),
                &[("host", host)],
                vec![],
            )
            .await;
        assert_eq!(r.status, 200, "{host}");
    }
    let r = client
        .send("POST", &format!("{}/api/events", gw.admin), &[], vec![])
        .await;
    assert_eq!(r.status, 405);

    // Not on loopback, no token: no console, and `check` warns.
    let open = |t: &mut String| {
        *t = t.replacen(
            "[admin]\naddr = \"127.0.0.1:0\"\n",
            "[admin]\naddr = \"0.0.0.0:0\"\n",
            1,
        )
    };
    let gw = TestGateway::start_edited(GatewaySpec::new(vec![RouteSpec::alipay(&up)]), open).await;
    for path in ["/", "/api/events", "/api/routes"] {
        assert_eq!(gw.get_admin(path).await.status, 404, "{path}");
    }
    let (code, _, err) = callgate_cli(&["check"], &gw.dir.path().join("callgate.toml"));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("is not a loopback address and admin.token_file is not set"),
        "{err}"
    );

    // Not on loopback, with a token: only with it, as Bearer or as the
    // password of HTTP Basic (a browser's prompt).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let gw =
        TestGateway::start_edited_in(dir, GatewaySpec::new(vec![RouteSpec::alipay(&up)]), |t| {
            *t = t.replacen(
                "[admin]\naddr = \"127.0.0.1:0\"\n",
                "[admin]\naddr = \"0.0.0.0:0\"\ntoken_file = \"admin.token\"\n",
                1,
            )
        })
        .await;
    let r = gw.get_admin("/").await;
    assert_eq!(r.status, 401);
    assert!(
        r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );
    assert_eq!(gw.get_admin("/api/events").await.status, 401);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let basic = format!(
        "Basic {}",
        base64_std(format!("ops:{ADMIN_TOKEN}").as_bytes())
    );
    let wrong = format!("Basic {}", base64_std(b"ops:not-the-token-0123456789"));
    for (auth, want) in [(&bearer, 200), (&basic, 200), (&wrong, 401)] {
        for path in ["/", "/api/events"] {
            let r = client
                .send(
                    "GET",
                    &format!("{}{path}", gw.admin),
                    &[("authorization", auth)],
                    vec![],
                )
                .await;
            assert_eq!(r.status, want, "{path} {auth}");
        }
    }
    // Basic credentials never redeliver: a browser would resend them for
    // any page that posts here.
    let r = client
        .send(
            "POST",
            &format!("{}/api/redeliver", gw.admin),
            &[("authorization", &basic)],
            br#"{"route":"shop-alipay","dry_run":true}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 401);
}

/// The token is compared in one function, through the constant-time
/// helper: a timing test would be flaky, so this reads the source.
#[test]
fn the_admin_token_is_compared_in_constant_time_only() {
    let src = std::fs::read_to_string(root().join("src/admin.rs")).unwrap();
    let start = src.find("fn token_matches(").expect("token_matches");
    let body = &src[start..start + src[start..].find("\n}\n").unwrap()];
    assert!(body.contains("crate::secret::ct_eq("), "{body}");
    assert_eq!(
        src.matches("token.expose()").count(),
        1,
        "the token is read in token_matches only"
    );
    for line in src.lines() {
        let l = line.trim();
        assert!(
            !(l.contains("expose()") && (l.contains("==") || l.contains("!="))),
            "a plain comparison of the token: {l}"
        );
    }
}

#[test]
fn every_fix_is_the_readmes_word_for_word() {
    let readme = readme_fixes();
    let code: Vec<(String, String)> = callgate::console::all_fixes()
        .iter()
        .map(|(l, f)| ((*l).to_owned(), (*f).to_owned()))
        .collect();
    assert_eq!(
        code, readme,
        "src/console/fixes.rs differs from README's Troubleshooting table"
    );
}

// === Chromium ===

/// Loads the console in headless Chromium through a counting relay: the
/// rendered page shows the events, a rejection reason and a key's days
/// left; the page asked for nothing but the page itself (and no other
/// host could even be resolved); screenshots are written under
/// target/console/.
#[tokio::test]
async fn chromium_renders_the_console_and_fetches_nothing_else() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway_with_traffic(&up).await;
    let admin: std::net::SocketAddr = gw.admin.trim_start_matches("http://").parse().unwrap();
    let relay = Relay::start(admin).await;
    let url = format!("http://{}/", relay.addr);
    let profile = tempfile::tempdir().unwrap();

    let dom = chromium(&profile, &["--dump-dom", &url]).await;
    assert!(dom.contains("callgate console"), "{dom}");
    for want in [
        EVENT,
        ORDER,
        "forwarded",
        "duplicate",
        "bad_digest",
        "does not verify",
        // The likely fix, from the README.
        "fetch the key again",
        &format!(
            "{} days left",
            openssl_days_left("alipayCertPublicKey_RSA2.crt")
        ),
        "shop-alipay-cert",
        "memory",
        "of 100000 entries",
    ] {
        assert!(dom.contains(want), "the rendered page lacks `{want}`");
    }
    assert!(!dom.contains("<script"), "no script ran or was injected");
    assert_only_relative_links(&dom);

    let artefacts = root().join("target/console");
    std::fs::create_dir_all(&artefacts).unwrap();
    // The screenshot shows a search: the operator's question answered.
    let search = format!("{url}?q={ORDER}");
    let shot = artefacts.join("console.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &profile,
        &[
            "--hide-scrollbars",
            "--window-size=1100,1900",
            &format!("--screenshot={}", shot.display()),
            &search,
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    let phone = artefacts.join("console-phone.png");
    chromium(
        &profile,
        &[
            "--window-size=390,1600",
            &format!("--screenshot={}", phone.display()),
            &url,
        ],
    )
    .await;
    assert!(std::fs::read(&phone).unwrap().starts_with(b"\x89PNG"));

    // Each of the three loads made exactly one request, for the page
    // itself, and it reached the console: nothing else was asked for.
    let seen = relay.requests();
    let searched = format!("GET /?q={ORDER} HTTP/1.1");
    assert_eq!(
        seen,
        ["GET / HTTP/1.1", searched.as_str(), "GET / HTTP/1.1"],
        "{seen:?}"
    );
}

/// Runs headless Chromium with everything that reaches out switched off and
/// every host name but 127.0.0.1 unresolvable; returns its stdout.
async fn chromium(profile: &tempfile::TempDir, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::from(tool("chromium"));
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        // Small /dev/shm in containers (CI) crashes the renderer otherwise.
        "--disable-dev-shm-usage",
        "--no-default-browser-check",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("chromium finished within 120s")
        .expect("chromium ran");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP relay in front of the admin listener that records the request
/// line of every request passing through it.
struct Relay {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let up = async {
                        let mut buf = [0u8; 4096];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            log.lock().unwrap().extend_from_slice(&buf[..n]);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Relay { addr, seen }
    }

    /// The request lines seen (requests without bodies: each ends with an
    /// empty line).
    fn requests(&self) -> Vec<String> {
        let bytes = self.seen.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .split("\r\n\r\n")
            .filter_map(|head| head.lines().next())
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

// === helpers ===

/// No `src`, `href` or `action` attribute (always double-quoted, here and
/// in Chromium's DOM dump; a quote in a value is escaped) that names
/// another host or scheme.
fn assert_only_relative_links(html: &str) {
    for attr in [" src=\"", " href=\"", " action=\"", "url("] {
        for part in html.split(attr).skip(1) {
            let value = part;
            assert!(
                value.starts_with('/') && !value.starts_with("//"),
                "{attr}{} is not a relative path",
                &value[..value.len().min(40)]
            );
        }
    }
    // Nothing that loads: no script, frame, image, external style or font.
    // (The upstreams' URLs appear as text, which loads nothing.)
    for tag in [
        "<script",
        "<link",
        "<img",
        "<iframe",
        "<object",
        "<embed",
        "@import",
        "@font-face",
    ] {
        assert!(!html.contains(tag), "the page has `{tag}`");
    }
}

/// README's Troubleshooting table: (reason, fix) rows in order.
fn readme_fixes() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme.find("\n## Troubleshooting\n").unwrap();
    let end = start + 5 + readme[start + 5..].find("\n## ").unwrap();
    readme[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim().trim_matches('|').split(" | ").collect();
            (cells.len() == 4).then(|| {
                (
                    cells[0].trim().trim_matches('`').to_owned(),
                    cells[3].trim().to_owned(),
                )
            })
        })
        .filter(|(label, _)| label != "reason")
        .collect()
}

fn readme_fix(label: &str) -> String {
    readme_fixes()
        .into_iter()
        .find(|(l, _)| l == label)
        .map(|(_, f)| f)
        .unwrap_or_else(|| panic!("README has no row for {label}"))
}

/// Days left on a fixture certificate, from `openssl x509 -enddate`.
fn openssl_days_left(cert: &str) -> i64 {
    let out = tool("openssl")
        .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
        .arg(fixture_path("alipay_cert", cert))
        .output()
        .unwrap();
    assert!(out.status.success());
    // notAfter=2056-11-14 04:58:51Z
    let text = String::from_utf8(out.stdout).unwrap();
    let date = text.trim().trim_start_matches("notAfter=");
    let not_after = chrono::NaiveDateTime::parse_from_str(date, "%Y-%m-%d %H:%M:%SZ")
        .unwrap()
        .and_utc()
        .timestamp();
    (not_after - unix_now()).div_euclid(86_400)
}

/// SHA-256 in standard Base64, by openssl.
fn openssl_sha256_b64(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = tool("openssl")
        .args(["dgst", "-sha256", "-binary"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    base64_std(&out.stdout)
}

fn base64_std(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn query_escape(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
