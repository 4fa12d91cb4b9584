//! The gateway file (`callgate.toml`): raw serde structs that mirror the
//! TOML exactly (`deny_unknown_fields` everywhere), then [`Config`], the
//! compiled settings with parsed addresses, CIDRs, durations and a loaded
//! TLS configuration, compiled table by table. Compiling reads the files
//! the settings name and writes nothing.
//!
//! [`load`] is the one load behind `callgate check`, start-up and reload:
//! the gateway file, then every rule file (`rules`), all recording into one
//! `load::Loader`. It returns a [`Setup`] (the settings and the first
//! [`Snapshot`], the routes and gateway settings a request works with), or
//! every problem it found, each as `PATH:LINE: message`. It never prints
//! file contents.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::allow::parse_net;
use crate::load::{
    ConfigError, Dur, LoadErrors, Loader, Located, Warning, deserialize_each, io_reason, line_of,
    pem_reason, resolve,
};
use crate::replay::{Auth, ClusterTarget, RedisTarget, SentinelTarget, WaitFor};
use crate::rules::{self, Routes};

// === raw file ===

/// The gateway file as written. Public so that `tests/docs.rs` can read
/// its keys from the struct itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    rules_dir: Option<Spanned<String>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    /// Required, as is its `addr`: options so that a wrong `addr` leaves
    /// the rest of the file checked; `compile_gateway` reports one left out
    /// as serde would, "missing field".
    listen: Option<Spanned<ListenFile>>,
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
    /// Required (see [`GatewayFile::listen`]).
    addr: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    /// Worker threads serving notifications; absent: one per core.
    workers: Option<Spanned<u64>>,
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
    /// `store = "sentinel"`: the sentinels (`host:port`) and the master's name.
    sentinels: Option<Spanned<Vec<String>>>,
    master_name: Option<Spanned<String>>,
    sentinel_username: Option<Spanned<String>>,
    sentinel_password_file: Option<Spanned<String>>,
    sentinel_tls: Option<Spanned<bool>>,
    /// Towards the master and replicas (Sentinel) or every node (Cluster).
    username: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    tls: Option<Spanned<bool>>,
    /// `store = "cluster"`: seed node URLs.
    cluster: Option<Spanned<Vec<String>>>,
    /// `WAIT` after each delivered marker.
    wait_replicas: Option<Spanned<u64>>,
    wait_timeout: Option<Spanned<Dur>>,
}

impl Default for ReplayFile {
    fn default() -> Self {
        ReplayFile {
            store: default_store(),
            ttl: default_ttl(),
            max_entries: default_max_entries(),
            timeout: default_store_timeout(),
            tls_ca: None,
            sentinels: None,
            master_name: None,
            sentinel_username: None,
            sentinel_password_file: None,
            sentinel_tls: None,
            username: None,
            password_file: None,
            tls: None,
            cluster: None,
            wait_replicas: None,
            wait_timeout: None,
        }
    }
}

/// `replay.wait_timeout` when not set.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_millis(100);

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
    /// Worker threads serving the notification listener, each with its own
    /// runtime, listening socket and upstream connections (`server`).
    pub workers: usize,
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
    /// Where each setting was written, for problems found after compiling
    /// (a reload refused for a change only a restart applies).
    pub lines: KeyLines,
}

/// The line of each table and key of the gateway file, two levels deep
/// (`listen`, `listen.workers`): the spans are gone once the file is
/// compiled, and a problem is still reported as `PATH:LINE`.
#[derive(Debug, Clone, Default)]
pub struct KeyLines(Arc<std::collections::HashMap<String, usize>>);

impl KeyLines {
    pub(crate) fn of(doc: &DeTable<'_>, src: &str) -> KeyLines {
        let mut lines = std::collections::HashMap::new();
        for (table, value) in doc.iter() {
            lines.insert(
                table.get_ref().to_string(),
                line_of(src, table.span().start),
            );
            if let DeValue::Table(keys) = value.get_ref() {
                for (key, _) in keys.iter() {
                    lines.insert(
                        format!("{}.{}", table.get_ref(), key.get_ref()),
                        line_of(src, key.span().start),
                    );
                }
            }
        }
        KeyLines(Arc::new(lines))
    }

    /// The line of the first of `keys` (`table.key`) written, or else of
    /// the first one's table: a key left out (back to its default) is
    /// pointed at the table it would go in. `None` when neither is written.
    pub fn line(&self, keys: &[&str]) -> Option<usize> {
        let first = keys.first()?;
        let table = first.split_once('.').map_or(*first, |(t, _)| t);
        keys.iter()
            .find_map(|k| self.0.get(*k))
            .or_else(|| self.0.get(table))
            .copied()
    }
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    /// A `redis://` or `rediss://` URL (may hold a password: never
    /// printed), a Sentinel deployment or a Redis Cluster.
    Redis(RedisTarget),
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
    /// `WAIT` after each delivered marker (Redis only).
    pub wait: WaitFor,
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

/// The configuration a request works with from start to end: the routes
/// and the gateway settings the flow reads. Immutable; a reload builds a
/// whole new one and swaps it in at once (`pipeline::State::snapshot`).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub routes: Routes,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[IpNet]>,
    pub limits: Limits,
    /// notAfter of the TLS certificate loaded with this snapshot, when TLS
    /// is on (for `callgate_key_expiry_timestamp_seconds`).
    pub tls_not_after: Option<i64>,
}

