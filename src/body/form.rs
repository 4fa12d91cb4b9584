//! Forms (`application/x-www-form-urlencoded`: Alipay, legacy Alipay,
//! UnionPay), part of the body step: split on `&` and the first `=`, then
//! percent-decode each key and value exactly once (`+` is a space). Raw
//! decoded bytes are kept: no charset conversion, trimming or re-encoding
//! happens before verification. A repeated key, an empty key or a broken
//! `%` escape is malformed. A pure function of `&[u8]` that never panics.

use std::ops::Range;

use super::ParseError;

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
}
