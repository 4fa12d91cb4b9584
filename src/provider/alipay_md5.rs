//! `alipay_md5`: legacy Alipay MAPI notifications (即时到账
//! `create_direct_pay_by_user` and 担保交易 escrow), signed with the
//! merchant's 32-character MD5 partner key: the plugins DedeCMS and ECShop
//! still ship.
//!
//! Verified as the official legacy PHP demo does (`alipay_core.function.php`
//! `paraFilter` / `argSort` / `createLinkstring`, `alipay_notify.class.php`
//! `getSignVeryfy` + `md5Verify`):
//! 1. the form is decoded once (done by `body::Form`); values stay the raw
//!    bytes the shop's charset gave them;
//! 2. `sign`, `sign_type` and every empty value are left out. "Empty" is
//!    PHP's `$val == ""`: the empty string only; a value of spaces is kept
//!    (unlike the Java rule of the RSA providers);
//! 3. keys are sorted by byte order (`ksort`), `key=value` joined with `&`,
//!    values verbatim;
//! 4. `sign = md5(string + key)`: the key appended with no separator,
//!    lower-case hex. callgate compares in constant time and exactly (the
//!    demo's `==` would also accept PHP "magic hash" look-alikes; an
//!    upper-case `sign` is not md5()'s output and is refused).
//!
//! The ECShop and DedeCMS `respond()` handlers build the string with empty
//! values *kept* (`key=`). Alipay is not known to send empty values, so the
//! demo string is tried first, and only when that fails and the notification
//! does hold an empty value is the plugins' string tried once: both need the
//! partner key, so neither is weaker than the other.
//!
//! `sign_type` must be `MD5`. The legacy `RSA` (Alipay's 1024-bit MAPI key)
//! and `DSA` variants are refused with their own reason rather than
//! verified: a route is configured with the partner key only.
//!
//! Charset: the MD5 covers the raw bytes whatever the charset, so a
//! notification that verifies is never refused for it. The charset used to
//! decode `normalized` fields is, in order: the notification's own
//! `_input_charset` or `charset` field (legacy notifications rarely carry
//! one), the Content-Type's charset, the route's `keys.charset` (`utf-8`
//! or `gbk`), else UTF-8; when the values are not valid text in it, the
//! other of GBK and UTF-8, as long as a signed field is valid only there
//! (else 401 `charset_unsigned`; the demo leaves out only empty values,
//! which are valid in both, so this cannot happen to a genuine MD5). Only values valid in neither are
//! refused (400 `charset_undecodable`). In `original` mode the shop receives the body
//! byte for byte.
//!
//! Empty values: the demo's string leaves them out, so an empty field can
//! be added to a genuine notification at will. When the demo string is the
//! one that verified, such fields are dropped from what the shop receives;
//! when only the plugins' string (empties kept) verified, they are signed
//! and stay.
//!
//! Merchant checks, after the signature: the notification's `seller_id` must
//! be the route's seller. A legacy notification does not carry `partner`
//! (a request parameter); its `seller_id` is the partner id of the account
//! that was paid, so `seller_id` must equal `keys.seller_id`, which defaults
//! to `keys.partner`. With `keys.seller_email` set, `seller_email` must match
//! it too (ASCII case-insensitively: an e-mail address). A missing
//! `seller_id` is refused: the check cannot be skipped.
//!
//! Identity (`provider::identity`): event id `notify_id` (letters and
//! digits), signed time `notify_time` (exactly `yyyy-MM-dd HH:mm:ss`,
//! Beijing time), merchant `seller_id`. None of `notify_id`, `notify_time`,
//! `seller_id`, `seller_email`, nor the fields that decide what happened
//! (`trade_status`, `refund_status`, the amounts, `gmt_payment`,
//! `gmt_refund`, `gmt_close`: [`PINNED`]) may appear as `&name=` inside
//! another signed value or hold `&` themselves (nor may `out_trade_no` and
//! `trade_no`), and no field name may hold `&` or `=`: a refund folded into
//! its neighbours would otherwise read as a payment.
//!
//! notify_verify (ATN): with `keys.notify_verify_url` set, the gateway asks
//! Alipay whether the `notify_id` is genuine, the way the legacy demo does
//! (`GET <url>?service=notify_verify&partner=<partner>&notify_id=<notify_id>`,
//! the id as received, [`NotifyVerify::uri`]), after the signature and
//! freshness checks and the replay claim, before the forward (the
//! `notify_verify` module asks). `true` continues; any other
//! answer is 401 `bad_signature`; no answer in `limits.upstream_timeout`, a
//! refused connection or a non-2xx status is 502 `upstream_error`, so Alipay
//! retries and nothing is lost. The demo accepts any body ending in `true`
//! (`/true$/i`); callgate wants exactly `true`, as chloerei/alipay does.

