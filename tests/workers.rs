//! Thread per core: `listen.workers` threads, each with its own listening
//! socket and event loop, serve one gateway. Every worker takes
//! notifications, a reload reaches every worker, and a drain waits for
//! forwards in flight on every worker.

mod support;

use std::sync::Arc;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const WORKERS: usize = 2;

/// Most fresh connections a test opens while waiting for the kernel to
/// hand one to every worker. `SO_REUSEPORT` picks a worker by a hash of
/// the connection's addresses, so each connection misses a given worker
/// with probability 1/2: 256 of them all missing it is 2^-256.
const MAX_CONNECTIONS: usize = 256;

/// A gateway with `listen.workers = WORKERS`.
async fn gateway(spec: GatewaySpec) -> TestGateway {
    TestGateway::start_edited(spec, |t| {
        *t = t.replacen(
            "[listen]\naddr = \"127.0.0.1:0\"\n",
            &format!("[listen]\naddr = \"127.0.0.1:0\"\nworkers = {WORKERS}\n"),
            1,
        );
    })
    .await
}

/// Requests read so far by each worker.
async fn per_worker(gw: &TestGateway) -> Vec<f64> {
    let mut counts = Vec::with_capacity(WORKERS);
    for w in 0..WORKERS {
        let n = gw
            .metric(
                "callgate_worker_requests_total",
                &[("worker", &w.to_string())],
            )
            .await
            .unwrap_or(0.0);
        counts.push(n);
    }
    counts
}

/// Sends one request on a new connection and returns the status code.
async fn status_on_new_connection(gw: &TestGateway, method: &str, path: &str) -> u16 {
    let mut tcp = TcpStream::connect(gw.gateway.addr).await.unwrap();
    tcp.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: callgate\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"))
}

#[tokio::test]
async fn every_worker_serves_notifications() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    let mut counts = per_worker(&gw).await;
    assert_eq!(counts, vec![0.0; WORKERS], "{counts:?}");
    for _ in 0..MAX_CONNECTIONS {
        assert_eq!(status_on_new_connection(&gw, "GET", "/nowhere").await, 404);
        counts = per_worker(&gw).await;
        if counts.iter().all(|&n| n > 0.0) {
            break;
        }
    }
    assert!(
        counts.iter().all(|&n| n > 0.0),
        "a worker served nothing: {counts:?}"
    );
    // Each request is counted by exactly one worker.
    let total: f64 = counts.iter().sum();
    assert_eq!(
        total,
        gw.metric(
            "callgate_requests_total",
            &[("route", "-"), ("provider", "-"), ("outcome", "not_found")]
        )
        .await
        .unwrap()
    );
}

