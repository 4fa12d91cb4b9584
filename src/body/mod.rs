//! Body: the fourth and fifth steps of the flow.
//!
//! [`read`] refuses a `Transfer-Encoding` (the platforms send a
//! `Content-Length`; hyper resolves `Content-Length` + `Transfer-Encoding`
//! by dropping the length, so this is the only place "both" can still be
//! refused), then bounds the body twice: a `Content-Length` above the limit is
//! refused before a byte is read, and the read itself goes through
//! [`http_body_util::Limited`], so a chunked or lying body is cut off at the
//! same limit. The read has its own timeout, so a client that trickles its
//! body cannot hold a request open.
//!
//! [`parse`] checks the Content-Type and turns the bytes into a
//! [`Payload`] for the provider's format. Parsers are pure functions of
//! `&[u8]` and never panic, one file each:
//! * `form.rs` (`application/x-www-form-urlencoded`: Alipay, legacy
//!   Alipay, UnionPay): [`Form`], decoded once, raw bytes kept;
//! * `xml.rs` (`text/xml`, `application/xml`): the one strict XML reader,
//!   and its two views: [`XmlMap`], the flat map of a WeChat Pay v2
//!   notification, and [`Envelope`], JD Pay's outer document (also
//!   `text/plain` or no Content-Type: JD's demo reads the raw body
//!   whatever its type);
//! * `json.rs` (`application/json`: WeChat Pay v3): [`JsonBody`], raw
//!   bytes kept, repeated keys refused.
//!
//! Outcomes: `TooLarge` (413), `Malformed` (400).

mod form;
mod json;
pub mod xml;

use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http_body_util::{BodyExt, Limited};

use crate::ack::Outcome;
use crate::secret::shown;

pub use form::{Form, strip_form_fields};
pub use json::{JsonBody, strict_value};
pub use xml::{Envelope, XmlMap, strip_ranges};

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("Content-Length {declared} is above the limit of {limit} bytes")]
    DeclaredTooLarge { declared: u64, limit: u64 },
    #[error("body is above the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("Content-Length is not a number")]
    BadContentLength,
    #[error("Transfer-Encoding is not accepted; notifications carry a Content-Length")]
    TransferEncoding,
    #[error("body was not received within {0:?}")]
    Timeout(Duration),
    #[error("body could not be read: {0}")]
    Read(String),
}

impl BodyError {
    /// The `reason` label of `callgate_rejections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            BodyError::DeclaredTooLarge { .. } | BodyError::TooLarge { .. } => "too_large",
            BodyError::BadContentLength => "bad_content_length",
            BodyError::TransferEncoding => "transfer_encoding",
            BodyError::Timeout(_) => "body_timeout",
            BodyError::Read(_) => "body_read",
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            BodyError::DeclaredTooLarge { .. } | BodyError::TooLarge { .. } => Outcome::TooLarge,
            _ => Outcome::Malformed,
        }
    }
}

/// Reads the whole body, bounded by `limit` bytes and `timeout`. Any body
/// type: hyper's `Incoming` from the listener, `Full<Bytes>` from benches.
pub async fn read<B>(
    headers: &HeaderMap,
    body: B,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // hyper drops Content-Length when Transfer-Encoding is present (RFC 9112
    // §6.3), so refusing every Transfer-Encoding is what refuses the
    // smuggling shape "both"; the platforms send fixed-length bodies.
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(BodyError::TransferEncoding);
    }
    if let Some(v) = headers.get(CONTENT_LENGTH) {
        let declared: u64 = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(BodyError::BadContentLength)?;
        if declared > limit {
            return Err(BodyError::DeclaredTooLarge { declared, limit });
        }
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit_usize).collect())
        .await
        .map_err(|_| BodyError::Timeout(timeout))?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

// === parsing ===

/// The body format a provider expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Form,
    /// XML whose root element is `<xml>` (WeChat Pay v2).
    Xml,
    Json,
    /// JD Pay's `<jdpay>` envelope.
    JdXml,
}

/// A parsed body.
#[derive(Debug, Clone)]
pub enum Payload {
    Form(Form),
    Xml(XmlMap),
    Json(JsonBody),
    JdXml(Envelope),
}

/// Why a body could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("Content-Type `{got}` is not {want}")]
    ContentType { got: String, want: &'static str },
    #[error("key `{key}` appears more than once")]
    DuplicateKey { key: String },
    #[error("a field has an empty name")]
    EmptyKey,
    #[error("broken percent-escape in field `{key}`")]
    PercentEscape { key: String },
    #[error("a field name is not valid UTF-8")]
    KeyEncoding,
    #[error("body is empty")]
    Empty,
    #[error("XML with a DOCTYPE (entity declarations are never accepted)")]
    Doctype,
    #[error("XML element `{element}` holds another element; notifications are flat")]
    XmlNesting { element: String },
    #[error("XML root element is `{got}`, not `{want}`")]
    XmlRoot { got: String, want: &'static str },
    #[error("XML is not acceptable: {reason}")]
    Xml { reason: String },
    #[error("JSON is not acceptable: {reason}")]
    Json { reason: String },
    #[error("JD envelope: {0}")]
    JdEnvelope(#[from] xml::XmlError),
}

impl ParseError {
    /// The `reason` label of `callgate_rejections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ParseError::ContentType { .. } => "content_type",
            ParseError::DuplicateKey { .. } => "duplicate_key",
            ParseError::Doctype => "doctype",
            ParseError::Empty => "empty_body",
            ParseError::EmptyKey | ParseError::PercentEscape { .. } | ParseError::KeyEncoding => {
                "bad_form"
            }
            ParseError::XmlNesting { .. } | ParseError::XmlRoot { .. } | ParseError::Xml { .. } => {
                "bad_xml"
            }
            ParseError::Json { .. } => "bad_json",
            ParseError::JdEnvelope(_) => "bad_envelope",
        }
    }
}

