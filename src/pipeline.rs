//! The request flow, top to bottom, in contract order:
//! route → method → address → size → parse → signature → freshness →
//! replay → forward → ack. Each step is a plain function whose error side is
//! the [`Outcome`] that ends the request; [`handle`] turns the outcome into
//! the platform's ack and [`finish`] writes the one log line and the metrics
//! before the response leaves.

use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::ack::{self, Outcome};
use crate::forward::{self, Delivery, ForwardMode, HttpClient};
use crate::metrics::Metrics;
use crate::replay::{self, Claim, Key, ReplayStore};
use crate::rules::{Route, RuleSet};
use crate::{allow, body, normalize};

/// Everything a request needs, shared by all connections. Built in `main`
/// (or a test), passed explicitly: no globals.
pub struct State {
    /// The live rule set; a request loads it once and keeps that snapshot.
    pub rules: ArcSwap<RuleSet>,
    pub store: ReplayStore,
    /// Shared upstream client (routes with `upstream_ca` have their own).
    pub client: HttpClient,
    pub metrics: Metrics,
    /// How long a delivered event is remembered (`replay.ttl`).
    pub replay_ttl: Duration,
    /// Set once SIGTERM starts the drain; `/readyz` turns 503.
    pub draining: AtomicBool,
}

impl State {
    pub fn new(
        rules: RuleSet,
        store: ReplayStore,
        client: HttpClient,
        metrics: Metrics,
        replay_ttl: Duration,
    ) -> State {
        metrics.rules_loaded(&rules, replay::unix_now());
        State {
            rules: ArcSwap::from_pointee(rules),
            store,
            client,
            metrics,
            replay_ttl,
            draining: AtomicBool::new(false),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// What is known about a request so far, for the log line and metrics.
struct Ctx {
    peer: SocketAddr,
    route: Option<Arc<Route>>,
    client: Option<IpAddr>,
    event_id: Option<String>,
    reason: Option<String>,
}

impl Ctx {
    /// Records why the request ends and returns the outcome it ends with.
    fn reject(&mut self, outcome: Outcome, why: impl Display) -> Outcome {
        self.reason = Some(why.to_string());
        outcome
    }
}

/// Handles one notification request. Never fails: every failure is an
/// answer.
pub async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let rules = state.rules.load_full();
    let mut ctx = Ctx {
        peer,
        route: None,
        client: None,
        event_id: None,
        reason: None,
    };
    let outcome = match flow(&state, &rules, &mut ctx, req).await {
        Ok(o) | Err(o) => o,
    };
    let response = ack::respond(outcome, ctx.route.as_ref().map(|r| r.kind()));
    finish(&state, &ctx, outcome, started.elapsed());
    response
}

async fn flow(
    state: &State,
    rules: &RuleSet,
    ctx: &mut Ctx,
    req: Request<Incoming>,
) -> Result<Outcome, Outcome> {
    let route = rules
        .route(req.uri().path())
        .cloned()
        .ok_or(Outcome::NotFound)?;
    ctx.route = Some(route.clone());
    if req.method() != Method::POST {
        return Err(ctx.reject(Outcome::MethodNotAllowed, req.method()));
    }

    let client = allow::client_ip(ctx.peer, req.headers(), &rules.trusted_proxies)
        .map_err(|e| ctx.reject(Outcome::IpDenied, e))?;
    ctx.client = Some(client);
    route
        .allow
        .check(client)
        .map_err(|e| ctx.reject(Outcome::IpDenied, e))?;

    let limits = rules.limits;
    let (parts, incoming) = req.into_parts();
    let bytes = body::read(
        &parts.headers,
        incoming,
        limits.max_body_bytes,
        limits.body_timeout,
    )
    .await
    .map_err(|e| ctx.reject(e.outcome(), e))?;
    let payload = body::parse(route.provider.format(), &parts.headers, &bytes)
        .map_err(|e| ctx.reject(Outcome::Malformed, e))?;

    let verified = route
        .provider
        .verify(&parts.headers, &payload)
        .map_err(|e| ctx.reject(e.outcome(), e))?;
    ctx.event_id = Some(verified.event_id().to_owned());

    let now = replay::unix_now();
    replay::check_fresh(&verified, route.max_age, route.max_future, now)
        .map_err(|e| ctx.reject(Outcome::Stale, e))?;

    let key = Key::event(&route.name, &verified);
    let in_flight_ttl = limits.upstream_timeout + Duration::from_secs(30);
    let token = match state
        .store
        .claim(key, in_flight_ttl)
        .await
        .map_err(|e| ctx.reject(Outcome::StoreUnavailable, e))?
    {
        Claim::New(token) => token,
        Claim::InFlight => return Err(Outcome::InFlight),
        Claim::Delivered => return Err(Outcome::Duplicate),
    };

    let (body, content_type) = match route.forward {
        ForwardMode::Original => (bytes, None),
        ForwardMode::Normalized => (
            Bytes::from(normalize::normalize(&verified)),
            Some("application/json"),
        ),
    };
    let delivery = Delivery {
        provider: route.kind().as_str(),
        route: &route.name,
        event_id: verified.event_id(),
        client_ip: client,
        incoming: &parts.headers,
        content_type,
        body,
        now,
        resource: match route.forward {
            ForwardMode::Original => verified.resource(),
            ForwardMode::Normalized => None,
        },
    };
    let sent = Instant::now();
    let result = forward::forward(&state.client, &route.upstream, delivery).await;
    state.metrics.upstream(&route.name, sent.elapsed());
    match result {
        Ok(_) => {
            if let Err(e) = state.store.confirm(key, token, state.replay_ttl).await {
                // Delivered, but a platform retry may be forwarded again.
                tracing::error!(route = %route.name, event_id = verified.event_id(), error = %e,
                    "delivered, but the replay store did not record it");
            }
            Ok(Outcome::Forwarded)
        }
        Err(e) => {
            if let Err(se) = state.store.release(key, token).await {
                tracing::error!(route = %route.name, event_id = verified.event_id(), error = %se,
                    "could not release the claim; the retry waits for it to lapse");
            }
            Err(ctx.reject(e.outcome(), e))
        }
    }
}

/// Writes the request's one log line and records its metrics.
fn finish(state: &State, ctx: &Ctx, outcome: Outcome, took: Duration) {
    let (route, provider) = match &ctx.route {
        Some(r) => (&*r.name, r.kind().as_str()),
        None => ("-", "-"),
    };
    state.metrics.request(route, provider, outcome, took);
    let client = ctx.client.map(|c| c.to_string());
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                target: "callgate::request",
                route,
                provider,
                outcome = outcome.as_str(),
                status = outcome.status().as_u16(),
                event_id = ctx.event_id.as_deref().unwrap_or("-"),
                peer = %ctx.peer,
                client = client.as_deref().unwrap_or("-"),
                duration_ms = took.as_secs_f64() * 1000.0,
                reason = ctx.reason.as_deref().unwrap_or(""),
                "notification"
            )
        };
    }
    match outcome {
        Outcome::Forwarded | Outcome::Duplicate => line!(info),
        Outcome::UpstreamError | Outcome::UpstreamTimeout | Outcome::StoreUnavailable => {
            line!(error)
        }
        _ => line!(warn),
    }
}
