//! Forwarding: the eighth step of the flow.
//!
//! Sends a verified notification to the route's upstream (http and https):
//! on a `server` worker thread through the worker's own connections
//! ([`crate::upstream_pool`]), elsewhere with a pooled hyper-util client
//! (the route's own when it sets `upstream_ca`). Then decides whether the upstream
//! confirmed it: a 2xx status, and, when the route sets `success_body`, a
//! body containing those bytes. Only then is the event remembered as
//! delivered. [`forward`] takes a `&Verified`, and what the shop receives
//! is built from it alone, with the route's [`Target`] and the request's
//! [`Arrival`]: nothing unverified can reach a shop.
//!
//! What the upstream receives:
//! * `original` mode: the body byte for byte with its Content-Type, so a
//!   shop that checks the platform's signature itself keeps working;
//!   `normalized` mode: the JSON of `normalize`, as `application/json`.
//! * Of the platform's request headers, only an allowlist
//!   ([`ForwardHeaders`]): `Content-Type`, `User-Agent`, `Accept` and the
//!   platform's own signature headers (`Wechatpay-*`, on WeChat Pay v3
//!   routes: elsewhere they are a caller's), plus the names the
//!   route lists in `forward_headers`. In `normalized` mode the body is
//!   callgate's, so the incoming `Content-Type` and `Wechatpay-*` (which sign
//!   the platform's body) are not passed. Everything else the caller sent
//!   (`Cookie`, `Authorization`, `X-Original-URL`, `X-HTTP-Method-Override`,
//!   `True-Client-IP`, ...) stays behind. A route cannot list hop-by-hop
//!   headers, `X-Callgate-*`, the `X-Forwarded-*` family or credentials.
//!   A header the caller names in `Connection` stays behind too, except
//!   the body's `Content-Type` and `Wechatpay-*` in `original` mode; those
//!   pass once, with the first value (the one callgate checked).
//! * Headers the gateway always sets: `X-Callgate-Provider`,
//!   `X-Callgate-Route`, `X-Callgate-Event-Id`, `X-Callgate-Request-Id`
//!   (the id of callgate's log line for the request, and of its journal
//!   records), `X-Callgate-Attempt` (1, or
//!   more when callgate sent the event before without recording its
//!   delivery: the shop may have it already), `X-Forwarded-For` (the
//!   source address callgate decided on) and `X-Callgate-Signature:
//!   t=UNIX,v1=HEX`, HEX = HMAC-SHA256(upstream secret, `t + "." + body`).
//! * In `original` mode, when the platform encrypted part of the
//!   notification (WeChat v3 `resource`, WeChat v2 refund `req_info`, JD
//!   Pay `encrypt`):
//!   `X-Callgate-Resource: <standard Base64 of the decrypted bytes>` and
//!   `X-Callgate-Resource-Signature: t=UNIX,v1=HEX`, HEX =
//!   HMAC-SHA256(upstream secret, `"resource." + t + "." + decrypted
//!   bytes`) with the same `t`, so a shop without sodium or the APIv3 key
//!   can use it. The `resource.` label keeps the two signatures apart: a
//!   body signature starts with the digits of `t`, so neither header ever
//!   verifies as the other (a captured resource and its signature cannot be
//!   posted to the shop as a body).
//! * `Host` comes from the upstream URL, `Content-Length` from the body.
//!
//! The incoming query string is never forwarded: it is not signed. The whole
//! exchange (connect, send, read the reply) runs under `upstream_timeout`.
//!
//! Outcomes: `UpstreamTimeout` (504), `UpstreamError` (502).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;

use crate::ack::Outcome;
use crate::addr::AddrText;
use crate::normalize;
use crate::provider::{ProviderKind, Verified};
use crate::secret::Secret;

/// How a route forwards: the platform's bytes, or callgate's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardMode {
    #[default]
    Original,
    Normalized,
}

/// The pooled upstream client.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Largest upstream reply read to look for `success_body`.
const MAX_REPLY: usize = 1 << 20;

