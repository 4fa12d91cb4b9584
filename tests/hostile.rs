//! Hostile input: XML bombs and oddities, abusive forms, and HTTP
//! shapes used for request smuggling. Each gets a clear 4xx with the
//! provider's failure ack and is never forwarded. The HTTP shapes are
//! written byte for byte on a raw `TcpStream`, since a well-behaved client
//! cannot produce them.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// === XML ===

async fn xml_gateway(up: &Upstream) -> TestGateway {
    TestGateway::start(GatewaySpec::new(vec![
        RouteSpec::wechat_v2(up),
        RouteSpec::jdpay(up),
    ]))
    .await
}

/// XML shapes that must never reach a signature check, let alone the shop;
/// `ROOT` is replaced by the provider's root element.
fn hostile_xml() -> Vec<(&'static str, Vec<u8>)> {
    let deep = format!(
        "<ROOT>{}1{}</ROOT>",
        "<a>".repeat(5_000),
        "</a>".repeat(5_000)
    );
    let huge_attribute = format!("<ROOT><a x=\"{}\">1</a></ROOT>", "A".repeat(60_000));
    let huge_root_attribute = format!("<ROOT x=\"{}\"><a>1</a></ROOT>", "&amp;".repeat(12_000));
    let laughs = {
        let mut s =
            String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE ROOT [\n<!ENTITY lol \"lol\">\n");
        for i in 1..10 {
            let prev = if i == 1 {
                "lol".to_owned()
            } else {
                format!("lol{}", i - 1)
            };
            s.push_str(&format!(
                "<!ENTITY lol{i} \"{}\">\n",
                format!("&{prev};").repeat(10)
            ));
        }
        s.push_str("]>\n<ROOT><a>&lol9;</a></ROOT>");
        s
    };
    vec![
        ("billion laughs", laughs.into_bytes()),
        (
            "external entity",
            b"<?xml version=\"1.0\"?><!DOCTYPE ROOT [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><ROOT><a>&xxe;</a></ROOT>".to_vec(),
        ),
        (
            "parameter entity",
            b"<!DOCTYPE ROOT [<!ENTITY % p SYSTEM \"http://127.0.0.1:1/x.dtd\"> %p;]><ROOT><a>1</a></ROOT>".to_vec(),
        ),
        ("bare DOCTYPE", b"<!DOCTYPE ROOT><ROOT><a>1</a></ROOT>".to_vec()),
        ("undeclared entity", b"<ROOT><a>&lol;</a></ROOT>".to_vec()),
        ("deep nesting", deep.into_bytes()),
        ("huge attribute", huge_attribute.into_bytes()),
        ("huge root attribute", huge_root_attribute.into_bytes()),
    ]
}

#[tokio::test]
async fn hostile_xml_is_400_and_never_forwarded() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = xml_gateway(&up).await;
    let mut v2 = 0.0;
    let mut jd = 0.0;
    for (what, template) in hostile_xml() {
        for (path, root, route, provider) in [
            ("/notify/wechat", "xml", "shop-wechat-v2", "wechat_v2"),
            ("/notify/jdpay", "jdpay", "shop-jdpay", "jdpay"),
        ] {
            let body = String::from_utf8(template.clone())
                .unwrap()
                .replace("ROOT", root);
            let r = gw
                .send(
                    "POST",
                    path,
                    &[("content-type", "text/xml")],
                    body.into_bytes(),
                )
                .await;
            assert_eq!(r.status, 400, "{what} on {path}: {}", r.text());
            if provider == "wechat_v2" {
                assert!(
                    r.text().contains("<![CDATA[FAIL]]>"),
                    "{what}: {}",
                    r.text()
                );
                v2 += 1.0;
            } else {
                assert_eq!(r.text(), "fail", "{what}");
                jd += 1.0;
            }
            assert_eq!(
                gw.requests_of(route, provider, "malformed").await,
                if provider == "jdpay" { jd } else { v2 }
            );
        }
    }
    assert_eq!(up.count(), 0);
    // The DOCTYPE shapes are named as such in the rejection reasons.
    let doctype = gw
        .metric(
            "callgate_rejections_total",
            &[
                ("route", "shop-wechat-v2"),
                ("provider", "wechat_v2"),
                ("reason", "doctype"),
            ],
        )
        .await;
    assert_eq!(doctype, Some(4.0));
}

// === forms ===

async fn form_gateway(up: &Upstream) -> TestGateway {
    TestGateway::start(GatewaySpec::new(vec![
        RouteSpec::alipay(up),
        RouteSpec::alipay_md5(up),
    ]))
    .await
}

