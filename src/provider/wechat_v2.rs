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
//!   A service provider's notification for a sub-merchant (`sub_mch_id`)
//!   must name `keys.sub_mch_id`, unless the route says
//!   `accept_any_sub_merchant = true` (which `callgate check` warns about).
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
//!   digits MD5, 64 HMAC-SHA256, anything else refused.
//! * Which of the two a route accepts is `keys.sign_types`. The API key
//!   implies neither (one key serves both), and WeChat is reported to send
//!   MD5-signed notifications to HMAC merchants, so the default accepts
//!   both: pinning HMAC-SHA256 by default would refuse those genuine
//!   payments. Both are keyed with the same secret API key, so accepting
//!   MD5 gives a forger nothing without it. A merchant who knows its
//!   notifications are all HMAC-SHA256 sets `sign_types = ["HMAC-SHA256"]`,
//!   and an MD5 one is then refused (`sign_type_not_allowed`).
//! * Blank values are not signed (Java: blank after trimming; PHP: empty),
//!   so anyone can add `<refund_fee></refund_fee>` to a genuine payment:
//!   such elements are dropped from what the shop receives
//!   (`Verified::original_body`, and the `normalized` fields).
//! * Identity (`provider::identity`): event id `transaction_id` (digits; it
//!   is required, there is no fallback to `out_trade_no`) and `result_code`
//!   (`SUCCESS` or `FAIL`), as `ID:RESULT`. Signed time: `time_end`,
//!   exactly `yyyyMMddHHmmss`, Beijing time. Merchant: `mch_id`, or
//!   `mch_id/sub_mch_id`. Values are joined unescaped and trimmed (Java), so
//!   these fields must be free of whitespace, and none of them (nor
//!   `appid`, `fee_type`) may appear as `&name=` inside another value.
//!   `out_trade_no` and the amounts ([`PINNED`]) may hold no `&`, and no
//!   pinned field surrounding whitespace (the signer trims it, so the shop
//!   would read a value the signature never saw).
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
//! Event id: `refund_id:refund_status` (digits; `SUCCESS`, `CHANGE` or
//! `REFUNDCLOSE`), so a refund that goes CHANGE, then SUCCESS is two
//! events. A service provider's refund names its sub-merchant
//! (`sub_mch_id`, `sub_appid`) only in the outer XML, which nothing
//! authenticates: `req_info` does not hold it, and every sub-merchant's
//! refunds are encrypted under the provider's one key. So the outer
//! `sub_mch_id` still picks the merchant table and must be bound as for a
//! payment, but the replay merchant of a refund is `mch_id` alone (the key
//! that decrypted it): a refund readdressed to another sub-merchant of the
//! route is the duplicate of the first copy, never a second delivery. Signed time: the decrypted `success_time` (exactly
//! `yyyy-MM-dd HH:mm:ss`, Beijing time); a refund that did not succeed has
//! none and is then treated as sent now, so it relies on the replay store
//! alone (which is why `replay.ttl` may not be shorter than the window); a
//! copy of such a refund posted after `replay.ttl` is delivered again.
//! The decrypted XML is what the shop gets in `X-Callgate-Resource`
//! (original mode) or in `fields` (normalized mode). Of the outer XML the
//! shop gets only the elements a refund notification carries
//! ([`REFUND_OUTER`]): anything else, such as a genuine payment's `sign`,
//! `result_code` and `total_fee` wrapped around a refund's `req_info`, is
//! covered by nothing and left out, as blank payment fields are.

use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use base64::Engine as _;
use md5::Digest as _;
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::identity::{self, Role, TimeFormat};
use super::{Fields, ProviderKind, Verified, VerifyError, bind_sub_merchant, expect_merchant};
use crate::body::XmlMap;
use crate::load::{FileCtx, RuleError};
use crate::secret::shown;
use crate::secret::{Secret, ct_eq};

/// `[route.keys]` for `wechat_v2`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// The merchant id (商户号); notifications must carry it as `mch_id`.
    /// Required, like `api_key_file` (options so that one wrong value does
    /// not hide the others' problems: `FileCtx::required`).
    mch_id: Option<Spanned<String>>,
    /// File holding the API v2 key (商户平台 → API安全 → API密钥).
    api_key_file: Option<Spanned<String>>,
    /// When set, notifications must carry it as `appid`.
    appid: Option<Spanned<String>>,
    /// The signature types accepted: `MD5`, `HMAC-SHA256` (default: both).
    sign_types: Option<Spanned<Vec<String>>>,
    /// Service provider mode: the sub-merchant (`sub_mch_id`) notifications
    /// must be for.
    sub_mch_id: Option<Spanned<String>>,
    /// Service provider mode: accept notifications for any sub-merchant.
    #[serde(default)]
    accept_any_sub_merchant: bool,
}

