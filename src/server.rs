//! Listeners: the notification listener (plain HTTP, or TLS with rustls when
//! the gateway file names a certificate and key) and the admin listener.
//!
//! A bad peer never takes a listener down and never holds it forever:
//! * at accept, before any byte is read, `accept::Admission` bounds open
//!   notification connections: `limits.max_connections` in all,
//!   `limits.max_connections_per_source` from one address, and
//!   `limits.max_connections_unlisted` from addresses outside every route's
//!   allow list, so the platforms' own addresses keep room. One more is
//!   closed at once and counted in `callgate_connections_refused_total{limit}`.
//!   When the open-files limit cannot hold them, they are lowered at start
//!   to fit it (`accept::fit_to_descriptors`), so that they, not the
//!   descriptors, run out first;
//! * the TLS handshake runs under `limits.tls_handshake_timeout`;
//! * hyper closes a connection whose request headers do not arrive within
//!   `limits.header_timeout`: the first request's, and every later one's on
//!   a kept-alive connection, so an idle keep-alive connection is closed
//!   after `header_timeout` too; `pipeline` bounds the body read by
//!   `limits.body_timeout`;
//! * a response write that makes no progress for `limits.write_timeout`
//!   (the peer stopped reading) closes the connection
//!   (`accept::WriteDeadline`): the header timeout does not run while hyper
//!   waits to write;
//! * a request head is at most [`MAX_HEADER_BYTES`] bytes and
//!   [`MAX_HEADERS`] header lines; beyond either, hyper answers 431 and
//!   closes. The platforms send a dozen headers of a few hundred bytes;
//! * accept errors (out of file descriptors, ...) are logged and retried
//!   after a short pause instead of ending the accept loop.
//!
//! The admin listener gets the same head bounds, header timeout and write
//! timeout, and at most `admin.max_connections` connections.
//!
//! One core, one loop: `listen.workers` threads (one per core by default)
//! each run a current-thread tokio runtime with its own listening socket on
//! `listen.addr` (`SO_REUSEPORT`: the kernel spreads new connections over
//! them; a port another process already listens on is refused first, see
//! `nobody_listens_on`), its own upstream connections
//! ([`crate::upstream_pool::use_worker_pool`]) and its own Redis connections
//! ([`crate::replay::use_worker_connections`]). A notification is accepted,
//! verified, remembered, journaled and forwarded on the thread that read
//! it, with no hand-off to another thread. What must be one for the whole process is
//! shared: the rule snapshot (one `ArcSwap`, so a reload reaches every
//! worker at its next request), the TLS certificate, the connection counts
//! of `accept::Admission`, the replay store, the journal and the metrics.
//! The admin listener, reloads and signals run on the caller's runtime.
//!
//! Each request runs in its own task, so a platform that hangs up while its
//! notification is being forwarded does not cancel the forward half-way:
//! the upstream's answer is still recorded in the replay store.
//!
//! [`Gateway::shutdown`] drains: it stops accepting on every worker, turns
//! `/readyz` to 503, lets in-flight connections finish, then waits for every
//! request task still running on any worker (a forward whose platform
//! connection closed runs on in its own task), all within
//! `limits.drain_timeout`, then ends the workers, stops the admin listener
//! and flushes the journal. [`Gateway::reload`] re-reads the gateway file
//! and every rule file and swaps the new rule set in whole; a reload that
//! fails validation, or that changes a setting only a restart can apply,
//! keeps the running rules.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, oneshot, watch};

use crate::accept::{Admission, Peer, WriteDeadline};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use arc_swap::ArcSwap;

use crate::config::{self, Config, Setup, Snapshot};
use crate::forward::HttpClient;
use crate::metrics::Metrics;
use crate::pipeline::{self, State};
use crate::reload::Live;
pub use crate::reload::ReloadError;
use crate::replay::{self, ReplayStore};
use crate::{admin, forward};

