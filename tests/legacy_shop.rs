//! End to end in front of a real PHP shop: `examples/legacy-shop` served by
//! `php -S` on a free loopback port, callgate (`callgate::server::start`) on
//! 127.0.0.1:0 in front of it, notifications from the committed fixtures
//! (signed by openssl or real SDK vectors) or signed here by the openssl CLI.
//! Every assertion about the shop reads what the shop itself wrote: its
//! SQLite file (through the `sqlite3` CLI), its notify log and the access
//! log its router writes.
//!
//! The shop's handlers are naive on purpose, like the DedeCMS and ECShop
//! plugins: each call marks the order paid again (`paid_count`, one
//! `payments` row per call) and prints an HTML page, never `success`. What
//! callgate adds is what these tests show.
//!
//! Needs `php` with `pdo_sqlite` and `sqlite3` (`.ci/run` installs
//! `php-cli php-sqlite3 sqlite3` when missing).

mod support;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;

use support::*;

/// What every handler prints on a completed payment, and what the routes
/// name as `success_body`.
const MARKER: &str = "<!-- notify-ok -->";
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
/// An address inside Alipay's notify range, as nginx reports it.
const ALIPAY_IP: &str = "110.75.1.2";
/// Somebody else.
const STRANGER_IP: &str = "203.0.113.7";

// === the PHP shop ===

fn shop_dir() -> PathBuf {
    root().join("examples/legacy-shop")
}

/// `php -S` serving `examples/legacy-shop/public` with its router, on a free
/// loopback port, with its data (SQLite file, logs) in a temporary directory.
/// Killed on drop.
struct Shop {
    child: Option<Child>,
    port: u16,
    data: tempfile::TempDir,
}

