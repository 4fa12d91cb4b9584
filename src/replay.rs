//! Freshness and replay: the seventh step of the flow.
//!
//! [`check_fresh`] bounds the notification's own signed time: older than the
//! route's `max_age`, or further in the future than its `max_future`, is
//! `Stale` (401).
//!
//! [`ReplayStore`] remembers events per route. [`ReplayStore::claim`] is
//! atomic: the first request for an event gets [`Claim::New`] and a token;
//! while it is being forwarded, the same event gets [`Claim::InFlight`]
//! (409); once [`ReplayStore::confirm`] recorded the upstream's success, the
//! event is [`Claim::Delivered`] for `ttl` and is acknowledged without being
//! forwarded again. A failed delivery calls [`ReplayStore::release`], so the
//! platform's retry is forwarded again. An in-flight claim also expires by
//! itself, so a lost release cannot wedge an event. The flow holds its claim
//! as a [`ClaimGuard`] (`replay/guard.rs`): renewed right before the
//! forward, released on drop unless settled.
//!
//! Every claim counts an attempt ([`Token::attempt`]): 1 the first time, one
//! more for each earlier claim of the event that ended without a recorded
//! delivery. The shop sees it as `X-Callgate-Attempt`.
//!
//! Keys are the first 16 bytes of SHA-256 over (route, kind, merchant, id):
//! fixed size whatever the id, namespaced per route and per merchant, so two
//! merchants of one route whose events share an id (JD's `tradeNum` is the
//! merchant's own order number) never shadow each other. The memory store
//! ([`MemoryStore`], `replay/memory.rs`) is a sharded map bounded by
//! `max_entries` and per-route quotas; when full it refuses new work
//! ([`StoreError::Full`]) rather than forget anything early. Redis must run
//! with `maxmemory-policy noeviction` ([`StoreError::Evicting`]). A route
//! that forwards while the store is down keeps what it delivered in a
//! [`Backlog`] until the store can record it.

mod backlog;
mod guard;
mod memory;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

pub use backlog::Backlog;
pub use guard::{ClaimGuard, Claimed};
pub use memory::{MemoryStore, RouteUsage};

use crate::provider::Verified;
use crate::secret::redact_url;

// === freshness ===

/// Why a signed time is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreshError {
    #[error("signed time is {age}s old, above max_age {max}s")]
    TooOld { age: i64, max: u64 },
    #[error("signed time is {ahead}s in the future, above the {max}s allowed")]
    InFuture { ahead: i64, max: u64 },
}

impl FreshError {
    /// The `reason` label of `callgate_rejections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            FreshError::TooOld { .. } => "stale",
            FreshError::InFuture { .. } => "future",
        }
    }
}

/// Checks `verified`'s signed time against `now` (Unix seconds).
pub fn check_fresh(
    verified: &Verified,
    max_age: Duration,
    max_future: Duration,
    now: i64,
) -> Result<(), FreshError> {
    let age = now.saturating_sub(verified.signed_at());
    if age > secs(max_age) {
        return Err(FreshError::TooOld {
            age,
            max: max_age.as_secs(),
        });
    }
    if -age > secs(max_future) {
        return Err(FreshError::InFuture {
            ahead: -age,
            max: max_future.as_secs(),
        });
    }
    Ok(())
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

// === keys ===

/// What a remembered key stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Event,
    Nonce,
}

impl KeyKind {
    fn tag(self) -> &'static str {
        match self {
            KeyKind::Event => "ev",
            KeyKind::Nonce => "nc",
        }
    }
}

/// A route-namespaced key. The digest (first 16 bytes of SHA-256 over
/// route, kind, merchant and id, each delimited) has a fixed size whatever
/// the id; the memory store keys on it alone, Redis on
/// `callgate:<route>:<kind>:<digest>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    route: Arc<str>,
    kind: KeyKind,
    digest: [u8; 16],
}