/// Largest request head (request line and headers) read, in bytes: hyper's
/// read buffer (`max_buf_size`, whose floor is 8 KiB).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Most header lines in one request.
pub const MAX_HEADERS: usize = 64;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({setting}): {source}")]
    Bind {
        addr: SocketAddr,
        /// `listen.addr` or `admin.addr`: which one to change.
        setting: &'static str,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr}: another process already listens there. With several workers callgate's threads share the port, and a second gateway joining them would keep a replay store of its own and could forward an event twice: stop the other process, or give this one another listen.addr"
    )]
    Taken { addr: SocketAddr },
    #[error("cannot build metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Store(#[from] crate::replay::StoreError),
    #[error("{0}")]
    Journal(#[from] crate::journal::JournalError),
    #[error("cannot start worker thread {index}: {source}")]
    Worker {
        index: usize,
        source: std::io::Error,
    },
}

/// A running gateway.
pub struct Gateway {
    /// Where the notification listener is bound.
    pub addr: SocketAddr,
    /// Where the admin listener is bound, if configured.
    pub admin_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    live: Arc<Live>,
    watcher: Option<JoinHandle<()>>,
    stop_main: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    workers: Vec<Worker>,
    /// Ends the workers' runtimes once the drain is over.
    end_workers: watch::Sender<bool>,
    admin_task: Option<JoinHandle<()>>,
    drain_timeout: Duration,
}

/// Binds the listeners and starts serving a loaded configuration.
pub async fn start(setup: Setup) -> Result<Gateway, StartError> {
    let Setup {
        config,
        snapshot,
        warnings,
        files,
    } = setup;
    for w in &warnings {
        tracing::warn!(warning = %w, "configuration");
    }
    let (listeners, addr) = bind_workers(config.listen, config.workers)?;
    let admin_listener = match config.admin {
        Some(a) => {
            let l = TcpListener::bind(a.addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: a.addr,
                    setting: "admin.addr",
                    source,
                })?;
            Some((l, a.max_connections))
        }
        None => None,
    };
    let admin_addr = match (&admin_listener, config.admin) {
        (Some((l, _)), Some(a)) => Some(l.local_addr().map_err(|source| StartError::Bind {
            addr: a.addr,
            setting: "admin.addr",
            source,
        })?),
        _ => None,
    };

    let roots = forward::system_roots();
    let state = build_state(
        &config,
        snapshot,
        forward::client_with_roots(roots.clone()),
        "gateway",
    )?;
    check_store(&state).await?;

    let (stop_main, main_rx) = watch::channel(false);
    let (stop_admin, admin_rx) = watch::channel(false);
    let (end_workers, end_rx) = watch::channel(false);
    let limits = config.limits;
    let admin_max = config.admin.map_or(0, |a| a.max_connections);
    let tls_on = config.tls.is_some();
    let watch_files = config.watch;
    let live = Arc::new(Live::new(config, state.clone(), files));
    let admission = Admission::new(&admission_limits(&limits, admin_max, listeners.len()));
    let mut workers = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let serve = Serve {
            tls: live.tls.clone(),
            state: state.clone(),
            admission: admission.clone(),
            limits,
            stop: main_rx.clone(),
        };
        workers.push(Worker::spawn(
            index,
            listener,
            serve,
            roots.clone(),
            end_rx.clone(),
        )?);
    }
    for w in &mut workers {
        w.started().await?;
    }
    let admin_task = admin_listener
        .map(|(l, max)| tokio::spawn(serve_admin(l, max, state.clone(), limits, admin_rx)));
    tracing::info!(
        listen = %addr,
        tls = tls_on,
        workers = workers.len(),
        admin = %admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        routes = state.snapshot.load().routes.len(),
        store = state.store.kind(),
        "callgate serving"
    );
    let watcher = if watch_files {
        crate::reload::watch(live.clone())
    } else {
        None
    };
    Ok(Gateway {
        addr,
        admin_addr,
        state,
        live,
        watcher,
        stop_main,
        stop_admin,
        workers,
        end_workers,
        admin_task,
        drain_timeout: limits.drain_timeout,
    })
}