impl Shop {
    async fn start() -> Shop {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("callgate.secret"), SECRET).unwrap();
        let mut shop = Shop {
            child: None,
            port: 0,
            data,
        };
        for _ in 0..5 {
            shop.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if shop.spawn().await {
                // The first request creates shop.sqlite from schema.sql.
                let r = TestClient::new()
                    .send("GET", &shop.url("/"), &[], vec![])
                    .await;
                assert_eq!(r.status, 200, "{}", r.text());
                assert!(r.text().contains("CG20261122000001"), "{}", r.text());
                return shop;
            }
        }
        panic!("php -S did not start on a free port");
    }

    /// Starts php -S on `self.port`; false when it could not listen.
    async fn spawn(&mut self) -> bool {
        let dir = shop_dir();
        let mut php = tool("php");
        php.arg("-S")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("-t")
            .arg(dir.join("public"))
            .arg(dir.join("router.php"))
            .env("SHOP_DATA_DIR", self.data.path())
            .env(
                "SHOP_ALIPAY_PUBLIC_KEY",
                fixture_path("alipay", "alipay_public.pem"),
            )
            .env(
                "SHOP_ALIPAY_MD5_KEY",
                fixture_path("alipay_md5", "md5_key.txt"),
            )
            .env(
                "SHOP_CALLGATE_SECRET",
                self.data.path().join("callgate.secret"),
            );
        // Every line PHP reports also goes to server.log.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("server.log"))
            .unwrap();
        self.child = spawn_php_server(php, Some(log)).await;
        self.child.is_some()
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("http://127.0.0.1:{}{path_and_query}", self.port)
    }

    /// Kills PHP (SIGKILL): the shop is down.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// PHP again on the same port, same data.
    async fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn().await,
            "php -S did not come back on port {}",
            self.port
        );
    }

    /// SIGSTOP / SIGCONT: a shop that hangs mid-request, then goes on.
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("php running").id();
        let ok = tool("kill").args([sig, &pid.to_string()]).status().unwrap();
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// Runs one query on the shop's SQLite file with the sqlite3 CLI.
    fn sql(&self, query: &str) -> String {
        let out = tool("sqlite3")
            .args(["-readonly", "-batch", "-noheader", "-separator", "|"])
            .arg("-cmd")
            .arg(".timeout 5000")
            .arg(self.data.path().join("shop.sqlite"))
            .arg(query)
            .output()
            .expect("sqlite3 (apt-get install sqlite3)");
        assert!(
            out.status.success(),
            "sqlite3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
    }

    /// `status|paid_count` of an order.
    fn order(&self, out_trade_no: &str) -> String {
        self.sql(&format!(
            "SELECT status, paid_count FROM orders WHERE out_trade_no = '{out_trade_no}'"
        ))
    }

    /// `handler|amount|hex(subject)` of each payment recorded for an order.
    fn payments(&self, out_trade_no: &str) -> Vec<String> {
        let rows = self.sql(&format!(
            "SELECT handler, amount, hex(subject) FROM payments WHERE out_trade_no = '{out_trade_no}' ORDER BY id"
        ));
        rows.lines().map(str::to_owned).collect()
    }

    fn log(&self, name: &str) -> Vec<String> {
        match std::fs::read_to_string(self.data.path().join("logs").join(name)) {
            Ok(text) => text.lines().map(str::to_owned).collect(),
            Err(_) => vec![],
        }
    }

    /// The notify log's lines about one order: one per handler call.
    fn calls(&self, out_trade_no: &str) -> Vec<String> {
        let needle = format!("out_trade_no={out_trade_no} ");
        self.log("notify.log")
            .into_iter()
            .filter(|l| l.contains(&needle))
            .collect()
    }

    /// The access log's POST requests (`METHOD URI` of each).
    fn posts(&self) -> Vec<String> {
        self.log("access.log")
            .iter()
            .filter_map(|l| {
                let (_, rest) = l.split_once(" POST ")?;
                Some(format!("POST {rest}"))
            })
            .collect()
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A POST straight to PHP, bypassing callgate (what an attacker who finds
/// the shop's address does, or the platform before callgate).
async fn post_to_shop(shop: &Shop, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    TestClient::new()
        .send("POST", &shop.url(path), headers, body.to_vec())
        .await
}

// === callgate in front of it ===

/// A route to the shop, confirmed by its marker line (fixtures are signed
/// at 2026-11-22: the default `max_age` lets them through for years, so a
/// replay of one is judged by the replay store).
fn route(name: &str, path: &str, provider: &str, upstream: String, keys: String) -> RouteSpec {
    RouteSpec::new(provider, path, keys).with(|r| {
        r.name = name.into();
        r.allow.insert(0, "110.75.0.0/16".into());
        r.upstream = upstream;
        r.success_body = Some(MARKER.into());
    })
}

/// `/notify/alipay` (a new notify URL) → `respond.php?code=alipay`, where the
/// shop checks the RSA2 signature itself.
fn alipay_route(shop: &Shop) -> RouteSpec {
    route(
        "shop-alipay",
        "/notify/alipay",
        "alipay",
        shop.url("/respond.php?code=alipay"),
        format!(
            "public_key = {:?}\napp_id = \"2021000000000001\"\n",
            fixture_path("alipay", "alipay_public.pem")
        ),
    )
}

/// The kept notify URL `/respond.php?code=alipay_md5` of a GBK shop: routed
/// by path, forwarded to the shop's own URL.
fn alipay_md5_route(shop: &Shop) -> RouteSpec {
    route(
        "shop-alipay-md5",
        "/respond.php",
        "alipay_md5",
        shop.url("/respond.php?code=alipay_md5"),
        format!(
            "partner = \"2088101122334455\"\nkey_file = {:?}\ncharset = \"gbk\"\n",
            fixture_path("alipay_md5", "md5_key.txt")
        ),
    )
}

/// WeChat Pay v2, normalized, to the handler that trusts only callgate.
fn wechat_route(shop: &Shop) -> RouteSpec {
    let mut r = route(
        "shop-wechat",
        "/notify/wechat",
        "wechat_v2",
        shop.url("/callgate_notify.php"),
        format!(
            "mch_id = {WECHAT_MCH_ID:?}\nappid = {WECHAT_APPID:?}\napi_key_file = {:?}\n",
            fixture_path("wechat", "v2_api.key")
        ),
    );
    r.forward = "normalized".into();
    r
}

/// Alipay, normalized, to the same handler that trusts only callgate.
fn alipay_json_route(shop: &Shop) -> RouteSpec {
    let mut r = route(
        "shop-alipay-json",
        "/notify/alipay-json",
        "alipay",
        shop.url("/callgate_notify.php"),
        format!(
            "public_key = {:?}\napp_id = \"2021000000000001\"\n",
            fixture_path("alipay", "alipay_public.pem")
        ),
    );
    r.forward = "normalized".into();
    r
}

/// callgate terminating TLS itself (docs/deploy.md, step 2a).
fn with_tls(routes: Vec<RouteSpec>) -> GatewaySpec {
    let mut spec = GatewaySpec::new(routes);
    spec.tls = true;
    spec
}

/// callgate behind nginx on this machine (docs/deploy.md, step 2b): the
/// proxy's X-Forwarded-For is believed, and only Alipay's range is allowed.
fn behind_nginx(mut routes: Vec<RouteSpec>) -> GatewaySpec {
    for r in &mut routes {
        r.allow = vec!["110.75.0.0/16".into()];
    }
    let mut spec = GatewaySpec::new(routes);
    spec.trusted_proxies = vec!["127.0.0.1/32".into()];
    spec
}

async fn post_via(gw: &TestGateway, path: &str, xff: Option<&str>, body: &[u8]) -> Reply {
    let mut headers = vec![FORM];
    if let Some(x) = xff {
        headers.push(("x-forwarded-for", x));
    }
    gw.send("POST", path, &headers, body.to_vec()).await
}

fn ack(r: &Reply) -> (u16, String) {
    (r.status, r.text())
}

fn ok() -> (u16, String) {
    (200, "success".to_owned())
}

fn fail(status: u16) -> (u16, String) {
    (status, "fail".to_owned())
}

// === a paid notification ===

#[tokio::test]
async fn a_paid_notification_pays_the_order_once_and_alipay_gets_exactly_success() {
    let shop = Shop::start().await;
    let gw = TestGateway::start(with_tls(vec![alipay_route(&shop)])).await;
    assert_eq!(shop.order("CG20261122000001"), "unpaid|0");

    let r = gw.post_alipay("rsa2_trade_success.form").await;
    // The shop printed an HTML page; Alipay gets the 7 bytes it waits for.
    assert_eq!(ack(&r), ok());

    assert_eq!(shop.order("CG20261122000001"), "paid|1");
    assert_eq!(
        shop.payments("CG20261122000001"),
        // subject 测试 商品+1, decoded once by PHP from Alipay's bytes
        ["alipay|88.88|E6B58BE8AF9520E59586E593812B31"]
    );
    let calls = shop.calls("CG20261122000001");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].contains("alipay out_trade_no=CG20261122000001 sign=ok paid_count=1"),
        "the shop checked Alipay's signature itself: {calls:?}"
    );
    assert!(calls[0].ends_with("xff=127.0.0.1"), "{calls:?}");
    assert_eq!(shop.posts(), ["POST /respond.php?code=alipay"]);
    assert_eq!(
        gw.requests_of("shop-alipay", "alipay", "forwarded").await,
        1.0
    );
}

#[tokio::test]
async fn without_callgate_the_shop_prints_html_and_pays_every_copy() {
    // The same fixture straight to PHP, as Alipay would send it to a shop
    // without callgate: the page is not "success" (so Alipay retries), and
    // each copy ships the order again.
    let shop = Shop::start().await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    for _ in 0..2 {
        let r = post_to_shop(&shop, "/respond.php?code=alipay", &[FORM], &body).await;
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with("<!DOCTYPE html>"), "{}", r.text());
        assert!(r.text().contains(MARKER));
        assert_ne!(r.text(), "success");
    }
    assert_eq!(shop.order("CG20261122000001"), "paid|2");
    assert_eq!(shop.payments("CG20261122000001").len(), 2);

    // Its own RSA2 check is real: a tampered amount fails it.
    let r = post_to_shop(
        &shop,
        "/respond.php?code=alipay",
        &[FORM],
        &fixture("alipay", "rsa2_tampered_amount.form"),
    )
    .await;
    assert_eq!(r.status, 200, "legacy handlers answer 200 either way");
    assert!(!r.text().contains(MARKER), "{}", r.text());
    assert!(
        shop.calls("CG20261122000001")[2].contains("sign=bad"),
        "{:?}",
        shop.calls("CG20261122000001")
    );
    assert_eq!(shop.order("CG20261122000001"), "paid|2");
}

