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
//! `callgate sign unionpay --private-key KEY --cert CERT --param merId=...`
//! signs an ACP backUrl notification the way UnionPay does: 5.1.0 (default)
//! embeds CERT as `signPubKeyCert`, 5.0.0 (`--acp-version 5.0.0`) puts its
//! serial in `certId`.
//!
//! `callgate sign jdpay --private-key KEY --des-key-file FILE --param
//! merchant=...` builds a JD Pay V2.0 notification: the XML signed with KEY
//! as JD signs it, 3DES-encrypted with the merchant key, in its envelope.

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
    /// A UnionPay ACP backUrl notification (5.1.0 or 5.0.0).
    Unionpay(UnionpayArgs),
    /// A JD Pay V2.0 notification (3DES-encrypted, RSA-signed XML).
    Jdpay(JdpayArgs),
}

#[derive(Debug, clap::Args)]
pub struct UnionpayArgs {
    /// PEM private key of the signing certificate, standing in for UnionPay's.
    #[arg(long)]
    pub private_key: PathBuf,
    /// The signing certificate (PEM): sent as signPubKeyCert (5.1.0), or its
    /// serial as certId (5.0.0).
    #[arg(long)]
    pub cert: PathBuf,
    /// `5.1.0` (SHA-256, certificate in the message) or `5.0.0` (SHA-1, certId).
    #[arg(long, default_value = "5.1.0")]
    pub acp_version: String,
    /// A notification field, `key=value`; repeat for each. `merId` is required.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Print a curl command that POSTs the notification to URL.
    #[arg(long, value_name = "URL")]
    pub curl: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct JdpayArgs {
    /// PEM private key standing in for JD's (the route's jd_public_key is its public half).
    #[arg(long)]
    pub private_key: PathBuf,
    /// File holding the merchant's 3DES key, Base64 (the route's des_key_file).
    #[arg(long)]
    pub des_key_file: PathBuf,
    /// A top-level payload field, `key=value`; repeat for each. `merchant` is
    /// required; `tradeType=2` (with `oTradeNum=...`) makes a refund.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Print a curl command that POSTs the notification to URL.
    #[arg(long, value_name = "URL")]
    pub curl: Option<String>,
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
    #[error("--param {0}=... is required")]
    Missing(&'static str),
    #[error("--acp-version `{0}` is not 5.1.0 or 5.0.0")]
    AcpVersion(String),
}

/// Runs a `sign` subcommand and returns what to print.
pub fn run(args: &SignArgs) -> Result<String, SignError> {
    match &args.provider {
        SignProvider::Alipay(a) => alipay(a),
        SignProvider::Unionpay(a) => unionpay(a),
        SignProvider::Jdpay(a) => jdpay(a),
    }
}

fn alipay(args: &AlipayArgs) -> Result<String, SignError> {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for p in &args.params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| SignError::Param(p.clone()))?;
        if k.is_empty() {
            return Err(SignError::Param(p.clone()));
        }
        params.insert(k.to_owned(), v.to_owned());
    }
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

// === unionpay ===

/// `--param key=value` pairs into a sorted map.
fn params_map(params: &[String]) -> Result<BTreeMap<String, String>, SignError> {
    let mut map = BTreeMap::new();
    for p in params {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| SignError::Param(p.clone()))?;
        if k.is_empty() {
            return Err(SignError::Param(p.clone()));
        }
        map.insert(k.to_owned(), v.to_owned());
    }
    Ok(map)
}

