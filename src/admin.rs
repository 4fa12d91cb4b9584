//! The admin listener: `GET /metrics` (Prometheus text), `GET /healthz`
//! (200 while the process runs), `GET /readyz` (200 only when rules with at
//! least one route are loaded, the replay store answers and no drain has
//! started). Plain HTTP; bind it to a private address.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::pipeline::State;

pub async fn handle<B>(state: Arc<State>, req: Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
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
            if state.rules.load().is_empty() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "no routes loaded\n");
            }
            match state.store.ping().await {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(_) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "replay store unavailable\n",
                ),
            }
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
