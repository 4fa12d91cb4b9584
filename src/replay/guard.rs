//! The in-flight claim as a value the flow holds from claim to outcome.
//!
//! [`ClaimGuard::claim`] takes an event's claim; the guard then has to end
//! in [`ClaimGuard::confirm`] (delivered) or [`ClaimGuard::release`] (not
//! delivered). A guard dropped without either (a request cancelled half-way,
//! a panic) gives the claim back on its own, so the platform's retry is not
//! held at 409 until the claim lapses.
//!
//! A claim lives `in_flight_ttl` (`limits.upstream_timeout + 30s` on the
//! request path). The steps before the forward are not all bounded (a
//! journal write under `fsync = "always"` waits for the disk), so the flow
//! renews the claim right before it forwards: the claim is
//! extended to a full life, which the forward (bounded by
//! `upstream_timeout`) cannot outlast, and if the claim is found in other
//! hands (it lapsed and a copy claimed it, or the store lost it) the flow
//! stops there instead of forwarding a second copy. A confirm that still
//! finds its claim gone says so ([`Confirmed`]), and the flow counts it.
//!
//! The renewal costs a store round trip (on Redis, a third one per
//! forward), so [`ClaimGuard::hold_for_forward`] skips it when it can tell
//! nothing happened that it would catch: the claim is younger than
//! [`FRESH_CLAIM`] (it cannot have lapsed, and what is left of its life
//! outlasts the forward) and no step that waits on something outside the
//! request's own CPU work ran since it was taken (the flow says which:
//! `notify_verify`, a journal write that waits for the disk).

use std::time::{Duration, Instant};

use super::{Claim, Confirmed, Key, ReplayStore, StoreError, Token};

/// How young a claim must be for [`ClaimGuard::hold_for_forward`] to trust
/// it without asking the store: well below any claim's life (30 s more
/// than the forward may take), and far above the time the steps between a
/// claim and its forward take when none of them waits (microseconds; a
/// loaded machine's scheduling stalls included).
pub const FRESH_CLAIM: Duration = Duration::from_secs(5);

/// An event's in-flight claim; released on drop unless settled.
pub struct ClaimGuard {
    store: ReplayStore,
    key: Key,
    token: Token,
    /// Just before the claim was asked for: the claim's life runs from a
    /// moment after this.
    asked: Instant,
    /// How long the claim was taken for.
    life: Duration,
    /// Confirmed, released, or handed over: nothing to do on drop.
    settled: bool,
}

impl ClaimGuard {
    /// Claims `key` for `life`.
    pub async fn claim(
        store: &ReplayStore,
        key: &Key,
        life: Duration,
    ) -> Result<Claim<ClaimGuard>, StoreError> {
        let asked = Instant::now();
        Ok(match store.claim(key, life).await? {
            Claim::New(token) => Claim::New(ClaimGuard {
                store: store.clone(),
                key: key.clone(),
                token,
                asked,
                life,
                settled: false,
            }),
            Claim::InFlight => Claim::InFlight,
            Claim::Delivered => Claim::Delivered,
        })
    }

