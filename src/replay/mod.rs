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
//! Keys are the first 16 bytes of SHA-256 over (replay namespace, kind,
//! merchant, id): fixed size whatever the id, namespaced per route and per
//! merchant, so two merchants of one route whose events share an id (JD's
//! `tradeNum` is the merchant's own order number) never shadow each other.
//! A route's replay namespace is its `replay_namespace`, by default its
//! name: a route renamed with `replay_namespace = "<old name>"` keeps
//! knowing what it delivered, and two routes that set one namespace share
//! their events. The flow builds keys from a `Verified` only ([`Key`]).
//!
//! This file is the claim protocol and the dispatch over the two stores,
//! one file each: the memory store ([`MemoryStore`], `replay/memory.rs`), a
//! sharded map bounded by `max_entries` and per-route quotas, which when
//! full refuses new work ([`StoreError::Full`]) rather than forget anything
//! early; and Redis ([`RedisStore`], `replay/redis.rs`), which must run with
//! `maxmemory-policy noeviction` ([`StoreError::Evicting`]). A route that
//! forwards while the store is down keeps what it delivered in a
//! [`Backlog`] (`replay/backlog.rs`) until the store can record it.

mod backlog;
mod guard;
mod link;
mod memory;
mod redis;
mod sentinel;

use std::sync::Arc;
use std::time::Duration;

pub use backlog::Backlog;
pub use guard::ClaimGuard;
pub use link::{
    Auth, ClusterTarget, RedisTarget, SentinelTarget, WorkerConnections, use_worker_connections,
};
pub use memory::{MemoryStore, RouteUsage};
pub use redis::{POLICY_RECHECK, RedisStore, Topology, WaitFor};
pub use sentinel::FENCE_LIMIT;

use crate::provider::Verified;

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
enum KeyKind {
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

/// A namespaced key. The digest (first 16 bytes of SHA-256 over the
/// route's replay namespace, kind, merchant and id, each delimited) has a
/// fixed size whatever the id; the memory store keys on it alone, Redis on
/// `callgate:<namespace>:<kind>:<digest>`. A route's namespace is its name
/// unless it sets `replay_namespace`, so the digests and Redis names of a
/// route without it are those of every earlier version. `route` (the
/// route's name) only says whose share of the memory store the key takes.
///
/// The flow's keys come from a [`Verified`] only ([`Key::event`],
/// [`Key::nonce`]), so nothing unverified can be claimed or remembered.
/// [`Key::recorded`] and [`Key::journaled`] name an event the journal
/// recorded: it was verified when it arrived, and start-up uses the key to
/// mark it delivered (benches time the store with it).
/// Most bytes a key's pieces are joined into on the stack before hashing.
const JOINED: usize = 192;

/// SHA-256 of `pieces` one after another. Joined first when they fit in
/// [`JOINED`] bytes, as a key's do: each `update` goes through aws-lc's
/// EVP layer, and five of them cost about 2,500 instructions of a
/// request's 5,400 for its key; one costs a fifth of that. The same bytes
/// are hashed either way.
fn sha256_of(pieces: &[&[u8]]) -> aws_lc_rs::digest::Digest {
    let mut joined = [0u8; JOINED];
    let mut len = 0;
    for piece in pieces {
        let Some(to) = joined.get_mut(len..len + piece.len()) else {
            return sha256_in_pieces(pieces);
        };
        to.copy_from_slice(piece);
        len += piece.len();
    }
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &joined[..len])
}

/// SHA-256 of `pieces`, each handed to the digest as it is.
fn sha256_in_pieces(pieces: &[&[u8]]) -> aws_lc_rs::digest::Digest {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for piece in pieces {
        ctx.update(piece);
    }
    ctx.finish()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    route: Arc<str>,
    namespace: Arc<str>,
    kind: KeyKind,
    digest: [u8; 16],
}

