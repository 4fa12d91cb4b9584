//! Metrics: one owned Prometheus registry (never the global one, so every
//! gateway in a test process has clean counters), served on the admin
//! listener only.
//!
//! Labels come from bounded sets: `route` (configured names, `-` when no
//! route matched), `provider` (the enum, `-` when unmatched) and `outcome`
//! (the enum); `key` of `callgate_key_expiry_timestamp_seconds` is
//! `<keys field>:<serial>` of a configured certificate (`tls_cert` for the
//! TLS certificate, under route `-`), so it is bounded by the configuration. Every request is recorded together with its log line, before
//! its response is written, so a scrape right after a response sees it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::ack::Outcome;
use crate::config::Snapshot;
use crate::rules::Route;

/// Every `callgate_*` family.
#[derive(Clone)]
pub struct Metrics {
    /// Tells this registry's [`RouteSeries`] from another gateway's (in a
    /// test process); unique per [`Metrics::new`], shared by clones.
    id: u64,
    registry: Registry,
    requests: IntCounterVec,
    rejections: IntCounterVec,
    merchant_requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    reloads: IntCounterVec,
    loaded_routes: IntGauge,
    store_entries: IntGauge,
    store_errors: IntCounterVec,
    journal_errors: IntCounter,
    journal_pruned_within_ttl: IntCounter,
    last_reload: IntGauge,
    key_expiry: IntGaugeVec,
    store_up: IntGauge,
    connections_open: IntGauge,
    last_reload_ok: IntGauge,
    connections_refused: IntCounterVec,
    write_timeouts: IntCounterVec,
    worker_requests: IntCounterVec,
    claims_lost: IntCounterVec,
    store_full: IntCounterVec,
    route_entries: IntGaugeVec,
    route_quota: IntGaugeVec,
    store_evicting: IntGauge,
    backlog: IntGauge,
    backlog_dropped: IntCounter,
    repeat_deliveries: IntCounterVec,
    requests_in_flight: IntGauge,
    store: StoreTopologyFamilies,
}

/// The Redis deployment as the replay store sees it.
#[derive(Clone)]
struct StoreTopologyFamilies {
    info: IntGaugeVec,
    replicas: IntGauge,
    replicas_acked: IntGauge,
    unreplicated: IntCounter,
    failovers: IntCounter,
    last_failover: IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Makes metric families and registers each in one registry.
struct Families<'r>(&'r Registry);

impl Families<'_> {
    fn register<C: prometheus::core::Collector + Clone + 'static>(
        &self,
        c: C,
    ) -> Result<C, prometheus::Error> {
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        self.register(IntCounter::new(name, help)?)
    }

    fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.register(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.register(IntGauge::new(name, help)?)
    }

    fn gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    /// Latency histograms ([`LATENCY_BUCKETS`]).
    fn histograms(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<HistogramVec, prometheus::Error> {
        self.register(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            labels,
        )?)
    }
}

