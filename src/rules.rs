//! Rule files: every `*.toml` in `rules_dir`, each holding `[[route]]`
//! tables. [`RouteFile`] mirrors one table (unknown keys are errors); it
//! compiles into [`Route`], which holds everything the request path needs
//! already parsed: CIDRs, the upstream URI and its secret, the provider's
//! keys, durations.
//!
//! Each route is deserialised on its own, so one bad route does not hide the
//! problems of the next; every problem keeps its file and line. The compiled
//! routes form a [`RuleSet`], the immutable snapshot that `server` swaps in
//! whole on reload.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::allow::AllowList;
use crate::config::{Config, Dur, Limits, Located, Problem, line_of, parse_net, resolve};
use crate::forward::{ForwardMode, Upstream, UpstreamError};
use crate::provider::{Provider, ProviderKind};
use crate::secret::{Secret, SecretFileError};

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
    #[error("allow entry `{value}` is not a CIDR like 110.75.0.0/16 or an address: {reason}")]
    Cidr { value: String, reason: String },
    #[error("upstream `{value}`: {reason}")]
    Upstream { value: String, reason: String },
    #[error("upstream_secret_file `{file}`: {reason}")]
    SecretFile {
        file: String,
        reason: SecretFileError,
    },
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
    #[error("rate_limit: {reason}")]
    RateLimit { reason: String },
}

// === raw ===

/// One `[[route]]` table as written. `keys` is taken out before this is
/// deserialised and handed to the provider, which knows its shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Route name: metric label, log field and replay namespace.
    pub name: Spanned<String>,
    /// Exact request path, POST only.
    pub path: Spanned<String>,
    /// One of the contract's providers.
    pub provider: Spanned<ProviderKind>,
    /// CIDRs (or bare addresses) allowed to call; empty admits nobody.
    pub allow: Vec<Spanned<String>>,
    /// Where verified notifications go: http:// or https:// URL.
    pub upstream: Spanned<String>,
    /// File holding the HMAC key for `X-Callgate-Signature`.
    pub upstream_secret_file: Spanned<String>,
    /// PEM CA bundle trusted for an https upstream instead of the system roots.
    pub upstream_ca: Option<Spanned<String>>,
    /// `original` (default) or `normalized`.
    #[serde(default)]
    pub forward: ForwardMode,
    /// Freshness bound on the notification's own signed time.
    pub max_age: Option<Spanned<Dur>>,
    /// When set, an upstream 2xx must also contain these bytes.
    pub success_body: Option<Spanned<String>>,
    /// `closed` (default): store down → 503; `open`: forward without replay
    /// protection while the store is down.
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// `enforce` (default) or `log`: let denied addresses through, logged
    /// and counted as `ip_denied_dry_run`, to roll out an allow list.
    #[serde(default)]
    pub allow_mode: AllowMode,
    /// `{ per_second = 50, burst = 200 }`: a token bucket per source
    /// address (see `limit`); absent means no limit.
    pub rate_limit: Option<Spanned<crate::limit::RateLimitFile>>,
}

/// Whether the allow list refuses or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllowMode {
    #[default]
    Enforce,
    Log,
}

/// What a route does when the replay store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Refuse with 503 and the provider's failure ack; the platform retries.
    #[default]
    Closed,
    /// Forward anyway, without dedupe: duplicates may reach the shop.
    Open,
}

// === compiled ===

/// A compiled route: everything the request path needs, already parsed.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub path: Box<str>,
    pub provider: Provider,
    pub allow: AllowList,
    pub upstream: Upstream,
    pub forward: ForwardMode,
    /// How old the signed time may be.
    pub max_age: Duration,
    /// How far in the future the signed time may be.
    pub max_future: Duration,
    pub on_store_error: OnStoreError,
    pub allow_mode: AllowMode,
    /// Per-source rate limit and its buckets, when set.
    pub rate_limit: Option<crate::limit::RateLimit>,
    /// Where the route is defined, for messages.
    pub file: PathBuf,
    pub line: usize,
}

impl Route {
    pub fn kind(&self) -> ProviderKind {
        self.provider.kind()
    }
}

/// The immutable snapshot a request works with from start to end.
#[derive(Debug, Clone)]
pub struct RuleSet {
    routes: HashMap<Box<str>, Arc<Route>>,
    pub trusted_proxies: Arc<[IpNet]>,
    pub limits: Limits,
}

impl RuleSet {
    pub fn route(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.get(path)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.values()
    }
}

// === loading ===

