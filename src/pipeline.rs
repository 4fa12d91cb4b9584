//! The request flow, top to bottom, in contract order:
//! route → method → address → rate limit → size → parse → signature → freshness →
//! replay (claim) → (legacy Alipay: notify_verify) → journal → claim renewed →
//! forward → ack. Each step is a plain function whose error side is the
//! [`Outcome`] that ends the request; [`handle`] turns the outcome into the
//! platform's ack and [`finish`] writes the one log line and the metrics
//! before the response leaves.
//!
//! The event's claim is a [`ClaimGuard`]: renewed right before the forward
//! (a step before it may have outlasted the claim's life), confirmed when
//! the shop took the event, released when it did not (or on drop). A route
//! that forwards while the store is down keeps what it delivered in
//! [`State::backlog`] until the store can record it. [`State::tasks`]
//! counts every request task, so a drain waits for forwards whose platform
//! already hung up. [`redeliver`] runs the same claim, forward and confirm
//! for a journaled notification.

use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;

use crate::ack::{self, Outcome};
use crate::config::Snapshot;
use crate::forward::{self, Delivery, ForwardMode, HttpClient};
use crate::journal::{self, Journal, OutcomeRecord, Record};
use crate::metrics::Metrics;
use crate::provider::Verified;
use crate::replay::{self, Backlog, Claim, ClaimGuard, Confirmed, Key, ReplayStore, StoreError};
use crate::rules::{AllowMode, Merchant, OnStoreError, Route};
use crate::{allow, body, limit, normalize, notify_verify, provider};

/// Everything a request needs, shared by all connections. Built in `main`
/// (or a test), passed explicitly: no globals.
pub struct State {
    /// The live configuration; a request loads it once and works with that
    /// snapshot to its end.
    pub snapshot: ArcSwap<Snapshot>,
    pub store: ReplayStore,
    /// Shared upstream client (routes with `upstream_ca` have their own).
    pub client: HttpClient,
    pub metrics: Metrics,
    /// How long a delivered event is remembered (`replay.ttl`).
    pub replay_ttl: Duration,
    /// The delivery journal, when enabled.
    pub journal: Option<Journal>,
    /// Set once SIGTERM starts the drain; `/readyz` turns 503.
    pub draining: AtomicBool,
    /// Deliveries made while the store was down, to be recorded in it.
    pub backlog: Arc<Backlog>,
    /// Request and redelivery tasks running now; the drain waits for them.
    pub tasks: Tasks,
    /// The bearer token of the admin API (`admin.token_file`); without one
    /// the API does not exist.
    pub admin_token: Option<crate::secret::Secret>,
}