/// A route's upstream: URL, secret and the checks its reply must pass.
pub struct Upstream {
    uri: Uri,
    secret: Secret,
    /// HMAC-SHA256 keyed with `secret`, prepared once (for
    /// `X-Callgate-Signature`; preparing it per request cost about 5,000
    /// instructions).
    key: aws_lc_rs::hmac::Key,
    /// Where the worker pool connects, and the request target and `Host`
    /// it sends.
    endpoint: crate::upstream_pool::Endpoint,
    /// A client of its own when the route trusts a private CA (off the
    /// worker threads; on them the pool uses the same connector).
    client: Option<HttpClient>,
    success_body: Option<Box<[u8]>>,
    timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("uri", &self.uri)
            .field("secret", &self.secret)
            .field("own_client", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

/// Why an upstream could not be configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Uri(String),
    #[error("{0}")]
    Ca(String),
}

impl Upstream {
    pub fn new(
        url: &str,
        secret: Secret,
        ca: Option<&Path>,
        success_body: Option<Box<[u8]>>,
        timeout: Duration,
    ) -> Result<Upstream, UpstreamError> {
        let uri = crate::load::http_url(url).map_err(UpstreamError::Uri)?;
        let own = match ca {
            Some(path) => Some(connector(load_roots(path).map_err(UpstreamError::Ca)?)),
            None => None,
        };
        let client = own.clone().map(client_over);
        let endpoint =
            crate::upstream_pool::Endpoint::new(&uri, own).map_err(UpstreamError::Uri)?;
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.expose());
        Ok(Upstream {
            uri,
            secret,
            key,
            endpoint,
            client,
            success_body,
            timeout,
        })
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The bytes a 2xx reply must contain, when the route sets `success_body`.
    pub fn success_body(&self) -> Option<&[u8]> {
        self.success_body.as_deref()
    }
}

/// Reads a PEM CA bundle into a root store.
fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| crate::load::pem_reason(&e))?;
    for cert in certs {
        let cert = cert.map_err(|e| crate::load::pem_reason(&e))?;
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no -----BEGIN CERTIFICATE----- block in the file".to_owned());
    }
    Ok(roots)
}

/// The shared client, trusting the system's root certificates.
pub fn default_client() -> HttpClient {
    client_with_roots(system_roots())
}

/// The system's root certificates (read once; each worker's client gets a
/// copy).
pub fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!("no system root certificates found; https upstreams need upstream_ca");
    }
    roots
}

thread_local! {
    /// The upstream client of the worker thread this code runs on. Its
    /// pooled connections are driven by this thread's runtime, so a forward
    /// from this thread never hands its request to another thread.
    static WORKER_CLIENT: std::cell::RefCell<Option<HttpClient>> =
        const { std::cell::RefCell::new(None) };
}

/// Makes `client` the upstream client of requests served on this thread
/// (a `server` worker, once, at its start).
pub fn use_worker_client(client: HttpClient) {
    WORKER_CLIENT.with(|c| *c.borrow_mut() = Some(client));
}

/// The client a forward from this thread goes through: its worker's own
/// (see [`use_worker_client`]), or `shared` off the worker threads
/// (redelivery, the admin API, benches).
pub fn client_here(shared: &HttpClient) -> HttpClient {
    WORKER_CLIENT
        .with(|c| c.borrow().clone())
        .unwrap_or_else(|| shared.clone())
}

/// A pooled client trusting `roots`; its connections are driven by the
/// runtime that opens them.
pub fn client_with_roots(roots: rustls::RootCertStore) -> HttpClient {
    client_over(connector(roots))
}

/// The legacy pooled client over `connector`.
pub fn client_over(connector: HttpsConnector<HttpConnector>) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// How every upstream connection is opened: TCP (no Nagle, 5 s connect
/// timeout), then TLS trusting `roots` for https, HTTP/1.1 only.
pub fn connector(roots: rustls::RootCertStore) -> HttpsConnector<HttpConnector> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        // The default provider always supports the default versions.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

/// Why a forward did not end in a confirmed delivery.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("upstream request failed: {0}")]
    Request(String),
    #[error("upstream answered {0}")]
    Status(u16),
    #[error("upstream answered {status} without the route's success_body")]
    NotConfirmed { status: u16 },
    #[error("upstream reply could not be read: {0}")]
    Reply(String),
    #[error("cannot build the upstream request: {0}")]
    Build(String),
}

impl ForwardError {
    /// The `reason` label of `callgate_rejections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ForwardError::Timeout(_) => "upstream_timeout",
            ForwardError::Request(_) => "upstream_unreachable",
            ForwardError::Status(_) => "upstream_status",
            ForwardError::NotConfirmed { .. } => "upstream_unconfirmed",
            ForwardError::Reply(_) => "upstream_reply",
            ForwardError::Build(_) => "upstream_request",
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            ForwardError::Timeout(_) => Outcome::UpstreamTimeout,
            _ => Outcome::UpstreamError,
        }
    }
}

/// Where and how a route forwards: the route's part of what the shop
/// receives.
pub struct Target<'a> {
    /// `X-Callgate-Route`.
    pub route: &'a str,
    pub mode: ForwardMode,
    /// Which of the platform's request headers the shop gets.
    pub headers: &'a ForwardHeaders,
    /// The verified merchant's upstream.
    pub upstream: &'a Upstream,
}

/// The request a notification arrived in: the delivery's part of what the
/// shop receives.
pub struct Arrival<'a> {
    /// `X-Callgate-Request-Id`: the id of callgate's log line and journal
    /// records for the request.
    pub request_id: &'a str,
    /// `X-Forwarded-For`: the source address callgate decided on, as
    /// text (formatted once per request: the journal and log line have it
    /// too).
    pub client: AddrText,
    /// The platform's request headers; the route's allowlist picks.
    pub headers: &'a HeaderMap,
    /// The `t` of `X-Callgate-Signature`, Unix seconds.
    pub now: i64,
    /// `X-Callgate-Attempt`: 1, or more when the event was sent before
    /// without a recorded delivery.
    pub attempt: u32,
}

