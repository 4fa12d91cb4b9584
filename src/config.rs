//! The gateway file (`callgate.toml`): raw serde structs that mirror the
//! TOML exactly (`deny_unknown_fields` everywhere), then [`Config`], the
//! compiled settings with parsed addresses, CIDRs, durations and a loaded
//! TLS configuration.
//!
//! [`load`] is the one loader behind `callgate check`, start-up and reload:
//! it reads the gateway file and every rule file, and returns either the
//! whole compiled configuration or every problem it found, each as
//! `PATH:LINE: message`. It never prints file contents.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::allow::parse_net;
use crate::load::{Dur, Located, io_reason, line_of, pem_reason, resolve};
use crate::rules::{RuleError, RuleSet};

// === problems ===

/// Every problem found by [`load`], gateway file first, then rule files in
/// name order.
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
    #[error("replay.store `{value}` is neither \"memory\" nor a redis://host:port/db URL")]
    Store { value: String },
    #[error("replay.store `{value}`: {reason}")]
    StoreUrl { value: String, reason: String },
    #[error("replay.tls_ca `{file}`: {reason}")]
    StoreCa { file: String, reason: String },
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
}

// === raw file ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewayFile {
    rules_dir: Option<Spanned<String>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    listen: ListenFile,
    admin: Option<AdminFile>,
    #[serde(default)]
    replay: ReplayFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    journal: JournalFile,
    #[serde(default)]
    reload: ReloadFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadFile {
    /// Reload when the gateway file, a rule file or a file they name changes.
    #[serde(default = "default_true")]
    watch: bool,
}

impl Default for ReloadFile {
    fn default() -> Self {
        ReloadFile { watch: true }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenFile {
    addr: Spanned<String>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminFile {
    addr: Spanned<String>,
    #[serde(default = "default_admin_max_connections")]
    max_connections: Spanned<u64>,
    /// File holding the bearer token of the admin API (`POST
    /// /api/redeliver`); absent: the API does not exist.
    token_file: Option<Spanned<String>>,
}

fn default_admin_max_connections() -> Spanned<u64> {
    Spanned::new(0..0, 64)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayFile {
    #[serde(default = "default_store")]
    store: Spanned<String>,
    #[serde(default = "default_ttl")]
    ttl: Spanned<Dur>,
    #[serde(default = "default_max_entries")]
    max_entries: Spanned<u64>,
    #[serde(default = "default_store_timeout")]
    timeout: Spanned<Dur>,
    tls_ca: Option<Spanned<String>>,
}

impl Default for ReplayFile {
    fn default() -> Self {
        ReplayFile {
            store: default_store(),
            ttl: default_ttl(),
            max_entries: default_max_entries(),
            timeout: default_store_timeout(),
            tls_ca: None,
        }
    }
}

fn default_store_timeout() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(1)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalFile {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_journal_dir")]
    dir: Spanned<String>,
    #[serde(default)]
    fsync: crate::journal::Fsync,
    #[serde(default = "default_journal_file_bytes")]
    max_file_bytes: Spanned<u64>,
    #[serde(default = "default_journal_files")]
    max_files: Spanned<u64>,
    #[serde(default = "default_journal_file_age")]
    max_file_age: Spanned<Dur>,
}

impl Default for JournalFile {
    fn default() -> Self {
        JournalFile {
            enabled: true,
            dir: default_journal_dir(),
            fsync: crate::journal::Fsync::default(),
            max_file_bytes: default_journal_file_bytes(),
            max_files: default_journal_files(),
            max_file_age: default_journal_file_age(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_journal_dir() -> Spanned<String> {
    Spanned::new(0..0, "journal".to_owned())
}
fn default_journal_file_bytes() -> Spanned<u64> {
    Spanned::new(0..0, 64 << 20)
}
fn default_journal_files() -> Spanned<u64> {
    Spanned::new(0..0, 16)
}
fn default_journal_file_age() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(24 * 3600)))
}

fn default_store() -> Spanned<String> {
    Spanned::new(0..0, "memory".to_owned())
}
fn default_ttl() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(48 * 3600)))
}
fn default_max_entries() -> Spanned<u64> {
    Spanned::new(0..0, 1_000_000)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    #[serde(default = "default_max_body")]
    max_body_bytes: Spanned<u64>,
    #[serde(default = "default_header_timeout")]
    header_timeout: Spanned<Dur>,
    #[serde(default = "default_upstream_timeout")]
    upstream_timeout: Spanned<Dur>,
    #[serde(default = "default_body_timeout")]
    body_timeout: Spanned<Dur>,
    #[serde(default = "default_tls_handshake_timeout")]
    tls_handshake_timeout: Spanned<Dur>,
    #[serde(default = "default_drain_timeout")]
    drain_timeout: Spanned<Dur>,
    #[serde(default = "default_max_connections")]
    max_connections: Spanned<u64>,
    #[serde(default = "default_max_connections_per_source")]
    max_connections_per_source: Spanned<u64>,
    /// Absent: half of `max_connections`.
    max_connections_unlisted: Option<Spanned<u64>>,
    #[serde(default = "default_write_timeout")]
    write_timeout: Spanned<Dur>,
}

impl Default for LimitsFile {
    fn default() -> Self {
        LimitsFile {
            max_body_bytes: default_max_body(),
            header_timeout: default_header_timeout(),
            upstream_timeout: default_upstream_timeout(),
            body_timeout: default_body_timeout(),
            tls_handshake_timeout: default_tls_handshake_timeout(),
            drain_timeout: default_drain_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
            max_connections_unlisted: None,
            write_timeout: default_write_timeout(),
        }
    }
}

fn default_max_body() -> Spanned<u64> {
    Spanned::new(0..0, 65536)
}
fn secs(n: u64) -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(n)))
}
fn default_header_timeout() -> Spanned<Dur> {
    secs(5)
}
fn default_upstream_timeout() -> Spanned<Dur> {
    secs(10)
}
fn default_body_timeout() -> Spanned<Dur> {
    secs(10)
}
fn default_tls_handshake_timeout() -> Spanned<Dur> {
    secs(5)
}
fn default_drain_timeout() -> Spanned<Dur> {
    secs(30)
}
fn default_max_connections() -> Spanned<u64> {
    Spanned::new(0..0, 10_000)
}
fn default_max_connections_per_source() -> Spanned<u64> {
    Spanned::new(0..0, 256)
}
fn default_write_timeout() -> Spanned<Dur> {
    secs(10)
}

