//! Operating callgate while notifications flow: several merchants
//! behind one route, named IP sets, and reloads from the file watcher that
//! swap rules, keys and the TLS certificate at once without losing or
//! misanswering a notification.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use support::*;

const APP_A: &str = "2021000000000001";
const APP_B: &str = "2021009999999999";

fn alipay_merchant(app_id: &str, key: &Path, upstream: Option<&Upstream>) -> String {
    let mut s = String::from("[[route.merchant]]\n");
    if let Some(up) = upstream {
        s.push_str(&format!("upstream = {:?}\n", up.url));
    }
    s.push_str(&format!(
        "[route.merchant.keys]\napp_id = {app_id:?}\npublic_key = {key:?}\n"
    ));
    s
}

/// A two-merchant alipay route, written by hand (RouteSpec holds one keys table).
fn two_merchants(
    dir: &Path,
    default_up: &Upstream,
    b_up: &Upstream,
    b_key: &Path,
) -> std::path::PathBuf {
    let spec = GatewaySpec::new(vec![]);
    let file = spec.write(dir);
    let rules = format!(
        r#"[[route]]
name = "marketplace"
path = "/notify/alipay"
provider = "alipay"
allow = ["127.0.0.1/32"]
upstream = {default:?}
upstream_secret_file = "../upstream.secret"
max_age = "87600h"
success_body = "success"
merchant_label = true

{a}
{b}"#,
        default = default_up.url,
        a = alipay_merchant(APP_A, &fixture_path("alipay", "alipay_public.pem"), None),
        b = alipay_merchant(APP_B, b_key, Some(b_up)),
    );
    std::fs::write(dir.join("rules/routes.toml"), rules).unwrap();
    file
}

/// A gateway with the two-merchant route ([`two_merchants`]), merchant B
/// verified with `b_key`: (shop A, shop B, the config dir, the gateway).
async fn start_two_merchants(
    b_key: &Path,
) -> (
    Upstream,
    Upstream,
    tempfile::TempDir,
    callgate::server::Gateway,
) {
    let shop_a = Upstream::start(Behaviour::Reply(200, "success")).await;
    let shop_b = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = two_merchants(dir.path(), &shop_a, &shop_b, b_key);
    let gw = start_file(&file).await;
    (shop_a, shop_b, dir, gw)
}

async fn start_file(file: &Path) -> callgate::server::Gateway {
    let loaded = callgate::config::load(file).unwrap_or_else(|e| panic!("{e}"));
    callgate::server::start(loaded).await.unwrap()
}