impl State {
    pub fn new(
        snapshot: Snapshot,
        store: ReplayStore,
        client: HttpClient,
        metrics: Metrics,
        replay_ttl: Duration,
        journal: Option<Journal>,
    ) -> State {
        metrics.rules_loaded(&snapshot, crate::clock::unix_now());
        store.set_quotas(&snapshot.routes.quotas());
        let tasks = Tasks::new(metrics.requests_in_flight().clone());
        State {
            snapshot: ArcSwap::from_pointee(snapshot),
            store,
            client,
            metrics,
            replay_ttl,
            journal,
            draining: AtomicBool::new(false),
            backlog: Arc::new(Backlog::default()),
            tasks,
            admin_token: None,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Counts the request tasks running now, so a drain can wait for every
/// forward, including those whose platform connection already closed.
#[derive(Clone)]
pub struct Tasks(Arc<TasksInner>);

struct TasksInner {
    running: AtomicUsize,
    idle: tokio::sync::Notify,
    gauge: prometheus::IntGauge,
}

/// One running task; counted until dropped.
pub struct Running(Arc<TasksInner>);

impl Tasks {
    fn new(gauge: prometheus::IntGauge) -> Tasks {
        Tasks(Arc::new(TasksInner {
            running: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            gauge,
        }))
    }

    /// Counts a task until the returned value is dropped.
    pub fn enter(&self) -> Running {
        self.0.running.fetch_add(1, Ordering::AcqRel);
        self.0.gauge.inc();
        Running(self.0.clone())
    }

    pub fn running(&self) -> usize {
        self.0.running.load(Ordering::Acquire)
    }

    /// Returns once no task is running.
    pub async fn idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.gauge.dec();
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What is known about a request so far, for the log line and metrics.
struct Ctx {
    /// The request's id: in its log line, its journal records and the
    /// `X-Callgate-Request-Id` header the shop receives.
    request_id: String,
    /// Method and path as the caller sent them (the path cut to
    /// [`LOGGED_PATH_CHARS`]): a wrong notify URL shows up in the 404's line.
    method: Method,
    path: String,
    peer: SocketAddr,
    route: Option<Arc<Route>>,
    client: Option<IpAddr>,
    event_id: Option<String>,
    /// Why it was refused, for the operator (never sent to the platform).
    reason: Option<String>,
    /// The bounded `reason` label of `callgate_rejections_total`.
    label: Option<&'static str>,
    /// `allow_mode = "log"`: the address check that would have refused it.
    dry_run: Option<String>,
    /// The merchant whose keys verified it (for `merchant_label` routes).
    merchant: Option<Box<str>>,
}

/// The longest path a log line repeats; the rest is cut (`...`).
const LOGGED_PATH_CHARS: usize = 256;

/// `path` cut to [`LOGGED_PATH_CHARS`] characters for the log line.
fn logged_path(path: &str) -> String {
    match path.char_indices().nth(LOGGED_PATH_CHARS) {
        None => path.to_owned(),
        Some((end, _)) => format!("{}...", &path[..end]),
    }
}

impl Ctx {
    /// Records why the request ends and returns the outcome it ends with.
    fn reject(&mut self, outcome: Outcome, label: &'static str, why: impl Display) -> Outcome {
        self.reason = Some(why.to_string());
        self.label = Some(label);
        outcome
    }
}

/// Handles one notification request. Never fails: every failure is an
/// answer. The body is hyper's `Incoming` on the listener; benches pass a
/// `Full<Bytes>` and run the very same flow without a socket.
pub async fn handle<B>(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<B>,
) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let snapshot = state.snapshot.load_full();
    let mut ctx = Ctx {
        request_id: journal::new_rid(),
        method: req.method().clone(),
        path: logged_path(req.uri().path()),
        peer,
        route: None,
        client: None,
        event_id: None,
        reason: None,
        label: None,
        dry_run: None,
        merchant: None,
    };
    let outcome = match flow(&state, &snapshot, &mut ctx, req).await {
        Ok(o) | Err(o) => o,
    };
    let response = ack::respond(outcome, ctx.route.as_ref().map(|r| r.kind().ack()));
    finish(&state, &ctx, outcome, started.elapsed());
    response
}

async fn flow<B>(
    state: &State,
    snapshot: &Snapshot,
    ctx: &mut Ctx,
    req: Request<B>,
) -> Result<Outcome, Outcome>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let route = snapshot
        .routes
        .get(req.uri().path())
        .cloned()
        .ok_or(Outcome::NotFound)?;
    ctx.route = Some(route.clone());
    if req.method() != Method::POST {
        return Err(ctx.reject(
            Outcome::MethodNotAllowed,
            "method_not_allowed",
            req.method(),
        ));
    }

    let client = match allow::client_ip(ctx.peer, req.headers(), &snapshot.trusted_proxies)
        .and_then(|ip| route.allow.check(ip).map(|()| ip))
    {
        Ok(ip) => ip,
        Err(denied) if route.allow_mode == AllowMode::Log => {
            // Dry run: let it through, say so in the log line and metrics.
            state
                .metrics
                .rejection(&route.name, route.kind().as_str(), "ip_denied_dry_run");
            ctx.dry_run = Some(denied.to_string());
            match denied {
                allow::Denied::NotAllowed(ip) => ip,
                allow::Denied::BadForwardedFor(_) => ctx.peer.ip().to_canonical(),
            }
        }
        Err(denied) => {
            if let allow::Denied::NotAllowed(ip) = denied {
                ctx.client = Some(ip);
            }
            return Err(ctx.reject(Outcome::IpDenied, denied.label(), denied));
        }
    };
    ctx.client = Some(client);
    limit::check(route.rate_limit.as_ref(), client)
        .map_err(|e| ctx.reject(Outcome::RateLimited, "rate_limited", e))?;

    let limits = snapshot.limits;
    let (parts, incoming) = req.into_parts();
    let bytes = body::read(
        &parts.headers,
        incoming,
        limits.max_body_bytes,
        limits.body_timeout,
    )
    .await
    .map_err(|e| ctx.reject(e.outcome(), e.label(), e))?;
    let payload = body::parse(route.kind().format(), &parts.headers, &bytes)
        .map_err(|e| ctx.reject(Outcome::Malformed, e.label(), e))?;

    // Several merchants may share the route: the claimed merchant picks the
    // keys, which then verify that same field again.
    ctx.merchant = route
        .merchant_label(&provider::addressee(route.kind(), &parts.headers, &payload))
        .map(Into::into);
    let now = crate::clock::unix_now();
    let (merchant, verified) = route
        .verify(&parts.headers, &payload, now)
        .map_err(|e| ctx.reject(e.outcome(), e.label(), e))?;
    ctx.merchant = Some(merchant.provider.merchant_id().into());
    ctx.event_id = Some(verified.event_id().to_owned());

    replay::check_fresh(&verified, route.max_age, route.max_future, now)
        .map_err(|e| ctx.reject(Outcome::Stale, e.label(), e))?;

    // A nonce (wechat_v3) is remembered for the whole window; a verbatim
    // copy within it is a replay. It is forgotten again if this copy is not
    // delivered, so the platform's own retry is not refused.
    let nonce_key = Key::nonce(&route.name, &verified);
    if let Some(nonce) = &nonce_key {
        match state
            .store
            .remember(nonce, route.max_age + route.max_future)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return Err(ctx.reject(
                    Outcome::Replay,
                    "replayed_nonce",
                    "nonce already seen within the window",
                ));
            }
            Err(e @ StoreError::Unavailable(_)) if route.on_store_error == OnStoreError::Open => {
                state.metrics.store_error("remember");
                tracing::warn!(route = %route.name, error = %e,
                    "replay store down: the nonce is not remembered (on_store_error = \"open\")");
            }
            Err(e) => {
                store_refused(state, &route, &e, "remember");
                return Err(ctx.reject(Outcome::StoreUnavailable, e.label(), e));
            }
        }
    }

