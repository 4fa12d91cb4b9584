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
//! itself, so a lost release cannot wedge an event.
//!
//! Keys are the first 16 bytes of SHA-256 over (route, kind, merchant, id):
//! fixed size whatever the id, namespaced per route and per merchant, so two
//! merchants of one route whose events share an id (JD's `tradeNum` is the
//! merchant's own order number) never shadow each other. The memory store
//! ([`MemoryStore`], `replay/memory.rs`) is a sharded map bounded by
//! `max_entries`.

mod memory;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use memory::MemoryStore;

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

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(secs)
        .unwrap_or(0)
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

/// Proof of holding an in-flight claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(u64);

/// The replay store could not answer; the request fails closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replay store unavailable: {0}")]
pub struct StoreError(pub String);

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
            ReplayStore::Memory(m) => Ok(m.claim(key, in_flight_ttl)),
            ReplayStore::Redis(r) => r.claim(key, in_flight_ttl).await,
        }
    }

    /// Records a successful delivery, remembered for `ttl`.
    pub async fn confirm(&self, key: &Key, token: Token, ttl: Duration) -> Result<(), StoreError> {
        match self {
            ReplayStore::Memory(m) => {
                m.confirm(key, token, ttl);
                Ok(())
            }
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

    /// Remembers a nonce for `ttl`; `false` if it was already there.
    pub async fn remember(&self, key: &Key, ttl: Duration) -> Result<bool, StoreError> {
        match self {
            ReplayStore::Memory(m) => Ok(m.remember(key, ttl)),
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

    /// Whether the store answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            ReplayStore::Memory(_) => Ok(()),
            ReplayStore::Redis(r) => r.ping().await,
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

    pub fn kind(&self) -> &'static str {
        match self {
            ReplayStore::Memory(_) => "memory",
            ReplayStore::Redis(_) => "redis",
        }
    }
}

// === Redis ===

/// Claim: returns the current value, or nil after taking the key.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Confirm: our in-flight value, or a lapsed one, becomes delivered.
const CONFIRM: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2])
  return 1
end
return 0
";

/// Release: delete only our own in-flight value.
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

/// A Redis (or Redis-compatible) store shared by several gateways. One
/// multiplexed connection per gateway, reconnected in the background after
/// a failure; every command is bounded by the configured timeout. Values:
/// `f:<instance>:<token>` while in flight, `d` once delivered, `n` for a
/// nonce.
#[derive(Clone)]
pub struct RedisStore {
    conn: redis::aio::ConnectionManager,
    claim: Arc<redis::Script>,
    confirm: Arc<redis::Script>,
    release: Arc<redis::Script>,
    forget: Arc<redis::Script>,
    instance: Arc<str>,
    next_token: Arc<AtomicU64>,
    /// The URL without its password, for messages.
    shown: Arc<str>,
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
        .map_err(|e| StoreError(format!("{}: {e}", redact_url(url))))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError(e.to_string()))?;
        let mut id = [0u8; 6];
        let _ = aws_lc_rs::rand::fill(&mut id);
        Ok(RedisStore {
            conn,
            claim: Arc::new(redis::Script::new(CLAIM)),
            confirm: Arc::new(redis::Script::new(CONFIRM)),
            release: Arc::new(redis::Script::new(RELEASE)),
            forget: Arc::new(redis::Script::new(FORGET)),
            instance: hex::encode(id).into(),
            next_token: Arc::new(AtomicU64::new(1)),
            shown: redact_url(url).into(),
        })
    }

    fn err(&self, e: redis::RedisError) -> StoreError {
        StoreError(format!("{}: {}", self.shown, e))
    }

    fn value(&self, token: Token) -> String {
        format!("f:{}:{}", self.instance, token.0)
    }

    async fn claim(&self, key: &Key, in_flight_ttl: Duration) -> Result<Claim, StoreError> {
        let token = Token(self.next_token.fetch_add(1, Ordering::Relaxed));
        let mut conn = self.conn.clone();
        let current: Option<String> = self
            .claim
            .key(key.redis())
            .arg(self.value(token))
            .arg(millis(in_flight_ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(match current.as_deref() {
            None => Claim::New(token),
            Some("d") => Claim::Delivered,
            // In flight, or a nonce that happens to share the key: not ours.
            Some(_) => Claim::InFlight,
        })
    }

    async fn confirm(&self, key: &Key, token: Token, ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .confirm
            .key(key.redis())
            .arg(self.value(token))
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
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
        for i in 0..20_000 {
            m.remember(
                &Key::new(&route("r"), KeyKind::Nonce, "m", &i.to_string()),
                TTL,
            );
        }
        assert!(m.entries() <= 1000, "{}", m.entries());
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

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://:hunter2@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(redact_url("rediss://u:p@h:1/2"), "rediss://u:***@h:1/2");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }
}
