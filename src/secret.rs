//! Secrets and the helpers that keep them out of logs.
//!
//! A [`Secret`] holds key material (the upstream HMAC key, MD5 partner keys,
//! API keys). Its `Debug` and `Display` never show the bytes, and its memory
//! is wiped on drop. MAC and signature strings are compared with
//! [`ct_eq`], never `==`. [`mask`] shortens a signature or account id to
//! something an operator can correlate but nobody can reuse, [`shown`]
//! cuts an untrusted value short for a message, and [`redact_url`] takes the
//! password out of a URL before it is printed.

use std::fmt;
use std::path::Path;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Raw secret bytes, redacted when printed.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(Zeroizing::new(bytes.into()))
    }

    /// Reads a secret file: the file holds the raw bytes, one trailing
    /// newline (`\n` or `\r\n`) is ignored, and an empty secret is an error.
    pub fn from_file(path: &Path) -> Result<Self, SecretFileError> {
        let mut bytes = Zeroizing::new(std::fs::read(path).map_err(|e| SecretFileError::Read {
            reason: crate::load::io_reason(&e),
        })?);
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        if bytes.is_empty() {
            return Err(SecretFileError::Empty);
        }
        Ok(Secret(bytes))
    }

    /// The secret bytes, for the one place that feeds them to a MAC.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// Equal bytes, compared in constant time (a changed secret file is a
/// changed setting for `reload`).
impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why a secret file could not be used. Never carries the file's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read the secret file: {reason}")]
    Read { reason: String },
    #[error("the secret file is empty")]
    Empty,
}

/// Constant-time equality for MACs, digests and signature strings.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Text of an untrusted value for a message (an error, a log line): lossy
/// UTF-8, at most 64 characters, so no message carries a whole field.
pub fn shown(v: &[u8]) -> String {
    String::from_utf8_lossy(v).chars().take(64).collect()
}

/// Keeps the first four and last two characters of a value that must not
/// appear in full in a log line (a signature, a buyer's account id).
pub fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}…{tail}")
}

/// `redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new(b"hunter2-very-secret".to_vec());
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(format!("{s}"), "[redacted]");
        assert!(!format!("{s:?}{s}").contains("hunter2"));
    }

    #[test]
    fn file_strips_one_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, b"abc\n\n").unwrap();
        assert_eq!(Secret::from_file(&p).unwrap().expose(), b"abc\n");
        std::fs::write(&p, b"abc\r\n").unwrap();
        assert_eq!(Secret::from_file(&p).unwrap().expose(), b"abc");
        std::fs::write(&p, b"\n").unwrap();
        assert_eq!(Secret::from_file(&p).unwrap_err(), SecretFileError::Empty);
        assert!(matches!(
            Secret::from_file(&dir.path().join("missing")),
            Err(SecretFileError::Read { .. })
        ));
    }

    #[test]
    fn ct_eq_compares_content_and_length() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }

    #[test]
    fn mask_hides_the_middle() {
        assert_eq!(mask("QfTb8tqEabcdefghlrmOQ=="), "QfTb…==");
        assert_eq!(mask("short"), "*****");
        assert_eq!(mask("支付宝账户一二三四五"), "支付宝账…四五");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(redact_url("rediss://u:p@h:1/2"), "rediss://u:***@h:1/2");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }
}