    /// Which attempt at delivering the event this is (1 the first time).
    pub fn attempt(&self) -> u32 {
        self.token.attempt()
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Extends the claim to a full `life` from now. `Ok(false)`: the claim
    /// is someone else's now (or the event was delivered): do not forward.
    pub async fn renew(&self, life: Duration) -> Result<bool, StoreError> {
        self.store.renew(&self.key, self.token, life).await
    }

    /// Makes sure the claim is ours for a forward that takes at most
    /// `forward`, renewed to a full `life` from now when it has to be:
    /// when `waited` (a step since the claim waited on the network or the
    /// disk), when the claim is older than [`FRESH_CLAIM`], or when what
    /// is left of its life may not cover the forward. Otherwise it cannot
    /// have lapsed, and the store is not asked. `Ok(false)`: the claim is
    /// someone else's now (or the event was delivered): do not forward.
    pub async fn hold_for_forward(
        &self,
        life: Duration,
        forward: Duration,
        waited: bool,
    ) -> Result<bool, StoreError> {
        let age = self.asked.elapsed();
        let fresh = age < FRESH_CLAIM && self.life.saturating_sub(age) > forward + FRESH_CLAIM;
        if fresh && !waited {
            return Ok(true);
        }
        self.renew(life).await
    }

    /// Records the delivery for `ttl`; the answer says whether the claim
    /// was still ours. On `Err` the guard stays armed (retry, or drop it).
    pub async fn confirm(&mut self, ttl: Duration) -> Result<Confirmed, StoreError> {
        let found = self.store.confirm(&self.key, self.token, ttl).await?;
        self.settled = true;
        Ok(found)
    }

    /// Gives the claim back. On `Err` the guard stays armed.
    pub async fn release(&mut self) -> Result<(), StoreError> {
        self.store.release(&self.key, self.token).await?;
        self.settled = true;
        Ok(())
    }

    /// Gives up the claim without touching the store (it lapses by itself,
    /// or is not ours any more).
    pub fn disarm(mut self) {
        self.settled = true;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (store, key, token) = (self.store.clone(), self.key.clone(), self.token);
        match &store {
            ReplayStore::Memory(m) => m.release(&key, token),
            ReplayStore::Redis(_) => {
                // Best effort: without a runtime the claim lapses by itself.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = store.release(&key, token).await;
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const LIFE: Duration = Duration::from_secs(60);
    const TTL: Duration = Duration::from_secs(3600);

    fn key(id: &str) -> Key {
        Key::recorded(&Arc::from("r"), "m", id)
    }

    async fn guard(store: &ReplayStore, id: &str, life: Duration) -> ClaimGuard {
        match ClaimGuard::claim(store, &key(id), life).await.unwrap() {
            Claim::New(g) => g,
            _ => panic!("{id} not new"),
        }
    }

    async fn state(store: &ReplayStore, id: &str) -> Claim {
        store.claim(&key(id), LIFE).await.unwrap()
    }

    #[tokio::test]
    async fn a_dropped_guard_gives_the_claim_back() {
        let store = ReplayStore::memory(100);
        let g = guard(&store, "a", LIFE).await;
        assert_eq!(state(&store, "a").await, Claim::InFlight);
        drop(g);
        let Claim::New(t) = state(&store, "a").await else {
            panic!("released on drop")
        };
        assert_eq!(t.attempt(), 2, "the dropped claim was an attempt");
    }

    #[tokio::test]
    async fn a_settled_or_disarmed_guard_leaves_the_store_alone() {
        let store = ReplayStore::memory(100);
        let mut g = guard(&store, "a", LIFE).await;
        assert_eq!(g.confirm(TTL).await.unwrap(), Confirmed::Held);
        drop(g);
        assert_eq!(state(&store, "a").await, Claim::Delivered);
        let g = guard(&store, "b", LIFE).await;
        g.disarm();
        assert_eq!(state(&store, "b").await, Claim::InFlight);
    }

    #[tokio::test]
    async fn renewing_before_the_forward_stops_a_second_copy() {
        let store = ReplayStore::memory(100);
        // The first copy's claim lapses during a slow step...
        let first = guard(&store, "e", Duration::ZERO).await;
        // ...a copy claims the event anew...
        let mut second = guard(&store, "e", LIFE).await;
        // ...and the first copy, about to forward, finds it is not its own.
        assert!(!first.renew(LIFE).await.unwrap());
        first.disarm();
        assert!(second.renew(LIFE).await.unwrap());
        assert_eq!(second.confirm(TTL).await.unwrap(), Confirmed::Held);
    }

    #[tokio::test]
    async fn a_fresh_claim_is_held_without_asking_the_store() {
        let store = ReplayStore::memory(100);
        let g = guard(&store, "e", LIFE).await;
        // Lost with the store (a failover, a DEL) and claimed by a copy.
        store.release(&key("e"), g.token).await.unwrap();
        let _copy = guard(&store, "e", LIFE).await;
        let forward = Duration::from_secs(5);
        // Nothing waited since the claim: not asked, the confirm tells.
        assert!(g.hold_for_forward(LIFE, forward, false).await.unwrap());
        // A step waited: asked, and found in other hands.
        assert!(!g.hold_for_forward(LIFE, forward, true).await.unwrap());
        g.disarm();
    }

    #[tokio::test]
    async fn a_claim_too_short_for_the_forward_is_renewed() {
        let store = ReplayStore::memory(100);
        // Lapses at once, so a copy takes it; the first copy, though
        // nothing waited, is asked because its life cannot cover a forward.
        let first = guard(&store, "e", Duration::ZERO).await;
        let _copy = guard(&store, "e", LIFE).await;
        assert!(
            !first
                .hold_for_forward(LIFE, Duration::from_secs(5), false)
                .await
                .unwrap()
        );
        first.disarm();
    }

    #[tokio::test]
    async fn renewing_extends_the_claim_past_its_first_life() {
        let store = ReplayStore::memory(100);
        let g = guard(&store, "e", Duration::ZERO).await;
        // Lapsed, nobody else claimed it: renewing takes it for a full life.
        assert!(g.renew(LIFE).await.unwrap());
        assert_eq!(state(&store, "e").await, Claim::InFlight);
    }
}
