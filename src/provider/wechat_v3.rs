//! `wechat_v3`: WeChat Pay API v3 notifications (JSON), SHA256withRSA over
//! the `Wechatpay-*` headers and the raw body, with an AEAD_AES_256_GCM
//! encrypted `resource`.
//!
//! Verified as the official SDKs do (wechatpay-go `validators` +
//! `notify.Handler`, wechatpay-java `NotificationParser` + `AbstractVerifier`,
//! wechatpay-php's README recipe):
//! 1. `Wechatpay-Signature`, `Wechatpay-Serial`, `Wechatpay-Timestamp` and
//!    `Wechatpay-Nonce` must be present; `Wechatpay-Signature-Type` is
//!    handled as wechatpay-java's `RequestParam` and `NotificationParser`
//!    do: absent or empty means `WECHATPAY2-SHA256-RSA2048`, the one type
//!    callgate knows; anything else (the SM2 variant included) is refused.
//!    (wechatpay-go ignores the header; neither SDK requires it, so callgate
//!    does not either: requiring it would refuse what they accept.)
//! 2. The key is chosen by `Wechatpay-Serial`: a public-key entry whose id
//!    (`PUB_KEY_ID_...`) equals it exactly, as wechatpay-go's combined
//!    verifier and wechatpay-java compare it; otherwise a certificate entry
//!    whose serial equals it as a hexadecimal number (wechatpay-java's
//!    `new BigInteger(serial, 16)` lookup: case and leading zeros do not
//!    matter). An unknown serial is refused, never tried against other keys.
//!    Several entries may be configured at once, so platform certificates
//!    can rotate (WeChat signs with the new one from five days before the
//!    old one expires) and the move from certificates to the WeChat Pay
//!    public key can happen without downtime.
//! 3. A certificate used outside its validity is refused. The SDKs do not
//!    check this at verification (they rely on the certificate download
//!    refreshing the set); callgate keeps static files, so it does. At load,
//!    an entry that has expired is skipped with a warning while another
//!    entry is still valid (it stays in
//!    `callgate_key_expiry_timestamp_seconds`, so the alert fires); when
//!    every entry has expired the route does not load (`callgate check`
//!    fails, see `expiry`). One expiring within 30 days is a warning.
//! 4. The signature (standard Base64; WeChat's deliberate probes
//!    `WECHATPAY/SIGNTEST/...` simply fail here) is checked over
//!    `timestamp\nnonce\nbody\n` with the body's raw bytes, never a
//!    re-serialisation.
//! 5. The body's `resource_type`, when present, must be `encrypt-resource`
//!    (the only kind WeChat Pay documents; the SDKs do not look at it, and
//!    callgate refuses a kind it does not know rather than guess). The
//!    `resource.algorithm` must be `AEAD_AES_256_GCM` (the SDKs pick their
//!    cipher by it and have no other); the ciphertext (Base64 of ciphertext
//!    and 16-byte tag) is opened with the 32-byte APIv3 key, the 12-byte
//!    `nonce` and `associated_data` (absent means empty). A ciphertext that
//!    does not authenticate is refused like a bad signature.
//! 6. Merchant: the decrypted resource's `mchid` (or, for a service
//!    provider, `sp_mchid`) must be `keys.mch_id`. A service provider's
//!    notification for a sub-merchant (`sub_mchid`) must name
//!    `keys.sub_mch_id`, unless the route says
//!    `accept_any_sub_merchant = true` (which `callgate check` warns about).
//!    Combined payments (`combine_mchid`, 合单支付) are refused with their own
//!    reason (`combined_payment_unsupported`): their resource is a list of
//!    sub-orders, each of its own merchant, that callgate does not map.
//!
//! Freshness and replay: the signed time is `Wechatpay-Timestamp`, Unix
//! seconds without sign or leading zero (one that is signed but blank or
//! otherwise is 400 `bad_time`, as every provider's time field; absent, the
//! signature cannot be checked: 401), checked
//! against the route's window in both directions by `replay::check_fresh`
//! (the SDKs allow five minutes), and `Wechatpay-Nonce` is returned in
//! [`Verified::nonce`] so the pipeline can refuse a nonce seen within the
//! window. Event id: the body's `id`, 1 to 64 letters, digits, `-` and `_`.
//! Merchant (replay key): `mchid`, or `sp_mchid/sub_mchid`.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use base64::Engine as _;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;
use toml::de::DeValue;

