//! The request flow, top to bottom, in contract order:
//! route → method → address → rate limit → size → parse → signature →
//! freshness → nonce → claim → (legacy Alipay: notify_verify) → journal →
//! claim held (renewed when needed) → forward → settle → ack. `flow` reads
//! as that list, one step a line; each step is a plain function whose
//! error side is the [`Outcome`] that ends the request. [`handle`] turns
//! the outcome into the platform's ack, and `finish` writes the one log
//! line and the metrics before the response leaves, and hands the
//! request's record to the console (`console::Recent`). A request loads
//! the configuration snapshot once and works with it to its end.
//!
//! From the claim on, the request holds a [`Held`]: the event's claim (a
//! `replay::ClaimGuard`, released on drop unless settled) and the nonce it
//! remembered. Every early end gives both back ([`Held::give_back`]); the
//! claim is renewed right before the forward when a step before it may
//! have outlasted the claim's life (one waited, or the claim is not
//! fresh); [`forward_and_settle`] confirms it when the shop took the event,
//! gives it back when not, and journals the outcome.
//! `redeliver` runs the same claim and the same forward and settle for a
//! journaled notification. A route that forwards while the store is down
//! keeps what it delivered in [`State::backlog`] until the store can record
//! it. [`State::tasks`] counts every request task, so a drain waits for
//! forwards whose platform already hung up.

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
use crate::addr::AddrText;
use crate::config::Snapshot;
use crate::console::ShopAnswer;
use crate::forward::{self, Arrival, HttpClient, Target};
use crate::journal::{self, Journal, OutcomeRecord, Record};
use crate::metrics::Metrics;
use crate::provider::Verified;
use crate::replay::{self, Backlog, Claim, ClaimGuard, Confirmed, Key, ReplayStore, StoreError};
use crate::rules::{AllowMode, Merchant, OnStoreError, Route};
use crate::{allow, body, limit, notify_verify, provider};

/// Everything a request needs, shared by all connections. Built in `main`
/// (or a test), passed explicitly: no globals.
pub struct State {
    /// The live configuration; a request loads it once and works with that
    /// snapshot to its end.
    pub snapshot: ArcSwap<Snapshot>,
    pub store: ReplayStore,
    /// Upstream client off the worker threads (each `server` worker has its
    /// own, [`forward::client_here`]; routes with `upstream_ca` have their
    /// own).
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
    /// Whether the admin listener is bound to a loopback address (the
    /// console is then readable without the token).
    pub admin_loopback: bool,
    /// Recent notifications and per-route counts for the console; kept
    /// across reloads.
    pub recent: crate::console::Recent,
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
        let recent = crate::console::Recent::new();
        recent.reloaded(crate::clock::unix_now(), true, snapshot.routes.len(), &[]);
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
            admin_loopback: true,
            recent,
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
    /// `client` as text, formatted once for the log line, the journal and
    /// `X-Forwarded-For` (set with it by [`Ctx::set_client`]).
    client_text: Option<AddrText>,
    event_id: Option<String>,
    /// Why it was refused, for the operator (never sent to the platform).
    reason: Option<String>,
    /// The bounded `reason` label of `callgate_rejections_total`.
    label: Option<&'static str>,
    /// `allow_mode = "log"`: the address check that would have refused it.
    dry_run: Option<String>,
    /// The merchant whose keys verified it (for `merchant_label` routes).
    merchant: Option<Box<str>>,
    /// The merchant's order number, for the console's search.
    order: Option<crate::console::Order>,
    /// What the shop answered, when it was asked.
    shop: Option<crate::console::ShopAnswer>,
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
    /// The source address callgate decided on.
    fn set_client(&mut self, ip: IpAddr) -> AddrText {
        let text = AddrText::ip(ip);
        self.client = Some(ip);
        self.client_text = Some(text);
        text
    }

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
        client_text: None,
        event_id: None,
        reason: None,
        label: None,
        dry_run: None,
        merchant: None,
        order: None,
        shop: None,
    };
    let outcome = match flow(&state, &snapshot, &mut ctx, req).await {
        Ok(o) | Err(o) => o,
    };
    let response = ack::respond(outcome, ctx.route.as_ref().map(|r| r.kind().ack()));
    finish(&state, ctx, outcome, started.elapsed());
    response
}

