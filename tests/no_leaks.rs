//! Contract §7 and STYLE 12, for every provider and every outcome: a key, a
//! secret, a signature or a buyer's account id never shows in clear in the
//! log (text and JSON, at debug level), on `/metrics`, on the console and
//! its API, in the redelivery report, in `journal list`, in the answer to
//! the platform, or in the `X-Callgate-*` headers the shop gets (except
//! `X-Callgate-Resource`, which carries the decrypted notification to the
//! shop on purpose). The journal, which must hold bodies, is readable by
//! its owner only.
//!
//! The real binary runs all six platforms; each is sent a genuine
//! notification, its duplicate, forgeries (tampered, wrong key), malformed
//! and stale bodies, a refused source address, a delivery the shop fails and
//! its redelivery. Fixtures are the openssl/SDK-made ones of
//! tests/fixtures; the UnionPay notification carrying a card number (`accNo`)
//! is signed here with the openssl CLI.

mod support;

use std::io::BufRead;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use support::*;

/// Buyer identifiers in the notifications sent below.
const BUYER_IDS: &[&str] = &[
    "2088102177846880",             // Alipay buyer_id (both Alipay schemes)
    "159****5620",                  // Alipay buyer_logon_id
    "buyer@example.com",            // legacy Alipay buyer_email
    "buyer%40example.com",          // the same, as the form carries it
    "oUpF8uMEb4qRXf22hE3X68TekukE", // WeChat openid (v2, and v3 inside the resource)
    "6216261000000000018",          // UnionPay accNo (signed below)
    "622588****6178",               // JD cardNo
    "138****6396",                  // JD cardHolderMobile
];

const UNIONPAY_ACC_NO: &str = "6216261000000000018";

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn trimmed_file(dir: &str, name: &str) -> String {
    String::from_utf8(fixture(dir, name))
        .unwrap()
        .trim()
        .to_owned()
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// The value of form field `key` in `body`, decoded.
fn form_field(body: &[u8], key: &str) -> String {
    let text = std::str::from_utf8(body).unwrap();
    let raw = text
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {text}"));
    percent_decode(raw)
}

fn xml_element(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find(&format!("<{name}>"))? + name.len() + 2;
    let end = text[start..].find(&format!("</{name}>"))? + start;
    Some(
        text[start..end]
            .trim_start_matches("<![CDATA[")
            .trim_end_matches("]]>")
            .to_owned(),
    )
}

fn form_escape(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.*".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The UnionPay 5.0.0 payment fixture with an `accNo` added and signed
/// again with the fixture key by the openssl CLI (SHA-1 hex of the sorted
/// string, SHA1withRSA), as tests/fixtures/unionpay/make.py does.
fn unionpay_with_card_number() -> Vec<u8> {
    use base64::Engine as _;
    let body = fixture("unionpay", "v500_payment.form");
    let text = std::str::from_utf8(&body).unwrap();
    let mut fields: Vec<(String, String)> = text
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), percent_decode(v))
        })
        .filter(|(k, _)| k != "signature")
        .collect();
    fields.push(("accNo".into(), UNIONPAY_ACC_NO.into()));
    for (k, v) in &mut fields {
        match k.as_str() {
            "queryId" => *v = "202611221000000000077".into(),
            "orderId" => *v = "CG20261122000077".into(),
            _ => {}
        }
    }
    let mut sorted = fields.clone();
    sorted.sort();
    let canonical = sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let digest = openssl_dgst_hex(&["-sha1"], canonical.as_bytes());
    let key = fixture_path("unionpay", "sign_key.pem");
    let signature = openssl_pipe(
        &["dgst", "-sha1", "-sign", key.to_str().unwrap()],
        digest.as_bytes(),
    );
    let signature = base64::engine::general_purpose::STANDARD.encode(signature);
    fields.push(("signature".into(), signature));
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", form_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