#[tokio::test]
async fn a_reload_reaches_every_worker() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    assert_eq!(status_on_new_connection(&gw, "GET", "/moved").await, 404);
    let rules = gw.dir.path().join("rules/routes.toml");
    let text = std::fs::read_to_string(&rules).unwrap();
    std::fs::write(&rules, text.replace("\"/notify/alipay\"", "\"/moved\"")).unwrap();
    gw.gateway.reload().unwrap();
    let before = per_worker(&gw).await;
    let mut after = before.clone();
    for _ in 0..MAX_CONNECTIONS {
        // The route exists now on whichever worker takes the connection:
        // a GET is refused by method, not by path.
        assert_eq!(status_on_new_connection(&gw, "GET", "/moved").await, 405);
        assert_eq!(
            status_on_new_connection(&gw, "GET", "/notify/alipay").await,
            404
        );
        after = per_worker(&gw).await;
        if after.iter().zip(&before).all(|(a, b)| a > b) {
            break;
        }
    }
    assert!(
        after.iter().zip(&before).all(|(a, b)| a > b),
        "a worker saw no request after the reload: {before:?} -> {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_waits_for_forwards_in_flight_on_every_worker() {
    let permits = Arc::new(Semaphore::new(0));
    let up = Upstream::start(Behaviour::HoldReply(permits.clone(), 200, "success")).await;
    let gw = gateway(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    // Forwards held at the shop until every worker has at least one; each
    // platform hangs up once its notification is at the shop.
    let mut held = 0;
    for i in 0..MAX_CONNECTIONS {
        let body = alipay_signed(&[
            ("app_id", "2021000000000001"),
            ("notify_id", &format!("drain{i:05}")),
            ("out_trade_no", &format!("drain-order-{i:05}")),
        ]);
        let mut tcp = TcpStream::connect(gw.gateway.addr).await.unwrap();
        let mut req = format!(
            "POST /notify/alipay HTTP/1.1\r\nHost: callgate\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        tcp.write_all(&req).await.unwrap();
        up.next().await;
        drop(tcp);
        held += 1;
        if per_worker(&gw).await.iter().all(|&n| n > 0.0) {
            break;
        }
    }
    let counts = per_worker(&gw).await;
    assert!(counts.iter().all(|&n| n > 0.0), "{counts:?}");
    let TestGateway {
        dir, gateway, base, ..
    } = gw;
    let drain = tokio::spawn(gateway.shutdown());
    // Every worker has stopped accepting: the port refuses connections.
    // A reset is not that: a connection queued at one worker's listener as
    // it closes is reset while the other workers' listeners still accept.
    let addr = base.trim_start_matches("http://").to_owned();
    for _ in 0..100_000 {
        if TcpStream::connect(&addr)
            .await
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        TcpStream::connect(&addr).await.is_err(),
        "still accepting while draining"
    );
    assert!(!drain.is_finished(), "the drain ended with forwards held");
    permits.add_permits(held);
    drain.await.unwrap();
    assert_eq!(up.count(), held);
    let (arrivals, _) = callgate::journal::arrivals(&dir.path().join("journal")).unwrap();
    assert_eq!(arrivals.len(), held);
    for a in &arrivals {
        assert_eq!(
            a.outcome.as_ref().map(|o| o.outcome.as_str()),
            Some("forwarded"),
            "every held forward finished and was journaled"
        );
    }
}

/// The gateway file of `spec` with `workers` under `[listen]`; returns the
/// file and the line `workers` is on.
fn with_workers(
    dir: &std::path::Path,
    spec: &GatewaySpec,
    workers: &str,
) -> (std::path::PathBuf, usize) {
    let file = spec.write(dir);
    let text = std::fs::read_to_string(&file).unwrap();
    let (head, tail) = text.split_once("[listen]\n").unwrap();
    let line = head.lines().count() + 2;
    std::fs::write(
        &file,
        format!("{head}[listen]\nworkers = {workers}\n{tail}"),
    )
    .unwrap();
    (file, line)
}

#[tokio::test]
async fn worker_counts_that_cannot_work_are_config_errors_with_their_line() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    for (workers, want) in [
        ("0", "listen.workers must be greater than zero"),
        ("257", "listen.workers = 257: at most 256"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (file, line) = with_workers(dir.path(), &spec, workers);
        let err = callgate::config::load(&file).unwrap_err().to_string();
        assert!(err.contains(want), "{workers}: {err}");
        assert!(
            err.contains(&format!("callgate.toml:{line}:")),
            "{workers}: {err}"
        );
    }
}

#[tokio::test]
async fn a_reload_cannot_change_the_worker_count() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway(GatewaySpec::new(vec![RouteSpec::alipay(&up)])).await;
    let file = gw.dir.path().join("callgate.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace(&format!("workers = {WORKERS}"), "workers = 1");
    std::fs::write(&file, &text).unwrap();
    let err = gw.gateway.reload().unwrap_err().to_string();
    // Every problem a reload logs is `PATH:LINE: message`, this one at the
    // key in the new file.
    let line = 1 + text
        .lines()
        .position(|l| l == "workers = 1")
        .expect("the edited key");
    assert!(
        err.contains(&format!(
            "callgate.toml:{line}: listen.workers cannot change while running"
        )),
        "{err}"
    );
}

/// A gateway whose `workers` share a fixed port: any process could join
/// their `SO_REUSEPORT` group, and a second gateway there (started by
/// mistake, a second unit) would answer half the connections from a replay
/// store of its own, forwarding again what the first delivered. The second
/// one is refused at start, and the first goes on serving.
#[tokio::test]
async fn a_second_gateway_cannot_join_the_port_the_workers_share() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let on_port = |dir: &std::path::Path| {
        let (file, _) = with_workers(dir, &spec, &WORKERS.to_string());
        let text = std::fs::read_to_string(&file).unwrap().replacen(
            "addr = \"127.0.0.1:0\"",
            &format!("addr = \"127.0.0.1:{port}\""),
            1,
        );
        assert!(text.contains(&format!(
            "[listen]\nworkers = {WORKERS}\naddr = \"127.0.0.1:{port}\""
        )));
        std::fs::write(&file, text).unwrap();
        callgate::config::load(&file).unwrap()
    };
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = callgate::server::start(on_port(first_dir.path()))
        .await
        .expect("the first gateway takes the free port");
    assert_eq!(first.addr.port(), port);
    let err = match callgate::server::start(on_port(second_dir.path())).await {
        Ok(_) => panic!("a second gateway joined port {port}"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{port}: another process already listens there"
        )),
        "{err}"
    );

    // The first one still takes notifications.
    let client = TestClient::new();
    let r = client
        .send(
            "POST",
            &format!("http://127.0.0.1:{port}/notify/alipay"),
            &[("content-type", "application/x-www-form-urlencoded")],
            fixture("alipay", "rsa2_trade_success.form"),
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_taken_admin_port_is_named_as_the_admin_listener() {
    // Prometheus's own default port is 9090, the demo's admin port: the
    // error must say which setting to change.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = GatewaySpec::new(vec![RouteSpec::alipay(&up)]).write(dir.path());
    let text = std::fs::read_to_string(&file).unwrap();
    let admin = "[admin]\naddr = \"127.0.0.1:0\"";
    assert!(text.contains(admin));
    let text = text.replacen(admin, &format!("[admin]\naddr = \"127.0.0.1:{port}\""), 1);
    std::fs::write(&file, text).unwrap();
    let err = match callgate::server::start(callgate::config::load(&file).unwrap()).await {
        Ok(_) => panic!("the admin listener took a port another socket holds"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with(&format!("cannot listen on 127.0.0.1:{port} (admin.addr): ")),
        "{err}"
    );
}