#[tokio::test]
async fn a_200_page_without_the_marker_is_not_taken_for_an_ack() {
    // A genuine notification for an order the shop does not know
    // (CG20261122000015 is not seeded): PHP answers 200 with its "no such
    // order" page. Without success_body that 200 would count as delivered
    // and Alipay would stop retrying.
    let shop = Shop::start().await;
    let gw = TestGateway::start(with_tls(vec![alipay_route(&shop)])).await;
    let body = fixture("alipay", "rsa2_unsorted_decoding.form");
    for _ in 0..2 {
        let r = gw.post_form("/notify/alipay", &body).await;
        assert_eq!(ack(&r), fail(502));
    }
    // Not remembered: each retry reached the shop.
    let calls = shop.calls("CG20261122000015");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].contains("sign=ok order=unknown"), "{calls:?}");
    assert_eq!(
        gw.requests_of("shop-alipay", "alipay", "upstream_error")
            .await,
        2.0
    );
    assert_eq!(
        gw.rejections("shop-alipay", "alipay", "upstream_unconfirmed")
            .await,
        2.0
    );
}

// === retries, replays, copies ===

#[tokio::test]
async fn retries_after_a_lost_ack_and_a_replay_a_day_later_reach_the_shop_once() {
    let shop = Shop::start().await;
    let spec = with_tls(vec![alipay_route(&shop)]);
    let gw = TestGateway::start(spec.clone()).await;
    let body = fixture("alipay", "rsa2_trade_success.form");

    assert_eq!(ack(&gw.post_form("/notify/alipay", &body).await), ok());
    // The ack is lost on the way back: Alipay never saw it and retries,
    // byte for byte, three times.
    for _ in 0..3 {
        assert_eq!(ack(&gw.post_form("/notify/alipay", &body).await), ok());
    }
    assert_eq!(
        gw.requests_of("shop-alipay", "alipay", "duplicate").await,
        3.0
    );

    // A day later, after a restart of callgate (the journal warms the
    // replay store), an attacker replays the captured bytes: the route's
    // max_age lets the notification through, the replay store does not.
    let TestGateway { dir, gateway, .. } = gw;
    gateway.shutdown().await;
    let gw = TestGateway::start_in(dir, spec).await;
    assert_eq!(ack(&gw.post_form("/notify/alipay", &body).await), ok());
    assert_eq!(
        gw.requests_of("shop-alipay", "alipay", "duplicate").await,
        1.0
    );
    assert_eq!(
        gw.requests_of("shop-alipay", "alipay", "forwarded").await,
        0.0
    );

    assert_eq!(shop.order("CG20261122000001"), "paid|1");
    assert_eq!(shop.payments("CG20261122000001").len(), 1);
    assert_eq!(shop.calls("CG20261122000001").len(), 1);
    assert_eq!(shop.posts(), ["POST /respond.php?code=alipay"]);
}

