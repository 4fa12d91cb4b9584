//! Shared replay state on a real `redis-server`, and the delivery journal:
//! two gateways racing on one Redis, Redis killed and restarted, fail-closed
//! and fail-open routes, passwords and TLS, restart warm-up from the journal,
//! and redelivery. Every Redis here is a real server on a free loopback port.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use support::*;
use tokio::sync::Notify;

fn redis_spec(routes: Vec<RouteSpec>, redis: &RedisServer) -> GatewaySpec {
    let mut spec = GatewaySpec::new(routes);
    spec.store = redis.url();
    spec
}

fn count(gw_text: &str, outcome: &str) -> f64 {
    find_metric(
        gw_text,
        "callgate_requests_total",
        &[
            ("route", "shop-alipay"),
            ("provider", "alipay"),
            ("outcome", outcome),
        ],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn two_instances_on_one_redis_forward_an_event_once() {
    let redis = RedisServer::start();
    let gate = Arc::new(Notify::new());
    let up = Upstream::start(Behaviour::Hold(gate.clone())).await;
    let a = Arc::new(TestGateway::start(redis_spec(vec![RouteSpec::alipay(&up)], &redis)).await);
    let b = TestGateway::start(redis_spec(vec![RouteSpec::alipay(&up)], &redis)).await;
    let body = fixture("alipay", "rsa2_trade_success.form");

    let first = {
        let (a, body) = (a.clone(), body.clone());
        tokio::spawn(async move { a.post_form("/notify/alipay", &body).await })
    };
    up.next().await; // held at the upstream, claimed in Redis by instance a
    let r = b.post_form("/notify/alipay", &body).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (409, "fail"),
        "in flight on the other instance"
    );
    gate.notify_one();
    assert_eq!(first.await.unwrap().status, 200);
    up.set(Behaviour::Reply(200, "success"));
    let r = b.post_form("/notify/alipay", &body).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "success"),
        "delivered by the other instance"
    );
    assert_eq!(up.count(), 1);

    // The key is namespaced per route and expires.
    let keys = tool("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "--scan",
            "--pattern",
            "callgate:shop-alipay:ev:*",
        ])
        .output()
        .unwrap();
    let keys = String::from_utf8(keys.stdout).unwrap();
    let key = keys
        .lines()
        .find(|k| !k.ends_with(":at"))
        .expect("an event key in Redis");
    let ttl = tool("redis-cli")
        .args(["-p", &redis.port.to_string(), "PTTL", key])
        .output()
        .unwrap();
    let ttl: i64 = String::from_utf8(ttl.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // replay.ttl of the test configuration (tests/support).
    let want: i64 = 200_100 * 3600 * 1000;
    assert!(ttl > want - 3600 * 1000 && ttl <= want, "ttl {ttl}");
}

#[tokio::test]
async fn a_worker_claims_on_its_own_redis_connection() {
    let redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    // Starting reads the maxmemory-policy (INFO) on the shared connection.
    let gw = TestGateway::start(redis_spec(vec![RouteSpec::alipay(&up)], &redis)).await;
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    // The claim and the delivery record came from the worker thread that
    // served the notification, on a connection of its own (driven by its
    // runtime): not the shared one, whose last command is still INFO.
    let clients = redis.cli(&["CLIENT", "LIST"]);
    let last = |cmd: &str| {
        clients
            .lines()
            .filter(|l| l.split_whitespace().any(|f| f == format!("cmd={cmd}")))
            .count()
    };
    assert_eq!(last("info"), 1, "{clients}");
    assert_eq!(last("evalsha") + last("eval"), 1, "{clients}");
}

