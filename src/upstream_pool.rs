//! The worker thread's own upstream connections: part of the eighth step of
//! the flow ([`crate::forward`]).
//!
//! Each `server` worker runs one current-thread runtime; its forwards go
//! through a pool of `hyper::client::conn::http1` connections that only
//! this thread opens, uses and closes ([`use_worker_pool`], once per worker).
//! It costs 10-15 µs less CPU per forward than hyper-util's legacy client
//! (docs/performance.md, "Per-worker upstream pool"). Everything off the
//! worker threads (redelivery, the admin API, benches, `notify_verify`)
//! keeps the legacy clients.
//!
//! * Keyed by the upstream's scheme, host and port ([`Endpoint`]); https
//!   through the same hyper-rustls connector as the legacy client (system
//!   roots, 5 s TCP connect timeout), http/1.1 only. A route with
//!   `upstream_ca` connects through its own connector (its CA only) and its
//!   endpoint's key names that route's upstream alone, so its connections
//!   are never shared with a route trusting other roots; after a reload
//!   that rebuilt the route, its old connections idle out.
//! * The request goes out in origin form (`/path?query`) with `Host` set
//!   from the upstream URL (the port only when not the scheme's default),
//!   as the legacy client wrote it.
//! * A connection goes back to the pool only after its reply was read to
//!   the end and the reply did not say `Connection: close` ([`Lease`]);
//!   any error, an oversized reply or a timeout drops the lease, and hyper
//!   closes a connection whose sender is dropped.
//! * Idle connections are closed after [`IDLE_TIMEOUT`]: checked when one is
//!   taken and by a sweep every [`SWEEP_EVERY`] on the worker's runtime. At
//!   most [`MAX_IDLE_PER_ENDPOINT`] idle connections per endpoint.
//! * Exactly once: a request is sent again, on another connection, only
//!   when hyper hands it back unsent (`TrySendError::take_message`: the
//!   shop closed the pooled connection before a byte of the request was
//!   written). A request that may have reached the shop is never resent:
//!   its failure is an upstream error, recorded, and the platform retries.
//! * The pool ends with the worker: its [`WorkerPool`] guard empties it
//!   when the worker's runtime is done, and the runtime's end closes the
//!   connections it drove.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::forward::{ForwardError, error_chain};

/// Idle connections older than this are closed (the legacy client's
/// `pool_idle_timeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a worker closes its expired idle connections without traffic.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Idle connections kept per endpoint (the legacy client's
/// `pool_max_idle_per_host`); one more returned is closed.
pub const MAX_IDLE_PER_ENDPOINT: usize = 256;

type Sender = SendRequest<Full<Bytes>>;

/// Where a route's upstream is, as the pool needs it: prepared once per
/// route by `Upstream::new`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `scheme://host:port`: the pool key, and the upstream named in errors
    /// (no path, no user info).
    key: Box<str>,
    /// The upstream URL, for the connector (scheme, host, port).
    uri: Uri,
    /// The request target sent: path and query, `/` when empty.
    origin: Uri,
    /// `Host`: the URL's host, with its port when not the scheme's default.
    host: HeaderValue,
    /// The route's own connector (`upstream_ca`); the worker's otherwise.
    connector: Option<HttpsConnector<HttpConnector>>,
}

