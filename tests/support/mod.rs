//! Test support, one module for every suite: fixtures, a recording
//! upstream, a gateway started on 127.0.0.1:0 from a temporary
//! configuration ([`GatewaySpec`], [`RouteSpec`]), an HTTP(S) client, a
//! metrics matcher, the independent checks of callgate's own signatures
//! (openssl), a real `redis-server`, and the `callgate` binary itself.
//! Everything binds ephemeral loopback ports and keeps the bound listener,
//! so tests can run in parallel without port races. Nothing sleeps: tests
//! wait on channels, or poll the gateway's own report with a bound.
//!
//! Outside programs (openssl, redis-server, php, ...) are started only
//! through [`tool`] (`tools.rs`), and starting an upstream or a gateway
//! checks for them too: without them a test binary stops at once with one
//! message naming the packages to install.
#![allow(dead_code)]

mod tools;
pub use tools::*;

#[allow(unused_imports)]
pub use callgate::clock::unix_now;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

// === fixtures ===

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file of `tests/fixtures/<dir>/`: `alipay`, `alipay_cert`,
/// `alipay_md5`, `wechat` (v2 and v3), `unionpay`, `jdpay`.
pub fn fixture_path(dir: &str, name: &str) -> PathBuf {
    root().join("tests/fixtures").join(dir).join(name)
}

/// The bytes of a fixture file (see [`fixture_path`]).
pub fn fixture(dir: &str, name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(dir, name)).expect("fixture")
}

/// A fixture folder's `expected.json`.
pub fn expected(dir: &str) -> serde_json::Value {
    serde_json::from_slice(&fixture(dir, "expected.json")).unwrap()
}

pub const WECHAT_MCH_ID: &str = "1900000109";
pub const WECHAT_APPID: &str = "wx2421b1c4370ec43b";
pub const WECHAT_PLATFORM_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
pub const WECHAT_PUB_KEY_ID: &str = "PUB_KEY_ID_0119000001092026112200000000000001";
pub const WECHAT_FUTURE_SERIAL: &str = "7A1D0A0B0C0D0E0F101112131415161718191A1C";

/// A genuine Alipay notification of `params` (`app_id`, `notify_id`, ...)
/// over realistic defaults, signed RSA2 with the fixture key by `callgate
/// sign alipay`. callgate's signer is only a load generator here; its
/// signatures are checked against openssl's in its unit tests and in
/// tests/cli.rs.
pub fn alipay_signed(params: &[(&str, &str)]) -> Vec<u8> {
    use callgate::sign::{AlipayArgs, SignArgs, SignProvider};
    let args = SignArgs {
        provider: SignProvider::Alipay(AlipayArgs {
            private_key: fixture_path("alipay", "alipay_private.pem"),
            params: params.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            sign_type: "RSA2".to_owned(),
            curl: None,
        }),
    };
    callgate::sign::run(&args).unwrap().into_bytes()
}

/// `params` sorted, and the string Alipay's signers sign over them: `k=v`
/// joined by `&`, values raw.
pub fn sorted_content<'a>(params: &[(&'a str, &'a str)]) -> (Vec<(&'a str, &'a str)>, String) {
    let mut sorted = params.to_vec();
    sorted.sort();
    let content = sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    (sorted, content)
}