    let key = Key::event(&route.name, &verified);
    let life = limits.claim_life();
    let mut guard = match ClaimGuard::claim(&state.store, &key, life).await {
        Ok(Claim::New(guard)) => Some(guard),
        Ok(Claim::InFlight) => {
            forget_nonce(state, &route, nonce_key.as_ref()).await;
            return Err(Outcome::InFlight);
        }
        Ok(Claim::Delivered) => return Err(Outcome::Duplicate),
        Err(e @ StoreError::Unavailable(_)) if route.on_store_error == OnStoreError::Open => {
            state.metrics.store_error("claim");
            if state.backlog.contains(&key) {
                // Delivered while the store is down, not recorded yet.
                return Err(Outcome::Duplicate);
            }
            tracing::warn!(route = %route.name, event_id = verified.event_id(), error = %e,
                "replay store down: forwarding WITHOUT replay protection (on_store_error = \"open\")");
            None
        }
        Err(e) => {
            store_refused(state, &route, &e, "claim");
            forget_nonce(state, &route, nonce_key.as_ref()).await;
            return Err(ctx.reject(Outcome::StoreUnavailable, e.label(), e));
        }
    };
    let attempt = guard.as_ref().map_or(1, ClaimGuard::attempt);

    // Legacy Alipay routes may also ask Alipay to vouch for the notify_id,
    // once per event: a duplicate was answered from the store above without
    // asking (Alipay invalidates a notify_id once it has seen `success`).
    if let Some(endpoint) = merchant.provider.notify_verify()
        && let Err(e) =
            notify_verify::ask(&state.client, endpoint, &verified, limits.upstream_timeout).await
    {
        release(state, &route, guard).await;
        forget_nonce(state, &route, nonce_key.as_ref()).await;
        return Err(ctx.reject(e.outcome(), e.label(), e));
    }

    let rid = ctx.request_id.clone();
    if let Some(j) = &state.journal {
        let mut received =
            received_record(&rid, now, &route, &verified, client, &parts.headers, &bytes);
        received.attempt = attempt;
        if let Err(e) = j.append(&Record::Received(received), true).await {
            state.metrics.journal_error();
            release(state, &route, guard).await;
            forget_nonce(state, &route, nonce_key.as_ref()).await;
            return Err(ctx.reject(Outcome::StoreUnavailable, "journal_unavailable", e));
        }
    }