use super::identity::{self, Role};
use super::{
    Fields, ProviderKind, RsaDigest, RsaKey, Verified, VerifyError, bind_sub_merchant,
    expect_merchant,
};
use crate::body::JsonBody;
use crate::expiry::{self, KeyCert, WhenExpired};
use crate::load::{FileCtx, RuleError};
use crate::secret::Secret;
use crate::secret::shown;

/// `[route.keys]` for `wechat_v3`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// The merchant id (商户号); the decrypted resource must carry it.
    /// Required, like the next two (options so that one wrong value does
    /// not hide the others' problems: `FileCtx::required`).
    mch_id: Option<Spanned<String>>,
    /// File holding the 32-byte APIv3 key (商户平台 → API安全 → APIv3密钥).
    api_v3_key_file: Option<Spanned<String>>,
    /// WeChat Pay's verification keys, any mix of certificate and
    /// public-key entries.
    platform_keys: Option<Spanned<Vec<PlatformKeyFile>>>,
    /// Service provider mode: the sub-merchant (`sub_mchid`) notifications
    /// must be for.
    sub_mch_id: Option<Spanned<String>>,
    /// Service provider mode: accept notifications for any sub-merchant.
    #[serde(default)]
    accept_any_sub_merchant: bool,
}

/// One `platform_keys` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlatformKeyFile {
    /// The certificate serial (hex, as WeChat sends it in
    /// `Wechatpay-Serial`) or the public key id `PUB_KEY_ID_...`.
    serial: Spanned<String>,
    /// WeChat Pay public key (PEM `PUBLIC KEY`), for a `PUB_KEY_ID_` serial.
    public_key: Option<Spanned<String>>,
    /// WeChat Pay platform certificate (PEM), for a certificate serial.
    certificate: Option<Spanned<String>>,
}

/// Compiled keys of a `wechat_v3` route.
pub struct Keys {
    mch_id: Box<str>,
    aead: LessSafeKey,
    platform: Vec<PlatformKey>,
    sub_mch_id: Option<Box<str>>,
    any_sub_merchant: bool,
    /// `mch_id`, or `mch_id/sub_mch_id` when bound to a sub-merchant.
    merchant: Box<str>,
    /// Certificate entries skipped at load because they expired, as
    /// (`platform_keys:<serial>`, notAfter), for the expiry gauge.
    skipped: Vec<(String, i64)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("mch_id", &self.mch_id)
            .field("api_v3_key", &"[redacted]")
            .field("platform", &self.platform)
            .field("sub_mch_id", &self.sub_mch_id)
            .finish()
    }
}

/// A verification key and the serial that selects it.
#[derive(Debug)]
pub struct PlatformKey {
    serial: Serial,
    key: RsaKey,
    /// Certificate validity (Unix seconds, inclusive); `None` for a bare
    /// public key.
    validity: Option<(i64, i64)>,
}

/// How a `Wechatpay-Serial` names a key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Serial {
    /// `PUB_KEY_ID_...`, compared exactly.
    PublicKeyId(String),
    /// A certificate serial: upper-case hex without leading zeros.
    Certificate(String),
}

/// The only signature scheme callgate accepts.
const SIGNATURE_TYPE: &str = "WECHATPAY2-SHA256-RSA2048";
const PUBLIC_KEY_ID_PREFIX: &str = "PUB_KEY_ID_";

impl Keys {
    /// The merchant these keys are for: `mch_id`, or `mch_id/sub_mch_id`
    /// when bound to a sub-merchant (inside the encrypted resource, so
    /// notifications are matched by serial first).
    pub fn merchant_id(&self) -> &str {
        &self.merchant
    }

    /// The merchant number, `mch_id`.
    pub fn mch_id(&self) -> &str {
        &self.mch_id
    }

    /// The sub-merchant these keys are bound to (`keys.sub_mch_id`), if any.
    pub fn sub_mch_id(&self) -> Option<&str> {
        self.sub_mch_id.as_deref()
    }