// === compiled ===

/// The compiled gateway file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gateway file this came from.
    pub file: PathBuf,
    /// Directory whose `*.toml` files are rule files.
    pub rules_dir: PathBuf,
    pub listen: SocketAddr,
    /// TLS for the notification listener; `None` is plain HTTP.
    pub tls: Option<Tls>,
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`); `None` disables it.
    pub admin: Option<Admin>,
    /// The admin API's bearer token; `None`: the API does not exist.
    pub admin_token: Option<AdminToken>,
    pub replay: ReplayConfig,
    pub limits: Limits,
    /// The delivery journal; `None` when disabled.
    pub journal: Option<crate::journal::JournalConfig>,
    /// Follow configuration files and reload on change (SIGHUP always works).
    pub watch: bool,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[IpNet]>,
}

/// The admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admin {
    pub addr: SocketAddr,
    /// Open admin connections at most; one more is closed at once.
    pub max_connections: usize,
}

/// TLS files and the server configuration built from them at load time.
#[derive(Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server: Arc<rustls::ServerConfig>,
    /// notAfter of the first certificate in `cert`, Unix seconds
    /// (`callgate_key_expiry_timestamp_seconds{route="-",key="tls_cert"}`).
    pub not_after: i64,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The admin API's bearer token and the file it was read from.
#[derive(Debug, Clone)]
pub struct AdminToken {
    pub file: PathBuf,
    pub token: crate::secret::Secret,
}

/// Shortest admin token accepted, in bytes.
pub const MIN_ADMIN_TOKEN: usize = 16;

#[derive(Clone, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    /// `redis://` or `rediss://` URL (may hold a password: never printed).
    Redis(String),
}