async fn post(gw: &callgate::server::Gateway, path: &str, body: Vec<u8>) -> Reply {
    TestClient::new()
        .send(
            "POST",
            &format!("http://127.0.0.1:{}{path}", gw.addr.port()),
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
        .await
}

/// POSTs the Alipay fixture `name` to `path`.
async fn post_alipay(gw: &callgate::server::Gateway, path: &str, name: &str) -> Reply {
    post(gw, path, fixture("alipay", name)).await
}

async fn metrics(gw: &callgate::server::Gateway) -> String {
    let url = format!("http://127.0.0.1:{}/metrics", gw.admin_addr.unwrap().port());
    TestClient::new()
        .send("GET", &url, &[], vec![])
        .await
        .text()
}

#[tokio::test]
async fn several_merchants_behind_one_route_pick_their_own_keys_and_upstream() {
    let (shop_a, shop_b, _dir, gw) =
        start_two_merchants(&fixture_path("alipay", "alipay_public.pem")).await;

    let r = post_alipay(&gw, "/notify/alipay", "rsa2_trade_success.form").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let r = post_alipay(&gw, "/notify/alipay", "rsa2_other_app.form").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(
        (shop_a.count(), shop_b.count()),
        (1, 1),
        "each merchant's own upstream"
    );

    // A merchant the route does not list: 401, counted as unknown_merchant.
    let r = post_alipay(&gw, "/notify/alipay", "nodejs_sdk_real_notify.form").await;
    assert_eq!((r.status, r.text().as_str()), (401, "fail"));
    let m = metrics(&gw).await;
    let reason = find_metric(
        &m,
        "callgate_rejections_total",
        &[
            ("route", "marketplace"),
            ("provider", "alipay"),
            ("reason", "unknown_merchant"),
        ],
    );
    assert_eq!(reason, Some(1.0));
    for app in [APP_A, APP_B] {
        let n = find_metric(
            &m,
            "callgate_merchant_requests_total",
            &[
                ("route", "marketplace"),
                ("merchant", app),
                ("outcome", "forwarded"),
            ],
        );
        assert_eq!(n, Some(1.0), "{app}");
    }
}

#[tokio::test]
async fn a_merchant_is_verified_with_its_own_keys_only() {
    // Merchant B's key is another one: its notification (signed with the
    // fixture key) must fail, though merchant A's key would verify it.
    let (shop_a, shop_b, _dir, gw) =
        start_two_merchants(&fixture_path("alipay", "other_public.pem")).await;
    let r = post_alipay(&gw, "/notify/alipay", "rsa2_other_app.form").await;
    assert_eq!(r.status, 401);
    assert_eq!(shop_a.count() + shop_b.count(), 0);
}

#[test]
fn merchant_tables_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewaySpec::new(vec![]);
    let file = spec.write(dir.path());
    let key = fixture_path("alipay", "alipay_public.pem");
    let head = "[[route]]\nname = \"m\"\npath = \"/m\"\nprovider = \"alipay\"\nallow = []\nupstream = \"http://127.0.0.1:1/x\"\nupstream_secret_file = \"../upstream.secret\"\n";
    let cases = [
        (
            format!(
                "{head}[route.keys]\napp_id = \"1\"\npublic_key = {key:?}\n\n{}",
                alipay_merchant("2", &key, None)
            ),
            "give either [route.keys] or [[route.merchant]] tables, not both",
        ),
        (
            format!(
                "{head}\n{}\n{}",
                alipay_merchant("7", &key, None),
                alipay_merchant("7", &key, None)
            ),
            "merchant `7` is listed twice in this route",
        ),
        (
            format!(
                "{head}\n[[route.merchant]]\ncolour = \"red\"\n[route.merchant.keys]\napp_id = \"1\"\npublic_key = {key:?}\n"
            ),
            "unknown field `colour`",
        ),
        (
            head.replace("upstream = \"http://127.0.0.1:1/x\"\n", "")
                + &format!("\n{}", alipay_merchant("1", &key, None)),
            "missing field `upstream`",
        ),
    ];
    for (rules, want) in cases {
        std::fs::write(dir.path().join("rules/routes.toml"), &rules).unwrap();
        let err = callgate::config::load(&file).unwrap_err().to_string();
        assert!(err.contains(want), "expected `{want}` in:\n{err}");
        assert!(err.contains("routes.toml:"), "{err}");
    }
}

// === IP sets ===

#[tokio::test]
async fn named_ip_sets_are_usable_in_allow() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let route = RouteSpec::alipay(&up).with(|r| r.allow = vec!["@local".into()]);
    let spec = GatewaySpec::new(vec![route]);
    let file = spec.write(dir.path());
    std::fs::create_dir_all(dir.path().join("rules/ipsets")).unwrap();
    std::fs::write(
        dir.path().join("rules/ipsets/local.toml"),
        "# this machine\ncidrs = [\"127.0.0.0/8\", \"::1\"]\n",
    )
    .unwrap();
    let gw = start_file(&file).await;
    let r = post_alipay(&gw, "/notify/alipay", "rsa2_trade_success.form").await;
    assert_eq!(r.status, 200);

    // A set that does not admit us.
    std::fs::write(
        dir.path().join("rules/ipsets/local.toml"),
        "cidrs = [\"10.0.0.0/8\"]\n",
    )
    .unwrap();
    let mut reloads = gw.reloads();
    gw.reload().unwrap();
    reloads.changed().await.unwrap();
    let r = post_alipay(&gw, "/notify/alipay", "rsa2_trade_success_2.form").await;
    assert_eq!(r.status, 403);
}