#[tokio::test]
async fn abusive_forms_are_4xx_and_never_forwarded() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = form_gateway(&up).await;
    let signed = fixture("alipay", "rsa2_trade_success.form");

    // Thousands of distinct keys, within the body limit: parsed, then
    // refused by the signature check (the unsigned keys are covered by it).
    let mut many = signed.clone();
    for i in 0..5_000 {
        many.extend_from_slice(format!("&k{i}=v").as_bytes());
    }
    assert!(many.len() < 65_536);
    let r = gw.post_form("/notify/alipay", &many).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (401, "fail"),
        "thousands of keys"
    );

    // Thousands of repeats of one key, and one repeat of a signed key.
    let repeated: Vec<u8> = "a=1&".repeat(5_000).into_bytes();
    let r = gw.post_form("/notify/alipay", &repeated).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "fail"),
        "a repeated key"
    );
    let mut twice = signed.clone();
    twice.extend_from_slice(b"&total_amount=0.01");
    let r = gw.post_form("/notify/alipay", &twice).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "fail"),
        "a signed key twice"
    );

    // Broken percent-escapes, in a key and in a value.
    for broken in [
        &b"%zz=1"[..],
        b"a=%",
        b"a=%4",
        b"a=%G0&b=1",
        b"sign=%E4%B8%",
    ] {
        let mut body = signed.clone();
        body.extend_from_slice(b"&");
        body.extend_from_slice(broken);
        let r = gw.post_form("/notify/alipay", &body).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (400, "fail"),
            "{}",
            String::from_utf8_lossy(broken)
        );
    }
    assert_eq!(
        gw.rejections("shop-alipay", "alipay", "duplicate_key")
            .await,
        2.0
    );
    assert_eq!(
        gw.rejections("shop-alipay", "alipay", "bad_form").await,
        5.0
    );

    // Values that are text in no charset, with a genuine signature (MD5 by
    // openssl over the bytes FF FE FF): 400, saying so. (GBK bytes on a
    // route and Content-Type that say utf-8 are delivered: see
    // gateway_alipay_legacy.rs.)
    let undecodable = fixture("alipay_md5", "md5_undecodable.form");
    let r = gw
        .send(
            "POST",
            "/notify/alipay_md5",
            &[(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )],
            undecodable,
        )
        .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "fail"),
        "values valid in neither UTF-8 nor GBK"
    );
    assert_eq!(
        gw.rejections("shop-legacy", "alipay_md5", "charset_undecodable")
            .await,
        1.0
    );
    // Raw invalid UTF-8 in a key.
    let r = gw.post_form("/notify/alipay", b"\xff\xfe=1&sign=x").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (400, "fail"),
        "invalid UTF-8 key"
    );

    assert_eq!(up.count(), 0);
}

// === HTTP shapes ===

async fn http_gateway(up: &Upstream) -> TestGateway {
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(up)]);
    // Short, so a test whose request is held half-read ends quickly.
    spec.body_timeout = "2s".into();
    TestGateway::start(spec).await
}

/// Writes `raw` on a fresh connection and reads until the server closes it
/// (bounded: 30 s only stops a broken test).
async fn exchange(gw: &TestGateway, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.gateway.addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("the gateway neither answered nor closed within 30 s");
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    out
}

fn request(head: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = head.replace('\n', "\r\n").into_bytes();
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    raw
}

#[tokio::test]
async fn smuggling_shapes_are_400_and_never_forwarded() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = http_gateway(&up).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    let n = body.len();
    let ct = "Content-Type: application/x-www-form-urlencoded";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "Content-Length and Transfer-Encoding",
            request(
                &format!(
                    "POST /notify/alipay HTTP/1.1\nHost: x\n{ct}\nContent-Length: {n}\nTransfer-Encoding: chunked\n"
                ),
                &chunked(&body),
            ),
        ),
        (
            "Transfer-Encoding and Content-Length",
            request(
                &format!(
                    "POST /notify/alipay HTTP/1.1\nHost: x\n{ct}\nTransfer-Encoding: chunked\nContent-Length: 4\n"
                ),
                &chunked(&body),
            ),
        ),
        (
            "conflicting Content-Length",
            request(
                &format!(
                    "POST /notify/alipay HTTP/1.1\nHost: x\n{ct}\nContent-Length: {n}\nContent-Length: 5\n"
                ),
                &body,
            ),
        ),
        (
            "Content-Length list",
            request(
                &format!("POST /notify/alipay HTTP/1.1\nHost: x\n{ct}\nContent-Length: {n}, {n}\n"),
                &body,
            ),
        ),
        (
            "Transfer-Encoding not ending in chunked",
            request(
                &format!(
                    "POST /notify/alipay HTTP/1.1\nHost: x\n{ct}\nTransfer-Encoding: chunked, identity\n"
                ),
                &chunked(&body),
            ),
        ),
        (
            "obfuscated Transfer-Encoding",
            request(
                &format!(
                    "POST /notify/alipay HTTP/1.1\nHost: x\n{ct}\nTransfer-Encoding: xchunked\nContent-Length: {n}\n"
                ),
                &body,
            ),
        ),
        (
            "HTTP/1.0 with Transfer-Encoding",
            request(
                &format!(
                    "POST /notify/alipay HTTP/1.0\nHost: x\n{ct}\nTransfer-Encoding: chunked\n"
                ),
                &chunked(&body),
            ),
        ),
    ];
    for (what, raw) in cases {
        let text = exchange(&gw, &raw).await;
        let got = statuses(&text);
        assert_eq!(
            got.len(),
            1,
            "{what}: one answer, then the connection closes:\n{text}"
        );
        assert_eq!(got[0], 400, "{what}:\n{text}");
        assert_eq!(up.count(), 0, "{what} was forwarded");
    }
    // The two shapes hyper hands on (with Content-Length dropped) are
    // refused by callgate itself; the others never reach it.
    let refused = gw
        .metric(
            "callgate_rejections_total",
            &[
                ("route", "shop-alipay"),
                ("provider", "alipay"),
                ("reason", "transfer_encoding"),
            ],
        )
        .await;
    assert_eq!(refused, Some(2.0));
}

