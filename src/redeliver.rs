//! Redelivery from the journal, for the day the shop was down longer than
//! the platform kept retrying. Not part of the request flow: it runs on
//! an operator's request, through the same replay store the gateway uses.
//!
//! The running gateway serves it at `POST /api/redeliver` on the admin
//! listener (`admin`), behind the bearer token of `admin.token_file`;
//! `callgate journal redeliver` calls that endpoint. Going through the
//! running gateway matters: with the memory store, the replay store *is*
//! the gateway's memory, and a redelivery that claimed events in a store of
//! its own would let the platform's next retry through as a second
//! delivery. So with the memory store the command refuses to redeliver
//! unless it can reach the gateway; with Redis (shared) it may also run on
//! its own when no token is configured.
//!
//! Each selected event (the latest arrival of each event: replay namespace,
//! merchant and event id, so that a route renamed with its old
//! `replay_namespace` sees what it delivered under the old name) is
//! skipped when the journal shows it delivered, else ([`redeliver`]) parsed
//! and verified again with the current keys of its route (the route of its
//! name, else the one route of its replay namespace) (a journal file is not
//! trusted on its own), claimed in the replay store, forwarded with
//! `X-Callgate-Attempt`, and its outcome journaled: the request flow's own
//! steps (`pipeline::claim`, `pipeline::forward_and_settle`), without
//! freshness (a redelivery comes after the platform gave up) and failing
//! closed whatever the route's `on_store_error`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ack::Outcome;
use crate::forward::Arrival;
use crate::journal::{self, Filter, JournalError, Received};
use crate::pipeline::{self, State};
use crate::rules::OnStoreError;

/// What to redeliver: the body of `POST /api/redeliver`, and the options
/// of `callgate journal redeliver`. At least one selector is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// An outcome label (`upstream_error`, ...) or `unfinished`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// An RFC 3339 time, or a duration back from now (`24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Say what would be sent; send nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What happened to one selected event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub route: String,
    pub event_id: String,
    /// `forwarded`, `duplicate`, `already delivered, skipped`, `would
    /// redeliver`, `<outcome> (not delivered)`, or why it could not be tried.
    pub result: String,
    /// Whether this counts as done (delivered now or before, or a dry run).
    pub ok: bool,
}

/// The answer of `POST /api/redeliver`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub results: Vec<Line>,
    /// Selected events that could not be delivered.
    pub failed: usize,
}

/// Why nothing was redelivered.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("give --event-id, or at least one of --route, --outcome, --since")]
    NoSelector,
    #[error("--since {0}")]
    Since(String),
    #[error("{0}")]
    Journal(#[from] JournalError),
    #[error("no journaled arrival matches")]
    NothingMatches,
}

impl Selection {
    fn filter(&self, now: i64) -> Result<Filter, SelectError> {
        if self.event_id.is_none()
            && self.route.is_none()
            && self.outcome.is_none()
            && self.since.is_none()
        {
            return Err(SelectError::NoSelector);
        }
        let since = match self.since.as_deref() {
            None => None,
            Some(s) => Some(journal::parse_since(s, now).map_err(SelectError::Since)?),
        };
        Ok(Filter {
            route: self.route.clone(),
            outcome: self.outcome.clone(),
            since,
        })
    }
}

