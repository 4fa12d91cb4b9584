//! The Redis replay store: several gateways share one Redis (or a
//! Redis-compatible server, a Sentinel deployment or a Redis Cluster), each
//! claim an atomic Lua script. Redis must never evict callgate's keys (see
//! [`RedisStore`]). Where the commands go is `replay/link.rs`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::RedisResult;

use super::link::{Lane, Link, RedisTarget, StoreConn};
use super::{Claim, Confirmed, Key, StoreError, Token};

/// Claim: returns the current value, or, after taking the key, the
/// event's attempt number (counted in `KEYS[2]`, kept for `ARGV[3]` ms).
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local n = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return n
";

/// Renew: our in-flight value, or a lapsed one, is (re)set for `ARGV[2]` ms.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Confirm: the event becomes delivered whatever held it; 1 when that was
/// our claim, 2 when the key was gone, 3 when someone else held it. What
/// it found is left as a receipt in `KEYS[2]` (`<token>=<answer>`, for
/// `ARGV[3]` ms, no longer than the marker) instead of the attempt count:
/// a confirm retried because the first one's answer never came finds `d`
/// with its own receipt, and answers what the first one found rather than
/// taking its own marker for another copy's delivery.
const CONFIRM: &str = r"
local v = redis.call('GET', KEYS[1])
local mine = ARGV[1] .. '='
if v == 'd' then
  local r = redis.call('GET', KEYS[2])
  if r and string.sub(r, 1, #mine) == mine then
    return tonumber(string.sub(r, #mine + 1))
  end
end
redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2])
local found = 3
if v == ARGV[1] then found = 1 elseif v == false then found = 2 end
redis.call('SET', KEYS[2], mine .. found, 'PX', ARGV[3])
return found
";

/// Release: delete only our own in-flight value (the attempt count stays).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Undo a claim whose answer never came (it timed out, so the request
/// ended without it): 1 when our in-flight value was there and is gone,
/// with the attempt it counted given back (nothing was forwarded under
/// it); 2 when the event is delivered (a late claim is then a no-op); 0
/// when neither, the claim not run yet or never to run.
const UNDO_CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v == 'd' then return 2 end
if v ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
local n = tonumber(redis.call('GET', KEYS[2]))
if n and n > 1 then
  redis.call('DECR', KEYS[2])
else
  redis.call('DEL', KEYS[2])
end
return 1
";

/// Forget: delete only a nonce.
const FORGET: &str = r"
if redis.call('GET', KEYS[1]) == 'n' then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// `maxmemory-policy` values that can evict callgate's keys (all of them
/// carry a TTL, so the `volatile-*` ones evict them too).
const EVICTING: [&str; 8] = [
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
    // Not a Redis policy: an answer naming none we know.
    "unknown",
];

/// How often the request path reads `maxmemory-policy` again, so a change
/// (either way) is seen without a `/readyz` probe.
pub const POLICY_RECHECK: Duration = Duration::from_secs(30);

/// `RedisStore::policy` states besides an index into [`EVICTING`].
const POLICY_UNCHECKED: u8 = u8::MAX;
const POLICY_SAFE: u8 = u8::MAX - 1;

/// How the delivered marker is made to survive the loss of the master:
/// `WAIT replicas timeout` after it, on a connection of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitFor {
    /// Replicas that must acknowledge (0: no `WAIT`).
    pub replicas: u32,
    /// How long to wait for them; below the store's command timeout.
    pub timeout: Duration,
}

/// Claims whose answer never came undone at once at most (see
/// [`RedisStore::undo_claim_later`]); a few hundred bytes each.
const UNDOING_MAX: usize = 10_000;

/// Answers that found a timed-out claim neither applied nor overtaken
/// before it is taken as never to run.
const UNDO_POLLS: u32 = 3;

/// Unreplicated delivered markers kept for re-assertion after a failover.
const REASSERT_MAX: usize = 100_000;

/// Delivered events each gateway also remembers itself (see
/// [`RedisStore`], *Known deliveries*): about 10 MB when full (10.3 MB of
/// RSS for 32,768 digests in this cache, measured alone).
pub const KNOWN_DELIVERED_MAX: u64 = 32_768;

