//! Where the Redis replay store's commands go (`replay/redis.rs` decides
//! what to send): one server named by a URL, the master a set of Sentinels
//! names (`replay/sentinel.rs`, which follows failovers), or a Redis
//! Cluster (the crate follows its slot map).
//!
//! Every deployment gets two lanes: claims, renewals and releases on one,
//! the confirm with its `WAIT` on the other. `WAIT` blocks its connection
//! on the server until the replicas answer or its timeout passes, so
//! sharing one connection would queue every claim behind it.
//!
//! A connection's driver task runs on the runtime that opened it. The
//! requests run on the `server` workers, one current-thread runtime each,
//! so on a worker thread (marked by [`use_worker_connections`]) a URL's
//! or a cluster's lanes are the worker's own, opened there on first use:
//! a claim never hands its command to another thread and back. Off the
//! workers (`/readyz`, `/metrics`, the admin API, redelivery, benches) the
//! link's shared connections serve. A Sentinel master's connections stay
//! shared: its failover fence and `ROLE` check act on them.

use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use super::sentinel::SentinelMaster;
use crate::secret::Secret;

// === the configuration ===

/// How to reach the Redis deployment (`[replay]`).
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `store = "redis://..."`: one server (may hold a password: never printed).
    Url(String),
    /// `store = "sentinel"`: the master the sentinels name.
    Sentinel(SentinelTarget),
    /// `store = "cluster"`: a Redis Cluster found from its seed nodes.
    Cluster(ClusterTarget),
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Url(url) => write!(f, "Url({})", crate::secret::redact_url(url)),
            RedisTarget::Sentinel(s) => s.fmt(f),
            RedisTarget::Cluster(c) => c.fmt(f),
        }
    }
}

impl RedisTarget {
    /// `redis`, `sentinel` or `cluster` (the `kind` label of
    /// `callgate_replay_store_topology_info`).
    pub fn kind(&self) -> &'static str {
        match self {
            RedisTarget::Url(_) => "redis",
            RedisTarget::Sentinel(_) => "sentinel",
            RedisTarget::Cluster(_) => "cluster",
        }
    }

    /// The deployment for messages, without passwords.
    pub fn shown(&self) -> String {
        match self {
            RedisTarget::Url(url) => crate::secret::redact_url(url),
            RedisTarget::Sentinel(s) => format!(
                "sentinel master `{}` via {}",
                s.master_name,
                s.sentinels
                    .iter()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            RedisTarget::Cluster(c) => format!(
                "cluster via {}",
                c.seeds
                    .iter()
                    .map(|s| crate::secret::redact_url(s))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// A Sentinel deployment: the sentinels' addresses, the master's name, and
/// how to authenticate to each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    pub sentinels: Vec<(String, u16)>,
    pub master_name: String,
    /// Towards the sentinels.
    pub sentinel_auth: Auth,
    pub sentinel_tls: bool,
    /// Towards the master (and its replicas).
    pub auth: Auth,
    pub tls: bool,
}

/// A Redis Cluster: seed URLs (`rediss://` for TLS) and one set of
/// credentials for every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTarget {
    pub seeds: Vec<String>,
    pub auth: Auth,
}

/// ACL user and password (read from a file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl Auth {
    pub(super) fn password_text(&self) -> Option<String> {
        self.password
            .as_ref()
            .map(|p| String::from_utf8_lossy(p.expose()).into_owned())
    }

    pub(super) fn settings(&self) -> redis::RedisConnectionInfo {
        let mut info = redis::RedisConnectionInfo::default();
        if let Some(user) = &self.username {
            info = info.set_username(user);
        }
        if let Some(pw) = self.password_text() {
            info = info.set_password(pw);
        }
        info
    }
}

// === the connections ===

/// Which of the store's two connections a command rides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Claims, renewals, releases, nonces, probes.
    Claims,
    /// The delivered marker and its `WAIT`.
    Confirms,
}

/// One connection of any deployment, usable with scripts and pipelines.
#[derive(Clone)]
pub(super) enum StoreConn {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for StoreConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            StoreConn::Manager(c) => c.req_packed_command(cmd),
            StoreConn::Multiplexed(c) => c.req_packed_command(cmd),
            StoreConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            StoreConn::Manager(c) => c.req_packed_commands(cmd, offset, count),
            StoreConn::Multiplexed(c) => c.req_packed_commands(cmd, offset, count),
            StoreConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            StoreConn::Manager(c) => c.get_db(),
            StoreConn::Multiplexed(c) => c.get_db(),
            StoreConn::Cluster(c) => c.get_db(),
        }
    }
}

