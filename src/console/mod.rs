//! The console: what the people who run callgate read, on the admin
//! listener. Not a step of the request flow; the flow's one hook is
//! `pipeline::finish`, which hands every finished notification to
//! [`Recent::record`] right after its log line and metrics.
//!
//! * [`Recent`] keeps, in memory, the last notifications (bounded rings)
//!   and each route's counts by outcome for the last hour (one slot a
//!   minute). It lives in `pipeline::State`, so a reload keeps it; a
//!   restart starts it empty (the journal keeps the deliveries).
//! * [`api`] serves it as JSON (`GET /api/routes`, `/api/events`,
//!   `/api/rejections`, `/api/store`); [`page`] renders it as one HTML page
//!   (`GET /`), escaped with [`html::escape`], under a Content-Security-
//!   Policy that lets the page load nothing at all.
//!
//! What is kept of a notification: time, route, provider, outcome and
//! status, the refusal's `reason` (label and the words of the log line),
//! peer and source address, merchant, event id, order number (the
//! merchant's own `out_trade_no` / `orderId` / `tradeNum`, marked
//! unverified when its signature did not check out), the shop's answer
//! (status, duration) and the request's duration. Never a body, a
//! signature, a key or a buyer's account id: the entry has no field that
//! could hold one.
//!
//! The rings are separate so that nobody can push the deliveries out:
//! deliveries (verified, not a repeat), repeats of verified events
//! (`duplicate`, `in_flight`, `replay`, `stale`: what a captured genuine
//! notification produces), refusals from an allowed source address, and
//! refusals of everything else (scanners, unlisted addresses, unknown
//! paths). Each ring drops its oldest entry when full.
//!
//! Recording takes one short mutex (a push into a ring and one counter
//! bump); nothing is allocated under it.

pub mod api;
mod fixes;
pub mod html;
pub mod page;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::ack::Outcome;

pub use fixes::{all as all_fixes, fix};

/// Deliveries kept: verified notifications that were not repeats.
pub const DELIVERIES_KEPT: usize = 2048;
/// Repeats of verified events kept (`duplicate`, `in_flight`, `replay`,
/// `stale`).
pub const REPEATS_KEPT: usize = 512;
/// Refusals from an allowed source address kept.
pub const REFUSALS_ADMITTED_KEPT: usize = 1024;
/// Refusals of anything else kept (unknown path, unlisted address).
pub const REFUSALS_OTHER_KEPT: usize = 256;
/// The longest order number kept, in characters.
pub const ORDER_CHARS: usize = 64;
/// The longest refusal reason kept, in characters.
pub const REASON_CHARS: usize = 300;
/// Problems of a refused reload kept.
const RELOAD_PROBLEMS_KEPT: usize = 20;

/// One minute a slot, one hour in all.
const MINUTES: usize = 60;

/// A finished notification, as the console shows it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Order of recording (newest is highest).
    pub seq: u64,
    /// Unix seconds.
    pub unix: i64,
    pub request_id: String,
    /// The route's name; `-` when no route matched.
    pub route: Arc<str>,
    pub provider: &'static str,
    pub outcome: Outcome,
    /// The `reason` label of `callgate_rejections_total`, for a refusal.
    pub reason_label: Option<&'static str>,
    /// The reason in words (the log line's `reason`), cut to
    /// [`REASON_CHARS`].
    pub reason: Option<String>,
    /// The request's path as sent (cut like the log line's); empty for
    /// entries read back from the journal.
    pub path: String,
    pub peer: SocketAddr,
    /// The source address callgate decided on.
    pub client: Option<IpAddr>,
    pub merchant: Option<Box<str>>,
    /// Set once the signature checked out.
    pub event_id: Option<String>,
    pub order: Option<Order>,
    /// What the shop answered, when it was asked.
    pub shop: Option<ShopAnswer>,
    pub took: Duration,
}

/// The merchant's own order number of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Cut to [`ORDER_CHARS`].
    pub number: String,
    /// Whether it was read from a notification whose signature checked out
    /// (else it is only what the body claims).
    pub verified: bool,
}