/// A form value percent-encoded (everything but letters, digits, `-_.`).
pub fn percent_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A form body: `sorted` with values percent-encoded, then `tail` as is.
pub fn form_body(sorted: &[(&str, &str)], tail: &[String]) -> Vec<u8> {
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .chain(tail.iter().cloned())
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

/// An Alipay notification of `params` signed RSA2 by the openssl CLI with
/// the fixture key, as the Java SDK's `rsaCheckV1` checks it (sorted,
/// `sign`/`sign_type` left out), values percent-encoded.
pub fn alipay_openssl(params: &[(&str, &str)]) -> Vec<u8> {
    let (sorted, content) = sorted_content(params);
    let sign = openssl_sign_b64(
        &fixture_path("alipay", "alipay_private.pem"),
        content.as_bytes(),
    );
    form_body(
        &sorted,
        &[
            "sign_type=RSA2".to_owned(),
            format!("sign={}", percent_encode(&sign)),
        ],
    )
}

// === upstream ===

/// What the recording upstream does with a request.
#[derive(Clone)]
pub enum Behaviour {
    /// Answer at once.
    Reply(u16, &'static str),
    /// Wait until `release` is notified, then answer 200 `success`.
    Hold(Arc<Notify>),
    /// Take a permit of the semaphore (one per request, so releases never
    /// race the requests they are meant for), then answer.
    HoldReply(Arc<tokio::sync::Semaphore>, u16, &'static str),
    /// Never answer.
    Hang,
}

/// A request the upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub url: String,
    behaviour: Arc<Mutex<Behaviour>>,
    received: Arc<Mutex<Vec<Received>>>,
    arrivals: tokio::sync::Mutex<mpsc::UnboundedReceiver<Received>>,
    /// Connections accepted so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub async fn start(behaviour: Behaviour) -> Upstream {
        Self::start_inner(behaviour, None).await
    }

    /// An https upstream with the demo TLS pair (SAN 127.0.0.1).
    pub async fn start_tls(behaviour: Behaviour) -> Upstream {
        Self::start_inner(behaviour, Some(tls_acceptor())).await
    }

    async fn start_inner(behaviour: Behaviour, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        require_tools();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let behaviour = Arc::new(Mutex::new(behaviour));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::unbounded_channel();
        let (b, r) = (behaviour.clone(), received.clone());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (b, r, tx, tls) = (b.clone(), r.clone(), tx.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (b, r, tx) = (b.clone(), r.clone(), tx.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let rec = Received {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            };
                            r.lock().unwrap().push(rec.clone());
                            let _ = tx.send(rec);
                            let behaviour = b.lock().unwrap().clone();
                            let (status, body) = match behaviour {
                                Behaviour::Reply(s, body) => (s, body),
                                Behaviour::Hold(gate) => {
                                    gate.notified().await;
                                    (200, "success")
                                }
                                Behaviour::HoldReply(permits, s, body) => {
                                    permits.acquire().await.unwrap().forget();
                                    (s, body)
                                }
                                Behaviour::Hang => std::future::pending().await,
                            };
                            let mut resp =
                                Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    match tls {
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(tcp), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            url: format!("{scheme}://127.0.0.1:{}/plus/notify.php", addr.port()),
            behaviour,
            received,
            arrivals: tokio::sync::Mutex::new(rx),
            accepted,
        }
    }

    /// How many connections the upstream accepted.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits for the next request to arrive (bounded, so a broken test ends).
    pub async fn next(&self) -> Received {
        tokio::time::timeout(Duration::from_secs(30), self.arrivals.lock().await.recv())
            .await
            .expect("no request reached the upstream within 30s")
            .expect("upstream stopped")
    }
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let dev = root().join("certs/dev");
    let certs: Vec<_> = CertificateDer::pem_file_iter(dev.join("server.crt"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dev.join("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

// === routes ===

/// One `[[route]]`, with the fields tests vary.
#[derive(Clone)]
pub struct RouteSpec {
    pub name: String,
    pub path: String,
    pub provider: String,
    pub allow: Vec<String>,
    pub upstream: String,
    pub forward: String,
    pub max_age: Option<String>,
    pub success_body: Option<String>,
    pub upstream_ca: Option<PathBuf>,
    /// Extra `key = value` lines for the route table.
    pub extra: String,
    /// The `[route.keys]` table body.
    pub keys: String,
}

impl RouteSpec {
    /// A route of `provider` on `path`, its `[route.keys]` table body
    /// `keys`, named `shop-<provider>` (`_` written `-`): loopback may call
    /// it, it forwards the original body (to a port nobody listens on, until
    /// [`RouteSpec::upstream`]), and its `max_age` takes the fixtures'
    /// 2026-11-22 for years.
    pub fn new(provider: &str, path: &str, keys: String) -> RouteSpec {
        RouteSpec {
            name: format!("shop-{}", provider.replace('_', "-")),
            path: path.to_owned(),
            provider: provider.to_owned(),
            allow: vec!["127.0.0.1/32".into(), "::1/128".into()],
            upstream: "http://127.0.0.1:9/".into(),
            forward: "original".into(),
            max_age: Some("87600h".into()),
            success_body: None,
            upstream_ca: None,
            extra: String::new(),
            keys,
        }
    }

    /// Forwards to `upstream`.
    pub fn upstream(mut self, upstream: &Upstream) -> RouteSpec {
        self.upstream = upstream.url.clone();
        self
    }

    pub fn with(mut self, f: impl FnOnce(&mut RouteSpec)) -> RouteSpec {
        f(&mut self);
        self
    }

    /// Confirmed by the shop's `success` only.
    fn success(self) -> RouteSpec {
        self.with(|r| r.success_body = Some("success".into()))
    }

    /// `alipay` on `/notify/alipay` with the fixture public key.
    pub fn alipay(upstream: &Upstream) -> RouteSpec {
        RouteSpec::new(
            "alipay",
            "/notify/alipay",
            format!(
                "public_key = {:?}\napp_id = \"2021000000000001\"\n",
                fixture_path("alipay", "alipay_public.pem")
            ),
        )
        .upstream(upstream)
        .success()
    }

    /// `alipay` in certificate mode with the openssl-made chain of
    /// tests/fixtures/alipay_cert.
    pub fn alipay_cert(upstream: &Upstream) -> RouteSpec {
        RouteSpec::alipay(upstream).with(|r| {
            r.keys = format!(
                "app_id = \"2021000000000001\"\nalipay_cert = {:?}\nalipay_root_cert = {:?}\napp_cert = {:?}\n",
                fixture_path("alipay_cert", "alipayCertPublicKey_RSA2.crt"),
                fixture_path("alipay_cert", "alipayRootCert.crt"),
                fixture_path("alipay_cert", "appCertPublicKey_2021000000000001.crt"),
            )
        })
    }

    /// `alipay_md5` (`shop-legacy`) on `/notify/alipay_md5` with the
    /// fixture partner and key.
    pub fn alipay_md5(upstream: &Upstream) -> RouteSpec {
        RouteSpec::new(
            "alipay_md5",
            "/notify/alipay_md5",
            format!(
                "partner = \"2088101122334455\"\nkey_file = {:?}\n",
                fixture_path("alipay_md5", "md5_key.txt")
            ),
        )
        .upstream(upstream)
        .success()
        .with(|r| r.name = "shop-legacy".into())
    }

    /// `wechat_v2` on `/notify/wechat` with the fixture API key.
    pub fn wechat_v2(upstream: &Upstream) -> RouteSpec {
        RouteSpec::new(
            "wechat_v2",
            "/notify/wechat",
            format!(
                "mch_id = {WECHAT_MCH_ID:?}\nappid = {WECHAT_APPID:?}\napi_key_file = {:?}\n",
                fixture_path("wechat", "v2_api.key")
            ),
        )
        .upstream(upstream)
    }

    /// `wechat_v3` on `/notify/wechat-v3` with the fixture APIv3 key, a
    /// platform certificate, a public key and a not-yet-valid certificate;
    /// the default `max_age` (the tests sign with a fresh timestamp).
    pub fn wechat_v3(upstream: &Upstream) -> RouteSpec {
        let f = |n: &str| fixture_path("wechat", n);
        RouteSpec::new(
            "wechat_v3",
            "/notify/wechat-v3",
            format!(
                "mch_id = {WECHAT_MCH_ID:?}\napi_v3_key_file = {:?}\nplatform_keys = [\n  {{ serial = {WECHAT_PLATFORM_SERIAL:?}, certificate = {:?} }},\n  {{ serial = {WECHAT_PUB_KEY_ID:?}, public_key = {:?} }},\n  {{ serial = {WECHAT_FUTURE_SERIAL:?}, certificate = {:?} }},\n]\n",
                f("v3_api_v3.key"),
                f("platform_cert.pem"),
                f("pubkey_public.pem"),
                f("future_cert.pem"),
            ),
        )
        .upstream(upstream)
        .with(|r| r.max_age = None)
    }

    /// `unionpay` on `/notify/unionpay`, merId 777290058110097, trusting the
    /// fixture chain (5.1.0) and `sign.pem` (5.0.0).
    pub fn unionpay(upstream: &Upstream) -> RouteSpec {
        let f = |n: &str| fixture_path("unionpay", n);
        RouteSpec::new(
            "unionpay",
            "/notify/unionpay",
            format!(
                "mer_id = \"777290058110097\"\nroot_cert = {:?}\nmiddle_cert = {:?}\nverify_certs = [{:?}]\n",
                f("root.pem"),
                f("middle.pem"),
                f("sign.pem")
            ),
        )
        .upstream(upstream)
        .success()
    }

    /// `jdpay` on `/notify/jdpay` for merchant 110000000001 with the fixture
    /// DES key and "JD" public key.
    pub fn jdpay(upstream: &Upstream) -> RouteSpec {
        let f = |n: &str| fixture_path("jdpay", n);
        RouteSpec::new(
            "jdpay",
            "/notify/jdpay",
            format!(
                "merchant = \"110000000001\"\ndes_key_file = {:?}\njd_public_key = {:?}\n",
                f("des.key"),
                f("jd_public.pem")
            ),
        )
        .upstream(upstream)
        .success()
    }
}

pub fn route_toml(r: &RouteSpec) -> String {
    let mut s = format!(
        "[[route]]\nname = {:?}\npath = {:?}\nprovider = {:?}\nallow = {:?}\nupstream = {:?}\nupstream_secret_file = \"../upstream.secret\"\nforward = {:?}\n",
        r.name, r.path, r.provider, r.allow, r.upstream, r.forward
    );
    if let Some(m) = &r.max_age {
        s.push_str(&format!("max_age = {m:?}\n"));
    }
    if let Some(b) = &r.success_body {
        s.push_str(&format!("success_body = {b:?}\n"));
    }
    if let Some(ca) = &r.upstream_ca {
        s.push_str(&format!("upstream_ca = {ca:?}\n"));
    }
    s.push_str(&r.extra);
    s.push_str("\n[route.keys]\n");
    s.push_str(&r.keys);
    s.push('\n');
    s
}

// === gateway ===

#[derive(Clone)]
pub struct GatewaySpec {
    pub routes: Vec<RouteSpec>,
    pub tls: bool,
    pub trusted_proxies: Vec<String>,
    pub max_body_bytes: u64,
    pub header_timeout: String,
    pub body_timeout: String,
    pub upstream_timeout: String,
    /// `replay.store`.
    pub store: String,
    /// `replay.timeout` (500ms unless a test needs Redis more time).
    pub replay_timeout: String,
    /// Extra lines for `[replay]`.
    pub replay_extra: String,
    /// The `[journal]` table body (`enabled = false` turns it off).
    pub journal: String,
    /// `reload.watch`.
    pub watch: bool,
    /// `listen.workers` (unset: one per core).
    pub workers: Option<u32>,
}

impl GatewaySpec {
    pub fn new(routes: Vec<RouteSpec>) -> GatewaySpec {
        GatewaySpec {
            routes,
            tls: false,
            trusted_proxies: vec![],
            max_body_bytes: 65536,
            header_timeout: "5s".into(),
            body_timeout: "10s".into(),
            upstream_timeout: "10s".into(),
            store: "memory".into(),
            replay_timeout: "500ms".into(),
            replay_extra: String::new(),
            // Files that hold the suite's replay.ttl of 200100h between
            // them (`callgate check` warns of a journal that cannot).
            journal: "dir = \"journal\"\nmax_file_age = \"216000h\"\n".into(),
            watch: true,
            workers: None,
        }
    }

    /// Writes the gateway file, rules and secret into `dir`; returns the
    /// gateway file's path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        std::fs::write(dir.join("upstream.secret"), SECRET).unwrap();
        let dev = root().join("certs/dev");
        let tls = if self.tls {
            format!(
                "tls_cert = {:?}\ntls_key = {:?}\n",
                dev.join("server.crt"),
                dev.join("server.key")
            )
        } else {
            String::new()
        };
        let workers = self
            .workers
            .map_or(String::new(), |n| format!("workers = {n}\n"));
        let gateway = format!(
            r#"rules_dir = "rules"
trusted_proxies = {trusted:?}

[listen]
addr = "127.0.0.1:0"
{workers}{tls}
[admin]
addr = "127.0.0.1:0"

[replay]
store = "{store}"
ttl = "200100h"
max_entries = 100000
timeout = "{replay_timeout}"
{replay_extra}
[journal]
{journal}
[reload]
watch = {watch}

[limits]
max_body_bytes = {max_body}
header_timeout = "{header}"
upstream_timeout = "{upstream}"
body_timeout = "{body}"
tls_handshake_timeout = "{header}"
drain_timeout = "10s"
"#,
            trusted = self.trusted_proxies,
            max_body = self.max_body_bytes,
            header = self.header_timeout,
            upstream = self.upstream_timeout,
            body = self.body_timeout,
            store = self.store,
            replay_timeout = self.replay_timeout,
            replay_extra = self.replay_extra,
            journal = self.journal,
            watch = self.watch,
        );
        let path = dir.join("callgate.toml");
        std::fs::write(&path, gateway).unwrap();
        let mut rules = String::new();
        for r in &self.routes {
            rules.push_str(&route_toml(r));
        }
        std::fs::write(dir.join("rules/routes.toml"), rules).unwrap();
        path
    }
}

/// The upstream HMAC secret every test gateway uses.
pub const SECRET: &str = "test-upstream-secret-0123456789\n";

/// The admin API token tests configure (`admin.token_file`).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// Appends `line` to the `[limits]` table of a written gateway file (the
/// last table `GatewaySpec::write` writes).
pub fn add_limit(text: &mut String, line: &str) {
    text.push_str(line);
    text.push('\n');
}

/// An upstream that acks `success` and a gateway with one route, `route`'s
/// defaults pointed at it: the start of most single-provider tests.
pub async fn start_one(route: fn(&Upstream) -> RouteSpec) -> (Upstream, TestGateway) {
    let up = Upstream::start(Behaviour::Reply(200, "success")).await;
    let gw = TestGateway::start(GatewaySpec::new(vec![route(&up)])).await;
    (up, gw)
}

pub struct TestGateway {
    pub dir: tempfile::TempDir,
    pub gateway: callgate::server::Gateway,
    pub base: String,
    pub admin: String,
    client: TestClient,
}

impl TestGateway {
    /// Writes what the journal thread still holds (outcome records are
    /// queued), for a test that reads the journal files next.
    pub async fn flush_journal(&self) {
        if let Some(j) = &self.gateway.state.journal {
            j.flush().await;
        }
    }

    pub async fn start(spec: GatewaySpec) -> TestGateway {
        Self::start_in(tempfile::tempdir().unwrap(), spec).await
    }

    /// Starts a gateway in an existing directory (a restart keeps its journal).
    pub async fn start_in(dir: tempfile::TempDir, spec: GatewaySpec) -> TestGateway {
        Self::start_edited_in(dir, spec, |_| {}).await
    }

    /// Starts a gateway after `edit` has changed the written gateway file's
    /// text (for settings `GatewaySpec` does not carry).
    pub async fn start_edited(spec: GatewaySpec, edit: impl FnOnce(&mut String)) -> TestGateway {
        Self::start_edited_in(tempfile::tempdir().unwrap(), spec, edit).await
    }

    pub async fn start_edited_in(
        dir: tempfile::TempDir,
        spec: GatewaySpec,
        edit: impl FnOnce(&mut String),
    ) -> TestGateway {
        let file = spec.write(dir.path());
        let mut text = std::fs::read_to_string(&file).unwrap();
        edit(&mut text);
        std::fs::write(&file, text).unwrap();
        Self::launch(dir, &file, spec.tls).await
    }

    /// Starts a gateway from `spec`'s gateway file with `rules` (written by
    /// hand, for `[[route.merchant]]` tables) as its only rule file.
    pub async fn start_rules(spec: GatewaySpec, rules: &str) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let file = spec.write(dir.path());
        std::fs::write(dir.path().join("rules/routes.toml"), rules).unwrap();
        Self::launch(dir, &file, spec.tls).await
    }

    /// Starts a gateway whose admin API is on (`admin.token_file`).
    pub async fn start_with_admin_token(spec: GatewaySpec) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
        Self::start_edited_in(dir, spec, |t| {
            *t = t.replacen(
                "[admin]\naddr = \"127.0.0.1:0\"\n",
                "[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n",
                1,
            )
        })
        .await
    }

    /// Loads `file` as the gateway does and starts it.
    async fn launch(dir: tempfile::TempDir, file: &Path, tls: bool) -> TestGateway {
        require_tools();
        let setup =
            callgate::config::load(file).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let gateway = callgate::server::start(setup).await.unwrap();
        let scheme = if tls { "https" } else { "http" };
        let base = format!("{scheme}://127.0.0.1:{}", gateway.addr.port());
        let admin = format!("http://127.0.0.1:{}", gateway.admin_addr.unwrap().port());
        TestGateway {
            dir,
            gateway,
            base,
            admin,
            client: TestClient::new(),
        }
    }

    /// A copy of the gateway file naming the admin port actually bound, for
    /// `callgate journal redeliver` (the gateway's own file says port 0).
    pub fn cli_config(&self) -> PathBuf {
        let file = self.dir.path().join("callgate.toml");
        let text = std::fs::read_to_string(&file).unwrap().replacen(
            "[admin]\naddr = \"127.0.0.1:0\"",
            &format!(
                "[admin]\naddr = \"127.0.0.1:{}\"",
                self.gateway.admin_addr.unwrap().port()
            ),
            1,
        );
        let cli = self.dir.path().join("cli.toml");
        std::fs::write(&cli, text).unwrap();
        cli
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        self.client
            .send(method, &format!("{}{}", self.base, path), headers, body)
            .await
    }

    /// POSTs a form body to `path`.
    pub async fn post_form(&self, path: &str, body: &[u8]) -> Reply {
        self.send(
            "POST",
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            body.to_vec(),
        )
        .await
    }

    /// POSTs the Alipay fixture `name` to the `alipay` route.
    pub async fn post_alipay(&self, name: &str) -> Reply {
        self.post_form("/notify/alipay", &fixture("alipay", name))
            .await
    }

    /// POSTs a WeChat v2 XML body to `/notify/wechat`.
    pub async fn post_xml(&self, body: &[u8]) -> Reply {
        self.send(
            "POST",
            "/notify/wechat",
            &[("content-type", "text/xml")],
            body.to_vec(),
        )
        .await
    }

    /// POSTs `body` with owned headers.
    pub async fn send_owned(&self, path: &str, headers: &[(String, String)], body: &[u8]) -> Reply {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.send("POST", path, &h, body.to_vec()).await
    }

    pub async fn get_admin(&self, path: &str) -> Reply {
        self.client
            .send("GET", &format!("{}{}", self.admin, path), &[], vec![])
            .await
    }

    // === what the gateway reports ===

    /// The current value of one series, `None` when absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = self.get_admin("/metrics").await.text();
        find_metric(&text, name, labels)
    }

    /// `callgate_requests_total` of the `alipay` route (0 when absent).
    pub async fn requests(&self, outcome: &str) -> f64 {
        self.requests_of("shop-alipay", "alipay", outcome).await
    }

    /// `callgate_requests_total` for a route, provider and outcome (0 when
    /// absent).
    pub async fn requests_of(&self, route: &str, provider: &str, outcome: &str) -> f64 {
        self.metric(
            "callgate_requests_total",
            &[
                ("route", route),
                ("provider", provider),
                ("outcome", outcome),
            ],
        )
        .await
        .unwrap_or(0.0)
    }

    /// `callgate_rejections_total` for a route, provider and reason (0 when
    /// absent).
    pub async fn rejections(&self, route: &str, provider: &str, reason: &str) -> f64 {
        self.metric(
            "callgate_rejections_total",
            &[("route", route), ("provider", provider), ("reason", reason)],
        )
        .await
        .unwrap_or(0.0)
    }

    /// Polls a gauge or counter until `done` holds for it (bounded: 30 s).
    /// Waits on the gateway's own report, never on a fixed delay.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        done: impl Fn(f64) -> bool,
    ) -> f64 {
        for _ in 0..3000 {
            let v = self.metric(name, labels).await.unwrap_or(0.0);
            if done(v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{name} never reached the awaited value");
    }
}

/// Parses Prometheus text and returns the sample for `name` whose labels are
/// exactly `labels`.
pub fn find_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (n, l) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let got: BTreeMap<&str, &str> = l
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        if got == want {
            return value.parse().ok();
        }
    }
    None
}

// === client ===

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the status and the ack body, naming the case `what` on
    /// failure.
    pub fn assert_is(&self, status: u16, body: &str, what: impl std::fmt::Display) {
        assert_eq!(
            (self.status, self.text().as_str()),
            (status, body),
            "{what}"
        );
    }
}

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// A client that trusts the demo TLS certificate.
pub struct TestClient(Client<Https, Full<Bytes>>);

impl TestClient {
    pub fn new() -> TestClient {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(root().join("certs/dev/server.crt")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        TestClient(Client::builder(TokioExecutor::new()).build(https))
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(60), self.0.request(req))
            .await
            .expect("gateway did not answer within 60s")
            .expect("request failed");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }
}

// === callgate's own signatures, checked by openssl ===

/// `openssl ARGS` with `input` on stdin, which must succeed: its stdout.
/// The independent checker every suite shares.
pub fn openssl_pipe(args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = tool("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?} failed");
    out.stdout
}

/// `openssl dgst ARGS -r` over `input`: the digest as lower-case hex.
pub fn openssl_dgst_hex(args: &[&str], input: &[u8]) -> String {
    let out = openssl_pipe(&[&["dgst"], args, &["-r"]].concat(), input);
    String::from_utf8(out)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// HMAC-SHA256 hex by the openssl CLI, to check X-Callgate-Signature
/// independently of callgate's own code.
pub fn openssl_hmac_hex(key: &str, data: &[u8]) -> String {
    openssl_dgst_hex(&["-sha256", "-hmac", key], data)
}

/// Checks `X-Callgate-Signature`-style `t=..,v1=..` over `t + "." + data`
/// with openssl; returns t.
pub fn check_callgate_hmac(header: &str, data: &[u8]) -> String {
    let (t, v1) = header.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let signed = [t.as_bytes(), b".", data].concat();
    assert_eq!(v1, openssl_hmac_hex(SECRET.trim_end(), &signed));
    t.to_owned()
}

/// Checks `X-Callgate-Resource-Signature`, `t=..,v1=..` over
/// `"resource." + t + "." + data`, with openssl; returns t.
pub fn check_callgate_resource_hmac(header: &str, data: &[u8]) -> String {
    let (t, v1) = split_signature(header);
    let signed = [b"resource.", t.as_bytes(), b".", data].concat();
    assert_eq!(v1, openssl_hmac_hex(SECRET.trim_end(), &signed));
    t
}

/// `t=...,v1=...` split into (t, v1).
pub fn split_signature(header: &str) -> (String, String) {
    let (t, v1) = header.split_once(",v1=").expect("t=...,v1=...");
    (t.strip_prefix("t=").expect("t=").to_owned(), v1.to_owned())
}

/// A fresh RSA key at `key_out` and a self-signed certificate for
/// `/CN=cn`, valid `days` days, at `cert_out`, made by `openssl req -x509`
/// with `extra` options (`-addext ...`).
pub fn openssl_self_signed(cn: &str, days: u32, extra: &[&str], key_out: &Path, cert_out: &Path) {
    let days = days.to_string();
    let subject = format!("/CN={cn}");
    let out = tool("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", &days,
        ])
        .args(["-subj", &subject])
        .args(extra)
        .arg("-keyout")
        .arg(key_out)
        .arg("-out")
        .arg(cert_out)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl req -x509: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SHA256withRSA by the openssl CLI, standard Base64: WeChat's signer in
/// tests that need a fresh `Wechatpay-Timestamp`.
pub fn openssl_sign_b64(key: &Path, data: &[u8]) -> String {
    use base64::Engine as _;
    let key = key.to_str().expect("a UTF-8 key path");
    let signature = openssl_pipe(&["dgst", "-sha256", "-sign", key], data);
    base64::engine::general_purpose::STANDARD.encode(signature)
}

/// A fresh v3 request for a fixture body, signed by the platform certificate's key.
pub fn v3_signed(name: &str, nonce: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let body = fixture("wechat", name);
    let headers = v3_headers(
        "platform_private.pem",
        WECHAT_PLATFORM_SERIAL,
        unix_now(),
        nonce,
        &body,
    );
    (headers, body)
}

/// A v3 notification's headers: `body` signed by `key` (openssl) for
/// `serial` at `timestamp` with `nonce`.
pub fn v3_headers(
    key: &str,
    serial: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<(String, String)> {
    let message = [
        timestamp.to_string().as_bytes(),
        b"\n",
        nonce.as_bytes(),
        b"\n",
        body,
        b"\n",
    ]
    .concat();
    vec![
        ("content-type".into(), "application/json".into()),
        ("wechatpay-timestamp".into(), timestamp.to_string()),
        ("wechatpay-nonce".into(), nonce.into()),
        ("wechatpay-serial".into(), serial.into()),
        (
            "wechatpay-signature".into(),
            openssl_sign_b64(&fixture_path("wechat", key), &message),
        ),
    ]
}

// === redis ===

/// A real `redis-server` on a free loopback port, in its own directory,
/// without persistence. Killed on drop.
pub struct RedisServer {
    child: Option<std::process::Child>,
    pub port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments (`--requirepass x`, TLS).
    /// `{port}` in an argument is replaced by the chosen port.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut server = RedisServer {
                child: None,
                port,
                args: extra
                    .iter()
                    .map(|a| a.replace("{port}", &port.to_string()))
                    .collect(),
                dir: tempfile::tempdir().unwrap(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    fn spawn(&mut self) -> bool {
        use std::io::BufRead;
        let tls = self.args.iter().any(|a| a == "--tls-port");
        let mut cmd = tool("redis-server");
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ])
        .arg("--dir")
        .arg(self.dir.path());
        if !tls {
            cmd.args(["--port", &self.port.to_string()]);
        }
        cmd.args(&self.args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("redis-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("Ready to accept connections") {
                    let _ = tx.send(true);
                }
                if line.contains("Address already in use")
                    || line.contains("Could not create server")
                {
                    let _ = tx.send(false);
                }
            }
        });
        let ready = rx.recv_timeout(Duration::from_secs(30)).unwrap_or(false);
        self.child = Some(child);
        if !ready {
            self.kill();
        }
        ready
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli` against this server: its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Lua scripts this server ran (`EVAL` and `EVALSHA` calls, `INFO
    /// commandstats`).
    pub fn scripts_run(&self) -> u64 {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter(|l| l.starts_with("cmdstat_eval:") || l.starts_with("cmdstat_evalsha:"))
            .filter_map(|l| {
                l.split([':', ','])
                    .find_map(|f| f.strip_prefix("calls="))
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .sum()
    }

    /// Sends `sig` (`-STOP`, `-CONT`) to the server: a stopped Redis
    /// accepts and queues what it is sent, and runs it once continued.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let done = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(done.success(), "kill {sig} {pid}");
    }

    /// Stops the server at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not come back on port {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `/readyz` until it answers `want` (bounded: 30 s). Waiting on the
/// gateway's own readiness signal, not on a fixed delay.
pub async fn wait_ready(gw: &TestGateway, want: u16) {
    for _ in 0..600 {
        if gw.get_admin("/readyz").await.status == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz never answered {want}");
}

// === raw sockets ===

/// Reads until the peer closes the connection; returns what it sent. The
/// 30 s bound only stops a broken test (the timeouts under test are far
/// shorter).
pub async fn read_until_closed(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("the server did not close the connection")
        .ok();
    out
}

/// The head of a raw HTTP/1.1 form POST of `len` body bytes to the Alipay
/// route, for tests that write (or trickle) the bytes themselves.
pub fn alipay_post_head(len: usize) -> String {
    format!(
        "POST /notify/alipay HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// Reads one HTTP/1.1 request off a raw connection, as a hand-written shop
/// or platform stub sees it: (lower-cased head, Content-Length body);
/// `None` at EOF.
pub async fn read_http_request(tcp: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some((head, buf[end + 4..end + 4 + len].to_vec()));
            }
        }
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

// === php -S ===

/// Starts `php` (a [`tool`] command: `-S 127.0.0.1:PORT` and the rest
/// already set) and waits (bounded: 30 s) for PHP's own word that the
/// development server listens. Each stderr line also goes to `log` when
/// given. `None` (the process reaped) when it could not listen, so the
/// caller can try another port.
pub async fn spawn_php_server(
    mut php: std::process::Command,
    log: Option<std::fs::File>,
) -> Option<std::process::Child> {
    use std::io::{BufRead, Write};
    use std::process::Stdio;
    let mut child = php
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("php (apt-get install php-cli php-sqlite3)");
    // php -S reports on stderr: "... Development Server (http://...) started"
    // or "Failed to listen on ...".
    let stderr = child.stderr.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut log = log;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(log) = log.as_mut() {
                let _ = writeln!(log, "{line}");
            }
            if line.contains("Development Server") && line.contains("started") {
                let _ = tx.send(true);
            }
            if line.contains("Failed to listen") {
                let _ = tx.send(false);
            }
        }
        let _ = tx.send(false);
    });
    let ready = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or(false);
    if ready {
        Some(child)
    } else {
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

// === the binary ===

/// `callgate ARGS -c CONFIG`: (exit code, stdout, stderr).
pub fn callgate_cli(args: &[&str], config: &Path) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `callgate run` process (the real binary) with its JSON log lines on a
/// channel. Killed (SIGKILL) on drop.
pub struct GatewayProcess {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
    /// `127.0.0.1:PORT` of the notification listener.
    pub addr: String,
    pub admin: String,
}

impl GatewayProcess {
    pub fn start(config: &Path) -> GatewayProcess {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"));
        command
            .args(["run", "--log-format", "json", "-c"])
            .arg(config);
        Self::spawn(command)
    }

    /// Starts it from a shell that first runs `ulimit ARGS` (say `-Sn 256`:
    /// the open-files limit it starts with).
    pub fn start_under_ulimit(config: &Path, ulimit: &str) -> GatewayProcess {
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit {ulimit} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_callgate"))
            .args(["run", "--log-format", "json", "-c"])
            .arg(config);
        Self::spawn(command)
    }

    fn spawn(mut command: std::process::Command) -> GatewayProcess {
        use std::io::BufRead;
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = GatewayProcess {
            child,
            lines,
            seen: vec![],
            addr: String::new(),
            admin: String::new(),
        };
        let serving = p.wait_for(|v| v["message"] == "callgate serving");
        p.addr = serving["listen"].as_str().unwrap().to_owned();
        p.admin = serving["admin"].as_str().unwrap().to_owned();
        p
    }

    /// Waits (bounded: 60 s without a line) for a JSON log line matching
    /// `pred`.
    pub fn wait_for(&mut self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("log line not seen; got:\n{}", self.seen.join("\n")));
            self.seen.push(line.clone());
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if pred(&v) {
                return v;
            }
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
