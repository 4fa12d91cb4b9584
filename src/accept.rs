//! Accepting connections: who may hold one, and how long a peer that stops
//! reading may keep it. Runs in `server` at accept, before a byte is read,
//! and under every connection's writes; the request flow (`pipeline`) never
//! sees a connection this refused.
//!
//! [`Admission`] decides at accept, from the TCP peer alone (the request
//! has not been read, so `X-Forwarded-For` is unknown):
//! * at most `limits.max_connections_per_source` open connections from one
//!   source address (an IPv4 address, an IPv6 /64), so one address cannot
//!   use up `limits.max_connections`. A peer in `trusted_proxies` is exempt:
//!   every client behind it shares its address, and the proxy limits them;
//! * at most `limits.max_connections_unlisted` open connections from
//!   addresses outside every route's allow list (and outside
//!   `trusted_proxies`), so that many addresses together cannot either: the
//!   rest of `limits.max_connections` is kept for the platforms. Strangers
//!   still get their 404 or 403, within that share;
//! * at most `limits.max_connections` in all.
//!
//! A refused connection is closed at once and counted in
//! `callgate_connections_refused_total{limit}`, `limit` naming the setting
//! that refused it. The admin listener has its own cap
//! (`admin.max_connections`).
//!
//! These limits only work if they are reached before the process runs out
//! of file descriptors: past its open-files limit (`RLIMIT_NOFILE`) accept
//! fails for everyone, platforms included, and a forward cannot open its
//! upstream connection. `callgate run` raises the soft limit to the hard
//! one; when even that is too small, [`fit_to_descriptors`] lowers the
//! three limits at start (keeping their proportions) so that they are.
//!
//! [`WriteDeadline`] wraps a connection's socket: a write or flush that
//! makes no progress for `limits.write_timeout` fails, and hyper closes the
//! connection (`callgate_write_timeouts_total{listener}`). Without it, a
//! client that pipelines requests (404s are answered before any allow list)
//! and never reads parks the connection on a full socket buffer forever:
//! hyper's header timeout only runs while it waits for a request.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::config::Limits;
use crate::config::Snapshot;

// === admission ===

/// What callgate knows about a peer at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// In `trusted_proxies`: its clients are behind it.
    TrustedProxy,
    /// In some route's allow list: a platform, as far as callgate knows.
    Listed,
    /// Anyone else.
    Unlisted,
}

impl Peer {
    /// Classifies `ip` against the live rule set.
    pub fn of(ip: IpAddr, snapshot: &Snapshot) -> Peer {
        let ip = ip.to_canonical();
        if snapshot.trusted_proxies.iter().any(|n| n.contains(&ip)) {
            Peer::TrustedProxy
        } else if snapshot.routes.iter().any(|r| r.allow.check(ip).is_ok()) {
            Peer::Listed
        } else {
            Peer::Unlisted
        }
    }
}

/// Which limit refused a connection: the label of
/// `callgate_connections_refused_total`, named after its setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    PerSource,
    Unlisted,
    Total,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::PerSource => "limits.max_connections_per_source",
            Refused::Unlisted => "limits.max_connections_unlisted",
            Refused::Total => "limits.max_connections",
        }
    }
}

/// The notification listener's connection limits (see the module doc).
/// Clones share the counts: every worker thread admits against the same
/// limits.
#[derive(Clone)]
pub struct Admission {
    total: Arc<Semaphore>,
    unlisted: Arc<Semaphore>,
    per_source: usize,
    /// Open connections per source key; a key leaves with its last one, so
    /// this holds at most `max_connections` entries.
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// An admitted connection's places; dropping it frees them.
pub struct Admitted {
    _total: OwnedSemaphorePermit,
    _unlisted: Option<OwnedSemaphorePermit>,
    _source: Option<SourceSlot>,
}

struct SourceSlot {
    key: IpAddr,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut sources = lock(&self.sources);
        if let Some(n) = sources.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                sources.remove(&self.key);
            }
        }
    }
}

impl Admission {
    pub fn new(limits: &Limits) -> Admission {
        Admission {
            total: Arc::new(Semaphore::new(limits.max_connections)),
            unlisted: Arc::new(Semaphore::new(limits.max_connections_unlisted)),
            per_source: limits.max_connections_per_source,
            sources: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Takes the places a connection from `ip` needs, or says which limit
    /// is full.
    pub fn admit(&self, ip: IpAddr, peer: Peer) -> Result<Admitted, Refused> {
        let source = match peer {
            Peer::TrustedProxy => None,
            Peer::Listed | Peer::Unlisted => Some(self.source_slot(ip)?),
        };
        let unlisted = match peer {
            Peer::Unlisted => Some(
                self.unlisted
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| Refused::Unlisted)?,
            ),
            Peer::TrustedProxy | Peer::Listed => None,
        };
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Total)?;
        Ok(Admitted {
            _total: total,
            _unlisted: unlisted,
            _source: source,
        })
    }

