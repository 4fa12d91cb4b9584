//! `wechat_v2`: WeChat Pay API v2 notifications (XML), payment results
//! signed with MD5 or HMAC-SHA256, and refund results whose `req_info` is
//! encrypted.
//!
//! The body is parsed by `body::XmlMap` (flat children of `<xml>`; DOCTYPE,
//! repeated or nested elements refused). Then, as the official SDK
//! (`WXPayUtil.java` / `WXPay.isPayResultNotifySignatureValid`, and
//! `WxPay.Data.php`) does:
//!
//! * `return_code` must be `SUCCESS`. A `FAIL` notification carries no
//!   signature: it is acknowledged with the success XML (so WeChat stops
//!   resending an error report), counted as `ignored`, and never forwarded.
//! * `mch_id` must be the route's, and `appid` too when the route names one.
//! * Payment result (has `sign`): the canonical string is every field but
//!   `sign` (including `sign_type` and fields we do not know: WeChat adds
//!   fields), sorted by name, empty values left out, joined `k=v` with `&`,
//!   then `&key=<API key>`. `MD5` is the upper-case hex MD5 of it;
//!   `HMAC-SHA256` the upper-case hex HMAC-SHA256 keyed with the API key.
//!   The comparison is constant-time and exact: both SDKs compare with the
//!   upper-case hex they compute, so a lower-case `sign` is refused.
//!   The Java SDK trims every value (`String.trim`) and skips values that
//!   are blank after trimming; the PHP SDK uses values as they are and skips
//!   only empty ones. The Java string is tried first; the PHP one only when
//!   some value had leading or trailing whitespace (PROVIDERS.md §3.2).
//! * `sign_type`: `MD5` and `HMAC-SHA256` as named; anything else is
//!   refused. Absent or empty, the official Java SDK assumes MD5. Field
//!   reports show WeChat sending HMAC-SHA256-signed notifications without
//!   `sign_type` to merchants who ordered with HMAC-SHA256
//!   (binarywang/WxJava#1585, #1633: a 64-hex-digit sign and no sign_type),
//!   and MD5-signed ones to HMAC merchants (go-pay/gopay#43). So with no
//!   `sign_type`, the algorithm is the one the sign's length names: 32 hex
//!   digits MD5, 64 HMAC-SHA256, anything else refused. Both are keyed with
//!   the merchant's API key, so this admits no weaker check than the SDK's
//!   MD5 default.
//! * Event id: `transaction_id` (or `out_trade_no` when WeChat gave none)
//!   and `result_code`, as `ID:RESULT`. Signed time: `time_end`
//!   (`yyyyMMddHHmmss`, Beijing time).
//!
//! Refund results (have `req_info`) carry **no signature**. `req_info` is
//! Base64 of AES-256-ECB (PKCS#7) ciphertext under the lower-case hex MD5 of
//! the API key. What authenticates a refund notification is that it
//! decrypts with that key, unpads correctly, and yields a well-formed flat
//! XML document rooted at `<root>` holding `refund_id`, `out_refund_no`,
//! `out_trade_no` and `refund_status`; and that the outer `mch_id` (and
//! `appid`) are the route's. ECB is unauthenticated: someone who has seen
//! other ciphertexts under the same key can splice whole 16-byte blocks
//! between them. The structure check above makes such splices unlikely to
//! pass, but it is not a MAC: a shop should still confirm a refund against
//! its own records (or the refund query API) before acting on it.
//! Event id: `refund_id`. Signed time: the decrypted `success_time`
//! (`yyyy-MM-dd HH:mm:ss`, Beijing time); a refund that did not succeed has
//! none, and is then treated as sent now. The decrypted XML is what the
//! shop gets in `X-Callgate-Resource` (original mode) or in `fields`
//! (normalized mode).

use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use base64::Engine as _;
use md5::Digest as _;
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::{Fields, ProviderKind, Verified, VerifyError, beijing_time, shown};
use crate::body::XmlMap;
use crate::rules::{FileCtx, RuleError};
use crate::secret::{Secret, ct_eq};

/// `[route.keys]` for `wechat_v2`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysFile {
    /// The merchant id (商户号); notifications must carry it as `mch_id`.
    mch_id: Spanned<String>,
    /// File holding the API v2 key (商户平台 → API安全 → API密钥).
    api_key_file: Spanned<String>,
    /// When set, notifications must carry it as `appid`.
    appid: Option<Spanned<String>>,
}

/// Compiled keys of a `wechat_v2` route.
#[derive(Debug)]
pub struct Keys {
    mch_id: Box<str>,
    appid: Option<Box<str>>,
    api_key: Secret,
    /// Lower-case hex MD5 of the API key: the refund `req_info` AES key.
    refund_key: Secret,
}

