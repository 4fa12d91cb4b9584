//! Exactly once under pressure: the ways an event could reach the shop
//! twice, or be forgotten early, each tried for real.
//!
//! * a claim that lapses before the forward (a copy claims the event anew):
//!   the first copy stops at its renewal, the shop gets the event once; a
//!   fresh claim that nothing made wait goes to the forward without one;
//! * a confirm that finds its claim gone is counted and the delivery still
//!   recorded;
//! * a full memory store refuses (503) instead of forgetting, per route;
//! * Redis with an evicting `maxmemory-policy` is refused at start and while
//!   it is set; with `noeviction`, a full Redis fails closed;
//! * `on_store_error = "open"` records what it delivered once the store is
//!   back;
//! * `callgate journal redeliver` goes through the running gateway;
//! * a drain waits for forwards whose platform already hung up;
//! * `kill -9` under load, restart, and the platform's retries: every event
//!   delivered, every repeat marked with `X-Callgate-Attempt`.
//!
//! Real sockets, real `redis-server`s, the real `callgate` binary where a
//! process must die; nothing waits on a clock to decide an assertion.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::*;
use tokio::sync::Semaphore;

const MD5: &str = "/notify/alipay_md5";

/// The event keys (not their attempt counters) of a route in Redis.
fn event_keys(redis: &RedisServer, route: &str) -> Vec<String> {
    redis
        .cli(&["--scan", "--pattern", &format!("callgate:{route}:ev:*")])
        .lines()
        .filter(|k| !k.ends_with(":at"))
        .map(str::to_owned)
        .collect()
}

/// A legacy Alipay route that asks `atn` (notify_verify) before forwarding.
fn md5_with_atn(up: &Upstream, atn: &Upstream) -> RouteSpec {
    RouteSpec::alipay_md5(up).with(|r| {
        r.keys.push_str(&format!(
            "notify_verify_url = \"http://127.0.0.1:{}/gateway.do\"\n",
            atn.addr.port()
        ))
    })
}

/// `n` distinct genuine Alipay notifications (callgate's signer is only
/// the load generator here; its output is checked against openssl in
/// tests/cli.rs).
fn alipay_bodies(n: usize, prefix: &str) -> Vec<Arc<Vec<u8>>> {
    (0..n)
        .map(|i| {
            Arc::new(alipay_signed(&[
                ("app_id", "2021000000000001"),
                ("notify_id", &format!("{prefix}{i:06}")),
                ("out_trade_no", &format!("ORDER{i:06}")),
            ]))
        })
        .collect()
}

fn lost(m: &str, route: &str, step: &str) -> f64 {
    find_metric(
        m,
        "callgate_claims_lost_total",
        &[("route", route), ("step", step)],
    )
    .unwrap_or(0.0)
}