impl Key {
    /// The key of `id` (an event id or a nonce) of `merchant` in
    /// `namespace`, counted against `route`'s share of the memory store.
    fn new(route: &Arc<str>, namespace: &Arc<str>, kind: KeyKind, merchant: &str, id: &str) -> Key {
        // Length-prefixed, so no (merchant, id) pair reads as another.
        let merchant_len = u64::try_from(merchant.len())
            .unwrap_or(u64::MAX)
            .to_be_bytes();
        let pieces: [&[u8]; 5] = [
            namespace.as_bytes(),
            &[0, kind as u8 + 1, 0],
            &merchant_len,
            merchant.as_bytes(),
            id.as_bytes(),
        ];
        let d = sha256_of(&pieces);
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&d.as_ref()[..16]);
        Key {
            route: route.clone(),
            namespace: namespace.clone(),
            kind,
            digest,
        }
    }

    /// The key of a verified event on the route named `route`, whose replay
    /// namespace is `namespace`.
    pub fn event(route: &Arc<str>, namespace: &Arc<str>, verified: &Verified) -> Key {
        Key::new(
            route,
            namespace,
            KeyKind::Event,
            verified.merchant(),
            verified.event_id(),
        )
    }

    /// The key of a verified notification's signed nonce (wechat_v3).
    pub fn nonce(route: &Arc<str>, namespace: &Arc<str>, verified: &Verified) -> Option<Key> {
        verified
            .nonce()
            .map(|n| Key::new(route, namespace, KeyKind::Nonce, verified.merchant(), n))
    }

    /// The key of event `event_id` of `merchant` on a route whose replay
    /// namespace is its name, `route` (see the type's doc).
    pub fn recorded(route: &Arc<str>, merchant: &str, event_id: &str) -> Key {
        Key::new(route, route, KeyKind::Event, merchant, event_id)
    }

    /// The key of event `event_id` of `merchant` as the journal recorded it
    /// in `namespace`, counted against `route`'s share of the memory store
    /// (see the type's doc).
    pub fn journaled(
        route: &Arc<str>,
        namespace: &Arc<str>,
        merchant: &str,
        event_id: &str,
    ) -> Key {
        Key::new(route, namespace, KeyKind::Event, merchant, event_id)
    }

    pub fn hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// Built by hand: `format!` over `hex::encode` cost about 2,500
    /// instructions a key, twice per forward (benches/load/instructions.py).
    pub(super) fn redis(&self) -> String {
        let mut digits = [0u8; 32];
        // 16 bytes are always 32 digits.
        let _ = hex::encode_to_slice(self.digest, &mut digits);
        let tag = self.kind.tag();
        let mut name = String::with_capacity(11 + self.namespace.len() + tag.len() + digits.len());
        name.push_str("callgate:");
        name.push_str(&self.namespace);
        name.push(':');
        name.push_str(tag);
        name.push(':');
        name.push_str(std::str::from_utf8(&digits).unwrap_or_default());
        name
    }
}

// === store ===