impl fmt::Debug for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreKind::Memory => f.write_str("Memory"),
            StoreKind::Redis(url) => write!(f, "Redis({})", crate::secret::redact_url(url)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayConfig {
    pub store: StoreKind,
    /// How long a delivered event id is remembered.
    pub ttl: Duration,
    /// Bound on remembered entries in the memory store.
    pub max_entries: u64,
    /// Bound on each Redis command (and connection attempt).
    pub timeout: Duration,
    /// PEM CA bundle trusted for `rediss://` instead of the system roots.
    pub tls_ca: Option<Vec<u8>>,
}

/// Limits applied per connection and per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub header_timeout: Duration,
    pub upstream_timeout: Duration,
    pub body_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub drain_timeout: Duration,
    /// Open notification connections at most; one more is closed at once
    /// (and counted in `callgate_connections_refused_total`).
    pub max_connections: usize,
    /// Open notification connections from one source address (IPv6: one
    /// /64) at most; trusted proxies are exempt.
    pub max_connections_per_source: usize,
    /// Open notification connections from addresses outside every route's
    /// allow list at most: the rest of `max_connections` stays for the
    /// platforms.
    pub max_connections_unlisted: usize,
    /// A response write that makes no progress for this long (the peer does
    /// not read) closes the connection.
    pub write_timeout: Duration,
}

/// A whole configuration: listener settings and the swappable rule set.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub rules: RuleSet,
    /// Valid but risky settings, printed by `check` and logged at start, as
    /// `PATH:LINE: warning: message`.
    pub warnings: Vec<String>,
    /// Every file and directory this load read: a change to any of them
    /// triggers a reload (`server` watches them).
    pub files: Vec<PathBuf>,
}

/// Loads and validates the gateway file and every rule file it points to.
pub fn load(gateway_file: &Path) -> Result<Loaded, LoadErrors> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let config = compile_gateway(gateway_file, &mut problems, &mut warnings);
    let Some(config) = config else {
        return Err(LoadErrors(problems));
    };
    let files = std::cell::RefCell::new(vec![gateway_file.to_path_buf(), config.rules_dir.clone()]);
    if let Some(tls) = &config.tls {
        files
            .borrow_mut()
            .extend([tls.cert.clone(), tls.key.clone()]);
    }
    let rules = crate::rules::load_dir(&config, &mut problems, &mut warnings, &files);
    if problems.is_empty() {
        let mut files = files.into_inner();
        files.sort();
        files.dedup();
        warnings.extend(crate::demo_keys::warnings(&files));
        if rules.is_empty() {
            warnings.push(format!(
                "{}: warning: no *.toml file here defines a route: every notification is answered 404 and /readyz is 503",
                config.rules_dir.display()
            ));
        }
        Ok(Loaded {
            config,
            rules,
            warnings,
            files,
        })
    } else {
        Err(LoadErrors(problems))
    }
}