// === claims that lapse ===

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_that_lapsed_before_the_forward_is_not_forwarded_twice() {
    let redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let permits = Arc::new(Semaphore::new(0));
    let atn = Upstream::start(Behaviour::HoldReply(permits.clone(), 200, "true")).await;
    let mut spec = GatewaySpec::new(vec![md5_with_atn(&up, &atn)]);
    spec.store = redis.url();
    let gw = Arc::new(TestGateway::start(spec).await);
    let body = fixture("alipay_md5", "md5_trade_success.form");

    let post = |gw: Arc<TestGateway>, body: Vec<u8>| {
        tokio::spawn(async move { gw.post_form(MD5, &body).await })
    };
    let first = post(gw.clone(), body.clone());
    // The first copy holds the claim and waits on a slow step
    // (notify_verify here; a journal write under fsync = "always" too)...
    atn.next().await;
    // ...longer than its claim lives: the claim lapses.
    let keys = event_keys(&redis, "shop-legacy");
    assert_eq!(keys.len(), 1, "{keys:?}");
    redis.cli(&["DEL", &keys[0]]);
    // A copy arrives and claims the event anew.
    let second = post(gw.clone(), body.clone());
    atn.next().await;
    permits.add_permits(2);
    let (a, b) = (first.await.unwrap(), second.await.unwrap());
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", a.text(), b.text());
    assert_eq!(up.count(), 1, "the shop got the event once");
    let m = gw.get_admin("/metrics").await.text();
    assert_eq!(lost(&m, "shop-legacy", "before_forward"), 1.0);
    assert_eq!(
        gw.rejections("shop-legacy", "alipay_md5", "claim_lost")
            .await,
        1.0
    );
    // The platform's next retry is a duplicate.
    let r = gw.post_form(MD5, &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_claim_is_forwarded_without_a_renewal() {
    let redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.store = redis.url();
    let gw = TestGateway::start(spec).await;
    let bodies = alipay_bodies(2, "fresh");
    // The first forward has Redis load the scripts.
    let r = gw.post_form("/notify/alipay", &bodies[0]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let before = redis.scripts_run();
    let r = gw.post_form("/notify/alipay", &bodies[1]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    // The claim and the delivery record only: nothing between the claim
    // and the forward waited (no notify_verify, the journal does not wait
    // for the disk), so the claim, seconds old at most with 40 s to live,
    // is not renewed. (A step that waits: the test above renews.)
    assert_eq!(redis.scripts_run() - before, 2);
    assert_eq!(up.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confirm_that_finds_its_claim_gone_is_counted_and_still_recorded() {
    let redis = RedisServer::start();
    let permits = Arc::new(Semaphore::new(0));
    let up = Upstream::start(Behaviour::HoldReply(permits.clone(), 200, "success")).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.store = redis.url();
    let gw = Arc::new(TestGateway::start(spec).await);
    let body = fixture("alipay", "rsa2_trade_success.form");
    let pending = {
        let (gw, body) = (gw.clone(), body.clone());
        tokio::spawn(async move { gw.post_form("/notify/alipay", &body).await })
    };
    up.next().await; // at the shop
    // The store loses the claim mid-forward.
    let keys = event_keys(&redis, "shop-alipay");
    redis.cli(&["DEL", &keys[0]]);
    permits.add_permits(1);
    let r = pending.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let m = gw.get_admin("/metrics").await.text();
    assert_eq!(lost(&m, "shop-alipay", "confirm"), 1.0);
    assert_eq!(lost(&m, "shop-alipay", "before_forward"), 0.0);
    // Recorded all the same: the retry is a duplicate.
    assert_eq!(redis.cli(&["GET", &keys[0]]), "d");
    permits.add_permits(1);
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
    assert_eq!(gw.requests("duplicate").await, 1.0);
}

// === stores that must not forget ===

#[tokio::test]
async fn a_full_memory_store_refuses_new_events_per_route_and_forgets_nothing() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let spec = GatewaySpec::new(vec![RouteSpec::alipay(&up), RouteSpec::wechat_v2(&up)]);
    // Four slots, two routes: two each.
    let gw = TestGateway::start_edited(spec, |t| {
        *t = t.replace("max_entries = 100000", "max_entries = 4")
    })
    .await;
    let bodies = alipay_bodies(3, "full");
    for b in &bodies[..2] {
        let r = gw.post_form("/notify/alipay", b).await;
        assert_eq!((r.status, r.text().as_str()), (200, "success"));
    }
    // The route's share is used up: refused, the platform retries later.
    let r = gw.post_form("/notify/alipay", &bodies[2]).await;
    assert_eq!((r.status, r.text().as_str()), (503, "fail"));
    // The other route still has its share.
    let r = gw.post_xml(&fixture("wechat", "v2_md5_pay.xml")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Nothing delivered was forgotten to make room.
    for b in &bodies[..2] {
        assert_eq!(gw.post_form("/notify/alipay", b).await.status, 200);
    }
    assert_eq!(up.count(), 3);
    assert_eq!(gw.requests("duplicate").await, 2.0);
    let m = gw.get_admin("/metrics").await.text();
    assert_eq!(
        find_metric(
            &m,
            "callgate_replay_store_full_total",
            &[("route", "shop-alipay")]
        ),
        Some(1.0)
    );
    assert_eq!(
        gw.rejections("shop-alipay", "alipay", "store_full").await,
        1.0
    );
    let quota = |route| find_metric(&m, "callgate_replay_store_route_quota", &[("route", route)]);
    assert_eq!(quota("shop-alipay"), Some(2.0));
    assert_eq!(quota("shop-wechat-v2"), Some(2.0));
    assert_eq!(
        find_metric(
            &m,
            "callgate_replay_store_route_entries",
            &[("route", "shop-alipay")]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn route_quotas_must_fit_in_the_store() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let a = RouteSpec::alipay(&up).with(|r| r.extra = "replay_quota = 60000\n".into());
    let b = RouteSpec::wechat_v2(&up).with(|r| r.extra = "replay_quota = 50000\n".into());
    let dir = tempfile::tempdir().unwrap();
    let file = GatewaySpec::new(vec![a, b]).write(dir.path());
    let err = callgate::config::load(&file).unwrap_err().to_string();
    assert!(
        err.contains(
            "replay_quota: the routes' quotas add up to 110000, above replay.max_entries (100000)"
        ),
        "{err}"
    );
    assert!(err.contains("routes.toml:"), "{err}");
}

#[tokio::test]
async fn redis_with_an_evicting_policy_is_refused_at_start() {
    for policy in ["allkeys-lru", "volatile-ttl"] {
        let redis = RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", policy]);
        let up = Upstream::start(Behaviour::Reply(200, "success")).await;
        let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
        spec.store = redis.url();
        let dir = tempfile::tempdir().unwrap();
        let loaded = callgate::config::load(&spec.write(dir.path())).unwrap();
        let Err(e) = callgate::server::start(loaded).await else {
            panic!("{policy}: started on a Redis that may evict");
        };
        let e = e.to_string();
        assert!(
            e.contains(&format!("maxmemory-policy {policy}")) && e.contains("noeviction"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn an_evicting_policy_set_while_running_fails_closed_until_it_is_undone() {
    let redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.store = redis.url();
    let gw = TestGateway::start(spec).await;
    let bodies = alipay_bodies(2, "policy");
    assert_eq!(gw.post_form("/notify/alipay", &bodies[0]).await.status, 200);

    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lfu"]);
    let ready = gw.get_admin("/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("allkeys-lfu"), "{}", ready.text());
    let r = gw.post_form("/notify/alipay", &bodies[1]).await;
    assert_eq!((r.status, r.text().as_str()), (503, "fail"));
    let m = gw.get_admin("/metrics").await.text();
    assert_eq!(
        find_metric(&m, "callgate_replay_store_evicting", &[]),
        Some(1.0)
    );
    assert_eq!(
        gw.rejections("shop-alipay", "alipay", "store_evicting")
            .await,
        1.0
    );

    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    assert_eq!(gw.get_admin("/readyz").await.status, 200);
    assert_eq!(gw.post_form("/notify/alipay", &bodies[1]).await.status, 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_full_redis_with_noeviction_fails_closed_and_forgets_nothing() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.store = redis.url();
    let gw = TestGateway::start(spec).await;
    let bodies = alipay_bodies(2, "oom");
    assert_eq!(gw.post_form("/notify/alipay", &bodies[0]).await.status, 200);
    // Fill Redis past its maxmemory with other data: large values first,
    // then ever smaller ones, until even a small write is refused.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let mut filled = false;
    let mut i = 0;
    for size in [16 * 1024, 1024, 64] {
        let junk = vec![b'x'; size];
        filled = false;
        for _ in 0..100_000 {
            i += 1;
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg(format!("junk:{i}"))
                .arg(&junk)
                .query(&mut conn);
            if r.is_err() {
                filled = true;
                break;
            }
        }
    }
    assert!(filled, "Redis never reached its maxmemory");
    let r = gw.post_form("/notify/alipay", &bodies[1]).await;
    assert_eq!((r.status, r.text().as_str()), (503, "fail"));
    // What was delivered is still known.
    let r = gw.post_form("/notify/alipay", &bodies[0]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
}

// === forwarding while the store is down ===

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_made_without_the_store_are_recorded_once_it_returns() {
    let mut redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay(&up).with(|r| r.extra = "on_store_error = \"open\"\n".into());
    let mut spec = GatewaySpec::new(vec![route]);
    spec.store = redis.url();
    let gw = TestGateway::start(spec).await;
    let body = fixture("alipay", "rsa2_trade_success.form");

    redis.kill();
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1, "forwarded without the store (open)");
    // While the store is down, a copy is answered from what was delivered.
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
    assert_eq!(
        gw.metric("callgate_replay_store_backlog", &[]).await,
        Some(1.0)
    );

    redis.restart();
    gw.wait_metric("callgate_replay_store_backlog", &[], |v| v == 0.0)
        .await;
    assert_eq!(event_keys(&redis, "shop-alipay").len(), 1);
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(
        up.count(),
        1,
        "the retry after the store returned is a duplicate"
    );
    assert_eq!(gw.requests("duplicate").await, 2.0);
}

// === redelivery through the running gateway ===

#[tokio::test(flavor = "multi_thread")]
async fn redelivery_goes_through_the_running_gateways_memory_store() {
    let up = Upstream::start(Behaviour::Reply(500, "down")).await;
    let gw =
        TestGateway::start_with_admin_token(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 502);
    up.set(Behaviour::Reply(200, "success"));

    let cli = gw.cli_config();
    let id = "2026112200222000000000000000000001";
    let (code, out, err) = callgate_cli(&["journal", "redeliver", "--event-id", id], &cli);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("shop-alipay {id}: forwarded")),
        "{out}"
    );
    assert_eq!(up.count(), 2);
    // The platform's own retry reaches the gateway that redelivered: it
    // knows, and the shop is not called again.
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 2);
    assert_eq!(gw.requests("duplicate").await, 1.0);
    // The redelivery said it was the second attempt.
    assert_eq!(up.received()[1].headers["x-callgate-attempt"], "2");
}

/// `callgate journal redeliver --route shop-alipay` on `gw`'s files, run
/// as its own process: (exit code, stdout, stderr).
fn redeliver_alipay_route(gw: &TestGateway) -> (i32, String, String) {
    callgate_cli(
        &["journal", "redeliver", "--route", "shop-alipay"],
        &gw.cli_config(),
    )
}

/// `journal redeliver` with the gateway running and nothing in the journal
/// that matches: there is nothing to do, and it says so (exit 0). It used
/// to exit 1 with "start it, then run this again", about a gateway that
/// had just answered. An answer that refuses (a token the gateway does not
/// hold) is an error, still without that hint.
#[tokio::test(flavor = "multi_thread")]
async fn redelivering_when_nothing_matches_says_so_and_succeeds() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw =
        TestGateway::start_with_admin_token(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    assert_eq!(gw.post_alipay("rsa2_trade_success.form").await.status, 200);
    let cli = gw.cli_config();
    let (code, out, err) = callgate_cli(&["journal", "redeliver", "--outcome", "unfinished"], &cli);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("nothing to redeliver"), "{err}");
    assert!(!err.contains("start it"), "{err}");
    assert_eq!(up.count(), 1, "nothing sent again");

    std::fs::write(
        gw.dir.path().join("admin.token"),
        format!("{}\n", ADMIN_TOKEN.replace('0', "1")),
    )
    .unwrap();
    let (code, out, err) = callgate_cli(&["journal", "redeliver", "--outcome", "unfinished"], &cli);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("the admin API answered 401"), "{err}");
    assert!(!err.contains("start it"), "{err}");
}

/// With the memory store and no gateway answering on the admin address,
/// `journal redeliver` says to start it: only it knows what was delivered.
#[tokio::test(flavor = "multi_thread")]
async fn redelivering_with_the_memory_store_and_no_gateway_says_to_start_it() {
    let up = Upstream::start(Behaviour::Reply(500, "down")).await;
    let gw =
        TestGateway::start_with_admin_token(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    assert_eq!(gw.post_alipay("rsa2_trade_success.form").await.status, 502);
    let cli = gw.cli_config();
    // An admin address nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let running = format!("127.0.0.1:{}", gw.gateway.admin_addr.unwrap().port());
    let text = std::fs::read_to_string(&cli).unwrap();
    assert!(text.contains(&running), "{text}");
    std::fs::write(&cli, text.replace(&running, &format!("127.0.0.1:{closed}"))).unwrap();
    let (code, out, err) = callgate_cli(&["journal", "redeliver", "--route", "shop-alipay"], &cli);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("cannot reach the running gateway"), "{err}");
    assert!(err.contains("start it, then run this again"), "{err}");
    assert_eq!(up.count(), 1, "nothing sent");
}

#[tokio::test]
async fn redelivery_with_the_memory_store_refuses_to_run_on_its_own() {
    let up = Upstream::start(Behaviour::Reply(500, "down")).await;
    let gw = TestGateway::start(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    assert_eq!(gw.post_alipay("rsa2_trade_success.form").await.status, 502);
    up.set(Behaviour::Reply(200, "success"));
    let (code, out, err) = redeliver_alipay_route(&gw);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("admin.token_file"), "{err}");
    assert_eq!(up.count(), 1, "nothing sent");
    // Without a token the endpoint does not exist.
    let r = TestClient::new()
        .send(
            "POST",
            &format!("{}/api/redeliver", gw.admin),
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            br#"{"route":"shop-alipay"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn the_admin_api_wants_the_token() {
    let up = Upstream::start(Behaviour::Reply(500, "down")).await;
    let gw =
        TestGateway::start_with_admin_token(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    assert_eq!(gw.post_alipay("rsa2_trade_success.form").await.status, 502);
    let url = format!("{}/api/redeliver", gw.admin);
    let client = TestClient::new();
    let body = br#"{"route":"shop-alipay","dry_run":true}"#.to_vec();
    let wrong = format!("Bearer {}", ADMIN_TOKEN.replace('0', "1"));
    let short = format!("Bearer {}", &ADMIN_TOKEN[..10]);
    for auth in [
        None,
        Some("Bearer"),
        Some(wrong.as_str()),
        Some(short.as_str()),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let r = client.send("POST", &url, &headers, body.clone()).await;
        assert_eq!(r.status, 401, "{auth:?}");
        assert!(r.headers.contains_key("www-authenticate"));
    }
    let good = format!("Bearer {ADMIN_TOKEN}");
    let r = client
        .send("POST", &url, &[("authorization", &good)], body.clone())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(report["results"][0]["result"], "would redeliver");
    assert_eq!(report["failed"], 0);
    let r = client
        .send("GET", &url, &[("authorization", &good)], vec![])
        .await;
    assert_eq!(r.status, 405);
    let r = client
        .send("POST", &url, &[("authorization", &good)], b"{}".to_vec())
        .await;
    assert_eq!(r.status, 400, "no selector: {}", r.text());
    assert_eq!(up.count(), 1, "a dry run sends nothing");
}

/// The API checks the token read at start, so a token rotated in
/// `admin.token_file` (say, after a leak) and a SIGHUP used to be a reload
/// counted ok while the old token still opened the API and the new one did
/// not. The reload is refused by name now: the operator is told to restart.
#[tokio::test]
async fn a_rotated_admin_token_is_refused_on_reload_not_ignored() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw =
        TestGateway::start_with_admin_token(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    let rotated = ADMIN_TOKEN.replace('0', "1");
    assert_ne!(rotated, ADMIN_TOKEN);
    std::fs::write(gw.dir.path().join("admin.token"), format!("{rotated}\n")).unwrap();
    let answer = gw
        .gateway
        .reload()
        .map(|routes| format!("reloaded ({routes} routes)"))
        .unwrap_or_else(|e| e.to_string());
    assert!(
        answer.contains("admin.token_file cannot change while running; restart callgate"),
        "{answer}"
    );
}

// === drain ===

/// A notification request, written by hand (the platform hangs up after
/// sending it).
fn raw_post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: callgate\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_waits_for_forwards_whose_platform_hung_up() {
    use tokio::io::AsyncWriteExt;
    let permits = Arc::new(Semaphore::new(0));
    let up = Upstream::start(Behaviour::HoldReply(permits.clone(), 200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let config = GatewaySpec::new(vec![RouteSpec::alipay(&up)]).write(dir.path());
    let mut run = GatewayProcess::start(&config);

    let mut tcp = tokio::net::TcpStream::connect(&run.addr).await.unwrap();
    tcp.write_all(&raw_post(
        "/notify/alipay",
        &fixture("alipay", "rsa2_trade_success.form"),
    ))
    .await
    .unwrap();
    up.next().await; // at the shop
    drop(tcp); // the platform gives up waiting
    run.signal("-TERM");
    let line = run.wait_for(|v| {
        v["message"] == "draining: waiting for in-flight forwards"
            || v["message"] == "callgate stopped"
    });
    assert_eq!(
        line["message"], "draining: waiting for in-flight forwards",
        "stopped with the forward still at the shop"
    );
    assert_eq!(line["forwards"], 1);
    permits.add_permits(1);
    let done =
        run.wait_for(|v| v["message"] == "notification" || v["message"] == "callgate stopped");
    assert_eq!(done["outcome"], "forwarded", "{done}");
    run.wait_for(|v| v["message"] == "callgate stopped");
    assert_eq!(run.child.wait().unwrap().code(), Some(0));
    // The journal has the outcome.
    let (arrivals, _) = callgate::journal::arrivals(&dir.path().join("journal")).unwrap();
    assert_eq!(arrivals.len(), 1);
    assert_eq!(
        arrivals[0].outcome.as_ref().map(|o| o.outcome.as_str()),
        Some("forwarded")
    );
}

// === a crash with forwards in flight ===

/// What the slow shop saw: (event id, X-Callgate-Attempt), in order.
type Seen = Arc<std::sync::Mutex<Vec<(String, u32)>>>;

/// A shop that answers every notification after 200 ms, except that from
/// the `hold_from`-th one on it holds them (until the gateway dies) and
/// says so on `reached`.
async fn slow_shop(
    hold_from: usize,
    seen: Seen,
    holding: Arc<AtomicBool>,
    reached: Arc<tokio::sync::Notify>,
) -> String {
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify.php", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (seen, holding, reached, count) = (
                seen.clone(),
                holding.clone(),
                reached.clone(),
                count.clone(),
            );
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (seen, holding, reached, count) = (
                        seen.clone(),
                        holding.clone(),
                        reached.clone(),
                        count.clone(),
                    );
                    async move {
                        let header = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned()
                        };
                        let attempt = header("x-callgate-attempt").parse().unwrap_or(0);
                        seen.lock()
                            .unwrap()
                            .push((header("x-callgate-event-id"), attempt));
                        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                        if n == hold_from {
                            holding.store(true, Ordering::SeqCst);
                            reached.notify_one();
                        }
                        if holding.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            bytes::Bytes::from_static(b"success"),
                        )))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    url
}

/// POSTs a form; `None` when the gateway did not answer (it died).
async fn platform_send(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    url: &str,
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    use http_body_util::BodyExt;
    let req = http::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            body,
        )))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes().to_vec();
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_then_retries_deliver_every_event_and_mark_every_repeat() {
    const EVENTS: usize = 300;
    const CONCURRENCY: usize = 8;
    const HOLD_FROM: usize = 40;
    let seen: Seen = Arc::default();
    let holding = Arc::new(AtomicBool::new(false));
    let reached = Arc::new(tokio::sync::Notify::new());
    let shop = slow_shop(HOLD_FROM, seen.clone(), holding.clone(), reached.clone()).await;
    let route = RouteSpec {
        upstream: shop,
        ..RouteSpec::alipay(&Upstream::start(Behaviour::Reply(200, "success")).await)
    };
    let dir = tempfile::tempdir().unwrap();
    let config = GatewaySpec::new(vec![route]).write(dir.path());
    let bodies = alipay_bodies(EVENTS, "crash");
    let client = Arc::new(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<bytes::Bytes>>(),
    );

    // Phase 1: the platform sends every notification once, 8 at a time;
    // the gateway is killed (SIGKILL) while the shop holds a batch.
    let mut gateway = GatewayProcess::start(&config);
    let url = format!("http://{}/notify/alipay", gateway.addr);
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for body in &bodies {
        let (client, url, body, limit) = (client.clone(), url.clone(), body.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            platform_send(&client, &url, &body).await
        }));
    }
    tokio::time::timeout(Duration::from_secs(120), reached.notified())
        .await
        .expect("the shop never reached the kill point");
    gateway.kill();
    holding.store(false, Ordering::SeqCst);
    let mut acked_before = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Some((200, b)) if b == b"success") {
            acked_before += 1;
        }
    }
    let at_kill = seen.lock().unwrap().len();

    // Phase 2: restart on the same journal; the platform retries every
    // notification until it gets its success ack.
    let gateway = GatewayProcess::start(&config);
    let url = format!("http://{}/notify/alipay", gateway.addr);
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for body in &bodies {
        let (client, url, body, limit) = (client.clone(), url.clone(), body.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            for _ in 0..50 {
                match platform_send(&client, &url, &body).await {
                    Some((200, b)) if b == b"success" => return true,
                    _ => tokio::task::yield_now().await,
                }
            }
            false
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap(), "a notification was never acknowledged");
    }

    let seen = seen.lock().unwrap().clone();
    let mut copies: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (id, attempt) in &seen {
        copies.entry(id.as_str()).or_default().push(*attempt);
    }
    assert_eq!(copies.len(), EVENTS, "every event reached the shop");
    let repeated: Vec<&str> = copies
        .iter()
        .filter(|(_, a)| a.len() > 1)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        !repeated.is_empty(),
        "the kill left no forward in flight: the test proved nothing"
    );
    for (id, attempts) in &copies {
        assert_eq!(attempts[0], 1, "{id}: the first copy is attempt 1");
        for pair in attempts.windows(2) {
            assert!(
                pair[1] > pair[0],
                "{id}: a repeat without a higher X-Callgate-Attempt: {attempts:?}"
            );
        }
    }
    // Counted by the restarted gateway, once per copy marked as a repeat.
    let marked = seen.iter().filter(|(_, a)| *a > 1).count();
    let m = TestClient::new()
        .send(
            "GET",
            &format!("http://{}/metrics", gateway.admin),
            &[],
            vec![],
        )
        .await
        .text();
    assert_eq!(
        find_metric(
            &m,
            "callgate_repeat_deliveries_total",
            &[("route", "shop-alipay")]
        ),
        Some(marked as f64)
    );
    // Listed for the operator: every repeated event had a forward with no
    // recorded outcome.
    let (code, out, err) = callgate_cli(
        &["journal", "list", "--outcome", "unfinished", "--json"],
        &config,
    );
    assert_eq!(code, 0, "{err}");
    let unfinished: HashSet<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for id in &repeated {
        assert!(unfinished.contains(*id), "{id} not listed as unfinished");
    }
    println!(
        "kill -9: {EVENTS} events, {at_kill} shop copies and {acked_before} acks before the kill, {} copies in all, {} events repeated, {marked} copies marked",
        seen.len(),
        repeated.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redelivery_with_redis_and_no_token_runs_on_its_own() {
    let redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Reply(500, "down")).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.store = redis.url();
    let gw = TestGateway::start(spec).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    assert_eq!(gw.post_form("/notify/alipay", &body).await.status, 502);
    up.set(Behaviour::Reply(200, "success"));
    // Redis is shared: the command's own claims are the gateway's too.
    let (code, out, err) = redeliver_alipay_route(&gw);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": forwarded"), "{out}");
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 2);
}

