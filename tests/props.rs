//! Property tests over every parser and verifier that sees untrusted bytes
//! (bad input):
//! * arbitrary bytes (and format-shaped noise) never panic the form, XML,
//!   JSON and JD envelope parsers, the six verifiers behind them, the v3
//!   headers, the key and certificate loaders, or the rule-file loader;
//! * a valid notification (a committed, independently signed fixture) with
//!   any one byte changed never verifies to anything else: either it is
//!   refused, or the change is one the platform's SDK ignores too (the hex
//!   case of a `%` escape, whitespace between XML elements, fields the
//!   platform leaves unauthenticated: JD's envelope `result`, a WeChat v2
//!   refund's outer `nonce_str`, the name of a field with an empty value)
//!   and what the verification vouches for
//!   (event id, signed time, and the decrypted content, or else every
//!   verified field) is byte for byte the same. Positions and replacement
//!   bytes are sampled, not exhausted.
//! * a valid form notification reshaped the way an attacker holding it
//!   would (a field folded into the value of the one that sorts before it,
//!   then blanked or dropped; a value padded with whitespace; a blank field
//!   added) either is refused or verifies as the same event: the same
//!   merchant, event id and signed time. Which fields are reshaped, and
//!   how, is sampled.
//!
//! The same entry points have libFuzzer targets under `fuzz/`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use callgate::body::Envelope;
use callgate::body::{self, Form, JsonBody, XmlMap};
use callgate::rules::{Route, Routes};
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use support::*;

/// Verification time: now, as the gateway verifies (the fixture
/// certificates are valid now; freshness is not part of `verify`).
fn now() -> i64 {
    callgate::clock::unix_now()
}

const ALIPAY: &str = "/notify/alipay";
const ALIPAY_CERT: &str = "/notify/alipay-cert";
const ALIPAY_MD5: &str = "/notify/alipay_md5";
const WECHAT_V2: &str = "/notify/wechat";
const WECHAT_V3: &str = "/notify/wechat-v3";
const UNIONPAY: &str = "/notify/unionpay";
const JDPAY: &str = "/notify/jdpay";
const PATHS: [&str; 7] = [
    ALIPAY,
    ALIPAY_CERT,
    ALIPAY_MD5,
    WECHAT_V2,
    WECHAT_V3,
    UNIONPAY,
    JDPAY,
];

/// One rule set with a route per provider, loaded by `config::load` from
/// the same route specs the integration suites use.
fn rules() -> &'static Routes {
    static RULES: OnceLock<Routes> = OnceLock::new();
    RULES.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Routes need an upstream URL; nothing is ever sent to it.
        let up = rt.block_on(Upstream::start(Behaviour::Reply(200, "success")));
        let routes = vec![
            // Both signature types, for the SHA1withRSA sample.
            RouteSpec::alipay(&up).with(|r| r.keys.push_str("sign_types = [\"RSA2\", \"RSA\"]\n")),
            RouteSpec::alipay_cert(&up).with(|r| {
                r.name = "shop-alipay-cert".into();
                r.path = ALIPAY_CERT.into();
            }),
            RouteSpec::alipay_md5(&up),
            RouteSpec::wechat_v2(&up),
            RouteSpec::wechat_v3(&up),
            RouteSpec::unionpay(&up),
            RouteSpec::jdpay(&up),
        ];
        let dir = tempfile::tempdir().unwrap();
        let file = GatewaySpec::new(routes).write(dir.path());
        let loaded = callgate::config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        std::mem::forget(dir);
        std::mem::forget(rt);
        loaded.snapshot.routes
    })
}

fn route(path: &str) -> &'static Route {
    rules().get(path).unwrap()
}

fn content_type(route: &Route) -> &'static str {
    match route.kind().format() {
        body::Format::Form => "application/x-www-form-urlencoded",
        body::Format::Xml | body::Format::JdXml => "text/xml",
        body::Format::Json => "application/json",
    }
}

fn headers_for(route: &Route, extra: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(route)),
    );
    for (k, v) in extra {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v.as_bytes()),
        ) {
            h.insert(name, value);
        }
    }
    h
}

