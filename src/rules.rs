//! Rule files: every `*.toml` in `rules_dir`, each holding `[[route]]`
//! tables. [`RouteFile`] mirrors one table (unknown keys are errors); it
//! compiles into [`Route`], which holds everything the request path needs
//! already parsed: CIDRs, the upstream URI and its secret, the provider's
//! keys, durations.
//!
//! Each route is deserialised on its own, so one bad route does not hide the
//! problems of the next, and with `load::deserialize_each`, so one bad key
//! does not hide the other problems of its route; every problem keeps its
//! file and line (recorded in the load's `load::Loader`). The compiled
//! [`Routes`] go into the `config::Snapshot` a request works with, swapped
//! in whole on reload.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::allow::{AllowList, parse_net};
use crate::forward::{ForwardHeaders, ForwardMode, Upstream, UpstreamError};
use crate::load::{Dur, FileCtx, Loader, Located, RuleError, io_reason, line_of};
use crate::provider::{Addressee, Provider, ProviderKind, Verified, VerifyError};
use crate::secret::Secret;

// === raw ===

/// One `[[route]]` table as written. `keys` is taken out before this is
/// deserialised and handed to the provider, which knows its shape.
///
/// `name`, `path`, `provider` and `allow` are required; they are options
/// here so that a route whose required value is wrong (`provider =
/// "paypal"`) still has its other settings checked: `compile_route` reports
/// one left out as serde would, "missing field".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Route name: metric label, log field and (unless `replay_namespace`
    /// says otherwise) replay namespace. Required.
    pub name: Option<Spanned<String>>,
    /// Exact request path, POST only. Required.
    pub path: Option<Spanned<String>>,
    /// One of the contract's providers. Required.
    pub provider: Option<Spanned<ProviderKind>>,
    /// CIDRs (or bare addresses) allowed to call; empty admits nobody.
    /// Required.
    pub allow: Option<Vec<Spanned<String>>>,
    /// Where verified notifications go: http:// or https:// URL (a
    /// merchant may override it).
    pub upstream: Option<Spanned<String>>,
    /// File holding the HMAC key for `X-Callgate-Signature` (a merchant may
    /// override it).
    pub upstream_secret_file: Option<Spanned<String>>,
    /// PEM CA bundle trusted for an https upstream instead of the system roots.
    pub upstream_ca: Option<Spanned<String>>,
    /// `original` (default) or `normalized`.
    #[serde(default)]
    pub forward: ForwardMode,
    /// Names of further platform request headers to pass to the shop,
    /// beyond Content-Type, User-Agent, Accept and `Wechatpay-*`.
    #[serde(default)]
    pub forward_headers: Vec<Spanned<String>>,
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
    /// Count notifications per merchant too, in
    /// `callgate_merchant_requests_total` (off by default: merchant ids are
    /// an unbounded label set in general).
    #[serde(default)]
    pub merchant_label: bool,
    /// `{ per_second = 50, burst = 200 }`: a token bucket per source
    /// address (see `limit`); absent means no limit.
    pub rate_limit: Option<Spanned<crate::limit::RateLimitFile>>,
    /// Most events and nonces this route may hold in the memory replay
    /// store; absent: an equal share of what the other routes leave.
    pub replay_quota: Option<Spanned<u64>>,
    /// The name the route's replay state (memory store, Redis keys, the
    /// journal's warm-up) is kept under; absent: the route's `name`. Set it
    /// to the old name when renaming a route, so that a platform's retry of
    /// an event delivered before is still a duplicate. Two routes with one
    /// namespace share their events (one merchant at two paths: each event
    /// is delivered once).
    pub replay_namespace: Option<Spanned<String>>,
}