#[tokio::test]
async fn a_nonce_seen_by_one_store_is_a_replay_on_the_other() {
    use callgate::replay::{Key, RedisStore, ReplayStore};
    let redis = RedisServer::start();
    let timeout = std::time::Duration::from_secs(1);
    let one = ReplayStore::Redis(RedisStore::new(&redis.url(), timeout, None).unwrap());
    let two = ReplayStore::Redis(RedisStore::new(&redis.url(), timeout, None).unwrap());
    // The nonce of a genuine v3 notification, verified by the route.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = GatewaySpec::new(vec![RouteSpec::wechat_v3(&up)]).write(dir.path());
    let setup = callgate::config::load(&file).unwrap();
    let route = setup.snapshot.routes.get("/notify/wechat-v3").unwrap();
    let body = fixture("wechat", "v3_pay.json");
    let signed = v3_headers(
        "platform_private.pem",
        WECHAT_PLATFORM_SERIAL,
        unix_now(),
        "EcZ9Cmy4Xyx1i6RlJQzLcCyEqDa26NBz",
        &body,
    );
    let mut headers = http::HeaderMap::new();
    for (k, v) in &signed {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let body = bytes::Bytes::from(body);
    let payload = callgate::body::parse(route.kind().format(), &headers, &body).unwrap();
    let (_, verified) = route.verify(&headers, &body, &payload, unix_now()).unwrap();
    let nonce = Key::nonce(&route.name, &route.replay_namespace, &verified).unwrap();
    let window = std::time::Duration::from_secs(600);
    assert!(one.remember(&nonce, window).await.unwrap());
    assert!(!two.remember(&nonce, window).await.unwrap());
    two.forget(&nonce).await.unwrap();
    assert!(one.remember(&nonce, window).await.unwrap());
}

#[tokio::test]
async fn redis_down_fails_closed_and_the_gateway_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = TestGateway::start(redis_spec(vec![RouteSpec::alipay(&up)], &redis)).await;
    assert_eq!(gw.post_alipay("rsa2_trade_success.form").await.status, 200);
    assert_eq!(gw.get_admin("/readyz").await.status, 200);

    redis.kill();
    let body = fixture("alipay", "rsa2_trade_success_2.form");
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (503, "fail"));
    assert_eq!(gw.get_admin("/readyz").await.status, 503);
    let m = gw.get_admin("/metrics").await.text();
    assert_eq!(count(&m, "store_unavailable"), 1.0);
    assert!(
        find_metric(&m, "callgate_replay_store_errors_total", &[("op", "claim")]).unwrap() >= 1.0
    );
    // `/readyz` asked it once above, and once more here.
    assert_eq!(gw.get_admin("/readyz").await.status, 503);
    let m = gw.get_admin("/metrics").await.text();
    assert_eq!(
        find_metric(&m, "callgate_replay_store_errors_total", &[("op", "ping")]),
        Some(2.0)
    );
    assert_eq!(up.count(), 1, "nothing forwarded while the store is down");

    redis.restart();
    wait_ready(&gw, 200).await;
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "success"),
        "the platform's retry goes through"
    );
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_route_may_choose_to_fail_open_and_check_says_so() {
    let mut redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay(&up).with(|r| r.extra = "on_store_error = \"open\"\n".into());
    let spec = redis_spec(vec![route], &redis);
    let dir = tempfile::tempdir().unwrap();
    let loaded = callgate::config::load(&spec.write(dir.path())).unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert!(
        loaded.warnings[0]
            .to_string()
            .contains("warning: route `shop-alipay` has on_store_error = \"open\""),
        "{:?}",
        loaded.warnings
    );

    let gw = TestGateway::start(spec).await;
    redis.kill();
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn passwords_work_and_a_wrong_one_fails_closed_without_leaking() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret-pass"]);
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let mut good = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    good.store = format!("redis://:s3cret-pass@127.0.0.1:{}/0", redis.port);
    let gw = TestGateway::start(good).await;
    assert_eq!(gw.post_alipay("rsa2_trade_success.form").await.status, 200);

    let mut bad = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    bad.store = format!("redis://:wrong-pass@127.0.0.1:{}/0", redis.port);
    let gw = TestGateway::start(bad).await;
    let r = gw.post_alipay("rsa2_trade_success_2.form").await;
    assert_eq!(r.status, 503);
    assert_eq!(gw.get_admin("/readyz").await.status, 503);
    let m = gw.get_admin("/metrics").await.text();
    assert!(!m.contains("wrong-pass") && !m.contains("s3cret"));
}

#[tokio::test]
async fn rediss_with_a_private_ca() {
    let dev = root().join("certs/dev");
    let (crt, key) = (dev.join("server.crt"), dev.join("server.key"));
    let redis = RedisServer::start_with(&[
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        crt.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        crt.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.store = format!("rediss://127.0.0.1:{}/0", redis.port);
    spec.replay_extra = format!("tls_ca = {crt:?}\n");
    let gw = TestGateway::start(spec).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 200);
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 200);
    assert_eq!(up.count(), 1);
    assert_eq!(gw.get_admin("/readyz").await.status, 200);
}

