//! JD Pay / JD Baitiao (京东支付 / 白条) merchant notifications, V2.0.
//!
//! The body is an XML envelope that is not signed itself:
//!
//! ```xml
//! <?xml version="1.0" encoding="UTF-8"?>
//! <jdpay><version>V2.0</version><merchant>…</merchant>
//!   <result><code>000000</code><desc>success</desc></result>
//!   <encrypt>Base64(ASCII hex(3DES(len ‖ XML ‖ zero padding)))</encrypt></jdpay>
//! ```
//!
//! `body::Envelope::parse` reads it with the one strict XML reader
//! (`body/xml.rs`): one `jdpay` root whose children are text leaves, except
//! `result`, whose children are text leaves. A DOCTYPE or entity
//! declaration, a comment or processing instruction, attributes, a repeated
//! element, deeper nesting, text outside elements or malformed XML is
//! refused (400). The decrypted payload goes through the same reader.
//!
//! Rules followed (JD's merchant SDK as used by its own demo,
//! liangfahua/jdpayDemo `AsynNotifyAction` → `JdPayUtil.parseResp`; the
//! same code is ported in Javen205/IJPay `XmlEncryptUtil.decrypt`,
//! `ThreeDesUtil.decrypt4HexStr`, `JdPayXmlUtil`, `VerifySignatureUtl`):
//!
//! 1. `version` must be `V2.0` and `merchant` the route's.
//! 2. `encrypt`: Base64 → ASCII hex → bytes; 3DES (`DESede/ECB/NoPadding`)
//!    with the Base64-decoded 24-byte merchant DES key; the plaintext is a
//!    4-byte big-endian length N, N bytes of UTF-8 XML, then zero padding. N
//!    above 16384 (the SDK's `MAX_MSG_LENGTH`) or beyond the buffer is
//!    refused, as is XML that is not UTF-8 (a wrong DES key shows up here).
//! 3. `sign` = the text between the first `<sign>` and the last `</sign>`
//!    of the decrypted XML (Base64).
//! 4. The signed string: the decrypted XML, prefixed with
//!    `<?xml version="1.0" encoding="UTF-8"?>` only if it does not start
//!    with `<?xml` (an existing declaration is kept byte for byte: JD's demo
//!    notification has `encoding="UTF-8" ?>` and verifies only with that
//!    space), then `fomatXmlStr` (split on tab, CR and LF, trim each piece
//!    as Java `String.trim` does, concatenate), then everything from the
//!    first `<sign>` to the last `</sign>` removed.
//! 5. `RSA public-decrypt(sign)` with JD's public key (PKCS#1 v1.5 type-1
//!    padding, no DigestInfo: JD "private-encrypts" the digest text) must
//!    equal `lowercase_hex(SHA-256(signed string))`, 64 ASCII bytes. This is
//!    `rsa::Pkcs1v15Sign::new_unprefixed()` over those 64 bytes, not a
//!    standard SHA256withRSA signature.
//!
//! Beyond the SDK: every field is read from the signed string itself (the
//! span from the first `<sign>` to the last `</sign>` is not signed, so
//! nothing in it is used), parsed as strictly as the envelope (a repeated
//! element is refused, except `pay` inside `payList`). The `<sign>` text is
//! decoded as strict Base64, whitespace aside (the SDK's commons-codec
//! skips other characters; either way markup smuggled into the span
//! changes the signature value and fails). The SDK's
//! `toHexString` drops the leading zero of bytes below 0x10, which would
//! corrupt a payload containing tabs or newlines; callgate decodes such
//! payloads correctly instead of reproducing that bug.
//!
//! The decrypted `merchant` must be the route's too.
//!
//! What the shop gets of the envelope (original mode): `version`,
//! `merchant` and `encrypt`, and `result` when it repeats the signed
//! payload's `result` leaf for leaf, as JD's envelopes do (JD's demo
//! payment and genkin-he's refund vector). Any other child of `<jdpay>`,
//! and a `result` that says anything else, is covered by no signature and
//! left out: a captured failed payment with `000000` written into its
//! envelope must not read as a success to a shop that looks there.
//!
//! Identity (`provider::identity`): event id `tradeNum:tradeType:status`,
//! each required (no default for a missing `tradeType`) and exactly the
//! platform's syntax: `tradeNum` letters, digits, `-` and `_`; `tradeType`
//! and `status` one or two digits. They are read from the signed string
//! itself, after JD's formatter removed line breaks and trimmed, so a
//! block of the 3DES-ECB ciphertext moved around (ECB lets anyone do that
//! without the key) cannot put whitespace into them unnoticed. Signed time:
//! the first `payList/pay/tradeTime`, else the top-level `tradeTime`
//! (refund notifications carry only the latter), exactly `yyyyMMddHHmmss`,
//! Beijing time. Merchant: `merchant`.