impl Snapshot {
    /// The snapshot of `routes` under the gateway settings of `config`.
    pub fn new(routes: Routes, config: &Config) -> Snapshot {
        Snapshot {
            routes,
            trusted_proxies: config.trusted_proxies.clone(),
            limits: config.limits,
            tls_not_after: config.tls.as_ref().map(|t| t.not_after),
        }
    }
}

impl Limits {
    /// How long an event's in-flight claim lives: the forward (bounded by
    /// `upstream_timeout`) and a margin. The flow renews the claim right
    /// before it forwards, so the steps before may take as long as they
    /// take.
    pub fn claim_life(&self) -> Duration {
        self.upstream_timeout + Duration::from_secs(30)
    }
}

impl Config {
    /// What rule files are checked against and inherit from this file.
    pub fn rule_settings(&self) -> rules::Settings {
        rules::Settings {
            replay_ttl: self.replay.ttl,
            replay_max_entries: self.replay.max_entries,
            upstream_timeout: self.limits.upstream_timeout,
        }
    }
}

/// What a successful load gives: the gateway settings, the first snapshot,
/// and what the load says besides (warnings, the files it read).
#[derive(Debug, Clone)]
pub struct Setup {
    pub config: Config,
    pub snapshot: Snapshot,
    /// Valid but risky settings, printed by `check` and logged at start, as
    /// `PATH:LINE: warning: message`.
    pub warnings: Vec<Located<Warning>>,
    /// Every file and directory this load read: a change to any of them
    /// triggers a reload (`reload::watch`).
    pub files: Vec<PathBuf>,
}

/// Loads and validates the gateway file and every rule file it points to:
/// the one loader behind `callgate check`, start-up and reload. Either the
/// whole configuration, or every problem found in every file.
pub fn load(gateway_file: &Path) -> Result<Setup, LoadErrors> {
    let mut loader = Loader::new();
    let Some((config, rule_settings)) = compile_gateway(gateway_file, &mut loader) else {
        // The gateway file did not parse, but `check` promises every
        // problem at once: the rule files are still checked, in the
        // directory the file names (if it is TOML at all), against
        // settings that assume nothing of it.
        if let Some(dir) = loose_rules_dir(gateway_file) {
            rules::load_dir(&dir, &rules::Settings::unconstrained(), &mut loader);
        }
        return Err(loader.fail());
    };
    loader.touch(gateway_file.to_path_buf());
    loader.touch(config.rules_dir.clone());
    if let Some(tls) = &config.tls {
        loader.touch(tls.cert.clone());
        loader.touch(tls.key.clone());
    }
    // No rules directory to check when `rules_dir` itself was wrong.
    let routes = match rule_settings {
        Some(settings) => rules::load_dir(&config.rules_dir, &settings, &mut loader),
        None => Routes::default(),
    };
    if !loader.has_problems() {
        for warning in crate::demo_keys::warnings(&loader.files()) {
            loader.warn(warning);
        }
        if routes.is_empty() {
            loader.warn(Located {
                file: config.rules_dir.clone(),
                line: None,
                error: Warning(
                    "no *.toml file here defines a route: every notification is answered 404 and /readyz is 503".to_owned(),
                ),
            });
        }
    }
    let report = loader.finish()?;
    Ok(Setup {
        snapshot: Snapshot::new(routes, &config),
        config,
        warnings: report.warnings,
        files: report.files,
    })
}

/// The rules directory a gateway file that failed to compile names: its
/// `rules_dir` (or the default) when the file is at least TOML, relative to
/// the file's directory. `None` when it is not TOML, or `rules_dir` is not
/// a string (that problem is already reported).
fn loose_rules_dir(gateway_file: &Path) -> Option<PathBuf> {
    let src = std::fs::read_to_string(gateway_file).ok()?;
    let table: toml::Table = toml::from_str(&src).ok()?;
    let dir = match table.get("rules_dir") {
        None => "rules",
        Some(v) => v.as_str()?,
    };
    Some(resolve(gateway_file.parent().unwrap_or(Path::new("")), dir))
}

// === the gateway file, table by table ===

/// The gateway file being compiled: its text (for line numbers) and
/// directory (for relative paths), and the loader its problems go to.
struct GatewayCtx<'a> {
    loader: &'a mut Loader,
    file: &'a Path,
    dir: PathBuf,
    src: &'a str,
}

