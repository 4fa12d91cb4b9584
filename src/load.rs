//! Loading the configuration (`callgate check`, start-up, reload), before
//! any request: the one [`Loader`] value a load runs with, which owns every
//! problem, warning and file the load finds; what a problem is and where
//! ([`Located`]: `PATH:LINE: message`; the gateway file's [`ConfigError`]s
//! and the rule files' [`RuleError`]s); [`FileCtx`], one rule file being
//! compiled; the TOML duration type both kinds of file use; and the
//! operator-facing reasons for a file that cannot be read. It never prints
//! file contents and never writes anything.
//!
//! `config::load` runs a load: the gateway file (`config`), then every
//! rule file (`rules`, each provider's keys, `expiry`, `limit`), all of
//! them recording into the same loader.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::ops::Range;

use serde::{Deserialize, Deserializer};
use toml::Spanned;
use toml::de::{DeValue, ValueDeserializer};

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

// === problems ===

/// A problem of either kind of file, where it is. A load reports every
/// one: the gateway file's first, then the rule files' in name order.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    Config(Located<ConfigError>),
    Rule(Located<RuleError>),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Config(p) => p.fmt(f),
            Problem::Rule(p) => p.fmt(f),
        }
    }
}

impl From<Located<ConfigError>> for Problem {
    fn from(p: Located<ConfigError>) -> Problem {
        Problem::Config(p)
    }
}

impl From<Located<RuleError>> for Problem {
    fn from(p: Located<RuleError>) -> Problem {
        Problem::Rule(p)
    }
}

/// The problems of a failed load, one per line when displayed.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadErrors(pub Vec<Problem>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// What is wrong in the gateway file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the gateway file: {reason}")]
    Read { reason: String },
    #[error("{message}")]
    Syntax { message: String },
    #[error("{field} `{value}` is not a socket address like 127.0.0.1:8443")]
    Addr { field: &'static str, value: String },
    #[error(
        "trusted_proxies entry `{value}` is not a CIDR like 10.0.0.0/8 or an address: {reason}"
    )]
    TrustedProxy { value: String, reason: String },
    #[error(
        "listen.{set} is set but listen.{missing} is not: set both for TLS, or neither for plain HTTP"
    )]
    TlsHalf {
        set: &'static str,
        missing: &'static str,
    },
    #[error("listen.{field} `{file}`: {reason}")]
    Tls {
        field: &'static str,
        file: String,
        reason: String,
    },
    #[error(
        "listen.tls_cert `{file}`: certificate `{subject}` expired on {at}; clients refuse it: install a renewed certificate"
    )]
    TlsExpired {
        file: String,
        subject: String,
        at: String,
    },
    #[error("rules_dir `{dir}`: {reason}")]
    RulesDir { dir: String, reason: String },
    #[error(
        "replay.store `{value}` is neither \"memory\", \"sentinel\", \"cluster\" nor a redis://host:port/db URL"
    )]
    Store { value: String },
    #[error("replay.store `{value}`: {reason}")]
    StoreUrl { value: String, reason: String },
    #[error("replay.tls_ca `{file}`: {reason}")]
    StoreCa { file: String, reason: String },
    #[error("replay.{field}: {reason}")]
    Replay { field: &'static str, reason: String },
    #[error("replay.{field} `{file}`: {reason}")]
    ReplayFile {
        field: &'static str,
        file: String,
        reason: String,
    },
    #[error("journal.dir `{dir}`: {reason}")]
    JournalDir { dir: String, reason: String },
    #[error("{field} must be greater than zero")]
    Zero { field: &'static str },
    #[error("admin.token_file `{file}`: {reason}")]
    AdminToken { file: String, reason: String },
    #[error(
        "limits.max_connections_unlisted ({unlisted}) is above limits.max_connections ({total}): \
         set it lower, so that the platforms' own addresses keep room"
    )]
    UnlistedAboveTotal { unlisted: u64, total: u64 },
    #[error(
        "listen.workers = {workers}: at most {max}; more threads than cores only add hand-offs"
    )]
    TooManyWorkers { workers: u64, max: u64 },
}

