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

#[derive(Debug, clap::Args)]
pub struct WechatV2Args {
    /// File holding the API v2 key (the route's `api_key_file`).
    #[arg(long)]
    pub api_key_file: PathBuf,
    /// A notification field, `key=value`; repeat for each. `mch_id` is required.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// `MD5` or `HMAC-SHA256`; when given, also written as `sign_type`.
    #[arg(long)]
    pub sign_type: Option<String>,
    /// Print a curl command that POSTs the notification to URL.
    #[arg(long, value_name = "URL")]
    pub curl: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct WechatV3Args {
    /// PEM private key standing in for WeChat Pay's platform key.
    #[arg(long)]
    pub private_key: PathBuf,
    /// `Wechatpay-Serial`: the certificate serial or `PUB_KEY_ID_...` the route lists.
    #[arg(long)]
    pub serial: String,
    /// File holding the 32-byte APIv3 key (the route's `api_v3_key_file`).
    #[arg(long)]
    pub api_v3_key_file: PathBuf,
    /// The decrypted resource: a file holding JSON, or the JSON itself.
    #[arg(long, value_name = "FILE_OR_JSON")]
    pub resource_json: String,
    /// `event_type` (default TRANSACTION.SUCCESS, or REFUND.SUCCESS for a
    /// resource with `refund_status`).
    #[arg(long)]
    pub event_type: Option<String>,
    /// Print a curl command that POSTs the notification to URL.
    #[arg(long, value_name = "URL")]
    pub curl: Option<String>,
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
        SignProvider::Alipay(a) => alipay(a),
        SignProvider::WechatV2(a) => wechat_v2(a),
        SignProvider::WechatV3(a) => wechat_v3(a),
        SignProvider::AlipayMd5(a) => alipay_md5(a),
        SignProvider::Unionpay(a) => unionpay(a),
        SignProvider::Jdpay(a) => jdpay(a),
    }
}

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

fn alipay(args: &AlipayArgs) -> Result<String, SignError> {
    let params = param_map(&args.params)?;
    let body = alipay_form(&args.private_key, &params, &args.sign_type)?;
    Ok(match &args.curl {
        None => body,
        Some(url) => {
            let charset = params.get("charset").map_or("utf-8", String::as_str);
            format!(
                "curl -sS -k -X POST -H 'Content-Type: application/x-www-form-urlencoded; charset={}' --data-binary '{}' '{}'",
                charset.replace('\'', ""),
                body,
                url.replace('\'', "%27")
            )
        }
    })
}

/// A signed Alipay notification form body: `given` over realistic
/// defaults, signed with the PEM private key at `private_key`.
pub fn alipay_form(
    private_key: &std::path::Path,
    given: &BTreeMap<String, String>,
    sign_type: &str,
) -> Result<String, SignError> {
    let mut params = given.clone();
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

    let encoding = form_encoding(params.get("charset"))?;
    let mut body = encode_form(&params, encoding);
    // Build the signed string from the body exactly as the gateway will parse it.
    let form = Form::parse(body.as_bytes()).map_err(|_| SignError::Sign)?;
    let content = crate::provider::alipay::sign_content(&form);
    let sig = rsa_sign(private_key, sha1, &content)?;
    let sign = base64::engine::general_purpose::STANDARD.encode(&sig);
    append(&mut body, "sign", sign.as_bytes());
    Ok(body)
}