/// One `[[route.merchant]]` table of a route serving several merchants:
/// its `keys` (taken out before this is deserialised) and optional overrides
/// of the route's upstream settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantFile {
    pub upstream: Option<Spanned<String>>,
    pub upstream_secret_file: Option<Spanned<String>>,
    pub upstream_ca: Option<Spanned<String>>,
    pub success_body: Option<Spanned<String>>,
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
    /// What its replay state is keyed by: `replay_namespace`, else `name`
    /// (the same `Arc`).
    pub replay_namespace: Arc<str>,
    pub path: Box<str>,
    kind: ProviderKind,
    /// One, or several chosen by the signed merchant field.
    merchants: Box<[Merchant]>,
    pub merchant_label: bool,
    pub allow: AllowList,
    pub forward: ForwardMode,
    /// Which of the platform's request headers reach the shop.
    pub forward_headers: ForwardHeaders,
    /// How old the signed time may be.
    pub max_age: Duration,
    /// How far in the future the signed time may be.
    pub max_future: Duration,
    pub on_store_error: OnStoreError,
    pub allow_mode: AllowMode,
    /// Per-source rate limit and its buckets, when set.
    pub rate_limit: Option<crate::limit::RateLimit>,
    /// Its own share of the memory replay store, when set
    /// (`replay::route_quotas`).
    pub replay_quota: Option<usize>,
    /// Where the route is defined, for messages.
    pub file: PathBuf,
    pub line: usize,
    /// Its metric series, set by `Metrics::rules_loaded`.
    pub series: std::sync::OnceLock<crate::metrics::RouteSeries>,
}

/// One merchant of a route: the keys its notifications are verified with
/// and where they go.
#[derive(Debug)]
pub struct Merchant {
    pub provider: Provider,
    pub upstream: Upstream,
}

impl Route {
    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    pub fn merchants(&self) -> &[Merchant] {
        &self.merchants
    }

    /// The merchants whose keys may verify a notification addressed to
    /// `to`, best match first: one bound to the sub-merchant it names, then
    /// ones for the merchant it names bound to none. A route with one merchant
    /// always offers it, so its verifier reports a mismatch precisely.
    pub fn candidates<'a>(&'a self, to: &Addressee<'_>) -> Vec<&'a Merchant> {
        if let [only] = &*self.merchants {
            return vec![only];
        }
        if let Addressee::Serial(_) = to {
            // A WeChat Pay v3 key serial names no sub-merchant: that is
            // inside the encrypted resource. The tables bound to one are
            // tried first (each refuses another's notification once it has
            // decrypted it), a table that takes any sub-merchant after
            // them, so a catch-all listed first cannot take a bound
            // sub-merchant's payment.
            let (bound, any): (Vec<_>, Vec<_>) = self
                .merchants
                .iter()
                .filter(|m| m.provider.serves(to, true))
                .partition(|m| m.provider.bound_to_sub_merchant());
            return bound.into_iter().chain(any).collect();
        }
        let exact = self
            .merchants
            .iter()
            .filter(|m| m.provider.serves(to, true));
        let loose = self
            .merchants
            .iter()
            .filter(|m| m.provider.serves(to, false) && !m.provider.serves(to, true));
        exact.chain(loose).collect()
    }

    /// Verifies a notification with the keys of the merchant it is for:
    /// each candidate of [`Route::candidates`] in turn (several merchants
    /// can share a WeChat Pay v3 platform key: a service provider's
    /// sub-merchants, told apart only inside the encrypted resource), the
    /// first that verifies wins. When none does, the first refusal that is
    /// not about the merchant is reported, else an unknown merchant.
    pub fn verify(
        &self,
        headers: &http::HeaderMap,
        body: &bytes::Bytes,
        payload: &crate::body::Payload,
        now: i64,
    ) -> Result<(&Merchant, Verified), VerifyError> {
        // One merchant (most routes): its verifier decides, and reports a
        // mismatch precisely; no candidate list to build.
        if let [only] = &*self.merchants {
            return only
                .provider
                .verify(headers, body, payload, now)
                .map(|v| (only, v));
        }
        let to = crate::provider::addressee(self.kind, headers, payload);
        let candidates = self.candidates(&to);
        let mut refusal = None;
        for m in &candidates {
            match m.provider.verify(headers, body, payload, now) {
                Ok(v) => return Ok((m, v)),
                Err(e) if candidates.len() == 1 => return Err(e),
                // Another merchant's notification: try the next.
                Err(
                    VerifyError::MerchantMismatch { .. }
                    | VerifyError::MerchantUnbound { .. }
                    | VerifyError::MissingField("seller_id" | "sub_mch_id" | "sub_mchid"),
                ) => {}
                Err(e) => {
                    refusal.get_or_insert(e);
                }
            }
        }
        Err(refusal.unwrap_or_else(|| {
            VerifyError::UnknownMerchant(match to {
                Addressee::Id { merchant, sub } => {
                    let shown = |s: &str| s.chars().take(64).collect::<String>();
                    match sub {
                        Some(sub) => format!("merchant `{}` / `{}`", shown(merchant), shown(sub)),
                        None => format!("merchant `{}`", shown(merchant)),
                    }
                }
                Addressee::Serial(s) => {
                    format!("key serial `{}`", s.chars().take(64).collect::<String>())
                }
                Addressee::Unknown => "no merchant field".to_owned(),
            })
        }))
    }

