//! UnionPay ACP (全渠道) backUrl notifications, versions 5.1.0 and 5.0.0.
//!
//! Rules followed (official ACP SDK: Java `SDKUtil.validate` /
//! `CertUtil.verifyCertificate`, PHP `AcpService::validate` /
//! `CertUtil::verifyAndGetVerifyCert`):
//!
//! 1. The body is a form, decoded once into raw bytes (`body::Form`). The
//!    signature covers the raw bytes (never transcoded). The `encoding`
//!    field (`UTF-8` or `GBK`), then the Content-Type's charset, names the
//!    charset the values are decoded in for `normalized` mode; when they are
//!    not valid text in it, the other of GBK and UTF-8 is used (every field
//!    but `signature` is signed, so a signed field is behind that). Only values
//!    valid in neither are refused (400 `charset_undecodable`).
//! 2. Canonical string (`coverMap2String` / `createLinkString($p, true,
//!    false)`): every field except `signature`, sorted by key, joined
//!    `key=value` with `&`. Values go in verbatim (no URL-encoding, no
//!    trimming), empty values stay as `key=`, and `signPubKeyCert` is
//!    included with its CRLF line endings.
//!    The Java demo's `getAllRequestParam` drops empty fields before
//!    verifying while the PHP SDK keeps them; its comment says UnionPay never
//!    sends empty fields, so the two agree in practice. We keep them (PHP SDK).
//! 3. `version=5.1.0`, `signMethod=01`: `d = lowercase_hex(SHA-256(string))`
//!    and `signature` (Base64) is SHA256withRSA over the 64 ASCII bytes of
//!    `d`. The key is the certificate in `signPubKeyCert`, accepted only if
//!    (`CertUtil.verifyCertificate`):
//!    * the third `@`-separated field of its subject CN is
//!      `中国银联股份有限公司` (the SDK's `ifValidateCNName=true`; the current
//!      test environment's certificate, `041@8310000000083040@中国银联股份有限公司@00016495`,
//!      passes this check too, so the lenient `00040000:SIGN` mode of old
//!      test certificates is not offered);
//!    * it is within its validity at the time of verification;
//!    * it is issued (name and signature) by `keys.middle_cert`, which is
//!      itself within its validity, and whose own signature by
//!      `keys.root_cert` was checked when the route was loaded. The SDK's
//!      PKIX builder would also accept a certificate issued directly by the
//!      root; UnionPay's signing certificates always come from the middle
//!      certificate, so only that path is accepted.
//!
//!    Some third-party SDKs (yansongda/pay) skip these checks and trust
//!    whatever certificate the message carries; that would let anyone sign
//!    with a self-made certificate, so every check above is enforced.
//! 4. `version=5.0.0`, `signMethod=01`: `d = lowercase_hex(SHA-1(string))`,
//!    SHA1withRSA over `d`, with the certificate of `keys.verify_certs` whose
//!    decimal serial number equals `certId`; an unknown `certId` is refused.
//! 5. Anything else (another version, `signMethod` 11/12 secure-key modes,
//!    a missing `signMethod`) is refused: no fallback to a weaker check.
//!
//! Certificate lifetimes at load (`expiry`): a `root_cert` or `middle_cert`
//! that has expired does not load (the middle and the signing certificates
//! are refused at verification once expired anyway), one expiring within 30
//! days is a warning. `verify_certs` is a rotation list: an expired entry
//! is skipped with a warning (and stays in
//! `callgate_key_expiry_timestamp_seconds`, where the alert sees it) while
//! another entry is still valid; when every entry has expired, the route
//! does not load. The official SDKs do not check the 5.0.0 verification
//! certificate's validity; UnionPay stops signing with a certificate before
//! it expires, so an expired one can only mean the file was not replaced.
//!
//! Merchant: `keys.mer_id` is required and `merId` must be it. UnionPay signs
//! every merchant's notifications with one certificate and `backUrl` is
//! chosen per transaction by whoever pays, so a route without it would
//! take any merchant's genuine notifications as this shop's.
//!
//! Identity (`provider::identity`): event id `queryId:txnType`, `queryId`
//! letters and digits, `txnType` two digits, so a refund (`txnType=04`) is
//! never taken for its payment (`txnType=01`) whatever its `queryId`. Signed
//! time: `txnTime`, exactly `yyyyMMddHHmmss`, Beijing time. Merchant:
//! `merId`. Values are joined unescaped and may hold `&` and `=`, so none
//! of `queryId`, `txnType`, `txnTime`, `merId`, `respCode`, the amounts
//! and `currencyCode` ([`PINNED`]) may appear as `&name=` inside another
//! value or hold `&` themselves (nor may `orderId` and `origQryId`), and no
//! field name may hold `&` or `=`. A
//! notification whose `respCode` is not `00`/`A6` is still genuine and is
//! forwarded, so the shop learns of the failure (`normalize` maps it to
//! `closed` or `pending`).

