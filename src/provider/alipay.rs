//! `alipay`: Alipay open-platform asynchronous notifications, RSA2
//! (SHA256withRSA) and RSA (SHA1withRSA), public-key and certificate mode.
//!
//! Verified as the official Java SDK's `AlipaySignature.rsaCheckV1` does:
//! 1. the form is decoded once (done by `body::Form`), values kept as the
//!    raw bytes of the notification's `charset`;
//! 2. `sign` and `sign_type` are removed;
//! 3. keys are sorted by byte order;
//! 4. entries whose value is empty or made only of Java whitespace
//!    (`Character.isWhitespace`) are skipped; other values are used as they
//!    are, never trimmed;
//! 5. `key=value` pairs are joined with `&`, and the signature (standard
//!    Base64) is checked over those bytes.
//!
//! The PHP `AopClient` and node SDKs keep empty values as `key=`; Alipay
//! itself is not known to send empty values, so when the Java form fails and
//! the notification did hold an empty value, the string with empties kept is
//! tried once (PROVIDERS.md §1.2).
//!
//! `sign_type` must be `RSA2` or `RSA`; anything else is refused rather than
//! guessed. Both are accepted by default, with the route's one key, as the
//! SDKs verify with whichever type they are given: a signature under the
//! other digest gives a forger nothing without Alipay's private key (the
//! DigestInfo differs, so an RSA2 signature does not verify as RSA, and
//! SHA-1 has no known second preimages), and Alipay never signs SHA-1 with
//! an RSA2 app's key. `keys.sign_types` pins a route to one of them; a
//! notification signed with the other is then refused
//! (`sign_type_not_allowed`).
//!
//! Charset: the notification's `charset` field, then the Content-Type's
//! charset, else UTF-8; when the values are not valid in that charset, the
//! other of GBK and UTF-8 (see `provider::form_encoding`). It decides only
//! which values count as blank and how `normalized` fields are decoded: the
//! signature covers the raw bytes. A fallback must rest on a signed field:
//! one the signature leaves out (`%A1%A1` is U+3000 in GBK, blank, so
//! unsigned there) cannot switch a UTF-8 notification to GBK (401
//! `charset_unsigned`), as the SDK reading the named charset would sign it
//! and refuse.
//!
//! Merchant: `app_id` must be the route's. A notification on behalf of
//! another merchant (an ISV app: `auth_app_id` differs from `app_id`) is
//! refused unless the route names that merchant's `seller_id`, or says
//! `accept_any_sub_merchant = true`. With `keys.seller_id`, the
//! notification's `seller_id` must be it.
//!
//! Identity (`provider::identity`): event id `notify_id` (letters and
//! digits), signed time `notify_time` (exactly `yyyy-MM-dd HH:mm:ss`,
//! Beijing time), merchant `app_id` (with `/auth_app_id` when it differs).
//! None of `notify_id`, `notify_time`, `app_id`, `auth_app_id`, `seller_id`,
//! nor the fields that decide what happened (`out_biz_no`, `trade_status`,
//! the amounts, `trans_currency`, `gmt_payment`, `gmt_refund`, `gmt_close`: [`PINNED`]) may
//! appear as `&name=` inside another signed value or hold `&` themselves
//! (nor may `out_trade_no` and `trade_no`), and no field name may hold `&`
//! or `=`: the signed string then fixes all of them. Without the second list, a genuine
//! partial refund (TRADE_SUCCESS with `refund_fee` and `gmt_refund`) with
//! those two folded into their neighbours verified as what reads as a
//! payment, under the refund's own `notify_id`.
//!
//! Blank values: under the Java rule a field whose value is blank is not
//! signed, so anyone can add `x=%20` to a genuine notification. Such fields
//! are dropped from what the shop receives (`Verified::original_body`, and
//! the `normalized` fields); when the notification only verifies with its
//! blanks signed, they stay.
//!
//! Certificate mode (`alipay_cert`, `alipay_root_cert`, optional `app_cert`
//! instead of `public_key`): notifications are verified exactly as above
//! with the key of Alipay's public-key certificate, as the SDK's
//! `rsaCertCheckV1` does; loading, the chain check and the SNs are in
//! [`super::alipay_cert`]. `alipay_cert_sn` is just another signed field to
//! the SDK, which never compares it with the configured certificate: a
//! notification whose signature verifies with the configured key is
//! accepted whatever SN it names. A different SN means Alipay renewed its
//! certificate on the same key, so the first such notification after each
//! load is logged as a warning, for the operator to install the new file.

use std::sync::atomic::{AtomicBool, Ordering};