impl Metrics {
    /// Builds and registers every family. Registration of fresh families in
    /// a fresh registry cannot collide, so failures here are bugs.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let f = Families(&registry);
        let requests = f.counters(
            "callgate_requests_total",
            "Notifications by route, provider and outcome.",
            &["route", "provider", "outcome"],
        )?;
        let rejections = f.counters(
            "callgate_rejections_total",
            "Refused (or dry-run refused) notifications by detailed reason.",
            &["route", "provider", "reason"],
        )?;
        let merchant_requests = f.counters(
            "callgate_merchant_requests_total",
            "Notifications per merchant, for routes with merchant_label = true.",
            &["route", "merchant", "outcome"],
        )?;
        let request_duration = f.histograms(
            "callgate_request_duration_seconds",
            "Time from request received to response, per route.",
            &["route"],
        )?;
        let upstream_duration = f.histograms(
            "callgate_upstream_duration_seconds",
            "Time spent forwarding to the upstream, per route.",
            &["route"],
        )?;
        let reloads = f.counters(
            "callgate_rules_reload_total",
            "Rule reloads by result.",
            &["result"],
        )?;
        let loaded_routes = f.gauge(
            "callgate_rules_loaded_routes",
            "Routes in the live rule set.",
        )?;
        let store_entries = f.gauge(
            "callgate_replay_store_entries",
            "Event ids and nonces held by the replay store (memory: lapsed slots until swept; Redis: DBSIZE).",
        )?;
        let store_errors = f.counters(
            "callgate_replay_store_errors_total",
            "Replay store operations that failed, by operation.",
            &["op"],
        )?;
        let journal_errors = f.counter(
            "callgate_journal_write_errors_total",
            "Journal writes that failed (the notification was refused with 503).",
        )?;
        let journal_pruned_within_ttl = f.counter(
            "callgate_journal_pruned_within_ttl_total",
            "Journal files deleted (journal.max_files) while their newest record was younger than replay.ttl: with the memory store, a restart forgets the deliveries they held.",
        )?;
        let last_reload = f.gauge(
            "callgate_rules_last_reload_success_timestamp_seconds",
            "Unix time the live rule set was loaded.",
        )?;
        let key_expiry = f.gauges(
            "callgate_key_expiry_timestamp_seconds",
            "notAfter (Unix time) of every certificate-backed key of the live rule set, and of the TLS certificate (route \"-\", key \"tls_cert\").",
            &["route", "key"],
        )?;
        let store_up = f.gauge(
            "callgate_replay_store_up",
            "1 when the replay store answered at the last scrape, 0 when it did not.",
        )?;
        let connections_open = f.gauge(
            "callgate_connections_open",
            "Notification connections open now (bounded by limits.max_connections).",
        )?;
        let connections_refused = f.counters(
            "callgate_connections_refused_total",
            "Connections closed at accept, by the limit that was full.",
            &["limit"],
        )?;
        let write_timeouts = f.counters(
            "callgate_write_timeouts_total",
            "Connections closed because the peer read nothing for limits.write_timeout, by listener.",
            &["listener"],
        )?;
        let worker_requests = f.counters(
            "callgate_worker_requests_total",
            "Notification requests read, by the worker thread (listen.workers) that served them.",
            &["worker"],
        )?;
        // A gauge, not the counter's increase: it stays 0 for as long as the
        // files on disk are broken, and returns to 1 with the next good reload.
        let last_reload_ok = f.gauge(
            "callgate_rules_last_reload_successful",
            "1 when the last reload (or the start) loaded the files, 0 when it was refused and the previous rules still serve.",
        )?;
        let build_info = f.gauges(
            "callgate_build_info",
            "Always 1; the labels say which callgate runs.",
            &["version", "commit"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("CALLGATE_GIT_COMMIT")])
            .set(1);
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_max_fds, process_start_time_seconds ...
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        for limit in [
            "limits.max_connections",
            "limits.max_connections_per_source",
            "limits.max_connections_unlisted",
            "admin.max_connections",
        ] {
            connections_refused.with_label_values(&[limit]);
        }
        for listener in ["notify", "admin"] {
            write_timeouts.with_label_values(&[listener]);
        }
        let claims_lost = f.counters(
            "callgate_claims_lost_total",
            "In-flight claims found in other hands or gone: step before_forward (the copy was not forwarded) or confirm (the event may have reached the shop twice).",
            &["route", "step"],
        )?;
        let store_full = f.counters(
            "callgate_replay_store_full_total",
            "Notifications refused (503) because the memory replay store or the route's quota was full.",
            &["route"],
        )?;
        let route_entries = f.gauges(
            "callgate_replay_store_route_entries",
            "Slots a route holds in the memory replay store (lapsed ones until swept).",
            &["route"],
        )?;
        let route_quota = f.gauges(
            "callgate_replay_store_route_quota",
            "Slots a route may hold in the memory replay store.",
            &["route"],
        )?;
        let store_evicting = f.gauge(
            "callgate_replay_store_evicting",
            "1 while Redis's maxmemory-policy can evict keys (every claim is then refused), else 0.",
        )?;
        let backlog = f.gauge(
            "callgate_replay_store_backlog",
            "Deliveries made while the replay store was down (on_store_error = \"open\") not yet recorded in it.",
        )?;
        let backlog_dropped = f.counter(
            "callgate_replay_store_backlog_dropped_total",
            "Unrecorded deliveries dropped because the backlog was full: a retry of those events would be forwarded again.",
        )?;
        let repeat_deliveries = f.counters(
            "callgate_repeat_deliveries_total",
            "Forwards with X-Callgate-Attempt above 1: the event was sent before without a recorded delivery.",
            &["route"],
        )?;
        let requests_in_flight = f.gauge(
            "callgate_requests_in_flight",
            "Notification and redelivery tasks running now (a drain waits for them).",
        )?;
        for op in [
            "claim", "confirm", "release", "remember", "forget", "ping", "entries", "renew",
            "record",
        ] {
            store_errors.with_label_values(&[op]);
        }
        for result in ["ok", "error"] {
            reloads.with_label_values(&[result]);
        }
        let store = StoreTopologyFamilies {
            info: f.gauges(
                "callgate_replay_store_topology_info",
                "1 for the Redis deployment in use: kind (redis, sentinel, cluster) and its master(s).",
                &["kind", "master"],
            )?,
            replicas: f.gauge(
                "callgate_replay_store_replicas",
                "Replicas connected to the Redis master(s) when last asked (-1: unknown).",
            )?,
            replicas_acked: f.gauge(
                "callgate_replay_store_replicas_acked",
                "Replicas that acknowledged the last delivered marker (WAIT; -1: none yet).",
            )?,
            unreplicated: f.counter(
                "callgate_replay_store_unreplicated_total",
                "Delivered markers fewer replicas acknowledged than replay.wait_replicas asks.",
            )?,
            failovers: f.counter(
                "callgate_replay_store_failovers_total",
                "Redis failovers this gateway followed (a new master address).",
            )?,
            last_failover: f.gauge(
                "callgate_replay_store_last_failover_timestamp_seconds",
                "Unix time of the last Redis failover this gateway followed (0: none).",
            )?,
        };
        static IDS: AtomicU64 = AtomicU64::new(0);
        Ok(Metrics {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            store,
            registry,
            requests,
            rejections,
            merchant_requests,
            request_duration,
            upstream_duration,
            reloads,
            loaded_routes,
            store_entries,
            store_errors,
            journal_errors,
            journal_pruned_within_ttl,
            last_reload,
            key_expiry,
            store_up,
            connections_open,
            connections_refused,
            last_reload_ok,
            write_timeouts,
            worker_requests,
            claims_lost,
            store_full,
            route_entries,
            route_quota,
            store_evicting,
            backlog,
            backlog_dropped,
            repeat_deliveries,
            requests_in_flight,
        })
    }

    /// Creates every route × outcome series at zero, so dashboards and
    /// alerts see them before the first notification.
    pub fn rules_loaded(&self, snapshot: &Snapshot, now: i64) {
        self.loaded_routes.set(snapshot.routes.len() as i64);
        self.last_reload.set(now);
        self.last_reload_ok.set(1);
        for route in snapshot.routes.iter() {
            let series = RouteSeries {
                owner: self.id,
                requests: Outcome::ALL.map(|outcome| {
                    self.requests.with_label_values(&[
                        &route.name,
                        route.kind().as_str(),
                        outcome.as_str(),
                    ])
                }),
                request_duration: self.request_duration.with_label_values(&[&route.name]),
                upstream_duration: self.upstream_duration.with_label_values(&[&route.name]),
            };
            // A route already holding its series (loaded before) keeps them:
            // the families never drop a route's series, so they are the same.
            let _ = route.series.set(series);
            for step in ["before_forward", "confirm"] {
                self.claims_lost.with_label_values(&[&route.name, step]);
            }
            self.store_full.with_label_values(&[&route.name]);
            self.repeat_deliveries.with_label_values(&[&route.name]);
        }
        self.keys_loaded(snapshot);
    }

    /// Sets `callgate_key_expiry_timestamp_seconds` to exactly the keys of
    /// `snapshot` (series of keys no longer configured disappear).
    fn keys_loaded(&self, snapshot: &Snapshot) {
        self.key_expiry.reset();
        for route in snapshot.routes.iter() {
            for (key, not_after) in route.certificates() {
                self.key_expiry
                    .with_label_values(&[&*route.name, &key])
                    .set(not_after);
            }
        }
        if let Some(not_after) = snapshot.tls_not_after {
            self.key_expiry
                .with_label_values(&["-", "tls_cert"])
                .set(not_after);
        }
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        self.last_reload_ok.set(i64::from(ok));
    }

    /// Records one finished request.
    pub fn request(&self, route: &str, provider: &str, outcome: Outcome, took: Duration) {
        self.requests
            .with_label_values(&[route, provider, outcome.as_str()])
            .inc();
        self.request_duration
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
    }

    /// Records one finished request of `route`, through the series
    /// [`Metrics::rules_loaded`] looked up for it (the same series as
    /// [`Metrics::request`] with its name and provider, without a label
    /// look-up per request).
    pub fn route_request(&self, route: &Route, outcome: Outcome, took: Duration) {
        match self.series(route) {
            Some(s) => {
                s.requests[outcome.index()].inc();
                s.request_duration.observe(took.as_secs_f64());
            }
            None => self.request(&route.name, route.kind().as_str(), outcome, took),
        }
    }

    /// The series of `route` in this registry, once its rules were loaded.
    fn series<'r>(&self, route: &'r Route) -> Option<&'r RouteSeries> {
        route.series.get().filter(|s| s.owner == self.id)
    }

    /// Counts a notification under its merchant (opt-in per route).
    pub fn merchant_request(&self, route: &str, merchant: &str, outcome: Outcome) {
        self.merchant_requests
            .with_label_values(&[route, merchant, outcome.as_str()])
            .inc();
    }

    /// Counts a refusal by its detailed reason (a label from a fixed set).
    pub fn rejection(&self, route: &str, provider: &str, reason: &'static str) {
        self.rejections
            .with_label_values(&[route, provider, reason])
            .inc();
    }

    pub fn upstream(&self, route: &Route, took: Duration) {
        match self.series(route) {
            Some(s) => s.upstream_duration.observe(took.as_secs_f64()),
            None => self
                .upstream_duration
                .with_label_values(&[&route.name])
                .observe(took.as_secs_f64()),
        }
    }

    /// Counts a failed replay store operation (`op` from a fixed set).
    pub fn store_error(&self, op: &'static str) {
        self.store_errors.with_label_values(&[op]).inc();
    }

    pub fn journal_error(&self) {
        self.journal_errors.inc();
    }

    /// The counter the journal bumps when it deletes a file younger than
    /// `replay.ttl` (shared: the journal holds a clone).
    pub fn journal_pruned_within_ttl(&self) -> IntCounter {
        self.journal_pruned_within_ttl.clone()
    }

    /// Whether the replay store answered when `/metrics` was scraped.
    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// A notification connection opened; the gauge falls when the guard drops.
    pub fn connection_opened(&self) -> ConnectionGuard {
        self.connections_open.inc();
        ConnectionGuard(self.connections_open.clone())
    }

    /// A connection closed at accept; `limit` names the setting that was
    /// full (a fixed set, see `accept::Refused::label`).
    pub fn connection_refused(&self, limit: &'static str) {
        self.connections_refused.with_label_values(&[limit]).inc();
    }

    /// The request counter of worker thread `index`, for that worker to
    /// count on without a label look-up per request.
    pub fn worker_requests(&self, index: usize) -> IntCounter {
        self.worker_requests
            .with_label_values(&[index.to_string().as_str()])
    }

    /// The counter of connections closed because their peer stopped
    /// reading (`listener`: `notify` or `admin`), to hand to each
    /// connection's `accept::WriteDeadline`.
    pub fn write_timeouts(&self, listener: &'static str) -> IntCounter {
        self.write_timeouts.with_label_values(&[listener])
    }

    /// An in-flight claim was found gone or in other hands at `step`
    /// (`before_forward` or `confirm`).
    pub fn claim_lost(&self, route: &str, step: &'static str) {
        self.claims_lost.with_label_values(&[route, step]).inc();
    }

    /// A notification refused because the memory store was full.
    pub fn store_full(&self, route: &str) {
        self.store_full.with_label_values(&[route]).inc();
    }

    /// What each route holds in the memory store and may hold.
    pub fn set_route_usage(&self, usage: &[crate::replay::RouteUsage]) {
        for u in usage {
            let held = i64::try_from(u.held).unwrap_or(i64::MAX);
            let quota = i64::try_from(u.quota).unwrap_or(i64::MAX);
            self.route_entries.with_label_values(&[&*u.route]).set(held);
            self.route_quota.with_label_values(&[&*u.route]).set(quota);
        }
    }

    /// Whether Redis's maxmemory-policy was last found able to evict.
    pub fn set_store_evicting(&self, evicting: bool) {
        self.store_evicting.set(i64::from(evicting));
    }

    /// Deliveries waiting to be recorded in the store.
    pub fn set_backlog(&self, n: usize) {
        self.backlog.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// An unrecorded delivery dropped from the full backlog.
    pub fn backlog_dropped(&self) {
        self.backlog_dropped.inc();
    }

    /// A forward with `X-Callgate-Attempt` above 1.
    pub fn repeat_delivery(&self, route: &str) {
        self.repeat_deliveries.with_label_values(&[route]).inc();
    }

    /// The gauge of running request tasks (`State::tasks` keeps it).
    pub fn requests_in_flight(&self) -> &IntGauge {
        &self.requests_in_flight
    }

    /// The Redis deployment as the store last saw it.
    pub fn set_store_topology(&self, t: &crate::replay::Topology) {
        let m = &self.store;
        m.info.reset();
        m.info.with_label_values(&[t.kind, &t.master]).set(1);
        let known = |v: Option<u64>| v.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        m.replicas.set(known(t.replicas));
        m.replicas_acked.set(known(t.replicas_acked));
        // The store counts; the counters catch up at each scrape.
        m.unreplicated
            .inc_by(t.unreplicated.saturating_sub(m.unreplicated.get()));
        m.failovers
            .inc_by(t.failovers.saturating_sub(m.failovers.get()));
        m.last_failover.set(t.last_failover);
    }

    pub fn set_store_entries(&self, n: u64) {
        self.store_entries.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// A route's series of `callgate_requests_total` (one per outcome, by
/// [`Outcome::index`]) and of the duration histograms, looked up by label
/// once when its rules are loaded rather than on every request. Kept in the
/// compiled route ([`Route::series`]), so a reload's new routes get their own.
pub struct RouteSeries {
    /// The [`Metrics`] (registry) they belong to.
    owner: u64,
    requests: [IntCounter; Outcome::ALL.len()],
    request_duration: Histogram,
    upstream_duration: Histogram,
}

impl std::fmt::Debug for RouteSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSeries")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// Holds one count of `callgate_connections_open` while a connection lives.
pub struct ConnectionGuard(IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