/// The connection limits `accept::Admission` applies: the configured ones,
/// or lower ones when the open-files limit (`RLIMIT_NOFILE`) cannot hold
/// them (see `accept::fit_to_descriptors`), with a warning saying how far
/// to raise it. Past that limit accept fails for platforms and strangers
/// alike, and the share kept for the platforms would be no share at all.
fn admission_limits(
    limits: &config::Limits,
    admin_connections: usize,
    workers: usize,
) -> config::Limits {
    use rustix::process::{Resource, getrlimit};
    // `None`: unlimited.
    let Some(open_files) = getrlimit(Resource::Nofile).current else {
        return *limits;
    };
    let Some(fitted) =
        crate::accept::fit_to_descriptors(limits, open_files, admin_connections, workers)
    else {
        return *limits;
    };
    tracing::warn!(
        open_files,
        needed = crate::accept::descriptors_needed(limits, admin_connections, workers),
        max_connections = fitted.max_connections,
        max_connections_per_source = fitted.max_connections_per_source,
        max_connections_unlisted = fitted.max_connections_unlisted,
        "the open-files limit (RLIMIT_NOFILE) cannot hold limits.max_connections: \
         the connection limits are lowered to fit it, so that they (and the room kept for \
         the platforms) are reached before descriptors run out; raise LimitNOFILE \
         (systemd) or ulimit -n to at least `needed`"
    );
    fitted
}

/// Binds one listening socket per worker on `addr`, all with
/// `SO_REUSEPORT` when there are several: the first picks the port (when
/// `addr`'s is 0), the others join it. Returns them with the bound address.
fn bind_workers(
    addr: SocketAddr,
    workers: usize,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind {
        addr,
        setting: "listen.addr",
        source,
    };
    if workers > 1 {
        nobody_listens_on(addr)?;
    }
    let mut listeners = Vec::with_capacity(workers);
    let mut bound = addr;
    for _ in 0..workers.max(1) {
        let socket = match bound {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(bind_error)?;
        socket.set_reuseaddr(true).map_err(bind_error)?;
        if workers > 1 {
            socket.set_reuseport(true).map_err(bind_error)?;
        }
        socket.bind(bound).map_err(bind_error)?;
        let listener = socket.listen(LISTEN_BACKLOG).map_err(bind_error)?;
        bound = listener.local_addr().map_err(bind_error)?;
        // Leaves this runtime's reactor; the worker registers it with its own.
        listeners.push(listener.into_std().map_err(bind_error)?);
    }
    Ok((listeners, bound))
}

/// Refuses a port another process listens on. The workers' sockets share
/// it (`SO_REUSEPORT`), and the kernel lets any process of the same user
/// join such a group: a second gateway started by mistake would take half
/// the connections with a memory replay store of its own, and forward a
/// retry of an event the first one delivered. A bind without
/// `SO_REUSEPORT` fails while anyone listens there; this one is closed at
/// once, before the workers bind. (Port 0: the first worker picks a free
/// one.)
fn nobody_listens_on(addr: SocketAddr) -> Result<(), StartError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let bind_error = |source| StartError::Bind {
        addr,
        setting: "listen.addr",
        source,
    };
    let probe = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(bind_error)?;
    probe.set_reuseaddr(true).map_err(bind_error)?;
    match probe.bind(addr) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(StartError::Taken { addr }),
        Err(e) => Err(bind_error(e)),
    }
}

/// Pending connections the kernel queues per listening socket (tokio's
/// own default).
const LISTEN_BACKLOG: u32 = 1024;

/// What a worker's accept loop needs; all of it shared with the others.
struct Serve {
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    state: Arc<State>,
    admission: Admission,
    limits: config::Limits,
    stop: watch::Receiver<bool>,
}

/// One worker thread: a current-thread runtime serving its own listening
/// socket, forwarding through its own upstream connections.
struct Worker {
    /// Says once the runtime runs (or why it could not start).
    started: Option<oneshot::Receiver<std::io::Result<()>>>,
    /// Fires when the accept loop has ended and its connections are closed.
    served: Option<oneshot::Receiver<()>>,
    /// Fires when the runtime is gone (its last tasks dropped).
    ended: Option<oneshot::Receiver<()>>,
    index: usize,
}