use encoding_rs::Encoding;
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::alipay_cert::{self, CertFiles, CertSns};
use super::identity::{self, Role, TimeFormat};
use super::{
    Fields, ProviderKind, RsaDigest, RsaKey, Verified, VerifyError, expect_merchant, form_encoding,
    java_whitespace, sorted_join,
};
use crate::body::Form;
use crate::expiry::{self, KeyCert, WhenExpired};
use crate::load::{FileCtx, RuleError};
use crate::secret::shown;

/// `[route.keys]` for `alipay`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// The app's id on the open platform; notifications must carry it.
    /// Required (an option so that a wrong value does not hide the other
    /// keys' problems: `FileCtx::required`).
    app_id: Option<Spanned<String>>,
    /// Alipay's public key (PEM, or the bare Base64 from the console).
    public_key: Option<Spanned<String>>,
    /// Certificate mode: Alipay's public-key certificate.
    alipay_cert: Option<Spanned<String>>,
    /// Certificate mode: Alipay's root certificate chain.
    alipay_root_cert: Option<Spanned<String>>,
    /// Certificate mode: the app's certificate.
    app_cert: Option<Spanned<String>>,
    /// The signature types accepted: `RSA2`, `RSA` (default: both).
    sign_types: Option<Spanned<Vec<String>>>,
    /// The seller (`2088...`) notifications must be for.
    seller_id: Option<Spanned<String>>,
    /// Accept notifications an ISV app receives on behalf of any merchant.
    #[serde(default)]
    accept_any_sub_merchant: bool,
}

/// Compiled keys of an `alipay` route.
#[derive(Debug)]
pub struct Keys {
    app_id: Box<str>,
    key: RsaKey,
    /// Certificate mode: the SNs of the configured certificates.
    cert: Option<CertSns>,
    /// Certificate mode: every certificate on the chains, (`key` label,
    /// notAfter).
    certs: Vec<(String, i64)>,
    /// Which of `RSA2` and `RSA` are accepted.
    sign_types: SignTypes,
    seller_id: Option<Box<str>>,
    any_sub_merchant: bool,
    /// `app_id`, or `app_id/seller_id` when bound to a seller.
    merchant: Box<str>,
    /// Certificate mode: a verified notification named another
    /// `alipay_cert_sn`, and this was logged (once per load).
    sn_warned: AtomicBool,
}

/// Which of `RSA2` and `RSA` a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignTypes {
    pub rsa2: bool,
    pub rsa: bool,
}

impl SignTypes {
    /// A route that does not say: both.
    pub const BOTH: SignTypes = SignTypes {
        rsa2: true,
        rsa: true,
    };

    fn allows(self, digest: RsaDigest) -> bool {
        match digest {
            RsaDigest::Sha256 => self.rsa2,
            RsaDigest::Sha1 => self.rsa,
        }
    }

    fn text(self) -> String {
        match (self.rsa2, self.rsa) {
            (true, true) => "RSA2 and RSA",
            (true, false) => "RSA2 only",
            (false, _) => "RSA only",
        }
        .to_owned()
    }
}

/// The fields the signed string must fix exactly (see the module doc).
const PINNED: identity::Pinned = identity::Pinned {
    unfoldable: &[
        "notify_id",
        "notify_time",
        "app_id",
        "auth_app_id",
        "seller_id",
        "out_biz_no",
        "trade_status",
        "total_amount",
        "receipt_amount",
        "invoice_amount",
        "buyer_pay_amount",
        "point_amount",
        "refund_fee",
        "send_back_fee",
        "trans_currency",
        "gmt_payment",
        "gmt_refund",
        "gmt_close",
    ],
    whole: &["out_trade_no", "trade_no"],
};

impl Keys {
    /// The merchant these keys are for: `app_id`, or `app_id/seller_id`
    /// when bound to a seller.
    pub fn merchant_id(&self) -> &str {
        &self.merchant
    }

    /// The app's `app_id`.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The seller this route is bound to, when it is.
    pub fn seller_id(&self) -> Option<&str> {
        self.seller_id.as_deref()
    }

