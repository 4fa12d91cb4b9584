//! Floods and slow clients (issue 8): the connection cap, hundreds of slow
//! connections held open while genuine notifications keep succeeding, the
//! idle keep-alive timeout, the per-source rate limit, and a replay store
//! that stays within its bound under a stream of distinct nonces.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OPEN: &str = "callgate_connections_open";
const REFUSED: &str = "callgate_connections_refused_total";

/// A connection that sent half a request head and then went quiet.
async fn slow_connection(gw: &TestGateway) -> TcpStream {
    let mut s = TcpStream::connect(gw.gateway.addr).await.unwrap();
    s.write_all(b"POST /notify/alipay HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .await
        .unwrap();
    s
}

async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("the gateway did not close the connection")
        .ok();
    out
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once_and_counted() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.header_timeout = "60s".into();
    let gw = TestGateway::start_edited(spec, |t| add_limit(t, "max_connections = 4")).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(slow_connection(&gw).await);
    }
    gw.wait_metric(OPEN, &[], |v| v == 4.0).await;

    // The fifth is closed before a byte is read: no answer, just EOF.
    let mut fifth = slow_connection(&gw).await;
    assert!(read_all(&mut fifth).await.is_empty());
    assert_eq!(gw.metric(REFUSED, &[]).await, Some(1.0));
    assert_eq!(gw.metric(OPEN, &[]).await, Some(4.0));

    // Once the held ones go, their places are free again.
    drop(held);
    gw.wait_metric(OPEN, &[], |v| v == 0.0).await;
    let r = gw
        .post_form("/notify/alipay", &alipay_fixture("rsa2_trade_success.form"))
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(gw.metric(REFUSED, &[]).await, Some(1.0));
}

#[tokio::test]
async fn hundreds_of_slow_connections_do_not_starve_notifications() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    // Long enough that the slow connections stay for the whole test.
    spec.header_timeout = "120s".into();
    let gw = TestGateway::start_edited(spec, |t| add_limit(t, "max_connections = 400")).await;
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(slow_connection(&gw).await);
    }
    gw.wait_metric(OPEN, &[], |v| v >= 300.0).await;
    let events = [
        "rsa2_trade_success.form",
        "rsa2_trade_success_2.form",
        "rsa2_trade_success_3.form",
    ];
    for round in 0..10 {
        for name in events {
            let r = gw.post_form("/notify/alipay", &alipay_fixture(name)).await;
            assert_eq!(
                (r.status, r.text().as_str()),
                (200, "success"),
                "{name}, round {round}"
            );
        }
    }
    assert_eq!(up.count(), 3, "each event forwarded once");
    assert_eq!(gw.requests("forwarded").await, 3.0);
    assert_eq!(gw.requests("duplicate").await, 27.0);
    // The slow ones were not dropped to make room, and nothing was refused.
    assert!(gw.metric(OPEN, &[]).await.unwrap() >= 300.0);
    assert_eq!(gw.metric(REFUSED, &[]).await, Some(0.0));
    // Each slow connection is still open: nothing has been sent to it.
    let mut probe = [0u8; 1];
    for s in &slow {
        assert!(
            matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        );
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_header_timeout() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.header_timeout = "300ms".into();
    let gw = TestGateway::start(spec).await;
    let body = alipay_fixture("rsa2_trade_success.form");
    let mut s = TcpStream::connect(gw.gateway.addr).await.unwrap();
    let head = format!(
        "POST /notify/alipay HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    // The whole exchange: the answer, then (after header_timeout of
    // silence on the kept-alive connection) the close.
    let got = String::from_utf8(read_all(&mut s).await).unwrap();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.ends_with("success"),
        "an answer, then nothing but the close: {got}"
    );
    assert_eq!(up.count(), 1);
}

// === rate limit ===