#[test]
fn ip_set_problems_name_their_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let up_url = "http://127.0.0.1:1/x";
    let mut route = RouteSpec::new(
        "alipay",
        "/r",
        format!(
            "app_id = \"1\"\npublic_key = {:?}\n",
            fixture_path("alipay", "alipay_public.pem")
        ),
    )
    .with(|r| {
        r.name = "r".into();
        r.allow = vec!["@nope".into()];
        r.upstream = up_url.into();
        r.max_age = None;
    });
    let file = GatewaySpec::new(vec![route.clone()]).write(dir.path());
    let err = callgate::config::load(&file).unwrap_err().to_string();
    assert!(
        err.contains("routes.toml:5: unknown IP set `@nope`: there is no ipsets/nope.toml"),
        "{err}"
    );

    std::fs::create_dir_all(dir.path().join("rules/ipsets")).unwrap();
    std::fs::write(
        dir.path().join("rules/ipsets/nope.toml"),
        "# x\ncidrs = [\n  \"1.2.3.0/24\",\n  \"999.1.1.1\",\n]\n",
    )
    .unwrap();
    route.allow = vec!["@nope".into()];
    let file = GatewaySpec::new(vec![route]).write(dir.path());
    let err = callgate::config::load(&file).unwrap_err().to_string();
    assert!(
        err.contains("ipsets/nope.toml:4: cidrs entry `999.1.1.1`"),
        "{err}"
    );
}

#[test]
fn the_shipped_wechat_set_loads() {
    let loaded = callgate::config::load(&root().join("callgate.toml")).unwrap();
    assert!(
        loaded
            .files
            .iter()
            .any(|f| f.ends_with("rules/ipsets/wechatpay.toml"))
    );
}

// === reload by file watch ===

/// Waits (bounded) for the next reload attempt.
async fn next_reload(rx: &mut tokio::sync::watch::Receiver<u64>) {
    tokio::time::timeout(Duration::from_secs(30), rx.changed())
        .await
        .expect("no reload within 30s")
        .unwrap();
}

#[tokio::test]
async fn a_new_rule_file_starts_answering_and_a_broken_one_keeps_the_old_rules() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = GatewaySpec::new(vec![RouteSpec::alipay(&up)]).write(dir.path());
    let gw = start_file(&file).await;
    let mut reloads = gw.reloads();
    let r = post_alipay(&gw, "/notify/alipay", "rsa2_trade_success_3.form").await;
    assert_eq!(r.status, 200);

    // A new rule file: picked up without a signal.
    let second = RouteSpec::alipay(&up).with(|r| {
        r.name = "second".into();
        r.path = "/notify/second".into();
    });
    std::fs::write(dir.path().join("rules/second.toml"), route_toml(&second)).unwrap();
    next_reload(&mut reloads).await;
    let r = post_alipay(&gw, "/notify/second", "rsa2_trade_success.form").await;
    assert_eq!(r.status, 200);
    // The reloaded (recompiled) first route counts on its series from
    // before the reload; the new route has its own.
    let r = post_alipay(&gw, "/notify/alipay", "rsa2_trade_success_3.form").await;
    assert_eq!(r.status, 200, "a duplicate after the reload");
    let r = post_alipay(&gw, "/notify/alipay", "rsa2_trade_success_2.form").await;
    assert_eq!(r.status, 200);
    let m = metrics(&gw).await;
    for (route, outcome, n) in [
        ("shop-alipay", "forwarded", 2.0),
        ("shop-alipay", "duplicate", 1.0),
        ("second", "forwarded", 1.0),
        ("second", "duplicate", 0.0),
    ] {
        let labels = [
            ("route", route),
            ("provider", "alipay"),
            ("outcome", outcome),
        ];
        assert_eq!(
            find_metric(&m, "callgate_requests_total", &labels),
            Some(n),
            "{route} {outcome}\n{m}"
        );
    }
    for (family, route, n) in [
        (
            "callgate_request_duration_seconds_count",
            "shop-alipay",
            3.0,
        ),
        (
            "callgate_upstream_duration_seconds_count",
            "shop-alipay",
            2.0,
        ),
        ("callgate_request_duration_seconds_count", "second", 1.0),
        ("callgate_upstream_duration_seconds_count", "second", 1.0),
    ] {
        assert_eq!(
            find_metric(&m, family, &[("route", route)]),
            Some(n),
            "{family} {route}"
        );
    }

    // A broken edit: the running rules stay, the failure is counted.
    std::fs::write(
        dir.path().join("rules/second.toml"),
        "[[route]]\nname = 1\n",
    )
    .unwrap();
    next_reload(&mut reloads).await;
    let m = metrics(&gw).await;
    assert!(find_metric(&m, "callgate_rules_reload_total", &[("result", "error")]).unwrap() >= 1.0);
    assert_eq!(
        find_metric(&m, "callgate_rules_loaded_routes", &[]),
        Some(2.0)
    );
    let r = post_alipay(&gw, "/notify/second", "rsa2_trade_success_2.form").await;
    assert_eq!(r.status, 200, "old rules still serve");
}