impl Order {
    pub fn new(number: impl Into<String>, verified: bool) -> Order {
        let mut number = number.into();
        if let Some((end, _)) = number.char_indices().nth(ORDER_CHARS) {
            number.truncate(end);
        }
        Order { number, verified }
    }
}

/// The shop's answer to a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShopAnswer {
    /// Its HTTP status; `None` when it did not answer (timeout, refused).
    pub status: Option<u16>,
    pub took: Duration,
}

/// The last reload (or the start), as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadResult {
    pub unix: i64,
    pub ok: bool,
    /// Routes live after it.
    pub routes: usize,
    /// Why it was refused (`PATH:LINE: message`), the first
    /// [`RELOAD_PROBLEMS_KEPT`].
    pub problems: Vec<String>,
}

/// Which ring an entry goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ring {
    Deliveries,
    Repeats,
    RefusedAdmitted,
    RefusedOther,
}

impl Ring {
    fn of(e: &Entry) -> Ring {
        let repeat = matches!(
            e.outcome,
            Outcome::Duplicate | Outcome::InFlight | Outcome::Replay | Outcome::Stale
        );
        match (&e.event_id, repeat) {
            (Some(_), true) => Ring::Repeats,
            (Some(_), false) => Ring::Deliveries,
            // Past the address check (the route matched and the source is
            // allowed) or not.
            (None, _) if e.client.is_some() && !matches!(e.outcome, Outcome::IpDenied) => {
                Ring::RefusedAdmitted
            }
            (None, _) => Ring::RefusedOther,
        }
    }
}

/// A ring of the newest `cap` entries.
#[derive(Debug)]
struct Kept {
    cap: usize,
    entries: VecDeque<Entry>,
}

impl Kept {
    fn new(cap: usize) -> Kept {
        Kept {
            cap,
            entries: VecDeque::with_capacity(cap),
        }
    }

    fn push(&mut self, e: Entry) -> Option<Entry> {
        let dropped = if self.entries.len() >= self.cap {
            self.entries.pop_front()
        } else {
            None
        };
        self.entries.push_back(e);
        dropped
    }
}

/// A route's counts by outcome, one slot a minute.
#[derive(Debug, Clone)]
struct Hour {
    /// (minute since the epoch, counts by `Outcome::ALL` index).
    slots: [(i64, [u32; Outcome::ALL.len()]); MINUTES],
}

impl Hour {
    fn new() -> Hour {
        Hour {
            slots: [(i64::MIN, [0; Outcome::ALL.len()]); MINUTES],
        }
    }

    fn count(&mut self, unix: i64, outcome: Outcome) {
        let minute = unix.div_euclid(60);
        let slot = &mut self.slots[minute.rem_euclid(MINUTES as i64) as usize];
        if slot.0 != minute {
            *slot = (minute, [0; Outcome::ALL.len()]);
        }
        let i = outcome_index(outcome);
        slot.1[i] = slot.1[i].saturating_add(1);
    }

    /// Counts of the 60 minutes up to `now`, by outcome.
    fn last_hour(&self, now: i64) -> [u64; Outcome::ALL.len()] {
        let minute = now.div_euclid(60);
        let mut sum = [0u64; Outcome::ALL.len()];
        for (m, counts) in &self.slots {
            if *m > minute - MINUTES as i64 && *m <= minute {
                for (s, c) in sum.iter_mut().zip(counts) {
                    *s += u64::from(*c);
                }
            }
        }
        sum
    }
}

fn outcome_index(o: Outcome) -> usize {
    Outcome::ALL.iter().position(|x| *x == o).unwrap_or(0)
}