    /// The merchant a notification addressed to `to` is counted under in
    /// `callgate_merchant_requests_total` before it is verified.
    pub fn merchant_label(&self, to: &Addressee<'_>) -> Option<&str> {
        if let [only] = &*self.merchants {
            return Some(only.provider.merchant_id());
        }
        self.candidates(to)
            .first()
            .map(|m| m.provider.merchant_id())
    }

    /// The route's certificate-backed keys: (`key` label, notAfter in Unix
    /// seconds), for `callgate_key_expiry_timestamp_seconds`.
    pub fn certificates(&self) -> Vec<(String, i64)> {
        match &*self.merchants {
            [only] => only.provider.certificates(),
            many => many
                .iter()
                .flat_map(|m| {
                    let id = m.provider.merchant_id().to_owned();
                    m.provider
                        .certificates()
                        .into_iter()
                        .map(move |(key, at)| (format!("{id}/{key}"), at))
                })
                .collect(),
        }
    }
}

/// The compiled routes, by exact request path.
#[derive(Debug, Clone, Default)]
pub struct Routes(HashMap<Box<str>, Arc<Route>>);

impl Routes {
    /// The route of a request path.
    pub fn get(&self, path: &str) -> Option<&Arc<Route>> {
        self.0.get(path)
    }

    /// The route called `name`.
    pub fn named(&self, name: &str) -> Option<&Arc<Route>> {
        self.0.values().find(|r| *r.name == *name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.0.values()
    }

    /// The routes whose replay state is kept under `namespace`, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<&Arc<Route>> {
        let mut routes: Vec<&Arc<Route>> = self
            .iter()
            .filter(|r| *r.replay_namespace == *namespace)
            .collect();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        routes
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each route's own `replay_quota`, when it sets one
    /// (`replay::route_quotas`).
    pub fn quotas(&self) -> Vec<(Arc<str>, Option<usize>)> {
        self.iter()
            .map(|r| (r.name.clone(), r.replay_quota))
            .collect()
    }
}

/// The gateway file's settings that rule files are checked against or
/// inherit.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `replay.ttl`: a route's freshness window must fit in it.
    pub replay_ttl: Duration,
    /// `replay.max_entries`: the routes' quotas must fit in it.
    pub replay_max_entries: u64,
    /// `limits.upstream_timeout`: every upstream's.
    pub upstream_timeout: Duration,
}

impl Settings {
    /// Settings that constrain no route: for checking rule files when the
    /// gateway file they belong to could not be read, so that what depends
    /// on it (the freshness window against `replay.ttl`, the quotas against
    /// `replay.max_entries`) is not reported against values it may not have.
    pub fn unconstrained() -> Settings {
        Settings {
            replay_ttl: Duration::MAX,
            replay_max_entries: u64::MAX,
            upstream_timeout: Duration::from_secs(10),
        }
    }
}

// === loading ===

/// An IP set file (`<rules_dir>/ipsets/NAME.toml`): a named list of CIDRs
/// that routes use in `allow` as `"@NAME"`. A comment should say where the
/// list comes from and when it was copied.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpSetFile {
    /// CIDRs or bare addresses.
    pub cidrs: Vec<Spanned<String>>,
}

/// What to do about an allow entry that admits (nearly) everybody.
const ALLOW_ADVICE: &str = "anyone who learns the notify URL can reach the signature check; list the platform's published notification addresses (README, per platform)";

/// Named IP sets, by name; `None` for a file that had a problem (reported
/// there: a route naming it is not loaded, and says nothing more about it).
type IpSets = HashMap<String, Option<Vec<IpNet>>>;

/// The `*.toml` files of `dir`, in name order (none when it cannot be
/// read: the gateway file's check reports that).
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && rule_file(p))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Whether a `.toml` entry of the rules directory is a file to load: a
/// file, or one that cannot even be looked at (a symlink to nothing or to
/// itself, no permission), which [`read`] then reports: a deploy that
/// left a dangling link must not drop its routes without a word. A
/// directory or a FIFO named `.toml` is not a rule file (reading a FIFO
/// would wait forever).
fn rule_file(path: &Path) -> bool {
    std::fs::metadata(path).map_or(true, |m| m.is_file())
}

