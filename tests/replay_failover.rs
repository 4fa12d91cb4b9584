//! The replay store through a Redis failover: a Sentinel deployment and a
//! Redis Cluster (real `redis-server` and `redis-sentinel` processes on
//! loopback ports), two gateways sharing it, a steady stream of genuine
//! Alipay notifications and the platform's retries, and the master killed
//! (SIGKILL) mid-stream. At the end every event reached the shop, and
//! every repeat carries `X-Callgate-Attempt` above 1; while no master was
//! reachable the gateways answered with the store-down 503 (counted and
//! printed with the other figures).

#[path = "support/redis_topology.rs"]
mod redis_topology;
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis_topology::{ClusterDeployment, MASTER_NAME, SentinelDeployment};
use support::*;

const APP_ID: &str = "2021000000000001";

/// What the stream saw.
#[derive(Debug, Default)]
struct Figures {
    events: usize,
    /// Notifications sent (first copies, retries, repeats of delivered ones).
    sent: usize,
    /// 503 answers (store down, fail closed).
    refused: usize,
    /// 409 answers (in flight elsewhere).
    in_flight: usize,
    /// From the kill to the last 503.
    refused_for: Duration,
    /// Forwards beyond the first per event (each carries attempt > 1).
    repeats: usize,
}

/// Sends `events` distinct genuine notifications through `gws` (the first
/// copy alternating between them), each retried as a platform would until
/// it is acknowledged with 200, and each acknowledged one sent once more to
/// the other gateway (a retry crossing the ack). `kill` runs once
/// `kill_after` events were acknowledged. Checks the shop's side.
async fn stream(
    gws: [Arc<TestGateway>; 2],
    up: &Upstream,
    tag: &str,
    events: usize,
    kill_after: usize,
    kill: impl FnOnce() + Send + 'static,
) -> Figures {
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..events)
            .map(|i| {
                alipay_signed(&[
                    ("app_id", APP_ID),
                    ("notify_id", &format!("{tag}{i:05}")),
                    ("out_trade_no", &format!("{tag}-{i:05}")),
                ])
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let killed_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let last_refused: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let kill_now = Arc::new(tokio::sync::Notify::new());
    let killer = {
        let (kill_now, killed_at) = (kill_now.clone(), killed_at.clone());
        tokio::spawn(async move {
            kill_now.notified().await;
            *killed_at.lock().unwrap() = Some(Instant::now());
            tokio::task::spawn_blocking(kill).await.unwrap();
        })
    };
    let (sent, refused, in_flight) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (gws, bodies, next, acked) = (gws.clone(), bodies.clone(), next.clone(), acked.clone());
        let (sent, refused, in_flight) = (sent.clone(), refused.clone(), in_flight.clone());
        let (kill_now, last_refused) = (kill_now.clone(), last_refused.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= bodies.len() {
                    return;
                }
                // The first copy, then the platform's retries until 200,
                // then one more copy of the delivered event elsewhere.
                let mut attempt = 0usize;
                let mut delivered = false;
                loop {
                    let gw = &gws[(i + attempt) % 2];
                    attempt += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    let r = gw.post_form("/notify/alipay", &bodies[i]).await;
                    match r.status {
                        200 if delivered => break,
                        200 => {
                            delivered = true;
                            if acked.fetch_add(1, Ordering::Relaxed) + 1 == kill_after {
                                kill_now.notify_one();
                            }
                        }
                        503 => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            *last_refused.lock().unwrap() = Some(Instant::now());
                            // The platform's retry interval.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        409 => {
                            in_flight.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        s => panic!("event {i}: unexpected {s}: {}", r.text()),
                    }
                    assert!(attempt < 2000, "event {i} never acknowledged");
                }
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(120), async {
        for w in workers {
            w.await.unwrap();
        }
        killer.await.unwrap();
    })
    .await
    .expect("the stream ends (bounded)");

    // The shop's side: every event, and every forward after the first
    // marked as a repeat (attempt above 1).
    let mut seen: HashMap<String, Vec<u32>> = HashMap::new();
    for r in up.received() {
        let id = r.headers["x-callgate-event-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let attempt = r.headers["x-callgate-attempt"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        seen.entry(id).or_default().push(attempt);
    }
    assert_eq!(seen.len(), events, "every event reached the shop");
    let mut repeats = 0;
    for (id, attempts) in &seen {
        // A forward with attempt 1 is the only one the shop may take for
        // new; a claim that failed before its forward (the master died)
        // makes the next forward attempt 2 without a repeat.
        let unmarked = attempts.iter().filter(|a| **a == 1).count();
        assert!(
            unmarked <= 1,
            "{id}: forwarded as attempt 1 {unmarked} times: {attempts:?}"
        );
        repeats += attempts.len() - 1;
    }
    let killed = killed_at.lock().unwrap().expect("the master was killed");
    Figures {
        events,
        sent: sent.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        in_flight: in_flight.load(Ordering::Relaxed),
        refused_for: last_refused
            .lock()
            .unwrap()
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(killed)),
        repeats,
    }
}

/// One Alipay route on `up`, its replay store the Sentinel deployment.
fn sentinel_spec(redis: &SentinelDeployment, up: &Upstream) -> GatewaySpec {
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(up)]);
    spec.store = "sentinel".into();
    spec.replay_extra = format!(
        "sentinels = {:?}\nmaster_name = \"{MASTER_NAME}\"\n",
        redis.sentinel_addrs()
    );
    spec
}