/// Where problems go while one file is compiled, with its text for line
/// numbers.
pub struct FileCtx<'a> {
    pub file: &'a Path,
    pub dir: &'a Path,
    pub src: &'a str,
    problems: &'a mut Vec<Problem>,
    warnings: &'a mut Vec<String>,
    failed: bool,
}

impl<'a> FileCtx<'a> {
    /// Records a problem at a span of this file.
    pub fn error(&mut self, span: Range<usize>, error: RuleError) {
        self.failed = true;
        self.problems.push(Problem::Rule(Located {
            file: self.file.to_path_buf(),
            line: Some(line_of(self.src, span.start)),
            error,
        }));
    }

    /// Records a warning: valid, but an operator should know.
    pub fn warn(&mut self, span: Range<usize>, message: impl std::fmt::Display) {
        self.warnings.push(format!(
            "{}:{}: warning: {message}",
            self.file.display(),
            line_of(self.src, span.start)
        ));
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

    /// Resolves a path named in this file against the file's directory.
    pub fn resolve(&self, p: &str) -> PathBuf {
        resolve(self.dir, p)
    }

    /// `file:line` of a span, for messages that point back at a definition.
    fn here(&self, span: Range<usize>) -> String {
        format!("{}:{}", self.file.display(), line_of(self.src, span.start))
    }
}

/// Loads every `*.toml` in the configured rules directory, in name order.
pub fn load_dir(
    config: &Config,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
) -> RuleSet {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&config.rules_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect(),
        Err(_) => Vec::new(), // reported by the gateway file's check
    };
    files.sort();

    let mut routes: HashMap<Box<str>, Arc<Route>> = HashMap::new();
    let mut seen = Seen::default();
    for file in &files {
        load_file(config, file, problems, warnings, &mut routes, &mut seen);
    }
    RuleSet {
        routes,
        trusted_proxies: config.trusted_proxies.clone(),
        limits: config.limits,
    }
}

fn load_file(
    config: &Config,
    file: &Path,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
    routes: &mut HashMap<Box<str>, Arc<Route>>,
    seen: &mut Seen,
) {
    let src = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => {
            problems.push(Problem::Rule(Located {
                file: file.to_path_buf(),
                line: None,
                error: RuleError::Read {
                    reason: crate::config::io_reason(&e),
                },
            }));
            return;
        }
    };
    let dir = file.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut ctx = FileCtx {
        file,
        dir: &dir,
        src: &src,
        problems,
        warnings,
        failed: false,
    };
    let (doc, errors) = DeTable::parse_recoverable(&src);
    if !errors.is_empty() {
        for e in &errors {
            ctx.toml_error(0..0, e);
        }
        return;
    }
    for (key, value) in doc.into_inner() {
        if key.get_ref() != "route" {
            ctx.error(
                key.span(),
                RuleError::TopLevel {
                    key: key.get_ref().to_string(),
                },
            );
            continue;
        }
        let span = value.span();
        let DeValue::Array(items) = value.into_inner() else {
            ctx.error(span, RuleError::RouteShape);
            continue;
        };
        for item in items {
            if let Some(route) = compile_route(config, item, &mut ctx, seen) {
                routes.insert(route.path.clone(), Arc::new(route));
            }
        }
    }
}

/// Names and paths already taken, with where (`file:line`) and by whom.
#[derive(Default)]
struct Seen {
    names: HashMap<String, String>,
    paths: HashMap<String, (String, String)>,
}