use base64::Engine as _;
use des::TdesEde3;
use des::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::identity::{self, Role, TimeFormat};
use super::{Fields, ProviderKind, Verified, VerifyError, expect_merchant};
use crate::body::xml::{self, Element, Envelope, Shape, XmlError};
use crate::load::{FileCtx, RuleError};
use crate::secret::Secret;
use crate::secret::shown;

/// The declaration the SDK adds when the payload has none.
pub const XML_HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";

/// The SDK's `MAX_MSG_LENGTH` for a decrypted payload.
pub const MAX_PAYLOAD: usize = 16384;

/// How the decrypted payload may be built: `pay` repeats inside `payList`.
const PAYLOAD: Shape = Shape {
    depth: 8,
    repeatable: &[("payList", "pay")],
};

// === keys ===

/// `[route.keys]` for `jdpay`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// The merchant number (`merchant`) notifications must carry. Required,
    /// like the other two (options so that one wrong value does not hide
    /// the others' problems: `FileCtx::required`).
    merchant: Option<Spanned<String>>,
    /// File holding the merchant's 3DES key, Base64, as JD issues it.
    des_key_file: Option<Spanned<String>>,
    /// JD's RSA public key (PEM, or the bare Base64 JD hands out).
    jd_public_key: Option<Spanned<String>>,
}

/// Compiled keys of a `jdpay` route.
pub struct Keys {
    merchant: Box<str>,
    /// The 24-byte 3DES key.
    des_key: Secret,
    public: rsa::RsaPublicKey,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("jdpay::Keys")
            .field("merchant", &self.merchant)
            .field("des_key", &self.des_key)
            .field("public_bits", &(self.public.size() * 8))
            .finish()
    }
}

/// Decodes a DES key file's content (Base64 of 24 bytes).
pub(crate) fn des_key_from(secret: &Secret) -> Result<Secret, String> {
    let text: Vec<u8> = secret
        .expose()
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let key = base64::engine::general_purpose::STANDARD
        .decode(&text)
        .map_err(|_| {
            "not Base64 (the key as JD issues it, e.g. 32 Base64 characters)".to_owned()
        })?;
    if key.len() != 24 {
        return Err(format!(
            "decodes to {} bytes; a 3DES key is 24 bytes",
            key.len()
        ));
    }
    Ok(Secret::new(key))
}

/// Reads JD's public key file.
pub(crate) fn public_key_from_file(path: &std::path::Path) -> Result<rsa::RsaPublicKey, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read: {}", crate::load::io_reason(&e)))?;
    let der = super::public_key_der(&bytes)?;
    let key = rsa::RsaPublicKey::from_public_key_der(&der)
        .map_err(|_| "not an RSA public key".to_owned())?;
    let bits = key.size() * 8;
    if !(1024..=4096).contains(&bits) {
        return Err(format!(
            "RSA key of {bits} bits; 1024 to 4096 are supported"
        ));
    }
    Ok(key)
}

impl Keys {
    /// The merchant these keys belong to: `merchant`.
    pub fn merchant_id(&self) -> &str {
        &self.merchant
    }

