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
//! guessed. `app_id` must be the route's. `charset` (default UTF-8) must be
//! one we can decode, and every value must be valid in it. Event id:
//! `notify_id`. Signed time: `notify_time`, Beijing time.
//!
//! Certificate mode (`alipay_cert`, `alipay_root_cert`, optional `app_cert`
//! instead of `public_key`): notifications are verified exactly as above
//! with the key of Alipay's public-key certificate, as the SDK's
//! `rsaCertCheckV1` does; loading, the chain check and the SNs are in
//! [`super::alipay_cert`]. A notification that carries `alipay_cert_sn` must
//! name the configured certificate, else 401.

use base64::Engine as _;
use encoding_rs::Encoding;
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::alipay_cert::{self, CertFiles, CertSns};
use super::{
    Fields, ProviderKind, RsaDigest, RsaKey, Verified, VerifyError, beijing_time, java_whitespace,
    shown,
};
use crate::body::Form;
use crate::expiry::{self, KeyCert, WhenExpired};
use crate::rules::{FileCtx, RuleError};

/// `[route.keys]` for `alipay`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysFile {
    /// The app's id on the open platform; notifications must carry it.
    app_id: Spanned<String>,
    /// Alipay's public key (PEM, or the bare Base64 from the console).
    public_key: Option<Spanned<String>>,
    /// Certificate mode: Alipay's public-key certificate.
    alipay_cert: Option<Spanned<String>>,
    /// Certificate mode: Alipay's root certificate chain.
    alipay_root_cert: Option<Spanned<String>>,
    /// Certificate mode: the app's certificate.
    app_cert: Option<Spanned<String>>,
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
}

/// Notification time format (`yyyy-MM-dd HH:mm:ss`, Beijing time).
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

impl Keys {
    /// The merchant these keys belong to: the app's `app_id`.
    pub fn merchant_id(&self) -> &str {
        &self.app_id
    }

