//! `callgate sign alipay`: an Alipay open-platform notification, RSA2
//! (SHA256withRSA) or RSA (SHA1withRSA), the way `AlipaySignature` signs:
//! every parameter but `sign` and `sign_type`, sorted, blank values left
//! out, `key=value` joined by `&` in the notification's charset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{
    SignError, beijing_now, charset, fill, form_output, param_map, random_digits, rsa_sign_b64,
    signed_form,
};

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

pub(super) fn run(args: &AlipayArgs) -> Result<String, SignError> {
    let given = param_map(&args.params)?;
    notification(
        &args.private_key,
        &given,
        &args.sign_type,
        args.curl.as_ref(),
    )
}

/// A signed notification form body (or, with `curl`, a command that POSTs
/// it): `given` over realistic defaults.
fn notification(
    private_key: &Path,
    given: &BTreeMap<String, String>,
    sign_type: &str,
    curl: Option<&String>,
) -> Result<String, SignError> {
    let mut params = given.clone();
    let Some(app_id) = params.get("app_id").cloned() else {
        return Err(SignError::NoAppId);
    };
    let sha1 = sha1(sign_type)?;
    let (time, stamp) = beijing_now();
    let rand = random_digits(12);
    // What the buyer paid and the merchant received follow a given total,
    // as in a real notification without discounts.
    let total = params
        .get("total_amount")
        .cloned()
        .unwrap_or_else(|| "0.01".to_owned());
    fill(
        &mut params,
        [
            ("notify_time", time.clone()),
            ("notify_type", "trade_status_sync".to_owned()),
            ("notify_id", format!("{stamp}{rand}")),
            ("charset", "utf-8".to_owned()),
            ("version", "1.0".to_owned()),
            ("auth_app_id", app_id),
            ("trade_no", format!("{}2200{rand}", &stamp[..8])),
            ("out_trade_no", format!("CG{stamp}{}", &rand[..6])),
            ("trade_status", "TRADE_SUCCESS".to_owned()),
            ("total_amount", total.clone()),
            ("receipt_amount", total.clone()),
            ("buyer_pay_amount", total),
            ("subject", "callgate test order".to_owned()),
            ("gmt_create", time.clone()),
            ("gmt_payment", time),
            ("seller_id", "2088000000000000".to_owned()),
        ],
    );
    params.insert("sign_type".to_owned(), sign_type.to_owned());
    params.remove("sign");
    let encoding = charset(params.get("charset"))?;
    let sign = rsa_sign_b64(private_key, sha1, &signed_string(&params, encoding))?;
    let label = given.get("charset").map_or("utf-8", String::as_str);
    Ok(form_output(&params, encoding, ("sign", &sign), label, curl))
}

/// Whether `sign_type` signs with SHA-1 (`RSA`) rather than SHA-256
/// (`RSA2`).
fn sha1(sign_type: &str) -> Result<bool, SignError> {
    match sign_type {
        "RSA2" => Ok(false),
        "RSA" => Ok(true),
        other => Err(SignError::SignType(other.to_owned())),
    }
}

/// What the signature covers: blank values (empty or whitespace, which
/// Alipay's Java SDK skips) are left out.
fn signed_string(
    params: &BTreeMap<String, String>,
    encoding: &'static encoding_rs::Encoding,
) -> Vec<u8> {
    signed_form(params, encoding, &["sign", "sign_type"], |v| {
        v.trim().is_empty()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::fixtures;

    /// Signing a fixture's fields with its key gives the fixture's own
    /// signature (made by openssl: see tests/fixtures/alipay/README.md).
    #[test]
    fn signs_fixtures_as_openssl_did() {
        for (name, sign_type, encoding) in [
            ("rsa2_trade_success.form", "RSA2", encoding_rs::UTF_8),
            ("rsa_sha1_trade_success.form", "RSA", encoding_rs::UTF_8),
            ("rsa2_gbk.form", "RSA2", encoding_rs::GB18030),
        ] {
            let params = fixtures::form("alipay", name, encoding);
            let key = fixtures::path("alipay", "alipay_private.pem");
            let signed = signed_string(&params, encoding);
            assert_eq!(
                rsa_sign_b64(&key, sha1(sign_type).unwrap(), &signed).unwrap(),
                params["sign"],
                "{name}"
            );
        }
    }

    /// What the signer makes, the verifier accepts.
    #[test]
    fn the_verifier_accepts_what_it_signs() {
        let key = fixtures::path("alipay", "alipay_private.pem");
        let public = fixtures::path("alipay", "alipay_public.pem");
        let keys = crate::provider::alipay::Keys::for_bench("2021000000000001", &public).unwrap();
        let given = BTreeMap::from([
            ("app_id".to_owned(), "2021000000000001".to_owned()),
            ("subject".to_owned(), "测试 商品+1 & more".to_owned()),
            ("passback_params".to_owned(), "a=1&b= ".to_owned()),
            ("body".to_owned(), " ".to_owned()),
        ]);
        for charset in ["utf-8", "gbk"] {
            let mut given = given.clone();
            given.insert("charset".to_owned(), charset.to_owned());
            let body = notification(&key, &given, "RSA2", None).unwrap();
            let form = crate::body::Form::parse(body.as_bytes()).unwrap();
            assert!(keys.verify(&form, None).is_ok(), "{charset}: {body}");
        }
    }

    /// A given total is what the buyer paid and the merchant received too.
    #[test]
    fn the_amounts_follow_a_given_total() {
        let key = fixtures::path("alipay", "alipay_private.pem");
        let given = BTreeMap::from([
            ("app_id".to_owned(), "2021000000000001".to_owned()),
            ("total_amount".to_owned(), "88.88".to_owned()),
        ]);
        let body = notification(&key, &given, "RSA2", None).unwrap();
        for amount in ["total_amount", "receipt_amount", "buyer_pay_amount"] {
            assert!(
                body.contains(&format!("{amount}=88.88")),
                "{amount}: {body}"
            );
        }
    }
}