impl Lane {
    fn index(self) -> usize {
        match self {
            Lane::Claims => 0,
            Lane::Confirms => 1,
        }
    }
}

// === a worker's own connections ===

thread_local! {
    /// The connections of the worker thread this code runs on: per link
    /// (by [`PerWorker::id`]), one per lane, opened on first use, with the
    /// link's [`PerWorker::lost`] count they were opened under. `None` off
    /// the worker threads.
    static WORKER_CONNS: RefCell<Option<WorkerLinks>> =
        const { RefCell::new(None) };
}

/// A worker's connections: (link id, per lane: (lost count, connection)).
type WorkerLinks = Vec<(u64, [Option<(u64, StoreConn)>; 2])>;

/// Ids for [`PerWorker`]: one per link made in this process.
static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// A worker thread's own Redis connections, for as long as this lives:
/// made by [`use_worker_connections`] inside the worker's runtime and
/// dropped there, so the connections end with the runtime that drives them.
pub struct WorkerConnections {
    /// Tied to the worker's thread.
    _thread: PhantomData<*const ()>,
}

/// Makes this thread a worker's: commands sent from it go through
/// connections opened (and driven) on it (a `server` worker, at its start,
/// inside its runtime).
pub fn use_worker_connections() -> WorkerConnections {
    WORKER_CONNS.with(|w| *w.borrow_mut() = Some(Vec::new()));
    WorkerConnections {
        _thread: PhantomData,
    }
}

impl Drop for WorkerConnections {
    fn drop(&mut self) {
        // Taken out first: dropping a connection must not find the cell
        // borrowed.
        let conns = WORKER_CONNS.with(|w| w.borrow_mut().take());
        drop(conns);
    }
}

/// What a worker thread has for a link's lane.
enum Here {
    /// Not a worker thread: use the shared connection.
    Shared,
    Open(StoreConn),
    /// A worker without one yet, or with one opened before the server was
    /// last lost.
    Missing,
}

/// A link's key to the worker threads' own connections, and how often one
/// of its connections lost the server.
pub(super) struct PerWorker {
    id: u64,
    /// Connection-level failures seen on any of the link's connections
    /// (a worker's or a shared one): a worker's connection opened before
    /// the last one is opened again. A connection manager that found Redis
    /// gone fails the first command after Redis returns, so without this
    /// every worker would fail one notification after an outage (the
    /// shared connections are healed by the `/readyz` probe's `PING`).
    lost: AtomicU64,
}

impl PerWorker {
    fn new() -> PerWorker {
        PerWorker {
            id: NEXT_LINK.fetch_add(1, Ordering::Relaxed),
            lost: AtomicU64::new(0),
        }
    }

    fn here(&self, lane: Lane, lost: u64) -> Here {
        WORKER_CONNS.with(|w| match w.borrow().as_ref() {
            None => Here::Shared,
            Some(links) => links
                .iter()
                .find(|(link, _)| *link == self.id)
                .and_then(|(_, lanes)| lanes[lane.index()].as_ref())
                .filter(|(opened, _)| *opened == lost)
                .map_or(Here::Missing, |(_, c)| Here::Open(c.clone())),
        })
    }

