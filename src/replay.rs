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
//! Keys are the first 16 bytes of SHA-256 over (route, kind, id): fixed size
//! whatever the id, and namespaced per route. The memory store is a moka
//! cache bounded by `max_entries`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::sync::Cache;

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

/// A fixed-size, route-namespaced key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key([u8; 16]);

impl Key {
    pub fn new(route: &str, kind: KeyKind, id: &str) -> Key {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(route.as_bytes());
        ctx.update(&[0, kind as u8 + 1, 0]);
        ctx.update(id.as_bytes());
        let digest = ctx.finish();
        let mut k = [0u8; 16];
        k.copy_from_slice(&digest.as_ref()[..16]);
        Key(k)
    }

    /// The key of a verified event on a route.
    pub fn event(route: &str, verified: &Verified) -> Key {
        Key::new(route, KeyKind::Event, verified.event_id())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
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
}

impl ReplayStore {
    pub fn memory(max_entries: u64) -> ReplayStore {
        ReplayStore::Memory(MemoryStore::new(max_entries))
    }

    /// Claims `key` for forwarding; an unconfirmed claim lapses after
    /// `in_flight_ttl`.
    pub async fn claim(&self, key: Key, in_flight_ttl: Duration) -> Result<Claim, StoreError> {
        match self {
            ReplayStore::Memory(m) => Ok(m.claim(key, in_flight_ttl)),
        }
    }

    /// Records a successful delivery, remembered for `ttl`.
    pub async fn confirm(&self, key: Key, token: Token, ttl: Duration) -> Result<(), StoreError> {
        match self {
            ReplayStore::Memory(m) => {
                m.confirm(key, token, ttl);
                Ok(())
            }
        }
    }

    /// Gives an unsuccessful claim back, so the next delivery is forwarded.
    pub async fn release(&self, key: Key, token: Token) -> Result<(), StoreError> {
        match self {
            ReplayStore::Memory(m) => {
                m.release(key, token);
                Ok(())
            }
        }
    }

    /// Remembers a nonce for `ttl`; `false` if it was already there.
    pub async fn remember(&self, key: Key, ttl: Duration) -> Result<bool, StoreError> {
        match self {
            ReplayStore::Memory(m) => Ok(m.remember(key, ttl)),
        }
    }

    /// Forgets a remembered nonce (its notification was not delivered).
    pub async fn forget(&self, key: Key) -> Result<(), StoreError> {
        match self {
            ReplayStore::Memory(m) => {
                m.forget(key);
                Ok(())
            }
        }
    }

    /// Whether the store answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            ReplayStore::Memory(_) => Ok(()),
        }
    }

    /// Approximate number of remembered entries.
    pub fn entries(&self) -> u64 {
        match self {
            ReplayStore::Memory(m) => m.entries(),
        }
    }
}

/// One remembered key.
#[derive(Debug, Clone, Copy)]
enum Entry {
    InFlight { token: u64, ttl: Duration },
    Delivered { ttl: Duration },
    Nonce { ttl: Duration },
}

impl Entry {
    fn ttl(&self) -> Duration {
        match *self {
            Entry::InFlight { ttl, .. } | Entry::Delivered { ttl } | Entry::Nonce { ttl } => ttl,
        }
    }
}

struct PerEntryTtl;

impl moka::Expiry<Key, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &Key, value: &Entry, _: Instant) -> Option<Duration> {
        Some(value.ttl())
    }

    fn expire_after_update(
        &self,
        _: &Key,
        value: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl())
    }
}

/// The in-process store: a bounded moka cache with per-entry expiry.
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<Key, Entry>,
    next_token: Arc<AtomicU64>,
}

impl MemoryStore {
    pub fn new(max_entries: u64) -> MemoryStore {
        MemoryStore {
            cache: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
            next_token: Arc::new(AtomicU64::new(1)),
        }
    }

    fn claim(&self, key: Key, in_flight_ttl: Duration) -> Claim {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut answer = Claim::New(Token(token));
        self.cache
            .entry(key)
            .and_compute_with(|current| match current.map(|e| e.into_value()) {
                None | Some(Entry::Nonce { .. }) => Op::Put(Entry::InFlight {
                    token,
                    ttl: in_flight_ttl,
                }),
                Some(Entry::InFlight { .. }) => {
                    answer = Claim::InFlight;
                    Op::Nop
                }
                Some(Entry::Delivered { .. }) => {
                    answer = Claim::Delivered;
                    Op::Nop
                }
            });
        answer
    }

    fn confirm(&self, key: Key, token: Token, ttl: Duration) {
        self.cache
            .entry(key)
            .and_compute_with(|current| match current.map(|e| e.into_value()) {
                // Ours, or lapsed and not re-claimed: either way it was delivered.
                Some(Entry::InFlight { token: t, .. }) if t == token.0 => {
                    Op::Put(Entry::Delivered { ttl })
                }
                None => Op::Put(Entry::Delivered { ttl }),
                // Someone else re-claimed after ours lapsed; they will confirm.
                _ => Op::Nop,
            });
    }

