//! One journal line, written by hand into the writer's reused buffer: the
//! bytes `serde_json` writes for the same [`Record`](super::Record) (keys
//! in the same order, strings escaped the same way, optional fields left
//! out the same way), without serde's per-field dispatch. An arrival is
//! written from what the request already holds ([`ArrivalLine`]): no
//! owned copy of its fields, and the body Base64-encoded straight into
//! the line.
//!
//! The readers (`serde_json::from_slice::<Record>`) are unchanged; the
//! unit tests below hold the bytes equal to `serde_json`'s over hostile
//! values (quotes, backslashes, every control character, non-ASCII text,
//! extreme numbers).

use super::{OutcomeRecord, Received};

/// An arrival's record as the request holds it, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct ArrivalLine<'a> {
    pub rid: &'a str,
    pub unix: i64,
    pub route: &'a str,
    /// The route's replay namespace when it is not its name.
    pub namespace: Option<&'a str>,
    pub provider: &'a str,
    pub merchant: &'a str,
    pub event_id: &'a str,
    pub client: &'a str,
    /// End-to-end request headers, in order.
    pub headers: Headers<'a>,
    pub body: Body<'a>,
    pub attempt: u32,
    pub order: Option<&'a str>,
}

/// An arrival's headers: borrowed from the request, or from a read record.
#[derive(Debug, Clone, Copy)]
pub enum Headers<'a> {
    Borrowed(&'a [(&'a str, &'a str)]),
    Owned(&'a [(String, String)]),
}

/// An arrival's body: the request's bytes (encoded here) or a record's
/// Base64 text.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    Raw(&'a [u8]),
    Encoded(&'a str),
}

impl<'a> ArrivalLine<'a> {
    /// The view of a record read back or built by hand (tests, tools).
    pub fn of(r: &'a Received) -> ArrivalLine<'a> {
        ArrivalLine {
            rid: &r.rid,
            unix: r.unix,
            route: &r.route,
            namespace: r.namespace.as_deref(),
            provider: &r.provider,
            merchant: &r.merchant,
            event_id: &r.event_id,
            client: &r.client,
            headers: Headers::Owned(&r.headers),
            body: Body::Encoded(&r.body),
            attempt: r.attempt,
            order: r.order.as_deref(),
        }
    }
}

/// Appends the arrival's line (with its line break) to `line`.
pub fn arrival(line: &mut Vec<u8>, a: &ArrivalLine<'_>) -> Result<(), base64::EncodeSliceError> {
    line.extend_from_slice(b"{\"type\":\"received\",\"rid\":");
    string(line, a.rid);
    line.extend_from_slice(b",\"unix\":");
    integer(line, a.unix);
    key_string(line, b",\"route\":", a.route);
    if let Some(namespace) = a.namespace {
        key_string(line, b",\"namespace\":", namespace);
    }
    key_string(line, b",\"provider\":", a.provider);
    key_string(line, b",\"merchant\":", a.merchant);
    key_string(line, b",\"event_id\":", a.event_id);
    key_string(line, b",\"client\":", a.client);
    line.extend_from_slice(b",\"headers\":[");
    let mut pair = |i: usize, name: &str, value: &str| {
        if i > 0 {
            line.push(b',');
        }
        line.push(b'[');
        string(line, name);
        line.push(b',');
        string(line, value);
        line.push(b']');
    };
    match a.headers {
        Headers::Borrowed(h) => h.iter().enumerate().for_each(|(i, (n, v))| pair(i, n, v)),
        Headers::Owned(h) => h.iter().enumerate().for_each(|(i, (n, v))| pair(i, n, v)),
    }
    line.extend_from_slice(b"],\"body\":");
    match a.body {
        Body::Raw(bytes) => base64(line, bytes)?,
        Body::Encoded(text) => string(line, text),
    }
    line.extend_from_slice(b",\"attempt\":");
    integer(line, a.attempt);
    if let Some(order) = a.order {
        key_string(line, b",\"order\":", order);
    }
    line.extend_from_slice(b"}\n");
    Ok(())
}

/// Appends the outcome's line (with its line break) to `line`.
pub fn outcome(line: &mut Vec<u8>, o: &OutcomeRecord) {
    line.extend_from_slice(b"{\"type\":\"outcome\",\"rid\":");
    string(line, &o.rid);
    line.extend_from_slice(b",\"unix\":");
    integer(line, o.unix);
    key_string(line, b",\"route\":", &o.route);
    if let Some(namespace) = &o.namespace {
        key_string(line, b",\"namespace\":", namespace);
    }
    key_string(line, b",\"merchant\":", &o.merchant);
    key_string(line, b",\"event_id\":", &o.event_id);
    key_string(line, b",\"outcome\":", &o.outcome);
    line.extend_from_slice(b",\"status\":");
    integer(line, o.status);
    line.extend_from_slice(if o.redelivery {
        b",\"redelivery\":true"
    } else {
        b",\"redelivery\":false"
    });
    if let Some(s) = o.shop_status {
        line.extend_from_slice(b",\"shop_status\":");
        integer(line, s);
    }
    if let Some(ms) = o.shop_ms {
        line.extend_from_slice(b",\"shop_ms\":");
        float(line, ms);
    }
    line.extend_from_slice(b"}\n");
}

fn key_string(line: &mut Vec<u8>, key: &[u8], value: &str) {
    line.extend_from_slice(key);
    string(line, value);
}

/// `s` as a JSON string, escaped as `serde_json` escapes (RFC 8259: the
/// quote, the backslash, the control characters; `\u00xx` in lower-case
/// hex where there is no short form), in runs between escapes.
fn string(line: &mut Vec<u8>, s: &str) {
    line.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        line.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            line.extend_from_slice(b"\\u00");
            line.push(HEX[usize::from(b >> 4)]);
            line.push(HEX[usize::from(b & 0xf)]);
        } else {
            line.extend_from_slice(short);
        }
        start = i + 1;
    }
    line.extend_from_slice(&bytes[start..]);
    line.push(b'"');
}