impl Worker {
    fn spawn(
        index: usize,
        listener: std::net::TcpListener,
        serve: Serve,
        roots: rustls::RootCertStore,
        mut end: watch::Receiver<bool>,
    ) -> Result<Worker, StartError> {
        let (started_tx, started) = oneshot::channel();
        let (served_tx, served) = oneshot::channel();
        let (ended_tx, ended) = oneshot::channel();
        // Workers log where the thread that started the gateway logs (the
        // global subscriber in `callgate run`; a test's own one).
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        std::thread::Builder::new()
            .name(format!("callgate-worker-{index}"))
            .spawn(move || {
                let _logs = tracing::dispatcher::set_default(&dispatch);
                crate::journal::use_lane(index);
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    // Forwards from this thread go through its own pool of
                    // connections (crate::upstream_pool), emptied when the
                    // runtime is done; notify_verify through the legacy
                    // client.
                    let connector = forward::connector(roots);
                    forward::use_worker_client(forward::client_over(connector.clone()));
                    let _pool = crate::upstream_pool::use_worker_pool(connector);
                    // Redis commands from this thread on its own connections
                    // too, until the accept loop and the drain are over.
                    let _redis = crate::replay::use_worker_connections();
                    let _ = started_tx.send(Ok(()));
                    serve_notifications(listener, serve, index).await;
                    let _ = served_tx.send(());
                    // Forwards whose platform hung up still run here; the
                    // drain says when they are done (or given up).
                    let _ = end.wait_for(|end| *end).await;
                });
                drop(runtime);
                let _ = ended_tx.send(());
            })
            .map_err(|source| StartError::Worker { index, source })?;
        Ok(Worker {
            started: Some(started),
            served: Some(served),
            ended: Some(ended),
            index,
        })
    }

    async fn started(&mut self) -> Result<(), StartError> {
        let index = self.index;
        let Some(started) = self.started.take() else {
            return Ok(());
        };
        match started.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(StartError::Worker { index, source }),
            Err(_) => Err(StartError::Worker {
                index,
                source: std::io::Error::other("the worker thread ended at start"),
            }),
        }
    }

    /// Waits until the worker's accept loop has drained its connections.
    async fn served(&mut self) {
        if let Some(rx) = self.served.take() {
            let _ = rx.await;
        }
    }

    /// Waits until the worker's runtime is gone.
    async fn ended(&mut self) {
        if let Some(rx) = self.ended.take() {
            let _ = rx.await;
        }
    }
}

/// Says which replay namespaces the journal recorded deliveries in that no
/// route keeps its state in now (a route renamed, or removed, since): a
/// route's events are known under its namespace only (its name, unless it
/// sets `replay_namespace`), so if a route of another name now serves the
/// same notifications without `replay_namespace = "<old name>"`, a
/// platform's retry of one of those events is forwarded again.
fn warn_unknown_routes(snapshot: &Snapshot, delivered: &[(crate::journal::Event, Duration)]) {
    let namespaces: std::collections::HashSet<&str> = snapshot
        .routes
        .iter()
        .map(|r| &*r.replay_namespace)
        .collect();
    let mut unknown: std::collections::BTreeMap<&str, usize> = Default::default();
    for (event, _) in delivered {
        if !namespaces.contains(event.namespace.as_str()) {
            *unknown.entry(event.namespace.as_str()).or_default() += 1;
        }
    }
    for (route, events) in unknown {
        let fix = format!("replay_namespace = {route:?}");
        tracing::warn!(
            route,
            events,
            fix = fix.as_str(),
            "the journal holds deliveries of a route no longer configured: if it was renamed, a platform's retry of one is forwarded again; to keep them, set replay_namespace = \"<old name>\" on the renamed route (`fix`)"
        );
    }
}

/// The replay keys a journaled event is remembered under: in the namespace
/// it was delivered in, counted against the share of the route that keeps
/// its state there now (the namespace itself when none does). A record
/// written before records carried the merchant is remembered under every
/// merchant of the routes of its namespace: a replay of it is still a
/// duplicate, at the cost of a colliding id of another merchant of the
/// same route being taken for it until `replay.ttl` runs out (see
/// docs/deploy.md, "Upgrading: replay keys now hold the merchant").
fn event_keys(snapshot: &Snapshot, event: &crate::journal::Event) -> Vec<replay::Key> {
    let routes = snapshot.routes.in_namespace(&event.namespace);
    let namespace: Arc<str> = Arc::from(event.namespace.as_str());
    let route = routes
        .first()
        .map_or_else(|| namespace.clone(), |r| r.name.clone());
    let key =
        |merchant: &str| replay::Key::journaled(&route, &namespace, merchant, &event.event_id);
    if !event.merchant.is_empty() {
        return vec![key(&event.merchant)];
    }
    routes
        .iter()
        .flat_map(|r| r.merchants().iter())
        .map(|m| key(m.provider.replay_merchant()))
        .collect()
}

