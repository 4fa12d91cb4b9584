//! What `deploy/` ships is checked against the real gateway:
//! * every `callgate_*` name the Grafana dashboard and the Prometheus alert
//!   rules use is a series (or a family) that a running gateway exports,
//!   after a few notifications, with the right type for how it is used
//!   (`rate`/`increase` over counters and histogram parts, never gauges),
//!   the label names its selectors use, and the label values they match
//!   exactly;
//! * `promtool check rules` accepts the alert rules and `promtool test
//!   rules` passes their unit tests (`.ci/run` installs promtool, Debian
//!   package `prometheus`);
//! * `systemd-analyze verify` accepts the unit (Debian package `systemd`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

// === the scrape ===

/// The families and series of a Prometheus text scrape.
#[derive(Debug, Default)]
struct Scrape {
    /// Family name → type (`counter`, `gauge`, `histogram`).
    families: BTreeMap<String, String>,
    /// Series name → label name → values seen.
    series: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                s.families.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, _value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').unwrap()),
                None => (series, ""),
            };
            let entry = s.series.entry(name.to_owned()).or_default();
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap();
                entry
                    .entry(k.to_owned())
                    .or_default()
                    .insert(v.trim_matches('"').to_owned());
            }
        }
        s
    }

    /// The family a name belongs to and its type: the family itself, or a
    /// histogram's `_bucket`, `_sum`, `_count` series.
    fn family_of<'a>(&'a self, name: &'a str) -> Option<(&'a str, &'a str)> {
        if let Some(kind) = self.families.get(name) {
            return Some((name, kind));
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && self.families.get(base).map(String::as_str) == Some("histogram")
            {
                return Some((base, "histogram"));
            }
        }
        None
    }
}

/// A running gateway's scrape after notifications of several outcomes:
/// forwarded (both histograms observe), a bad signature, a WeChat Pay probe
/// (`reason="probe_signature"`), a refused source address, a stale and a
/// future notification, an upstream failure, an unknown path.
async fn real_scrape() -> Scrape {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = TestGateway::start(GatewaySpec::new(vec![
        RouteSpec::alipay(&up),
        RouteSpec::wechat_v3(&up),
        // Nobody on this machine is allowed here.
        RouteSpec::alipay(&up).with(|r| {
            r.name = "elsewhere".into();
            r.path = "/notify/elsewhere".into();
            r.allow = vec!["192.0.2.0/24".into()];
        }),
        // The fixtures were signed on 2026-11-22: stale within an hour.
        RouteSpec::alipay(&up).with(|r| {
            r.name = "strict".into();
            r.path = "/notify/strict".into();
            r.max_age = Some("1h".into());
        }),
    ]))
    .await;
    let denied = gw
        .post_form(
            "/notify/elsewhere",
            &fixture("alipay", "rsa2_trade_success.form"),
        )
        .await;
    assert_eq!(denied.status, 403);
    let stale = gw
        .post_form(
            "/notify/strict",
            &fixture("alipay", "rsa2_trade_success.form"),
        )
        .await;
    assert_eq!(stale.status, 401);
    let ahead = fixture("wechat", "v3_pay.json");
    let headers = v3_headers(
        "platform_private.pem",
        WECHAT_PLATFORM_SERIAL,
        unix_now() + 3600,
        "deploy-future",
        &ahead,
    );
    assert_eq!(
        gw.send_owned("/notify/wechat-v3", &headers, &ahead)
            .await
            .status,
        401
    );
    let ok = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!((ok.status, ok.text().as_str()), (200, "success"));
    let forged = gw.post_alipay("rsa2_tampered_amount.form").await;
    assert_eq!(forged.status, 401);
    let body = fixture("wechat", "v3_pay.json");
    let mut headers = v3_headers(
        "platform_private.pem",
        WECHAT_PLATFORM_SERIAL,
        unix_now(),
        "deploy-probe",
        &body,
    );
    for (k, v) in headers.iter_mut() {
        if k == "wechatpay-signature" {
            *v = "WECHATPAY/SIGNTEST/c2lnbmF0dXJlIHByb2Jl".into();
        }
    }
    let probe = gw.send_owned("/notify/wechat-v3", &headers, &body).await;
    assert_eq!(probe.status, 401);
    up.set(Behaviour::Reply(500, "oops"));
    let failed = gw.post_alipay("rsa2_trade_success_2.form").await;
    assert_eq!(failed.status, 502);
    assert_eq!(gw.send("POST", "/nowhere", &[], vec![]).await.status, 404);
    Scrape::parse(&gw.get_admin("/metrics").await.text())
}