#[tokio::test]
async fn twenty_copies_at_once_reach_the_shop_once() {
    let shop = Shop::start().await;
    let gw = Arc::new(TestGateway::start(with_tls(vec![alipay_route(&shop)])).await);

    // A slow shop: PHP is stopped (SIGSTOP) while twenty copies arrive. One
    // is being forwarded and waits for PHP; the other nineteen are answered
    // 409 at once (Alipay retries them later).
    shop.signal("-STOP");
    let body = fixture("alipay", "rsa2_trade_success_2.form");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..20 {
        let (gw, body, tx) = (gw.clone(), body.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(ack(&gw.post_form("/notify/alipay", &body).await));
        });
    }
    for _ in 0..19 {
        assert_eq!(rx.recv().await.unwrap(), fail(409));
    }
    shop.signal("-CONT");
    assert_eq!(rx.recv().await.unwrap(), ok());
    assert_eq!(shop.order("CG20261122000013"), "paid|1");
    assert_eq!(shop.calls("CG20261122000013").len(), 1);
    assert_eq!(
        gw.requests_of("shop-alipay", "alipay", "in_flight").await,
        19.0
    );

    // And twenty copies racing a running shop: whichever arrive after the
    // delivery are duplicates, the rest 409; the shop sees one.
    let body = fixture("alipay", "rsa2_trade_success_3.form");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (gw, body) = (gw.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            ack(&gw.post_form("/notify/alipay", &body).await)
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r == ok() || r == fail(409), "{r:?}");
    }
    assert_eq!(shop.order("CG20261122000014"), "paid|1");
    assert_eq!(shop.calls("CG20261122000014").len(), 1);

    assert_eq!(
        gw.requests_of("shop-alipay", "alipay", "forwarded").await,
        2.0
    );
    assert_eq!(shop.posts().len(), 2, "{:?}", shop.posts());
}

// === what never reaches the shop ===

#[tokio::test]
async fn forged_tampered_and_foreign_notifications_never_reach_the_shop() {
    let shop = Shop::start().await;
    let gw = TestGateway::start(behind_nginx(vec![alipay_route(&shop)])).await;
    let genuine = fixture("alipay", "rsa2_trade_success.form");

    // Signed with another key, from Alipay's range.
    let r = post_via(
        &gw,
        "/notify/alipay",
        Some(ALIPAY_IP),
        &fixture("alipay", "rsa2_wrong_key.form"),
    )
    .await;
    assert_eq!(ack(&r), fail(401));
    // The genuine notification with total_amount 88.88 → 0.01.
    let r = post_via(
        &gw,
        "/notify/alipay",
        Some(ALIPAY_IP),
        &fixture("alipay", "rsa2_tampered_amount.form"),
    )
    .await;
    assert_eq!(ack(&r), fail(401));
    // The genuine bytes, from an address that is not Alipay's: as nginx
    // reports it, with no header at all (the proxy itself), and with an
    // Alipay address the sender wrote in front of its own (nginx appends the
    // real one; callgate takes the right-most address it does not trust).
    for xff in [Some(STRANGER_IP), None, Some("110.75.1.2, 203.0.113.7")] {
        let r = post_via(&gw, "/notify/alipay", xff, &genuine).await;
        assert_eq!(ack(&r), fail(403), "X-Forwarded-For {xff:?}");
    }

    assert_eq!(shop.order("CG20261122000001"), "unpaid|0");
    assert_eq!(shop.order("CG20261122000007"), "unpaid|0");
    assert!(shop.log("notify.log").is_empty());
    assert!(shop.posts().is_empty(), "{:?}", shop.posts());
    assert_eq!(
        gw.requests_of("shop-alipay", "alipay", "bad_signature")
            .await,
        2.0
    );
    assert_eq!(
        gw.requests_of("shop-alipay", "alipay", "ip_denied").await,
        3.0
    );

    // The same bytes from Alipay's address do get through (so the refusals
    // above were the checks, not a dead shop), and the shop sees that address.
    let r = post_via(&gw, "/notify/alipay", Some(ALIPAY_IP), &genuine).await;
    assert_eq!(ack(&r), ok());
    assert_eq!(shop.order("CG20261122000001"), "paid|1");
    let calls = shop.calls("CG20261122000001");
    assert_eq!(calls.len(), 1);
    assert!(calls[0].ends_with("xff=110.75.1.2"), "{calls:?}");
}