fn compile_gateway(
    file: &Path,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
) -> Option<Config> {
    let at = |line: Option<usize>, error: ConfigError| {
        Problem::Config(Located {
            file: file.to_path_buf(),
            line,
            error,
        })
    };
    let src = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => {
            problems.push(at(
                None,
                ConfigError::Read {
                    reason: io_reason(&e),
                },
            ));
            return None;
        }
    };
    let raw: GatewayFile = match toml::from_str(&src) {
        Ok(raw) => raw,
        Err(e) => {
            let line = e.span().map(|s| line_of(&src, s.start));
            problems.push(at(
                line,
                ConfigError::Syntax {
                    message: e.message().trim().to_owned(),
                },
            ));
            return None;
        }
    };
    let line = |span: std::ops::Range<usize>| {
        if span.is_empty() && span.start == 0 {
            None
        } else {
            Some(line_of(&src, span.start))
        }
    };
    let dir = file.parent().unwrap_or(Path::new("")).to_path_buf();

    let listen = parse_addr("listen.addr", &raw.listen.addr)
        .map_err(|e| problems.push(at(line(raw.listen.addr.span()), e)))
        .ok();
    let admin = match &raw.admin {
        None => None,
        Some(a) => {
            if *a.max_connections.get_ref() == 0 {
                problems.push(at(
                    line(a.max_connections.span()),
                    ConfigError::Zero {
                        field: "admin.max_connections",
                    },
                ));
            }
            parse_addr("admin.addr", &a.addr)
                .map_err(|e| problems.push(at(line(a.addr.span()), e)))
                .ok()
                .map(|addr| Admin {
                    addr,
                    max_connections: usize::try_from(*a.max_connections.get_ref())
                        .unwrap_or(usize::MAX),
                })
        }
    };
    let admin_token = match raw.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        None => None,
        Some(f) => {
            let path = resolve(&dir, f.get_ref());
            let problem = |reason: String| {
                at(
                    line(f.span()),
                    ConfigError::AdminToken {
                        file: f.get_ref().clone(),
                        reason,
                    },
                )
            };
            match crate::secret::Secret::from_file(&path) {
                Ok(token) if token.expose().len() < MIN_ADMIN_TOKEN => {
                    problems.push(problem(format!(
                        "the token is shorter than {MIN_ADMIN_TOKEN} bytes: write a long random one (openssl rand -hex 32)"
                    )));
                    None
                }
                Ok(token) if !token.expose().iter().all(u8::is_ascii_graphic) => {
                    problems.push(problem(
                        "the token must be visible ASCII without spaces (it travels in an HTTP header)"
                            .to_owned(),
                    ));
                    None
                }
                Ok(token) => Some(AdminToken { file: path, token }),
                Err(e) => {
                    problems.push(problem(e.to_string()));
                    None
                }
            }
        }
    };

    let mut trusted = Vec::new();
    for entry in &raw.trusted_proxies {
        match parse_net(entry.get_ref()) {
            Ok(net) => {
                if let Some(why) = crate::allow::too_wide(&net) {
                    warnings.push(format!(
                        "{}:{}: warning: trusted_proxies entry {why}: any such peer can claim any source address in X-Forwarded-For and pass every allow list; list only your own proxies",
                        file.display(),
                        line_of(&src, entry.span().start)
                    ));
                }
                trusted.push(net)
            }
            Err(reason) => problems.push(at(
                line(entry.span()),
                ConfigError::TrustedProxy {
                    value: entry.get_ref().clone(),
                    reason,
                },
            )),
        }
    }

    let tls = match (&raw.listen.tls_cert, &raw.listen.tls_key) {
        (None, None) => None,
        (Some(c), None) => {
            problems.push(at(
                line(c.span()),
                ConfigError::TlsHalf {
                    set: "tls_cert",
                    missing: "tls_key",
                },
            ));
            None
        }
        (None, Some(k)) => {
            problems.push(at(
                line(k.span()),
                ConfigError::TlsHalf {
                    set: "tls_key",
                    missing: "tls_cert",
                },
            ));
            None
        }
        (Some(c), Some(k)) => {
            let cert = resolve(&dir, c.get_ref());
            let key = resolve(&dir, k.get_ref());
            match server_tls(&cert, &key) {
                Ok((server, leaf)) => {
                    let now = crate::clock::unix_now();
                    match crate::expiry::lifetime(leaf.not_after, now) {
                        crate::expiry::Lifetime::Valid => {}
                        crate::expiry::Lifetime::Expiring { days } => warnings.push(format!(
                            "{}:{}: warning: listen.tls_cert `{}`: certificate `{}` expires on {}, {}; renew it before then",
                            file.display(),
                            line_of(&src, c.span().start),
                            c.get_ref(),
                            leaf.subject,
                            crate::expiry::utc(leaf.not_after),
                            crate::expiry::days_left(days)
                        )),
                        crate::expiry::Lifetime::Expired => problems.push(at(
                            line(c.span()),
                            ConfigError::TlsExpired {
                                file: c.get_ref().clone(),
                                subject: leaf.subject.clone(),
                                at: crate::expiry::utc(leaf.not_after),
                            },
                        )),
                    }
                    Some(Tls {
                        cert,
                        key,
                        server,
                        not_after: leaf.not_after,
                    })
                }
                Err((field, reason)) => {
                    let (span, value) = if field == "tls_cert" {
                        (c.span(), c.get_ref())
                    } else {
                        (k.span(), k.get_ref())
                    };
                    problems.push(at(
                        line(span),
                        ConfigError::Tls {
                            field,
                            file: value.clone(),
                            reason,
                        },
                    ));
                    None
                }
            }
        }
    };

    let rules_dir_raw = raw
        .rules_dir
        .clone()
        .unwrap_or_else(|| Spanned::new(0..0, "rules".to_owned()));
    let rules_dir = resolve(&dir, rules_dir_raw.get_ref());
    if let Err(e) = std::fs::read_dir(&rules_dir) {
        problems.push(at(
            line(rules_dir_raw.span()),
            ConfigError::RulesDir {
                dir: rules_dir_raw.get_ref().clone(),
                reason: io_reason(&e),
            },
        ));
    }

    let store_value = raw.replay.store.get_ref();
    let store = if store_value == "memory" {
        Some(StoreKind::Memory)
    } else if store_value.starts_with("redis://") || store_value.starts_with("rediss://") {
        match redis::Client::open(store_value.as_str()) {
            Ok(_) => Some(StoreKind::Redis(store_value.clone())),
            Err(e) => {
                problems.push(at(
                    line(raw.replay.store.span()),
                    ConfigError::StoreUrl {
                        value: crate::secret::redact_url(store_value),
                        reason: e.to_string(),
                    },
                ));
                None
            }
        }
    } else {
        problems.push(at(
            line(raw.replay.store.span()),
            ConfigError::Store {
                value: crate::secret::redact_url(store_value),
            },
        ));
        None
    };

    let tls_ca = match &raw.replay.tls_ca {
        None => None,
        Some(ca) => {
            let path = resolve(&dir, ca.get_ref());
            let err = |reason: String| {
                at(
                    line(ca.span()),
                    ConfigError::StoreCa {
                        file: ca.get_ref().clone(),
                        reason,
                    },
                )
            };
            match std::fs::read(&path) {
                Ok(pem) if !store_value.starts_with("rediss://") => {
                    let _ = pem;
                    problems.push(err("only used with a rediss:// store".to_owned()));
                    None
                }
                Ok(pem)
                    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") =>
                {
                    problems.push(err(
                        "no -----BEGIN CERTIFICATE----- block in the file".to_owned()
                    ));
                    None
                }
                Ok(pem) => Some(pem),
                Err(e) => {
                    problems.push(err(format!("cannot read: {}", io_reason(&e))));
                    None
                }
            }
        }
    };

    let j = &raw.journal;
    let journal = if j.enabled {
        let dir = resolve(&dir, j.dir.get_ref());
        // Checked, never created here: `check` writes nothing, and `run`
        // creates the directory when it opens the journal.
        if let Some(reason) = unusable_dir(&dir) {
            problems.push(at(
                line(j.dir.span()),
                ConfigError::JournalDir {
                    dir: j.dir.get_ref().clone(),
                    reason,
                },
            ));
        }
        Some(crate::journal::JournalConfig {
            dir,
            fsync: j.fsync,
            max_file_bytes: *j.max_file_bytes.get_ref(),
            max_files: usize::try_from(*j.max_files.get_ref()).unwrap_or(usize::MAX),
            max_file_age: j.max_file_age.get_ref().0,
        })
    } else {
        None
    };

    let mut positive = |field: &'static str, zero: bool, span: std::ops::Range<usize>| {
        if zero {
            problems.push(at(line(span), ConfigError::Zero { field }));
        }
    };
    let r = &raw.replay;
    let l = &raw.limits;
    positive("replay.ttl", r.ttl.get_ref().0.is_zero(), r.ttl.span());
    positive(
        "replay.max_entries",
        *r.max_entries.get_ref() == 0,
        r.max_entries.span(),
    );
    positive(
        "limits.max_connections",
        *l.max_connections.get_ref() == 0,
        l.max_connections.span(),
    );
    positive(
        "limits.max_connections_per_source",
        *l.max_connections_per_source.get_ref() == 0,
        l.max_connections_per_source.span(),
    );
    if let Some(u) = &l.max_connections_unlisted {
        positive(
            "limits.max_connections_unlisted",
            *u.get_ref() == 0,
            u.span(),
        );
    }
    positive(
        "limits.max_body_bytes",
        *l.max_body_bytes.get_ref() == 0,
        l.max_body_bytes.span(),
    );
    for (field, d) in [
        ("limits.header_timeout", &l.header_timeout),
        ("limits.upstream_timeout", &l.upstream_timeout),
        ("limits.body_timeout", &l.body_timeout),
        ("limits.tls_handshake_timeout", &l.tls_handshake_timeout),
        ("limits.drain_timeout", &l.drain_timeout),
        ("limits.write_timeout", &l.write_timeout),
    ] {
        positive(field, d.get_ref().0.is_zero(), d.span());
    }

    let max_connections = usize::try_from(*l.max_connections.get_ref()).unwrap_or(usize::MAX);
    let max_connections_unlisted = match &l.max_connections_unlisted {
        None => (max_connections / 2).max(1),
        Some(u) => {
            let n = usize::try_from(*u.get_ref()).unwrap_or(usize::MAX);
            if n > max_connections {
                problems.push(at(
                    line(u.span()),
                    ConfigError::UnlistedAboveTotal {
                        unlisted: *u.get_ref(),
                        total: *l.max_connections.get_ref(),
                    },
                ));
            }
            n
        }
    };

    // Problems above are reported, but the rule files are still checked:
    // placeholders stand in for the values that failed.
    Some(Config {
        file: file.to_path_buf(),
        rules_dir,
        listen: listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
        tls,
        admin,
        admin_token,
        replay: ReplayConfig {
            store: store.unwrap_or(StoreKind::Memory),
            ttl: r.ttl.get_ref().0,
            max_entries: *r.max_entries.get_ref(),
            timeout: r.timeout.get_ref().0,
            tls_ca,
        },
        journal,
        watch: raw.reload.watch,
        limits: Limits {
            max_body_bytes: *l.max_body_bytes.get_ref(),
            header_timeout: l.header_timeout.get_ref().0,
            upstream_timeout: l.upstream_timeout.get_ref().0,
            body_timeout: l.body_timeout.get_ref().0,
            tls_handshake_timeout: l.tls_handshake_timeout.get_ref().0,
            drain_timeout: l.drain_timeout.get_ref().0,
            max_connections,
            max_connections_per_source: usize::try_from(*l.max_connections_per_source.get_ref())
                .unwrap_or(usize::MAX),
            max_connections_unlisted,
            write_timeout: l.write_timeout.get_ref().0,
        },
        trusted_proxies: trusted.into(),
    })
}