/// Reads a rule or IP set file, recording why when it cannot be read.
fn read(file: &Path, loader: &mut Loader) -> Option<String> {
    match std::fs::read_to_string(file) {
        Ok(s) => Some(s),
        Err(e) => {
            loader.problem(Located {
                file: file.to_path_buf(),
                line: None,
                error: RuleError::Read {
                    reason: io_reason(&e),
                },
            });
            None
        }
    }
}

/// Loads `<rules_dir>/ipsets/*.toml` (absent directory: no sets).
fn load_ipsets(rules_dir: &Path, loader: &mut Loader) -> IpSets {
    let dir = rules_dir.join("ipsets");
    loader.touch(dir.clone());
    let mut sets = IpSets::new();
    for file in toml_files(&dir) {
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(src) = read(&file, loader) else {
            sets.insert(name, None);
            continue;
        };
        loader.touch(file.clone());
        let mut ctx = loader.file(&file, &src);
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            ctx.error(0..0, RuleError::BadIpSetName { name });
            continue;
        }
        let (doc, errors) = DeTable::parse_recoverable(&src);
        if !errors.is_empty() {
            for e in &errors {
                ctx.toml_error(0..0, e);
            }
            sets.insert(name, None);
            continue;
        }
        // Every problem of the file, each entry's too (not only serde's
        // first): a wrong entry is taken out and the others are checked.
        let each = ctx.deserialize_each::<IpSetFile>(Spanned::new(
            doc.span(),
            DeValue::Table(doc.into_inner()),
        ));
        let cidrs = each.value.as_ref().map_or(&[][..], |r| &r.cidrs[..]);
        let mut nets = Vec::with_capacity(cidrs.len());
        for entry in cidrs {
            match parse_net(entry.get_ref()) {
                Ok(n) => {
                    if let Some(why) = crate::allow::too_wide(&n) {
                        ctx.warn(entry.span(), format!("cidrs entry {why}: {ALLOW_ADVICE}"));
                    }
                    nets.push(n)
                }
                Err(reason) => ctx.error(
                    entry.span(),
                    RuleError::IpSetEntry {
                        value: entry.get_ref().clone(),
                        reason,
                    },
                ),
            }
        }
        let set = (!ctx.failed()).then_some(nets);
        sets.insert(name, set);
    }
    sets
}

/// Loads every `*.toml` in `rules_dir`, in name order, recording every
/// problem in `loader`.
pub fn load_dir(rules_dir: &Path, settings: &Settings, loader: &mut Loader) -> Routes {
    let files = toml_files(rules_dir);
    let mut routes = Routes::default();
    let mut seen = Seen {
        ipsets: load_ipsets(rules_dir, loader),
        ..Seen::default()
    };
    for file in &files {
        loader.touch(file.clone());
        load_file(settings, file, loader, &mut routes, &mut seen);
    }
    check_quotas(settings, &routes, loader);
    routes
}

/// The routes' own `replay_quota`s must fit in `replay.max_entries`, so
/// that every route's share is there when it needs it. Reported at the
/// last route that sets one.
fn check_quotas(settings: &Settings, routes: &Routes, loader: &mut Loader) {
    let mut with_quota: Vec<&Arc<Route>> =
        routes.iter().filter(|r| r.replay_quota.is_some()).collect();
    with_quota.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    let total: u64 = with_quota
        .iter()
        .filter_map(|r| r.replay_quota)
        .map(|q| q as u64)
        .fold(0, u64::saturating_add);
    let max = settings.replay_max_entries;
    if let Some(last) = with_quota.last()
        && total > max
    {
        loader.problem(Located {
            file: last.file.clone(),
            line: Some(last.line),
            error: RuleError::QuotasOverMax { total, max },
        });
    }
}

fn load_file(
    settings: &Settings,
    file: &Path,
    loader: &mut Loader,
    routes: &mut Routes,
    seen: &mut Seen,
) {
    let Some(src) = read(file, loader) else {
        return;
    };
    let mut ctx = loader.file(file, &src);
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
            if let Some(route) = compile_route(settings, item, &mut ctx, seen) {
                routes.0.insert(route.path.clone(), Arc::new(route));
            }
        }
    }
}

/// A route name: 1-64 letters, digits, `.`, `_` or `-`.
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Names and paths already taken, with where (`file:line`) and by whom.
#[derive(Default)]
struct Seen {
    names: HashMap<String, String>,
    /// Replay namespaces in use: namespace → (route, `file:line`).
    namespaces: HashMap<String, (String, String)>,
    paths: HashMap<String, (String, String)>,
    /// Named IP sets from `ipsets/`.
    ipsets: IpSets,
}