/// What a verification vouches for: merchant and event id, signed time and the
/// authenticated content (what the platform encrypted, decrypted; else the
/// normalized JSON of every verified field), or why it was refused.
type Vouched = (String, i64, Vec<u8>);

fn verify(route: &Route, headers: &HeaderMap, body: &[u8]) -> Result<Vouched, String> {
    let payload = body::parse(route.kind().format(), headers, body).map_err(|e| e.to_string())?;
    let (_, v) = route
        .verify(headers, &body.to_vec().into(), &payload, now())
        .map_err(|e| e.to_string())?;
    let content = match v.decrypted() {
        Some(plain) => plain.to_vec(),
        None => {
            // Empty values are left out of the signed string by the
            // platforms' own rule (Alipay `paraFilter`, WeChat
            // `WXPayUtil`), so an empty field's name is not authenticated.
            let mut json: serde_json::Value =
                serde_json::from_slice(&callgate::normalize::normalize(&v)).unwrap();
            if let Some(fields) = json.get_mut("fields").and_then(|f| f.as_object_mut()) {
                fields.retain(|_, v| v.as_str() != Some(""));
            }
            serde_json::to_vec(&json).unwrap()
        }
    };
    // The replay key's parts: merchant and event id.
    let key = format!("{} {}", v.merchant(), v.event_id());
    Ok((key, v.signed_at(), content))
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

/// Bytes shaped like the formats: markup, escapes and separators, mixed
/// with anything.
fn shaped() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"<xml>".to_vec()),
        Just(b"</xml>".to_vec()),
        Just(b"<jdpay>".to_vec()),
        Just(b"</jdpay>".to_vec()),
        Just(b"<![CDATA[".to_vec()),
        Just(b"]]>".to_vec()),
        Just(b"<!DOCTYPE x [<!ENTITY e \"e\">]>".to_vec()),
        Just(b"&amp;".to_vec()),
        Just(b"&#x4E3B;".to_vec()),
        Just(b"&e;".to_vec()),
        Just(b"<?xml version=\"1.0\"?>".to_vec()),
        Just(b"{\"id\":".to_vec()),
        Just(b"[".to_vec()),
        Just(b"}".to_vec()),
        Just(b"\"\\u00e9\"".to_vec()),
        Just(b"&".to_vec()),
        Just(b"=".to_vec()),
        Just(b"%".to_vec()),
        Just(b"%E4%B8%BB".to_vec()),
        Just(b"%FF".to_vec()),
        Just(b"+".to_vec()),
        Just(b"sign=".to_vec()),
        Just(b"sign_type=RSA2".to_vec()),
        "[a-z_]{1,8}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 1..8),
    ];
    prop::collection::vec(token, 0..64).prop_map(|t| t.concat())
}

// === arbitrary bytes never panic ===

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parsers_never_panic(data in prop_oneof![prop::collection::vec(any::<u8>(), 0..4096), shaped()]) {
        let _ = Form::parse(&data);
        let _ = XmlMap::parse(&data);
        let _ = JsonBody::parse(&data);
        let _ = Envelope::parse(&data);
    }

    #[test]
    fn verifiers_never_panic(
        data in prop_oneof![prop::collection::vec(any::<u8>(), 0..4096), shaped()],
        which in 0..PATHS.len(),
    ) {
        let r = route(PATHS[which]);
        let _ = verify(r, &headers_for(r, &[]), &data);
    }

    #[test]
    fn v3_headers_never_panic(
        signature in prop_oneof![".{0,400}", "[A-Za-z0-9+/=]{0,400}", Just("WECHATPAY/SIGNTEST/x".to_owned())],
        serial in prop_oneof![".{0,64}", "[0-9A-Fa-f]{0,60}", "PUB_KEY_ID_[0-9]{0,40}"],
        timestamp in prop_oneof![".{0,16}", "[0-9]{0,14}"],
        nonce in ".{0,40}",
        sig_type in prop::option::of(prop_oneof![".{0,30}", Just("WECHATPAY2-SHA256-RSA2048".to_owned())]),
        body in prop_oneof![prop::collection::vec(any::<u8>(), 0..2048), shaped()],
    ) {
        let r = route(WECHAT_V3);
        let mut extra = vec![
            ("wechatpay-signature", signature.as_str()),
            ("wechatpay-serial", serial.as_str()),
            ("wechatpay-timestamp", timestamp.as_str()),
            ("wechatpay-nonce", nonce.as_str()),
        ];
        if let Some(t) = &sig_type {
            extra.push(("wechatpay-signature-type", t.as_str()));
        }
        let _ = verify(r, &headers_for(r, &extra), &body);
        // The same headers over the real body reach the signature check.
        let _ = verify(r, &headers_for(r, &extra), &fixture("wechat", "v3_pay.json"));
    }

    #[test]
    fn jd_payloads_never_panic(plain in prop_oneof![prop::collection::vec(any::<u8>(), 0..2048), shaped()]) {
        let r = route(JDPAY);
        let _ = verify(r, &headers_for(r, &[]), &jd_envelope_around(&plain));
    }
}