/// Two identical Content-Length lines are one length: hyper merges them
/// (RFC 9110 §8.6 allows a recipient to), so there is no second framing to
/// smuggle with. The notification is served like any other, once.
#[tokio::test]
async fn agreeing_duplicate_content_length_is_one_length() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = http_gateway(&up).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    let n = body.len();
    let raw = request(
        &format!(
            "POST /notify/alipay HTTP/1.1\nHost: x\nContent-Type: application/x-www-form-urlencoded\nContent-Length: {n}\nContent-Length: {n}\nConnection: close\n"
        ),
        &body,
    );
    let text = exchange(&gw, &raw).await;
    assert_eq!(statuses(&text), [200], "{text}");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn huge_headers_are_431_and_never_forwarded() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = http_gateway(&up).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    let head = |extra: &str| {
        format!(
            "POST /notify/alipay HTTP/1.1\nHost: x\nContent-Type: application/x-www-form-urlencoded\nContent-Length: {}\n{extra}",
            body.len()
        )
    };
    let long_value = format!(
        "X-Pad: {}\n",
        "a".repeat(callgate::server::MAX_HEADER_BYTES)
    );
    let many: String = (0..=callgate::server::MAX_HEADERS)
        .map(|i| format!("X-H{i}: 1\n"))
        .collect();
    for (what, extra) in [("one huge header", long_value), ("too many headers", many)] {
        let text = exchange(&gw, &request(&head(&extra), &body)).await;
        assert_eq!(statuses(&text), [431], "{what}:\n{text}");
    }
    // Just under both limits is served.
    let fine: String = (0..callgate::server::MAX_HEADERS - 8)
        .map(|i| format!("X-H{i}: 1\n"))
        .collect();
    let text = exchange(
        &gw,
        &request(&format!("{}Connection: close\n", head(&fine)), &body),
    )
    .await;
    assert_eq!(statuses(&text), [200], "{text}");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn http_1_0_is_served_once_and_closed() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = http_gateway(&up).await;
    let body = fixture("alipay", "rsa2_trade_success.form");
    // A genuine notification over HTTP/1.0 is answered and the connection
    // closed (no keep-alive was asked for).
    let raw = request(
        &format!(
            "POST /notify/alipay HTTP/1.0\nHost: x\nContent-Type: application/x-www-form-urlencoded\nContent-Length: {}\n",
            body.len()
        ),
        &body,
    );
    let text = exchange(&gw, &raw).await;
    assert_eq!(statuses(&text), [200], "{text}");
    assert!(text.ends_with("success"), "{text}");
    // HTTP/1.0 without a length has no body: refused, never forwarded.
    let text = exchange(
        &gw,
        &request(
            "POST /notify/alipay HTTP/1.0\nHost: x\nContent-Type: application/x-www-form-urlencoded\n",
            b"",
        ),
    )
    .await;
    assert_eq!(statuses(&text), [400], "{text}");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn pipelined_requests_are_each_answered_and_forwarded_once() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = http_gateway(&up).await;
    let one = fixture("alipay", "rsa2_trade_success.form");
    let two = fixture("alipay", "rsa2_trade_success_2.form");
    let forged = fixture("alipay", "rsa2_tampered_amount.form");
    let req = |body: &[u8], last: bool| {
        request(
            &format!(
                "POST /notify/alipay HTTP/1.1\nHost: x\nContent-Type: application/x-www-form-urlencoded\nContent-Length: {}\n{}",
                body.len(),
                if last { "Connection: close\n" } else { "" }
            ),
            body,
        )
    };
    // One write: event one, event two, a forgery, event one again, a GET.
    let mut raw = Vec::new();
    raw.extend(req(&one, false));
    raw.extend(req(&two, false));
    raw.extend(req(&forged, false));
    raw.extend(req(&one, false));
    raw.extend(request("GET /notify/alipay HTTP/1.1\nHost: x\n", b""));
    raw.extend(req(&two, true));
    let text = exchange(&gw, &raw).await;
    assert_eq!(statuses(&text), [200, 200, 401, 200, 405, 200], "{text}");
    let got = up.received();
    assert_eq!(got.len(), 2, "each genuine event forwarded once");
    assert_eq!(got[0].body, one);
    assert_eq!(got[1].body, two);
    assert_eq!(gw.requests("duplicate").await, 2.0);
}
