//! The admin listener: `GET /metrics` (Prometheus text), `GET /healthz`
//! (200 while the process runs), `GET /readyz` (200 only when rules with at
//! least one route are loaded, the replay store answers, Redis's
//! `maxmemory-policy` cannot evict, and no drain has started). Plain HTTP;
//! bind it to a private address.
//!
//! With `admin.token_file` set, the admin API exists too:
//! `POST /api/redeliver` (`redeliver`), which needs `Authorization: Bearer
//! <token>`, compared in constant time. Without a token it is 404, like any
//! unknown path.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

use crate::pipeline::State;
use crate::redeliver::{self, SelectError, Selection};
use crate::replay::StoreError;

/// Largest admin API request body.
const MAX_API_BODY: usize = 64 * 1024;
/// How long an admin API request body may take to arrive.
const API_BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn handle<B>(state: Arc<State>, req: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path();
    if path == "/api/redeliver" && state.admin_token.is_some() {
        return api_redeliver(state, req).await;
    }
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => {
            match state.store.entries().await {
                Ok(n) => {
                    state.metrics.set_store_up(true);
                    state.metrics.set_store_entries(n);
                }
                Err(_) => {
                    state.metrics.set_store_up(false);
                    state.metrics.store_error("entries");
                }
            }
            if let crate::replay::ReplayStore::Memory(m) = &state.store {
                state.metrics.set_route_usage(&m.route_usage());
            }
            state.metrics.set_backlog(state.backlog.len());
            state
                .metrics
                .set_store_evicting(state.store.evicting().is_some());
            state.metrics.set_store_topology(
                &state
                    .store
                    .topology()
                    .unwrap_or_else(crate::replay::Topology::memory),
            );
            let mut r = Response::new(Full::new(Bytes::from(state.metrics.render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ => {
            if state.is_draining() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
            }
            if state.snapshot.load().routes.is_empty() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "no routes loaded\n");
            }
            let answer = state.store.ping().await;
            state
                .metrics
                .set_store_evicting(matches!(answer, Err(StoreError::Evicting { .. })));
            if let Some(t) = state.store.topology() {
                state.metrics.set_store_topology(&t);
            }
            match answer {
                Ok(()) => match state.store.topology() {
                    Some(t) => {
                        owned_text(StatusCode::OK, format!("ready\n{}\n", topology_line(&t)))
                    }
                    None => text(StatusCode::OK, "ready\n"),
                },
                Err(e @ StoreError::Evicting { .. }) => owned_text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("replay store unsafe: {e}\n"),
                ),
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "replay store unavailable\n",
                ),
            }
        }
    }
}

/// The Redis deployment in one line of `/readyz`: kind, master(s),
/// replicas, the last marker's acknowledgements, failovers.
fn topology_line(t: &crate::replay::Topology) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    format!(
        "store: {} master={} replicas={} replicas_acked={} wait_replicas={} unreplicated={} failovers={} last_failover={}",
        t.kind,
        if t.master.is_empty() { "-" } else { &t.master },
        opt(t.replicas),
        opt(t.replicas_acked),
        t.wait_replicas,
        t.unreplicated,
        t.failovers,
        t.last_failover
    )
}

/// `POST /api/redeliver`: a [`Selection`] as JSON in, a
/// [`redeliver::Report`] as JSON out.
async fn api_redeliver<B>(state: Arc<State>, req: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if req.method() != Method::POST {
        let mut r = json_error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if !authorized(&state, req.headers()) {
        let mut r = json_error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"callgate admin\""),
        );
        return r;
    }
    if state.is_draining() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    let Some(journal) = &state.journal else {
        return json_error(StatusCode::CONFLICT, "the journal is disabled");
    };
    let body = Limited::new(req.into_body(), MAX_API_BODY).collect();
    let bytes = match tokio::time::timeout(API_BODY_TIMEOUT, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return json_error(StatusCode::BAD_REQUEST, "the body is too large or broken");
        }
        Err(_) => return json_error(StatusCode::BAD_REQUEST, "the body did not arrive in time"),
    };
    let selection: Selection = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("bad selection: {e}")),
    };
    // A redelivery forwards: the drain waits for it like for a notification.
    let _running = state.tasks.enter();
    tracing::info!(selection = ?selection, "admin API: redelivery requested");
    match redeliver::run(&state, journal.dir(), &selection).await {
        Ok(report) => {
            let mut r = Response::new(Full::new(Bytes::from(
                serde_json::to_vec(&report).unwrap_or_default(),
            )));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e @ (SelectError::NoSelector | SelectError::Since(_))) => {
            json_error(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(e @ SelectError::NothingMatches) => json_error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ SelectError::Journal(_)) => {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
    }
}

/// Whether the request carries the admin token. Both sides are hashed
/// first, so the constant-time comparison does not even reveal the
/// token's length.
fn authorized(state: &State, headers: &http::HeaderMap) -> bool {
    let Some(token) = &state.admin_token else {
        return false;
    };
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    let digest = |b: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    crate::secret::ct_eq(digest(presented).as_ref(), digest(token.expose()).as_ref())
        && !presented.is_empty()
}

fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    owned_text(status, body.to_owned())
}

fn owned_text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