/// Events (replay namespace, merchant, event id).
pub type Events = HashSet<journal::Event>;

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
///
/// `sent_before` is how many forwards of the event the journal holds: the
/// redelivery's `X-Callgate-Attempt` is above it even when the replay store
/// has forgotten the count (an event older than `replay.ttl`), and its
/// arrival is journaled before the shop sees it, as the request flow does,
/// so that a crash while the shop holds it is listed as unfinished and the
/// next copy goes out with a higher attempt.
pub async fn redeliver(
    state: &State,
    rec: &Received,
    sent_before: u32,
) -> Result<Outcome, RedeliverError> {
    use base64::Engine as _;
    let snapshot = state.snapshot.load_full();
    // A route renamed since keeps its events when it kept the old name as
    // its replay namespace: the one route of that namespace takes them.
    let route = snapshot
        .routes
        .named(&rec.route)
        .or_else(|| match snapshot.routes.in_namespace(rec.namespace())[..] {
            [only] => Some(only),
            _ => None,
        })
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
    let payload = crate::body::parse(route.kind().format(), &headers, &body)
        .map_err(|e| RedeliverError::Verify(e.to_string()))?;
    let (merchant, verified) = route
        .verify(&headers, &body, &payload, crate::clock::unix_now())
        .map_err(|e| RedeliverError::Verify(e.to_string()))?;
    // Records written before they carried the merchant have none to compare.
    if verified.event_id() != rec.event_id
        || (!rec.merchant.is_empty() && verified.merchant() != rec.merchant)
    {
        return Err(RedeliverError::Damaged(
            "event id does not match the body".into(),
        ));
    }
    let life = snapshot.limits.claim_life();
    let held =
        match pipeline::claim(state, &route, &verified, None, life, OnStoreError::Closed).await {
            Ok(held) => held,
            Err(stop) => return Ok(stop.outcome),
        };
    let request_id = journal::new_rid();
    let arrival = Arrival {
        request_id: &request_id,
        client: crate::addr::AddrText::ip(client),
        headers: &headers,
        now: crate::clock::unix_now(),
        attempt: held.attempt().max(sent_before.saturating_add(1)),
    };
    if let Err(e) = pipeline::journal_arrival(state, &route, &verified, &arrival, &body).await {
        state.metrics.journal_error();
        tracing::error!(route = %route.name, event_id = %rec.event_id, error = %e,
            "redelivery refused: its arrival could not be journaled");
        held.give_back(state, &route).await;
        return Ok(Outcome::StoreUnavailable);
    }
    let started = std::time::Instant::now();
    let (shop, forwarded) =
        pipeline::forward_and_settle(state, &route, merchant, &verified, &arrival, held, true)
            .await;
    let (outcome, why) = match &forwarded {
        Ok(()) => (Outcome::Forwarded, None),
        Err(e) => {
            tracing::warn!(route = %route.name, event_id = %rec.event_id, error = %e, "redelivery failed");
            (e.outcome(), Some((e.label(), e.to_string())))
        }
    };
    // The console shows a redelivery among the event's records.
    state.recent.record(crate::console::Entry {
        seq: 0,
        unix: crate::clock::unix_now(),
        request_id,
        route: route.name.clone(),
        provider: route.kind().as_str(),
        outcome,
        reason_label: why.as_ref().map(|(l, _)| *l),
        reason: Some(match why {
            Some((_, words)) => format!("redelivery from the journal: {words}"),
            None => "redelivered from the journal".to_owned(),
        }),
        path: String::new(),
        peer: SocketAddr::new(client, 0),
        client: Some(client),
        merchant: Some(merchant.provider.merchant_id().into()),
        event_id: Some(verified.event_id().to_owned()),
        order: crate::normalize::order_number(&verified)
            .map(|o| crate::console::Order::new(o, true)),
        shop: Some(shop),
        took: started.elapsed(),
    });
    Ok(outcome)
}

/// What [`select`] found in the journal.
#[derive(Debug, Default)]
pub struct Selected {
    /// The latest journaled arrival of each selected event, oldest first.
    pub latest: Vec<Received>,
    /// The events the journal shows delivered.
    pub delivered: Events,
    /// How many forwards of each event the journal holds (each arrival is
    /// one; an arrival's attempt number covers those in files rotated
    /// away).
    pub sent: HashMap<journal::Event, u32>,
}

