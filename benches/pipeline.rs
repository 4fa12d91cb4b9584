//! The whole flow in-process: `pipeline::handle` on a `State` built from a
//! real gateway file and rule files, with the request body handed over as
//! `Bytes` (no listener, no client socket). Route lookup, allow list,
//! Content-Length check, body read, parse, verify, freshness, replay claim,
//! forward, confirm, ack, metrics and the log line (no subscriber is
//! installed, so the log line costs only its level check) all run as in
//! `callgate run`.
//!
//! * `*/duplicate`: an event already delivered, answered from the memory
//!   store; no I/O at all.
//! * `*/forward`: a new, genuinely signed event every iteration (signed
//!   outside the timed section), forwarded to an upstream in the same
//!   process over loopback (the only socket), which answers `success`.
//!
//! Notifications are signed with the demo keys by `benches/load/signer.rs`.
//!
//!     cargo bench --bench pipeline

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::runtime::Runtime;

use callgate::pipeline::{self, State};

/// The allocator `callgate` itself runs on (`src/main.rs`), so that the
/// figures are the ones a request costs in the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "load/signer.rs"]
mod signer;

const ALIPAY: &str = "/notify/alipay";
const WECHAT: &str = "/notify/wechat";
const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";
const XML: &str = "text/xml";

/// An upstream that answers every request with `success`.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    use http_body_util::BodyExt as _;
                    let _ = req.into_body().collect().await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"success"),
                    )))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn state(dir: &Path, upstream: SocketAddr) -> Arc<State> {
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/dev");
    let certs = certs.display();
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(
        dir.join("callgate.toml"),
        r#"rules_dir = "rules"
[listen]
addr = "127.0.0.1:0"
[replay]
store = "memory"
ttl = "48h"
max_entries = 10_000_000
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("rules/bench.toml"),
        format!(
            r#"[[route]]
name = "bench-alipay"
path = "{ALIPAY}"
provider = "alipay"
allow = ["127.0.0.1/32"]
upstream = "http://{upstream}/notify"
upstream_secret_file = "{certs}/upstream.secret"
success_body = "success"
[route.keys]
public_key = "{certs}/alipay_public.pem"
app_id = "{app_id}"

[[route]]
name = "bench-wechat"
path = "{WECHAT}"
provider = "wechat_v2"
allow = ["127.0.0.1/32"]
upstream = "http://{upstream}/notify"
upstream_secret_file = "{certs}/upstream.secret"
[route.keys]
mch_id = "{mch_id}"
appid = "{appid}"
api_key_file = "{certs}/wechat_v2_api.key"
"#,
            app_id = signer::ALIPAY_APP_ID,
            mch_id = signer::WECHAT_MCH_ID,
            appid = signer::WECHAT_APPID,
        ),
    )
    .unwrap();
    let loaded = callgate::config::load(&dir.join("callgate.toml")).unwrap();
    callgate::server::build_state(
        &loaded.config,
        loaded.snapshot,
        callgate::forward::default_client(),
        "bench",
    )
    .unwrap()
}

fn request(path: &str, content_type: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(path)
        .header(http::header::HOST, "shop.example")
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(Full::new(body))
        .unwrap()
}

async fn handle(state: &Arc<State>, path: &str, ct: &str, body: Bytes) -> StatusCode {
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    pipeline::handle(state.clone(), peer, request(path, ct, body))
        .await
        .status()
}

fn pipeline(c: &mut Criterion) {
    let rt: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let up = rt.block_on(upstream());
    let state = state(dir.path(), up);
    let signer = signer::Signer::new(&Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/dev"));
    let now = callgate::clock::unix_now();

    type Sign = fn(&signer::Signer, u32, u64, i64) -> String;
    let cases: [(&str, &str, &str, Sign); 2] = [
        ("alipay_rsa2", ALIPAY, FORM, signer::Signer::alipay),
        ("wechat_v2_hmac", WECHAT, XML, signer::Signer::wechat_v2),
    ];
    for (run, (name, path, ct, sign)) in (1u32..).zip(cases) {
        let mut next = 0u64;
        c.bench_function(&format!("pipeline/{name}/forward"), |b| {
            b.iter_custom(|iters| {
                let bodies: Vec<Bytes> = (0..iters)
                    .map(|_| {
                        next += 1;
                        Bytes::from(sign(&signer, run, next, now))
                    })
                    .collect();
                rt.block_on(async {
                    let started = Instant::now();
                    for body in bodies {
                        let status = handle(&state, path, ct, body).await;
                        assert_eq!(status, StatusCode::OK);
                    }
                    started.elapsed()
                })
            })
        });
        let dup = Bytes::from(sign(&signer, run, 0, now));
        assert_eq!(
            rt.block_on(handle(&state, path, ct, dup.clone())),
            StatusCode::OK
        );
        c.bench_function(&format!("pipeline/{name}/duplicate"), |b| {
            b.iter(|| rt.block_on(handle(&state, path, ct, dup.clone())))
        });
    }
    let text = String::from_utf8(state.metrics.render()).unwrap();
    for line in text.lines().filter(|l| {
        l.starts_with("callgate_requests_total") && !l.ends_with(" 0") && !l.contains("\"-\"")
    }) {
        eprintln!("{line}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4));
    targets = pipeline
}
criterion_main!(benches);