// === reading the deploy files ===

/// Every `callgate_*` name in `text`, with what follows it (for selectors)
/// and what precedes it (for the function it is passed to).
fn names(text: &str) -> Vec<(String, &str, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("callgate_") {
        let start = from + i;
        let before = &text[..start];
        let boundary = before
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let len = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(text.len() - start);
        from = start + len;
        if boundary {
            out.push((text[start..start + len].to_owned(), &text[from..], before));
        }
    }
    out
}

/// The matchers of a selector at the start of `rest` (`{a="x",b=~"y|z"}`):
/// (label, operator, value).
fn matchers(rest: &str) -> Vec<(String, String, String)> {
    let Some(mut s) = rest.strip_prefix('{') else {
        return Vec::new();
    };
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if s.starts_with('}') || s.is_empty() {
            return out;
        }
        let name_len = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap();
        let name = &s[..name_len];
        s = s[name_len..].trim_start();
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| s.starts_with(op))
            .unwrap_or_else(|| panic!("no operator after `{name}` in {rest:.80}"));
        s = s[op.len()..].trim_start();
        let body = s.strip_prefix('"').unwrap();
        let end = body.find('"').unwrap();
        out.push((name.to_owned(), op.to_owned(), body[..end].to_owned()));
        s = &body[end + 1..];
    }
}

/// The function a name is passed to directly, e.g. `rate` in
/// `rate(callgate_x[5m])`.
fn function_of(before: &str) -> Option<&str> {
    let b = before.trim_end().strip_suffix('(')?.trim_end();
    let start = b
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    Some(&b[start..])
}

