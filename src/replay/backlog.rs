//! Deliveries the replay store has not recorded yet.
//!
//! A route with `on_store_error = "open"` forwards while the store is down.
//! Each event it delivers that way is kept here (bounded: [`Backlog::MAX`],
//! the oldest dropped and counted beyond that), and written to the store as
//! delivered once it answers again (`pipeline` drains it in the
//! background), so the platform's later retry is a duplicate, not a second
//! delivery. While the store stays down, a copy of an event listed here is
//! answered as a duplicate from this list.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::Key;

/// The bounded list of unrecorded deliveries.
pub struct Backlog {
    list: Mutex<VecDeque<(Key, Instant)>>,
    /// Whether a task is draining it now.
    draining: AtomicBool,
    max: usize,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog::new(Backlog::MAX)
    }
}

impl Backlog {
    /// Most deliveries kept (about 100 bytes each).
    pub const MAX: usize = 100_000;

    pub fn new(max: usize) -> Backlog {
        Backlog {
            list: Mutex::new(VecDeque::new()),
            draining: AtomicBool::new(false),
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Key, Instant)>> {
        match self.list.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records a delivery made at `at`. Returns `false` when the oldest
    /// entry had to be dropped to make room.
    pub fn push(&self, key: Key, at: Instant) -> bool {
        let mut list = self.lock();
        let room = list.len() < self.max;
        if !room {
            list.pop_front();
        }
        list.push_back((key, at));
        room
    }

    /// Whether `key` was delivered and is still waiting to be recorded.
    pub fn contains(&self, key: &Key) -> bool {
        self.lock().iter().any(|(k, _)| k.digest == key.digest)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The oldest entry, left in place until [`Backlog::done`].
    pub fn front(&self) -> Option<(Key, Instant)> {
        self.lock().front().cloned()
    }

    /// Removes the entry for `key` once it is recorded.
    pub fn done(&self, key: &Key) {
        let mut list = self.lock();
        if let Some(i) = list.iter().position(|(k, _)| k.digest == key.digest) {
            list.remove(i);
        }
    }

    /// Becomes the one drainer; `false` when another task already is.
    pub fn start_draining(&self) -> bool {
        !self.draining.swap(true, Ordering::AcqRel)
    }

    /// Stops draining; `true` when entries arrived meanwhile and the
    /// caller took the drainer's place again.
    pub fn stop_draining(&self) -> bool {
        self.draining.store(false, Ordering::Release);
        !self.is_empty() && self.start_draining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(id: &str) -> Key {
        Key::recorded(&Arc::from("r"), "m", id)
    }

    #[test]
    fn bounded_oldest_first() {
        let b = Backlog::new(2);
        let now = Instant::now();
        assert!(b.push(key("a"), now));
        assert!(b.push(key("b"), now));
        assert!(!b.push(key("c"), now), "a is dropped");
        assert!(!b.contains(&key("a")));
        assert!(b.contains(&key("b")) && b.contains(&key("c")));
        assert_eq!(b.front().unwrap().0, key("b"));
        b.done(&key("b"));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn one_drainer_at_a_time() {
        let b = Backlog::new(10);
        assert!(b.start_draining());
        assert!(!b.start_draining());
        b.push(key("a"), Instant::now());
        assert!(b.stop_draining(), "work arrived: keep draining");
        b.done(&key("a"));
        assert!(!b.stop_draining());
        assert!(b.start_draining());
    }
}