#[tokio::test]
async fn a_rotated_key_is_accepted_after_the_reload_and_the_old_one_no_longer_is() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("alipay_public.pem");
    std::fs::copy(fixture_path("alipay", "alipay_public.pem"), &key).unwrap();
    let route = RouteSpec::alipay(&up).with(|r| {
        r.keys = format!("app_id = \"{APP_A}\"\npublic_key = {key:?}\n");
    });
    let file = GatewaySpec::new(vec![route]).write(dir.path());
    let gw = start_file(&file).await;
    let mut reloads = gw.reloads();
    assert_eq!(
        post_alipay(&gw, "/notify/alipay", "rsa2_trade_success.form")
            .await
            .status,
        200
    );
    assert_eq!(
        post_alipay(&gw, "/notify/alipay", "rsa2_wrong_key.form")
            .await
            .status,
        401
    );

    // Alipay rotates its key: the operator replaces the file (write + rename).
    let tmp = dir.path().join("alipay_public.pem.new");
    std::fs::copy(fixture_path("alipay", "other_public.pem"), &tmp).unwrap();
    std::fs::rename(&tmp, &key).unwrap();
    next_reload(&mut reloads).await;

    assert_eq!(
        post_alipay(&gw, "/notify/alipay", "rsa2_wrong_key.form")
            .await
            .status,
        200
    );
    assert_eq!(
        post_alipay(&gw, "/notify/alipay", "rsa2_trade_success_2.form")
            .await
            .status,
        401
    );
}

/// Completes a TLS handshake with `addr` trusting only `ca`.
async fn handshake(addr: std::net::SocketAddr, ca: &Path) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A TLS gateway serving a copy of the demo pair from its own directory
/// (`tls.crt`, `tls.key`), so that a test can replace the files; the
/// directory, the two paths and the gateway.
async fn tls_gateway_on_its_own_pair(
    up: &Upstream,
) -> (
    tempfile::TempDir,
    PathBuf,
    PathBuf,
    callgate::server::Gateway,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(up)]);
    spec.tls = true;
    let file = spec.write(dir.path());
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(root().join("certs/dev/server.crt"), &crt).unwrap();
    std::fs::copy(root().join("certs/dev/server.key"), &key).unwrap();
    let dev = root().join("certs/dev");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace(
            &format!("{:?}", dev.join("server.crt")),
            &format!("{crt:?}"),
        )
        .replace(
            &format!("{:?}", dev.join("server.key")),
            &format!("{key:?}"),
        );
    std::fs::write(&file, text).unwrap();
    let gw = start_file(&file).await;
    (dir, crt, key, gw)
}

/// A renewed server pair for 127.0.0.1 made by openssl in `dir`:
/// (certificate, key).
fn rotated_server_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join("n.crt"), dir.join("n.key"));
    openssl_self_signed(
        "rotated",
        30,
        &[
            "-sha256",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ],
        &key,
        &crt,
    );
    (crt, key)
}

#[tokio::test]
async fn the_tls_certificate_reloads_for_new_connections() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let (dir, crt, key, gw) = tls_gateway_on_its_own_pair(&up).await;
    let mut reloads = gw.reloads();
    handshake(gw.addr, &crt).await.unwrap();

    // A new certificate (openssl), written aside, moved into place.
    let new_dir = tempfile::tempdir().unwrap();
    let (new_crt, new_key) = rotated_server_pair(new_dir.path());
    std::fs::copy(&new_key, dir.path().join("tls.key.new")).unwrap();
    std::fs::copy(&new_crt, dir.path().join("tls.crt.new")).unwrap();
    std::fs::rename(dir.path().join("tls.key.new"), &key).unwrap();
    std::fs::rename(dir.path().join("tls.crt.new"), &crt).unwrap();
    // Both files change: wait until a reload has seen the pair in place.
    loop {
        next_reload(&mut reloads).await;
        if handshake(gw.addr, &new_crt).await.is_ok() {
            break;
        }
    }
    let old = handshake(gw.addr, &root().join("certs/dev/server.crt")).await;
    assert!(old.is_err(), "the old certificate is no longer served");
}