/// Checks every `callgate_*` name of one piece of text (an expression when
/// `expr`, prose otherwise) against the scrape; returns the problems.
fn check_text(scrape: &Scrape, source: &str, text: &str, expr: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, rest, before) in names(text) {
        let Some((family, kind)) = scrape.family_of(&name) else {
            problems.push(format!(
                "{source}: `{name}` is not a metric the gateway exports (families: {:?})",
                scrape.families.keys().collect::<Vec<_>>()
            ));
            continue;
        };
        if !expr {
            continue;
        }
        let counter_like = kind == "counter" || (kind == "histogram" && name != family);
        match function_of(before) {
            Some("rate" | "irate" | "increase") if !counter_like => problems.push(format!(
                "{source}: `{name}` is a {kind}; rate/increase only make sense over counters"
            )),
            Some("rate" | "irate" | "increase") => {}
            _ if counter_like => problems.push(format!(
                "{source}: `{name}` is a counter: use it through rate() or increase()"
            )),
            _ => {}
        }
        let Some(labels) = scrape.series.get(&name) else {
            problems.push(format!(
                "{source}: `{name}` has no series in the scrape (a family name where a series is needed?)"
            ));
            continue;
        };
        for (label, op, value) in matchers(rest) {
            // Added by Prometheus when it scrapes, not by callgate.
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            let Some(values) = labels.get(&label) else {
                problems.push(format!(
                    "{source}: `{name}` has no label `{label}` (it has {:?})",
                    labels.keys().collect::<Vec<_>>()
                ));
                continue;
            };
            // Values of bounded sets must be real ones: a typo matches nothing.
            let literal = !value.contains(['$', '.', '*', '{', '(', '[']);
            if literal {
                for v in value.split('|') {
                    if !values.contains(v) {
                        problems.push(format!(
                            "{source}: `{name}{{{label}{op}\"{value}\"}}`: `{v}` is not a `{label}` value the gateway exports ({values:?})"
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// Labels Prometheus attaches to every series of a scrape target.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// What the dashboard does wrong with instances in one expression: a
/// `callgate_*` selector without `instance=~"$instance"`, or a gauge (a
/// per-instance value: routes loaded, store up, entries, ...) aggregated
/// across instances, which adds up or hides what each instance holds.
fn instance_problems(scrape: &Scrape, source: &str, expr: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, rest, before) in names(expr) {
        if !matchers(rest)
            .iter()
            .any(|(l, op, v)| l == "instance" && op == "=~" && v == "$instance")
        {
            problems.push(format!(
                "{source}: `{name}` is not filtered by instance=~\"$instance\""
            ));
        }
        if scrape.family_of(&name).map(|(_, kind)| kind) != Some("gauge") {
            continue;
        }
        if let Some((aggregation, by)) = aggregation_of(before)
            && !by.split(',').any(|l| l.trim() == "instance")
        {
            problems.push(format!(
                "{source}: the gauge `{name}` is aggregated across instances by `{aggregation}`; show it per instance"
            ));
        }
    }
    problems
}

/// The aggregation whose argument starts right after `before`
/// (`sum(`, `max by (route) (`), and its `by` labels.
fn aggregation_of(before: &str) -> Option<(&str, &str)> {
    const AGGREGATIONS: [&str; 8] = [
        "sum", "min", "max", "avg", "count", "stddev", "topk", "bottomk",
    ];
    let b = before.trim_end().strip_suffix('(')?.trim_end();
    let (head, by) = match b.strip_suffix(')') {
        Some(inner) => {
            let open = inner.rfind('(')?;
            let labels = &inner[open + 1..];
            let head = inner[..open].trim_end();
            let head = head
                .strip_suffix("by")
                .or_else(|| head.strip_suffix("without"))?
                .trim_end();
            (head, labels)
        }
        None => (b, ""),
    };
    let start = head
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let word = &head[start..];
    AGGREGATIONS.contains(&word).then_some((word, by))
}

/// Every string in a JSON value, with its key.
fn strings<'a>(v: &'a serde_json::Value, key: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        serde_json::Value::String(s) => out.push((key.to_owned(), s)),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, key, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| strings(x, k, out)),
        _ => {}
    }
}

/// The `expr:` values of a Prometheus rule file: inline, or a block scalar
/// (`expr: |` and the lines indented below it).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        if let Some(value) = line.trim_start().strip_prefix("expr:") {
            let value = value.trim();
            if value == "|" || value == ">" || value == "|-" || value == ">-" {
                let mut block = Vec::new();
                i += 1;
                while i < lines.len()
                    && (lines[i].trim().is_empty()
                        || lines[i].len() - lines[i].trim_start().len() > indent)
                {
                    block.push(lines[i].trim());
                    i += 1;
                }
                out.push(block.join("\n"));
                continue;
            }
            out.push(value.to_owned());
        }
        i += 1;
    }
    out
}

// === tests ===