/// What is wrong in a rule file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("cannot read the rule file: {reason}")]
    Read { reason: String },
    #[error("{message}")]
    Syntax { message: String },
    #[error("unknown top-level key `{key}`: a rule file holds only [[route]] tables")]
    TopLevel { key: String },
    #[error("`route` must be an array of tables, written [[route]]")]
    RouteShape,
    #[error(
        "route name `{name}` is used twice (first at {first}); names label metrics and namespace replay state, so they must be unique"
    )]
    DuplicateName { name: String, first: String },
    #[error("route name `{name}` must be 1-64 characters of letters, digits, `.`, `_` or `-`")]
    BadName { name: String },
    #[error("path `{path}` is already routed by route `{other}` at {first}")]
    DuplicatePath {
        path: String,
        other: String,
        first: String,
    },
    #[error("path `{path}` must start with `/` and hold no query, fragment or spaces")]
    BadPath { path: String },
    #[error(
        "allow entry `{value}` is not a CIDR like 110.75.0.0/16, an address, or @set: {reason}"
    )]
    Cidr { value: String, reason: String },
    #[error("unknown IP set `{name}`: there is no ipsets/{set}.toml in the rules directory")]
    UnknownIpSet { name: String, set: String },
    #[error(
        "IP set file name `{name}` must be letters, digits, `.`, `_` or `-` (it is how routes refer to it, as @name)"
    )]
    BadIpSetName { name: String },
    #[error("cidrs entry `{value}` is not a CIDR or an address: {reason}")]
    IpSetEntry { value: String, reason: String },
    #[error("upstream `{value}`: {reason}")]
    Upstream { value: String, reason: String },
    #[error("upstream_secret_file `{file}`: {reason}")]
    SecretFile { file: String, reason: String },
    #[error("upstream_ca `{file}`: {reason}")]
    UpstreamCa { file: String, reason: String },
    #[error("{field} must be greater than zero")]
    Zero { field: &'static str },
    #[error("success_body must not be empty; leave it out to accept any 2xx")]
    EmptySuccessBody,
    #[error("provider `{provider}` needs a [route.keys] table ({needs})")]
    MissingKeys {
        provider: &'static str,
        needs: &'static str,
    },
    #[error("keys.{field} `{file}`: {reason}")]
    KeyFile {
        field: String,
        file: String,
        reason: String,
    },
    #[error("keys.{field}: {reason}")]
    KeyValue { field: String, reason: String },
    #[error("missing field `{field}`: {why}")]
    MissingUpstream {
        field: &'static str,
        why: &'static str,
    },
    #[error("give either [route.keys] or [[route.merchant]] tables, not both")]
    KeysAndMerchants,
    #[error("merchant `{id}` is listed twice in this route (first at {first})")]
    DuplicateMerchant { id: String, first: String },
    #[error(
        "replay.ttl {ttl} is shorter than this route's freshness window ({window}: max_age plus the {future} a signed time may lie in the future); a copy of a delivered event could then pass freshness after its delivery is forgotten: raise replay.ttl to at least {window}, or lower max_age"
    )]
    ReplayTtlTooShort {
        ttl: String,
        window: String,
        future: String,
    },
    /// A key certificate past its notAfter (see `expiry`).
    #[error("{what} expired on {at}; {advice}")]
    CertificateExpired {
        what: String,
        at: String,
        advice: &'static str,
    },
    #[error("rate_limit: {reason}")]
    RateLimit { reason: String },
    #[error(
        "replay_quota: the routes' quotas add up to {total}, above replay.max_entries ({max}): \
         lower them or raise replay.max_entries"
    )]
    QuotasOverMax { total: u64, max: u64 },
    #[error("forward_headers: {reason}; list only headers the shop needs from the platform")]
    ForwardHeader { reason: String },
}

// === the loader ===

/// One load of the configuration (`callgate check`, start-up, reload): it
/// owns everything the load finds besides the configuration itself, every
/// problem, every warning and every file read or named, so no step has to
/// hand them on. [`Loader::finish`] ends the load: `Err` with every problem
/// at once, or the warnings and the files to watch.
#[derive(Debug, Default)]
pub struct Loader {
    problems: Vec<Problem>,
    warnings: Vec<Located<Warning>>,
    files: Vec<PathBuf>,
}

/// What a load that found no problem says besides the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Valid but risky settings, `PATH:LINE: warning: message`, printed by
    /// `check` and logged at start and on reload.
    pub warnings: Vec<Located<Warning>>,
    /// Every file and directory the load read or a setting named, sorted:
    /// a change to any of them triggers a reload (`reload::watch`).
    pub files: Vec<PathBuf>,
}

impl Loader {
    pub fn new() -> Loader {
        Loader::default()
    }

    /// Records a problem: the load fails, after every other problem was
    /// found too.
    pub fn problem(&mut self, problem: impl Into<Problem>) {
        self.problems.push(problem.into());
    }

    /// Records a warning: valid, but an operator should know.
    pub fn warn(&mut self, warning: Located<Warning>) {
        self.warnings.push(warning);
    }

    /// Remembers a file or directory the configuration read or names.
    pub fn touch(&mut self, path: PathBuf) {
        self.files.push(path);
    }

    pub fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    /// The files touched so far, sorted, each once.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = self.files.clone();
        files.sort();
        files.dedup();
        files
    }

    /// Compiles one rule file with this loader: `src` is its text.
    pub fn file<'a>(&'a mut self, file: &'a Path, src: &'a str) -> FileCtx<'a> {
        FileCtx {
            loader: self,
            file,
            dir: file.parent().unwrap_or(Path::new("")).to_path_buf(),
            src,
            failed: false,
        }
    }

    /// Ends a load that cannot go on (the gateway file does not parse):
    /// the problems found so far.
    pub fn fail(self) -> LoadErrors {
        LoadErrors(self.problems)
    }

    /// Ends the load: every problem, or the warnings and files.
    pub fn finish(self) -> Result<Report, LoadErrors> {
        if !self.problems.is_empty() {
            return Err(LoadErrors(self.problems));
        }
        let files = self.files();
        Ok(Report {
            warnings: self.warnings,
            files,
        })
    }
}