// === the shop down ===

#[tokio::test]
async fn the_shop_down_then_back_loses_nothing() {
    let mut shop = Shop::start().await;
    let gw = TestGateway::start(with_tls(vec![alipay_route(&shop)])).await;
    let body = fixture("alipay", "rsa2_trade_success.form");

    shop.stop();
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!(ack(&r), fail(502));
    assert_eq!(shop.order("CG20261122000001"), "unpaid|0");

    // PHP is back; Alipay's next retry completes the order.
    shop.restart().await;
    assert_eq!(ack(&gw.post_form("/notify/alipay", &body).await), ok());
    assert_eq!(shop.order("CG20261122000001"), "paid|1");
    // And the retry after that is a duplicate.
    assert_eq!(ack(&gw.post_form("/notify/alipay", &body).await), ok());
    assert_eq!(shop.order("CG20261122000001"), "paid|1");
    assert_eq!(shop.calls("CG20261122000001").len(), 1);
    assert_eq!(
        gw.requests_of("shop-alipay", "alipay", "upstream_error")
            .await,
        1.0
    );
    assert_eq!(
        gw.requests_of("shop-alipay", "alipay", "forwarded").await,
        1.0
    );
    assert_eq!(
        gw.rejections("shop-alipay", "alipay", "upstream_unreachable")
            .await,
        1.0
    );
}

// === GBK, byte for byte ===

/// 测试商品 中文GBK and 支付宝即时到账 in GBK (the bytes of
/// tests/fixtures/alipay_md5/md5_gbk.form).
const GBK_SUBJECT: &[u8] = b"\xB2\xE2\xCA\xD4\xC9\xCC\xC6\xB7 \xD6\xD0\xCE\xC4GBK";
const GBK_BODY: &[u8] = b"\xD6\xA7\xB8\xB6\xB1\xA6\xBC\xB4\xCA\xB1\xB5\xBD\xD5\xCB";

/// A legacy create_direct_pay_by_user notification for CG20261122100004
/// (6.00), fields in Alipay's order, `subject` and `body` as given, signed
/// with `sign` or, when `None`, by `openssl dgst -md5` over the sorted
/// string plus the key of tests/fixtures/alipay_md5. Returns (body, sign).
///
/// Not the committed md5_gbk.form: that one carries an empty
/// `extra_common_param=`, which Alipay's demo leaves out of the signed
/// string and the DedeCMS/ECShop string keeps, so the shop's own check
/// refuses it as sent (callgate forwards it without that field, see the
/// test). This one has no empty value, so both strings are the same.
fn legacy_gbk(subject: &[u8], body: &[u8], sign: Option<&str>) -> (Vec<u8>, String) {
    let fields: Vec<(&str, &[u8])> = vec![
        ("discount", b"0.00"),
        ("payment_type", b"1"),
        ("subject", subject),
        ("trade_no", b"2026112221001004880200000104"),
        ("buyer_email", b"buyer@example.com"),
        ("gmt_create", b"2026-11-22 09:59:48"),
        ("notify_type", b"trade_status_sync"),
        ("quantity", b"1"),
        ("out_trade_no", b"CG20261122100004"),
        ("seller_id", b"2088101122334455"),
        ("notify_time", b"2026-11-22 10:00:00"),
        ("body", body),
        ("trade_status", b"TRADE_FINISHED"),
        ("is_total_fee_adjust", b"N"),
        ("total_fee", b"6.00"),
        ("gmt_payment", b"2026-11-22 09:59:57"),
        ("seller_email", b"shop@example.com"),
        ("price", b"6.00"),
        ("buyer_id", b"2088102177846880"),
        ("notify_id", b"e2e0legacy0shop0gbk0000000000000104"),
        ("use_coupon", b"N"),
    ];
    let sign = match sign {
        Some(s) => s.to_owned(),
        None => {
            let mut sorted = fields.clone();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            let mut signed = Vec::new();
            for (i, (k, v)) in sorted.iter().enumerate() {
                if i > 0 {
                    signed.push(b'&');
                }
                signed.extend_from_slice(k.as_bytes());
                signed.push(b'=');
                signed.extend_from_slice(v);
            }
            let key = std::fs::read_to_string(fixture_path("alipay_md5", "md5_key.txt")).unwrap();
            signed.extend_from_slice(key.trim_end().as_bytes());
            openssl_md5_hex(&signed)
        }
    };
    let mut form = Vec::new();
    for (k, v) in fields
        .iter()
        .copied()
        .chain([("sign_type", &b"MD5"[..]), ("sign", sign.as_bytes())])
    {
        if !form.is_empty() {
            form.push(b'&');
        }
        form.extend_from_slice(k.as_bytes());
        form.push(b'=');
        form.extend_from_slice(&form_encode(v));
    }
    (form, sign)
}