/// Reads the first certificate of a PEM file.
fn read_cert_pem(path: &std::path::Path) -> Result<(String, Vec<u8>), SignError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let err = |reason: String| SignError::Key {
        file: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read: {}", crate::config::io_reason(&e))))?;
    let der = CertificateDer::from_pem_slice(text.as_bytes())
        .map_err(|e| err(crate::config::pem_reason(&e)))?;
    // UnionPay sends the PEM with CRLF line endings and no final newline.
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

fn unionpay(args: &UnionpayArgs) -> Result<String, SignError> {
    let mut params = params_map(&args.params)?;
    if !params.contains_key("merId") {
        return Err(SignError::Missing("merId"));
    }
    let sha1 = match args.acp_version.as_str() {
        "5.1.0" => false,
        "5.0.0" => true,
        other => return Err(SignError::AcpVersion(other.to_owned())),
    };
    let now = chrono::Utc::now() + chrono::Duration::hours(8);
    let stamp = now.format("%Y%m%d%H%M%S").to_string();
    let rand = random_digits(12);
    let amount = params
        .get("txnAmt")
        .cloned()
        .unwrap_or_else(|| "1".to_owned());
    let defaults = [
        ("encoding", "UTF-8".to_owned()),
        ("txnType", "01".to_owned()),
        ("txnSubType", "01".to_owned()),
        ("bizType", "000201".to_owned()),
        ("accessType", "0".to_owned()),
        ("currencyCode", "156".to_owned()),
        ("txnAmt", amount.clone()),
        ("settleAmt", amount),
        ("settleCurrencyCode", "156".to_owned()),
        ("settleDate", stamp[4..8].to_owned()),
        ("orderId", format!("CG{stamp}{}", &rand[..6])),
        ("queryId", format!("{}{}", &stamp[2..], &rand[..9])),
        ("traceNo", rand[6..12].to_owned()),
        ("traceTime", stamp[4..].to_owned()),
        ("txnTime", stamp.clone()),
        ("respCode", "00".to_owned()),
        ("respMsg", "成功[0000000]".to_owned()),
    ];
    for (k, v) in defaults {
        params.entry(k.to_owned()).or_insert(v);
    }
    params.insert("version".to_owned(), args.acp_version.clone());
    params.insert("signMethod".to_owned(), "01".to_owned());
    params.remove("signature");
    let (pem, der) = read_cert_pem(&args.cert)?;
    if sha1 {
        let cert = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| SignError::Key {
                file: args.cert.display().to_string(),
                reason: "not an X.509 certificate".to_owned(),
            })?
            .1;
        params.insert("certId".to_owned(), cert.tbs_certificate.serial.to_string());
        params.remove("signPubKeyCert");
    } else {
        params.insert("signPubKeyCert".to_owned(), pem);
        params.remove("certId");
    }

    let charset = params.get("encoding").cloned().unwrap_or_default();
    let encoding = match charset.to_ascii_lowercase().as_str() {
        "" | "utf-8" | "utf8" => encoding_rs::UTF_8,
        "gbk" | "gb2312" | "gb18030" => encoding_rs::GB18030,
        _ => return Err(SignError::Charset(charset)),
    };
    let mut body = String::new();
    for (k, v) in &params {
        append(&mut body, k, &encoding.encode(v).0);
    }
    let form = Form::parse(body.as_bytes()).map_err(|_| SignError::Sign)?;
    let content = crate::provider::unionpay::sign_content(&form);
    let digest = hex::encode(aws_lc_rs::digest::digest(
        if sha1 {
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY
        } else {
            &aws_lc_rs::digest::SHA256
        },
        &content,
    ));
    let sig = rsa_sign(&args.private_key, sha1, digest.as_bytes())?;
    append(
        &mut body,
        "signature",
        base64::engine::general_purpose::STANDARD
            .encode(&sig)
            .as_bytes(),
    );
    Ok(match &args.curl {
        None => body,
        Some(url) => format!(
            "curl -sS -k -X POST -H 'Content-Type: application/x-www-form-urlencoded; charset={}' --data-binary '{}' '{}'",
            if encoding == encoding_rs::UTF_8 {
                "UTF-8"
            } else {
                "GBK"
            },
            body,
            url.replace('\'', "%27")
        ),
    })
}

// === jdpay ===

/// An RSA private key from a PEM file (PKCS#8 or PKCS#1).
fn rsa_private_key(path: &std::path::Path) -> Result<rsa::RsaPrivateKey, SignError> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let err = |reason: String| SignError::Key {
        file: path.display().to_string(),
        reason,
    };
    let der = PrivateKeyDer::from_pem_file(path).map_err(|e| err(crate::config::pem_reason(&e)))?;
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