/// With Redis and no admin API, `journal redeliver` runs on its own and
/// writes to the running gateway's journal directory: it opens a file and
/// prunes. It never deletes the file the gateway writes to (each writer
/// holds a `flock` on it). Before, a run whose pruning reached that file
/// deleted it, and every record the gateway wrote afterwards went to a
/// file no longer in the directory: here the next delivery was missing
/// from `journal list` (and, with the memory store, from the next start).
#[tokio::test(flavor = "multi_thread")]
async fn redelivery_on_its_own_never_deletes_the_gateways_journal_file() {
    let redis = RedisServer::start();
    let up = Upstream::start(Behaviour::Reply(500, "down")).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.store = redis.url();
    spec.journal = "dir = \"journal\"\nmax_files = 1\n".into();
    let gw = TestGateway::start(spec).await;
    assert_eq!(gw.post_alipay("rsa2_trade_success.form").await.status, 502);
    up.set(Behaviour::Reply(200, "success"));
    // The command's own file holds one record each: its pruning deletes
    // every file over the bounds that it may.
    let cli = gw.cli_config();
    let text = std::fs::read_to_string(&cli).unwrap().replacen(
        "max_files = 1\n",
        "max_files = 1\nmax_file_bytes = 1\n",
        1,
    );
    std::fs::write(&cli, text).unwrap();
    let (code, out, err) = callgate_cli(&["journal", "redeliver", "--route", "shop-alipay"], &cli);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": forwarded"), "{out}");
    // The gateway goes on journaling to its file.
    assert_eq!(
        gw.post_alipay("rsa2_trade_success_2.form").await.status,
        200
    );
    gw.flush_journal().await;
    let (code, out, err) = callgate_cli(&["journal", "list"], &cli);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2026112200222000000000000000000013"), "{out}");
}