    /// Whether one of this merchant's platform keys has `serial`.
    pub fn knows_serial(&self, serial: &str) -> bool {
        self.key_for(serial).is_ok()
    }

    pub(super) fn compile(value: Spanned<DeValue<'_>>, ctx: &mut FileCtx<'_>) -> Option<Keys> {
        let span = value.span();
        let each = ctx.deserialize_each::<KeysFile>(value);
        let raw = each.value.as_ref()?;
        let mch_id = ctx.required(&each, span.clone(), "mch_id", raw.mch_id.as_ref());
        let key_file = ctx.required(
            &each,
            span.clone(),
            "api_v3_key_file",
            raw.api_v3_key_file.as_ref(),
        );
        let platform_keys = ctx.required(&each, span, "platform_keys", raw.platform_keys.as_ref());
        let now = crate::clock::unix_now();
        let mut ok = each.holes.is_empty();
        if let Some(mch_id) = mch_id
            && mch_id.get_ref().trim().is_empty()
        {
            ctx.error(
                mch_id.span(),
                RuleError::KeyValue {
                    field: "mch_id".to_owned(),
                    reason: "must not be empty".to_owned(),
                },
            );
            ok = false;
        }
        let aead = key_file.and_then(|file| match load_api_v3_key(&ctx.resolve(file.get_ref())) {
            Ok(k) => Some(k),
            Err(reason) => {
                ctx.error(
                    file.span(),
                    RuleError::KeyFile {
                        field: "api_v3_key_file".to_owned(),
                        file: file.get_ref().clone(),
                        reason,
                    },
                );
                None
            }
        });
        // An entry taken out (its value was wrong) may have been the one
        // still valid: the list is then not judged as a whole.
        let complete = !each.lost("platform_keys");
        let entries: &[PlatformKeyFile] = platform_keys.map_or(&[], |p| p.get_ref());
        if let Some(list) = platform_keys
            && complete
            && entries.is_empty()
        {
            ctx.error(
                list.span(),
                RuleError::KeyValue {
                    field: "platform_keys".to_owned(),
                    reason:
                        "give at least one { serial, certificate } or { serial, public_key } entry"
                            .to_owned(),
                },
            );
            ok = false;
        }
        // A rotation list: load every entry, then skip the expired ones
        // while another is still valid.
        let mut loaded: Vec<(&PlatformKeyFile, PlatformEntry)> = Vec::new();
        let written = each.left("platform_keys", entries.len());
        for (entry, at) in entries.iter().zip(&written) {
            // One of its own keys was wrong: it is not judged without it.
            if each.lost(at) {
                continue;
            }
            match load_entry(entry, ctx) {
                Some(l) => loaded.push((entry, l)),
                None => ok = false,
            }
        }
        let any_valid = !complete
            || loaded.iter().any(|(_, l)| match l {
                PlatformEntry::PublicKey(_) => true,
                PlatformEntry::Certificate { cert, .. } => {
                    expiry::lifetime(cert.validity.1, now) != expiry::Lifetime::Expired
                }
            });
        let mut platform: Vec<PlatformKey> = Vec::new();
        let mut skipped = Vec::new();
        for (entry, l) in loaded {
            let key = match l {
                PlatformEntry::PublicKey(k) => k,
                PlatformEntry::Certificate { cert, want, file } => {
                    let (not_before, not_after) = cert.validity;
                    let key_cert = KeyCert {
                        field: "platform_keys",
                        file,
                        serial: &cert.serial,
                        subject: cert.subject.clone(),
                        not_after,
                    };
                    let advice = "WeChat Pay no longer signs with it: remove this entry (keep the current platform certificate or the WeChat Pay public key listed)";
                    let usable = expiry::judge(
                        ctx,
                        entry
                            .certificate
                            .as_ref()
                            .map_or(entry.serial.span(), Spanned::span),
                        &key_cert,
                        now,
                        if any_valid {
                            WhenExpired::Skip(advice)
                        } else {
                            WhenExpired::Refuse(advice)
                        },
                        "list the next platform certificate next to this one before then (WeChat Pay signs with the new one from about five days before the old one expires)",
                    );
                    if !usable {
                        skipped.push((key_cert.label(), not_after));
                        if !any_valid {
                            ok = false;
                        }
                        continue;
                    }
                    // Listed ahead of a rotation, as it should be: said, so
                    // that a 401 `bad_signature` before then is not a
                    // surprise.
                    if now < not_before {
                        ctx.warn(
                            entry
                                .certificate
                                .as_ref()
                                .map_or(entry.serial.span(), Spanned::span),
                            format!(
                                "platform_keys: certificate `{}` is not valid until {}: notifications signed with it are refused until then",
                                entry.serial.get_ref(),
                                crate::expiry::utc(not_before)
                            ),
                        );
                    }
                    PlatformKey {
                        serial: Serial::Certificate(want),
                        key: cert.key,
                        validity: Some((not_before, not_after)),
                    }
                }
            };
            if platform.iter().any(|p| p.serial == key.serial) {
                ctx.error(
                    entry.serial.span(),
                    RuleError::KeyValue {
                        field: "platform_keys".to_owned(),
                        reason: format!("serial `{}` is listed twice", entry.serial.get_ref()),
                    },
                );
                ok = false;
            } else {
                platform.push(key);
            }
        }
        let sub_mch_id = match &raw.sub_mch_id {
            Some(s) if !is_mch_id(s.get_ref()) => {
                ctx.error(
                    s.span(),
                    RuleError::KeyValue {
                        field: "sub_mch_id".to_owned(),
                        reason: format!("`{}` is not a merchant number (digits)", s.get_ref()),
                    },
                );
                ok = false;
                None
            }
            Some(s) => Some(s.get_ref().as_str().into()),
            None => None,
        };
        if let Some(mch_id) = mch_id
            && raw.accept_any_sub_merchant
        {
            ctx.warn(
                mch_id.span(),
                format_args!(
                    "wechat_v3 merchant `{}` has accept_any_sub_merchant = true: notifications for ANY of its sub-merchants reach this shop; bind one with keys.sub_mch_id instead",
                    mch_id.get_ref()
                ),
            );
        }
        let (Some(mch_id), Some(_), true) = (mch_id, platform_keys, ok) else {
            return None;
        };
        let mch_id: Box<str> = mch_id.get_ref().as_str().into();
        let merchant = match &sub_mch_id {
            Some(sub) => format!("{mch_id}/{sub}").into_boxed_str(),
            None => mch_id.clone(),
        };
        Some(Keys {
            mch_id,
            merchant,
            aead: aead?,
            platform,
            sub_mch_id,
            any_sub_merchant: raw.accept_any_sub_merchant,
            skipped,
        })
    }