/// What the store knows about its deployment (`/readyz`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// `redis`, `sentinel` or `cluster` (`memory` for the memory store).
    pub kind: &'static str,
    /// The master(s) in use (`host:port`, comma-separated for a cluster);
    /// empty when unknown or for a plain URL.
    pub master: String,
    /// Replicas connected to the master(s) when last asked.
    pub replicas: Option<u64>,
    /// Replicas that acknowledged the last delivered marker (`WAIT`).
    pub replicas_acked: Option<u64>,
    /// Replicas each marker waits for (`replay.wait_replicas`).
    pub wait_replicas: u32,
    /// Delivered markers fewer replicas acknowledged than asked.
    pub unreplicated: u64,
    /// Failovers this gateway saw (a new master address).
    pub failovers: u64,
    /// Unix time of the last one (0: none).
    pub last_failover: i64,
}

impl Topology {
    /// The memory store's: no master, no replicas.
    pub fn memory() -> Topology {
        Topology {
            kind: "memory",
            master: String::new(),
            replicas: None,
            replicas_acked: None,
            wait_replicas: 0,
            unreplicated: 0,
            failovers: 0,
            last_failover: 0,
        }
    }
}

/// The scripts, as sent to a plain server or to a cluster (`#!lua`: Redis
/// 7 then treats them as writes, so a demoted master answers MOVED instead
/// of running them and failing with READONLY).
struct Scripts {
    claim: redis::Script,
    renew: redis::Script,
    confirm: redis::Script,
    release: redis::Script,
    forget: redis::Script,
    undo_claim: redis::Script,
    /// The confirm's text, sent with `EVAL` in the confirm+`WAIT` pipeline
    /// (no NOSCRIPT round trip on a newly promoted master).
    confirm_text: String,
}

impl Scripts {
    fn new(shebang: bool) -> Scripts {
        let text = |body: &str| {
            if shebang {
                format!("#!lua\n{body}")
            } else {
                body.to_owned()
            }
        };
        Scripts {
            claim: redis::Script::new(&text(CLAIM)),
            renew: redis::Script::new(&text(RENEW)),
            confirm: redis::Script::new(&text(CONFIRM)),
            release: redis::Script::new(&text(RELEASE)),
            forget: redis::Script::new(&text(FORGET)),
            undo_claim: redis::Script::new(&text(UNDO_CLAIM)),
            confirm_text: text(CONFIRM),
        }
    }
}

/// A Redis (or Redis-compatible) store shared by several gateways: one
/// server by URL, a Sentinel deployment or a Redis Cluster. Two connections
/// per gateway ([`Lane`]), reconnected (or the master found again) after a
/// failure; every command is bounded by the configured timeout. Values:
/// `f:<instance>:<token>` while in flight, `d` once delivered, `n` for a
/// nonce; `<event key>:at` counts an event's claims until it is delivered,
/// and then holds the confirm's receipt for up to a minute (see `CONFIRM`).
/// A claim that timed out is undone when Redis runs it late
/// (`RedisStore::undo_claim_later`).
/// On a cluster both keys carry one hash tag (`callgate:{<route>:ev:<hex>}`)
/// so a script's keys share a slot; elsewhere the names are unchanged.
///
/// With [`WaitFor::replicas`] above 0 the delivered marker is followed by
/// `WAIT`: a marker fewer replicas acknowledged is counted
/// ([`Topology::unreplicated`]) and written again after the next failover.
///
/// *Known deliveries*: a delivered marker never changes until its TTL ends
/// (nothing deletes or overwrites `d`), so each gateway also remembers, in
/// a bounded cache, the events whose claim found `d`, for `replay.ttl` from
/// then. Later copies of those are answered as duplicates without a round
/// trip to Redis: a replay flood of one captured notification costs Redis
/// one claim per gateway, and the answer holds while Redis is unreachable.
/// Remembering an event past its Redis TTL only keeps refusing a second
/// delivery of it. A gateway's own confirms are not added: most events
/// never come back, and the cache's insert would cost every forward (about
/// 2.4 µs in a profile) to spare the rare first copy one round trip.
///
/// Redis must never evict these keys: its `maxmemory-policy` (every
/// primary's, on a cluster) is read (`INFO memory`) at start, on every
/// `/readyz`, before the first claim, after a failover, and then at most
/// every [`POLICY_RECHECK`] from the request path; while it is anything but
/// `noeviction` every claim is refused ([`StoreError::Evicting`]). The
/// same reads (not `/readyz`'s) also read `INFO persistence`, in the
/// background from the request path: a primary without an append-only
/// file is warned about at start, and again only after a read found none
/// ([`RedisStore::check_persistence`]).
///
/// A clone is one reference count: the claim guard of every request holds
/// one.
#[derive(Clone)]
pub struct RedisStore(Arc<RedisShared>);

impl std::ops::Deref for RedisStore {
    type Target = RedisShared;

    fn deref(&self) -> &RedisShared {
        &self.0
    }
}