/// Restarts a gateway in the same directory (same journal).
async fn restart(gw: TestGateway, spec: GatewaySpec) -> TestGateway {
    let TestGateway { dir, gateway, .. } = gw;
    gateway.shutdown().await;
    TestGateway::start_in(dir, spec).await
}

#[tokio::test]
async fn the_journal_warms_the_memory_store_after_a_restart() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    let spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    let gw = TestGateway::start(spec.clone()).await;
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 200);
    let gw = restart(gw, spec).await;
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1, "remembered across the restart");
    assert_eq!(gw.requests("duplicate").await, 1.0);

    // Without the journal, a restart forgets: the control case.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.journal = "enabled = false\n".into();
    let gw = TestGateway::start(spec.clone()).await;
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 200);
    let gw = restart(gw, spec).await;
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 200);
    assert_eq!(up.count(), 2);
}

/// The event keys Redis holds under `callgate:<namespace>:ev:`.
fn event_keys_in(redis: &RedisServer, namespace: &str) -> usize {
    let out = tool("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "--scan",
            "--pattern",
            &format!("callgate:{namespace}:ev:*"),
        ])
        .output()
        .unwrap();
    // `<event key>:at` (an attempt count, or a confirm's receipt) is no
    // event of its own.
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|k| !k.ends_with(":at"))
        .count()
}

/// Renames the Alipay route `shop-alipay` to `shop-alipay-v2`, keeping
/// its replay namespace, and reloads; returns the renamed route.
fn rename_keeping_namespace(gw: &TestGateway, up: &Upstream) -> RouteSpec {
    let renamed = RouteSpec::alipay(up).with(|r| {
        r.name = "shop-alipay-v2".into();
        r.extra = "replay_namespace = \"shop-alipay\"\n".into();
    });
    std::fs::write(
        gw.dir.path().join("rules/routes.toml"),
        route_toml(&renamed),
    )
    .unwrap();
    assert_eq!(gw.gateway.reload().unwrap(), 1);
    renamed
}

/// With Redis (and no journal, so only Redis can remember), a route renamed
/// with `replay_namespace = "<old name>"` finds what it delivered under the
/// old name, after a reload and after a restart: the platform's retry is a
/// duplicate, and Redis holds the event under the old namespace only. A
/// route of another name without the key is the control: it forwards the
/// retry. Before, the key was refused and a renamed route forwarded it.
#[tokio::test]
async fn with_redis_a_route_renamed_with_its_old_namespace_knows_its_deliveries() {
    let redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    let mut spec = redis_spec(vec![RouteSpec::alipay(&up)], &redis);
    spec.journal = "enabled = false\n".into();
    let gw = TestGateway::start(spec.clone()).await;
    gw.post_form("/notify/alipay", &body)
        .await
        .assert_is(200, "success", "the first delivery");
    assert_eq!(up.count(), 1);

    let renamed = rename_keeping_namespace(&gw, &up);
    gw.post_form("/notify/alipay", &body).await.assert_is(
        200,
        "success",
        "the retry after the reload",
    );
    assert_eq!(up.count(), 1, "the retry reached the shop after the reload");
    assert_eq!(
        gw.requests_of("shop-alipay-v2", "alipay", "duplicate")
            .await,
        1.0
    );

    let mut spec_renamed = spec.clone();
    spec_renamed.routes = vec![renamed];
    let gw = restart(gw, spec_renamed).await;
    gw.post_form("/notify/alipay", &body).await.assert_is(
        200,
        "success",
        "the retry after the restart",
    );
    assert_eq!(
        up.count(),
        1,
        "the retry reached the shop after the restart"
    );
    assert_eq!(event_keys_in(&redis, "shop-alipay"), 1);
    assert_eq!(event_keys_in(&redis, "shop-alipay-v2"), 0);

    // The control: renamed without the key, the retry is a new event.
    let mut spec_forgets = spec;
    spec_forgets.routes = vec![RouteSpec::alipay(&up).with(|r| r.name = "shop-alipay-v3".into())];
    let gw = restart(gw, spec_forgets).await;
    gw.post_form("/notify/alipay", &body).await.assert_is(
        200,
        "success",
        "the retry on a route renamed without the key",
    );
    assert_eq!(up.count(), 2);
}

fn callgate(args: &[&str], config: &std::path::Path) -> (i32, String, String) {
    callgate_cli(args, config)
}