/// The two signature algorithms of API v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignAlgo {
    Md5,
    HmacSha256,
}

impl SignAlgo {
    pub fn as_str(self) -> &'static str {
        match self {
            SignAlgo::Md5 => "MD5",
            SignAlgo::HmacSha256 => "HMAC-SHA256",
        }
    }
}

/// `time_end` format (Beijing time).
const TIME_END: &str = "%Y%m%d%H%M%S";
/// Refund `success_time` format (Beijing time).
const SUCCESS_TIME: &str = "%Y-%m-%d %H:%M:%S";

impl Keys {
    /// The merchant these keys belong to: `mch_id`.
    pub fn merchant_id(&self) -> &str {
        &self.mch_id
    }

    pub(super) fn compile(value: Spanned<DeValue<'_>>, ctx: &mut FileCtx<'_>) -> Option<Keys> {
        let raw: KeysFile = ctx.deserialize(value)?;
        let mut ok = true;
        for (field, v) in [("mch_id", Some(&raw.mch_id)), ("appid", raw.appid.as_ref())] {
            if let Some(v) = v
                && v.get_ref().trim().is_empty()
            {
                ctx.error(
                    v.span(),
                    RuleError::KeyValue {
                        field: field.to_owned(),
                        reason: "must not be empty".to_owned(),
                    },
                );
                ok = false;
            }
        }
        let file = raw.api_key_file.get_ref();
        let api_key = match Secret::from_file(&ctx.resolve(file)) {
            Ok(k) => k,
            Err(e) => {
                ctx.error(
                    raw.api_key_file.span(),
                    RuleError::KeyFile {
                        field: "api_key_file".to_owned(),
                        file: file.clone(),
                        reason: e.to_string(),
                    },
                );
                return None;
            }
        };
        if !ok {
            return None;
        }
        Some(Keys::new(
            raw.mch_id.get_ref(),
            raw.appid.as_ref().map(|a| a.get_ref().as_str()),
            api_key,
        ))
    }

    /// Keys from their parts (tests and benches).
    pub fn new(mch_id: &str, appid: Option<&str>, api_key: Secret) -> Keys {
        let refund_key = Secret::new(hex::encode(md5::Md5::digest(api_key.expose())).into_bytes());
        Keys {
            mch_id: mch_id.into(),
            appid: appid.map(Into::into),
            api_key,
            refund_key,
        }
    }

    /// Verifies a parsed notification. `now` (Unix seconds) stands in for
    /// the signed time of a refund that has no `success_time`.
    pub fn verify(&self, xml: &XmlMap, now: i64) -> Result<Verified, VerifyError> {
        match xml.get("return_code") {
            Some("SUCCESS") => {}
            Some("FAIL") => {
                return Err(VerifyError::PlatformFailure {
                    message: shown(xml.get("return_msg").unwrap_or_default().as_bytes()),
                });
            }
            Some(other) => {
                return Err(VerifyError::BadValue {
                    field: "return_code",
                    value: shown(other.as_bytes()),
                });
            }
            None => return Err(VerifyError::MissingField("return_code")),
        }
        self.check_merchant(xml)?;
        match xml.get("req_info") {
            Some(req_info) => self.verify_refund(xml, req_info, now),
            None => self.verify_payment(xml),
        }
    }

    fn check_merchant(&self, xml: &XmlMap) -> Result<(), VerifyError> {
        match xml.get("mch_id") {
            Some(id) if id == &*self.mch_id => {}
            Some(id) => {
                return Err(VerifyError::MerchantMismatch {
                    field: "mch_id",
                    got: shown(id.as_bytes()),
                });
            }
            None => return Err(VerifyError::MissingField("mch_id")),
        }
        if let Some(want) = &self.appid {
            match xml.get("appid") {
                Some(id) if id == &**want => {}
                Some(id) => {
                    return Err(VerifyError::MerchantMismatch {
                        field: "appid",
                        got: shown(id.as_bytes()),
                    });
                }
                None => return Err(VerifyError::MissingField("appid")),
            }
        }
        Ok(())
    }