    fn release(&self, key: Key, token: Token) {
        self.cache
            .entry(key)
            .and_compute_with(|current| match current.map(|e| e.into_value()) {
                Some(Entry::InFlight { token: t, .. }) if t == token.0 => Op::Remove,
                _ => Op::Nop,
            });
    }

    fn remember(&self, key: Key, ttl: Duration) -> bool {
        let entry = self
            .cache
            .entry(key)
            .or_insert_with(|| Entry::Nonce { ttl });
        entry.is_fresh()
    }

    fn forget(&self, key: Key) {
        self.cache
            .entry(key)
            .and_compute_with(|current| match current.map(|e| e.into_value()) {
                Some(Entry::Nonce { .. }) => Op::Remove,
                _ => Op::Nop,
            });
    }

    fn entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN_FLIGHT: Duration = Duration::from_secs(60);
    const TTL: Duration = Duration::from_secs(3600);

    fn key(id: &str) -> Key {
        Key::new("route", KeyKind::Event, id)
    }

    #[tokio::test]
    async fn claim_confirm_and_duplicate() {
        let s = ReplayStore::memory(100);
        let Claim::New(t) = s.claim(key("a"), IN_FLIGHT).await.unwrap() else {
            panic!("first claim must be new")
        };
        assert_eq!(s.claim(key("a"), IN_FLIGHT).await.unwrap(), Claim::InFlight);
        s.confirm(key("a"), t, TTL).await.unwrap();
        assert_eq!(
            s.claim(key("a"), IN_FLIGHT).await.unwrap(),
            Claim::Delivered
        );
        // Other ids and other routes are independent.
        assert!(matches!(
            s.claim(key("b"), IN_FLIGHT).await.unwrap(),
            Claim::New(_)
        ));
        let other_route = Key::new("other", KeyKind::Event, "a");
        assert!(matches!(
            s.claim(other_route, IN_FLIGHT).await.unwrap(),
            Claim::New(_)
        ));
    }

    #[tokio::test]
    async fn release_lets_the_retry_through() {
        let s = ReplayStore::memory(100);
        let Claim::New(t) = s.claim(key("a"), IN_FLIGHT).await.unwrap() else {
            panic!()
        };
        s.release(key("a"), t).await.unwrap();
        assert!(matches!(
            s.claim(key("a"), IN_FLIGHT).await.unwrap(),
            Claim::New(_)
        ));
    }

    #[tokio::test]
    async fn a_stale_token_cannot_release_someone_elses_claim() {
        let s = ReplayStore::memory(100);
        let Claim::New(old) = s.claim(key("a"), IN_FLIGHT).await.unwrap() else {
            panic!()
        };
        s.release(key("a"), old).await.unwrap();
        let Claim::New(_new) = s.claim(key("a"), IN_FLIGHT).await.unwrap() else {
            panic!()
        };
        s.release(key("a"), old).await.unwrap();
        assert_eq!(s.claim(key("a"), IN_FLIGHT).await.unwrap(), Claim::InFlight);
    }

    #[tokio::test]
    async fn concurrent_claims_give_exactly_one_new() {
        let s = ReplayStore::memory(100);
        let mut handles = Vec::new();
        for _ in 0..32 {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                s.claim(key("x"), IN_FLIGHT).await.unwrap()
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
    async fn nonces_are_remembered_once() {
        let s = ReplayStore::memory(100);
        let n = Key::new("route", KeyKind::Nonce, "abc");
        assert!(s.remember(n, TTL).await.unwrap());
        assert!(!s.remember(n, TTL).await.unwrap());
        s.forget(n).await.unwrap();
        assert!(s.remember(n, TTL).await.unwrap());
        // Forgetting a nonce never touches an event under another key.
        let e = key("abc");
        let Claim::New(_) = s.claim(e, IN_FLIGHT).await.unwrap() else {
            panic!()
        };
        s.forget(e).await.unwrap();
        assert_eq!(s.claim(e, IN_FLIGHT).await.unwrap(), Claim::InFlight);
    }

    #[test]
    fn store_is_bounded() {
        let m = MemoryStore::new(1000);
        for i in 0..20_000 {
            m.remember(Key::new("r", KeyKind::Nonce, &i.to_string()), TTL);
        }
        assert!(m.entries() <= 1000, "{}", m.entries());
    }

    #[test]
    fn keys_are_namespaced() {
        assert_ne!(
            Key::new("a", KeyKind::Event, "1"),
            Key::new("a", KeyKind::Nonce, "1")
        );
        assert_ne!(
            Key::new("a", KeyKind::Event, "1"),
            Key::new("b", KeyKind::Event, "1")
        );
        assert_ne!(
            Key::new("ab", KeyKind::Event, "c"),
            Key::new("a", KeyKind::Event, "bc")
        );
    }
}
