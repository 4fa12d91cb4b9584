//! The console's JSON: `GET /api/routes`, `/api/events`, `/api/rejections`
//! and `/api/store` on the admin listener (README *Console and admin API*
//! has an example of each). Read-only; built from the live snapshot, the
//! replay store and [`Recent`](super::Recent), never from a body.

use serde_json::{Value, json};

use super::{Entry, Listing, Query, Recent};
use crate::config::Snapshot;
use crate::pipeline::State;
use crate::rules::{AllowMode, Route};

/// Entries a listing returns unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;
/// The most entries one listing returns.
pub const MAX_LIMIT: usize = 500;

/// Why a query string was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("unknown parameter `{0}`: use route, outcome, since, until, q, limit")]
    Unknown(String),
    #[error("{0}: {1}")]
    Bad(&'static str, String),
}

/// Parses `route`, `outcome`, `since`, `until` (RFC 3339 or a duration
/// back from `now`, like `2h`), `q` (an event id or order number) and
/// `limit` (at most [`MAX_LIMIT`]). Empty values are ignored (a search
/// form sends `q=` when left blank).
pub fn parse_query(query: Option<&str>, now: i64) -> Result<Query, QueryError> {
    let mut q = Query {
        limit: DEFAULT_LIMIT,
        ..Query::default()
    };
    for pair in query.unwrap_or_default().split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k);
        let value = decode(v);
        if value.is_empty() {
            continue;
        }
        match key.as_str() {
            "route" => q.route = Some(value),
            "outcome" => {
                // A typo must not read as "nothing happened".
                if !crate::ack::Outcome::ALL.iter().any(|o| o.as_str() == value) {
                    return Err(QueryError::Bad(
                        "outcome",
                        format!(
                            "`{}` is not an outcome label (forwarded, duplicate, bad_signature, ...)",
                            crate::secret::shown(value.as_bytes())
                        ),
                    ));
                }
                q.outcome = Some(value);
            }
            "q" => q.q = Some(value.trim().to_owned()),
            "since" => {
                q.since = Some(
                    crate::journal::parse_since(&value, now)
                        .map_err(|e| QueryError::Bad("since", e))?,
                );
            }
            "until" => {
                q.until = Some(
                    crate::journal::parse_since(&value, now)
                        .map_err(|e| QueryError::Bad("until", e))?,
                );
            }
            "limit" => {
                let n: usize = value.parse().map_err(|_| {
                    QueryError::Bad(
                        "limit",
                        format!(
                            "`{}` is not a number",
                            crate::secret::shown(value.as_bytes())
                        ),
                    )
                })?;
                q.limit = n.clamp(1, MAX_LIMIT);
            }
            _ => {
                return Err(QueryError::Unknown(crate::secret::shown(key.as_bytes())));
            }
        }
    }
    Ok(q)
}

/// A query string value: `+` is a space, `%XX` a byte, lossy UTF-8.
fn decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// The upstream as the console shows it: scheme, host, port and path;
/// never a password or a query string (either could hold a secret).
pub fn shown_upstream(uri: &http::Uri) -> String {
    let host = uri
        .authority()
        .map(|a| a.as_str().rsplit('@').next().unwrap_or_default())
        .unwrap_or_default();
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        host,
        uri.path()
    )
}

/// A Unix time as RFC 3339 UTC.
pub fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| unix.to_string())
}

fn allow_mode(m: AllowMode) -> &'static str {
    match m {
        AllowMode::Enforce => "enforce",
        AllowMode::Log => "log",
    }
}

/// One certificate-backed key: label, notAfter, days left.
pub fn key_json(key: &str, not_after: i64, now: i64) -> Value {
    json!({
        "key": key,
        "not_after": rfc3339(not_after),
        "days_left": super::days_left(not_after, now),
    })
}

fn route_json(route: &Route, recent: &Recent, now: i64) -> Value {
    let last_hour: serde_json::Map<String, Value> = recent
        .last_hour(&route.name, now)
        .into_iter()
        .map(|(o, n)| (o.to_owned(), json!(n)))
        .collect();
    json!({
        "name": &*route.name,
        "path": &*route.path,
        "provider": route.kind().as_str(),
        "file": format!("{}:{}", route.file.display(), route.line),
        "allow": route.allow.nets().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "allow_mode": allow_mode(route.allow_mode),
        "merchants": route.merchants().iter().map(|m| json!({
            "merchant_id": m.provider.merchant_id(),
            "upstream": shown_upstream(m.upstream.uri()),
        })).collect::<Vec<_>>(),
        "keys": route.certificates().iter()
            .map(|(k, at)| key_json(k, *at, now)).collect::<Vec<_>>(),
        "last_hour": last_hour,
    })
}

/// Routes sorted by name.
pub fn sorted_routes(snapshot: &Snapshot) -> Vec<&std::sync::Arc<Route>> {
    let mut routes: Vec<_> = snapshot.routes.iter().collect();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    routes
}

