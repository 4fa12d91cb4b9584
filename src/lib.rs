//! callgate: a payment-callback security gateway.
//!
//! Payment platforms POST asynchronous notifications to merchant shops;
//! callgate stands in front of the shop and lets through only the ones that
//! come from an allowed address, carry a valid signature, are fresh and have
//! not been delivered before. It answers the platform with the exact
//! acknowledgement the platform expects, whatever the shop prints.
//!
//! One request, in contract order (`pipeline::handle`, which loads the
//! configuration snapshot once); every arrow can end the request early
//! with an [`ack::Outcome`]:
//!
//! ```text
//! server   TcpStream ─tls?─▶ Request + peer
//! rules    snapshot.routes.get(path) ─▶ Arc<Route>          NotFound 404, MethodNotAllowed 405
//! allow    client_ip(peer, X-Forwarded-For) ∈ route.allow   IpDenied 403
//! limit    token bucket per (route, source)                  RateLimited 429
//! body     read (Content-Length, then Limited) ─▶ Bytes      TooLarge 413
//!          parse(format) ─▶ Payload                          Malformed 400
//! provider route.verify(headers, body, payload, now)
//!          ─▶ (Merchant, Verified)                           BadSignature 401, Ignored 200
//! replay   check_fresh(verified) ; store.remember(nonce)     Stale/Replay 401,
//!          claim(verified) ─▶ Held (ClaimGuard, nonce)       InFlight 409, Duplicate 200,
//!                                                            StoreUnavailable 503 (down, full, evicting)
//! notify_verify  ask Alipay (legacy routes that say so)      BadSignature 401, UpstreamError 502
//! journal  append(received)                                  StoreUnavailable 503
//!          held.hold_for_forward() (still ours, a full life) InFlight 409 (claim lost)
//! forward  forward(target, &verified, arrival)
//!          ─▶ confirm, or give back                          UpstreamError 502/504
//! ack      Outcome × Ack ─▶ Response ; finish() logs one line and counts it
//! ```
//!
//! `Verified` can only be built inside `provider/`; the replay keys of the
//! flow come from it (`replay::Key::event`, `Key::nonce`) and `forward`
//! builds what the shop receives from it: a notification cannot reach the
//! upstream without passing a verifier. Configuration is loaded before any
//! request by `config::load` (`load`, `config`, `rules`); `redeliver` sends
//! journaled notifications again through the flow's own claim and forward
//! steps; `console` keeps what `finish` hands it for the admin listener's
//! page and read-only API.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod accept;
pub mod ack;
pub mod addr;
pub mod admin;
pub mod allow;
pub mod body;
pub mod clock;
pub mod config;
pub mod console;
pub mod demo_keys;
pub mod dump;
pub mod expiry;
pub mod forward;
pub mod journal;
pub mod limit;
pub mod load;
pub mod log_format;
pub mod log_writer;
pub mod metrics;
pub mod normalize;
pub mod notify_verify;
pub mod pipeline;
pub mod provider;
pub mod redeliver;
pub mod reload;
pub mod replay;
pub mod rules;
pub mod secret;
pub mod server;
pub mod sign;
pub mod upstream_pool;

/// The test suite's check for outside programs (openssl), shared with
/// `tests/support`: unit tests that run one get it from here.
#[cfg(test)]
#[path = "../tests/support/tools.rs"]
mod test_tools;

/// Version line printed by `callgate version`.
pub fn version_line() -> String {
    format!(
        "callgate {} (commit {}, {} {}, built for {})",
        env!("CARGO_PKG_VERSION"),
        env!("CALLGATE_GIT_COMMIT"),
        env!("CALLGATE_PROFILE"),
        if cfg!(debug_assertions) {
            "with debug assertions"
        } else {
            "optimised"
        },
        env!("CALLGATE_TARGET"),
    )
}
