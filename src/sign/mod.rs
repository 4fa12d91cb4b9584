//! `callgate sign`: produces a correctly signed sample notification, the way
//! a platform's sandbox would send it, so an operator can test a deployment
//! with curl. It is never used to test the verifiers: their fixtures come
//! from independent signers (openssl, official SDKs, public vectors).
//!
//! One signer per scheme, one file each (`alipay.rs`, `alipay_md5.rs`,
//! `wechat_v2.rs`, `wechat_v3.rs`, `unionpay.rs`, `jdpay.rs`). A signer
//! builds its signed string and its signature with its own code: none
//! reaches into a verifier (`provider/`), so a bug in one cannot cancel a
//! bug in the other; they share with the providers only the readers of the
//! key files an operator configures for both. Each file's unit tests check its signer twice: its
//! signature of a fixture's fields is the fixture's own (made by openssl or
//! Python), and what it signs, the verifier accepts.
//!
//! `callgate sign alipay --private-key FILE --param app_id=... [--param k=v]...`
//! fills in what a real notification carries (notify_time now, a fresh
//! notify_id, trade fields) unless given, signs with RSA2 (or `--sign-type
//! RSA`), and prints the form body; `--curl URL` prints a ready curl command
//! instead.
//!
//! `callgate sign wechat_v2 --api-key-file FILE --param mch_id=... [--param
//! k=v]... [--sign-type MD5|HMAC-SHA256]` fills in a successful payment
//! result (time_end now, fresh ids) unless given, signs it as WXPayUtil does
//! and prints the XML (`sign_type` is written only when `--sign-type` is
//! given, as WeChat omits it for MD5).
//!
//! `callgate sign wechat_v3 --private-key FILE --serial S --api-v3-key-file
//! FILE --resource-json FILE_OR_JSON [--event-type T]` encrypts the resource
//! with AEAD_AES_256_GCM under the APIv3 key, wraps it in a notification
//! body, signs `timestamp\nnonce\nbody\n` with SHA256withRSA and prints the
//! curl `-H` arguments on the first line and the JSON body on the second.
//!
//! `callgate sign alipay_md5 --key-file FILE --param seller_id=2088... [--param
//! k=v]... [--charset gbk]` does the same for a legacy (create_direct_pay_by_user)
//! notification: MD5 with the partner key, values encoded in the shop's
//! charset.
//!
//! `callgate sign unionpay --private-key KEY --cert CERT --param merId=...`
//! signs an ACP backUrl notification the way UnionPay does: 5.1.0 (default)
//! embeds CERT as `signPubKeyCert`, 5.0.0 (`--acp-version 5.0.0`) puts its
//! serial in `certId`.
//!
//! `callgate sign jdpay --private-key KEY --des-key-file FILE --param
//! merchant=...` builds a JD Pay V2.0 notification: the XML signed with KEY
//! as JD signs it, 3DES-encrypted with the merchant key, in its envelope.

mod alipay;
mod alipay_md5;
mod jdpay;
mod unionpay;
mod wechat_v2;
mod wechat_v3;

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;

pub use alipay::AlipayArgs;
pub use alipay_md5::AlipayMd5Args;
pub use jdpay::JdpayArgs;
pub use unionpay::UnionpayArgs;
pub use wechat_v2::WechatV2Args;
pub use wechat_v3::WechatV3Args;

use crate::load::{io_reason, pem_reason};
use crate::secret::Secret;

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    #[command(subcommand)]
    pub provider: SignProvider,
}

#[derive(Debug, clap::Subcommand)]
pub enum SignProvider {
    /// An Alipay open-platform notification (RSA2 or RSA).
    Alipay(AlipayArgs),
    /// A WeChat Pay API v2 payment result (XML, MD5 or HMAC-SHA256).
    #[command(name = "wechat_v2")]
    WechatV2(WechatV2Args),
    /// A WeChat Pay API v3 notification (JSON, signed headers, encrypted resource).
    #[command(name = "wechat_v3")]
    WechatV3(WechatV3Args),
    /// A legacy Alipay notification (create_direct_pay_by_user), MD5 with the partner key.
    #[command(name = "alipay_md5")]
    AlipayMd5(AlipayMd5Args),
    /// A UnionPay ACP backUrl notification (5.1.0 or 5.0.0).
    Unionpay(UnionpayArgs),
    /// A JD Pay V2.0 notification (3DES-encrypted, RSA-signed XML).
    Jdpay(JdpayArgs),
}