/// Numbers the endpoints that have their own connector, to key them apart.
static OWN_TRUST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Endpoint {
    /// `uri` is an upstream URL checked by `load::http_url` (scheme http or
    /// https, a host); `own` the route's connector when it sets
    /// `upstream_ca`.
    pub fn new(uri: &Uri, own: Option<HttpsConnector<HttpConnector>>) -> Result<Endpoint, String> {
        let scheme = uri.scheme_str().unwrap_or("http");
        let host = uri.host().filter(|h| !h.is_empty()).ok_or("has no host")?;
        let default_port = if scheme == "https" { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default_port);
        let host_header = if port == default_port {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        };
        let origin = match uri.path_and_query() {
            Some(pq) if pq.as_str() != "/" => {
                let mut parts = http::uri::Parts::default();
                parts.path_and_query = Some(pq.clone());
                Uri::from_parts(parts).map_err(|e| format!("not a request path: {e}"))?
            }
            _ => Uri::from_static("/"),
        };
        let mut key = format!("{scheme}://{host}:{port}");
        if own.is_some() {
            let n = OWN_TRUST.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            key.push_str(&format!(" (upstream_ca #{n})"));
        }
        Ok(Endpoint {
            key: key.into_boxed_str(),
            uri: uri.clone(),
            origin,
            host: HeaderValue::from_str(&host_header)
                .map_err(|_| format!("`{host_header}` is not a Host header value"))?,
            connector: own,
        })
    }

    /// `scheme://host:port`.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A worker's idle connections, by endpoint key.
struct Pool {
    connector: HttpsConnector<HttpConnector>,
    idle: HashMap<Box<str>, Vec<Idle>>,
}

/// An idle connection and when it was given back (newest last).
struct Idle {
    sender: Sender,
    since: Instant,
}

thread_local! {
    /// The pool of the worker thread this code runs on; `None` off the
    /// worker threads. Never borrowed across an `.await`.
    static WORKER_POOL: RefCell<Option<Pool>> = const { RefCell::new(None) };
}

/// Keeps this thread's pool; dropping it closes the idle connections and
/// ends the sweep. Held by a `server` worker until its runtime is done.
#[must_use = "the pool is emptied when this is dropped"]
pub struct WorkerPool(());

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // Take the pool out first: its senders are dropped outside the
        // borrow.
        let pool = WORKER_POOL.with(|p| p.borrow_mut().take());
        drop(pool);
    }
}

/// Gives this thread (a `server` worker, inside its runtime) an upstream
/// pool that connects through `connector`, and starts its idle sweep on the
/// current runtime.
pub fn use_worker_pool(connector: HttpsConnector<HttpConnector>) -> WorkerPool {
    let pool = install_pool(connector);
    sweep_every(SWEEP_EVERY);
    pool
}

/// Sweeps this thread's pool every `period`, the first time one period on
/// (the pool starts empty), until the pool is dropped.
fn sweep_every(period: Duration) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let expired = WORKER_POOL.with(|p| p.borrow_mut().as_mut().map(Pool::sweep));
            match expired {
                // Closed outside the borrow.
                Some(expired) => drop(expired),
                None => break,
            }
        }
    });
}

/// Gives this thread a pool, without the periodic sweep (the unit tests
/// sweep by hand, so that no timer races their steps).
fn install_pool(connector: HttpsConnector<HttpConnector>) -> WorkerPool {
    WORKER_POOL.with(|p| {
        *p.borrow_mut() = Some(Pool {
            connector,
            idle: HashMap::new(),
        })
    });
    WorkerPool(())
}

/// Whether this thread forwards through a worker pool.
pub fn on_worker() -> bool {
    WORKER_POOL.with(|p| p.borrow().is_some())
}

/// How many idle connections this thread's pool holds for `endpoint`.
pub fn idle_count(endpoint: &Endpoint) -> usize {
    WORKER_POOL.with(|p| {
        p.borrow()
            .as_ref()
            .and_then(|p| p.idle.get(&endpoint.key).map(Vec::len))
            .unwrap_or(0)
    })
}

impl Pool {
    /// Removes the expired and closed idle connections; returns them to be
    /// dropped outside the borrow.
    fn sweep(&mut self) -> Vec<Idle> {
        let now = Instant::now();
        let mut gone = Vec::new();
        for list in self.idle.values_mut() {
            let (keep, drop): (Vec<Idle>, Vec<Idle>) =
                std::mem::take(list).into_iter().partition(|i| {
                    now.duration_since(i.since) <= IDLE_TIMEOUT && !i.sender.is_closed()
                });
            *list = keep;
            gone.extend(drop);
        }
        self.idle.retain(|_, list| !list.is_empty());
        gone
    }
}

/// The newest idle connection to `key` still within [`IDLE_TIMEOUT`] and
/// open; expired or closed ones met on the way are closed.
fn take_idle(key: &str) -> Option<Sender> {
    let now = Instant::now();
    let mut gone = Vec::new();
    let found = WORKER_POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.as_mut()?.idle.get_mut(key)?;
        while let Some(idle) = list.pop() {
            if now.duration_since(idle.since) > IDLE_TIMEOUT {
                // The older ones behind it expired too.
                gone.push(idle);
                gone.append(list);
                return None;
            }
            if idle.sender.is_closed() {
                gone.push(idle);
                continue;
            }
            return Some(idle.sender);
        }
        None
    });
    drop(gone);
    found
}