use std::collections::HashMap;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;
use x509_parser::certificate::X509Certificate;

use encoding_rs::Encoding;

use super::identity::{self, Role, TimeFormat};
use super::{
    Fields, ProviderKind, RsaDigest, RsaKey, Verified, VerifyError, expect_merchant, form_encoding,
    sorted_join,
};
use crate::body::Form;
use crate::expiry::{self, KeyCert, WhenExpired};
use crate::load::{FileCtx, RuleError};
use crate::secret::shown;

/// The organisation field UnionPay's signing certificates carry in their CN
/// (`041@<code>@中国银联股份有限公司@<n>`).
pub const UNIONPAY_CN: &str = "中国银联股份有限公司";

/// The fields the signed string must fix exactly (see the module doc): the
/// identity, and what decides the status, amount and currency the shop is
/// told. The order numbers are only kept whole (`reqReserved`, the
/// merchant's own text, may hold `&orderId=`): refused only when missing
/// while another value holds `&<name>=` (see `identity::Pinned::whole`).
const PINNED: identity::Pinned = identity::Pinned {
    unfoldable: &[
        "queryId",
        "txnType",
        "txnTime",
        "merId",
        "respCode",
        "txnAmt",
        "settleAmt",
        "currencyCode",
    ],
    whole: &["orderId", "origQryId"],
};

/// `[route.keys]` for `unionpay`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// The merchant number; notifications for another `merId` are refused.
    mer_id: Option<Spanned<String>>,
    /// UnionPay's root certificate (`acp_prod_root.cer`), for 5.1.0.
    root_cert: Option<Spanned<String>>,
    /// UnionPay's middle certificate (`acp_prod_middle.cer`), for 5.1.0.
    middle_cert: Option<Spanned<String>>,
    /// UnionPay's verification certificates (`acp_prod_verify_sign.cer`), for
    /// 5.0.0, chosen by their serial number (`certId`).
    #[serde(default)]
    verify_certs: Vec<Spanned<String>>,
}