    pub(super) fn compile(value: Spanned<DeValue<'_>>, ctx: &mut FileCtx<'_>) -> Option<Keys> {
        let span = value.span();
        let each = ctx.deserialize_each::<KeysFile>(value);
        let raw = each.value.as_ref()?;
        let app_id = ctx.required(&each, span.clone(), "app_id", raw.app_id.as_ref());
        let mut ok = each.holes.is_empty();
        if let Some(app_id) = app_id
            && app_id.get_ref().trim().is_empty()
        {
            ok = false;
            ctx.error(
                app_id.span(),
                RuleError::KeyValue {
                    field: "app_id".to_owned(),
                    reason: "must not be empty".to_owned(),
                },
            );
        }
        let cert_mode =
            raw.alipay_cert.is_some() || raw.alipay_root_cert.is_some() || raw.app_cert.is_some();
        // Which mode the keys are in is not judged from a key whose value
        // was wrong: only the files that are there are loaded.
        let (key, cert) = match (&raw.public_key, cert_mode) {
            (Some(pk), false) => (super::load_rsa_key(ctx, "public_key", pk), None),
            (Some(pk), true) => {
                ctx.error(
                    pk.span(),
                    RuleError::KeyValue {
                        field: "public_key".to_owned(),
                        reason: "give either public_key or the certificate-mode keys (alipay_cert, alipay_root_cert, app_cert), not both".to_owned(),
                    },
                );
                (None, None)
            }
            (None, true) if each.lost("alipay_cert") || each.lost("alipay_root_cert") => {
                (None, None)
            }
            (None, true) => match load_cert_mode(raw, span.clone(), ctx) {
                Some((key, sns, certs)) => (Some(key), Some((sns, certs))),
                None => (None, None),
            },
            (None, false)
                if ["public_key", "alipay_cert", "alipay_root_cert", "app_cert"]
                    .iter()
                    .any(|k| each.lost(k)) =>
            {
                (None, None)
            }
            (None, false) => {
                ctx.error(
                    span.clone(),
                    RuleError::KeyValue {
                        field: "public_key".to_owned(),
                        reason: "missing: give Alipay's public key file, or alipay_cert and alipay_root_cert (certificate mode)".to_owned(),
                    },
                );
                (None, None)
            }
        };
        let (cert, certs) = match cert {
            Some((sns, certs)) => (Some(sns), certs),
            None => (None, Vec::new()),
        };
        let sign_types = match (&raw.sign_types, &key) {
            // A list an entry was taken out of is not judged as a whole.
            (Some(_), _) if each.lost("sign_types") => None,
            (Some(list), _) => compile_sign_types(list, ctx),
            (None, Some(_)) => Some(SignTypes::BOTH),
            (None, None) => None,
        };
        let seller_id = match &raw.seller_id {
            Some(s) if !is_user_id(s.get_ref()) => {
                ok = false;
                ctx.error(
                    s.span(),
                    RuleError::KeyValue {
                        field: "seller_id".to_owned(),
                        reason: format!(
                            "`{}` is not an Alipay user id (2088 and 12 more digits)",
                            s.get_ref()
                        ),
                    },
                );
                None
            }
            Some(s) => Some(s.get_ref().as_str().into()),
            None => None,
        };
        if let Some(app_id) = app_id
            && raw.accept_any_sub_merchant
        {
            ctx.warn(
                span,
                format_args!(
                    "alipay app `{}` has accept_any_sub_merchant = true: what it receives on behalf of ANY merchant (auth_app_id) reaches this shop; bind each merchant with keys.seller_id instead",
                    app_id.get_ref()
                ),
            );
        }
        let (key, sign_types, app_id) = (key?, sign_types?, app_id?);
        if !ok {
            return None;
        }
        let app_id: Box<str> = app_id.get_ref().as_str().into();
        let merchant = match &seller_id {
            Some(s) => format!("{app_id}/{s}").into_boxed_str(),
            None => app_id.clone(),
        };
        Some(Keys {
            app_id,
            key,
            cert,
            certs,
            sign_types,
            seller_id,
            any_sub_merchant: raw.accept_any_sub_merchant,
            merchant,
            sn_warned: AtomicBool::new(false),
        })
    }

    /// Certificate mode: every certificate on the Alipay and app certificate
    /// chains, as (`<field>:<serial>`, notAfter). Empty in public-key mode.
    pub fn certificates(&self) -> Vec<(String, i64)> {
        self.certs.clone()
    }

    /// The certificate SNs, in certificate mode.
    pub fn cert_sns(&self) -> Option<&CertSns> {
        self.cert.as_ref()
    }

    /// Keys built directly from a public-key file, for benches and fuzzing
    /// (both signature types accepted).
    pub fn for_bench(app_id: &str, public_key: &std::path::Path) -> Result<Keys, String> {
        Ok(Keys::with_key(app_id, RsaKey::from_file(public_key)?, None))
    }

    fn with_key(app_id: &str, key: RsaKey, cert: Option<CertSns>) -> Keys {
        Keys {
            app_id: app_id.into(),
            sign_types: SignTypes::BOTH,
            key,
            cert,
            certs: Vec::new(),
            seller_id: None,
            any_sub_merchant: false,
            merchant: app_id.into(),
            sn_warned: AtomicBool::new(false),
        }
    }

