//! The `callgate` binary as an operator uses it: `version`, `check` (one
//! clear `PATH:LINE: message` per problem, all at once), `sign` (checked by
//! openssl, not by callgate), and `run` with JSON logs, SIGHUP reload and
//! SIGTERM drain.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use support::*;
use tokio::sync::Notify;

fn callgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_callgate"))
}

fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_prints_build_info() {
    let (code, out, _) = output(callgate().arg("version"));
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("callgate {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(out.contains("commit"), "{out}");
}

#[test]
fn check_accepts_the_shipped_demo_and_warns_it_uses_public_demo_keys() {
    let err = expect_check_ok(&root(), 6);
    // Every key, secret and the TLS pair of the demo, each by its path.
    for name in [
        "alipay_public.pem",
        "alipay_md5.key",
        "wechat_v2_api.key",
        "wechat_v3_api_v3.key",
        "unionpay_root.pem",
        "jdpay_des.key",
        "upstream.secret",
        "server.key",
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("dev/{name}: warning: "))
                    && l.contains(&format!("public demo key (a copy of certs/dev/{name})"))),
            "no demo-key warning for {name}:\n{err}"
        );
    }
}

#[test]
fn check_warns_about_a_demo_key_copied_under_another_name() {
    let dir = config_with_rules(&good_route("a", "/a"));
    // The operator copied the demo secret into place instead of making one.
    std::fs::copy(
        root().join("certs/dev/upstream.secret"),
        dir.path().join("upstream.secret"),
    )
    .unwrap();
    expect_check_warnings(
        dir.path(),
        1,
        &["upstream.secret: warning: a public demo key (a copy of certs/dev/upstream.secret)"],
    );
}

#[test]
fn check_warns_about_allow_lists_open_to_everybody() {
    let dir = config_with_rules(&route_a_with(
        "\"110.75.0.0/16\"",
        "\"0.0.0.0/0\", \"2000::/3\"",
    ));
    edit_gateway(
        dir.path(),
        "trusted_proxies = []",
        "trusted_proxies = [\"::/0\"]",
    );
    expect_check_warnings(
        dir.path(),
        1,
        &[
            "r.toml:5: warning: allow entry `0.0.0.0/0` admits every address",
            "r.toml:5: warning: allow entry `2000::/3` admits a large part of the internet",
            "callgate.toml:2: warning: trusted_proxies entry `::/0` admits every address",
        ],
    );
    // A platform's own range is not worth a warning.
    expect_check_quiet(config_with_rules(&good_route("a", "/a")).path(), 1);
}