    pub(super) fn compile(value: Spanned<DeValue<'_>>, ctx: &mut FileCtx<'_>) -> Option<Keys> {
        let span = value.span();
        let raw: KeysFile = ctx.deserialize(value)?;
        if raw.app_id.get_ref().trim().is_empty() {
            ctx.error(
                raw.app_id.span(),
                RuleError::KeyValue {
                    field: "app_id".to_owned(),
                    reason: "must not be empty".to_owned(),
                },
            );
        }
        let cert_mode =
            raw.alipay_cert.is_some() || raw.alipay_root_cert.is_some() || raw.app_cert.is_some();
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
            (None, true) => match load_cert_mode(&raw, span, ctx) {
                Some((key, sns, certs)) => (Some(key), Some((sns, certs))),
                None => (None, None),
            },
            (None, false) => {
                ctx.error(
                    span,
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
        Some(Keys {
            app_id: raw.app_id.into_inner().into_boxed_str(),
            key: key?,
            cert,
            certs,
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

    /// Keys built directly from a public-key file, for benches and fuzzing.
    pub fn for_bench(app_id: &str, public_key: &std::path::Path) -> Result<Keys, String> {
        Ok(Keys {
            app_id: app_id.into(),
            key: RsaKey::from_file(public_key)?,
            cert: None,
            certs: Vec::new(),
        })
    }

    /// Verifies a decoded notification form.
    pub fn verify(&self, form: &Form) -> Result<Verified, VerifyError> {
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
        let encoding = charset(form.get("charset"))?;
        check_encoding(form, encoding)?;
        match form.get("app_id") {
            Some(id) if id == self.app_id.as_bytes() => {}
            Some(id) => {
                return Err(VerifyError::MerchantMismatch {
                    field: "app_id",
                    got: shown(id),
                });
            }
            None => return Err(VerifyError::MissingField("app_id")),
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(sign)
            .map_err(|_| VerifyError::SignatureEncoding)?;

        let (content, had_empty) = canonical(form, encoding, false);
        let good = self.key.verify(digest, &content, &signature)
            || (had_empty
                && self
                    .key
                    .verify(digest, &canonical(form, encoding, true).0, &signature));
        if !good {
            return Err(VerifyError::SignatureMismatch);
        }
        if let Some(sns) = &self.cert
            && let Some(got) = form.get("alipay_cert_sn").filter(|v| !v.is_empty())
            && got != sns.alipay_cert_sn.as_bytes()
        {
            return Err(VerifyError::CertSnMismatch {
                got: shown(got),
                want: sns.alipay_cert_sn.to_string(),
            });
        }

        notification(ProviderKind::Alipay, form, encoding)
    }
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
    let now = crate::replay::unix_now();
    match alipay_cert::load(&files, now) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                ctx.warn(cert.span(), w);
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
/// `notify_id`, signed time `notify_time` (Beijing time).
pub(super) fn notification(
    kind: ProviderKind,
    form: &Form,
    encoding: &'static Encoding,
) -> Result<Verified, VerifyError> {
    let notify_id = form
        .get_str("notify_id")
        .filter(|s| !s.is_empty())
        .ok_or(VerifyError::MissingField("notify_id"))?;
    let notify_time = form
        .get("notify_time")
        .filter(|s| !s.is_empty())
        .ok_or(VerifyError::MissingField("notify_time"))?;
    let signed_at = beijing_time("notify_time", notify_time, TIME_FORMAT)?;
    Ok(Verified::new(
        kind,
        notify_id.to_owned(),
        signed_at,
        Fields::Form {
            form: form.clone(),
            encoding,
        },
    ))
}

/// Maps the notification's `charset` to an encoding. Absent or empty means
/// UTF-8, as in the SDK.
pub(crate) fn charset(value: Option<&[u8]>) -> Result<&'static Encoding, VerifyError> {
    let Some(label) = value.filter(|v| !v.is_empty()) else {
        return Ok(encoding_rs::UTF_8);
    };
    let lower = label.to_ascii_lowercase();
    match lower.as_slice() {
        b"utf-8" | b"utf8" => Ok(encoding_rs::UTF_8),
        b"gbk" | b"gb2312" | b"gb18030" => Ok(encoding_rs::GB18030),
        _ => Err(VerifyError::Charset(shown(label))),
    }
}

/// Every value must decode in the notification's charset.
pub(crate) fn check_encoding(form: &Form, encoding: &'static Encoding) -> Result<(), VerifyError> {
    for (key, value) in form.iter() {
        if value.is_ascii() {
            continue;
        }
        let ok = if encoding == encoding_rs::UTF_8 {
            std::str::from_utf8(value).is_ok()
        } else {
            encoding
                .decode_without_bom_handling_and_without_replacement(value)
                .is_some()
        };
        if !ok {
            return Err(VerifyError::FieldEncoding {
                field: key.to_owned(),
                charset: if encoding == encoding_rs::UTF_8 {
                    "UTF-8"
                } else {
                    "GBK"
                },
            });
        }
    }
    Ok(())
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

/// Builds the string the signature covers. Returns it and whether any value
/// was blank (and so left out, unless `keep_blank`).
fn canonical(form: &Form, encoding: &'static Encoding, keep_blank: bool) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(1024);
    let mut had_blank = false;
    for (key, value) in form.iter() {
        if key == "sign" || key == "sign_type" {
            continue;
        }
        if is_blank(value, encoding) {
            had_blank = true;
            if !keep_blank {
                continue;
            }
        }
        if !out.is_empty() {
            out.push(b'&');
        }
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value);
    }
    (out, had_blank)
}

/// The canonical string for signing a sample notification (`callgate sign`).
pub(crate) fn sign_content(form: &Form) -> Vec<u8> {
    let encoding = charset(form.get("charset")).unwrap_or(encoding_rs::UTF_8);
    canonical(form, encoding, false).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alipay")
    }

    fn keys(app_id: &str, key: &str) -> Keys {
        Keys {
            app_id: app_id.into(),
            key: RsaKey::from_file(&fixtures().join(key)).unwrap(),
            cert: None,
            certs: Vec::new(),
        }
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
            let got = k.verify(&form);
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
        assert!(k.verify(&form("nodejs_sdk_real_notify.form")).is_ok());
        assert_eq!(
            k.verify(&form("nodejs_sdk_real_notify_tampered.form"))
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
        assert!(k.verify(&form("yansongda_sandbox_plus.form")).is_ok());
        assert!(
            k.verify(&form("yansongda_sandbox_plus_as_space.form"))
                .is_err()
        );
    }

    #[test]
    fn refusals_name_their_reason() {
        let k = keys("2021000000000001", "alipay_public.pem");
        assert_eq!(
            k.verify(&form("rsa2_missing_sign.form")).unwrap_err(),
            VerifyError::MissingSignature
        );
        assert_eq!(
            k.verify(&form("rsa2_sign_type_unknown.form")).unwrap_err(),
            VerifyError::UnsupportedSignType("RSA3".into())
        );
        assert!(matches!(
            k.verify(&form("rsa2_other_app.form")).unwrap_err(),
            VerifyError::MerchantMismatch {
                field: "app_id",
                ..
            }
        ));
        assert_eq!(
            k.verify(&form("rsa2_wrong_key.form")).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        assert_eq!(
            k.verify(&form("rsa2_tampered_amount.form")).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        let other = keys("2021000000000001", "other_public.pem");
        assert_eq!(
            other.verify(&form("rsa2_trade_success.form")).unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn gbk_and_sha1_verify() {
        let k = keys("2021000000000001", "alipay_public.pem");
        let v = k.verify(&form("rsa2_gbk.form")).unwrap();
        let Fields::Form { encoding, .. } = v.fields() else {
            panic!("a form")
        };
        assert_eq!(*encoding, encoding_rs::GB18030);
        assert!(k.verify(&form("rsa_sha1_trade_success.form")).is_ok());
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
            k.verify(&Form::parse(swapped.as_bytes()).unwrap())
                .unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn invalid_utf8_in_a_utf8_notification_is_malformed() {
        let body = std::fs::read(fixtures().join("rsa2_trade_success.form")).unwrap();
        let bad = [body.as_slice(), b"&extra=%FF%FE"].concat();
        let k = keys("2021000000000001", "alipay_public.pem");
        let err = k.verify(&Form::parse(&bad).unwrap()).unwrap_err();
        assert!(matches!(err, VerifyError::FieldEncoding { .. }), "{err:?}");
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
        Keys {
            app_id: "2021000000000001".into(),
            key: loaded.key,
            cert: Some(loaded.sns),
            certs: Vec::new(),
        }
    }

    fn cert_form(name: &str) -> Form {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alipay_cert");
        Form::parse(&std::fs::read(dir.join(name)).unwrap()).unwrap()
    }

    #[test]
    fn certificate_mode_verifies_with_the_certificate_key() {
        let k = cert_keys("alipayCertPublicKey_RSA2.crt");
        assert!(k.verify(&cert_form("cert_trade_success.form")).is_ok());
        assert!(k.verify(&cert_form("cert_with_sn.form")).is_ok());
        assert_eq!(
            k.verify(&cert_form("cert_tampered.form")).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        assert_eq!(
            k.verify(&cert_form("cert_wrong_key.form")).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        assert!(matches!(
            k.verify(&cert_form("cert_sn_mismatch.form")).unwrap_err(),
            VerifyError::CertSnMismatch { .. }
        ));
        // The other certificate verifies its own key's notification, and
        // refuses the SN of the first.
        let other = cert_keys("other_alipayCertPublicKey_RSA2.crt");
        assert!(other.verify(&cert_form("cert_wrong_key.form")).is_ok());
        assert!(other.verify(&cert_form("cert_with_sn.form")).is_err());
        // In public-key mode alipay_cert_sn is just another signed field.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alipay_cert");
        let pk = Keys {
            app_id: "2021000000000001".into(),
            key: RsaKey::from_der(
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
            cert: None,
            certs: Vec::new(),
        };
        assert!(pk.verify(&cert_form("cert_sn_mismatch.form")).is_ok());
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
            crate::replay::unix_now(),
        )
        .unwrap();
        let k = Keys {
            app_id: "9021000122682882".into(),
            key: loaded.key,
            cert: Some(loaded.sns),
            certs: Vec::new(),
        };
        assert!(k.verify(&form("yansongda_sandbox_plus.form")).is_ok());
        assert!(
            k.verify(&form("yansongda_sandbox_plus_as_space.form"))
                .is_err()
        );
    }
}