/// The flow, one step a line. Every step's error side is the outcome that
/// ends the request (`Err` on a refusal; a duplicate is `Err` too: it ends
/// the flow early with a success ack).
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
    let route = route(snapshot, ctx, &req)?;
    let client = admit(state, snapshot, &route, ctx, req.headers())?;
    let (parts, incoming) = req.into_parts();
    let limits = snapshot.limits;
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
    ctx.order = provider::claimed_order(route.kind(), &payload)
        .map(|o| crate::console::Order::new(o, false));
    let now = crate::clock::unix_now();
    let (merchant, verified) = verify(&route, ctx, &parts.headers, &bytes, &payload, now)?;
    replay::check_fresh(&verified, route.max_age, route.max_future, now)
        .map_err(|e| ctx.reject(Outcome::Stale, e.label(), e))?;
    let nonce = remember_nonce(state, &route, ctx, &verified).await?;
    let mut held = claim(
        state,
        &route,
        &verified,
        nonce,
        limits.claim_life(),
        route.on_store_error,
    )
    .await
    .map_err(|stop| stop.end(ctx))?;
    if let Some(endpoint) = merchant.provider.notify_verify()
        && let Err(e) = notify_verify::ask(
            &forward::client_here(&state.client),
            endpoint,
            &verified,
            limits.upstream_timeout,
        )
        .await
    {
        held.give_back(state, &route).await;
        return Err(ctx.reject(e.outcome(), e.label(), e));
    }
    // A call to the platform waits on the network: the claim may have
    // lapsed meanwhile.
    held.waited |= merchant.provider.notify_verify().is_some();
    let request_id = ctx.request_id.clone();
    let arrival = Arrival {
        request_id: &request_id,
        client,
        headers: &parts.headers,
        now,
        attempt: held.attempt(),
    };
    if let Err(e) = journal_arrival(state, &route, &verified, &arrival, &bytes).await {
        state.metrics.journal_error();
        held.give_back(state, &route).await;
        return Err(ctx.reject(Outcome::StoreUnavailable, "journal_unavailable", e));
    }
    // Under fsync = "always" the journal write waited for the disk.
    held.waited |= state.journal.as_ref().is_some_and(|j| j.outcomes_durable());
    // The steps above are not all bounded: make sure the claim is still
    // ours, and good for a whole forward, before the shop sees anything.
    if let Err(stop) = held
        .hold_for_forward(state, &route, limits.upstream_timeout)
        .await
    {
        held.give_back(state, &route).await;
        record_outcome(
            state,
            &arrival,
            &route,
            &verified,
            stop.outcome,
            false,
            None,
        )
        .await;
        return Err(stop.end(ctx));
    }
    // Boxed: the forward is most of the flow's future (4.4 of 6.6 KB), and
    // every request's future is copied whole into its task's box, a
    // duplicate's or a refusal's too; a forward pays for this box instead.
    let (shop, forwarded) = Box::pin(forward_and_settle(
        state, &route, merchant, &verified, &arrival, held, false,
    ))
    .await;
    ctx.shop = Some(shop);
    forwarded
        .map(|()| Outcome::Forwarded)
        .map_err(|e| ctx.reject(e.outcome(), e.label(), e))
}

// === the request's own steps ===

/// The route of the request's path; POST only.
fn route<B>(snapshot: &Snapshot, ctx: &mut Ctx, req: &Request<B>) -> Result<Arc<Route>, Outcome> {
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
    Ok(route)
}

/// The source address, checked against the route's allow list (or only
/// reported, `allow_mode = "log"`), then its rate limit.
fn admit(
    state: &State,
    snapshot: &Snapshot,
    route: &Route,
    ctx: &mut Ctx,
    headers: &http::HeaderMap,
) -> Result<AddrText, Outcome> {
    let client = match allow::client_ip(ctx.peer, headers, &snapshot.trusted_proxies)
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
                ctx.set_client(ip);
            }
            return Err(ctx.reject(Outcome::IpDenied, denied.label(), denied));
        }
    };
    let text = ctx.set_client(client);
    limit::check(route.rate_limit.as_ref(), client)
        .map_err(|e| ctx.reject(Outcome::RateLimited, "rate_limited", e))?;
    Ok(text)
}

