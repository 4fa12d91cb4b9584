//! The floor of a hyper-based gateway: what verifying and forwarding a
//! notification costs on this machine with nothing of callgate's own around
//! it (no journal, no logs, no replay store, no metrics, no admission, no
//! upstream signature). `benches/load/run.py` measures it next to nginx and
//! callgate (the `floor-*` runs); docs/performance.md, "The floor of the
//! stack", has the figures.
//!
//!     cargo run --release --example load_floor -- \
//!         PORT UPSTREAM_URL [--threads N] [--client legacy|conn] [--no-verify] \
//!         [--journal DIR] [--log] [--duties DIR]
//!
//! - PORT: 127.0.0.1 port to listen on (0: any free one). Prints
//!   `listening 127.0.0.1:PORT` on stdout once every thread accepts.
//! - UPSTREAM_URL: `http://HOST:PORT/PATH` the shop answers on.
//! - `--threads N`: worker threads (default: one per core). Each runs a
//!   tokio current-thread runtime with its own `SO_REUSEPORT` listener on
//!   the port (as callgate's workers do) and its own upstream connections.
//! - `--client legacy` (default): one `hyper_util` legacy pooled client
//!   per thread, built by callgate's own `forward::client_with_roots`.
//!   `--client conn`: a per-thread stack of idle `hyper::client::conn::http1`
//!   connections (take one, `ready()`, send, put it back once the reply is
//!   read; a new one when none is idle; dropped on error).
//! - `--no-verify`: forward without parsing or verifying (the pure
//!   forwarding floor).
//! - `--duties DIR`: what callgate's default configuration adds to every
//!   forward, done with callgate's own parts and nothing else of it: each
//!   verified notification's arrival is written to a journal in DIR
//!   (`journal::Journal`, `fsync = "interval"`) before its forward and its
//!   outcome after, and each request logs one info JSON line (callgate's
//!   `log_format::JsonLine` through its batched `log_writer`, to stdout).
//!   So `floor-*-duties` against `floor-*` is what those duties cost, and
//!   callgate against `floor-*-duties` what the rest of callgate costs
//!   (rules, allow list, limits, metrics, the replay store).
//!   `--journal DIR` and `--log` do one duty each (`--duties DIR` is both).
//!
//! `POST /notify/alipay` is verified as Alipay RSA2 (certs/dev, app id
//! 2021000000000001), `POST /notify/wechat` as WeChat Pay v2 (mch_id
//! 1900000109, appid wx2421b1c4370ec43b), both through `body::parse` +
//! `Provider::verify` as the pipeline calls them. Every answer is built by
//! callgate's own `ack::respond`: the platform's success ack once the shop
//! answered 2xx `success`, its failure ack with 401 for what does not verify, 502 for an
//! upstream that fails, 504 for one that does not answer in time.
//! SIGTERM ends the process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderValue};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use callgate::ack::{self, Ack, Outcome};
use callgate::body;
use callgate::forward::HttpClient;
use callgate::journal::{
    ArrivalLine, Body as JournalBody, Fsync, Headers, Journal, JournalConfig, OutcomeRecord,
    Record, Retention,
};
use callgate::provider::{Provider, alipay, wechat_v2};
use callgate::secret::Secret;

const MAX_BODY: usize = 64 * 1024;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// What the shop's reply must contain (the load configuration's `success_body`).
const SHOP_SUCCESS: &[u8] = b"success";

/// What every thread shares (read only).
struct Config {
    alipay: Provider,
    wechat: Provider,
    verify: bool,
    /// `--journal`: the journal each forward is written to.
    journal: Option<Journal>,
    /// `--log`: a log line a request.
    log: bool,
    upstream: Uri,
    upstream_addr: SocketAddr,
    host: HeaderValue,
    path: Uri,
}