fn compile_route(
    settings: &Settings,
    item: Spanned<DeValue<'_>>,
    ctx: &mut FileCtx<'_>,
    seen: &mut Seen,
) -> Option<Route> {
    ctx.start_table();
    let span = item.span();
    let DeValue::Table(mut table) = item.into_inner() else {
        ctx.error(span, RuleError::RouteShape);
        return None;
    };
    let keys = table.remove("keys");
    let merchant_tables = table.remove("merchant");
    // A wrong value's problem names the route, when its name is one.
    let named = table.get("name").and_then(|n| match n.get_ref() {
        DeValue::String(n) if name_ok(n) => Some(n.to_string()),
        _ => None,
    });
    ctx.in_route(named.as_deref());
    let each = ctx.deserialize_each::<RouteFile>(Spanned::new(span.clone(), DeValue::Table(table)));
    let raw = each.value.as_ref()?;
    // A key whose value was wrong is reported already, and nothing is
    // judged from the default that stands in for it: only what is left.
    for (field, given) in [
        ("name", raw.name.is_some()),
        ("path", raw.path.is_some()),
        ("provider", raw.provider.is_some()),
        ("allow", raw.allow.is_some()),
    ] {
        if !given && !each.lost(field) {
            ctx.error(span.clone(), RuleError::MissingField { field });
        }
    }

    let name = raw.name.as_ref().map(|n| n.get_ref().as_str());
    if let Some(n) = &raw.name {
        let name = n.get_ref();
        if !name_ok(name) {
            ctx.error(n.span(), RuleError::BadName { name: name.clone() });
        } else if let Some(first) = seen.names.get(name) {
            ctx.error(
                n.span(),
                RuleError::DuplicateName {
                    name: name.clone(),
                    first: first.clone(),
                },
            );
        } else {
            seen.names.insert(name.clone(), ctx.here(n.span()));
        }
    }

    let namespace = compile_namespace(raw, name, ctx, seen, &span);

    if let Some(p) = &raw.path {
        let path = p.get_ref();
        if !path.starts_with('/') || path.contains(['?', '#']) || path.contains(char::is_whitespace)
        {
            ctx.error(p.span(), RuleError::BadPath { path: path.clone() });
        } else if let Some((other, first)) = seen.paths.get(path) {
            ctx.error(
                p.span(),
                RuleError::DuplicatePath {
                    path: path.clone(),
                    other: other.clone(),
                    first: first.clone(),
                },
            );
        } else {
            seen.paths.insert(
                path.clone(),
                (name.unwrap_or("-").to_owned(), ctx.here(p.span())),
            );
        }
    }

    let allow: &[Spanned<String>] = raw.allow.as_deref().unwrap_or_default();
    let mut nets = Vec::with_capacity(allow.len());
    let mut broken_set = false;
    for entry in allow {
        if let Some(set) = entry.get_ref().strip_prefix('@') {
            match seen.ipsets.get(set) {
                Some(Some(list)) => nets.extend_from_slice(list),
                Some(None) => broken_set = true,
                None => ctx.error(
                    entry.span(),
                    RuleError::UnknownIpSet {
                        name: entry.get_ref().clone(),
                        set: set.to_owned(),
                    },
                ),
            }
            continue;
        }
        match parse_net(entry.get_ref()) {
            Ok(n) => {
                if let Some(why) = crate::allow::too_wide(&n) {
                    ctx.warn(entry.span(), format!("allow entry {why}: {ALLOW_ADVICE}"));
                }
                nets.push(n)
            }
            Err(reason) => ctx.error(
                entry.span(),
                RuleError::Cidr {
                    value: entry.get_ref().clone(),
                    reason,
                },
            ),
        }
    }

    let kind = raw.provider.as_ref().map(|p| *p.get_ref());
    if let Some(d) = &raw.max_age
        && d.get_ref().0.is_zero()
    {
        ctx.error(d.span(), RuleError::Zero { field: "max_age" });
    }
    // The freshness window needs the provider, and a max_age as written.
    let window = kind.filter(|_| !each.lost("max_age")).map(|kind| {
        let max_age = match &raw.max_age {
            Some(d) if !d.get_ref().0.is_zero() => d.get_ref().0,
            _ => kind.default_max_age(),
        };
        (max_age, kind.max_future(max_age))
    });
    // A delivered event must be remembered for as long as a copy of it can
    // still pass freshness.
    if let Some((max_age, max_future)) = window
        && settings.replay_ttl < max_age + max_future
    {
        let at = raw.max_age.as_ref().map_or(span.clone(), Spanned::span);
        ctx.error(
            at,
            RuleError::ReplayTtlTooShort {
                ttl: crate::load::format_duration(settings.replay_ttl).to_string(),
                window: crate::load::format_duration(max_age + max_future).to_string(),
                future: crate::load::format_duration(max_future).to_string(),
            },
        );
    }
    let shown = name.unwrap_or("-");
    if raw.allow_mode == AllowMode::Log {
        ctx.warn(
            span.clone(),
            format_args!(
                "route `{shown}` has allow_mode = \"log\": addresses outside its allow list are let through \
                 (logged and counted as ip_denied_dry_run)"
            ),
        );
    }
    if raw.on_store_error == OnStoreError::Open {
        ctx.warn(
            span.clone(),
            format_args!(
                "route `{shown}` has on_store_error = \"open\": while the replay store is down it forwards \
                 WITHOUT replay protection, so the shop may receive duplicates and replays"
            ),
        );
    }

    let rate_limit = crate::limit::RateLimit::compile(raw.rate_limit.as_ref(), ctx);
    if let Some(q) = &raw.replay_quota
        && *q.get_ref() == 0
    {
        ctx.error(
            q.span(),
            RuleError::Zero {
                field: "replay_quota",
            },
        );
    }
    // Each name on its own, so that every one refused is listed, not the
    // first.
    let mut headers_ok = true;
    for n in &raw.forward_headers {
        if let Err((_, reason)) = ForwardHeaders::new([n.get_ref().as_str()]) {
            ctx.error(n.span(), RuleError::ForwardHeader { reason });
            headers_ok = false;
        }
    }
    let forward_headers = if headers_ok {
        match ForwardHeaders::new(raw.forward_headers.iter().map(|n| n.get_ref().as_str())) {
            Ok(h) => match kind {
                Some(kind) => h.for_provider(kind),
                None => h,
            },
            Err((_, reason)) => {
                ctx.error(span.clone(), RuleError::ForwardHeader { reason });
                ForwardHeaders::default()
            }
        }
    } else {
        ForwardHeaders::default()
    };

    // A merchant falls back on these: when one of them was wrong, no
    // upstream is judged (it would be "missing", or another's).
    let defaults = UPSTREAM_KEYS
        .iter()
        .all(|k| !each.lost(k))
        .then_some(UpstreamFields {
            upstream: raw.upstream.as_ref(),
            secret_file: raw.upstream_secret_file.as_ref(),
            ca: raw.upstream_ca.as_ref(),
            success_body: raw.success_body.as_ref(),
        });
    let upstream = |ctx: &mut FileCtx<'_>| {
        defaults
            .as_ref()
            .and_then(|d| compile_upstream(settings, ctx, d, None, span.clone()))
    };
    let merchants = match (keys, merchant_tables, kind) {
        (Some(_), Some(m), _) => {
            ctx.error(m.span(), RuleError::KeysAndMerchants);
            None
        }
        // The keys' shape is the provider's: without it, only the upstream.
        (_, None, None) => {
            upstream(ctx);
            None
        }
        (None, None, Some(kind)) => {
            ctx.error(
                span.clone(),
                RuleError::MissingKeys {
                    provider: kind.as_str(),
                    needs: kind.keys_hint(),
                },
            );
            upstream(ctx);
            None
        }
        (Some(value), None, Some(kind)) => {
            let provider = ctx.within("keys", |ctx| Provider::compile(kind, value, ctx));
            let upstream = upstream(ctx);
            provider
                .zip(upstream)
                .map(|(provider, upstream)| vec![Merchant { provider, upstream }])
        }
        (None, Some(tables), Some(kind)) => {
            compile_merchants(settings, ctx, kind, defaults.as_ref(), tables)
        }
        (None, Some(_), None) => None,
    };

    if ctx.failed() || broken_set {
        return None;
    }
    let (Some(name), Some(path), Some(kind), Some((max_age, max_future))) =
        (name, &raw.path, kind, window)
    else {
        return None;
    };
    let name: Arc<str> = name.into();
    Some(Route {
        replay_namespace: match namespace {
            Some(ns) if *ns != *name => ns.into(),
            _ => name.clone(),
        },
        name,
        path: path.get_ref().as_str().into(),
        kind,
        merchants: merchants?.into_boxed_slice(),
        merchant_label: raw.merchant_label,
        allow: AllowList::new(nets),
        forward: raw.forward,
        forward_headers,
        on_store_error: raw.on_store_error,
        allow_mode: raw.allow_mode,
        rate_limit,
        replay_quota: raw
            .replay_quota
            .as_ref()
            .map(|q| usize::try_from(*q.get_ref()).unwrap_or(usize::MAX)),
        max_age,
        max_future,
        file: ctx.file.to_path_buf(),
        line: line_of(ctx.src, span.start),
        series: std::sync::OnceLock::new(),
    })
}

