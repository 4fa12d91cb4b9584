//! The in-process replay store: 64 shards, each a `HashMap` from the key's
//! 16-byte digest to a 24-byte slot (when it lapses, its route, how many
//! times the event was sent, and whether it is in flight with a token,
//! delivered, released after a failed attempt, or a nonce), behind its own
//! mutex.
//!
//! Why not a general-purpose cache: a remembered event costs under 100
//! bytes here against about 440 with the moka cache this replaced
//! (1,000,000 delivered events: 426 MB peak RSS with moka, see
//! `benches/load/memory.rs`), and a claim is one hash and one probe under an
//! uncontended lock.
//!
//! **Nothing settled is forgotten before it lapses.** The store holds at
//! most `max_entries` slots, and each route at most its quota (an equal
//! share of `max_entries` unless the route sets `replay_quota`; see
//! [`super::route_quotas`]), so one route cannot fill the store for the
//! others. A new key that meets a full store or a full quota first lets a
//! sweep drop every lapsed slot and every released one (those only remember
//! an attempt count for `X-Callgate-Attempt`); if there is still no room the
//! claim (or nonce) is refused with [`Full`]: the notification gets 503 and
//! the platform retries, while every delivered event and nonce stays
//! remembered for its whole TTL. A sweep reads every shard, so it runs at
//! most once per [`SWEEP_EVERY`]; between sweeps a full store refuses at
//! once.
//!
//! Expiry is otherwise lazy: a lapsed slot reads as absent.
//!
//! [`MemoryStore::entries`] (`/metrics`) reads an atomic count of the slots
//! held, and sweeps the lapsed slots of one shard per call, taken in turn
//! with `try_lock`: a scrape never waits on, or holds, every shard's lock,
//! and a lapsed slot is counted for at most one round of 64 scrapes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::{Claim, Confirmed, Key, Token};

const SHARDS: usize = 64;

/// Least time between two sweeps of the whole store.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// `Slot::state` of a delivered event.
const DELIVERED: u64 = 0;
/// `Slot::state` of a remembered nonce.
const NONCE: u64 = u64::MAX;
/// `Slot::state` of an event whose last attempt failed: absent for claims,
/// kept for its attempt count. Any other value: in flight, holding that
/// token (tokens count up from 1).
const RELEASED: u64 = u64::MAX - 1;

/// One remembered key.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Milliseconds since the store's epoch at which it lapses.
    expires: u64,
    state: u64,
    /// Index of the route in [`RouteTable`].
    route: u16,
    /// Times the event was claimed for forwarding (saturating).
    attempts: u16,
}

impl Slot {
    fn in_flight(&self) -> bool {
        !matches!(self.state, DELIVERED | NONCE | RELEASED)
    }
}

struct Shard {
    map: HashMap<[u8; 16], Slot>,
}

/// A key met a full store, or its route's full quota, and nothing could be
/// swept: the new claim or nonce is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    /// `replay.max_entries`, or the route's quota.
    pub limit: FullLimit,
    pub held: usize,
    pub bound: usize,
}

/// Which bound was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullLimit {
    Store,
    Route,
}

/// What one route holds, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteUsage {
    pub route: Arc<str>,
    pub held: usize,
    /// `usize::MAX` when no quota was set.
    pub quota: usize,
}

/// Per-route counters; shared by every version of the table.
struct RouteCount {
    name: Arc<str>,
    held: AtomicUsize,
    quota: AtomicUsize,
}

/// Route name → index; append-only, swapped whole when a route appears.
#[derive(Default, Clone)]
struct RouteTable {
    by_name: HashMap<Arc<str>, u16>,
    counts: Vec<Arc<RouteCount>>,
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
    routes: ArcSwap<RouteTable>,
    /// Serialises additions to `routes`.
    routes_write: Mutex<()>,
    /// Milliseconds since the epoch before which no sweep runs.
    next_sweep: AtomicU64,
    /// The shard the next `entries` call sweeps.
    scrape_sweep: AtomicUsize,
    sweep_every: u64,
    /// How long a released event's attempt count is kept, in milliseconds.
    attempts_ttl: AtomicU64,
}