/// Refuses to start on a Redis whose `maxmemory-policy` can evict what
/// callgate stores, and warns about a primary that keeps no append-only
/// file. A Redis that does not answer yet is no reason not to start
/// (notifications fail closed until it does, and both are read at first
/// contact).
async fn check_store(state: &State) -> Result<(), StartError> {
    let ReplayStore::Redis(redis) = &state.store else {
        return Ok(());
    };
    match redis.check_policy().await {
        Ok(()) => {
            state.metrics.set_store_evicting(false);
            redis.check_persistence().await;
            Ok(())
        }
        Err(e @ replay::StoreError::Evicting { .. }) => {
            state.metrics.set_store_evicting(true);
            Err(StartError::Store(e))
        }
        Err(e) => {
            tracing::warn!(error = %e, "replay store not reachable at start; its maxmemory-policy is checked when it answers");
            Ok(())
        }
    }
}

/// Builds the shared state: the replay store (the memory store warmed from
/// the journal, so a restart remembers what was delivered within
/// `replay.ttl`), the journal writer and the metrics. `journal_kind` names
/// the journal file this process writes (`gateway`, `redeliver`).
pub fn build_state(
    config: &Config,
    snapshot: Snapshot,
    client: HttpClient,
    journal_kind: &str,
) -> Result<Arc<State>, StartError> {
    let store = match &config.replay.store {
        config::StoreKind::Memory => {
            let m = crate::replay::MemoryStore::new(config.replay.max_entries);
            m.set_attempts_ttl(config.replay.ttl);
            ReplayStore::Memory(m)
        }
        config::StoreKind::Redis(target) => {
            let r = crate::replay::RedisStore::for_target(
                target,
                config.replay.timeout,
                config.replay.tls_ca.as_deref(),
                config.replay.wait,
            )?;
            r.set_attempts_ttl(config.replay.ttl);
            ReplayStore::Redis(r)
        }
    };
    let metrics = Metrics::new()?;
    let mut journaled = Vec::new();
    let journal = match &config.journal {
        None => None,
        Some(jc) => {
            let warm =
                crate::journal::warm_up(&jc.dir, config.replay.ttl, crate::clock::unix_now())?;
            if matches!(store, ReplayStore::Memory(_)) {
                for (event, left) in &warm.delivered {
                    for key in event_keys(&snapshot, event) {
                        store.warm(&key, *left);
                    }
                }
                // Forwards begun and never delivered (failed, or cut short
                // by a crash): the next copy carries the next attempt number.
                for (event, attempts, left) in &warm.attempted {
                    for key in event_keys(&snapshot, event) {
                        store.warm_attempts(&key, *attempts, *left);
                    }
                }
                tracing::info!(events = warm.delivered.len(), undelivered = warm.attempted.len(), dir = %jc.dir.display(), "replay store warmed from the journal");
            }
            warn_unknown_routes(&snapshot, &warm.delivered);
            if warm.skipped > 0 {
                tracing::warn!(lines = warm.skipped, dir = %jc.dir.display(),
                    "journal lines that do not parse were skipped (a write cut short by a crash or a full disk, or damage): what they recorded is not known");
            }
            if journal_kind == "gateway" {
                report_unfinished(&jc.dir, &warm.unfinished);
            }
            if let Some(through) = warm.forgotten_through
                && matches!(store, ReplayStore::Memory(_))
            {
                report_forgotten(&jc.dir, through, config.replay.ttl);
            }
            journaled = warm.recent;
            let retention = crate::journal::Retention {
                ttl: config.replay.ttl,
                store_remembers: !matches!(store, ReplayStore::Memory(_)),
                pruned_within_ttl: metrics.journal_pruned_within_ttl(),
            };
            // A file per gateway worker: workers appending to one file
            // contend for its locks in the kernel.
            let lanes = if journal_kind == "gateway" {
                config.workers
            } else {
                1
            };
            Some(crate::journal::Journal::open_lanes(
                jc,
                journal_kind,
                retention,
                lanes,
            )?)
        }
    };
    let mut state = State::new(snapshot, store, client, metrics, config.replay.ttl, journal);
    state.admin_token = config.admin_token.as_ref().map(|t| t.token.clone());
    state.admin_loopback = config.admin.is_none_or(|a| a.addr.ip().is_loopback());
    // The console shows what the journal recorded before this start.
    crate::console::warm(&state.recent, &state.snapshot.load().routes, journaled);
    Ok(Arc::new(state))
}