/// One thread's way to the upstream.
enum Upstream {
    Legacy(HttpClient),
    Conn(Mutex<Vec<SendRequest<Full<Bytes>>>>),
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: load_floor PORT UPSTREAM_URL [--threads N] [--client legacy|conn] [--no-verify] [--journal DIR] [--log] [--duties DIR]";
    let (mut threads, mut conn, mut verify) = (None, false, true);
    let (mut journal_dir, mut log) = (None, false);
    let mut rest = args.iter().skip(2);
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--threads" => threads = Some(rest.next().expect(usage).parse().expect(usage)),
            "--client" => match rest.next().map(String::as_str) {
                Some("legacy") => conn = false,
                Some("conn") => conn = true,
                _ => panic!("{usage}"),
            },
            "--no-verify" => verify = false,
            "--journal" => journal_dir = Some(PathBuf::from(rest.next().expect(usage))),
            "--log" => log = true,
            "--duties" => {
                journal_dir = Some(PathBuf::from(rest.next().expect(usage)));
                log = true;
            }
            _ => panic!("{usage}"),
        }
    }
    let port: u16 = args.first().expect(usage).parse().expect(usage);
    let upstream: Uri = args.get(1).expect(usage).parse().expect(usage);
    let authority = upstream.authority().expect("UPSTREAM_URL: no host").clone();
    let upstream_addr = std::net::ToSocketAddrs::to_socket_addrs(&(
        authority.host(),
        authority.port_u16().unwrap_or(80),
    ))
    .expect("UPSTREAM_URL: host")
    .next()
    .expect("UPSTREAM_URL: host");
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });

    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/dev");
    let alipay = alipay::Keys::for_bench("2021000000000001", &certs.join("alipay_public.pem"))
        .expect("alipay_public.pem");
    let api_key = Secret::from_file(&certs.join("wechat_v2_api.key")).expect("wechat_v2_api.key");
    let wechat = wechat_v2::Keys::new("1900000109", Some("wx2421b1c4370ec43b"), api_key);
    // Kept to the end of main: it writes the last batch of log lines.
    let _log = log.then(|| {
        let (writer, guard) = callgate::log_writer::batched(std::io::stdout(), std::io::stderr())
            .expect("log writer");
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(writer)
            .event_format(callgate::log_format::JsonLine)
            .init();
        guard
    });
    let journal = journal_dir.map(|dir| {
        let config = JournalConfig {
            dir,
            fsync: Fsync::Interval,
            max_file_bytes: 64 * 1024 * 1024,
            max_files: 16,
            max_file_age: Duration::from_secs(3600),
        };
        let retention = Retention {
            ttl: Duration::ZERO,
            store_remembers: false,
            pruned_within_ttl: prometheus::IntCounter::new("pruned", "pruned").expect("counter"),
        };
        // A file per thread, as callgate's workers write.
        Journal::open_lanes(&config, "gateway", retention, threads).expect("journal")
    });
    let config = Arc::new(Config {
        alipay: Provider::Alipay(alipay),
        wechat: Provider::WechatV2(wechat),
        verify,
        journal,
        log,
        host: HeaderValue::from_str(authority.as_str()).expect("UPSTREAM_URL: host"),
        path: upstream
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .expect("UPSTREAM_URL: path"),
        upstream,
        upstream_addr,
    });

    // One listener per thread on one port, as src/server.rs binds its workers
    // (tokio's sockets need a reactor to bind: a runtime for main's use).
    let binder = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let _binding = binder.enter();
    let mut bound = SocketAddr::from(([127, 0, 0, 1], port));
    let mut listeners = Vec::with_capacity(threads);
    for _ in 0..threads {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.set_reuseport(true).expect("SO_REUSEPORT");
        socket.bind(bound).expect("bind");
        let listener = socket.listen(1024).expect("listen");
        bound = listener.local_addr().expect("local_addr");
        listeners.push(listener.into_std().expect("into_std"));
    }

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let workers: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| {
            let config = config.clone();
            let ready = ready_tx.clone();
            std::thread::Builder::new()
                .name(format!("floor-{index}"))
                .spawn(move || {
                    callgate::journal::use_lane(index);
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener).expect("listener");
                        let upstream = Arc::new(if conn {
                            Upstream::Conn(Mutex::new(Vec::new()))
                        } else {
                            Upstream::Legacy(callgate::forward::client_with_roots(
                                rustls::RootCertStore::empty(),
                            ))
                        });
                        ready.send(()).expect("ready");
                        serve(listener, config, upstream).await;
                    });
                })
                .expect("thread")
        })
        .collect();
    for _ in 0..threads {
        ready_rx.recv().expect("a worker did not start");
    }
    println!("listening {bound}");
    for w in workers {
        let _ = w.join();
    }
}