/// The route's replay namespace as written, or its name: `None` when
/// neither is usable (reported). A blank namespace, or one with spaces or
/// control characters, is refused (it would be mistyped as another, or
/// break a log line), and so is one with a brace: on a Redis Cluster a key
/// is `callgate:{<namespace>:ev:<hex>}`, and a namespace starting with `}`
/// would leave the hash tag empty, putting an event's two keys in two
/// slots (every claim refused). One another route uses too is allowed,
/// with a warning saying that the two share their events.
fn compile_namespace<'r>(
    raw: &'r RouteFile,
    name: Option<&'r str>,
    ctx: &mut FileCtx<'_>,
    seen: &mut Seen,
    span: &std::ops::Range<usize>,
) -> Option<&'r str> {
    let (namespace, at) = match &raw.replay_namespace {
        Some(ns) => {
            let text = ns.get_ref().as_str();
            if text.is_empty()
                || text
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '{' | '}'))
            {
                ctx.error(
                    ns.span(),
                    RuleError::BadNamespace {
                        namespace: text.to_owned(),
                    },
                );
                return None;
            }
            (text, ns.span())
        }
        None => (name?, span.clone()),
    };
    let shown = name.unwrap_or("-");
    match seen.namespaces.get(namespace) {
        Some((other, first)) => ctx.warn(
            at,
            format_args!(
                "route `{shown}` shares replay namespace `{namespace}` with route `{other}` at {first}: \
                 an event delivered by one is a duplicate on the other (one merchant at two paths); \
                 if that is not meant, give one of them its own replay_namespace"
            ),
        ),
        None => {
            let here = ctx.here(at);
            seen.namespaces
                .insert(namespace.to_owned(), (shown.to_owned(), here));
        }
    }
    Some(namespace)
}