/// Compiled keys of a `unionpay` route.
pub struct Keys {
    mer_id: Box<str>,
    chain: Option<Chain>,
    /// 5.0.0 keys by the decimal serial number of their certificate.
    verify_certs: HashMap<String, RsaKey>,
    /// Every configured certificate as (`<field>:<decimal serial>`,
    /// notAfter).
    certs: Vec<(String, i64)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("unionpay::Keys")
            .field("mer_id", &self.mer_id)
            .field("chain", &self.chain.is_some())
            .field(
                "verify_certs",
                &self.verify_certs.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The middle certificate (already checked against the root at load).
struct Chain {
    middle_der: Box<[u8]>,
}

// === loading ===

/// Reads one certificate from a PEM (`-----BEGIN CERTIFICATE-----`) or DER
/// file and checks that it parses.
fn read_cert(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read: {}", crate::load::io_reason(&e)))?;
    let der = if bytes.windows(10).any(|w| w == b"-----BEGIN") {
        let mut certs = CertificateDer::pem_slice_iter(&bytes);
        let first = match certs.next() {
            Some(Ok(c)) => c.to_vec(),
            Some(Err(e)) => return Err(crate::load::pem_reason(&e)),
            None => return Err("no -----BEGIN CERTIFICATE----- block in the file".to_owned()),
        };
        if certs.next().is_some() {
            return Err("the file holds more than one certificate; give one per file".to_owned());
        }
        first
    } else {
        bytes
    };
    match x509_parser::parse_x509_certificate(&der) {
        Ok(([], _)) => Ok(der),
        Ok(_) => Err("trailing bytes after the certificate".to_owned()),
        Err(_) => Err("not an X.509 certificate (PEM or DER)".to_owned()),
    }
}

/// Judges the lifetime of a configured certificate (`expiry`: expired is a
/// load error, or, with `skippable`, a warning and the entry is not used;
/// within 30 days a warning) and records its gauge entry. Returns whether
/// it can be used.
fn judge(
    ctx: &mut FileCtx<'_>,
    field: &'static str,
    file: &Spanned<String>,
    der: &[u8],
    now: i64,
    certs: &mut Vec<(String, i64)>,
    skippable: bool,
) -> bool {
    let Some(cert) = parse(der) else {
        return true; // read_cert already refused what does not parse
    };
    let serial = cert.tbs_certificate.serial.to_string();
    let key_cert = KeyCert {
        field,
        file: file.get_ref(),
        serial: &serial,
        subject: cert.subject().to_string(),
        not_after: cert.validity().not_after.timestamp(),
    };
    let advice = if field == "verify_certs" {
        "UnionPay no longer signs 5.0.0 notifications with it: replace it with the current acp_prod_verify_sign.cer"
    } else {
        "UnionPay's signing certificates no longer chain through it: install UnionPay's current acp_prod_root.cer and acp_prod_middle.cer"
    };
    let when_expired = if skippable {
        WhenExpired::Skip(advice)
    } else {
        WhenExpired::Refuse(advice)
    };
    let usable = expiry::judge(
        ctx,
        file.span(),
        &key_cert,
        now,
        when_expired,
        "install UnionPay's renewed certificate before then",
    );
    // A skipped entry stays in the gauge, so its expiry alert fires.
    certs.push((key_cert.label(), key_cert.not_after));
    usable
}

fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .filter(|(rest, _)| rest.is_empty())
        .map(|(_, c)| c)
}

impl Keys {
    /// The merchant these keys belong to: `mer_id`.
    pub fn merchant_id(&self) -> &str {
        &self.mer_id
    }

    pub(super) fn compile(value: Spanned<DeValue<'_>>, ctx: &mut FileCtx<'_>) -> Option<Keys> {
        let span = value.span();
        let each = ctx.deserialize_each::<KeysFile>(value);
        let raw = each.value.as_ref()?;
        let mut ok = each.holes.is_empty();
        let now = crate::clock::unix_now();
        let mut certs = Vec::new();
        let fail = |ctx: &mut FileCtx<'_>, span, field: &str, file: &str, reason: String| {
            ctx.error(
                span,
                RuleError::KeyFile {
                    field: field.to_owned(),
                    file: file.to_owned(),
                    reason,
                },
            );
        };

        match &raw.mer_id {
            Some(m) if m.get_ref().trim().is_empty() || m.get_ref().trim() != m.get_ref() => {
                ok = false;
                ctx.error(
                    m.span(),
                    RuleError::KeyValue {
                        field: "mer_id".to_owned(),
                        reason: "must be the merchant number (merId), without spaces".to_owned(),
                    },
                );
            }
            Some(_) => {}
            None if each.lost("mer_id") => {}
            None => {
                ok = false;
                ctx.error(
                    span.clone(),
                    RuleError::KeyValue {
                        field: "mer_id".to_owned(),
                        reason: "missing: UnionPay signs every merchant's notifications with one certificate, so without the merchant number (merId) this route would take any merchant's as this shop's".to_owned(),
                    },
                );
            }
        }

