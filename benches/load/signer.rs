//! Distinct, genuinely signed notifications for load generation (the load
//! corpus, `benches/pipeline.rs`): Alipay RSA2 forms and WeChat Pay v2
//! HMAC-SHA256 XML of about 1 KB each, signed with the demo keys in
//! `certs/dev/` by callgate's own signing rules (the canonical strings
//! `callgate sign` uses). Never used to test a verifier: those are tested
//! against independent signers (`tests/fixtures/*/README.md`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use callgate::body::Form;
use callgate::provider::{bench, wechat_v2};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What Alipay's form encoding leaves alone.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

pub const ALIPAY_APP_ID: &str = "2021000000000001";
pub const WECHAT_MCH_ID: &str = "1900000109";
pub const WECHAT_APPID: &str = "wx2421b1c4370ec43b";
/// Body size the measurements use.
pub const TARGET_BYTES: usize = 1024;

pub struct Signer {
    alipay: RsaKeyPair,
    wechat_key: Vec<u8>,
    rng: aws_lc_rs::rand::SystemRandom,
}

impl Signer {
    /// Loads the demo keys from `certs` (the repository's `certs/dev`).
    pub fn new(certs: &Path) -> Signer {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let der = PrivateKeyDer::from_pem_file(certs.join("alipay_private.pem"))
            .expect("certs/dev/alipay_private.pem");
        let alipay = match &der {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => panic!("alipay_private.pem is not an RSA key"),
        }
        .expect("an RSA private key");
        let wechat_key = std::fs::read_to_string(certs.join("wechat_v2_api.key"))
            .expect("certs/dev/wechat_v2_api.key")
            .trim_end()
            .as_bytes()
            .to_vec();
        Signer {
            alipay,
            wechat_key,
            rng: aws_lc_rs::rand::SystemRandom::new(),
        }
    }

    /// An Alipay TRADE_SUCCESS notification, number `n` of run `run`
    /// (notify_id, trade_no and out_trade_no are unique per (run, n)),
    /// signed at `now` (Unix seconds), padded to about 1 KB.
    pub fn alipay(&self, run: u32, n: u64, now: i64) -> String {
        let (time, stamp) = beijing(now);
        let mut f: BTreeMap<&str, String> = BTreeMap::new();
        f.insert("app_id", ALIPAY_APP_ID.to_owned());
        f.insert("auth_app_id", ALIPAY_APP_ID.to_owned());
        f.insert("buyer_id", "2088102177846880".to_owned());
        f.insert("buyer_logon_id", "csq***@sandbox.com".to_owned());
        f.insert("buyer_pay_amount", "88.00".to_owned());
        f.insert("charset", "utf-8".to_owned());
        f.insert("gmt_create", time.clone());
        f.insert("gmt_payment", time.clone());
        f.insert("invoice_amount", "88.00".to_owned());
        f.insert("notify_id", format!("{stamp}{run:04}{n:012}"));
        f.insert("notify_time", time);
        f.insert("notify_type", "trade_status_sync".to_owned());
        f.insert("out_trade_no", format!("LOAD{run:04}{n:012}"));
        f.insert("point_amount", "0.00".to_owned());
        f.insert("receipt_amount", "88.00".to_owned());
        f.insert("seller_id", "2088102177649450".to_owned());
        f.insert("subject", "双十一 订单".to_owned());
        f.insert("total_amount", "88.00".to_owned());
        f.insert("trade_no", format!("{}2200{run:04}{n:012}", &stamp[..8]));
        f.insert("trade_status", "TRADE_SUCCESS".to_owned());
        f.insert("version", "1.0".to_owned());
        f.insert("sign_type", "RSA2".to_owned());
        // `body` (the order description) pads to the target size; the
        // signature adds about 380 encoded bytes.
        let unsigned = encode(&f).len() + "&body=".len();
        let pad = (TARGET_BYTES - 368 - "&sign=".len()).saturating_sub(unsigned);
        f.insert("body", "x".repeat(pad));
        let mut body = encode(&f);
        let form = Form::parse(body.as_bytes()).expect("our own form parses");
        let content = bench::alipay_canonical(&form);
        let mut sig = vec![0u8; self.alipay.public_modulus_len()];
        self.alipay
            .sign(&RSA_PKCS1_SHA256, &self.rng, &content, &mut sig)
            .expect("RSA signing");
        let sign = base64::engine::general_purpose::STANDARD.encode(&sig);
        body.push_str("&sign=");
        body.extend(utf8_percent_encode(&sign, FORM));
        body
    }

    /// A WeChat Pay v2 payment result, number `n` of run `run`
    /// (transaction_id unique per (run, n)), HMAC-SHA256, at `now`, on one
    /// line, padded to about 1 KB.
    pub fn wechat_v2(&self, run: u32, n: u64, now: i64) -> String {
        let (_, stamp) = beijing(now);
        let mut f: BTreeMap<&str, String> = BTreeMap::new();
        f.insert("appid", WECHAT_APPID.to_owned());
        f.insert("bank_type", "CMC".to_owned());
        f.insert("cash_fee", "8800".to_owned());
        f.insert("fee_type", "CNY".to_owned());
        f.insert("is_subscribe", "Y".to_owned());
        f.insert("mch_id", WECHAT_MCH_ID.to_owned());
        f.insert("nonce_str", format!("{run:04}{n:028}"));
        f.insert("openid", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o".to_owned());
        f.insert("out_trade_no", format!("LOAD{run:04}{n:012}"));
        f.insert("result_code", "SUCCESS".to_owned());
        f.insert("return_code", "SUCCESS".to_owned());
        f.insert("sign_type", "HMAC-SHA256".to_owned());
        f.insert("time_end", stamp);
        f.insert("total_fee", "8800".to_owned());
        f.insert("trade_type", "JSAPI".to_owned());
        f.insert("transaction_id", format!("4200{run:04}{n:020}"));
        let unsigned = xml(&f).len() + "<attach><![CDATA[]]></attach>".len();
        let signed_len = "<sign><![CDATA[]]></sign>".len() + 64;
        let pad = (TARGET_BYTES - signed_len).saturating_sub(unsigned);
        f.insert("attach", "x".repeat(pad));
        let sign = wechat_v2::signature(
            f.iter().map(|(k, v)| (*k, v.as_str())),
            &self.wechat_key,
            wechat_v2::SignAlgo::HmacSha256,
            true,
        );
        f.insert("sign", sign);
        xml(&f)
    }
}

fn encode(f: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(TARGET_BYTES);
    for (k, v) in f {
        if !out.is_empty() {
            out.push('&');
        }
        out.extend(utf8_percent_encode(k, FORM));
        out.push('=');
        out.extend(utf8_percent_encode(v, FORM));
    }
    out
}

fn xml(f: &BTreeMap<&str, String>) -> String {
    let mut out = String::from("<xml>");
    for (k, v) in f {
        out.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    out.push_str("</xml>");
    out
}

/// Beijing time as Alipay (`2026-11-11 00:00:00`) and WeChat
/// (`20261111000000`) write it.
fn beijing(now: i64) -> (String, String) {
    let t = chrono::DateTime::from_timestamp(now + 8 * 3600, 0).expect("a valid time");
    (
        t.format("%Y-%m-%d %H:%M:%S").to_string(),
        t.format("%Y%m%d%H%M%S").to_string(),
    )
}