impl Key {
    /// The key of `id` (an event id or a nonce) of `merchant` on `route`.
    pub fn new(route: &Arc<str>, kind: KeyKind, merchant: &str, id: &str) -> Key {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(route.as_bytes());
        ctx.update(&[0, kind as u8 + 1, 0]);
        // Length-prefixed, so no (merchant, id) pair reads as another.
        ctx.update(
            &u64::try_from(merchant.len())
                .unwrap_or(u64::MAX)
                .to_be_bytes(),
        );
        ctx.update(merchant.as_bytes());
        ctx.update(id.as_bytes());
        let d = ctx.finish();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&d.as_ref()[..16]);
        Key {
            route: route.clone(),
            kind,
            digest,
        }
    }

    /// The key of a verified event on a route.
    pub fn event(route: &Arc<str>, verified: &Verified) -> Key {
        Key::new(
            route,
            KeyKind::Event,
            verified.merchant(),
            verified.event_id(),
        )
    }

    /// The key of a verified notification's signed nonce (wechat_v3).
    pub fn nonce(route: &Arc<str>, verified: &Verified) -> Option<Key> {
        verified
            .nonce()
            .map(|n| Key::new(route, KeyKind::Nonce, verified.merchant(), n))
    }

    pub fn hex(&self) -> String {
        hex::encode(self.digest)
    }

    fn redis(&self) -> String {
        format!("callgate:{}:{}:{}", self.route, self.kind.tag(), self.hex())
    }
}

// === store ===

/// The answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First time: forward it, then `confirm` or `release` with this token.
    New(Token),
    /// Someone is forwarding it right now.
    InFlight,
    /// Delivered before: acknowledge, do not forward.
    Delivered,
}

/// Proof of holding an in-flight claim, and which attempt at delivering
/// the event it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    id: u64,
    attempt: u32,
}

impl Token {
    /// 1 for the first claim of an event; one more for every earlier claim
    /// that did not end in a recorded delivery (a failed forward, or a
    /// crash mid-forward), as far as the store remembers.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// What a confirm found in the store before recording the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// Our claim was still there: the normal case.
    Held,
    /// Our claim had lapsed (or was lost with the store) and nobody else
    /// held the event: recorded, but a copy could have been claimed in
    /// between.
    Lapsed,
    /// Someone else held or had delivered the event: it may have reached
    /// the shop twice. Recorded as delivered all the same.
    Taken,
}

impl Confirmed {
    /// Whether the claim covered the whole delivery.
    pub fn was_held(self) -> bool {
        self == Confirmed::Held
    }
}

/// Why the replay store did not answer as asked; the request fails closed
/// (a route's `on_store_error = "open"` covers [`StoreError::Unavailable`]
/// only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("replay store unavailable: {0}")]
    Unavailable(String),
    #[error(
        "replay store full: {held} of {bound} entries held ({which}) and none has lapsed; \
         raise replay.max_entries or the route's replay_quota"
    )]
    Full {
        /// `replay.max_entries`, or `route quota`.
        which: &'static str,
        held: usize,
        bound: usize,
    },
    #[error(
        "Redis {store} has maxmemory-policy {policy}, which evicts keys (claims and delivered events) \
         when memory runs out: set maxmemory-policy noeviction"
    )]
    Evicting { store: String, policy: String },
}

impl StoreError {
    /// The `reason` label of `callgate_rejections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "store_unavailable",
            StoreError::Full { .. } => "store_full",
            StoreError::Evicting { .. } => "store_evicting",
        }
    }
}

impl From<memory::Full> for StoreError {
    fn from(f: memory::Full) -> StoreError {
        StoreError::Full {
            which: match f.limit {
                memory::FullLimit::Store => "replay.max_entries",
                memory::FullLimit::Route => "route quota",
            },
            held: f.held,
            bound: f.bound,
        }
    }
}