    // The steps above are not all bounded (a journal write waits for the
    // disk under fsync = "always"): make sure the claim is still ours, and
    // good for a whole forward, before the shop sees anything.
    if let Err(stop) = hold_for_forward(state, &route, &mut guard, life).await {
        forget_nonce(state, &route, nonce_key.as_ref()).await;
        record_outcome(state, rid, &route, &verified, stop.outcome, false).await;
        return Err(ctx.reject(stop.outcome, stop.label, stop.why));
    }

    let result = deliver(
        state,
        &route,
        merchant,
        &verified,
        &rid,
        client,
        &parts.headers,
        bytes,
        now,
        attempt,
    )
    .await;
    let outcome = match &result {
        Ok(()) => {
            match guard {
                Some(guard) => confirm(state, &route, guard).await,
                None => owe_record(state, &route, key),
            }
            Outcome::Forwarded
        }
        Err(e) => {
            release(state, &route, guard).await;
            forget_nonce(state, &route, nonce_key.as_ref()).await;
            e.outcome()
        }
    };
    record_outcome(state, rid, &route, &verified, outcome, false).await;
    result
        .map(|()| Outcome::Forwarded)
        .map_err(|e| ctx.reject(e.outcome(), e.label(), e))
}

/// Why a claim could not be held for the forward.
struct Stop {
    outcome: Outcome,
    label: &'static str,
    why: String,
}

/// Renews the claim for a whole forward. A claim found in other hands
/// means a copy of the event was claimed after ours lapsed (or the store
/// lost it): that copy forwards it, this one stops with 409.
async fn hold_for_forward(
    state: &State,
    route: &Route,
    guard: &mut Option<ClaimGuard>,
    life: Duration,
) -> Result<(), Stop> {
    let Some(held) = guard.as_ref() else {
        return Ok(());
    };
    match held.renew(life).await {
        Ok(true) => Ok(()),
        Ok(false) => {
            if let Some(g) = guard.take() {
                g.disarm();
            }
            state.metrics.claim_lost(&route.name, "before_forward");
            tracing::error!(route = %route.name,
                "the in-flight claim lapsed before the forward and another copy holds the event now; \
                 not forwarding this copy");
            Err(Stop {
                outcome: Outcome::InFlight,
                label: "claim_lost",
                why: "the claim lapsed before the forward; another copy holds the event".into(),
            })
        }
        Err(e @ StoreError::Unavailable(_)) if route.on_store_error == OnStoreError::Open => {
            state.metrics.store_error("renew");
            tracing::warn!(route = %route.name, error = %e,
                "replay store down before the forward: forwarding WITHOUT replay protection (on_store_error = \"open\")");
            Ok(())
        }
        Err(e) => {
            state.metrics.store_error("renew");
            release(state, route, guard.take()).await;
            Err(Stop {
                outcome: Outcome::StoreUnavailable,
                label: e.label(),
                why: e.to_string(),
            })
        }
    }
}

/// Counts a store refusal by its kind: unreachable, full, or Redis that
/// may evict.
fn store_refused(state: &State, route: &Route, e: &StoreError, op: &'static str) {
    match e {
        StoreError::Unavailable(_) => state.metrics.store_error(op),
        StoreError::Full { .. } => {
            state.metrics.store_full(&route.name);
            tracing::error!(route = %route.name, error = %e, "replay store full: refusing new notifications (503) until entries lapse");
        }
        StoreError::Evicting { .. } => {
            state.metrics.set_store_evicting(true);
            tracing::error!(route = %route.name, error = %e, "refusing notifications: the replay store could forget them");
        }
    }
}

/// Forwards a verified notification and times the upstream.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    state: &State,
    route: &Route,
    merchant: &Merchant,
    verified: &Verified,
    request_id: &str,
    client: IpAddr,
    incoming: &http::HeaderMap,
    bytes: Bytes,
    now: i64,
    attempt: u32,
) -> Result<(), forward::ForwardError> {
    let body = match route.forward {
        ForwardMode::Original => verified.original_body(bytes),
        ForwardMode::Normalized => Bytes::from(normalize::normalize(verified)),
    };
    let delivery = Delivery {
        provider: route.kind().as_str(),
        route: &route.name,
        event_id: verified.event_id(),
        request_id,
        client_ip: client,
        incoming,
        pass: &route.forward_headers,
        mode: route.forward,
        body,
        decrypted: match route.forward {
            ForwardMode::Original => verified.decrypted(),
            ForwardMode::Normalized => None,
        },
        now,
        attempt,
    };
    if attempt > 1 {
        state.metrics.repeat_delivery(&route.name);
        tracing::warn!(route = %route.name, event_id = verified.event_id(), attempt,
            "forwarding an event sent before without a recorded delivery (X-Callgate-Attempt)");
    }
    let sent = Instant::now();
    let result = forward::forward(&state.client, &merchant.upstream, delivery).await;
    state.metrics.upstream(&route.name, sent.elapsed());
    result.map(|_| ())
}

