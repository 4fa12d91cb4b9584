//! The in-process replay store: 64 shards, each a `HashMap` from the key's
//! 16-byte digest to a 16-byte slot (when it lapses, and whether it is in
//! flight with a token, delivered, or a nonce), behind its own mutex.
//!
//! Why not a general-purpose cache: a remembered event costs about 70 bytes
//! here against about 440 with the moka cache this replaced (1,000,000
//! delivered events: 426 MB peak RSS with moka, see `benches/load/memory.rs`),
//! and a claim is one hash and one probe under an uncontended lock.
//!
//! Expiry is lazy: a lapsed slot reads as absent, and is dropped when the
//! store fills up. Bound: `max_entries` slots in all. A new key that meets a
//! full store makes room in its own shard (or, when that one has nothing to
//! forget, in the first other shard that has): first every lapsed slot
//! goes; if that freed less than a sixteenth, the shard forgets the
//! sixteenth of its delivered events and nonces that would lapse soonest (never an in-flight claim, so
//! a notification being forwarded cannot be forwarded twice meanwhile). An
//! event forgotten early is forwarded again if the platform sends it again:
//! size `max_entries` for the events of a whole `ttl`.
//!
//! [`MemoryStore::entries`] (`/metrics`) reads an atomic count of the slots
//! held, and sweeps the lapsed slots of one shard per call, taken in turn
//! with `try_lock`: a scrape never waits on, or holds, every shard's lock,
//! and a lapsed slot is counted for at most one round of 64 scrapes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use super::{Claim, Key, Token};

const SHARDS: usize = 64;

/// `Slot::state` of a delivered event.
const DELIVERED: u64 = 0;
/// `Slot::state` of a remembered nonce. Any other value: in flight, holding
/// that token (tokens count up from 1).
const NONCE: u64 = u64::MAX;

/// One remembered key.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Milliseconds since the store's epoch at which it lapses.
    expires: u64,
    state: u64,
}

impl Slot {
    fn in_flight(&self) -> bool {
        self.state != DELIVERED && self.state != NONCE
    }
}

struct Shard {
    map: HashMap<[u8; 16], Slot>,
}

/// The in-process store (see the module doc).
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    /// Most slots the store holds (`max_entries`).
    max: usize,
    /// Slots held now, lapsed ones included (changed under a shard's lock).
    len: AtomicUsize,
    epoch: Instant,
    next_token: AtomicU64,
    /// The shard the next `entries` call sweeps.
    sweep: AtomicUsize,
}