/// Where event ids and nonces are remembered.
#[derive(Clone)]
pub enum ReplayStore {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl ReplayStore {
    pub fn memory(max_entries: u64) -> ReplayStore {
        ReplayStore::Memory(MemoryStore::new(max_entries))
    }

    /// Claims `key` for forwarding; an unconfirmed claim lapses after
    /// `in_flight_ttl`.
    pub async fn claim(&self, key: &Key, in_flight_ttl: Duration) -> Result<Claim, StoreError> {
        match self {
            ReplayStore::Memory(m) => Ok(m.claim(key, in_flight_ttl)?),
            ReplayStore::Redis(r) => r.claim(key, in_flight_ttl).await,
        }
    }

    /// Extends our claim by `in_flight_ttl` from now; `false` when someone
    /// else holds the event or it was delivered meanwhile.
    pub async fn renew(
        &self,
        key: &Key,
        token: Token,
        in_flight_ttl: Duration,
    ) -> Result<bool, StoreError> {
        match self {
            ReplayStore::Memory(m) => Ok(m.renew(key, token, in_flight_ttl)),
            ReplayStore::Redis(r) => r.renew(key, token, in_flight_ttl).await,
        }
    }

    /// Records a successful delivery, remembered for `ttl`, and says
    /// whether our claim was still there.
    pub async fn confirm(
        &self,
        key: &Key,
        token: Token,
        ttl: Duration,
    ) -> Result<Confirmed, StoreError> {
        match self {
            ReplayStore::Memory(m) => Ok(m.confirm(key, token, ttl)),
            ReplayStore::Redis(r) => r.confirm(key, token, ttl).await,
        }
    }

    /// Gives an unsuccessful claim back, so the next delivery is forwarded.
    pub async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        match self {
            ReplayStore::Memory(m) => {
                m.release(key, token);
                Ok(())
            }
            ReplayStore::Redis(r) => r.release(key, token).await,
        }
    }

    /// Records a delivery made without a claim (the store was down and the
    /// route is `on_store_error = "open"`), remembered for `ttl`.
    pub async fn record_delivered(&self, key: &Key, ttl: Duration) -> Result<(), StoreError> {
        match self {
            ReplayStore::Memory(m) => {
                m.warm(key, ttl);
                Ok(())
            }
            ReplayStore::Redis(r) => r.record_delivered(key, ttl).await,
        }
    }

    /// Remembers a nonce for `ttl`; `false` if it was already there.
    pub async fn remember(&self, key: &Key, ttl: Duration) -> Result<bool, StoreError> {
        match self {
            ReplayStore::Memory(m) => Ok(m.remember(key, ttl)?),
            ReplayStore::Redis(r) => r.remember(key, ttl).await,
        }
    }

    /// Forgets a remembered nonce (its notification was not delivered).
    /// Never removes an event's claim or delivery record.
    pub async fn forget(&self, key: &Key) -> Result<(), StoreError> {
        match self {
            ReplayStore::Memory(m) => {
                m.forget(key);
                Ok(())
            }
            ReplayStore::Redis(r) => r.forget(key).await,
        }
    }

