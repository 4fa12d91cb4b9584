//! Listeners: the notification listener (plain HTTP, or TLS with rustls when
//! the gateway file names a certificate and key) and the admin listener.
//!
//! A bad peer never takes a listener down and never holds it forever:
//! * at most `limits.max_connections` notification connections are open at
//!   once (a semaphore permit taken at accept, held by the connection's
//!   task); one more is closed at once, before any byte is read, and counted
//!   in `callgate_connections_refused_total`;
//! * the TLS handshake runs under `limits.tls_handshake_timeout`;
//! * hyper closes a connection whose request headers do not arrive within
//!   `limits.header_timeout`: the first request's, and every later one's on
//!   a kept-alive connection, so an idle keep-alive connection is closed
//!   after `header_timeout` too; `pipeline` bounds the body read by
//!   `limits.body_timeout`;
//! * a request head is at most [`MAX_HEADER_BYTES`] bytes and
//!   [`MAX_HEADERS`] header lines; beyond either, hyper answers 431 and
//!   closes. The platforms send a dozen headers of a few hundred bytes;
//! * accept errors (out of file descriptors, ...) are logged and retried
//!   after a short pause instead of ending the accept loop.
//!
//! Each request runs in its own task, so a platform that hangs up while its
//! notification is being forwarded does not cancel the forward half-way:
//! the upstream's answer is still recorded in the replay store.
//!
//! [`Gateway::shutdown`] drains: it stops accepting, turns `/readyz` to 503,
//! lets in-flight connections finish within `limits.drain_timeout`, then
//! stops the admin listener. [`Gateway::reload`] re-reads the gateway file
//! and every rule file and swaps the new rule set in whole; a reload that
//! fails validation, or that changes a setting only a restart can apply,
//! keeps the running rules.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::{self, Config, LoadErrors, Loaded};
use crate::forward::HttpClient;
use crate::metrics::Metrics;
use crate::pipeline::{self, State};
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
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Store(#[from] crate::replay::StoreError),
    #[error("{0}")]
    Journal(#[from] crate::journal::JournalError),
}

/// Why a reload was refused; the running rules stay.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(LoadErrors),
    #[error("{}: {} cannot change while running; restart callgate to apply it", file.display(), fields.join(", "))]
    Fixed {
        file: std::path::PathBuf,
        fields: Vec<&'static str>,
    },
}

/// A running gateway.
pub struct Gateway {
    /// Where the notification listener is bound.
    pub addr: SocketAddr,
    /// Where the admin listener is bound, if configured.
    pub admin_addr: Option<SocketAddr>,
    pub state: Arc<State>,
    config: Mutex<Config>,
    stop_main: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    main_task: JoinHandle<()>,
    admin_task: Option<JoinHandle<()>>,
}

/// Binds the listeners and starts serving a loaded configuration.
pub async fn start(loaded: Loaded) -> Result<Gateway, StartError> {
    start_with_client(loaded, forward::default_client()).await
}