/// A connection in use by one exchange. [`Lease::give_back`] returns it to
/// the pool; dropping it closes the connection.
pub struct Lease {
    sender: Sender,
    key: Box<str>,
}

impl Lease {
    /// Returns the connection once its reply was read to the end; kept only
    /// when the reply allows another request on it and the pool has room.
    pub fn give_back(self, reply: &http::response::Parts) {
        if reply.version != Version::HTTP_11 || says_close(reply) || self.sender.is_closed() {
            return;
        }
        let Lease { sender, key } = self;
        let refused = WORKER_POOL.with(|p| {
            let mut p = p.borrow_mut();
            let Some(pool) = p.as_mut() else {
                return Some(sender);
            };
            let list = pool.idle.entry(key).or_default();
            if list.len() >= MAX_IDLE_PER_ENDPOINT {
                return Some(sender);
            }
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
            None
        });
        drop(refused);
    }
}

/// Whether a reply's `Connection` header carries the `close` token.
fn says_close(reply: &http::response::Parts) -> bool {
    reply
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// Sends `request` (built for the legacy client: absolute URI, no `Host`)
/// to `endpoint` on an idle connection of this worker's pool, or a new one.
/// The response comes with the [`Lease`] of its connection.
pub async fn send(
    endpoint: &Endpoint,
    mut request: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, Lease), ForwardError> {
    *request.uri_mut() = endpoint.origin.clone();
    request.headers_mut().insert(HOST, endpoint.host.clone());
    while let Some(mut sender) = take_idle(&endpoint.key) {
        if sender.ready().await.is_err() {
            // Closed while idle: nothing was sent on it.
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => return Ok((response, lease(endpoint, sender))),
            Err(mut e) => match e.take_message() {
                // Handed back unsent: safe on another connection.
                Some(unsent) => request = unsent,
                // It may have reached the shop: never sent twice.
                None => return Err(failed(endpoint, "send", &e.into_error())),
            },
        }
    }
    let mut sender = connect(endpoint).await?;
    match sender.try_send_request(request).await {
        Ok(response) => Ok((response, lease(endpoint, sender))),
        Err(e) => Err(failed(endpoint, "send", &e.into_error())),
    }
}

fn lease(endpoint: &Endpoint, sender: Sender) -> Lease {
    Lease {
        sender,
        key: endpoint.key.clone(),
    }
}

fn failed(endpoint: &Endpoint, step: &str, e: &dyn std::error::Error) -> ForwardError {
    ForwardError::Request(format!("{} ({step}): {}", endpoint.key, error_chain(e)))
}

/// Opens a connection to `endpoint` (TCP, TLS for https, the HTTP/1.1
/// handshake); the connection is driven by a task on this runtime.
async fn connect(endpoint: &Endpoint) -> Result<Sender, ForwardError> {
    let connector = match &endpoint.connector {
        Some(own) => Some(own.clone()),
        None => WORKER_POOL.with(|p| p.borrow().as_ref().map(|p| p.connector.clone())),
    };
    let Some(mut connector) = connector else {
        return Err(ForwardError::Request(format!(
            "{} (connect): not on a worker thread",
            endpoint.key
        )));
    };
    std::future::poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(|e| failed(endpoint, "connect", &*e))?;
    let io = connector
        .call(endpoint.uri.clone())
        .await
        .map_err(|e| failed(endpoint, "connect", &*e))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| failed(endpoint, "handshake", &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %error_chain(&e), "upstream connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> Endpoint {
        Endpoint::new(&url.parse().unwrap(), None).unwrap()
    }

    #[test]
    fn host_and_target_are_those_the_legacy_client_wrote() {
        let e = endpoint("http://shop.example:8080/plus/notify.php?x=1");
        assert_eq!(e.host, "shop.example:8080");
        assert_eq!(e.origin, "/plus/notify.php?x=1");
        assert_eq!(e.key(), "http://shop.example:8080");
        let e = endpoint("https://shop.example");
        assert_eq!(e.host, "shop.example");
        assert_eq!(e.origin, "/");
        assert_eq!(e.key(), "https://shop.example:443");
        let e = endpoint("http://shop.example:80/n");
        assert_eq!(e.host, "shop.example");
        let e = endpoint("https://[::1]:8443/n");
        assert_eq!(e.host, "[::1]:8443");
        let e = endpoint("http://user:pw@shop.example:81/n");
        assert_eq!(e.key(), "http://shop.example:81");
        assert_eq!(e.host, "shop.example:81");
    }

    /// A shop on 127.0.0.1 that answers nothing and reports each
    /// connection the gateway closes.
    async fn silent_shop() -> (Endpoint, tokio::sync::mpsc::UnboundedReceiver<()>) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                    let _ = tx.send(());
                });
            }
        });
        (endpoint(&format!("http://{addr}/n")), rx)
    }

    /// Waits for the shop to see a connection closed (bounded, so a broken
    /// test ends).
    async fn closed_one(closed: &mut tokio::sync::mpsc::UnboundedReceiver<()>) {
        tokio::time::timeout(Duration::from_secs(30), closed.recv())
            .await
            .expect("no connection was closed within 30s")
            .unwrap();
    }

    fn put_idle(e: &Endpoint, sender: Sender, since: Instant) {
        WORKER_POOL.with(|p| {
            p.borrow_mut()
                .as_mut()
                .unwrap()
                .idle
                .entry(e.key.clone())
                .or_default()
                .push(Idle { sender, since })
        });
    }

    #[tokio::test]
    async fn idle_connections_past_the_timeout_are_closed_not_reused() {
        let _pool = install_pool(crate::forward::connector(rustls::RootCertStore::empty()));
        let (e, mut closed) = silent_shop().await;
        let expired = Instant::now()
            .checked_sub(IDLE_TIMEOUT + Duration::from_secs(1))
            .unwrap();

        // Taken: an expired connection is closed, not handed out.
        put_idle(&e, connect(&e).await.unwrap(), expired);
        assert!(take_idle(e.key()).is_none());
        assert_eq!(idle_count(&e), 0);
        closed_one(&mut closed).await;

        // Swept: the expired one closed, the fresh one kept.
        put_idle(&e, connect(&e).await.unwrap(), expired);
        put_idle(&e, connect(&e).await.unwrap(), Instant::now());
        let gone = WORKER_POOL.with(|p| p.borrow_mut().as_mut().unwrap().sweep());
        assert_eq!(gone.len(), 1);
        drop(gone);
        closed_one(&mut closed).await;
        assert_eq!(idle_count(&e), 1);
        assert!(take_idle(e.key()).is_some_and(|s| !s.is_closed()));
    }

    #[tokio::test]
    async fn the_periodic_sweep_closes_expired_idle_connections_and_keeps_fresh_ones() {
        let _pool = install_pool(crate::forward::connector(rustls::RootCertStore::empty()));
        let (e, mut closed) = silent_shop().await;
        let (old, fresh) = (connect(&e).await.unwrap(), connect(&e).await.unwrap());
        let expired = Instant::now()
            .checked_sub(IDLE_TIMEOUT + Duration::from_secs(1))
            .unwrap();
        put_idle(&e, old, expired);
        put_idle(&e, fresh, Instant::now());
        // A short period, so that the test waits for the sweep's close,
        // not for a clock.
        sweep_every(Duration::from_millis(10));
        closed_one(&mut closed).await;
        assert_eq!(idle_count(&e), 1);
        assert!(take_idle(e.key()).is_some_and(|s| !s.is_closed()));
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_its_cap_of_idle_connections() {
        let _pool = install_pool(crate::forward::connector(rustls::RootCertStore::empty()));
        let (e, mut closed) = silent_shop().await;
        let reply = http::Response::new(()).into_parts().0;
        for _ in 0..MAX_IDLE_PER_ENDPOINT {
            put_idle(&e, connect(&e).await.unwrap(), Instant::now());
        }
        let extra = lease(&e, connect(&e).await.unwrap());
        extra.give_back(&reply);
        assert_eq!(idle_count(&e), MAX_IDLE_PER_ENDPOINT);
        closed_one(&mut closed).await;
        // A reply saying `Connection: close` never returns its connection.
        drop(take_idle(e.key()));
        closed_one(&mut closed).await;
        let mut close = http::Response::new(()).into_parts().0;
        close
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
        lease(&e, connect(&e).await.unwrap()).give_back(&close);
        assert_eq!(idle_count(&e), MAX_IDLE_PER_ENDPOINT - 1);
        closed_one(&mut closed).await;
    }
}