/// `bytes` in standard Base64 as a JSON string (its alphabet needs no
/// escaping).
fn base64(line: &mut Vec<u8>, bytes: &[u8]) -> Result<(), base64::EncodeSliceError> {
    use base64::Engine as _;
    line.push(b'"');
    let at = line.len();
    // At most 4/3 of a request body that fitted in memory: no overflow.
    let n = bytes.len().div_ceil(3) * 4;
    line.resize(at + n, 0);
    let written = base64::engine::general_purpose::STANDARD.encode_slice(bytes, &mut line[at..])?;
    line.truncate(at + written);
    line.push(b'"');
    Ok(())
}

/// An integer in decimal, as `serde_json` writes it (with the same
/// `itoa` crate).
fn integer(line: &mut Vec<u8>, n: impl itoa::Integer) {
    line.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// As `serde_json` writes an `f64` (its shortest round-trip form; `null`
/// when not finite). Rare (one per outcome), so `serde_json` does it.
fn float(line: &mut Vec<u8>, x: f64) {
    if serde_json::to_writer(&mut *line, &x).is_err() {
        line.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::super::Record;
    use super::*;

    fn hostile() -> Vec<String> {
        let controls: String = (0u8..0x20).map(char::from).collect();
        vec![
            String::new(),
            "plain".into(),
            "quote \" backslash \\ slash / \"body\":\"\"".into(),
            controls,
            "\u{7f} é 中文 \u{2028}\u{2029} 😀 \u{fffd}".into(),
            "\\u0000 \\\" trailing backslash \\".into(),
        ]
    }

    fn serde_line(r: &Record) -> Vec<u8> {
        let mut v = serde_json::to_vec(r).unwrap();
        v.push(b'\n');
        v
    }

    #[test]
    fn arrivals_are_the_bytes_serde_json_writes() {
        let values = hostile();
        for (i, v) in values.iter().enumerate() {
            let w = &values[(i + 1) % values.len()];
            for (unix, attempt, order) in [
                (0, 1, None),
                (i64::MIN, u32::MAX, Some(v.clone())),
                (i64::MAX, 0, Some(String::new())),
                (-1, 7, Some(w.clone())),
            ] {
                let r = Received {
                    rid: v.clone(),
                    unix,
                    route: w.clone(),
                    namespace: order.clone(),
                    provider: v.clone(),
                    merchant: w.clone(),
                    event_id: v.clone(),
                    client: w.clone(),
                    headers: values
                        .iter()
                        .take(i)
                        .map(|h| (h.clone(), w.clone()))
                        .collect(),
                    body: v.clone(),
                    attempt,
                    order,
                };
                let mut ours = Vec::new();
                arrival(&mut ours, &ArrivalLine::of(&r)).unwrap();
                let want = serde_line(&Record::Received(r.clone()));
                assert_eq!(
                    String::from_utf8_lossy(&ours),
                    String::from_utf8_lossy(&want)
                );
                assert_eq!(ours, want);
                // Borrowed headers and a raw body: the same line as the
                // record holding them owned and encoded.
                use base64::Engine as _;
                let raw: Vec<u8> = v.bytes().chain(0..=255u8).collect();
                let pairs: Vec<(&str, &str)> = r
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let mut view = ArrivalLine::of(&r);
                view.headers = Headers::Borrowed(&pairs);
                view.body = Body::Raw(&raw);
                let mut ours = Vec::new();
                arrival(&mut ours, &view).unwrap();
                let mut encoded = r.clone();
                encoded.body = base64::engine::general_purpose::STANDARD.encode(&raw);
                assert_eq!(ours, serde_line(&Record::Received(encoded)));
            }
        }
    }

    #[test]
    fn outcomes_are_the_bytes_serde_json_writes() {
        let values = hostile();
        for (i, v) in values.iter().enumerate() {
            let w = &values[(i + 1) % values.len()];
            for (unix, status, redelivery, shop_status, shop_ms) in [
                (0, 200, false, None, None),
                (i64::MIN, 0, true, Some(0), Some(0.0)),
                (i64::MAX, u16::MAX, false, Some(u16::MAX), Some(1.234_567)),
                (-5, 503, true, None, Some(f64::NAN)),
                (1, 401, false, Some(500), Some(f64::INFINITY)),
                (2, 502, false, None, Some(1e300)),
                (3, 504, true, Some(200), Some(-0.0)),
                (4, 200, false, Some(200), Some(12.5e-7)),
            ] {
                let o = OutcomeRecord {
                    rid: v.clone(),
                    unix,
                    route: w.clone(),
                    namespace: shop_ms.map(|_| v.clone()),
                    merchant: v.clone(),
                    event_id: w.clone(),
                    outcome: v.clone(),
                    status,
                    redelivery,
                    shop_status,
                    shop_ms,
                };
                let mut ours = Vec::new();
                outcome(&mut ours, &o);
                assert_eq!(
                    String::from_utf8_lossy(&ours),
                    String::from_utf8_lossy(&serde_line(&Record::Outcome(o.clone())))
                );
            }
        }
    }

    #[test]
    fn integers_are_written_like_serde_json() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            -1,
            -10,
            i64::MIN,
            i64::MAX,
            1_733_000_000,
        ] {
            let mut ours = Vec::new();
            integer(&mut ours, n);
            assert_eq!(ours, serde_json::to_vec(&n).unwrap());
        }
        for n in [0, 7, 10, 65535, u64::from(u32::MAX), u64::MAX] {
            let mut ours = Vec::new();
            integer(&mut ours, n);
            assert_eq!(ours, serde_json::to_vec(&n).unwrap());
        }
    }
}