impl GatewayCtx<'_> {
    /// The line of `span`; none for a value left at its default (an empty
    /// span at the start).
    fn line(&self, span: Range<usize>) -> Option<usize> {
        if span.is_empty() && span.start == 0 {
            None
        } else {
            Some(line_of(self.src, span.start))
        }
    }

    fn error(&mut self, span: Range<usize>, error: ConfigError) {
        let line = self.line(span);
        self.problem(line, error);
    }

    fn problem(&mut self, line: Option<usize>, error: ConfigError) {
        self.loader.problem(Located {
            file: self.file.to_path_buf(),
            line,
            error,
        });
    }

    fn warn(&mut self, span: Range<usize>, message: String) {
        self.loader.warn(Located {
            file: self.file.to_path_buf(),
            line: Some(line_of(self.src, span.start)),
            error: Warning(message),
        });
    }

    /// A path the file names, resolved against its directory.
    fn resolve(&self, p: &str) -> PathBuf {
        resolve(&self.dir, p)
    }

    /// `field` of a setting must not be zero.
    fn positive(&mut self, field: &'static str, zero: bool, span: Range<usize>) {
        if zero {
            self.error(span, ConfigError::Zero { field });
        }
    }
}

/// Reads and compiles the gateway file, with the settings the rule files
/// are to be checked against (`None`: `rules_dir` is wrong, there are none
/// to check). `None` only when it cannot be read or is not TOML; a setting
/// that fails is reported, a placeholder stands in for it, and the rule
/// files are still checked. Every problem of the file is reported, each at
/// its line (`load::deserialize_each`); a check that involves a value that
/// was wrong is left out rather than made against its default (half a TLS
/// pair, the store's other keys, `wait_timeout` against `timeout`), and the
/// rule files are not held to a `replay.ttl` or `replay.max_entries` that
/// was wrong.
fn compile_gateway(file: &Path, loader: &mut Loader) -> Option<(Config, Option<rules::Settings>)> {
    let at_file = |line: Option<usize>, error: ConfigError| Located {
        file: file.to_path_buf(),
        line,
        error,
    };
    let src = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => {
            loader.problem(at_file(
                None,
                ConfigError::Read {
                    reason: io_reason(&e),
                },
            ));
            return None;
        }
    };
    let syntax = |e: &toml::de::Error| {
        at_file(
            e.span().map(|s| line_of(&src, s.start)),
            ConfigError::Syntax {
                message: e.message().trim().to_owned(),
            },
        )
    };
    let doc = match DeTable::parse(&src) {
        Ok(doc) => doc,
        Err(e) => {
            loader.problem(syntax(&e));
            return None;
        }
    };
    let span = doc.span();
    let lines = KeyLines::of(doc.get_ref(), &src);
    let each = deserialize_each::<GatewayFile>(Spanned::new(
        span.clone(),
        DeValue::Table(doc.into_inner()),
    ));
    // A wrong value's problem names its key: `limits.upstream_timeout: ...`.
    for e in &each.errors {
        loader.problem(at_file(
            e.error.span().map(|s| line_of(&src, s.start)),
            ConfigError::Syntax {
                message: e.message(""),
            },
        ));
    }
    let raw = each.value.as_ref()?;
    let mut g = GatewayCtx {
        loader,
        file,
        dir: file.parent().unwrap_or(Path::new("")).to_path_buf(),
        src: &src,
    };
    let missing = |field: &str| ConfigError::Syntax {
        message: format!("missing field `{field}`"),
    };
    let listen_file = raw.listen.as_ref();
    match listen_file {
        // At the start of the file, as serde says it (even when empty).
        None if !each.lost("listen") => {
            g.problem(Some(line_of(&src, span.start)), missing("listen"))
        }
        Some(l) if l.get_ref().addr.is_none() && !each.lost("listen.addr") => {
            g.error(l.span(), missing("addr"))
        }
        _ => {}
    }
    let listen_file = listen_file.map(Spanned::get_ref);
    let listen = match listen_file.and_then(|l| l.addr.as_ref()) {
        Some(addr) => listen_addr(&mut g, addr),
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let workers = workers(&mut g, listen_file.and_then(|l| l.workers.as_ref()));
    let (admin, admin_token) = admin(&mut g, raw.admin.as_ref());
    let trusted_proxies = trusted_proxies(&mut g, &raw.trusted_proxies);
    // Half a TLS pair is judged only from what was written.
    let tls = match listen_file {
        Some(l) if !each.lost("listen.tls_cert") && !each.lost("listen.tls_key") => tls(&mut g, l),
        _ => None,
    };
    let rules_dir_ok = !each.lost("rules_dir");
    let rules_dir = if rules_dir_ok {
        rules_dir(&mut g, raw.rules_dir.as_ref())
    } else {
        PathBuf::new()
    };
    let replay = replay(&mut g, &raw.replay, &|key| {
        !each.lost(&format!("replay.{key}"))
    });
    let journal = if each.lost("journal.enabled") || each.lost("journal.dir") {
        None
    } else {
        journal(&mut g, &raw.journal)
    };
    if let Some(j) = &journal
        && replay.store == StoreKind::Memory
        && !["replay.ttl", "journal.max_files", "journal.max_file_age"]
            .iter()
            .any(|k| each.lost(k))
    {
        journal_span(&mut g, &raw.journal, j, replay.ttl, workers);
    }
    let limits = limits(&mut g, &raw.limits, !each.lost("limits.max_connections"));
    let config = Config {
        file: file.to_path_buf(),
        rules_dir,
        listen,
        workers,
        tls,
        admin,
        admin_token,
        replay,
        journal,
        watch: raw.reload.watch,
        limits,
        trusted_proxies,
        lines,
    };
    // The rule files are not held to a bound that was not written.
    let mut settings = config.rule_settings();
    let loose = rules::Settings::unconstrained();
    if each.lost("replay.ttl") {
        settings.replay_ttl = loose.replay_ttl;
    }
    if each.lost("replay.max_entries") {
        settings.replay_max_entries = loose.replay_max_entries;
    }
    Some((config, rules_dir_ok.then_some(settings)))
}

