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
//! calls [`ClaimGuard::renew`] right before it forwards: the claim is
//! extended to a full life, which the forward (bounded by
//! `upstream_timeout`) cannot outlast, and if the claim is found in other
//! hands (it lapsed and a copy claimed it, or the store lost it) the flow
//! stops there instead of forwarding a second copy. A confirm that still
//! finds its claim gone says so ([`Confirmed`]), and the flow counts it.

use std::time::Duration;

use super::{Claim, Confirmed, Key, ReplayStore, StoreError, Token};

/// An event's in-flight claim; released on drop unless settled.
pub struct ClaimGuard {
    store: ReplayStore,
    key: Key,
    token: Token,
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
        Ok(match store.claim(key, life).await? {
            Claim::New(token) => Claim::New(ClaimGuard {
                store: store.clone(),
                key: key.clone(),
                token,
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
    async fn renewing_extends_the_claim_past_its_first_life() {
        let store = ReplayStore::memory(100);
        let g = guard(&store, "e", Duration::ZERO).await;
        // Lapsed, nobody else claimed it: renewing takes it for a full life.
        assert!(g.renew(LIFE).await.unwrap());
        assert_eq!(state(&store, "e").await, Claim::InFlight);
    }
}
