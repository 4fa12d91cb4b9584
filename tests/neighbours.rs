//! Broken neighbours: an upstream that resets, hangs, answers
//! garbage, answers slowly or closes mid-body, and a journal whose disk is
//! full. Each time the platform gets its failure ack (so it retries), the
//! metrics and the log line say why, nothing is remembered as delivered,
//! and the platform's retry goes through once the neighbour is well again,
//! without anyone touching the gateway. (Redis that disappears and comes
//! back: `tests/replay_redis.rs`, `redis_down_fails_closed_and_the_gateway_recovers_by_itself`.)
//!
//! The upstream here is a raw TCP listener, so it can misbehave in ways an
//! HTTP server library would not let it.

mod support;

use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// How the raw upstream treats the next request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// 200 `success`, properly.
    Good,
    /// Reads the request, then resets the connection.
    Reset,
    /// Reads the request and never answers.
    Hang,
    /// Answers bytes that are not HTTP, then closes.
    Garbage,
    /// Answers properly after a pause shorter than the gateway's timeout.
    SlowWithin,
    /// Sends a status line, then nothing, past the gateway's timeout.
    SlowBeyond,
    /// Promises 100 bytes of body, sends 4, closes.
    MidBody,
}

/// Requests that reached the raw upstream: the fault in force, the body.
type Seen = Arc<Mutex<Vec<(Fault, Vec<u8>)>>>;

struct RawUpstream {
    url: String,
    fault: Arc<Mutex<Fault>>,
    /// Requests that reached it, and which of them were answered properly.
    seen: Seen,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/notify.php", listener.local_addr().unwrap());
        let fault = Arc::new(Mutex::new(Fault::Good));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (f, s) = (fault.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (f, s) = (f.clone(), s.clone());
                tokio::spawn(serve(tcp, f, s));
            }
        });
        RawUpstream { url, fault, seen }
    }

    fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    fn seen(&self) -> Vec<(Fault, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(mut tcp: TcpStream, fault: Arc<Mutex<Fault>>, seen: Seen) {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccess";
    while let Some((_, body)) = read_http_request(&mut tcp).await {
        let f = *fault.lock().unwrap();
        seen.lock().unwrap().push((f, body));
        match f {
            Fault::Good => {
                if tcp.write_all(OK).await.is_err() {
                    return;
                }
            }
            Fault::Reset => {
                let _ = tcp.set_zero_linger();
                return;
            }
            Fault::Hang => std::future::pending::<()>().await,
            Fault::Garbage => {
                let _ = tcp
                    .write_all(b"SSH-2.0-OpenSSH_9.6\r\n\0\0\xff garbage\r\n\r\n")
                    .await;
                return;
            }
            Fault::SlowWithin => {
                // A fault being injected, not test synchronisation.
                tokio::time::sleep(Duration::from_millis(300)).await;
                if tcp.write_all(OK).await.is_err() {
                    return;
                }
            }
            Fault::SlowBeyond => {
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\n").await;
                std::future::pending::<()>().await
            }
            Fault::MidBody => {
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsucc")
                    .await;
                return;
            }
        }
    }
}

/// Log lines the gateway writes while `f` runs (a subscriber for this
/// test's thread: the current-thread runtime runs every gateway task here).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn gateway(upstream: &str) -> TestGateway {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let route = RouteSpec::alipay(&up).with(|r| r.upstream = upstream.to_owned());
    let mut spec = GatewaySpec::new(vec![route]);
    spec.upstream_timeout = "1500ms".into();
    TestGateway::start(spec).await
}

async fn rejections(gw: &TestGateway, reason: &str) -> f64 {
    gw.metric(
        "callgate_rejections_total",
        &[
            ("route", "shop-alipay"),
            ("provider", "alipay"),
            ("reason", reason),
        ],
    )
    .await
    .unwrap_or(0.0)
}