    /// Whether the store answers and can be trusted to keep what it is
    /// told (for `/readyz`): Redis is asked for its `maxmemory-policy`
    /// again.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            ReplayStore::Memory(_) => Ok(()),
            ReplayStore::Redis(r) => {
                r.ping().await?;
                r.check_policy().await
            }
        }
    }

    /// Number of remembered entries (Redis: the size of its database).
    pub async fn entries(&self) -> Result<u64, StoreError> {
        match self {
            ReplayStore::Memory(m) => Ok(m.entries()),
            ReplayStore::Redis(r) => r.entries().await,
        }
    }

    /// Remembers an event as delivered for `ttl` without a claim (journal
    /// warm-up at start).
    pub fn warm(&self, key: &Key, ttl: Duration) {
        if let ReplayStore::Memory(m) = self {
            m.warm(key, ttl);
        }
    }

    /// Remembers that an undelivered event was already sent `attempts`
    /// times (journal warm-up at start), for `ttl`.
    pub fn warm_attempts(&self, key: &Key, attempts: u32, ttl: Duration) {
        if let ReplayStore::Memory(m) = self {
            m.warm_attempts(key, attempts, ttl);
        }
    }

    /// Sets the per-route quotas of the memory store from the routes' own
    /// `replay_quota`s, `(route, quota)` (Redis is bounded by its own
    /// `maxmemory`).
    pub fn set_quotas(&self, quotas: &[(Arc<str>, Option<usize>)]) {
        if let ReplayStore::Memory(m) = self {
            m.set_quotas(&route_quotas(quotas, m.max_entries()));
        }
    }

    /// Whether Redis's `maxmemory-policy` can evict: `Some(policy)` when it
    /// was found to (memory store: never).
    pub fn evicting(&self) -> Option<String> {
        match self {
            ReplayStore::Memory(_) => None,
            ReplayStore::Redis(r) => r.evicting(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ReplayStore::Memory(_) => "memory",
            ReplayStore::Redis(_) => "redis",
        }
    }
}

/// Each route's share of the memory store: its `replay_quota` when set,
/// else an equal share of what the routes with a quota leave of
/// `max_entries` (at least 1). The quotas never add up to more than
/// `max_entries`, so a route under its quota always finds room once lapsed
/// slots are swept (`callgate check` refuses quotas that add up to more).
pub fn route_quotas(
    quotas: &[(Arc<str>, Option<usize>)],
    max_entries: usize,
) -> Vec<(Arc<str>, usize)> {
    let fixed: usize = quotas
        .iter()
        .filter_map(|(_, q)| *q)
        .fold(0usize, usize::saturating_add);
    let shared = quotas.iter().filter(|(_, q)| q.is_none()).count();
    let share = (max_entries.saturating_sub(fixed) / shared.max(1)).max(1);
    quotas
        .iter()
        .map(|(name, q)| (name.clone(), q.unwrap_or(share)))
        .collect()
}

// === Redis ===

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
/// our claim, 2 when the key was gone, 3 when someone else held it.
const CONFIRM: &str = r"
local v = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
if v == ARGV[1] then return 1 end
if v == false then return 2 end
return 3
";

/// Release: delete only our own in-flight value (the attempt count stays).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
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

/// A Redis (or Redis-compatible) store shared by several gateways. One
/// multiplexed connection per gateway, reconnected in the background after
/// a failure; every command is bounded by the configured timeout. Values:
/// `f:<instance>:<token>` while in flight, `d` once delivered, `n` for a
/// nonce; `<event key>:at` counts an event's claims until it is delivered.
///
/// Redis must never evict these keys: its `maxmemory-policy` is read
/// (`INFO memory`) at start, on every `/readyz`, before the first claim and
/// then at most every [`POLICY_RECHECK`] from the request path; while it is
/// anything but `noeviction` every claim is refused
/// ([`StoreError::Evicting`]).
#[derive(Clone)]
pub struct RedisStore {
    conn: redis::aio::ConnectionManager,
    claim: Arc<redis::Script>,
    renew: Arc<redis::Script>,
    confirm: Arc<redis::Script>,
    release: Arc<redis::Script>,
    forget: Arc<redis::Script>,
    instance: Arc<str>,
    next_token: Arc<AtomicU64>,
    /// The URL without its password, for messages.
    shown: Arc<str>,
    /// The last `maxmemory-policy` read: an index into [`EVICTING`],
    /// [`POLICY_SAFE`] or [`POLICY_UNCHECKED`].
    policy: Arc<AtomicU8>,
    /// How long an event's attempt count is kept (`replay.ttl`).
    attempts_ttl: Arc<AtomicU64>,
    /// When the policy was last read, in milliseconds since `epoch`.
    policy_read: Arc<AtomicU64>,
    epoch: std::time::Instant,
}