fn parse_addr(field: &'static str, value: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
    value.get_ref().parse().map_err(|_| ConfigError::Addr {
        field,
        value: value.get_ref().clone(),
    })
}

/// The parts of the TLS certificate `check` judges.
struct TlsLeaf {
    subject: String,
    not_after: i64,
}

/// Builds the rustls server configuration from PEM files. The error names
/// the field at fault and why.
fn server_tls(
    cert: &Path,
    key: &Path,
) -> Result<(Arc<rustls::ServerConfig>, TlsLeaf), (&'static str, String)> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ("tls_cert", pem_reason(&e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| ("tls_cert", pem_reason(&e)))?;
    if certs.is_empty() {
        return Err((
            "tls_cert",
            "no -----BEGIN CERTIFICATE----- block in the file".to_owned(),
        ));
    }
    let leaf = match x509_parser::parse_x509_certificate(&certs[0]) {
        Ok((_, c)) => TlsLeaf {
            subject: c.subject().to_string(),
            not_after: c.validity().not_after.timestamp(),
        },
        Err(e) => {
            return Err((
                "tls_cert",
                format!("the first certificate is not valid X.509: {e}"),
            ));
        }
    };
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| ("tls_key", pem_reason(&e)))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ("tls_key", format!("does not fit the certificate: {e}")))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(server), leaf))
}

/// Why `dir` cannot become the journal directory: it, or the nearest of
/// its ancestors that exists, is not a directory. A directory that does not
/// exist yet is fine (the journal creates it).
fn unusable_dir(dir: &Path) -> Option<String> {
    let mut p = dir;
    loop {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => return None,
            Ok(_) if p == dir => return Some("is not a directory".to_owned()),
            Ok(_) => return Some(format!("`{}` is not a directory", p.display())),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Some(io_reason(&e)),
            Err(_) => match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                _ => return None,
            },
        }
    }
}