#[tokio::test]
async fn each_upstream_failure_is_a_failure_ack_and_the_retry_goes_through() {
    let logs = Logs::default();
    let _guard = logs.install();
    let body = fixture("alipay", "rsa2_trade_success.form");
    for (fault, status, reason, logged) in [
        (
            Fault::Reset,
            502,
            "upstream_unreachable",
            "upstream request failed",
        ),
        (
            Fault::Hang,
            504,
            "upstream_timeout",
            "upstream did not answer within",
        ),
        (
            Fault::Garbage,
            502,
            "upstream_unreachable",
            "upstream request failed",
        ),
        (
            Fault::SlowBeyond,
            504,
            "upstream_timeout",
            "upstream did not answer within",
        ),
        (
            Fault::MidBody,
            502,
            "upstream_reply",
            "upstream reply could not be read",
        ),
    ] {
        let up = RawUpstream::start().await;
        let gw = gateway(&up.url).await;
        up.set(fault);
        let r = gw.post_form("/notify/alipay", &body).await;
        assert_eq!((r.status, r.text().as_str()), (status, "fail"), "{fault:?}");
        assert_eq!(rejections(&gw, reason).await, 1.0, "{fault:?}");
        assert_eq!(gw.requests("upstream_error").await, 1.0, "{fault:?}");
        let log = logs.text();
        let line = log
            .lines()
            .rev()
            .find(|l| {
                l.contains("outcome=\"upstream_error\"") || l.contains("outcome=upstream_error")
            })
            .unwrap_or_else(|| panic!("{fault:?}: no upstream_error log line in:\n{log}"));
        assert!(line.contains(logged), "{fault:?}: {line}");
        assert!(
            line.contains(&format!("status={status}")),
            "{fault:?}: {line}"
        );

        // The neighbour recovers; the platform's retry is forwarded (the
        // failure was not remembered as a delivery) and acknowledged.
        up.set(Fault::Good);
        let r = gw.post_form("/notify/alipay", &body).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "success"),
            "{fault:?} retry"
        );
        let seen = up.seen();
        assert_eq!(seen.len(), 2, "{fault:?}: the failed try and the retry");
        assert!(seen.iter().all(|(_, b)| *b == body));
        assert_eq!(gw.requests("forwarded").await, 1.0);
        // And once delivered, a further retry is a duplicate, not a third send.
        let r = gw.post_form("/notify/alipay", &body).await;
        assert_eq!((r.status, r.text().as_str()), (200, "success"));
        assert_eq!(up.seen().len(), 2, "{fault:?}");
    }
}

#[tokio::test]
async fn a_slow_upstream_within_the_timeout_is_fine() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up.url).await;
    up.set(Fault::SlowWithin);
    let r = gw.post_alipay("rsa2_trade_success.form").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(gw.requests("forwarded").await, 1.0);
}