#[tokio::test(flavor = "multi_thread")]
async fn redelivery_sends_what_the_shop_missed_exactly_once() {
    let up = Upstream::start(Behaviour::Reply(500, "down for maintenance")).await;
    let spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    // The memory store lives in the gateway: redelivery goes through its
    // admin API.
    let gw = TestGateway::start_with_admin_token(spec.clone()).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 502);
    assert_eq!(
        gw.post_alipay("rsa2_trade_success_2.form").await.status,
        502
    );
    let config = gw.cli_config();
    gw.flush_journal().await;

    let (code, out, err) = callgate(&["journal", "list"], &config);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("upstream_error").count(), 2, "{out}");
    assert!(out.contains("2026112200222000000000000000000001"), "{out}");

    up.set(Behaviour::Reply(200, "success"));
    let id = "2026112200222000000000000000000001";
    let (code, out, err) = callgate(&["journal", "redeliver", "--event-id", id], &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("shop-alipay {id}: forwarded")),
        "{out}"
    );
    assert_eq!(up.count(), 3);
    let last = up.received().pop().unwrap();
    assert_eq!(last.body.as_ref(), body.as_slice(), "the original bytes");
    assert_eq!(last.headers["x-callgate-event-id"], id);

    // Idempotent: the second run sends nothing.
    let (code, out, _) = callgate(&["journal", "redeliver", "--event-id", id], &config);
    assert_eq!(code, 0);
    assert!(out.contains("already delivered, skipped"), "{out}");
    assert_eq!(up.count(), 3);

    // A filter selects the remaining undelivered event.
    let (code, out, _) = callgate(
        &["journal", "redeliver", "--outcome", "upstream_error"],
        &config,
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(up.count(), 4);
    assert!(out.contains("already delivered, skipped"), "{out}");

    // And a restarted gateway knows both were delivered.
    let TestGateway { dir, gateway, .. } = gw;
    gateway.shutdown().await;
    let gw = TestGateway::start_in(dir, spec).await;
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 200);
    assert_eq!(up.count(), 4);
}