use encoding_rs::Encoding;
use http::Uri;
use md5::{Digest, Md5};
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::{
    ProviderKind, Verified, VerifyError, charset_label, expect_merchant, form_encoding, sorted_join,
};
use crate::body::Form;
use crate::load::{FileCtx, RuleError};
use crate::secret::shown;
use crate::secret::{Secret, ct_eq};

/// `[route.keys]` for `alipay_md5`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// The merchant's partner id (`2088` + 12 digits). Required, like
    /// `key_file` (options so that one wrong value does not hide the
    /// others' problems: `FileCtx::required`).
    partner: Option<Spanned<String>>,
    /// File holding the 32-character MD5 key (安全校验码).
    key_file: Option<Spanned<String>>,
    /// The seller's Alipay user id when it is not the partner itself.
    seller_id: Option<Spanned<String>>,
    /// The seller's Alipay account e-mail; checked when set.
    seller_email: Option<Spanned<String>>,
    /// Base URL of Alipay's notify_verify service; enables the ATN check.
    notify_verify_url: Option<Spanned<String>>,
    /// *Extension*: the charset the shop's Alipay requests use, `utf-8` or
    /// `gbk`: a hint, checked against the bytes.
    charset: Option<Spanned<String>>,
}

/// Compiled keys of an `alipay_md5` route.
#[derive(Debug)]
pub struct Keys {
    key: Secret,
    seller_id: Box<str>,
    seller_email: Option<Box<str>>,
    /// `keys.charset`, when given.
    hint: Option<&'static Encoding>,
    notify_verify: Option<NotifyVerify>,
}

/// The fields the signed string must fix exactly (see the module doc).
const PINNED: super::identity::Pinned = super::identity::Pinned {
    unfoldable: &[
        "notify_id",
        "notify_time",
        "seller_id",
        "seller_email",
        "trade_status",
        "refund_status",
        "total_fee",
        "price",
        "refund_fee",
        "gmt_payment",
        "gmt_refund",
        "gmt_close",
    ],
    whole: &["out_trade_no", "trade_no"],
};

/// A partner id: `2088` and 12 more digits.
fn is_partner_id(s: &str) -> bool {
    s.len() == 16 && s.starts_with("2088") && s.bytes().all(|b| b.is_ascii_digit())
}

impl Keys {
    /// The merchant these keys belong to: the `seller_id` (the partner id).
    pub fn merchant_id(&self) -> &str {
        &self.seller_id
    }

    pub(super) fn compile(value: Spanned<DeValue<'_>>, ctx: &mut FileCtx<'_>) -> Option<Keys> {
        let span = value.span();
        let each = ctx.deserialize_each::<KeysFile>(value);
        let raw = each.value.as_ref()?;
        let partner = ctx.required(&each, span.clone(), "partner", raw.partner.as_ref());
        let key_file = ctx.required(&each, span, "key_file", raw.key_file.as_ref());
        let mut ok = each.holes.is_empty();
        let mut bad = |ctx: &mut FileCtx<'_>, span, field: &str, reason: String| {
            ok = false;
            ctx.error(
                span,
                RuleError::KeyValue {
                    field: field.to_owned(),
                    reason,
                },
            );
        };