        let mut chain = None;
        match (&raw.root_cert, &raw.middle_cert) {
            (Some(root), Some(middle)) => {
                let root_der = read_cert(&ctx.resolve(root.get_ref()));
                let middle_der = read_cert(&ctx.resolve(middle.get_ref()));
                match (root_der, middle_der) {
                    (Ok(root_der), Ok(middle_der)) => match check_middle(&root_der, &middle_der) {
                        Ok(()) => {
                            let r =
                                judge(ctx, "root_cert", root, &root_der, now, &mut certs, false);
                            let m = judge(
                                ctx,
                                "middle_cert",
                                middle,
                                &middle_der,
                                now,
                                &mut certs,
                                false,
                            );
                            ok &= r && m;
                            chain = Some(Chain {
                                middle_der: middle_der.into_boxed_slice(),
                            })
                        }
                        Err(reason) => {
                            ok = false;
                            fail(ctx, middle.span(), "middle_cert", middle.get_ref(), reason)
                        }
                    },
                    (r, m) => {
                        ok = false;
                        if let Err(reason) = r {
                            fail(ctx, root.span(), "root_cert", root.get_ref(), reason);
                        }
                        if let Err(reason) = m {
                            fail(ctx, middle.span(), "middle_cert", middle.get_ref(), reason);
                        }
                    }
                }
            }
            // The other one's value was wrong (reported already).
            (Some(_), None) | (None, Some(_))
                if each.lost("root_cert") || each.lost("middle_cert") => {}
            (Some(one), None) | (None, Some(one)) => {
                ok = false;
                ctx.error(
                    one.span(),
                    RuleError::KeyValue {
                        field: if raw.root_cert.is_some() {
                            "middle_cert".to_owned()
                        } else {
                            "root_cert".to_owned()
                        },
                        reason: "version 5.1.0 needs both root_cert and middle_cert".to_owned(),
                    },
                );
            }
            (None, None) => {}
        }

        // verify_certs is a rotation list: load every entry, then skip the
        // expired ones while another is still valid.
        let mut loaded_certs = Vec::new();
        for file in &raw.verify_certs {
            let loaded = read_cert(&ctx.resolve(file.get_ref())).and_then(|der| {
                let cert = parse(&der).ok_or("not an X.509 certificate")?;
                let serial = cert.tbs_certificate.serial.to_string();
                let key = RsaKey::from_der(cert.public_key().raw)
                    .map_err(|e| format!("certificate key: {e}"))?;
                let not_after = cert.validity().not_after.timestamp();
                Ok((serial, key, der, not_after))
            });
            match loaded {
                Ok(entry) => loaded_certs.push((file, entry)),
                Err(reason) => {
                    ok = false;
                    fail(ctx, file.span(), "verify_certs", file.get_ref(), reason)
                }
            }
        }
        // An entry taken out (its value was wrong) may have been the one
        // still valid: the list is then not judged as a whole.
        let any_valid = each.lost("verify_certs")
            || loaded_certs.iter().any(|(_, (_, _, _, not_after))| {
                expiry::lifetime(*not_after, now) != expiry::Lifetime::Expired
            });
        let mut verify_certs = HashMap::new();
        let mut serials = std::collections::HashSet::new();
        for (file, (serial, key, der, _)) in loaded_certs {
            let usable = judge(ctx, "verify_certs", file, &der, now, &mut certs, any_valid);
            if !serials.insert(serial.clone()) {
                ok = false;
                fail(
                    ctx,
                    file.span(),
                    "verify_certs",
                    file.get_ref(),
                    format!("serial number {serial} is listed twice"),
                );
            } else if usable {
                verify_certs.insert(serial, key);
            } else if !any_valid {
                ok = false;
            }
        }

        if ok && chain.is_none() && verify_certs.is_empty() {
            ctx.error(
                span,
                RuleError::KeyValue {
                    field: "root_cert".to_owned(),
                    reason: "give root_cert and middle_cert (version 5.1.0), verify_certs (version 5.0.0), or both".to_owned(),
                },
            );
            return None;
        }
        if !ok {
            return None;
        }
        Some(Keys {
            mer_id: raw.mer_id.as_ref()?.get_ref().as_str().into(),
            chain,
            verify_certs,
            certs,
        })
    }