    fn source_slot(&self, ip: IpAddr) -> Result<SourceSlot, Refused> {
        let key = crate::limit::source_key(ip);
        let mut sources = lock(&self.sources);
        let n = sources.entry(key).or_insert(0);
        if *n >= self.per_source {
            return Err(Refused::PerSource);
        }
        *n += 1;
        Ok(SourceSlot {
            key,
            sources: self.sources.clone(),
        })
    }
}

/// Descriptors one notification connection may need: its own socket and
/// the upstream connection its forward opens.
pub const DESCRIPTORS_PER_CONNECTION: u64 = 2;

/// Descriptors kept for the process itself besides its connections: stdio,
/// the listening sockets, each worker's runtime, the replay store's and
/// the journal's files and sockets, key files read at a reload.
const DESCRIPTORS_OWN: u64 = 64;

/// ... and for each worker thread (its runtime's epoll and wake-up
/// descriptors, its listening socket, its Redis connections).
const DESCRIPTORS_PER_WORKER: u64 = 8;

/// Descriptors the process needs for `limits.max_connections`
/// notification connections, `admin_connections` admin ones and
/// `workers` worker threads.
pub fn descriptors_needed(limits: &Limits, admin_connections: usize, workers: usize) -> u64 {
    kept_descriptors(admin_connections, workers)
        .saturating_add(DESCRIPTORS_PER_CONNECTION.saturating_mul(limits.max_connections as u64))
}

fn kept_descriptors(admin_connections: usize, workers: usize) -> u64 {
    DESCRIPTORS_OWN
        .saturating_add(DESCRIPTORS_PER_WORKER.saturating_mul(workers as u64))
        .saturating_add(admin_connections as u64)
}

/// The notification connection limits lowered to fit `open_files`
/// descriptors (the soft `RLIMIT_NOFILE`), after `admin_connections` and
/// what the process needs for itself: `None` when they fit as configured.
/// Each limit is lowered in the proportion of `max_connections`, so the
/// share kept for the platforms stays; none goes below 1.
pub fn fit_to_descriptors(
    limits: &Limits,
    open_files: u64,
    admin_connections: usize,
    workers: usize,
) -> Option<Limits> {
    if open_files >= descriptors_needed(limits, admin_connections, workers) {
        return None;
    }
    let room = open_files.saturating_sub(kept_descriptors(admin_connections, workers))
        / DESCRIPTORS_PER_CONNECTION;
    let total = limits.max_connections as u64;
    let fitted = room.clamp(1, total.max(1));
    let scale = |n: usize| -> usize {
        let n = u64::try_from(n as u128 * u128::from(fitted) / u128::from(total.max(1)))
            .unwrap_or(fitted);
        usize::try_from(n.clamp(1, fitted)).unwrap_or(1)
    };
    Some(Limits {
        max_connections: usize::try_from(fitted).unwrap_or(1),
        max_connections_per_source: scale(limits.max_connections_per_source),
        max_connections_unlisted: scale(limits.max_connections_unlisted),
        ..*limits
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counts are plain integers, written whole: a poisoned lock is consistent.
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

// === impl WriteDeadline ===

/// A socket whose writes and flushes fail once they make no progress for
/// `timeout` (see the module doc). Reads pass through untouched.
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Running while a write is stalled; reset by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    expired: bool,
    /// Called once, when the deadline passes.
    on_expiry: Option<Box<dyn FnOnce() + Send>>,
}

impl<S> WriteDeadline<S> {
    pub fn new(
        inner: S,
        timeout: Duration,
        on_expiry: impl FnOnce() + Send + 'static,
    ) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
            expired: false,
            on_expiry: Some(Box::new(on_expiry)),
        }
    }

    /// The result of a write-side poll: progress resets the deadline, a
    /// stall runs it.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let Poll::Ready(r) = polled {
            self.stalled = None;
            return Poll::Ready(r);
        }
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.expired = true;
                if let Some(f) = self.on_expiry.take() {
                    f();
                }
                Poll::Ready(Err(expired()))
            }
        }
    }
}