/// The keys of a route a merchant's upstream falls back on.
const UPSTREAM_KEYS: [&str; 4] = [
    "upstream",
    "upstream_secret_file",
    "upstream_ca",
    "success_body",
];

/// The upstream settings of a route or of one of its merchants, as written.
struct UpstreamFields<'a> {
    upstream: Option<&'a Spanned<String>>,
    secret_file: Option<&'a Spanned<String>>,
    ca: Option<&'a Spanned<String>>,
    success_body: Option<&'a Spanned<String>>,
}

/// Compiles an upstream: a merchant's own settings over the route's.
fn compile_upstream(
    settings: &Settings,
    ctx: &mut FileCtx<'_>,
    route: &UpstreamFields<'_>,
    merchant: Option<&UpstreamFields<'_>>,
    at: Range<usize>,
) -> Option<Upstream> {
    let url = merchant.and_then(|m| m.upstream).or(route.upstream);
    let secret_file = merchant.and_then(|m| m.secret_file).or(route.secret_file);
    // A shop holds the secret it checks X-Callgate-Signature with, so it can
    // make one: a merchant's own shop signing with the route's secret could
    // send the route's shop any body under a valid signature.
    if let Some(m) = merchant
        && let (Some(own), None, Some(_)) = (m.upstream, m.secret_file, route.secret_file)
        && route.upstream.is_none_or(|r| r.get_ref() != own.get_ref())
    {
        ctx.warn(
            own.span(),
            format!(
                "merchant upstream `{}` is signed with the route's upstream_secret_file, which every other shop of the route holds too: each of them could sign a body for the others; give this merchant its own upstream_secret_file",
                own.get_ref()
            ),
        );
    }
    let ca = merchant.and_then(|m| m.ca).or(route.ca);
    let success_body = merchant.and_then(|m| m.success_body).or(route.success_body);

    let secret = match secret_file {
        None => {
            ctx.error(
                at.clone(),
                RuleError::MissingUpstream {
                    field: "upstream_secret_file",
                    why: "give the file holding the HMAC key for X-Callgate-Signature",
                },
            );
            None
        }
        Some(file) => match Secret::from_file(&ctx.resolve(file.get_ref())) {
            Ok(s) => Some(s),
            Err(reason) => {
                ctx.error(
                    file.span(),
                    RuleError::SecretFile {
                        file: file.get_ref().clone(),
                        reason: reason.to_string(),
                    },
                );
                None
            }
        },
    };
    let Some(url) = url else {
        ctx.error(
            at,
            RuleError::MissingUpstream {
                field: "upstream",
                why: "give the shop's notify URL (http:// or https://)",
            },
        );
        return None;
    };
    let success_body = match success_body {
        Some(s) if s.get_ref().is_empty() => {
            ctx.error(s.span(), RuleError::EmptySuccessBody);
            None
        }
        Some(s) => Some(s.get_ref().as_bytes().to_vec().into_boxed_slice()),
        None => None,
    };
    let bad_url = |ctx: &mut FileCtx<'_>, reason: String| {
        ctx.error(
            url.span(),
            RuleError::Upstream {
                value: url.get_ref().clone(),
                reason,
            },
        );
    };
    let Some(secret) = secret else {
        // Still report a bad URL alongside the secret problem.
        if let Err(reason) = crate::load::http_url(url.get_ref()) {
            bad_url(ctx, reason);
        }
        return None;
    };
    let ca_path = ca.map(|c| ctx.resolve(c.get_ref()));
    match Upstream::new(
        url.get_ref(),
        secret,
        ca_path.as_deref(),
        success_body,
        settings.upstream_timeout,
    ) {
        Ok(u) => Some(u),
        Err(UpstreamError::Ca(reason)) => {
            if let Some(c) = ca {
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
            bad_url(ctx, reason);
            None
        }
    }
}

