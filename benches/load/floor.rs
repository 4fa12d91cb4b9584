//! The floor of a hyper-based gateway: what verifying and forwarding a
//! notification costs on this machine with nothing of callgate's own around
//! it (no journal, no logs, no replay store, no metrics, no admission, no
//! upstream signature; the options below add some of it back).
//! `benches/load/run.py` measures it next to nginx and callgate (the
//! `floor-*` runs, and `dup-floor-*` for duplicates); docs/performance.md,
//! "The floor of the stack", has the figures.
//!
//!     cargo run --release --example load_floor -- \
//!         PORT UPSTREAM_URL [--threads N] [--client legacy|conn] [--no-verify] \
//!         [--journal DIR] [--log] [--duties DIR | --min-duties DIR] [--dup]
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
//! - `--min-duties DIR`: the same duties with none of callgate's code, as
//!   cheaply as this architecture allows (module `min`): a lower bound on
//!   what the default configuration's duties can cost. Each worker thread
//!   appends raw, length-prefixed arrival records (request id, unix time,
//!   route, provider, merchant, event id, client, the headers, the body) to
//!   its own `DIR/floor-<thread>.bin`, written by `write` before the
//!   forward, batched as callgate's journal batches (a record into the
//!   thread's buffer, one `yield_now`, then one `write` of all the buffer
//!   holds); outcome records follow in the next such `write` or a 2 ms
//!   tick's; and one text log line a request, formatted by hand, to
//!   `DIR/floor-<thread>.log`, written at 64 KiB and on the tick. No other
//!   thread, no `tracing`. So `floor-*-minduties` against `floor-*` is the
//!   least those duties can cost here, and `floor-*-duties` against it what
//!   callgate's duty code could still save.
//! - `--dup`: a replay store, the least one: ONE map shared by every worker
//!   thread (a `Mutex<HashMap>`, as callgate's store is shared by its
//!   workers), keyed by the verified notification's provider, merchant and
//!   event id. A verified notification whose event is not in it claims it
//!   (in flight), is forwarded, and marks it delivered once the shop
//!   confirmed it (a failure gives the claim back); one whose event is
//!   delivered is answered as callgate answers a duplicate
//!   (`ack::respond(Outcome::Duplicate, ..)`: 200 and the platform's success
//!   ack) without a forward, and one whose event is in flight as callgate
//!   answers it (409). As in callgate (src/pipeline.rs: the claim comes
//!   before the journal), a duplicate writes no arrival and no outcome
//!   record; with `--min-duties` it still logs its line (outcome
//!   `duplicate`). `GET /__floor_count` answers the number of duplicates
//!   answered so far (run.py's `dup-floor-*` runs check every request of
//!   their window against it). Needs verification (no `--no-verify`).
//!
//! `POST /notify/alipay` is verified as Alipay RSA2 (certs/dev, app id
//! 2021000000000001), `POST /notify/wechat` as WeChat Pay v2 (mch_id
//! 1900000109, appid wx2421b1c4370ec43b), both through `body::parse` +
//! `Provider::verify` as the pipeline calls them. Every answer is built by
//! callgate's own `ack::respond`: the platform's success ack once the shop
//! answered 2xx `success` (and, `--dup`, to a duplicate), its failure ack
//! with 401 for what does not verify, 502 for an upstream that fails, 504
//! for one that does not answer in time.
//! SIGTERM ends the process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
use callgate::provider::{Provider, Verified, alipay, wechat_v2};
use callgate::secret::Secret;

const MAX_BODY: usize = 64 * 1024;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// What the shop's reply must contain (the load configuration's `success_body`).
const SHOP_SUCCESS: &[u8] = b"success";
/// `--dup`: answers the number of duplicates answered so far.
const COUNT_PATH: &str = "/__floor_count";

/// What every thread shares (read only).
struct Config {
    alipay: Provider,
    wechat: Provider,
    verify: bool,
    /// `--journal`: the journal each forward is written to.
    journal: Option<Journal>,
    /// `--log`: a log line a request.
    log: bool,
    /// `--min-duties`: the directory of each thread's files (module `min`).
    min: Option<PathBuf>,
    /// `--dup`: the events seen, shared by every thread.
    dup: Option<Dup>,
    upstream: Uri,
    upstream_addr: SocketAddr,
    host: HeaderValue,
    path: Uri,
}

/// `--dup`: the least replay store, one map for every worker thread.
#[derive(Default)]
struct Dup {
    /// Each event's key: `false` while it is forwarded (claimed), `true`
    /// once the shop confirmed it (delivered).
    events: Mutex<HashMap<String, bool>>,
    /// Duplicates answered.
    answered: AtomicU64,
}