/// The signature, with the keys of the merchant the notification is
/// addressed to (several merchants may share the route: that merchant's
/// keys verify the same field again).
fn verify<'r>(
    route: &'r Route,
    ctx: &mut Ctx,
    headers: &http::HeaderMap,
    body: &Bytes,
    payload: &body::Payload,
    now: i64,
) -> Result<(&'r Merchant, Verified), Outcome> {
    ctx.merchant = route
        .merchant_label(&provider::addressee(route.kind(), headers, payload))
        .map(Into::into);
    let (merchant, verified) = route
        .verify(headers, body, payload, now)
        .map_err(|e| ctx.reject(e.outcome(), e.label(), e))?;
    // Mostly the label already set: not copied again.
    let id = merchant.provider.merchant_id();
    if ctx.merchant.as_deref() != Some(id) {
        ctx.merchant = Some(id.into());
    }
    ctx.event_id = Some(verified.event_id().to_owned());
    ctx.order =
        crate::normalize::order_number(&verified).map(|o| crate::console::Order::new(o, true));
    Ok((merchant, verified))
}

/// A nonce (wechat_v3) is remembered for the whole window; a verbatim copy
/// within it is a replay. It is forgotten again if this copy is not
/// delivered, so the platform's own retry is not refused.
async fn remember_nonce(
    state: &State,
    route: &Route,
    ctx: &mut Ctx,
    verified: &Verified,
) -> Result<Option<Key>, Outcome> {
    let Some(nonce) = Key::nonce(&route.name, &route.replay_namespace, verified) else {
        return Ok(None);
    };
    match state
        .store
        .remember(&nonce, route.max_age + route.max_future)
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
            store_refused(state, route, &e, "remember");
            return Err(ctx.reject(Outcome::StoreUnavailable, e.label(), e));
        }
    }
    Ok(Some(nonce))
}

/// Journals the arrival before the shop sees it (when the journal is on):
/// what a redelivery needs to verify and forward it again. A redelivery
/// journals its own forward the same way.
pub(crate) async fn journal_arrival(
    state: &State,
    route: &Route,
    verified: &Verified,
    arrival: &Arrival<'_>,
    body: &[u8],
) -> Result<(), journal::JournalError> {
    let Some(j) = &state.journal else {
        return Ok(());
    };
    // What a redelivery needs to verify and forward it again; nothing
    // the shop would not get (no cookies, no credentials).
    let headers: Vec<(&str, &str)> = arrival
        .headers
        .iter()
        .filter(|(name, _)| route.forward_headers.journals(name))
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let order = crate::normalize::order_number(verified);
    j.append_arrival(&journal::ArrivalLine {
        rid: arrival.request_id,
        unix: arrival.now,
        route: &route.name,
        namespace: (route.replay_namespace != route.name).then_some(&*route.replay_namespace),
        provider: route.kind().as_str(),
        merchant: verified.merchant(),
        event_id: verified.event_id(),
        client: arrival.client.as_str(),
        headers: journal::Headers::Borrowed(&headers),
        body: journal::Body::Raw(body),
        attempt: arrival.attempt,
        order: order.as_deref(),
    })
    .await
}

// === from the claim to the outcome: the steps redelivery shares ===

/// Why the flow stops before the forward: the outcome, and the reason for
/// the log line and metrics (none for an outcome that is its own reason: a
/// duplicate, an event in flight).
pub(crate) struct Stop {
    pub outcome: Outcome,
    reason: Option<Reason>,
}

/// A refusal's `reason` label and its cause.
struct Reason {
    label: &'static str,
    why: String,
}

impl Stop {
    /// An outcome that says it all.
    fn plain(outcome: Outcome) -> Stop {
        Stop {
            outcome,
            reason: None,
        }
    }

    /// Records the reason in the request's context; the outcome it ends
    /// with.
    fn end(self, ctx: &mut Ctx) -> Outcome {
        match self.reason {
            Some(r) => ctx.reject(self.outcome, r.label, r.why),
            None => self.outcome,
        }
    }
}

/// What a request holds in the replay store from its claim to its outcome:
/// the event's claim (none when the store is down and the route forwards
/// anyway, `on_store_error = "open"`) and the nonce it remembered. An early
/// end gives both back ([`Held::give_back`]); the forward settles them
/// ([`forward_and_settle`]).
pub(crate) struct Held {
    claim: Option<ClaimGuard>,
    nonce: Option<Key>,
    /// The event's key (recorded in the backlog when there is no claim).
    key: Key,
    /// How long a claim lives: taken from the request's own snapshot.
    life: Duration,
    /// Whether a step since the claim waited on the network or the disk
    /// (the claim is then renewed before the forward, however young).
    waited: bool,
}

impl Held {
    /// Which attempt at delivering the event this is (1 the first time).
    pub(crate) fn attempt(&self) -> u32 {
        self.claim.as_ref().map_or(1, ClaimGuard::attempt)
    }

