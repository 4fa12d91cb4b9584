//! Loading the configuration (`callgate check`, start-up, reload), before
//! any request: the one [`Loader`] value a load runs with, which owns every
//! problem, warning and file the load finds; what a problem is and where
//! ([`Located`]: `PATH:LINE: message`; the gateway file's [`ConfigError`]s
//! and the rule files' [`RuleError`]s); [`FileCtx`], one rule file being
//! compiled; [`deserialize_each`], which finds every problem of a table
//! where serde stops at the first; the TOML duration type both kinds of
//! file use; and the
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
use toml::de::{DeArray, DeValue, ValueDeserializer};

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
    /// A required key of a `[[route]]` left out (serde's own words).
    #[error("missing field `{field}`")]
    MissingField { field: &'static str },
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
    #[error(
        "replay_namespace {namespace:?} must not be empty and must hold no spaces, control characters or braces (a brace would move the Redis Cluster hash tag of its keys); to keep a renamed route's delivered events, set it to the route's old name"
    )]
    BadNamespace { namespace: String },
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
            route: None,
            table: "",
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
    /// The name of the route being read, to name it in a wrong value's
    /// problem ([`FileCtx::in_route`]).
    route: Option<String>,
    /// The dotted key, within its route, of the table being read (`keys`,
    /// `merchant`), to name a wrong value's key ([`FileCtx::within`]).
    table: &'static str,
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

    /// Deserialises a spanned TOML table, recording every problem in it,
    /// and returns what is left ([`deserialize_each`]): the caller must
    /// not judge a key in [`Each::holes`] as left out. A wrong value's
    /// problem names its key, after the route's name and the table's key
    /// when there are ones (`route `shop`: keys.public_key: invalid type:
    /// ...`).
    pub fn deserialize_each<T: for<'de> Deserialize<'de>>(
        &mut self,
        value: Spanned<DeValue<'_>>,
    ) -> Each<T> {
        let span = value.span();
        let each = deserialize_each::<T>(value);
        for e in &each.errors {
            let message = match (&e.key, &self.route) {
                (Some(_), Some(route)) => format!("route `{route}`: {}", e.message(self.table)),
                _ => e.message(self.table),
            };
            self.error(
                e.error.span().unwrap_or(span.clone()),
                RuleError::Syntax { message },
            );
        }
        each
    }

    /// Names the route whose tables are read next in its wrong values'
    /// problems; `None` when it has no name that can be printed as it is
    /// (none, or not a valid one: that has its own problem).
    pub fn in_route(&mut self, name: Option<&str>) {
        self.route = name.map(str::to_owned);
    }

    /// Runs `read` with the tables it reads named `table` (`keys`,
    /// `merchant`, `merchant.keys`) in their wrong values' problems:
    /// `keys.public_key`, not `public_key`.
    pub fn within<R>(&mut self, table: &'static str, read: impl FnOnce(&mut Self) -> R) -> R {
        let outer = std::mem::replace(&mut self.table, table);
        let r = read(self);
        self.table = outer;
        r
    }

    /// A required key of a table read with [`FileCtx::deserialize_each`]
    /// (an option there, so that a table whose required value is wrong
    /// still has its other keys checked): its value, or `None`, reported
    /// as serde reports a key left out, at the table, unless its value was
    /// wrong (reported already).
    pub fn required<'v, T, V>(
        &mut self,
        each: &Each<T>,
        table: Range<usize>,
        field: &'static str,
        value: Option<&'v V>,
    ) -> Option<&'v V> {
        if value.is_none() && !each.lost(field) {
            self.error(table, RuleError::MissingField { field });
        }
        value
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

// === every problem of a table ===

/// What [`deserialize_each`] made of a table.
#[derive(Debug)]
pub struct Each<T> {
    /// The table without the keys in `errors`; `None` when it cannot be
    /// built without one of them (a required key whose value is wrong).
    pub value: Option<T>,
    /// Every problem found, in the order of the file.
    pub errors: Vec<KeyedError>,
    /// Dotted paths (`replay.ttl`, `platform_keys.1.serial`) of the keys
    /// taken out because their value is wrong. Their default in `value`
    /// is not what the operator wrote: nothing may be judged from it.
    /// Keys `T` does not know are not holes: they change nothing.
    pub holes: Vec<String>,
}