/// `journal redeliver` judges "already delivered" by the replay namespace:
/// an event whose forward failed on route `shop-alipay` and that the
/// platform's retry delivered after the route was renamed with
/// `replay_namespace = "shop-alipay"` is skipped as delivered, not sent
/// again. Before, the journal's events were named by route, so the failed
/// arrival looked undelivered and redelivery failed (its route no longer
/// configured).
#[tokio::test(flavor = "multi_thread")]
async fn redelivery_knows_what_a_renamed_route_delivered_in_its_namespace() {
    let up = Upstream::start(Behaviour::Reply(500, "down for maintenance")).await;
    let gw =
        TestGateway::start_with_admin_token(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 502);

    let renamed = rename_keeping_namespace(&gw, &up);
    up.set(Behaviour::Reply(200, "success"));
    gw.post_form("/notify/alipay", &body).await.assert_is(
        200,
        "success",
        "the platform's retry after the rename",
    );
    assert_eq!(up.count(), 2);
    gw.flush_journal().await;

    let config = gw.cli_config();
    let (code, out, err) = callgate(
        &["journal", "redeliver", "--outcome", "upstream_error"],
        &config,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("2026112200222000000000000000000001: already delivered, skipped"),
        "{out}{err}"
    );
    assert_eq!(up.count(), 2, "redelivered an event the shop has");

    // An event the shop missed before the rename, and the platform gave up
    // on: the renamed route, which kept the old namespace, redelivers it.
    // Before, its route was "no longer configured".
    up.set(Behaviour::Reply(500, "down for maintenance"));
    let renamed_back = RouteSpec::alipay(&up);
    std::fs::write(
        gw.dir.path().join("rules/routes.toml"),
        route_toml(&renamed_back),
    )
    .unwrap();
    assert_eq!(gw.gateway.reload().unwrap(), 1);
    assert_eq!(
        gw.post_alipay("rsa2_trade_success_2.form").await.status,
        502
    );
    std::fs::write(
        gw.dir.path().join("rules/routes.toml"),
        route_toml(&renamed),
    )
    .unwrap();
    assert_eq!(gw.gateway.reload().unwrap(), 1);
    up.set(Behaviour::Reply(200, "success"));
    gw.flush_journal().await;
    let id = "2026112200222000000000000000000013";
    let (code, out, err) = callgate(&["journal", "redeliver", "--event-id", id], &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("shop-alipay {id}: forwarded")),
        "{out}{err}"
    );
    assert_eq!(up.count(), 4, "the missed event reached the shop");
    let last = up.received().pop().unwrap();
    assert_eq!(last.headers["x-callgate-event-id"], id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_journal_is_not_redelivered() {
    let up = Upstream::start(Behaviour::Reply(500, "down")).await;
    let gw =
        TestGateway::start_with_admin_token(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    assert_eq!(gw.post_alipay("rsa2_trade_success.form").await.status, 502);
    // Rewrite the amount inside the journaled body (Base64 of the form).
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    gw.flush_journal().await;
    for file in callgate::journal::journal_files(&gw.dir.path().join("journal")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut out = String::new();
        for line in text.lines() {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["type"] == "received" {
                let body =
                    String::from_utf8(b64.decode(v["body"].as_str().unwrap()).unwrap()).unwrap();
                v["body"] = b64
                    .encode(body.replace("total_amount=88.88", "total_amount=0.01"))
                    .into();
            }
            out.push_str(&v.to_string());
            out.push('\n');
        }
        std::fs::write(&file, out).unwrap();
    }
    up.set(Behaviour::Reply(200, "success"));
    let (code, out, _) = callgate(
        &["journal", "redeliver", "--route", "shop-alipay"],
        &gw.cli_config(),
    );
    assert_eq!(code, 1);
    assert!(out.contains("no longer verifies"), "{out}");
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_sharing_redis_deliver_every_event_exactly_once_under_load() {
    const EVENTS: usize = 1200;
    let redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let a = Arc::new(TestGateway::start(redis_spec(vec![RouteSpec::alipay(&up)], &redis)).await);
    let b = Arc::new(TestGateway::start(redis_spec(vec![RouteSpec::alipay(&up)], &redis)).await);
    // Distinct, genuinely signed notifications.
    let bodies: Vec<Arc<Vec<u8>>> = (0..EVENTS)
        .map(|i| {
            Arc::new(alipay_signed(&[
                ("app_id", "2021000000000001"),
                ("notify_id", &format!("load{i:06}")),
                ("out_trade_no", &format!("LOAD{i:06}")),
            ]))
        })
        .collect();
    let limit = Arc::new(tokio::sync::Semaphore::new(48));
    let mut tasks = Vec::new();
    let mut sent = 0usize;
    for (i, body) in bodies.iter().enumerate() {
        // Every event once; every third twice at the same moment on both
        // instances; every fifth once more later.
        let copies: &[usize] = match (i % 3, i % 5) {
            (0, 0) => &[0, 1, 0],
            (0, _) => &[0, 1],
            (_, 0) => &[1, 1],
            _ => &[i % 2],
        };
        for &which in copies {
            sent += 1;
            let gw = if which == 0 { a.clone() } else { b.clone() };
            let (body, limit) = (body.clone(), limit.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = limit.acquire().await.unwrap();
                // Play the platform: retry until the success ack.
                for _ in 0..50 {
                    let r = gw.post_form("/notify/alipay", &body).await;
                    match r.status {
                        200 => return,
                        409 => tokio::task::yield_now().await,
                        // The store past its timeout on a loaded machine
                        // (503 is only store_unavailable): the platform
                        // retries it like any non-success; exactly-once is
                        // what this test checks.
                        503 => tokio::task::yield_now().await,
                        s => panic!("unexpected status {s}: {}", r.text()),
                    }
                }
                panic!("never acknowledged");
            }));
        }
    }
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(300), all)
        .await
        .expect("bounded load run");
    let ids: Vec<String> = up
        .received()
        .iter()
        .map(|r| {
            r.headers["x-callgate-event-id"]
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), EVENTS, "every event reached the upstream");
    assert_eq!(
        ids.len(),
        EVENTS,
        "and none twice ({sent} notifications sent)"
    );
    println!(
        "load: {sent} notifications for {EVENTS} events, upstream saw {}",
        ids.len()
    );
}