    /// Releases the claim and forgets the nonce: the event was not
    /// delivered, so the platform's retry is forwarded again.
    pub(crate) async fn give_back(self, state: &State, route: &Route) {
        release(state, route, self.claim, self.life).await;
        forget_nonce(state, route, self.nonce.as_ref()).await;
    }

    /// Makes sure the claim is ours for a whole forward (bounded by
    /// `forward`): renewed unless it is fresh and nothing waited since
    /// ([`ClaimGuard::hold_for_forward`]). A claim found in other hands
    /// means a copy of the event was claimed after ours lapsed (or the
    /// store lost it): that copy forwards it, this one stops with 409. The
    /// claim is settled either way when this fails; the nonce is not.
    async fn hold_for_forward(
        &mut self,
        state: &State,
        route: &Route,
        forward: Duration,
    ) -> Result<(), Stop> {
        let Some(held) = self.claim.as_ref() else {
            return Ok(());
        };
        match held.hold_for_forward(self.life, forward, self.waited).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                if let Some(g) = self.claim.take() {
                    g.disarm();
                }
                state.metrics.claim_lost(&route.name, "before_forward");
                tracing::error!(route = %route.name,
                    "the in-flight claim lapsed before the forward and another copy holds the event now; \
                     not forwarding this copy");
                Err(Stop {
                    outcome: Outcome::InFlight,
                    reason: Some(Reason {
                        label: "claim_lost",
                        why: "the claim lapsed before the forward; another copy holds the event"
                            .into(),
                    }),
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
                release(state, route, self.claim.take(), self.life).await;
                Err(Stop {
                    outcome: Outcome::StoreUnavailable,
                    reason: Some(Reason {
                        label: e.label(),
                        why: e.to_string(),
                    }),
                })
            }
        }
    }
}

/// Claims the event for `life`. A duplicate or an event in flight ends
/// here, and so does a store that cannot answer, unless the route forwards
/// without it (`on_store_error = "open"`): then nothing is claimed, and an
/// event delivered that way meanwhile is a duplicate.
pub(crate) async fn claim(
    state: &State,
    route: &Route,
    verified: &Verified,
    nonce: Option<Key>,
    life: Duration,
    on_store_error: OnStoreError,
) -> Result<Held, Stop> {
    let key = Key::event(&route.name, &route.replay_namespace, verified);
    let claim = match ClaimGuard::claim(&state.store, &key, life).await {
        Ok(Claim::New(guard)) => Some(guard),
        Ok(Claim::InFlight) => {
            forget_nonce(state, route, nonce.as_ref()).await;
            return Err(Stop::plain(Outcome::InFlight));
        }
        Ok(Claim::Delivered) => return Err(Stop::plain(Outcome::Duplicate)),
        Err(e @ StoreError::Unavailable(_)) if on_store_error == OnStoreError::Open => {
            state.metrics.store_error("claim");
            if state.backlog.contains(&key) {
                // Delivered while the store is down, not recorded yet.
                return Err(Stop::plain(Outcome::Duplicate));
            }
            tracing::warn!(route = %route.name, event_id = verified.event_id(), error = %e,
                "replay store down: forwarding WITHOUT replay protection (on_store_error = \"open\")");
            None
        }
        Err(e) => {
            store_refused(state, route, &e, "claim");
            forget_nonce(state, route, nonce.as_ref()).await;
            return Err(Stop {
                outcome: Outcome::StoreUnavailable,
                reason: Some(Reason {
                    label: e.label(),
                    why: e.to_string(),
                }),
            });
        }
    };
    Ok(Held {
        claim,
        nonce,
        key,
        life,
        waited: false,
    })
}

/// Forwards the verified notification, then settles what the request
/// holds: the delivery recorded when the shop took it, the claim given
/// back when it did not; and journals how it ended. Returns the shop's
/// answer (for the console) with the result.
pub(crate) async fn forward_and_settle(
    state: &State,
    route: &Route,
    merchant: &Merchant,
    verified: &Verified,
    arrival: &Arrival<'_>,
    held: Held,
    redelivery: bool,
) -> (ShopAnswer, Result<(), forward::ForwardError>) {
    let (shop, result) = deliver(state, route, merchant, verified, arrival).await;
    let outcome = match &result {
        Ok(()) => {
            match held.claim {
                Some(guard) => confirm(state, route, guard).await,
                None => owe_record(state, route, held.key),
            }
            Outcome::Forwarded
        }
        Err(e) => {
            held.give_back(state, route).await;
            e.outcome()
        }
    };
    record_outcome(
        state,
        arrival,
        route,
        verified,
        outcome,
        redelivery,
        Some(shop),
    )
    .await;
    (shop, result)
}

