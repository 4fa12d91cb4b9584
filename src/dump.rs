//! `callgate check --dump`: the configuration callgate would run with,
//! printed after a successful check (like `nginx -T`). Built from the
//! compiled [`Setup`], not the files: defaults are filled in, relative
//! paths resolved, `@` IP sets expanded, and each route says where it is
//! defined. Secrets never appear: key and secret files are not read here,
//! and the password of a `redis://` or upstream URL is replaced by `***`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::{Setup, StoreKind};
use crate::journal::Fsync;
use crate::replay::RedisTarget;
use crate::rules::{AllowMode, OnStoreError};
use crate::secret::redact_url;

/// The whole dump, TOML-shaped (comments say what is not a key).
pub fn render(setup: &Setup) -> String {
    let c = &setup.config;
    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(
        w,
        "# callgate check --dump: the effective configuration of {}",
        abs(&c.file)
    );
    let _ = writeln!(
        w,
        "# Defaults filled in, paths resolved, IP sets expanded. Keys and secrets are never printed."
    );
    let _ = writeln!(w, "\nrules_dir = {}", quote(&abs(&c.rules_dir)));
    let _ = writeln!(w, "trusted_proxies = {}", list(c.trusted_proxies.iter()));
    let _ = writeln!(w, "\n[listen]\naddr = {}", quote(&c.listen.to_string()));
    if let Some(tls) = &c.tls {
        let _ = writeln!(w, "tls_cert = {}", quote(&abs(&tls.cert)));
        let _ = writeln!(w, "tls_key = {}", quote(&abs(&tls.key)));
    } else {
        let _ = writeln!(w, "# plain HTTP (no tls_cert / tls_key)");
    }
    match &c.admin {
        Some(a) => {
            let _ = writeln!(w, "\n[admin]\naddr = {}", quote(&a.addr.to_string()));
            let _ = writeln!(w, "max_connections = {}", a.max_connections);
            if let Some(t) = &c.admin_token {
                let _ = writeln!(w, "token_file = {}", quote(&abs(&t.file)));
            }
        }
        None => {
            let _ = writeln!(w, "\n# [admin]: none (no /metrics, /healthz, /readyz)");
        }
    }
    let store = match &c.replay.store {
        StoreKind::Memory => "memory".to_owned(),
        StoreKind::Redis(RedisTarget::Url(url)) => redact_url(url),
        StoreKind::Redis(t) => t.kind().to_owned(),
    };
    let _ = writeln!(w, "\n[replay]\nstore = {}", quote(&store));
    match &c.replay.store {
        StoreKind::Redis(RedisTarget::Sentinel(s)) => {
            let sentinels = s.sentinels.iter().map(|(h, p)| format!("{h}:{p}"));
            let _ = writeln!(w, "sentinels = {}", list(sentinels));
            let _ = writeln!(w, "master_name = {}", quote(&s.master_name));
            let _ = writeln!(w, "sentinel_tls = {}\ntls = {}", s.sentinel_tls, s.tls);
            for (what, auth) in [("sentinel_", &s.sentinel_auth), ("", &s.auth)] {
                if let Some(u) = &auth.username {
                    let _ = writeln!(w, "{what}username = {}", quote(u));
                }
                if auth.password.is_some() {
                    let _ = writeln!(w, "# {what}password_file: a password is set");
                }
            }
        }
        StoreKind::Redis(RedisTarget::Cluster(cl)) => {
            let seeds = cl.seeds.iter().map(|s| redact_url(s));
            let _ = writeln!(w, "cluster = {}", list(seeds));
            if let Some(u) = &cl.auth.username {
                let _ = writeln!(w, "username = {}", quote(u));
            }
            if cl.auth.password.is_some() {
                let _ = writeln!(w, "# password_file: a password is set");
            }
        }
        _ => {}
    }
    if matches!(c.replay.store, StoreKind::Redis(_)) {
        let _ = writeln!(w, "wait_replicas = {}", c.replay.wait.replicas);
        let _ = writeln!(w, "wait_timeout = {}", dur(c.replay.wait.timeout));
    }
    let _ = writeln!(w, "ttl = {}", dur(c.replay.ttl));
    let _ = writeln!(w, "max_entries = {}", c.replay.max_entries);
    let _ = writeln!(w, "timeout = {}", dur(c.replay.timeout));
    if c.replay.tls_ca.is_some() {
        let _ = writeln!(w, "# tls_ca: a CA bundle is set for the store's TLS");
    }
    match &c.journal {
        Some(j) => {
            let fsync = match j.fsync {
                Fsync::Always => "always",
                Fsync::Interval => "interval",
                Fsync::Never => "never",
            };
            let _ = writeln!(w, "\n[journal]\nenabled = true");
            let _ = writeln!(w, "dir = {}", quote(&abs(&j.dir)));
            let _ = writeln!(w, "fsync = {}", quote(fsync));
            let _ = writeln!(w, "max_file_bytes = {}", j.max_file_bytes);
            let _ = writeln!(w, "max_files = {}", j.max_files);
            let _ = writeln!(w, "max_file_age = {}", dur(j.max_file_age));
        }
        None => {
            let _ = writeln!(w, "\n[journal]\nenabled = false");
        }
    }
    let _ = writeln!(w, "\n[reload]\nwatch = {}", c.watch);
    let l = &c.limits;
    let _ = writeln!(w, "\n[limits]\nmax_body_bytes = {}", l.max_body_bytes);
    let _ = writeln!(w, "header_timeout = {}", dur(l.header_timeout));
    let _ = writeln!(w, "upstream_timeout = {}", dur(l.upstream_timeout));
    let _ = writeln!(w, "body_timeout = {}", dur(l.body_timeout));
    let _ = writeln!(
        w,
        "tls_handshake_timeout = {}",
        dur(l.tls_handshake_timeout)
    );
    let _ = writeln!(w, "drain_timeout = {}", dur(l.drain_timeout));
    let _ = writeln!(w, "max_connections = {}", l.max_connections);
    let _ = writeln!(
        w,
        "max_connections_per_source = {}",
        l.max_connections_per_source
    );
    let _ = writeln!(
        w,
        "max_connections_unlisted = {}",
        l.max_connections_unlisted
    );
    let _ = writeln!(w, "write_timeout = {}", dur(l.write_timeout));

    let mut routes: Vec<_> = setup.snapshot.routes.iter().collect();
    routes.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    if routes.is_empty() {
        let _ = writeln!(w, "\n# no routes: every notification is answered 404");
    }
    for r in routes {
        let _ = writeln!(w, "\n# {}:{}", abs(&r.file), r.line);
        let _ = writeln!(w, "[[route]]\nname = {}", quote(&r.name));
        let _ = writeln!(w, "path = {}", quote(&r.path));
        let _ = writeln!(w, "provider = {}", quote(r.kind().as_str()));
        let _ = writeln!(w, "allow = {}", list(r.allow.nets().iter()));
        let allow_mode = match r.allow_mode {
            AllowMode::Enforce => "enforce",
            AllowMode::Log => "log",
        };
        let _ = writeln!(w, "allow_mode = {}", quote(allow_mode));
        let forward = match r.forward {
            crate::forward::ForwardMode::Original => "original",
            crate::forward::ForwardMode::Normalized => "normalized",
        };
        let _ = writeln!(w, "forward = {}", quote(forward));
        let _ = writeln!(
            w,
            "forward_headers = {}",
            list(r.forward_headers.extra().iter().map(|h| h.as_str()))
        );
        let _ = writeln!(w, "max_age = {}", dur(r.max_age));
        let _ = writeln!(
            w,
            "# a signed time more than {} ahead of this clock is refused (future)",
            dur(r.max_future).trim_matches('"')
        );
        let on_store_error = match r.on_store_error {
            OnStoreError::Closed => "closed",
            OnStoreError::Open => "open",
        };
        let _ = writeln!(w, "on_store_error = {}", quote(on_store_error));
        let _ = writeln!(w, "merchant_label = {}", r.merchant_label);
        let _ = writeln!(w, "replay_namespace = {}", quote(&r.replay_namespace));
        if let Some(quota) = r.replay_quota {
            let _ = writeln!(w, "replay_quota = {quota}");
        }
        if let Some(limit) = &r.rate_limit {
            let _ = writeln!(
                w,
                "rate_limit = {{ per_second = {}, burst = {} }}",
                limit.per_second(),
                limit.burst()
            );
        }
        let several = r.merchants().len() > 1;
        for m in r.merchants() {
            let id = m.provider.merchant_id();
            if several {
                let _ = writeln!(w, "[[route.merchant]]");
            }
            let _ = writeln!(w, "# merchant {id}");
            let _ = writeln!(
                w,
                "upstream = {}",
                quote(&redact_url(&m.upstream.uri().to_string()))
            );
            if let Some(body) = m.upstream.success_body() {
                let _ = writeln!(
                    w,
                    "success_body = {}",
                    quote(&String::from_utf8_lossy(body))
                );
            }
            for (key, not_after) in m.provider.certificates() {
                let _ = writeln!(
                    w,
                    "# key {key}: valid until {}",
                    crate::expiry::utc(not_after)
                );
            }
        }
    }
    o
}

/// `p` made absolute against the working directory (as `run` would read it).
fn abs(p: &std::path::Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let items: Vec<String> = items.map(|i| quote(&i.to_string())).collect();
    format!("[{}]", items.join(", "))
}

/// A duration the way the files write it: `25h`, `10m`, `5s`, `300ms`.
fn dur(d: Duration) -> String {
    quote(&crate::load::format_duration(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_back_as_written() {
        for (d, want) in [
            (Duration::from_secs(90_000), "\"25h\""),
            (Duration::from_secs(300), "\"5m\""),
            (Duration::from_secs(5), "\"5s\""),
            (Duration::from_millis(300), "\"300ms\""),
            (Duration::from_millis(1500), "\"1s500ms\""),
        ] {
            assert_eq!(dur(d), want);
            let back = crate::load::parse_duration(want.trim_matches('"')).unwrap();
            assert_eq!(back, d);
        }
    }

    #[test]
    fn strings_are_toml_strings() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }
}