#[test]
fn an_admin_token_must_be_long_and_visible_ascii() {
    for (token, want) in [
        ("xq7Zk\n", "shorter than 16 bytes"),
        (
            "a token with spaces in it\n",
            "visible ASCII without spaces",
        ),
        ("", "the secret file is empty"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = GatewaySpec::new(vec![]).write(dir.path());
        std::fs::write(dir.path().join("admin.token"), token).unwrap();
        let text = std::fs::read_to_string(&file).unwrap().replacen(
            "[admin]\naddr = \"127.0.0.1:0\"\n",
            "[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n",
            1,
        );
        std::fs::write(&file, text).unwrap();
        let err = callgate::config::load(&file).unwrap_err().to_string();
        assert!(err.contains("admin.token_file `admin.token`"), "{err}");
        assert!(err.contains(want), "{token:?}: {err}");
        assert!(!err.contains(token.trim()) || token.trim().is_empty());
    }
}

// === redelivery and the attempt count ===

/// Turns the admin API on in the gateway file `config` (`admin.token_file`).
fn enable_admin_token(config: &std::path::Path) {
    let dir = config.parent().unwrap();
    std::fs::write(dir.join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let text = std::fs::read_to_string(config).unwrap().replacen(
        "[admin]\naddr = \"127.0.0.1:0\"\n",
        "[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n",
        1,
    );
    std::fs::write(config, text).unwrap();
}

/// `POST /api/redeliver` of one event at the admin listener `admin`
/// (`127.0.0.1:PORT`).
async fn api_redeliver(admin: &str, event_id: &str) -> Reply {
    TestClient::new()
        .send(
            "POST",
            &format!("http://{admin}/api/redeliver"),
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            format!("{{\"event_id\":\"{event_id}\"}}").into_bytes(),
        )
        .await
}

fn attempt_of(r: &Received) -> u32 {
    r.headers["x-callgate-attempt"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A redelivery is a forward like any other: its arrival is journaled
/// before the shop sees it. It was not: a `kill -9` while the shop held a
/// redelivered event left no trace of that forward, so after the restart
/// `journal list --outcome unfinished` did not name the event and the
/// platform's retry went out with the very `X-Callgate-Attempt` the
/// redelivery had used (2 twice), telling the shop nothing new.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_cut_short_by_kill_9_is_listed_and_counted_after_the_restart() {
    let up = Upstream::start(Behaviour::Reply(500, "down")).await;
    let dir = tempfile::tempdir().unwrap();
    let config = GatewaySpec::new(vec![RouteSpec::alipay(&up)]).write(dir.path());
    enable_admin_token(&config);
    let body = fixture("alipay", "rsa2_trade_success.form");
    let id = "2026112200222000000000000000000001";
    let post = |addr: String| {
        let body = body.clone();
        async move {
            TestClient::new()
                .send(
                    "POST",
                    &format!("http://{addr}/notify/alipay"),
                    &[("content-type", "application/x-www-form-urlencoded")],
                    body,
                )
                .await
        }
    };

    let mut gateway = GatewayProcess::start(&config);
    assert_eq!(post(gateway.addr.clone()).await.status, 502);
    assert_eq!(attempt_of(&up.next().await), 1);
    // The shop is back but holds the redelivered event; callgate dies.
    up.set(Behaviour::Hang);
    let admin = gateway.admin.clone();
    let redelivery = tokio::spawn(async move { api_redeliver(&admin, id).await });
    assert_eq!(attempt_of(&up.next().await), 2);
    gateway.kill();
    let _ = redelivery.await;

    let gateway = GatewayProcess::start(&config);
    let (code, out, err) = callgate_cli(
        &["journal", "list", "--outcome", "unfinished", "--json"],
        &config,
    );
    assert_eq!(code, 0, "{err}");
    let unfinished: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        unfinished
            .iter()
            .any(|l| l["event_id"] == id && l["attempt"] == 2),
        "the redelivery the shop may have is not listed as unfinished: {out}"
    );
    up.set(Behaviour::Reply(200, "success"));
    let r = post(gateway.addr.clone()).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(
        attempt_of(&up.next().await),
        3,
        "the copy after a redelivery the shop may have processed must say so"
    );
}

/// `X-Callgate-Attempt: 1` promises the shop that callgate never sent the
/// event. A redelivery of an event whose arrivals are older than
/// `replay.ttl` (the shop down over a long weekend, the platform gave up
/// after 25 h) used to say 1: the store had forgotten its attempt count and
/// the journal's own record of the earlier forwards was not consulted.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_counts_the_forwards_the_journal_holds_beyond_replay_ttl() {
    use base64::Engine as _;
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay(&up).with(|r| r.max_age = Some("25h".into()));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    // Three days ago the event was forwarded twice and the shop failed.
    let id = "2026112200222000000000000000000001";
    let then = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 72 * 3600;
    let body = base64::engine::general_purpose::STANDARD
        .encode(fixture("alipay", "rsa2_trade_success.form"));
    let mut lines = String::new();
    for (n, rid) in [(1, "00000000000000a1"), (2, "00000000000000a2")] {
        let at = then + n * 600;
        lines.push_str(
            &serde_json::json!({
                "type": "received", "rid": rid, "unix": at, "route": "shop-alipay",
                "provider": "alipay", "merchant": "2021000000000001", "event_id": id,
                "client": "127.0.0.1",
                "headers": [["content-type", "application/x-www-form-urlencoded"]],
                "body": body, "attempt": n,
            })
            .to_string(),
        );
        lines.push('\n');
        lines.push_str(
            &serde_json::json!({
                "type": "outcome", "rid": rid, "unix": at + 10, "route": "shop-alipay",
                "merchant": "2021000000000001", "event_id": id,
                "outcome": "upstream_timeout", "status": 504,
            })
            .to_string(),
        );
        lines.push('\n');
    }
    std::fs::create_dir_all(dir.path().join("journal")).unwrap();
    std::fs::write(
        dir.path()
            .join("journal/20000101T000000Z-gateway-1-1.jsonl"),
        lines,
    )
    .unwrap();
    let gw = TestGateway::start_edited_in(dir, GatewaySpec::new(vec![route]), |t| {
        *t = t
            .replacen("ttl = \"200100h\"", "ttl = \"48h\"", 1)
            .replacen(
                "[admin]\naddr = \"127.0.0.1:0\"\n",
                "[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n",
                1,
            );
    })
    .await;
    let admin = gw.admin.trim_start_matches("http://").to_owned();
    let r = api_redeliver(&admin, id).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"forwarded\""), "{}", r.text());
    assert_eq!(
        attempt_of(&up.next().await),
        3,
        "the journal shows two earlier forwards"
    );
}