impl<T> Each<T> {
    /// Whether the value at dotted `path` is not as written: it, a table
    /// holding it or a key inside it was taken out.
    pub fn lost(&self, path: &str) -> bool {
        let under = |inner: &str, outer: &str| {
            inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('.'))
        };
        self.holes
            .iter()
            .any(|h| h == path || under(path, h) || under(h, path))
    }
}

impl<T> Each<T> {
    /// The dotted paths, as written, of the `len` elements left in the
    /// array at `path` (`platform_keys.0`, `platform_keys.2` when the
    /// second was taken out), in order: for asking [`Each::lost`] about
    /// each.
    pub fn left(&self, path: &str, len: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(len);
        // Bounded: at most one index per element left or taken out.
        for i in 0..len + self.holes.len() {
            if out.len() == len {
                break;
            }
            let at = format!("{path}.{i}");
            if !self.holes.contains(&at) {
                out.push(at);
            }
        }
        out
    }
}

/// A problem [`deserialize_each`] found, with the key it is about.
#[derive(Debug)]
pub struct KeyedError {
    /// The dotted key, from the table read, whose value is wrong
    /// (`limits.upstream_timeout`; an entry of a list or of an array of
    /// tables by the list's key: `allow`, `platform_keys.serial`). `None`
    /// when serde's message names the key itself ("unknown field", "missing
    /// field") or when no key holds the problem.
    pub key: Option<String>,
    pub error: toml::de::Error,
}

impl KeyedError {
    /// serde's message, after the key when there is one, the key after
    /// `table` (the dotted key of the table read, or empty):
    /// `keys.public_key: invalid type: ...`.
    pub fn message(&self, table: &str) -> String {
        let message = self.error.message().trim();
        match &self.key {
            Some(key) if table.is_empty() => format!("{key}: {message}"),
            Some(key) => format!("{table}.{key}: {message}"),
            None => message.to_owned(),
        }
    }
}

/// A step from a table or array to one of its values.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// A key of the tree an error points at.
struct Found {
    /// From the root to the key.
    path: Vec<Step>,
    /// The span of the table holding it.
    table: Range<usize>,
}

/// Deserialises a spanned TOML table (a whole gateway file, a `[[route]]`,
/// a `[route.keys]`) and finds every problem in it, not only the first
/// serde stops at: after each error, the innermost key or array element
/// whose name or value holds the error's span is taken out of the tree and
/// the rest is tried again, once per key or element at most. A wrong
/// entry of a list (`allow = ["10.0.0.0/8", 5, "bad"]`, one bad table of
/// `platform_keys`) thus takes only itself out, and the other entries are
/// still checked. A table that thereby lost a required key ("missing
/// field" for a key taken out) is not a new problem: it is taken out of
/// its parent in turn, silently, or ends the search when it is the root.
/// An error no key holds ends the search too.
pub fn deserialize_each<T: for<'de> Deserialize<'de>>(value: Spanned<DeValue<'_>>) -> Each<T> {
    // Holes are named by their place as written: taking an element out
    // of an array renumbers the ones after it in `tree`.
    let written = value.clone();
    let mut tree = value;
    let mut errors: Vec<KeyedError> = Vec::new();
    let mut holes = Vec::new();
    // (key, span of its table) of every key taken out.
    let mut removed: Vec<(String, Range<usize>)> = Vec::new();
    let mut result = None;
    let unkeyed = |error| KeyedError { key: None, error };
    for _ in 0..=keys_in(&tree) {
        let e = match T::deserialize(ValueDeserializer::from(tree.clone())) {
            Ok(v) => {
                result = Some(v);
                break;
            }
            Err(e) => e,
        };
        let follows = removed.iter().any(|(key, table)| {
            e.span().as_ref() == Some(table) && e.message() == format!("missing field `{key}`")
        });
        // "missing field" is about the table that lacks it.
        let about_table = e.message().starts_with("missing field `");
        let Some(found) = e
            .span()
            .and_then(|at| innermost(&tree, &at, about_table, &mut Vec::new()))
        else {
            if !follows {
                errors.push(unkeyed(e));
            }
            break;
        };
        let Some(key) = take(&mut tree, &found.path) else {
            errors.push(unkeyed(e));
            break;
        };
        // serde names the key of an unknown or missing field itself.
        let named = about_table || e.message().starts_with("unknown field `");
        let mut wrong = None;
        if !e.message().starts_with("unknown field `") {
            let at = e.span().unwrap_or_default();
            let path = innermost(&written, &at, about_table, &mut Vec::new())
                .map_or(found.path, |w| w.path);
            holes.push(dotted(&path));
            wrong = Some(path);
        }
        removed.push((key, found.table));
        if !follows {
            let key = wrong.filter(|_| !named).and_then(|p| named_key(&p));
            errors.push(KeyedError { key, error: e });
        }
    }
    errors.sort_by_key(|e| e.error.span().map_or(usize::MAX, |s| s.start));
    Each {
        value: result,
        errors,
        holes,
    }
}

