//! Reload: rebuild the whole configuration aside and swap it in at once.
//!
//! [`Live::reload`] re-reads the gateway file, every rule file, IP set, key
//! and certificate exactly as `callgate check` does; when all of it is valid
//! and nothing changed that only a restart can apply (listen and admin
//! addresses, the admin token file, turning TLS on or off, the replay
//! store and its connection settings, the journal, `reload.watch`,
//! connection timeouts), it stores the new rule set (one `ArcSwap`,
//! so a request keeps the snapshot it started with; the memory store's
//! per-route quotas follow it) and the new TLS certificate. A reload that
//! fails keeps everything running as it was, logs every problem as
//! `PATH:LINE: message` and counts `callgate_rules_reload_total{result="error"}`.
//!
//! Reloads come from SIGHUP (`main`) and from [`watch`], which follows the
//! gateway file, the rules directory, `ipsets/` and every file a rule names
//! (keys, certificates, secrets, CA bundles), debounced so that an editor's
//! write-rename-chmod burst gives one reload.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::Watcher as _;
use tokio::sync::{mpsc, watch};

use crate::config::{self, Config, Setup};
use crate::load::{LoadErrors, Located};
use crate::pipeline::State;

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(LoadErrors),
    /// One problem per setting, each at the line of its key in the new
    /// file (when written there).
    #[error("{}", one_per_line(.0))]
    Fixed(Vec<Located<RestartOnly>>),
}