/// Forgets a nonce whose notification was not delivered, so the platform's
/// verbatim retry is not refused as a replay.
async fn forget_nonce(state: &State, route: &Route, nonce: Option<&Key>) {
    if let Some(key) = nonce
        && let Err(e) = state.store.forget(key).await
    {
        state.metrics.store_error("forget");
        tracing::error!(route = %route.name, error = %e,
            "could not forget the nonce; a verbatim retry is refused until it lapses");
    }
}

async fn confirm(state: &State, route: &Route, mut guard: ClaimGuard) {
    let ttl = state.replay_ttl;
    match guard.confirm(ttl).await {
        Ok(found) => claim_found(&state.metrics, &route.name, found),
        Err(e) => {
            state.metrics.store_error("confirm");
            // Delivered, but until this is recorded a later copy could be
            // forwarded again: keep trying while the store comes back.
            tracing::error!(route = %route.name, error = %e, "delivered, but the replay store did not record it; retrying in the background");
            settle_in_background(
                state,
                route,
                Settle::Confirm(ttl),
                CONFIRM_RETRY_WINDOW,
                guard,
            );
        }
    }
}

/// Counts and logs a confirm that did not find its own claim.
fn claim_found(metrics: &Metrics, route: &str, found: Confirmed) {
    match found {
        Confirmed::Held => {}
        Confirmed::Lapsed => {
            metrics.claim_lost(route, "confirm");
            tracing::error!(
                route,
                "delivered, but the in-flight claim had lapsed: a copy arriving meanwhile could have been forwarded too"
            );
        }
        Confirmed::Taken => {
            metrics.claim_lost(route, "confirm");
            tracing::error!(
                route,
                "delivered, but another copy held the event's claim: the shop may have received it twice"
            );
        }
    }
}

async fn release(state: &State, route: &Route, guard: Option<ClaimGuard>) {
    let Some(mut guard) = guard else { return };
    if let Err(e) = guard.release().await {
        state.metrics.store_error("release");
        // Until released, the platform's retry is 409 (in flight); the
        // claim lapses by itself, but the store usually comes back sooner.
        tracing::error!(route = %route.name, error = %e, "could not release the claim; retrying in the background");
        let lapses = state.snapshot.load().limits.claim_life();
        settle_in_background(state, route, Settle::Release, lapses, guard);
    }
}

/// How long a delivery that the store failed to record keeps being retried.
const CONFIRM_RETRY_WINDOW: Duration = Duration::from_secs(600);

/// A claim's last write.
#[derive(Clone, Copy)]
enum Settle {
    /// Record the delivery for this long.
    Confirm(Duration),
    Release,
}