/// A redelivery and the platform's own retry of the same event at the same
/// moment: whichever claims the event first forwards it, the other is
/// refused as in flight (the platform's copy with 409 and its failure ack,
/// the redelivery reported not delivered), and the shop sees the event once.
#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_racing_the_platforms_retry_reaches_the_shop_once() {
    let up = Upstream::start(Behaviour::Reply(500, "down")).await;
    let gw =
        TestGateway::start_with_admin_token(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    let admin = gw.admin.trim_start_matches("http://").to_owned();
    let first = fixture("alipay", "rsa2_trade_success.form");
    let second = fixture("alipay", "rsa2_trade_success_2.form");
    let id = |body: &[u8]| {
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.split('&')
            .find_map(|kv| kv.strip_prefix("notify_id="))
            .unwrap()
            .to_owned()
    };
    for body in [&first, &second] {
        assert_eq!(gw.post_form("/notify/alipay", body).await.status, 502);
        up.next().await;
    }
    let shop = Arc::new(Semaphore::new(0));
    up.set(Behaviour::HoldReply(shop.clone(), 200, "success"));

    // The redelivery holds the first event at the shop; the platform retries.
    let (a, event) = (admin.clone(), id(&first));
    let redelivery = tokio::spawn(async move { api_redeliver(&a, &event).await });
    assert_eq!(attempt_of(&up.next().await), 2);
    let r = gw.post_form("/notify/alipay", &first).await;
    assert_eq!((r.status, r.text().as_str()), (409, "fail"));
    shop.add_permits(1);
    let report = redelivery.await.unwrap();
    assert!(report.text().contains("\"forwarded\""), "{}", report.text());

    // The platform's retry holds the second event at the shop; the operator
    // redelivers it.
    let gw_base = gw.base.clone();
    let platform = tokio::spawn(async move {
        TestClient::new()
            .send(
                "POST",
                &format!("{gw_base}/notify/alipay"),
                &[("content-type", "application/x-www-form-urlencoded")],
                second,
            )
            .await
    });
    assert_eq!(attempt_of(&up.next().await), 2);
    let report = api_redeliver(&admin, &id(&fixture("alipay", "rsa2_trade_success_2.form"))).await;
    let report: serde_json::Value = serde_json::from_slice(&report.body).unwrap();
    assert_eq!(report["results"][0]["ok"], false, "{report}");
    assert_eq!(report["failed"], 1, "{report}");
    shop.add_permits(1);
    assert_eq!(platform.await.unwrap().status, 200);

    // Both delivered once each; every later copy is a duplicate.
    up.set(Behaviour::Reply(200, "success"));
    for body in ["rsa2_trade_success.form", "rsa2_trade_success_2.form"] {
        let r = gw.post_alipay(body).await;
        assert_eq!((r.status, r.text().as_str()), (200, "success"));
    }
    assert_eq!(up.count(), 4, "two failed forwards, then each event once");
}