/// With the memory store the journal is all a restart remembers of what
/// was delivered: files that rotate too often for the most it keeps
/// (`max_files`, or 1024 while younger than `replay.ttl`) to hold
/// `replay.ttl` get deleted while still needed, whatever the traffic.
/// `check` says so (before, it was silent and the first sign was a
/// delivery made twice after a restart); with Redis, or files that hold
/// the ttl, it says nothing.
#[test]
fn check_warns_about_a_journal_that_cannot_hold_replay_ttl() {
    let dir = config_with_rules(&good_route("a", "/a"));
    let file = dir.path().join("callgate.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let ttl_line = text.lines().find(|l| l.starts_with("ttl = ")).unwrap();
    let journal_line = text
        .lines()
        .find(|l| l.starts_with("max_file_age = "))
        .unwrap();
    let edited = text
        .replace(ttl_line, "ttl = \"48h\"")
        .replace(journal_line, "max_file_age = \"2m\"")
        .replace("[listen]\n", "[listen]\nworkers = 1\n");
    std::fs::write(&file, &edited).unwrap();
    let line = edited
        .lines()
        .position(|l| l.starts_with("max_file_age = "))
        .unwrap()
        + 1;
    expect_check_warnings(
        dir.path(),
        1,
        &[&format!(
            "callgate.toml:{line}: warning: journal.max_file_age = 2m starts a new file that often, and the journal keeps at most 1024 files (journal.max_files, or 1024 while younger than replay.ttl): they hold 34h6m of steady traffic (the newest may have just begun), less than replay.ttl = 48h: files younger than replay.ttl are deleted, and a restart forgets the deliveries they held; raise journal.max_file_age or journal.max_files"
        )],
    );
    // Each worker writes a file of its own: two share the files.
    std::fs::write(&file, edited.replace("workers = 1", "workers = 2")).unwrap();
    expect_check_warnings(
        dir.path(),
        1,
        &[&format!(
            "callgate.toml:{line}: warning: journal.max_file_age = 2m starts a new file that often, and the journal keeps at most 1024 files (journal.max_files, or 1024 while younger than replay.ttl), a file per worker (listen.workers = 2): they hold 17h2m of steady traffic"
        )],
    );
    // Enough files of that age.
    std::fs::write(
        &file,
        edited.replace(
            "max_file_age = \"2m\"",
            "max_file_age = \"2m\"\nmax_files = 1441",
        ),
    )
    .unwrap();
    expect_check_quiet(dir.path(), 1);
    std::fs::write(
        &file,
        edited.replace("workers = 1", "workers = 2").replace(
            "max_file_age = \"2m\"",
            "max_file_age = \"2m\"\nmax_files = 2882",
        ),
    )
    .unwrap();
    expect_check_quiet(dir.path(), 1);
    // Redis keeps what was delivered itself.
    std::fs::write(
        &file,
        edited.replace("store = \"memory\"", "store = \"redis://127.0.0.1:1/0\""),
    )
    .unwrap();
    expect_check_quiet(dir.path(), 1);
}

/// Every path under `dir`, for comparing a tree before and after.
fn tree(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn check_creates_nothing_on_disk() {
    // The journal directory does not exist yet: `run` creates it, `check`
    // must not (it may run as another user, or on a copy of the files).
    let dir = config_with_rules(&good_route("a", "/a"));
    let before = tree(dir.path());
    assert!(!dir.path().join("journal").exists());
    expect_check_quiet(dir.path(), 1);
    assert_eq!(tree(dir.path()), before);
    // And a journal path that cannot be a directory is still a problem.
    std::fs::write(dir.path().join("journal"), "a file").unwrap();
    let (code, out) = check(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("callgate.toml:17: journal.dir `journal`: is not a directory"),
        "{out}"
    );
}

#[test]
fn check_dump_prints_the_effective_configuration_without_secrets() {
    let dir = config_with_rules(&good_route("a", "/a"));
    let gateway = dir.path().join("callgate.toml");
    edit_gateway(
        dir.path(),
        "store = \"memory\"",
        "store = \"redis://:hunter2-redis-password@127.0.0.1:1/3\"",
    );
    let (code, out, err) = output(callgate().args(["check", "--dump", "-c"]).arg(&gateway));
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("ok: 1 routes\n"), "{out}");
    for want in [
        // Redacted, with the rest of the URL kept.
        "store = \"redis://:***@127.0.0.1:1/3\"",
        // Defaults the file left out.
        "drain_timeout = \"10s\"",
        "max_connections = 10000",
        "fsync = \"interval\"",
        // The route, its defaults and where it is defined.
        "r.toml:1\n[[route]]\nname = \"a\"\npath = \"/a\"\nprovider = \"alipay\"",
        "allow = [\"110.75.0.0/16\"]",
        "max_age = \"25h\"",
        "upstream = \"http://127.0.0.1:8080/notify.php\"",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
    assert!(!out.contains("hunter2"), "a password in the dump:\n{out}");
    assert!(
        !out.contains(SECRET.trim()),
        "the upstream secret in the dump"
    );
    // Paths are resolved: the rules directory is absolute.
    let rules_dir = out
        .lines()
        .find_map(|l| l.strip_prefix("rules_dir = "))
        .unwrap();
    assert!(rules_dir.trim_matches('"').starts_with('/'), "{rules_dir}");
    // The dump reads back as TOML.
    let body: String = out
        .lines()
        .filter(|l| !l.starts_with("ok: "))
        .collect::<Vec<_>>()
        .join("\n");
    toml::from_str::<toml::Table>(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
}

/// Writes a gateway file plus `rules/r.toml` with `rules`, returns the dir.
fn config_with_rules(rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewaySpec::new(vec![]);
    spec.write(dir.path());
    std::fs::write(dir.path().join("rules/r.toml"), rules).unwrap();
    dir
}

/// `callgate check` on the gateway file in `dir`: (exit code, stdout, stderr).
fn check_split(dir: &Path) -> (i32, String, String) {
    callgate_cli(&["check"], &dir.join("callgate.toml"))
}

/// `callgate check` on the gateway file in `dir`: (exit code, stdout + stderr).
fn check(dir: &Path) -> (i32, String) {
    let (code, out, err) = check_split(dir);
    (code, format!("{out}{err}"))
}

/// `check` on `dir` loads `routes` routes and exits 0; returns stderr (the
/// warnings).
fn expect_check_ok(dir: &Path, routes: usize) -> String {
    let (code, out, err) = check_split(dir);
    assert_eq!(
        (code, out.trim()),
        (0, format!("ok: {routes} routes").as_str()),
        "{err}"
    );
    err
}

/// `check` on `dir` loads `routes` routes, exits 0 and warns of nothing.
fn expect_check_quiet(dir: &Path, routes: usize) {
    let warnings = expect_check_ok(dir, routes);
    assert_eq!(warnings, "", "no warnings expected");
}

/// `check` on `dir` loads `routes` routes, exits 0, and warns with every
/// line of `wants`.
fn expect_check_warnings(dir: &Path, routes: usize, wants: &[&str]) {
    let warnings = expect_check_ok(dir, routes);
    for want in wants {
        assert!(warnings.contains(want), "expected `{want}` in:\n{warnings}");
    }
}

/// Replaces `from` (which must be there) by `to` in `dir`'s gateway file.
fn edit_gateway(dir: &Path, from: &str, to: &str) {
    let path = dir.join("callgate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(from),
        "`{from}` not in the gateway file:\n{text}"
    );
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// The contents of a file that is not a key; a `check` message must never
/// print them.
const NOT_A_KEY: &str = "callgate-marker-line\nhello\n";

/// `check` refuses `rules` (exit 1) and names every line of `wants`, each
/// with its rule file's location, without printing a file's contents or a
/// secret. `what` names the case in every failure. The config directory
/// also holds `not-a-key.txt` ([`NOT_A_KEY`]) for rules to point at.
fn expect_check_problem_lines(what: &str, rules: &str, wants: &[&str]) {
    let dir = config_with_rules(rules);
    std::fs::write(dir.path().join("not-a-key.txt"), NOT_A_KEY).unwrap();
    let (code, out) = check(dir.path());
    assert_eq!(code, 1, "{what}: {out}");
    assert!(out.contains("r.toml:"), "{what}: no location in:\n{out}");
    for want in wants {
        assert!(out.contains(want), "{what}: expected `{want}` in:\n{out}");
    }
    assert!(
        !out.contains("callgate-marker-line") && !out.contains("PRIVATE KEY"),
        "{what}: a message must not print file contents:\n{out}"
    );
    let md5_key = std::fs::read_to_string(fixture_path("alipay_md5", "md5_key.txt")).unwrap();
    assert!(!out.contains(md5_key.trim()), "{what}: the MD5 key leaked");
    assert!(
        !out.contains(SECRET.trim()),
        "{what}: the upstream secret leaked"
    );
}

/// [`expect_check_problem_lines`] for a table of (what, rules, expected line).
fn expect_check_problems(cases: Vec<(&str, String, &str)>) {
    for (what, rules, want) in cases {
        expect_check_problem_lines(what, &rules, &[want]);
    }
}

/// One `[[route]]` as an operator writes it: nine lines, then the
/// `[route.keys]` body `keys` from line 10 on (the line numbers `check`
/// reports). `allow` is the inside of the allow list.
fn rule_text(name: &str, path: &str, provider: &str, allow: &str, keys: &str) -> String {
    format!(
        r#"[[route]]
name = "{name}"
path = "{path}"
provider = "{provider}"
allow = [{allow}]
upstream = "http://127.0.0.1:8080/notify.php"
upstream_secret_file = "../upstream.secret"

[route.keys]
{keys}"#
    )
}

/// A valid Alipay route `name` at `path`, its keys on lines 10-11.
fn good_route(name: &str, path: &str) -> String {
    let keys = format!(
        "public_key = {:?}\napp_id = \"2021000000000001\"\n",
        fixture_path("alipay", "alipay_public.pem")
    );
    rule_text(name, path, "alipay", "\"110.75.0.0/16\"", &keys)
}

/// Route `a` at `/a` ([`good_route`]) with `from` (which must be there)
/// replaced by `to`.
fn route_a_with(from: &str, to: &str) -> String {
    let route = good_route("a", "/a");
    assert!(route.contains(from), "`{from}` not in:\n{route}");
    route.replace(from, to)
}

/// A rule file replaced by a link to nothing (a deploy that has not put
/// the target in place yet) or to itself is a problem with its path, not
/// a file silently left out with its routes.
#[test]
fn check_reports_a_rule_file_that_links_to_nothing() {
    let dir = config_with_rules(&good_route("a", "/a"));
    let rules = dir.path().join("rules");
    std::os::unix::fs::symlink(
        rules.join("missing/shared.toml"),
        rules.join("dangling.toml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(rules.join("loop.toml"), rules.join("loop.toml")).unwrap();
    let (code, all) = check(dir.path());
    assert_eq!(code, 1, "{all}");
    for file in ["dangling.toml", "loop.toml"] {
        assert!(
            all.lines()
                .any(|l| l.contains(file) && l.contains("cannot read the rule file")),
            "{file}: {all}"
        );
    }
    // A directory named like a rule file is not one.
    std::fs::remove_file(rules.join("dangling.toml")).unwrap();
    std::fs::remove_file(rules.join("loop.toml")).unwrap();
    std::fs::create_dir(rules.join("old.toml")).unwrap();
    expect_check_ok(dir.path(), 1);
}

#[test]
fn check_counts_routes() {
    let dir = config_with_rules(&format!(
        "{}\n{}",
        good_route("a", "/a"),
        good_route("b", "/b")
    ));
    expect_check_quiet(dir.path(), 2);
}

#[test]
fn check_names_each_problem_with_file_and_line() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "duplicate path",
            format!("{}\n{}", good_route("a", "/same"), good_route("b", "/same")),
            "r.toml:15: path `/same` is already routed by route `a` at",
        ),
        (
            "bad CIDR",
            route_a_with("110.75.0.0/16", "110.75.0.0/99"),
            "r.toml:5: allow entry `110.75.0.0/99` is not a CIDR",
        ),
        (
            "unreadable key",
            route_a_with("alipay_public.pem", "no_such_key.pem"),
            "r.toml:10: keys.public_key",
        ),
        (
            "non-PEM key",
            route_a_with(
                &format!("{:?}", fixture_path("alipay", "alipay_public.pem")),
                "\"../not-a-key.txt\"",
            ),
            "r.toml:10: keys.public_key `../not-a-key.txt`: not a PEM public key",
        ),
        (
            "missing upstream secret file",
            route_a_with("../upstream.secret", "../nope.secret"),
            "r.toml:7: upstream_secret_file `../nope.secret`: cannot read the secret file: no such file",
        ),
        (
            "no upstream secret at all",
            route_a_with("upstream_secret_file = \"../upstream.secret\"\n", ""),
            "missing field `upstream_secret_file`",
        ),
        (
            "unknown key",
            route_a_with(
                "provider = \"alipay\"",
                "provider = \"alipay\"\ncolour = \"blue\"",
            ),
            "r.toml:5: unknown field `colour`",
        ),
        (
            "bad duration",
            route_a_with(
                "provider = \"alipay\"",
                "provider = \"alipay\"\nmax_age = \"soon\"",
            ),
            "r.toml:5: route `a`: max_age: invalid duration `soon`",
        ),
        (
            "bad upstream",
            route_a_with("http://127.0.0.1:8080/notify.php", "ftp://x/y"),
            "r.toml:6: upstream `ftp://x/y`: must start with http:// or https://",
        ),
        (
            "unknown provider",
            route_a_with("\"alipay\"", "\"paypal\""),
            "r.toml:4: route `a`: provider: unknown variant `paypal`",
        ),
        (
            "no keys table",
            good_route("a", "/a")
                .split("[route.keys]")
                .next()
                .unwrap()
                .to_owned(),
            "r.toml:1: provider `alipay` needs a [route.keys] table",
        ),
    ];
    expect_check_problems(cases);
}

#[test]
fn check_reports_every_problem_at_once() {
    let rules = format!(
        "{}\n{}\n{}",
        route_a_with("110.75.0.0/16", "bogus"),
        good_route("b", "/b").replace("alipay_public.pem", "missing.pem"),
        good_route("c", "/a"),
    );
    let dir = config_with_rules(&rules);
    std::fs::write(
        dir.path().join("rules/second.toml"),
        "[[route]]\nname = 1\n",
    )
    .unwrap();
    edit_gateway(
        dir.path(),
        "trusted_proxies = []",
        "trusted_proxies = [\"10.0.0.0/99\"]",
    );
    let (code, out) = check(dir.path());
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    // second.toml's route has a wrong name and lacks every other required
    // key: six problems of its own.
    assert_eq!(lines.len(), 10, "{out}");
    assert!(
        lines[0].contains("callgate.toml:2: trusted_proxies entry `10.0.0.0/99`"),
        "{out}"
    );
    for want in [
        "r.toml:5: allow entry `bogus`",
        "r.toml:22: keys.public_key `",
        "path `/a` is already routed by route `a`",
        "second.toml:2: name: invalid type: integer `1`, expected a string",
        "second.toml:1: missing field `path`",
        "second.toml:1: missing field `provider`",
        "second.toml:1: missing field `allow`",
        "second.toml:1: missing field `upstream_secret_file`",
        "second.toml:1: missing field `upstream`:",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "no line with `{want}` in:\n{out}"
        );
    }
}

/// The 1-based line of the first line of `text` that contains `needle`.
fn line_with(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in:\n{text}"))
        + 1
}

/// `check` exits 1 and prints exactly `wants`, one line each, in any order.
fn expect_exactly(dir: &Path, wants: &[String]) {
    let (code, out) = check(dir);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    for want in wants {
        assert!(
            lines.iter().any(|l| l.contains(want.as_str())),
            "no line with `{want}` in:\n{out}"
        );
    }
    assert_eq!(lines.len(), wants.len(), "{out}");
}

#[test]
fn check_lists_every_problem_of_the_gateway_file() {
    // Serde stops at the first problem of a document; `check` must not:
    // an operator fixing one typo per run of `check` is what it avoids.
    let dir = config_with_rules(&good_route("a", "/a"));
    edit_gateway(dir.path(), "[admin]", "[admin]\nport = 1");
    edit_gateway(dir.path(), "[reload]", "[reload]\ncolour = \"blue\"");
    edit_gateway(
        dir.path(),
        "header_timeout = \"5s\"",
        "header_timeout = \"soon\"",
    );
    let text = std::fs::read_to_string(dir.path().join("callgate.toml")).unwrap();
    let at = |needle: &str| format!("callgate.toml:{}: ", line_with(&text, needle));
    expect_exactly(
        dir.path(),
        &[
            format!("{}unknown field `port`", at("port = 1")),
            format!("{}unknown field `colour`", at("colour = ")),
            format!(
                "{}limits.header_timeout: invalid duration `soon`",
                at("header_timeout")
            ),
        ],
    );
}

/// A value of the wrong type or form is reported with its key, as
/// callgate's own checks are (`allow entry ...`): serde's own words
/// ("invalid duration `5`", "unknown variant `x`") do not say which key of
/// the line's table they are about, nor which route. The key is dotted
/// from the file's top (the gateway file), or from the route (a rule file:
/// `keys.app_id`, never `route.0.max_age`); an IP set file's by its key.
#[test]
fn check_names_the_key_of_every_wrong_value() {
    let route_a = route_a_with(
        "provider = \"alipay\"",
        "provider = \"alipay\"\nmax_age = \"25\"\nallow_mode = \"x\"",
    )
    .replace("app_id = \"2021000000000001\"", "app_id = 5");
    let rules = format!(
        "{route_a}\n{}[[route.merchant]]\nsuccess_body = 5\n[route.merchant.keys]\napp_id = 7\npublic_key = {:?}\n",
        good_route("b", "/b").split("[route.keys]").next().unwrap(),
        fixture_path("alipay", "alipay_public.pem"),
    );
    let dir = config_with_rules(&rules);
    edit_gateway(
        dir.path(),
        "upstream_timeout = \"10s\"",
        "upstream_timeout = \"5\"",
    );
    std::fs::create_dir_all(dir.path().join("rules/ipsets")).unwrap();
    std::fs::write(
        dir.path().join("rules/ipsets/corp.toml"),
        "cidrs = [\"10.0.0.0/8\", 5]\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(dir.path().join("callgate.toml")).unwrap();
    let at = line_with(&text, "upstream_timeout");
    let r = |needle: &str| line_with(&rules, needle);
    expect_exactly(
        dir.path(),
        &[
            format!(
                "callgate.toml:{at}: limits.upstream_timeout: invalid duration `5`: write a number"
            ),
            format!(
                "r.toml:{}: route `a`: max_age: invalid duration `25`: write a number",
                r("max_age")
            ),
            format!(
                "r.toml:{}: route `a`: allow_mode: unknown variant `x`, expected `enforce` or `log`",
                r("allow_mode")
            ),
            format!(
                "r.toml:{}: route `a`: keys.app_id: invalid type: integer `5`, expected a string",
                r("app_id = 5")
            ),
            format!(
                "r.toml:{}: route `b`: merchant.success_body: invalid type: integer `5`",
                r("success_body")
            ),
            format!(
                "r.toml:{}: route `b`: merchant.keys.app_id: invalid type: integer `7`",
                r("app_id = 7")
            ),
            "corp.toml:1: cidrs: invalid type: integer `5`, expected a string".to_owned(),
        ],
    );
}

#[test]
fn check_judges_the_rest_of_the_gateway_file_as_written() {
    // The rest of the file and the rule files are still checked, each
    // value as written; a check that needs a value that was wrong is left
    // out rather than run against its default (the rule files against
    // replay.ttl, wait_timeout against timeout).
    let dir = config_with_rules(&route_a_with("110.75.0.0/16", "110.75.0.0/99"));
    edit_gateway(dir.path(), "ttl = \"200100h\"", "ttl = \"a day\"");
    edit_gateway(
        dir.path(),
        "timeout = \"500ms\"",
        "timeout = \"half a second\"\nwait_replicas = 1\nwait_timeout = \"2s\"",
    );
    edit_gateway(dir.path(), "max_entries = 100000", "max_entries = 0");
    edit_gateway(
        dir.path(),
        "store = \"memory\"",
        "store = \"redis://127.0.0.1:1/0\"",
    );
    edit_gateway(
        dir.path(),
        "trusted_proxies = []",
        "trusted_proxies = [\"10.0.0.0/99\"]",
    );
    let text = std::fs::read_to_string(dir.path().join("callgate.toml")).unwrap();
    let at = |needle: &str| format!("callgate.toml:{}: ", line_with(&text, needle));
    expect_exactly(
        dir.path(),
        &[
            format!(
                "{}trusted_proxies entry `10.0.0.0/99`",
                at("trusted_proxies")
            ),
            format!("{}replay.ttl: invalid duration `a day`", at("ttl = ")),
            format!(
                "{}replay.max_entries must be greater than zero",
                at("max_entries")
            ),
            format!(
                "{}replay.timeout: invalid duration `half a second`",
                at("timeout = ")
            ),
            "r.toml:5: allow entry `110.75.0.0/99`".to_owned(),
        ],
    );
}

#[test]
fn check_lists_every_problem_of_a_route() {
    // Two serde problems (an unknown key, a duration that is not one) and
    // two the compiler finds (a CIDR, a key file): four lines.
    let route = route_a_with(
        "provider = \"alipay\"",
        "provider = \"alipay\"\ncolour = \"blue\"\nmax_age = \"soon\"",
    )
    .replace("110.75.0.0/16", "110.75.0.0/99")
    .replace("alipay_public.pem", "no_such_key.pem");
    let dir = config_with_rules(&route);
    expect_exactly(
        dir.path(),
        &[
            "r.toml:5: unknown field `colour`".to_owned(),
            "r.toml:6: route `a`: max_age: invalid duration `soon`".to_owned(),
            "r.toml:7: allow entry `110.75.0.0/99` is not a CIDR".to_owned(),
            "r.toml:12: keys.public_key `".to_owned(),
        ],
    );
}

#[test]
fn check_reports_a_wrong_required_value_once_and_checks_the_rest() {
    // A wrong required value is one problem, not also a "missing field",
    // and the route's other settings are still checked.
    let dir = config_with_rules(
        &route_a_with("\"alipay\"", "\"paypal\"").replace("110.75.0.0/16", "110.75.0.0/99"),
    );
    expect_exactly(
        dir.path(),
        &[
            "r.toml:4: route `a`: provider: unknown variant `paypal`".to_owned(),
            "r.toml:5: allow entry `110.75.0.0/99` is not a CIDR".to_owned(),
        ],
    );
}

#[test]
fn check_lists_every_problem_of_a_keys_table() {
    // Two unknown keys in [route.keys] next to a key file that is not there.
    let dir = config_with_rules(
        &good_route("a", "/a")
            .replace("alipay_public.pem", "no_such_key.pem")
            .replace("app_id = ", "colour = 1\nsize = 2\napp_id = "),
    );
    expect_exactly(
        dir.path(),
        &[
            "r.toml:10: keys.public_key `".to_owned(),
            "r.toml:11: unknown field `colour`".to_owned(),
            "r.toml:12: unknown field `size`".to_owned(),
        ],
    );
}

#[test]
fn check_still_loads_the_key_files_of_a_keys_table_with_a_wrong_value() {
    // A wrong value in [route.keys] (or in a merchant's table) is one
    // problem; the key files its other keys name are still read, so a
    // missing one is listed in the same run, and nothing that needs the
    // wrong value is judged (no "missing field" for it, no entry of
    // platform_keys judged without its own wrong key).
    let alipay = route_a_with("app_id = \"2021000000000001\"", "app_id = 5")
        .replace("alipay_public.pem", "no_such_key.pem");
    let public = fixture_path("wechat", "pubkey_public.pem");
    let wechat = wechat_v3_rule(
        &format!(
            "  {{ serial = 7, public_key = {public:?} }},\n  {{ serial = \"PUB_KEY_ID_0114\", public_key = 9 }},\n  {{ serial = \"PUB_KEY_ID_0115\", public_key = \"missing.pem\" }},"
        ),
        &fixture_path("wechat", "v3_api_v3.key"),
    )
    .replace("mch_id = \"1900000109\"", "mch_id = 5");
    let jdpay = route_with_keys(
        "jdpay",
        "merchant = 5\ndes_key_file = \"nope.key\"\njd_public_key = \"nope.pem\"\n",
    );
    let merchant = format!(
        "{}[[route.merchant]]\nsuccess_body = 5\n[route.merchant.keys]\napp_id = \"2021000000000001\"\npublic_key = \"no_such_key.pem\"\n",
        good_route("a", "/a").split("[route.keys]").next().unwrap()
    );
    let unionpay = route_with_keys("unionpay", "mer_id = 5\nverify_certs = [\"nope.cer\", 5]\n");
    let alipay_mode = route_a_with(
        &format!("{:?}", fixture_path("alipay", "alipay_public.pem")),
        "5",
    );
    for (rules, wants) in [
        (
            alipay_mode,
            vec![
                "r.toml:10: route `a`: keys.public_key: invalid type: integer `5`, expected a string",
            ],
        ),
        (
            unionpay,
            vec![
                "r.toml:10: route `r1`: keys.mer_id: invalid type: integer `5`, expected a string",
                "r.toml:11: route `r1`: keys.verify_certs: invalid type: integer `5`, expected a string",
                "r.toml:11: keys.verify_certs `nope.cer`: cannot read",
            ],
        ),
        (
            alipay,
            vec![
                "r.toml:11: route `a`: keys.app_id: invalid type: integer `5`, expected a string",
                "r.toml:10: keys.public_key `",
            ],
        ),
        (
            wechat,
            vec![
                "r.toml:10: route `v3`: keys.mch_id: invalid type: integer `5`, expected a string",
                "r.toml:13: route `v3`: keys.platform_keys.serial: invalid type: integer `7`, expected a string",
                "r.toml:14: route `v3`: keys.platform_keys.public_key: invalid type: integer `9`, expected a string",
                "r.toml:15: keys.platform_keys.public_key `missing.pem`: cannot read",
            ],
        ),
        (
            jdpay,
            vec![
                "r.toml:10: route `r1`: keys.merchant: invalid type: integer `5`, expected a string",
                "r.toml:11: keys.des_key_file `nope.key`: cannot read",
                "r.toml:12: keys.jd_public_key `nope.pem`: cannot read",
            ],
        ),
        (
            merchant,
            vec![
                "r.toml:10: route `a`: merchant.success_body: invalid type: integer `5`, expected a string",
                "r.toml:13: keys.public_key `no_such_key.pem`: cannot read",
            ],
        ),
    ] {
        let dir = config_with_rules(&rules);
        let wants: Vec<String> = wants.into_iter().map(str::to_owned).collect();
        expect_exactly(dir.path(), &wants);
    }
}

#[test]
fn check_lists_every_entry_of_a_list_that_holds_one_of_the_wrong_type() {
    // A number among the allow entries is one problem; the entries around
    // it are still checked.
    let dir = config_with_rules(&route_a_with(
        "\"110.75.0.0/16\"",
        "\"10.0.0.0/99\", 5, \"bad\", \"110.75.0.0/16\"",
    ));
    expect_exactly(
        dir.path(),
        &[
            "r.toml:5: route `a`: allow: invalid type: integer `5`, expected a string".to_owned(),
            "r.toml:5: allow entry `10.0.0.0/99` is not a CIDR".to_owned(),
            "r.toml:5: allow entry `bad` is not a CIDR".to_owned(),
        ],
    );
}

#[test]
fn check_lists_every_forward_header_it_refuses() {
    let dir = config_with_rules(&route_a_with(
        "provider = \"alipay\"",
        "provider = \"alipay\"\nforward_headers = [\"Cookie\", \"bad name\", \"X-Request-Id\", \"Authorization\"]",
    ));
    expect_exactly(
        dir.path(),
        &[
            "r.toml:5: forward_headers: `Cookie` is never passed to the shop".to_owned(),
            "r.toml:5: forward_headers: `bad name` is not a header name".to_owned(),
            "r.toml:5: forward_headers: `Authorization` is never passed to the shop".to_owned(),
        ],
    );
}

#[test]
fn check_names_every_alipay_sign_type_it_does_not_know() {
    let dir = config_with_rules(&route_a_with(
        "app_id = \"2021000000000001\"",
        "app_id = \"2021000000000001\"\nsign_types = [\"RSA3\", \"RSA2\", \"SHA1\"]",
    ));
    expect_exactly(
        dir.path(),
        &[
            "r.toml:12: keys.sign_types: `RSA3` is not \"RSA2\" or \"RSA\"".to_owned(),
            "r.toml:12: keys.sign_types: `SHA1` is not \"RSA2\" or \"RSA\"".to_owned(),
        ],
    );
}

#[test]
fn check_lists_every_problem_of_an_ip_set_file() {
    // An unknown key, an entry of the wrong type and two that are no CIDR:
    // four lines, each at its own; the route naming the set is not told it
    // does not exist.
    let dir = config_with_rules(&route_a_with(
        "\"110.75.0.0/16\"",
        "\"@corp\", \"110.75.0.0/16\"",
    ));
    std::fs::create_dir_all(dir.path().join("rules/ipsets")).unwrap();
    std::fs::write(
        dir.path().join("rules/ipsets/corp.toml"),
        "# copied from the corporate list\ncidrs = [\n  \"10.0.0.0/99\",\n  5,\n  \"bogus\",\n  \"110.76.0.0/16\",\n]\ncolour = \"blue\"\n",
    )
    .unwrap();
    expect_exactly(
        dir.path(),
        &[
            "corp.toml:3: cidrs entry `10.0.0.0/99` is not a CIDR".to_owned(),
            "corp.toml:4: cidrs: invalid type: integer `5`, expected a string".to_owned(),
            "corp.toml:5: cidrs entry `bogus` is not a CIDR".to_owned(),
            "corp.toml:8: unknown field `colour`".to_owned(),
        ],
    );
    // A set file that does not parse is reported there, once.
    std::fs::write(dir.path().join("rules/ipsets/corp.toml"), "cidrs = [").unwrap();
    let (code, out) = check(dir.path());
    assert_eq!((code, out.lines().count()), (1, 1), "{out}");
    assert!(out.contains("corp.toml:"), "{out}");
}

#[test]
fn check_still_reports_rule_file_problems_when_the_gateway_file_does_not_parse() {
    // A typo in the gateway file (an unknown key, a duration that is not
    // one) is a parse error; the rule files' own problems must be listed
    // with it, not only after the operator fixed the first one.
    let dir = config_with_rules(&route_a_with("110.75.0.0/16", "bogus"));
    edit_gateway(dir.path(), "[limits]", "[limits]\nbogus_key = 1");
    let (code, out) = check(dir.path());
    assert_eq!(code, 1, "{out}");
    for want in [
        "callgate.toml:",
        "unknown field `bogus_key`",
        "r.toml:5: allow entry `bogus`",
    ] {
        assert!(out.contains(want), "no `{want}` in:\n{out}");
    }
    // A file that is not TOML at all names no rules directory it can be
    // trusted for: its one problem is what is reported.
    std::fs::write(dir.path().join("callgate.toml"), "rules_dir = [").unwrap();
    let (code, out) = check(dir.path());
    assert_eq!(code, 1, "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn check_flags_gateway_file_problems() {
    let dir = tempfile::tempdir().unwrap();
    GatewaySpec::new(vec![]).write(dir.path());
    let path = dir.path().join("callgate.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    for (what, from, to, want) in [
        (
            "unknown key",
            "[admin]",
            "[admin]\nport = 1",
            "unknown field `port`",
        ),
        (
            "bad address",
            "addr = \"127.0.0.1:0\"\n\n[admin]",
            "addr = \"localhost\"\n\n[admin]",
            "listen.addr `localhost` is not a socket address",
        ),
        (
            "half TLS",
            "[admin]",
            "tls_cert = \"x.crt\"\n[admin]",
            "listen.tls_cert is set but listen.tls_key is not",
        ),
        (
            "bad store",
            "store = \"memory\"",
            "store = \"mongodb://x\"",
            "replay.store `mongodb://x`",
        ),
        (
            "zero limit",
            "max_body_bytes = 65536",
            "max_body_bytes = 0",
            "limits.max_body_bytes must be greater than zero",
        ),
        (
            "missing rules dir",
            "rules_dir = \"rules\"",
            "rules_dir = \"nowhere\"",
            "rules_dir `nowhere`: no such file",
        ),
    ] {
        assert!(original.contains(from), "{what}");
        std::fs::write(&path, original.replacen(from, to, 1)).unwrap();
        let (code, out) = check(dir.path());
        assert_eq!(code, 1, "{what}: {out}");
        assert!(out.contains("callgate.toml:"), "{what}: {out}");
        assert!(out.contains(want), "{what}: expected `{want}` in {out}");
    }
}

/// Recovers raw decoded params from a form body without callgate's parser.
fn decode_form(body: &str) -> Vec<(String, Vec<u8>)> {
    body.split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            let decode = |s: &str| {
                let s = s.replace('+', " ");
                let b = s.as_bytes();
                let mut out = Vec::new();
                let mut i = 0;
                while i < b.len() {
                    if b[i] == b'%' {
                        out.push(
                            u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16)
                                .unwrap(),
                        );
                        i += 3;
                    } else {
                        out.push(b[i]);
                        i += 1;
                    }
                }
                out
            };
            (String::from_utf8(decode(k)).unwrap(), decode(v))
        })
        .collect()
}

/// A fixture's path as an argument.
fn fx(provider: &str, name: &str) -> String {
    fixture_path(provider, name).to_str().unwrap().to_owned()
}

/// A file of `certs/dev/` as an argument.
fn dev(name: &str) -> String {
    root()
        .join("certs/dev")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

/// `callgate sign ARGS`: (exit code, stdout, stderr).
fn sign(args: &[&str]) -> (i32, String, String) {
    output(callgate().arg("sign").args(args))
}

/// `callgate sign ARGS` succeeds; its stdout. `what` names the case.
fn sign_ok(what: &str, args: &[&str]) -> String {
    let (code, out, err) = sign(args);
    assert_eq!(code, 0, "{what}: {err}");
    out
}

/// The value of field `name` (which must be there).
fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
        .unwrap_or_else(|| panic!("no `{name}` field"))
}

/// The platforms' string to sign, built here and not by callgate: the
/// fields but `unsigned` ones (and empty ones unless `keep_empty`), sorted,
/// joined as `k=v&k=v`.
fn signed_content(fields: &[(String, Vec<u8>)], unsigned: &[&str], keep_empty: bool) -> Vec<u8> {
    let mut fields: Vec<_> = fields
        .iter()
        .filter(|(k, v)| !unsigned.contains(&k.as_str()) && (keep_empty || !v.is_empty()))
        .collect();
    fields.sort();
    fields
        .iter()
        .map(|(k, v)| [k.as_bytes(), b"=", v].concat())
        .collect::<Vec<_>>()
        .join(&b'&')
}

/// openssl verifies `signature_b64` over `data` with `public` (a PEM public
/// key) by `openssl dgst ALG -verify`. `what` names the case.
fn assert_openssl_verifies(
    what: &str,
    alg: &str,
    public: &Path,
    signature_b64: &[u8],
    data: &[u8],
) {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let (sig, content) = (dir.path().join("sig"), dir.path().join("content"));
    std::fs::write(
        &sig,
        base64::engine::general_purpose::STANDARD
            .decode(signature_b64)
            .unwrap(),
    )
    .unwrap();
    std::fs::write(&content, data).unwrap();
    let verify = tool("openssl")
        .args(["dgst", alg, "-verify"])
        .arg(public)
        .arg("-signature")
        .arg(&sig)
        .arg(&content)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&verify.stdout).trim(),
        "Verified OK",
        "{what}"
    );
}