/// The key at `path` as an operator names it: its keys, without the
/// array indices a file does not write (`platform_keys.serial`).
fn named_key(path: &[Step]) -> Option<String> {
    let keys: Vec<&str> = path
        .iter()
        .filter_map(|s| match s {
            Step::Key(k) => Some(k.as_str()),
            Step::Index(_) => None,
        })
        .collect();
    (!keys.is_empty()).then(|| keys.join("."))
}

/// How many keys and array elements `value` holds, at every depth: how
/// many times at most [`deserialize_each`] can take one out.
fn keys_in(value: &Spanned<DeValue<'_>>) -> usize {
    match value.get_ref() {
        DeValue::Table(t) => t.values().map(|v| 1 + keys_in(v)).sum(),
        DeValue::Array(a) => a.iter().map(|v| 1 + keys_in(v)).sum(),
        _ => 0,
    }
}

fn holds(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// The innermost key or array element under `value` whose name or value
/// holds `at`.
fn innermost(
    value: &Spanned<DeValue<'_>>,
    at: &Range<usize>,
    about_table: bool,
    path: &mut Vec<Step>,
) -> Option<Found> {
    // An error about the table itself ("missing field") is about the key
    // that holds it, not about one of its own keys: the root's span may be
    // empty and would seem to be inside the first one's. An array of
    // tables (`[[x]]`) has the span of its first table, so there such an
    // error is about that table, one of its elements.
    let of_first_table = matches!(value.get_ref(), DeValue::Array(_)) && about_table;
    if value.span() == *at && !of_first_table {
        return None;
    }
    match value.get_ref() {
        DeValue::Table(t) => {
            for (k, v) in t.iter() {
                path.push(Step::Key(k.get_ref().to_string()));
                let found = innermost(v, at, about_table, path).or_else(|| {
                    (holds(&k.span(), at) || holds(&v.span(), at)).then(|| Found {
                        path: path.clone(),
                        table: value.span(),
                    })
                });
                path.pop();
                if found.is_some() {
                    return found;
                }
            }
        }
        DeValue::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                path.push(Step::Index(i));
                let found = innermost(v, at, about_table, path).or_else(|| {
                    holds(&v.span(), at).then(|| Found {
                        path: path.clone(),
                        table: value.span(),
                    })
                });
                path.pop();
                if found.is_some() {
                    return found;
                }
            }
        }
        _ => {}
    }
    None
}