impl MemoryStore {
    pub fn new(max_entries: u64) -> MemoryStore {
        let max = usize::try_from(max_entries).unwrap_or(usize::MAX).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                })
            })
            .collect();
        MemoryStore {
            inner: Arc::new(Inner {
                shards,
                max,
                len: AtomicUsize::new(0),
                epoch: Instant::now(),
                next_token: AtomicU64::new(1),
                sweep: AtomicUsize::new(0),
            }),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn deadline(now: u64, ttl: Duration) -> u64 {
        now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard> {
        let mut first = [0u8; 8];
        first.copy_from_slice(&key.digest[..8]);
        // The digest is SHA-256: its bytes are already uniform.
        let i = (u64::from_le_bytes(first) % SHARDS as u64) as usize;
        // A panic while holding a shard cannot leave a slot half-written
        // (slots are `Copy` values, written whole), so a poisoned lock is
        // still consistent.
        match self.inner.shards[i].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(super) fn claim(&self, key: &Key, in_flight_ttl: Duration) -> Claim {
        let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        let now = self.now();
        let mut shard = self.shard(key);
        match shard.live(&key.digest, now) {
            None | Some(Slot { state: NONCE, .. }) => {
                let slot = Slot {
                    expires: Self::deadline(now, in_flight_ttl),
                    state: token,
                };
                shard.put(key.digest, slot, now, &self.inner);
                Claim::New(Token(token))
            }
            Some(Slot {
                state: DELIVERED, ..
            }) => Claim::Delivered,
            Some(_) => Claim::InFlight,
        }
    }

    pub(super) fn confirm(&self, key: &Key, token: Token, ttl: Duration) {
        let now = self.now();
        let mut shard = self.shard(key);
        match shard.live(&key.digest, now) {
            // Ours, or lapsed and not re-claimed: either way it was delivered.
            Some(s) if s.state == token.0 => {}
            None => {}
            // Someone else re-claimed after ours lapsed; they will confirm.
            Some(_) => return,
        }
        let slot = Slot {
            expires: Self::deadline(now, ttl),
            state: DELIVERED,
        };
        shard.put(key.digest, slot, now, &self.inner);
    }

    pub(super) fn release(&self, key: &Key, token: Token) {
        let now = self.now();
        let mut shard = self.shard(key);
        if shard
            .live(&key.digest, now)
            .is_some_and(|s| s.in_flight() && s.state == token.0)
        {
            shard.remove(&key.digest, &self.inner);
        }
    }

    /// Remembers a nonce; `false` if the key was already remembered.
    pub(super) fn remember(&self, key: &Key, ttl: Duration) -> bool {
        let now = self.now();
        let mut shard = self.shard(key);
        if shard.live(&key.digest, now).is_some() {
            return false;
        }
        let slot = Slot {
            expires: Self::deadline(now, ttl),
            state: NONCE,
        };
        shard.put(key.digest, slot, now, &self.inner);
        true
    }

    pub(super) fn forget(&self, key: &Key) {
        let now = self.now();
        let mut shard = self.shard(key);
        if shard
            .live(&key.digest, now)
            .is_some_and(|s| s.state == NONCE)
        {
            shard.remove(&key.digest, &self.inner);
        }
    }

    /// Remembers an event as delivered without a claim (journal warm-up).
    pub(super) fn warm(&self, key: &Key, ttl: Duration) {
        let now = self.now();
        let slot = Slot {
            expires: Self::deadline(now, ttl),
            state: DELIVERED,
        };
        self.shard(key).put(key.digest, slot, now, &self.inner);
    }

    /// Slots held (for `/metrics`): an atomic count, after dropping the
    /// lapsed slots of one shard, the next in turn, if its lock is free.
    /// Never waits on a lock, never takes more than one.
    pub(super) fn entries(&self) -> u64 {
        let i = self.inner.sweep.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let now = self.now();
        let inner = &self.inner;
        match inner.shards[i].try_lock() {
            Ok(mut shard) => shard.drop_lapsed(now, inner),
            Err(TryLockError::Poisoned(p)) => p.into_inner().drop_lapsed(now, inner),
            Err(TryLockError::WouldBlock) => 0,
        };
        inner.len.load(Ordering::Relaxed) as u64
    }
}

impl Shard {
    fn live(&self, digest: &[u8; 16], now: u64) -> Option<Slot> {
        self.map.get(digest).copied().filter(|s| s.expires > now)
    }

    /// Writes a slot, making room first when a new key meets a full store.
    fn put(&mut self, digest: [u8; 16], slot: Slot, now: u64, inner: &Inner) {
        if let Some(held) = self.map.get_mut(&digest) {
            *held = slot;
            return;
        }
        if inner.len.load(Ordering::Relaxed) >= inner.max && self.make_room(now, inner) == 0 {
            // Nothing to forget here (a small store spreads thin over the
            // shards, or this one holds only claims in flight): free room in
            // another shard. `try_lock` only, so two full shards never wait
            // on each other (this shard's own lock is held, and skipped).
            for other in inner.shards.iter() {
                let freed = match other.try_lock() {
                    Ok(mut shard) => shard.make_room(now, inner),
                    Err(TryLockError::Poisoned(p)) => p.into_inner().make_room(now, inner),
                    Err(TryLockError::WouldBlock) => 0,
                };
                if freed > 0 {
                    break;
                }
            }
        }
        self.map.insert(digest, slot);
        inner.len.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops lapsed slots; returns how many.
    fn drop_lapsed(&mut self, now: u64, inner: &Inner) -> usize {
        let before = self.map.len();
        self.map.retain(|_, s| s.expires > now);
        let freed = before - self.map.len();
        inner.len.fetch_sub(freed, Ordering::Relaxed);
        freed
    }

    fn remove(&mut self, digest: &[u8; 16], inner: &Inner) {
        if self.map.remove(digest).is_some() {
            inner.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drops lapsed slots; if that freed less than a sixteenth of the shard,
    /// also forgets the sixteenth of the shard's settled slots (delivered
    /// events, nonces) that lapse soonest. Freeing a sixteenth each time
    /// keeps the scan off most inserts when a full store is fed steadily
    /// (a few slots lapsing between two inserts would otherwise make every
    /// insert scan the shard).
    /// Returns how many slots it freed.
    fn make_room(&mut self, now: u64, inner: &Inner) -> usize {
        let before = self.map.len();
        self.map.retain(|_, s| s.expires > now);
        if before - self.map.len() < (before / 16).max(1) {
            let mut settled: Vec<u64> = self
                .map
                .values()
                .filter(|s| !s.in_flight())
                .map(|s| s.expires)
                .collect();
            if !settled.is_empty() {
                let n = (settled.len() / 16).max(1);
                let (_, cut, _) = settled.select_nth_unstable(n - 1);
                let cut = *cut;
                self.map.retain(|_, s| s.in_flight() || s.expires > cut);
            }
        }
        let freed = before - self.map.len();
        inner.len.fetch_sub(freed, Ordering::Relaxed);
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::KeyKind;

    fn key(i: u64) -> Key {
        Key::new(&Arc::from("r"), KeyKind::Event, &i.to_string())
    }

    const TTL: Duration = Duration::from_secs(3600);

    #[test]
    fn lapsed_slots_read_as_absent() {
        let m = MemoryStore::new(100);
        let Claim::New(t) = m.claim(&key(1), Duration::ZERO) else {
            panic!("first claim")
        };
        // A zero in-flight TTL lapses at once: the retry may claim again,
        // and the old claim's release no longer touches it.
        let Claim::New(t2) = m.claim(&key(1), TTL) else {
            panic!("a lapsed claim is absent")
        };
        m.release(&key(1), t);
        assert_eq!(m.claim(&key(1), TTL), Claim::InFlight);
        m.confirm(&key(1), t2, TTL);
        assert_eq!(m.claim(&key(1), TTL), Claim::Delivered);
        m.confirm(&key(2), Token(999), Duration::ZERO);
        // One round of scrapes sweeps every shard: the lapsed slot is gone.
        for _ in 0..SHARDS {
            m.entries();
        }
        assert_eq!(m.entries(), 1);
    }

    #[test]
    fn a_scrape_answers_while_every_shard_is_locked() {
        let m = MemoryStore::new(1000);
        for i in 0..100 {
            assert!(m.remember(&key(i), TTL));
        }
        // Every shard held, as by 64 requests in the middle of a claim.
        let held: Vec<_> = m.inner.shards.iter().map(|s| s.lock().unwrap()).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let scraper = m.clone();
        std::thread::spawn(move || {
            let _ = tx.send(scraper.entries());
        });
        let got = rx.recv_timeout(Duration::from_secs(30));
        drop(held);
        assert_eq!(got, Ok(100), "the scrape waited for the shards' locks");
    }

    #[test]
    fn holds_max_entries_however_they_spread_over_shards() {
        let m = MemoryStore::new(5000);
        for i in 0..5000 {
            let Claim::New(t) = m.claim(&key(i), TTL) else {
                panic!("{i}")
            };
            m.confirm(&key(i), t, TTL);
        }
        assert_eq!(m.entries(), 5000);
        assert!((0..5000).all(|i| m.claim(&key(i), TTL) == Claim::Delivered));
    }

    #[test]
    fn a_store_smaller_than_its_shard_count_still_holds_its_bound() {
        // 64 slots over 64 shards: most new keys land in a shard with
        // nothing to forget, so room is made in another one.
        let m = MemoryStore::new(64);
        for i in 0..2000u64 {
            assert!(m.remember(&key(i), TTL), "{i}");
            assert!(m.entries() <= 64, "{} entries after {i}", m.entries());
        }
        assert!(m.entries() >= 32, "{}", m.entries());
        assert!(!m.remember(&key(1999), TTL), "the newest nonce is kept");
    }

    #[test]
    fn a_full_store_forgets_settled_events_first_never_claims_in_flight() {
        let m = MemoryStore::new(2000);
        // One claim held in flight, then far more delivered events than fit.
        let Claim::New(held) = m.claim(&key(0), TTL) else {
            panic!()
        };
        for i in 1..20_000u64 {
            let k = key(i);
            if let Claim::New(t) = m.claim(&k, TTL) {
                // Later events lapse later: the earliest are forgotten first.
                m.confirm(&k, t, TTL + Duration::from_millis(i));
            }
        }
        assert!(m.entries() <= 2000, "{}", m.entries());
        assert_eq!(m.claim(&key(0), TTL), Claim::InFlight);
        assert_eq!(m.claim(&key(19_999), TTL), Claim::Delivered);
        m.confirm(&key(0), held, TTL);
        assert_eq!(m.claim(&key(0), TTL), Claim::Delivered);
    }
}