impl RedisStore {
    /// Prepares the store without connecting: a gateway starts (and fails
    /// closed) while Redis is down, and recovers when it returns.
    pub fn new(
        url: &str,
        timeout: Duration,
        tls_ca: Option<&[u8]>,
    ) -> Result<RedisStore, StoreError> {
        let client = match tls_ca {
            None => redis::Client::open(url),
            Some(pem) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            ),
        }
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", redact_url(url))))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut id = [0u8; 6];
        let _ = aws_lc_rs::rand::fill(&mut id);
        Ok(RedisStore {
            conn,
            claim: Arc::new(redis::Script::new(CLAIM)),
            renew: Arc::new(redis::Script::new(RENEW)),
            confirm: Arc::new(redis::Script::new(CONFIRM)),
            release: Arc::new(redis::Script::new(RELEASE)),
            forget: Arc::new(redis::Script::new(FORGET)),
            instance: hex::encode(id).into(),
            next_token: Arc::new(AtomicU64::new(1)),
            shown: redact_url(url).into(),
            policy: Arc::new(AtomicU8::new(POLICY_UNCHECKED)),
            attempts_ttl: Arc::new(AtomicU64::new(48 * 3600 * 1000)),
            policy_read: Arc::new(AtomicU64::new(0)),
            epoch: std::time::Instant::now(),
        })
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

