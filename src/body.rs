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
//! [`parse`] turns the bytes into a [`Payload`] for the provider's format.
//! Parsers are pure functions of `&[u8]` and never panic:
//! * form (`application/x-www-form-urlencoded`): split on `&` and the first
//!   `=`, then percent-decode each key and value exactly once (`+` is a
//!   space). Raw decoded bytes are kept: no charset conversion, trimming or
//!   re-encoding happens before verification. A repeated key, an empty key
//!   or a broken `%` escape is malformed.
//! * XML (`text/xml`, `application/xml`; WeChat Pay v2): [`XmlMap`], the
//!   flat map of the direct children of the root element, which is all a
//!   WeChat notification is. Values are the element's text and CDATA, with
//!   the five predefined entities and character references resolved and
//!   line ends normalised as an XML parser does (what the official SDKs'
//!   DOM parsers hand to their signers). Refused as malformed, never
//!   forwarded: a DOCTYPE (and so any entity declaration: the XXE class of
//!   attacks has nothing to work with), an entity other than the predefined
//!   ones, a repeated element, an element nested inside a child, attributes,
//!   comments or processing instructions, text outside the children, a
//!   declared encoding other than UTF-8, values that are not UTF-8, and
//!   anything that is not well-formed.
//! * JSON (`application/json`; WeChat Pay v3): [`JsonBody`] keeps the raw
//!   bytes (the v3 signature covers them exactly) and the parsed value. An
//!   object with a repeated key is malformed.
//! * JD Pay XML envelope (`text/xml`, `application/xml`, `text/plain` or no
//!   Content-Type: JD's demo reads the raw body whatever its type):
//!   `provider::jdpay::Envelope::parse`, which refuses DTDs, repeated
//!   elements and unexpected nesting.
//!
//! Outcomes: `TooLarge` (413), `Malformed` (400).

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http_body_util::{BodyExt, Limited};

use crate::ack::Outcome;

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
    JdXml(crate::provider::jdpay::Envelope),
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
    JdEnvelope(#[from] crate::provider::jdpay::XmlError),
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
            Ok(Payload::JdXml(crate::provider::jdpay::Envelope::parse(
                body,
            )?))
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

/// Text of an untrusted value for an error message: lossy, at most 64 chars.
fn shown(v: &[u8]) -> String {
    String::from_utf8_lossy(v).chars().take(64).collect()
}

/// A decoded `application/x-www-form-urlencoded` body: every key and value
/// percent-decoded once into one buffer, with an index sorted by key bytes.
/// Keys are unique (a repeat is a parse error) and UTF-8.
#[derive(Debug, Clone)]
pub struct Form {
    buf: Vec<u8>,
    /// (key, value) ranges into `buf`, sorted by key bytes.
    sorted: Vec<(Range<u32>, Range<u32>)>,
}

impl Form {
    pub fn parse(body: &[u8]) -> Result<Form, ParseError> {
        if body.is_empty() {
            return Err(ParseError::Empty);
        }
        let mut buf = Vec::with_capacity(body.len());
        let mut sorted = Vec::with_capacity(32);
        for segment in body.split(|&b| b == b'&') {
            if segment.is_empty() {
                continue;
            }
            let (k, v) = match segment.iter().position(|&b| b == b'=') {
                Some(i) => (&segment[..i], &segment[i + 1..]),
                None => (segment, &b""[..]),
            };
            let key = decode_into(&mut buf, k).ok_or_else(|| ParseError::PercentEscape {
                key: String::from_utf8_lossy(k).chars().take(64).collect(),
            })?;
            if key.is_empty() {
                return Err(ParseError::EmptyKey);
            }
            if std::str::from_utf8(&buf[range(&key)]).is_err() {
                return Err(ParseError::KeyEncoding);
            }
            let value = decode_into(&mut buf, v).ok_or_else(|| ParseError::PercentEscape {
                key: String::from_utf8_lossy(&buf[range(&key)])
                    .chars()
                    .take(64)
                    .collect(),
            })?;
            sorted.push((key, value));
        }
        if sorted.is_empty() {
            return Err(ParseError::Empty);
        }
        sorted.sort_unstable_by(|a, b| buf[range(&a.0)].cmp(&buf[range(&b.0)]));
        if let Some(w) = sorted
            .windows(2)
            .find(|w| buf[range(&w[0].0)] == buf[range(&w[1].0)])
        {
            return Err(ParseError::DuplicateKey {
                key: String::from_utf8_lossy(&buf[range(&w[0].0)])
                    .chars()
                    .take(64)
                    .collect(),
            });
        }
        Ok(Form { buf, sorted })
    }

    /// The decoded value of `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.sorted
            .binary_search_by(|(k, _)| self.buf[range(k)].cmp(key.as_bytes()))
            .ok()
            .map(|i| &self.buf[range(&self.sorted[i].1)])
    }

    /// The value of `key` as UTF-8 text, if present and valid.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// (key, value) pairs sorted by key bytes. Keys are valid UTF-8.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.sorted.iter().map(|(k, v)| {
            // Keys were checked to be UTF-8 in `parse`.
            let key = std::str::from_utf8(&self.buf[range(k)]).unwrap_or_default();
            (key, &self.buf[range(v)])
        })
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The same form without the fields named in `keys`.
    pub fn without(&self, keys: &[String]) -> Form {
        let buf = &self.buf;
        Form {
            buf: self.buf.clone(),
            sorted: self
                .sorted
                .iter()
                .filter(|(k, _)| !keys.iter().any(|x| x.as_bytes() == &buf[range(k)]))
                .cloned()
                .collect(),
        }
    }
}