/// `listen.addr` (a placeholder when it is not an address).
fn listen_addr(g: &mut GatewayCtx<'_>, addr: &Spanned<String>) -> SocketAddr {
    parse_addr("listen.addr", addr)
        .map_err(|e| g.error(addr.span(), e))
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Most worker threads `listen.workers` may ask for.
pub const MAX_WORKERS: u64 = 256;

/// `listen.workers`: absent, one per core (`available_parallelism`).
fn workers(g: &mut GatewayCtx<'_>, raw: Option<&Spanned<u64>>) -> usize {
    let Some(w) = raw else {
        return std::thread::available_parallelism().map_or(1, |n| n.get());
    };
    let n = *w.get_ref();
    g.positive("listen.workers", n == 0, w.span());
    if n > MAX_WORKERS {
        g.error(
            w.span(),
            ConfigError::TooManyWorkers {
                workers: n,
                max: MAX_WORKERS,
            },
        );
    }
    usize::try_from(n.clamp(1, MAX_WORKERS)).unwrap_or(1)
}

/// `[admin]`: the listener, and the API's token when `token_file` is set.
fn admin(g: &mut GatewayCtx<'_>, raw: Option<&AdminFile>) -> (Option<Admin>, Option<AdminToken>) {
    let Some(a) = raw else {
        return (None, None);
    };
    g.positive(
        "admin.max_connections",
        *a.max_connections.get_ref() == 0,
        a.max_connections.span(),
    );
    let admin = parse_addr("admin.addr", &a.addr)
        .map_err(|e| g.error(a.addr.span(), e))
        .ok()
        .map(|addr| Admin {
            addr,
            max_connections: usize::try_from(*a.max_connections.get_ref()).unwrap_or(usize::MAX),
        });
    let token = a.token_file.as_ref().and_then(|f| admin_token(g, f));
    if let Some(addr) = admin.map(|a| a.addr)
        && !addr.ip().is_loopback()
        && a.token_file.is_none()
    {
        g.warn(
            a.addr.span(),
            format!(
                "admin.addr {addr} is not a loopback address and admin.token_file is not set: \
                 /metrics is readable by anyone who reaches it, and the console (/ and /api/*) is off; \
                 set admin.token_file to serve the console behind the token, or bind 127.0.0.1"
            ),
        );
    }
    (admin, token)
}

/// `admin.token_file`: long enough, and visible ASCII (it travels in a
/// header).
fn admin_token(g: &mut GatewayCtx<'_>, f: &Spanned<String>) -> Option<AdminToken> {
    let path = g.resolve(f.get_ref());
    let reason = match crate::secret::Secret::from_file(&path) {
        Ok(token) if token.expose().len() < MIN_ADMIN_TOKEN => format!(
            "the token is shorter than {MIN_ADMIN_TOKEN} bytes: write a long random one (openssl rand -hex 32)"
        ),
        Ok(token) if !token.expose().iter().all(u8::is_ascii_graphic) => {
            "the token must be visible ASCII without spaces (it travels in an HTTP header)"
                .to_owned()
        }
        Ok(token) => return Some(AdminToken { file: path, token }),
        Err(e) => e.to_string(),
    };
    g.error(
        f.span(),
        ConfigError::AdminToken {
            file: f.get_ref().clone(),
            reason,
        },
    );
    None
}

/// `trusted_proxies`: CIDRs, with a warning for one that trusts nearly
/// everybody.
fn trusted_proxies(g: &mut GatewayCtx<'_>, raw: &[Spanned<String>]) -> Arc<[IpNet]> {
    let mut trusted = Vec::new();
    for entry in raw {
        match parse_net(entry.get_ref()) {
            Ok(net) => {
                if let Some(why) = crate::allow::too_wide(&net) {
                    g.warn(
                        entry.span(),
                        format!(
                            "trusted_proxies entry {why}: any such peer can claim any source address in X-Forwarded-For and pass every allow list; list only your own proxies"
                        ),
                    );
                }
                trusted.push(net)
            }
            Err(reason) => g.error(
                entry.span(),
                ConfigError::TrustedProxy {
                    value: entry.get_ref().clone(),
                    reason,
                },
            ),
        }
    }
    trusted.into()
}

/// `listen.tls_cert` and `listen.tls_key`: both or neither; the server
/// configuration built from them, and the certificate's lifetime judged.
fn tls(g: &mut GatewayCtx<'_>, listen: &ListenFile) -> Option<Tls> {
    let (c, k) = match (&listen.tls_cert, &listen.tls_key) {
        (None, None) => return None,
        (Some(c), None) => {
            g.error(
                c.span(),
                ConfigError::TlsHalf {
                    set: "tls_cert",
                    missing: "tls_key",
                },
            );
            return None;
        }
        (None, Some(k)) => {
            g.error(
                k.span(),
                ConfigError::TlsHalf {
                    set: "tls_key",
                    missing: "tls_cert",
                },
            );
            return None;
        }
        (Some(c), Some(k)) => (c, k),
    };
    let cert = g.resolve(c.get_ref());
    let key = g.resolve(k.get_ref());
    let (server, leaf) = match server_tls(&cert, &key) {
        Ok(built) => built,
        Err((field, reason)) => {
            let value = if field == "tls_cert" { c } else { k };
            g.error(
                value.span(),
                ConfigError::Tls {
                    field,
                    file: value.get_ref().clone(),
                    reason,
                },
            );
            return None;
        }
    };
    match crate::expiry::lifetime(leaf.not_after, crate::clock::unix_now()) {
        crate::expiry::Lifetime::Valid => {}
        crate::expiry::Lifetime::Expiring { days } => g.warn(
            c.span(),
            format!(
                "listen.tls_cert `{}`: certificate `{}` expires on {}, {}; renew it before then",
                c.get_ref(),
                leaf.subject,
                crate::expiry::utc(leaf.not_after),
                crate::expiry::days_left(days)
            ),
        ),
        crate::expiry::Lifetime::Expired => g.error(
            c.span(),
            ConfigError::TlsExpired {
                file: c.get_ref().clone(),
                subject: leaf.subject.clone(),
                at: crate::expiry::utc(leaf.not_after),
            },
        ),
    }
    Some(Tls {
        cert,
        key,
        server,
        not_after: leaf.not_after,
    })
}

/// `rules_dir`: a directory that can be read (checked, never created).
fn rules_dir(g: &mut GatewayCtx<'_>, raw: Option<&Spanned<String>>) -> PathBuf {
    let default = Spanned::new(0..0, "rules".to_owned());
    let raw = raw.unwrap_or(&default);
    let dir = g.resolve(raw.get_ref());
    if let Err(e) = std::fs::read_dir(&dir) {
        g.error(
            raw.span(),
            ConfigError::RulesDir {
                dir: raw.get_ref().clone(),
                reason: io_reason(&e),
            },
        );
    }
    dir
}

/// `[replay]`: the store (memory, a Redis URL that parses, a Sentinel
/// deployment or a Redis Cluster), its credentials and CA bundle, the
/// `WAIT` after each delivered marker, and the bounds. `known(key)`: the
/// key is as written (its value was not wrong); a check that involves a
/// key that is not is left out, as its default would mislead it.
fn replay(g: &mut GatewayCtx<'_>, r: &ReplayFile, known: &dyn Fn(&str) -> bool) -> ReplayConfig {
    let all = |keys: &[&str]| keys.iter().all(|k| known(k));
    let store_value = r.store.get_ref();
    let target_known = all(&["sentinels", "master_name", "cluster"]);
    let store = match store_value.as_str() {
        _ if !known("store") => StoreKind::Memory,
        "sentinel" | "cluster" if !target_known => StoreKind::Memory,
        "memory" => StoreKind::Memory,
        "sentinel" => sentinel_target(g, r)
            .map(RedisTarget::Sentinel)
            .map_or(StoreKind::Memory, StoreKind::Redis),
        "cluster" => cluster_target(g, r)
            .map(RedisTarget::Cluster)
            .map_or(StoreKind::Memory, StoreKind::Redis),
        url if url.starts_with("redis://") || url.starts_with("rediss://") => {
            match redis::Client::open(url) {
                Ok(_) => StoreKind::Redis(RedisTarget::Url(url.to_owned())),
                Err(e) => {
                    g.error(
                        r.store.span(),
                        ConfigError::StoreUrl {
                            value: crate::secret::redact_url(url),
                            reason: e.to_string(),
                        },
                    );
                    StoreKind::Memory
                }
            }
        }
        _ => {
            g.error(
                r.store.span(),
                ConfigError::Store {
                    value: crate::secret::redact_url(store_value),
                },
            );
            StoreKind::Memory
        }
    };
    if known("store") {
        only_with(g, r);
    }
    let tls_ca = r
        .tls_ca
        .as_ref()
        .filter(|_| all(&["store", "tls", "sentinel_tls", "cluster"]))
        .and_then(|ca| store_ca(g, ca, r));
    g.positive("replay.ttl", r.ttl.get_ref().0.is_zero(), r.ttl.span());
    g.positive(
        "replay.max_entries",
        *r.max_entries.get_ref() == 0,
        r.max_entries.span(),
    );
    let timeout = r.timeout.get_ref().0;
    // Replicated deployments wait for one replica by default; a single
    // server usually has none to wait for.
    let replicated = matches!(store_value.as_str(), "sentinel" | "cluster");
    let replicas = r
        .wait_replicas
        .as_ref()
        .map_or(u64::from(replicated), |w| *w.get_ref());
    let wait_timeout = r
        .wait_timeout
        .as_ref()
        .map_or(DEFAULT_WAIT_TIMEOUT, |w| w.get_ref().0);
    if all(&["store", "timeout", "wait_replicas", "wait_timeout"])
        && replicas > 0
        && wait_timeout >= timeout
    {
        let span = r
            .wait_timeout
            .as_ref()
            .map_or_else(|| r.timeout.span(), Spanned::span);
        g.error(
            span,
            ConfigError::Replay {
                field: "wait_timeout",
                reason: format!(
                    "{} is not below replay.timeout ({}): the WAIT would time out as a store error; \
                     lower wait_timeout or raise timeout",
                    crate::load::format_duration(wait_timeout),
                    crate::load::format_duration(timeout)
                ),
            },
        );
    }
    if let Some(w) = &r.wait_timeout {
        g.positive("replay.wait_timeout", w.get_ref().0.is_zero(), w.span());
    }
    ReplayConfig {
        store,
        ttl: r.ttl.get_ref().0,
        max_entries: *r.max_entries.get_ref(),
        timeout,
        tls_ca,
        wait: WaitFor {
            replicas: u32::try_from(replicas).unwrap_or(u32::MAX),
            timeout: wait_timeout,
        },
    }
}

/// The `[replay]` keys that belong to one kind of store, set with another.
fn only_with(g: &mut GatewayCtx<'_>, r: &ReplayFile) {
    let store = r.store.get_ref().as_str();
    let sentinel = store == "sentinel";
    let cluster = store == "cluster";
    let redis = store != "memory";
    let span = |o: Option<std::ops::Range<usize>>| o;
    let checks: [(
        &'static str,
        Option<std::ops::Range<usize>>,
        bool,
        &'static str,
    ); 11] = [
        (
            "sentinels",
            span(r.sentinels.as_ref().map(Spanned::span)),
            sentinel,
            "store = \"sentinel\"",
        ),
        (
            "master_name",
            r.master_name.as_ref().map(Spanned::span),
            sentinel,
            "store = \"sentinel\"",
        ),
        (
            "sentinel_username",
            r.sentinel_username.as_ref().map(Spanned::span),
            sentinel,
            "store = \"sentinel\"",
        ),
        (
            "sentinel_password_file",
            r.sentinel_password_file.as_ref().map(Spanned::span),
            sentinel,
            "store = \"sentinel\"",
        ),
        (
            "sentinel_tls",
            r.sentinel_tls.as_ref().map(Spanned::span),
            sentinel,
            "store = \"sentinel\"",
        ),
        (
            "tls",
            r.tls.as_ref().map(Spanned::span),
            sentinel,
            "store = \"sentinel\" (a cluster's seeds say rediss://)",
        ),
        (
            "cluster",
            r.cluster.as_ref().map(Spanned::span),
            cluster,
            "store = \"cluster\"",
        ),
        (
            "username",
            r.username.as_ref().map(Spanned::span),
            sentinel || cluster,
            "store = \"sentinel\" or \"cluster\" (a URL carries its own user)",
        ),
        (
            "password_file",
            r.password_file.as_ref().map(Spanned::span),
            sentinel || cluster,
            "store = \"sentinel\" or \"cluster\" (a URL carries its own password)",
        ),
        (
            "wait_replicas",
            r.wait_replicas.as_ref().map(Spanned::span),
            redis,
            "a Redis store",
        ),
        (
            "wait_timeout",
            r.wait_timeout.as_ref().map(Spanned::span),
            redis,
            "a Redis store",
        ),
    ];
    for (field, span, allowed, with) in checks {
        if let (Some(span), false) = (span, allowed) {
            g.error(
                span,
                ConfigError::Replay {
                    field,
                    reason: format!("only used with {with}"),
                },
            );
        }
    }
}

/// `store = "sentinel"`: at least one `host:port` sentinel and the master's
/// name are required.
fn sentinel_target(g: &mut GatewayCtx<'_>, r: &ReplayFile) -> Option<SentinelTarget> {
    let mut sentinels = Vec::new();
    match &r.sentinels {
        Some(list) if !list.get_ref().is_empty() => {
            for entry in list.get_ref() {
                match entry
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                {
                    Some((host, port)) if !host.is_empty() && port > 0 => {
                        sentinels.push((host.trim_matches(['[', ']']).to_owned(), port));
                    }
                    _ => g.error(
                        list.span(),
                        ConfigError::Replay {
                            field: "sentinels",
                            reason: format!("`{entry}` is not host:port (e.g. \"10.0.0.5:26379\")"),
                        },
                    ),
                }
            }
        }
        _ => g.error(
            r.sentinels
                .as_ref()
                .map_or_else(|| r.store.span(), Spanned::span),
            ConfigError::Replay {
                field: "sentinels",
                reason: "store = \"sentinel\" needs the sentinels' addresses, e.g. sentinels = [\"10.0.0.5:26379\", \"10.0.0.6:26379\", \"10.0.0.7:26379\"]".to_owned(),
            },
        ),
    }
    let master_name = match &r.master_name {
        Some(n) if !n.get_ref().trim().is_empty() => n.get_ref().clone(),
        other => {
            g.error(
                other.as_ref().map_or_else(|| r.store.span(), Spanned::span),
                ConfigError::Replay {
                    field: "master_name",
                    reason: "store = \"sentinel\" needs the name the sentinels monitor the master under (sentinel monitor <name> ...)".to_owned(),
                },
            );
            String::new()
        }
    };
    let target = SentinelTarget {
        sentinels,
        master_name,
        sentinel_auth: Auth {
            username: r.sentinel_username.as_ref().map(|u| u.get_ref().clone()),
            password: r
                .sentinel_password_file
                .as_ref()
                .and_then(|f| store_password(g, "sentinel_password_file", f)),
        },
        sentinel_tls: r.sentinel_tls.as_ref().is_some_and(|t| *t.get_ref()),
        auth: store_auth(g, r),
        tls: r.tls.as_ref().is_some_and(|t| *t.get_ref()),
    };
    (!target.sentinels.is_empty() && !target.master_name.is_empty()).then_some(target)
}

/// `store = "cluster"`: at least one seed URL.
fn cluster_target(g: &mut GatewayCtx<'_>, r: &ReplayFile) -> Option<ClusterTarget> {
    let Some(list) = r.cluster.as_ref().filter(|l| !l.get_ref().is_empty()) else {
        g.error(
            r.cluster
                .as_ref()
                .map_or_else(|| r.store.span(), Spanned::span),
            ConfigError::Replay {
                field: "cluster",
                reason: "store = \"cluster\" needs seed node URLs, e.g. cluster = [\"redis://10.0.0.5:6379\", \"redis://10.0.0.6:6379\"]".to_owned(),
            },
        );
        return None;
    };
    let mut seeds = Vec::new();
    for seed in list.get_ref() {
        let reason = if !(seed.starts_with("redis://") || seed.starts_with("rediss://")) {
            Some("not a redis:// or rediss:// URL".to_owned())
        } else {
            redis::Client::open(seed.as_str())
                .err()
                .map(|e| e.to_string())
        };
        match reason {
            None => seeds.push(seed.clone()),
            Some(reason) => g.error(
                list.span(),
                ConfigError::Replay {
                    field: "cluster",
                    reason: format!("`{}`: {reason}", crate::secret::redact_url(seed)),
                },
            ),
        }
    }
    let auth = store_auth(g, r);
    (seeds.len() == list.get_ref().len()).then_some(ClusterTarget { seeds, auth })
}

fn store_auth(g: &mut GatewayCtx<'_>, r: &ReplayFile) -> Auth {
    Auth {
        username: r.username.as_ref().map(|u| u.get_ref().clone()),
        password: r
            .password_file
            .as_ref()
            .and_then(|f| store_password(g, "password_file", f)),
    }
}

/// A Redis or Sentinel password from a secret file: UTF-8 (it travels in
/// `AUTH`), never shown.
fn store_password(
    g: &mut GatewayCtx<'_>,
    field: &'static str,
    f: &Spanned<String>,
) -> Option<crate::secret::Secret> {
    let reason = match crate::secret::Secret::from_file(&g.resolve(f.get_ref())) {
        Ok(pw) if std::str::from_utf8(pw.expose()).is_err() => {
            "the password is not UTF-8 text".to_owned()
        }
        Ok(pw) => return Some(pw),
        Err(e) => e.to_string(),
    };
    g.error(
        f.span(),
        ConfigError::ReplayFile {
            field,
            file: f.get_ref().clone(),
            reason,
        },
    );
    None
}

/// `replay.tls_ca`: a PEM bundle, only where TLS is used (a `rediss://`
/// store or seed, `tls` or `sentinel_tls`).
fn store_ca(g: &mut GatewayCtx<'_>, ca: &Spanned<String>, r: &ReplayFile) -> Option<Vec<u8>> {
    let on = |b: &Option<Spanned<bool>>| b.as_ref().is_some_and(|b| *b.get_ref());
    let uses_tls = r.store.get_ref().starts_with("rediss://")
        || on(&r.tls)
        || on(&r.sentinel_tls)
        || r.cluster
            .as_ref()
            .is_some_and(|c| c.get_ref().iter().any(|s| s.starts_with("rediss://")));
    let reason = match std::fs::read(g.resolve(ca.get_ref())) {
        Ok(_) if !uses_tls => {
            "only used with TLS: a rediss:// store or cluster seed, tls = true or sentinel_tls = true"
                .to_owned()
        }
        Ok(pem) if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") => {
            "no -----BEGIN CERTIFICATE----- block in the file".to_owned()
        }
        Ok(pem) => return Some(pem),
        Err(e) => format!("cannot read: {}", io_reason(&e)),
    };
    g.error(
        ca.span(),
        ConfigError::StoreCa {
            file: ca.get_ref().clone(),
            reason,
        },
    );
    None
}