    pub(super) fn compile(value: Spanned<DeValue<'_>>, ctx: &mut FileCtx<'_>) -> Option<Keys> {
        let span = value.span();
        let each = ctx.deserialize_each::<KeysFile>(value);
        let raw = each.value.as_ref()?;
        let merchant = ctx.required(&each, span.clone(), "merchant", raw.merchant.as_ref());
        let des_key_file = ctx.required(
            &each,
            span.clone(),
            "des_key_file",
            raw.des_key_file.as_ref(),
        );
        let jd_public_key = ctx.required(&each, span, "jd_public_key", raw.jd_public_key.as_ref());
        let merchant = merchant.map(|m| (m, m.get_ref().trim()));
        if let Some((m, "")) = merchant {
            ctx.error(
                m.span(),
                RuleError::KeyValue {
                    field: "merchant".to_owned(),
                    reason: "must not be empty".to_owned(),
                },
            );
        }
        let file_error = |ctx: &mut FileCtx<'_>, v: &Spanned<String>, field: &str, reason| {
            ctx.error(
                v.span(),
                RuleError::KeyFile {
                    field: field.to_owned(),
                    file: v.get_ref().clone(),
                    reason,
                },
            );
        };
        let des_key = des_key_file.and_then(|file| {
            let key = Secret::from_file(&ctx.resolve(file.get_ref()))
                .map_err(|e| e.to_string())
                .and_then(|s| des_key_from(&s));
            key.map_err(|reason| file_error(ctx, file, "des_key_file", reason))
                .ok()
        });
        let public = jd_public_key.and_then(|file| {
            public_key_from_file(&ctx.resolve(file.get_ref()))
                .map_err(|reason| file_error(ctx, file, "jd_public_key", reason))
                .ok()
        });
        let merchant = merchant.map(|(_, m)| m).filter(|m| !m.is_empty());
        if !each.holes.is_empty() {
            return None;
        }
        Some(Keys {
            merchant: merchant?.into(),
            des_key: des_key?,
            public: public?,
        })
    }

    /// Keys built directly from files, for tests and benches.
    pub fn from_files(
        merchant: &str,
        des_key_file: &std::path::Path,
        jd_public_key: &std::path::Path,
    ) -> Result<Keys, String> {
        let secret = Secret::from_file(des_key_file).map_err(|e| e.to_string())?;
        Ok(Keys {
            merchant: merchant.into(),
            des_key: des_key_from(&secret)?,
            public: public_key_from_file(jd_public_key)?,
        })
    }

    /// Verifies a parsed envelope: decrypt, check JD's signature, read the
    /// signed fields.
    pub fn verify(&self, envelope: &Envelope) -> Result<Verified, VerifyError> {
        let opened = self.open(envelope)?;
        let root =
            xml::read(opened.signed.as_bytes(), &PAYLOAD).map_err(|e| VerifyError::BadField {
                field: "encrypt",
                reason: format!("decrypted XML: {e}"),
            })?;
        if root.name != "jdpay" {
            let e = XmlError::Root {
                got: shown(root.name.as_bytes()),
                want: "jdpay",
            };
            return Err(VerifyError::BadField {
                field: "encrypt",
                reason: format!("decrypted XML: {e}"),
            });
        }
        expect_merchant(
            "merchant",
            root.leaf("merchant").map(str::as_bytes),
            &self.merchant,
        )?;
        let leaf = |name: &str| root.leaf(name).map(str::as_bytes);
        let trade_num = identity::token(
            Role::Event,
            "tradeNum",
            leaf("tradeNum"),
            &identity::TRADE_NUM,
        )?;
        let trade_type = identity::token(
            Role::Event,
            "tradeType",
            leaf("tradeType"),
            &identity::SMALL_CODE,
        )?;
        let status = identity::token(Role::Event, "status", leaf("status"), &identity::SMALL_CODE)?;
        let time = root
            .child("payList")
            .and_then(|p| p.child("pay"))
            .and_then(|p| p.leaf("tradeTime"))
            .or_else(|| root.leaf("tradeTime"))
            .ok_or(VerifyError::MissingField("tradeTime"))?;
        let signed_at = identity::beijing_time("tradeTime", time.as_bytes(), TimeFormat::Compact)?;
        let event_id = identity::event_id(&[trade_num, trade_type, status]);
        let time = time.to_owned();
        let unsigned = unsigned_spans(envelope, &root);
        Ok(Verified::new(
            ProviderKind::Jdpay,
            self.merchant.to_string(),
            event_id,
            signed_at,
            Fields::Jdpay(Decrypted {
                xml: opened.xml,
                root,
                time,
            }),
        )
        .with_unsigned_elements(unsigned))
    }

    /// Steps 1 to 5 of the module doc: returns the decrypted XML and the
    /// string JD's signature covers, once the signature checked out.
    fn open(&self, envelope: &Envelope) -> Result<Opened, VerifyError> {
        if envelope.version != "V2.0" {
            return Err(VerifyError::UnsupportedScheme(format!(
                "version `{}` (only V2.0 is accepted)",
                shown(envelope.version.as_bytes())
            )));
        }
        expect_merchant(
            "merchant",
            Some(envelope.merchant.as_bytes()),
            &self.merchant,
        )?;
        let xml = self.decrypt(&envelope.encrypt)?;
        let text = std::str::from_utf8(&xml).map_err(|_| VerifyError::Decrypt("not UTF-8"))?;

        let sign = match (text.find("<sign>"), text.rfind("</sign>")) {
            (Some(from), Some(to)) if from + 6 <= to => &text[from + 6..to],
            (Some(_), Some(_)) => return Err(VerifyError::SignatureEncoding),
            _ => return Err(VerifyError::MissingSignature),
        };
        let sign: Vec<u8> = sign.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if sign.is_empty() {
            return Err(VerifyError::MissingSignature);
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&sign)
            .map_err(|_| VerifyError::SignatureEncoding)?;

        let signed = signed_string(text).ok_or(VerifyError::SignatureEncoding)?;
        let digest = hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            signed.as_bytes(),
        ));
        use rsa::traits::SignatureScheme as _;
        rsa::Pkcs1v15Sign::new_unprefixed()
            .verify(&self.public, digest.as_bytes(), &signature)
            .map_err(|_| VerifyError::SignatureMismatch)?;
        Ok(Opened { xml, signed })
    }

    /// Step 2: `encrypt` → the N bytes of decrypted XML.
    pub(crate) fn decrypt(&self, encrypt: &str) -> Result<Vec<u8>, VerifyError> {
        let bad = |reason: &str| VerifyError::BadField {
            field: "encrypt",
            reason: reason.to_owned(),
        };
        let compact: Vec<u8> = encrypt
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let hex_text = base64::engine::general_purpose::STANDARD
            .decode(&compact)
            .map_err(|_| bad("not Base64"))?;
        let cipher = hex::decode(&hex_text).map_err(|_| bad("not Base64 of hex"))?;
        if cipher.is_empty() || cipher.len() % 8 != 0 || cipher.len() > MAX_PAYLOAD + 16 {
            return Err(bad(
                "ciphertext is not a whole number of 3DES blocks within 16 KiB",
            ));
        }
        let mut key = [0u8; 24];
        key.copy_from_slice(self.des_key.expose());
        let plain = des_ecb(&key, &cipher, false);
        key.iter_mut().for_each(|b| *b = 0);
        unpack(&plain)
    }
}