/// Like [`start`], with a given shared upstream client.
pub async fn start_with_client(loaded: Loaded, client: HttpClient) -> Result<Gateway, StartError> {
    let Loaded {
        config,
        rules,
        warnings,
    } = loaded;
    for w in &warnings {
        tracing::warn!(warning = %w, "configuration");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let admin_listener = match config.admin {
        Some(a) => {
            let l = TcpListener::bind(a)
                .await
                .map_err(|source| StartError::Bind { addr: a, source })?;
            Some(l)
        }
        None => None,
    };
    let admin_addr = match &admin_listener {
        Some(l) => Some(l.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?),
        None => None,
    };

    let state = build_state(&config, rules, client, "gateway")?;

    let (stop_main, main_rx) = watch::channel(false);
    let (stop_admin, admin_rx) = watch::channel(false);
    let tls = config
        .tls
        .as_ref()
        .map(|t| TlsAcceptor::from(t.server.clone()));
    let main_task = tokio::spawn(serve_notifications(
        listener,
        tls,
        state.clone(),
        config.limits,
        main_rx,
    ));
    let admin_task = admin_listener.map(|l| tokio::spawn(serve_admin(l, state.clone(), admin_rx)));
    tracing::info!(
        listen = %addr,
        tls = config.tls.is_some(),
        admin = %admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        routes = state.rules.load().len(),
        store = state.store.kind(),
        "callgate serving"
    );
    Ok(Gateway {
        addr,
        admin_addr,
        state,
        config: Mutex::new(config),
        stop_main,
        stop_admin,
        main_task,
        admin_task,
    })
}

/// Builds the shared state: the replay store (the memory store warmed from
/// the journal, so a restart remembers what was delivered within
/// `replay.ttl`), the journal writer and the metrics. `journal_kind` names
/// the journal file this process writes (`gateway`, `redeliver`).
pub fn build_state(
    config: &Config,
    rules: crate::rules::RuleSet,
    client: HttpClient,
    journal_kind: &str,
) -> Result<Arc<State>, StartError> {
    let store = match &config.replay.store {
        config::StoreKind::Memory => ReplayStore::memory(config.replay.max_entries),
        config::StoreKind::Redis(url) => ReplayStore::Redis(crate::replay::RedisStore::new(
            url,
            config.replay.timeout,
            config.replay.tls_ca.as_deref(),
        )?),
    };
    let journal = match &config.journal {
        None => None,
        Some(jc) => {
            if matches!(store, ReplayStore::Memory(_)) {
                let now = replay::unix_now();
                let delivered = crate::journal::delivered_within(&jc.dir, config.replay.ttl, now)?;
                for (route, event_id, left) in &delivered {
                    let route: Arc<str> = Arc::from(route.as_str());
                    store.warm(
                        &crate::replay::Key::new(&route, crate::replay::KeyKind::Event, event_id),
                        *left,
                    );
                }
                tracing::info!(events = delivered.len(), dir = %jc.dir.display(), "replay store warmed from the journal");
            }
            Some(crate::journal::Journal::open(jc, journal_kind)?)
        }
    };
    let metrics = Metrics::new()?;
    Ok(Arc::new(State::new(
        rules,
        store,
        client,
        metrics,
        config.replay.ttl,
        journal,
    )))
}

impl Gateway {
    /// Re-reads the gateway file and every rule file; swaps the new rule set
    /// in when it is valid and changes nothing that needs a restart. Returns
    /// the number of routes now live.
    pub fn reload(&self) -> Result<usize, ReloadError> {
        let running = match self.config.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let result = match config::load(&running.file) {
            Err(errors) => Err(ReloadError::Invalid(errors)),
            Ok(loaded) => {
                let fields = fixed_changes(&running, &loaded.config);
                if fields.is_empty() {
                    Ok(loaded)
                } else {
                    Err(ReloadError::Fixed {
                        file: running.file.clone(),
                        fields,
                    })
                }
            }
        };
        match result {
            Ok(loaded) => {
                let n = loaded.rules.len();
                self.state
                    .metrics
                    .rules_loaded(&loaded.rules, replay::unix_now());
                self.state.rules.store(Arc::new(loaded.rules));
                self.state.metrics.reload(true);
                tracing::info!(routes = n, "rules reloaded");
                Ok(n)
            }
            Err(e) => {
                self.state.metrics.reload(false);
                match &e {
                    ReloadError::Invalid(errors) => {
                        for problem in &errors.0 {
                            tracing::error!(problem = %problem, "reload refused; the running rules stay");
                        }
                    }
                    ReloadError::Fixed { .. } => {
                        tracing::error!(problem = %e, "reload refused; the running rules stay");
                    }
                }
                Err(e)
            }
        }
    }

    /// Stops accepting, drains in-flight notifications (bounded by
    /// `limits.drain_timeout`), then stops the admin listener.
    pub async fn shutdown(self) {
        self.state.draining.store(true, Ordering::Relaxed);
        let _ = self.stop_main.send(true);
        let _ = self.main_task.await;
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

/// Settings a reload cannot apply.
fn fixed_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let tls_paths = |c: &Config| c.tls.as_ref().map(|t| (t.cert.clone(), t.key.clone()));
    let checks: [(&'static str, bool); 10] = [
        ("listen.addr", running.listen != new.listen),
        (
            "listen.tls_cert/tls_key",
            tls_paths(running) != tls_paths(new),
        ),
        ("admin.addr", running.admin != new.admin),
        ("replay.store", running.replay.store != new.replay.store),
        ("replay.ttl", running.replay.ttl != new.replay.ttl),
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
    ];
    for (field, differs) in checks {
        if differs {
            changed.push(field);
        }
    }
    changed
}

async fn serve_notifications(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    limits: config::Limits,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the cap: close at once, before reading a byte.
            state.metrics.connection_refused();
            tracing::warn!(%peer, max = limits.max_connections, "connection refused: limits.max_connections are open");
            drop(tcp);
            continue;
        };
        let open = (permit, state.metrics.connection_opened());
        let _ = tcp.set_nodelay(true);
        let watcher = graceful.watcher();
        let state = state.clone();
        let builder = builder.clone();
        match &tls {
            None => {
                tokio::spawn(async move {
                    connection(tcp, peer, state, builder, watcher).await;
                    drop(open);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let timeout = limits.tls_handshake_timeout;
                tokio::spawn(async move {
                    let _open = open;
                    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => connection(stream, peer, state, builder, watcher).await,
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
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        async move {
            // Own task: a hang-up cannot cancel a forward half-way.
            let response = match tokio::spawn(pipeline::handle(state, peer, req)).await {
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

async fn serve_admin(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    loop {
        let (tcp, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let state = state.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(admin::handle(state, req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        });
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