#[tokio::test]
async fn dashboard_and_alerts_use_only_what_the_gateway_exports() {
    let scrape = real_scrape().await;
    // The scrape is what the test claims it is.
    for family in [
        "callgate_requests_total",
        "callgate_rejections_total",
        "callgate_upstream_duration_seconds",
        "callgate_key_expiry_timestamp_seconds",
    ] {
        assert!(scrape.families.contains_key(family), "{family}");
    }
    for reason in ["probe_signature", "ip_denied", "stale", "future"] {
        assert!(
            scrape.series["callgate_rejections_total"]["reason"].contains(reason),
            "{reason}: {:?}",
            scrape.series["callgate_rejections_total"]
        );
    }

    let mut problems = Vec::new();

    let text = std::fs::read_to_string(deploy("grafana/callgate.json")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).expect("deploy/grafana/callgate.json is JSON");
    let mut all = Vec::new();
    strings(&dashboard, "", &mut all);
    let mut exprs = 0;
    for (key, s) in &all {
        let is_expr = key == "expr";
        exprs += usize::from(is_expr);
        problems.extend(check_text(&scrape, "callgate.json", s, is_expr));
    }
    assert!(exprs >= 15, "only {exprs} expressions in the dashboard");
    // One instance or all of them, never a sum of per-instance gauges.
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains(&"instance"), "{variables:?}");
    for (key, s) in &all {
        if key == "expr" {
            problems.extend(instance_problems(&scrape, "callgate.json", s));
        }
    }
    let titles: Vec<&str> = all
        .iter()
        .filter(|(k, _)| k == "title")
        .map(|(_, s)| *s)
        .collect();
    for want in [
        "Last reload successful",
        "Build",
        "Resident memory",
        "Notifications by outcome",
        "Rejection reasons",
        "Upstream latency p50 / p99",
        "Rule reloads",
        "Key and certificate expiry (days left)",
        "Replay store errors",
        "Replay store entries",
    ] {
        assert!(titles.contains(&want), "no panel `{want}` in {titles:?}");
    }

    let yaml = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let rule_exprs = rule_exprs(&yaml);
    assert!(rule_exprs.len() >= 8, "{rule_exprs:?}");
    for e in &rule_exprs {
        problems.extend(check_text(&scrape, "alerts.yml expr", e, true));
    }
    // Prose (summaries, descriptions) may only name real metrics too.
    problems.extend(check_text(&scrape, "alerts.yml", &yaml, false));
    for alert in [
        "CallgateUpstreamFailing",
        "CallgateSignatureFailuresSpiking",
        "CallgateRulesReloadFailed",
        "CallgateKeyExpiringSoon",
        "CallgateKeyExpired",
        "CallgateReplayStoreDown",
        "CallgateSourceAddressesDenied",
        "CallgateNoDeliveries",
        "CallgateClockSkew",
        "CallgateReplayStoreNearlyFull",
        "CallgateJournalTooSmall",
    ] {
        assert!(yaml.contains(&format!("- alert: {alert}\n")), "{alert}");
    }
    let spike = rule_exprs
        .iter()
        .find(|e| e.contains("outcome=\"bad_signature\""))
        .unwrap();
    assert!(spike.contains("reason=\"probe_signature\""), "{spike}");

    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_checker_catches_what_it_claims_to() {
    // The checks above must be able to fail: feed them mistakes.
    let scrape = Scrape::parse(
        "# TYPE callgate_requests_total counter\n\
         callgate_requests_total{route=\"a\",outcome=\"forwarded\"} 1\n\
         # TYPE callgate_replay_store_up gauge\n\
         callgate_replay_store_up 1\n\
         # TYPE callgate_upstream_duration_seconds histogram\n\
         callgate_upstream_duration_seconds_bucket{route=\"a\",le=\"+Inf\"} 1\n\
         callgate_upstream_duration_seconds_sum{route=\"a\"} 0.1\n\
         callgate_upstream_duration_seconds_count{route=\"a\"} 1\n",
    );
    let bad = |e: &str| check_text(&scrape, "t", e, true);
    assert!(bad("rate(callgate_requests_total{outcome=\"forwarded\"}[5m])").is_empty());
    assert!(bad("histogram_quantile(0.5, sum by (le) (rate(callgate_upstream_duration_seconds_bucket[5m])))").is_empty());
    assert_eq!(
        bad("rate(callgate_request_total[5m])").len(),
        1,
        "unknown name"
    );
    assert_eq!(
        bad("rate(callgate_requests_total{outcome=\"forwardd\"}[5m])").len(),
        1,
        "unknown value"
    );
    assert_eq!(
        bad("rate(callgate_requests_total{outcom=\"forwarded\"}[5m])").len(),
        1,
        "unknown label"
    );
    assert_eq!(bad("callgate_requests_total > 0").len(), 1, "raw counter");
    assert_eq!(
        bad("rate(callgate_replay_store_up[5m])").len(),
        1,
        "rate of a gauge"
    );
    assert_eq!(
        bad("rate(callgate_upstream_duration_seconds_buckets[5m])").len(),
        1
    );
    assert!(
        check_text(
            &scrape,
            "t",
            "see callgate_upstream_duration_seconds",
            false
        )
        .is_empty()
    );
    assert_eq!(
        check_text(&scrape, "t", "see callgate_nope_total", false).len(),
        1
    );
    // Per-instance gauges stay per instance on the dashboard.
    let inst = |e: &str| instance_problems(&scrape, "t", e);
    assert!(inst("callgate_replay_store_up{instance=~\"$instance\"}").is_empty());
    assert!(
        inst("max by (instance) (callgate_replay_store_up{instance=~\"$instance\"})").is_empty()
    );
    assert!(
        inst("sum by (outcome) (rate(callgate_requests_total{instance=~\"$instance\"}[5m]))")
            .is_empty()
    );
    assert_eq!(
        inst("min(callgate_replay_store_up{instance=~\"$instance\"})").len(),
        1
    );
    assert_eq!(
        inst("sum by (route) (callgate_replay_store_up{instance=~\"$instance\"})").len(),
        1
    );
    assert_eq!(
        inst("callgate_replay_store_up").len(),
        1,
        "no instance filter"
    );
    assert_eq!(
        inst("rate(callgate_requests_total{route=~\"$route\"}[5m])").len(),
        1,
        "no instance filter"
    );
    // `instance` and `job` come from Prometheus, not from the scrape.
    assert!(
        bad("rate(callgate_requests_total{instance=~\"$instance\",outcome=\"forwarded\"}[5m])")
            .is_empty()
    );
    assert_eq!(
        rule_exprs(
            "  - alert: A\n    expr: up == 0\n  - alert: B\n    expr: |\n      a\n      or b\n    for: 1m\n"
        ),
        vec!["up == 0".to_owned(), "a\nor b".to_owned()]
    );
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{cmd:?}: {e} (`.ci/run` installs it; apt-get install prometheus)")
    });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn promtool_accepts_the_alert_rules_and_their_unit_tests_pass() {
    let dir = deploy("prometheus");
    let (ok, out) = run(tool("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir));
    assert!(ok, "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    let (ok, out) = run(tool("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir));
    assert!(ok, "promtool test rules:\n{out}");
}

#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let unit_path = deploy("systemd/callgate.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |k: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(key, _)| *key == k)
            .map(|(_, v)| *v)
            .collect()
    };
    for (key, want) in [
        ("User", "callgate"),
        ("Group", "callgate"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(get(key), vec![want], "{key}");
    }
    // A reload checks the files first; only a good configuration is signalled.
    assert_eq!(
        get("ExecReload"),
        vec![
            "/usr/local/bin/callgate check -c /etc/callgate/callgate.toml",
            "/bin/kill -HUP $MAINPID"
        ]
    );
    // The same file as ExecStart serves.
    fn config_of(line: &str) -> Option<&str> {
        line.split(" -c ").nth(1)?.split(' ').next()
    }
    assert_eq!(
        config_of(get("ExecStart")[0]),
        config_of(get("ExecReload")[0])
    );
    // Only the journal directory is writable.
    assert_eq!(get("ReadWritePaths"), vec!["/var/lib/callgate/journal"]);
    // TimeoutStopSec must outlast limits.drain_timeout (30s by default).
    let stop: u64 = get("TimeoutStopSec")[0]
        .strip_suffix('s')
        .unwrap()
        .parse()
        .unwrap();
    let drain = callgate::load::parse_duration("30s").unwrap().as_secs();
    assert!(
        stop > drain,
        "TimeoutStopSec={stop}s <= drain_timeout {drain}s"
    );

    verify_unit(&unit_path);
}

/// `systemd-analyze verify` needs the unit's binary to exist: verify a copy
/// whose paths point at the built binary and a scratch directory.
fn verify_unit(unit_path: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(unit_path)
        .unwrap()
        .replace("/usr/local/bin/callgate", env!("CARGO_BIN_EXE_callgate"));
    let copy = dir.path().join("callgate.service");
    std::fs::write(&copy, unit).unwrap();
    let (ok, out) = run(tool("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy));
    // Outside a booted systemd the tool may complain about the host (no
    // D-Bus, no /run/systemd); only lines about this unit count.
    let about_unit: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("callgate.service"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify (exit ok: {ok}):\n{out}"
    );
    // systemd's own exposure score (0 = locked down, 10 = unprotected).
    let (_, out) = run(tool("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&copy));
    let score: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for callgate.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(score <= 2.0, "exposure {score}:\n{out}");
}