    /// Verifies a decoded notification form. `content_type` is the charset
    /// the request's Content-Type names, if any.
    pub fn verify(
        &self,
        form: &Form,
        content_type: Option<&'static Encoding>,
    ) -> Result<Verified, VerifyError> {
        let sign = form
            .get("sign")
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        let digest = match form.get("sign_type") {
            Some(b"RSA2") => RsaDigest::Sha256,
            Some(b"RSA") => RsaDigest::Sha1,
            Some(other) => return Err(VerifyError::UnsupportedSignType(shown(other))),
            None => return Err(VerifyError::UnsupportedSignType(String::new())),
        };
        if !self.sign_types.allows(digest) {
            return Err(VerifyError::SignTypeNotAllowed {
                got: shown(form.get("sign_type").unwrap_or_default()),
                allowed: self.sign_types.text(),
            });
        }
        let charset = form_encoding(form, &["charset"], content_type, None)?;
        let encoding = charset.encoding;
        expect_merchant("app_id", form.get("app_id"), &self.app_id)?;
        let signature = super::signature_base64(sign)?;

        let (content, blank) = canonical(form, encoding, false);
        let unsigned = if self.key.verify(digest, &content, &signature) {
            blank
        } else if !blank.is_empty()
            && self
                .key
                .verify(digest, &canonical(form, encoding, true).0, &signature)
        {
            // Signed with its blanks: they are covered, and stay.
            Vec::new()
        } else {
            return Err(VerifyError::SignatureMismatch);
        };
        charset.covered(&["sign", "sign_type"], &unsigned)?;
        if let Some(sns) = &self.cert
            && let Some(got) = form.get("alipay_cert_sn").filter(|v| !v.is_empty())
            && got != sns.alipay_cert_sn.as_bytes()
            && !self.sn_warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                app_id = &*self.app_id,
                alipay_cert_sn = %shown(got),
                configured = &*sns.alipay_cert_sn,
                "a notification that verifies names another alipay_cert_sn than the configured \
                 alipay_cert: Alipay has renewed its certificate; download the current \
                 alipayCertPublicKey_RSA2.crt (logged once per load; notifications keep verifying \
                 with the configured key)"
            );
        }

        identity::check_unambiguous(
            form.iter()
                .filter(|(k, _)| !unsigned.iter().any(|u| u == k)),
            &PINNED,
            |name| form.get(name).is_some() && !unsigned.iter().any(|u| u == name),
        )?;
        let merchant = self.bind(form)?;
        notification(ProviderKind::Alipay, form, encoding, merchant, unsigned)
    }

    /// The merchant checks that follow the signature (module doc); returns
    /// the merchant part of the replay key.
    fn bind(&self, form: &Form) -> Result<String, VerifyError> {
        let auth = identity::optional_token(
            Role::Merchant,
            "auth_app_id",
            form.get("auth_app_id"),
            &identity::DIGITS,
        )?;
        // `seller_id` is read only where the route binds it: elsewhere it is
        // not part of the replay key, and its shape is the shop's business.
        let seller = match self.seller_id {
            Some(_) => identity::optional_token(
                Role::Merchant,
                "seller_id",
                form.get("seller_id"),
                &identity::ALIPAY_USER_ID,
            )?,
            None => None,
        };
        let on_behalf = auth.filter(|a| *a != &*self.app_id);
        match (&self.seller_id, seller) {
            (Some(want), Some(got)) if got == &**want => {}
            (Some(_), Some(got)) => {
                return Err(VerifyError::MerchantMismatch {
                    field: "seller_id",
                    got: got.to_owned(),
                });
            }
            (Some(_), None) => return Err(VerifyError::MissingField("seller_id")),
            (None, _) => {
                if let Some(other) = on_behalf
                    && !self.any_sub_merchant
                {
                    return Err(VerifyError::MerchantUnbound {
                        field: "auth_app_id",
                        got: other.to_owned(),
                        fix: "bind the merchant with keys.seller_id (one [[route.merchant]] table each), or set keys.accept_any_sub_merchant = true",
                    });
                }
            }
        }
        Ok(match on_behalf {
            Some(other) => format!("{}/{other}", self.app_id),
            None => self.app_id.to_string(),
        })
    }
}