/// One notification to send: path, headers, body.
#[derive(Clone)]
struct Note {
    what: String,
    path: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn note(what: &str, path: &'static str, content_type: &str, body: Vec<u8>) -> Note {
    Note {
        what: what.to_owned(),
        path,
        headers: vec![("content-type".into(), content_type.into())],
        body,
    }
}

const FORM: &str = "application/x-www-form-urlencoded";
const XML: &str = "text/xml";

fn v3(what: &str, name: &str, key: &str, timestamp: i64, nonce: &str) -> Note {
    let body = fixture("wechat", name);
    Note {
        what: what.to_owned(),
        path: "/notify/wechat-v3",
        headers: v3_headers(key, WECHAT_PLATFORM_SERIAL, timestamp, nonce, &body),
        body,
    }
}

/// Every notification of one pass, the shop answering success: genuine
/// ones, their duplicates, forgeries, malformed and stale bodies.
fn first_pass(now: i64) -> Vec<Note> {
    let f = |what: &str, dir: &str, name: &str, path: &'static str, ct: &str| {
        note(&format!("{dir}/{what}"), path, ct, fixture(dir, name))
    };
    let mut notes = Vec::new();
    for name in [
        "rsa2_trade_success.form",
        "rsa2_trade_success.form",
        "rsa2_tampered_amount.form",
        "rsa2_wrong_key.form",
        "rsa2_duplicate_key.form",
        "rsa2_future.form",
        "rsa2_missing_sign.form",
    ] {
        notes.push(f(name, "alipay", name, "/notify/alipay", FORM));
    }
    for name in [
        "md5_trade_success.form",
        "md5_trade_success.form",
        "md5_tampered_amount.form",
        "md5_wrong_key.form",
        "md5_future.form",
        "md5_undecodable.form",
        "md5_whitespace_value.form",
        "md5_other_seller.form",
    ] {
        notes.push(f(name, "alipay_md5", name, "/notify/alipay_md5", FORM));
    }
    for name in [
        "v2_md5_pay.xml",
        "v2_md5_pay.xml",
        "v2_tampered.xml",
        "v2_wrong_key.xml",
        "v2_duplicate_element.xml",
        "v2_future.xml",
        "v2_refund.xml",
        "v2_refund_tampered.xml",
        "v2_refund_wrong_key.xml",
        "v2_other_mch.xml",
    ] {
        notes.push(f(name, "wechat", name, "/notify/wechat", XML));
    }
    notes.push(v3(
        "v3 pay",
        "v3_pay.json",
        "platform_private.pem",
        now,
        "n-leak-1",
    ));
    notes.push(v3(
        "v3 replayed nonce",
        "v3_pay.json",
        "platform_private.pem",
        now,
        "n-leak-1",
    ));
    notes.push(v3(
        "v3 duplicate",
        "v3_pay.json",
        "platform_private.pem",
        now,
        "n-leak-2",
    ));
    notes.push(v3(
        "v3 wrong key",
        "v3_pay.json",
        "other_private.pem",
        now,
        "n-leak-3",
    ));
    notes.push(v3(
        "v3 stale",
        "v3_pay.json",
        "platform_private.pem",
        now - 3600,
        "n-leak-4",
    ));
    notes.push(v3(
        "v3 tampered ciphertext",
        "v3_tampered_ciphertext.json",
        "platform_private.pem",
        now,
        "n-leak-5",
    ));
    notes.push(v3(
        "v3 refund",
        "v3_refund.json",
        "platform_private.pem",
        now,
        "n-leak-6",
    ));
    for name in [
        "v510_payment.form",
        "v510_payment.form",
        "v510_tampered_amount.form",
        "v510_wrong_key.form",
        "v510_duplicate_key.form",
        "v510_old.form",
        "v510_other_merchant.form",
    ] {
        notes.push(f(name, "unionpay", name, "/notify/unionpay", FORM));
    }
    let card = unionpay_with_card_number();
    notes.push(note(
        "unionpay accNo",
        "/notify/unionpay",
        FORM,
        card.clone(),
    ));
    notes.push(note("unionpay accNo again", "/notify/unionpay", FORM, card));
    for name in [
        "payment.xml",
        "payment.xml",
        "tampered_amount.xml",
        "wrong_rsa_key.xml",
        "wrong_des_key.xml",
        "stale.xml",
        "doctype.xml",
        "repeated_encrypt.xml",
        "other_merchant.xml",
    ] {
        notes.push(f(name, "jdpay", name, "/notify/jdpay", XML));
    }
    notes
}

/// Genuine notifications the shop will fail (then redelivered), and each
/// platform's genuine one from an address no route allows.
fn second_pass(now: i64) -> (Vec<Note>, Vec<Note>) {
    let fail = vec![
        note(
            "alipay 2",
            "/notify/alipay",
            FORM,
            fixture("alipay", "rsa2_trade_success_2.form"),
        ),
        note(
            "md5 2",
            "/notify/alipay_md5",
            FORM,
            fixture("alipay_md5", "md5_trade_finished_2.form"),
        ),
        note(
            "v2 2",
            "/notify/wechat",
            XML,
            fixture("wechat", "v2_md5_pay_2.xml"),
        ),
        v3(
            "v3 2",
            "v3_pay_2.json",
            "platform_private.pem",
            now,
            "n-leak-7",
        ),
        note(
            "unionpay 2",
            "/notify/unionpay",
            FORM,
            fixture("unionpay", "v510_payment_2.form"),
        ),
        note(
            "jd 2",
            "/notify/jdpay",
            XML,
            fixture("jdpay", "payment_2.xml"),
        ),
    ];
    let denied = vec![
        note(
            "alipay denied",
            "/notify/alipay",
            FORM,
            fixture("alipay", "rsa2_trade_success_3.form"),
        ),
        note(
            "v2 denied",
            "/notify/wechat",
            XML,
            fixture("wechat", "v2_md5_pay_3.xml"),
        ),
        note(
            "unionpay accNo denied",
            "/notify/unionpay",
            FORM,
            unionpay_with_card_number(),
        ),
        note(
            "jd denied",
            "/notify/jdpay",
            XML,
            fixture("jdpay", "payment.xml"),
        ),
    ]
    .into_iter()
    .map(|mut n| {
        n.headers
            .push(("x-forwarded-for".into(), "203.0.113.9".into()));
        n
    })
    .collect();
    (fail, denied)
}