#[tokio::test]
async fn a_tls_key_that_does_not_fit_its_certificate_is_refused_and_the_old_pair_serves_on() {
    // A renewal half done (the new certificate in place, the key not yet,
    // or the wrong one) must not take TLS down: the reload is refused, and
    // new connections still get the running pair.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let (_dir, crt, key, gw) = tls_gateway_on_its_own_pair(&up).await;
    let old = root().join("certs/dev/server.crt");
    handshake(gw.addr, &old).await.unwrap();

    let new_dir = tempfile::tempdir().unwrap();
    let (new_crt, new_key) = rotated_server_pair(new_dir.path());
    let (other_crt, other_key) = (new_dir.path().join("o.crt"), new_dir.path().join("o.key"));
    openssl_self_signed("other", 30, &[], &other_key, &other_crt);
    std::fs::copy(&new_crt, &crt).unwrap();
    for (bad, what) in [
        (
            std::fs::read(&other_key).unwrap(),
            "another certificate's key",
        ),
        (b"not a key\n".to_vec(), "no key at all"),
    ] {
        std::fs::write(&key, &bad).unwrap();
        let err = gw.reload().unwrap_err().to_string();
        assert!(err.contains("tls_key"), "{what}: {err}");
        handshake(gw.addr, &old)
            .await
            .unwrap_or_else(|e| panic!("{what}: the running pair no longer serves: {e}"));
        assert!(handshake(gw.addr, &new_crt).await.is_err(), "{what}");
    }
    let m = metrics(&gw).await;
    assert!(find_metric(&m, "callgate_rules_reload_total", &[("result", "error")]).unwrap() >= 2.0);
    // The fitting key: the renewed pair serves.
    std::fs::copy(&new_key, &key).unwrap();
    gw.reload().unwrap();
    handshake(gw.addr, &new_crt).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_flowing_through_reloads_are_neither_lost_nor_misanswered() {
    const EVENTS: usize = 300;
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = GatewaySpec::new(vec![RouteSpec::alipay(&up)]).write(dir.path());
    let gw = Arc::new(start_file(&file).await);
    let bodies: Vec<Vec<u8>> = (0..EVENTS)
        .map(|i| alipay_signed(&[("app_id", APP_A), ("notify_id", &format!("reload{i:05}"))]))
        .collect();
    let sender = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for b in bodies {
                statuses.push(post(&gw, "/notify/alipay", b).await.status);
            }
            statuses
        })
    };
    // Meanwhile: reloads of an unchanged configuration, back to back.
    let mut reloads = 0;
    while !sender.is_finished() && reloads < 200 {
        gw.reload().unwrap();
        reloads += 1;
        tokio::task::yield_now().await;
    }
    let statuses = sender.await.unwrap();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(up.count(), EVENTS);
    assert!(reloads > 0);
}