/// `keys.sign_types`, compiled; `None` (with the problem recorded) when it
/// names something else or nothing.
fn compile_sign_types(list: &Spanned<Vec<String>>, ctx: &mut FileCtx<'_>) -> Option<SignTypes> {
    let mut types = SignTypes {
        rsa2: false,
        rsa: false,
    };
    // Every name that is not a type, not only the last.
    let mut problems = Vec::new();
    for t in list.get_ref() {
        match t.as_str() {
            "RSA2" => types.rsa2 = true,
            "RSA" => types.rsa = true,
            other => problems.push(format!("`{other}` is not \"RSA2\" or \"RSA\"")),
        }
    }
    if problems.is_empty() && !types.rsa2 && !types.rsa {
        problems.push("name at least one of \"RSA2\" and \"RSA\"".to_owned());
    }
    let ok = problems.is_empty();
    for reason in problems {
        ctx.error(
            list.span(),
            RuleError::KeyValue {
                field: "sign_types".to_owned(),
                reason,
            },
        );
    }
    ok.then_some(types)
}

/// An Alipay user id: `2088` and 12 more digits.
fn is_user_id(s: &str) -> bool {
    s.len() == 16 && s.starts_with("2088") && s.bytes().all(|b| b.is_ascii_digit())
}

/// A certificate's `callgate_key_expiry_timestamp_seconds` entry: (`key`
/// label, notAfter).
type KeyExpiry = (String, i64);

/// What `check` says about an expired certificate in certificate mode.
const EXPIRED_ADVICE: &str = "Alipay's SDK still verifies notifications with it and so does callgate, \
     but download the current certificate from the open platform";
const RENEW_ADVICE: &str = "download the renewed certificate from the open platform before then";

/// Loads certificate mode for `[route.keys]`, recording problems at the
/// line of the key they concern, and printing expiry warnings (an expired
/// certificate is only a warning here: the SDK keeps verifying with it).
fn load_cert_mode(
    raw: &KeysFile,
    table: std::ops::Range<usize>,
    ctx: &mut FileCtx<'_>,
) -> Option<(RsaKey, CertSns, Vec<KeyExpiry>)> {
    let (Some(cert), Some(root)) = (&raw.alipay_cert, &raw.alipay_root_cert) else {
        let missing = if raw.alipay_cert.is_none() {
            "alipay_cert"
        } else {
            "alipay_root_cert"
        };
        ctx.error(
            table,
            RuleError::KeyValue {
                field: missing.to_owned(),
                reason: "missing: certificate mode needs alipay_cert (alipayCertPublicKey_RSA2.crt) and alipay_root_cert (alipayRootCert.crt); app_cert is optional".to_owned(),
            },
        );
        return None;
    };
    let (cert_path, root_path) = (ctx.resolve(cert.get_ref()), ctx.resolve(root.get_ref()));
    let app_path = raw.app_cert.as_ref().map(|a| ctx.resolve(a.get_ref()));
    let files = CertFiles {
        alipay_cert: &cert_path,
        alipay_root_cert: &root_path,
        app_cert: app_path.as_deref(),
    };
    let now = crate::clock::unix_now();
    match alipay_cert::load(&files, now) {
        Ok(loaded) => {
            for (field, w) in &loaded.warnings {
                let named = match *field {
                    "app_cert" => raw.app_cert.as_ref().unwrap_or(cert),
                    _ => cert,
                };
                ctx.warn(named.span(), w);
            }
            let mut certs = Vec::with_capacity(loaded.certificates.len());
            for c in &loaded.certificates {
                let named = match c.field {
                    "app_cert" => raw.app_cert.as_ref().unwrap_or(cert),
                    "alipay_root_cert" => root,
                    _ => cert,
                };
                let key_cert = KeyCert {
                    field: c.field,
                    file: named.get_ref(),
                    serial: &c.serial,
                    subject: c.subject.clone(),
                    not_after: c.not_after,
                };
                expiry::judge(
                    ctx,
                    named.span(),
                    &key_cert,
                    now,
                    WhenExpired::Warn(EXPIRED_ADVICE),
                    RENEW_ADVICE,
                );
                certs.push((key_cert.label(), c.not_after));
            }
            tracing::debug!(
                alipay_cert_sn = &*loaded.sns.alipay_cert_sn,
                alipay_root_cert_sn = &*loaded.sns.alipay_root_cert_sn,
                app_cert_sn = loaded.sns.app_cert_sn.as_deref().unwrap_or("-"),
                "alipay certificate mode loaded"
            );
            Some((loaded.key, loaded.sns, certs))
        }
        Err(problems) => {
            for p in problems {
                let value = match p.field {
                    "alipay_cert" => cert,
                    "alipay_root_cert" => root,
                    _ => raw.app_cert.as_ref().unwrap_or(cert),
                };
                ctx.error(
                    value.span(),
                    RuleError::KeyFile {
                        field: p.field.to_owned(),
                        file: value.get_ref().clone(),
                        reason: p.reason,
                    },
                );
            }
            None
        }
    }
}