#[tokio::test]
async fn copies_of_an_event_a_gateway_found_delivered_are_answered_without_redis() {
    let mut redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let one = TestGateway::start(redis_spec(vec![RouteSpec::alipay(&up)], &redis)).await;
    let two = TestGateway::start(redis_spec(vec![RouteSpec::alipay(&up)], &redis)).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    // `one` delivers the event; the first copy at each gateway learns from
    // Redis that it was.
    let r = one.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let claims = redis.scripts_run();
    for gw in [&one, &two] {
        let r = gw.post_form("/notify/alipay", &body).await;
        assert_eq!((r.status, r.text().as_str()), (200, "success"));
    }
    assert_eq!(up.count(), 1);
    let after_first_copies = redis.scripts_run();
    assert_eq!(
        after_first_copies,
        claims + 2,
        "each first copy was a claim"
    );
    let claims = after_first_copies;

    // A flood of copies costs Redis no claim...
    for _ in 0..5 {
        for gw in [&one, &two] {
            let r = gw.post_form("/notify/alipay", &body).await;
            assert_eq!((r.status, r.text().as_str()), (200, "success"));
        }
    }
    assert_eq!(
        redis.scripts_run(),
        claims,
        "copies of a known delivery never reach Redis"
    );
    // ...and is answered while Redis is down, where a new event fails closed.
    redis.kill();
    for gw in [&one, &two] {
        let r = gw.post_form("/notify/alipay", &body).await;
        assert_eq!((r.status, r.text().as_str()), (200, "success"));
        let r = gw.post_alipay("rsa2_trade_success_2.form").await;
        assert_eq!((r.status, r.text().as_str()), (503, "fail"));
    }
    assert_eq!(up.count(), 1, "the shop got the event once");
    assert_eq!(one.requests("duplicate").await, 7.0);
    assert_eq!(two.requests("duplicate").await, 7.0);
}

/// Polls `done` (bounded: 15 s, far below a claim's 40 s life) on what the
/// test reads from Redis; never a fixed delay.
async fn wait_redis(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1500 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{what}: never seen in Redis within 15 s");
}

/// The event keys of `namespace` and their `:at` keys, with their values.
fn event_values(redis: &RedisServer, namespace: &str) -> Vec<(String, String)> {
    let names = redis.cli(&["--raw", "KEYS", &format!("callgate:{namespace}:ev:*")]);
    names
        .lines()
        .filter(|n| !n.is_empty())
        .map(|n| (n.to_owned(), redis.cli(&["--raw", "GET", n])))
        .collect()
}

/// A claim that timed out while Redis was stalled reaches Redis when it
/// resumes: it must not then hold the event in flight for a claim's life
/// (40 s here), nor count an attempt that was never forwarded.
#[tokio::test]
async fn a_claim_that_timed_out_does_not_hold_its_event_once_redis_resumes() {
    let redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let mut spec = redis_spec(vec![RouteSpec::alipay(&up)], &redis);
    // One worker: its connection, opened by the first request, carries
    // the stalled claim (a new one would time out opening instead).
    spec.workers = Some(1);
    let gw = TestGateway::start(spec).await;
    // Connections open and the policy read: the stalled claim is the CLAIM.
    assert_eq!(gw.post_alipay("rsa2_trade_success.form").await.status, 200);
    let before = redis.scripts_run();

    redis.signal("-STOP");
    let body = fixture("alipay", "rsa2_trade_success_2.form");
    let r = gw.post_form("/notify/alipay", &body).await;
    redis.signal("-CONT");
    assert_eq!(
        (r.status, r.text().as_str()),
        (503, "fail"),
        "claim timed out"
    );
    // The stalled CLAIM runs once Redis resumes...
    wait_redis("the late claim", || redis.scripts_run() > before).await;
    // ...and is undone: nothing of it is left in flight, nor counted.
    // (A delivered event's `:at` holds its confirm's receipt, `<token>=1`.)
    wait_redis("the late claim undone", || {
        event_values(&redis, "shop-alipay")
            .iter()
            .all(|(n, v)| v == "d" || (n.ends_with(":at") && v.contains('=')))
    })
    .await;

    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "success"),
        "the platform's retry goes through"
    );
    assert_eq!(up.count(), 2);
    assert_eq!(
        up.received()[1].headers["x-callgate-attempt"],
        "1",
        "callgate never sent this event before"
    );
    assert_eq!(
        gw.metric(
            "callgate_repeat_deliveries_total",
            &[("route", "shop-alipay")]
        )
        .await
        .unwrap_or(0.0),
        0.0
    );
}