/// How a platform signs a form with RSA, as openssl checks it.
struct RsaForm<'a> {
    /// The field that carries the Base64 signature.
    signature: &'a str,
    /// Fields left out of the string to sign.
    unsigned: &'a [&'a str],
    /// Whether empty values stay in the string to sign.
    keep_empty: bool,
    /// openssl's digest option: `-sha256`, `-sha1`.
    alg: &'a str,
    /// Whether the RSA signature covers the hex digest of the string to
    /// sign (UnionPay) rather than the string itself (Alipay).
    over_hex_digest: bool,
    /// The platform's PEM public key.
    public: &'a Path,
}

/// The RSA-over-a-form family (Alipay RSA2/RSA, UnionPay 5.1.0/5.0.0):
/// openssl verifies the signature `form` carries as `scheme` says. Returns
/// the decoded fields for the case's own checks; `what` names the case.
fn verify_rsa_form(what: &str, form: &str, scheme: &RsaForm) -> Vec<(String, Vec<u8>)> {
    let fields = decode_form(form);
    let sig = field(&fields, scheme.signature).to_vec();
    let content = signed_content(&fields, scheme.unsigned, scheme.keep_empty);
    let data = if scheme.over_hex_digest {
        openssl_dgst_hex(&[scheme.alg], &content).into_bytes()
    } else {
        content
    };
    assert_openssl_verifies(what, scheme.alg, scheme.public, &sig, &data);
    fields
}