/// Compiled keys of a `wechat_v2` route.
#[derive(Debug)]
pub struct Keys {
    mch_id: Box<str>,
    appid: Option<Box<str>>,
    api_key: Secret,
    /// HMAC-SHA256 keyed with the API key, prepared once (preparing it per
    /// notification cost about 5,000 instructions). Boxed: it is a kilobyte
    /// of hash state, and `Provider` holds every provider's keys inline.
    hmac_key: Box<aws_lc_rs::hmac::Key>,
    /// Lower-case hex MD5 of the API key: the refund `req_info` AES key.
    refund_key: Secret,
    /// Accepted algorithms: (MD5, HMAC-SHA256).
    sign_types: (bool, bool),
    sub_mch_id: Option<Box<str>>,
    any_sub_merchant: bool,
    /// `mch_id`, or `mch_id/sub_mch_id` when bound to a sub-merchant.
    merchant: Box<str>,
}

/// The fields the signed string must fix exactly: a payment
/// notification's identity and `fee_type` (folded away, the shop would read
/// CNY) may not be folded; what the shop reads besides may not take in its
/// neighbour, nor (below) be padded. `attach`, the merchant's own text, may
/// hold `&out_trade_no=`, so that is refused only while `out_trade_no`
/// itself is missing (folded away into it: see `identity::Pinned::whole`)
/// (`total_fee` cannot be folded at all: `time_end` sorts before it).
const PINNED: identity::Pinned = identity::Pinned {
    unfoldable: &[
        "transaction_id",
        "result_code",
        "trade_state",
        "time_end",
        "mch_id",
        "appid",
        "sub_mch_id",
        "fee_type",
    ],
    whole: &[
        "out_trade_no",
        "total_fee",
        "settlement_total_fee",
        "cash_fee",
    ],
};

/// The outer elements of a refund notification (WeChat's refund notify
/// document; a service provider's adds `sub_appid` and `sub_mch_id`). No
/// signature covers them, so any other element is left out of what the
/// shop receives.
const REFUND_OUTER: &[&str] = &[
    "return_code",
    "return_msg",
    "appid",
    "mch_id",
    "sub_appid",
    "sub_mch_id",
    "nonce_str",
    "req_info",
];

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

impl Keys {
    /// The merchant these keys are for: `mch_id`, or `mch_id/sub_mch_id`
    /// when bound to a sub-merchant.
    pub fn merchant_id(&self) -> &str {
        &self.merchant
    }

    /// The merchant number, `mch_id`.
    pub fn mch_id(&self) -> &str {
        &self.mch_id
    }

    /// The sub-merchant these keys are bound to, when they are.
    pub fn sub_mch_id(&self) -> Option<&str> {
        self.sub_mch_id.as_deref()
    }

