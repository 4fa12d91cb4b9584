//! `callgate sign unionpay`: a UnionPay ACP backUrl notification, signed as
//! UnionPay's SDK does: every field but `signature`, sorted, `key=value`
//! joined by `&` (empty values kept), the lower-case hex SHA-256 (5.1.0)
//! or SHA-1 (5.0.0) of that, and SHA256withRSA or SHA1withRSA over the hex.
//! 5.1.0 carries the signing certificate in `signPubKeyCert`, 5.0.0 its
//! serial in `certId`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{
    SignError, beijing_now, charset, fill, form_output, param_map, random_digits, read_cert_pem,
    rsa_sign_b64, signed_form,
};

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

pub(super) fn run(args: &UnionpayArgs) -> Result<String, SignError> {
    let mut params = param_map(&args.params)?;
    if !params.contains_key("merId") {
        return Err(SignError::Missing("merId"));
    }
    let sha1 = match args.acp_version.as_str() {
        "5.1.0" => false,
        "5.0.0" => true,
        other => return Err(SignError::AcpVersion(other.to_owned())),
    };
    let (_, stamp) = beijing_now();
    let rand = random_digits(12);
    let amount = params
        .get("txnAmt")
        .cloned()
        .unwrap_or_else(|| "1".to_owned());
    fill(
        &mut params,
        [
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
        ],
    );
    params.insert("version".to_owned(), args.acp_version.clone());
    params.insert("signMethod".to_owned(), "01".to_owned());
    params.remove("signature");
    let (pem, der) = read_cert_pem(&args.cert)?;
    let cert = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| SignError::Key {
            file: args.cert.display().to_string(),
            reason: "not an X.509 certificate".to_owned(),
        })?
        .1;
    key_matches(&args.private_key, &args.cert, &cert)?;
    if sha1 {
        params.insert("certId".to_owned(), cert.tbs_certificate.serial.to_string());
        params.remove("signPubKeyCert");
    } else {
        params.insert("signPubKeyCert".to_owned(), pem);
        params.remove("certId");
    }
    let encoding = charset(params.get("encoding"))?;
    let sig = signature(&params, encoding, &args.private_key, sha1)?;
    let label = if encoding == encoding_rs::UTF_8 {
        "UTF-8"
    } else {
        "GBK"
    };
    Ok(form_output(
        &params,
        encoding,
        ("signature", &sig),
        label,
        args.curl.as_ref(),
    ))
}

/// The certificate a sample names (`signPubKeyCert`, `certId`) must hold
/// the signing key's public half: otherwise the gateway refuses every
/// sample signed here (401), which says nothing of the deployment.
fn key_matches(
    private_key: &Path,
    cert_file: &Path,
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<(), SignError> {
    use rsa::pkcs8::DecodePublicKey;
    let public = super::rsa_private_key(private_key)?.to_public_key();
    let certified = rsa::RsaPublicKey::from_public_key_der(cert.public_key().raw).ok();
    if certified.as_ref() == Some(&public) {
        return Ok(());
    }
    Err(SignError::Key {
        file: cert_file.display().to_string(),
        reason: format!(
            "its public key is not the one of --private-key {}: give the certificate of that key",
            private_key.display()
        ),
    })
}

/// `signature`: RSA over the hex digest of the signed string.
fn signature(
    params: &BTreeMap<String, String>,
    encoding: &'static encoding_rs::Encoding,
    private_key: &Path,
    sha1: bool,
) -> Result<String, SignError> {
    let content = signed_form(params, encoding, &["signature"], |_| false);
    let digest = hex::encode(aws_lc_rs::digest::digest(
        if sha1 {
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY
        } else {
            &aws_lc_rs::digest::SHA256
        },
        &content,
    ));
    rsa_sign_b64(private_key, sha1, digest.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::fixtures;

    /// Signing a fixture's fields with its key gives the fixture's own
    /// signature (made by openssl: see tests/fixtures/unionpay/README.md).
    #[test]
    fn signs_fixtures_as_openssl_did() {
        let key = fixtures::path("unionpay", "sign_key.pem");
        for (name, encoding, sha1) in [
            ("v510_payment.form", encoding_rs::UTF_8, false),
            ("v510_gbk.form", encoding_rs::GB18030, false),
            ("v510_empty_value.form", encoding_rs::UTF_8, false),
            ("v500_payment.form", encoding_rs::UTF_8, true),
        ] {
            let params = fixtures::form("unionpay", name, encoding);
            assert_eq!(
                signature(&params, encoding, &key, sha1).unwrap(),
                params["signature"],
                "{name}"
            );
        }
    }

    /// What the signer makes, the verifier accepts.
    #[test]
    fn the_verifier_accepts_what_it_signs() {
        let f = |n: &str| fixtures::path("unionpay", n);
        let keys = crate::provider::unionpay::Keys::from_files(
            "777290058110097",
            Some((&f("root.pem"), &f("middle.pem"))),
            &[&f("sign.pem")],
        )
        .unwrap();
        for version in ["5.1.0", "5.0.0"] {
            let args = UnionpayArgs {
                private_key: f("sign_key.pem"),
                cert: f("sign.pem"),
                acp_version: version.to_owned(),
                params: vec![
                    "merId=777290058110097".to_owned(),
                    "reqReserved=".to_owned(),
                ],
                curl: None,
            };
            let body = run(&args).unwrap();
            let form = crate::body::Form::parse(body.as_bytes()).unwrap();
            let v = keys.verify_at(&form, None, crate::clock::unix_now());
            assert!(v.is_ok(), "{version}: {v:?}");
        }
    }
}