/// The authentication scheme is case-insensitive (RFC 9110 §11.1): a
/// script that writes `bearer` is not refused, and the token itself still
/// is compared exactly.
#[tokio::test]
async fn the_admin_api_takes_the_bearer_scheme_in_any_case() {
    let up = Upstream::start(Behaviour::Reply(500, "down")).await;
    let gw =
        TestGateway::start_with_admin_token(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    assert_eq!(gw.post_alipay("rsa2_trade_success.form").await.status, 502);
    let url = format!("{}/api/redeliver", gw.admin);
    let body = br#"{"route":"shop-alipay","dry_run":true}"#.to_vec();
    let client = TestClient::new();
    for (auth, want) in [
        (format!("bearer {ADMIN_TOKEN}"), 200),
        (format!("BEARER {ADMIN_TOKEN}"), 200),
        (format!("Bearer {}", ADMIN_TOKEN.to_uppercase()), 401),
        (format!("Bearer  {ADMIN_TOKEN}"), 401),
        (format!("Bearer{ADMIN_TOKEN}"), 401),
    ] {
        let r = client
            .send("POST", &url, &[("authorization", &auth)], body.clone())
            .await;
        assert_eq!(r.status, want, "{auth}: {}", r.text());
    }
}

/// A journal damaged where a crash or a power cut stopped a write (a line
/// cut short at the end of the file), or by the disk (a line of invalid
/// UTF-8, garbage): a restart reads every whole record around them (the
/// event delivered before is still a duplicate) and its log says how many
/// lines it could not read, instead of dropping them silently: a skipped
/// outcome makes a delivered event look unfinished.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_journal_is_read_around_and_the_start_says_so() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let config = GatewaySpec::new(vec![RouteSpec::alipay(&up)]).write(dir.path());
    let body = fixture("alipay", "rsa2_trade_success.form");
    let client = TestClient::new();
    let form = [("content-type", "application/x-www-form-urlencoded")];

    let mut gateway = GatewayProcess::start(&config);
    let url = format!("http://{}/notify/alipay", gateway.addr);
    let r = client.send("POST", &url, &form, body.clone()).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    gateway.signal("-TERM");
    assert!(gateway.child.wait().unwrap().success());

    // A file per worker: the one that served the notification.
    let files = callgate::journal::journal_files(&dir.path().join("journal"));
    let holding: Vec<_> = files
        .iter()
        .filter(|f| std::fs::read_to_string(f).unwrap().contains("\"received\""))
        .collect();
    let [file] = holding.as_slice() else {
        panic!("one journal file with the arrival expected: {files:?}")
    };
    let mut damage = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    damage
        .write_all(b"{\"type\":\"received\",\"rid\":\"\xff\xfe\"}\n")
        .unwrap();
    damage.write_all(b"\x00\x00garbage\n").unwrap();
    damage
        .write_all(b"{\"type\":\"outcome\",\"rid\":\"0123")
        .unwrap();
    drop(damage);

    let gateway = GatewayProcess::start(&config);
    let warned: Vec<&String> = gateway
        .seen
        .iter()
        .filter(|l| l.contains("journal lines"))
        .collect();
    assert_eq!(warned.len(), 1, "{:#?}", gateway.seen);
    let line: serde_json::Value = serde_json::from_str(warned[0]).unwrap();
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["lines"], 3, "{line}");
    let url = format!("http://{}/notify/alipay", gateway.addr);
    let r = client.send("POST", &url, &form, body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1, "the delivered event is still known");
}