/// Checks the content type and parses the body for `format`.
pub fn parse(format: Format, headers: &HeaderMap, body: &[u8]) -> Result<Payload, ParseError> {
    match format {
        Format::Form => {
            expect_content_type(headers, &["application/x-www-form-urlencoded"])?;
            Form::parse(body).map(Payload::Form)
        }
        Format::Xml => {
            expect_content_type(headers, &["text/xml", "application/xml"])?;
            let xml = XmlMap::parse(body)?;
            if xml.root() != "xml" {
                return Err(ParseError::XmlRoot {
                    got: shown(xml.root().as_bytes()),
                    want: "xml",
                });
            }
            Ok(Payload::Xml(xml))
        }
        Format::Json => {
            expect_content_type(headers, &["application/json"])?;
            JsonBody::parse(body).map(Payload::Json)
        }
        Format::JdXml => {
            // JD's demo reads the raw body whatever its type: accept the
            // XML and text types, or none; refuse forms and JSON.
            if headers.contains_key(CONTENT_TYPE) {
                expect_content_type(headers, &["text/xml", "application/xml", "text/plain"])?;
            }
            if body.is_empty() {
                return Err(ParseError::Empty);
            }
            Ok(Payload::JdXml(Envelope::parse(body)?))
        }
    }
}

/// Compares the media type (case-insensitive, parameters ignored) with
/// each accepted one.
fn expect_content_type(headers: &HeaderMap, want: &[&'static str]) -> Result<(), ParseError> {
    let got = headers
        .get(CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let media = got.split(|&b| b == b';').next().unwrap_or_default();
    if want
        .iter()
        .any(|w| media.trim_ascii().eq_ignore_ascii_case(w.as_bytes()))
    {
        Ok(())
    } else {
        Err(ParseError::ContentType {
            got: shown(got),
            want: want.first().copied().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_is_checked() {
        let mut h = HeaderMap::new();
        assert!(parse(Format::Form, &h, b"a=1").is_err());
        h.insert(
            CONTENT_TYPE,
            "Application/X-WWW-Form-Urlencoded; charset=GBK"
                .parse()
                .unwrap(),
        );
        assert!(parse(Format::Form, &h, b"a=1").is_ok());
        h.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(matches!(
            parse(Format::Form, &h, b"a=1"),
            Err(ParseError::ContentType { .. })
        ));
    }

    #[test]
    fn xml_content_type_and_root() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, "text/xml; charset=UTF-8".parse().unwrap());
        assert!(parse(Format::Xml, &h, b"<xml><a>1</a></xml>").is_ok());
        assert!(matches!(
            parse(Format::Xml, &h, b"<root><a>1</a></root>"),
            Err(ParseError::XmlRoot { .. })
        ));
        h.insert(CONTENT_TYPE, "application/xml".parse().unwrap());
        assert!(parse(Format::Xml, &h, b"<xml><a>1</a></xml>").is_ok());
        h.insert(CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(matches!(
            parse(Format::Xml, &h, b"<xml><a>1</a></xml>"),
            Err(ParseError::ContentType { .. })
        ));
    }

    #[test]
    fn xml_and_json_never_panic_on_arbitrary_bytes() {
        let alphabet: Vec<u8> = b"<>/![]&;#x\"=?-CDATA xml a"
            .iter()
            .copied()
            .chain(0..=255u8)
            .collect();
        let seeds: [&[u8]; 3] = [
            b"<xml><a><![CDATA[1]]></a><b>&amp;&#x41;</b></xml>",
            b"<!DOCTYPE xml><xml><a>1</a></xml>",
            br#"{"id":"1","resource":{"a":[1,{"b":"c"}]}}"#,
        ];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for i in 0..30_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let seed = seeds[i % seeds.len()];
            // Mutate a valid document in a few places, or make noise.
            let mut body: Vec<u8> = if i % 4 == 0 {
                let len = (state % 64) as usize;
                (0..len)
                    .map(|j| alphabet[((state >> (j % 56)) as usize + j * 31) % alphabet.len()])
                    .collect()
            } else {
                seed.to_vec()
            };
            for k in 0..(state % 4) {
                if body.is_empty() {
                    break;
                }
                let at = ((state >> (k * 11)) as usize) % body.len();
                body[at] = alphabet[((state >> (k * 7 + 3)) as usize) % alphabet.len()];
            }
            let _ = XmlMap::parse(&body);
            let _ = JsonBody::parse(&body);
        }
    }

    #[test]
    fn unsigned_parts_are_cut_and_nothing_else() {
        let body = b"a=1&x=%20&b=%26&x%79=&c=3";
        let names = vec!["x".to_owned(), "xy".to_owned()];
        assert_eq!(strip_form_fields(body, &names), b"a=1&b=%26&c=3");
        assert_eq!(strip_form_fields(body, &[]), body);
        let form = Form::parse(body).unwrap().without(&names);
        assert_eq!(
            form.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );

        let xml = b"<xml>\n<a>1</a>\n<b><![CDATA[ ]]></b><c/>\n</xml>";
        let map = XmlMap::parse(xml).unwrap();
        let (b, c) = (map.span("b").unwrap(), map.span("c").unwrap());
        assert_eq!(&xml[b.clone()], b"<b><![CDATA[ ]]></b>");
        assert_eq!(&xml[c.clone()], b"<c/>");
        assert_eq!(&xml[map.span("a").unwrap()], b"<a>1</a>");
        assert_eq!(strip_ranges(xml, &[b, c]), b"<xml>\n<a>1</a>\n\n</xml>");
        assert_eq!(map.without(&["b".to_owned()]).get("b"), None);
    }
}