/// `GET /api/routes`.
pub fn routes(state: &State, now: i64) -> Value {
    let snapshot = state.snapshot.load();
    let reload = state.recent.last_reload();
    json!({
        "now": rfc3339(now),
        "routes": sorted_routes(&snapshot).into_iter()
            .map(|r| route_json(r, &state.recent, now)).collect::<Vec<_>>(),
        "tls_cert": snapshot.tls_not_after.map(|at| key_json("tls_cert", at, now)),
        "last_reload": reload.map(|r| json!({
            "time": rfc3339(r.unix),
            "ok": r.ok,
            "routes": r.routes,
            "problems": r.problems,
        })),
    })
}

/// One kept notification.
pub fn entry_json(e: &Entry) -> Value {
    let refused = !e.outcome.is_success();
    let label = e.reason_label.or(refused.then(|| e.outcome.as_str()));
    json!({
        "time": rfc3339(e.unix),
        "request_id": e.request_id,
        "route": &*e.route,
        "provider": e.provider,
        "path": (!e.path.is_empty()).then_some(e.path.as_str()),
        "outcome": e.outcome.as_str(),
        "status": e.outcome.status().as_u16(),
        "event_id": e.event_id,
        "merchant": e.merchant.as_deref(),
        "order_number": e.order.as_ref().map(|o| o.number.as_str()),
        "order_verified": e.order.as_ref().map(|o| o.verified),
        "peer": e.peer.to_string(),
        "client": e.client.map(|c| c.to_string()),
        "shop_status": e.shop.and_then(|s| s.status),
        "shop_ms": e.shop.map(|s| super::millis(s.took)),
        "duration_ms": super::millis(e.took),
        "reason": label,
        "reason_text": e.reason,
        "fix": label.and_then(super::fix),
    })
}

/// `GET /api/events` (with `q`, refusals naming the order or event too)
/// and `GET /api/rejections`.
pub fn listing(state: &State, listing: Listing, query: &Query) -> Value {
    let listing = match (listing, &query.q) {
        (Listing::Events, Some(_)) => Listing::All,
        (l, _) => l,
    };
    let entries = state.recent.list(listing, query);
    json!({
        "count": entries.len(),
        "limit": query.limit,
        "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
    })
}

/// `GET /api/store`: kind, entries, bound (memory: `replay.max_entries`),
/// health.
pub async fn store(state: &State) -> Value {
    let (entries, health, error) = match state.store.entries().await {
        Ok(n) => (Some(n), "up", None),
        Err(e) => (None, "unavailable", Some(e.to_string())),
    };
    let evicting = state.store.evicting();
    let health = if evicting.is_some() {
        "evicting"
    } else {
        health
    };
    let bound = match &state.store {
        crate::replay::ReplayStore::Memory(m) => Some(m.max_entries() as u64),
        _ => None,
    };
    let fill = match (entries, bound) {
        (Some(n), Some(b)) if b > 0 => Some((n as f64 / b as f64 * 10_000.0).round() / 10_000.0),
        _ => None,
    };
    json!({
        "kind": state.store.kind(),
        "entries": entries,
        "bound": bound,
        "fill": fill,
        "health": health,
        "error": error.or(evicting.map(|p| format!("maxmemory-policy {p} can evict keys"))),
        "backlog": state.backlog.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = parse_query(
            Some("route=shop&outcome=forwarded&since=2h&q=A%2B1+x&limit=9999"),
            10_000,
        )
        .unwrap();
        assert_eq!(q.route.as_deref(), Some("shop"));
        assert_eq!(q.since, Some(10_000 - 7200));
        assert_eq!(q.q.as_deref(), Some("A+1 x"));
        assert_eq!(q.limit, MAX_LIMIT);
        assert_eq!(parse_query(Some("q="), 0).unwrap().q, None);
        assert!(matches!(
            parse_query(Some("sort=x"), 0),
            Err(QueryError::Unknown(_))
        ));
        assert!(matches!(
            parse_query(Some("since=yesterday"), 0),
            Err(QueryError::Bad("since", _))
        ));
        assert!(matches!(
            parse_query(Some("outcome=bogus"), 0),
            Err(QueryError::Bad("outcome", _))
        ));
        for o in crate::ack::Outcome::ALL {
            let q = parse_query(Some(&format!("outcome={}", o.as_str())), 0).unwrap();
            assert_eq!(q.outcome.as_deref(), Some(o.as_str()));
        }
    }

    #[test]
    fn upstreams_lose_passwords_and_queries() {
        let uri: http::Uri = "https://user:hunter2@shop.example:8443/notify.php?key=s3cret"
            .parse()
            .unwrap();
        assert_eq!(shown_upstream(&uri), "https://shop.example:8443/notify.php");
    }
}