/// `body` without the byte ranges `cut` (sorted, not overlapping).
pub fn strip_ranges(body: &[u8], cut: &[Range<usize>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut at = 0;
    for r in cut {
        if let Some(kept) = body.get(at..r.start) {
            out.extend_from_slice(kept);
        }
        at = at.max(r.end);
    }
    out.extend_from_slice(body.get(at..).unwrap_or_default());
    out
}

/// A form body without the fields whose (decoded) names are in `keys`;
/// every other byte stays as it was, segments in their order.
pub fn strip_form_fields(body: &[u8], keys: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut scratch = Vec::new();
    let mut first = true;
    for segment in body.split(|&b| b == b'&') {
        let raw_key = segment
            .iter()
            .position(|&b| b == b'=')
            .map_or(segment, |i| &segment[..i]);
        scratch.clear();
        let named = decode_into(&mut scratch, raw_key)
            .is_some_and(|_| keys.iter().any(|k| k.as_bytes() == scratch.as_slice()));
        if named {
            continue;
        }
        if !first {
            out.push(b'&');
        }
        first = false;
        out.extend_from_slice(segment);
    }
    out
}

fn range(r: &Range<u32>) -> Range<usize> {
    r.start as usize..r.end as usize
}

/// Percent-decodes `raw` (with `+` as space) onto the end of `buf`, returning
/// the range it occupies; `None` on a `%` not followed by two hex digits.
fn decode_into(buf: &mut Vec<u8>, raw: &[u8]) -> Option<Range<u32>> {
    let start = buf.len();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => buf.push(b' '),
            b'%' => {
                let hi = hex_val(*raw.get(i + 1)?)?;
                let lo = hex_val(*raw.get(i + 2)?)?;
                buf.push(hi << 4 | lo);
                i += 2;
            }
            b => buf.push(b),
        }
        i += 1;
    }
    let start = u32::try_from(start).ok()?;
    let end = u32::try_from(buf.len()).ok()?;
    Some(start..end)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

// === XML ===

/// A flat XML document: the root element's name and its direct children,
/// each name once, sorted by name. Names and values are UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlMap {
    root: String,
    /// (name, value, where the element sits in the body), sorted by name
    /// bytes.
    sorted: Vec<(String, String, Range<usize>)>,
}