    pub(super) fn compile(value: Spanned<DeValue<'_>>, ctx: &mut FileCtx<'_>) -> Option<Keys> {
        let span = value.span();
        let each = ctx.deserialize_each::<KeysFile>(value);
        let raw = each.value.as_ref()?;
        let mch_id = ctx.required(&each, span.clone(), "mch_id", raw.mch_id.as_ref());
        let api_key_file = ctx.required(&each, span, "api_key_file", raw.api_key_file.as_ref());
        let mut ok = each.holes.is_empty();
        for (field, v) in [("mch_id", mch_id), ("appid", raw.appid.as_ref())] {
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
        let api_key =
            api_key_file.and_then(
                |file| match Secret::from_file(&ctx.resolve(file.get_ref())) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        ctx.error(
                            file.span(),
                            RuleError::KeyFile {
                                field: "api_key_file".to_owned(),
                                file: file.get_ref().clone(),
                                reason: e.to_string(),
                            },
                        );
                        None
                    }
                },
            );
        let mut sign_types = (true, true);
        // A list an entry was taken out of is not judged as a whole.
        if let Some(list) = raw.sign_types.as_ref().filter(|_| !each.lost("sign_types")) {
            sign_types = (false, false);
            for t in list.get_ref() {
                match t.as_str() {
                    "MD5" => sign_types.0 = true,
                    "HMAC-SHA256" => sign_types.1 = true,
                    other => {
                        ok = false;
                        ctx.error(
                            list.span(),
                            RuleError::KeyValue {
                                field: "sign_types".to_owned(),
                                reason: format!("`{other}` is not \"MD5\" or \"HMAC-SHA256\""),
                            },
                        );
                    }
                }
            }
            if ok && sign_types == (false, false) {
                ok = false;
                ctx.error(
                    list.span(),
                    RuleError::KeyValue {
                        field: "sign_types".to_owned(),
                        reason: "name at least one of \"MD5\" and \"HMAC-SHA256\"".to_owned(),
                    },
                );
            }
        }
        if let Some(s) = &raw.sub_mch_id
            && (s.get_ref().is_empty() || !s.get_ref().bytes().all(|b| b.is_ascii_digit()))
        {
            ok = false;
            ctx.error(
                s.span(),
                RuleError::KeyValue {
                    field: "sub_mch_id".to_owned(),
                    reason: format!("`{}` is not a merchant number (digits)", s.get_ref()),
                },
            );
        }
        if let Some(mch_id) = mch_id
            && raw.accept_any_sub_merchant
        {
            ctx.warn(
                mch_id.span(),
                format_args!(
                    "wechat_v2 merchant `{}` has accept_any_sub_merchant = true: notifications for ANY of its sub-merchants reach this shop; bind one with keys.sub_mch_id instead",
                    mch_id.get_ref()
                ),
            );
        }
        let (Some(mch_id), Some(api_key), true) = (mch_id, api_key, ok) else {
            return None;
        };
        let mut keys = Keys::new(
            mch_id.get_ref(),
            raw.appid.as_ref().map(|a| a.get_ref().as_str()),
            api_key,
        );
        keys.sign_types = sign_types;
        keys.any_sub_merchant = raw.accept_any_sub_merchant;
        if let Some(sub) = &raw.sub_mch_id {
            keys.merchant = format!("{}/{}", keys.mch_id, sub.get_ref()).into_boxed_str();
            keys.sub_mch_id = Some(sub.get_ref().as_str().into());
        }
        Some(keys)
    }

    /// Keys from their parts (tests and benches).
    pub fn new(mch_id: &str, appid: Option<&str>, api_key: Secret) -> Keys {
        let refund_key = Secret::new(hex::encode(md5::Md5::digest(api_key.expose())).into_bytes());
        let hmac_key = Box::new(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            api_key.expose(),
        ));
        Keys {
            mch_id: mch_id.into(),
            appid: appid.map(Into::into),
            api_key,
            hmac_key,
            refund_key,
            sign_types: (true, true),
            sub_mch_id: None,
            any_sub_merchant: false,
            merchant: mch_id.into(),
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
            Some(req_info) => {
                // The outer `sub_mch_id` picks and must match the
                // sub-merchant's table, but nothing authenticates it (the
                // module doc): the refund's replay merchant is the one
                // whose key decrypts it, so a copy readdressed to another
                // sub-merchant is that refund's duplicate.
                self.bind(xml)?;
                self.verify_refund(xml, req_info, self.mch_id.to_string(), now)
            }
            None => self.verify_payment(xml),
        }
    }

    /// Checks `mch_id` and `appid`.
    fn check_merchant(&self, xml: &XmlMap) -> Result<(), VerifyError> {
        let field = |name: &str| xml.get(name).map(str::as_bytes);
        expect_merchant("mch_id", field("mch_id"), &self.mch_id)?;
        if let Some(want) = &self.appid {
            expect_merchant("appid", field("appid"), want)?;
        }
        Ok(())
    }

    /// The sub-merchant check (module doc); returns the merchant part of
    /// the replay key.
    fn bind(&self, xml: &XmlMap) -> Result<String, VerifyError> {
        let sub = identity::optional_token(
            Role::Merchant,
            "sub_mch_id",
            xml.get("sub_mch_id").map(str::as_bytes),
            &identity::DIGITS,
        )?;
        bind_sub_merchant(
            "sub_mch_id",
            &self.mch_id,
            sub,
            self.sub_mch_id.as_deref(),
            self.any_sub_merchant,
        )
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
        let allowed = match algo {
            SignAlgo::Md5 => self.sign_types.0,
            SignAlgo::HmacSha256 => self.sign_types.1,
        };
        if !allowed {
            return Err(VerifyError::SignTypeNotAllowed {
                got: algo.as_str().to_owned(),
                allowed: if self.sign_types.0 {
                    "MD5 only"
                } else {
                    "HMAC-SHA256 only"
                }
                .to_owned(),
            });
        }
        let key = self.api_key.expose();
        let java = signature_with(xml.iter(), key, &self.hmac_key, algo, true);
        // The fields each string leaves out: blank after Java's trim, or
        // empty (PHP).
        let unsigned: Vec<String> = if ct_eq(java.as_bytes(), sign.as_bytes()) {
            blank_fields(xml, |v| java_trim(v).is_empty())
        } else if xml
            .iter()
            .any(|(k, v)| k != "sign" && java_trim(v).len() != v.len())
            && ct_eq(
                signature_with(xml.iter(), key, &self.hmac_key, algo, false).as_bytes(),
                sign.as_bytes(),
            )
        {
            blank_fields(xml, str::is_empty)
        } else {
            return Err(VerifyError::SignatureMismatch);
        };

        identity::check_unambiguous(
            xml.iter()
                .filter(|(k, _)| !unsigned.iter().any(|u| u == k))
                .map(|(k, v)| (k, v.as_bytes())),
            &PINNED,
            |name| xml.get(name).is_some() && !unsigned.iter().any(|u| u == name),
        )?;
        let merchant = self.bind(xml)?;
        let bytes = |field: &str| xml.get(field).map(str::as_bytes);
        let id = identity::token(
            Role::Event,
            "transaction_id",
            bytes("transaction_id"),
            &identity::DIGITS,
        )?;
        let result = identity::one_of(
            "result_code",
            bytes("result_code"),
            &["SUCCESS", "FAIL"],
            "SUCCESS or FAIL",
        )?;
        // A withholding (papay) debit result carries `trade_state` besides:
        // `result_code` SUCCESS only says WeChat took the request, the state
        // says whether the money moved (SUCCESS, or ACCEPT, PAY_FAIL, ...).
        // It is part of the event, so a debit's later state is not answered
        // as a duplicate of its first. A blank one outside the signature is
        // someone else's addition, as if absent.
        let state = identity::optional_token(
            Role::Event,
            "trade_state",
            bytes("trade_state").filter(|_| !unsigned.iter().any(|u| u == "trade_state")),
            &identity::STATE,
        )?;
        let time_end = bytes("time_end").ok_or(VerifyError::MissingField("time_end"))?;
        let signed_at = identity::beijing_time("time_end", time_end, TimeFormat::Compact)?;
        // The Java signer trims: a padded order number or amount verifies,
        // and the shop would read a value the signature never saw.
        if let Some(field) = PINNED
            .unfoldable
            .iter()
            .chain(PINNED.whole)
            .filter(|f| !unsigned.iter().any(|u| u == *f))
            .find(|f| xml.get(f).is_some_and(|v| java_trim(v).len() != v.len()))
        {
            return Err(VerifyError::Ambiguous {
                field: (*field).to_owned(),
                holds: "surrounding whitespace, which the signed (trimmed) string does not fix"
                    .to_owned(),
            });
        }
        Ok(Verified::new(
            ProviderKind::WechatV2,
            merchant,
            match state {
                Some(state) => identity::event_id(&[id, result, state]),
                None => identity::event_id(&[id, result]),
            },
            signed_at,
            Fields::Xml {
                xml: xml.without(&unsigned),
                refund: None,
            },
        )
        .with_unsigned_elements(unsigned.iter().filter_map(|k| xml.span(k)).collect()))
    }

    fn verify_refund(
        &self,
        xml: &XmlMap,
        req_info: &str,
        merchant: String,
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
        let bytes = |field: &str| refund.get(field).map(str::as_bytes);
        let refund_id = identity::token(
            Role::Event,
            "refund_id",
            bytes("refund_id"),
            &identity::DIGITS,
        )?;
        let status = identity::one_of(
            "refund_status",
            bytes("refund_status"),
            &["SUCCESS", "CHANGE", "REFUNDCLOSE"],
            "SUCCESS, CHANGE or REFUNDCLOSE",
        )?;
        let event_id = identity::event_id(&[refund_id, status]);
        // Only a refund that succeeded has a time, and it always has one; one
        // that did not is taken as sent now and relies on the replay store
        // alone. A success without its time is refused: `req_info` is
        // AES-ECB with no integrity, so the blocks holding `success_time`
        // can be cut from a genuine old refund, which would then pass as
        // sent now.
        let signed_at = match bytes("success_time").filter(|s| !s.is_empty()) {
            Some(t) => identity::beijing_time("success_time", t, TimeFormat::Dashed)?,
            None if status == "SUCCESS" => return Err(VerifyError::MissingField("success_time")),
            None => now,
        };
        // Nothing authenticates the outer XML: the shop gets only the
        // elements a refund notification carries (`REFUND_OUTER`), never a
        // payment's fields (`sign`, `result_code`, `total_fee`, ...) added
        // around a refund's `req_info`.
        let foreign: Vec<String> = xml
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !REFUND_OUTER.contains(k))
            .map(str::to_owned)
            .collect();
        Ok(Verified::new(
            ProviderKind::WechatV2,
            merchant,
            event_id,
            signed_at,
            Fields::Xml {
                xml: xml.without(&foreign),
                refund: Some(refund),
            },
        )
        .with_decrypted(plain)
        .with_unsigned_elements(foreign.iter().filter_map(|k| xml.span(k)).collect()))
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