/// What the clones of one [`RedisStore`] share.
pub struct RedisShared {
    link: Link,
    scripts: Arc<Scripts>,
    kind: &'static str,
    instance: Arc<str>,
    next_token: AtomicU64,
    /// The deployment without passwords, for messages.
    shown: Arc<str>,
    /// The last `maxmemory-policy` read: an index into [`EVICTING`],
    /// [`POLICY_SAFE`] or [`POLICY_UNCHECKED`].
    policy: AtomicU8,
    /// How long an event's attempt count is kept (`replay.ttl`).
    attempts_ttl: AtomicU64,
    /// When the policy was last read, in milliseconds since `epoch`.
    policy_read: AtomicU64,
    /// Whether the last `INFO persistence` read found a primary without an
    /// append-only file (and that was logged).
    aof_off: AtomicBool,
    epoch: std::time::Instant,
    wait: WaitFor,
    /// Replicas that acknowledged the last marker (-1: none yet).
    replicas_acked: AtomicI64,
    /// Replicas connected when last asked (-1: unknown).
    replicas: AtomicI64,
    unreplicated: AtomicU64,
    /// Markers to write again after a failover: (key name, ttl ms).
    reassert: Mutex<VecDeque<(String, u64)>>,
    /// The failover count the store last acted on.
    failovers_seen: AtomicU64,
    /// When [`RedisStore::refresh_soon`] last ran, in ms since `epoch`.
    topology_read: AtomicU64,
    /// Events known delivered: key digest → until when (ms since `epoch`).
    known_delivered: moka::sync::Cache<u128, u64, DigestHash>,
    /// Claims whose answer never came being undone now.
    undoing: AtomicUsize,
}

impl RedisStore {
    /// One server by URL, without `WAIT` (benches, tests).
    pub fn new(
        url: &str,
        timeout: Duration,
        tls_ca: Option<&[u8]>,
    ) -> Result<RedisStore, StoreError> {
        let no_wait = WaitFor {
            replicas: 0,
            timeout: Duration::ZERO,
        };
        Self::for_target(&RedisTarget::Url(url.to_owned()), timeout, tls_ca, no_wait)
    }

    /// Prepares the store without connecting: a gateway starts (and fails
    /// closed) while Redis is down, and recovers when it returns.
    pub fn for_target(
        target: &RedisTarget,
        timeout: Duration,
        tls_ca: Option<&[u8]>,
        wait: WaitFor,
    ) -> Result<RedisStore, StoreError> {
        let link = Link::new(target, timeout, tls_ca)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", target.shown())))?;
        let mut id = [0u8; 6];
        let _ = aws_lc_rs::rand::fill(&mut id);
        Ok(RedisStore(Arc::new(RedisShared {
            scripts: Arc::new(Scripts::new(link.is_cluster())),
            link,
            kind: target.kind(),
            instance: hex::encode(id).into(),
            next_token: AtomicU64::new(1),
            shown: target.shown().into(),
            policy: AtomicU8::new(POLICY_UNCHECKED),
            attempts_ttl: AtomicU64::new(48 * 3600 * 1000),
            policy_read: AtomicU64::new(0),
            aof_off: AtomicBool::new(false),
            epoch: std::time::Instant::now(),
            wait,
            replicas_acked: AtomicI64::new(-1),
            replicas: AtomicI64::new(-1),
            unreplicated: AtomicU64::new(0),
            reassert: Mutex::new(VecDeque::new()),
            failovers_seen: AtomicU64::new(0),
            topology_read: AtomicU64::new(0),
            known_delivered: moka::sync::Cache::builder()
                .max_capacity(KNOWN_DELIVERED_MAX)
                .build_with_hasher(DigestHash),
            undoing: AtomicUsize::new(0),
        })))
    }

    /// Whether this gateway saw `key` delivered within its TTL.
    fn known_delivered(&self, key: &Key) -> bool {
        self.known_delivered
            .get(&u128::from_ne_bytes(key.digest))
            .is_some_and(|until| until > millis(self.epoch.elapsed()))
    }

    /// `key` is delivered (a claim found `d`, a delivery made while the
    /// store was down was recorded, or the shop took it and its record
    /// failed): remember it for `ttl`.
    pub(super) fn learn_delivered(&self, key: &Key, ttl: Duration) {
        let until = millis(self.epoch.elapsed()).saturating_add(millis(ttl));
        self.known_delivered
            .insert(u128::from_ne_bytes(key.digest), until);
    }

    /// How long an undelivered event's attempt count is kept (the gateway
    /// sets `replay.ttl`; default 48 hours).
    pub fn set_attempts_ttl(&self, ttl: Duration) {
        self.attempts_ttl.store(millis(ttl), Ordering::Relaxed);
    }