// === disk full ===

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` when this process may not mount (not root, no CAP_SYS_ADMIN).
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = tool("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(Tmpfs { dir })
    }

    /// [`Tmpfs::mount`], or `None` where this process may not mount: CI
    /// runs as root and must run every disk-full test, so there it fails
    /// loudly; a developer's machine says the test was skipped.
    fn mount_or_skip(size: &str) -> Option<Tmpfs> {
        let disk = Tmpfs::mount(size);
        if disk.is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to mount a tmpfs (run as root): the disk-full test cannot be skipped there"
            );
            eprintln!(
                "SKIPPED: cannot mount a tmpfs here (needs root); the disk-full test did not run"
            );
        }
        disk
    }

    /// Pads each journal file under `journal` (one per worker) to a page
    /// boundary (blank lines, which readers skip), so that on a full tmpfs
    /// its next append needs a page it cannot have, then fills the file
    /// system.
    fn fill_past_journal(&self, journal: &std::path::Path) -> std::path::PathBuf {
        let files = callgate::journal::journal_files(journal);
        assert!(!files.is_empty(), "no journal file in {journal:?}");
        for file in &files {
            let len = std::fs::metadata(file).unwrap().len();
            let pad = usize::try_from((4096 - len % 4096) % 4096).unwrap();
            std::fs::OpenOptions::new()
                .append(true)
                .open(file)
                .unwrap()
                .write_all(&vec![b'\n'; pad])
                .unwrap();
        }
        self.fill()
    }

    /// Fills the file system with `filler` until writes fail with ENOSPC.
    fn fill(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        for size in [65_536usize, 4096, 1] {
            let chunk = vec![0u8; size];
            loop {
                match f.write(&chunk) {
                    Ok(n) if n == size => {}
                    Ok(_) => break,
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC: {e}");
                        break;
                    }
                }
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = tool("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// The real binary journaling to a 256 KiB tmpfs with `fsync`, in front
/// of a shop that holds each notification until given a permit.
struct HeldOnTmpfs {
    disk: Tmpfs,
    permits: Arc<tokio::sync::Semaphore>,
    up: Upstream,
    _config: tempfile::TempDir,
    journal: std::path::PathBuf,
    gateway: GatewayProcess,
    /// The Alipay route's URL.
    url: String,
}

impl HeldOnTmpfs {
    async fn start(fsync: &str) -> Option<HeldOnTmpfs> {
        let disk = Tmpfs::mount_or_skip("256k")?;
        let permits = Arc::new(tokio::sync::Semaphore::new(0));
        let up = Upstream::start(Behaviour::HoldReply(permits.clone(), 200, "success")).await;
        let config = tempfile::tempdir().unwrap();
        let journal = disk.dir.path().join("journal");
        let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
        spec.journal = format!("dir = {journal:?}\nfsync = \"{fsync}\"\n");
        let gateway = GatewayProcess::start(&spec.write(config.path()));
        let url = format!("http://{}/notify/alipay", gateway.addr);
        Some(HeldOnTmpfs {
            disk,
            permits,
            up,
            _config: config,
            journal,
            gateway,
            url,
        })
    }
}

#[tokio::test]
async fn a_full_journal_disk_fails_closed_and_recovers_when_space_returns() {
    full_journal_disk("always").await;
}

/// Under `interval` the arrival is written by the request itself before the
/// forward, so a full disk refuses it the same way.
#[tokio::test]
async fn a_full_journal_disk_fails_closed_with_interval_syncs_too() {
    full_journal_disk("interval").await;
}

async fn full_journal_disk(fsync: &str) {
    let Some(disk) = Tmpfs::mount_or_skip("256k") else {
        return;
    };
    let logs = Logs::default();
    let _guard = logs.install();
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.journal = format!("dir = {:?}\nfsync = \"{fsync}\"\n", disk.dir.path());
    let gw = TestGateway::start(spec).await;
    let body = fixture("alipay", "rsa2_trade_success.form");

    let filler = disk.fill();
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (503, "fail"));
    assert_eq!(
        up.count(),
        0,
        "nothing is forwarded that could not be journaled"
    );
    assert_eq!(rejections(&gw, "journal_unavailable").await, 1.0);
    assert_eq!(
        gw.metric("callgate_journal_write_errors_total", &[]).await,
        Some(1.0)
    );
    // The request's log line says why (the writer thread also logs
    // "journal write failed", on its own thread).
    let log = logs.text();
    let line = log
        .lines()
        .find(|l| l.contains("outcome=\"store_unavailable\""))
        .unwrap_or_else(|| panic!("no store_unavailable line:\n{log}"));
    assert!(line.contains("no storage space"), "{line}");

    // Space comes back: the platform's retry is journaled and forwarded.
    std::fs::remove_file(filler).unwrap();
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1);
    assert_eq!(gw.requests("forwarded").await, 1.0);
    gw.gateway.shutdown().await;
}

/// The disk fills while the shop holds two notifications: both arrivals
/// are in the journal, neither outcome fits. The journal thread keeps the
/// first outcome and writes it once there is room; the second, which comes
/// while the first is still failing, must be kept the same way, not
/// refused: a lost outcome leaves a delivered event `unfinished`, which
/// `callgate journal redeliver --outcome unfinished` sends to the shop
/// again. The real binary, a real tmpfs filled to ENOSPC.
#[tokio::test(flavor = "multi_thread")]
async fn outcomes_the_full_disk_refused_are_written_once_it_has_room() {
    let Some(mut held) = HeldOnTmpfs::start("interval").await else {
        return;
    };
    let journal = held.journal.clone();
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for name in ["rsa2_trade_success.form", "rsa2_trade_success_2.form"] {
        let (tx, url, body) = (tx.clone(), held.url.clone(), fixture("alipay", name));
        tokio::spawn(async move {
            let form = [("content-type", "application/x-www-form-urlencoded")];
            let r = TestClient::new().send("POST", &url, &form, body).await;
            let _ = tx.send((r.status, r.text()));
        });
    }
    // Both arrivals are journaled: the shop holds both notifications.
    held.up.next().await;
    held.up.next().await;

    let filler = held.disk.fill_past_journal(&journal);

    // The shop takes the first; its outcome cannot be written.
    held.permits.add_permits(1);
    assert_eq!(answers.recv().await.unwrap(), (200, "success".to_owned()));
    held.gateway.wait_for(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("journal write failed"))
    });
    // The shop takes the second while the journal still fails.
    held.permits.add_permits(1);
    assert_eq!(answers.recv().await.unwrap(), (200, "success".to_owned()));

    // Room again; a clean stop writes what is waiting.
    std::fs::remove_file(filler).unwrap();
    held.gateway.signal("-TERM");
    assert!(held.gateway.child.wait().unwrap().success());
    let (arrivals, _) = callgate::journal::arrivals(&journal).unwrap();
    let ended: Vec<(&str, &str)> = arrivals
        .iter()
        .map(|a| {
            (
                a.received.event_id.as_str(),
                callgate::journal::outcome_label(a),
            )
        })
        .collect();
    assert_eq!(ended.len(), 2, "{ended:?}");
    assert!(
        ended.iter().all(|(_, outcome)| *outcome == "forwarded"),
        "every delivery the shop took has its outcome in the journal: {ended:?}"
    );
}

/// As above under `fsync = "always"`: the request waits for its outcome's
/// write, which fails on the full disk; the record is kept by the writer
/// and written with the next group commit (here the stop's), not dropped.
#[tokio::test(flavor = "multi_thread")]
async fn an_outcome_the_full_disk_refused_under_fsync_always_is_written_once_it_has_room() {
    let Some(mut held) = HeldOnTmpfs::start("always").await else {
        return;
    };
    let journal = held.journal.clone();
    let (url, body) = (
        held.url.clone(),
        fixture("alipay", "rsa2_trade_success.form"),
    );
    let answer = tokio::spawn(async move {
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let r = TestClient::new().send("POST", &url, &form, body).await;
        (r.status, r.text())
    });
    held.up.next().await; // journaled and synced; the shop holds it
    let filler = held.disk.fill_past_journal(&journal);
    held.permits.add_permits(1);
    assert_eq!(answer.await.unwrap(), (200, "success".to_owned()));
    held.gateway.wait_for(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("could not journal the outcome"))
    });

    std::fs::remove_file(filler).unwrap();
    held.gateway.signal("-TERM");
    assert!(held.gateway.child.wait().unwrap().success());
    let (arrivals, _) = callgate::journal::arrivals(&journal).unwrap();
    let ended: Vec<&str> = arrivals
        .iter()
        .map(callgate::journal::outcome_label)
        .collect();
    assert_eq!(ended, ["forwarded"]);
}

// === the replay store dies mid-delivery ===

/// Redis dies while the shop is taking a notification, so the delivery
/// record (`confirm`) fails after the shop said yes. The platform still
/// gets its success ack; once Redis is back the record is written by the
/// gateway's background retry, so the platform's next copy is a duplicate:
/// neither held at 409 until the claim lapses nor forwarded a second time.
#[tokio::test]
async fn a_delivery_record_lost_to_a_redis_outage_is_written_once_redis_returns() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let gate = Arc::new(tokio::sync::Notify::new());
    let up = Upstream::start(Behaviour::Hold(gate.clone())).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.store = redis.url();
    let gw = TestGateway::start(spec).await;
    let body = fixture("alipay", "rsa2_trade_success.form");

    let first = {
        let body = body.clone();
        let base = gw.base.clone();
        tokio::spawn(async move {
            TestClient::new()
                .send(
                    "POST",
                    &format!("{base}/notify/alipay"),
                    &[("content-type", "application/x-www-form-urlencoded")],
                    body,
                )
                .await
        })
    };
    up.next().await; // the shop holds it; the claim is in Redis
    redis.kill();
    gate.notify_one(); // the shop says yes while Redis is gone
    let r = first.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let confirm_errors = gw
        .metric("callgate_replay_store_errors_total", &[("op", "confirm")])
        .await;
    assert_eq!(confirm_errors, Some(1.0));

    redis.restart();
    wait_ready(&gw, 200).await;
    // The retry writes the record (it backs off from 50 ms), where every
    // instance sharing Redis finds it; without the retry the claim would
    // hold other instances' copies at 409 until it lapsed (upstream_timeout
    // + 30 s = 40 s here), then let them through.
    let mut recorded = false;
    for _ in 0..100 {
        let keys = redis.cli(&["KEYS", "*"]);
        if keys.lines().any(|k| redis.cli(&["GET", k]) == "d") {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recorded, "the delivery was never recorded in Redis");
    // The platform's next copy is a duplicate (this instance also knows it
    // delivered the event: a_copy_of_an_event_delivered_but_not_yet_recorded_is_never_forwarded).
    let r = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1, "delivered once");
    assert_eq!(gw.requests("duplicate").await, 1.0);
}

/// What [`RedisCut`] does to a command from the gateway.
#[derive(Clone, Debug, PartialEq)]
enum Cut {
    /// Pass everything.
    Pass,
    /// Cut the connection at the next script call, and remember which
    /// script it was (its SHA-1, from `EVALSHA`).
    NextScript,
    /// Cut the connection at every call of this script; pass the rest.
    Script(String),
}

/// A TCP relay between the gateway and a real Redis that can cut the
/// connection when one chosen Lua script is called: the replay store
/// answers claims while the record of one delivery keeps failing.
struct RedisCut {
    port: u16,
    mode: Arc<Mutex<Cut>>,
    seen: Arc<Mutex<Option<String>>>,
}

impl RedisCut {
    async fn start(redis_port: u16) -> RedisCut {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(Cut::Pass));
        let seen = Arc::new(Mutex::new(None));
        let (m, s) = (mode.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                    continue;
                };
                tokio::spawn(Self::relay(client, server, m.clone(), s.clone()));
            }
        });
        RedisCut { port, mode, seen }
    }

    async fn relay(
        client: TcpStream,
        server: TcpStream,
        mode: Arc<Mutex<Cut>>,
        seen: Arc<Mutex<Option<String>>>,
    ) {
        use tokio::io::AsyncReadExt;
        let (mut from_client, mut to_server) = (client.into_split(), server.into_split());
        let back = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut to_server.0, &mut from_client.1).await;
        });
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_client.0.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let sha = script_sha(chunk);
            let cut = match (&*mode.lock().unwrap(), &sha) {
                (Cut::Pass, _) | (Cut::NextScript, None) => false,
                (Cut::NextScript, Some(sha)) => {
                    *seen.lock().unwrap() = Some(sha.clone());
                    true
                }
                (Cut::Script(blocked), Some(sha)) => blocked == sha,
                (Cut::Script(_), None) => false,
            };
            if cut || to_server.1.write_all(chunk).await.is_err() {
                break;
            }
        }
        back.abort();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn set(&self, mode: Cut) {
        *self.mode.lock().unwrap() = mode;
    }

    /// The script cut in [`Cut::NextScript`] mode, once it was.
    fn cut_script(&self) -> Option<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// The SHA-1 of the script an `EVALSHA` in `chunk` (RESP) calls.
fn script_sha(chunk: &[u8]) -> Option<String> {
    const CALL: &[u8] = b"EVALSHA\r\n$40\r\n";
    let at = chunk
        .windows(CALL.len())
        .position(|w| w.eq_ignore_ascii_case(CALL))?;
    let sha = chunk.get(at + CALL.len()..at + CALL.len() + 40)?;
    Some(String::from_utf8_lossy(sha).into_owned())
}

/// An instance that delivered an event but could not record it yet never
/// forwards a copy of it. The claim of a delivered event lives only
/// `upstream_timeout + 30s`, and Redis loses it with a failover (claims
/// are not replicated synchronously) or lets it lapse during a longer
/// outage; until the record retried in the background lands (its pause
/// grows to 5 s), a copy used to find the event unclaimed, take it and
/// reach the shop a second time. Here the record keeps failing (the relay
/// cuts every call of the confirm script) and the claim is gone (FLUSHALL,
/// what a failover to a replica that never had it leaves); before the fix
/// the copy was forwarded, the shop received the event twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_of_an_event_delivered_but_not_yet_recorded_is_never_forwarded() {
    let redis = RedisServer::start();
    let cut = RedisCut::start(redis.port).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    let up = Upstream::start(Behaviour::Hold(gate.clone())).await;
    let mut spec = GatewaySpec::new(vec![RouteSpec::alipay(&up)]);
    spec.store = cut.url();
    let gw = TestGateway::start(spec).await;
    let body = fixture("alipay", "rsa2_trade_success.form");

    let first = {
        let (body, base) = (body.clone(), gw.base.clone());
        tokio::spawn(async move {
            TestClient::new()
                .send(
                    "POST",
                    &format!("{base}/notify/alipay"),
                    &[("content-type", "application/x-www-form-urlencoded")],
                    body,
                )
                .await
        })
    };
    up.next().await; // the shop has it; the claim is in Redis
    cut.set(Cut::NextScript); // the confirm script's call is the next
    up.set(Behaviour::Reply(200, "success"));
    gate.notify_one();
    let r = first.await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(
        gw.metric("callgate_replay_store_errors_total", &[("op", "confirm")])
            .await,
        Some(1.0)
    );
    let confirm = cut.cut_script().expect("the confirm script was cut");
    cut.set(Cut::Script(confirm)); // every retry of the record fails too
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK"); // the claim is lost

    let copy = gw.post_form("/notify/alipay", &body).await;
    assert_eq!((copy.status, copy.text().as_str()), (200, "success"));
    assert_eq!(up.count(), 1, "the shop got the event twice");
    assert_eq!(gw.requests("duplicate").await, 1.0);

    // Once Redis takes the record, it is there for every instance.
    cut.set(Cut::Pass);
    let mut recorded = false;
    for _ in 0..200 {
        let keys = redis.cli(&["KEYS", "*"]);
        if keys.lines().any(|k| redis.cli(&["GET", k]) == "d") {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recorded, "the delivery was never recorded in Redis");
}
