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
//!
//! The console (`console`): `GET /` (the page) and `GET /api/routes`,
//! `/api/events`, `/api/rejections`, `/api/store` (JSON). Who may read it
//! ([`read_access`]):
//! * on a loopback admin address, anyone who reaches it, provided the
//!   request's `Host` names loopback (`127.0.0.1`, `[::1]`, `localhost`):
//!   a web page that rebinds its own DNS name to 127.0.0.1 cannot read it;
//!   or anyone with the token;
//! * on any other address, only with the token: `Authorization: Bearer
//!   <token>`, or HTTP Basic with the token as the password (so a browser
//!   can ask for it); without a configured token the console does not
//!   exist there (404), and `callgate check` warns.
//!
//! Basic credentials are accepted for reading only: a browser resends them
//! by itself, so `POST /api/redeliver` takes the Bearer header alone (a
//! page elsewhere cannot make a browser add it).

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
    if matches!(
        path,
        "/" | "/api/routes" | "/api/events" | "/api/rejections" | "/api/store"
    ) {
        return console(&state, &req).await;
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
            if let Err(StoreError::Unavailable(_)) = answer {
                state.metrics.store_error("ping");
            }
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
            json_headers(r.headers_mut());
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

/// Whether the request carries the admin token as `Authorization: Bearer`.
fn authorized(state: &State, headers: &http::HeaderMap) -> bool {
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| credentials(v.as_bytes(), b"bearer"))
        .unwrap_or_default();
    token_matches(state, presented)
}

/// The credentials of an `Authorization` value in the scheme `scheme`
/// (lowercase): the scheme is matched case-insensitively (RFC 9110 §11.1),
/// then one space.
fn credentials<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    let (name, rest) = value.split_at_checked(scheme.len())?;
    if !name.eq_ignore_ascii_case(scheme) {
        return None;
    }
    rest.strip_prefix(b" ")
}

/// Whether `presented` is the admin token. Both sides are hashed first,
/// so the constant-time comparison does not even reveal the token's
/// length. The only place the token is compared.
fn token_matches(state: &State, presented: &[u8]) -> bool {
    let Some(token) = &state.admin_token else {
        return false;
    };
    let digest = |b: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    crate::secret::ct_eq(digest(presented).as_ref(), digest(token.expose()).as_ref())
        && !presented.is_empty()
}

/// Whether the request carries the token as Bearer, or as the password of
/// HTTP Basic (any user name).
fn carries_token(state: &State, headers: &http::HeaderMap) -> bool {
    use base64::Engine as _;
    let Some(value) = headers.get(AUTHORIZATION).map(|v| v.as_bytes()) else {
        return false;
    };
    if let Some(token) = credentials(value, b"bearer") {
        return token_matches(state, token);
    }
    let Some(encoded) = credentials(value, b"basic") else {
        return false;
    };
    let Ok(pair) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return false;
    };
    let zeroized = zeroize::Zeroizing::new(pair);
    match zeroized.iter().position(|&b| b == b':') {
        Some(i) => token_matches(state, &zeroized[i + 1..]),
        None => false,
    }
}

/// Who may read the console (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Granted,
    /// Ask for the token.
    Unauthorized,
    /// A loopback console reached under a name that is not loopback.
    ForeignHost,
    /// Not on loopback and no token configured: the console does not exist.
    Absent,
}

fn read_access(state: &State, headers: &http::HeaderMap) -> Access {
    if carries_token(state, headers) {
        return Access::Granted;
    }
    if state.admin_loopback {
        return if loopback_host(headers) {
            Access::Granted
        } else {
            Access::ForeignHost
        };
    }
    if state.admin_token.is_some() {
        Access::Unauthorized
    } else {
        Access::Absent
    }
}

/// Whether the `Host` header names a loopback address or `localhost`.
fn loopback_host(headers: &http::HeaderMap) -> bool {
    let Some(host) = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `GET /` and the console's JSON endpoints.
async fn console<B>(state: &State, req: &Request<B>) -> Response<Full<Bytes>> {
    use crate::console::{Listing, api, page};
    let path = req.uri().path();
    let api_path = path != "/";
    match read_access(state, req.headers()) {
        Access::Granted => {}
        Access::Absent => return text(StatusCode::NOT_FOUND, "not found\n"),
        Access::ForeignHost => {
            return text(
                StatusCode::MISDIRECTED_REQUEST,
                "the console answers to 127.0.0.1, [::1] or localhost only\n",
            );
        }
        Access::Unauthorized => {
            let mut r = json_error(StatusCode::UNAUTHORIZED, "the admin token is required");
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(if api_path {
                    "Bearer realm=\"callgate admin\""
                } else {
                    "Basic realm=\"callgate console\", charset=\"UTF-8\""
                }),
            );
            return r;
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let now = crate::clock::unix_now();
    let query = api::parse_query(req.uri().query(), now);
    let value = match (path, query) {
        (_, Err(e)) => return json_error(StatusCode::BAD_REQUEST, &e.to_string()),
        ("/", Ok(q)) => {
            let body = page::render(state, q.q.as_deref(), now).await;
            let mut r = Response::new(Full::new(Bytes::from(body)));
            let h = r.headers_mut();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            if let Ok(csp) = HeaderValue::from_str(&page::content_security_policy()) {
                h.insert(http::header::CONTENT_SECURITY_POLICY, csp);
            }
            no_store(h);
            return r;
        }
        ("/api/routes", Ok(_)) => api::routes(state, now),
        ("/api/events", Ok(q)) => api::listing(state, Listing::Events, &q),
        ("/api/rejections", Ok(q)) => api::listing(state, Listing::Rejections, &q),
        (_, Ok(_)) => api::store(state).await,
    };
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(&value).unwrap_or_default(),
    )));
    json_headers(r.headers_mut());
    r
}

/// The headers of a JSON answer: its type, a policy that loads nothing,
/// and [`no_store`]'s.
fn json_headers(h: &mut http::HeaderMap) {
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    no_store(h);
}

/// Headers every admin answer carries (errors, health and metrics
/// included): not cached, not sniffed, no referrer, not framed.
fn no_store(h: &mut http::HeaderMap) {
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
}

fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    json_headers(r.headers_mut());
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    owned_text(status, body.to_owned())
}

fn owned_text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    no_store(h);
    r
}