    fn err(&self, e: redis::RedisError) -> StoreError {
        StoreError::Unavailable(format!("{}: {}", self.shown, e))
    }

    fn value(&self, token: Token) -> String {
        format!("f:{}:{}", self.instance, token.id)
    }

    /// The Redis name of `key`: hash-tagged on a cluster.
    fn name(&self, key: &Key) -> String {
        let name = key.redis();
        if !self.link.is_cluster() {
            return name;
        }
        match name.split_once(':') {
            Some((prefix, rest)) => format!("{prefix}:{{{rest}}}"),
            None => format!("{{{name}}}"),
        }
    }

    /// Runs `op` on a connection of `lane`; an error tells the link (a
    /// Sentinel master is then found again).
    async fn run<T, F, Fut>(&self, lane: Lane, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(StoreConn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = self.link.conn(lane).await.map_err(|e| self.err(e))?;
        match op(conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.link.failed(lane, &e).await;
                Err(self.err(e))
            }
        }
    }

    /// [`RedisStore::run`], and whether a failure may have left the
    /// command to run on the server later (it timed out, or the connection
    /// dropped, after it was sent).
    async fn run_unanswered<T, F, Fut>(&self, lane: Lane, op: F) -> Result<T, (StoreError, bool)>
    where
        F: FnOnce(StoreConn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = self
            .link
            .conn(lane)
            .await
            .map_err(|e| (self.err(e), false))?;
        match op(conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let unanswered =
                    e.is_timeout() || (e.is_connection_dropped() && !e.is_connection_refusal());
                self.link.failed(lane, &e).await;
                Err((self.err(e), unanswered))
            }
        }
    }

    /// A claim timed out: the request ended (503) without it, but Redis
    /// may still run it (a stalled server runs what it had queued when it
    /// resumes), holding the event in flight for a whole claim life and
    /// counting an attempt that never led to a forward. Undone in the
    /// background: polled until our value is found and removed, the event
    /// is found delivered, [`UNDO_POLLS`] answers found neither (a command
    /// queued before them has run by then), or the claim would have lapsed
    /// anyway. At most [`UNDOING_MAX`] at once; beyond, claims lapse.
    fn undo_claim_later(&self, name: String, value: String, life: Duration) {
        if self.undoing.fetch_add(1, Ordering::Relaxed) >= UNDOING_MAX {
            self.undoing.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let deadline = std::time::Instant::now() + life;
            let (mut pause, mut answers) = (Duration::from_millis(50), 0);
            while std::time::Instant::now() + pause < deadline && answers < UNDO_POLLS {
                tokio::time::sleep(pause).await;
                match store.undo_claim(&name, &value).await {
                    Ok(1) => {
                        tracing::info!(
                            "replay store: a claim that timed out was applied late; released"
                        );
                        break;
                    }
                    Ok(2) => break,
                    Ok(_) => answers += 1,
                    Err(_) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            store.undoing.fetch_sub(1, Ordering::Relaxed);
        });
    }

    async fn undo_claim(&self, name: &str, value: &str) -> Result<i64, StoreError> {
        let scripts = self.scripts.clone();
        self.run(Lane::Claims, |mut c| async move {
            scripts
                .undo_claim
                .key(name)
                .key(attempts_key(name))
                .arg(value)
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    /// Acts on a failover the link saw since the last call: the new
    /// master's `maxmemory-policy` is read before the next claim, and the
    /// markers no replica acknowledged are written to it again.
    fn after_failover(&self) {
        let (failovers, _) = self.link.failovers();
        if self.failovers_seen.swap(failovers, Ordering::Relaxed) == failovers {
            return;
        }
        self.policy.store(POLICY_UNCHECKED, Ordering::Relaxed);
        let pending: Vec<(String, u64)> = match self.reassert.lock() {
            Ok(mut list) => list.drain(..).collect(),
            Err(_) => return,
        };
        if pending.is_empty() {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let mut failed = 0usize;
            for (name, ttl) in &pending {
                let mut pipe = redis::pipe();
                pipe.cmd("SET")
                    .arg(name)
                    .arg("d")
                    .arg("PX")
                    .arg(*ttl)
                    .ignore();
                let done: Result<(), StoreError> = store
                    .run(Lane::Claims, |mut c| async move {
                        pipe.query_async(&mut c).await
                    })
                    .await;
                if done.is_err() {
                    failed += 1;
                    store.keep_for_reassert(name.clone(), *ttl);
                }
            }
            tracing::info!(
                markers = pending.len(),
                failed,
                "replay store: unreplicated delivered markers written again after a failover"
            );
        });
    }

    fn keep_for_reassert(&self, name: String, ttl: u64) {
        if let Ok(mut list) = self.reassert.lock() {
            if list.len() >= REASSERT_MAX {
                list.pop_front();
            }
            list.push_back((name, ttl));
        }
    }

    /// Reads every primary's `maxmemory-policy` and remembers the worst.
    /// `Err(Evicting)` when one can evict; an unreachable Redis is
    /// `Err(Unavailable)` and leaves what was known.
    pub async fn check_policy(&self) -> Result<(), StoreError> {
        self.policy_read
            .store(millis(self.epoch.elapsed()), Ordering::Relaxed);
        let infos = match self.link.info("memory").await {
            Ok(infos) => infos,
            Err(e) => {
                self.link.failed(Lane::Claims, &e).await;
                return Err(self.err(e));
            }
        };
        let mut state = POLICY_SAFE;
        let mut culprit = String::new();
        for (node, info) in &infos {
            let policy = info
                .lines()
                .find_map(|l| l.strip_prefix("maxmemory_policy:"))
                .map(str::trim);
            let node_state = match policy {
                Some("noeviction") => POLICY_SAFE,
                Some(p) => EVICTING
                    .iter()
                    .position(|e| *e == p)
                    .unwrap_or(EVICTING.len() - 1) as u8,
                // INFO without the field: not a Redis we can vouch for.
                None => (EVICTING.len() - 1) as u8,
            };
            if node_state != POLICY_SAFE && state == POLICY_SAFE {
                state = node_state;
                culprit = node.clone();
            }
        }
        self.policy.store(state, Ordering::Relaxed);
        match self.evicting() {
            None => Ok(()),
            Some(policy) => Err(StoreError::Evicting {
                store: if culprit.is_empty() || infos.len() < 2 {
                    self.shown.to_string()
                } else {
                    format!("{} (node {culprit})", self.shown)
                },
                policy,
            }),
        }
    }

    /// Reads every primary's `INFO persistence` and warns, once per node,
    /// about each that keeps no append-only file (`aof_enabled:0`): a
    /// restart of it forgets the delivered markers written since its last
    /// snapshot, and the platforms' retries of those events reach the shop
    /// again. Logged when a read finds such a node after one that found
    /// none (or none yet), never again while it stays so: the request
    /// path's recheck reads it every [`POLICY_RECHECK`]. A server that does
    /// not answer, refuses `INFO` or has no `aof_enabled` field is not
    /// warned about: nothing is known.
    pub async fn check_persistence(&self) {
        let Ok(infos) = self.link.info("persistence").await else {
            return;
        };
        for store in self.newly_without_aof(&infos) {
            tracing::warn!(
                store = store.as_str(),
                "{}",
                no_aof_warning(&store, self.wait.replicas > 0)
            );
        }
    }

    /// The primaries of `infos` (`INFO persistence` per node) to warn
    /// about, as shown in messages: those without an append-only file,
    /// unless the last read found one already.
    fn newly_without_aof(&self, infos: &[(String, String)]) -> Vec<String> {
        let mut bare: Vec<&str> = infos
            .iter()
            .filter(|(_, info)| aof_disabled(info))
            .map(|(node, _)| node.as_str())
            .collect();
        // A cluster's answer comes in no particular order.
        bare.sort_unstable();
        if bare.is_empty() {
            self.aof_off.store(false, Ordering::Relaxed);
            return Vec::new();
        }
        if self.aof_off.swap(true, Ordering::Relaxed) {
            return Vec::new();
        }
        bare.into_iter()
            .map(|node| {
                if node.is_empty() {
                    self.shown.to_string()
                } else {
                    format!("{} (node {node})", self.shown)
                }
            })
            .collect()
    }

    /// [`RedisStore::check_persistence`] in the background: the request
    /// that rechecked the policy does not wait for it.
    fn check_persistence_later(&self) {
        let store = self.clone();
        tokio::spawn(async move { store.check_persistence().await });
    }

    /// The evicting policy last read, if any.
    pub fn evicting(&self) -> Option<String> {
        let state = self.policy.load(Ordering::Relaxed);
        EVICTING.get(usize::from(state)).map(|p| (*p).to_owned())
    }

    /// Asks the deployment how many replicas its master(s) have (and, on a
    /// cluster, which nodes are primaries now).
    pub async fn refresh_topology(&self) -> Result<(), StoreError> {
        let replicas = match self.link.replicas().await {
            Ok(n) => n,
            Err(e) => {
                self.link.failed(Lane::Claims, &e).await;
                return Err(self.err(e));
            }
        };
        self.replicas.store(
            i64::try_from(replicas).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        self.after_failover();
        Ok(())
    }

    /// Whether the primary holding `name` had a replica when last asked
    /// (unknown: yes).
    fn has_replica(&self, name: &str) -> bool {
        self.link
            .key_has_replica(name)
            .unwrap_or_else(|| self.replicas.load(Ordering::Relaxed) != 0)
    }

    /// Reads the topology again in the background, at most once a second:
    /// after a marker went unreplicated, to see replicas leave and return.
    fn refresh_soon(&self) {
        let now = millis(self.epoch.elapsed());
        let last = self.topology_read.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000
            || self
                .topology_read
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let _ = store.refresh_topology().await;
        });
    }

    /// What the store knows about its deployment now.
    pub fn topology(&self) -> Topology {
        let known = |v: i64| u64::try_from(v).ok();
        let (failovers, last_failover) = self.link.failovers();
        Topology {
            kind: self.kind,
            master: self.link.master().unwrap_or_default(),
            replicas: known(self.replicas.load(Ordering::Relaxed)),
            replicas_acked: known(self.replicas_acked.load(Ordering::Relaxed)),
            wait_replicas: self.wait.replicas,
            unreplicated: self.unreplicated.load(Ordering::Relaxed),
            failovers,
            last_failover,
        }
    }

    pub(super) async fn claim(
        &self,
        key: &Key,
        in_flight_ttl: Duration,
    ) -> Result<Claim, StoreError> {
        if self.known_delivered(key) {
            return Ok(Claim::Delivered);
        }
        // Find the master first: a new one's maxmemory-policy is read
        // before it is trusted with a claim.
        self.link
            .conn(Lane::Claims)
            .await
            .map_err(|e| self.err(e))?;
        self.after_failover();
        let now = millis(self.epoch.elapsed());
        let read = self.policy_read.load(Ordering::Relaxed);
        if self.policy.load(Ordering::Relaxed) == POLICY_UNCHECKED {
            // First contact (Redis was down at start), or a new master:
            // read the policy before trusting the store with anything.
            self.check_policy().await?;
            self.check_persistence_later();
        } else if now.saturating_sub(read) >= millis(POLICY_RECHECK)
            && self
                .policy_read
                .compare_exchange(read, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // One request in 30 s reads it again; an unreachable Redis
            // fails the claim below anyway.
            match self.check_policy().await {
                Ok(()) | Err(StoreError::Evicting { .. }) => self.check_persistence_later(),
                Err(e) => return Err(e),
            }
        }
        if let Some(policy) = self.evicting() {
            return Err(StoreError::Evicting {
                store: self.shown.to_string(),
                policy,
            });
        }
        let token_id = self.next_token.fetch_add(1, Ordering::Relaxed);
        let name = self.name(key);
        let value = self.value(Token {
            id: token_id,
            attempt: 0,
        });
        let attempts_ttl = millis(Duration::from_millis(
            self.attempts_ttl.load(Ordering::Relaxed),
        ));
        let scripts = self.scripts.clone();
        let (sent_name, sent_value) = (name.clone(), value.clone());
        let answer: redis::Value = match self
            .run_unanswered(Lane::Claims, |mut c| async move {
                scripts
                    .claim
                    .key(&name)
                    .key(attempts_key(&name))
                    .arg(value)
                    .arg(millis(in_flight_ttl))
                    .arg(attempts_ttl)
                    .invoke_async(&mut c)
                    .await
            })
            .await
        {
            Ok(answer) => answer,
            Err((e, unanswered)) => {
                if unanswered {
                    self.undo_claim_later(sent_name, sent_value, in_flight_ttl);
                }
                return Err(e);
            }
        };
        let claim = match answer {
            redis::Value::Int(n) => Claim::New(Token {
                id: token_id,
                attempt: u32::try_from(n).unwrap_or(u32::MAX),
            }),
            redis::Value::BulkString(v) if v == b"d" => Claim::Delivered,
            redis::Value::SimpleString(v) if v == "d" => Claim::Delivered,
            // In flight, or a nonce that happens to share the key: not ours.
            _ => Claim::InFlight,
        };
        if matches!(claim, Claim::Delivered) {
            // Its remaining TTL is unknown: kept as long as a delivery of
            // ours would be.
            self.learn_delivered(key, Duration::from_millis(attempts_ttl));
        }
        Ok(claim)
    }

    pub(super) async fn renew(
        &self,
        key: &Key,
        token: Token,
        in_flight_ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (name, value, scripts) = (self.name(key), self.value(token), self.scripts.clone());
        let renewed: i64 = self
            .run(Lane::Claims, |mut c| async move {
                scripts
                    .renew
                    .key(&name)
                    .arg(value)
                    .arg(millis(in_flight_ttl))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(renewed == 1)
    }

    /// Records the delivery; with [`WaitFor::replicas`] above 0, in one
    /// round trip with `WAIT` on the confirm lane. A marker fewer replicas
    /// acknowledged is still a delivery (the shop has the event: answering
    /// the platform with a failure would only make it send the event
    /// again); it is counted and written again after the next failover.
    pub(super) async fn confirm(
        &self,
        key: &Key,
        token: Token,
        ttl: Duration,
    ) -> Result<Confirmed, StoreError> {
        self.after_failover();
        let (name, value, scripts) = (self.name(key), self.value(token), self.scripts.clone());
        let replicas = self.wait.replicas;
        let found: i64 = if replicas == 0 || !self.has_replica(&name) {
            let found = self
                .run(Lane::Claims, |mut c| async move {
                    scripts
                        .confirm
                        .key(&name)
                        .key(attempts_key(&name))
                        .arg(value)
                        .arg(millis(ttl))
                        .arg(receipt_ms(ttl))
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            if replicas > 0 {
                // No replica to wait for: a WAIT would only block this lane
                // for its whole timeout. Counted, kept for re-assertion, and
                // the topology read again (at most once a second) to see one
                // return.
                self.replicas_acked.store(0, Ordering::Relaxed);
                self.unreplicated.fetch_add(1, Ordering::Relaxed);
                self.keep_for_reassert(self.name(key), millis(ttl));
                self.refresh_soon();
            }
            found
        } else {
            let wait = self.wait;
            let marker = name.clone();
            let (found, acked): (i64, i64) = self
                .run(Lane::Confirms, |mut c| async move {
                    redis::pipe()
                        .cmd("EVAL")
                        .arg(&scripts.confirm_text)
                        .arg(2)
                        .arg(&marker)
                        .arg(attempts_key(&marker))
                        .arg(value)
                        .arg(millis(ttl))
                        .arg(receipt_ms(ttl))
                        .cmd("WAIT")
                        .arg(wait.replicas)
                        .arg(millis(wait.timeout))
                        .query_async(&mut c)
                        .await
                })
                .await?;
            self.replicas_acked.store(acked, Ordering::Relaxed);
            if acked < i64::from(wait.replicas) {
                self.unreplicated.fetch_add(1, Ordering::Relaxed);
                self.keep_for_reassert(self.name(key), millis(ttl));
                self.refresh_soon();
            }
            found
        };
        Ok(match found {
            1 => Confirmed::Held,
            2 => Confirmed::Lapsed,
            _ => Confirmed::Taken,
        })
    }

    pub(super) async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        let (name, value, scripts) = (self.name(key), self.value(token), self.scripts.clone());
        let _: i64 = self
            .run(Lane::Claims, |mut c| async move {
                scripts
                    .release
                    .key(&name)
                    .arg(value)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    pub(super) async fn record_delivered(
        &self,
        key: &Key,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let name = self.name(key);
        let () = self
            .run(Lane::Claims, |mut c| async move {
                redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(&name)
                    .arg("d")
                    .arg("PX")
                    .arg(millis(ttl))
                    .ignore()
                    .cmd("DEL")
                    .arg(attempts_key(&name))
                    .ignore()
                    .query_async(&mut c)
                    .await
            })
            .await?;
        self.learn_delivered(key, ttl);
        Ok(())
    }

    pub(super) async fn remember(&self, key: &Key, ttl: Duration) -> Result<bool, StoreError> {
        let name = self.name(key);
        let set: Option<String> = self
            .run(Lane::Claims, |mut c| async move {
                redis::cmd("SET")
                    .arg(&name)
                    .arg("n")
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    pub(super) async fn forget(&self, key: &Key) -> Result<(), StoreError> {
        let (name, scripts) = (self.name(key), self.scripts.clone());
        let _: i64 = self
            .run(Lane::Claims, |mut c| async move {
                scripts.forget.key(&name).invoke_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self
            .run(Lane::Claims, |mut c| async move {
                redis::cmd("PING").query_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    /// Keys held: the database's size (a cluster's, summed over primaries).
    pub(super) async fn entries(&self) -> Result<u64, StoreError> {
        self.run(Lane::Claims, |mut c| async move {
            redis::cmd("DBSIZE").query_async(&mut c).await
        })
        .await
    }
}

/// Hashes a key digest (already the leading bytes of a SHA-256) by
/// folding it to 64 bits, where SipHash would cost more than the lookup.
#[derive(Clone, Copy, Default)]
pub struct DigestHash;

impl std::hash::BuildHasher for DigestHash {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

/// See [`DigestHash`].
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used for `u128` keys; any input still hashes.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
}

/// How long a confirm's receipt is kept: outlasts the retries of a confirm
/// whose answer never came (they pause at most 5 s, and the first one
/// after the server answers again finds the receipt), never the marker
/// (a claim would count attempts on it).
fn receipt_ms(ttl: Duration) -> u64 {
    millis(ttl).min(60_000)
}

/// Whether an `INFO persistence` answer says the append-only file is off
/// (a server without the field says nothing).
fn aof_disabled(info: &str) -> bool {
    info.lines()
        .find_map(|l| l.strip_prefix("aof_enabled:"))
        .is_some_and(|v| v.trim() == "0")
}

/// The start-up warning about `store` keeping no append-only file. With
/// `WAIT` for replicas the markers survive the node's loss when a replica
/// takes over, not its restart: a master that comes back empty before a
/// failover is copied by its replicas (Redis's replication docs, "master
/// with persistence turned off").
fn no_aof_warning(store: &str, waits_for_replicas: bool) -> String {
    let restart = if waits_for_replicas {
        "a replica that takes over from it keeps the deliveries, but a restart of it before a failover (its replicas then copy what it comes back with), or of every node, forgets"
    } else {
        "a Redis restart forgets"
    };
    format!(
        "replay store {store} keeps no append-only file (aof_enabled:0): {restart} the deliveries made since its last snapshot (every one, with no save points), and the platforms' retries of those reach the shop again as X-Callgate-Attempt: 1; set appendonly yes"
    )
}

/// Where an event's attempt count lives next to its key.
fn attempts_key(event_key: &str) -> String {
    format!("{event_key}:at")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_aof_enabled_of_0_is_no_append_only_file() {
        let info = "# Persistence\r\nloading:0\r\naof_enabled:0\r\naof_rewrite_in_progress:0\r\n";
        assert!(aof_disabled(info));
        assert!(!aof_disabled(
            &info.replace("aof_enabled:0", "aof_enabled:1")
        ));
        // A Redis-compatible server without the field: nothing known.
        assert!(!aof_disabled("# Persistence\r\nloading:0\r\n"));
    }

    #[tokio::test]
    async fn a_node_without_aof_is_warned_about_once_per_change() {
        let store = RedisStore::new(
            "redis://:pw@127.0.0.1:1/0",
            Duration::from_millis(100),
            None,
        )
        .unwrap();
        let info = |aof: u8| format!("# Persistence\r\naof_enabled:{aof}\r\n");
        let one = |aof: u8| vec![(String::new(), info(aof))];
        let shown = "redis://:***@127.0.0.1:1/0";
        assert_eq!(store.newly_without_aof(&one(0)), [shown]);
        // The 30 s rechecks that find it unchanged say nothing.
        assert!(store.newly_without_aof(&one(0)).is_empty());
        assert!(store.newly_without_aof(&one(1)).is_empty());
        assert_eq!(store.newly_without_aof(&one(0)), [shown]);
        // A server that cannot say is nothing to warn about.
        assert!(
            store
                .newly_without_aof(&[(String::new(), String::new())])
                .is_empty()
        );
        // A cluster: each primary without one, by address.
        let nodes = vec![
            ("10.0.0.7:6379".to_owned(), info(0)),
            ("10.0.0.6:6379".to_owned(), info(1)),
            ("10.0.0.5:6379".to_owned(), info(0)),
        ];
        assert_eq!(
            store.newly_without_aof(&nodes),
            [
                format!("{shown} (node 10.0.0.5:6379)"),
                format!("{shown} (node 10.0.0.7:6379)")
            ]
        );
    }

    #[test]
    fn the_warning_names_the_store_and_the_fix() {
        let plain = no_aof_warning("redis://127.0.0.1:6379/0", false);
        assert_eq!(
            plain,
            "replay store redis://127.0.0.1:6379/0 keeps no append-only file (aof_enabled:0): a Redis restart forgets the deliveries made since its last snapshot (every one, with no save points), and the platforms' retries of those reach the shop again as X-Callgate-Attempt: 1; set appendonly yes"
        );
        let waits = no_aof_warning("sentinel master `m` via a:1 (node b:2)", true);
        assert!(waits.contains("before a failover"), "{waits}");
        assert!(waits.ends_with("; set appendonly yes"), "{waits}");
    }
}
