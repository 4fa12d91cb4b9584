//! The worker's upstream pool (src/upstream_pool.rs) seen from real shops
//! on 127.0.0.1: connections reused, the request line and `Host` as the
//! legacy client wrote them, and exactly one delivery per notification when
//! a shop closes connections (idle, after each reply, or mid-request).
//!
//! One worker (`listen.workers = 1`), so every forward goes through one
//! pool.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const APP_ID: &str = "2021000000000001";

/// A gateway with one worker.
async fn one_worker(routes: Vec<RouteSpec>) -> TestGateway {
    TestGateway::start_edited(GatewaySpec::new(routes), |t| {
        *t = t.replacen(
            "[listen]\naddr = \"127.0.0.1:0\"\n",
            "[listen]\naddr = \"127.0.0.1:0\"\nworkers = 1\n",
            1,
        );
    })
    .await
}

/// A genuine Alipay notification with its own event id (callgate's signer
/// is only the load generator here; it is checked against openssl in
/// tests/cli.rs).
fn notification(id: &str) -> Vec<u8> {
    alipay_signed(&[("app_id", APP_ID), ("notify_id", id), ("out_trade_no", id)])
}

/// What the hand-written shop does with its `n`-th request (0-based,
/// counted over all connections).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Act {
    /// `200 success`, connection kept open.
    Answer,
    /// `200 success` without `Connection: close`; the shop closes the
    /// connection when the test says so ([`RawShop::close_idle`]): an idle
    /// keep-alive connection closed by the shop.
    AnswerThenClose,
    /// `200 success` with `Connection: close`, then closes.
    AnswerConnectionClose,
    /// Reads the request and closes without answering.
    DropUnanswered,
}

/// A shop written by hand on raw sockets, so that the test decides when a
/// connection closes.
struct RawShop {
    url: String,
    /// The `X-Callgate-Event-Id` of each request read, in order.
    events: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    /// One message each time the shop closed a connection.
    closed: mpsc::UnboundedReceiver<()>,
    /// Closes the connections waiting after `AnswerThenClose` (one permit
    /// each).
    close_idle: Arc<tokio::sync::Semaphore>,
}

impl RawShop {
    async fn start(plan: fn(usize) -> Act) -> RawShop {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/plus/notify.php",
            listener.local_addr().unwrap().port()
        );
        let events = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let close_idle = Arc::new(tokio::sync::Semaphore::new(0));
        let (ev, conns, close) = (events.clone(), connections.clone(), close_idle.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (ev, requests, closed_tx, close) = (
                    ev.clone(),
                    requests.clone(),
                    closed_tx.clone(),
                    close.clone(),
                );
                tokio::spawn(async move {
                    while let Some((head, _body)) = read_http_request(&mut tcp).await {
                        let id = head
                            .lines()
                            .find_map(|l| l.strip_prefix("x-callgate-event-id:"))
                            .map(|v| v.trim().to_owned())
                            .unwrap_or_default();
                        ev.lock().unwrap().push(id);
                        let act = plan(requests.fetch_add(1, Ordering::SeqCst));
                        let reply: &[u8] = match act {
                            Act::Answer | Act::AnswerThenClose => {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccess"
                            }
                            Act::AnswerConnectionClose => {
                                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 7\r\n\r\nsuccess"
                            }
                            Act::DropUnanswered => b"",
                        };
                        if tcp.write_all(reply).await.is_err() {
                            break;
                        }
                        if act == Act::AnswerThenClose {
                            // Idle in the gateway's pool until the test
                            // says.
                            let _ = close.acquire().await.map(|p| p.forget());
                        }
                        if act != Act::Answer {
                            break;
                        }
                    }
                    // Closed before the test hears of it.
                    drop(tcp);
                    let _ = closed_tx.send(());
                });
            }
        });
        RawShop {
            url,
            events,
            connections,
            closed,
            close_idle,
        }
    }

    /// The Alipay route, forwarding to this shop.
    async fn route(&self) -> RouteSpec {
        // `RouteSpec::alipay` wants a recording upstream; it is replaced.
        let unused = Upstream::start(Behaviour::Hang).await;
        let url = self.url.clone();
        RouteSpec::alipay(&unused).with(|r| r.upstream = url)
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    fn times(&self, id: &str) -> usize {
        self.events().iter().filter(|e| *e == id).count()
    }

    async fn wait_closed(&mut self) {
        tokio::time::timeout(std::time::Duration::from_secs(30), self.closed.recv())
            .await
            .expect("the shop did not close a connection within 30s");
    }
}

