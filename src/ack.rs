//! The answer to the platform: the only place an [`Outcome`] becomes a
//! response.
//!
//! Every step of the flow ends in an `Outcome`; this module owns its HTTP
//! status, its metric label and the acknowledgement body in each platform's
//! format ([`Ack`]; each provider names its own with `ProviderKind::ack`).
//! Internal causes (which check failed and why) go to the log line, never
//! to the platform: a failure ack is the same few bytes whatever went wrong.

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// How a request ended. Closed: the contract lists every value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Forwarded, and the upstream confirmed it.
    Forwarded,
    /// Already delivered earlier: acknowledged, not forwarded again.
    Duplicate,
    /// The same event is being forwarded right now.
    InFlight,
    /// A nonce seen before within its window (wechat_v3).
    Replay,
    /// The signed time is older than `max_age` or too far in the future.
    Stale,
    /// The source address is not in the route's allow list.
    IpDenied,
    /// Missing or bad signature, unknown key, merchant id not this route's.
    BadSignature,
    /// Unparseable body, wrong content type, duplicate keys, DOCTYPE, a body
    /// that ended early or arrived too slowly.
    Malformed,
    /// Body above `limits.max_body_bytes`.
    TooLarge,
    /// No route for this path.
    NotFound,
    /// A method other than POST.
    MethodNotAllowed,
    /// Per-source rate limit exceeded.
    RateLimited,
    /// The replay store did not answer: fail closed.
    StoreUnavailable,
    /// The upstream refused, failed, answered non-2xx or did not confirm.
    UpstreamError,
    /// The upstream did not answer within `limits.upstream_timeout`.
    UpstreamTimeout,
    /// A notification that reports a failure on the platform's side and
    /// carries nothing to deliver (wechat_v2 `return_code` FAIL, which has
    /// no signature): acknowledged so the platform stops resending it, never
    /// forwarded. An addition to the contract's outcome list.
    Ignored,
}

impl Outcome {
    /// Every outcome, in the contract's order (used to pre-register metrics).
    pub const ALL: [Outcome; 16] = [
        Outcome::Forwarded,
        Outcome::Duplicate,
        Outcome::InFlight,
        Outcome::Replay,
        Outcome::Stale,
        Outcome::IpDenied,
        Outcome::BadSignature,
        Outcome::Malformed,
        Outcome::TooLarge,
        Outcome::NotFound,
        Outcome::MethodNotAllowed,
        Outcome::RateLimited,
        Outcome::StoreUnavailable,
        Outcome::UpstreamError,
        Outcome::UpstreamTimeout,
        Outcome::Ignored,
    ];

    /// Its position in [`Outcome::ALL`] (the declaration order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `outcome` label of `callgate_requests_total`. An upstream timeout
    /// is an `upstream_error` there; its 504 status tells them apart.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Duplicate => "duplicate",
            Outcome::InFlight => "in_flight",
            Outcome::Replay => "replay",
            Outcome::Stale => "stale",
            Outcome::IpDenied => "ip_denied",
            Outcome::BadSignature => "bad_signature",
            Outcome::Malformed => "malformed",
            Outcome::TooLarge => "too_large",
            Outcome::NotFound => "not_found",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::RateLimited => "rate_limited",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::UpstreamError | Outcome::UpstreamTimeout => "upstream_error",
            Outcome::Ignored => "ignored",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Outcome::Forwarded | Outcome::Duplicate | Outcome::Ignored => StatusCode::OK,
            Outcome::InFlight => StatusCode::CONFLICT,
            Outcome::Replay | Outcome::Stale | Outcome::BadSignature => StatusCode::UNAUTHORIZED,
            Outcome::IpDenied => StatusCode::FORBIDDEN,
            Outcome::Malformed => StatusCode::BAD_REQUEST,
            Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::NotFound => StatusCode::NOT_FOUND,
            Outcome::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Outcome::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Outcome::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Outcome::UpstreamError => StatusCode::BAD_GATEWAY,
            Outcome::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Whether the platform gets the success ack (and stops retrying).
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Outcome::Forwarded | Outcome::Duplicate | Outcome::Ignored
        )
    }

    /// A short, fixed, non-revealing phrase for failure bodies that carry a
    /// message (wechat_v2 `return_msg`, wechat_v3 `message`).
    fn public_message(self) -> &'static str {
        match self {
            Outcome::Forwarded | Outcome::Duplicate | Outcome::Ignored => "OK",
            Outcome::InFlight => "in progress",
            Outcome::Replay => "replayed",
            Outcome::Stale => "stale",
            Outcome::IpDenied => "forbidden",
            Outcome::BadSignature => "bad signature",
            Outcome::Malformed => "malformed",
            Outcome::TooLarge => "too large",
            Outcome::NotFound => "not found",
            Outcome::MethodNotAllowed => "method not allowed",
            Outcome::RateLimited => "rate limited",
            Outcome::StoreUnavailable => "unavailable",
            Outcome::UpstreamError => "upstream error",
            Outcome::UpstreamTimeout => "upstream timeout",
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const XML: &str = "text/xml; charset=utf-8";
const JSON: &str = "application/json";

/// The acknowledgement formats the platforms expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// `success` or `fail` as text (Alipay, legacy Alipay, JD Pay).
    SuccessFail,
    /// `ok` or `fail` as text (UnionPay).
    OkFail,
    /// `<xml><return_code>SUCCESS|FAIL</return_code>...` (WeChat Pay v2).
    WechatXml,
    /// An empty 200, or `{"code":"FAIL","message":...}` (WeChat Pay v3).
    WechatJson,
}