/// What must never be shown: every secret the gateway holds, the
/// signatures of the notifications sent, the buyers' ids.
fn forbidden(notes: &[Note]) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = vec![
        ("upstream secret".into(), SECRET.trim().into()),
        ("admin token".into(), ADMIN_TOKEN.into()),
        ("md5 key".into(), trimmed_file("alipay_md5", "md5_key.txt")),
        ("v2 api key".into(), trimmed_file("wechat", "v2_api.key")),
        ("v3 api key".into(), trimmed_file("wechat", "v3_api_v3.key")),
        ("jd des key".into(), trimmed_file("jdpay", "des.key")),
    ];
    for id in BUYER_IDS {
        f.push(("buyer id".into(), (*id).into()));
    }
    for n in notes {
        let sig = if n.path == "/notify/wechat-v3" {
            n.headers
                .iter()
                .find(|(k, _)| k == "wechatpay-signature")
                .map(|(_, v)| v.clone())
        } else if n.path == "/notify/wechat" {
            xml_element(&n.body, "sign")
        } else if n.path == "/notify/jdpay" {
            None // inside the encrypted payload
        } else {
            let key = if n.path == "/notify/unionpay" {
                "signature"
            } else {
                "sign"
            };
            std::str::from_utf8(&n.body)
                .ok()
                .filter(|t| t.split('&').any(|kv| kv.starts_with(&format!("{key}="))))
                .map(|_| form_field(&n.body, key))
        };
        if let Some(sig) = sig.filter(|s| s.len() >= 24) {
            f.push((format!("signature of {}", n.what), sig[..24].to_owned()));
        }
    }
    f
}