async fn metric_of(gw: &TestGateway, name: &str) -> f64 {
    gw.metric(name, &[]).await.unwrap_or(-2.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn sentinel_failover_keeps_every_event_once_and_fails_closed_while_no_master() {
    let mut redis = tokio::task::spawn_blocking(SentinelDeployment::start)
        .await
        .unwrap();
    let old = redis.master_port().unwrap();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let spec = sentinel_spec(&redis, &up);
    let a = Arc::new(TestGateway::start(spec.clone()).await);
    let b = Arc::new(TestGateway::start(spec).await);
    wait_ready(&a, 200).await;
    wait_ready(&b, 200).await;
    let ready = a.get_admin("/readyz").await.text();
    assert!(
        ready.contains(&format!(
            "store: sentinel master=127.0.0.1:{old} replicas=2"
        )),
        "{ready}"
    );

    let killer = redis
        .servers
        .iter_mut()
        .find(|n| n.port == old)
        .unwrap()
        .killer();
    let started = Instant::now();
    let f = stream([a.clone(), b.clone()], &up, "sen", 240, 60, killer).await;
    let took = started.elapsed();
    let new = redis.wait_new_master(old);
    assert_ne!(new, old);

    // Both gateways follow the new master and say so.
    for gw in [&a, &b] {
        wait_ready(gw, 200).await;
        let ready = gw.get_admin("/readyz").await.text();
        assert!(
            ready.contains(&format!("master=127.0.0.1:{new}")),
            "{ready}"
        );
        assert!(metric_of(gw, "callgate_replay_store_failovers_total").await >= 1.0);
        assert!(metric_of(gw, "callgate_replay_store_last_failover_timestamp_seconds").await > 0.0);
        assert_eq!(
            gw.metric(
                "callgate_replay_store_topology_info",
                &[
                    ("kind", "sentinel"),
                    ("master", &format!("127.0.0.1:{new}"))
                ]
            )
            .await,
            Some(1.0)
        );
    }
    let unreplicated = metric_of(&a, "callgate_replay_store_unreplicated_total").await
        + metric_of(&b, "callgate_replay_store_unreplicated_total").await;
    println!(
        "sentinel failover: {} events, {} sent, {} refused (503) for {:?} after the kill, {} in flight (409), {} repeats (all attempt > 1), {} unreplicated markers, stream {:?}",
        f.events, f.sent, f.refused, f.refused_for, f.in_flight, f.repeats, unreplicated, took
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_failover_keeps_every_event_once_and_fails_closed_while_no_master() {
    let mut redis = tokio::task::spawn_blocking(ClusterDeployment::start)
        .await
        .unwrap();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.store = "cluster".into();
    spec.replay_extra = format!("cluster = {:?}\n", redis.seeds());
    let a = Arc::new(TestGateway::start(spec.clone()).await);
    let b = Arc::new(TestGateway::start(spec).await);
    wait_ready(&a, 200).await;
    wait_ready(&b, 200).await;
    let ready = a.get_admin("/readyz").await.text();
    assert!(ready.contains("store: cluster master="), "{ready}");

    // Every primary's maxmemory-policy counts: one that can evict is
    // enough to refuse, and it is named.
    let evicting = *redis.masters().last().unwrap();
    let set_policy = |p: &str| {
        redis_topology::ask::<String>(evicting, &["CONFIG", "SET", "maxmemory-policy", p])
            .expect("CONFIG SET")
    };
    set_policy("allkeys-lru");
    wait_ready(&a, 503).await;
    let unsafe_ = a.get_admin("/readyz").await.text();
    assert!(
        unsafe_.contains("allkeys-lru") && unsafe_.contains(&format!("node 127.0.0.1:{evicting}")),
        "{unsafe_}"
    );
    set_policy("noeviction");
    wait_ready(&a, 200).await;

    let old = redis.master_of_slot_zero();
    let killer = redis
        .nodes
        .iter_mut()
        .find(|n| n.port == old)
        .unwrap()
        .killer();
    let started = Instant::now();
    let f = stream([a.clone(), b.clone()], &up, "clu", 240, 60, killer).await;
    let took = started.elapsed();
    let new = redis.wait_promoted(old);

    for gw in [&a, &b] {
        wait_ready(gw, 200).await;
        let ready = gw.get_admin("/readyz").await.text();
        assert!(ready.contains(&format!("127.0.0.1:{new}")), "{ready}");
        assert!(metric_of(gw, "callgate_replay_store_failovers_total").await >= 1.0);
    }
    let unreplicated = metric_of(&a, "callgate_replay_store_unreplicated_total").await
        + metric_of(&b, "callgate_replay_store_unreplicated_total").await;
    println!(
        "cluster failover: {} events, {} sent, {} refused (503) for {:?} after the kill, {} in flight (409), {} repeats (all attempt > 1), {} unreplicated markers, stream {:?}",
        f.events, f.sent, f.refused, f.refused_for, f.in_flight, f.repeats, unreplicated, took
    );
}

// === configuration ===

/// Loads a gateway whose `[replay]` is `store` plus `extra` lines; the
/// errors as `callgate check` prints them.
fn replay_errors(store: &str, extra: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("redis.pass"), "s3cret\n").unwrap();
    let mut spec = GatewaySpec::new(vec![]);
    spec.store = store.into();
    spec.replay_extra = extra.into();
    let file = spec.write(dir.path());
    let text = std::fs::read_to_string(&file).unwrap();
    let errors = match callgate::config::load(&file) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    (text, errors)
}

/// `callgate.toml:N:` for the line of `text` holding `needle`.
fn at(text: &str, needle: &str) -> String {
    let n = text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in the file"));
    format!("callgate.toml:{}:", n + 1)
}

#[test]
fn sentinel_and_cluster_settings_are_checked_with_file_and_line() {
    for (what, store, extra, line, want) in [
        (
            "sentinel without sentinels",
            "sentinel",
            "master_name = \"cg\"\n",
            "store = ",
            "replay.sentinels: store = \"sentinel\" needs the sentinels' addresses",
        ),
        (
            "sentinel without a name",
            "sentinel",
            "sentinels = [\"127.0.0.1:26379\"]\n",
            "store = ",
            "replay.master_name: store = \"sentinel\" needs the name",
        ),
        (
            "a sentinel that is no host:port",
            "sentinel",
            "sentinels = [\"127.0.0.1\"]\nmaster_name = \"cg\"\n",
            "sentinels = ",
            "replay.sentinels: `127.0.0.1` is not host:port",
        ),
        (
            "cluster seeds with another store",
            "memory",
            "cluster = [\"redis://127.0.0.1:7000\"]\n",
            "cluster = ",
            "replay.cluster: only used with store = \"cluster\"",
        ),
        (
            "a seed that is no redis URL",
            "cluster",
            "cluster = [\"http://127.0.0.1:7000\"]\n",
            "cluster = ",
            "replay.cluster: `http://127.0.0.1:7000`: not a redis:// or rediss:// URL",
        ),
        (
            "cluster without seeds",
            "cluster",
            "",
            "store = ",
            "replay.cluster: store = \"cluster\" needs seed node URLs",
        ),
        (
            "a password file that is not there",
            "cluster",
            "cluster = [\"redis://127.0.0.1:7000\"]\npassword_file = \"nope.pass\"\n",
            "password_file = ",
            "replay.password_file `nope.pass`: cannot read the secret file",
        ),
        (
            "sentinel TLS with a URL store",
            "redis://127.0.0.1:6379/0",
            "sentinel_tls = true\n",
            "sentinel_tls = ",
            "replay.sentinel_tls: only used with store = \"sentinel\"",
        ),
        (
            "a WAIT as long as the command bound",
            "cluster",
            "cluster = [\"redis://127.0.0.1:7000\"]\nwait_timeout = \"500ms\"\n",
            "wait_timeout = ",
            "replay.wait_timeout: 500ms is not below replay.timeout (500ms)",
        ),
        (
            "a WAIT with the memory store",
            "memory",
            "wait_replicas = 1\n",
            "wait_replicas = ",
            "replay.wait_replicas: only used with a Redis store",
        ),
    ] {
        let (text, errors) = replay_errors(store, extra);
        let want = format!("{} {want}", at(&text, line));
        assert!(
            errors.contains(&want),
            "{what}: expected `{want}` in\n{errors}"
        );
    }
}

#[test]
fn a_sentinel_and_a_cluster_deployment_load_from_the_gateway_file_alone() {
    let (_, errors) = replay_errors(
        "sentinel",
        "sentinels = [\"127.0.0.1:26379\", \"127.0.0.1:26380\"]\nmaster_name = \"cg\"\n\
         username = \"callgate\"\npassword_file = \"redis.pass\"\nsentinel_password_file = \"redis.pass\"\n",
    );
    assert_eq!(errors, "");
    // `callgate check --dump` shows the deployment, never the password.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("redis.pass"), "s3cret\n").unwrap();
    let mut spec = GatewaySpec::new(vec![]);
    spec.store = "sentinel".into();
    spec.replay_extra =
        "sentinels = [\"127.0.0.1:26379\"]\nmaster_name = \"cg\"\npassword_file = \"redis.pass\"\n"
            .into();
    let file = spec.write(dir.path());
    let (code, out, _) = callgate_cli(&["check", "--dump"], &file);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("store = \"sentinel\""), "{out}");
    assert!(out.contains("sentinels = [\"127.0.0.1:26379\"]"), "{out}");
    assert!(out.contains("master_name = \"cg\""), "{out}");
    assert!(out.contains("wait_replicas = 1"), "{out}");
    assert!(!out.contains("s3cret"), "{out}");
    let (_, errors) = replay_errors(
        "cluster",
        "cluster = [\"redis://127.0.0.1:7000\"]\npassword_file = \"redis.pass\"\nwait_replicas = 0\n",
    );
    assert_eq!(errors, "");
}

// === WAIT and unreplicated markers ===

fn online_replicas(master: u16) -> usize {
    redis_topology::ask::<String>(master, &["INFO", "replication"])
        .map_or(0, |i| i.matches("state=online").count())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_marker_no_replica_acknowledged_is_delivered_counted_and_still_a_duplicate() {
    let master = RedisServer::start();
    let port = master.port.to_string();
    let mut replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    redis_topology::poll_until("replica online", Duration::from_secs(20), || {
        online_replicas(master.port) == 1
    });
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.store = master.url();
    // A bound long enough that a busy machine's replica still answers in
    // time: the first event must be acknowledged by it.
    spec.replay_timeout = "5s".into();
    spec.replay_extra = "wait_replicas = 1\nwait_timeout = \"3s\"\n".into();
    let gw = TestGateway::start(spec).await;
    wait_ready(&gw, 200).await;
    let ready = gw.get_admin("/readyz").await.text();
    assert!(
        ready.contains("store: redis master=- replicas=1"),
        "{ready}"
    );
    let event =
        |id: &str| alipay_signed(&[("app_id", APP_ID), ("notify_id", id), ("out_trade_no", id)]);

    // A replica acknowledges the marker.
    assert_eq!(
        gw.post_form("/notify/alipay", &event("w1")).await.status,
        200
    );
    assert_eq!(
        metric_of(&gw, "callgate_replay_store_replicas_acked").await,
        1.0
    );
    assert_eq!(
        metric_of(&gw, "callgate_replay_store_unreplicated_total").await,
        0.0
    );

    // No replica left: the event is still answered as delivered (the shop
    // has it), counted, and its copy is a duplicate.
    replica.kill();
    redis_topology::poll_until("replica gone", Duration::from_secs(20), || {
        online_replicas(master.port) == 0
    });
    assert_eq!(
        gw.post_form("/notify/alipay", &event("w2")).await.status,
        200
    );
    assert_eq!(
        metric_of(&gw, "callgate_replay_store_replicas_acked").await,
        0.0
    );
    assert_eq!(
        metric_of(&gw, "callgate_replay_store_unreplicated_total").await,
        1.0
    );
    let again = gw.post_form("/notify/alipay", &event("w2")).await;
    assert_eq!((again.status, again.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 2, "the copy was not forwarded");
    // /readyz reads the topology again; the markers after it skip the WAIT
    // and are counted without waiting.
    wait_ready(&gw, 200).await;
    assert!(
        gw.get_admin("/readyz")
            .await
            .text()
            .contains("replicas=0 replicas_acked=0 wait_replicas=1 unreplicated=1"),
    );
    assert_eq!(
        gw.post_form("/notify/alipay", &event("w3")).await.status,
        200
    );
    assert_eq!(
        metric_of(&gw, "callgate_replay_store_unreplicated_total").await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_sentinel_master_that_can_evict_is_refused_without_a_readiness_probe() {
    let mut redis = tokio::task::spawn_blocking(SentinelDeployment::start)
        .await
        .unwrap();
    let old = redis.master_port().unwrap();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let spec = sentinel_spec(&redis, &up);
    let gw = TestGateway::start(spec).await;
    wait_ready(&gw, 200).await;
    let event =
        |id: &str| alipay_signed(&[("app_id", APP_ID), ("notify_id", id), ("out_trade_no", id)]);
    assert_eq!(
        gw.post_form("/notify/alipay", &event("p1")).await.status,
        200
    );

    // Whichever replica is promoted can evict.
    for r in redis.servers.iter().filter(|n| n.port != old) {
        redis_topology::ask::<String>(
            r.port,
            &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"],
        )
        .expect("CONFIG SET");
    }
    let kill = redis
        .servers
        .iter_mut()
        .find(|n| n.port == old)
        .unwrap()
        .killer();
    tokio::task::spawn_blocking(kill).await.unwrap();
    let new = tokio::task::spawn_blocking(move || {
        let new = redis.wait_new_master(old);
        (new, redis)
    })
    .await
    .unwrap();
    // Notifications only (no /readyz in between): once the new master is
    // found, its policy is read before the first claim on it.
    let body = event("p2");
    let mut answers = Vec::new();
    for _ in 0..300 {
        let r = gw.post_form("/notify/alipay", &body).await;
        answers.push(r.status);
        if gw
            .rejections("shop-alipay", "alipay", "store_evicting")
            .await
            >= 1.0
        {
            break;
        }
        assert_ne!(
            r.status, 200,
            "delivered through an evicting master {}",
            new.0
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gw.rejections("shop-alipay", "alipay", "store_evicting")
            .await
            >= 1.0,
        "never refused as evicting: {answers:?}"
    );
    assert_eq!(up.count(), 1);
}

#[test]
fn a_sentinel_whose_port_is_taken_before_it_binds_starts_again_on_another() {
    // The race forced: the first port picked for the sentinel is bound by
    // another socket before the sentinel binds it, as another test's
    // server can. It must come up on a new port, not leave the deployment
    // waiting out its bound for a sentinel that exited.
    let dir = tempfile::tempdir().unwrap();
    let thief = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = thief.local_addr().unwrap().port();
    let mut first = Some(taken);
    let picked = std::cell::Cell::new(0);
    let node = redis_topology::sentinel(dir.path(), 1, || {
        picked.set(picked.get() + 1);
        first.take().unwrap_or_else(redis_topology::free_port)
    });
    assert_ne!(node.port, taken);
    assert_eq!(picked.get(), 2, "one more try than the port taken");
    assert_eq!(
        redis_topology::ask::<String>(node.port, &["PING"]).as_deref(),
        Some("PONG")
    );
    drop(thief);
}