    /// `root_cert`, `middle_cert` and every `verify_certs` entry, as
    /// (`<field>:<decimal serial>`, notAfter): the serial is the `certId` a
    /// 5.0.0 notification names.
    pub fn certificates(&self) -> Vec<(String, i64)> {
        self.certs.clone()
    }

    /// Keys built directly from files, for tests and benches.
    pub fn from_files(
        mer_id: &str,
        chain: Option<(&std::path::Path, &std::path::Path)>,
        verify_certs: &[&std::path::Path],
    ) -> Result<Keys, String> {
        let chain = match chain {
            Some((root, middle)) => {
                let (root, middle) = (read_cert(root)?, read_cert(middle)?);
                check_middle(&root, &middle)?;
                Some(Chain {
                    middle_der: middle.into_boxed_slice(),
                })
            }
            None => None,
        };
        let mut certs = HashMap::new();
        for path in verify_certs {
            let der = read_cert(path)?;
            let cert = parse(&der).ok_or("not a certificate")?;
            certs.insert(
                cert.tbs_certificate.serial.to_string(),
                RsaKey::from_der(cert.public_key().raw)?,
            );
        }
        Ok(Keys {
            mer_id: mer_id.into(),
            chain,
            verify_certs: certs,
            certs: Vec::new(),
        })
    }

    // === verification ===

    /// Verifies a decoded notification form; certificate validity is judged
    /// at `now` (Unix seconds). `content_type` is the charset the request's
    /// Content-Type names, if any.
    pub fn verify_at(
        &self,
        form: &Form,
        content_type: Option<&'static Encoding>,
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let scheme = match (form.get("version"), form.get("signMethod")) {
            (Some(b"5.1.0"), Some(b"01")) => Scheme::V510,
            (Some(b"5.0.0"), Some(b"01")) => Scheme::V500,
            (version, method) => {
                return Err(VerifyError::UnsupportedScheme(format!(
                    "version `{}` signMethod `{}` (only 5.1.0 and 5.0.0 with signMethod 01, RSA certificates, are accepted)",
                    version.map(shown).unwrap_or_default(),
                    method.map(shown).unwrap_or_default()
                )));
            }
        };
        let signature = form
            .get("signature")
            .filter(|s| !s.is_empty())
            .ok_or(VerifyError::MissingSignature)?;
        let charset = form_encoding(form, &["encoding"], content_type, None)?;
        expect_merchant("merId", form.get("merId"), &self.mer_id)?;
        let signature = super::signature_base64(signature)?;
        let content = canonical(form);

        let good = match scheme {
            Scheme::V510 => {
                let chain = self.chain.as_ref().ok_or_else(|| {
                    VerifyError::UnsupportedScheme(
                        "version 5.1.0 (this route has no root_cert and middle_cert)".to_owned(),
                    )
                })?;
                let cert = form
                    .get("signPubKeyCert")
                    .filter(|c| !c.is_empty())
                    .ok_or(VerifyError::MissingField("signPubKeyCert"))?;
                let key = leaf_key(chain, cert, now)?;
                let digest = hex::encode(aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    &content,
                ));
                key.verify(RsaDigest::Sha256, digest.as_bytes(), &signature)
            }
            Scheme::V500 => {
                if self.verify_certs.is_empty() {
                    return Err(VerifyError::UnsupportedScheme(
                        "version 5.0.0 (this route has no verify_certs)".to_owned(),
                    ));
                }
                let cert_id = form
                    .get_str("certId")
                    .filter(|c| !c.is_empty())
                    .ok_or(VerifyError::MissingField("certId"))?;
                let key = self
                    .verify_certs
                    .get(cert_id)
                    .ok_or_else(|| VerifyError::UnknownCertId(shown(cert_id.as_bytes())))?;
                let digest = hex::encode(aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    &content,
                ));
                key.verify(RsaDigest::Sha1, digest.as_bytes(), &signature)
            }
        };
        if !good {
            return Err(VerifyError::SignatureMismatch);
        }
        // Every field but `signature` is signed, empty ones included.
        let encoding = charset.covered(&["signature"], &[])?;

        identity::check_unambiguous(form.iter(), &PINNED, |name| form.get(name).is_some())?;
        let query_id = identity::token(
            Role::Event,
            "queryId",
            form.get("queryId"),
            &identity::QUERY_ID,
        )?;
        let txn_type = identity::token(
            Role::Event,
            "txnType",
            form.get("txnType"),
            &identity::TXN_TYPE,
        )?;
        let txn_time = form
            .get("txnTime")
            .ok_or(VerifyError::MissingField("txnTime"))?;
        let signed_at = identity::beijing_time("txnTime", txn_time, TimeFormat::Compact)?;
        Ok(Verified::new(
            ProviderKind::Unionpay,
            self.mer_id.to_string(),
            identity::event_id(&[query_id, txn_type]),
            signed_at,
            Fields::Form {
                form: form.clone(),
                encoding,
            },
        ))
    }
}