    /// This worker's connection of `lane`, opened by `open` on first use
    /// (and again after the server was lost); `None` off the worker
    /// threads. Two requests opening it at once both get the first one
    /// kept.
    async fn conn<F, Fut>(&self, lane: Lane, open: F) -> Option<RedisResult<StoreConn>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = RedisResult<StoreConn>>,
    {
        let lost = self.lost.load(Ordering::Relaxed);
        match self.here(lane, lost) {
            Here::Shared => return None,
            Here::Open(c) => return Some(Ok(c)),
            Here::Missing => {}
        }
        let opened = match open().await {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let (kept, replaced) = WORKER_CONNS.with(|w| {
            let mut w = w.borrow_mut();
            let Some(links) = w.as_mut() else {
                return (opened, None);
            };
            let at = match links.iter().position(|(link, _)| *link == self.id) {
                Some(at) => at,
                None => {
                    links.push((self.id, [None, None]));
                    links.len() - 1
                }
            };
            let slot = &mut links[at].1[lane.index()];
            match slot {
                Some((was, c)) if *was == lost => (c.clone(), None),
                _ => {
                    let replaced = slot.replace((lost, opened.clone()));
                    (opened, replaced)
                }
            }
        });
        // Dropped outside the borrow.
        drop(replaced);
        Some(Ok(kept))
    }

    /// After `e` on one of the link's connections: when it lost the server
    /// (refused, dropped, timed out), every worker opens its connections
    /// again at its next command.
    fn failed(&self, e: &RedisError) {
        if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_timeout()
        {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One server by URL: a connection manager per lane (reconnects by
/// itself), and per lane on each worker thread.
pub(super) struct UrlLink {
    workers: PerWorker,
    client: redis::Client,
    config: redis::aio::ConnectionManagerConfig,
    /// Off the worker threads.
    claims: ConnectionManager,
    confirms: ConnectionManager,
}

/// The deployment's connections.
pub(super) enum Link {
    Url(Box<UrlLink>),
    Sentinel(Arc<SentinelMaster>),
    Cluster(Arc<ClusterLink>),
}

impl Link {
    /// Prepares the connections without connecting.
    pub(super) fn new(
        target: &RedisTarget,
        timeout: Duration,
        tls_ca: Option<&[u8]>,
    ) -> RedisResult<Link> {
        match target {
            RedisTarget::Url(url) => {
                let client = match tls_ca {
                    None => redis::Client::open(url.as_str())?,
                    Some(pem) => redis::Client::build_with_tls(url.as_str(), certificates(pem))?,
                };
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Ok(Link::Url(Box::new(UrlLink {
                    workers: PerWorker::new(),
                    claims: ConnectionManager::new_lazy_with_config(
                        client.clone(),
                        config.clone(),
                    )?,
                    confirms: ConnectionManager::new_lazy_with_config(
                        client.clone(),
                        config.clone(),
                    )?,
                    client,
                    config,
                })))
            }
            RedisTarget::Sentinel(s) => Ok(Link::Sentinel(Arc::new(SentinelMaster::new(
                s, timeout, tls_ca,
            )?))),
            RedisTarget::Cluster(c) => Ok(Link::Cluster(Arc::new(ClusterLink::new(
                c, timeout, tls_ca,
            )?))),
        }
    }

    /// The connection of `lane`: this worker's own on a worker thread
    /// (URL and cluster), else the shared one.
    pub(super) async fn conn(&self, lane: Lane) -> RedisResult<StoreConn> {
        match self {
            Link::Url(u) => {
                let open = || async {
                    ConnectionManager::new_lazy_with_config(u.client.clone(), u.config.clone())
                        .map(StoreConn::Manager)
                };
                if let Some(mine) = u.workers.conn(lane, open).await {
                    return mine;
                }
                Ok(StoreConn::Manager(match lane {
                    Lane::Claims => u.claims.clone(),
                    Lane::Confirms => u.confirms.clone(),
                }))
            }
            Link::Sentinel(s) => s.conn(lane).await.map(StoreConn::Multiplexed),
            Link::Cluster(c) => c.conn(lane).await.map(StoreConn::Cluster),
        }
    }

    /// A command on `lane` failed: a Sentinel master is found again (the
    /// error may mean it is no master any more); the URL's connection
    /// manager and the cluster client reconnect by themselves, and the
    /// workers' own connections are opened again after the server was lost
    /// ([`PerWorker::failed`]).
    pub(super) async fn failed(&self, lane: Lane, e: &RedisError) {
        match self {
            Link::Sentinel(s) => s.failed(lane, e).await,
            Link::Url(u) => u.workers.failed(e),
            Link::Cluster(c) => c.workers.failed(e),
        }
    }

    /// Whether keys must carry a hash tag (claims touch two keys at once).
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    /// `INFO <section>` (`memory`, `persistence`) of every primary: one
    /// for a URL or Sentinel, one per master of a cluster.
    pub(super) async fn info(&self, section: &str) -> RedisResult<Vec<(String, String)>> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg(section);
        match self {
            Link::Cluster(c) => {
                let mut conn = c.conn(Lane::Claims).await?;
                let answer = conn
                    .route_command(
                        cmd,
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                    )
                    .await?;
                per_node_texts(answer)
            }
            _ => {
                let mut conn = self.conn(Lane::Claims).await?;
                let text: String = cmd.query_async(&mut conn).await?;
                Ok(vec![(self.master().unwrap_or_default(), text)])
            }
        }
    }

    /// The master now in use (`host:port`), as far as known.
    pub(super) fn master(&self) -> Option<String> {
        match self {
            Link::Url(_) => None,
            Link::Sentinel(s) => s.master(),
            Link::Cluster(c) => c.masters(),
        }
    }

    /// How many failovers this gateway saw, and the last one's Unix time.
    pub(super) fn failovers(&self) -> (u64, i64) {
        match self {
            Link::Url(_) => (0, 0),
            Link::Sentinel(s) => s.failovers(),
            Link::Cluster(c) => (
                c.failovers.load(Ordering::Relaxed),
                c.last_failover.load(Ordering::Relaxed),
            ),
        }
    }

    /// Whether `key`'s cluster primary had a replica when last seen (a
    /// single master's replicas are the store's to count).
    pub(super) fn key_has_replica(&self, key: &str) -> Option<bool> {
        match self {
            Link::Cluster(c) => Some(c.has_replica(key)),
            _ => None,
        }
    }

    /// Asks the deployment who its primaries and replicas are now (for
    /// `/readyz` and `/metrics`): the number of replicas connected to the
    /// master(s). A cluster's changed set of primaries counts a failover.
    pub(super) async fn replicas(&self) -> RedisResult<u64> {
        match self {
            Link::Cluster(c) => c.refresh().await,
            _ => {
                let mut conn = self.conn(Lane::Claims).await?;
                let role: redis::Role = redis::cmd("ROLE").query_async(&mut conn).await?;
                match role {
                    redis::Role::Primary { replicas, .. } => Ok(replicas.len() as u64),
                    _ => Err(RedisError::from((
                        redis::ErrorKind::Client,
                        "the store's server is not a master (ROLE)",
                    ))),
                }
            }
        }
    }
}

/// Trust `pem` for TLS instead of the system roots.
pub(super) fn certificates(pem: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

/// A multi-node answer (`{addr → text}`) or a single text, as `(node, text)`.
fn per_node_texts(answer: Value) -> RedisResult<Vec<(String, String)>> {
    match answer {
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(node, text)| {
                Ok((
                    redis::from_redis_value::<String>(node)?,
                    redis::from_redis_value::<String>(text)?,
                ))
            })
            .collect(),
        other => Ok(vec![(String::new(), redis::from_redis_value(other)?)]),
    }
}

// === cluster ===

/// A Redis Cluster: the crate follows MOVED answers and refreshes its slot
/// map; callgate keeps one `ClusterConnection` per lane (and per worker
/// thread).
pub(super) struct ClusterLink {
    workers: PerWorker,
    client: redis::cluster::ClusterClient,
    claims: tokio::sync::OnceCell<ClusterConnection>,
    confirms: tokio::sync::OnceCell<ClusterConnection>,
    /// The primaries last seen (`CLUSTER NODES`), sorted.
    primaries: std::sync::Mutex<Vec<String>>,
    /// Slot ranges whose primary had no connected replica when last seen.
    replica_less: std::sync::Mutex<Vec<(u16, u16)>>,
    failovers: AtomicU64,
    last_failover: AtomicI64,
}

impl ClusterLink {
    fn new(target: &ClusterTarget, timeout: Duration, tls_ca: Option<&[u8]>) -> RedisResult<Self> {
        let mut b = redis::cluster::ClusterClientBuilder::new(target.seeds.clone())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            // The crate's own retries (MOVED, TRYAGAIN, CLUSTERDOWN, a
            // reconnect) within twice the bound; its defaults wait over a
            // second between tries and never time out.
            .overall_response_timeout(Some(timeout * 2))
            .retries(3)
            .min_retry_wait(20)
            .max_retry_wait(200);
        if let Some(user) = &target.auth.username {
            b = b.username(user);
        }
        if let Some(pw) = target.auth.password_text() {
            b = b.password(pw);
        }
        if let Some(pem) = tls_ca {
            b = b.certs(certificates(pem));
        }
        Ok(ClusterLink {
            workers: PerWorker::new(),
            client: b.build()?,
            claims: tokio::sync::OnceCell::new(),
            confirms: tokio::sync::OnceCell::new(),
            primaries: std::sync::Mutex::new(Vec::new()),
            replica_less: std::sync::Mutex::new(Vec::new()),
            failovers: AtomicU64::new(0),
            last_failover: AtomicI64::new(0),
        })
    }

    /// This worker's connection of `lane`, or the shared one.
    async fn conn(&self, lane: Lane) -> RedisResult<ClusterConnection> {
        let open = || async {
            self.client
                .get_async_connection()
                .await
                .map(StoreConn::Cluster)
        };
        match self.workers.conn(lane, open).await {
            Some(Ok(StoreConn::Cluster(c))) => return Ok(c),
            Some(Err(e)) => return Err(e),
            Some(Ok(_)) | None => {}
        }
        self.shared(lane).await
    }

    /// The connection of `lane` shared off the worker threads.
    async fn shared(&self, lane: Lane) -> RedisResult<ClusterConnection> {
        let cell = match lane {
            Lane::Claims => &self.claims,
            Lane::Confirms => &self.confirms,
        };
        cell.get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }

    /// Whether `key`'s primary had a connected replica when last seen
    /// (unknown: yes).
    fn has_replica(&self, key: &str) -> bool {
        let slot = key_slot(key);
        self.replica_less
            .lock()
            .map(|bare| !bare.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .unwrap_or(true)
    }

    fn masters(&self) -> Option<String> {
        let p = self.primaries.lock().ok()?;
        (!p.is_empty()).then(|| p.join(","))
    }

    /// Reads `CLUSTER NODES`: remembers the primaries (a change counts as a
    /// failover) and returns how many replicas are connected.
    async fn refresh(&self) -> RedisResult<u64> {
        let mut conn = self.conn(Lane::Claims).await?;
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("NODES");
        let nodes: String = redis::from_redis_value(
            conn.route_command(cmd, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
                .await?,
        )?;
        let (mut primaries, mut replicas) = (Vec::new(), 0u64);
        // Primary id → its slot ranges; ids of primaries with a replica.
        let mut ranges: Vec<(&str, Vec<(u16, u16)>)> = Vec::new();
        let mut served: Vec<&str> = Vec::new();
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(id), Some(addr), Some(flags), Some(of), Some(link)) =
                (f.first(), f.get(1), f.get(2), f.get(3), f.get(7))
            else {
                continue;
            };
            let flags: Vec<&str> = flags.split(',').collect();
            let addr = addr.split('@').next().unwrap_or(addr).to_owned();
            // A primary owns slots until a replica takes them over, failed
            // or not: the set changes once per failover.
            if flags.contains(&"master") && f.len() > 8 {
                primaries.push(addr);
                ranges.push((id, f[8..].iter().filter_map(|r| slot_range(r)).collect()));
            } else if flags.contains(&"slave")
                && !flags.contains(&"fail")
                && (*link == "connected" || flags.contains(&"myself"))
            {
                replicas += 1;
                served.push(of);
            }
        }
        let bare: Vec<(u16, u16)> = ranges
            .into_iter()
            .filter(|(id, _)| !served.contains(id))
            .flat_map(|(_, r)| r)
            .collect();
        if let Ok(mut b) = self.replica_less.lock() {
            *b = bare;
        }
        primaries.sort();
        if let Ok(mut seen) = self.primaries.lock() {
            if !seen.is_empty() && *seen != primaries {
                self.failovers.fetch_add(1, Ordering::Relaxed);
                self.last_failover
                    .store(crate::clock::unix_now(), Ordering::Relaxed);
            }
            *seen = primaries;
        }
        Ok(replicas)
    }
}

/// `a-b` or `a` of a `CLUSTER NODES` line (migrating `[...]` entries are
/// skipped).
fn slot_range(r: &str) -> Option<(u16, u16)> {
    match r.split_once('-') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => {
            let s = r.parse().ok()?;
            Some((s, s))
        }
    }
}

/// The cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the part in
/// the first `{...}`, when not empty) or of the whole key, modulo 16384.
pub(super) fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    let mut crc: u16 = 0;
    for b in tagged.unwrap_or(bytes) {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis_cluster_keyslot() {
        // `CLUSTER KEYSLOT` of redis-server 7.0.15.
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("callgate:{r:ev:abc}"), 231);
        assert_eq!(key_slot("{user1000}.following"), 3443);
        assert_eq!(key_slot("a{}b"), 13694);
        assert_eq!(key_slot("callgate:{r:ev:abc}:at"), 231);
    }

    #[test]
    fn slot_ranges_of_cluster_nodes() {
        assert_eq!(slot_range("0-5460"), Some((0, 5460)));
        assert_eq!(slot_range("5461"), Some((5461, 5461)));
        assert_eq!(slot_range("[93->-abc]"), None);
    }
}