/// A JD envelope whose `encrypt` is `plain` under the fixture 3DES key,
/// length-prefixed as JD does, so arbitrary text reaches the code after
/// decryption (UTF-8 check, `<sign>` extraction, the SDK's formatting).
fn jd_envelope_around(plain: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let text = std::fs::read_to_string(fixture_path("jdpay", "des.key")).unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap()
    });
    let mut packed = (plain.len() as u32).to_be_bytes().to_vec();
    packed.extend_from_slice(plain);
    while !packed.len().is_multiple_of(8) {
        packed.push(0);
    }
    let cipher = tdes_ecb_encrypt(key, &packed);
    let encrypt = base64::engine::general_purpose::STANDARD.encode(hex::encode(cipher));
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><jdpay><version>V2.0</version>\
         <merchant>110000000001</merchant><result><code>000000</code><desc>success</desc></result>\
         <encrypt>{encrypt}</encrypt></jdpay>"
    )
    .into_bytes()
}

/// 3DES-EDE3 ECB without padding, block by block, with the RustCrypto
/// cipher the fuzz target uses too (a second implementation: callgate's
/// `des_ecb` is private).
fn tdes_ecb_encrypt(key: &[u8], data: &[u8]) -> Vec<u8> {
    use des::TdesEde3;
    use des::cipher::{Array, BlockCipherEncrypt, KeyInit};
    let cipher = TdesEde3::new_from_slice(key).unwrap();
    let mut out = data.to_vec();
    for chunk in out.chunks_exact_mut(8) {
        let mut block = Array::<u8, _>::default();
        block.copy_from_slice(chunk);
        cipher.encrypt_block(&mut block);
        chunk.copy_from_slice(&block);
    }
    out
}

// === key, certificate and rule-file loading never panics ===

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn load_keys(data: &[u8], tag: u64) {
    use callgate::provider::{RsaKey, alipay_cert, jdpay, unionpay, wechat_v3};
    let file = scratch().join(format!("key-{tag}.pem"));
    std::fs::write(&file, data).unwrap();
    let _ = RsaKey::from_file(&file);
    let _ = wechat_v3::load_certificate(&file);
    let _ = alipay_cert::load(
        &alipay_cert::CertFiles {
            alipay_cert: &file,
            alipay_root_cert: &file,
            app_cert: Some(&file),
        },
        now(),
    );
    let _ = unionpay::Keys::from_files("777290058110097", Some((&file, &file)), &[&file]);
    let _ = jdpay::Keys::from_files("110000000001", &fixture_path("jdpay", "des.key"), &file);
    let _ = jdpay::Keys::from_files(
        "110000000001",
        &file,
        &fixture_path("jdpay", "jd_public.pem"),
    );
}

/// Key and certificate files the loaders accept, to mutate.
fn key_files() -> Vec<Vec<u8>> {
    [
        ("wechat", "platform_cert.pem"),
        ("wechat", "pubkey_public.pem"),
        ("alipay", "alipay_public.b64"),
        ("alipay_cert", "alipayCertPublicKey_RSA2.crt"),
        ("alipay_cert", "alipayRootCert.crt"),
        ("unionpay", "middle.pem"),
        ("jdpay", "des.key"),
    ]
    .iter()
    .map(|(d, n)| fixture(d, n))
    .collect()
}