impl SignProvider {
    /// Whether the output is a curl command (printed with a newline).
    pub fn is_curl(&self) -> bool {
        match self {
            SignProvider::Alipay(a) => a.curl.is_some(),
            SignProvider::WechatV2(a) => a.curl.is_some(),
            SignProvider::WechatV3(a) => a.curl.is_some(),
            SignProvider::AlipayMd5(a) => a.curl.is_some(),
            SignProvider::Unionpay(a) => a.curl.is_some(),
            SignProvider::Jdpay(a) => a.curl.is_some(),
        }
    }
}

/// Why a sample could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("--param `{0}` is not KEY=VALUE")]
    Param(String),
    #[error("--param app_id=... is required: the route's keys.app_id")]
    NoAppId,
    #[error("--param seller_id=... is required: the route's keys.partner (or keys.seller_id)")]
    NoSellerId,
    #[error("--param mch_id=... is required: the route's keys.mch_id")]
    NoMchId,
    #[error("--resource-json: {0}")]
    Resource(String),
    #[error("--sign-type `{0}` is not one this provider signs with")]
    SignType(String),
    #[error("charset `{0}` is not utf-8 or gbk")]
    Charset(String),
    #[error("{file}: {reason}")]
    Key { file: String, reason: String },
    #[error("signing failed")]
    Sign,
    #[error("--param {0}=... is required")]
    Missing(&'static str),
    #[error("--acp-version `{0}` is not 5.1.0 or 5.0.0")]
    AcpVersion(String),
}

/// Runs a `sign` subcommand and returns what to print.
pub fn run(args: &SignArgs) -> Result<String, SignError> {
    match &args.provider {
        SignProvider::Alipay(a) => alipay::run(a),
        SignProvider::WechatV2(a) => wechat_v2::run(a),
        SignProvider::WechatV3(a) => wechat_v3::run(a),
        SignProvider::AlipayMd5(a) => alipay_md5::run(a),
        SignProvider::Unionpay(a) => unionpay::run(a),
        SignProvider::Jdpay(a) => jdpay::run(a),
    }
}

/// A key of `file` that cannot be used, and why.
fn key_error(file: &Path) -> impl Fn(String) -> SignError + '_ {
    move |reason| SignError::Key {
        file: file.display().to_string(),
        reason,
    }
}

// === parameters ===

/// `--param k=v` arguments as a map.
fn param_map(raw: &[String]) -> Result<BTreeMap<String, String>, SignError> {
    let mut params = BTreeMap::new();
    for p in raw {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| SignError::Param(p.clone()))?;
        if k.is_empty() {
            return Err(SignError::Param(p.clone()));
        }
        params.insert(k.to_owned(), v.to_owned());
    }
    Ok(params)
}

/// Fills in `defaults` for the parameters not given.
fn fill(
    params: &mut BTreeMap<String, String>,
    defaults: impl IntoIterator<Item = (&'static str, String)>,
) {
    for (k, v) in defaults {
        params.entry(k.to_owned()).or_insert(v);
    }
}

/// Now in Beijing, as the platforms write it: `yyyy-MM-dd HH:mm:ss` and
/// `yyyyMMddHHmmss`.
fn beijing_now() -> (String, String) {
    let now = chrono::Utc::now() + chrono::Duration::hours(8);
    (
        now.format("%Y-%m-%d %H:%M:%S").to_string(),
        now.format("%Y%m%d%H%M%S").to_string(),
    )
}

// === forms ===

/// The encoding a form's `charset`/`encoding` field names (absent: UTF-8).
fn charset(name: Option<&String>) -> Result<&'static encoding_rs::Encoding, SignError> {
    let name = name.map(String::as_str).unwrap_or_default();
    match name.to_ascii_lowercase().as_str() {
        "" | "utf-8" | "utf8" => Ok(encoding_rs::UTF_8),
        "gbk" | "gb2312" | "gb18030" => Ok(encoding_rs::GB18030),
        _ => Err(SignError::Charset(name.to_owned())),
    }
}