#[derive(Debug, Clone, Copy)]
enum Scheme {
    V510,
    V500,
}

/// Load-time check: the middle certificate is a CA issued by the root.
fn check_middle(root_der: &[u8], middle_der: &[u8]) -> Result<(), String> {
    let root = parse(root_der).ok_or("root_cert does not parse")?;
    let middle = parse(middle_der).ok_or("middle_cert does not parse")?;
    if middle.issuer().as_raw() != root.subject().as_raw() {
        return Err(format!(
            "not issued by root_cert (issuer `{}`, root subject `{}`)",
            middle.issuer(),
            root.subject()
        ));
    }
    middle
        .verify_signature(Some(root.public_key()))
        .map_err(|e| format!("its signature does not verify with root_cert's key ({e})"))?;
    if !middle.is_ca() {
        return Err("not a CA certificate (basicConstraints CA:FALSE or missing)".to_owned());
    }
    if let Ok(Some(ku)) = middle.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err("its keyUsage does not allow signing certificates".to_owned());
    }
    Ok(())
}

/// `CertUtil.verifyCertificate`: owner, validity and chain of the
/// certificate a 5.1.0 notification carries; returns its key.
fn leaf_key(chain: &Chain, pem: &[u8], now: i64) -> Result<RsaKey, VerifyError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let reject = |why: String| VerifyError::CertRejected(why);
    let der = CertificateDer::from_pem_slice(pem)
        .map_err(|_| reject("signPubKeyCert is not a PEM certificate".to_owned()))?;
    let leaf = parse(&der).ok_or_else(|| reject("signPubKeyCert does not parse".to_owned()))?;

    let cn = leaf
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| reject("no readable subject CN".to_owned()))?;
    if cn.split('@').nth(2) != Some(UNIONPAY_CN) {
        return Err(reject(format!(
            "subject CN `{}` is not UnionPay's ({UNIONPAY_CN})",
            cn.chars().take(80).collect::<String>()
        )));
    }

    let validity = leaf.validity();
    if now < validity.not_before.timestamp() || now > validity.not_after.timestamp() {
        return Err(reject(format!(
            "not valid now (valid from {} to {})",
            validity.not_before, validity.not_after
        )));
    }

    let middle = parse(&chain.middle_der)
        .ok_or_else(|| reject("keys.middle_cert does not parse".to_owned()))?;
    if leaf.issuer().as_raw() != middle.subject().as_raw() {
        return Err(reject(format!(
            "issued by `{}`, not by keys.middle_cert",
            leaf.issuer()
        )));
    }
    leaf.verify_signature(Some(middle.public_key()))
        .map_err(|_| reject("its signature does not verify with keys.middle_cert".to_owned()))?;
    let mv = middle.validity();
    if now < mv.not_before.timestamp() || now > mv.not_after.timestamp() {
        return Err(reject(format!(
            "keys.middle_cert is not valid now (valid from {} to {})",
            mv.not_before, mv.not_after
        )));
    }
    RsaKey::from_der(leaf.public_key().raw).map_err(|e| reject(format!("certificate key: {e}")))
}

/// The canonical string: every field but `signature`, sorted by key,
/// `key=value` joined by `&`, values verbatim and empty ones kept.
fn canonical(form: &Form) -> Vec<u8> {
    sorted_join(form, &["signature"], |_| false, true).0
}