/// Counts by outcome label (`upstream_error` sums the 502s and 504s), only
/// those above zero.
pub type Counts = Vec<(&'static str, u64)>;

#[derive(Debug)]
struct Inner {
    seq: u64,
    deliveries: Kept,
    repeats: Kept,
    refused_admitted: Kept,
    refused_other: Kept,
    hours: HashMap<Arc<str>, Hour>,
    reload: Option<ReloadResult>,
}

/// What the console knows of recent traffic. See the module docs.
#[derive(Debug)]
pub struct Recent {
    inner: Mutex<Inner>,
}

impl Default for Recent {
    fn default() -> Self {
        Recent::new()
    }
}

/// Which entries a listing wants.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub route: Option<String>,
    /// An outcome label (`forwarded`, `upstream_error`, ...).
    pub outcome: Option<String>,
    /// Unix seconds, inclusive.
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// An event id or an order number, exactly.
    pub q: Option<String>,
    pub limit: usize,
}

impl Query {
    fn matches(&self, e: &Entry) -> bool {
        self.route.as_deref().is_none_or(|r| *e.route == *r)
            && self
                .outcome
                .as_deref()
                .is_none_or(|o| e.outcome.as_str() == o)
            && self.since.is_none_or(|t| e.unix >= t)
            && self.until.is_none_or(|t| e.unix <= t)
            && self.q.as_deref().is_none_or(|q| {
                e.event_id.as_deref() == Some(q) || e.order.as_ref().is_some_and(|o| o.number == q)
            })
    }
}

/// Which notifications a listing is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Verified notifications: deliveries and repeats.
    Events,
    /// Every refusal (outcome without the platform's success ack).
    Rejections,
    /// Everything kept (a search for an order or event).
    All,
}