fn compile_route(
    config: &Config,
    item: Spanned<DeValue<'_>>,
    ctx: &mut FileCtx<'_>,
    seen: &mut Seen,
) -> Option<Route> {
    ctx.failed = false;
    let span = item.span();
    let DeValue::Table(mut table) = item.into_inner() else {
        ctx.error(span, RuleError::RouteShape);
        return None;
    };
    let keys = table.remove("keys");
    let raw: RouteFile = ctx.deserialize(Spanned::new(span.clone(), DeValue::Table(table)))?;

    let name = raw.name.get_ref();
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        ctx.error(raw.name.span(), RuleError::BadName { name: name.clone() });
    } else if let Some(first) = seen.names.get(name) {
        ctx.error(
            raw.name.span(),
            RuleError::DuplicateName {
                name: name.clone(),
                first: first.clone(),
            },
        );
    } else {
        seen.names.insert(name.clone(), ctx.here(raw.name.span()));
    }

    let path = raw.path.get_ref();
    if !path.starts_with('/') || path.contains(['?', '#']) || path.contains(char::is_whitespace) {
        ctx.error(raw.path.span(), RuleError::BadPath { path: path.clone() });
    } else if let Some((other, first)) = seen.paths.get(path) {
        ctx.error(
            raw.path.span(),
            RuleError::DuplicatePath {
                path: path.clone(),
                other: other.clone(),
                first: first.clone(),
            },
        );
    } else {
        seen.paths
            .insert(path.clone(), (name.clone(), ctx.here(raw.path.span())));
    }

    let mut nets = Vec::with_capacity(raw.allow.len());
    for entry in &raw.allow {
        match parse_net(entry.get_ref()) {
            Ok(n) => nets.push(n),
            Err(reason) => ctx.error(
                entry.span(),
                RuleError::Cidr {
                    value: entry.get_ref().clone(),
                    reason,
                },
            ),
        }
    }

    let secret_file = raw.upstream_secret_file.get_ref();
    let secret = match Secret::from_file(&ctx.resolve(secret_file)) {
        Ok(s) => Some(s),
        Err(reason) => {
            ctx.error(
                raw.upstream_secret_file.span(),
                RuleError::SecretFile {
                    file: secret_file.clone(),
                    reason,
                },
            );
            None
        }
    };
    let ca = raw
        .upstream_ca
        .as_ref()
        .map(|c| (ctx.resolve(c.get_ref()), c));
    let success_body = match &raw.success_body {
        Some(s) if s.get_ref().is_empty() => {
            ctx.error(s.span(), RuleError::EmptySuccessBody);
            None
        }
        Some(s) => Some(s.get_ref().as_bytes().to_vec().into_boxed_slice()),
        None => None,
    };
    let upstream = match secret {
        Some(secret) => match Upstream::new(
            raw.upstream.get_ref(),
            secret,
            ca.as_ref().map(|(p, _)| p.as_path()),
            success_body,
            config.limits.upstream_timeout,
        ) {
            Ok(u) => Some(u),
            Err(UpstreamError::Ca(reason)) => {
                if let Some((_, c)) = &ca {
                    ctx.error(
                        c.span(),
                        RuleError::UpstreamCa {
                            file: c.get_ref().clone(),
                            reason,
                        },
                    );
                }
                None
            }
            Err(UpstreamError::Uri(reason)) => {
                ctx.error(
                    raw.upstream.span(),
                    RuleError::Upstream {
                        value: raw.upstream.get_ref().clone(),
                        reason,
                    },
                );
                None
            }
        },
        None => {
            // Still report a bad URL alongside the secret problem.
            if let Err(UpstreamError::Uri(reason)) =
                crate::forward::parse_upstream_uri(raw.upstream.get_ref())
            {
                ctx.error(
                    raw.upstream.span(),
                    RuleError::Upstream {
                        value: raw.upstream.get_ref().clone(),
                        reason,
                    },
                );
            }
            None
        }
    };

    let kind = *raw.provider.get_ref();
    let max_age = match &raw.max_age {
        Some(d) if d.get_ref().0.is_zero() => {
            ctx.error(d.span(), RuleError::Zero { field: "max_age" });
            kind.default_max_age()
        }
        Some(d) => d.get_ref().0,
        None => kind.default_max_age(),
    };
    let max_future = kind.max_future(max_age);
    if raw.allow_mode == AllowMode::Log {
        ctx.warn(
            span.clone(),
            format_args!(
                "route `{name}` has allow_mode = \"log\": addresses outside its allow list are let through \
                 (logged and counted as ip_denied_dry_run)"
            ),
        );
    }
    if raw.on_store_error == OnStoreError::Open {
        ctx.warn(
            span.clone(),
            format_args!(
                "route `{name}` has on_store_error = \"open\": while the replay store is down it forwards \
                 WITHOUT replay protection, so the shop may receive duplicates and replays"
            ),
        );
    }

    let rate_limit = crate::limit::RateLimit::compile(raw.rate_limit.as_ref(), ctx);

    let provider = match keys {
        Some(value) => Provider::compile(kind, value, ctx),
        None => {
            ctx.error(
                span.clone(),
                RuleError::MissingKeys {
                    provider: kind.as_str(),
                    needs: kind.keys_hint(),
                },
            );
            None
        }
    };

    if ctx.failed {
        return None;
    }
    Some(Route {
        name: name.as_str().into(),
        path: path.as_str().into(),
        provider: provider?,
        allow: AllowList::new(nets),
        upstream: upstream?,
        forward: raw.forward,
        on_store_error: raw.on_store_error,
        allow_mode: raw.allow_mode,
        rate_limit,
        max_age,
        max_future,
        file: ctx.file.to_path_buf(),
        line: line_of(ctx.src, span.start),
    })
}