#[tokio::test]
async fn a_source_over_its_rate_limit_gets_429_and_the_failure_ack() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay(&up).with(|r| {
        r.allow.push("203.0.113.0/24".into());
        // A refill of one token per 100 s: nothing refills during the test.
        r.extra = "rate_limit = { per_second = 0.01, burst = 2 }\n".into();
    });
    let mut spec = GatewaySpec::new(vec![route, RouteSpec::wechat_v2(&up)]);
    spec.trusted_proxies = vec!["127.0.0.1/32".into()];
    let gw = TestGateway::start(spec).await;
    let body = alipay_fixture("rsa2_trade_success.form");
    let send = |ip: &'static str| {
        let body = body.clone();
        let gw = &gw;
        async move {
            let headers = [
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-forwarded-for", ip),
            ];
            gw.send("POST", "/notify/alipay", &headers, body).await
        }
    };
    assert_eq!(send("203.0.113.5").await.status, 200);
    assert_eq!(send("203.0.113.5").await.status, 200);
    let limited = send("203.0.113.5").await;
    assert_eq!((limited.status, limited.text().as_str()), (429, "fail"));
    // Another source has its own bucket.
    assert_eq!(send("203.0.113.6").await.status, 200);
    // A route without a limit is not limited.
    for _ in 0..5 {
        assert_eq!(
            gw.post_xml(&wechat_fixture("v2_md5_pay.xml")).await.status,
            200
        );
    }
    assert_eq!(gw.requests("rate_limited").await, 1.0);
    assert_eq!(
        gw.metric(
            "callgate_rejections_total",
            &[
                ("route", "shop-alipay"),
                ("provider", "alipay"),
                ("reason", "rate_limited")
            ],
        )
        .await,
        Some(1.0)
    );
    assert_eq!(up.count(), 2, "one alipay event, one wechat event");
}

#[tokio::test]
async fn a_bad_rate_limit_is_a_config_error_with_its_line() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    for (limit, want) in [
        (
            "{ per_second = 0, burst = 10 }",
            "per_second must be a number greater than zero",
        ),
        ("{ per_second = 5, burst = 0 }", "burst must be at least 1"),
        ("{ per_second = 5 }", "missing field `burst`"),
        (
            "{ per_second = 5, burst = 1, window = 3 }",
            "unknown field `window`",
        ),
    ] {
        let route = RouteSpec::alipay(&up).with(|r| r.extra = format!("rate_limit = {limit}\n"));
        let dir = tempfile::tempdir().unwrap();
        let file = GatewaySpec::new(vec![route]).write(dir.path());
        let err = callgate::config::load(&file).unwrap_err().to_string();
        assert!(err.contains(want), "{limit}: {err}");
        assert!(err.contains("routes.toml:"), "{err}");
    }
}

// === memory ===

#[tokio::test]
async fn the_replay_store_stays_within_max_entries_under_distinct_nonces() {
    const BOUND: f64 = 64.0;
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = TestGateway::start_edited(GatewaySpec::new(vec![RouteSpec::wechat_v3(&up)]), |t| {
        *t = t.replace("max_entries = 100000", "max_entries = 64")
    })
    .await;
    let body = wechat_fixture("v3_pay.json");
    let (mut seen_max, mut refused) = (0.0f64, 0.0f64);
    for i in 0..400 {
        let headers = v3_headers(
            "platform_private.pem",
            WECHAT_PLATFORM_SERIAL,
            unix_now(),
            &format!("flood-nonce-{i:05}"),
            &body,
        );
        let r = gw.send_owned("/notify/wechat-v3", &headers, &body).await;
        // Once full, a new nonce is refused (the platform retries later),
        // never made room for by forgetting one still in its window.
        match r.status {
            200 => {}
            503 => refused += 1.0,
            s => panic!("{i}: {s} {}", r.text()),
        }
        if i % 25 == 24 {
            let entries = gw
                .metric("callgate_replay_store_entries", &[])
                .await
                .unwrap();
            assert!(entries <= BOUND, "{entries} entries after {} nonces", i + 1);
            seen_max = seen_max.max(entries);
        }
    }
    // It filled up to the bound, never past it, and said so.
    assert_eq!(seen_max, BOUND);
    // One slot holds the event itself, each other one a nonce.
    assert_eq!(refused, 400.0 - (BOUND - 1.0));
    assert_eq!(
        gw.metric(
            "callgate_replay_store_full_total",
            &[("route", "shop-wechat-v3")]
        )
        .await,
        Some(refused)
    );
    assert_eq!(gw.count("shop-wechat-v3", "wechat_v3", "replay").await, 0.0);
}
