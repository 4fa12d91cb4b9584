//! `callgate sign alipay_md5`: a legacy Alipay (create_direct_pay_by_user)
//! notification, signed as the legacy PHP demo does: every parameter but
//! `sign`, `sign_type` and the empty ones, sorted, `key=value` joined by
//! `&` in the shop's charset, then `md5(string + key)` in lower-case hex.

use std::collections::BTreeMap;
use std::path::PathBuf;

use md5::{Digest, Md5};

use super::{
    SignError, beijing_now, fill, form_output, param_map, random_digits, read_secret, signed_form,
};
use crate::secret::Secret;

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

pub(super) fn run(args: &AlipayMd5Args) -> Result<String, SignError> {
    let mut params = param_map(&args.params)?;
    if !params.contains_key("seller_id") {
        return Err(SignError::NoSellerId);
    }
    let encoding = match args.charset.to_ascii_lowercase().as_str() {
        "utf-8" | "utf8" => encoding_rs::UTF_8,
        "gbk" => encoding_rs::GBK,
        _ => return Err(SignError::Charset(args.charset.clone())),
    };
    let key = read_secret(&args.key_file)?;
    let (time, stamp) = beijing_now();
    let rand = random_digits(12);
    // One item at the given total, as a real notification of one item.
    let total = params
        .get("total_fee")
        .cloned()
        .unwrap_or_else(|| "0.01".to_owned());
    fill(
        &mut params,
        [
            ("notify_time", time.clone()),
            ("notify_type", "trade_status_sync".to_owned()),
            ("notify_id", format!("{stamp}{rand}cg")),
            ("trade_no", format!("{}2100100{rand}", &stamp[..8])),
            ("out_trade_no", format!("CG{stamp}{}", &rand[..6])),
            ("trade_status", "TRADE_SUCCESS".to_owned()),
            ("total_fee", total.clone()),
            ("price", total),
            ("quantity", "1".to_owned()),
            ("payment_type", "1".to_owned()),
            ("subject", "callgate test order".to_owned()),
            ("gmt_create", time.clone()),
            ("gmt_payment", time),
            ("is_total_fee_adjust", "N".to_owned()),
            ("use_coupon", "N".to_owned()),
        ],
    );
    params.insert("sign_type".to_owned(), "MD5".to_owned());
    params.remove("sign");
    let sign = signature(&params, encoding, &key);
    let label = if encoding == encoding_rs::UTF_8 {
        "utf-8"
    } else {
        "GBK"
    };
    Ok(form_output(
        &params,
        encoding,
        ("sign", &sign),
        label,
        args.curl.as_ref(),
    ))
}

/// `md5(signed string + key)`, lower-case hex; empty values are not signed
/// (PHP's `$val == ""`).
fn signature(
    params: &BTreeMap<String, String>,
    encoding: &'static encoding_rs::Encoding,
    key: &Secret,
) -> String {
    let content = signed_form(params, encoding, &["sign", "sign_type"], str::is_empty);
    hex::encode(
        Md5::new()
            .chain_update(content)
            .chain_update(key.expose())
            .finalize(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::fixtures;

    fn key() -> Secret {
        read_secret(&fixtures::path("alipay_md5", "md5_key.txt")).unwrap()
    }

    /// Signing a fixture's fields with its key gives the fixture's own
    /// signature (made with openssl's MD5, checked by PHP: see
    /// tests/fixtures/alipay_md5/README.md).
    #[test]
    fn signs_fixtures_as_openssl_did() {
        for (name, encoding) in [
            ("md5_trade_success.form", encoding_rs::UTF_8),
            ("md5_escrow_paid.form", encoding_rs::UTF_8),
            ("md5_gbk.form", encoding_rs::GB18030),
        ] {
            let params = fixtures::form("alipay_md5", name, encoding);
            assert_eq!(
                signature(&params, encoding, &key()),
                params["sign"],
                "{name}"
            );
        }
    }

    /// What the signer makes, the verifier accepts.
    #[test]
    fn the_verifier_accepts_what_it_signs() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("md5.key");
        std::fs::write(&key_file, key().expose()).unwrap();
        for (charset, gbk) in [("utf-8", false), ("gbk", true)] {
            let args = AlipayMd5Args {
                key_file: key_file.clone(),
                params: vec![
                    "seller_id=2088101122334455".to_owned(),
                    "subject=测试商品 中文".to_owned(),
                    "body=".to_owned(),
                ],
                charset: charset.to_owned(),
                curl: None,
            };
            let body = run(&args).unwrap();
            let keys = crate::provider::alipay_md5::Keys::for_bench(
                "2088101122334455",
                key().expose(),
                gbk,
            );
            let form = crate::body::Form::parse(body.as_bytes()).unwrap();
            assert!(keys.verify(&form, None).is_ok(), "{charset}: {body}");
        }
    }
}
