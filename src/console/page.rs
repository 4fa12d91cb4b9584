//! The console page (`GET /` on the admin listener): plain server-rendered
//! HTML, one inline style sheet, no script, no image, no font, no link to
//! anywhere else, so it works on a shop's offline network and a phone
//! (viewport, tables that scroll sideways). It refreshes itself every
//! [`REFRESH_SECS`] seconds (`<meta http-equiv="refresh">`).
//!
//! Every value is escaped ([`html::escape`](super::html::escape)).
//! [`content_security_policy`] lets the page load nothing: `default-src
//! 'none'`, the one style sheet allowed by its hash, forms posting only
//! back to the console.

use std::fmt::Write as _;

use super::api::{rfc3339, shown_upstream, sorted_routes};
use super::html::{escape, escape_with_code, query_value};
use super::{Entry, Listing, Query};
use crate::ack::Outcome;
use crate::pipeline::State;

/// How often the page reloads itself.
pub const REFRESH_SECS: u32 = 30;
/// Rows of each recent list.
const ROWS: usize = 25;
/// Keys expiring within this many days are marked.
const WARN_DAYS: i64 = 30;

/// The page's only style sheet, inline; allowed by its hash.
pub const STYLE: &str = "body{font:15px/1.4 'DejaVu Sans',system-ui,sans-serif;margin:0;padding:0 .8em 2em;color:#1b1b1b;background:#fafafa}\
h1{font-size:1.3em;margin:.6em 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #ccc}\
.meta{color:#555;font-size:.9em}\
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}\
table{border-collapse:collapse;min-width:100%;font-size:.9em}\
th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #e2e2e2;vertical-align:top}\
td{max-width:24em;overflow-wrap:break-word}code.id{word-break:break-all}\
th{background:#eee;white-space:nowrap}td.n{text-align:right;white-space:nowrap}\
code{font-family:'DejaVu Sans Mono',monospace;font-size:.92em;background:#eee;padding:0 .2em}\
.ok{color:#176317}.bad{color:#a31515;font-weight:bold}.warn{color:#8a5a00;font-weight:bold}\
form{margin:.6em 0}input[type=search]{font-size:1em;padding:.3em;width:min(28em,70vw)}button{font-size:1em;padding:.3em .8em}\
.empty{color:#777;font-style:italic}";

/// The `Content-Security-Policy` of the page.
pub fn content_security_policy() -> String {
    use base64::Engine as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, STYLE.as_bytes());
    let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    format!(
        "default-src 'none'; style-src 'sha256-{hash}'; img-src 'none'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    )
}