    /// Reads `maxmemory-policy` and remembers it. `Err(Evicting)` when it
    /// can evict; an unreachable Redis is `Err(Unavailable)` and leaves
    /// what was known.
    pub async fn check_policy(&self) -> Result<(), StoreError> {
        self.policy_read
            .store(millis(self.epoch.elapsed()), Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        let policy = info
            .lines()
            .find_map(|l| l.strip_prefix("maxmemory_policy:"))
            .map(str::trim);
        let state = match policy {
            Some("noeviction") => POLICY_SAFE,
            Some(p) => EVICTING
                .iter()
                .position(|e| *e == p)
                .unwrap_or(EVICTING.len() - 1) as u8,
            // INFO without the field: not a Redis we can vouch for.
            None => (EVICTING.len() - 1) as u8,
        };
        self.policy.store(state, Ordering::Relaxed);
        match self.evicting() {
            None => Ok(()),
            Some(policy) => Err(StoreError::Evicting {
                store: self.shown.to_string(),
                policy,
            }),
        }
    }

    /// The evicting policy last read, if any.
    pub fn evicting(&self) -> Option<String> {
        let state = self.policy.load(Ordering::Relaxed);
        EVICTING.get(usize::from(state)).map(|p| (*p).to_owned())
    }

    async fn claim(&self, key: &Key, in_flight_ttl: Duration) -> Result<Claim, StoreError> {
        let now = millis(self.epoch.elapsed());
        let read = self.policy_read.load(Ordering::Relaxed);
        if self.policy.load(Ordering::Relaxed) == POLICY_UNCHECKED {
            // First contact (Redis was down at start): read the policy
            // before trusting the store with anything.
            self.check_policy().await?;
        } else if now.saturating_sub(read) >= millis(POLICY_RECHECK)
            && self
                .policy_read
                .compare_exchange(read, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // One request in 30 s reads it again; an unreachable Redis
            // fails the claim below anyway.
            match self.check_policy().await {
                Ok(()) | Err(StoreError::Evicting { .. }) => {}
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
        let mut conn = self.conn.clone();
        let redis_key = key.redis();
        let answer: redis::Value = self
            .claim
            .key(&redis_key)
            .key(attempts_key(&redis_key))
            .arg(self.value(Token {
                id: token_id,
                attempt: 0,
            }))
            .arg(millis(in_flight_ttl))
            .arg(millis(Duration::from_millis(
                self.attempts_ttl.load(Ordering::Relaxed),
            )))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(match answer {
            redis::Value::Int(n) => Claim::New(Token {
                id: token_id,
                attempt: u32::try_from(n).unwrap_or(u32::MAX),
            }),
            redis::Value::BulkString(v) if v == b"d" => Claim::Delivered,
            redis::Value::SimpleString(v) if v == "d" => Claim::Delivered,
            // In flight, or a nonce that happens to share the key: not ours.
            _ => Claim::InFlight,
        })
    }

    async fn renew(
        &self,
        key: &Key,
        token: Token,
        in_flight_ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let renewed: i64 = self
            .renew
            .key(key.redis())
            .arg(self.value(token))
            .arg(millis(in_flight_ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(renewed == 1)
    }

    async fn confirm(
        &self,
        key: &Key,
        token: Token,
        ttl: Duration,
    ) -> Result<Confirmed, StoreError> {
        let mut conn = self.conn.clone();
        let redis_key = key.redis();
        let found: i64 = self
            .confirm
            .key(&redis_key)
            .key(attempts_key(&redis_key))
            .arg(self.value(token))
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(match found {
            1 => Confirmed::Held,
            2 => Confirmed::Lapsed,
            _ => Confirmed::Taken,
        })
    }

    async fn release(&self, key: &Key, token: Token) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .release
            .key(key.redis())
            .arg(self.value(token))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn record_delivered(&self, key: &Key, ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let redis_key = key.redis();
        let _: () = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&redis_key)
            .arg("d")
            .arg("PX")
            .arg(millis(ttl))
            .ignore()
            .cmd("DEL")
            .arg(attempts_key(&redis_key))
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn remember(&self, key: &Key, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(key.redis())
            .arg("n")
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(set.is_some())
    }

    async fn forget(&self, key: &Key) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .forget
            .key(key.redis())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn entries(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("DBSIZE")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e))
    }
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

    const IN_FLIGHT: Duration = Duration::from_secs(60);
    const TTL: Duration = Duration::from_secs(3600);

    fn route(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    fn key(id: &str) -> Key {
        Key::new(&route("route"), KeyKind::Event, "m", id)
    }

    #[tokio::test]
    async fn claim_confirm_and_duplicate() {
        let s = ReplayStore::memory(100);
        let Claim::New(t) = s.claim(&key("a"), IN_FLIGHT).await.unwrap() else {
            panic!("first claim must be new")
        };
        assert_eq!(
            s.claim(&key("a"), IN_FLIGHT).await.unwrap(),
            Claim::InFlight
        );
        s.confirm(&key("a"), t, TTL).await.unwrap();
        assert_eq!(
            s.claim(&key("a"), IN_FLIGHT).await.unwrap(),
            Claim::Delivered
        );
        // Other ids and other routes are independent.
        assert!(matches!(
            s.claim(&key("b"), IN_FLIGHT).await.unwrap(),
            Claim::New(_)
        ));
        let other_route = Key::new(&route("other"), KeyKind::Event, "m", "a");
        assert!(matches!(
            s.claim(&other_route, IN_FLIGHT).await.unwrap(),
            Claim::New(_)
        ));
        // Another merchant's event with the same id on the same route.
        let other_merchant = Key::new(&route("route"), KeyKind::Event, "n", "a");
        assert!(matches!(
            s.claim(&other_merchant, IN_FLIGHT).await.unwrap(),
            Claim::New(_)
        ));
        let other_route = Key::new(&route("other"), KeyKind::Event, "m", "b");
        assert!(matches!(
            s.claim(&other_route, IN_FLIGHT).await.unwrap(),
            Claim::New(_)
        ));
    }

    #[tokio::test]
    async fn release_lets_the_retry_through() {
        let s = ReplayStore::memory(100);
        let Claim::New(t) = s.claim(&key("a"), IN_FLIGHT).await.unwrap() else {
            panic!()
        };
        s.release(&key("a"), t).await.unwrap();
        assert!(matches!(
            s.claim(&key("a"), IN_FLIGHT).await.unwrap(),
            Claim::New(_)
        ));
    }

    #[tokio::test]
    async fn a_stale_token_cannot_release_someone_elses_claim() {
        let s = ReplayStore::memory(100);
        let Claim::New(old) = s.claim(&key("a"), IN_FLIGHT).await.unwrap() else {
            panic!()
        };
        s.release(&key("a"), old).await.unwrap();
        let Claim::New(_new) = s.claim(&key("a"), IN_FLIGHT).await.unwrap() else {
            panic!()
        };
        s.release(&key("a"), old).await.unwrap();
        assert_eq!(
            s.claim(&key("a"), IN_FLIGHT).await.unwrap(),
            Claim::InFlight
        );
    }

    #[tokio::test]
    async fn concurrent_claims_give_exactly_one_new() {
        let s = ReplayStore::memory(100);
        let mut handles = Vec::new();
        for _ in 0..32 {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                s.claim(&key("x"), IN_FLIGHT).await.unwrap()
            }));
        }
        let mut new = 0;
        for h in handles {
            if matches!(h.await.unwrap(), Claim::New(_)) {
                new += 1;
            }
        }
        assert_eq!(new, 1);
    }

    #[tokio::test]
    async fn nonces_are_remembered_once_until_forgotten() {
        let s = ReplayStore::memory(100);
        let n = Key::new(&route("route"), KeyKind::Nonce, "m", "abc");
        assert!(s.remember(&n, TTL).await.unwrap());
        assert!(!s.remember(&n, TTL).await.unwrap());
        s.forget(&n).await.unwrap();
        assert!(s.remember(&n, TTL).await.unwrap());
        // Forgetting never touches an event's claim.
        let e = key("abc");
        let Claim::New(_) = s.claim(&e, IN_FLIGHT).await.unwrap() else {
            panic!()
        };
        s.forget(&e).await.unwrap();
        assert_eq!(s.claim(&e, IN_FLIGHT).await.unwrap(), Claim::InFlight);
    }

    #[tokio::test]
    async fn warmed_events_are_duplicates() {
        let s = ReplayStore::memory(100);
        s.warm(&key("w"), TTL);
        assert_eq!(
            s.claim(&key("w"), IN_FLIGHT).await.unwrap(),
            Claim::Delivered
        );
    }

    #[test]
    fn store_is_bounded() {
        let m = MemoryStore::new(1000);
        let refused = (0..20_000)
            .filter(|i| {
                m.remember(
                    &Key::new(&route("r"), KeyKind::Nonce, "m", &i.to_string()),
                    TTL,
                )
                .is_err()
            })
            .count();
        assert_eq!(m.entries(), 1000);
        assert_eq!(refused, 19_000, "refused, never made room for");
    }

    #[test]
    fn keys_are_namespaced() {
        let (a, b, ab) = (route("a"), route("b"), route("ab"));
        let d = |r: &Arc<str>, k, id| Key::new(r, k, "m", id).digest;
        assert_ne!(d(&a, KeyKind::Event, "1"), d(&a, KeyKind::Nonce, "1"));
        assert_ne!(d(&a, KeyKind::Event, "1"), d(&b, KeyKind::Event, "1"));
        assert_ne!(d(&ab, KeyKind::Event, "c"), d(&a, KeyKind::Event, "bc"));
        // Merchants are namespaces too, and a merchant never runs into its id.
        let m = |merchant, id| Key::new(&a, KeyKind::Event, merchant, id).digest;
        assert_ne!(m("m1", "1"), m("m2", "1"));
        assert_ne!(m("m1", "23"), m("m12", "3"));
        assert_ne!(m("", "m1"), m("m1", ""));
        let k = Key::new(&a, KeyKind::Event, "m", "1");
        assert_eq!(k.redis(), format!("callgate:a:ev:{}", k.hex()));
    }
}