#[tokio::test]
async fn sequential_forwards_to_one_shop_share_one_connection() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = one_worker(vec![RouteSpec::alipay(&up)]).await;
    for i in 0..3 {
        gw.post_form("/notify/alipay", &notification(&format!("reuse{i}")))
            .await
            .assert_is(200, "success", i);
    }
    assert_eq!(up.count(), 3);
    assert_eq!(up.connections(), 1, "each forward opened a connection");
    // What the shop sees: origin-form target and Host as the legacy client
    // wrote them, and only the headers callgate sends.
    for r in up.received() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.uri, "/plus/notify.php");
        assert_eq!(r.headers["host"], format!("127.0.0.1:{}", up.addr.port()));
        assert_eq!(r.headers.get_all("host").iter().count(), 1);
        let mut names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "content-length",
                "content-type",
                "host",
                "x-callgate-attempt",
                "x-callgate-event-id",
                "x-callgate-provider",
                "x-callgate-request-id",
                "x-callgate-route",
                "x-callgate-signature",
                "x-forwarded-for",
            ]
        );
    }
}

#[tokio::test]
async fn a_keep_alive_connection_the_shop_closed_while_idle_loses_and_doubles_nothing() {
    let mut shop = RawShop::start(|_| Act::AnswerThenClose).await;
    let gw = one_worker(vec![shop.route().await]).await;
    gw.post_form("/notify/alipay", &notification("idle0001"))
        .await
        .assert_is(200, "success", "first");
    // The connection is idle in the pool; the shop closes it, and has
    // closed it before the next notification is even built.
    shop.close_idle.add_permits(1);
    shop.wait_closed().await;
    gw.post_form("/notify/alipay", &notification("idle0002"))
        .await
        .assert_is(200, "success", "after the shop closed the idle connection");
    assert_eq!(shop.events(), ["idle0001", "idle0002"]);
    assert_eq!(shop.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_shop_answering_connection_close_gets_each_notification_once() {
    let shop = RawShop::start(|_| Act::AnswerConnectionClose).await;
    let gw = one_worker(vec![shop.route().await]).await;
    for i in 0..4 {
        gw.post_form("/notify/alipay", &notification(&format!("close{i:03}")))
            .await
            .assert_is(200, "success", i);
    }
    assert_eq!(
        shop.events(),
        ["close000", "close001", "close002", "close003"]
    );
    assert_eq!(shop.connections.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_request_that_may_have_reached_the_shop_is_never_sent_again() {
    // The second request arrives on the pooled connection; the shop reads
    // it and closes without answering. It may have been processed: the
    // gateway must not send it again on another connection.
    let shop = RawShop::start(|n| {
        if n == 1 {
            Act::DropUnanswered
        } else {
            Act::Answer
        }
    })
    .await;
    let gw = one_worker(vec![shop.route().await]).await;
    gw.post_form("/notify/alipay", &notification("sent0001"))
        .await
        .assert_is(200, "success", "first");
    let reply = gw
        .post_form("/notify/alipay", &notification("sent0002"))
        .await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(shop.events(), ["sent0001", "sent0002"], "resent");
    assert_eq!(shop.connections.load(Ordering::SeqCst), 1);
    assert_eq!(
        gw.rejections("shop-alipay", "alipay", "upstream_unreachable")
            .await,
        1.0
    );
    // The platform's retry is the next delivery.
    gw.post_form("/notify/alipay", &notification("sent0002"))
        .await
        .assert_is(200, "success", "the platform's retry");
    assert_eq!(shop.times("sent0002"), 2);
}

#[tokio::test]
async fn an_https_upstream_with_its_own_ca_is_pooled_too() {
    let up = Upstream::start_tls(Behaviour::Reply(200, "success")).await;
    let gw =
        one_worker(vec![RouteSpec::alipay(&up).with(|r| {
            r.upstream_ca = Some(root().join("certs/dev/server.crt"))
        })])
        .await;
    for i in 0..3 {
        gw.post_form("/notify/alipay", &notification(&format!("tls{i:05}")))
            .await
            .assert_is(200, "success", i);
    }
    assert_eq!(up.count(), 3);
    assert_eq!(up.connections(), 1, "each forward opened a TLS connection");
    let first = &up.received()[0];
    assert_eq!(first.uri, "/plus/notify.php");
    assert_eq!(
        first.headers["host"],
        format!("127.0.0.1:{}", up.addr.port())
    );
}