/// Says, at start, which forwards have no recorded outcome: callgate
/// stopped (or crashed) while the shop had them, so the shop may or may not
/// have processed them. Their next copy is forwarded with
/// `X-Callgate-Attempt` above 1; `callgate journal list --outcome
/// unfinished` lists them.
fn report_unfinished(dir: &std::path::Path, unfinished: &[(String, String, u32)]) {
    if unfinished.is_empty() {
        return;
    }
    for (route, event_id, attempt) in unfinished.iter().take(20) {
        tracing::warn!(route = %route, event_id = %event_id, attempt,
            "forward with no recorded outcome (callgate stopped mid-forward)");
    }
    tracing::warn!(
        forwards = unfinished.len(),
        dir = %dir.display(),
        "forwards whose outcome is unknown: the shop may or may not have them; their next copy is sent with X-Callgate-Attempt above 1 (callgate journal list --outcome unfinished)"
    );
}

/// Says, at start with the memory store, that journal files younger than
/// `replay.ttl` were deleted to keep `journal.max_files`: the deliveries
/// journaled up to `through` (Unix seconds) may not be remembered, so a
/// platform's retry of one of them is forwarded again.
fn report_forgotten(dir: &std::path::Path, through: i64, ttl: Duration) {
    let through = chrono::DateTime::from_timestamp(through, 0)
        .map_or_else(|| through.to_string(), |t| t.to_rfc3339());
    tracing::warn!(
        forgotten_through = %through,
        ttl = %crate::load::format_duration(ttl),
        dir = %dir.display(),
        "journal files younger than replay.ttl were deleted to keep the journal within journal.max_files × journal.max_file_bytes (and 1024 files): deliveries journaled up to forgotten_through are not remembered, and a platform's retry of one of them is forwarded again; raise journal.max_files or journal.max_file_bytes so that the journal holds replay.ttl of traffic, or use replay.store = \"redis\""
    );
}

impl Gateway {
    /// Re-reads the gateway file and every rule file, key and certificate;
    /// swaps them in when valid (see [`crate::reload`]). Returns the number
    /// of routes now live.
    pub fn reload(&self) -> Result<usize, ReloadError> {
        self.live.reload()
    }

    /// Changes after every reload attempt (SIGHUP or file watch).
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.live.reloads()
    }

    /// Stops accepting, drains in-flight notifications (bounded by
    /// `limits.drain_timeout`), then stops the admin listener.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        self.state.draining.store(true, Ordering::Relaxed);
        if let Some(w) = &self.watcher {
            w.abort();
        }
        let _ = self.stop_main.send(true);
        let mut workers = self.workers;
        for w in &mut workers {
            w.served().await;
        }
        // Connections are closed; forwards whose platform hung up earlier
        // still run in their own tasks. Their outcome goes to the journal
        // and the store only if they are waited for.
        let running = self.state.tasks.running();
        if running > 0 {
            tracing::info!(
                forwards = running,
                "draining: waiting for in-flight forwards"
            );
            if tokio::time::timeout_at(deadline, self.state.tasks.idle())
                .await
                .is_err()
            {
                tracing::warn!(
                    forwards = self.state.tasks.running(),
                    timeout = ?self.drain_timeout,
                    "drain timed out with forwards in flight; their outcome is unknown (callgate journal list --outcome unfinished)"
                );
            }
        }
        let _ = self.end_workers.send(true);
        for w in &mut workers {
            w.ended().await;
        }
        let _ = self.stop_admin.send(true);
        if let Some(t) = self.admin_task {
            let _ = t.await;
        }
        if let Some(j) = &self.state.journal {
            j.flush().await;
        }
        tracing::info!("callgate stopped");
    }
}