/// The shipped demo rule files, to mutate.
fn rule_files() -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// Replaces, inserts or deletes bytes at sampled positions.
fn mutate(mut data: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, byte, op) in edits {
        if data.is_empty() {
            data.push(byte);
            continue;
        }
        let at = at % data.len();
        match op % 3 {
            0 => data[at] = byte,
            1 => data.insert(at, byte),
            _ => {
                data.remove(at);
            }
        }
    }
    data
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn key_loaders_never_panic(
        data in prop_oneof![prop::collection::vec(any::<u8>(), 0..2048), shaped()],
        which in 0..7usize,
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
        tag in any::<u64>(),
    ) {
        load_keys(&data, tag);
        let files = key_files();
        load_keys(&mutate(files[which % files.len()].clone(), &edits), tag);
    }

    #[test]
    fn rule_files_never_panic(
        which in 0..5usize,
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8),
        noise in "[\\[\\]{}=\"a-z_ ,.0-9\n#/-]{0,300}",
    ) {
        let files = rule_files();
        let (dir, file) = harness_for_shipped_rules();
        let rules = dir.path().join("rules/routes.toml");
        std::fs::write(&rules, mutate(files[which % files.len()].clone(), &edits)).unwrap();
        let _ = callgate::config::load(&file);
        std::fs::write(&rules, noise.as_bytes()).unwrap();
        let _ = callgate::config::load(&file);
    }
}

/// A gateway file with no routes of its own, in a directory where the
/// shipped rule files resolve: their `../certs/dev/...` keys and the named
/// IP sets (`@wechatpay`) they use. (dir, gateway file.)
fn harness_for_shipped_rules() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = GatewaySpec::new(vec![]).write(dir.path());
    std::os::unix::fs::symlink(root().join("certs"), dir.path().join("certs")).unwrap();
    std::os::unix::fs::symlink(root().join("rules/ipsets"), dir.path().join("rules/ipsets"))
        .unwrap();
    (dir, file)
}

#[test]
fn the_shipped_rule_files_load_in_the_property_harness() {
    // Otherwise the mutations above would only ever exercise the error path.
    let (dir, file) = harness_for_shipped_rules();
    for (i, content) in rule_files().into_iter().enumerate() {
        std::fs::write(dir.path().join(format!("rules/r{i}.toml")), content).unwrap();
    }
    std::fs::remove_file(dir.path().join("rules/routes.toml")).unwrap();
    let loaded = callgate::config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.snapshot.routes.len(), 6);
}

// === one byte changed never verifies to anything else ===

/// A valid notification: route, extra headers, body.
struct Sample {
    path: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn samples() -> &'static [Sample] {
    static SAMPLES: OnceLock<Vec<Sample>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let plain = |path, dir: &str, name: &str| Sample {
            path,
            headers: vec![],
            body: fixture(dir, name),
        };
        let signed = &expected("wechat")["signed_samples"];
        let v3 = |name: &str| {
            let s = &signed[name];
            let h = |k: &str| s[k].as_str().unwrap().to_owned();
            Sample {
                path: WECHAT_V3,
                headers: vec![
                    ("wechatpay-signature".into(), h("signature")),
                    ("wechatpay-serial".into(), h("serial")),
                    ("wechatpay-timestamp".into(), h("timestamp")),
                    ("wechatpay-nonce".into(), h("nonce")),
                ],
                body: fixture("wechat", name),
            }
        };
        vec![
            plain(ALIPAY, "alipay", "rsa2_trade_success.form"),
            plain(ALIPAY, "alipay", "rsa_sha1_trade_success.form"),
            plain(ALIPAY_CERT, "alipay_cert", "cert_trade_success.form"),
            plain(ALIPAY_MD5, "alipay_md5", "md5_trade_success.form"),
            plain(ALIPAY_MD5, "alipay_md5", "md5_refund.form"),
            plain(WECHAT_V2, "wechat", "v2_md5_pay.xml"),
            plain(WECHAT_V2, "wechat", "v2_hmac_pay.xml"),
            plain(WECHAT_V2, "wechat", "v2_refund.xml"),
            v3("v3_pay.json"),
            v3("v3_refund.json"),
            plain(UNIONPAY, "unionpay", "v510_payment.form"),
            plain(UNIONPAY, "unionpay", "v500_payment.form"),
            plain(JDPAY, "jdpay", "payment.xml"),
            plain(JDPAY, "jdpay", "refund.xml"),
        ]
    })
}