/// Compiles the `[[route.merchant]]` tables of a route.
fn compile_merchants(
    settings: &Settings,
    ctx: &mut FileCtx<'_>,
    kind: ProviderKind,
    defaults: Option<&UpstreamFields<'_>>,
    tables: Spanned<DeValue<'_>>,
) -> Option<Vec<Merchant>> {
    let span = tables.span();
    let DeValue::Array(items) = tables.into_inner() else {
        ctx.error(span, RuleError::RouteShape);
        return None;
    };
    let mut merchants = Vec::with_capacity(items.len());
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut ok = true;
    for item in items {
        let item_span = item.span();
        let DeValue::Table(mut table) = item.into_inner() else {
            ctx.error(item_span, RuleError::RouteShape);
            ok = false;
            continue;
        };
        let keys = table.remove("keys");
        let each = ctx.within("merchant", |ctx| {
            ctx.deserialize_each::<MerchantFile>(Spanned::new(
                item_span.clone(),
                DeValue::Table(table),
            ))
        });
        let Some(raw) = each.value.as_ref() else {
            ok = false;
            continue;
        };
        let own = UpstreamFields {
            upstream: raw.upstream.as_ref(),
            secret_file: raw.upstream_secret_file.as_ref(),
            ca: raw.upstream_ca.as_ref(),
            success_body: raw.success_body.as_ref(),
        };
        let provider = match keys {
            Some(k) => ctx.within("merchant.keys", |ctx| Provider::compile(kind, k, ctx)),
            None => {
                ctx.error(
                    item_span.clone(),
                    RuleError::MissingKeys {
                        provider: kind.as_str(),
                        needs: kind.keys_hint(),
                    },
                );
                None
            }
        };
        // Without the route's own settings or its own (one was wrong), the
        // merchant's upstream cannot be judged; its keys still are.
        let upstream = defaults
            .filter(|_| each.holes.is_empty())
            .and_then(|defaults| {
                compile_upstream(settings, ctx, defaults, Some(&own), item_span.clone())
            });
        let (Some(provider), Some(upstream)) = (provider, upstream) else {
            ok = false;
            continue;
        };
        let id = provider.merchant_id();
        if let Some(first) = ids.get(id) {
            ctx.error(
                item_span,
                RuleError::DuplicateMerchant {
                    id: id.to_owned(),
                    first: first.clone(),
                },
            );
            ok = false;
            continue;
        }
        ids.insert(id.to_owned(), ctx.here(item_span));
        merchants.push(Merchant { provider, upstream });
    }
    if merchants.is_empty() && ok {
        ctx.error(
            span,
            RuleError::MissingKeys {
                provider: kind.as_str(),
                needs: kind.keys_hint(),
            },
        );
        return None;
    }
    ok.then_some(merchants)
}