/// A worker's accept loop: admits, wraps and serves each connection on
/// this thread until `stop`, then drains the connections it holds.
async fn serve_notifications(listener: TcpListener, serve: Serve, index: usize) {
    let Serve {
        tls,
        state,
        admission,
        limits,
        mut stop,
    } = serve;
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let write_timeouts = state.metrics.write_timeouts("notify");
    let served = state.metrics.worker_requests(index);
    loop {
        let Some((tcp, peer)) = accept(&listener, &mut stop).await else {
            break;
        };
        let class = Peer::of(peer.ip(), &state.snapshot.load());
        let admitted = match admission.admit(peer.ip(), class) {
            Ok(a) => a,
            Err(refused) => {
                // Over a limit: close at once, before reading a byte.
                state.metrics.connection_refused(refused.label());
                tracing::warn!(%peer, limit = refused.label(), "connection refused: the limit is reached");
                drop(tcp);
                continue;
            }
        };
        let open = (admitted, state.metrics.connection_opened());
        let _ = tcp.set_nodelay(true);
        let timeouts = write_timeouts.clone();
        let tcp = WriteDeadline::new(tcp, limits.write_timeout, move || timeouts.inc());
        let watcher = graceful.watcher();
        let state = state.clone();
        let builder = builder.clone();
        let served = served.clone();
        match &tls {
            None => {
                tokio::spawn(async move {
                    connection(tcp, peer, state, builder, watcher, served).await;
                    drop(open);
                });
            }
            Some(tls) => {
                // The certificate in force now: a reload swaps it for new connections.
                let acceptor = TlsAcceptor::from(tls.load_full());
                let timeout = limits.tls_handshake_timeout;
                tokio::spawn(async move {
                    let _open = open;
                    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            connection(stream, peer, state, builder, watcher, served).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(connections = open, "draining");
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?limits.drain_timeout, "drain timed out; closing the remaining connections");
    }
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    state: Arc<State>,
    builder: Arc<http1::Builder>,
    watcher: Watcher,
    served: prometheus::IntCounter,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        served.inc();
        async move {
            // Own task: a hang-up cannot cancel a forward half-way; counted
            // until it ends, so a drain waits for it.
            let running = state.tasks.enter();
            // Boxed here, once: the request's future is several kilobytes,
            // and tokio moves a spawned future by value into its task cell,
            // then moves its stages (running, finished, consumed) in place;
            // a box makes each of those moves a pointer's. Unboxed, the
            // copies were about a fifth of a forward's instructions.
            let task = Box::pin(async move {
                let response = pipeline::handle(state, peer, req).await;
                drop(running);
                response
            });
            let response = match tokio::spawn(task).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(%peer, error = %e, "request task failed");
                    internal_error()
                }
            };
            Ok::<_, Infallible>(response)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

async fn serve_admin(
    listener: TcpListener,
    max_connections: usize,
    state: Arc<State>,
    limits: config::Limits,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(max_connections));
    let write_timeouts = state.metrics.write_timeouts("admin");
    loop {
        let Some((tcp, peer)) = accept(&listener, &mut stop).await else {
            break;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            state.metrics.connection_refused("admin.max_connections");
            tracing::warn!(%peer, max = max_connections, "admin connection refused: admin.max_connections are open");
            drop(tcp);
            continue;
        };
        let timeouts = write_timeouts.clone();
        let tcp = WriteDeadline::new(tcp, limits.write_timeout, move || timeouts.inc());
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(admin::handle(state, req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

/// The next connection, or `None` once `stop` says so. An accept error is
/// logged and the next connection waited for.
async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => accept_error(e).await,
            },
            _ = stop.changed() => return None,
        }
    }
}

/// Logs an accept error; pauses on resource exhaustion so the loop does not
/// spin, returns at once on errors about a single connection.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        tracing::debug!(error = %e, "accept failed for one connection");
        return;
    }
    tracing::error!(error = %e, "accept failed; pausing 100ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn internal_error() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"fail")));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}