/// The event of a verified Alipay form (open platform or legacy): id
/// `notify_id`, signed time `notify_time` (Beijing time), each read
/// strictly (`provider::identity`). `unsigned` names the fields the
/// signature left out, which the shop never gets.
pub(super) fn notification(
    kind: ProviderKind,
    form: &Form,
    encoding: &'static Encoding,
    merchant: String,
    unsigned: Vec<String>,
) -> Result<Verified, VerifyError> {
    let notify_id = identity::token(
        Role::Event,
        "notify_id",
        form.get("notify_id"),
        &identity::NOTIFY_ID,
    )?;
    let notify_time = form
        .get("notify_time")
        .ok_or(VerifyError::MissingField("notify_time"))?;
    let signed_at = identity::beijing_time("notify_time", notify_time, TimeFormat::Dashed)?;
    let form = if unsigned.is_empty() {
        form.clone()
    } else {
        form.without(&unsigned)
    };
    Ok(Verified::new(
        kind,
        merchant,
        notify_id.to_owned(),
        signed_at,
        Fields::Form { form, encoding },
    )
    .with_unsigned_fields(unsigned))
}

/// True when a value is empty or only Java whitespace.
fn is_blank(value: &[u8], encoding: &'static Encoding) -> bool {
    if value.is_empty() {
        return true;
    }
    // Fast path: any printable ASCII byte means not blank.
    if value.iter().any(|&b| b > b' ' && b < 0x7F) {
        return false;
    }
    let (text, _) = encoding.decode_without_bom_handling(value);
    text.chars().all(java_whitespace)
}

/// Builds the string the signature covers. Returns it and the fields whose
/// value is blank (left out, unless `keep_blank`).
fn canonical(form: &Form, encoding: &'static Encoding, keep_blank: bool) -> (Vec<u8>, Vec<String>) {
    sorted_join(
        form,
        &["sign", "sign_type"],
        |v| is_blank(v, encoding),
        keep_blank,
    )
}