/// Where the XML reader is.
enum XmlState {
    BeforeRoot,
    InRoot,
    /// Inside a child: its name, its value so far and where it starts.
    InChild(String, Vec<u8>, usize),
    AfterRoot,
}

impl XmlMap {
    /// Parses a flat XML document (see the module doc for what is refused).
    pub fn parse(body: &[u8]) -> Result<XmlMap, ParseError> {
        use quick_xml::events::Event;

        if body.trim_ascii().is_empty() {
            return Err(ParseError::Empty);
        }
        let mut reader = quick_xml::Reader::from_reader(body);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        config.allow_unmatched_ends = false;
        config.trim_text(false);

        let mut root = String::new();
        let mut sorted: Vec<(String, String, Range<usize>)> = Vec::new();
        let mut state = XmlState::BeforeRoot;
        let mut first = true;
        loop {
            // Where the next event starts (a child's `<`, for its span).
            let before = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
            let event = reader.read_event().map_err(|e| ParseError::Xml {
                reason: format!("at byte {}: {e}", reader.error_position()),
            })?;
            let at_start = std::mem::replace(&mut first, false);
            state = match (state, event) {
                (s, Event::Decl(decl)) => {
                    if !at_start {
                        return Err(xml_error("an XML declaration after the start"));
                    }
                    if let Some(enc) = decl.encoding() {
                        let enc = enc.map_err(|_| xml_error("unreadable encoding declaration"))?;
                        if !enc.eq_ignore_ascii_case(b"utf-8") && !enc.eq_ignore_ascii_case(b"utf8")
                        {
                            return Err(ParseError::Xml {
                                reason: format!("declared encoding `{}`; only UTF-8", shown(&enc)),
                            });
                        }
                    }
                    s
                }
                (_, Event::DocType(_)) => return Err(ParseError::Doctype),
                (_, Event::PI(_)) => return Err(xml_error("a processing instruction")),
                (_, Event::Comment(_)) => return Err(xml_error("a comment")),
                (XmlState::BeforeRoot, Event::Start(e)) => {
                    no_attributes(&e)?;
                    root = element_name(&e)?;
                    XmlState::InRoot
                }
                (XmlState::BeforeRoot, Event::Empty(_)) => return Err(ParseError::Empty),
                (XmlState::InRoot, Event::Start(e)) => {
                    no_attributes(&e)?;
                    XmlState::InChild(element_name(&e)?, Vec::new(), before)
                }
                (XmlState::InRoot, Event::Empty(e)) => {
                    no_attributes(&e)?;
                    let end = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
                    sorted.push((element_name(&e)?, String::new(), before..end));
                    XmlState::InRoot
                }
                (XmlState::InChild(name, ..), Event::Start(_) | Event::Empty(_)) => {
                    return Err(ParseError::XmlNesting {
                        element: shown(name.as_bytes()),
                    });
                }
                (XmlState::AfterRoot, Event::Start(_) | Event::Empty(_)) => {
                    return Err(xml_error("more than one root element"));
                }
                (XmlState::InChild(name, value, start), Event::End(_)) => {
                    let value = String::from_utf8(value).map_err(|_| ParseError::Xml {
                        reason: format!("element `{}` is not UTF-8", shown(name.as_bytes())),
                    })?;
                    let end = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
                    sorted.push((name, value, start..end));
                    XmlState::InRoot
                }
                (XmlState::InRoot, Event::End(_)) => XmlState::AfterRoot,
                (_, Event::End(_)) => return Err(xml_error("an end tag that closes nothing")),
                (XmlState::InChild(name, mut value, start), Event::Text(t)) => {
                    push_normalized(&mut value, &t);
                    XmlState::InChild(name, value, start)
                }
                (XmlState::InChild(name, mut value, start), Event::CData(t)) => {
                    push_normalized(&mut value, &t);
                    XmlState::InChild(name, value, start)
                }
                (XmlState::InChild(name, mut value, start), Event::GeneralRef(r)) => {
                    let c = resolve_reference(&r)?;
                    let mut utf8 = [0u8; 4];
                    value.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                    XmlState::InChild(name, value, start)
                }
                (s, Event::Text(t)) => {
                    if !t.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
                        return Err(xml_error("text outside the fields"));
                    }
                    s
                }
                (_, Event::CData(_) | Event::GeneralRef(_)) => {
                    return Err(xml_error("content outside the fields"));
                }
                (XmlState::AfterRoot, Event::Eof) => break,
                (_, Event::Eof) => {
                    return Err(xml_error(
                        "the document ends before its root element closes",
                    ));
                }
            };
        }
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(ParseError::DuplicateKey {
                key: shown(w[0].0.as_bytes()),
            });
        }
        Ok(XmlMap { root, sorted })
    }

    /// The root element's name.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The value of field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.sorted
            .binary_search_by(|(k, ..)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.sorted[i].1.as_str())
    }

    /// The bytes of the body where element `name` sits, from its `<` to the
    /// end of its closing tag.
    pub fn span(&self, name: &str) -> Option<Range<usize>> {
        self.sorted
            .binary_search_by(|(k, ..)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.sorted[i].2.clone())
    }

    /// The same document without the elements named in `names`.
    pub fn without(&self, names: &[String]) -> XmlMap {
        XmlMap {
            root: self.root.clone(),
            sorted: self
                .sorted
                .iter()
                .filter(|(k, ..)| !names.contains(k))
                .cloned()
                .collect(),
        }
    }

    /// (name, value) pairs sorted by name bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.sorted.iter().map(|(k, v, _)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