fn sample_verify(s: &Sample, headers: &[(String, String)], body: &[u8]) -> Result<Vouched, String> {
    let r = route(s.path);
    let extra: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    verify(r, &headers_for(r, &extra), body)
}

#[test]
fn every_sample_verifies_unchanged() {
    for s in samples() {
        sample_verify(s, &s.headers, &s.body)
            .unwrap_or_else(|e| panic!("{} sample does not verify: {e}", s.path));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn one_changed_body_byte_never_verifies_to_another_event(
        which in 0..14usize,
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let s = &samples()[which % samples().len()];
        let at = at.index(s.body.len());
        prop_assume!(s.body[at] != byte);
        let mut body = s.body.clone();
        body[at] = byte;
        if let Ok(tampered) = sample_verify(s, &s.headers, &body) {
            let original = sample_verify(s, &s.headers, &s.body).unwrap();
            prop_assert!(
                tampered == original,
                "{}: byte {} {:?} -> {:?} verifies as a different event",
                s.path, at, s.body[at] as char, byte as char
            );
        }
    }

    #[test]
    fn one_changed_v3_header_byte_never_verifies_to_another_event(
        which in 8..10usize,
        header in 0..4usize,
        at in any::<prop::sample::Index>(),
        byte in 0x20u8..0x7f,
    ) {
        let s = &samples()[which];
        let mut headers = s.headers.clone();
        let value = headers[header].1.clone().into_bytes();
        let at = at.index(value.len());
        prop_assume!(value[at] != byte);
        let mut changed = value.clone();
        changed[at] = byte;
        headers[header].1 = String::from_utf8(changed).unwrap();
        if let Ok(tampered) = sample_verify(s, &headers, &s.body) {
            let original = sample_verify(s, &s.headers, &s.body).unwrap();
            // Only the serial's hex case can change and still name the key.
            prop_assert!(header == 1 && tampered == original,
                "header {} byte {} -> {:?} still verifies", headers[header].0, at, byte as char);
        }
    }
}

// === reshaped forms ===

/// A raw form body as its `&`-separated segments, each split at its first
/// `=` (raw, still percent-encoded), with the decoded key.
fn segments(body: &[u8]) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    body.split(|&b| b == b'&')
        .filter(|s| !s.is_empty())
        .map(|seg| {
            let eq = seg.iter().position(|&b| b == b'=').unwrap_or(seg.len());
            let (k, v) = (&seg[..eq], seg.get(eq + 1..).unwrap_or_default());
            let key = Form::parse(&[k, b"=x"].concat())
                .ok()
                .and_then(|f| f.iter().next().map(|(k, _)| k.to_owned()))
                .unwrap_or_default();
            (key, k.to_vec(), v.to_vec())
        })
        .collect()
}

fn join(segs: &[(String, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (_, k, v)) in segs.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
    }
    out
}

/// Blank values the platforms' rules skip or keep, percent-encoded.
const BLANKS: [&str; 5] = ["", "%20", "%20%20", "%09", "%E3%80%80"];