/// The keyed-digest family (Alipay MD5, WeChat Pay v2): field `sign` of
/// `fields` is the hex `openssl dgst ALG_ARGS` of the sorted non-empty join
/// of the other fields (but `unsigned`) followed by `key_suffix`, in upper
/// case if `upper_hex` (WeChat Pay) or lower (Alipay).
fn verify_keyed_digest(
    what: &str,
    fields: &[(String, Vec<u8>)],
    unsigned: &[&str],
    key_suffix: &[u8],
    alg_args: &[&str],
    upper_hex: bool,
) {
    let content = [
        signed_content(fields, unsigned, false).as_slice(),
        key_suffix,
    ]
    .concat();
    let mut want = openssl_dgst_hex(alg_args, &content);
    if upper_hex {
        want.make_ascii_uppercase();
    }
    let got = String::from_utf8(field(fields, "sign").to_vec()).unwrap();
    assert_eq!(got, want, "{what}: sign against openssl's digest");
}

#[test]
fn sign_alipay_output_verifies_with_openssl() {
    let key = fx("alipay", "alipay_private.pem");
    let public = fixture_path("alipay", "alipay_public.pem");
    for (sign_type, alg) in [("RSA2", "-sha256"), ("RSA", "-sha1")] {
        let out = sign_ok(
            sign_type,
            &[
                "alipay",
                "--private-key",
                &key,
                "--param",
                "app_id=2021000000000001",
                "--param",
                "subject=测试 商品+1",
                "--param",
                "total_amount=12.34",
                "--sign-type",
                sign_type,
            ],
        );
        assert!(
            !out.ends_with('\n'),
            "{sign_type}: a piped body must be exact"
        );
        let scheme = RsaForm {
            signature: "sign",
            unsigned: &["sign", "sign_type"],
            keep_empty: false,
            alg,
            over_hex_digest: false,
            public: &public,
        };
        let fields = verify_rsa_form(sign_type, &out, &scheme);
        assert_eq!(
            field(&fields, "subject"),
            "测试 商品+1".as_bytes(),
            "{sign_type}"
        );
        assert_eq!(field(&fields, "sign_type"), sign_type.as_bytes());
    }
}

#[test]
fn sign_refuses_bad_input_clearly() {
    let alipay_key = fx("alipay", "alipay_private.pem");
    let (unionpay_key, unionpay_cert) = (dev("unionpay_sign_key.pem"), dev("unionpay_sign.pem"));
    let unionpay = [
        "unionpay",
        "--private-key",
        &unionpay_key,
        "--cert",
        &unionpay_cert,
    ];
    let md5_key = fx("alipay_md5", "md5_key.txt");
    let (dev_jd_private, dev_jd_public) = (dev("jdpay_private.pem"), dev("jdpay_public.pem"));
    let wechat_key = fx("wechat", "v2_api.key");
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "alipay without app_id",
            vec!["alipay", "--private-key", &alipay_key],
            vec!["app_id"],
        ),
        (
            "alipay with an unreadable key",
            vec!["alipay", "--private-key", "/nope", "--param", "app_id=1"],
            vec!["/nope"],
        ),
        (
            "alipay with sign type MD5",
            vec![
                "alipay",
                "--private-key",
                &alipay_key,
                "--param",
                "app_id=1",
                "--sign-type",
                "MD5",
            ],
            vec!["MD5"],
        ),
        ("unionpay without merId", unionpay.to_vec(), vec!["merId"]),
        (
            "unionpay version 6.0.0",
            [
                &unionpay[..],
                &["--param", "merId=1", "--acp-version", "6.0.0"],
            ]
            .concat(),
            vec!["6.0.0"],
        ),
        (
            "jdpay with a PEM file as the DES key",
            vec![
                "jdpay",
                "--private-key",
                &dev_jd_private,
                "--des-key-file",
                &dev_jd_public,
                "--param",
                "merchant=1",
            ],
            vec!["jdpay_public.pem", "Base64"],
        ),
        (
            "wechat_v2 without mch_id",
            vec!["wechat_v2", "--api-key-file", &wechat_key],
            vec!["mch_id"],
        ),
        (
            "alipay_md5 without seller_id",
            vec!["alipay_md5", "--key-file", &md5_key],
            vec!["seller_id"],
        ),
        (
            "alipay_md5 in big5",
            vec![
                "alipay_md5",
                "--key-file",
                &md5_key,
                "--param",
                "seller_id=2088101122334455",
                "--charset",
                "big5",
            ],
            vec!["big5"],
        ),
        (
            "alipay_md5 with an unreadable key",
            vec![
                "alipay_md5",
                "--key-file",
                "/nope.key",
                "--param",
                "seller_id=2088101122334455",
            ],
            vec!["/nope.key"],
        ),
    ];
    for (what, args, wants) in cases {
        let (code, out, err) = sign(&args);
        assert_eq!(code, 1, "{what}: {err}");
        assert_eq!(out, "", "{what}: nothing to pipe");
        for want in wants {
            assert!(err.contains(want), "{what}: expected `{want}` in:\n{err}");
        }
    }
}

// === unionpay and jdpay ===

#[test]
fn check_names_unionpay_and_jdpay_key_problems() {
    let u = |n: &str| format!("{:?}", fixture_path("unionpay", n));
    let j = |n: &str| format!("{:?}", fixture_path("jdpay", n));
    let route = |name: &str, provider: &str, keys: String| {
        rule_text(
            name,
            &format!("/{name}"),
            provider,
            "",
            &format!("{keys}\n"),
        )
    };
    let rules = [
        // lines 10-12
        route(
            "u1",
            "unionpay",
            format!(
                "root_cert = \"../missing.pem\"\nmiddle_cert = {}\nverify_certs = [{}]",
                u("middle.pem"),
                j("des.key")
            ),
        ),
        // lines 22-23: a middle certificate the root did not issue
        route(
            "u2",
            "unionpay",
            format!(
                "root_cert = {}\nmiddle_cert = {}",
                u("acp_test_root.pem"),
                u("middle.pem")
            ),
        ),
        // line 33: root without middle
        route("u3", "unionpay", format!("root_cert = {}", u("root.pem"))),
        // lines 43-45
        route(
            "j1",
            "jdpay",
            format!(
                "merchant = \"1\"\ndes_key_file = {}\njd_public_key = {}",
                j("jd_test_public.pem"),
                j("jd_private.pem")
            ),
        ),
    ]
    .concat();
    expect_check_problem_lines(
        "UnionPay and JD Pay keys, all in one file",
        &rules,
        &[
            "r.toml:10: keys.root_cert `../missing.pem`: cannot read",
            "r.toml:12: keys.verify_certs",
            "not an X.509 certificate",
            "r.toml:23: keys.middle_cert",
            "not issued by root_cert",
            "r.toml:33: keys.middle_cert: version 5.1.0 needs both root_cert and middle_cert",
            "r.toml:44: keys.des_key_file",
            "not Base64",
            "r.toml:45: keys.jd_public_key",
            "this is a private key",
        ],
    );
}

#[test]
fn sign_unionpay_output_verifies_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("pub.pem");
    let cert = dev("unionpay_sign.pem");
    let pem = openssl_pipe(&["x509", "-pubkey", "-noout", "-in", &cert], b"");
    std::fs::write(&public, pem).unwrap();
    for (version, alg) in [("5.1.0", "-sha256"), ("5.0.0", "-sha1")] {
        let out = sign_ok(
            version,
            &[
                "unionpay",
                "--private-key",
                &dev("unionpay_sign_key.pem"),
                "--cert",
                &cert,
                "--acp-version",
                version,
                "--param",
                "merId=777290058110097",
                "--param",
                "reqReserved=测试 1+1",
            ],
        );
        let scheme = RsaForm {
            signature: "signature",
            unsigned: &["signature"],
            keep_empty: true,
            alg,
            over_hex_digest: true,
            public: &public,
        };
        let fields = verify_rsa_form(version, &out, &scheme);
        assert_eq!(field(&fields, "version"), version.as_bytes());
        if version == "5.1.0" {
            assert!(
                field(&fields, "signPubKeyCert").starts_with(b"-----BEGIN CERTIFICATE-----\r\n"),
                "CRLF like UnionPay"
            );
        } else {
            assert_eq!(field(&fields, "certId"), b"268435457");
        }
    }
}

#[test]
fn sign_unionpay_refuses_a_certificate_of_another_key() {
    // Signed with one key under another key's certificate, every sample
    // would be refused by the gateway (401) for a reason of the tool's.
    let cert = dev("unionpay_sign.pem");
    for version in ["5.1.0", "5.0.0"] {
        let (code, out, err) = sign(&[
            "unionpay",
            "--private-key",
            &dev("alipay_private.pem"),
            "--cert",
            &cert,
            "--acp-version",
            version,
            "--param",
            "merId=777290058110097",
        ]);
        assert_eq!((code, out.as_str()), (1, ""), "{version}: {err}");
        assert!(
            err.contains("unionpay_sign.pem: its public key is not the one of --private-key"),
            "{version}: {err}"
        );
    }
}

#[test]
fn sign_jdpay_output_decrypts_and_verifies_with_openssl() {
    let out = sign_ok(
        "jdpay",
        &[
            "jdpay",
            "--private-key",
            &dev("jdpay_private.pem"),
            "--des-key-file",
            &dev("jdpay_des.key"),
            "--param",
            "merchant=110000000001",
            "--param",
            "amount=8888",
        ],
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let a = out.find("<encrypt>").unwrap() + 9;
    let b = out.find("</encrypt>").unwrap();
    let cipher = hex::decode(b64.decode(&out[a..b]).unwrap()).unwrap();
    let key = b64
        .decode(
            std::fs::read_to_string(dev("jdpay_des.key"))
                .unwrap()
                .trim(),
        )
        .unwrap();
    let plain = openssl_pipe(
        &["enc", "-d", "-des-ede3", "-nopad", "-K", &hex::encode(key)],
        &cipher,
    );
    let n = u32::from_be_bytes(plain[..4].try_into().unwrap()) as usize;
    let xml = String::from_utf8(plain[4..4 + n].to_vec()).unwrap();
    assert!(xml.contains("<merchant>110000000001</merchant>"), "{xml}");
    assert!(xml.contains("<amount>8888</amount>"), "{xml}");
    let (s, e) = (xml.find("<sign>").unwrap(), xml.rfind("</sign>").unwrap());
    let signed = format!("{}{}", &xml[..s], &xml[e + 7..]);
    let want = openssl_dgst_hex(&["-sha256"], signed.as_bytes()).into_bytes();
    let dir = tempfile::tempdir().unwrap();
    let sig = dir.path().join("sig");
    std::fs::write(&sig, b64.decode(&xml[s + 6..e]).unwrap()).unwrap();
    let recovered = openssl_pipe(
        &[
            "pkeyutl",
            "-verifyrecover",
            "-pubin",
            "-inkey",
            &dev("jdpay_public.pem"),
            "-in",
            sig.to_str().unwrap(),
            "-pkeyopt",
            "rsa_padding_mode:pkcs1",
        ],
        b"",
    );
    assert_eq!(recovered, want);
}

// === run ===

/// Starts `callgate run --log-format json` (a [`GatewayProcess`]) with one
/// Alipay route to `up`; `watch` turns the rule file watcher on or off.
/// The directory lives as long as the process needs it.
fn start_alipay_process(up: &Upstream, watch: bool) -> (tempfile::TempDir, GatewayProcess) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(up)]);
    spec.watch = watch;
    let config = spec.write(dir.path());
    let run = GatewayProcess::start(&config);
    (dir, run)
}