/// Builds the response for `outcome`. `ack` is `None` only when no route
/// matched, so nobody's ack format applies.
pub fn respond(outcome: Outcome, ack: Option<Ack>) -> Response<Full<Bytes>> {
    let (content_type, body): (&str, Bytes) = match ack {
        None => (
            TEXT,
            Bytes::from_static(outcome.public_message().as_bytes()),
        ),
        Some(ack) => ack_body(ack, outcome),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = outcome.status();
    let headers = response.headers_mut();
    if !content_type.is_empty() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    if outcome == Outcome::MethodNotAllowed {
        headers.insert(ALLOW, HeaderValue::from_static("POST"));
    }
    response
}

/// A WeChat Pay v2 acknowledgement.
fn wechat_xml(code: &str, msg: &str) -> String {
    format!(
        "<xml><return_code><![CDATA[{code}]]></return_code>\
         <return_msg><![CDATA[{msg}]]></return_msg></xml>"
    )
}

/// [`wechat_xml`] of `SUCCESS`, `OK`.
const WECHAT_XML_SUCCESS: &str = "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>";

/// The acknowledgement of an outcome in format `ack` (content type, body).
fn ack_body(ack: Ack, outcome: Outcome) -> (&'static str, Bytes) {
    let ok = outcome.is_success();
    match ack {
        Ack::SuccessFail => (
            TEXT,
            Bytes::from_static(if ok { b"success" } else { b"fail" }),
        ),
        Ack::OkFail => (TEXT, Bytes::from_static(if ok { b"ok" } else { b"fail" })),
        // The success ack, every delivered or duplicate notification's, is
        // one constant; a failure's names its phrase.
        Ack::WechatXml if ok => (XML, Bytes::from_static(WECHAT_XML_SUCCESS.as_bytes())),
        Ack::WechatXml => (
            XML,
            Bytes::from(wechat_xml("FAIL", outcome.public_message())),
        ),
        Ack::WechatJson => {
            if ok {
                ("", Bytes::new())
            } else {
                let json = serde_json::json!({"code": "FAIL", "message": outcome.public_message()});
                (JSON, Bytes::from(json.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn an_outcome_index_is_its_position_in_all() {
        for (i, o) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(o.index(), i, "{o:?}");
        }
    }

    async fn body_of(r: Response<Full<Bytes>>) -> (StatusCode, Vec<u8>) {
        let status = r.status();
        (
            status,
            r.into_body().collect().await.unwrap().to_bytes().to_vec(),
        )
    }

    #[tokio::test]
    async fn alipay_acks_are_exact() {
        let (s, b) = body_of(respond(Outcome::Forwarded, Some(Ack::SuccessFail))).await;
        assert_eq!((s.as_u16(), b.as_slice()), (200, &b"success"[..]));
        let (s, b) = body_of(respond(Outcome::Duplicate, Some(Ack::SuccessFail))).await;
        assert_eq!((s.as_u16(), b.as_slice()), (200, &b"success"[..]));
        let (s, b) = body_of(respond(Outcome::BadSignature, Some(Ack::SuccessFail))).await;
        assert_eq!((s.as_u16(), b.as_slice()), (401, &b"fail"[..]));
    }

    #[tokio::test]
    async fn wechat_acks() {
        let (s, b) = body_of(respond(Outcome::Forwarded, Some(Ack::WechatJson))).await;
        assert_eq!((s.as_u16(), b.len()), (200, 0));
        let (s, b) = body_of(respond(Outcome::InFlight, Some(Ack::WechatJson))).await;
        assert_eq!(s.as_u16(), 409);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["code"], "FAIL");
        let (_, b) = body_of(respond(Outcome::Forwarded, Some(Ack::WechatXml))).await;
        assert!(
            String::from_utf8(b)
                .unwrap()
                .contains("<![CDATA[SUCCESS]]>")
        );
        // The success ack is a constant: the same text as the failures'.
        for outcome in [Outcome::Forwarded, Outcome::Duplicate, Outcome::Ignored] {
            let (_, b) = body_of(respond(outcome, Some(Ack::WechatXml))).await;
            assert_eq!(b, wechat_xml("SUCCESS", "OK").as_bytes());
        }
        let (s, b) = body_of(respond(Outcome::Replay, Some(Ack::WechatXml))).await;
        assert_eq!(
            (s.as_u16(), String::from_utf8(b).unwrap()),
            (
                401,
                "<xml><return_code><![CDATA[FAIL]]></return_code>\
                 <return_msg><![CDATA[replayed]]></return_msg></xml>"
                    .to_owned()
            )
        );
    }

    #[test]
    fn statuses_follow_the_contract() {
        let expect = [
            (Outcome::Forwarded, 200),
            (Outcome::Duplicate, 200),
            (Outcome::InFlight, 409),
            (Outcome::Replay, 401),
            (Outcome::Stale, 401),
            (Outcome::IpDenied, 403),
            (Outcome::BadSignature, 401),
            (Outcome::Malformed, 400),
            (Outcome::TooLarge, 413),
            (Outcome::NotFound, 404),
            (Outcome::MethodNotAllowed, 405),
            (Outcome::RateLimited, 429),
            (Outcome::StoreUnavailable, 503),
            (Outcome::UpstreamError, 502),
            (Outcome::UpstreamTimeout, 504),
            (Outcome::Ignored, 200),
        ];
        for (o, s) in expect {
            assert_eq!(o.status().as_u16(), s, "{o:?}");
        }
        assert_eq!(Outcome::UpstreamTimeout.as_str(), "upstream_error");
    }
}