fn alipay_md5(args: &AlipayMd5Args) -> Result<String, SignError> {
    let mut params = param_map(&args.params)?;
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
    let mut body = encode_form(&params, encoding);
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

fn wechat_v2(args: &WechatV2Args) -> Result<String, SignError> {
    use crate::provider::wechat_v2::{SignAlgo, signature};
    let mut params = param_map(&args.params)?;
    if !params.contains_key("mch_id") {
        return Err(SignError::NoMchId);
    }
    let algo = match args.sign_type.as_deref() {
        None | Some("MD5") => SignAlgo::Md5,
        Some("HMAC-SHA256") => SignAlgo::HmacSha256,
        Some(other) => return Err(SignError::SignType(other.to_owned())),
    };
    let key = read_secret(&args.api_key_file)?;
    let now = chrono::Utc::now() + chrono::Duration::hours(8);
    let stamp = now.format("%Y%m%d%H%M%S").to_string();
    let rand = random_digits(14);
    let total = params
        .get("total_fee")
        .cloned()
        .unwrap_or_else(|| "1".to_owned());
    let defaults = [
        ("return_code", "SUCCESS".to_owned()),
        ("return_msg", "OK".to_owned()),
        ("result_code", "SUCCESS".to_owned()),
        ("nonce_str", random_alnum(32)),
        ("openid", "oCallgateSample000000000000000".to_owned()),
        ("is_subscribe", "N".to_owned()),
        ("trade_type", "JSAPI".to_owned()),
        ("bank_type", "OTHERS".to_owned()),
        ("total_fee", total.clone()),
        ("cash_fee", total),
        ("fee_type", "CNY".to_owned()),
        ("transaction_id", format!("4200{}{rand}", &stamp[..8])),
        ("out_trade_no", format!("CG{stamp}{}", &rand[..6])),
        ("time_end", stamp),
    ];
    for (k, v) in defaults {
        params.entry(k.to_owned()).or_insert(v);
    }
    params.remove("sign");
    match &args.sign_type {
        Some(t) => params.insert("sign_type".to_owned(), t.clone()),
        None => params.remove("sign_type"),
    };
    let sign = signature(
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        key.expose(),
        algo,
        true,
    );
    params.insert("sign".to_owned(), sign);
    let mut xml = String::from("<xml>\n");
    for (k, v) in &params {
        xml.push_str(&format!("<{k}>{}</{k}>\n", xml_text(v)));
    }
    xml.push_str("</xml>");
    Ok(match &args.curl {
        None => xml,
        Some(url) => format!(
            "curl -sS -k -X POST -H 'Content-Type: text/xml' --data-binary {} {}",
            shell_quote(&xml),
            shell_quote(url)
        ),
    })
}

/// A value as element content: CDATA, or escaped text when it holds `]]>`.
fn xml_text(v: &str) -> String {
    if v.contains("]]>") {
        v.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    } else {
        format!("<![CDATA[{v}]]>")
    }
}

fn wechat_v3(args: &WechatV3Args) -> Result<String, SignError> {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

    let text = match std::fs::read_to_string(&args.resource_json) {
        Ok(t) => t,
        Err(_) if args.resource_json.trim_start().starts_with('{') => args.resource_json.clone(),
        Err(e) => {
            return Err(SignError::Resource(format!(
                "`{}` is neither a readable file nor a JSON object: {}",
                args.resource_json,
                crate::load::io_reason(&e)
            )));
        }
    };
    let text = text.trim();
    let resource: serde_json::Value =
        serde_json::from_str(text).map_err(|e| SignError::Resource(format!("not JSON: {e}")))?;
    if !resource.is_object() {
        return Err(SignError::Resource("not a JSON object".to_owned()));
    }
    let refund = resource.get("refund_status").is_some();
    let event_type = args.event_type.clone().unwrap_or_else(|| {
        if refund {
            "REFUND.SUCCESS".to_owned()
        } else {
            "TRANSACTION.SUCCESS".to_owned()
        }
    });
    let (original_type, summary) = if event_type.starts_with("REFUND.") {
        ("refund", "退款成功")
    } else if event_type.starts_with("TRANSACTION.") {
        ("transaction", "支付成功")
    } else {
        ("", "callgate sample")
    };

    let key = read_secret(&args.api_v3_key_file)?;
    let bad_key = |reason: String| SignError::Key {
        file: args.api_v3_key_file.display().to_string(),
        reason,
    };
    if key.expose().len() != 32 {
        return Err(bad_key(format!(
            "the APIv3 key must be 32 bytes, not {}",
            key.expose().len()
        )));
    }
    let aead = UnboundKey::new(&AES_256_GCM, key.expose())
        .map(LessSafeKey::new)
        .map_err(|_| bad_key("not an AES-256 key".to_owned()))?;
    let gcm_nonce = random_alnum(12);
    let nonce =
        Nonce::try_assume_unique_for_key(gcm_nonce.as_bytes()).map_err(|_| SignError::Sign)?;
    let mut sealed = text.as_bytes().to_vec();
    aead.seal_in_place_append_tag(nonce, Aad::from(original_type.as_bytes()), &mut sealed)
        .map_err(|_| SignError::Sign)?;
    let ciphertext = base64::engine::general_purpose::STANDARD.encode(&sealed);

    let now = chrono::Utc::now();
    let beijing = chrono::FixedOffset::east_opt(8 * 3600).ok_or(SignError::Sign)?;
    let create_time = now
        .with_timezone(&beijing)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
    let id = random_alnum(32).to_ascii_lowercase();
    let id = format!(
        "{}-{}-{}-{}-{}",
        &id[..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..]
    );
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let body = format!(
        "{{\"id\":{},\"create_time\":{},\"resource_type\":\"encrypt-resource\",\"event_type\":{},\"summary\":{},\"resource\":{{\"original_type\":{},\"algorithm\":\"AEAD_AES_256_GCM\",\"ciphertext\":{},\"associated_data\":{},\"nonce\":{}}}}}",
        q(&id),
        q(&create_time),
        q(&event_type),
        q(summary),
        q(original_type),
        q(&ciphertext),
        q(original_type),
        q(&gcm_nonce),
    );
    let timestamp = now.timestamp().to_string();
    let header_nonce = random_alnum(32);
    let message = format!("{timestamp}\n{header_nonce}\n{body}\n");
    let sig = rsa_sign(&args.private_key, false, message.as_bytes())?;
    let signature = base64::engine::general_purpose::STANDARD.encode(&sig);
    let headers = [
        ("Content-Type", "application/json"),
        ("Wechatpay-Timestamp", timestamp.as_str()),
        ("Wechatpay-Nonce", header_nonce.as_str()),
        ("Wechatpay-Serial", args.serial.as_str()),
        ("Wechatpay-Signature", signature.as_str()),
        ("Wechatpay-Signature-Type", "WECHATPAY2-SHA256-RSA2048"),
    ]
    .iter()
    .map(|(k, v)| format!("-H {}", shell_quote(&format!("{k}: {v}"))))
    .collect::<Vec<_>>()
    .join(" ");
    Ok(match &args.curl {
        None => format!("{headers}\n{body}"),
        Some(url) => format!(
            "curl -sS -k -X POST {headers} --data-binary {} {}",
            shell_quote(&body),
            shell_quote(url)
        ),
    })
}

/// Reads a secret file (raw bytes, one trailing newline ignored).
fn read_secret(path: &std::path::Path) -> Result<crate::secret::Secret, SignError> {
    crate::secret::Secret::from_file(path).map_err(|e| SignError::Key {
        file: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Single-quotes a word for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Appends `k=v` form-encoded the way Java's URLEncoder does (space as `+`).
/// The encoding a form's `charset`/`encoding` field names (absent: UTF-8).
fn form_encoding(charset: Option<&String>) -> Result<&'static encoding_rs::Encoding, SignError> {
    let charset = charset.map(String::as_str).unwrap_or_default();
    match charset.to_ascii_lowercase().as_str() {
        "" | "utf-8" | "utf8" => Ok(encoding_rs::UTF_8),
        "gbk" | "gb2312" | "gb18030" => Ok(encoding_rs::GB18030),
        _ => Err(SignError::Charset(charset.to_owned())),
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
    let der = PrivateKeyDer::from_pem_file(path).map_err(|e| err(crate::load::pem_reason(&e)))?;
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

/// Reads the first certificate of a PEM file.
fn read_cert_pem(path: &std::path::Path) -> Result<(String, Vec<u8>), SignError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let err = |reason: String| SignError::Key {
        file: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read: {}", crate::load::io_reason(&e))))?;
    let der = CertificateDer::from_pem_slice(text.as_bytes())
        .map_err(|e| err(crate::load::pem_reason(&e)))?;
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
    let mut params = param_map(&args.params)?;
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

    let encoding = form_encoding(params.get("encoding"))?;
    let mut body = encode_form(&params, encoding);
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
    let der = PrivateKeyDer::from_pem_file(path).map_err(|e| err(crate::load::pem_reason(&e)))?;
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
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn jdpay(args: &JdpayArgs) -> Result<String, SignError> {
    use crate::provider::jdpay::{XML_HEAD, des_ecb, des_key_from, signed_string};
    let mut params = param_map(&args.params)?;
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
        xml_escape(&merchant),
        xml_escape(&trade_num),
        xml_escape(&trade_type)
    );
    if let Some(o) = &o_trade_num {
        xml += &format!("<oTradeNum>{}</oTradeNum>", xml_escape(o));
    }
    xml += &format!(
        "<amount>{}</amount><status>{}</status>",
        xml_escape(&amount),
        xml_escape(&status)
    );
    if refund {
        xml += &format!(
            "<currency>{}</currency><tradeTime>{}</tradeTime>",
            xml_escape(&currency),
            xml_escape(&time)
        );
    } else {
        xml += &format!(
            "<payList><pay><payType>0</payType><amount>{}</amount><currency>{}</currency><tradeTime>{}</tradeTime></pay></payList>",
            xml_escape(&amount),
            xml_escape(&currency),
            xml_escape(&time)
        );
    }
    for (k, v) in &params {
        if !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(SignError::Param(format!("{k}={v}")));
        }
        xml += &format!("<{k}>{}</{k}>", xml_escape(v));
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
        xml_escape(&merchant)
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