/// `[journal]`: its directory is checked, never created here (`check`
/// writes nothing; `run` creates it when it opens the journal).
fn journal(g: &mut GatewayCtx<'_>, j: &JournalFile) -> Option<crate::journal::JournalConfig> {
    if !j.enabled {
        return None;
    }
    let dir = g.resolve(j.dir.get_ref());
    if let Some(reason) = unusable_dir(&dir) {
        g.error(
            j.dir.span(),
            ConfigError::JournalDir {
                dir: j.dir.get_ref().clone(),
                reason,
            },
        );
    }
    Some(crate::journal::JournalConfig {
        dir,
        fsync: j.fsync,
        max_file_bytes: *j.max_file_bytes.get_ref(),
        max_files: usize::try_from(*j.max_files.get_ref()).unwrap_or(usize::MAX),
        max_file_age: j.max_file_age.get_ref().0,
    })
}

/// With the memory store, a warning when `[journal]` cannot hold
/// `replay.ttl` of steady traffic whatever its volume: a file takes records
/// for at most `max_file_age`, and the journal keeps at most
/// `journal::files_kept_at_most(max_files)` files (the newest may have just
/// begun), which span at most one fewer times `max_file_age`; each of the
/// `workers` writes a file of its own, so they share that many. Files
/// younger than `replay.ttl` would be deleted, and a restart forget the
/// deliveries they held.
fn journal_span(
    g: &mut GatewayCtx<'_>,
    j: &JournalFile,
    config: &crate::journal::JournalConfig,
    ttl: Duration,
    workers: usize,
) {
    let most = crate::journal::files_kept_at_most(config.max_files);
    let each = most / workers.max(1);
    let full = u32::try_from(each.saturating_sub(1)).unwrap_or(u32::MAX);
    let span = config.max_file_age.saturating_mul(full);
    if span >= ttl {
        return;
    }
    // The line of whichever of the two was written.
    let at = [j.max_file_age.span(), j.max_files.span()]
        .into_iter()
        .find(|s| !(s.is_empty() && s.start == 0));
    let shared = if workers > 1 {
        format!(", a file per worker (listen.workers = {workers})")
    } else {
        String::new()
    };
    let message = format!(
        "journal.max_file_age = {} starts a new file that often, and the journal keeps at most {} files (journal.max_files, or {} while younger than replay.ttl){shared}: they hold {} of steady traffic (the newest may have just begun), less than replay.ttl = {}: files younger than replay.ttl are deleted, and a restart forgets the deliveries they held; raise journal.max_file_age or journal.max_files",
        crate::load::format_duration(config.max_file_age),
        most,
        crate::journal::MAX_FILES_WITHIN_TTL,
        crate::load::format_duration(span),
        crate::load::format_duration(ttl),
    );
    g.loader.warn(Located {
        file: g.file.to_path_buf(),
        line: at.map(|s| line_of(g.src, s.start)),
        error: Warning(message),
    });
}