    fn verify_payment(&self, xml: &XmlMap) -> Result<Verified, VerifyError> {
        let sign = xml
            .get("sign")
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        let algo = match xml.get("sign_type").map(java_trim) {
            None | Some("") => match sign.len() {
                32 => SignAlgo::Md5,
                64 => SignAlgo::HmacSha256,
                _ => return Err(VerifyError::SignatureEncoding),
            },
            Some("MD5") => SignAlgo::Md5,
            Some("HMAC-SHA256") => SignAlgo::HmacSha256,
            Some(other) => return Err(VerifyError::UnsupportedSignType(shown(other.as_bytes()))),
        };
        let key = self.api_key.expose();
        let java = signature(xml.iter(), key, algo, true);
        let good = ct_eq(java.as_bytes(), sign.as_bytes())
            || (xml
                .iter()
                .any(|(k, v)| k != "sign" && java_trim(v).len() != v.len())
                && ct_eq(
                    signature(xml.iter(), key, algo, false).as_bytes(),
                    sign.as_bytes(),
                ));
        if !good {
            return Err(VerifyError::SignatureMismatch);
        }

        let result = required(xml, "result_code")?;
        let id = match xml.get("transaction_id").filter(|s| !s.is_empty()) {
            Some(t) => t,
            None => required(xml, "out_trade_no")?,
        };
        let time_end = required(xml, "time_end")?;
        let signed_at = beijing_time("time_end", time_end.as_bytes(), TIME_END)?;
        Ok(Verified::new(
            ProviderKind::WechatV2,
            format!("{id}:{result}"),
            signed_at,
            Fields::Xml {
                xml: xml.clone(),
                refund: None,
            },
        ))
    }

    fn verify_refund(
        &self,
        xml: &XmlMap,
        req_info: &str,
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let plain = self.decrypt_req_info(req_info)?;
        let refund = XmlMap::parse(&plain)
            .map_err(|_| VerifyError::Decrypt("decrypted req_info is not well-formed flat XML"))?;
        if refund.root() != "root" {
            return Err(VerifyError::Decrypt(
                "decrypted req_info is not rooted at <root>",
            ));
        }
        for field in [
            "refund_id",
            "out_refund_no",
            "out_trade_no",
            "refund_status",
        ] {
            if refund.get(field).is_none_or(str::is_empty) {
                return Err(VerifyError::Decrypt(
                    "decrypted req_info lacks refund_id, out_refund_no, out_trade_no or refund_status",
                ));
            }
        }
        let refund_id = refund.get("refund_id").unwrap_or_default().to_owned();
        let signed_at = match refund.get("success_time").filter(|s| !s.is_empty()) {
            Some(t) => beijing_time("success_time", t.as_bytes(), SUCCESS_TIME)?,
            None => now,
        };
        Ok(Verified::new(
            ProviderKind::WechatV2,
            refund_id,
            signed_at,
            Fields::Xml {
                xml: xml.clone(),
                refund: Some(refund),
            },
        )
        .with_decrypted(plain))
    }

    /// Base64 → AES-256-ECB (PKCS#7) under the MD5-hex key.
    pub(crate) fn decrypt_req_info(&self, req_info: &str) -> Result<Vec<u8>, VerifyError> {
        let mut buf = base64::engine::general_purpose::STANDARD
            .decode(req_info)
            .map_err(|_| VerifyError::Decrypt("req_info is not Base64"))?;
        let fail = |_| VerifyError::Decrypt("req_info does not decrypt with the route's key");
        let key = UnboundCipherKey::new(&AES_256, self.refund_key.expose()).map_err(fail)?;
        let key = PaddedBlockDecryptingKey::ecb_pkcs7(key).map_err(fail)?;
        let len = key
            .decrypt(&mut buf, DecryptionContext::None)
            .map_err(fail)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

fn required<'a>(xml: &'a XmlMap, field: &'static str) -> Result<&'a str, VerifyError> {
    xml.get(field)
        .filter(|s| !s.is_empty())
        .ok_or(VerifyError::MissingField(field))
}

/// `java.lang.String.trim`: strips code points up to U+0020 at both ends.
fn java_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c <= ' ')
}

/// The upper-case hex signature of `fields` (sorted by name; `sign` is
/// skipped). `java` selects the Java SDK's trimming (see the module doc).
pub fn signature<'a>(
    fields: impl Iterator<Item = (&'a str, &'a str)>,
    key: &[u8],
    algo: SignAlgo,
    java: bool,
) -> String {
    let mut content = Vec::with_capacity(1024);
    for (k, v) in fields {
        if k == "sign" {
            continue;
        }
        let v = if java { java_trim(v) } else { v };
        if v.is_empty() {
            continue;
        }
        content.extend_from_slice(k.as_bytes());
        content.push(b'=');
        content.extend_from_slice(v.as_bytes());
        content.push(b'&');
    }
    content.extend_from_slice(b"key=");
    content.extend_from_slice(key);
    let digest = match algo {
        SignAlgo::Md5 => hex::encode_upper(md5::Md5::digest(&content)),
        SignAlgo::HmacSha256 => {
            let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
            hex::encode_upper(aws_lc_rs::hmac::sign(&k, &content).as_ref())
        }
    };
    zeroize::Zeroize::zeroize(&mut content);
    digest
}

#[cfg(test)]
mod tests;