fn xml_error(reason: &str) -> ParseError {
    ParseError::Xml {
        reason: reason.to_owned(),
    }
}

fn element_name(e: &quick_xml::events::BytesStart<'_>) -> Result<String, ParseError> {
    String::from_utf8(e.name().as_ref().to_vec())
        .map_err(|_| xml_error("an element name is not UTF-8"))
}

fn no_attributes(e: &quick_xml::events::BytesStart<'_>) -> Result<(), ParseError> {
    if e.attributes_raw().trim_ascii().is_empty() {
        Ok(())
    } else {
        Err(ParseError::Xml {
            reason: format!("element `{}` has attributes", shown(e.name().as_ref())),
        })
    }
}

/// Appends text with XML 1.0 line-end normalisation (CR LF and lone CR
/// become LF), as every conforming parser reports it.
fn push_normalized(value: &mut Vec<u8>, text: &[u8]) {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\r' => {
                value.push(b'\n');
                if text.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b => value.push(b),
        }
        i += 1;
    }
}

/// The five predefined entities and character references; anything else
/// would need a DTD, which is never accepted.
fn resolve_reference(r: &quick_xml::events::BytesRef<'_>) -> Result<char, ParseError> {
    if r.is_char_ref() {
        return match r.resolve_char_ref() {
            Ok(Some(c)) if c != '\0' => Ok(c),
            _ => Err(ParseError::Xml {
                reason: format!("bad character reference `&{};`", shown(r)),
            }),
        };
    }
    match &**r {
        b"lt" => Ok('<'),
        b"gt" => Ok('>'),
        b"amp" => Ok('&'),
        b"apos" => Ok('\''),
        b"quot" => Ok('"'),
        other => Err(ParseError::Xml {
            reason: format!("undeclared entity `&{};`", shown(other)),
        }),
    }
}

// === JSON ===

/// A JSON body: the exact bytes received and the parsed value.
#[derive(Debug, Clone)]
pub struct JsonBody {
    raw: Bytes,
    value: serde_json::Value,
}