/// application/x-www-form-urlencoded as Alipay writes it: `A-Z a-z 0-9 - _
/// . *` kept, a space as `+`, every other byte `%XX`.
fn form_encode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in value {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => out.push(b),
            b' ' => out.push(b'+'),
            _ => out.extend_from_slice(format!("%{b:02X}").as_bytes()),
        }
    }
    out
}

fn openssl_md5_hex(data: &[u8]) -> String {
    openssl_dgst_hex(&["-md5"], data)
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[tokio::test]
async fn a_gbk_legacy_notification_reaches_the_shop_byte_for_byte_and_passes_its_md5_check() {
    let shop = Shop::start().await;
    let gw = TestGateway::start(with_tls(vec![alipay_md5_route(&shop)])).await;
    let (gbk, sign) = legacy_gbk(GBK_SUBJECT, GBK_BODY, None);

    // Alipay posts to the shop's old notify URL; callgate serves that path,
    // drops the incoming query and forwards to the shop's own URL.
    let r = gw
        .send(
            "POST",
            "/respond.php?code=alipay_md5&via=platform",
            &[FORM],
            gbk.clone(),
        )
        .await;
    assert_eq!(ack(&r), ok());

    let calls = shop.calls("CG20261122100004");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].contains("alipay_md5 out_trade_no=CG20261122100004 sign=ok paid_count=1"),
        "the shop's own MD5 check passed: {calls:?}"
    );
    assert_eq!(shop.order("CG20261122100004"), "paid|1");
    // What PHP stored is the GBK bytes Alipay sent, untouched.
    assert_eq!(
        shop.payments("CG20261122100004"),
        [format!("alipay_md5|6.00|{}", hex_upper(GBK_SUBJECT))]
    );
    assert_eq!(shop.posts(), ["POST /respond.php?code=alipay_md5"]);

    // Control: the same notification transcoded to UTF-8 (what a proxy that
    // "fixes" the charset would forward) fails the shop's own MD5 check, and
    // callgate refuses it before the shop.
    let (utf8, _) = legacy_gbk(
        "测试商品 中文GBK".as_bytes(),
        "支付宝即时到账".as_bytes(),
        Some(&sign),
    );
    let r = post_to_shop(&shop, "/respond.php?code=alipay_md5", &[FORM], &utf8).await;
    assert!(!r.text().contains(MARKER), "{}", r.text());
    assert!(shop.calls("CG20261122100004")[1].contains("sign=bad"));
    let r = gw.send("POST", "/respond.php", &[FORM], utf8).await;
    assert_eq!(ack(&r), fail(401));
    assert_eq!(shop.order("CG20261122100004"), "paid|1");
    assert_eq!(shop.calls("CG20261122100004").len(), 2);

    // The committed md5_gbk.form (another notify_id for the same order)
    // carries an empty `extra_common_param=`: Alipay's rule leaves it out of
    // the signed string, the DedeCMS/ECShop string keeps it, so the shop's
    // own check refuses the body as sent. The field is outside the
    // signature, so callgate forwards the notification without it, and the
    // shop's check then agrees with Alipay's.
    let committed = fixture("alipay_md5", "md5_gbk.form");
    let r = post_to_shop(&shop, "/respond.php?code=alipay_md5", &[FORM], &committed).await;
    assert!(!r.text().contains(MARKER), "{}", r.text());
    let calls = shop.calls("CG20261122100004");
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls[2].contains("sign=bad"), "{calls:?}");
    let r = gw.post_form("/respond.php", &committed).await;
    assert_eq!(ack(&r), ok());
    let calls = shop.calls("CG20261122100004");
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(calls[3].contains("sign=ok"), "{calls:?}");
    assert_eq!(
        gw.requests_of("shop-alipay-md5", "alipay_md5", "forwarded")
            .await,
        2.0
    );
}