fn expired() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the peer read nothing within limits.write_timeout",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Err(expired()));
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Err(expired()));
        }
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Err(expired()));
        }
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired {
            // Nothing more can be written; let the socket close.
            return Pin::new(&mut this.inner).poll_shutdown(cx);
        }
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;

    fn limits(total: usize, unlisted: usize, per_source: usize) -> Limits {
        Limits {
            max_body_bytes: 1,
            header_timeout: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(1),
            body_timeout: Duration::from_secs(1),
            tls_handshake_timeout: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(1),
            max_connections: total,
            max_connections_per_source: per_source,
            max_connections_unlisted: unlisted,
            write_timeout: Duration::from_secs(1),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_cannot_take_every_place() {
        let a = Admission::new(&limits(10, 10, 2));
        let held: Vec<_> = (0..2)
            .map(|_| a.admit(ip("203.0.113.5"), Peer::Listed).unwrap())
            .collect();
        assert_eq!(
            a.admit(ip("203.0.113.5"), Peer::Listed).err(),
            Some(Refused::PerSource)
        );
        // IPv6 counts by /64; IPv4-mapped is the IPv4 address.
        assert!(a.admit(ip("2001:db8::1"), Peer::Unlisted).is_ok());
        let _v6 = a.admit(ip("2001:db8::2"), Peer::Unlisted).unwrap();
        let _v6b = a.admit(ip("2001:db8::3"), Peer::Unlisted);
        assert_eq!(
            a.admit(ip("::ffff:203.0.113.5"), Peer::Listed).err(),
            Some(Refused::PerSource)
        );
        drop(held);
        assert!(a.admit(ip("203.0.113.5"), Peer::Listed).is_ok());
        assert!(
            lock(&a.sources).len() <= 2,
            "keys leave with their last connection"
        );
    }

    #[test]
    fn strangers_leave_room_for_listed_peers_and_proxies_count_only_in_the_total() {
        let a = Admission::new(&limits(4, 2, 100));
        let _s1 = a.admit(ip("198.51.100.1"), Peer::Unlisted).unwrap();
        let _s2 = a.admit(ip("198.51.100.2"), Peer::Unlisted).unwrap();
        assert_eq!(
            a.admit(ip("198.51.100.3"), Peer::Unlisted).err(),
            Some(Refused::Unlisted)
        );
        let _p1 = a.admit(ip("110.75.1.1"), Peer::Listed).unwrap();
        let _p2 = a.admit(ip("10.0.0.1"), Peer::TrustedProxy).unwrap();
        assert_eq!(
            a.admit(ip("110.75.1.2"), Peer::Listed).err(),
            Some(Refused::Total)
        );
        // A refusal takes nothing: the per-source count did not grow.
        assert_eq!(lock(&a.sources).get(&ip("110.75.1.2")), None);
    }

    #[test]
    fn a_proxy_is_not_capped_per_source() {
        let a = Admission::new(&limits(10, 5, 1));
        let held: Vec<_> = (0..10)
            .map(|_| a.admit(ip("10.0.0.1"), Peer::TrustedProxy).unwrap())
            .collect();
        assert_eq!(held.len(), 10);
    }

    #[test]
    fn limits_that_fit_the_descriptors_are_kept() {
        let l = limits(1000, 500, 100);
        // 64 + 2 workers x 8 + 64 admin = 144 kept, 2 per connection.
        assert_eq!(fit_to_descriptors(&l, 2144, 64, 2), None);
        assert_eq!(fit_to_descriptors(&l, 1 << 20, 64, 2), None);
    }

    #[test]
    fn limits_past_the_descriptors_are_lowered_in_proportion() {
        let l = limits(10_000, 5_000, 256);
        // A default soft limit of 1024: (1024 - 144) / 2 = 440 places.
        let fitted = fit_to_descriptors(&l, 1024, 64, 2).unwrap();
        assert_eq!(fitted.max_connections, 440);
        assert_eq!(fitted.max_connections_unlisted, 220);
        assert_eq!(fitted.max_connections_per_source, 11);
        assert_eq!(fitted.write_timeout, l.write_timeout);
        // Nothing left: one place each, never zero.
        let none = fit_to_descriptors(&l, 10, 64, 2).unwrap();
        assert_eq!(
            (
                none.max_connections,
                none.max_connections_unlisted,
                none.max_connections_per_source
            ),
            (1, 1, 1)
        );
    }

    #[tokio::test]
    async fn a_write_that_makes_no_progress_fails_once_the_deadline_passes() {
        // A duplex pipe with a 64-byte buffer that nobody reads.
        let (near, _far) = tokio::io::duplex(64);
        let fired = Arc::new(AtomicUsize::new(0));
        let f = fired.clone();
        let mut s = WriteDeadline::new(near, Duration::from_millis(50), move || {
            f.fetch_add(1, Ordering::Relaxed);
        });
        s.write_all(&[0u8; 64]).await.unwrap();
        let err = s.write_all(&[0u8; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(s.flush().await.is_err());
        assert_eq!(fired.load(Ordering::Relaxed), 1, "counted once");
    }

    #[tokio::test]
    async fn progress_resets_the_deadline() {
        use tokio::io::AsyncReadExt;
        let (near, mut far) = tokio::io::duplex(8);
        let mut s = WriteDeadline::new(near, Duration::from_secs(3600), || {});
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        s.write_all(&[7u8; 4096]).await.unwrap();
        s.shutdown().await.unwrap();
        drop(s);
        assert_eq!(reader.await.unwrap(), 4096);
    }
}