/// POSTs the Alipay fixture `name` as a form to `path` on the process's
/// listener, with `headers` besides the content type.
async fn post_alipay_to(
    run: &GatewayProcess,
    path: &str,
    name: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let url = format!("http://{}{path}", run.addr);
    let headers = [
        &[("content-type", "application/x-www-form-urlencoded")],
        headers,
    ]
    .concat();
    TestClient::new()
        .send("POST", &url, &headers, fixture("alipay", name))
        .await
}

/// The sample `name{labels}` from the process's `/metrics`.
async fn process_metric(run: &GatewayProcess, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let url = format!("http://{}/metrics", run.admin);
    let text = TestClient::new()
        .send("GET", &url, &[], vec![])
        .await
        .text();
    find_metric(&text, name, labels)
}

/// One reload so far ended in `result`, and the last one's success gauge
/// reads `last_successful`.
async fn assert_one_reload(run: &GatewayProcess, result: &str, last_successful: f64) {
    let total = "callgate_rules_reload_total";
    assert_eq!(
        process_metric(run, total, &[("result", result)]).await,
        Some(1.0),
        "{total}{{result={result}}}"
    );
    assert_eq!(
        process_metric(run, "callgate_rules_last_reload_successful", &[]).await,
        Some(last_successful),
        "after a reload ending in {result}"
    );
}

/// Every line the process wrote so far is one JSON object.
fn assert_json_logs(run: &GatewayProcess) {
    for line in &run.seen {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object()),
            "not a JSON log line: {line}"
        );
    }
}

/// The next `notification` log line.
fn next_notification(run: &mut GatewayProcess) -> serde_json::Value {
    run.wait_for(|v| v["message"] == "notification")
}

#[tokio::test(flavor = "multi_thread")]
async fn run_logs_one_json_line_per_notification_and_never_secrets() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let (_dir, mut run) = start_alipay_process(&up, true);
    let ok = post_alipay_to(&run, "/notify/alipay", "rsa2_trade_success.form", &[]).await;
    assert_eq!(ok.status, 200);
    let bad = post_alipay_to(&run, "/notify/alipay", "rsa2_wrong_key.form", &[]).await;
    assert_eq!(bad.status, 401);

    let line = next_notification(&mut run);
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/notify/alipay");
    assert_eq!(line["route"], "shop-alipay");
    assert_eq!(line["provider"], "alipay");
    assert_eq!(line["outcome"], "forwarded");
    assert_eq!(line["status"], 200);
    assert_eq!(line["event_id"], "2026112200222000000000000000000001");
    assert!(line["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    let bad = next_notification(&mut run);
    assert_eq!(bad["outcome"], "bad_signature");
    assert_eq!(bad["level"], "WARN");
    assert!(bad["reason"].as_str().unwrap().contains("signature"));

    assert_json_logs(&run);
    let all = run.seen.join("\n");
    let text = String::from_utf8(fixture("alipay", "rsa2_trade_success.form")).unwrap();
    let sign = text
        .split('&')
        .find_map(|p| p.strip_prefix("sign="))
        .unwrap();
    assert!(!all.contains(&sign[..40]), "a signature reached the log");
    assert!(
        !all.contains(SECRET.trim()),
        "the upstream secret reached the log"
    );
    assert!(
        !all.contains("2088102177846880"),
        "a buyer id reached the log"
    );
}

/// `callgate run` turns transparent huge pages off for itself (prctl
/// `PR_SET_THP_DISABLE`, shown as `THP_enabled: 0` in /proc/PID/status):
/// mimalloc madvises its arenas for them, and each new 2 MiB page was
/// zeroed inside one request's page fault.
#[tokio::test(flavor = "multi_thread")]
async fn run_turns_transparent_huge_pages_off_for_itself() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let (_dir, run) = start_alipay_process(&up, false);
    let status = std::fs::read_to_string(format!("/proc/{}/status", run.child.id())).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "/proc/PID/status:\n{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_log_line_names_method_path_and_a_request_id_the_shop_also_gets() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let (_dir, mut run) = start_alipay_process(&up, true);

    // A notify URL registered with a typo: the 404's line says which path.
    let typo = "/notify/alipya?charset=utf-8";
    let r = post_alipay_to(&run, typo, "rsa2_trade_success.form", &[]).await;
    assert_eq!(r.status, 404);
    let lost = next_notification(&mut run);
    assert_eq!(lost["outcome"], "not_found");
    assert_eq!(lost["method"], "POST");
    assert_eq!(
        lost["path"], "/notify/alipya",
        "the query string is not logged"
    );
    assert_eq!(lost["route"], "-");
    let lost_id = lost["request_id"].as_str().unwrap().to_owned();
    assert_eq!(lost_id.len(), 16, "{lost}");

    // A GET where a POST belongs.
    let url = format!("http://{}/notify/alipay", run.addr);
    assert_eq!(
        TestClient::new()
            .send("GET", &url, &[], vec![])
            .await
            .status,
        405
    );
    let get = next_notification(&mut run);
    assert_eq!(
        (get["method"].as_str(), get["path"].as_str()),
        (Some("GET"), Some("/notify/alipay"))
    );

    // A delivery: the shop gets the same id the log line carries.
    // A caller cannot choose the id.
    let forged = [("x-callgate-request-id", "forged")];
    let sent = post_alipay_to(&run, "/notify/alipay", "rsa2_trade_success.form", &forged).await;
    assert_eq!(sent.status, 200);
    let got = up.next().await;
    let line = next_notification(&mut run);
    assert_eq!(line["outcome"], "forwarded");
    let id = line["request_id"].as_str().unwrap();
    assert_eq!(
        got.headers.get_all("x-callgate-request-id").iter().count(),
        1
    );
    assert_eq!(got.headers["x-callgate-request-id"], id);
    assert_ne!(id, lost_id, "each request has its own id");
    assert_ne!(id, get["request_id"].as_str().unwrap());
    assert_json_logs(&run);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_and_a_broken_file_keeps_the_running_rules() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    // SIGHUP alone: the file watcher would also reload on these edits.
    let (dir, mut run) = start_alipay_process(&up, false);

    // Broken: the old route keeps working.
    let rules = dir.path().join("rules/routes.toml");
    let good = std::fs::read_to_string(&rules).unwrap();
    std::fs::write(
        &rules,
        good.replace("provider = \"alipay\"", "provider = \"alipay\"\nbogus = 1"),
    )
    .unwrap();
    run.signal("-HUP");
    let refused = run.wait_for(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("reload refused"))
    });
    assert!(
        refused["problem"]
            .as_str()
            .unwrap()
            .contains("routes.toml:5: unknown field `bogus`"),
        "{refused}"
    );
    // Failing now, and for as long as the file stays broken.
    assert_one_reload(&run, "error", 0.0).await;
    let r = post_alipay_to(&run, "/notify/alipay", "rsa2_trade_success.form", &[]).await;
    assert_eq!(r.status, 200);

    // Fixed, with the route moved: the new path answers, the old one is gone.
    std::fs::write(&rules, good.replace("/notify/alipay", "/notify/v2/alipay")).unwrap();
    run.signal("-HUP");
    run.wait_for(|v| v["message"] == "rules reloaded");
    assert_one_reload(&run, "ok", 1.0).await;
    let old = post_alipay_to(&run, "/notify/alipay", "rsa2_trade_success_2.form", &[]).await;
    assert_eq!(old.status, 404);
    let new = post_alipay_to(&run, "/notify/v2/alipay", "rsa2_trade_success_2.form", &[]).await;
    assert_eq!(new.status, 200);
    assert_json_logs(&run);
}

/// Replay state is keyed by route name: a reload that renames the route
/// serving a path forgets the events it delivered, and a platform's retry
/// of one is forwarded again. The reload still applies (refusing it would
/// not bring the old namespace back), but it says so, naming both names,
/// before "rules reloaded"; before, nothing was said.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_renames_a_route_warns_that_its_delivered_events_are_forgotten() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let (dir, mut run) = start_alipay_process(&up, false);
    let r = post_alipay_to(&run, "/notify/alipay", "rsa2_trade_success.form", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(next_notification(&mut run)["outcome"], "forwarded");

    let rules = dir.path().join("rules/routes.toml");
    let good = std::fs::read_to_string(&rules).unwrap();
    let renamed = good.replace("name = \"shop-alipay\"", "name = \"shop-alipay-v2\"");
    assert_ne!(renamed, good);
    std::fs::write(&rules, renamed).unwrap();
    run.signal("-HUP");
    let said = run.wait_for(|v| {
        v["message"] == "rules reloaded"
            || v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("route renamed"))
    });
    assert_eq!(said["level"], "WARN", "{said}");
    assert_eq!(said["path"], "/notify/alipay", "{said}");
    assert_eq!(said["was"], "shop-alipay", "{said}");
    assert_eq!(said["route"], "shop-alipay-v2", "{said}");
    assert_eq!(said["fix"], "replay_namespace = \"shop-alipay\"", "{said}");
    run.wait_for(|v| v["message"] == "rules reloaded");

    // What the warning is about: the retry is forwarded a second time.
    let again = post_alipay_to(&run, "/notify/alipay", "rsa2_trade_success.form", &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(next_notification(&mut run)["outcome"], "forwarded");

    // An unchanged reload says nothing of the kind.
    run.signal("-HUP");
    let next = run.wait_for(|v| {
        v["message"] == "rules reloaded"
            || v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("route renamed"))
    });
    assert_eq!(next["message"], "rules reloaded", "{next}");
    assert_json_logs(&run);

    // A restart with the old name's deliveries in the journal says so too.
    run.signal("-TERM");
    let _ = run.child.wait();
    let config = dir.path().join("callgate.toml");
    let renamed_again = std::fs::read_to_string(&rules)
        .unwrap()
        .replace("name = \"shop-alipay-v2\"", "name = \"shop-alipay-v3\"");
    std::fs::write(&rules, renamed_again).unwrap();
    let restarted = GatewayProcess::start(&config);
    let said: Vec<serde_json::Value> = restarted
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("the journal holds deliveries of a route no longer"))
        })
        .collect();
    let named: Vec<(&str, u64)> = said
        .iter()
        .filter_map(|v| Some((v["route"].as_str()?, v["events"].as_u64()?)))
        .collect();
    assert_eq!(
        named,
        [("shop-alipay", 1), ("shop-alipay-v2", 1)],
        "{}",
        restarted.seen.join("\n")
    );
}

/// The journal's records of the process's directory, parsed.
fn journal_records(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

/// Whether a log line is one of the warnings that a route's delivered
/// events are forgotten (reload or start).
fn forgets(v: &serde_json::Value) -> bool {
    v["message"].as_str().is_some_and(|m| {
        m.starts_with("route renamed")
            || m.starts_with("replay namespace changed")
            || m.starts_with("the journal holds deliveries of a route no longer")
    })
}

/// A route renamed with `replay_namespace = "<old name>"` keeps what it
/// delivered: the platform's retry of an event delivered before the rename
/// is a duplicate (200 and the success ack, not forwarded) after SIGHUP
/// and after a restart (the memory store warmed from the journal, which
/// holds records from before and after the rename), and neither says the
/// events are forgotten. Records of a route without the key carry no
/// `namespace` (the journal format is as before); records of the renamed
/// route carry it. Before, the retry was forwarded a second time.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_renamed_with_its_old_replay_namespace_still_knows_what_it_delivered() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let (dir, mut run) = start_alipay_process(&up, false);
    let r = post_alipay_to(&run, "/notify/alipay", "rsa2_trade_success.form", &[]).await;
    r.assert_is(200, "success", "the first delivery");
    assert_eq!(next_notification(&mut run)["outcome"], "forwarded");
    assert_eq!(up.count(), 1);

    let rules = dir.path().join("rules/routes.toml");
    let good = std::fs::read_to_string(&rules).unwrap();
    let renamed = good.replace(
        "name = \"shop-alipay\"",
        "name = \"shop-alipay-v2\"\nreplay_namespace = \"shop-alipay\"",
    );
    assert_ne!(renamed, good);
    std::fs::write(&rules, renamed).unwrap();
    run.signal("-HUP");
    let said = run.wait_for(|v| v["message"] == "rules reloaded" || forgets(v));
    assert_eq!(said["message"], "rules reloaded", "{said}");

    let again = post_alipay_to(&run, "/notify/alipay", "rsa2_trade_success.form", &[]).await;
    again.assert_is(200, "success", "the retry after the rename");
    let line = next_notification(&mut run);
    assert_eq!(line["outcome"], "duplicate", "{line}");
    // Logs and metrics still name the route by its name.
    assert_eq!(line["route"], "shop-alipay-v2", "{line}");
    assert_eq!(up.count(), 1, "the retry reached the shop again");

    // An event delivered after the rename, journaled with the namespace.
    let second = post_alipay_to(&run, "/notify/alipay", "rsa2_trade_success_2.form", &[]).await;
    second.assert_is(200, "success", "a new event after the rename");
    assert_eq!(next_notification(&mut run)["outcome"], "forwarded");
    assert_eq!(up.count(), 2);

    run.signal("-TERM");
    let _ = run.child.wait();
    let records = journal_records(dir.path());
    let of = |route: &str| -> Vec<&serde_json::Value> {
        records.iter().filter(|r| r["route"] == route).collect()
    };
    let (before, after) = (of("shop-alipay"), of("shop-alipay-v2"));
    assert_eq!((before.len(), after.len()), (2, 2), "{records:?}");
    assert!(
        before.iter().all(|r| r.get("namespace").is_none()),
        "{before:?}"
    );
    assert!(
        after.iter().all(|r| r["namespace"] == "shop-alipay"),
        "{after:?}"
    );

    let restarted = GatewayProcess::start(&dir.path().join("callgate.toml"));
    let warned: Vec<&String> = restarted
        .seen
        .iter()
        .filter(|l| serde_json::from_str(l).is_ok_and(|v| forgets(&v)))
        .collect();
    assert!(warned.is_empty(), "{warned:?}");
    let mut run = restarted;
    for name in ["rsa2_trade_success.form", "rsa2_trade_success_2.form"] {
        let r = post_alipay_to(&run, "/notify/alipay", name, &[]).await;
        r.assert_is(200, "success", name);
        let line = next_notification(&mut run);
        assert_eq!(
            line["outcome"], "duplicate",
            "{name} after the restart: {line}"
        );
    }
    assert_eq!(
        up.count(),
        2,
        "a retry reached the shop again after the restart"
    );
    assert_json_logs(&run);
}