/// `k=v&...` of `params` in key order, each value encoded in `encoding`,
/// then percent-encoded.
fn encode_form(
    params: &BTreeMap<String, String>,
    encoding: &'static encoding_rs::Encoding,
) -> String {
    let mut body = String::new();
    for (k, v) in params {
        append(&mut body, k, &encoding.encode(v).0);
    }
    body
}

/// Appends `k=v` form-encoded the way Java's URLEncoder does (space as `+`).
fn append(body: &mut String, k: &str, v: &[u8]) {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};
    const SET: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'*')
        .remove(b'-')
        .remove(b'.')
        .remove(b'_');
    if !body.is_empty() {
        body.push('&');
    }
    body.push_str(
        &percent_encode(k.as_bytes(), SET)
            .to_string()
            .replace("%20", "+"),
    );
    body.push('=');
    body.push_str(&percent_encode(v, SET).to_string().replace("%20", "+"));
}

/// The string a form's signature covers, as the signer sees it: `params`
/// (sorted by name) but the `skip` ones and those `blank` calls blank, as
/// `key=value` with each value encoded in `encoding`, joined by `&`.
fn signed_form(
    params: &BTreeMap<String, String>,
    encoding: &'static encoding_rs::Encoding,
    skip: &[&str],
    blank: impl Fn(&str) -> bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in params {
        if skip.contains(&k.as_str()) || blank(v) {
            continue;
        }
        if !out.is_empty() {
            out.push(b'&');
        }
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(&encoding.encode(v).0);
    }
    out
}

/// The form body of `params` with the signature `name=sign` last (as
/// `encoding` encodes them), or, with `curl`, a command that POSTs it as
/// `charset` (`utf-8`, `UTF-8`, `GBK`: as the platform writes it).
fn form_output(
    params: &BTreeMap<String, String>,
    encoding: &'static encoding_rs::Encoding,
    (name, sign): (&str, &str),
    charset: &str,
    curl: Option<&String>,
) -> String {
    let mut body = encode_form(params, encoding);
    append(&mut body, name, sign.as_bytes());
    match curl {
        None => body,
        Some(url) => curl_form(&body, charset, url),
    }
}

/// The start of a `--curl` command for `url`: `curl -sS`, with `-k`
/// (accept any certificate) only for a gateway on this machine, such as the
/// demo with its self-signed pair. A deployment's URL is tested as the
/// platform will reach it: an expired, self-signed or wrong-name
/// certificate makes curl fail there, as it makes the platform's delivery
/// fail.
pub(crate) fn curl(url: &str) -> &'static str {
    let host = url.parse::<http::Uri>().ok().and_then(|u| {
        u.host()
            .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
    });
    let local = host.is_some_and(|h| {
        h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if local { "curl -sS -k" } else { "curl -sS" }
}

/// A curl command that POSTs a form body.
fn curl_form(body: &str, charset: &str, url: &str) -> String {
    format!(
        "{} -X POST -H 'Content-Type: application/x-www-form-urlencoded; charset={}' --data-binary '{}' '{}'",
        curl(url),
        charset.replace('\'', ""),
        body,
        url.replace('\'', "%27")
    )
}

/// Single-quotes a word for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

// === keys ===

/// Reads a secret file (raw bytes, one trailing newline ignored).
fn read_secret(path: &Path) -> Result<Secret, SignError> {
    Secret::from_file(path).map_err(|e| key_error(path)(e.to_string()))
}

/// An RSA private key from a PEM file (PKCS#8 or PKCS#1).
fn rsa_private_key(path: &Path) -> Result<rsa::RsaPrivateKey, SignError> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let err = key_error(path);
    let der = PrivateKeyDer::from_pem_file(path).map_err(|e| err(pem_reason(&e)))?;
    match &der {
        PrivateKeyDer::Pkcs8(k) => {
            rsa::RsaPrivateKey::from_pkcs8_der(k.secret_pkcs8_der()).map_err(|e| e.to_string())
        }
        PrivateKeyDer::Pkcs1(k) => {
            rsa::RsaPrivateKey::from_pkcs1_der(k.secret_pkcs1_der()).map_err(|e| e.to_string())
        }
        _ => Err("not an RSA private key".to_owned()),
    }
    .map_err(|e| err(format!("not a usable RSA private key: {e}")))
}