/// Retries a replay-store write that failed (the store is down) in the
/// background, with a growing pause, until it succeeds or `within` has
/// passed; then the claim is given up (it lapses by itself). Both writes
/// are safe to repeat: `confirm` records the delivery whoever holds the
/// key, `release` deletes only our own claim.
fn settle_in_background(
    state: &State,
    route: &Route,
    op: Settle,
    within: Duration,
    mut guard: ClaimGuard,
) {
    let (metrics, route) = (state.metrics.clone(), route.name.clone());
    let name = match op {
        Settle::Confirm(_) => "confirm",
        Settle::Release => "release",
    };
    tokio::spawn(async move {
        let deadline = Instant::now() + within;
        let mut pause = Duration::from_millis(50);
        while Instant::now() + pause < deadline {
            tokio::time::sleep(pause).await;
            let done = match op {
                Settle::Confirm(ttl) => match guard.confirm(ttl).await {
                    Ok(found) => {
                        claim_found(&metrics, &route, found);
                        true
                    }
                    Err(_) => false,
                },
                Settle::Release => guard.release().await.is_ok(),
            };
            if done {
                tracing::info!(route = %route, op = name, "replay store write done on retry");
                return;
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        tracing::error!(route = %route, op = name, "replay store write abandoned after {within:?}");
        guard.disarm();
    });
}

/// Keeps a delivery made without the store (`on_store_error = "open"`) to
/// record it once the store answers, and starts the task that does.
fn owe_record(state: &State, route: &Route, key: Key) {
    if !state.backlog.push(key, Instant::now()) {
        state.metrics.backlog_dropped();
        tracing::error!(route = %route.name,
            "the backlog of unrecorded deliveries is full: the oldest is dropped, and a retry of it would be forwarded again");
    }
    state.metrics.set_backlog(state.backlog.len());
    drain_backlog(state);
}

/// Writes the backlog to the store in the background, oldest first, with
/// a growing pause while the store is still down. One task at a time.
fn drain_backlog(state: &State) {
    if !state.backlog.start_draining() {
        return;
    }
    let (store, backlog, metrics, ttl) = (
        state.store.clone(),
        state.backlog.clone(),
        state.metrics.clone(),
        state.replay_ttl,
    );
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(50);
        loop {
            while let Some((key, at)) = backlog.front() {
                let left = ttl.saturating_sub(at.elapsed());
                match store.record_delivered(&key, left).await {
                    Ok(()) => {
                        backlog.done(&key);
                        metrics.set_backlog(backlog.len());
                        pause = Duration::from_millis(50);
                    }
                    Err(_) => {
                        metrics.store_error("record");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(5));
                    }
                }
            }
            if !backlog.stop_draining() {
                tracing::info!("deliveries made while the replay store was down are recorded");
                return;
            }
        }
    });
}

/// Journals how a delivery ended (waits only under `fsync = "always"`).
async fn record_outcome(
    state: &State,
    rid: String,
    route: &Route,
    verified: &Verified,
    outcome: Outcome,
    redelivery: bool,
) {
    let Some(j) = &state.journal else { return };
    let record = Record::Outcome(OutcomeRecord {
        rid,
        unix: crate::clock::unix_now(),
        route: route.name.to_string(),
        merchant: verified.merchant().to_owned(),
        event_id: verified.event_id().to_owned(),
        outcome: outcome.as_str().to_owned(),
        status: outcome.status().as_u16(),
        redelivery,
    });
    // A redelivery's outcome is what keeps the next redelivery idempotent.
    if let Err(e) = j.append(&record, redelivery || j.outcomes_durable()).await {
        state.metrics.journal_error();
        tracing::error!(route = %route.name, event_id = verified.event_id(), error = %e, "could not journal the outcome");
    }
}

fn received_record(
    rid: &str,
    now: i64,
    route: &Route,
    verified: &Verified,
    client: IpAddr,
    headers: &http::HeaderMap,
    body: &[u8],
) -> journal::Received {
    use base64::Engine as _;
    journal::Received {
        rid: rid.to_owned(),
        unix: now,
        route: route.name.to_string(),
        provider: route.kind().as_str().to_owned(),
        merchant: verified.merchant().to_owned(),
        event_id: verified.event_id().to_owned(),
        client: client.to_string(),
        // What a redelivery needs to verify and forward it again; nothing
        // the shop would not get (no cookies, no credentials).
        headers: headers
            .iter()
            .filter(|(name, _)| route.forward_headers.journals(name))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect(),
        body: base64::engine::general_purpose::STANDARD.encode(body),
        attempt: 1,
    }
}

// === redelivery ===

/// Why a journaled notification could not be redelivered.
#[derive(Debug, thiserror::Error)]
pub enum RedeliverError {
    #[error("route `{0}` is no longer configured")]
    NoRoute(String),
    #[error("the journal record is damaged: {0}")]
    Damaged(String),
    #[error("the journal record no longer verifies with the route's keys: {0}")]
    Verify(String),
}