/// The events `selection` names, with what the journal says of them.
pub fn select(dir: &Path, selection: &Selection, now: i64) -> Result<Selected, SelectError> {
    let filter = selection.filter(now)?;
    let (arrivals, redeliveries) = journal::arrivals(dir)?;
    let delivered = journal::delivered_events(&arrivals, &redeliveries);
    let mut sent: HashMap<journal::Event, u32> = HashMap::new();
    for a in &arrivals {
        let n = sent.entry(a.received.event()).or_insert(0);
        *n = n.saturating_add(1).max(a.received.attempt);
    }
    let mut latest: Vec<Received> = Vec::new();
    for a in arrivals.iter().rev().filter(|a| filter.matches(a)) {
        let r = &a.received;
        if selection
            .event_id
            .as_deref()
            .is_some_and(|id| r.event_id != id)
        {
            continue;
        }
        if !latest.iter().any(|l| l.event() == r.event()) {
            latest.push(r.clone());
        }
    }
    latest.reverse();
    if latest.is_empty() {
        return Err(SelectError::NothingMatches);
    }
    Ok(Selected {
        latest,
        delivered,
        sent,
    })
}

/// Redelivers the selection from the journal in `dir` through `state`
/// (its replay store, upstream client and journal).
pub async fn run(state: &State, dir: &Path, selection: &Selection) -> Result<Report, SelectError> {
    // Outcome records may still be queued for the journal thread.
    if let Some(j) = &state.journal {
        j.flush().await;
    }
    let Selected {
        latest: events,
        delivered,
        sent,
    } = select(dir, selection, crate::clock::unix_now())?;
    let mut results = Vec::with_capacity(events.len());
    for r in &events {
        let line = |result: String, ok: bool| Line {
            route: r.route.clone(),
            event_id: r.event_id.clone(),
            result,
            ok,
        };
        if delivered.contains(&r.event()) {
            results.push(line("already delivered, skipped".into(), true));
        } else if selection.dry_run {
            results.push(line("would redeliver".into(), true));
        } else {
            let before = sent.get(&r.event()).copied().unwrap_or(0);
            results.push(match redeliver(state, r, before).await {
                Ok(outcome) if outcome.is_success() => line(outcome.as_str().into(), true),
                Ok(outcome) => line(format!("{} (not delivered)", outcome.as_str()), false),
                Err(e) => line(e.to_string(), false),
            });
        }
    }
    let failed = results.iter().filter(|l| !l.ok).count();
    Ok(Report { results, failed })
}

/// Why the running gateway's admin API did not redeliver.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Nothing answered at the admin address.
    #[error("cannot reach the running gateway's admin API at {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("the admin API answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// The gateway answered that no journaled arrival matches the
    /// selection: nothing to redeliver, not a failure.
    #[error("{}", SelectError::NothingMatches)]
    NothingMatches,
}

/// Asks the running gateway at `admin` to redeliver `selection`.
pub async fn via_admin(
    admin: SocketAddr,
    token: &crate::secret::Secret,
    selection: &Selection,
) -> Result<Report, ApiError> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    // An admin listener on every address is reached on loopback.
    let mut addr = admin;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let unreachable = |reason: String| ApiError::Unreachable { addr, reason };
    let body = serde_json::to_vec(selection).map_err(|e| unreachable(e.to_string()))?;
    // `callgate check` made sure the token is visible ASCII.
    let auth = format!("Bearer {}", String::from_utf8_lossy(token.expose()));
    let request = http::Request::post(format!("http://{addr}/api/redeliver"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, auth)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| unreachable(e.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .request(request)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| ApiError::Refused {
            status: status.as_u16(),
            message: format!("not a redelivery report: {e}"),
        });
    }
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
    // The API's 404 for an empty selection, told from its 404 for a path
    // it does not serve (no token on the gateway's side) by its message.
    if status == http::StatusCode::NOT_FOUND && message == SelectError::NothingMatches.to_string() {
        return Err(ApiError::NothingMatches);
    }
    Err(ApiError::Refused {
        status: status.as_u16(),
        message,
    })
}