/// PKCS#1 v1.5 signature with SHA-256 (aws-lc-rs) or SHA-1 (RustCrypto
/// `rsa`, as aws-lc-rs does not sign with SHA-1).
fn rsa_sign(path: &Path, sha1: bool, content: &[u8]) -> Result<Vec<u8>, SignError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    if sha1 {
        use sha1::Digest;
        return rsa_private_key(path)?
            .sign(
                rsa::Pkcs1v15Sign::new::<sha1::Sha1>(),
                &sha1::Sha1::digest(content),
            )
            .map_err(|_| SignError::Sign);
    }
    let err = key_error(path);
    let der = PrivateKeyDer::from_pem_file(path).map_err(|e| err(pem_reason(&e)))?;
    let key = match &der {
        PrivateKeyDer::Pkcs8(k) => {
            aws_lc_rs::signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der())
        }
        PrivateKeyDer::Pkcs1(k) => aws_lc_rs::signature::RsaKeyPair::from_der(k.secret_pkcs1_der()),
        _ => return Err(err("not an RSA private key".to_owned())),
    }
    .map_err(|e| err(format!("not a usable RSA private key: {e}")))?;
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        content,
        &mut sig,
    )
    .map_err(|_| SignError::Sign)?;
    Ok(sig)
}

/// [`rsa_sign`], standard Base64.
fn rsa_sign_b64(path: &Path, sha1: bool, content: &[u8]) -> Result<String, SignError> {
    Ok(base64::engine::general_purpose::STANDARD.encode(rsa_sign(path, sha1, content)?))
}

/// Reads the first certificate of a PEM file: the PEM as UnionPay sends it
/// (CRLF line ends, no final newline) and its DER.
fn read_cert_pem(path: &Path) -> Result<(String, Vec<u8>), SignError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let err = key_error(path);
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read: {}", io_reason(&e))))?;
    let der = CertificateDer::from_pem_slice(text.as_bytes()).map_err(|e| err(pem_reason(&e)))?;
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or_else(|| err("no -----BEGIN CERTIFICATE----- block".to_owned()))?;
    let end_marker = "-----END CERTIFICATE-----";
    let end = text[begin..]
        .find(end_marker)
        .map(|i| begin + i + end_marker.len())
        .ok_or_else(|| err("no -----END CERTIFICATE----- line".to_owned()))?;
    let pem = text[begin..end]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\r\n");
    Ok((pem, der.to_vec()))
}

// === randomness ===

/// Random letters and digits (nonces and ids).
fn random_alnum(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; n];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        let digits = random_digits(n);
        bytes.copy_from_slice(digits.as_bytes());
    }
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

fn random_digits(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // Fall back to the clock; uniqueness, not secrecy, is what matters here.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        bytes
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (nanos >> (i % 4 * 8)) as u8);
    }
    bytes.iter().map(|b| char::from(b'0' + b % 10)).collect()
}

/// The tests' shared setup: fixture paths and a fixture form's fields.
#[cfg(test)]
mod fixtures {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    pub fn path(provider: &str, name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(provider)
            .join(name)
    }

    pub fn read(provider: &str, name: &str) -> Vec<u8> {
        std::fs::read(path(provider, name)).unwrap()
    }

    /// A fixture form's fields, decoded in `encoding`.
    pub fn form(
        provider: &str,
        name: &str,
        encoding: &'static encoding_rs::Encoding,
    ) -> BTreeMap<String, String> {
        let form = crate::body::Form::parse(&read(provider, name)).unwrap();
        form.iter()
            .map(|(k, v)| (k.to_owned(), encoding.decode(v).0.into_owned()))
            .collect()
    }
}

#[cfg(test)]
mod curl_tests {
    use super::curl;

    #[test]
    fn only_a_gateway_on_this_machine_gets_curl_k() {
        for url in [
            "https://127.0.0.1:8443/notify/alipay",
            "https://localhost/notify",
            "https://LOCALHOST:8443/n",
            "https://[::1]:8443/notify",
            "http://127.0.0.2/notify",
        ] {
            assert_eq!(curl(url), "curl -sS -k", "{url}");
        }
        for url in [
            "https://pay.example.com/notify/alipay",
            "https://10.0.0.5/notify",
            "https://127.0.0.1.example.com/notify",
            "not a url",
        ] {
            assert_eq!(curl(url), "curl -sS", "{url}");
        }
    }
}