// === the handler that trusts callgate ===

#[tokio::test]
async fn the_hmac_handler_takes_callgates_json_and_refuses_everything_sent_around_it() {
    let shop = Shop::start().await;
    let gw = TestGateway::start(with_tls(vec![wechat_route(&shop)])).await;

    // A WeChat Pay v2 notification, for a shop with no WeChat code at all.
    let r = gw.post_xml(&fixture("wechat", "v2_md5_pay.xml")).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (
            200,
            "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
        )
    );
    assert_eq!(shop.order("CG20261122000001"), "paid|1");
    // amount_fen 8888 → 88.88; the attach/subject-less WeChat event has no subject.
    assert_eq!(shop.payments("CG20261122000001"), ["callgate|88.88|"]);
    let calls = shop.calls("CG20261122000001");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].contains(
            "callgate provider=wechat_v2 event_id=4200002026112200000000000001:SUCCESS out_trade_no=CG20261122000001 signature=ok paid_count=1"
        ),
        "{calls:?}"
    );
    // A WeChat retry is a duplicate.
    let r = gw.post_xml(&fixture("wechat", "v2_md5_pay.xml")).await;
    assert_eq!(r.status, 200);
    assert_eq!(shop.order("CG20261122000001"), "paid|1");

    // Straight to PHP, around callgate: a forged "paid" event for order 14.
    let forged = br#"{"provider":"wechat_v2","event_id":"forged-1","out_trade_no":"CG20261122000014","provider_trade_no":"x","amount_fen":12000,"currency":"CNY","status":"paid","occurred_at":"2026-11-22T10:00:00+08:00","fields":{}}"#;
    let now = unix_now();
    let json = ("content-type", "application/json");
    let sig = |secret: &str, t: i64| {
        let signed = [t.to_string().as_bytes(), b".", &forged[..]].concat();
        format!("t={t},v1={}", openssl_hmac_hex(secret, &signed))
    };
    let attempts = [
        None,
        Some(format!("t={now},v1={}", "0".repeat(64))),
        Some(sig("not-the-shared-secret", now)),
        // the right secret, but ten minutes old: a captured request replayed
        Some(sig(SECRET.trim_end(), now - 600)),
    ];
    for header in &attempts {
        let mut headers = vec![json];
        if let Some(h) = header {
            headers.push(("x-callgate-signature", h.as_str()));
        }
        let r = post_to_shop(&shop, "/callgate_notify.php", &headers, forged).await;
        assert_eq!(r.status, 403, "{header:?}: {}", r.text());
        assert!(!r.text().contains(MARKER));
    }
    assert_eq!(shop.order("CG20261122000014"), "unpaid|0");
    let refused = shop
        .log("notify.log")
        .iter()
        .filter(|l| l.contains("callgate signature=bad"))
        .count();
    assert_eq!(refused, attempts.len());

    // Control: whoever holds the shared secret is believed, which is why
    // it is a secret (and why the shop should answer only callgate).
    let good = sig(SECRET.trim_end(), now);
    let r = post_to_shop(
        &shop,
        "/callgate_notify.php",
        &[json, ("x-callgate-signature", good.as_str())],
        forged,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains(MARKER));
    assert_eq!(shop.order("CG20261122000014"), "paid|1");
}

/// A genuine Alipay trade notification for `out_trade_no`, signed RSA2 by
/// the openssl CLI.
fn alipay_trade(notify_id: &str, out_trade_no: &str, status: &str, total: &str) -> Vec<u8> {
    alipay_openssl(&[
        ("app_id", "2021000000000001"),
        ("charset", "utf-8"),
        ("gmt_create", "2026-11-22 09:59:00"),
        ("gmt_payment", "2026-11-22 09:59:30"),
        ("notify_id", notify_id),
        ("notify_time", "2026-11-22 10:00:00"),
        ("notify_type", "trade_status_sync"),
        ("out_trade_no", out_trade_no),
        ("subject", "order"),
        ("total_amount", total),
        ("trade_no", "2026112222001400000000000061"),
        ("trade_status", status),
        ("version", "1.0"),
    ])
}