/// Renders the page; `search` is the search box's `q`.
pub async fn render(state: &State, search: Option<&str>, now: i64) -> String {
    let store = super::api::store(state).await;
    let snapshot = state.snapshot.load();
    let mut h = String::with_capacity(32 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>callgate console</title><style>{STYLE}</style></head><body>\
         <h1>callgate console</h1><p class=\"meta\">{} · {} routes · refreshes every {REFRESH_SECS}s</p>",
        escape(&rfc3339(now)),
        snapshot.routes.len(),
    );
    let shown = search.unwrap_or_default();
    let _ = write!(
        h,
        "<form method=\"get\" action=\"/\" role=\"search\"><label for=\"q\">Order number or event id</label><br>\
         <input type=\"search\" id=\"q\" name=\"q\" value=\"{}\" placeholder=\"out_trade_no / orderId / tradeNum / event id\"> \
         <button type=\"submit\">Find</button></form>",
        escape(shown)
    );

    if let Some(q) = search.filter(|q| !q.is_empty()) {
        let query = Query {
            q: Some(q.to_owned()),
            limit: super::api::MAX_LIMIT,
            ..Query::default()
        };
        let found = state.recent.list(Listing::All, &query);
        let _ = write!(
            h,
            "<h2 id=\"search\">Every record of <code>{}</code> ({} found)</h2><p>{}</p>",
            escape(q),
            found.len(),
            verdict(&found),
        );
        entries_table(&mut h, &found, true);
    }

    // Routes: the last hour.
    h.push_str("<h2 id=\"routes\">Routes: the last hour</h2><div class=\"scroll\"><table><tr><th>route</th><th>provider</th><th>path</th><th class=\"n\">total</th><th class=\"n\">forwarded</th><th class=\"n\">duplicate</th><th class=\"n\">refused</th><th>by outcome</th><th>upstream</th></tr>");
    for route in sorted_routes(&snapshot) {
        let counts = state.recent.last_hour(&route.name, now);
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        let of = |label: &str| {
            counts
                .iter()
                .find(|(l, _)| *l == label)
                .map_or(0, |(_, n)| *n)
        };
        let refused: u64 = counts
            .iter()
            .filter(|(l, _)| !matches!(*l, "forwarded" | "duplicate" | "ignored"))
            .map(|(_, n)| n)
            .sum();
        let detail: Vec<String> = counts
            .iter()
            .map(|(l, n)| format!("{} {n}", escape(l)))
            .collect();
        let upstreams: Vec<String> = route
            .merchants()
            .iter()
            .map(|m| escape(&shown_upstream(m.upstream.uri())))
            .collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"n\">{total}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n{}\">{refused}</td><td>{}</td><td>{}</td></tr>",
            escape(&route.name),
            escape(route.kind().as_str()),
            escape(&route.path),
            of("forwarded"),
            of("duplicate"),
            if refused > 0 { " bad" } else { "" },
            detail.join(", "),
            upstreams.join("<br>"),
        );
    }
    h.push_str("</table></div>");

    // Recent rejections.
    let limit = |n| Query {
        limit: n,
        ..Query::default()
    };
    let refused = state.recent.list(Listing::Rejections, &limit(ROWS));
    h.push_str("<h2 id=\"rejections\">Recent rejections</h2>");
    rejections_table(&mut h, &refused);

    // Recent deliveries.
    let events = state.recent.list(Listing::Events, &limit(ROWS));
    h.push_str("<h2 id=\"deliveries\">Recent deliveries</h2>");
    entries_table(&mut h, &events, false);

    // Keys and certificates.
    h.push_str("<h2 id=\"keys\">Keys and certificates</h2>");
    let mut keys: Vec<(String, String, i64)> = Vec::new();
    for route in sorted_routes(&snapshot) {
        for (key, at) in route.certificates() {
            keys.push((route.name.to_string(), key, at));
        }
    }
    if let Some(at) = snapshot.tls_not_after {
        keys.push(("-".into(), "tls_cert".into(), at));
    }
    if keys.is_empty() {
        h.push_str("<p class=\"empty\">No certificate-backed key is configured (public keys and shared secrets do not expire).</p>");
    } else {
        keys.sort_by_key(|k| k.2);
        h.push_str("<div class=\"scroll\"><table><tr><th>route</th><th>key</th><th>expires</th><th class=\"n\">days left</th></tr>");
        for (route, key, at) in keys {
            let days = super::days_left(at, now);
            let class = if days < 0 {
                " bad"
            } else if days < WARN_DAYS {
                " warn"
            } else {
                ""
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"n{class}\">{}</td></tr>",
                escape(&route),
                escape(&key),
                escape(&rfc3339(at)),
                if days < 0 {
                    "expired".to_owned()
                } else {
                    format!("{days} days left")
                },
            );
        }
        h.push_str("</table></div>");
    }

    // Replay store.
    let text = |k: &str| store[k].as_str().map(escape).unwrap_or_else(|| "-".into());
    let health = store["health"].as_str().unwrap_or("unavailable");
    let fill = match (store["entries"].as_u64(), store["bound"].as_u64()) {
        (Some(n), Some(b)) if b > 0 => format!(
            "{n} of {b} entries ({:.1}% full)",
            n as f64 * 100.0 / b as f64
        ),
        (Some(n), _) => format!("{n} entries"),
        _ => "entries unknown".to_owned(),
    };
    let _ = write!(
        h,
        "<h2 id=\"store\">Replay store</h2><p>{} · <span class=\"{}\">{}</span> · {} · backlog {}{}</p>",
        text("kind"),
        if health == "up" { "ok" } else { "bad" },
        escape(health),
        escape(&fill),
        store["backlog"].as_u64().unwrap_or(0),
        store["error"]
            .as_str()
            .map(|e| format!(" · {}", escape(e)))
            .unwrap_or_default(),
    );

    // Last reload.
    h.push_str("<h2 id=\"reload\">Last reload</h2>");
    match state.recent.last_reload() {
        None => h.push_str("<p class=\"empty\">none yet</p>"),
        Some(r) => {
            let _ = write!(
                h,
                "<p><span class=\"{}\">{}</span> at {} · {} routes live</p>",
                if r.ok { "ok" } else { "bad" },
                if r.ok {
                    "loaded"
                } else {
                    "refused: the previous rules still serve"
                },
                escape(&rfc3339(r.unix)),
                r.routes
            );
            if !r.problems.is_empty() {
                h.push_str("<ul>");
                for p in &r.problems {
                    let _ = write!(h, "<li><code>{}</code></li>", escape(p));
                }
                h.push_str("</ul>");
            }
        }
    }
    h.push_str("<p class=\"meta\">JSON: <a href=\"/api/routes\">/api/routes</a> · <a href=\"/api/events\">/api/events</a> · <a href=\"/api/rejections\">/api/rejections</a> · <a href=\"/api/store\">/api/store</a></p></body></html>\n");
    h
}