/// A file-size limit (`ulimit -f`, systemd `LimitFSIZE=`) reached by a
/// journal write: the kernel sends SIGXFSZ, whose default kills the
/// process mid-request (the platform sees its connection closed, every
/// other notification in flight with it). callgate refuses the
/// notification it cannot journal with 503 and its failure ack instead, as
/// for a full disk, and keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_size_limit_reached_by_the_journal_refuses_and_keeps_serving() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let config = GatewaySpec::new(vec![RouteSpec::alipay(&up)]).write(dir.path());
    let mut gateway = GatewayProcess::start_under_ulimit(&config, "-f 16");
    let url = format!("http://{}/notify/alipay", gateway.addr);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut answers = Vec::new();
    // 16 KiB hold about ten notifications and their outcomes.
    for body in alipay_bodies(60, "fsize") {
        let answer = platform_send(&client, &url, &body).await;
        let delivered = matches!(&answer, Some((200, _)));
        answers.push(answer);
        if !delivered {
            break;
        }
    }
    assert!(
        matches!(answers.last(), Some(Some((503, b))) if b == b"fail"),
        "{answers:?}"
    );
    assert!(
        gateway.child.try_wait().unwrap().is_none(),
        "the gateway died: {answers:?}"
    );
    assert_eq!(up.count(), answers.len() - 1);
}

