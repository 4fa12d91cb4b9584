//! A slow or broken client never takes the listener down: stalled or
//! trickled headers, stalled TLS handshakes and stalled or trickled bodies
//! are cut off by their timeouts (each a deadline for the whole head or
//! body, not a pause between bytes) while other notifications keep
//! succeeding; an oversized upload announced with `Expect: 100-continue`
//! is refused before it starts, and an HTTP/2 preface is closed.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn gateway(tls: bool, up: &Upstream) -> TestGateway {
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(up)]);
    spec.tls = tls;
    spec.header_timeout = "300ms".into();
    spec.body_timeout = "300ms".into();
    TestGateway::start(spec).await
}

#[tokio::test]
async fn stalled_headers_are_cut_off_while_others_are_served() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway(false, &up).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(gw.gateway.addr).await.unwrap();
        s.write_all(b"POST /notify/alipay HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    for mut s in slow {
        let got = read_until_closed(&mut s).await;
        // hyper may answer 408 before closing; it never forwards.
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn silent_connections_do_not_stay_open() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway(false, &up).await;
    let mut s = TcpStream::connect(gw.gateway.addr).await.unwrap();
    read_until_closed(&mut s).await;
}

#[tokio::test]
async fn stalled_tls_handshakes_are_cut_off_while_others_are_served() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway(true, &up).await;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(TcpStream::connect(gw.gateway.addr).await.unwrap());
    }
    // Garbage instead of a ClientHello.
    let mut junk = TcpStream::connect(gw.gateway.addr).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!(r.status, 200);
    read_until_closed(&mut junk).await;
    for mut s in stalled {
        read_until_closed(&mut s).await;
    }
}

#[tokio::test]
async fn a_trickled_body_times_out_and_is_not_forwarded() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway(false, &up).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    let mut s = TcpStream::connect(gw.gateway.addr).await.unwrap();
    let head = alipay_post_head(body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..10]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
        .await
        .expect("no answer to a trickled body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.ends_with("fail"), "{text}");
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests("malformed").await, 1.0);
}

/// Writes `bytes` one at a time, a short pause between them, until the
/// gateway closes the connection: whether it did before the last byte.
async fn trickle(s: &mut TcpStream, bytes: &[u8]) -> bool {
    for b in bytes {
        if s.write_all(std::slice::from_ref(b)).await.is_err() {
            return true;
        }
        // The pace of the attack, not a wait for the gateway.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_head_trickled_a_byte_at_a_time_is_cut_off_by_header_timeout_as_a_whole() {
    // header_timeout is a deadline for the whole head, not a pause allowed
    // between bytes: every byte arrives well within 300 ms of the last,
    // and the head (2 KB, 20 s at this pace) is cut off all the same.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway(false, &up).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    let head = alipay_post_head(body.len()).replacen(
        "Host: x\r\n",
        &format!("Host: x\r\nX-Pad: {}\r\n", "a".repeat(2000)),
        1,
    );
    let mut s = TcpStream::connect(gw.gateway.addr).await.unwrap();
    assert!(
        trickle(&mut s, head.as_bytes()).await,
        "the whole head was taken in"
    );
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    r.assert_is(200, "success", "a notification after the trickle");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_body_trickled_a_byte_at_a_time_is_cut_off_by_body_timeout_as_a_whole() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway(false, &up).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    let mut s = TcpStream::connect(gw.gateway.addr).await.unwrap();
    s.write_all(alipay_post_head(body.len()).as_bytes())
        .await
        .unwrap();
    assert!(trickle(&mut s, &body).await, "the whole body was taken in");
    assert_eq!(up.count(), 0);
    assert_eq!(gw.requests("malformed").await, 1.0);
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    r.assert_is(200, "success", "a notification after the trickle");
}

#[tokio::test]
async fn an_oversized_body_announced_with_expect_100_continue_gets_413_and_no_100() {
    // A client that asks before it uploads is told no at once: no
    // `100 Continue` invites the body first.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway(false, &up).await;
    let mut s = TcpStream::connect(gw.gateway.addr).await.unwrap();
    s.write_all(
        b"POST /notify/alipay HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nExpect: 100-continue\r\nContent-Length: 99999999999\r\n\r\n",
    )
    .await
    .unwrap();
    let got = String::from_utf8_lossy(&read_until_closed(&mut s).await).into_owned();
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    assert!(!got.contains("100 Continue"), "{got}");
    assert_eq!(gw.requests("too_large").await, 1.0);
}

#[tokio::test]
async fn an_http2_preface_on_the_plain_listener_is_closed_and_nothing_forwarded() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway(false, &up).await;
    let mut s = TcpStream::connect(gw.gateway.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let got = read_until_closed(&mut s).await;
    assert!(
        !got.starts_with(b"HTTP/1.1 2"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    r.assert_is(200, "success", "a notification after the preface");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_client_that_resets_mid_request_does_no_harm() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway(false, &up).await;
    for _ in 0..20 {
        let mut s = TcpStream::connect(gw.gateway.addr).await.unwrap();
        s.write_all(b"POST /notify/alipay HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\nabc")
            .await
            .unwrap();
        s.set_zero_linger().unwrap();
        drop(s);
    }
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn an_oversized_content_length_is_refused_before_the_body_arrives() {
    // Only the header is sent: a gateway that waited for the body would
    // answer 400 after body_timeout instead of 413.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway(false, &up).await;
    let mut s = TcpStream::connect(gw.gateway.addr).await.unwrap();
    s.write_all(
        b"POST /notify/alipay HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000000\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
        .await
        .expect("no answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert_eq!(gw.requests("too_large").await, 1.0);
}

/// `openssl s_client` (an independent TLS client) against `addr` with
/// `args`, stdin closed: whether the handshake completed, and its output.
async fn s_client(addr: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    let mut cmd = tool("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        "localhost",
    ])
    .args(args)
    .stdin(std::process::Stdio::null());
    // Blocking: off the runtime the gateway runs on.
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("openssl"))
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let done = out.status.success() && !text.contains("Cipher is (NONE)");
    (done, text)
}

#[tokio::test]
async fn tls_speaks_1_2_and_1_3_and_http_1_1_only() {
    // The platforms' notifiers speak HTTP/1.1 over TLS 1.2 or 1.3. TLS 1.0
    // and 1.1 are refused by the server (the client is told to allow
    // anything, `@SECLEVEL=0`, so the refusal is the server's alert), and
    // so is a client that offers only h2; one that offers h2 and http/1.1
    // gets http/1.1.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = gateway(true, &up).await;
    let addr = gw.gateway.addr;
    for v in ["-tls1", "-tls1_1"] {
        let (ok, text) = s_client(addr, &[v, "-cipher", "ALL:@SECLEVEL=0"]).await;
        assert!(!ok, "{v} was accepted: {text}");
        assert!(
            text.contains("alert"),
            "{v}: not refused by the server: {text}"
        );
    }
    for (v, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, text) = s_client(addr, &[v]).await;
        assert!(ok && text.contains(name), "{v}: {text}");
    }
    let (ok, text) = s_client(addr, &["-alpn", "h2"]).await;
    assert!(!ok && text.contains("no application protocol"), "{text}");
    let (ok, text) = s_client(addr, &["-alpn", "h2,http/1.1"]).await;
    assert!(ok && text.contains("ALPN protocol: http/1.1"), "{text}");
    // And the listener still serves.
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!(r.status, 200);
}