/// A forward in flight when a reload removes its route finishes with the
/// route it started with (its upstream, its ack), and its delivery is
/// remembered under that route's key: once the route is back, the
/// platform's retry is a duplicate, not a second delivery.
#[tokio::test(flavor = "multi_thread")]
async fn a_forward_in_flight_when_a_reload_removes_its_route_finishes_and_is_remembered() {
    let release = Arc::new(tokio::sync::Notify::new());
    let up = Upstream::start(Behaviour::Hold(release.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.watch = false;
    let file = spec.write(dir.path());
    let gw = Arc::new(start_file(&file).await);
    let body = fixture("alipay", "rsa2_trade_success.form");
    let sending = {
        let (gw, body) = (gw.clone(), body.clone());
        tokio::spawn(async move { post(&gw, "/notify/alipay", body).await })
    };
    up.next().await;

    // The shop holds it; the route goes (its path and name with it).
    let rules = dir.path().join("rules/routes.toml");
    let good = std::fs::read_to_string(&rules).unwrap();
    let gone = good
        .replace("/notify/alipay", "/notify/elsewhere")
        .replace("name = \"shop-alipay\"", "name = \"elsewhere\"");
    assert!(gone.contains("name = \"elsewhere\""), "{good}");
    std::fs::write(&rules, gone).unwrap();
    gw.reload().unwrap();
    assert_eq!(post(&gw, "/notify/alipay", body.clone()).await.status, 404);

    up.set(Behaviour::Reply(200, "success"));
    release.notify_one();
    let r = sending.await.unwrap();
    r.assert_is(200, "success", "the forward in flight");

    // The route comes back: the retry is known.
    std::fs::write(&rules, good).unwrap();
    gw.reload().unwrap();
    let again = post(&gw, "/notify/alipay", body).await;
    again.assert_is(200, "success", "the retry");
    assert_eq!(up.count(), 1, "the retry was forwarded again");
}

#[tokio::test]
async fn a_reload_that_needs_a_restart_is_refused_by_name_and_changes_nothing() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.watch = false;
    let file = spec.write(dir.path());
    let gw = start_file(&file).await;

    // A rule change and a listen-address change together: all or nothing.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replacen("addr = \"127.0.0.1:0\"", "addr = \"127.0.0.1:1\"", 1),
    )
    .unwrap();
    let moved = RouteSpec::alipay(&up).with(|r| r.path = "/notify/moved".into());
    std::fs::write(dir.path().join("rules/routes.toml"), route_toml(&moved)).unwrap();
    let err = gw.reload().unwrap_err().to_string();
    assert!(
        err.contains("listen.addr cannot change while running; restart callgate"),
        "{err}"
    );
    let r = post_alipay(&gw, "/notify/alipay", "rsa2_trade_success.form").await;
    assert_eq!(r.status, 200, "the running rules stay");
    let r = post_alipay(&gw, "/notify/moved", "rsa2_trade_success_2.form").await;
    assert_eq!(r.status, 404, "nothing of the refused reload applied");
    let m = metrics(&gw).await;
    assert_eq!(
        find_metric(&m, "callgate_rules_reload_total", &[("result", "error")]),
        Some(1.0)
    );
}

/// Settings the running process reads once at start (the journal it
/// opened, the Redis command timeout, whether it watches the files) are
/// refused on reload by name like the listen address. They used to be
/// reloaded "ok" and silently ignored: an operator who turned
/// `journal.fsync = "always"` on (or the journal off, or watching off)
/// was told the reload succeeded while the process kept the old setting.
#[tokio::test]
async fn a_reload_cannot_half_apply_what_only_a_restart_changes() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.watch = false;
    let file = spec.write(dir.path());
    let gw = start_file(&file).await;
    let original = std::fs::read_to_string(&file).unwrap();
    let cases = [
        (
            "dir = \"journal\"\n",
            "dir = \"journal\"\nfsync = \"always\"\n",
            "journal",
        ),
        ("dir = \"journal\"\n", "enabled = false\n", "journal"),
        ("timeout = \"500ms\"", "timeout = \"2s\"", "replay.timeout"),
        ("watch = false", "watch = true", "reload.watch"),
    ];
    for (n, (from, to, field)) in cases.into_iter().enumerate() {
        assert!(
            original.contains(from),
            "{field}: `{from}` not in\n{original}"
        );
        std::fs::write(&file, original.replacen(from, to, 1)).unwrap();
        let err = gw
            .reload()
            .map(|routes| format!("reloaded ({routes} routes)"))
            .unwrap_or_else(|e| e.to_string());
        assert!(
            err.contains(&format!(
                "{field} cannot change while running; restart callgate"
            )),
            "{field}: {err}"
        );
        let m = metrics(&gw).await;
        assert_eq!(
            find_metric(&m, "callgate_rules_reload_total", &[("result", "error")]),
            Some((n + 1) as f64),
            "{field}"
        );
    }
    std::fs::write(&file, &original).unwrap();
    assert_eq!(gw.reload().unwrap(), 1, "unchanged, it reloads");
    let r = post_alipay(&gw, "/notify/alipay", "rsa2_trade_success.form").await;
    assert_eq!(r.status, 200);
}

// === what the admin listener tells an operator about the process ===