/// A genuine Alipay trade notification `notify_id`, signed RSA2 by the
/// openssl CLI.
fn alipay_openssl_trade(notify_id: &str) -> Vec<u8> {
    alipay_openssl(&[
        ("app_id", "2021000000000001"),
        ("charset", "utf-8"),
        ("gmt_create", "2026-11-22 09:59:00"),
        ("notify_id", notify_id),
        ("notify_time", "2026-11-22 10:00:00"),
        ("notify_type", "trade_status_sync"),
        ("out_trade_no", &format!("CG-{notify_id}")),
        ("subject", "order"),
        ("total_amount", "10.00"),
        ("trade_no", &format!("20261122220014{notify_id}")),
        ("trade_status", "TRADE_SUCCESS"),
        ("version", "1.0"),
    ])
}

/// A journal too small for `replay.ttl` of traffic (`max_files ×
/// max_file_bytes`): files still younger than `replay.ttl` are deleted, and
/// with the memory store a restart no longer knows the deliveries they
/// held, so a platform's retry of one reaches the shop again. Before,
/// nothing said so: now each deletion logs a WARN and counts
/// `callgate_journal_pruned_within_ttl_total`, and the next start says up
/// to when deliveries are not remembered.
#[tokio::test(flavor = "multi_thread")]
async fn a_journal_pruned_within_replay_ttl_says_so_then_and_at_the_next_start() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    // Every record opens a new file; two are kept.
    spec.journal = "dir = \"journal\"\nmax_file_bytes = 1\nmax_files = 2\n".into();
    // One worker, so one journal file is written at a time. With two, each
    // worker holds its own current file open, and pruning passes over a
    // file held open: when the first notification's connection went to
    // the worker that served nothing after it, its records were still in
    // that worker's current file, and the retry after the restart was a
    // duplicate (seen under a loaded `cargo test`, 2 runs in 32).
    spec.workers = Some(1);
    let config = spec.write(dir.path());
    let bodies: Vec<Vec<u8>> = (1..=3)
        .map(|i| alipay_openssl_trade(&format!("pruned{i:04}")))
        .collect();
    let client = TestClient::new();
    let form = [("content-type", "application/x-www-form-urlencoded")];

    let mut gateway = GatewayProcess::start(&config);
    let url = format!("http://{}/notify/alipay", gateway.addr);
    for body in &bodies {
        let r = client.send("POST", &url, &form, body.clone()).await;
        assert_eq!((r.status, r.text().as_str()), (200, "success"));
    }
    let warned = gateway.wait_for(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("younger than replay.ttl was deleted"))
    });
    assert_eq!(warned["level"], "WARN", "{warned}");
    assert_eq!(warned["store"], "memory", "{warned}");
    let message = warned["message"].as_str().unwrap();
    assert!(message.contains("forwarded again"), "{warned}");
    assert!(message.contains("raise journal.max_files"), "{warned}");
    let metrics = client
        .send(
            "GET",
            &format!("http://{}/metrics", gateway.admin),
            &[],
            vec![],
        )
        .await
        .text();
    let pruned = find_metric(&metrics, "callgate_journal_pruned_within_ttl_total", &[]);
    assert!(pruned.is_some_and(|n| n >= 1.0), "{pruned:?}");
    gateway.signal("-TERM");
    assert!(gateway.child.wait().unwrap().success());

    let gateway = GatewayProcess::start(&config);
    let forgotten: Vec<serde_json::Value> = gateway
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["forgotten_through"].is_string())
        .collect();
    assert_eq!(forgotten.len(), 1, "{:#?}", gateway.seen);
    assert_eq!(forgotten[0]["level"], "WARN", "{}", forgotten[0]);
    let through = forgotten[0]["forgotten_through"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(through).unwrap();
    // What the warnings said: the first event's delivery was in a file
    // deleted, and its retry reaches the shop again.
    let url = format!("http://{}/notify/alipay", gateway.addr);
    let r = client.send("POST", &url, &form, bodies[0].clone()).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 4);
}

/// Starts within `replay.ttl` (frequent deploys, a crash loop) each open a
/// journal file that holds little. Before, `max_files` of them deleted the
/// file holding a delivery while it was younger than `replay.ttl`, and the
/// platform's retry after the next start reached the shop again. Files the
/// byte bound (`max_files × max_file_bytes`) has room for are now kept
/// while younger than `replay.ttl`: the retry is a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn starts_within_replay_ttl_do_not_forget_what_was_delivered() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.journal = "dir = \"journal\"\nmax_files = 2\n".into();
    let config = spec.write(dir.path());
    let body = alipay_openssl_trade("restarts0001");
    let client = TestClient::new();
    let form = [("content-type", "application/x-www-form-urlencoded")];

    let mut gateway = GatewayProcess::start(&config);
    let url = format!("http://{}/notify/alipay", gateway.addr);
    let r = client.send("POST", &url, &form, body.clone()).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
    gateway.signal("-TERM");
    assert!(gateway.child.wait().unwrap().success());
    let jsonl = || callgate::journal::journal_files(&dir.path().join("journal")).len();
    // A file per worker.
    let per_start = jsonl();
    assert!(per_start >= 1);
    // Three more starts, each opening its files: at least four files, two
    // over max_files.
    for _ in 0..3 {
        let mut gateway = GatewayProcess::start(&config);
        gateway.signal("-TERM");
        assert!(gateway.child.wait().unwrap().success());
    }

    let gateway = GatewayProcess::start(&config);
    let url = format!("http://{}/notify/alipay", gateway.addr);
    let r = client.send("POST", &url, &form, body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(
        up.count(),
        1,
        "the retry is a duplicate, not delivered again"
    );
    assert_eq!(jsonl(), 5 * per_start, "the same each start, none deleted");
}