/// A setting that changed but only a restart applies.
#[derive(Debug, thiserror::Error)]
#[error("{0} cannot change while running; restart callgate to apply it")]
pub struct RestartOnly(pub &'static str);

fn one_per_line(problems: &[Located<RestartOnly>]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a reload swaps, shared by the gateway, SIGHUP and the watcher.
pub struct Live {
    /// The running listener-level settings, compared on reload.
    config: Mutex<Config>,
    pub state: Arc<State>,
    /// The TLS server configuration connections are accepted with.
    pub tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    /// The files the live configuration was read from.
    files: Mutex<Vec<PathBuf>>,
    /// Bumped after every reload attempt, ok or not (tests wait on it).
    generation: watch::Sender<u64>,
}

impl Live {
    pub fn new(config: Config, state: Arc<State>, files: Vec<PathBuf>) -> Live {
        let tls = config
            .tls
            .as_ref()
            .map(|t| Arc::new(ArcSwap::new(t.server.clone())));
        Live {
            config: Mutex::new(config),
            state,
            tls,
            files: Mutex::new(absolute(files)),
            generation: watch::channel(0).0,
        }
    }

    /// A receiver that changes after each reload attempt.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn files(&self) -> Vec<PathBuf> {
        lock(&self.files).clone()
    }

    /// Re-reads everything and swaps it in, or keeps what runs. Returns the
    /// number of routes now live.
    pub fn reload(&self) -> Result<usize, ReloadError> {
        let result = self.try_reload();
        self.generation.send_modify(|g| *g += 1);
        result
    }

    fn try_reload(&self) -> Result<usize, ReloadError> {
        let mut running = lock(&self.config);
        let result = match config::load(&running.file) {
            Err(errors) => Err(ReloadError::Invalid(errors)),
            Ok(loaded) => {
                let fields = fixed_changes(&running, &loaded.config);
                if fields.is_empty() {
                    Ok(loaded)
                } else {
                    Err(ReloadError::Fixed(located(
                        &running.file,
                        &loaded.config.lines,
                        fields,
                    )))
                }
            }
        };
        match result {
            Ok(Setup {
                config,
                snapshot,
                warnings,
                files,
            }) => {
                for w in &warnings {
                    tracing::warn!(warning = %w, "configuration");
                }
                warn_renamed(&self.state.snapshot.load().routes, &snapshot.routes);
                let n = snapshot.routes.len();
                let metrics = &self.state.metrics;
                metrics.rules_loaded(&snapshot, crate::clock::unix_now());
                self.state.store.set_quotas(&snapshot.routes.quotas());
                self.state.snapshot.store(Arc::new(snapshot));
                if let (Some(live), Some(new)) = (&self.tls, &config.tls) {
                    live.store(new.server.clone());
                }
                *running = config;
                *lock(&self.files) = absolute(files);
                metrics.reload(true);
                self.state
                    .recent
                    .reloaded(crate::clock::unix_now(), true, n, &[]);
                tracing::info!(routes = n, "rules reloaded");
                Ok(n)
            }
            Err(e) => {
                self.state.metrics.reload(false);
                let problems: Vec<String> = match &e {
                    ReloadError::Invalid(errors) => {
                        errors.0.iter().map(ToString::to_string).collect()
                    }
                    ReloadError::Fixed(fixed) => fixed.iter().map(ToString::to_string).collect(),
                };
                self.state.recent.reloaded(
                    crate::clock::unix_now(),
                    false,
                    self.state.snapshot.load().routes.len(),
                    &problems,
                );
                for problem in &problems {
                    tracing::error!(problem = %problem, "reload refused; the running rules stay");
                }
                Err(e)
            }
        }
    }
}

/// Warns about every path whose route keeps its replay state in another
/// namespace now. Replay state is keyed by the route's replay namespace
/// (its name, unless it sets `replay_namespace`), merchant and event id, so
/// the events delivered in the old namespace within `replay.ttl` are not
/// known in the new one: a platform's retry of one of them is forwarded
/// again. The reload still applies (a rename is routine, and refusing it
/// would not bring the old namespace back); the operator is told, once per
/// path, with the line that keeps them (`fix`). A rename that keeps the
/// old namespace (`replay_namespace = "<old name>"`) says nothing.
///
/// A route renamed and moved to another path in the same reload is found
/// by its merchant instead: a route whose path and namespace are both gone
/// is paired with a route on a new path in a new namespace that verifies
/// for the same provider and merchant (the merchant part of its replay
/// keys), as that is the same shop's replay state. Adding a route (no
/// namespace gone) or removing one (none new) says nothing.
fn warn_renamed(running: &crate::rules::Routes, new: &crate::rules::Routes) {
    warn_renamed_in_place(running, new);
    warn_renamed_and_moved(running, new);
}

fn warn_renamed_in_place(running: &crate::rules::Routes, new: &crate::rules::Routes) {
    for old in running.iter() {
        let Some(now) = new.get(&old.path) else {
            continue;
        };
        if now.replay_namespace == old.replay_namespace {
            continue;
        }
        let fix = format!("replay_namespace = {:?}", &*old.replay_namespace);
        if now.name != old.name {
            tracing::warn!(path = %old.path, was = %old.name, route = %now.name, fix = fix.as_str(),
                "route renamed: the events it delivered are not known under the new name, so a platform's retry of one is forwarded again; to keep them, set replay_namespace = \"<old name>\" on the route (`fix`)");
        } else {
            tracing::warn!(path = %old.path, route = %now.name, was_namespace = %old.replay_namespace,
                namespace = %now.replay_namespace, fix = fix.as_str(),
                "replay namespace changed: the events the route delivered are not known in the new one, so a platform's retry of one is forwarded again; to keep them, set back the old one (`fix`)");
        }
    }
}

fn warn_renamed_and_moved(running: &crate::rules::Routes, new: &crate::rules::Routes) {
    use crate::rules::Route;
    // The same provider, and a merchant in common by the merchant part of
    // their replay keys.
    let serves = |a: &Route, b: &Route| {
        a.kind() == b.kind()
            && a.merchants().iter().any(|m| {
                b.merchants()
                    .iter()
                    .any(|n| m.provider.replay_merchant() == n.provider.replay_merchant())
            })
    };
    let gone = running.iter().filter(|old| {
        new.get(&old.path).is_none() && new.in_namespace(&old.replay_namespace).is_empty()
    });
    for old in gone {
        let moved = new.iter().find(|now| {
            running.get(&now.path).is_none()
                && running.in_namespace(&now.replay_namespace).is_empty()
                && serves(old, now)
        });
        let Some(now) = moved else {
            continue;
        };
        let fix = format!("replay_namespace = {:?}", &*old.replay_namespace);
        tracing::warn!(path = %now.path, was_path = %old.path, was = %old.name, route = %now.name,
            was_namespace = %old.replay_namespace, namespace = %now.replay_namespace, fix = fix.as_str(),
            "route renamed and moved: the events the same merchant's route delivered are not known under the new name, so a platform's retry of one is forwarded again; to keep them, set replay_namespace = \"<old namespace>\" on the route (`fix`)");
    }
}

/// One spelling per file, so that paths compare with watch events: the
/// directory resolved (`rules/../certs` and `certs` are the same watch),
/// the file name kept as written (a mounted secret that is a symlink is
/// still watched as itself).
fn absolute(files: Vec<PathBuf>) -> Vec<PathBuf> {
    files
        .into_iter()
        .map(|f| {
            let f = std::path::absolute(&f).unwrap_or(f);
            match (f.parent().map(std::fs::canonicalize), f.file_name()) {
                (Some(Ok(dir)), Some(name)) if !f.is_dir() => dir.join(name),
                _ => std::fs::canonicalize(&f).unwrap_or(f),
            }
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Settings a reload cannot apply.
/// [`fixed_changes`]' names of two settings that combine keys.
const TLS_ON_OFF: &str = "listen.tls_cert/tls_key (turning TLS on or off)";
const PER_SOURCE: &str = "limits.max_connections_per_source / max_connections_unlisted";

/// Each restart-only change in `file`, at the line of its key there.
fn located(
    file: &Path,
    lines: &config::KeyLines,
    fields: Vec<&'static str>,
) -> Vec<Located<RestartOnly>> {
    fields
        .into_iter()
        .map(|field| {
            // Two settings are named by what they combine; the rest by their key.
            let keys: &[&str] = match field {
                TLS_ON_OFF => &["listen.tls_cert", "listen.tls_key"],
                PER_SOURCE => &[
                    "limits.max_connections_per_source",
                    "limits.max_connections_unlisted",
                ],
                _ => std::slice::from_ref(&field),
            };
            Located {
                file: file.to_path_buf(),
                line: lines.line(keys),
                error: RestartOnly(field),
            }
        })
        .collect()
}

fn fixed_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let checks: [(&'static str, bool); 21] = [
        ("listen.addr", running.listen != new.listen),
        ("listen.workers", running.workers != new.workers),
        (TLS_ON_OFF, running.tls.is_some() != new.tls.is_some()),
        (
            "admin.addr",
            running.admin.map(|a| a.addr) != new.admin.map(|a| a.addr),
        ),
        (
            // The file, or the token in it: the API checks the token read
            // at start.
            "admin.token_file",
            running.admin_token.as_ref().map(|t| (&t.file, &t.token))
                != new.admin_token.as_ref().map(|t| (&t.file, &t.token)),
        ),
        (
            "admin.max_connections",
            running.admin.map(|a| a.max_connections) != new.admin.map(|a| a.max_connections),
        ),
        ("replay.store", running.replay.store != new.replay.store),
        ("replay.ttl", running.replay.ttl != new.replay.ttl),
        // Read once, when the store's connections are built.
        (
            "replay.timeout",
            running.replay.timeout != new.replay.timeout,
        ),
        ("replay.tls_ca", running.replay.tls_ca != new.replay.tls_ca),
        // The journal is opened once, at start.
        ("journal", running.journal != new.journal),
        // The watcher is started (or not) once, at start.
        ("reload.watch", running.watch != new.watch),
        (
            "replay.wait_replicas",
            running.replay.wait.replicas != new.replay.wait.replicas,
        ),
        (
            "replay.wait_timeout",
            running.replay.wait.timeout != new.replay.wait.timeout,
        ),
        (
            "replay.max_entries",
            running.replay.max_entries != new.replay.max_entries,
        ),
        (
            "limits.header_timeout",
            running.limits.header_timeout != new.limits.header_timeout,
        ),
        (
            "limits.tls_handshake_timeout",
            running.limits.tls_handshake_timeout != new.limits.tls_handshake_timeout,
        ),
        (
            "limits.drain_timeout",
            running.limits.drain_timeout != new.limits.drain_timeout,
        ),
        (
            "limits.max_connections",
            running.limits.max_connections != new.limits.max_connections,
        ),
        (
            PER_SOURCE,
            running.limits.max_connections_per_source != new.limits.max_connections_per_source
                || running.limits.max_connections_unlisted != new.limits.max_connections_unlisted,
        ),
        (
            "limits.write_timeout",
            running.limits.write_timeout != new.limits.write_timeout,
        ),
    ];
    checks
        .into_iter()
        .filter_map(|(field, differs)| differs.then_some(field))
        .collect()
}

// === watching ===

/// How long the files must stay quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Starts following the live configuration's files; reloads after each
/// burst of changes. Returns `None` (and logs why) when the platform cannot
/// watch files: SIGHUP still works.
pub fn watch(live: Arc<Live>) -> Option<tokio::task::JoinHandle<()>> {
    let (tx, rx) = mpsc::unbounded_channel();
    // Filtered on the watcher's own thread: a watched directory may hold
    // files written all the time (a log, a journal), and each write is an
    // event; waking the runtime for each cost about 10,000 instructions.
    let of = live.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(e) = event
            && !matches!(e.kind, notify::EventKind::Access(_))
            && e.paths.iter().any(|p| relevant(p, &lock(&of.files)))
        {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch configuration files; reload with SIGHUP");
            return None;
        }
    };
    let mut watched = HashSet::new();
    rewatch(&mut watcher, &mut watched, &live.files());
    Some(tokio::spawn(follow(live, watcher, watched, rx)))
}

async fn follow(
    live: Arc<Live>,
    mut watcher: notify::RecommendedWatcher,
    mut watched: HashSet<PathBuf>,
    mut rx: mpsc::UnboundedReceiver<()>,
) {
    loop {
        let Some(()) = rx.recv().await else { return };
        // Debounce: wait until the burst is over.
        loop {
            match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        tracing::info!("configuration files changed: reloading");
        let _ = live.reload();
        rewatch(&mut watcher, &mut watched, &live.files());
    }
}

/// A change to a file the configuration read, or to a `.toml` file in a
/// watched directory (a new rule file or IP set).
fn relevant(path: &Path, files: &[PathBuf]) -> bool {
    may_be_relevant(path, files) && relevant_components(path, files)
}

/// False only when `path` cannot be [`relevant_components`], judged from
/// bytes: every write of a log or journal next to the configuration is an
/// event, and comparing it with each file component by component (`Path`'s
/// `==`) cost about 3,400 instructions an event on the watcher's thread,
/// one event per logged request when the log sits beside `callgate.toml`.
///
/// Why it never says false wrongly: a path equal to a file has the same
/// last component, so the same file name; a path whose last segment is a
/// plain name has it as its file name (`.`, `..` or a trailing `/` are
/// left to the full check); a file whose last byte is neither `/` nor `.`
/// ends with its file name. A new `.toml` file's name ends with `.toml`.
fn may_be_relevant(path: &Path, files: &[PathBuf]) -> bool {
    let bytes = path.as_os_str().as_encoded_bytes();
    let name = bytes
        .iter()
        .rposition(|&b| b == b'/')
        .map_or(bytes, |slash| bytes.get(slash + 1..).unwrap_or_default());
    if matches!(name, b"" | b"." | b"..") || name.ends_with(b".toml") {
        return true;
    }
    files.iter().any(|f| {
        let f = f.as_os_str().as_encoded_bytes();
        matches!(f.last(), None | Some(b'/' | b'.')) || f.ends_with(name)
    })
}

/// [`relevant`] by `Path` equality, component by component.
fn relevant_components(path: &Path, files: &[PathBuf]) -> bool {
    files.iter().any(|f| f == path)
        || (path.extension().is_some_and(|x| x == "toml")
            && path
                .parent()
                .is_some_and(|dir| files.iter().any(|f| f == dir)))
}

/// Watches the directory of every file (editors replace files by rename,
/// which a watch on the file itself would miss) and every directory.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut HashSet<PathBuf>,
    files: &[PathBuf],
) {
    let mut want = HashSet::new();
    for f in files {
        if f.is_dir() {
            want.insert(f.clone());
        } else if let Some(parent) = f.parent() {
            let dir = if parent.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                parent.to_path_buf()
            };
            want.insert(dir);
        }
    }
    for gone in watched.difference(&want).cloned().collect::<Vec<_>>() {
        let _ = watcher.unwatch(&gone);
        watched.remove(&gone);
    }
    for dir in want {
        if !watched.contains(&dir) {
            match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a configuration directory")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restart-only change is reported at its key in the new file, at
    /// its table when the key was left out (back to its default), at the
    /// first written key of a setting that combines two, and without a
    /// line only when neither key nor table is written.
    #[test]
    fn restart_only_changes_are_reported_at_their_line() {
        let src = "[listen]\naddr = \"127.0.0.1:0\"\ntls_key = \"k.pem\"\nworkers = 2\n\n[journal]\ndir = \"j\"\n";
        let doc = toml::de::DeTable::parse(src).unwrap();
        let lines = config::KeyLines::of(doc.get_ref(), src);
        let fields = vec![
            "listen.workers",
            TLS_ON_OFF,
            "journal",
            "admin.addr",
            "listen.addr",
            "replay.ttl",
        ];
        let got: Vec<String> = located(Path::new("gw.toml"), &lines, fields)
            .iter()
            .map(ToString::to_string)
            .collect();
        let then = "cannot change while running; restart callgate to apply it";
        assert_eq!(
            got,
            [
                format!("gw.toml:4: listen.workers {then}"),
                format!("gw.toml:3: {TLS_ON_OFF} {then}"),
                format!("gw.toml:6: journal {then}"),
                format!("gw.toml: admin.addr {then}"),
                format!("gw.toml:2: listen.addr {then}"),
                format!("gw.toml: replay.ttl {then}"),
            ]
        );
    }

    #[test]
    fn only_the_configuration_files_and_new_rule_files_are_relevant() {
        let files = vec![
            PathBuf::from("/etc/callgate/callgate.toml"),
            PathBuf::from("/etc/callgate/rules"),
            PathBuf::from("/etc/callgate/keys/alipay_public.pem"),
        ];
        for yes in [
            "/etc/callgate/callgate.toml",
            "/etc/callgate/rules/new-shop.toml",
            "/etc/callgate/keys/alipay_public.pem",
        ] {
            assert!(relevant(Path::new(yes), &files), "{yes}");
        }
        // A log or journal written next to the configuration, an editor's
        // swap file, a key nobody named: each write is an event, none a
        // reason to wake the runtime.
        for no in [
            "/etc/callgate/callgate.log",
            "/etc/callgate/journal/gateway-1.jsonl",
            "/etc/callgate/rules/.new-shop.toml.swp",
            "/etc/callgate/keys/other.pem",
            "/etc/callgate/other.toml",
        ] {
            assert!(!relevant(Path::new(no), &files), "{no}");
        }
    }

    /// The byte pre-check never turns away what the component comparison
    /// takes, whatever the spelling of either side.
    #[test]
    fn the_byte_precheck_agrees_with_the_component_comparison() {
        let files = vec![
            PathBuf::from("/etc/callgate/callgate.toml"),
            PathBuf::from("/etc/callgate/rules/"),
            PathBuf::from("/etc/callgate/keys/./wechat.key"),
            PathBuf::from("/etc/callgate/certs/."),
            PathBuf::from("relative//ca.pem"),
            PathBuf::from("/"),
        ];
        let paths = [
            "/etc/callgate/callgate.toml",
            "/etc/callgate//callgate.toml",
            "/etc/callgate/./callgate.toml",
            "/etc/callgate/callgate.toml/",
            "/etc/callgate/callgate.log",
            "/etc/callgate/rules",
            "/etc/callgate/rules/",
            "/etc/callgate/rules/.",
            "/etc/callgate/rules/shop.toml",
            "/etc/callgate/rules/.toml",
            "/etc/callgate/rules/shop.toml.swp",
            "/etc/callgate/keys/wechat.key",
            "/etc/callgate/keys/other.key",
            "/etc/callgate/certs",
            "/etc/callgate/certs/new.toml",
            "relative/ca.pem",
            "./relative/ca.pem",
            "/",
            "/x.toml",
            "",
            "..",
        ];
        // Each file alone: one that always passes would hide the others.
        for f in &files {
            let one = std::slice::from_ref(f);
            for p in paths {
                let p = Path::new(p);
                assert_eq!(
                    relevant(p, one),
                    relevant_components(p, one),
                    "{} against {}",
                    p.display(),
                    f.display()
                );
            }
        }
        // It does turn away what it should: a log beside the configuration
        // (the files spelled as `absolute` spells them).
        let files = vec![
            PathBuf::from("/etc/callgate/callgate.toml"),
            PathBuf::from("/etc/callgate/rules"),
            PathBuf::from("/etc/callgate/keys/wechat.key"),
        ];
        for no in [
            "/etc/callgate/callgate.log",
            "/etc/callgate/journal/gateway-1.jsonl",
        ] {
            assert!(!may_be_relevant(Path::new(no), &files), "{no}");
        }
    }
}
