//! Shared set-up for the fuzz targets: one rule set with a route for every
//! provider, keyed with the committed test fixtures, loaded once through
//! `callgate::config::load` exactly as the gateway loads it.

use std::path::PathBuf;
use std::sync::OnceLock;

use callgate::rules::{Route, Routes};

/// Verification time: now, when the fixture certificates are valid, so
/// verification runs as deep as the bytes allow (freshness is not part of
/// `verify`).
pub fn now() -> i64 {
    static NOW: OnceLock<i64> = OnceLock::new();
    *NOW.get_or_init(callgate::clock::unix_now)
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Every route's path, in the order `rules()` defines them.
pub const PATHS: [&str; 7] = [
    "/alipay",
    "/alipay_cert",
    "/alipay_md5",
    "/wechat_v2",
    "/wechat_v3",
    "/unionpay",
    "/jdpay",
];

/// The gateway file and rule file the fuzz targets load, written into `dir`.
pub fn write_config(dir: &std::path::Path) -> PathBuf {
    let f = fixtures();
    let p = |d: &str, n: &str| format!("{:?}", f.join(d).join(n));
    std::fs::create_dir_all(dir.join("rules")).expect("rules dir");
    std::fs::write(dir.join("upstream.secret"), "fuzz-secret\n").expect("secret");
    let gateway = "rules_dir = \"rules\"\n[listen]\naddr = \"127.0.0.1:0\"\n[journal]\nenabled = false\n";
    std::fs::write(dir.join("callgate.toml"), gateway).expect("gateway file");
    let route = |name: &str, provider: &str, keys: String| {
        format!(
            "[[route]]\nname = \"{name}\"\npath = \"/{name}\"\nprovider = \"{provider}\"\n\
             allow = [\"127.0.0.1\"]\nupstream = \"http://127.0.0.1:9/\"\n\
             upstream_secret_file = \"../upstream.secret\"\n[route.keys]\n{keys}\n"
        )
    };
    let rules = [
        route(
            "alipay",
            "alipay",
            format!(
                "app_id = \"2021000000000001\"\npublic_key = {}\nsign_types = [\"RSA2\", \"RSA\"]\n",
                p("alipay", "alipay_public.pem")
            ),
        ),
        route(
            "alipay_cert",
            "alipay",
            format!(
                "app_id = \"2021000000000001\"\nalipay_cert = {}\nalipay_root_cert = {}\napp_cert = {}\n",
                p("alipay_cert", "alipayCertPublicKey_RSA2.crt"),
                p("alipay_cert", "alipayRootCert.crt"),
                p("alipay_cert", "appCertPublicKey_2021000000000001.crt"),
            ),
        ),
        route(
            "alipay_md5",
            "alipay_md5",
            format!(
                "partner = \"2088101122334455\"\nkey_file = {}\n",
                p("alipay_md5", "md5_key.txt")
            ),
        ),
        route(
            "wechat_v2",
            "wechat_v2",
            format!(
                "mch_id = \"1900000109\"\nappid = \"wx2421b1c4370ec43b\"\napi_key_file = {}\n",
                p("wechat", "v2_api.key")
            ),
        ),
        route(
            "wechat_v3",
            "wechat_v3",
            format!(
                "mch_id = \"1900000109\"\napi_v3_key_file = {}\nplatform_keys = [\n\
                 {{ serial = \"5157F09EFDC096DE15EBE81A47057A7232F1B8E1\", certificate = {} }},\n\
                 {{ serial = \"PUB_KEY_ID_0119000001092026112200000000000001\", public_key = {} }},\n]\n",
                p("wechat", "v3_api_v3.key"),
                p("wechat", "platform_cert.pem"),
                p("wechat", "pubkey_public.pem"),
            ),
        ),
        route(
            "unionpay",
            "unionpay",
            format!(
                "mer_id = \"777290058110097\"\nroot_cert = {}\nmiddle_cert = {}\nverify_certs = [{}]\n",
                p("unionpay", "root.pem"),
                p("unionpay", "middle.pem"),
                p("unionpay", "sign.pem"),
            ),
        ),
        route(
            "jdpay",
            "jdpay",
            format!(
                "merchant = \"110000000001\"\ndes_key_file = {}\njd_public_key = {}\n",
                p("jdpay", "des.key"),
                p("jdpay", "jd_public.pem"),
            ),
        ),
    ]
    .concat();
    std::fs::write(dir.join("rules/routes.toml"), rules).expect("rule file");
    dir.join("callgate.toml")
}

/// The rule set, loaded once per process.
pub fn rules() -> &'static Routes {
    static RULES: OnceLock<Routes> = OnceLock::new();
    RULES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write_config(dir.path());
        let loaded = callgate::config::load(&file)
            .unwrap_or_else(|e| panic!("fuzz configuration does not load:\n{e}"));
        loaded.snapshot.routes
    })
}

pub fn route(path: &str) -> &'static Route {
    rules().get(path).expect("route")
}

/// Headers with one Content-Type.
pub fn content_type(ct: &'static str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ct));
    h
}

/// Parses `body` for `route`'s format and verifies it; when it verifies,
/// also builds the normalized JSON (the code that runs next in the
/// gateway). Any panic is a bug.
pub fn parse_and_verify(route: &Route, headers: &http::HeaderMap, body: &[u8]) {
    if let Ok(payload) = callgate::body::parse(route.kind().format(), headers, body)
        && let Ok((_, v)) = route.verify(headers, &body.to_vec().into(), &payload, now())
    {
        let _ = callgate::normalize::normalize(&v);
    }
}
