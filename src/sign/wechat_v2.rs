//! `callgate sign wechat_v2`: a WeChat Pay API v2 payment result, signed as
//! `WXPayUtil.generateSignature` does: every field but `sign`, values
//! trimmed (Java `String.trim`) and empty ones left out, sorted,
//! `key=value&` joined, then `key=<API key>`; MD5 or HMAC-SHA256 (keyed
//! with the API key), upper-case hex.

use std::collections::BTreeMap;
use std::path::PathBuf;

use md5::Digest as _;

use super::{
    SignError, beijing_now, fill, param_map, random_alnum, random_digits, read_secret, shell_quote,
};

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

pub(super) fn run(args: &WechatV2Args) -> Result<String, SignError> {
    let mut params = param_map(&args.params)?;
    if !params.contains_key("mch_id") {
        return Err(SignError::NoMchId);
    }
    let hmac = match args.sign_type.as_deref() {
        None | Some("MD5") => false,
        Some("HMAC-SHA256") => true,
        Some(other) => return Err(SignError::SignType(other.to_owned())),
    };
    let key = read_secret(&args.api_key_file)?;
    let (_, stamp) = beijing_now();
    let rand = random_digits(14);
    let total = params
        .get("total_fee")
        .cloned()
        .unwrap_or_else(|| "1".to_owned());
    fill(
        &mut params,
        [
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
        ],
    );
    params.remove("sign");
    match &args.sign_type {
        Some(t) => params.insert("sign_type".to_owned(), t.clone()),
        None => params.remove("sign_type"),
    };
    let sign = signature(&params, key.expose(), hmac);
    params.insert("sign".to_owned(), sign);
    let mut xml = String::from("<xml>\n");
    for (k, v) in &params {
        xml.push_str(&format!("<{k}>{}</{k}>\n", xml_text(v)));
    }
    xml.push_str("</xml>");
    Ok(match &args.curl {
        None => xml,
        Some(url) => format!(
            "{} -X POST -H 'Content-Type: text/xml' --data-binary {} {}",
            super::curl(url),
            shell_quote(&xml),
            shell_quote(url)
        ),
    })
}

/// The upper-case hex signature of `params` (`sign` is left out): MD5, or
/// HMAC-SHA256 keyed with the API key.
fn signature(params: &BTreeMap<String, String>, key: &[u8], hmac: bool) -> String {
    let mut content = Vec::new();
    for (k, v) in params {
        // Java's String.trim: every char up to U+0020 at both ends.
        let v = v.trim_matches(|c: char| c <= ' ');
        if k == "sign" || v.is_empty() {
            continue;
        }
        content.extend_from_slice(format!("{k}={v}&").as_bytes());
    }
    content.extend_from_slice(b"key=");
    content.extend_from_slice(key);
    let digest = if hmac {
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
        hex::encode_upper(aws_lc_rs::hmac::sign(&k, &content).as_ref())
    } else {
        hex::encode_upper(md5::Md5::digest(&content))
    };
    zeroize::Zeroize::zeroize(&mut content);
    digest
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::fixtures;

    fn key() -> Vec<u8> {
        read_secret(&fixtures::path("wechat", "v2_api.key"))
            .unwrap()
            .expose()
            .to_vec()
    }

    fn fields(name: &str) -> BTreeMap<String, String> {
        let xml = crate::body::XmlMap::parse(&fixtures::read("wechat", name)).unwrap();
        xml.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Signing a fixture's fields with its key gives the fixture's own
    /// signature (made by Python's hashlib/hmac: see
    /// tests/fixtures/wechat/README.md).
    #[test]
    fn signs_fixtures_as_python_did() {
        for (name, hmac) in [
            ("v2_md5_pay.xml", false),
            ("v2_md5_pay_sign_type.xml", false),
            ("v2_hmac_pay.xml", true),
            ("v2_hmac_no_sign_type.xml", true),
            ("v2_trimmed_value.xml", false),
        ] {
            let params = fields(name);
            assert_eq!(signature(&params, &key(), hmac), params["sign"], "{name}");
        }
    }

    /// What the signer makes, the verifier accepts.
    #[test]
    fn the_verifier_accepts_what_it_signs() {
        let keys = crate::provider::wechat_v2::Keys::new(
            "1900000109",
            None,
            crate::secret::Secret::new(key()),
        );
        for sign_type in [None, Some("MD5"), Some("HMAC-SHA256")] {
            let args = WechatV2Args {
                api_key_file: fixtures::path("wechat", "v2_api.key"),
                params: vec![
                    "mch_id=1900000109".to_owned(),
                    "attach= a ]]> b ".to_owned(),
                ],
                sign_type: sign_type.map(str::to_owned),
                curl: None,
            };
            let xml = run(&args).unwrap();
            let map = crate::body::XmlMap::parse(xml.as_bytes()).unwrap();
            assert!(keys.verify(&map, 0).is_ok(), "{sign_type:?}: {xml}");
        }
    }
}