    /// Keys from their parts (tests and benches): the APIv3 key and
    /// `(serial, key, validity)` entries.
    pub fn new(
        mch_id: &str,
        api_v3_key: &[u8],
        platform: Vec<PlatformKey>,
    ) -> Result<Keys, String> {
        Ok(Keys {
            mch_id: mch_id.into(),
            aead: aead_key(api_v3_key)?,
            platform,
            sub_mch_id: None,
            any_sub_merchant: false,
            merchant: mch_id.into(),
            skipped: Vec::new(),
        })
    }

    /// Verifies a notification at time `now` (Unix seconds; used for the
    /// certificate's validity only: freshness is the pipeline's).
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &JsonBody,
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let signed = self.check_signature(headers, body.raw(), now)?;
        let value = body.value();
        let id = identity::token(
            Role::Event,
            "id",
            value.get("id").and_then(Value::as_str).map(str::as_bytes),
            &identity::V3_ID,
        )?;
        match value.get("resource_type") {
            None => {}
            Some(Value::String(t)) if t == "encrypt-resource" => {}
            Some(other) => {
                return Err(VerifyError::BadValue {
                    field: "resource_type",
                    value: shown(other.to_string().as_bytes()),
                });
            }
        }
        let resource = value
            .get("resource")
            .filter(|r| r.is_object())
            .ok_or(VerifyError::MissingField("resource"))?;
        let plain = self.decrypt_resource(resource)?;
        // As strict as the body: a repeated key would leave the shop and
        // callgate free to read different values.
        let decrypted: Value = crate::body::strict_value(&plain)
            .ok()
            .filter(Value::is_object)
            .ok_or(VerifyError::Content(
                "the decrypted resource is not a JSON object with unique keys",
            ))?;
        let merchant = self.bind(&decrypted)?;
        Ok(Verified::new(
            ProviderKind::WechatV3,
            merchant,
            id.to_owned(),
            signed.timestamp,
            Fields::Json {
                body: value.clone(),
                resource: decrypted,
            },
        )
        .with_nonce(signed.nonce)
        .with_decrypted(plain))
    }

    /// Step 6 of the module doc: whose notification the decrypted resource
    /// is; returns the merchant part of the replay key.
    fn bind(&self, resource: &Value) -> Result<String, VerifyError> {
        let text = |k: &str| resource.get(k).and_then(Value::as_str).map(str::as_bytes);
        if resource.get("combine_mchid").is_some() {
            return Err(VerifyError::CombinedPayment);
        }
        let (field, mch) = match text("sp_mchid") {
            Some(sp) => ("sp_mchid", sp),
            None => (
                "mchid",
                text("mchid").ok_or(VerifyError::MissingField("mchid"))?,
            ),
        };
        expect_merchant(field, Some(mch), &self.mch_id)?;
        let sub = identity::optional_token(
            Role::Merchant,
            "sub_mchid",
            text("sub_mchid"),
            &identity::DIGITS,
        )?;
        bind_sub_merchant(
            "sub_mchid",
            &self.mch_id,
            sub,
            self.sub_mch_id.as_deref(),
            self.any_sub_merchant,
        )
    }

    /// Steps 1 to 4 of the module doc: the header signature over the raw
    /// body.
    fn check_signature(
        &self,
        headers: &HeaderMap,
        raw: &[u8],
        now: i64,
    ) -> Result<Signed, VerifyError> {
        // wechatpay-java `RequestParam`: absent or empty is the RSA type.
        if let Some(t) = headers.get("wechatpay-signature-type")
            && !t.is_empty()
            && t.as_bytes() != SIGNATURE_TYPE.as_bytes()
        {
            return Err(VerifyError::UnsupportedSignType(shown(t.as_bytes())));
        }
        let signature = header(headers, "wechatpay-signature")?;
        if signature.starts_with("WECHATPAY/SIGNTEST/") {
            return Err(VerifyError::ProbeSignature);
        }
        let serial = header(headers, "wechatpay-serial")?;
        // The signed time: its bytes go into the message as they are; a
        // signed one that is blank or not Unix seconds is refused after the
        // signature (400 `bad_time`, as every provider's time field).
        let timestamp = headers
            .get("wechatpay-timestamp")
            .ok_or(VerifyError::MissingHeader("wechatpay-timestamp"))?
            .as_bytes();
        let nonce = header(headers, "wechatpay-nonce")?;

        let key = self.key_for(serial)?;
        if let Some((not_before, not_after)) = key.validity
            && (now < not_before || now > not_after)
        {
            return Err(VerifyError::CertificateNotValid {
                serial: shown(serial.as_bytes()),
            });
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(signature)
            .map_err(|_| VerifyError::SignatureEncoding)?;
        let mut message = Vec::with_capacity(timestamp.len() + nonce.len() + raw.len() + 3);
        message.extend_from_slice(timestamp);
        message.push(b'\n');
        message.extend_from_slice(nonce.as_bytes());
        message.push(b'\n');
        message.extend_from_slice(raw);
        message.push(b'\n');
        if !key.key.verify(RsaDigest::Sha256, &message, &sig) {
            return Err(VerifyError::SignatureMismatch);
        }
        Ok(Signed {
            timestamp: parse_timestamp(timestamp)?,
            nonce: nonce.to_owned(),
        })
    }

    /// Every certificate entry of `platform_keys`, as
    /// (`platform_keys:<serial>`, notAfter); public-key entries do not
    /// expire.
    pub fn certificates(&self) -> Vec<(String, i64)> {
        self.platform
            .iter()
            .filter_map(|k| match (&k.serial, k.validity) {
                (Serial::Certificate(s), Some((_, not_after))) => {
                    Some((format!("platform_keys:{s}"), not_after))
                }
                _ => None,
            })
            .chain(self.skipped.iter().cloned())
            .collect()
    }

    fn key_for(&self, serial: &str) -> Result<&PlatformKey, VerifyError> {
        let wanted = if serial.starts_with(PUBLIC_KEY_ID_PREFIX) {
            Some(Serial::PublicKeyId(serial.to_owned()))
        } else {
            serial_hex(serial).map(Serial::Certificate)
        };
        wanted
            .and_then(|w| self.platform.iter().find(|k| k.serial == w))
            .ok_or_else(|| VerifyError::KeySerialUnknown {
                serial: shown(serial.as_bytes()),
            })
    }

    /// Step 5: opens `resource` with the APIv3 key.
    pub(crate) fn decrypt_resource(&self, resource: &Value) -> Result<Vec<u8>, VerifyError> {
        let text = |k: &'static str| resource.get(k).and_then(Value::as_str);
        match text("algorithm") {
            Some("AEAD_AES_256_GCM") => {}
            other => {
                return Err(VerifyError::UnsupportedAlgorithm(shown(
                    other.unwrap_or_default().as_bytes(),
                )));
            }
        }
        let ciphertext = text("ciphertext").ok_or(VerifyError::MissingField("ciphertext"))?;
        let nonce = text("nonce").ok_or(VerifyError::MissingField("nonce"))?;
        let aad = text("associated_data").unwrap_or_default();
        let mut buf = base64::engine::general_purpose::STANDARD
            .decode(ciphertext)
            .map_err(|_| VerifyError::Decrypt("resource ciphertext is not Base64"))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce.as_bytes())
            .map_err(|_| VerifyError::Decrypt("resource nonce is not 12 bytes"))?;
        let len = self
            .aead
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| VerifyError::Decrypt("resource does not authenticate with the APIv3 key"))?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// What the header signature vouches for.
struct Signed {
    timestamp: i64,
    nonce: String,
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, VerifyError> {
    let v = headers
        .get(name)
        .ok_or(VerifyError::MissingHeader(name))?
        .to_str()
        .map_err(|_| VerifyError::BadHeader {
            name,
            reason: "not ASCII",
        })?;
    if v.is_empty() {
        return Err(VerifyError::MissingHeader(name));
    }
    Ok(v)
}

/// Unix seconds in decimal, without sign or leading zeros (so every SDK
/// builds the same message from it), as WeChat sends them.
fn parse_timestamp(t: &[u8]) -> Result<i64, VerifyError> {
    let bad = || VerifyError::BadTime {
        field: "Wechatpay-Timestamp",
        value: shown(t),
        format: "Unix seconds",
    };
    if t.is_empty()
        || t.len() > 12
        || !t.iter().all(u8::is_ascii_digit)
        || (t.len() > 1 && t[0] == b'0')
    {
        return Err(bad());
    }
    t.iter()
        .try_fold(0i64, |n, d| {
            n.checked_mul(10)?.checked_add(i64::from(d - b'0'))
        })
        .ok_or_else(bad)
}

/// A certificate serial as upper-case hex without leading zeros; `None`
/// when it is not hexadecimal.
fn serial_hex(s: &str) -> Option<String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = s.trim_start_matches('0');
    Some(if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_ascii_uppercase()
    })
}

