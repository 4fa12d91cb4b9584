//! `callgate sign`: produces a correctly signed sample notification, the way
//! a platform's sandbox would send it, so an operator can test a deployment
//! with curl. It is never used to test the verifiers: their fixtures come
//! from independent signers (openssl, official SDKs, public vectors).
//!
//! `callgate sign alipay --private-key FILE --param app_id=... [--param k=v]...`
//! fills in what a real notification carries (notify_time now, a fresh
//! notify_id, trade fields) unless given, signs with RSA2 (or `--sign-type
//! RSA`), and prints the form body; `--curl URL` prints a ready curl command
//! instead.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;

use crate::body::Form;

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    #[command(subcommand)]
    pub provider: SignProvider,
}

#[derive(Debug, clap::Subcommand)]
pub enum SignProvider {
    /// An Alipay open-platform notification (RSA2 or RSA).
    Alipay(AlipayArgs),
}

#[derive(Debug, clap::Args)]
pub struct AlipayArgs {
    /// PEM private key to sign with (PKCS#8 or PKCS#1), standing in for Alipay's.
    #[arg(long)]
    pub private_key: PathBuf,
    /// A notification field, `key=value`; repeat for each. `app_id` is required.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// `RSA2` (SHA256withRSA) or `RSA` (SHA1withRSA).
    #[arg(long, default_value = "RSA2")]
    pub sign_type: String,
    /// Print a curl command that POSTs the notification to URL.
    #[arg(long, value_name = "URL")]
    pub curl: Option<String>,
}

/// Why a sample could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("--param `{0}` is not KEY=VALUE")]
    Param(String),
    #[error("--param app_id=... is required: the route's keys.app_id")]
    NoAppId,
    #[error("--sign-type `{0}` is not RSA2 or RSA")]
    SignType(String),
    #[error("charset `{0}` is not utf-8 or gbk")]
    Charset(String),
    #[error("{file}: {reason}")]
    Key { file: String, reason: String },
    #[error("signing failed")]
    Sign,
}

/// Runs a `sign` subcommand and returns what to print.
pub fn run(args: &SignArgs) -> Result<String, SignError> {
    match &args.provider {
        SignProvider::Alipay(a) => alipay(a),
    }
}

fn alipay(args: &AlipayArgs) -> Result<String, SignError> {
    let mut params = Vec::with_capacity(args.params.len());
    for p in &args.params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| SignError::Param(p.clone()))?;
        if k.is_empty() {
            return Err(SignError::Param(p.clone()));
        }
        params.push((k.to_owned(), v.to_owned()));
    }
    let body = alipay_form(&args.private_key, &params, &args.sign_type)?;
    Ok(match &args.curl {
        None => body,
        Some(url) => {
            let charset = params
                .iter()
                .find(|(k, _)| k == "charset")
                .map_or("utf-8", |(_, v)| v.as_str());
            format!(
                "curl -sS -k -X POST -H 'Content-Type: application/x-www-form-urlencoded; charset={}' --data-binary '{}' '{}'",
                charset.replace('\'', ""),
                body,
                url.replace('\'', "%27")
            )
        }
    })
}

/// A signed Alipay notification form body: `params` (later ones win) over
/// realistic defaults, signed with the PEM private key at `private_key`.
pub fn alipay_form(
    private_key: &std::path::Path,
    given: &[(String, String)],
    sign_type: &str,
) -> Result<String, SignError> {
    let mut params: BTreeMap<String, String> = given.iter().cloned().collect();
    if !params.contains_key("app_id") {
        return Err(SignError::NoAppId);
    }
    let sha1 = match sign_type {
        "RSA2" => false,
        "RSA" => true,
        other => return Err(SignError::SignType(other.to_owned())),
    };
    let now = chrono::Utc::now() + chrono::Duration::hours(8);
    let time = now.format("%Y-%m-%d %H:%M:%S").to_string();
    let stamp = now.format("%Y%m%d%H%M%S").to_string();
    let rand = random_digits(12);
    let app_id = params.get("app_id").cloned().unwrap_or_default();
    let defaults = [
        ("notify_time", time.clone()),
        ("notify_type", "trade_status_sync".to_owned()),
        ("notify_id", format!("{stamp}{rand}")),
        ("charset", "utf-8".to_owned()),
        ("version", "1.0".to_owned()),
        ("auth_app_id", app_id),
        ("trade_no", format!("{}2200{rand}", &stamp[..8])),
        ("out_trade_no", format!("CG{stamp}{}", &rand[..6])),
        ("trade_status", "TRADE_SUCCESS".to_owned()),
        ("total_amount", "0.01".to_owned()),
        ("receipt_amount", "0.01".to_owned()),
        ("buyer_pay_amount", "0.01".to_owned()),
        ("subject", "callgate test order".to_owned()),
        ("gmt_create", time.clone()),
        ("gmt_payment", time),
        ("seller_id", "2088000000000000".to_owned()),
    ];
    for (k, v) in defaults {
        params.entry(k.to_owned()).or_insert(v);
    }
    params.insert("sign_type".to_owned(), sign_type.to_owned());
    params.remove("sign");

    let charset = params.get("charset").cloned().unwrap_or_default();
    let encoding = match charset.to_ascii_lowercase().as_str() {
        "" | "utf-8" | "utf8" => encoding_rs::UTF_8,
        "gbk" | "gb2312" | "gb18030" => encoding_rs::GB18030,
        _ => return Err(SignError::Charset(charset)),
    };
    let mut body = String::new();
    for (k, v) in &params {
        append(&mut body, k, &encoding.encode(v).0);
    }
    // Build the signed string from the body exactly as the gateway will parse it.
    let form = Form::parse(body.as_bytes()).map_err(|_| SignError::Sign)?;
    let content = crate::provider::alipay::sign_content(&form);
    let sig = rsa_sign(private_key, sha1, &content)?;
    let sign = base64::engine::general_purpose::STANDARD.encode(&sig);
    append(&mut body, "sign", sign.as_bytes());
    Ok(body)
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

/// PKCS#1 v1.5 signature with SHA-256 (aws-lc-rs) or SHA-1 (RustCrypto
/// `rsa`, as aws-lc-rs does not sign with SHA-1).
fn rsa_sign(path: &std::path::Path, sha1: bool, content: &[u8]) -> Result<Vec<u8>, SignError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let err = |reason: String| SignError::Key {
        file: path.display().to_string(),
        reason,
    };
    let der = PrivateKeyDer::from_pem_file(path).map_err(|e| err(crate::config::pem_reason(&e)))?;
    if sha1 {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        use sha1::Digest;
        let key =
            match &der {
                PrivateKeyDer::Pkcs8(k) => rsa::RsaPrivateKey::from_pkcs8_der(k.secret_pkcs8_der())
                    .map_err(|e| e.to_string()),
                PrivateKeyDer::Pkcs1(k) => rsa::RsaPrivateKey::from_pkcs1_der(k.secret_pkcs1_der())
                    .map_err(|e| e.to_string()),
                _ => Err("not an RSA private key".to_owned()),
            }
            .map_err(|e| err(format!("not a usable RSA private key: {e}")))?;
        return key
            .sign(
                rsa::Pkcs1v15Sign::new::<sha1::Sha1>(),
                &sha1::Sha1::digest(content),
            )
            .map_err(|_| SignError::Sign);
    }
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