/// A warning's message: `warning: ` and what an operator should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(pub String);

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning: {}", self.0)
    }
}

/// One rule file (or IP set file) being compiled: its path and text, for
/// `PATH:LINE`, its directory, against which the paths it names resolve,
/// and the loader its problems, warnings and files go to.
pub struct FileCtx<'a> {
    loader: &'a mut Loader,
    pub file: &'a Path,
    pub dir: PathBuf,
    pub src: &'a str,
    /// A problem was recorded since [`FileCtx::start_table`].
    failed: bool,
}

impl<'a> FileCtx<'a> {
    /// Records a problem at a span of this file.
    pub fn error(&mut self, span: Range<usize>, error: RuleError) {
        self.failed = true;
        self.loader.problem(self.at(span, error));
    }

    /// Records a warning at a span of this file.
    pub fn warn(&mut self, span: Range<usize>, message: impl fmt::Display) {
        let warning = self.at(span, Warning(message.to_string()));
        self.loader.warn(warning);
    }

    /// `e` where `span` starts.
    fn at<E>(&self, span: Range<usize>, e: E) -> Located<E> {
        Located {
            file: self.file.to_path_buf(),
            line: Some(line_of(self.src, span.start)),
            error: e,
        }
    }

    /// Starts a table (a route): [`FileCtx::failed`] says from now on
    /// whether this table had a problem.
    pub fn start_table(&mut self) {
        self.failed = false;
    }

    /// Whether a problem was recorded since the table started.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Records a serde/TOML error, converting its span to a line.
    pub fn toml_error(&mut self, fallback: Range<usize>, e: &toml::de::Error) {
        let span = e.span().unwrap_or(fallback);
        self.error(
            span,
            RuleError::Syntax {
                message: e.message().trim().to_owned(),
            },
        );
    }

    /// Deserialises a spanned TOML value, recording the error if it fails.
    pub fn deserialize<T: for<'de> Deserialize<'de>>(
        &mut self,
        value: Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let span = value.span();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.toml_error(span, &e);
                None
            }
        }
    }

    /// Resolves a path named in this file against the file's directory, and
    /// remembers it: a change to it triggers a reload.
    pub fn resolve(&mut self, p: &str) -> PathBuf {
        let path = resolve(&self.dir, p);
        self.loader.touch(path.clone());
        path
    }

    /// `file:line` of a span, for messages that point back at a definition.
    pub fn here(&self, span: Range<usize>) -> String {
        format!("{}:{}", self.file.display(), line_of(self.src, span.start))
    }

    /// The loader, for what this file reads besides itself.
    pub fn loader(&mut self) -> &mut Loader {
        self.loader
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

/// The longest duration accepted anywhere: 100 years, far above any
/// timeout, `max_age` or `replay.ttl` (the test configurations use about 23
/// years), and far below what a clock or another duration can have added
/// to it. Unbounded, `max_age = "18446744073709551615s"` made `check` panic
/// and a SIGHUP reading it end the running gateway, and a `drain_timeout`
/// that long panicked at SIGTERM.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses `300ms`, `5s`, `10m`, `25h` (and compounds like `1h30m`), at
/// most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration `{s}`: write a number and a unit, like 300ms, 5s, 10m or 25h");
    let t = s.trim();
    if t.is_empty() || !t.as_bytes()[0].is_ascii_digit() || t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let d = humantime::parse_duration(t).map_err(|_| bad())?;
    if d > MAX_DURATION {
        return Err(format!(
            "invalid duration `{s}`: longer than 876000h (100 years), the most callgate accepts"
        ));
    }
    Ok(d)
}

// === URLs ===

/// Parses and checks a URL callgate sends requests to (an upstream,
/// notify_verify): absolute http:// or https:// with a host.
pub fn http_url(value: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = value.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("must start with http:// or https://".to_owned()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    Ok(uri)
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
        assert_eq!(parse_duration("876000h").unwrap(), MAX_DURATION);
        for too_long in ["876001h", "18446744073709551615s"] {
            let e = parse_duration(too_long).unwrap_err();
            assert!(e.contains("longer than 876000h"), "{too_long}: {e}");
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

    #[test]
    fn upstream_urls() {
        assert!(http_url("http://127.0.0.1:8080/plus/notify.php").is_ok());
        assert!(http_url("https://shop.example/notify?code=alipay").is_ok());
        assert!(http_url("ftp://x/").is_err());
        assert!(http_url("/relative").is_err());
        assert!(http_url("not a url").is_err());
    }
}