/// A `callgate run` process with its stdout and stderr lines.
struct Run {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    addr: String,
    admin: String,
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Run {
    fn start(config: &Path, format: &str) -> Run {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
            .args(["run", "--log-format", format, "-c"])
            .arg(config)
            .env("CALLGATE_LOG", "debug")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for stream in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err) as Box<dyn std::io::Read + Send>,
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    if tx.send(strip_ansi(&line)).is_err() {
                        break;
                    }
                }
            });
        }
        let mut run = Run {
            child,
            lines,
            seen: Vec::new(),
            addr: String::new(),
            admin: String::new(),
        };
        let serving = loop {
            let line = run
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("never served:\n{}", run.seen.join("\n")));
            run.seen.push(line.clone());
            if line.contains("callgate serving") {
                break line;
            }
        };
        let value = |key: &str| -> String {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&serving) {
                return v[key].as_str().unwrap().to_owned();
            }
            let at = serving.find(&format!("{key}=")).unwrap() + key.len() + 1;
            serving[at..]
                .split_whitespace()
                .next()
                .unwrap()
                .trim_matches('"')
                .to_owned()
        };
        run.addr = value("listen");
        run.admin = value("admin");
        run
    }

    /// SIGTERM, then every line until the process closed its output.
    fn stop(mut self) -> Vec<String> {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = self.child.wait();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(30)) {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_clean(place: &str, text: &str, forbidden: &[(String, String)]) {
    for (what, value) in forbidden {
        assert!(
            !text.contains(value.as_str()),
            "{place} shows the {what} (`{value}`):\n{text}"
        );
    }
}

async fn send(client: &TestClient, run: &Run, n: &Note) -> Reply {
    let headers: Vec<(&str, &str)> = n
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    client
        .send(
            "POST",
            &format!("http://{}{}", run.addr, n.path),
            &headers,
            n.body.clone(),
        )
        .await
}

async fn every_outcome_of_every_provider(format: &str) {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let routes = vec![
        RouteSpec::alipay(&up),
        RouteSpec::alipay_md5(&up),
        RouteSpec::wechat_v2(&up),
        RouteSpec::wechat_v3(&up),
        RouteSpec::unionpay(&up),
        RouteSpec::jdpay(&up),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut spec = GatewaySpec::new(routes);
    spec.trusted_proxies = vec!["127.0.0.1/32".into()];
    let config = spec.write(dir.path());
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[admin]\naddr = \"127.0.0.1:0\"\n",
        "[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n",
        1,
    );
    std::fs::write(&config, text).unwrap();

    let now = unix_now();
    let first = first_pass(now);
    let (fail, denied) = second_pass(now);
    let all: Vec<Note> = first.iter().chain(&fail).chain(&denied).cloned().collect();
    let forbidden = forbidden(&all);

    let run = Run::start(&config, format);
    let client = TestClient::new();
    let mut statuses = std::collections::BTreeSet::new();
    let mut answers = String::new();
    for n in &first {
        let r = send(&client, &run, n).await;
        if n.what == "unionpay accNo" {
            assert_eq!(
                r.status,
                200,
                "the openssl-signed accNo notification: {}",
                r.text()
            );
        }
        statuses.insert(r.status);
        answers.push_str(&format!("{} {}: {}\n", n.what, r.status, r.text()));
    }
    up.set(Behaviour::Reply(500, "database down"));
    for n in fail.iter().chain(&denied) {
        let r = send(&client, &run, n).await;
        statuses.insert(r.status);
        answers.push_str(&format!("{} {}: {}\n", n.what, r.status, r.text()));
    }
    // Not a notification: a GET and an unknown path.
    for (method, path) in [("GET", "/notify/alipay"), ("POST", "/notify/nowhere")] {
        let r = client
            .send(
                method,
                &format!("http://{}{path}", run.addr),
                &[("content-type", FORM)],
                fixture("alipay", "rsa2_trade_success.form"),
            )
            .await;
        statuses.insert(r.status);
        answers.push_str(&format!("{method} {path} {}: {}\n", r.status, r.text()));
    }
    // The shop got the card number: the notification carrying it verified.
    assert!(
        up.received().iter().any(|r| r
            .body
            .windows(UNIONPAY_ACC_NO.len())
            .any(|w| w == UNIONPAY_ACC_NO.as_bytes())),
        "the accNo notification was not delivered"
    );
    for want in [200, 400, 401, 403, 404, 405, 502] {
        assert!(statuses.contains(&want), "no {want} among:\n{answers}");
    }
    assert_clean("an answer to the platform", &answers, &forbidden);

    // The shop is back: the failed deliveries are redelivered.
    up.set(Behaviour::Reply(200, "success"));
    let report = client
        .send(
            "POST",
            &format!("http://{}/api/redeliver", run.admin),
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            br#"{"outcome":"upstream_error"}"#.to_vec(),
        )
        .await;
    assert_eq!(report.status, 200, "{}", report.text());
    let report = report.text();
    assert_eq!(
        report.matches("\"forwarded\"").count(),
        fail.len(),
        "{report}"
    );
    assert_clean("the redelivery report", &report, &forbidden);

    // What the shop got in the headers callgate sets.
    for r in up.received() {
        for (name, value) in &r.headers {
            if name.as_str().starts_with("x-callgate-") && name != "x-callgate-resource" {
                assert_clean(
                    &format!("header {name}"),
                    value.to_str().unwrap_or_default(),
                    &forbidden,
                );
            }
        }
    }
    let admin = |path: &str| {
        let (client, url) = (&client, format!("http://{}{path}", run.admin));
        async move { client.send("GET", &url, &[], vec![]).await.text() }
    };
    let metrics = admin("/metrics").await;
    assert!(metrics.contains("outcome=\"upstream_error\""), "{metrics}");
    assert_clean("/metrics", &metrics, &forbidden);
    for path in [
        "/",
        "/?q=CG20261122000001",
        "/api/routes",
        "/api/events?limit=500",
        "/api/rejections?limit=500",
        "/api/events?q=CG20261122000077",
        "/api/store",
    ] {
        let page = admin(path).await;
        assert_clean(path, &page, &forbidden);
    }
    let (code, list, err) = callgate_cli(&["journal", "list", "--json"], &config);
    assert_eq!(code, 0, "{err}");
    assert_clean("journal list", &list, &forbidden);

    let lines = run.stop();
    let log = lines.join("\n");
    assert!(
        log.contains("bad_signature") && log.contains("upstream_error"),
        "{log}"
    );
    assert_clean(&format!("the {format} log"), &log, &forbidden);

    // The journal holds the bodies (the buyers' ids with them): its files
    // are its owner's only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let files = callgate::journal::journal_files(&dir.path().join("journal"));
        assert!(!files.is_empty());
        for f in files {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_signature_or_buyer_id_in_the_json_log_metrics_console_or_answers() {
    every_outcome_of_every_provider("json").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_signature_or_buyer_id_in_the_text_log() {
    every_outcome_of_every_provider("text").await;
}