/// `[limits]`: every bound positive, and the unlisted share within the
/// total (unless `max_connections` was wrong: `total` says whether to judge
/// it).
fn limits(g: &mut GatewayCtx<'_>, l: &LimitsFile, total: bool) -> Limits {
    let count = |n: &Spanned<u64>| usize::try_from(*n.get_ref()).unwrap_or(usize::MAX);
    for (field, n) in [
        ("limits.max_connections", &l.max_connections),
        (
            "limits.max_connections_per_source",
            &l.max_connections_per_source,
        ),
    ] {
        g.positive(field, *n.get_ref() == 0, n.span());
    }
    if let Some(u) = &l.max_connections_unlisted {
        g.positive(
            "limits.max_connections_unlisted",
            *u.get_ref() == 0,
            u.span(),
        );
    }
    g.positive(
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
        g.positive(field, d.get_ref().0.is_zero(), d.span());
    }
    let max_connections = count(&l.max_connections);
    let max_connections_unlisted = match &l.max_connections_unlisted {
        None => (max_connections / 2).max(1),
        Some(u) => {
            let n = count(u);
            if total && n > max_connections {
                g.error(
                    u.span(),
                    ConfigError::UnlistedAboveTotal {
                        unlisted: *u.get_ref(),
                        total: *l.max_connections.get_ref(),
                    },
                );
            }
            n
        }
    };
    Limits {
        max_body_bytes: *l.max_body_bytes.get_ref(),
        header_timeout: l.header_timeout.get_ref().0,
        upstream_timeout: l.upstream_timeout.get_ref().0,
        body_timeout: l.body_timeout.get_ref().0,
        tls_handshake_timeout: l.tls_handshake_timeout.get_ref().0,
        drain_timeout: l.drain_timeout.get_ref().0,
        max_connections,
        max_connections_per_source: count(&l.max_connections_per_source),
        max_connections_unlisted,
        write_timeout: l.write_timeout.get_ref().0,
    }
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
