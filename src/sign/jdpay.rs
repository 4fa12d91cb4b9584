//! `callgate sign jdpay`: a JD Pay V2.0 notification. The payload XML is
//! built compact (no line breaks, so JD's formatter leaves it as it is),
//! signed as JD signs it (RSA "private-encrypt", PKCS#1 v1.5 padding
//! without DigestInfo, of the lower-case hex SHA-256 of the declaration
//! and the XML without its `<sign>` element), then framed (4-byte length,
//! zero padding), 3DES-ECB encrypted with the merchant key, hex, Base64,
//! and put in its `<jdpay>` envelope.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use des::TdesEde3;
use des::cipher::{Array, BlockCipherEncrypt, KeyInit};

use super::{SignError, beijing_now, key_error, param_map, random_digits, rsa_private_key};
use crate::secret::Secret;

/// The declaration JD's SDK puts in front of the payload.
const XML_HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";

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

/// Escapes text for an XML element.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub(super) fn run(args: &JdpayArgs) -> Result<String, SignError> {
    let mut params = param_map(&args.params)?;
    let merchant = params
        .remove("merchant")
        .ok_or(SignError::Missing("merchant"))?;
    let (_, stamp) = beijing_now();
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

    // The XML is compact: what JD signs is the declaration and the XML
    // without its `<sign>` element, which the payload then gets last.
    let sign = signature(&format!("{XML_HEAD}{xml}"), &args.private_key)?;
    let payload = format!(
        "{XML_HEAD}{}<sign>{sign}</sign></jdpay>",
        &xml[..xml.len() - "</jdpay>".len()]
    );
    let key = des_key(&args.des_key_file)?;
    let encrypt = encrypt(payload.as_bytes(), &key)?;
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<jdpay>\n  <version>V2.0</version>\n  <merchant>{}</merchant>\n  <result>\n    <code>000000</code>\n    <desc>success</desc>\n  </result>\n  <encrypt>{encrypt}</encrypt>\n</jdpay>\n",
        xml_escape(&merchant)
    );
    Ok(match &args.curl {
        None => body,
        Some(url) => format!(
            "{} -X POST -H 'Content-Type: text/xml; charset=UTF-8' --data-binary '{}' '{}'",
            super::curl(url),
            body.replace('\'', "&apos;"),
            url.replace('\'', "%27")
        ),
    })
}

/// JD's signature of `signed` (the declaration and the XML without
/// `<sign>`): the RSA private-encrypt of its lower-case hex SHA-256, Base64.
fn signature(signed: &str, private_key: &Path) -> Result<String, SignError> {
    let digest = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        signed.as_bytes(),
    ));
    let sig = rsa_private_key(private_key)?
        .sign(rsa::Pkcs1v15Sign::new_unprefixed(), digest.as_bytes())
        .map_err(|_| SignError::Sign)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sig))
}

/// The merchant's 3DES key, read as a route reads its `des_key_file` (the
/// same file).
fn des_key(file: &Path) -> Result<Secret, SignError> {
    let err = key_error(file);
    let text = Secret::from_file(file).map_err(|e| err(e.to_string()))?;
    crate::provider::jdpay::des_key_from(&text).map_err(err)
}

/// `encrypt`: the payload framed (4-byte big-endian length, zero padding to
/// whole blocks), 3DES-ECB, lower-case hex, then Base64.
fn encrypt(payload: &[u8], key: &Secret) -> Result<String, SignError> {
    let n = u32::try_from(payload.len()).map_err(|_| SignError::Sign)?;
    let mut plain = n.to_be_bytes().to_vec();
    plain.extend_from_slice(payload);
    plain.resize(plain.len().div_ceil(8) * 8, 0);
    let mut key24 = [0u8; 24];
    key24.copy_from_slice(key.expose());
    let cipher = TdesEde3::new(&Array::from(key24));
    key24.iter_mut().for_each(|b| *b = 0);
    for chunk in plain.chunks_exact_mut(8) {
        let mut block = Array::<u8, _>::default();
        block.copy_from_slice(chunk);
        cipher.encrypt_block(&mut block);
        chunk.copy_from_slice(&block);
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(hex::encode(plain).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::fixtures;
    use des::cipher::BlockCipherDecrypt;

    /// A fixture's `encrypt`, decrypted here (not by the verifier): the
    /// framed payload's XML.
    fn decrypted(name: &str, key: &Secret) -> String {
        let envelope = String::from_utf8(fixtures::read("jdpay", name)).unwrap();
        let b64 = &envelope
            [envelope.find("<encrypt>").unwrap() + 9..envelope.find("</encrypt>").unwrap()];
        let hex_text = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap();
        let mut data = hex::decode(hex_text).unwrap();
        let mut key24 = [0u8; 24];
        key24.copy_from_slice(key.expose());
        let cipher = TdesEde3::new(&Array::from(key24));
        for chunk in data.chunks_exact_mut(8) {
            let mut block = Array::<u8, _>::default();
            block.copy_from_slice(chunk);
            cipher.decrypt_block(&mut block);
            chunk.copy_from_slice(&block);
        }
        let n = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
        String::from_utf8(data[4..4 + n].to_vec()).unwrap()
    }

    /// The signer's signature and `encrypt` of a fixture's payload are the
    /// fixture's own (made by openssl: see tests/fixtures/jdpay/README.md).
    #[test]
    fn signs_and_encrypts_fixtures_as_openssl_did() {
        let key = des_key(&fixtures::path("jdpay", "des.key")).unwrap();
        for name in ["payment.xml", "refund.xml"] {
            let xml = decrypted(name, &key);
            let (from, to) = (xml.find("<sign>").unwrap(), xml.rfind("</sign>").unwrap());
            let signed = format!("{}{}", &xml[..from], &xml[to + "</sign>".len()..]);
            assert_eq!(
                signature(&signed, &fixtures::path("jdpay", "jd_private.pem")).unwrap(),
                &xml[from + "<sign>".len()..to],
                "{name}"
            );
            let envelope = String::from_utf8(fixtures::read("jdpay", name)).unwrap();
            assert!(
                envelope.contains(&format!(
                    "<encrypt>{}</encrypt>",
                    encrypt(xml.as_bytes(), &key).unwrap()
                )),
                "{name}"
            );
        }
    }

    /// What the signer makes, the verifier accepts.
    #[test]
    fn the_verifier_accepts_what_it_signs() {
        let keys = crate::provider::jdpay::Keys::from_files(
            "110000000001",
            &fixtures::path("jdpay", "des.key"),
            &fixtures::path("jdpay", "jd_public.pem"),
        )
        .unwrap();
        for extra in [
            &[][..],
            &["tradeType=2", "oTradeNum=CG1", "note=退款 & <x>"][..],
        ] {
            let mut params = vec!["merchant=110000000001".to_owned()];
            params.extend(extra.iter().map(|p| p.to_string()));
            let args = JdpayArgs {
                private_key: fixtures::path("jdpay", "jd_private.pem"),
                des_key_file: fixtures::path("jdpay", "des.key"),
                params,
                curl: None,
            };
            let body = run(&args).unwrap();
            let envelope = crate::body::Envelope::parse(body.as_bytes()).unwrap();
            let v = keys.verify(&envelope);
            assert!(v.is_ok(), "{extra:?}: {v:?}");
        }
    }
}