/// Escapes text for an XML element.
fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn jdpay(args: &JdpayArgs) -> Result<String, SignError> {
    use crate::provider::jdpay::{XML_HEAD, des_ecb, des_key_from, signed_string};
    let mut params = params_map(&args.params)?;
    let merchant = params
        .remove("merchant")
        .ok_or(SignError::Missing("merchant"))?;
    let now = chrono::Utc::now() + chrono::Duration::hours(8);
    let stamp = now.format("%Y%m%d%H%M%S").to_string();
    let mut take = |k: &str, default: String| params.remove(k).unwrap_or(default);
    let trade_type = take("tradeType", "0".to_owned());
    let refund = trade_type == "1" || trade_type == "2";
    let trade_num = take(
        "tradeNum",
        format!(
            "CG{stamp}{}{}",
            &random_digits(6),
            if refund { "R" } else { "" }
        ),
    );
    let amount = take("amount", "1".to_owned());
    let status = take("status", if refund { "1" } else { "2" }.to_owned());
    let time = take("tradeTime", stamp.clone());
    let currency = take("currency", "CNY".to_owned());
    let o_trade_num = params.remove("oTradeNum");

    let mut xml = format!(
        "<jdpay><version>V2.0</version><merchant>{}</merchant><result><code>000000</code><desc>success</desc></result><tradeNum>{}</tradeNum><tradeType>{}</tradeType>",
        xml_text(&merchant),
        xml_text(&trade_num),
        xml_text(&trade_type)
    );
    if let Some(o) = &o_trade_num {
        xml += &format!("<oTradeNum>{}</oTradeNum>", xml_text(o));
    }
    xml += &format!(
        "<amount>{}</amount><status>{}</status>",
        xml_text(&amount),
        xml_text(&status)
    );
    if refund {
        xml += &format!(
            "<currency>{}</currency><tradeTime>{}</tradeTime>",
            xml_text(&currency),
            xml_text(&time)
        );
    } else {
        xml += &format!(
            "<payList><pay><payType>0</payType><amount>{}</amount><currency>{}</currency><tradeTime>{}</tradeTime></pay></payList>",
            xml_text(&amount),
            xml_text(&currency),
            xml_text(&time)
        );
    }
    for (k, v) in &params {
        if !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(SignError::Param(format!("{k}={v}")));
        }
        xml += &format!("<{k}>{}</{k}>", xml_text(v));
    }
    xml += "</jdpay>";

    let unsigned = format!("{XML_HEAD}{xml}");
    let signed = signed_string(&unsigned).ok_or(SignError::Sign)?;
    let digest = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        signed.as_bytes(),
    ));
    let key = rsa_private_key(&args.private_key)?;
    let sig = key
        .sign(rsa::Pkcs1v15Sign::new_unprefixed(), digest.as_bytes())
        .map_err(|_| SignError::Sign)?;
    let sign = base64::engine::general_purpose::STANDARD.encode(sig);
    let payload = format!(
        "{XML_HEAD}{}<sign>{sign}</sign></jdpay>",
        &xml[..xml.len() - "</jdpay>".len()]
    );

    let file_err = |reason: String| SignError::Key {
        file: args.des_key_file.display().to_string(),
        reason,
    };
    let secret = crate::secret::Secret::from_file(&args.des_key_file)
        .map_err(|e| file_err(e.to_string()))?;
    let des_key = des_key_from(&secret).map_err(file_err)?;
    let mut key24 = [0u8; 24];
    key24.copy_from_slice(des_key.expose());
    let bytes = payload.as_bytes();
    let n = u32::try_from(bytes.len()).map_err(|_| SignError::Sign)?;
    let mut plain = n.to_be_bytes().to_vec();
    plain.extend_from_slice(bytes);
    plain.resize(plain.len().div_ceil(8) * 8, 0);
    let cipher = des_ecb(&key24, &plain, true);
    key24.iter_mut().for_each(|b| *b = 0);
    let encrypt = base64::engine::general_purpose::STANDARD.encode(hex::encode(cipher).as_bytes());
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<jdpay>\n  <version>V2.0</version>\n  <merchant>{}</merchant>\n  <result>\n    <code>000000</code>\n    <desc>success</desc>\n  </result>\n  <encrypt>{encrypt}</encrypt>\n</jdpay>\n",
        xml_text(&merchant)
    );
    Ok(match &args.curl {
        None => body,
        Some(url) => format!(
            "curl -sS -k -X POST -H 'Content-Type: text/xml; charset=UTF-8' --data-binary '{}' '{}'",
            body.replace('\'', "&apos;"),
            url.replace('\'', "%27")
        ),
    })
}