impl MemoryStore {
    pub fn new(max_entries: u64) -> MemoryStore {
        Self::build(max_entries, SWEEP_EVERY)
    }

    fn build(max_entries: u64, sweep_every: Duration) -> MemoryStore {
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
                routes: ArcSwap::from_pointee(RouteTable::default()),
                routes_write: Mutex::new(()),
                next_sweep: AtomicU64::new(0),
                scrape_sweep: AtomicUsize::new(0),
                sweep_every: millis(sweep_every),
                attempts_ttl: AtomicU64::new(millis(Duration::from_secs(48 * 3600))),
            }),
        }
    }

    /// How long the attempt count of an event that was not delivered is
    /// kept (the gateway sets `replay.ttl`; default 48 hours).
    pub fn set_attempts_ttl(&self, ttl: Duration) {
        self.inner
            .attempts_ttl
            .store(millis(ttl), Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        millis(self.inner.epoch.elapsed())
    }

    fn deadline(now: u64, ttl: Duration) -> u64 {
        now.saturating_add(millis(ttl))
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard> {
        let mut first = [0u8; 8];
        first.copy_from_slice(&key.digest[..8]);
        // The digest is SHA-256: its bytes are already uniform.
        let i = (u64::from_le_bytes(first) % SHARDS as u64) as usize;
        lock(&self.inner.shards[i])
    }

    /// The route's index and counters, registering it on first sight.
    fn route(&self, name: &Arc<str>) -> (u16, Arc<RouteCount>) {
        let table = self.inner.routes.load();
        if let Some(&i) = table.by_name.get(name) {
            return (i, table.counts[usize::from(i)].clone());
        }
        let _one_writer = lock(&self.inner.routes_write);
        let table = self.inner.routes.load();
        if let Some(&i) = table.by_name.get(name) {
            return (i, table.counts[usize::from(i)].clone());
        }
        let mut next = RouteTable::clone(&table);
        // 65,535 route names in one process's life: the last index is
        // shared by any beyond (they then share one quota).
        let Ok(i) = u16::try_from(next.counts.len()) else {
            let last = next.counts.len() - 1;
            return (u16::MAX, next.counts[last].clone());
        };
        let count = Arc::new(RouteCount {
            name: name.clone(),
            held: AtomicUsize::new(0),
            quota: AtomicUsize::new(usize::MAX),
        });
        next.by_name.insert(name.clone(), i);
        next.counts.push(count.clone());
        self.inner.routes.store(Arc::new(next));
        (i, count)
    }

    /// Sets each route's quota (routes not named keep theirs).
    pub fn set_quotas(&self, quotas: &[(Arc<str>, usize)]) {
        for (name, quota) in quotas {
            self.route(name).1.quota.store(*quota, Ordering::Relaxed);
        }
    }

    /// What every route holds now and may hold (no shard is locked).
    pub fn route_usage(&self) -> Vec<RouteUsage> {
        self.inner
            .routes
            .load()
            .counts
            .iter()
            .map(|c| RouteUsage {
                route: c.name.clone(),
                held: c.held.load(Ordering::Relaxed),
                quota: c.quota.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Takes one slot from the store's and the route's bounds, or says
    /// which is full. Checked and taken in one atomic step each, so
    /// concurrent inserts never pass a bound.
    fn take_room(&self, route: &RouteCount) -> Result<(), Full> {
        let inner = &self.inner;
        let held = inner.len.fetch_add(1, Ordering::Relaxed);
        if held >= inner.max {
            inner.len.fetch_sub(1, Ordering::Relaxed);
            return Err(Full {
                limit: FullLimit::Store,
                held,
                bound: inner.max,
            });
        }
        let quota = route.quota.load(Ordering::Relaxed);
        let mine = route.held.fetch_add(1, Ordering::Relaxed);
        if mine >= quota {
            route.held.fetch_sub(1, Ordering::Relaxed);
            inner.len.fetch_sub(1, Ordering::Relaxed);
            return Err(Full {
                limit: FullLimit::Route,
                held: mine,
                bound: quota,
            });
        }
        Ok(())
    }

    /// Counts one slot without checking the bounds (a delivery record must
    /// be written whatever the fill).
    fn force_room(&self, route: &RouteCount) {
        self.inner.len.fetch_add(1, Ordering::Relaxed);
        route.held.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops every lapsed and every released slot, at most once per
    /// `sweep_every`. Takes each shard's lock in turn; the caller holds none.
    fn sweep(&self, now: u64) {
        let inner = &self.inner;
        let due = inner.next_sweep.load(Ordering::Relaxed);
        if now < due
            || inner
                .next_sweep
                .compare_exchange(
                    due,
                    now.saturating_add(inner.sweep_every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        for shard in inner.shards.iter() {
            self.drop_from(&mut lock(shard), |s| {
                s.expires <= now || s.state == RELEASED
            });
        }
    }

    /// Drops the slots of one shard that `gone` picks, and counts them off
    /// the store's and their routes' totals.
    fn drop_from(&self, shard: &mut Shard, gone: impl Fn(&Slot) -> bool) {
        let table = self.inner.routes.load();
        let mut freed = 0usize;
        shard.map.retain(|_, s| {
            if !gone(s) {
                return true;
            }
            freed += 1;
            if let Some(c) = table.counts.get(usize::from(s.route)) {
                c.held.fetch_sub(1, Ordering::Relaxed);
            }
            false
        });
        self.inner.len.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Inserts a new slot for `key` when there is room, sweeping once when
    /// there is none. The closure decides, under the shard's lock, whether
    /// a slot is still needed (`Err` answers without inserting).
    fn insert_new<T>(
        &self,
        key: &Key,
        mut decide: impl FnMut(Option<Slot>, u64, u16) -> Result<(Slot, T), T>,
    ) -> Result<T, Full> {
        let (index, route) = self.route(&key.route);
        let mut swept = false;
        loop {
            let now = self.now();
            let mut shard = self.shard(key);
            let held = shard.map.get(&key.digest).copied();
            let (slot, answer) = match decide(held, now, index) {
                Ok(write) => write,
                Err(answer) => return Ok(answer),
            };
            if let Some(existing) = shard.map.get_mut(&key.digest) {
                // Same key: no new room needed. The slot stays counted
                // against the route whose room it took (routes sharing a
                // replay namespace share keys).
                *existing = Slot {
                    route: existing.route,
                    ..slot
                };
                return Ok(answer);
            }
            match self.take_room(&route) {
                Ok(()) => {
                    shard.map.insert(key.digest, slot);
                    return Ok(answer);
                }
                Err(full) if swept => return Err(full),
                Err(_) => {
                    drop(shard);
                    self.sweep(now);
                    swept = true;
                }
            }
        }
    }

    /// Writes `slot` whatever the bounds (delivery records, warm-up).
    fn put_forced(&self, key: &Key, slot: impl FnOnce(Option<Slot>, u64, u16) -> Option<Slot>) {
        let (index, route) = self.route(&key.route);
        let now = self.now();
        let mut shard = self.shard(key);
        let held = shard.map.get(&key.digest).copied();
        let Some(slot) = slot(held, now, index) else {
            return;
        };
        match shard.map.get_mut(&key.digest) {
            // Counted against the route whose room it took, as above.
            Some(existing) => {
                *existing = Slot {
                    route: existing.route,
                    ..slot
                }
            }
            None => {
                self.force_room(&route);
                shard.map.insert(key.digest, slot);
            }
        }
    }

    pub(super) fn claim(&self, key: &Key, in_flight_ttl: Duration) -> Result<Claim, Full> {
        let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        self.insert_new(key, |held, now, route| {
            let attempts = match held {
                Some(s) if s.expires > now => match s.state {
                    DELIVERED => return Err(Claim::Delivered),
                    RELEASED | NONCE => s.attempts,
                    _ => return Err(Claim::InFlight),
                },
                // A claim that lapsed was an attempt too; a lapsed record
                // of anything else is forgotten.
                Some(s) if s.in_flight() => s.attempts,
                _ => 0,
            };
            let attempts = attempts.saturating_add(1);
            let slot = Slot {
                expires: Self::deadline(now, in_flight_ttl),
                state: token,
                route,
                attempts,
            };
            Ok((
                slot,
                Claim::New(Token {
                    id: token,
                    attempt: u32::from(attempts),
                }),
            ))
        })
    }

    /// Extends our claim; takes it again if it lapsed (or was released)
    /// and nobody else holds it. `false`: someone else holds it, or it was
    /// delivered.
    pub(super) fn renew(&self, key: &Key, token: Token, in_flight_ttl: Duration) -> bool {
        let mut ours = false;
        self.put_forced(key, |held, now, route| {
            let attempts = match held {
                Some(s) if s.expires > now && s.state != token.id && s.state != RELEASED => {
                    return None;
                }
                Some(s) => s.attempts,
                None => u16::try_from(token.attempt).unwrap_or(u16::MAX),
            };
            ours = true;
            Some(Slot {
                expires: Self::deadline(now, in_flight_ttl),
                state: token.id,
                route,
                attempts,
            })
        });
        ours
    }

    pub(super) fn confirm(&self, key: &Key, token: Token, ttl: Duration) -> Confirmed {
        let mut how = Confirmed::Held;
        self.put_forced(key, |held, now, route| {
            how = match held {
                Some(s) if s.expires > now && s.state == token.id => Confirmed::Held,
                Some(s) if s.expires > now && (s.in_flight() || s.state == DELIVERED) => {
                    Confirmed::Taken
                }
                _ => Confirmed::Lapsed,
            };
            // Delivered, whoever else holds or held the key now.
            Some(Slot {
                expires: Self::deadline(now, ttl),
                state: DELIVERED,
                route,
                attempts: 0,
            })
        });
        how
    }

    /// Gives our claim back; the event's attempt count is kept (for
    /// `attempts_ttl`, or until a sweep needs the room).
    pub(super) fn release(&self, key: &Key, token: Token) {
        let now = self.now();
        let mut shard = self.shard(key);
        if let Some(s) = shard.map.get_mut(&key.digest)
            && s.expires > now
            && s.state == token.id
        {
            s.state = RELEASED;
            s.expires = now.saturating_add(self.inner.attempts_ttl.load(Ordering::Relaxed));
        }
    }

    /// Remembers a nonce; `Ok(false)` if the key was already remembered.
    pub(super) fn remember(&self, key: &Key, ttl: Duration) -> Result<bool, Full> {
        self.insert_new(key, |held, now, route| {
            if held.is_some_and(|s| s.expires > now) {
                return Err(false);
            }
            let slot = Slot {
                expires: Self::deadline(now, ttl),
                state: NONCE,
                route,
                attempts: 0,
            };
            Ok((slot, true))
        })
    }

    pub(super) fn forget(&self, key: &Key) {
        let now = self.now();
        let mut shard = self.shard(key);
        if shard
            .map
            .get(&key.digest)
            .is_some_and(|s| s.expires > now && s.state == NONCE)
        {
            shard.map.remove(&key.digest);
            drop(shard);
            self.inner.len.fetch_sub(1, Ordering::Relaxed);
            self.route(&key.route)
                .1
                .held
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Remembers an event as delivered without a claim (journal warm-up, a
    /// delivery recorded late). Never refused: a delivery record is kept
    /// even over the bound.
    pub(super) fn warm(&self, key: &Key, ttl: Duration) {
        self.put_forced(key, |_, now, route| {
            Some(Slot {
                expires: Self::deadline(now, ttl),
                state: DELIVERED,
                route,
                attempts: 0,
            })
        });
    }

    /// Remembers that an undelivered event was sent `attempts` times
    /// (journal warm-up), unless the key is held already. Within the bounds
    /// only: attempt counts are the first thing a full store gives up.
    pub(super) fn warm_attempts(&self, key: &Key, attempts: u32, ttl: Duration) {
        let attempts = u16::try_from(attempts).unwrap_or(u16::MAX);
        let _ = self.insert_new(key, |held, now, route| {
            if held.is_some_and(|s| s.expires > now) {
                return Err(());
            }
            let slot = Slot {
                expires: Self::deadline(now, ttl),
                state: RELEASED,
                route,
                attempts,
            };
            Ok((slot, ()))
        });
    }

    /// Slots held (for `/metrics`): an atomic count, after dropping the
    /// lapsed slots of one shard, the next in turn, if its lock is free.
    /// Never waits on a lock, never takes more than one.
    pub(super) fn entries(&self) -> u64 {
        let i = self.inner.scrape_sweep.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let now = self.now();
        match self.inner.shards[i].try_lock() {
            Ok(mut shard) => self.drop_from(&mut shard, |s| s.expires <= now),
            Err(TryLockError::Poisoned(p)) => {
                self.drop_from(&mut p.into_inner(), |s| s.expires <= now)
            }
            Err(TryLockError::WouldBlock) => {}
        }
        self.held() as u64
    }

    /// Slots held, lapsed and released ones included (what the bound counts).
    pub fn held(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    pub fn max_entries(&self) -> usize {
        self.inner.max
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A panic while holding a shard cannot leave a slot half-written (slots
/// are `Copy` values, written whole), so a poisoned lock is still
/// consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Key {
        Key::recorded(&Arc::from("r"), "m", &i.to_string())
    }

    fn key_on(route: &str, i: u64) -> Key {
        Key::recorded(&Arc::from(route), "m", &i.to_string())
    }

    const TTL: Duration = Duration::from_secs(3600);

    fn new(m: &MemoryStore, k: &Key) -> Token {
        match m.claim(k, TTL) {
            Ok(Claim::New(t)) => t,
            other => panic!("{other:?}"),
        }
    }

    /// A store that may sweep on every insert (the real one sweeps at most
    /// once a second).
    fn eager(max: u64) -> MemoryStore {
        MemoryStore::build(max, Duration::ZERO)
    }

    /// Two routes that share a replay namespace share keys: a slot one
    /// took room for and the other overwrites (a claim after a failed
    /// forward, a confirm) stays counted against the first, so dropping it
    /// gives the room back where it was taken. Before, the slot took the
    /// second route's index: the first route's count never came down, and
    /// the second's wrapped below zero, so every new notification of that
    /// route was refused as `store_full`.
    #[test]
    fn a_slot_shared_by_two_routes_gives_its_room_back_to_the_route_that_took_it() {
        let m = eager(100);
        let (a, b, ns) = (Arc::from("a"), Arc::from("b"), Arc::from("shared"));
        let ka = Key::journaled(&a, &ns, "m", "1");
        let kb = Key::journaled(&b, &ns, "m", "1");
        let Ok(Claim::New(_)) = m.claim(&ka, Duration::ZERO) else {
            panic!("first claim")
        };
        // The claim lapsed: the copy on the other route claims it again,
        // and its confirm lapses at once too.
        let Ok(Claim::New(t)) = m.claim(&kb, Duration::ZERO) else {
            panic!("second claim")
        };
        assert_eq!(m.confirm(&kb, t, Duration::ZERO), Confirmed::Lapsed);
        for _ in 0..SHARDS {
            m.entries();
        }
        assert_eq!(m.entries(), 0);
        let held: Vec<(String, usize)> = m
            .route_usage()
            .iter()
            .map(|u| (u.route.to_string(), u.held))
            .collect();
        assert_eq!(held, [("a".to_owned(), 0), ("b".to_owned(), 0)]);
    }

    #[test]
    fn lapsed_slots_read_as_absent() {
        let m = MemoryStore::new(100);
        let Ok(Claim::New(t)) = m.claim(&key(1), Duration::ZERO) else {
            panic!("first claim")
        };
        // A zero in-flight TTL lapses at once: the retry may claim again,
        // and the old claim's release no longer touches it.
        let t2 = new(&m, &key(1));
        m.release(&key(1), t);
        assert_eq!(m.claim(&key(1), TTL), Ok(Claim::InFlight));
        assert_eq!(m.confirm(&key(1), t2, TTL), Confirmed::Held);
        assert_eq!(m.claim(&key(1), TTL), Ok(Claim::Delivered));
        m.warm(&key(2), Duration::ZERO);
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
            assert_eq!(m.remember(&key(i), TTL), Ok(true));
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
            let t = new(&m, &key(i));
            m.confirm(&key(i), t, TTL);
        }
        assert_eq!(m.entries(), 5000);
        assert!((0..5000).all(|i| m.claim(&key(i), TTL) == Ok(Claim::Delivered)));
    }

    #[test]
    fn a_full_store_refuses_new_events_and_forgets_nothing_delivered() {
        let m = eager(64);
        for i in 0..64u64 {
            let t = new(&m, &key(i));
            m.confirm(&key(i), t, TTL);
        }
        // A nonce and a new event are refused, not made room for.
        let full = m.claim(&key(64), TTL).unwrap_err();
        assert_eq!(full.limit, FullLimit::Store);
        assert_eq!(full.bound, 64);
        assert!(m.remember(&key(65), TTL).is_err());
        assert_eq!(m.held(), 64);
        // Every delivered event is still a duplicate.
        assert!((0..64).all(|i| m.claim(&key(i), TTL) == Ok(Claim::Delivered)));
    }

    #[test]
    fn a_full_store_makes_room_only_from_lapsed_and_released_slots() {
        let m = eager(10);
        for i in 0..4u64 {
            let t = new(&m, &key(i));
            m.confirm(&key(i), t, Duration::ZERO); // lapses at once
        }
        for i in 4..7u64 {
            let t = new(&m, &key(i));
            m.release(&key(i), t); // a failed attempt: only its count is kept
        }
        for i in 7..10u64 {
            let t = new(&m, &key(i));
            m.confirm(&key(i), t, TTL);
        }
        assert_eq!(m.held(), 10);
        for i in 10..17u64 {
            new(&m, &key(i));
        }
        assert_eq!(m.held(), 10);
        assert!(m.claim(&key(17), TTL).is_err());
        assert!((7..10).all(|i| m.claim(&key(i), TTL) == Ok(Claim::Delivered)));
        assert!((10..17).all(|i| m.claim(&key(i), TTL) == Ok(Claim::InFlight)));
    }

    #[test]
    fn sweeps_are_rate_limited() {
        let m = MemoryStore::build(2, Duration::from_secs(3600));
        let a = new(&m, &key(1));
        m.release(&key(1), a);
        new(&m, &key(2));
        // Full: the first sweep frees the released slot.
        let c = new(&m, &key(3));
        m.release(&key(3), c);
        // Full again with a released slot, but the next sweep is an hour
        // away: refused at once, without reading the store.
        assert!(m.claim(&key(4), TTL).is_err());
    }

    #[test]
    fn a_route_cannot_fill_the_store_for_the_others() {
        let m = eager(100);
        m.set_quotas(&[(Arc::from("busy"), 50), (Arc::from("quiet"), 50)]);
        for i in 0..50u64 {
            let t = new(&m, &key_on("busy", i));
            m.confirm(&key_on("busy", i), t, TTL);
        }
        let full = m.claim(&key_on("busy", 50), TTL).unwrap_err();
        assert_eq!(full.limit, FullLimit::Route);
        assert_eq!((full.held, full.bound), (50, 50));
        // The other route still has its whole share.
        for i in 0..50u64 {
            new(&m, &key_on("quiet", i));
        }
        let usage = m.route_usage();
        let busy = usage.iter().find(|u| &*u.route == "busy").unwrap();
        assert_eq!((busy.held, busy.quota), (50, 50));
    }

    #[test]
    fn attempts_count_every_claim_until_delivered() {
        let m = MemoryStore::new(100);
        let t1 = new(&m, &key(1));
        assert_eq!(t1.attempt, 1);
        m.release(&key(1), t1);
        let t2 = new(&m, &key(1));
        assert_eq!(t2.attempt, 2);
        m.release(&key(1), t2);
        let t3 = new(&m, &key(1));
        assert_eq!(t3.attempt, 3);
        m.confirm(&key(1), t3, TTL);
        assert_eq!(m.claim(&key(1), TTL), Ok(Claim::Delivered));
        // Warmed from the journal: two sends with no outcome.
        m.warm_attempts(&key(2), 2, TTL);
        assert_eq!(new(&m, &key(2)).attempt, 3);
        assert_eq!(m.entries(), 2);
    }

    #[test]
    fn renew_keeps_our_claim_and_refuses_someone_elses() {
        let m = MemoryStore::new(100);
        let Ok(Claim::New(old)) = m.claim(&key(1), Duration::ZERO) else {
            panic!()
        };
        // Lapsed and not re-claimed: renewing takes it back.
        assert!(m.renew(&key(1), old, TTL));
        assert_eq!(m.claim(&key(1), TTL), Ok(Claim::InFlight));
        // Lapsed and re-claimed by another copy: ours is gone.
        let Ok(Claim::New(first)) = m.claim(&key(2), Duration::ZERO) else {
            panic!()
        };
        let second = new(&m, &key(2));
        assert!(!m.renew(&key(2), first, TTL));
        assert!(m.renew(&key(2), second, TTL));
        // The late confirm still records the delivery, and says it was taken.
        assert_eq!(m.confirm(&key(2), first, TTL), Confirmed::Taken);
        assert_eq!(m.claim(&key(2), TTL), Ok(Claim::Delivered));
        assert!(
            !m.renew(&key(2), second, TTL),
            "delivered: nothing to renew"
        );
        assert_eq!(m.confirm(&key(2), second, TTL), Confirmed::Taken);
    }

    #[test]
    fn a_confirm_that_finds_its_claim_gone_says_so() {
        let m = MemoryStore::new(100);
        let Ok(Claim::New(t)) = m.claim(&key(1), Duration::ZERO) else {
            panic!()
        };
        assert_eq!(m.confirm(&key(1), t, TTL), Confirmed::Lapsed);
        assert_eq!(m.claim(&key(1), TTL), Ok(Claim::Delivered));
    }

    #[test]
    fn delivery_records_are_kept_over_the_bound() {
        let m = eager(2);
        let a = new(&m, &key(1));
        let b = new(&m, &key(2));
        // Both claims lapse, a sweep drops them, others take the room...
        m.renew(&key(1), a, Duration::ZERO);
        m.renew(&key(2), b, Duration::ZERO);
        new(&m, &key(3));
        new(&m, &key(4));
        // ...and the first two were delivered after all: both recorded.
        assert_eq!(m.confirm(&key(1), a, TTL), Confirmed::Lapsed);
        assert_eq!(m.confirm(&key(2), b, TTL), Confirmed::Lapsed);
        assert_eq!(m.held(), 4);
        assert_eq!(m.claim(&key(1), TTL), Ok(Claim::Delivered));
    }
}