/// The fields (but `sign`) whose value is blank by `blank`: outside the
/// signature.
fn blank_fields(xml: &XmlMap, blank: impl Fn(&str) -> bool) -> Vec<String> {
    xml.iter()
        .filter(|(k, v)| *k != "sign" && blank(v))
        .map(|(k, _)| k.to_owned())
        .collect()
}

/// `java.lang.String.trim`: strips code points up to U+0020 at both ends.
/// Every code point it strips is one ASCII byte, so it is done on bytes,
/// without decoding the characters around them.
fn java_trim(s: &str) -> &str {
    let kept = |b: &u8| *b > b' ';
    let bytes = s.as_bytes();
    let Some(start) = bytes.iter().position(kept) else {
        return "";
    };
    let end = bytes.iter().rposition(kept).map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
}

/// The upper-case hex signature of `fields` (sorted by name; `sign` is
/// skipped). `java` selects the Java SDK's trimming (see the module doc).
pub fn signature<'a>(
    fields: impl Iterator<Item = (&'a str, &'a str)>,
    key: &[u8],
    algo: SignAlgo,
    java: bool,
) -> String {
    let hmac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    signature_with(fields, key, &hmac_key, algo, java)
        .as_str()
        .to_owned()
}

/// [`signature`] with the HMAC-SHA256 key prepared from `key` beforehand.
fn signature_with<'a>(
    fields: impl Iterator<Item = (&'a str, &'a str)>,
    key: &[u8],
    hmac_key: &aws_lc_rs::hmac::Key,
    algo: SignAlgo,
    java: bool,
) -> UpperHex {
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
        SignAlgo::Md5 => upper_hex(&md5::Md5::digest(&content)),
        SignAlgo::HmacSha256 => upper_hex(aws_lc_rs::hmac::sign(hmac_key, &content).as_ref()),
    };
    wipe(&mut content);
    digest
}