/// Forwards a verified notification and times the upstream.
async fn deliver(
    state: &State,
    route: &Route,
    merchant: &Merchant,
    verified: &Verified,
    arrival: &Arrival<'_>,
) -> (ShopAnswer, Result<(), forward::ForwardError>) {
    if arrival.attempt > 1 {
        state.metrics.repeat_delivery(&route.name);
        tracing::warn!(route = %route.name, event_id = verified.event_id(), attempt = arrival.attempt,
            "forwarding an event sent before without a recorded delivery (X-Callgate-Attempt)");
    }
    let target = Target {
        route: &route.name,
        mode: route.forward,
        headers: &route.forward_headers,
        upstream: &merchant.upstream,
    };
    let sent = Instant::now();
    let result = forward::forward(
        &forward::client_here(&state.client),
        &target,
        verified,
        arrival,
    )
    .await;
    let took = sent.elapsed();
    state.metrics.upstream(route, took);
    let status = match &result {
        Ok(status)
        | Err(
            forward::ForwardError::Status(status) | forward::ForwardError::NotConfirmed { status },
        ) => Some(*status),
        Err(_) => None,
    };
    (ShopAnswer { status, took }, result.map(|_| ()))
}

/// Counts a store refusal by its kind: unreachable, full, or Redis that
/// may evict.
pub(crate) fn store_refused(state: &State, route: &Route, e: &StoreError, op: &'static str) {
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

/// Gives a claim back; `life` is how long it lives (the request's own
/// snapshot), the longest a retry in the background is worth.
async fn release(state: &State, route: &Route, guard: Option<ClaimGuard>, life: Duration) {
    let Some(mut guard) = guard else { return };
    if let Err(e) = guard.release().await {
        state.metrics.store_error("release");
        // Until released, the platform's retry is 409 (in flight); the
        // claim lapses by itself, but the store usually comes back sooner.
        tracing::error!(route = %route.name, error = %e, "could not release the claim; retrying in the background");
        settle_in_background(state, route, Settle::Release, life, guard);
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
    arrival: &Arrival<'_>,
    route: &Route,
    verified: &Verified,
    outcome: Outcome,
    redelivery: bool,
    shop: Option<ShopAnswer>,
) {
    let Some(j) = &state.journal else { return };
    let record = Record::Outcome(OutcomeRecord {
        rid: arrival.request_id.to_owned(),
        unix: crate::clock::unix_now(),
        route: route.name.to_string(),
        namespace: crate::journal::namespace_field(&route.name, &route.replay_namespace),
        merchant: verified.merchant().to_owned(),
        event_id: verified.event_id().to_owned(),
        outcome: outcome.as_str().to_owned(),
        status: outcome.status().as_u16(),
        redelivery,
        shop_status: shop.and_then(|s| s.status),
        shop_ms: shop.map(|s| crate::console::millis(s.took)),
    });
    // A redelivery's outcome is what keeps the next redelivery idempotent.
    if let Err(e) = j.append(&record, redelivery || j.outcomes_durable()).await {
        state.metrics.journal_error();
        tracing::error!(route = %route.name, event_id = verified.event_id(), error = %e, "could not journal the outcome");
    }
}

/// Writes the request's one log line, records its metrics and hands it to
/// the console.
fn finish(state: &State, ctx: Ctx, outcome: Outcome, took: Duration) {
    let (route, provider) = match &ctx.route {
        Some(r) => (&*r.name, r.kind().as_str()),
        None => ("-", "-"),
    };
    match &ctx.route {
        Some(r) => state.metrics.route_request(r, outcome, took),
        None => state.metrics.request(route, provider, outcome, took),
    }
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
    let client = ctx.client_text.as_ref().map_or("-", AddrText::as_str);
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
                peer = %AddrText::socket(ctx.peer),
                client,
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
    let route = ctx
        .route
        .as_ref()
        .map_or_else(crate::console::no_route, |r| r.name.clone());
    state.recent.record(crate::console::Entry {
        seq: 0,
        unix: crate::clock::unix_now(),
        request_id: ctx.request_id,
        route,
        provider,
        outcome,
        reason_label: ctx.label,
        reason: ctx.reason,
        path: ctx.path,
        peer: ctx.peer,
        client: ctx.client,
        merchant: ctx.merchant,
        event_id: ctx.event_id,
        order: ctx.order,
        shop: ctx.shop,
        took,
    });
}