/// The signed string of a form (benches time it alone).
pub(crate) fn sign_content(form: &Form) -> Vec<u8> {
    let encoding = form
        .get("charset")
        .and_then(super::charset_label)
        .unwrap_or(encoding_rs::UTF_8);
    canonical(form, encoding, false).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alipay")
    }

    /// Keys accepting both RSA2 and RSA, so every fixture is judged on its
    /// signature (`sign_types_pin_the_digest` tests the default).
    fn keys(app_id: &str, key: &str) -> Keys {
        let mut k = Keys::with_key(
            app_id,
            RsaKey::from_file(&fixtures().join(key)).unwrap(),
            None,
        );
        k.sign_types = SignTypes {
            rsa2: true,
            rsa: true,
        };
        k
    }

    fn form(name: &str) -> Form {
        Form::parse(&std::fs::read(fixtures().join(name)).unwrap()).unwrap()
    }

    #[test]
    fn every_fixture_matches_expected_json() {
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap())
                .unwrap();
        let mut checked = 0;
        for (name, e) in expected.as_object().unwrap() {
            let body = std::fs::read(fixtures().join(name)).unwrap();
            let Ok(form) = Form::parse(&body) else {
                assert!(!e["verifies"].as_bool().unwrap(), "{name} should parse");
                checked += 1;
                continue;
            };
            let k = keys(
                e["app_id"].as_str().unwrap_or("2021000000000001"),
                e["key"].as_str().unwrap(),
            );
            let got = k.verify(&form, None);
            let want = e["verifies"].as_bool().unwrap()
                || e["verifies_with_empty_included"].as_bool() == Some(true);
            assert_eq!(got.is_ok(), want, "{name}: {got:?}");
            if let Ok(v) = got {
                assert_eq!(v.event_id(), e["notify_id"].as_str().unwrap(), "{name}");
            }
            checked += 1;
        }
        assert!(checked >= 19, "only {checked} fixtures");
    }

    #[test]
    fn real_production_vector_verifies_and_tamper_fails() {
        let e: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap())
                .unwrap();
        let app = e["nodejs_sdk_real_notify.form"]["app_id"].as_str().unwrap();
        let k = keys(app, "nodejs_sdk_real_public.pem");
        assert!(k.verify(&form("nodejs_sdk_real_notify.form"), None).is_ok());
        assert_eq!(
            k.verify(&form("nodejs_sdk_real_notify_tampered.form"), None)
                .unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn literal_plus_must_not_become_a_space() {
        let e: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap())
                .unwrap();
        let app = e["yansongda_sandbox_plus.form"]["app_id"].as_str().unwrap();
        let k = keys(app, "yansongda_sandbox_public.pem");
        assert!(k.verify(&form("yansongda_sandbox_plus.form"), None).is_ok());
        assert!(
            k.verify(&form("yansongda_sandbox_plus_as_space.form"), None)
                .is_err()
        );
    }

    #[test]
    fn a_sign_wrapped_in_lines_verifies_as_the_sdks_decode_it() {
        // The Java SDK drops what is outside the Base64 alphabet and PHP's
        // base64_decode skips it: line breaks and spaces inside `sign`
        // verify there, and here. Other characters do not.
        let k = keys("2021000000000001", "alipay_public.pem");
        let body = std::fs::read(fixtures().join("rsa2_trade_success.form")).unwrap();
        for insert in ["%0A", "%0D%0A", "%20", "%09"] {
            let wrapped = crate::provider::wrap_form_value(&body, "sign", insert, 64);
            assert_ne!(wrapped, body);
            let f = Form::parse(&wrapped).unwrap();
            assert!(k.verify(&f, None).is_ok(), "{insert}");
        }
        let junk = crate::provider::wrap_form_value(&body, "sign", "%21", 64);
        assert_eq!(
            k.verify(&Form::parse(&junk).unwrap(), None).unwrap_err(),
            VerifyError::SignatureEncoding
        );
    }

    #[test]
    fn refusals_name_their_reason() {
        let k = keys("2021000000000001", "alipay_public.pem");
        assert_eq!(
            k.verify(&form("rsa2_missing_sign.form"), None).unwrap_err(),
            VerifyError::MissingSignature
        );
        assert_eq!(
            k.verify(&form("rsa2_sign_type_unknown.form"), None)
                .unwrap_err(),
            VerifyError::UnsupportedSignType("RSA3".into())
        );
        assert!(matches!(
            k.verify(&form("rsa2_other_app.form"), None).unwrap_err(),
            VerifyError::MerchantMismatch {
                field: "app_id",
                ..
            }
        ));
        assert_eq!(
            k.verify(&form("rsa2_wrong_key.form"), None).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        assert_eq!(
            k.verify(&form("rsa2_tampered_amount.form"), None)
                .unwrap_err(),
            VerifyError::SignatureMismatch
        );
        let other = keys("2021000000000001", "other_public.pem");
        assert_eq!(
            other
                .verify(&form("rsa2_trade_success.form"), None)
                .unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn gbk_and_sha1_verify() {
        let k = keys("2021000000000001", "alipay_public.pem");
        let v = k.verify(&form("rsa2_gbk.form"), None).unwrap();
        let Fields::Form { encoding, .. } = v.fields() else {
            panic!("a form")
        };
        assert_eq!(*encoding, encoding_rs::GB18030);
        assert!(k.verify(&form("rsa_sha1_trade_success.form"), None).is_ok());
    }

    #[test]
    fn sign_type_must_match_the_digest() {
        // An RSA2 signature presented as RSA (SHA-1) must not verify.
        let body = std::fs::read(fixtures().join("rsa2_trade_success.form")).unwrap();
        let swapped = String::from_utf8(body)
            .unwrap()
            .replace("sign_type=RSA2", "sign_type=RSA");
        let k = keys("2021000000000001", "alipay_public.pem");
        assert_eq!(
            k.verify(&Form::parse(swapped.as_bytes()).unwrap(), None)
                .unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn sign_types_pin_the_digest() {
        // By default both verify with the route's one (2048-bit) key.
        let key = || RsaKey::from_file(&fixtures().join("alipay_public.pem")).unwrap();
        let k = Keys::with_key("2021000000000001", key(), None);
        assert_eq!(k.sign_types, SignTypes::BOTH);
        assert!(k.verify(&form("rsa2_trade_success.form"), None).is_ok());
        assert!(k.verify(&form("rsa_sha1_trade_success.form"), None).is_ok());
        // Pinned to RSA2, a genuine SHA1withRSA notification is refused
        // before its signature counts.
        let mut rsa2 = Keys::with_key("2021000000000001", key(), None);
        rsa2.sign_types = SignTypes {
            rsa2: true,
            rsa: false,
        };
        assert!(rsa2.verify(&form("rsa2_trade_success.form"), None).is_ok());
        let err = rsa2
            .verify(&form("rsa_sha1_trade_success.form"), None)
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::SignTypeNotAllowed { .. }),
            "{err:?}"
        );
        assert_eq!(err.label(), "sign_type_not_allowed");
        assert_eq!(err.outcome(), crate::ack::Outcome::BadSignature);
        // Pinned to RSA, the RSA2 one is refused instead.
        let mut rsa = Keys::with_key("2021000000000001", key(), None);
        rsa.sign_types = SignTypes {
            rsa2: false,
            rsa: true,
        };
        assert!(
            rsa.verify(&form("rsa_sha1_trade_success.form"), None)
                .is_ok()
        );
        assert!(matches!(
            rsa.verify(&form("rsa2_trade_success.form"), None),
            Err(VerifyError::SignTypeNotAllowed { .. })
        ));
    }

    #[test]
    fn values_valid_in_neither_charset_are_malformed() {
        let body = std::fs::read(fixtures().join("rsa2_trade_success.form")).unwrap();
        let bad = [body.as_slice(), b"&extra=%FF%FE"].concat();
        let k = keys("2021000000000001", "alipay_public.pem");
        let err = k.verify(&Form::parse(&bad).unwrap(), None).unwrap_err();
        assert!(matches!(err, VerifyError::Undecodable { .. }), "{err:?}");
        assert_eq!(err.label(), "charset_undecodable");
        assert_eq!(err.outcome(), crate::ack::Outcome::Malformed);
    }

    #[test]
    fn blank_detection_follows_java() {
        let u = encoding_rs::UTF_8;
        assert!(is_blank(b"", u));
        assert!(is_blank(b"  \t", u));
        assert!(is_blank("\u{3000}".as_bytes(), u));
        assert!(!is_blank("\u{A0}".as_bytes(), u));
        assert!(!is_blank(b" a ", u));
    }

    fn cert_keys(cert: &str) -> Keys {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alipay_cert");
        let loaded = alipay_cert::load(
            &CertFiles {
                alipay_cert: &dir.join(cert),
                alipay_root_cert: &dir.join("alipayRootCert.crt"),
                app_cert: None,
            },
            1_800_000_000,
        )
        .unwrap();
        Keys::with_key("2021000000000001", loaded.key, Some(loaded.sns))
    }

    fn cert_form(name: &str) -> Form {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alipay_cert");
        Form::parse(&std::fs::read(dir.join(name)).unwrap()).unwrap()
    }

    #[test]
    fn certificate_mode_verifies_with_the_certificate_key() {
        let k = cert_keys("alipayCertPublicKey_RSA2.crt");
        assert!(
            k.verify(&cert_form("cert_trade_success.form"), None)
                .is_ok()
        );
        assert!(k.verify(&cert_form("cert_with_sn.form"), None).is_ok());
        assert_eq!(
            k.verify(&cert_form("cert_tampered.form"), None)
                .unwrap_err(),
            VerifyError::SignatureMismatch
        );
        assert_eq!(
            k.verify(&cert_form("cert_wrong_key.form"), None)
                .unwrap_err(),
            VerifyError::SignatureMismatch
        );
        // Another SN, signed with the configured key: the SDK never reads
        // the field, so neither does the verdict (a renewal on the same key).
        assert!(k.verify(&cert_form("cert_sn_mismatch.form"), None).is_ok());
        // The other certificate verifies its own key's notification only.
        let other = cert_keys("other_alipayCertPublicKey_RSA2.crt");
        assert!(
            other
                .verify(&cert_form("cert_wrong_key.form"), None)
                .is_ok()
        );
        assert!(other.verify(&cert_form("cert_with_sn.form"), None).is_err());
        // In public-key mode alipay_cert_sn is just another signed field.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alipay_cert");
        let pk = Keys::with_key(
            "2021000000000001",
            RsaKey::from_der(
                &crate::test_tools::tool("openssl")
                    .args(["x509", "-pubkey", "-noout", "-in"])
                    .arg(dir.join("alipay_leaf.crt"))
                    .output()
                    .map(|o| {
                        use base64::Engine as _;
                        let pem = String::from_utf8(o.stdout).unwrap();
                        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
                        base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .unwrap()
                    })
                    .unwrap(),
            )
            .unwrap(),
            None,
        );
        assert!(pk.verify(&cert_form("cert_sn_mismatch.form"), None).is_ok());
    }

    #[test]
    fn yansongda_plus_vector_in_certificate_mode() {
        let loaded = alipay_cert::load(
            &CertFiles {
                alipay_cert: &fixtures().join("yansongda_alipayPublicCert.crt"),
                alipay_root_cert: &Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/alipay_cert/fzlee_alipay_root_cert.crt"),
                app_cert: None,
            },
            crate::clock::unix_now(),
        )
        .unwrap();
        let k = Keys::with_key("9021000122682882", loaded.key, Some(loaded.sns));
        assert!(k.verify(&form("yansongda_sandbox_plus.form"), None).is_ok());
        assert!(
            k.verify(&form("yansongda_sandbox_plus_as_space.form"), None)
                .is_err()
        );
    }
}