/// Rewrites the process's rule file with `edit` of what it holds, sends
/// SIGHUP and returns the first line that is a warning that delivered
/// events are forgotten or "rules reloaded", whichever comes first.
fn reload_with(
    run: &mut GatewayProcess,
    rules: &Path,
    edit: impl FnOnce(&str) -> String,
) -> serde_json::Value {
    let text = std::fs::read_to_string(rules).unwrap();
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(rules, edited).unwrap();
    run.signal("-HUP");
    run.wait_for(|v| v["message"] == "rules reloaded" || forgets(v))
}

/// A reload that keeps a route's name and path but changes its
/// `replay_namespace` forgets what the route delivered just as a rename
/// does, and says so, with both namespaces and the line that keeps them.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_changes_a_routes_replay_namespace_warns() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let (dir, mut run) = start_alipay_process(&up, false);
    let r = post_alipay_to(&run, "/notify/alipay", "rsa2_trade_success.form", &[]).await;
    r.assert_is(200, "success", "the first delivery");
    assert_eq!(next_notification(&mut run)["outcome"], "forwarded");

    let rules = dir.path().join("rules/routes.toml");
    let said = reload_with(&mut run, &rules, |t| {
        t.replace(
            "name = \"shop-alipay\"",
            "name = \"shop-alipay\"\nreplay_namespace = \"shop-alipay-2\"",
        )
    });
    assert_eq!(said["level"], "WARN", "{said}");
    assert!(
        said["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("replay namespace changed")),
        "{said}"
    );
    assert_eq!(said["path"], "/notify/alipay", "{said}");
    assert_eq!(said["route"], "shop-alipay", "{said}");
    assert_eq!(said["was_namespace"], "shop-alipay", "{said}");
    assert_eq!(said["namespace"], "shop-alipay-2", "{said}");
    assert_eq!(said["fix"], "replay_namespace = \"shop-alipay\"", "{said}");
    run.wait_for(|v| v["message"] == "rules reloaded");

    // What the warning is about: the retry is forwarded a second time.
    let again = post_alipay_to(&run, "/notify/alipay", "rsa2_trade_success.form", &[]).await;
    again.assert_is(200, "success", "the retry");
    assert_eq!(next_notification(&mut run)["outcome"], "forwarded");
    assert_eq!(up.count(), 2);
    assert_json_logs(&run);
}

/// A route renamed and moved to another path in one reload cannot be
/// paired by its path: it is paired by its provider and merchant, as its
/// replay state is that merchant's. The reload warns as for a rename, with
/// both names and paths and the line that keeps the events; adding a
/// route for the same merchant, or removing one, says nothing. Before,
/// the rename and move said nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_renames_and_moves_a_route_warns_by_its_merchant() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let (dir, mut run) = start_alipay_process(&up, false);
    let r = post_alipay_to(&run, "/notify/alipay", "rsa2_trade_success.form", &[]).await;
    r.assert_is(200, "success", "the first delivery");
    assert_eq!(next_notification(&mut run)["outcome"], "forwarded");

    let rules = dir.path().join("rules/routes.toml");
    let moved = |t: &str, name: &str, path: &str| {
        t.replace("name = \"shop-alipay\"", &format!("name = \"{name}\""))
            .replace("path = \"/notify/alipay\"", &format!("path = \"{path}\""))
    };
    let said = reload_with(&mut run, &rules, |t| {
        moved(t, "shop-alipay-v2", "/notify/v2/alipay")
    });
    assert_eq!(said["level"], "WARN", "{said}");
    assert!(
        said["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("route renamed and moved")),
        "{said}"
    );
    assert_eq!(said["was"], "shop-alipay", "{said}");
    assert_eq!(said["was_path"], "/notify/alipay", "{said}");
    assert_eq!(said["route"], "shop-alipay-v2", "{said}");
    assert_eq!(said["path"], "/notify/v2/alipay", "{said}");
    assert_eq!(said["fix"], "replay_namespace = \"shop-alipay\"", "{said}");
    run.wait_for(|v| v["message"] == "rules reloaded");

    // What the warning is about: the retry at the new path is forwarded
    // a second time.
    let again = post_alipay_to(&run, "/notify/v2/alipay", "rsa2_trade_success.form", &[]).await;
    again.assert_is(200, "success", "the retry at the new path");
    assert_eq!(next_notification(&mut run)["outcome"], "forwarded");

    // Another route for the same merchant beside it: nothing is forgotten.
    let said = reload_with(&mut run, &rules, |t| {
        let v2 = t.to_owned();
        let extra = v2
            .replace("name = \"shop-alipay-v2\"", "name = \"shop-alipay-extra\"")
            .replace("path = \"/notify/v2/alipay\"", "path = \"/notify/extra\"");
        format!("{v2}\n{extra}")
    });
    assert_eq!(said["message"], "rules reloaded", "{said}");
    // The first of the two removed: what it delivered is gone with it, and
    // no other route takes its place.
    let said = reload_with(&mut run, &rules, |t| {
        let at = t.rfind("[[route]]").unwrap();
        t[at..].to_owned()
    });
    assert_eq!(said["message"], "rules reloaded", "{said}");
    assert_json_logs(&run);
}

/// Two routes that share a replay namespace (one merchant served at two
/// paths) deliver an event once: the copy posted to the other path is a
/// duplicate. `check` accepts them and says, at the second route's line,
/// that the two share replay state. Before, the key was refused, and each
/// route delivered the event.
#[tokio::test(flavor = "multi_thread")]
async fn two_routes_sharing_a_replay_namespace_deliver_an_event_once() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let other = RouteSpec::alipay(&up).with(|r| {
        r.name = "shop-alipay-b".into();
        r.path = "/notify/alipay-b".into();
        r.extra = "replay_namespace = \"shop-alipay\"\n".into();
    });
    let dir = tempfile::tempdir().unwrap();
    let config = GatewaySpec::new(vec![RouteSpec::alipay(&up), other]).write(dir.path());
    let (code, out, err) = callgate_cli(&["check"], &config);
    assert_eq!(code, 0, "{out}{err}");
    let note = err
        .lines()
        .find(|l| l.contains("shares replay namespace `shop-alipay` with route `shop-alipay`"))
        .unwrap_or_else(|| panic!("no note that the routes share replay state:\n{err}"));
    let rules = std::fs::read_to_string(dir.path().join("rules/routes.toml")).unwrap();
    let line = rules
        .lines()
        .position(|l| l.starts_with("replay_namespace"))
        .unwrap()
        + 1;
    assert!(
        note.contains(&format!(
            "routes.toml:{line}: warning: route `shop-alipay-b`"
        )),
        "{note}"
    );

    let mut run = GatewayProcess::start(&config);
    let first = post_alipay_to(&run, "/notify/alipay", "rsa2_trade_success.form", &[]).await;
    first.assert_is(200, "success", "the event on the first path");
    assert_eq!(next_notification(&mut run)["outcome"], "forwarded");
    let copy = post_alipay_to(&run, "/notify/alipay-b", "rsa2_trade_success.form", &[]).await;
    copy.assert_is(200, "success", "the same event on the second path");
    let line = next_notification(&mut run);
    assert_eq!(line["outcome"], "duplicate", "{line}");
    assert_eq!(line["route"], "shop-alipay-b", "{line}");
    assert_eq!(up.count(), 1, "the event reached the shop once per route");
}

/// `check` refuses a replay namespace that is empty, blank, holds a space,
/// a control character or a brace (a Redis Cluster hash tag), each at its
/// own line, all at once.
#[test]
fn check_refuses_a_blank_replay_namespace_at_its_line() {
    let up_url = "http://127.0.0.1:9/";
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        "\"\"",
        "\"  \"",
        "\"shop alipay\"",
        "\"shop\\talipay\"",
        "\"}shop\"",
    ];
    let routes: Vec<RouteSpec> = bad
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            RouteSpec::new(
                "alipay",
                &format!("/notify/alipay-{i}"),
                format!(
                    "public_key = {:?}\napp_id = \"2021000000000001\"\n",
                    fixture_path("alipay", "alipay_public.pem")
                ),
            )
            .with(|r| {
                r.name = format!("shop-{i}");
                r.upstream = up_url.into();
                r.extra = format!("replay_namespace = {ns}\n");
            })
        })
        .collect();
    let config = GatewaySpec::new(routes).write(dir.path());
    let (code, out, err) = callgate_cli(&["check"], &config);
    assert_eq!(code, 1, "{out}{err}");
    let rules = std::fs::read_to_string(dir.path().join("rules/routes.toml")).unwrap();
    let lines: Vec<usize> = rules
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("replay_namespace"))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(lines.len(), bad.len());
    for line in lines {
        assert!(
            err.lines().any(
                |l| l.contains(&format!("routes.toml:{line}: replay_namespace"))
                    && l.contains("must not be empty")
            ),
            "line {line} not reported:\n{err}"
        );
    }
    assert!(!err.contains('\t'), "a control character was echoed: {err}");
}

/// stdout on a device that is always full (`/dev/full`: every write fails
/// with ENOSPC, as a log file on a full disk does): the lines are dropped,
/// and stderr says so once. Before, the failure went unsaid.
#[test]
fn log_lines_stdout_refuses_are_dropped_and_said_on_stderr() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = GatewaySpec::new(vec![]);
    spec.watch = false;
    let config = spec.write(dir.path());
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["run", "--log-format", "json", "-c"])
        .arg(&config)
        .stdout(full)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let said = loop {
        let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(60)) else {
            break None;
        };
        if line.starts_with("callgate: cannot write log lines to stdout") {
            break Some(line);
        }
        seen.push(line);
    };
    let _ = child.kill();
    let _ = child.wait();
    let said = said.unwrap_or_else(|| panic!("nothing said on stderr; got:\n{}", seen.join("\n")));
    assert!(said.contains("No space left on device"), "{said}");
}

/// SIGUSR1, which a logrotate `postrotate` copied from nginx sends to
/// "reopen the logs", is answered with a warning and nothing else: the
/// gateway keeps serving. Before, its default action killed the process.
#[tokio::test(flavor = "multi_thread")]
async fn sigusr1_from_a_copied_logrotate_script_warns_and_keeps_serving() {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let (_dir, mut run) = start_alipay_process(&up, false);
    // SIGUSR2, nginx's binary upgrade, the same: its default action killed
    // the process without a drain.
    for (signal, fixture) in [
        ("USR1", "rsa2_trade_success.form"),
        ("USR2", "rsa2_trade_success_2.form"),
    ] {
        run.signal(&format!("-{signal}"));
        let ignored = format!("SIG{signal} ignored");
        let said = run.wait_for(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&ignored))
        });
        assert_eq!(said["level"], "WARN", "{said}");
        let r = post_alipay_to(&run, "/notify/alipay", fixture, &[]).await;
        r.assert_is(200, "success", format!("after SIG{signal}"));
        assert_eq!(next_notification(&mut run)["outcome"], "forwarded");
    }
}

/// Longer than any clock or timer can add: `u64::MAX` seconds.
const OVERFLOWING: &str = "18446744073709551615s";