/// One sentence answering "did the shop get it, and if not why": the
/// latest delivery, else the latest outcome of a verified copy, else the
/// latest refusal. `found` is newest first.
fn verdict(found: &[Entry]) -> String {
    if let Some(d) = found.iter().find(|e| e.outcome == Outcome::Forwarded) {
        let answer = d
            .shop
            .and_then(|s| s.status)
            .map(|s| format!(", the shop answered {s}"))
            .unwrap_or_default();
        return format!(
            "<span class=\"ok\">Delivered</span> to the shop at {}{answer} (request <code>{}</code>).",
            escape(&rfc3339(d.unix)),
            escape(&d.request_id)
        );
    }
    let last = found
        .iter()
        .find(|e| e.event_id.is_some())
        .or_else(|| found.first());
    match last {
        None => "No record among the notifications this console keeps (see the journal: <code>callgate journal list</code>).".to_owned(),
        Some(e) => {
            let (reason, fix) = reason_and_fix(e);
            let what = if e.event_id.is_some() {
                "verified, but not delivered"
            } else {
                "refused before its signature checked out"
            };
            format!(
                "<span class=\"bad\">Not delivered</span>: {what}; latest {} at {}. {reason} {fix}",
                outcome_cell(e.outcome),
                escape(&rfc3339(e.unix)),
            )
        }
    }
}

fn outcome_cell(o: Outcome) -> String {
    let class = if o.is_success() { "ok" } else { "bad" };
    format!(
        "<span class=\"{class}\">{}</span> {}",
        escape(o.as_str()),
        o.status().as_u16()
    )
}

fn order_cell(e: &Entry) -> String {
    match &e.order {
        None => String::new(),
        Some(o) if o.verified => escape(&o.number),
        Some(o) => format!(
            "{} <span class=\"warn\">(unverified)</span>",
            escape(&o.number)
        ),
    }
}

fn reason_and_fix(e: &Entry) -> (String, String) {
    if e.outcome.is_success() {
        return (String::new(), String::new());
    }
    let label = e.reason_label.unwrap_or(e.outcome.as_str());
    let reason = match &e.reason {
        Some(words) => format!("<code>{}</code> {}", escape(label), escape(words)),
        None => format!("<code>{}</code>", escape(label)),
    };
    let fix = super::fix(label).map(escape_with_code).unwrap_or_default();
    (reason, fix)
}

/// Deliveries (and, for a search, every kind of record) with the shop's
/// answer.
fn entries_table(h: &mut String, entries: &[Entry], with_reasons: bool) {
    if entries.is_empty() {
        h.push_str("<p class=\"empty\">nothing yet</p>");
        return;
    }
    h.push_str("<div class=\"scroll\"><table><tr><th>time (UTC)</th><th>route</th><th>outcome</th><th>order</th><th>event id</th><th>shop answered</th><th class=\"n\">took</th>");
    if with_reasons {
        h.push_str("<th>reason</th><th>fix</th>");
    }
    h.push_str("</tr>");
    for e in entries {
        let shop = match e.shop {
            Some(s) => format!(
                "{} in {:.1} ms",
                s.status
                    .map_or_else(|| "no answer".to_owned(), |s| s.to_string()),
                s.took.as_secs_f64() * 1000.0
            ),
            None => String::new(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{:.1} ms</td>",
            escape(&rfc3339(e.unix)),
            escape(&e.route),
            outcome_cell(e.outcome),
            order_cell(e),
            e.event_id
                .as_deref()
                .map(|id| format!("<code class=\"id\">{}</code>", escape(id)))
                .unwrap_or_default(),
            escape(&shop),
            e.took.as_secs_f64() * 1000.0,
        );
        if with_reasons {
            let (reason, fix) = reason_and_fix(e);
            let _ = write!(h, "<td>{reason}</td><td>{fix}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</table></div>");
}

fn rejections_table(h: &mut String, entries: &[Entry]) {
    if entries.is_empty() {
        h.push_str("<p class=\"empty\">none</p>");
        return;
    }
    h.push_str("<div class=\"scroll\"><table><tr><th>time (UTC)</th><th>route</th><th>peer</th><th>outcome</th><th>order</th><th>reason</th><th>likely fix</th></tr>");
    for e in entries {
        let (reason, fix) = reason_and_fix(e);
        let order = match &e.order {
            Some(o) => format!(
                "<a href=\"/?q={}#search\">{}</a>",
                query_value(&o.number),
                order_cell(e)
            ),
            None => String::new(),
        };
        // An unknown path or a wrong method: the path says what was called.
        let route = if matches!(e.outcome, Outcome::NotFound | Outcome::MethodNotAllowed) {
            format!("{}<br><code>{}</code>", escape(&e.route), escape(&e.path))
        } else {
            escape(&e.route)
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{route}</td><td>{}</td><td>{}</td><td>{order}</td><td>{reason}</td><td>{fix}</td></tr>",
            escape(&rfc3339(e.unix)),
            escape(&e.peer.to_string()),
            outcome_cell(e.outcome),
        );
    }
    h.push_str("</table></div>");
}