fn aead_key(key: &[u8]) -> Result<LessSafeKey, String> {
    if key.len() != 32 {
        return Err(format!(
            "the APIv3 key must be exactly 32 bytes, this file holds {} (one trailing newline is ignored)",
            key.len()
        ));
    }
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| "not a usable AES-256 key".to_owned())
}

fn load_api_v3_key(path: &Path) -> Result<LessSafeKey, String> {
    let secret = Secret::from_file(path).map_err(|e| e.to_string())?;
    aead_key(secret.expose())
}

/// A `platform_keys` entry once its file is read, before its lifetime is
/// judged.
enum PlatformEntry<'a> {
    PublicKey(PlatformKey),
    Certificate {
        cert: LoadedCertificate,
        /// The serial as the entry names it (normalised).
        want: String,
        file: &'a str,
    },
}

/// A merchant number: digits.
fn is_mch_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_digit())
}

fn load_entry<'a>(entry: &'a PlatformKeyFile, ctx: &mut FileCtx<'_>) -> Option<PlatformEntry<'a>> {
    let serial = entry.serial.get_ref().trim();
    let err = |ctx: &mut FileCtx<'_>, reason: String| {
        ctx.error(
            entry.serial.span(),
            RuleError::KeyValue {
                field: "platform_keys".to_owned(),
                reason,
            },
        );
    };
    match (&entry.public_key, &entry.certificate) {
        (Some(pk), None) => {
            if !serial.starts_with(PUBLIC_KEY_ID_PREFIX)
                || serial.len() == PUBLIC_KEY_ID_PREFIX.len()
            {
                err(
                    ctx,
                    format!(
                        "serial `{serial}` of a public_key entry must be the public key id `PUB_KEY_ID_...` shown next to the key; a platform certificate goes in `certificate`"
                    ),
                );
                return None;
            }
            let key = super::load_rsa_key(ctx, "platform_keys.public_key", pk)?;
            Some(PlatformEntry::PublicKey(PlatformKey {
                serial: Serial::PublicKeyId(serial.to_owned()),
                key,
                validity: None,
            }))
        }
        (None, Some(cert)) => {
            let Some(want) = serial_hex(serial) else {
                err(
                    ctx,
                    format!(
                        "serial `{serial}` of a certificate entry must be the certificate's serial in hex"
                    ),
                );
                return None;
            };
            let file = cert.get_ref();
            let loaded = match load_certificate(&ctx.resolve(file)) {
                Ok(c) => c,
                Err(reason) => {
                    ctx.error(
                        cert.span(),
                        RuleError::KeyFile {
                            field: "platform_keys.certificate".to_owned(),
                            file: file.clone(),
                            reason,
                        },
                    );
                    return None;
                }
            };
            if loaded.serial != want {
                err(
                    ctx,
                    format!(
                        "serial `{serial}` does not match certificate `{file}`, whose serial is {}",
                        loaded.serial
                    ),
                );
                return None;
            }
            Some(PlatformEntry::Certificate {
                cert: loaded,
                want,
                file,
            })
        }
        (Some(_), Some(_)) => {
            err(
                ctx,
                format!("entry `{serial}` gives both public_key and certificate; give one"),
            );
            None
        }
        (None, None) => {
            err(
                ctx,
                format!(
                    "entry `{serial}` needs a certificate (platform certificate mode) or a public_key (WeChat Pay public key mode)"
                ),
            );
            None
        }
    }
}