/// A duration so long that adding it to a clock or to another duration
/// overflows is a problem with its line: `check` used to panic on it in a
/// rule (exit 101, no location), accept it in the gateway file (then
/// `run` panicked at SIGTERM instead of draining), and a SIGHUP reading it
/// killed the running gateway instead of keeping the running rules.
#[tokio::test(flavor = "multi_thread")]
async fn a_duration_too_long_to_compute_with_is_a_problem_not_a_crash() {
    let max_age = format!("provider = \"alipay\"\nmax_age = \"{OVERFLOWING}\"");
    expect_check_problems(vec![(
        "max_age",
        good_route("a", "/notify/a").replace("provider = \"alipay\"", &max_age),
        "r.toml:5: route `a`: max_age: invalid duration",
    )]);
    let dir = config_with_rules(&good_route("a", "/notify/a"));
    for key in ["drain_timeout", "upstream_timeout", "header_timeout"] {
        let original = std::fs::read_to_string(dir.path().join("callgate.toml")).unwrap();
        let edited = original
            .lines()
            .map(|l| match l.starts_with(&format!("{key} = ")) {
                true => format!("{key} = \"{OVERFLOWING}\""),
                false => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(edited, original, "{key} not in the gateway file");
        std::fs::write(dir.path().join("callgate.toml"), &edited).unwrap();
        let (code, out) = check(dir.path());
        assert_eq!(code, 1, "{key}: {out}");
        assert!(
            out.contains("callgate.toml:") && out.contains("invalid duration"),
            "{key}: {out}"
        );
        std::fs::write(dir.path().join("callgate.toml"), original).unwrap();
    }

    // A running gateway keeps its rules.
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let (dir, mut run) = start_alipay_process(&up, false);
    let rules = dir.path().join("rules/routes.toml");
    let good = std::fs::read_to_string(&rules).unwrap();
    assert!(good.contains("max_age = "), "{good}");
    let broken = good
        .lines()
        .map(|l| match l.starts_with("max_age = ") {
            true => format!("max_age = \"{OVERFLOWING}\""),
            false => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&rules, broken).unwrap();
    run.signal("-HUP");
    let refused = run.wait_for(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("reload refused"))
    });
    assert!(
        refused["problem"]
            .as_str()
            .is_some_and(|p| p.contains("routes.toml:") && p.contains("invalid duration")),
        "{refused}"
    );
    assert_one_reload(&run, "error", 0.0).await;
    let r = post_alipay_to(&run, "/notify/alipay", "rsa2_trade_success.form", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_notifications_then_exits_0() {
    let gate = Arc::new(Notify::new());
    let up = Upstream::start(Behaviour::Hold(gate.clone())).await;
    let (_dir, mut run) = start_alipay_process(&up, true);
    let url = format!("http://{}/notify/alipay", run.addr);
    let admin = format!("http://{}/readyz", run.admin);
    let pending = tokio::spawn(async move {
        TestClient::new()
            .send(
                "POST",
                &url,
                &[("content-type", "application/x-www-form-urlencoded")],
                fixture("alipay", "rsa2_trade_success.form"),
            )
            .await
    });
    up.next().await; // in flight at the upstream
    run.signal("-TERM");
    run.wait_for(|v| v["message"] == "draining");
    assert_eq!(
        TestClient::new()
            .send("GET", &admin, &[], vec![])
            .await
            .status,
        503,
        "readyz while draining"
    );
    gate.notify_one();
    let reply = pending.await.unwrap();
    assert_eq!((reply.status, reply.text().as_str()), (200, "success"));
    run.wait_for(|v| v["message"] == "callgate stopped");
    let status = run.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_json_logs(&run);
}

// === WeChat Pay ===

/// A wechat_v3 rule with the given `platform_keys` body and APIv3 key file.
fn wechat_v3_rule(platform_keys: &str, api_v3_key: &Path) -> String {
    let keys = format!(
        "mch_id = \"1900000109\"\napi_v3_key_file = {api_v3_key:?}\nplatform_keys = [\n{platform_keys}\n]\n"
    );
    rule_text("v3", "/v3", "wechat_v3", "\"127.0.0.1/32\"", &keys)
}

#[test]
fn check_names_wechat_key_problems() {
    let good_key = fixture_path("wechat", "v3_api_v3.key");
    let expired = wechat_v3_rule(
        &format!(
            "{{ serial = \"3E1D0A0B0C0D0E0F101112131415161718191A1B\", certificate = {:?} }},",
            fixture_path("wechat", "expired_cert.pem")
        ),
        &good_key,
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired certificate",
            expired.clone(),
            "r.toml:13: keys.platform_keys `",
        ),
        (
            "expired certificate, in the key lifecycle's words",
            expired.clone(),
            "`: certificate 3E1D0A0B0C0D0E0F101112131415161718191A1B (`CN=",
        ),
        (
            "expired certificate: when and what to do",
            expired.clone(),
            "expired on 2021-01-01 00:00:00 UTC; WeChat Pay no longer signs with it: remove this entry",
        ),
        (
            "serial does not match the certificate",
            wechat_v3_rule(
                &format!(
                    "{{ serial = \"ABCDEF\", certificate = {:?} }},",
                    fixture_path("wechat", "platform_cert.pem")
                ),
                &good_key,
            ),
            "r.toml:13: keys.platform_keys: serial `ABCDEF` does not match certificate",
        ),
        (
            "public key without a PUB_KEY_ID_ id",
            wechat_v3_rule(
                &format!(
                    "{{ serial = \"5157F09EFDC096DE15EBE81A47057A7232F1B8E1\", public_key = {:?} }},",
                    fixture_path("wechat", "pubkey_public.pem")
                ),
                &good_key,
            ),
            "must be the public key id `PUB_KEY_ID_...`",
        ),
        (
            "APIv3 key of the wrong length",
            wechat_v3_rule(
                &format!(
                    "{{ serial = \"PUB_KEY_ID_01\", public_key = {:?} }},",
                    fixture_path("wechat", "pubkey_public.pem")
                ),
                &fixture_path("wechat", "v2_api.key").with_file_name("v3_wechatpay_go.json"),
            ),
            "the APIv3 key must be exactly 32 bytes",
        ),
        (
            "no platform keys",
            wechat_v3_rule("", &good_key),
            "give at least one",
        ),
    ];
    expect_check_problems(cases);
}

#[test]
fn sign_wechat_v2_output_verifies_with_openssl() {
    let key_file = fx("wechat", "v2_api.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    let key = key.trim();
    for (sign_type, alg) in [
        (None, vec!["-md5"]),
        (Some("HMAC-SHA256"), vec!["-sha256", "-hmac", key]),
    ] {
        let what = sign_type.unwrap_or("MD5 by default");
        let mut args = vec!["wechat_v2", "--api-key-file", &key_file];
        args.extend(["--param", "mch_id=1900000109", "--param", "total_fee=8888"]);
        args.extend(["--param", "attach=a&b <c>"]);
        if let Some(t) = sign_type {
            args.extend(["--sign-type", t]);
        }
        let out = sign_ok(what, &args);
        // Read the fields back with a plain scan, not callgate's parser.
        let fields: Vec<(String, Vec<u8>)> = out
            .lines()
            .filter_map(|l| {
                let l = l.strip_prefix('<')?;
                let (name, rest) = l.split_once('>')?;
                let value = rest.strip_suffix(&format!("</{name}>"))?;
                let value = value
                    .strip_prefix("<![CDATA[")
                    .and_then(|v| v.strip_suffix("]]>"))
                    .unwrap_or(value);
                Some((name.to_owned(), value.as_bytes().to_vec()))
            })
            .collect();
        assert_eq!(field(&fields, "attach"), b"a&b <c>", "{what}");
        assert_eq!(
            fields.iter().any(|(k, _)| k == "sign_type"),
            sign_type.is_some(),
            "{what}: sign_type only when not MD5"
        );
        let suffix = format!("&key={key}");
        verify_keyed_digest(what, &fields, &["sign"], suffix.as_bytes(), &alg, true);
    }
}

/// `callgate sign wechat_v3` output, a `-H 'Name: value'` line then the
/// body: (headers, body).
fn split_curl_output(out: &str) -> (Vec<(String, String)>, &str) {
    let (headers, body) = out.trim_end().split_once('\n').unwrap();
    let headers = headers
        .split("-H '")
        .filter_map(|h| h.trim().strip_suffix('\''))
        .filter_map(|h| h.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (headers, body)
}

/// `callgate sign wechat_v3` args for `resource` signed with `key` (a
/// wechat fixture) as `serial`.
fn sign_wechat_v3(key: &str, serial: &str, resource: &str) -> String {
    sign_ok(
        "wechat_v3",
        &[
            "wechat_v3",
            "--private-key",
            &fx("wechat", key),
            "--serial",
            serial,
            "--api-v3-key-file",
            &fx("wechat", "v3_api_v3.key"),
            "--resource-json",
            resource,
        ],
    )
}

#[test]
fn sign_wechat_v3_output_verifies_with_openssl() {
    let out = sign_wechat_v3(
        "pubkey_private.pem",
        WECHAT_PUB_KEY_ID,
        r#"{"mchid":"1900000109","out_trade_no":"CG1","transaction_id":"42001","trade_state":"SUCCESS","amount":{"total":1}}"#,
    );
    let (headers, body) = split_curl_output(&out);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
    };
    assert_eq!(header("Wechatpay-Serial"), WECHAT_PUB_KEY_ID);
    let message = format!(
        "{}\n{}\n{body}\n",
        header("Wechatpay-Timestamp"),
        header("Wechatpay-Nonce")
    );
    assert_openssl_verifies(
        "wechat_v3",
        "-sha256",
        &fixture_path("wechat", "pubkey_public.pem"),
        header("Wechatpay-Signature").as_bytes(),
        message.as_bytes(),
    );
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["event_type"], "TRANSACTION.SUCCESS");
    assert_eq!(v["resource"]["algorithm"], "AEAD_AES_256_GCM");
    assert_eq!(v["resource"]["associated_data"], "transaction");
    assert_eq!(v["resource"]["nonce"].as_str().unwrap().len(), 12);
}

#[tokio::test]
async fn signed_wechat_samples_pass_the_gateway() {
    let up = Upstream::start(Behaviour::Reply(200, "ok")).await;
    let gw = TestGateway::start(GatewaySpec::new(vec![
        RouteSpec::wechat_v2(&up),
        RouteSpec::wechat_v3(&up),
    ]))
    .await;
    let appid = format!("appid={WECHAT_APPID}");
    let xml = sign_ok(
        "wechat_v2",
        &[
            "wechat_v2",
            "--api-key-file",
            &fx("wechat", "v2_api.key"),
            "--param",
            "mch_id=1900000109",
            "--param",
            &appid,
        ],
    );
    assert_eq!(gw.post_xml(xml.as_bytes()).await.status, 200);
    let out = sign_wechat_v3(
        "platform_private.pem",
        WECHAT_PLATFORM_SERIAL,
        r#"{"mchid":"1900000109","out_refund_no":"R1","refund_id":"503","refund_status":"SUCCESS","amount":{"refund":5}}"#,
    );
    let (headers, body) = split_curl_output(&out);
    let r = gw
        .send_owned("/notify/wechat-v3", &headers, body.as_bytes())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.count(), 2);
}

// === legacy Alipay (MD5) and Alipay certificate mode ===

/// Route `r1` at `/r1` of `provider` whose `[route.keys]` body (from line
/// 10 on) is `keys`.
fn route_with_keys(provider: &str, keys: &str) -> String {
    rule_text("r1", "/r1", provider, "\"110.75.0.0/16\"", keys)
}

fn md5_keys(extra: &str) -> String {
    format!(
        "partner = \"2088101122334455\"\nkey_file = {:?}\n{extra}",
        fixture_path("alipay_md5", "md5_key.txt")
    )
}

fn cert_keys(alipay_cert: &str, root: &str, extra: &str) -> String {
    format!(
        "app_id = \"2021000000000001\"\nalipay_cert = {:?}\nalipay_root_cert = {:?}\n{extra}",
        fixture_path("alipay_cert", alipay_cert),
        fixture_path("alipay_cert", root)
    )
}

/// The `app_cert` key line for the alipay_cert fixture `name`.
fn app_cert_key(name: &str) -> String {
    format!("app_cert = {:?}\n", fixture_path("alipay_cert", name))
}

#[test]
fn check_accepts_legacy_and_certificate_routes() {
    let rules = format!(
        "{}\n{}",
        route_with_keys(
            "alipay_md5",
            &md5_keys(
                "charset = \"gbk\"\nseller_email = \"shop@example.com\"\nnotify_verify_url = \"https://mapi.alipay.com/gateway.do\"\n"
            )
        ),
        route_with_keys(
            "alipay",
            &cert_keys(
                "alipayCertPublicKey_RSA2.crt",
                "alipayRootCert.crt",
                &app_cert_key("appCertPublicKey_2021000000000001.crt")
            )
        )
        .replace("\"r1\"", "\"r2\"")
        .replace("\"/r1\"", "\"/r2\""),
    );
    let dir = config_with_rules(&rules);
    expect_check_quiet(dir.path(), 2);
}

#[test]
fn check_names_legacy_and_certificate_key_problems() {
    let pem = fixture_path("alipay", "alipay_private.pem");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "partner is not a PID",
            route_with_keys(
                "alipay_md5",
                &md5_keys("").replace("2088101122334455", "12345"),
            ),
            "r.toml:10: keys.partner: `12345` is not a partner id (2088 and 12 more digits)",
        ),
        (
            "key file holds a PEM key",
            route_with_keys(
                "alipay_md5",
                &format!("partner = \"2088101122334455\"\nkey_file = {pem:?}\n"),
            ),
            "r.toml:11: keys.key_file `/",
        ),
        (
            "key file of another shape",
            route_with_keys(
                "alipay_md5",
                &format!(
                    "partner = \"2088101122334455\"\nkey_file = {:?}\n",
                    fixture_path("alipay", "alipay_public.b64")
                ),
            ),
            "expected the 32-character MD5 key (letters and digits) from Alipay's merchant console; the file holds 392 bytes",
        ),
        (
            "key file is not an MD5 key",
            route_with_keys(
                "alipay_md5",
                &format!("partner = \"2088101122334455\"\nkey_file = {pem:?}\n"),
            ),
            "bytes, starting with a PEM header",
        ),
        (
            "key file missing",
            route_with_keys(
                "alipay_md5",
                "partner = \"2088101122334455\"\nkey_file = \"../nope.key\"\n",
            ),
            "r.toml:11: keys.key_file `../nope.key`: cannot read the secret file: no such file",
        ),
        (
            "charset",
            route_with_keys("alipay_md5", &md5_keys("charset = \"big5\"\n")),
            "r.toml:12: keys.charset: `big5` is not \"utf-8\" or \"gbk\"",
        ),
        (
            "notify_verify_url with a query",
            route_with_keys(
                "alipay_md5",
                &md5_keys(
                    "notify_verify_url = \"https://mapi.alipay.com/gateway.do?service=notify_verify\"\n",
                ),
            ),
            "r.toml:12: keys.notify_verify_url: give the URL without a query",
        ),
        (
            "notify_verify_url not http",
            route_with_keys(
                "alipay_md5",
                &md5_keys("notify_verify_url = \"mapi.alipay.com\"\n"),
            ),
            "r.toml:12: keys.notify_verify_url: must start with http:// or https://",
        ),
        (
            "unknown md5 key",
            route_with_keys("alipay_md5", &md5_keys("sign_type = \"MD5\"\n")),
            "unknown field `sign_type`",
        ),
        (
            "untrusted Alipay certificate",
            route_with_keys(
                "alipay",
                &cert_keys(
                    "untrusted_alipayCertPublicKey_RSA2.crt",
                    "alipayRootCert.crt",
                    "",
                ),
            ),
            "untrusted_alipayCertPublicKey_RSA2.crt`: `CN=Alipay Test Public Key-2088101117955611,OU=Alipay,O=Callgate Test,C=CN` (through `CN=Somebody Else Root CA,O=Somebody Else,C=CN`) does not chain to alipay_root_cert",
        ),
        (
            "forged intermediate",
            route_with_keys(
                "alipay",
                &cert_keys(
                    "forged_alipayCertPublicKey_RSA2.crt",
                    "alipayRootCert.crt",
                    "",
                ),
            ),
            "r.toml:11: keys.alipay_cert",
        ),
        (
            "root file without an RSA root",
            route_with_keys(
                "alipay",
                &cert_keys("alipayCertPublicKey_RSA2.crt", "ec_root_ca.crt", ""),
            ),
            "no RSA-signed certificate in the file: give Alipay's alipayRootCert.crt",
        ),
        (
            "root file is a private key",
            route_with_keys(
                "alipay",
                &cert_keys("alipayCertPublicKey_RSA2.crt", "root_ca.key", ""),
            ),
            "r.toml:12: keys.alipay_root_cert",
        ),
        (
            "certificate file is not PEM",
            route_with_keys(
                "alipay",
                "app_id = \"2021000000000001\"\nalipay_cert = \"../not-a-key.txt\"\nalipay_root_cert = \"../not-a-key.txt\"\n",
            ),
            "r.toml:11: keys.alipay_cert `../not-a-key.txt`: no -----BEGIN CERTIFICATE----- block in the file",
        ),
        (
            "root missing",
            route_with_keys(
                "alipay",
                &format!(
                    "app_id = \"2021000000000001\"\nalipay_cert = {:?}\n",
                    fixture_path("alipay_cert", "alipayCertPublicKey_RSA2.crt")
                ),
            ),
            "keys.alipay_root_cert: missing: certificate mode needs alipay_cert (alipayCertPublicKey_RSA2.crt) and alipay_root_cert (alipayRootCert.crt)",
        ),
        (
            "public key and certificates",
            route_with_keys(
                "alipay",
                &cert_keys(
                    "alipayCertPublicKey_RSA2.crt",
                    "alipayRootCert.crt",
                    &format!(
                        "public_key = {:?}\n",
                        fixture_path("alipay", "alipay_public.pem")
                    ),
                ),
            ),
            "r.toml:13: keys.public_key: give either public_key or the certificate-mode keys",
        ),
        (
            "app certificate from another CA",
            route_with_keys(
                "alipay",
                &cert_keys(
                    "alipayCertPublicKey_RSA2.crt",
                    "alipayRootCert.crt",
                    &app_cert_key("untrusted_alipayCertPublicKey_RSA2.crt"),
                ),
            ),
            "r.toml:13: keys.app_cert",
        ),
    ];
    expect_check_problems(cases);
}