#[tokio::test]
async fn metrics_say_which_build_runs_and_how_the_process_fares() {
    let (_up, gw) = start_one(RouteSpec::alipay).await;
    let text = gw.get_admin("/metrics").await.text();
    let commit = env!("CALLGATE_GIT_COMMIT");
    assert_eq!(
        find_metric(
            &text,
            "callgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("commit", commit)]
        ),
        Some(1.0),
        "{text}"
    );
    // The `process` collector: what any Prometheus target exports.
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let v = find_metric(&text, name, &[]).unwrap_or_else(|| panic!("no {name}"));
        assert!(v > 0.0, "{name} = {v}");
    }
    // In whole clock ticks: may still be 0 this early.
    assert!(find_metric(&text, "process_cpu_seconds_total", &[]).is_some());
    assert_eq!(
        find_metric(&text, "callgate_rules_last_reload_successful", &[]),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_v3_catch_all_listed_first_never_takes_a_bound_sub_merchants_payment() {
    // A service provider's route: a table for any sub-merchant (the
    // platform's own shop) listed before one bound to sub-merchant
    // 1900000119 with its own shop. The key serial names no sub-merchant,
    // so the bound table must be tried first whatever the file's order.
    let any_shop = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let sub_shop = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = GatewaySpec::new(vec![]).write(dir.path());
    let keys = RouteSpec::wechat_v3(&any_shop).keys;
    let rules = format!(
        r#"[[route]]
name = "provider"
path = "/notify/wechat-v3"
provider = "wechat_v3"
allow = ["127.0.0.1/32"]
upstream = {any:?}
upstream_secret_file = "../upstream.secret"

[[route.merchant]]
[route.merchant.keys]
{keys}accept_any_sub_merchant = true

[[route.merchant]]
upstream = {sub:?}
[route.merchant.keys]
{keys}sub_mch_id = "1900000119"
"#,
        any = any_shop.url,
        sub = sub_shop.url,
    );
    std::fs::write(dir.path().join("rules/routes.toml"), rules).unwrap();
    let gw = start_file(&file).await;
    let url = format!("http://127.0.0.1:{}/notify/wechat-v3", gw.addr.port());
    let send = |name: &'static str, nonce: &'static str| {
        let url = url.clone();
        async move {
            let (headers, body) = v3_signed(name, nonce);
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            TestClient::new().send("POST", &url, &headers, body).await
        }
    };
    let r = send("v3_sp_pay.json", "sub-merchant-payment-0001").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (sub_shop.count(), any_shop.count()),
        (1, 0),
        "the bound sub-merchant's shop"
    );
    // The provider's own payment still reaches the catch-all.
    let r = send("v3_pay.json", "direct-payment-0001").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((sub_shop.count(), any_shop.count()), (1, 1));
}

#[tokio::test]
async fn check_warns_when_a_merchants_own_shop_shares_the_routes_secret() {
    let (a, b) = (
        Upstream::start(Behaviour::Reply(200, "success")).await,
        Upstream::start(Behaviour::Reply(200, "success")).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = two_merchants(
        dir.path(),
        &a,
        &b,
        &fixture_path("alipay", "other_public.pem"),
    );
    let rules = dir.path().join("rules/routes.toml");
    let text = std::fs::read_to_string(&rules).unwrap();
    let line = text
        .lines()
        .position(|l| l == format!("upstream = {:?}", b.url))
        .unwrap()
        + 1;
    let (code, out, err) = callgate_cli(&["check"], &file);
    assert_eq!((code, out.trim()), (0, "ok: 1 routes"), "{err}");
    let want = format!(
        "{}:{line}: warning: merchant upstream `{}` is signed with the route's upstream_secret_file",
        rules.display(),
        b.url
    );
    assert!(err.contains(&want), "{want}\n{err}");

    // Its own secret: nothing to say.
    std::fs::write(dir.path().join("b.secret"), "another secret\n").unwrap();
    let own = text.replacen(
        &format!("upstream = {:?}\n", b.url),
        &format!(
            "upstream = {:?}\nupstream_secret_file = \"../b.secret\"\n",
            b.url
        ),
        1,
    );
    std::fs::write(&rules, own).unwrap();
    let (code, _, err) = callgate_cli(&["check"], &file);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("merchant upstream"), "{err}");
}