async fn serve(listener: TcpListener, config: Arc<Config>, upstream: Arc<Upstream>) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (config, upstream, builder) = (config.clone(), upstream.clone(), builder.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (config, upstream) = (config.clone(), upstream.clone());
                async move {
                    let response = if config.journal.is_some() || config.log {
                        with_duties(req, &config, &upstream).await
                    } else {
                        handle(req, &config, &upstream, None).await
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

/// `--journal`, `--log`: the request as [`handle`] serves it, its arrival
/// journaled before the forward and its outcome after, and its log line.
async fn with_duties(
    req: Request<Incoming>,
    config: &Config,
    upstream: &Upstream,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let rid = callgate::journal::new_rid();
    let path = req.uri().path().to_owned();
    let mut outcome = Outcome::NotFound;
    let response = handle(
        req,
        config,
        upstream,
        Some(Duties {
            journal: config.journal.as_ref(),
            rid: &rid,
            outcome: &mut outcome,
        }),
    )
    .await;
    if !config.log {
        return response;
    }
    tracing::info!(
        target: "callgate::request",
        request_id = rid.as_str(),
        method = "POST",
        path = path.as_str(),
        route = "floor",
        provider = "floor",
        outcome = outcome.as_str(),
        status = response.status().as_u16(),
        event_id = rid.as_str(),
        peer = "127.0.0.1:1",
        client = "127.0.0.1",
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        reason = "",
        dry_run = "",
        "notification"
    );
    response
}

/// What `--duties` needs of a request on its way.
struct Duties<'a> {
    journal: Option<&'a Journal>,
    rid: &'a str,
    outcome: &'a mut Outcome,
}

async fn handle(
    req: Request<Incoming>,
    config: &Config,
    upstream: &Upstream,
    mut duties: Option<Duties<'_>>,
) -> Response<Full<Bytes>> {
    // The answers are callgate's own (`ack::respond`), byte for byte.
    let (provider, ack) = match (req.method(), req.uri().path()) {
        (&Method::POST, "/notify/alipay") => (&config.alipay, Ack::SuccessFail),
        (&Method::POST, "/notify/wechat") => (&config.wechat, Ack::WechatXml),
        _ => return ack::respond(Outcome::NotFound, None),
    };
    let bad = |outcome| ack::respond(outcome, Some(ack));
    let (parts, incoming) = req.into_parts();
    let Ok(collected) = Limited::new(incoming, MAX_BODY).collect().await else {
        return bad(Outcome::Malformed);
    };
    let body = collected.to_bytes();
    if config.verify && !verifies(provider, &parts.headers, &body) {
        return bad(Outcome::BadSignature);
    }
    let content_type = parts.headers.get(CONTENT_TYPE).cloned();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if let Some(d) = &duties
        && let Some(journal) = d.journal
    {
        let headers: Vec<(&str, &str)> = parts
            .headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
            .collect();
        let arrival = ArrivalLine {
            rid: d.rid,
            unix: now,
            route: "floor",
            namespace: None,
            provider: provider.kind().as_str(),
            merchant: "floor",
            event_id: d.rid,
            client: "127.0.0.1",
            headers: Headers::Borrowed(&headers),
            body: JournalBody::Raw(&body),
            attempt: 1,
            order: None,
        };
        if journal.append_arrival(&arrival).await.is_err() {
            return bad(Outcome::StoreUnavailable);
        }
    }
    let forwarded = tokio::time::timeout(
        UPSTREAM_TIMEOUT,
        forward(config, upstream, content_type, body),
    )
    .await;
    let outcome = match forwarded {
        Ok(Ok(())) => Outcome::Forwarded,
        Ok(Err(_)) => Outcome::UpstreamError,
        Err(_) => Outcome::UpstreamTimeout,
    };
    if let Some(d) = &mut duties {
        *d.outcome = outcome;
    }
    if let Some(d) = &duties
        && let Some(journal) = d.journal
    {
        let record = Record::Outcome(OutcomeRecord {
            rid: d.rid.to_owned(),
            unix: now,
            route: "floor".to_owned(),
            namespace: None,
            merchant: "floor".to_owned(),
            event_id: d.rid.to_owned(),
            outcome: outcome.as_str().to_owned(),
            status: outcome.status().as_u16(),
            redelivery: false,
            shop_status: Some(200),
            shop_ms: Some(0.1),
        });
        let _ = journal.append(&record, false).await;
    }
    ack::respond(outcome, Some(ack))
}

fn verifies(provider: &Provider, headers: &HeaderMap, body: &Bytes) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match body::parse(provider.kind().format(), headers, body) {
        Ok(payload) => provider.verify(headers, body, &payload, now).is_ok(),
        Err(_) => false,
    }
}

/// Why a forward failed (the floor only counts it as a 502).
struct Failed;

/// POSTs `body` upstream and reads the reply: 2xx with `success` in it.
async fn forward(
    config: &Config,
    upstream: &Upstream,
    content_type: Option<HeaderValue>,
    body: Bytes,
) -> Result<(), Failed> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    if let Some(ct) = content_type {
        request.headers_mut().insert(CONTENT_TYPE, ct);
    }
    match upstream {
        Upstream::Legacy(client) => {
            *request.uri_mut() = config.upstream.clone();
            let response = client.request(request).await.map_err(|_| Failed)?;
            confirmed(response).await
        }
        Upstream::Conn(idle) => {
            // hyper's low-level client sends the URI as given: origin form.
            *request.uri_mut() = config.path.clone();
            request.headers_mut().insert(HOST, config.host.clone());
            let mut sender = take(config, idle).await?;
            let response = sender.send_request(request).await.map_err(|_| Failed)?;
            confirmed(response).await?;
            // Ready for the next request once the reply is read.
            if let Ok(mut idle) = idle.lock() {
                idle.push(sender);
            }
            Ok(())
        }
    }
}

/// An idle upstream connection that is ready, or a new one.
async fn take(
    config: &Config,
    idle: &Mutex<Vec<SendRequest<Full<Bytes>>>>,
) -> Result<SendRequest<Full<Bytes>>, Failed> {
    loop {
        let next = idle.lock().map_err(|_| Failed)?.pop();
        let Some(mut sender) = next else { break };
        if sender.ready().await.is_ok() {
            return Ok(sender);
        }
    }
    let tcp = TcpStream::connect(config.upstream_addr)
        .await
        .map_err(|_| Failed)?;
    let _ = tcp.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|_| Failed)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn confirmed(response: Response<Incoming>) -> Result<(), Failed> {
    let status = response.status();
    let reply = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| Failed)?
        .to_bytes();
    let success = reply.windows(SHOP_SUCCESS.len()).any(|w| w == SHOP_SUCCESS);
    if status.is_success() && success {
        Ok(())
    } else {
        Err(Failed)
    }
}