        let partner = partner.map(|p| (p.span(), p.get_ref().trim()));
        if let Some((at, partner)) = partner.clone()
            && !is_partner_id(partner)
        {
            bad(
                ctx,
                at,
                "partner",
                format!("`{partner}` is not a partner id (2088 and 12 more digits)"),
            );
        }
        // What the seller defaults to and the notify_verify service asks
        // with; without it, the keys are checked but not built.
        let partner = partner.map(|(_, p)| p);
        let seller_id = match &raw.seller_id {
            Some(s) if !is_partner_id(s.get_ref().trim()) => {
                bad(
                    ctx,
                    s.span(),
                    "seller_id",
                    format!(
                        "`{}` is not an Alipay user id (2088 and 12 more digits)",
                        s.get_ref()
                    ),
                );
                String::new()
            }
            Some(s) => s.get_ref().trim().to_owned(),
            None => partner.unwrap_or_default().to_owned(),
        };
        let seller_email = match &raw.seller_email {
            Some(e) if e.get_ref().trim().is_empty() => {
                bad(
                    ctx,
                    e.span(),
                    "seller_email",
                    "must not be empty; leave it out to skip the check".to_owned(),
                );
                None
            }
            Some(e) => Some(e.get_ref().trim().into()),
            None => None,
        };
        let hint = match raw.charset.as_ref() {
            None => None,
            Some(c) => match c.get_ref().to_ascii_lowercase().as_str() {
                "utf-8" | "utf8" | "gbk" => charset_label(c.get_ref().as_bytes()),
                other => {
                    bad(
                        ctx,
                        c.span(),
                        "charset",
                        format!("`{other}` is not \"utf-8\" or \"gbk\""),
                    );
                    None
                }
            },
        };
        let notify_verify = match &raw.notify_verify_url {
            None => None,
            Some(u) => match NotifyVerify::new(u.get_ref(), partner.unwrap_or_default()) {
                Ok(n) => Some(n),
                Err(reason) => {
                    bad(ctx, u.span(), "notify_verify_url", reason);
                    None
                }
            },
        };

        let key_file = key_file?;
        let file = key_file.get_ref();
        let key = match Secret::from_file(&ctx.resolve(file)) {
            Ok(k) if is_md5_key(k.expose()) => Some(k),
            Ok(k) => {
                ctx.error(
                    key_file.span(),
                    RuleError::KeyFile {
                        field: "key_file".to_owned(),
                        file: file.clone(),
                        reason: format!(
                            "expected the 32-character MD5 key (letters and digits) from Alipay's merchant console; the file holds {} bytes{}",
                            k.expose().len(),
                            if k.expose().starts_with(b"-----BEGIN") {
                                ", starting with a PEM header"
                            } else {
                                ""
                            }
                        ),
                    },
                );
                None
            }
            Err(reason) => {
                ctx.error(
                    key_file.span(),
                    RuleError::KeyFile {
                        field: "key_file".to_owned(),
                        file: file.clone(),
                        reason: reason.to_string(),
                    },
                );
                None
            }
        }?;
        if !ok || partner.is_none() {
            return None;
        }
        Some(Keys {
            key,
            seller_id: seller_id.into_boxed_str(),
            seller_email,
            hint,
            notify_verify,
        })
    }

    /// Keys built directly, for benches and unit tests.
    pub fn for_bench(partner: &str, key: &[u8], charset_gbk: bool) -> Keys {
        Keys {
            key: Secret::new(key.to_vec()),
            seller_id: partner.into(),
            seller_email: None,
            hint: Some(if charset_gbk {
                encoding_rs::GB18030
            } else {
                encoding_rs::UTF_8
            }),
            notify_verify: None,
        }
    }

    /// The route's notify_verify confirmation, when configured.
    pub fn notify_verify(&self) -> Option<&NotifyVerify> {
        self.notify_verify.as_ref()
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
        match form.get("sign_type") {
            Some(b"MD5") => {}
            Some(legacy @ (b"RSA" | b"DSA" | b"0001")) => {
                return Err(VerifyError::LegacySignType(shown(legacy)));
            }
            Some(other) => return Err(VerifyError::UnsupportedSignType(shown(other))),
            None => return Err(VerifyError::UnsupportedSignType(String::new())),
        }
        let (content, empty) = canonical(form, false);
        let unsigned = if matches(&self.key, &content, sign) {
            empty
        } else if !empty.is_empty() && matches(&self.key, &canonical(form, true).0, sign) {
            // Signed with its empty values: they are covered, and stay.
            Vec::new()
        } else {
            return Err(VerifyError::SignatureMismatch);
        };

        let encoding = form_encoding(
            form,
            &["_input_charset", "charset"],
            content_type,
            self.hint,
        )?
        .covered(&["sign", "sign_type"], &unsigned)?;
        super::identity::check_unambiguous(
            form.iter()
                .filter(|(k, _)| !unsigned.iter().any(|u| u == k)),
            &PINNED,
            |name| form.get(name).is_some() && !unsigned.iter().any(|u| u == name),
        )?;
        expect_merchant(
            "seller_id",
            form.get("seller_id").filter(|v| !v.is_empty()),
            &self.seller_id,
        )?;
        if let Some(want) = &self.seller_email {
            match form.get("seller_email").filter(|v| !v.is_empty()) {
                Some(got) if got.eq_ignore_ascii_case(want.as_bytes()) => {}
                Some(got) => {
                    return Err(VerifyError::MerchantMismatch {
                        field: "seller_email",
                        got: shown(got),
                    });
                }
                None => return Err(VerifyError::MissingField("seller_email")),
            }
        }

        super::alipay::notification(
            ProviderKind::AlipayMd5,
            form,
            encoding,
            self.seller_id.to_string(),
            unsigned,
        )
    }
}