/// What a reshaping does to a form sample.
#[derive(Debug, Clone)]
enum Reshape {
    /// Fold the field at sorted position `at + 1` into the value of the one
    /// at `at`, then give it blank number `blank` (or drop it: `None`).
    Fold { at: usize, blank: Option<usize> },
    /// Pad the value at sorted position `at` with blank `blank` before
    /// (`front`) or after it.
    Pad {
        at: usize,
        blank: usize,
        front: bool,
    },
    /// Add a field `name` with blank value `blank`.
    Add { name: &'static str, blank: usize },
}

fn reshape(body: &[u8], how: &Reshape) -> Vec<u8> {
    let mut segs = segments(body);
    let mut order: Vec<usize> = (0..segs.len()).collect();
    order.sort_by(|&a, &b| segs[a].0.cmp(&segs[b].0));
    match *how {
        Reshape::Fold { at, blank } => {
            let at = at % (order.len() - 1);
            let (i, j) = (order[at], order[at + 1]);
            let (_, k, v) = segs[j].clone();
            let folded = [&segs[i].2[..], b"%26", &k, b"%3D", &v].concat();
            segs[i].2 = folded;
            match blank {
                Some(b) => segs[j].2 = BLANKS[b % BLANKS.len()].as_bytes().to_vec(),
                None => {
                    segs.remove(j);
                }
            }
        }
        Reshape::Pad { at, blank, front } => {
            let i = order[at % order.len()];
            let pad = BLANKS[1 + blank % (BLANKS.len() - 1)].as_bytes();
            let v = &segs[i].2;
            segs[i].2 = if front {
                [pad, v].concat()
            } else {
                [v, pad].concat()
            };
        }
        Reshape::Add { name, blank } => segs.push((
            name.to_owned(),
            name.as_bytes().to_vec(),
            BLANKS[blank % BLANKS.len()].as_bytes().to_vec(),
        )),
    }
    join(&segs)
}

fn reshapes() -> impl Strategy<Value = Reshape> {
    prop_oneof![
        (any::<usize>(), prop::option::of(any::<usize>()))
            .prop_map(|(at, blank)| Reshape::Fold { at, blank }),
        (any::<usize>(), any::<usize>(), any::<bool>())
            .prop_map(|(at, blank, front)| Reshape::Pad { at, blank, front }),
        (
            prop::sample::select(vec![
                "notify_id",
                "auth_app_id",
                "queryId",
                "refund_fee",
                "x",
            ]),
            any::<usize>()
        )
            .prop_map(|(name, blank)| Reshape::Add { name, blank }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn a_reshaped_form_never_verifies_to_another_event(
        which in 0..6usize,
        how in reshapes(),
    ) {
        // The form samples: Alipay RSA2 and RSA, certificate mode, legacy
        // MD5 (payment and refund), UnionPay 5.1.0 and 5.0.0.
        let forms: Vec<&Sample> = samples()
            .iter()
            .filter(|s| route(s.path).kind().format() == body::Format::Form)
            .collect();
        let s = forms[which % forms.len()];
        let body = reshape(&s.body, &how);
        prop_assume!(body != s.body);
        if let Ok(reshaped) = sample_verify(s, &s.headers, &body) {
            let original = sample_verify(s, &s.headers, &s.body).unwrap();
            prop_assert!(
                (&reshaped.0, reshaped.1) == (&original.0, original.1),
                "{}: {:?} verifies as {:?}, not {:?}",
                s.path, how, (&reshaped.0, reshaped.1), (&original.0, original.1)
            );
            // And it tells the shop the same thing happened: the same
            // amount, status and time (a refund folded into its neighbours
            // once read as a payment), and the same order numbers, or none
            // (an order number folded away leaves the shop without one,
            // never with another).
            let (mut got, want) = (what_happened(&reshaped.2), what_happened(&original.2));
            for number in ["out_trade_no", "provider_trade_no"] {
                if got[number].is_null() {
                    got[number] = want[number].clone();
                }
            }
            prop_assert!(
                got == want,
                "{}: {:?} tells the shop {}, not {}",
                s.path, how, got, want
            );
        }
    }
}

/// What a normalized notification tells the shop happened, without the
/// verified fields themselves (those the platform leaves foldable, such as
/// `subject` into `body`, may differ).
fn what_happened(normalized: &[u8]) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(normalized).unwrap();
    let keys = [
        "event_id",
        "out_trade_no",
        "provider_trade_no",
        "amount_fen",
        "currency",
        "status",
        "occurred_at",
    ];
    keys.iter()
        .map(|k| (k.to_string(), v[*k].clone()))
        .collect()
}