/// The shop took the event, but the confirm's answer never came (Redis
/// stalled): the confirm retried in the background finds the marker its
/// own first attempt wrote once Redis resumed, and that is no lost claim.
#[tokio::test]
async fn a_confirm_retried_after_its_answer_was_lost_raises_no_false_alarm() {
    let redis = RedisServer::start();
    let gate = Arc::new(Notify::new());
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = Arc::new(TestGateway::start(redis_spec(vec![RouteSpec::alipay(&up)], &redis)).await);
    // A delivery first: Redis knows the confirm script (a stalled EVALSHA
    // of an unknown script would only be refused).
    assert_eq!(
        gw.post_alipay("rsa2_trade_success_2.form").await.status,
        200
    );
    up.next().await;
    up.set(Behaviour::Hold(gate.clone()));
    let body = fixture("alipay", "rsa2_trade_success.form");
    let sent = {
        let (gw, body) = (gw.clone(), body.clone());
        tokio::spawn(async move { gw.post_form("/notify/alipay", &body).await })
    };
    up.next().await; // claimed, at the shop
    let before = redis.scripts_run();
    redis.signal("-STOP");
    gate.notify_one();
    // The platform's answer leaves once the confirm failed (timed out); its
    // retry waits 50 ms first, so it reaches a running Redis. (Not a metric
    // scrape here: /metrics asks the stalled Redis for DBSIZE.)
    let r = sent.await.unwrap();
    redis.signal("-CONT");
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(
        gw.metric("callgate_replay_store_errors_total", &[("op", "confirm")])
            .await,
        Some(1.0),
        "the first confirm timed out"
    );
    // The first confirm, run late, and the retry that succeeds.
    wait_redis("the late confirm and its retry", || {
        redis.scripts_run() >= before + 2
    })
    .await;
    // The retry counts what it found as soon as its answer arrives; the
    // duplicate (answered from this gateway's own memory) only spaces the
    // read from it. With the fix the count stays 0 whatever the timing.
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 2, "the shop got the event once");
    assert_eq!(
        gw.metric(
            "callgate_claims_lost_total",
            &[("route", "shop-alipay"), ("step", "confirm")]
        )
        .await
        .unwrap_or(0.0),
        0.0,
        "no false alarm"
    );
}

/// The `callgate run` log lines about `redis` keeping no append-only file,
/// from start to stop, with one notification served in between.
async fn no_aof_warnings(redis: &RedisServer, password: &str) -> Vec<serde_json::Value> {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = redis_spec(vec![RouteSpec::alipay(&up)], redis);
    spec.store = format!("redis://:{password}@127.0.0.1:{}/0", redis.port);
    let mut run = GatewayProcess::start(&spec.write(dir.path()));
    let r = TestClient::new()
        .send(
            "POST",
            &format!("http://{}/notify/alipay", run.addr),
            &[("content-type", "application/x-www-form-urlencoded")],
            fixture("alipay", "rsa2_trade_success.form"),
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    run.signal("-TERM");
    run.wait_for(|v| v["message"] == "callgate stopped");
    assert!(!run.seen.join("\n").contains(password), "{:#?}", run.seen);
    run.seen
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("append-only file"))
        })
        .collect()
}

/// A Redis without an append-only file forgets the delivered markers when
/// it restarts, and the platforms' retries of those events reach the shop
/// again: `callgate run` says so once at start (the store shown without
/// its password), and says nothing about a Redis that keeps one.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_without_an_append_only_file_is_warned_about_once_at_start() {
    let bare = RedisServer::start_with(&["--requirepass", "s3cret-pass"]);
    let warned = no_aof_warnings(&bare, "s3cret-pass").await;
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert_eq!(warned[0]["level"], "WARN", "{}", warned[0]);
    let store = format!("redis://:***@127.0.0.1:{}/0", bare.port);
    assert_eq!(warned[0]["store"], store.as_str(), "{}", warned[0]);
    assert_eq!(
        warned[0]["message"],
        format!(
            "replay store {store} keeps no append-only file (aof_enabled:0): a Redis restart forgets the deliveries made since its last snapshot (every one, with no save points), and the platforms' retries of those reach the shop again as X-Callgate-Attempt: 1; set appendonly yes"
        ),
        "{}",
        warned[0]
    );

    let kept = RedisServer::start_with(&["--requirepass", "s3cret-pass", "--appendonly", "yes"]);
    assert_eq!(
        kept.cli(&[
            "-a",
            "s3cret-pass",
            "--no-auth-warning",
            "CONFIG",
            "GET",
            "appendonly"
        ]),
        "appendonly\nyes"
    );
    let warned = no_aof_warnings(&kept, "s3cret-pass").await;
    assert!(warned.is_empty(), "{warned:#?}");
}