/// 32 ASCII letters and digits: the shape of every Alipay MD5 key.
fn is_md5_key(key: &[u8]) -> bool {
    key.len() == 32 && key.iter().all(u8::is_ascii_alphanumeric)
}

/// `md5(content + key)` as lower-case hex.
fn md5_hex(key: &Secret, content: &[u8]) -> String {
    let digest = Md5::new()
        .chain_update(content)
        .chain_update(key.expose())
        .finalize();
    hex::encode(digest)
}

/// Constant-time comparison of `sign` with the expected digest.
fn matches(key: &Secret, content: &[u8], sign: &[u8]) -> bool {
    ct_eq(md5_hex(key, content).as_bytes(), sign)
}

/// Builds the string the signature covers: sorted `k=v` joined by `&`,
/// without `sign` and `sign_type`, and without empty values unless
/// `keep_empty`. Returns it and the fields whose value is empty.
pub(crate) fn canonical(form: &Form, keep_empty: bool) -> (Vec<u8>, Vec<String>) {
    sorted_join(form, &["sign", "sign_type"], <[u8]>::is_empty, keep_empty)
}

// === notify_verify ===

/// A route's notify_verify (ATN) endpoint, with the partner id it sends:
/// what `notify_verify::ask` asks Alipay with.
#[derive(Debug)]
pub struct NotifyVerify {
    base: Box<str>,
    partner: Box<str>,
}

impl NotifyVerify {
    fn new(url: &str, partner: &str) -> Result<NotifyVerify, String> {
        let uri = crate::load::http_url(url)?;
        if uri.query().is_some() || url.contains('#') {
            return Err("give the URL without a query (for example https://mapi.alipay.com/gateway.do); callgate appends ?service=notify_verify&partner=...&notify_id=...".to_owned());
        }
        Ok(NotifyVerify {
            base: url.into(),
            partner: partner.into(),
        })
    }

    /// The request URI for `notify_id`. The id goes in as received, the way
    /// the legacy demo concatenates it (`%` and `/` stay literal; only bytes
    /// a URI cannot carry, and `&`, `#`, `+`, are escaped).
    pub fn uri(&self, notify_id: &str) -> Result<Uri, http::uri::InvalidUri> {
        use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
        const UNSAFE: &AsciiSet = &CONTROLS
            .add(b' ')
            .add(b'"')
            .add(b'#')
            .add(b'&')
            .add(b'+')
            .add(b'<')
            .add(b'>')
            .add(b'\\')
            .add(b'^')
            .add(b'`')
            .add(b'{')
            .add(b'|')
            .add(b'}');
        format!(
            "{}?service=notify_verify&partner={}&notify_id={}",
            self.base,
            self.partner,
            utf8_percent_encode(notify_id, UNSAFE)
        )
        .parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alipay_md5")
    }

    fn key(name: &str) -> Vec<u8> {
        let mut k = std::fs::read(fixtures().join(name)).unwrap();
        while k.last() == Some(&b'\n') {
            k.pop();
        }
        k
    }

    fn keys() -> Keys {
        Keys::for_bench("2088101122334455", &key("md5_key.txt"), false)
    }

    fn form(name: &str) -> Form {
        Form::parse(&std::fs::read(fixtures().join(name)).unwrap()).unwrap()
    }