/// What of the envelope no signature covers and the shop must not be
/// shown: any child of `<jdpay>` but `version`, `merchant`, `result` and
/// `encrypt` (JD sends no other), and a `result` that is not the signed
/// payload's own (JD repeats it there: an edited copy could tell a shop
/// reading the envelope that a failed payment succeeded). `version` and
/// `merchant` were checked against the route; `encrypt` is what was
/// verified.
fn unsigned_spans(envelope: &Envelope, signed: &Element) -> Vec<std::ops::Range<usize>> {
    let mut spans = envelope.others.clone();
    if let Some(outer) = &envelope.result {
        let repeats_signed = signed.child("result").is_some_and(|inner| {
            outer.leaves.iter().all(|(name, text)| {
                matches!(name.as_str(), "code" | "desc") && inner.leaf(name) == Some(text.as_str())
            })
        });
        if !repeats_signed {
            spans.push(outer.span.clone());
        }
    }
    spans
}

/// Steps 2 (length prefix) on decrypted bytes.
fn unpack(plain: &[u8]) -> Result<Vec<u8>, VerifyError> {
    let prefix: [u8; 4] = plain
        .get(..4)
        .and_then(|p| p.try_into().ok())
        .ok_or(VerifyError::Decrypt("shorter than its length prefix"))?;
    let n = u32::from_be_bytes(prefix) as usize;
    if n > MAX_PAYLOAD {
        return Err(VerifyError::Decrypt("length prefix above 16384"));
    }
    plain
        .get(4..4 + n)
        .map(<[u8]>::to_vec)
        .ok_or(VerifyError::Decrypt("length prefix beyond the payload"))
}