/// The signed string of a form (benches time it alone).
pub(crate) fn sign_content(form: &Form) -> Vec<u8> {
    canonical(form)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unionpay")
    }

    fn form(name: &str) -> Form {
        Form::parse(&std::fs::read(dir().join(name)).unwrap()).unwrap()
    }

    fn expected() -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir().join("expected.json")).unwrap()).unwrap()
    }

    /// Our chain (root → middle → signing certificate) and the 5.0.0
    /// verification certificate.
    fn keys() -> Keys {
        keys_for("777290058110097")
    }

    fn keys_for(mer_id: &str) -> Keys {
        Keys::from_files(
            mer_id,
            Some((&dir().join("root.pem"), &dir().join("middle.pem"))),
            &[&dir().join("sign.pem")],
        )
        .unwrap()
    }

    /// 2026-11-22T03:00:00Z: after the fixtures' txnTime, inside the
    /// certificates' validity.
    const NOW: i64 = 1_795_316_400;

    #[test]
    fn every_fixture_matches_expected_json() {
        let k = keys();
        let mut checked = 0;
        for (name, e) in expected().as_object().unwrap() {
            if e["real"].as_bool() == Some(true) {
                continue;
            }
            let body = std::fs::read(dir().join(name)).unwrap();
            let Ok(form) = Form::parse(&body) else {
                assert_eq!(e["refusal"], "parse", "{name} should parse");
                checked += 1;
                continue;
            };
            let got = k.verify_at(&form, None, NOW);
            let want = e["verifies"].as_bool().unwrap();
            assert_eq!(got.is_ok(), want, "{name}: {got:?}");
            match got {
                Ok(v) => assert_eq!(v.event_id(), e["event_id"].as_str().unwrap(), "{name}"),
                Err(err) => {
                    let kind = match err {
                        VerifyError::SignatureMismatch => "signature",
                        VerifyError::CertRejected(_) => "cert",
                        VerifyError::UnknownCertId(_) => "cert_id",
                        VerifyError::UnsupportedScheme(_) => "scheme",
                        VerifyError::MerchantMismatch { .. } => "merchant",
                        VerifyError::MissingSignature => "missing_signature",
                        other => panic!("{name}: unexpected {other:?}"),
                    };
                    assert_eq!(kind, e["refusal"].as_str().unwrap(), "{name}");
                    assert_eq!(err.outcome(), crate::ack::Outcome::BadSignature);
                }
            }
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} fixtures");
    }

    #[test]
    fn real_sandbox_vector_verifies_with_the_published_test_chain() {
        // yansongda/pay's real UnionPay sandbox notification, checked against
        // UnionPay's test root and middle certificates. Its certificate
        // expired on 2025-07-31, so the clock is pinned inside its validity.
        let k = Keys::from_files(
            "777290058167151",
            Some((
                &dir().join("acp_test_root.pem"),
                &dir().join("acp_test_middle.pem"),
            )),
            &[],
        )
        .unwrap();
        let jan_2024 = 1_704_067_200;
        let v = k
            .verify_at(&form("yansongda_sandbox_510.form"), None, jan_2024)
            .unwrap();
        assert_eq!(v.event_id(), "782209081322060674028:01");
        assert_eq!(v.signed_at(), 1_662_614_526); // 2022-09-08 13:22:06 +08:00
        assert_eq!(
            k.verify_at(&form("yansongda_sandbox_510_tampered.form"), None, jan_2024)
                .unwrap_err(),
            VerifyError::SignatureMismatch
        );
        // Today the certificate is expired: refused, not trusted blindly.
        let err = k
            .verify_at(&form("yansongda_sandbox_510.form"), None, NOW)
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::CertRejected(ref w) if w.contains("not valid now")),
            "{err:?}"
        );
        // And our own chain does not vouch for UnionPay's certificate.
        let ours = keys_for("777290058167151");
        assert!(matches!(
            ours.verify_at(&form("yansongda_sandbox_510.form"), None, jan_2024),
            Err(VerifyError::CertRejected(_))
        ));
    }

    #[test]
    fn certificate_checks_each_refuse() {
        let k = keys();
        let reason = |name: &str| match k.verify_at(&form(name), None, NOW) {
            Err(VerifyError::CertRejected(why)) => why,
            other => panic!("{name}: {other:?}"),
        };
        assert!(reason("v510_attacker_selfsigned.form").contains("not by keys.middle_cert"));
        assert!(reason("v510_impostor_middle.form").contains("does not verify"));
        assert!(reason("v510_expired_cert.form").contains("not valid now"));
        assert!(reason("v510_wrong_cn.form").contains("not UnionPay's"));
    }

    #[test]
    fn a_signature_wrapped_in_lines_verifies_as_the_sdks_decode_it() {
        // UnionPay's Java SDK decodes with commons-codec and its PHP SDK
        // with base64_decode: both skip line breaks inside `signature`.
        let k = keys();
        for name in ["v510_payment.form", "v500_payment.form"] {
            let body = std::fs::read(dir().join(name)).unwrap();
            let wrapped = crate::provider::wrap_form_value(&body, "signature", "%0D%0A", 76);
            assert_ne!(wrapped, body);
            assert!(
                k.verify_at(&Form::parse(&wrapped).unwrap(), None, NOW)
                    .is_ok(),
                "{name}"
            );
            let junk = crate::provider::wrap_form_value(&body, "signature", "%2A", 76);
            assert_eq!(
                k.verify_at(&Form::parse(&junk).unwrap(), None, NOW)
                    .unwrap_err(),
                VerifyError::SignatureEncoding,
                "{name}"
            );
        }
    }

    #[test]
    fn cert_validity_uses_the_given_time() {
        let k = keys();
        let f = form("v510_payment.form");
        assert!(k.verify_at(&f, None, NOW).is_ok());
        // sign.pem is valid 2026-01-01 .. 2046-01-01.
        assert!(matches!(
            k.verify_at(&f, None, 1_735_689_600), // 2025-01-01
            Err(VerifyError::CertRejected(_))
        ));
        assert!(matches!(
            k.verify_at(&f, None, 2_398_464_000), // 2046-01-02
            Err(VerifyError::CertRejected(_))
        ));
    }

    #[test]
    fn version_without_its_keys_is_refused() {
        let only_500 =
            Keys::from_files("777290058110097", None, &[&dir().join("sign.pem")]).unwrap();
        assert!(matches!(
            only_500.verify_at(&form("v510_payment.form"), None, NOW),
            Err(VerifyError::UnsupportedScheme(_))
        ));
        assert!(
            only_500
                .verify_at(&form("v500_payment.form"), None, NOW)
                .is_ok()
        );
        let only_510 = Keys::from_files(
            "777290058110097",
            Some((&dir().join("root.pem"), &dir().join("middle.pem"))),
            &[],
        )
        .unwrap();
        assert!(matches!(
            only_510.verify_at(&form("v500_payment.form"), None, NOW),
            Err(VerifyError::UnsupportedScheme(_))
        ));
    }

    #[test]
    fn gbk_is_verified_over_gbk_bytes() {
        let v = keys().verify_at(&form("v510_gbk.form"), None, NOW).unwrap();
        let Fields::Form { encoding, .. } = v.fields() else {
            panic!()
        };
        assert_eq!(*encoding, encoding_rs::GB18030);
    }

    #[test]
    fn a_middle_not_issued_by_the_root_is_refused_at_load() {
        let err = Keys::from_files(
            "777290058110097",
            Some((&dir().join("acp_test_root.pem"), &dir().join("middle.pem"))),
            &[],
        )
        .unwrap_err();
        assert!(err.contains("not issued by root_cert"), "{err}");
        // A leaf is not a CA.
        let err = Keys::from_files(
            "777290058110097",
            Some((&dir().join("middle.pem"), &dir().join("sign.pem"))),
            &[],
        )
        .unwrap_err();
        assert!(err.contains("not a CA"), "{err}");
    }
}