impl JsonBody {
    /// Parses a JSON document, refusing an object with a repeated key.
    pub fn parse(body: &[u8]) -> Result<JsonBody, ParseError> {
        if body.trim_ascii().is_empty() {
            return Err(ParseError::Empty);
        }
        let strict: StrictValue = serde_json::from_slice(body).map_err(|e| ParseError::Json {
            reason: e.to_string(),
        })?;
        Ok(JsonBody {
            raw: Bytes::copy_from_slice(body),
            value: strict.0,
        })
    }

    /// The body exactly as received.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn value(&self) -> &serde_json::Value {
        &self.value
    }
}

/// A `serde_json::Value` whose objects never repeat a key.
struct StrictValue(serde_json::Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "key `{}` appears more than once",
                    key.chars().take(64).collect::<String>()
                )));
            }
            object.insert(key, value);
        }
        Ok(serde_json::Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_once_after_splitting() {
        let f = Form::parse(b"b=x%26y%3Dz&a=%252B+1%2B&c=&d").unwrap();
        assert_eq!(f.get("a").unwrap(), b"%2B 1+");
        assert_eq!(f.get("b").unwrap(), b"x&y=z");
        assert_eq!(f.get("c").unwrap(), b"");
        assert_eq!(f.get("d").unwrap(), b"");
        assert_eq!(f.get("e"), None);
        let keys: Vec<&str> = f.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "c", "d"]);
    }

    #[test]
    fn keeps_raw_bytes() {
        // GBK bytes for 测试 stay as they are.
        let f = Form::parse(b"subject=%B2%E2%CA%D4").unwrap();
        assert_eq!(f.get("subject").unwrap(), &[0xB2, 0xE2, 0xCA, 0xD4]);
    }

    #[test]
    fn refuses_repeats_empty_keys_and_broken_escapes() {
        assert_eq!(
            Form::parse(b"a=1&b=2&a=3").unwrap_err(),
            ParseError::DuplicateKey { key: "a".into() }
        );
        assert_eq!(
            Form::parse(b"a=1&%61=3").unwrap_err(),
            ParseError::DuplicateKey { key: "a".into() }
        );
        assert_eq!(Form::parse(b"=1").unwrap_err(), ParseError::EmptyKey);
        assert!(matches!(
            Form::parse(b"a=%zz"),
            Err(ParseError::PercentEscape { .. })
        ));
        assert!(matches!(
            Form::parse(b"a=%4"),
            Err(ParseError::PercentEscape { .. })
        ));
        assert_eq!(Form::parse(b"%FF=1").unwrap_err(), ParseError::KeyEncoding);
        assert_eq!(Form::parse(b"").unwrap_err(), ParseError::Empty);
        assert_eq!(Form::parse(b"&&").unwrap_err(), ParseError::Empty);
    }

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
    fn never_panics_on_arbitrary_bytes() {
        // A small deterministic generator: every byte value, in every
        // position, with the separators we care about over-represented.
        let alphabet: Vec<u8> = b"%&=+aZ09".iter().copied().chain(0..=255u8).collect();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 48) as usize;
            let body: Vec<u8> = (0..len)
                .map(|i| alphabet[((state >> (i % 56)) as usize + i * 31) % alphabet.len()])
                .collect();
            let _ = Form::parse(&body);
        }
    }
    #[test]
    fn xml_flat_fields_with_cdata_text_and_entities() {
        let x = XmlMap::parse(
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<xml>\n <b><![CDATA[x<y]]></b>\n \
              <a>1 &amp; 2 &lt;&#x4E3B;&#24215;&gt;</a><c/><d></d><e>l1\r\nl2\rl3</e>\n</xml>\n",
        )
        .unwrap();
        assert_eq!(x.root(), "xml");
        assert_eq!(x.get("a"), Some("1 & 2 <主店>"));
        assert_eq!(x.get("b"), Some("x<y"));
        assert_eq!(x.get("c"), Some(""));
        assert_eq!(x.get("d"), Some(""));
        assert_eq!(x.get("e"), Some("l1\nl2\nl3"));
        let names: Vec<&str> = x.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        // A CDATA section split in two, and text around it, concatenate.
        let x = XmlMap::parse(b"<xml><a>p<![CDATA[]]]]><![CDATA[>]]>q</a></xml>").unwrap();
        assert_eq!(x.get("a"), Some("p]]>q"));
    }

    #[test]
    fn xml_refusals() {
        let refused: &[(&[u8], &str)] = &[
            (
                b"<!DOCTYPE xml [<!ENTITY e \"x\">]><xml><a>&e;</a></xml>",
                "doctype",
            ),
            (
                b"<!DOCTYPE xml><xml><a>1</a></xml>",
                "doctype without entities",
            ),
            (b"<xml><a>&e;</a></xml>", "undeclared entity"),
            (b"<xml><a>1</a><a>2</a></xml>", "repeated element"),
            (b"<xml><a><b>1</b></a></xml>", "nesting"),
            (b"<xml><a><b/></a></xml>", "nested empty element"),
            (b"<xml><a x=\"1\">1</a></xml>", "attributes"),
            (b"<xml y=\"1\"><a>1</a></xml>", "root attributes"),
            (b"<xml><!-- c --><a>1</a></xml>", "comment"),
            (b"<xml><?pi x?><a>1</a></xml>", "processing instruction"),
            (b"<xml>text<a>1</a></xml>", "text in the root"),
            (b"<xml><a>1</a></xml>trailing", "text after the root"),
            (b"<xml><a>1</a></xml><xml></xml>", "two roots"),
            (b"<xml><a>1</a>", "unclosed root"),
            (b"<xml><a>1</b></xml>", "mismatched end"),
            (b"<xml><a>\xff</a></xml>", "not UTF-8"),
            (
                b"<?xml version=\"1.0\" encoding=\"GBK\"?><xml><a>1</a></xml>",
                "GBK",
            ),
            (b"<xml><a>&#0;</a></xml>", "NUL reference"),
            (b"<xml/>", "empty root"),
            (b"", "empty"),
            (b"  \n", "blank"),
            (
                b"<xml><a>1</a></xml><?xml version=\"1.0\"?>",
                "late declaration",
            ),
            (b"<![CDATA[x]]><xml><a>1</a></xml>", "CDATA outside"),
        ];
        for (body, why) in refused {
            assert!(XmlMap::parse(body).is_err(), "{why}");
        }
        assert_eq!(
            XmlMap::parse(
                b"<!DOCTYPE xml [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml><a>&e;</a></xml>"
            )
            .unwrap_err(),
            ParseError::Doctype
        );
        assert_eq!(
            XmlMap::parse(b"<xml><a>1</a><a>1</a></xml>").unwrap_err(),
            ParseError::DuplicateKey { key: "a".into() }
        );
        assert_eq!(
            XmlMap::parse(b"<xml><a><b>1</b></a></xml>").unwrap_err(),
            ParseError::XmlNesting {
                element: "a".into()
            }
        );
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
    fn json_keeps_raw_bytes_and_refuses_repeated_keys() {
        let raw = br#"{"b":1, "a":{"x":[1,2,{"y":null}]},"c":"\u4e3b\/"}"#;
        let j = JsonBody::parse(raw).unwrap();
        assert_eq!(j.raw(), raw);
        assert_eq!(j.value()["c"], "主/");
        assert_eq!(j.value()["a"]["x"][2]["y"], serde_json::Value::Null);
        for bad in [
            &br#"{"a":1,"a":2}"#[..],
            br#"{"r":{"a":1,"a":1}}"#,
            br#"[{"a":1,"a":1}]"#,
            b"{",
            b"",
            b"{} {}",
        ] {
            assert!(
                JsonBody::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(parse(Format::Json, &h, b"{}").is_ok());
        h.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(parse(Format::Json, &h, b"{}").is_err());
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