/// Takes the key or array element at `path` out of `tree`; its name
/// (an element's: its index).
fn take(tree: &mut Spanned<DeValue<'_>>, path: &[Step]) -> Option<String> {
    let (last, steps) = path.split_last()?;
    let mut at = tree;
    for step in steps {
        at = match (at.get_mut(), step) {
            (DeValue::Table(t), Step::Key(k)) => t.get_mut(k.as_str())?,
            (DeValue::Array(a), Step::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    match (at.get_mut(), last) {
        (DeValue::Table(t), Step::Key(k)) => t.remove(k.as_str()).map(|_| k.clone()),
        (DeValue::Array(a), Step::Index(i)) if *i < a.len() => {
            // (`DeArray` has no `remove`.)
            let items = std::mem::replace(a, DeArray::new());
            *a = items
                .into_iter()
                .enumerate()
                .filter_map(|(j, v)| (j != *i).then_some(v))
                .collect();
            Some(i.to_string())
        }
        _ => None,
    }
}

/// `replay.ttl`, `platform_keys.1.serial`.
fn dotted(path: &[Step]) -> String {
    path.iter()
        .map(|s| match s {
            Step::Key(k) => k.clone(),
            Step::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
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
/// most [`MAX_DURATION`]: whole numbers, each followed by `ms`, `s`, `m` or
/// `h`, nothing between them. humantime alone would also take `1.5h`,
/// `5 s`, `5sec`, `2days` or `10y`, forms the documentation never
/// promised; refusing them keeps every duration readable the one way.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration `{s}`: write a number and a unit, like 300ms, 5s, 10m or 25h");
    let t = s.trim();
    if !written_as_documented(t) {
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

/// A duration the way the files write it, largest unit first: `25h`,
/// `72h5m`, `5s`, `1s500ms` (`0s` for less than a millisecond). Every
/// message that shows a duration writes it so: what it says can be copied
/// into a file as it is.
pub fn format_duration(d: Duration) -> String {
    use std::fmt::Write as _;
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (n, unit) in [
        (ms / 3_600_000, "h"),
        (ms / 60_000 % 60, "m"),
        (ms / 1000 % 60, "s"),
        (ms % 1000, "ms"),
    ] {
        if n > 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

/// `t` is one or more of a whole number and its unit (`ms`, `s`, `m`,
/// `h`), with nothing else.
fn written_as_documented(t: &str) -> bool {
    let mut rest = t.as_bytes();
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = match rest {
            [b'm', b's', ..] => 2,
            [b's' | b'm' | b'h', ..] => 1,
            _ => return false,
        };
        rest = &rest[unit..];
    }
    true
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
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("1m500ms").unwrap(),
            Duration::from_millis(60_500)
        );
        for bad in [
            "",
            "5",
            "h",
            "5 parsecs",
            "-5s",
            "5 s",
            "5sec",
            "1.5h",
            "2days",
            "1d",
            "10y",
            "5s ms",
            "5us",
            "1h30",
            "s5",
            "5S",
            "５s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("876000h").unwrap(), MAX_DURATION);
        for too_long in ["876001h", "18446744073709551615s"] {
            let e = parse_duration(too_long).unwrap_err();
            assert!(e.contains("longer than 876000h"), "{too_long}: {e}");
        }
    }

    #[test]
    fn durations_are_shown_as_they_are_written() {
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(999), "0s"),
            (Duration::from_millis(300), "300ms"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_secs(600), "10m"),
            (Duration::from_secs(90_000), "25h"),
            (Duration::from_secs(72 * 3600 + 300), "72h5m"),
            (MAX_DURATION, "876000h"),
        ] {
            assert_eq!(format_duration(d), want);
            if !d.is_zero() && d.subsec_micros() % 1000 == 0 {
                assert_eq!(parse_duration(want).unwrap(), d, "{want}");
            }
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

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        #[serde(default)]
        every: Option<Dur>,
        inner: Option<Inner>,
        #[serde(default)]
        list: Vec<String>,
        #[serde(default)]
        items: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        addr: String,
        #[serde(default)]
        n: u64,
    }

    fn each_of(src: &str) -> (Each<Outer>, Vec<(usize, String)>) {
        let doc = toml::de::DeTable::parse(src).unwrap();
        let span = doc.span();
        let each = deserialize_each::<Outer>(Spanned::new(span, DeValue::Table(doc.into_inner())));
        let problems = each
            .errors
            .iter()
            .map(|e| {
                let line = e.error.span().map_or(0, |s| line_of(src, s.start));
                (
                    line,
                    e.message("")
                        .split(',')
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        (each, problems)
    }

    #[test]
    fn every_problem_of_a_table_in_file_order() {
        let (each, problems) = each_of(
            "zz = 1\nname = \"a\"\nevery = \"soon\"\naa = 2\n[inner]\naddr = \"x\"\nn = \"many\"\nbogus = 3\n",
        );
        assert_eq!(
            problems,
            [
                (1, "unknown field `zz`".to_owned()),
                (
                    3,
                    "every: invalid duration `soon`: write a number and a unit".to_owned()
                ),
                (4, "unknown field `aa`".to_owned()),
                (7, "inner.n: invalid type: string \"many\"".to_owned()),
                (8, "unknown field `bogus`".to_owned()),
            ]
        );
        let value = each.value.as_ref().expect("what is left deserialises");
        assert_eq!((value.name.as_str(), value.every), ("a", None));
        assert_eq!(
            value.inner.as_ref().map(|i| (i.addr.as_str(), i.n)),
            Some(("x", 0))
        );
        // Within a table read on its own, a key is named from there.
        assert_eq!(
            each.errors[3].message("route.keys"),
            "route.keys.inner.n: invalid type: string \"many\", expected u64"
        );
        assert_eq!(
            each.errors[2].message("keys"),
            "unknown field `aa`, expected one of `name`, `every`, `inner`, `list`, `items`"
        );
        // Unknown keys change nothing; wrong values leave holes.
        assert_eq!(each.holes, ["every", "inner.n"]);
        assert!(each.lost("inner") && each.lost("inner.n") && !each.lost("inner.addr"));
        assert!(!each.lost("name") && !each.lost("zz"));
    }

    #[test]
    fn a_required_key_with_a_wrong_value_is_one_problem() {
        // In a table: the table goes too, silently.
        let (each, problems) = each_of("name = \"a\"\nevery = \"0\"\n[inner]\naddr = 5\n");
        assert_eq!(
            problems,
            [
                (
                    2,
                    "every: invalid duration `0`: write a number and a unit".to_owned()
                ),
                (4, "inner.addr: invalid type: integer `5`".to_owned()),
            ]
        );
        assert!(each.value.as_ref().is_some_and(|v| v.inner.is_none()));
        assert_eq!(each.holes, ["every", "inner.addr", "inner"]);
        // At the top: nothing is left to build.
        let (each, problems) = each_of("name = 5\nzz = 1\n");
        assert_eq!(
            problems,
            [
                (1, "name: invalid type: integer `5`".to_owned()),
                (2, "unknown field `zz`".to_owned()),
            ]
        );
        assert!(each.value.is_none());
    }

    #[test]
    fn a_wrong_entry_of_a_list_takes_only_itself_out() {
        let (each, problems) = each_of(
            "name = \"a\"\nlist = [\"x\", 5, \"y\", 6]\n[[items]]\naddr = 1\n[[items]]\naddr = \"b\"\nn = \"many\"\n",
        );
        assert_eq!(
            problems,
            [
                // An entry by its list's key, without the index the file
                // does not write.
                (2, "list: invalid type: integer `5`".to_owned()),
                (2, "list: invalid type: integer `6`".to_owned()),
                (4, "items.addr: invalid type: integer `1`".to_owned()),
                (7, "items.n: invalid type: string \"many\"".to_owned()),
            ]
        );
        let value = each.value.as_ref().expect("the other entries deserialise");
        assert_eq!(value.list, ["x", "y"]);
        assert_eq!(
            value
                .items
                .iter()
                .map(|i| i.addr.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        // Each hole by its place as written, though the ones before it
        // were taken out.
        let mut holes = each.holes.clone();
        holes.sort();
        assert_eq!(
            holes,
            ["items.0", "items.0.addr", "items.1.n", "list.1", "list.3"]
        );
        assert!(each.lost("list") && each.lost("items") && !each.lost("name"));
        // The table left in `items` is the second as written, and lost `n`.
        assert_eq!(each.left("items", 1), ["items.1"]);
        assert!(each.lost("items.1"));
    }

    #[test]
    fn a_required_key_left_out_is_reported() {
        let (each, problems) = each_of("name = \"a\"\n[inner]\nn = 1\n");
        assert_eq!(problems, [(2, "missing field `addr`".to_owned())]);
        assert!(each.value.as_ref().is_some_and(|v| v.inner.is_none()));
        let (each, problems) = each_of("every = \"1s\"\n");
        assert_eq!(problems, [(1, "missing field `name`".to_owned())]);
        assert!(each.value.is_none());
    }
}