/// Java `String.trim`: strips every char up to U+0020 from both ends.
fn java_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c <= ' ')
}

/// Steps 4: declaration if missing, `fomatXmlStr`, `<sign>` span removed.
/// `None` when the span is inverted (the SDK throws there).
pub(crate) fn signed_string(text: &str) -> Option<String> {
    let headed;
    let text = if java_trim(text).starts_with("<?xml") {
        text
    } else {
        headed = format!("{XML_HEAD}{text}");
        &headed
    };
    let formatted: String = text.split(['\t', '\r', '\n']).map(java_trim).collect();
    match (formatted.find("<sign>"), formatted.rfind("</sign>")) {
        (Some(from), Some(to)) if from <= to => Some(format!(
            "{}{}",
            &formatted[..from],
            &formatted[to + "</sign>".len()..]
        )),
        (Some(_), Some(_)) => None,
        _ => Some(formatted),
    }
}

/// 3DES-EDE3 in ECB mode over whole 8-byte blocks (`data.len() % 8 == 0`).
pub(crate) fn des_ecb(key: &[u8; 24], data: &[u8], encrypt: bool) -> Vec<u8> {
    let cipher = TdesEde3::new(&Array::from(*key));
    let mut out = data.to_vec();
    for chunk in out.chunks_exact_mut(8) {
        let mut block = Array::<u8, _>::default();
        block.copy_from_slice(chunk);
        if encrypt {
            cipher.encrypt_block(&mut block);
        } else {
            cipher.decrypt_block(&mut block);
        }
        chunk.copy_from_slice(&block);
    }
    out
}

/// What `open` hands back once JD's signature checked out.
struct Opened {
    /// The decrypted XML, exactly as decrypted.
    xml: Vec<u8>,
    /// The string the signature covers.
    signed: String,
}

/// A verified JD notification: the decrypted XML as decrypted, and its
/// signed fields.
#[derive(Debug, Clone)]
pub struct Decrypted {
    xml: Vec<u8>,
    root: Element,
    time: String,
}

impl Decrypted {
    /// The decrypted XML, byte for byte (forwarded as `X-Callgate-Resource`).
    pub fn xml(&self) -> &[u8] {
        &self.xml
    }

    /// The signed `<jdpay>` element (without `sign`).
    pub fn root(&self) -> &Element {
        &self.root
    }