/// Everything the shop receives, built only by [`Delivery::of`] from a
/// verified notification: its body (the bytes the signature covers, or
/// callgate's JSON of them), its provider, event id and decrypted content.
struct Delivery<'a> {
    provider: &'static str,
    route: &'a str,
    event_id: &'a str,
    request_id: &'a str,
    client_ip: AddrText,
    incoming: &'a HeaderMap,
    pass: &'a ForwardHeaders,
    /// `original` keeps the incoming Content-Type; `normalized` sends JSON.
    mode: ForwardMode,
    body: Bytes,
    /// Decrypted platform content for `X-Callgate-Resource` (original mode).
    decrypted: Option<&'a [u8]>,
    now: i64,
    attempt: u32,
}

impl<'a> Delivery<'a> {
    fn of(target: &Target<'a>, verified: &'a Verified, arrival: &Arrival<'a>) -> Delivery<'a> {
        let (body, decrypted) = match target.mode {
            ForwardMode::Original => (verified.original_body(), verified.decrypted()),
            ForwardMode::Normalized => (Bytes::from(normalize::normalize(verified)), None),
        };
        Delivery {
            provider: verified.kind().as_str(),
            route: target.route,
            event_id: verified.event_id(),
            request_id: arrival.request_id,
            client_ip: arrival.client,
            incoming: arrival.headers,
            pass: target.headers,
            mode: target.mode,
            body,
            decrypted,
            now: arrival.now,
            attempt: arrival.attempt,
        }
    }
}

/// Sends a verified notification to `target`'s upstream and waits for its
/// confirmation: the only way anything reaches a shop.
pub async fn forward(
    shared: &HttpClient,
    target: &Target<'_>,
    verified: &Verified,
    arrival: &Arrival<'_>,
) -> Result<u16, ForwardError> {
    let upstream = target.upstream;
    let client = upstream.client.as_ref().unwrap_or(shared);
    // On a worker thread, forwards go through the worker's pool of
    // connections (crate::upstream_pool).
    let pooled = crate::upstream_pool::on_worker();
    let request = build_request(upstream, Delivery::of(target, verified, arrival))?;
    let exchange = async {
        let (response, lease) = if pooled {
            let (response, lease) = crate::upstream_pool::send(&upstream.endpoint, request).await?;
            (response, Some(lease))
        } else {
            let response = client
                .request(request)
                .await
                .map_err(|e| ForwardError::Request(error_chain(&e)))?;
            (response, None)
        };
        let (reply_head, body) = response.into_parts();
        let status = reply_head.status;
        // An error or an oversized reply drops the lease: its connection
        // is closed, never reused.
        let reply = Limited::new(body, MAX_REPLY)
            .collect()
            .await
            .map_err(|e| ForwardError::Reply(e.to_string()))?
            .to_bytes();
        if let Some(lease) = lease {
            lease.give_back(&reply_head);
        }
        if !status.is_success() {
            return Err(ForwardError::Status(status.as_u16()));
        }
        if let Some(want) = &upstream.success_body
            && !confirms(&reply, want)
        {
            return Err(ForwardError::NotConfirmed {
                status: status.as_u16(),
            });
        }
        Ok(status.as_u16())
    };
    tokio::time::timeout(upstream.timeout, exchange)
        .await
        .map_err(|_| ForwardError::Timeout(upstream.timeout))?
}

// The headers callgate sets, named once (a name given as `&str` is parsed
// again at every insert).
const X_CALLGATE_PROVIDER: HeaderName = HeaderName::from_static("x-callgate-provider");
const X_CALLGATE_ROUTE: HeaderName = HeaderName::from_static("x-callgate-route");
const X_CALLGATE_EVENT_ID: HeaderName = HeaderName::from_static("x-callgate-event-id");
const X_CALLGATE_REQUEST_ID: HeaderName = HeaderName::from_static("x-callgate-request-id");
const X_CALLGATE_ATTEMPT: HeaderName = HeaderName::from_static("x-callgate-attempt");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_CALLGATE_SIGNATURE: HeaderName = HeaderName::from_static("x-callgate-signature");
const X_CALLGATE_RESOURCE: HeaderName = HeaderName::from_static("x-callgate-resource");
const X_CALLGATE_RESOURCE_SIGNATURE: HeaderName =
    HeaderName::from_static("x-callgate-resource-signature");

fn build_request(
    upstream: &Upstream,
    d: Delivery<'_>,
) -> Result<Request<Full<Bytes>>, ForwardError> {
    let mut headers = HeaderMap::with_capacity(12);
    let connection_named: Vec<HeaderName> = d
        .incoming
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for (name, value) in d.incoming {
        // A header the caller names in `Connection` is hop-by-hop and stays
        // behind, except the ones that belong to the platform's body: its
        // Content-Type and signature headers are what the shop needs to
        // read and check it, and no platform lists them (a copy that did
        // would reach the shop unreadable, and a shop answering 200 to it
        // would have the event recorded as delivered).
        let body_field = d.pass.describes_body(name, d.mode);
        if !d.pass.passes(name, d.mode) || (connection_named.contains(name) && !body_field) {
            continue;
        }
        // The body's fields are one value each (RFC 9110 §5.3): the shop
        // gets the first, the one callgate checked and verified, never a
        // second a caller added to a captured notification.
        if body_field && headers.contains_key(name) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if d.mode == ForwardMode::Normalized {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    headers.insert(X_CALLGATE_PROVIDER, HeaderValue::from_static(d.provider));
    headers.insert(X_CALLGATE_ROUTE, header_value(d.route));
    headers.insert(X_CALLGATE_EVENT_ID, header_value(d.event_id));
    headers.insert(X_CALLGATE_REQUEST_ID, header_value(d.request_id));
    // Mostly the first: a constant, not a number written out.
    headers.insert(
        X_CALLGATE_ATTEMPT,
        match d.attempt {
            1 => HeaderValue::from_static("1"),
            n => HeaderValue::from(n),
        },
    );
    headers.insert(X_FORWARDED_FOR, header_value(d.client_ip.as_str()));
    headers.insert(
        X_CALLGATE_SIGNATURE,
        header_value(signed_with(&upstream.key, None, d.now, &d.body).as_str()),
    );
    if let Some(plain) = d.decrypted {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(plain);
        headers.insert(
            X_CALLGATE_RESOURCE,
            HeaderValue::from_str(&encoded)
                .map_err(|e| ForwardError::Build(format!("resource header: {e}")))?,
        );
        headers.insert(
            X_CALLGATE_RESOURCE_SIGNATURE,
            header_value(signed_with(&upstream.key, Some(RESOURCE_LABEL), d.now, plain).as_str()),
        );
    }

    let mut request = Request::new(Full::new(d.body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = upstream.uri.clone();
    *request.headers_mut() = headers;
    Ok(request)
}

/// `X-Callgate-Signature`: `t=UNIX,v1=HEX(HMAC-SHA256(secret, t + "." + body))`.
pub fn signature(secret: &Secret, t: i64, body: &[u8]) -> String {
    signed(secret, None, t, body)
}

/// `X-Callgate-Resource-Signature`:
/// `t=UNIX,v1=HEX(HMAC-SHA256(secret, "resource." + t + "." + decrypted))`.
/// The label makes its message differ from every body signature's, which
/// starts with the digits of `t`.
pub fn resource_signature(secret: &Secret, t: i64, decrypted: &[u8]) -> String {
    signed(secret, Some(RESOURCE_LABEL), t, decrypted)
}

/// The label in front of a resource signature's message.
pub const RESOURCE_LABEL: &str = "resource";

fn signed(secret: &Secret, label: Option<&str>, t: i64, data: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.expose());
    signed_with(&key, label, t, data).as_str().to_owned()
}

fn signed_with(key: &aws_lc_rs::hmac::Key, label: Option<&str>, t: i64, data: &[u8]) -> Signed {
    use std::io::Write as _;
    // "t=UNIX,v1=" then the hex digest: the digits of `t` are written once
    // and hashed from there.
    let mut text = [0u8; SIGNED_MAX];
    let mut free = &mut text[..];
    let _ = write!(free, "t={t},v1=");
    let mut len = SIGNED_MAX - free.len();
    let mut ctx = aws_lc_rs::hmac::Context::with_key(key);
    if let Some(label) = label {
        ctx.update(label.as_bytes());
        ctx.update(b".");
    }
    ctx.update(text.get(2..len.saturating_sub(4)).unwrap_or_default());
    ctx.update(b".");
    ctx.update(data);
    let tag = ctx.sign();
    if let Some(hex) = text.get_mut(len..len + 2 * tag.as_ref().len())
        && hex::encode_to_slice(tag.as_ref(), hex).is_ok()
    {
        len += hex.len();
    }
    Signed { text, len }
}

/// The most a signature header holds: `t=` and an `i64` (20), `,v1=`, 64
/// hex digits.
const SIGNED_MAX: usize = 2 + 20 + 4 + 64;

/// A signature header's text, kept inline: a forward copies it into its
/// header, and nothing else keeps it.
struct Signed {
    text: [u8; SIGNED_MAX],
    len: usize,
}

impl Signed {
    fn as_str(&self) -> &str {
        std::str::from_utf8(self.text.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

// === impl ForwardHeaders ===

/// The platform's request headers a route passes on to the shop: a fixed
/// allowlist plus the route's `forward_headers`. Headers callgate sets
/// itself are never taken from the request.
#[derive(Debug, Clone, Default)]
pub struct ForwardHeaders {
    /// The route's `forward_headers`, checked by [`ForwardHeaders::new`].
    extra: Box<[HeaderName]>,
    /// The route's platform signs with `Wechatpay-*` headers (WeChat Pay
    /// v3): they pass with its body. On any other route they are not the
    /// platform's, only a caller's, and stay behind.
    platform_signature: bool,
}

/// Passed in both modes.
const PASSED: [HeaderName; 2] = [http::header::USER_AGENT, http::header::ACCEPT];

/// The platform's own signature headers (WeChat Pay v3), passed with the
/// platform's body in `original` mode: the five WeChat Pay sends, by name.
/// Any other `Wechatpay-*` a caller adds is not the platform's and stays
/// behind (a shop may read a `Wechatpay-` header as WeChat's word).
const PLATFORM_SIGNATURE: [HeaderName; 5] = [
    HeaderName::from_static("wechatpay-timestamp"),
    HeaderName::from_static("wechatpay-nonce"),
    HeaderName::from_static("wechatpay-serial"),
    HeaderName::from_static("wechatpay-signature"),
    HeaderName::from_static("wechatpay-signature-type"),
];

/// Headers a route may not list in `forward_headers`, and why.
const NEVER_PASSED: &[(&str, &str)] = &[
    ("connection", "hop-by-hop"),
    ("keep-alive", "hop-by-hop"),
    ("proxy-connection", "hop-by-hop"),
    ("proxy-authenticate", "hop-by-hop"),
    ("proxy-authorization", "hop-by-hop"),
    ("te", "hop-by-hop"),
    ("trailer", "hop-by-hop"),
    ("transfer-encoding", "hop-by-hop"),
    ("upgrade", "hop-by-hop"),
    ("host", "set from the upstream URL"),
    ("content-length", "set from the body forwarded"),
    ("expect", "answered by callgate"),
    (
        "forwarded",
        "callgate sets X-Forwarded-For to the source address it decided on",
    ),
    (
        "x-real-ip",
        "callgate sets X-Forwarded-For to the source address it decided on",
    ),
    (
        "client-ip",
        "callgate sets X-Forwarded-For to the source address it decided on",
    ),
    (
        "true-client-ip",
        "callgate sets X-Forwarded-For to the source address it decided on",
    ),
    (
        "x-client-ip",
        "callgate sets X-Forwarded-For to the source address it decided on",
    ),
    (
        "x-cluster-client-ip",
        "callgate sets X-Forwarded-For to the source address it decided on",
    ),
    ("cookie", "a credential; no platform sends one"),
    ("authorization", "a credential; no platform sends one"),
    (
        "x-original-url",
        "rewrites the URL a PHP stack or IIS routes on",
    ),
    (
        "x-rewrite-url",
        "rewrites the URL a PHP stack or IIS routes on",
    ),
    (
        "x-http-method-override",
        "overrides the method a framework routes on",
    ),
    (
        "x-http-method",
        "overrides the method a framework routes on",
    ),
    (
        "x-method-override",
        "overrides the method a framework routes on",
    ),
];

/// Prefixes a route may not list in `forward_headers`, and why.
const NEVER_PASSED_PREFIXES: &[(&str, &str)] = &[
    (
        "x-callgate-",
        "callgate's own headers are set only by callgate",
    ),
    (
        "x-forwarded-",
        "callgate sets X-Forwarded-For to the source address it decided on",
    ),
];

impl ForwardHeaders {
    /// Checks a route's `forward_headers`; `Err` names the first name that
    /// cannot be passed and why.
    pub fn new<'a>(
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<ForwardHeaders, (usize, String)> {
        let mut extra = Vec::new();
        for (i, name) in names.into_iter().enumerate() {
            let parsed = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| (i, format!("`{name}` is not a header name")))?;
            let lower = parsed.as_str();
            let refused = NEVER_PASSED.iter().find(|(n, _)| *n == lower).or_else(|| {
                NEVER_PASSED_PREFIXES
                    .iter()
                    .find(|(p, _)| lower.starts_with(p))
            });
            if let Some((_, why)) = refused {
                return Err((i, format!("`{name}` is never passed to the shop: {why}")));
            }
            if !extra.contains(&parsed) {
                extra.push(parsed);
            }
        }
        Ok(ForwardHeaders {
            extra: extra.into_boxed_slice(),
            platform_signature: false,
        })
    }

    /// For a route of `provider`: its platform's signature headers pass in
    /// `original` mode when it has any (`Wechatpay-*`, WeChat Pay v3).
    pub fn for_provider(mut self, provider: ProviderKind) -> ForwardHeaders {
        self.platform_signature = provider == ProviderKind::WechatV3;
        self
    }

    /// The names the route added to the fixed allowlist (`forward_headers`).
    pub fn extra(&self) -> &[HeaderName] {
        &self.extra
    }

    /// Whether an incoming header reaches the shop in `mode`.
    pub fn passes(&self, name: &HeaderName, mode: ForwardMode) -> bool {
        if PASSED.contains(name) || self.extra.contains(name) {
            return true;
        }
        self.describes_body(name, mode)
    }

    /// Whether an incoming header belongs with the body the shop gets: in
    /// `original` mode the platform's Content-Type and, for a platform
    /// that has them, its signature headers.
    fn describes_body(&self, name: &HeaderName, mode: ForwardMode) -> bool {
        mode == ForwardMode::Original
            && (*name == CONTENT_TYPE
                || (self.platform_signature && PLATFORM_SIGNATURE.contains(name)))
    }

    /// Whether an incoming header is kept in the journal: what a redelivery
    /// needs to verify the notification again (Content-Type, the platform's
    /// signature headers) and to forward it as the first delivery did.
    pub fn journals(&self, name: &HeaderName) -> bool {
        self.passes(name, ForwardMode::Original)
    }
}

/// A header value for text that came from a notification: kept as is when
/// it is a valid header value, percent-encoded otherwise.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| {
        let encoded =
            percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        HeaderValue::from_str(&encoded).unwrap_or(HeaderValue::from_static("-"))
    })
}

/// Whether the shop's `reply` holds `want` (the route's `success_body`) as
/// a word: where `want` begins or ends with a letter, digit or `_`, the
/// reply's byte next to it is none of those. `success` confirms
/// `<html>success</html>` and `success\n`, never `unsuccessful` or
/// `success_false`: a shop's error text that happens to contain the word
/// would otherwise record a payment as delivered that the shop did not
/// record, and the platform's retries would be answered as duplicates.
fn confirms(reply: &[u8], want: &[u8]) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let (Some(&first), Some(&last)) = (want.first(), want.last()) else {
        return true;
    };
    reply
        .windows(want.len())
        .enumerate()
        .filter(|(_, w)| *w == want)
        .any(|(at, _)| {
            let before = at.checked_sub(1).and_then(|i| reply.get(i));
            let after = reply.get(at + want.len());
            let glued_before = word(first) && before.is_some_and(|&b| word(b));
            let glued_after = word(last) && after.is_some_and(|&b| word(b));
            !glued_before && !glued_after
        })
}

/// The error and its sources, for the log line (an outbound request that
/// failed: hyper's error alone says only "client error (Connect)").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `printf MESSAGE | openssl dgst -sha256 -hmac KEY`, hex.
    fn openssl_hmac(key: &str, message: &[u8]) -> String {
        let out = crate::test_tools::tool("openssl")
            .args(["dgst", "-sha256", "-hmac", key, "-r"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(message)?;
                c.wait_with_output()
            })
            .unwrap();
        let hex = String::from_utf8(out.stdout).unwrap();
        hex.split_whitespace().next().unwrap().to_owned()
    }

    fn upstream() -> Upstream {
        Upstream::new(
            "http://127.0.0.1:1/n",
            Secret::new(b"k".to_vec()),
            None,
            None,
            Duration::from_secs(1),
        )
        .unwrap()
    }

    /// A delivery of event `id-1` on route `r`, original mode, at time 7.
    fn delivery<'a>(
        provider: &'static str,
        incoming: &'a HeaderMap,
        pass: &'a ForwardHeaders,
    ) -> Delivery<'a> {
        Delivery {
            provider,
            route: "r",
            event_id: "id-1",
            request_id: "0123456789abcdef",
            client_ip: AddrText::ip("127.0.0.1".parse().unwrap()),
            incoming,
            pass,
            mode: ForwardMode::Original,
            body: Bytes::new(),
            decrypted: None,
            now: 7,
            attempt: 1,
        }
    }

    #[test]
    fn signature_matches_openssl() {
        let s = signature(&Secret::new(b"topsecret".to_vec()), 1_700_000_000, b"a=1");
        let hex = openssl_hmac("topsecret", b"1700000000.a=1");
        assert_eq!(s, format!("t=1700000000,v1={hex}"));
    }

    /// The header is written on the stack: the longest `t` fits, and the
    /// digits hashed are the ones written.
    #[test]
    fn signature_of_any_time_matches_openssl() {
        for t in [0, -1, 9, i64::MIN, i64::MAX] {
            let s = signature(&Secret::new(b"topsecret".to_vec()), t, b"a=1");
            let hex = openssl_hmac("topsecret", format!("{t}.a=1").as_bytes());
            assert_eq!(s, format!("t={t},v1={hex}"));
        }
    }

    #[test]
    fn a_resource_signature_carries_its_label_and_is_never_a_body_signature() {
        let secret = Secret::new(b"topsecret".to_vec());
        let s = resource_signature(&secret, 1_700_000_000, b"{\"a\":1}");
        let hex = openssl_hmac("topsecret", b"resource.1700000000.{\"a\":1}");
        assert_eq!(s, format!("t=1700000000,v1={hex}"));
        // The same bytes posted as a body carry a different signature.
        assert_ne!(s, signature(&secret, 1_700_000_000, b"{\"a\":1}"));
    }

    #[test]
    fn the_attempt_header_counts_from_one() {
        let (incoming, none, up) = (HeaderMap::new(), ForwardHeaders::default(), upstream());
        for (attempt, want) in [(1, "1"), (2, "2"), (10, "10"), (u32::MAX, "4294967295")] {
            let d = Delivery {
                attempt,
                ..delivery("alipay", &incoming, &none)
            };
            let req = build_request(&up, d).unwrap();
            assert_eq!(req.headers()["x-callgate-attempt"], want);
        }
    }

    #[test]
    fn headers_are_filtered_and_set() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .unwrap(),
        );
        incoming.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        incoming.insert("x-secret-hop", "1".parse().unwrap());
        incoming.insert("x-callgate-event-id", "forged".parse().unwrap());
        incoming.insert("X-Callgate-Anything", "forged".parse().unwrap());
        incoming.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        incoming.insert("transfer-encoding", "chunked".parse().unwrap());
        incoming.insert("user-agent", "Mozilla/4.0".parse().unwrap());
        incoming.insert("accept", "*/*".parse().unwrap());
        incoming.insert("host", "gateway".parse().unwrap());
        incoming.insert("cookie", "PHPSESSID=admin".parse().unwrap());
        incoming.insert("authorization", "Basic YWRtaW46YWRtaW4=".parse().unwrap());
        incoming.insert("x-original-url", "/admin/pay.php".parse().unwrap());
        incoming.insert("x-http-method-override", "PUT".parse().unwrap());
        incoming.insert("true-client-ip", "10.0.0.1".parse().unwrap());
        incoming.insert("wechatpay-serial", "5157F09E".parse().unwrap());
        let none = ForwardHeaders::default();
        let up = upstream();
        let req = build_request(
            &up,
            Delivery {
                client_ip: AddrText::ip("110.75.1.1".parse().unwrap()),
                body: Bytes::from_static(b"a=1"),
                now: 5,
                attempt: 2,
                ..delivery("alipay", &incoming, &none)
            },
        )
        .unwrap();
        let h = req.headers();
        assert_eq!(h["x-callgate-attempt"], "2");
        assert_eq!(
            h["content-type"],
            "application/x-www-form-urlencoded; charset=utf-8"
        );
        assert_eq!(h["user-agent"], "Mozilla/4.0");
        assert_eq!(h["accept"], "*/*");
        // Not the platform's on an Alipay route: a caller's, left behind.
        assert!(h.get("wechatpay-serial").is_none());
        for never in [
            "cookie",
            "authorization",
            "x-original-url",
            "x-http-method-override",
            "true-client-ip",
        ] {
            assert!(h.get(never).is_none(), "{never}");
        }
        assert_eq!(h["x-callgate-event-id"], "id-1");
        assert_eq!(h["x-callgate-request-id"], "0123456789abcdef");
        assert_eq!(h["x-forwarded-for"], "110.75.1.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert!(h.get("x-callgate-anything").is_none());
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert!(h.get("host").is_none());
        assert!(
            h["x-callgate-signature"]
                .to_str()
                .unwrap()
                .starts_with("t=5,v1=")
        );
    }

    #[test]
    fn a_decrypted_resource_travels_with_its_own_hmac() {
        let up = upstream();
        let incoming = HeaderMap::new();
        let none = ForwardHeaders::default();
        let req = build_request(
            &up,
            Delivery {
                body: Bytes::from_static(b"<jdpay/>"),
                decrypted: Some("<jdpay>京东</jdpay>".as_bytes()),
                ..delivery("jdpay", &incoming, &none)
            },
        )
        .unwrap();
        let h = req.headers();
        use base64::Engine as _;
        let got = base64::engine::general_purpose::STANDARD
            .decode(h["x-callgate-resource"].as_bytes())
            .unwrap();
        assert_eq!(got, "<jdpay>京东</jdpay>".as_bytes());
        assert_eq!(
            h["x-callgate-resource-signature"],
            resource_signature(
                &Secret::new(b"k".to_vec()),
                7,
                "<jdpay>京东</jdpay>".as_bytes()
            )
            .as_str()
        );
        assert!(
            h["x-callgate-signature"]
                .to_str()
                .unwrap()
                .starts_with("t=7,")
        );
    }

    #[test]
    fn normalized_mode_passes_neither_the_platform_content_type_nor_its_signature_headers() {
        let mut incoming = HeaderMap::new();
        incoming.insert("content-type", "text/xml".parse().unwrap());
        incoming.insert("wechatpay-signature", "abc".parse().unwrap());
        incoming.insert("user-agent", "Mozilla/4.0".parse().unwrap());
        incoming.insert("x-shop-trace", "t-1".parse().unwrap());
        incoming.insert("x-other", "o".parse().unwrap());
        let pass = ForwardHeaders::new(["X-Shop-Trace"])
            .unwrap()
            .for_provider(ProviderKind::WechatV3);
        let up = upstream();
        let req = build_request(
            &up,
            Delivery {
                mode: ForwardMode::Normalized,
                body: Bytes::from_static(b"{}"),
                ..delivery("wechat_v3", &incoming, &pass)
            },
        )
        .unwrap();
        let h = req.headers();
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h.get_all("content-type").iter().count(), 1);
        assert!(h.get("wechatpay-signature").is_none());
        assert_eq!(h["user-agent"], "Mozilla/4.0");
        assert_eq!(h["x-shop-trace"], "t-1");
        assert!(h.get("x-other").is_none());
        // The journal keeps what a redelivery needs to verify again.
        assert!(pass.journals(&HeaderName::from_static("wechatpay-signature")));
        assert!(pass.journals(&CONTENT_TYPE));
        assert!(pass.journals(&HeaderName::from_static("x-shop-trace")));
        assert!(!pass.journals(&http::header::COOKIE));
        // Another platform's route keeps no Wechatpay-* header.
        let alipay = ForwardHeaders::new(["X-Shop-Trace"])
            .unwrap()
            .for_provider(ProviderKind::Alipay);
        assert!(!alipay.journals(&HeaderName::from_static("wechatpay-signature")));
        assert!(alipay.journals(&CONTENT_TYPE));
    }

    #[test]
    fn the_success_body_confirms_as_a_word() {
        for reply in [
            &b"success"[..],
            b"<html>success</html>",
            b"success\n",
            b"  success  ",
            b"\xe6\x88\x90\xe5\x8a\x9fsuccess",
            // One occurrence as a word is enough.
            b"unsuccessful? no: success",
        ] {
            assert!(confirms(reply, b"success"), "{reply:?}");
        }
        for reply in [
            &b"unsuccessful"[..],
            b"successfully failed",
            b"success_false",
            b"SUCCESS",
            b"succes",
            b"",
        ] {
            assert!(!confirms(reply, b"success"), "{reply:?}");
        }
        // A success_body that is not a word at its ends is matched as bytes.
        assert!(confirms(b"x<!-- notify-ok -->y", b"<!-- notify-ok -->"));
        assert!(confirms(b"ok:1", b":1"));
        assert!(!confirms(b"ok:12", b":1"));
    }

    #[test]
    fn wechatpay_headers_pass_with_the_body_on_wechat_v3_routes_only() {
        let mut incoming = HeaderMap::new();
        incoming.insert("content-type", "application/json".parse().unwrap());
        incoming.insert("wechatpay-serial", "5157F09E".parse().unwrap());
        incoming.insert("wechatpay-signature", "c2ln".parse().unwrap());
        incoming.insert("wechatpay-timestamp", "1764902400".parse().unwrap());
        incoming.insert("wechatpay-nonce", "n0nce".parse().unwrap());
        incoming.insert(
            "wechatpay-signature-type",
            "WECHATPAY2-SHA256-RSA2048".parse().unwrap(),
        );
        // Not one WeChat Pay sends: a caller's, on every route.
        incoming.insert("wechatpay-callback-url", "http://evil/".parse().unwrap());
        let up = upstream();
        for (kind, passes) in [
            (ProviderKind::WechatV3, true),
            (ProviderKind::WechatV2, false),
            (ProviderKind::Alipay, false),
            (ProviderKind::AlipayMd5, false),
            (ProviderKind::Unionpay, false),
            (ProviderKind::Jdpay, false),
        ] {
            let pass = ForwardHeaders::default().for_provider(kind);
            let req = build_request(
                &up,
                Delivery {
                    body: Bytes::from_static(b"{}"),
                    ..delivery(kind.as_str(), &incoming, &pass)
                },
            )
            .unwrap();
            let h = req.headers();
            assert_eq!(h.get("wechatpay-serial").is_some(), passes, "{kind:?}");
            assert_eq!(h.get("wechatpay-signature").is_some(), passes, "{kind:?}");
            for name in [
                "wechatpay-timestamp",
                "wechatpay-nonce",
                "wechatpay-signature-type",
            ] {
                assert_eq!(h.get(name).is_some(), passes, "{kind:?} {name}");
            }
            assert!(h.get("wechatpay-callback-url").is_none(), "{kind:?}");
            assert_eq!(h["content-type"], "application/json", "{kind:?}");
        }
    }

    #[test]
    fn a_route_cannot_pass_what_callgate_sets_hop_by_hop_headers_or_credentials() {
        for name in [
            "Connection",
            "transfer-encoding",
            "Host",
            "content-length",
            "X-Callgate-Signature",
            "x-callgate-anything",
            "X-Forwarded-For",
            "x-forwarded-host",
            "Forwarded",
            "X-Real-IP",
            "True-Client-IP",
            "Cookie",
            "Authorization",
            "Proxy-Authorization",
            "X-Original-URL",
            "X-Rewrite-URL",
            "X-HTTP-Method-Override",
            "not a name",
        ] {
            let (at, why) = ForwardHeaders::new(["X-Fine", name]).unwrap_err();
            assert_eq!(at, 1, "{name}");
            assert!(why.contains(name), "{name}: {why}");
        }
        let ok = ForwardHeaders::new(["X-Request-Id", "x-request-id", "Referer"]).unwrap();
        assert_eq!(ok.extra.len(), 2);
        assert!(ok.passes(&HeaderName::from_static("referer"), ForwardMode::Original));
    }

    #[test]
    fn odd_event_ids_become_valid_headers() {
        assert_eq!(header_value("abc-123"), "abc-123");
        assert_eq!(header_value("a\nb"), "a%0Ab");
    }
}
