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
//!
//! `callgate sign alipay_md5 --key-file FILE --param seller_id=2088... [--param
//! k=v]... [--charset gbk]` does the same for a legacy (create_direct_pay_by_user)
//! notification: MD5 with the partner key, values encoded in the shop's
//! charset.

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
    /// A legacy Alipay notification (create_direct_pay_by_user), MD5 with the partner key.
    #[command(name = "alipay_md5")]
    AlipayMd5(AlipayMd5Args),
}

#[derive(Debug, clap::Args)]
pub struct AlipayMd5Args {
    /// File holding the 32-character MD5 partner key (the route's keys.key_file).
    #[arg(long)]
    pub key_file: PathBuf,
    /// A notification field, `key=value`; repeat for each. `seller_id` (the route's partner) is required.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// The shop's charset: `utf-8` or `gbk` (the route's keys.charset).
    #[arg(long, default_value = "utf-8")]
    pub charset: String,
    /// Print a curl command that POSTs the notification to URL.
    #[arg(long, value_name = "URL")]
    pub curl: Option<String>,
}

impl SignProvider {
    /// The `--curl` URL, when one was given.
    pub fn curl(&self) -> Option<&str> {
        match self {
            SignProvider::Alipay(a) => a.curl.as_deref(),
            SignProvider::AlipayMd5(a) => a.curl.as_deref(),
        }
    }
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
    #[error("--param seller_id=... is required: the route's keys.partner (or keys.seller_id)")]
    NoSellerId,
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
        SignProvider::AlipayMd5(a) => alipay_md5(a),
    }
}

/// Parses repeated `--param k=v` into a sorted map.
fn params_of(list: &[String]) -> Result<BTreeMap<String, String>, SignError> {
    let mut params = BTreeMap::new();
    for p in list {
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

fn alipay_md5(args: &AlipayMd5Args) -> Result<String, SignError> {
    let mut params = params_of(&args.params)?;
    if !params.contains_key("seller_id") {
        return Err(SignError::NoSellerId);
    }
    let encoding = match args.charset.to_ascii_lowercase().as_str() {
        "utf-8" | "utf8" => encoding_rs::UTF_8,
        "gbk" => encoding_rs::GBK,
        _ => return Err(SignError::Charset(args.charset.clone())),
    };
    let key = crate::secret::Secret::from_file(&args.key_file).map_err(|e| SignError::Key {
        file: args.key_file.display().to_string(),
        reason: e.to_string(),
    })?;
    let now = chrono::Utc::now() + chrono::Duration::hours(8);
    let time = now.format("%Y-%m-%d %H:%M:%S").to_string();
    let stamp = now.format("%Y%m%d%H%M%S").to_string();
    let rand = random_digits(12);
    let defaults = [
        ("notify_time", time.clone()),
        ("notify_type", "trade_status_sync".to_owned()),
        ("notify_id", format!("{stamp}{rand}cg")),
        ("trade_no", format!("{}2100100{rand}", &stamp[..8])),
        ("out_trade_no", format!("CG{stamp}{}", &rand[..6])),
        ("trade_status", "TRADE_SUCCESS".to_owned()),
        ("total_fee", "0.01".to_owned()),
        ("price", "0.01".to_owned()),
        ("quantity", "1".to_owned()),
        ("payment_type", "1".to_owned()),
        ("subject", "callgate test order".to_owned()),
        ("gmt_create", time.clone()),
        ("gmt_payment", time),
        ("is_total_fee_adjust", "N".to_owned()),
        ("use_coupon", "N".to_owned()),
    ];
    for (k, v) in defaults {
        params.entry(k.to_owned()).or_insert(v);
    }
    params.insert("sign_type".to_owned(), "MD5".to_owned());
    params.remove("sign");
    let mut body = String::new();
    for (k, v) in &params {
        append(&mut body, k, &encoding.encode(v).0);
    }
    // Sign the body exactly as the gateway will parse it.
    let form = Form::parse(body.as_bytes()).map_err(|_| SignError::Sign)?;
    let sign = crate::provider::alipay_md5::sign_hex(&form, &key);
    append(&mut body, "sign", sign.as_bytes());
    Ok(match &args.curl {
        None => body,
        Some(url) => format!(
            "curl -sS -k -X POST -H 'Content-Type: application/x-www-form-urlencoded; charset={}' --data-binary '{}' '{}'",
            if encoding == encoding_rs::UTF_8 {
                "utf-8"
            } else {
                "GBK"
            },
            body,
            url.replace('\'', "%27")
        ),
    })
}

fn alipay(args: &AlipayArgs) -> Result<String, SignError> {
    let mut params = params_of(&args.params)?;
    if !params.contains_key("app_id") {
        return Err(SignError::NoAppId);
    }
    let sha1 = match args.sign_type.as_str() {
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
    params.insert("sign_type".to_owned(), args.sign_type.clone());
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
    let sig = rsa_sign(&args.private_key, sha1, &content)?;
    let sign = base64::engine::general_purpose::STANDARD.encode(&sig);
    append(&mut body, "sign", sign.as_bytes());

    Ok(match &args.curl {
        None => body,
        Some(url) => format!(
            "curl -sS -k -X POST -H 'Content-Type: application/x-www-form-urlencoded; charset={}' --data-binary '{}' '{}'",
            if encoding == encoding_rs::UTF_8 {
                "utf-8"
            } else {
                "GBK"
            },
            body,
            url.replace('\'', "%27")
        ),
    })
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