    fn expected() -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
    }

    #[test]
    fn chloerei_md5_vectors() {
        // chloerei/alipay test/alipay/sign/md5_test.rb and sign_test.rb.
        let k1 = Secret::new(b"10000000000000000000000000000000".to_vec());
        let k2 = Secret::new(b"20000000000000000000000000000000".to_vec());
        let form = Form::parse(b"service=test&partner=123").unwrap();
        assert_eq!(
            md5_hex(&k1, &canonical(&form, false).0),
            "bbd13b52823b576291595f472ebcfbc2"
        );
        assert_eq!(
            md5_hex(&k2, &canonical(&form, false).0),
            "6d581af270c023fdaaca6880491e9bf7"
        );
        // test/alipay/notify_test.rb: {notify_id: '1234', sign_type: 'MD5'}.
        let notify =
            Form::parse(b"notify_id=1234&sign_type=MD5&sign=22fc7e38e5acdfede396aa463870d111")
                .unwrap();
        let (content, _) = canonical(&notify, false);
        assert_eq!(content, b"notify_id=1234");
        assert!(matches(&k1, &content, b"22fc7e38e5acdfede396aa463870d111"));
        assert!(!matches(&k2, &content, b"22fc7e38e5acdfede396aa463870d111"));
    }

    #[test]
    fn every_fixture_matches_expected_json() {
        let mut checked = 0;
        for (name, e) in expected().as_object().unwrap() {
            let k = Keys::for_bench(
                e["seller_id"].as_str().unwrap_or("2088101122334455"),
                &key(e["key"].as_str().unwrap()),
                e["charset"] == "gbk",
            );
            let got = k.verify(&form(name), None);
            let sign_type_ok = e["sign_type"].as_str().is_none_or(|t| t == "MD5");
            if e["undecodable"] == true {
                // A genuine MD5 over bytes that are text in no charset.
                assert!(
                    matches!(got, Err(VerifyError::Undecodable { .. })),
                    "{name}: {got:?}"
                );
                checked += 1;
                continue;
            }
            let want = e["verifies"].as_bool().unwrap() && sign_type_ok;
            assert_eq!(got.is_ok(), want, "{name}: {got:?}");
            if let Ok(v) = got {
                assert_eq!(v.event_id(), e["notify_id"].as_str().unwrap(), "{name}");
            }
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} fixtures");
    }

    #[test]
    fn canonical_strings_match_the_generator() {
        let text = std::fs::read(fixtures().join("canonical.txt")).unwrap();
        let text = String::from_utf8(text).unwrap();
        let mut lines = text.lines();
        let mut seen = 0;
        while let (Some(name), Some(line)) = (lines.next(), lines.next()) {
            let want = line.trim_start();
            let (got, _) = canonical(&form(name), name == "md5_empty_included.form");
            // canonical.txt shows non-ASCII bytes as \xNN.
            let shown: String = got
                .iter()
                .map(|&b| {
                    if b.is_ascii() {
                        char::from(b).to_string()
                    } else {
                        format!("\\x{b:02x}")
                    }
                })
                .collect();
            assert_eq!(shown, want, "{name}");
            seen += 1;
        }
        assert_eq!(seen, 4);
    }

    #[test]
    fn refusals_name_their_reason() {
        let k = keys();
        assert_eq!(
            k.verify(&form("md5_missing_sign.form"), None).unwrap_err(),
            VerifyError::MissingSignature
        );
        for (f, t) in [
            ("md5_sign_type_rsa.form", "RSA"),
            ("md5_sign_type_dsa.form", "DSA"),
        ] {
            assert_eq!(
                k.verify(&form(f), None).unwrap_err(),
                VerifyError::LegacySignType(t.into())
            );
        }
        for f in [
            "md5_tampered_amount.form",
            "md5_wrong_key.form",
            "md5_plus_as_space.form",
            "md5_uppercase_sign.form",
        ] {
            assert_eq!(
                k.verify(&form(f), None).unwrap_err(),
                VerifyError::SignatureMismatch,
                "{f}"
            );
        }
        assert!(matches!(
            k.verify(&form("md5_other_seller.form"), None).unwrap_err(),
            VerifyError::MerchantMismatch {
                field: "seller_id",
                ..
            }
        ));
        // seller_email is checked only when configured.
        assert!(k.verify(&form("md5_other_seller_email.form"), None).is_ok());
        let with_email = Keys {
            seller_email: Some("SHOP@example.com".into()),
            ..keys()
        };
        assert!(
            with_email
                .verify(&form("md5_trade_success.form"), None)
                .is_ok()
        );
        assert!(matches!(
            with_email
                .verify(&form("md5_other_seller_email.form"), None)
                .unwrap_err(),
            VerifyError::MerchantMismatch {
                field: "seller_email",
                ..
            }
        ));
        // A configured seller_id replaces the partner in the check.
        let other_seller = Keys {
            seller_id: "2088999988887777".into(),
            ..keys()
        };
        assert!(
            other_seller
                .verify(&form("md5_other_seller.form"), None)
                .is_ok()
        );
        assert!(
            other_seller
                .verify(&form("md5_trade_success.form"), None)
                .is_err()
        );
    }

    #[test]
    fn empty_values_follow_php_not_java() {
        let k = keys();
        // Whitespace is not empty for PHP's `$val == ""`.
        assert!(k.verify(&form("md5_whitespace_value.form"), None).is_ok());
        // The ECShop/DedeCMS string (empties kept) is the one retry.
        assert!(k.verify(&form("md5_empty_included.form"), None).is_ok());
        let f = form("md5_empty_included.form");
        let (demo, had_empty) = canonical(&f, false);
        assert_eq!(had_empty, ["extra_common_param"]);
        assert!(!matches(&k.key, &demo, f.get("sign").unwrap()));
    }

    #[test]
    fn gbk_verifies_over_raw_bytes_whatever_the_route_says() {
        let gbk = Keys::for_bench("2088101122334455", &key("md5_key.txt"), true);
        let v = gbk.verify(&form("md5_gbk.form"), None).unwrap();
        let crate::provider::Fields::Form { encoding, form: f } = v.fields() else {
            panic!("a form")
        };
        assert_eq!(*encoding, encoding_rs::GB18030);
        let (subject, _, bad) = encoding.decode(f.get("subject").unwrap());
        assert!(!bad);
        assert_eq!(subject, "测试商品 中文GBK");
        // The same bytes on a route that says utf-8, or nothing: the MD5
        // matches, the values are not UTF-8 but are GBK, so it is GBK.
        for k in [
            keys(),
            Keys {
                hint: None,
                ..keys()
            },
        ] {
            let v = k.verify(&form("md5_gbk.form"), None).unwrap();
            let crate::provider::Fields::Form { encoding, .. } = v.fields() else {
                panic!("a form")
            };
            assert_eq!(*encoding, encoding_rs::GB18030);
        }
    }

    #[test]
    fn md5_keys_have_one_shape() {
        assert!(is_md5_key(b"7epkcysh7od5kuyu6dlsrcgcbk9dxqw8"));
        assert!(!is_md5_key(b"7epkcysh7od5kuyu6dlsrcgcbk9dxqw"));
        assert!(!is_md5_key(b"7epkcysh7od5kuyu6dlsrcgcbk9dxqw8 "));
        assert!(is_partner_id("2088101122334455"));
        assert!(!is_partner_id("1088101122334455"));
        assert!(!is_partner_id("208810112233445"));
    }

    #[test]
    fn notify_verify_uri_is_the_legacy_query() {
        let n =
            NotifyVerify::new("https://mapi.alipay.com/gateway.do", "2088101122334455").unwrap();
        assert_eq!(
            n.uri("a7f3c1e9b2d84f6e8c0b5a4d3e2f1c0001")
                .unwrap()
                .to_string(),
            "https://mapi.alipay.com/gateway.do?service=notify_verify&partner=2088101122334455&notify_id=a7f3c1e9b2d84f6e8c0b5a4d3e2f1c0001"
        );
        // As received: `%2F` and `/` stay; `&` cannot smuggle a parameter in.
        assert_eq!(
            n.uri("RqPn%2Fvw/x&partner=1").unwrap().query(),
            Some(
                "service=notify_verify&partner=2088101122334455&notify_id=RqPn%2Fvw/x%26partner=1"
            )
        );
        assert!(NotifyVerify::new("https://mapi.alipay.com/gateway.do?service=x", "2088").is_err());
        assert!(NotifyVerify::new("ftp://x/", "2088").is_err());
    }
}