#[test]
fn check_loads_alipay_production_certificates_without_their_intermediates() {
    // Alipay's own production files (alipay-sdk-nodejs-all test fixtures):
    // each the leaf alone, issued by `Class 2 R1` and `Class 1 R1`, which
    // Alipay's production alipayRootCert.crt does not hold. The SDK uses
    // them; `check` used to refuse the route. Now it loads, and says that
    // the chain could not be checked.
    let rules = route_with_keys(
        "alipay",
        &format!(
            "app_id = \"2021001161683774\"\nalipay_cert = {:?}\nalipay_root_cert = {:?}\napp_cert = {:?}\n",
            fixture_path("alipay_cert", "node_sdk_alipayCertPublicKey_RSA2.crt"),
            fixture_path("alipay_cert", "yansongda_alipayRootCert.crt"),
            fixture_path(
                "alipay_cert",
                "node_sdk_appCertPublicKey_2021001161683774.crt"
            ),
        ),
    );
    let dir = config_with_rules(&rules);
    let err = expect_check_ok(dir.path(), 1);
    assert!(
        err.contains("r.toml:11: warning: keys.alipay_cert: cannot check that `CN=支付宝(中国)网络技术有限公司-2088831204659217,OU=Alipay,O=杭州焕旭信息技术有限公司,C=CN` chains to alipay_root_cert: its issuer `CN=Ant Financial Certification Authority Class 2 R1,OU=Certification Authority,O=Ant Financial,C=CN` is in neither file"),
        "{err}"
    );
    assert!(
        err.contains("r.toml:13: warning: keys.app_cert: cannot check that `CN=2088831204659217-2021001161683774,OU=Alipay,O=杭州焕旭信息技术有限公司,C=CN` chains to alipay_root_cert: its issuer `CN=Ant Financial Certification Authority Class 1 R1,OU=Certification Authority,O=Ant Financial,C=CN` is in neither file"),
        "{err}"
    );
}

#[test]
fn check_warns_about_an_expired_certificate_and_still_loads() {
    let rules = route_with_keys(
        "alipay",
        &cert_keys(
            "expired_alipayCertPublicKey_RSA2.crt",
            "alipayRootCert.crt",
            "",
        ),
    );
    let dir = config_with_rules(&rules);
    let err = expect_check_ok(dir.path(), 1);
    assert!(
        err.contains("r.toml:11: warning: keys.alipay_cert `"),
        "{err}"
    );
    assert!(err.contains("expired_alipayCertPublicKey_RSA2.crt`: certificate 0A (`CN=Alipay Test Public Key-2088101117955611,OU=Alipay,O=Callgate Test,C=CN`) expired on 2021-01-01 00:00:00 UTC; Alipay's SDK still verifies notifications with it and so does callgate"), "{err}");
}

#[test]
fn sign_alipay_md5_output_verifies_with_openssl() {
    let key_file = fx("alipay_md5", "md5_key.txt");
    let key = std::fs::read_to_string(&key_file).unwrap();
    for (charset, encoding) in [("utf-8", encoding_rs::UTF_8), ("gbk", encoding_rs::GBK)] {
        let out = sign_ok(
            charset,
            &[
                "alipay_md5",
                "--key-file",
                &key_file,
                "--param",
                "seller_id=2088101122334455",
                "--param",
                "subject=测试 商品+1",
                "--param",
                "extra_common_param=",
                "--param",
                "total_fee=12.34",
                "--charset",
                charset,
            ],
        );
        let fields = decode_form(&out);
        assert_eq!(
            field(&fields, "subject"),
            encoding.encode("测试 商品+1").0.as_ref(),
            "{charset}"
        );
        assert_eq!(field(&fields, "sign_type"), b"MD5", "{charset}");
        verify_keyed_digest(
            charset,
            &fields,
            &["sign", "sign_type"],
            key.trim_end().as_bytes(),
            &["-md5"],
            false,
        );
    }
}

// === event identity and merchant binding ===

fn unionpay_keys(mer_id: Option<&str>) -> String {
    let f = |n: &str| fixture_path("unionpay", n);
    format!(
        "{}root_cert = {:?}\nmiddle_cert = {:?}\n",
        mer_id.map_or(String::new(), |m| format!("mer_id = {m:?}\n")),
        f("root.pem"),
        f("middle.pem")
    )
}

#[test]
fn check_refuses_a_unionpay_route_without_mer_id() {
    // UnionPay signs every merchant's notifications with one certificate: a
    // route without mer_id would take any merchant's as this shop's.
    expect_check_problem_lines(
        "UnionPay route without mer_id",
        &route_with_keys("unionpay", &unionpay_keys(None)),
        &[
            "r.toml:9: keys.mer_id: missing: UnionPay signs every merchant's notifications with one certificate",
        ],
    );
    let dir = config_with_rules(&route_with_keys(
        "unionpay",
        &unionpay_keys(Some("777290058110097")),
    ));
    expect_check_quiet(dir.path(), 1);
}

#[test]
fn check_refuses_a_replay_ttl_shorter_than_a_routes_freshness_window() {
    // A copy of a delivered event must not outlive its delivery record.
    let rules = good_route("r1", "/r1").replace(
        "provider = \"alipay\"\n",
        "provider = \"alipay\"\nmax_age = \"72h\"\n",
    );
    let dir = config_with_rules(&rules);
    let file = dir.path().join("callgate.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let ttl_line = text.lines().find(|l| l.starts_with("ttl = ")).unwrap();
    edit_gateway(dir.path(), ttl_line, "ttl = \"48h\"");
    let (code, out) = check(dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "r.toml:5: replay.ttl 48h is shorter than this route's freshness window (72h5m"
        ),
        "{out}"
    );
    // Exactly the window is enough.
    std::fs::write(&file, text.replace(ttl_line, "ttl = \"72h5m\"")).unwrap();
    expect_check_quiet(dir.path(), 1);
}

#[test]
fn check_warns_about_accepting_any_sub_merchant_and_names_bad_binding_keys() {
    let wechat = format!(
        "mch_id = \"1900000109\"\napi_key_file = {:?}\naccept_any_sub_merchant = true\n",
        fixture_path("wechat", "v2_api.key")
    );
    let dir = config_with_rules(&route_with_keys("wechat_v2", &wechat));
    let err = expect_check_ok(dir.path(), 1);
    assert!(
        err.contains(
            "r.toml:10: warning: wechat_v2 merchant `1900000109` has accept_any_sub_merchant = true"
        ),
        "{err}"
    );

    let alipay = |extra: &str| {
        format!(
            "app_id = \"2021000000000001\"\npublic_key = {:?}\n{extra}",
            fixture_path("alipay", "alipay_public.pem")
        )
    };
    expect_check_problems(vec![
        (
            "unknown sign type",
            route_with_keys("alipay", &alipay("sign_types = [\"RSA3\"]\n")),
            "r.toml:12: keys.sign_types: `RSA3` is not \"RSA2\" or \"RSA\"",
        ),
        (
            "no sign type",
            route_with_keys("alipay", &alipay("sign_types = []\n")),
            "keys.sign_types: name at least one of \"RSA2\" and \"RSA\"",
        ),
        (
            "seller id",
            route_with_keys("alipay", &alipay("seller_id = \"1234\"\n")),
            "r.toml:12: keys.seller_id: `1234` is not an Alipay user id",
        ),
        (
            "wechat sign type",
            route_with_keys(
                "wechat_v2",
                &wechat.replace("accept_any_sub_merchant = true", "sign_types = [\"SHA1\"]"),
            ),
            "keys.sign_types: `SHA1` is not \"MD5\" or \"HMAC-SHA256\"",
        ),
        (
            "sub-merchant",
            route_with_keys(
                "wechat_v2",
                &wechat.replace("accept_any_sub_merchant = true", "sub_mch_id = \"x1\""),
            ),
            "keys.sub_mch_id: `x1` is not a merchant number (digits)",
        ),
    ]);
}