/// Sends a journaled notification to its route's upstream again. The
/// signature is verified again with the current keys (a journal file is not
/// trusted on its own); freshness is not checked, since redelivery happens
/// after the platform gave up. The replay store is claimed as usual, so an
/// event already delivered is not sent twice.
pub async fn redeliver(state: &State, rec: &journal::Received) -> Result<Outcome, RedeliverError> {
    use base64::Engine as _;
    let snapshot = state.snapshot.load_full();
    let route = snapshot
        .routes
        .named(&rec.route)
        .cloned()
        .ok_or_else(|| RedeliverError::NoRoute(rec.route.clone()))?;
    let mut headers = http::HeaderMap::new();
    for (k, v) in &rec.headers {
        let name = http::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| RedeliverError::Damaged(e.to_string()))?;
        let value =
            http::HeaderValue::from_str(v).map_err(|e| RedeliverError::Damaged(e.to_string()))?;
        headers.append(name, value);
    }
    let body = Bytes::from(
        base64::engine::general_purpose::STANDARD
            .decode(&rec.body)
            .map_err(|e| RedeliverError::Damaged(e.to_string()))?,
    );
    let client: IpAddr = rec
        .client
        .parse()
        .map_err(|_| RedeliverError::Damaged("client address".into()))?;
    let payload = body::parse(route.kind().format(), &headers, &body)
        .map_err(|e| RedeliverError::Verify(e.to_string()))?;
    let (merchant, verified) = route
        .verify(&headers, &payload, crate::clock::unix_now())
        .map_err(|e| RedeliverError::Verify(e.to_string()))?;
    // Records written before they carried the merchant have none to compare.
    if verified.event_id() != rec.event_id
        || (!rec.merchant.is_empty() && verified.merchant() != rec.merchant)
    {
        return Err(RedeliverError::Damaged(
            "event id does not match the body".into(),
        ));
    }
    let key = Key::event(&route.name, &verified);
    let life = snapshot.limits.claim_life();
    let guard = match ClaimGuard::claim(&state.store, &key, life).await {
        Ok(Claim::New(g)) => Some(g),
        Ok(Claim::InFlight) => return Ok(Outcome::InFlight),
        Ok(Claim::Delivered) => return Ok(Outcome::Duplicate),
        Err(e) => {
            store_refused(state, &route, &e, "claim");
            return Ok(Outcome::StoreUnavailable);
        }
    };
    let rid = journal::new_rid();
    let attempt = guard.as_ref().map_or(1, ClaimGuard::attempt);
    let result = deliver(
        state,
        &route,
        merchant,
        &verified,
        &rid,
        client,
        &headers,
        body,
        crate::clock::unix_now(),
        attempt,
    )
    .await;
    let outcome = match &result {
        Ok(()) => {
            if let Some(g) = guard {
                confirm(state, &route, g).await;
            }
            Outcome::Forwarded
        }
        Err(e) => {
            release(state, &route, guard).await;
            tracing::warn!(route = %route.name, event_id = %rec.event_id, error = %e, "redelivery failed");
            e.outcome()
        }
    };
    record_outcome(state, rid, &route, &verified, outcome, true).await;
    Ok(outcome)
}

/// Writes the request's one log line and records its metrics.
fn finish(state: &State, ctx: &Ctx, outcome: Outcome, took: Duration) {
    let (route, provider) = match &ctx.route {
        Some(r) => (&*r.name, r.kind().as_str()),
        None => ("-", "-"),
    };
    state.metrics.request(route, provider, outcome, took);
    if let (Some(r), Some(m)) = (&ctx.route, &ctx.merchant)
        && r.merchant_label
    {
        state.metrics.merchant_request(route, m, outcome);
    }
    if !outcome.is_success() {
        let label = match outcome {
            Outcome::NotFound => "not_found",
            Outcome::InFlight => ctx.label.unwrap_or("in_flight"),
            _ => ctx.label.unwrap_or(outcome.as_str()),
        };
        state.metrics.rejection(route, provider, label);
    }
    let client = ctx.client.map(|c| c.to_string());
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                target: "callgate::request",
                request_id = ctx.request_id.as_str(),
                method = ctx.method.as_str(),
                path = ctx.path.as_str(),
                route,
                provider,
                outcome = outcome.as_str(),
                status = outcome.status().as_u16(),
                event_id = ctx.event_id.as_deref().unwrap_or("-"),
                peer = %ctx.peer,
                client = client.as_deref().unwrap_or("-"),
                duration_ms = took.as_secs_f64() * 1000.0,
                reason = ctx.reason.as_deref().unwrap_or(""),
                dry_run = ctx.dry_run.as_deref().unwrap_or(""),
                "notification"
            )
        };
    }
    match outcome {
        _ if ctx.dry_run.is_some() => line!(warn),
        Outcome::Forwarded | Outcome::Duplicate | Outcome::Ignored => line!(info),
        Outcome::UpstreamError | Outcome::UpstreamTimeout | Outcome::StoreUnavailable => {
            line!(error)
        }
        _ => line!(warn),
    }
}