/// The answer to a claim: the store's ([`ReplayStore::claim`], a
/// [`Token`]) or the flow's ([`ClaimGuard::claim`], the guard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim<T = Token> {
    /// Ours, the first time or after a delivery that failed: forward it,
    /// then confirm or release it.
    New(T),
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
            ReplayStore::Redis(r) => {
                let found = r.confirm(key, token, ttl).await;
                if found.is_err() {
                    // The shop has the event, and Redis may lose the claim
                    // (it lapses, a failover drops it) before the record
                    // retried in the background lands: until then a copy
                    // would find the event unclaimed and reach the shop
                    // again. This instance answers its copies itself.
                    r.learn_delivered(key, ttl);
                }
                found
            }
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
                match r.refresh_topology().await {
                    Ok(()) => {}
                    // A plain URL may name a Redis-compatible server or
                    // proxy without ROLE: its topology stays unknown.
                    Err(_) if r.topology().kind == "redis" => {}
                    Err(e) => return Err(e),
                }
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

    /// The Redis deployment as last seen (memory store: none).
    pub fn topology(&self) -> Option<Topology> {
        match self {
            ReplayStore::Memory(_) => None,
            ReplayStore::Redis(r) => Some(r.topology()),
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

#[cfg(test)]
mod tests {
    use super::*;

    const IN_FLIGHT: Duration = Duration::from_secs(60);
    const TTL: Duration = Duration::from_secs(3600);

    fn route(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    fn key(id: &str) -> Key {
        Key::new(&route("route"), &route("route"), KeyKind::Event, "m", id)
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
        let other_route = Key::new(&route("other"), &route("other"), KeyKind::Event, "m", "a");
        assert!(matches!(
            s.claim(&other_route, IN_FLIGHT).await.unwrap(),
            Claim::New(_)
        ));
        // Another merchant's event with the same id on the same route.
        let other_merchant = Key::new(&route("route"), &route("route"), KeyKind::Event, "n", "a");
        assert!(matches!(
            s.claim(&other_merchant, IN_FLIGHT).await.unwrap(),
            Claim::New(_)
        ));
        let other_route = Key::new(&route("other"), &route("other"), KeyKind::Event, "m", "b");
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
        let n = Key::new(&route("route"), &route("route"), KeyKind::Nonce, "m", "abc");
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
                    &Key::new(
                        &route("r"),
                        &route("r"),
                        KeyKind::Nonce,
                        "m",
                        &i.to_string(),
                    ),
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
        let d = |r: &Arc<str>, k, id| Key::new(r, r, k, "m", id).digest;
        assert_ne!(d(&a, KeyKind::Event, "1"), d(&a, KeyKind::Nonce, "1"));
        assert_ne!(d(&a, KeyKind::Event, "1"), d(&b, KeyKind::Event, "1"));
        assert_ne!(d(&ab, KeyKind::Event, "c"), d(&a, KeyKind::Event, "bc"));
        // Merchants are namespaces too, and a merchant never runs into its id.
        let m = |merchant, id| Key::new(&a, &a, KeyKind::Event, merchant, id).digest;
        assert_ne!(m("m1", "1"), m("m2", "1"));
        assert_ne!(m("m1", "23"), m("m12", "3"));
        assert_ne!(m("", "m1"), m("m1", ""));
        let k = Key::new(&a, &a, KeyKind::Event, "m", "1");
        assert_eq!(k.redis(), format!("callgate:a:ev:{}", k.hex()));
        let n = Key::new(
            &route("shop-wechat"),
            &route("shop-wechat"),
            KeyKind::Nonce,
            "m",
            "1",
        );
        assert_eq!(n.redis(), format!("callgate:shop-wechat:nc:{}", n.hex()));
        assert_eq!(n.redis().len(), "callgate:shop-wechat:nc:".len() + 32);
    }

    /// An id too long to be joined on the stack is hashed piece by piece,
    /// to the same digest: Python's `hashlib.sha256(b"shop-alipay" +
    /// b"\0\1\0" + struct.pack(">Q", 16) + b"2088101568358171" +
    /// b"9" * 300).hexdigest()[:32]`; and at the edge of the buffer both
    /// ways agree.
    #[test]
    fn a_long_id_keys_as_a_short_one_would() {
        let name = route("shop-alipay");
        let k = Key::recorded(&name, "2088101568358171", &"9".repeat(300));
        assert_eq!(k.hex(), "391655f057d979b52fab0f63a085a450");
        let fixed = "shop-alipay".len() + 3 + 8 + "2088101568358171".len();
        for id_len in [JOINED - fixed - 1, JOINED - fixed, JOINED - fixed + 1] {
            let id = "7".repeat(id_len);
            let pieces: [&[u8]; 5] = [
                b"shop-alipay",
                &[0, 1, 0],
                &16u64.to_be_bytes(),
                b"2088101568358171",
                id.as_bytes(),
            ];
            assert_eq!(
                sha256_of(&pieces).as_ref(),
                sha256_in_pieces(&pieces).as_ref(),
                "{id_len}"
            );
        }
    }

    /// A route without `replay_namespace` keys exactly as every earlier
    /// version did, so an upgrade forgets nothing: the digest below is
    /// Python's `hashlib.sha256(b"shop-alipay" + b"\0\1\0" +
    /// struct.pack(">Q", 16) + b"2088101568358171" +
    /// b"2026112200222000000000000000000001").hexdigest()[:32]`.
    #[test]
    fn a_route_without_a_namespace_keys_as_before() {
        let name = route("shop-alipay");
        let k = Key::recorded(
            &name,
            "2088101568358171",
            "2026112200222000000000000000000001",
        );
        assert_eq!(k.hex(), "6e6693c3a8f4b888c6bd882d954c3311");
        assert_eq!(
            k.redis(),
            "callgate:shop-alipay:ev:6e6693c3a8f4b888c6bd882d954c3311"
        );
        let same = Key::journaled(
            &name,
            &name,
            "2088101568358171",
            "2026112200222000000000000000000001",
        );
        assert_eq!(same, k);
    }

    /// The namespace, not the route's name, is the event's identity: a
    /// renamed route that keeps its old namespace finds what it delivered,
    /// in the memory store and under the same Redis name.
    #[tokio::test]
    async fn the_namespace_not_the_name_is_the_identity() {
        let (old, new) = (route("shop-alipay"), route("shop-alipay-v2"));
        let before = Key::recorded(&old, "m", "1");
        let after = Key::journaled(&new, &old, "m", "1");
        assert_eq!(after.digest, before.digest);
        assert_eq!(after.redis(), before.redis());
        assert_ne!(Key::recorded(&new, "m", "1").digest, before.digest);
        let s = ReplayStore::memory(100);
        let Claim::New(t) = s.claim(&before, IN_FLIGHT).await.unwrap() else {
            panic!("first claim must be new")
        };
        s.confirm(&before, t, TTL).await.unwrap();
        assert_eq!(s.claim(&after, IN_FLIGHT).await.unwrap(), Claim::Delivered);
    }
}
