//! The vocabulary of loading the configuration (`callgate check`, start-up,
//! reload): where a problem is ([`Located`]: `PATH:LINE: message`), the
//! TOML duration type both kinds of file use, and the operator-facing
//! reasons for a file that cannot be read. Not part of the request flow.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

// === where ===

/// A problem and where it is: `PATH:LINE: message`.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<E> {
    pub file: PathBuf,
    /// 1-based line, when the problem has one.
    pub line: Option<usize>,
    pub error: E,
}

impl<E: fmt::Display> fmt::Display for Located<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.error),
            None => write!(f, "{}: {}", self.file.display(), self.error),
        }
    }
}

/// 1-based line of a byte offset in `src`.
pub fn line_of(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Resolves `p` against `base`'s directory unless it is absolute.
pub fn resolve(base_dir: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

// === durations ===

/// A duration written `300ms`, `5s`, `10m`, `25h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `300ms`, `5s`, `10m`, `25h` (and compounds like `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration `{s}`: write a number and a unit, like 300ms, 5s, 10m or 25h");
    let t = s.trim();
    if t.is_empty() || !t.as_bytes()[0].is_ascii_digit() || t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    humantime::parse_duration(t).map_err(|_| bad())
}

// === reasons ===

/// An operator-facing reason for an I/O failure.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        std::io::ErrorKind::IsADirectory => "is a directory".to_owned(),
        k => k.to_string(),
    }
}

/// An operator-facing reason for a PEM read failure.
pub fn pem_reason(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(io) => format!("cannot read: {}", io_reason(io)),
        Error::NoItemsFound => "not a PEM file with the expected block".to_owned(),
        other => format!("not valid PEM: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("25h").unwrap(), Duration::from_secs(90_000));
        for bad in ["", "5", "h", "5 parsecs", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines() {
        let src = "a\nb\nc";
        assert_eq!(line_of(src, 0), 1);
        assert_eq!(line_of(src, 2), 2);
        assert_eq!(line_of(src, 4), 3);
        assert_eq!(line_of(src, 100), 3);
    }
}