/// A platform certificate's parts callgate uses.
pub struct LoadedCertificate {
    /// Upper-case hex without leading zeros.
    pub serial: String,
    pub key: RsaKey,
    /// (not before, not after), Unix seconds.
    pub validity: (i64, i64),
    /// The subject, for messages.
    pub subject: String,
}

/// Reads one PEM certificate.
pub fn load_certificate(path: &Path) -> Result<LoadedCertificate, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read: {}", crate::load::io_reason(&e)))?;
    let mut certs = CertificateDer::pem_slice_iter(&bytes);
    let der = match certs.next() {
        Some(Ok(d)) => d,
        Some(Err(e)) => return Err(crate::load::pem_reason(&e)),
        None => return Err("no -----BEGIN CERTIFICATE----- block in the file".to_owned()),
    };
    if certs.next().is_some() {
        return Err("more than one certificate; give one per platform_keys entry".to_owned());
    }
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let serial = serial_hex(&hex::encode_upper(cert.raw_serial()))
        .ok_or_else(|| "the certificate has no serial".to_owned())?;
    let key = RsaKey::from_der(cert.public_key().raw)
        .map_err(|e| format!("the certificate's key: {e}"))?;
    let validity = cert.validity();
    Ok(LoadedCertificate {
        serial,
        key,
        subject: cert.subject().to_string(),
        validity: (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        ),
    })
}

impl PlatformKey {
    /// A certificate entry (tests and benches).
    pub fn certificate(c: LoadedCertificate) -> PlatformKey {
        PlatformKey {
            serial: Serial::Certificate(c.serial),
            key: c.key,
            validity: Some(c.validity),
        }
    }

    /// A public-key entry (tests and benches).
    pub fn public_key(id: &str, key: RsaKey) -> PlatformKey {
        PlatformKey {
            serial: Serial::PublicKeyId(id.to_owned()),
            key,
            validity: None,
        }
    }
}

#[cfg(test)]
mod tests;