/// What the map says of a verified notification's event.
enum Claim {
    /// Not seen: claimed now under this key.
    New(String),
    InFlight,
    Delivered,
}

impl Dup {
    fn claim(&self, provider: &Provider, verified: &Verified) -> Claim {
        let (kind, merchant, id) = (
            provider.kind().as_str(),
            verified.merchant(),
            verified.event_id(),
        );
        let mut key = String::with_capacity(kind.len() + merchant.len() + id.len() + 2);
        for (i, part) in [kind, merchant, id].into_iter().enumerate() {
            if i > 0 {
                key.push('\0');
            }
            key.push_str(part);
        }
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        match events.get(&key) {
            Some(true) => Claim::Delivered,
            Some(false) => Claim::InFlight,
            None => {
                events.insert(key.clone(), false);
                Claim::New(key)
            }
        }
    }

    /// Marks a claimed event delivered, or gives its claim back.
    fn settle(&self, key: String, delivered: bool) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if delivered {
            events.insert(key, true);
        } else {
            events.remove(&key);
        }
    }
}

/// One thread's way to the upstream.
enum Upstream {
    Legacy(HttpClient),
    Conn(Mutex<Vec<SendRequest<Full<Bytes>>>>),
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: load_floor PORT UPSTREAM_URL [--threads N] [--client legacy|conn] [--no-verify] [--journal DIR] [--log] [--duties DIR | --min-duties DIR] [--dup]";
    let (mut threads, mut conn, mut verify, mut dup) = (None, false, true, false);
    let (mut journal_dir, mut log, mut min) = (None, false, None);
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
            "--min-duties" => min = Some(PathBuf::from(rest.next().expect(usage))),
            "--dup" => dup = true,
            _ => panic!("{usage}"),
        }
    }
    // Either callgate's duty code or the minimal one, not both.
    assert!(min.is_none() || (journal_dir.is_none() && !log), "{usage}");
    // A duplicate is known by its verified event id.
    assert!(verify || !dup, "--dup needs verification: {usage}");
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
        min,
        dup: dup.then(Dup::default),
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
                    if let Some(dir) = &config.min {
                        min::open(dir, index).expect("--min-duties: the thread's files");
                    }
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
                        if config.min.is_some() {
                            tokio::spawn(min::tick());
                        }
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
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        // `--min-duties` logs the peer: its text formatted once a connection.
        let peer = config.min.is_some().then(|| {
            Arc::new(min::Peer {
                addr: peer.to_string(),
                ip: peer.ip().to_string(),
            })
        });
        let (config, upstream, builder) = (config.clone(), upstream.clone(), builder.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (config, upstream, peer) = (config.clone(), upstream.clone(), peer.clone());
                async move {
                    let response = if let Some(dup) = &config.dup
                        && req.uri().path() == COUNT_PATH
                    {
                        let answered = dup.answered.load(Ordering::Relaxed);
                        Response::new(Full::new(Bytes::from(answered.to_string())))
                    } else if let Some(peer) = &peer {
                        with_min_duties(req, &config, &upstream, peer).await
                    } else if config.journal.is_some() || config.log {
                        with_duties(req, &config, &upstream).await
                    } else {
                        handle(req, &config, &upstream, None).await.0
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
    let (response, outcome) = handle(
        req,
        config,
        upstream,
        Some(Duties {
            journal: config.journal.as_ref(),
            min: false,
            client: "127.0.0.1",
            rid: &rid,
            verified: &mut None,
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

/// `--min-duties`: the request as [`handle`] serves it, its arrival
/// written before the forward and its outcome after (module `min`), and
/// its log line.
async fn with_min_duties(
    req: Request<Incoming>,
    config: &Config,
    upstream: &Upstream,
    peer: &min::Peer,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let rid = min::rid();
    let rid = std::str::from_utf8(&rid).unwrap_or("-");
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let mut verified = None;
    let (response, outcome) = handle(
        req,
        config,
        upstream,
        Some(Duties {
            journal: None,
            min: true,
            client: &peer.ip,
            rid,
            verified: &mut verified,
        }),
    )
    .await;
    min::line(&min::Line {
        rid,
        method: method.as_str(),
        path: &path,
        provider: verified.as_ref().map_or("-", |v| v.kind().as_str()),
        outcome: outcome.as_str(),
        status: response.status().as_u16(),
        event_id: verified.as_ref().map_or("-", |v| v.event_id()),
        peer,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
    });
    response
}

/// What `--duties` and `--min-duties` need of a request on its way.
struct Duties<'a> {
    journal: Option<&'a Journal>,
    /// `--min-duties`: arrival and outcome through module `min`.
    min: bool,
    /// The client address the arrival holds.
    client: &'a str,
    rid: &'a str,
    /// What verified, for the log line.
    verified: &'a mut Option<Verified>,
}

async fn handle(
    req: Request<Incoming>,
    config: &Config,
    upstream: &Upstream,
    mut duties: Option<Duties<'_>>,
) -> (Response<Full<Bytes>>, Outcome) {
    // The answers are callgate's own (`ack::respond`), byte for byte.
    let (provider, ack) = match (req.method(), req.uri().path()) {
        (&Method::POST, "/notify/alipay") => (&config.alipay, Ack::SuccessFail),
        (&Method::POST, "/notify/wechat") => (&config.wechat, Ack::WechatXml),
        _ => return (ack::respond(Outcome::NotFound, None), Outcome::NotFound),
    };
    let bad = |outcome| (ack::respond(outcome, Some(ack)), outcome);
    let (parts, incoming) = req.into_parts();
    let Ok(collected) = Limited::new(incoming, MAX_BODY).collect().await else {
        return bad(Outcome::Malformed);
    };
    let body = collected.to_bytes();
    // `--dup`: the key of the event this request claimed.
    let mut claimed = None;
    if config.verify {
        let Some(verified) = verified(provider, &parts.headers, &body) else {
            return bad(Outcome::BadSignature);
        };
        // Claimed before anything is journaled, as callgate claims.
        let claim = config.dup.as_ref().map(|d| d.claim(provider, &verified));
        if let Some(d) = &mut duties {
            *d.verified = Some(verified);
        }
        match claim {
            Some(Claim::New(key)) => claimed = Some(key),
            Some(Claim::InFlight) => return bad(Outcome::InFlight),
            Some(Claim::Delivered) => {
                if let Some(dup) = &config.dup {
                    dup.answered.fetch_add(1, Ordering::Relaxed);
                }
                return (
                    ack::respond(Outcome::Duplicate, Some(ack)),
                    Outcome::Duplicate,
                );
            }
            None => {}
        }
    }
    // Settles the claim, if any: delivered, or given back.
    let settle = |claimed: Option<String>, delivered: bool| {
        if let (Some(dup), Some(key)) = (&config.dup, claimed) {
            dup.settle(key, delivered);
        }
    };
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
            settle(claimed, false);
            return bad(Outcome::StoreUnavailable);
        }
    }
    if let Some(d) = &duties
        && d.min
    {
        let verified = d.verified.as_ref();
        let arrival = min::Arrival {
            rid: d.rid,
            unix: now,
            provider: provider.kind().as_str(),
            merchant: verified.map_or("-", |v| v.merchant()),
            event_id: verified.map_or("-", |v| v.event_id()),
            client: d.client,
            headers: &parts.headers,
            body: &body,
        };
        if min::arrival(&arrival).await.is_err() {
            settle(claimed, false);
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
    settle(claimed, outcome == Outcome::Forwarded);
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
    if let Some(d) = &duties
        && d.min
    {
        min::outcome(d.rid, now, outcome.as_str(), outcome.status().as_u16());
    }
    (ack::respond(outcome, Some(ack)), outcome)
}

/// The notification if it verifies.
fn verified(provider: &Provider, headers: &HeaderMap, body: &Bytes) -> Option<Verified> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let payload = body::parse(provider.kind().format(), headers, body).ok()?;
    provider.verify(headers, body, &payload, now).ok()
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

/// `--min-duties`: callgate's default duties (the arrival journaled before
/// the forward, the outcome after, an info log line) with none of its code,
/// as cheaply as a thread-per-core gateway can do them: what stays is what
/// the duties themselves cost (the records' bytes copied once, a `write`
/// to the page cache shared by the requests a thread reaches together, a
/// text line formatted by hand). Everything is a worker thread's own: its
/// buffers, its two files, its 2 ms tick; no lock, no other thread. The
/// records are never read back: a simple framing, no Base64, no escaping.
mod min {
    use std::cell::RefCell;
    use std::fmt::Write as _;
    use std::fs::{File, OpenOptions};
    use std::io::{self, Write as _};
    use std::path::Path;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use http::HeaderMap;

    /// Log lines are written once they pass this (and on each tick).
    const LINES_AT: usize = 64 * 1024;
    const TICK: Duration = Duration::from_millis(2);

    /// A connection's peer, formatted once.
    pub struct Peer {
        /// `IP:PORT`.
        pub addr: String,
        pub ip: String,
    }

    /// What an arrival record holds (callgate's arrival, route "floor").
    pub struct Arrival<'a> {
        pub rid: &'a str,
        pub unix: i64,
        pub provider: &'a str,
        pub merchant: &'a str,
        pub event_id: &'a str,
        pub client: &'a str,
        pub headers: &'a HeaderMap,
        pub body: &'a [u8],
    }

    /// A request's log line: the fields of callgate's `callgate::request`
    /// line.
    pub struct Line<'a> {
        pub rid: &'a str,
        pub method: &'a str,
        pub path: &'a str,
        pub provider: &'a str,
        pub outcome: &'a str,
        pub status: u16,
        pub event_id: &'a str,
        pub peer: &'a Peer,
        pub duration_ms: f64,
    }

    /// A worker thread's files and what waits to be written to them.
    struct Lane {
        records: File,
        log: File,
        /// Arrival and outcome records not yet written.
        pending: Vec<u8>,
        /// The number of the batch `pending` holds (one a `write`).
        batch: u64,
        /// The last batch whose `write` failed.
        failed: Option<u64>,
        /// Log lines not yet written.
        lines: Vec<u8>,
        /// The Unix second of `date`, and `YYYY-MM-DDTHH:MM:SS` of it.
        second: u64,
        date: String,
        /// The request ids' generator (a SplitMix64 walk, as callgate's).
        rid: u64,
    }

    thread_local! {
        static LANE: RefCell<Option<Lane>> = const { RefCell::new(None) };
    }

    /// This thread's lane: `DIR/floor-<index>.bin` and `.log`, appended to.
    pub fn open(dir: &Path, index: usize) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let append = |name: String| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
        };
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32)
            ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let lane = Lane {
            records: append(format!("floor-{index}.bin"))?,
            log: append(format!("floor-{index}.log"))?,
            pending: Vec::with_capacity(64 * 1024),
            batch: 0,
            failed: None,
            lines: Vec::with_capacity(LINES_AT + 1024),
            second: u64::MAX,
            date: String::new(),
            rid: seed,
        };
        LANE.with_borrow_mut(|l| *l = Some(lane));
        Ok(())
    }

    /// A new request id: 16 hex digits.
    pub fn rid() -> [u8; 16] {
        let z = LANE.with_borrow_mut(|l| {
            let l = l.as_mut()?;
            l.rid = l.rid.wrapping_add(0x9E37_79B9_7F4A_7C15);
            Some(l.rid)
        });
        let mut z = z.unwrap_or(0);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let mut hex = [0u8; 16];
        for (i, d) in hex.iter_mut().enumerate() {
            *d = b"0123456789abcdef"[(z >> (60 - 4 * i)) as usize & 0xf];
        }
        hex
    }

    /// Appends `a` to this thread's batch and returns once a `write` that
    /// holds it returned: after one `yield_now` (the thread's other ready
    /// tasks add theirs), the first task back writes what the buffer holds;
    /// the others find it empty. An error when that `write` failed.
    pub async fn arrival(a: &Arrival<'_>) -> Result<(), ()> {
        let mine = LANE.with_borrow_mut(|l| {
            let l = l.as_mut()?;
            let buf = &mut l.pending;
            let start = record(buf, b'A');
            field(buf, a.rid.as_bytes());
            buf.extend_from_slice(&a.unix.to_le_bytes());
            field(buf, b"floor");
            field(buf, a.provider.as_bytes());
            field(buf, a.merchant.as_bytes());
            field(buf, a.event_id.as_bytes());
            field(buf, a.client.as_bytes());
            buf.extend_from_slice(&(a.headers.len() as u32).to_le_bytes());
            for (name, value) in a.headers {
                field(buf, name.as_str().as_bytes());
                field(buf, value.as_bytes());
            }
            field(buf, a.body);
            end(buf, start);
            Some(l.batch)
        });
        let Some(mine) = mine else { return Err(()) };
        tokio::task::yield_now().await;
        LANE.with_borrow_mut(|l| match l.as_mut() {
            Some(l) => {
                l.write_pending();
                // Batches are numbered in order: a failure at or after ours
                // may be ours (a needless 503 at worst, never a forward
                // without its record).
                match l.failed {
                    Some(failed) if failed >= mine => Err(()),
                    _ => Ok(()),
                }
            }
            None => Err(()),
        })
    }

    /// Appends an outcome record; the next batch's `write` takes it.
    pub fn outcome(rid: &str, unix: i64, outcome: &str, status: u16) {
        LANE.with_borrow_mut(|l| {
            let Some(l) = l.as_mut() else { return };
            let buf = &mut l.pending;
            let start = record(buf, b'O');
            field(buf, rid.as_bytes());
            buf.extend_from_slice(&unix.to_le_bytes());
            field(buf, outcome.as_bytes());
            buf.extend_from_slice(&status.to_le_bytes());
            end(buf, start);
        });
    }

    /// Adds the request's info line, as callgate's text format writes it:
    /// `2026-12-05T01:25:52.123456Z  INFO callgate::request: notification
    /// request_id="…" … dry_run=""`.
    pub fn line(f: &Line<'_>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        LANE.with_borrow_mut(|l| {
            let Some(l) = l.as_mut() else { return };
            if l.second != now.as_secs() {
                l.date.clear();
                if let Some(t) = chrono::DateTime::from_timestamp(now.as_secs() as i64, 0) {
                    let _ = write!(l.date, "{}", t.format("%Y-%m-%dT%H:%M:%S"));
                }
                l.second = now.as_secs();
            }
            let b = &mut l.lines;
            b.extend_from_slice(l.date.as_bytes());
            let mut micros = [b'0'; 8];
            micros[0] = b'.';
            let mut n = now.subsec_micros();
            for d in micros[1..7].iter_mut().rev() {
                *d = b'0' + (n % 10) as u8;
                n /= 10;
            }
            micros[7] = b'Z';
            b.extend_from_slice(&micros);
            b.extend_from_slice(b"  INFO callgate::request: notification request_id=");
            quoted(b, f.rid);
            b.extend_from_slice(b" method=");
            quoted(b, f.method);
            b.extend_from_slice(b" path=");
            quoted(b, f.path);
            b.extend_from_slice(b" route=\"floor\" provider=");
            quoted(b, f.provider);
            b.extend_from_slice(b" outcome=");
            quoted(b, f.outcome);
            b.extend_from_slice(b" status=");
            b.extend_from_slice(itoa::Buffer::new().format(f.status).as_bytes());
            b.extend_from_slice(b" event_id=");
            quoted(b, f.event_id);
            b.extend_from_slice(b" peer=");
            b.extend_from_slice(f.peer.addr.as_bytes());
            b.extend_from_slice(b" client=");
            quoted(b, &f.peer.ip);
            b.extend_from_slice(b" duration_ms=");
            b.extend_from_slice(ryu::Buffer::new().format(f.duration_ms).as_bytes());
            b.extend_from_slice(b" reason=\"\" dry_run=\"\"\n");
            if b.len() >= LINES_AT {
                l.write_lines();
            }
        });
    }

    /// Every 2 ms, writes what waits (an idle thread's outcomes and lines).
    pub async fn tick() {
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            LANE.with_borrow_mut(|l| {
                if let Some(l) = l.as_mut() {
                    l.write_pending();
                    l.write_lines();
                }
            });
        }
    }

    impl Lane {
        /// One `write` of the pending records, if any: the batch is done.
        fn write_pending(&mut self) {
            if self.pending.is_empty() {
                return;
            }
            if self.records.write_all(&self.pending).is_err() {
                self.failed = Some(self.batch);
            }
            self.pending.clear();
            self.batch += 1;
        }

        /// Log lines that cannot be written are dropped, as a log writer
        /// drops them.
        fn write_lines(&mut self) {
            if !self.lines.is_empty() {
                let _ = self.log.write_all(&self.lines);
                self.lines.clear();
            }
        }
    }

    /// Starts a record: its kind and room for its length.
    fn record(buf: &mut Vec<u8>, kind: u8) -> usize {
        buf.push(kind);
        buf.extend_from_slice(&[0; 4]);
        buf.len()
    }

    /// Ends the record begun at `start`: its length (after the length).
    fn end(buf: &mut [u8], start: usize) {
        let len = (buf.len() - start) as u32;
        buf[start - 4..start].copy_from_slice(&len.to_le_bytes());
    }

    /// A length-prefixed field.
    fn field(buf: &mut Vec<u8>, bytes: &[u8]) {
        buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        buf.extend_from_slice(bytes);
    }

    /// `s` as its `Debug` writes it: quoted, escaped only when it needs it.
    fn quoted(buf: &mut Vec<u8>, s: &str) {
        buf.push(b'"');
        if s.bytes()
            .all(|c| c >= 0x20 && c != 0x7f && c != b'"' && c != b'\\')
        {
            buf.extend_from_slice(s.as_bytes());
        } else {
            let mut escaped = String::new();
            let _ = write!(escaped, "{}", s.escape_debug());
            buf.extend_from_slice(escaped.as_bytes());
        }
        buf.push(b'"');
    }
}