#[tokio::test]
async fn the_callgate_handler_ships_an_order_once_though_alipay_reports_it_paid_twice() {
    // A trade that allows refunds is `paid` twice under two notify_ids:
    // TRADE_SUCCESS when the buyer pays, TRADE_FINISHED when refunds are
    // no longer possible. Both are genuine and both reach the shop; the
    // handler written for callgate has to ship once, by order, not by
    // event. And it credits only the order's own amount and currency.
    let shop = Shop::start().await;
    let gw = TestGateway::start(GatewaySpec::new(vec![alipay_json_route(&shop)])).await;
    let path = "/notify/alipay-json";
    let success = alipay_trade(
        "2026112200222000000000000000000061",
        "CG20261122000001",
        "TRADE_SUCCESS",
        "88.88",
    );
    assert_eq!(ack(&post_via(&gw, path, None, &success).await), ok());
    assert_eq!(shop.order("CG20261122000001"), "paid|1");
    let finished = alipay_trade(
        "2026112200222000000000000000000062",
        "CG20261122000001",
        "TRADE_FINISHED",
        "88.88",
    );
    assert_eq!(
        ack(&post_via(&gw, path, None, &finished).await),
        ok(),
        "the shop has the order paid: callgate acknowledges"
    );
    assert_eq!(shop.order("CG20261122000001"), "paid|1", "shipped once");
    assert_eq!(shop.payments("CG20261122000001").len(), 1);
    assert_eq!(shop.calls("CG20261122000001").len(), 2, "both reached it");

    // Order 13 is 19.90: a paid event for 0.01 of it is not its payment.
    let short = alipay_trade(
        "2026112200222000000000000000000063",
        "CG20261122000013",
        "TRADE_SUCCESS",
        "0.01",
    );
    assert_eq!(ack(&post_via(&gw, path, None, &short).await), fail(502));
    assert_eq!(shop.order("CG20261122000013"), "unpaid|0");
    assert!(shop.payments("CG20261122000013").is_empty());
}

// === rolling out ===

#[tokio::test]
async fn rolling_out_with_allow_mode_log_then_enforcing_it() {
    let shop = Shop::start().await;
    let mut spec = behind_nginx(vec![alipay_route(&shop)]);
    spec.routes[0].extra = "allow_mode = \"log\"\n".into();
    let gw = TestGateway::start(spec.clone()).await;

    // Week one: the allow list only reports. A genuine notification from an
    // address outside it (Alipay added a range) is delivered and counted.
    let r = post_via(
        &gw,
        "/notify/alipay",
        Some(STRANGER_IP),
        &fixture("alipay", "rsa2_trade_success.form"),
    )
    .await;
    assert_eq!(ack(&r), ok());
    assert_eq!(shop.order("CG20261122000001"), "paid|1");
    let dry_run = [
        ("route", "shop-alipay"),
        ("provider", "alipay"),
        ("reason", "ip_denied_dry_run"),
    ];
    assert_eq!(
        gw.metric("callgate_rejections_total", &dry_run).await,
        Some(1.0)
    );
    // Signatures are enforced all along.
    let r = post_via(
        &gw,
        "/notify/alipay",
        Some(STRANGER_IP),
        &fixture("alipay", "rsa2_wrong_key.form"),
    )
    .await;
    assert_eq!(ack(&r), fail(401));
    assert_eq!(shop.order("CG20261122000007"), "unpaid|0");

    // The dry-run counter stayed at what the operator expected: enforce, reload.
    spec.routes[0].extra = String::new();
    spec.write(gw.dir.path());
    assert_eq!(gw.gateway.reload().unwrap(), 1);
    let r = post_via(
        &gw,
        "/notify/alipay",
        Some(STRANGER_IP),
        &fixture("alipay", "rsa2_trade_success_2.form"),
    )
    .await;
    assert_eq!(ack(&r), fail(403));
    assert_eq!(shop.order("CG20261122000013"), "unpaid|0");
    let r = post_via(
        &gw,
        "/notify/alipay",
        Some(ALIPAY_IP),
        &fixture("alipay", "rsa2_trade_success_2.form"),
    )
    .await;
    assert_eq!(ack(&r), ok());
    assert_eq!(shop.order("CG20261122000013"), "paid|1");
    assert_eq!(shop.posts().len(), 2, "{:?}", shop.posts());
}

// === the shipped example ===

#[test]
fn the_shipped_example_configuration_loads_and_its_php_parses() {
    let loaded = callgate::config::load(&shop_dir().join("callgate.toml"))
        .unwrap_or_else(|e| panic!("examples/legacy-shop/callgate.toml:\n{e}"));
    assert_eq!(loaded.snapshot.routes.len(), 3);
    for path in ["/notify/alipay", "/respond.php", "/notify/wechat"] {
        assert!(loaded.snapshot.routes.get(path).is_some(), "{path}");
    }
    let mut php = Vec::new();
    collect_php(&shop_dir(), &mut php);
    assert!(php.len() >= 6, "{php:?}");
    for file in php {
        let out = tool("php").arg("-l").arg(&file).output().unwrap();
        assert!(out.status.success(), "{}: {:?}", file.display(), out);
    }
}

fn collect_php(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && !path.ends_with("data") {
            collect_php(&path, out);
        } else if path.extension().is_some_and(|e| e == "php") {
            out.push(path);
        }
    }
}