impl Recent {
    pub fn new() -> Recent {
        Recent {
            inner: Mutex::new(Inner {
                seq: 0,
                deliveries: Kept::new(DELIVERIES_KEPT),
                repeats: Kept::new(REPEATS_KEPT),
                refused_admitted: Kept::new(REFUSALS_ADMITTED_KEPT),
                refused_other: Kept::new(REFUSALS_OTHER_KEPT),
                hours: HashMap::new(),
                reload: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Keeps a finished notification and counts it for its route's hour.
    /// The entry dropped to make room is freed after the lock is let go.
    pub fn record(&self, mut e: Entry) {
        if let Some(r) = &mut e.reason
            && let Some((end, _)) = r.char_indices().nth(REASON_CHARS)
        {
            r.truncate(end);
        }
        let ring = Ring::of(&e);
        let dropped = {
            let mut inner = self.lock();
            inner.seq += 1;
            e.seq = inner.seq;
            match inner.hours.get_mut(&*e.route) {
                Some(h) => h.count(e.unix, e.outcome),
                None => {
                    let mut h = Hour::new();
                    h.count(e.unix, e.outcome);
                    inner.hours.insert(e.route.clone(), h);
                }
            }
            match ring {
                Ring::Deliveries => inner.deliveries.push(e),
                Ring::Repeats => inner.repeats.push(e),
                Ring::RefusedAdmitted => inner.refused_admitted.push(e),
                Ring::RefusedOther => inner.refused_other.push(e),
            }
        };
        drop(dropped);
    }

    /// The entries of `listing` that `query` matches, newest first, at most
    /// `query.limit`.
    pub fn list(&self, listing: Listing, query: &Query) -> Vec<Entry> {
        let inner = self.lock();
        let rings: &[&Kept] = match listing {
            Listing::Events => &[&inner.deliveries, &inner.repeats],
            Listing::Rejections | Listing::All => &[
                &inner.deliveries,
                &inner.repeats,
                &inner.refused_admitted,
                &inner.refused_other,
            ],
        };
        let mut out: Vec<&Entry> = rings
            .iter()
            .flat_map(|k| k.entries.iter())
            .filter(|e| listing != Listing::Rejections || !e.outcome.is_success())
            .filter(|e| query.matches(e))
            .collect();
        out.sort_unstable_by_key(|e| std::cmp::Reverse(e.seq));
        out.into_iter().take(query.limit).cloned().collect()
    }

    /// A route's counts for the hour up to `now`.
    pub fn last_hour(&self, route: &str, now: i64) -> Counts {
        let inner = self.lock();
        let Some(h) = inner.hours.get(route) else {
            return Vec::new();
        };
        let sums = h.last_hour(now);
        let mut out: Counts = Vec::new();
        for (o, n) in Outcome::ALL.iter().zip(sums) {
            if n == 0 {
                continue;
            }
            match out.iter_mut().find(|(l, _)| *l == o.as_str()) {
                Some((_, c)) => *c += n,
                None => out.push((o.as_str(), n)),
            }
        }
        out
    }

    /// Records how the last reload (or the start) went.
    pub fn reloaded(&self, unix: i64, ok: bool, routes: usize, problems: &[String]) {
        let problems = problems
            .iter()
            .take(RELOAD_PROBLEMS_KEPT)
            .cloned()
            .collect();
        self.lock().reload = Some(ReloadResult {
            unix,
            ok,
            routes,
            problems,
        });
    }

    pub fn last_reload(&self) -> Option<ReloadResult> {
        self.lock().reload.clone()
    }
}

/// The route name of a request no route matched (`-`), shared.
pub fn no_route() -> Arc<str> {
    static NO_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("-"));
    NO_ROUTE.clone()
}

/// A duration in milliseconds, to a tenth.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Keeps the deliveries the journal recorded before a restart (oldest
/// first), so the console and its search see them; the route's provider
/// comes from `routes` (`-` for a route no longer configured).
pub fn warm(
    recent: &Recent,
    routes: &crate::rules::Routes,
    arrivals: Vec<(crate::journal::Received, crate::journal::OutcomeRecord)>,
) {
    for (rec, out) in arrivals {
        let outcome = Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == out.outcome && o.status().as_u16() == out.status)
            .or_else(|| Outcome::ALL.into_iter().find(|o| o.as_str() == out.outcome));
        let (Some(outcome), Ok(client)) = (outcome, rec.client.parse::<IpAddr>()) else {
            continue;
        };
        let route = routes.named(&rec.route);
        recent.record(Entry {
            seq: 0,
            unix: out.unix,
            request_id: rec.rid,
            route: route.map_or_else(|| Arc::from(rec.route.as_str()), |r| r.name.clone()),
            provider: route.map_or("-", |r| r.kind().as_str()),
            outcome,
            reason_label: None,
            reason: None,
            path: String::new(),
            peer: SocketAddr::new(client, 0),
            client: Some(client),
            merchant: (!rec.merchant.is_empty()).then(|| rec.merchant.into()),
            event_id: Some(rec.event_id),
            order: rec.order.map(|o| Order::new(o, true)),
            shop: out.shop_ms.map(|ms| ShopAnswer {
                status: out.shop_status,
                took: Duration::from_secs_f64(ms.max(0.0) / 1000.0),
            }),
            took: Duration::ZERO,
        });
    }
}

/// Days left until a notAfter (Unix seconds) at `now`, rounded down;
/// negative once expired.
pub fn days_left(not_after: i64, now: i64) -> i64 {
    (not_after - now).div_euclid(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(outcome: Outcome, event: Option<&str>, client: bool) -> Entry {
        Entry {
            seq: 0,
            unix: 1_800_000_000,
            request_id: "r".into(),
            route: "shop".into(),
            provider: "alipay",
            outcome,
            reason_label: None,
            reason: None,
            path: "/notify".into(),
            peer: "127.0.0.1:1".parse().unwrap(),
            client: client.then(|| "127.0.0.1".parse().unwrap()),
            merchant: None,
            event_id: event.map(str::to_owned),
            order: None,
            shop: None,
            took: Duration::ZERO,
        }
    }

    fn all(limit: usize) -> Query {
        Query {
            limit,
            ..Query::default()
        }
    }

    #[test]
    fn a_flood_of_refusals_or_repeats_keeps_the_deliveries() {
        let r = Recent::new();
        r.record(entry(Outcome::Forwarded, Some("e1"), true));
        for _ in 0..REFUSALS_OTHER_KEPT * 4 {
            r.record(entry(Outcome::NotFound, None, false));
        }
        for _ in 0..REFUSALS_ADMITTED_KEPT * 2 {
            r.record(entry(Outcome::BadSignature, None, true));
        }
        for _ in 0..REPEATS_KEPT * 2 {
            r.record(entry(Outcome::Duplicate, Some("e1"), true));
        }
        let events = r.list(Listing::All, &all(usize::MAX));
        assert_eq!(
            events.len(),
            1 + REFUSALS_OTHER_KEPT + REFUSALS_ADMITTED_KEPT + REPEATS_KEPT
        );
        assert!(
            events
                .iter()
                .any(|e| e.outcome == Outcome::Forwarded && e.event_id.as_deref() == Some("e1"))
        );
    }

    #[test]
    fn listings_are_newest_first_and_bounded() {
        let r = Recent::new();
        for i in 0..10 {
            r.record(entry(Outcome::Forwarded, Some(&format!("e{i}")), true));
        }
        r.record(entry(Outcome::BadSignature, None, true));
        let got = r.list(Listing::Events, &all(3));
        let ids: Vec<_> = got.iter().map(|e| e.event_id.clone().unwrap()).collect();
        assert_eq!(ids, ["e9", "e8", "e7"]);
        let refused = r.list(Listing::Rejections, &all(100));
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].outcome, Outcome::BadSignature);
    }

    #[test]
    fn search_finds_an_order_in_every_ring() {
        let r = Recent::new();
        let mut delivered = entry(Outcome::Forwarded, Some("e1"), true);
        delivered.order = Some(Order::new("ORDER-1", true));
        let mut duplicate = entry(Outcome::Duplicate, Some("e1"), true);
        duplicate.order = Some(Order::new("ORDER-1", true));
        let mut refused = entry(Outcome::BadSignature, None, true);
        refused.order = Some(Order::new("ORDER-1", false));
        let mut other = entry(Outcome::Forwarded, Some("e2"), true);
        other.order = Some(Order::new("ORDER-2", true));
        for e in [delivered, duplicate, refused, other] {
            r.record(e);
        }
        let q = Query {
            q: Some("ORDER-1".into()),
            limit: 100,
            ..Query::default()
        };
        let found: Vec<Outcome> = r.list(Listing::All, &q).iter().map(|e| e.outcome).collect();
        assert_eq!(
            found,
            [
                Outcome::BadSignature,
                Outcome::Duplicate,
                Outcome::Forwarded
            ]
        );
    }

    #[test]
    fn the_hour_forgets_older_minutes() {
        let mut h = Hour::new();
        let t = 1_800_000_000;
        h.count(t - 3600, Outcome::Forwarded);
        h.count(t - 60, Outcome::Forwarded);
        h.count(t, Outcome::BadSignature);
        h.count(t, Outcome::BadSignature);
        let sums = h.last_hour(t);
        assert_eq!(sums[outcome_index(Outcome::Forwarded)], 1);
        assert_eq!(sums[outcome_index(Outcome::BadSignature)], 2);
        // The same slot an hour later starts again.
        h.count(t + 3600, Outcome::Forwarded);
        assert_eq!(
            h.last_hour(t + 3600)[outcome_index(Outcome::BadSignature)],
            0
        );
    }

    #[test]
    fn long_reasons_and_orders_are_cut() {
        let r = Recent::new();
        let mut e = entry(Outcome::BadSignature, None, true);
        e.reason = Some("x".repeat(10_000));
        r.record(e);
        let got = r.list(Listing::Rejections, &all(1));
        assert_eq!(got[0].reason.as_ref().unwrap().len(), REASON_CHARS);
        assert_eq!(Order::new("9".repeat(500), false).number.len(), ORDER_CHARS);
    }

    #[test]
    fn days_left_rounds_down() {
        assert_eq!(days_left(86_400 * 10 + 5, 0), 10);
        assert_eq!(days_left(100, 200), -1);
    }
}