/// Zeroes the bytes written to `content` (the key among them). Its spare
/// capacity never held any (a `Vec` that grows copies only its length),
/// and `Vec`'s own `zeroize` wiped all 1,024 reserved bytes too, one
/// volatile byte at a time: about 670 instructions a notification more.
fn wipe(content: &mut Vec<u8>) {
    zeroize::Zeroize::zeroize(content.as_mut_slice());
    content.clear();
}

/// The upper-case hex of a digest of at most 32 bytes, kept inline: a
/// notification's expected signature is compared, never kept.
struct UpperHex {
    digits: [u8; 64],
    len: usize,
}

impl UpperHex {
    fn as_bytes(&self) -> &[u8] {
        self.digits.get(..self.len).unwrap_or_default()
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// Upper-case hex of a digest (at most 32 bytes; empty if longer), through
/// a table rather than a `char` iterator.
fn upper_hex(digest: &[u8]) -> UpperHex {
    let mut hex = UpperHex {
        digits: [0u8; 64],
        len: 0,
    };
    let Some(out) = hex.digits.get_mut(..2 * digest.len()) else {
        return hex;
    };
    if hex::encode_to_slice(digest, out).is_err() {
        return hex;
    }
    out.make_ascii_uppercase();
    hex.len = out.len();
    hex
}

#[cfg(test)]
mod tests;