    /// The signed time field used (`payList/pay/tradeTime` or `tradeTime`).
    pub fn time(&self) -> &str {
        &self.time
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jdpay")
    }

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(dir().join(name)).unwrap()
    }

    fn keys(merchant: &str, des: &str, public: &str) -> Keys {
        Keys::from_files(merchant, &dir().join(des), &dir().join(public)).unwrap()
    }

    fn ours() -> Keys {
        keys("110000000001", "des.key", "jd_public.pem")
    }

    fn envelope(name: &str) -> Envelope {
        Envelope::parse(&read(name)).unwrap()
    }

    #[test]
    fn jd_demo_payment_vector_verifies() {
        // JD's own demo (liangfahua/jdpayDemo AsynNotifyAction.main).
        let k = keys("110148035005", "jd_demo.des", "jd_test_public.pem");
        let v = k.verify(&envelope("jd_demo_payment.xml")).unwrap();
        assert_eq!(v.event_id(), "160927496812634:0:2");
        assert_eq!(v.signed_at(), 1_474_957_426); // 2016-09-27 14:23:46 +08:00
        let Fields::Jdpay(d) = v.fields() else {
            panic!()
        };
        assert!(
            d.xml()
                .starts_with(b"<?xml version=\"1.0\" encoding=\"UTF-8\" ?><jdpay>")
        );
        assert_eq!(d.root().leaf("amount"), Some("1690"));
        assert!(
            d.root().leaf("sign").is_none(),
            "sign is not a signed field"
        );
        // The other published DES key (conf.properties) does not open it.
        let wrong = keys("110148035005", "genkin.des", "jd_test_public.pem");
        assert!(matches!(
            wrong.verify(&envelope("jd_demo_payment.xml")),
            Err(VerifyError::Decrypt(_))
        ));
    }

    #[test]
    fn genkin_refund_vector_verifies() {
        let k = keys("22294531", "genkin.des", "jd_test_public.pem");
        let v = k.verify(&envelope("genkin_refund_notify.xml")).unwrap();
        assert_eq!(v.event_id(), "asd784374823472389_r:2:1");
        let Fields::Jdpay(d) = v.fields() else {
            panic!()
        };
        assert_eq!(d.time(), "20170510162925");
        assert_eq!(d.root().leaf("oTradeNum"), Some("asd784374823472389"));
    }

    /// What the shop gets of `name` verified with `k` (original mode).
    fn shop_body(k: &Keys, name: &str) -> Vec<u8> {
        let body = read(name);
        let v = k.verify(&envelope(name)).unwrap();
        v.received(bytes::Bytes::from(body))
            .original_body()
            .to_vec()
    }

    #[test]
    fn an_envelope_repeating_the_signed_result_reaches_the_shop_byte_for_byte() {
        for (k, name) in [
            (ours(), "payment.xml"),
            (ours(), "payment_failed.xml"),
            (ours(), "refund.xml"),
            (
                keys("110148035005", "jd_demo.des", "jd_test_public.pem"),
                "jd_demo_payment.xml",
            ),
            (
                keys("22294531", "genkin.des", "jd_test_public.pem"),
                "genkin_refund_notify.xml",
            ),
        ] {
            assert_eq!(shop_body(&k, name), read(name), "{name}");
        }
    }

    #[test]
    fn an_edited_envelope_never_reaches_the_shop() {
        // A genuine failed payment (signed result 999999, status 3) whose
        // unsigned envelope was edited to say 000000 and to carry a status,
        // a trade number and an amount of its own.
        let edited = String::from_utf8(read("payment_failed_envelope_edited.xml")).unwrap();
        let v = ours()
            .verify(&envelope("payment_failed_envelope_edited.xml"))
            .unwrap();
        assert_eq!(v.event_id(), "CG20261122000015:0:3");
        let Fields::Jdpay(d) = v.fields() else {
            panic!()
        };
        assert_eq!(
            d.root().child("result").and_then(|r| r.leaf("code")),
            Some("999999")
        );
        let mut want = edited.clone();
        for cut in [
            "<result>\n    <code>000000</code>\n    <desc>success</desc>\n  </result>",
            "<status>2</status>",
            "<tradeNum>ORDER-VICTIM</tradeNum>",
            "<amount>100000</amount>",
        ] {
            assert!(want.contains(cut), "{cut}");
            want = want.replacen(cut, "", 1);
        }
        let got = shop_body(&ours(), "payment_failed_envelope_edited.xml");
        assert_eq!(String::from_utf8(got).unwrap(), want);

        // One leaf edited is enough; an extra leaf in `result` too.
        let genuine = String::from_utf8(read("payment_failed.xml")).unwrap();
        for (from, to) in [
            ("<code>999999</code>", "<code>000000</code>"),
            ("<desc>交易失败</desc>", "<desc>success</desc>"),
            (
                "<desc>交易失败</desc>",
                "<desc>交易失败</desc><status>2</status>",
            ),
        ] {
            let body = genuine.replacen(from, to, 1);
            let env = Envelope::parse(body.as_bytes()).unwrap();
            let v = ours().verify(&env).unwrap();
            let got = v.received(bytes::Bytes::from(body.clone())).original_body();
            let got = String::from_utf8(got.to_vec()).unwrap();
            assert!(!got.contains("<result>"), "{to}: {got}");
            assert!(
                got.contains("<encrypt>") && got.contains("<merchant>"),
                "{to}"
            );
        }
    }

    #[test]
    fn genkin_response_vector_decrypts_and_verifies() {
        // A JD-signed uniorder response: same envelope and signature, but no
        // status or trade time, so it is not a notification.
        let k = keys("22294531", "genkin.des", "jd_test_public.pem");
        let e = envelope("genkin_uniorder_response.xml");
        let opened = k.open(&e).unwrap();
        assert!(
            opened
                .signed
                .contains("<qrCode>https://h5pay.jd.com/code?c=616zlks7djfb1z</qrCode>")
        );
        assert!(matches!(
            k.verify(&e).unwrap_err(),
            VerifyError::BadEventId {
                field: "tradeType",
                problem: "is missing",
                ..
            }
        ));
    }

    #[test]
    fn genkin_des_vector_decrypts_exactly() {
        let k = keys("22294531", "genkin.des", "jd_test_public.pem");
        let plain = k
            .decrypt(std::str::from_utf8(&read("genkin_des_encrypted.b64")).unwrap())
            .unwrap();
        assert_eq!(plain, read("genkin_des_decrypted.xml"));
        // genkin-he/jdpay sign_test: the sign in it recovers to the SHA-256
        // hex of the XML without it.
        let text = String::from_utf8(plain).unwrap();
        assert!(
            signed_string(&text)
                .unwrap()
                .ends_with("<status>1</status></jdpay>")
        );
    }

    #[test]
    fn every_fixture_matches_expected_json() {
        let expected: serde_json::Value = serde_json::from_slice(&read("expected.json")).unwrap();
        let k = ours();
        let mut checked = 0;
        for (name, e) in expected.as_object().unwrap() {
            if e["real"].as_bool() == Some(true) {
                continue;
            }
            let want = e["outcome"].as_str().unwrap();
            let got = match Envelope::parse(&read(name)) {
                Err(err) => {
                    assert_eq!(want, "malformed", "{name}: {err}");
                    checked += 1;
                    continue;
                }
                Ok(env) => k.verify(&env),
            };
            match (want, got) {
                ("verifies", Ok(v)) => {
                    assert_eq!(v.event_id(), e["event_id"].as_str().unwrap(), "{name}")
                }
                ("bad_signature", Err(err)) => {
                    assert_eq!(
                        err.outcome(),
                        crate::ack::Outcome::BadSignature,
                        "{name}: {err}"
                    )
                }
                ("malformed", Err(err)) => {
                    assert_eq!(
                        err.outcome(),
                        crate::ack::Outcome::Malformed,
                        "{name}: {err}"
                    )
                }
                (want, got) => panic!("{name}: want {want}, got {got:?}"),
            }
            checked += 1;
        }
        assert!(checked >= 18, "only {checked} fixtures");
    }

    #[test]
    fn refusals_name_their_reason() {
        let k = ours();
        let err = |name: &str| k.verify(&envelope(name)).unwrap_err();
        assert_eq!(err("tampered_amount.xml"), VerifyError::SignatureMismatch);
        assert_eq!(err("wrong_rsa_key.xml"), VerifyError::SignatureMismatch);
        assert!(matches!(err("wrong_des_key.xml"), VerifyError::Decrypt(_)));
        assert_eq!(
            err("length_above_limit.xml"),
            VerifyError::Decrypt("length prefix above 16384")
        );
        assert_eq!(
            err("length_beyond_payload.xml"),
            VerifyError::Decrypt("length prefix beyond the payload")
        );
        assert!(matches!(
            err("other_merchant.xml"),
            VerifyError::MerchantMismatch { .. }
        ));
        assert!(matches!(
            err("inner_merchant_differs.xml"),
            VerifyError::MerchantMismatch { .. }
        ));
        assert!(matches!(
            err("version_v3.xml"),
            VerifyError::UnsupportedScheme(_)
        ));
        assert_eq!(err("no_sign.xml"), VerifyError::MissingSignature);
        assert_eq!(err("markup_in_sign.xml"), VerifyError::SignatureEncoding);
        assert!(matches!(
            err("repeated_inner_amount.xml"),
            VerifyError::BadField { .. }
        ));
    }

    #[test]
    fn envelope_merchant_must_be_the_routes_too() {
        // The signed payload is for this merchant, but the envelope names
        // another: inconsistent, refused.
        let mut e = envelope("payment.xml");
        e.merchant = "110000000999".into();
        assert!(matches!(
            ours().verify(&e),
            Err(VerifyError::MerchantMismatch { .. })
        ));
    }

    #[test]
    fn pretty_printed_payloads_follow_the_sdk_formatting() {
        let v = ours().verify(&envelope("payment_pretty.xml")).unwrap();
        let Fields::Jdpay(d) = v.fields() else {
            panic!()
        };
        assert!(d.xml().contains(&b'\n'));
        assert_eq!(d.root().leaf("amount"), Some("8888"));
    }

    #[test]
    fn signed_string_rules() {
        // Declaration added only when missing; an existing one is kept.
        assert_eq!(
            signed_string("<jdpay><a>1</a><sign>x</sign></jdpay>").unwrap(),
            format!("{XML_HEAD}<jdpay><a>1</a></jdpay>")
        );
        assert_eq!(
            signed_string(
                "<?xml version=\"1.0\" encoding=\"UTF-8\" ?><jdpay><sign>x</sign><b>2</b></jdpay>"
            )
            .unwrap(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\" ?><jdpay><b>2</b></jdpay>"
        );
        // fomatXmlStr: split on tab/CR/LF, trim pieces, join; spaces inside stay.
        assert_eq!(
            signed_string("<?xml?>\n\t<jdpay>\r\n  <a> x y </a>\n</jdpay>\n").unwrap(),
            "<?xml?><jdpay><a> x y </a></jdpay>"
        );
        // First <sign> to last </sign>.
        assert_eq!(
            signed_string("<?xml?><a><sign>1</sign><b/><sign>2</sign></a>").unwrap(),
            "<?xml?><a></a>"
        );
        assert!(signed_string("<?xml?></sign><sign>").is_none());
    }

    #[test]
    fn des_round_trip_matches_openssl_layout() {
        // Known answer: openssl enc -des-ede3 -nopad -K 000102..17 of "0123456789abcdef".
        let key: [u8; 24] = std::array::from_fn(|i| i as u8);
        let c = des_ecb(&key, b"0123456789abcdef", true);
        assert_eq!(hex::encode(&c), "e51a5963a7a171ef8f4058bd5383215b");
        assert_eq!(des_ecb(&key, &c, false), b"0123456789abcdef");
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let alphabet: Vec<u8> = b"<>/=\"&;![]?-jdpay"
            .iter()
            .copied()
            .chain(0..=255u8)
            .collect();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let k = ours();
        for i in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 96) as usize;
            let mut body: Vec<u8> = (0..len)
                .map(|j| alphabet[((state >> (j % 56)) as usize + j * 31) % alphabet.len()])
                .collect();
            if i % 3 == 0 {
                body.splice(
                    0..0,
                    b"<jdpay><version>V2.0</version><merchant>110000000001</merchant><encrypt>"
                        .iter()
                        .copied(),
                );
            }
            if let Ok(env) = Envelope::parse(&body) {
                let _ = k.verify(&env);
            }
            let _ = unpack(&body);
            let _ = signed_string(&String::from_utf8_lossy(&body));
        }
    }
}
