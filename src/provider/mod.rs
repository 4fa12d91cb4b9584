//! Providers: the sixth step of the flow, signature verification.
//!
//! [`Provider`] is a closed enum (the contract names every platform); each
//! variant holds the route's compiled keys, and [`Provider::verify`] is the
//! one dispatch point. A successful verification yields [`Verified`], whose
//! constructor is private to this module tree: `replay` and `forward` take
//! `&Verified`, so nothing unverified can be forwarded, and grepping
//! `Verified::new` lists every place a signature is declared good.
//!
//! Failures are [`VerifyError`]s: the detail goes to the request's log line,
//! the platform only sees the outcome (`BadSignature` 401 or `Malformed` 400).
//!
//! Also here: RSA public-key loading shared by the RSA providers (PEM, or
//! the bare Base64 key Alipay's console shows; parsed once, at load).

pub mod alipay;
pub mod alipay_cert;
pub mod alipay_md5;
#[doc(hidden)]
pub mod bench;
pub mod identity;
pub mod jdpay;
pub mod unionpay;
pub mod wechat_v2;
pub mod wechat_v3;

use std::path::Path;
use std::time::Duration;

use aws_lc_rs::signature::{
    ParsedPublicKey, RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
    RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
};
use bytes::Bytes;
use http::HeaderMap;
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use encoding_rs::Encoding;

use crate::ack::{Ack, Outcome};
use crate::body::{Form, Format, Payload};
use crate::load::{FileCtx, RuleError};
use crate::secret::shown;

/// The `provider` names of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Alipay,
    AlipayMd5,
    WechatV2,
    WechatV3,
    Unionpay,
    Jdpay,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 6] = [
        ProviderKind::Alipay,
        ProviderKind::AlipayMd5,
        ProviderKind::WechatV2,
        ProviderKind::WechatV3,
        ProviderKind::Unionpay,
        ProviderKind::Jdpay,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Alipay => "alipay",
            ProviderKind::AlipayMd5 => "alipay_md5",
            ProviderKind::WechatV2 => "wechat_v2",
            ProviderKind::WechatV3 => "wechat_v3",
            ProviderKind::Unionpay => "unionpay",
            ProviderKind::Jdpay => "jdpay",
        }
    }

    /// `max_age` when a route leaves it out: 25h (the platforms retry for
    /// about a day), 5m for wechat_v3.
    pub fn default_max_age(self) -> Duration {
        match self {
            ProviderKind::WechatV3 => Duration::from_secs(5 * 60),
            ProviderKind::Alipay
            | ProviderKind::AlipayMd5
            | ProviderKind::WechatV2
            | ProviderKind::Unionpay
            | ProviderKind::Jdpay => Duration::from_secs(25 * 3600),
        }
    }

    /// How far in the future a signed time may be: `max_age` for wechat_v3
    /// (a symmetric window), 5 minutes of clock skew for the others.
    pub fn max_future(self, max_age: Duration) -> Duration {
        match self {
            ProviderKind::WechatV3 => max_age,
            ProviderKind::Alipay
            | ProviderKind::AlipayMd5
            | ProviderKind::WechatV2
            | ProviderKind::Unionpay
            | ProviderKind::Jdpay => Duration::from_secs(5 * 60),
        }
    }

    /// The acknowledgement format the platform expects.
    pub fn ack(self) -> Ack {
        match self {
            ProviderKind::Alipay | ProviderKind::AlipayMd5 | ProviderKind::Jdpay => {
                Ack::SuccessFail
            }
            ProviderKind::Unionpay => Ack::OkFail,
            ProviderKind::WechatV2 => Ack::WechatXml,
            ProviderKind::WechatV3 => Ack::WechatJson,
        }
    }

    /// The body format this provider's notifications use.
    pub fn format(self) -> Format {
        match self {
            ProviderKind::Alipay | ProviderKind::AlipayMd5 | ProviderKind::Unionpay => Format::Form,
            ProviderKind::WechatV2 => Format::Xml,
            ProviderKind::WechatV3 => Format::Json,
            ProviderKind::Jdpay => Format::JdXml,
        }
    }

    /// What `[route.keys]` must hold, for error messages.
    pub fn keys_hint(self) -> &'static str {
        match self {
            ProviderKind::Alipay => {
                "app_id and public_key, or app_id, alipay_cert and alipay_root_cert"
            }
            ProviderKind::AlipayMd5 => "partner and key_file",
            ProviderKind::WechatV2 => "mch_id and api_key_file",
            ProviderKind::WechatV3 => "mch_id, api_v3_key_file and platform_keys",
            ProviderKind::Unionpay => "root_cert and middle_cert, or verify_certs",
            ProviderKind::Jdpay => "merchant, des_key_file and jd_public_key",
        }
    }
}

/// A route's provider with its compiled keys.
#[derive(Debug)]
pub enum Provider {
    Alipay(alipay::Keys),
    WechatV2(wechat_v2::Keys),
    WechatV3(wechat_v3::Keys),
    AlipayMd5(alipay_md5::Keys),
    Unionpay(unionpay::Keys),
    Jdpay(jdpay::Keys),
}

impl Provider {
    pub fn kind(&self) -> ProviderKind {
        match self {
            Provider::Alipay(_) => ProviderKind::Alipay,
            Provider::WechatV2(_) => ProviderKind::WechatV2,
            Provider::WechatV3(_) => ProviderKind::WechatV3,
            Provider::AlipayMd5(_) => ProviderKind::AlipayMd5,
            Provider::Unionpay(_) => ProviderKind::Unionpay,
            Provider::Jdpay(_) => ProviderKind::Jdpay,
        }
    }

    /// The merchant these keys are for, as `[[route.merchant]]` tells them
    /// apart: Alipay `app_id` (and `/seller_id` when bound to one), legacy
    /// Alipay `seller_id`, WeChat `mch_id` (and `/sub_mch_id`), UnionPay
    /// `merId`, JD `merchant`.
    pub fn merchant_id(&self) -> &str {
        match self {
            Provider::Alipay(k) => k.merchant_id(),
            Provider::AlipayMd5(k) => k.merchant_id(),
            Provider::WechatV2(k) => k.merchant_id(),
            Provider::WechatV3(k) => k.merchant_id(),
            Provider::Unionpay(k) => k.merchant_id(),
            Provider::Jdpay(k) => k.merchant_id(),
        }
    }

    /// The merchant part of the replay key of the notifications these keys
    /// verify (for an Alipay ISV app serving other merchants it lacks their
    /// `auth_app_id`): what [`Verified::merchant`] is for them. Used to place
    /// journal records written before replay keys held the merchant.
    pub fn replay_merchant(&self) -> &str {
        match self {
            Provider::Alipay(k) => k.app_id(),
            Provider::AlipayMd5(k) => k.merchant_id(),
            Provider::WechatV2(k) => k.merchant_id(),
            Provider::WechatV3(k) => k.merchant_id(),
            Provider::Unionpay(k) => k.merchant_id(),
            Provider::Jdpay(k) => k.merchant_id(),
        }
    }

    /// Whether these keys are the ones for a notification addressed to
    /// `to`, read before verification (see [`addressee`]): the same
    /// merchant, and the same sub-merchant when the keys are bound to one
    /// (`exact` asks for that binding).
    pub fn serves(&self, to: &Addressee<'_>, exact: bool) -> bool {
        match to {
            Addressee::Serial(serial) => self.knows_serial(serial),
            Addressee::Id { merchant, sub } => {
                let (mine, my_sub) = self.binding();
                mine == *merchant
                    && match my_sub {
                        Some(s) => Some(s) == *sub,
                        None => !exact,
                    }
            }
            Addressee::Unknown => false,
        }
    }

    /// Whether one of these keys has the platform key serial `serial`
    /// (only WeChat Pay v3 names its key in the request).
    fn knows_serial(&self, serial: &str) -> bool {
        match self {
            Provider::WechatV3(k) => k.knows_serial(serial),
            Provider::Alipay(_)
            | Provider::AlipayMd5(_)
            | Provider::WechatV2(_)
            | Provider::Unionpay(_)
            | Provider::Jdpay(_) => false,
        }
    }

    /// Whether this merchant table is bound to one sub-merchant (an
    /// Alipay `seller_id`, a WeChat `sub_mch_id`).
    pub fn bound_to_sub_merchant(&self) -> bool {
        match self {
            Provider::WechatV3(k) => k.sub_mch_id().is_some(),
            _ => self.binding().1.is_some(),
        }
    }

    /// (merchant, sub-merchant this merchant table is bound to).
    fn binding(&self) -> (&str, Option<&str>) {
        match self {
            Provider::Alipay(k) => (k.app_id(), k.seller_id()),
            Provider::WechatV2(k) => (k.mch_id(), k.sub_mch_id()),
            Provider::WechatV3(k) => (k.merchant_id(), None),
            Provider::AlipayMd5(k) => (k.merchant_id(), None),
            Provider::Unionpay(k) => (k.merchant_id(), None),
            Provider::Jdpay(k) => (k.merchant_id(), None),
        }
    }

    /// Compiles `[route.keys]` for `kind`, recording problems in `ctx`.
    pub fn compile(
        kind: ProviderKind,
        keys: Spanned<DeValue<'_>>,
        ctx: &mut FileCtx<'_>,
    ) -> Option<Provider> {
        match kind {
            ProviderKind::Alipay => alipay::Keys::compile(keys, ctx).map(Provider::Alipay),
            ProviderKind::WechatV2 => wechat_v2::Keys::compile(keys, ctx).map(Provider::WechatV2),
            ProviderKind::WechatV3 => wechat_v3::Keys::compile(keys, ctx).map(Provider::WechatV3),
            ProviderKind::AlipayMd5 => {
                alipay_md5::Keys::compile(keys, ctx).map(Provider::AlipayMd5)
            }
            ProviderKind::Unionpay => unionpay::Keys::compile(keys, ctx).map(Provider::Unionpay),
            ProviderKind::Jdpay => jdpay::Keys::compile(keys, ctx).map(Provider::Jdpay),
        }
    }

    /// Verifies a notification at time `now` (Unix seconds: for
    /// certificate validity and refunds without a time of their own;
    /// freshness is checked by the pipeline): `body` as received, `payload`
    /// what `body::parse` made of it. `headers` carry the v3 signature and,
    /// for forms, the Content-Type charset hint.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &Bytes,
        payload: &Payload,
        now: i64,
    ) -> Result<Verified, VerifyError> {
        self.verify_payload(headers, payload, now)
            .map(|v| v.received(body.clone()))
    }

    fn verify_payload(
        &self,
        headers: &HeaderMap,
        payload: &Payload,
        now: i64,
    ) -> Result<Verified, VerifyError> {
        let declared = content_type_charset(headers);
        // `format()` picks the parser, so each provider meets its own
        // payload; any other is refused.
        let wrong = VerifyError::PayloadFormat;
        match self {
            Provider::Alipay(keys) => match payload {
                Payload::Form(form) => keys.verify(form, declared),
                _ => Err(wrong),
            },
            Provider::AlipayMd5(keys) => match payload {
                Payload::Form(form) => keys.verify(form, declared),
                _ => Err(wrong),
            },
            Provider::WechatV2(keys) => match payload {
                Payload::Xml(xml) => keys.verify(xml, now),
                _ => Err(wrong),
            },
            Provider::WechatV3(keys) => match payload {
                Payload::Json(json) => keys.verify(headers, json, now),
                _ => Err(wrong),
            },
            // Certificate validity is judged at the time of verification.
            Provider::Unionpay(keys) => match payload {
                Payload::Form(form) => keys.verify_at(form, declared, now),
                _ => Err(wrong),
            },
            Provider::Jdpay(keys) => match payload {
                Payload::JdXml(envelope) => keys.verify(envelope),
                _ => Err(wrong),
            },
        }
    }

    /// Every certificate behind the route's keys: (`key` label
    /// `<keys field>:<serial>`, notAfter in Unix seconds). Empty for
    /// providers keyed by secrets or bare public keys.
    pub fn certificates(&self) -> Vec<(String, i64)> {
        match self {
            Provider::Alipay(keys) => keys.certificates(),
            Provider::WechatV3(keys) => keys.certificates(),
            Provider::Unionpay(keys) => keys.certificates(),
            Provider::AlipayMd5(_) | Provider::WechatV2(_) | Provider::Jdpay(_) => Vec::new(),
        }
    }

    /// The route's `notify_verify` endpoint (legacy Alipay), when it has
    /// one: `notify_verify::ask` asks it once the event is claimed, before
    /// it is forwarded.
    pub fn notify_verify(&self) -> Option<&alipay_md5::NotifyVerify> {
        match self {
            Provider::AlipayMd5(keys) => keys.notify_verify(),
            Provider::Alipay(_)
            | Provider::WechatV2(_)
            | Provider::WechatV3(_)
            | Provider::Unionpay(_)
            | Provider::Jdpay(_) => None,
        }
    }
}

/// The merchant a notification is addressed to, read before anything is
/// verified: only used to pick the keys to verify with (which check the
/// same fields again) and to label metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressee<'a> {
    /// The signed merchant field, and the sub-merchant one where the
    /// platform has one in the clear (Alipay `seller_id`, WeChat v2
    /// `sub_mch_id`).
    Id {
        merchant: &'a str,
        sub: Option<&'a str>,
    },
    /// WeChat v3 hides `mchid` in the encrypted resource: the platform key
    /// serial picks the merchant instead.
    Serial(&'a str),
    Unknown,
}

/// Reads the merchant a notification is addressed to (see [`Addressee`]).
pub fn addressee<'a>(
    kind: ProviderKind,
    headers: &'a HeaderMap,
    payload: &'a Payload,
) -> Addressee<'a> {
    let form = |field: &str| match payload {
        Payload::Form(f) => f.get_str(field),
        _ => None,
    };
    let xml = |field: &str| match payload {
        Payload::Xml(x) => x.get(field),
        _ => None,
    };
    let (id, sub) = match kind {
        ProviderKind::Alipay => (form("app_id"), form("seller_id")),
        ProviderKind::AlipayMd5 => (form("seller_id"), None),
        ProviderKind::Unionpay => (form("merId"), None),
        ProviderKind::WechatV2 => (xml("mch_id"), xml("sub_mch_id")),
        ProviderKind::Jdpay => match payload {
            Payload::JdXml(e) => (Some(e.merchant.as_str()), None),
            _ => (None, None),
        },
        ProviderKind::WechatV3 => {
            return headers
                .get("wechatpay-serial")
                .and_then(|v| v.to_str().ok())
                .map_or(Addressee::Unknown, Addressee::Serial);
        }
    };
    id.map_or(Addressee::Unknown, |merchant| Addressee::Id {
        merchant,
        sub,
    })
}

/// The order number a notification's body names before its signature is
/// checked (only what it claims): the field [`crate::normalize::order_number`]
/// reads, where it is not encrypted (WeChat v3 and JD Pay encrypt it, a
/// WeChat v2 refund too). For the console's search of refused notifications.
pub fn claimed_order(kind: ProviderKind, payload: &Payload) -> Option<&str> {
    let value = match (kind, payload) {
        (ProviderKind::Unionpay, Payload::Form(f)) => f.get_str("orderId"),
        (ProviderKind::Alipay | ProviderKind::AlipayMd5, Payload::Form(f)) => {
            f.get_str("out_trade_no")
        }
        (ProviderKind::WechatV2, Payload::Xml(x)) => x.get("out_trade_no"),
        _ => None,
    };
    value.filter(|s| !s.is_empty())
}

// === Verified ===

/// A notification whose signature checked out. Only `provider/` builds one.
#[derive(Debug, Clone)]
pub struct Verified {
    kind: ProviderKind,
    /// The merchant the event belongs to, read from signed fields: the
    /// merchant part of its replay key.
    merchant: String,
    event_id: String,
    signed_at: i64,
    fields: Fields,
    /// A signed nonce that must not be seen twice (wechat_v3).
    nonce: Option<String>,
    /// Content the platform encrypted, decrypted (wechat_v3 `resource`,
    /// wechat_v2 refund `req_info`).
    decrypted: Option<Vec<u8>>,
    /// What of the body the signature does not cover (blank values the
    /// platform's rule leaves out of the signed string): never forwarded.
    unsigned: Unsigned,
    /// The body as received.
    body: Bytes,
}

/// Parts of a received body outside its signature.
#[derive(Debug, Clone, Default)]
enum Unsigned {
    #[default]
    Nothing,
    /// Form fields, by name.
    FormFields(Vec<String>),
    /// XML elements, by where they sit in the body.
    XmlElements(Vec<std::ops::Range<usize>>),
}

/// The verified content, in the provider's own shape, for `normalize`.
#[derive(Debug, Clone)]
pub enum Fields {
    /// A form, with the charset its values are encoded in.
    Form {
        form: crate::body::Form,
        encoding: &'static encoding_rs::Encoding,
    },
    /// A WeChat v2 notification; for a refund, also the decrypted `req_info`.
    Xml {
        xml: crate::body::XmlMap,
        refund: Option<crate::body::XmlMap>,
    },
    /// A WeChat v3 notification body and its decrypted `resource`.
    Json {
        body: serde_json::Value,
        resource: serde_json::Value,
    },
    /// JD Pay: the decrypted, signature-checked payload.
    Jdpay(jdpay::Decrypted),
}

impl Verified {
    fn new(
        kind: ProviderKind,
        merchant: String,
        event_id: String,
        signed_at: i64,
        fields: Fields,
    ) -> Self {
        Verified {
            kind,
            merchant,
            event_id,
            signed_at,
            fields,
            nonce: None,
            decrypted: None,
            unsigned: Unsigned::Nothing,
            body: Bytes::new(),
        }
    }

    /// The body the notification arrived with.
    fn received(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }

    /// Marks form fields as outside the signature.
    fn with_unsigned_fields(mut self, names: Vec<String>) -> Self {
        if !names.is_empty() {
            self.unsigned = Unsigned::FormFields(names);
        }
        self
    }

    /// Marks XML elements (their byte ranges in the body) as outside the
    /// signature.
    fn with_unsigned_elements(mut self, mut spans: Vec<std::ops::Range<usize>>) -> Self {
        if !spans.is_empty() {
            spans.sort_by_key(|r| r.start);
            self.unsigned = Unsigned::XmlElements(spans);
        }
        self
    }

    /// The merchant the event belongs to (signed fields, e.g. `app_id`, or
    /// `mch_id/sub_mch_id` for a service provider's sub-merchant).
    pub fn merchant(&self) -> &str {
        &self.merchant
    }

    /// The body the shop gets in `original` mode: the received bytes,
    /// without the form fields or XML elements the signature does not
    /// cover (blank values an attacker can add to a genuine notification at
    /// will). Anything else is left byte for byte.
    pub fn original_body(&self) -> Bytes {
        match &self.unsigned {
            Unsigned::Nothing => self.body.clone(),
            Unsigned::FormFields(names) => {
                Bytes::from(crate::body::strip_form_fields(&self.body, names))
            }
            Unsigned::XmlElements(spans) => {
                Bytes::from(crate::body::strip_ranges(&self.body, spans))
            }
        }
    }

    fn with_nonce(mut self, nonce: String) -> Self {
        self.nonce = Some(nonce);
        self
    }

    fn with_decrypted(mut self, decrypted: Vec<u8>) -> Self {
        self.decrypted = Some(decrypted);
        self
    }

    /// The signed nonce the replay store must not have seen (wechat_v3).
    pub fn nonce(&self) -> Option<&str> {
        self.nonce.as_deref()
    }

    /// What the platform encrypted, decrypted: the v3 `resource` JSON, the
    /// v2 refund `req_info` XML, JD Pay's payload XML. Forwarded in
    /// `original` mode as `X-Callgate-Resource`.
    pub fn decrypted(&self) -> Option<&[u8]> {
        match &self.fields {
            Fields::Jdpay(d) => Some(d.xml()),
            _ => self.decrypted.as_deref(),
        }
    }

    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    /// The id the replay store dedupes on.
    pub fn event_id(&self) -> &str {
        &self.event_id
    }

    /// The notification's own signed time, Unix seconds.
    pub fn signed_at(&self) -> i64 {
        self.signed_at
    }

    pub fn fields(&self) -> &Fields {
        &self.fields
    }
}

/// Why a notification did not verify. Never carries key material or a full
/// signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no signature")]
    MissingSignature,
    #[error("signature is not valid Base64")]
    SignatureEncoding,
    #[error("signature does not verify with the route's key")]
    SignatureMismatch,
    #[error("no merchant of this route matches the notification ({0})")]
    UnknownMerchant(String),
    /// WeChat Pay's deliberate probe (`WECHATPAY/SIGNTEST/...`): refused like
    /// any bad signature, labelled apart so it never pages anyone.
    #[error("WeChat Pay signature probe (WECHATPAY/SIGNTEST/), refused as it should be")]
    ProbeSignature,
    #[error("sign_type `{0}` is not supported")]
    UnsupportedSignType(String),
    #[error(
        "sign_type `{0}` is refused: this alipay_md5 route verifies MD5 partner-key signatures only (legacy RSA/DSA notifications are not supported)"
    )]
    LegacySignType(String),
    #[error("{field} `{got}` is not this route's")]
    MerchantMismatch { field: &'static str, got: String },
    #[error("required field `{0}` is missing or empty")]
    MissingField(&'static str),
    #[error(
        "field `{field}` is valid neither in the charset the notification names ({named}) nor in {other}"
    )]
    Undecodable {
        field: String,
        named: &'static str,
        other: &'static str,
    },
    #[error(
        "field `{field}` is valid text only in {other}, not in the charset the notification names ({named}), and no field the signature covers is: a field added outside the signature cannot decide the charset"
    )]
    UnsignedCharset {
        field: String,
        named: &'static str,
        other: &'static str,
    },
    #[error("{field} {problem} (`{value}`); an event id field must be {syntax}")]
    BadEventId {
        field: &'static str,
        problem: &'static str,
        syntax: &'static str,
        value: String,
    },
    #[error("{field} {problem} (`{value}`); a merchant id must be {syntax}")]
    BadMerchantId {
        field: &'static str,
        problem: &'static str,
        syntax: &'static str,
        value: String,
    },
    #[error(
        "field `{field}` holds {holds}: an identity field could have been moved without changing the signed string"
    )]
    Ambiguous { field: String, holds: String },
    #[error("sign_type `{got}` is not one this route accepts ({allowed}; keys.sign_types)")]
    SignTypeNotAllowed { got: String, allowed: String },
    #[error(
        "{field} `{got}`: a notification on behalf of another merchant, and this route is bound to none ({fix})"
    )]
    MerchantUnbound {
        field: &'static str,
        got: String,
        fix: &'static str,
    },
    #[error(
        "a combined payment (combine_mchid) notification: not supported, give combined payments their own notify URL outside callgate"
    )]
    CombinedPayment,
    #[error("{field} `{value}` is not a time like {format}")]
    BadTime {
        field: &'static str,
        value: String,
        format: &'static str,
    },
    #[error("the platform reports a failure (return_code FAIL: `{message}`); nothing to deliver")]
    PlatformFailure { message: String },
    #[error("{field} `{value}` is not a value this provider sends")]
    BadValue { field: &'static str, value: String },
    #[error("header `{0}` is missing or empty")]
    MissingHeader(&'static str),
    #[error("header `{name}` is {reason}")]
    BadHeader {
        name: &'static str,
        reason: &'static str,
    },
    #[error("no platform key has serial `{serial}`")]
    KeySerialUnknown { serial: String },
    #[error("platform certificate `{serial}` is outside its validity period")]
    CertificateNotValid { serial: String },
    #[error("resource algorithm `{0}` is not supported")]
    UnsupportedAlgorithm(String),
    #[error("{0}")]
    Content(&'static str),
    #[error("the body is not in this provider's format")]
    PayloadFormat,
    #[error("signature scheme {0} is not supported")]
    UnsupportedScheme(String),
    #[error("no verification certificate with certId `{0}` in keys.verify_certs")]
    UnknownCertId(String),
    #[error("signing certificate refused: {0}")]
    CertRejected(String),
    #[error("the encrypted payload does not decrypt with the route's key: {0}")]
    Decrypt(&'static str),
    #[error("field `{field}`: {reason}")]
    BadField { field: &'static str, reason: String },
}

impl VerifyError {
    /// The `reason` label of `callgate_rejections_total`: a bounded set that
    /// says what failed without saying which value.
    pub fn label(&self) -> &'static str {
        match self {
            VerifyError::MissingSignature => "signature_missing",
            VerifyError::SignatureEncoding => "signature_encoding",
            VerifyError::SignatureMismatch => "bad_digest",
            VerifyError::ProbeSignature => "probe_signature",
            VerifyError::UnsupportedSignType(_) | VerifyError::LegacySignType(_) => {
                "sign_type_unsupported"
            }
            VerifyError::MerchantMismatch { .. } => "merchant_mismatch",
            VerifyError::UnknownMerchant(_) => "unknown_merchant",
            VerifyError::MissingField(_) => "missing_field",
            VerifyError::Undecodable { .. } => "charset_undecodable",
            VerifyError::UnsignedCharset { .. } => "charset_unsigned",
            VerifyError::BadEventId { .. } => "bad_event_id",
            VerifyError::BadMerchantId { .. } => "bad_merchant_id",
            VerifyError::Ambiguous { .. } => "ambiguous_fields",
            VerifyError::SignTypeNotAllowed { .. } => "sign_type_not_allowed",
            VerifyError::MerchantUnbound { .. } => "merchant_unbound",
            VerifyError::CombinedPayment => "combined_payment_unsupported",
            VerifyError::BadTime { .. } => "bad_time",
            VerifyError::PlatformFailure { .. } => "platform_failure",
            VerifyError::BadValue { .. }
            | VerifyError::BadField { .. }
            | VerifyError::Content(_) => "bad_value",
            VerifyError::MissingHeader(_) | VerifyError::BadHeader { .. } => "bad_header",
            VerifyError::KeySerialUnknown { .. } => "unknown_serial",
            VerifyError::CertificateNotValid { .. } => "cert_expired",
            VerifyError::UnsupportedAlgorithm(_) | VerifyError::UnsupportedScheme(_) => {
                "scheme_unsupported"
            }
            VerifyError::PayloadFormat => "bad_value",
            VerifyError::UnknownCertId(_) => "unknown_cert_id",
            VerifyError::CertRejected(_) => "cert_rejected",
            VerifyError::Decrypt(_) => "decrypt_failed",
        }
    }

    pub fn outcome(&self) -> Outcome {
        match self {
            VerifyError::MissingSignature
            | VerifyError::SignatureEncoding
            | VerifyError::SignatureMismatch
            | VerifyError::ProbeSignature
            | VerifyError::UnknownMerchant(_)
            | VerifyError::UnsupportedSignType(_)
            | VerifyError::MerchantMismatch { .. }
            | VerifyError::LegacySignType(_)
            | VerifyError::MissingHeader(_)
            | VerifyError::BadHeader { .. }
            | VerifyError::KeySerialUnknown { .. }
            | VerifyError::CertificateNotValid { .. }
            | VerifyError::UnsupportedAlgorithm(_)
            | VerifyError::UnsupportedScheme(_)
            | VerifyError::UnknownCertId(_)
            | VerifyError::CertRejected(_)
            | VerifyError::SignTypeNotAllowed { .. }
            | VerifyError::MerchantUnbound { .. }
            | VerifyError::UnsignedCharset { .. }
            | VerifyError::Decrypt(_) => Outcome::BadSignature,
            VerifyError::MissingField(_)
            | VerifyError::Undecodable { .. }
            | VerifyError::BadEventId { .. }
            | VerifyError::BadMerchantId { .. }
            | VerifyError::Ambiguous { .. }
            | VerifyError::CombinedPayment
            | VerifyError::BadTime { .. }
            | VerifyError::BadValue { .. }
            | VerifyError::Content(_)
            | VerifyError::PayloadFormat => Outcome::Malformed,
            VerifyError::PlatformFailure { .. } => Outcome::Ignored,
            VerifyError::BadField { .. } => Outcome::Malformed,
        }
    }
}

// === what several providers check ===

/// A form's Base64 signature (Alipay's `sign`, UnionPay's `signature`) as
/// the official SDKs decode it: standard alphabet with its padding, ASCII
/// whitespace inside ignored (Alipay's Java SDK drops every character
/// outside the alphabet, UnionPay's uses commons-codec, the PHP SDKs
/// `base64_decode`, all of which skip line breaks, so a signature wrapped
/// in lines verifies there). The signature's bytes are not part of what is
/// signed, so this cannot change the event; nothing else outside the
/// alphabet is accepted.
pub(crate) fn signature_base64(sign: &[u8]) -> Result<Vec<u8>, VerifyError> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let decoded = if sign.iter().any(u8::is_ascii_whitespace) {
        let compact: Vec<u8> = sign
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        engine.decode(compact)
    } else {
        engine.decode(sign)
    };
    decoded.map_err(|_| VerifyError::SignatureEncoding)
}

/// The string most platforms sign: every field of `form` but the `skip`
/// ones, sorted by name, as `key=value` joined by `&`, values exactly as
/// received. A field `blank` calls blank is left out unless `keep_blank`;
/// either way it is named in the second result (when left out, it is
/// outside the signature).
pub(crate) fn sorted_join(
    form: &Form,
    skip: &[&str],
    blank: impl Fn(&[u8]) -> bool,
    keep_blank: bool,
) -> (Vec<u8>, Vec<String>) {
    let mut out = Vec::with_capacity(1024);
    let mut blanks = Vec::new();
    for (key, value) in form.iter() {
        if skip.contains(&key) {
            continue;
        }
        if blank(value) {
            blanks.push(key.to_owned());
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
    (out, blanks)
}

/// `body` (a form) with `insert` (already form-encoded) put into field
/// `name`'s value after every `every` decoded characters, never inside a
/// `%XX` escape: a signature wrapped in lines, as some senders wrap Base64.
#[cfg(test)]
pub(crate) fn wrap_form_value(body: &[u8], name: &str, insert: &str, every: usize) -> Vec<u8> {
    let text = String::from_utf8(body.to_vec()).unwrap();
    let prefix = format!("{name}=");
    let parts: Vec<String> = text
        .split('&')
        .map(|part| {
            let Some(value) = part.strip_prefix(&prefix) else {
                return part.to_owned();
            };
            let mut out = prefix.clone();
            let (mut i, mut decoded) = (0, 0);
            let bytes = value.as_bytes();
            while i < bytes.len() {
                let len = if bytes[i] == b'%' { 3 } else { 1 };
                out.push_str(&value[i..i + len]);
                i += len;
                decoded += 1;
                if decoded % every == 0 && i < bytes.len() {
                    out.push_str(insert);
                }
            }
            out
        })
        .collect();
    parts.join("&").into_bytes()
}

/// A merchant field that must be the route's own: present, and exactly
/// `ours`.
pub(crate) fn expect_merchant(
    field: &'static str,
    got: Option<&[u8]>,
    ours: &str,
) -> Result<(), VerifyError> {
    match got {
        Some(id) if id == ours.as_bytes() => Ok(()),
        Some(id) => Err(VerifyError::MerchantMismatch {
            field,
            got: shown(id),
        }),
        None => Err(VerifyError::MissingField(field)),
    }
}

/// A service provider's notification for one of its sub-merchants: the
/// sub-merchant `field` names (`got`) must be the one the keys are bound
/// to, or, keys bound to none, be accepted explicitly (`any`). Returns the
/// merchant part of the replay key: `mch`, or `mch/sub`.
pub(crate) fn bind_sub_merchant(
    field: &'static str,
    mch: &str,
    got: Option<&str>,
    bound: Option<&str>,
    any: bool,
) -> Result<String, VerifyError> {
    match (bound, got) {
        (Some(want), Some(got)) if got == want => {}
        (Some(_), Some(got)) => {
            return Err(VerifyError::MerchantMismatch {
                field,
                got: got.to_owned(),
            });
        }
        (Some(_), None) => return Err(VerifyError::MissingField(field)),
        (None, Some(got)) if !any => {
            return Err(VerifyError::MerchantUnbound {
                field,
                got: got.to_owned(),
                fix: "bind the sub-merchant with keys.sub_mch_id (one [[route.merchant]] table each), or set keys.accept_any_sub_merchant = true",
            });
        }
        (None, _) => {}
    }
    Ok(match got {
        Some(sub) => format!("{mch}/{sub}"),
        None => mch.to_owned(),
    })
}

// === RSA public keys ===

/// An RSA public key parsed once, ready for SHA-1 and SHA-256 PKCS#1 v1.5
/// verification.
pub struct RsaKey {
    sha1: ParsedPublicKey,
    sha256: ParsedPublicKey,
    bits: usize,
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaKey({} bits)", self.bits)
    }
}

/// PKCS#1 v1.5 digest choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaDigest {
    Sha1,
    Sha256,
}

impl RsaKey {
    /// Parses DER (SubjectPublicKeyInfo or PKCS#1 RSAPublicKey).
    ///
    /// The size is read from the key's own modulus: aws-lc-rs's
    /// `PublicEncryptingKey`, which reports it, refuses keys under 2048
    /// bits, and Alipay's older RSA (SHA1) public keys are 1024.
    pub fn from_der(der: &[u8]) -> Result<RsaKey, String> {
        use aws_lc_rs::encoding::AsDer;
        let sha256 = ParsedPublicKey::new(&RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, der)
            .map_err(|e| format!("not an RSA public key: {e}"))?;
        // SubjectPublicKeyInfo as given (a certificate's key, on UnionPay's
        // request path), else re-encoded as one (a PKCS#1 key).
        let bits = modulus_bits(der)
            .or_else(|| {
                let spki = sha256.as_der().ok()?;
                modulus_bits(spki.as_ref())
            })
            .ok_or_else(|| "not an RSA public key".to_owned())?;
        if !(1024..=8192).contains(&bits) {
            return Err(format!(
                "RSA key of {bits} bits; 1024 to 8192 are supported"
            ));
        }
        let sha1 = ParsedPublicKey::new(&RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY, der)
            .map_err(|e| format!("not an RSA public key: {e}"))?;
        Ok(RsaKey { sha1, sha256, bits })
    }

    /// Reads a public key file: PEM `PUBLIC KEY`, or the bare Base64 of the
    /// DER key on one or more lines (how Alipay's console shows it).
    pub fn from_file(path: &Path) -> Result<RsaKey, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read: {}", crate::load::io_reason(&e)))?;
        Self::from_der(&public_key_der(&bytes)?)
    }

    /// The key's size (shown by `Debug`; nothing decides on it since both
    /// Alipay signature types are accepted by default).
    #[cfg(test)]
    fn bits(&self) -> usize {
        self.bits
    }

    /// PKCS#1 v1.5 verification of `signature` over `message`.
    pub fn verify(&self, digest: RsaDigest, message: &[u8], signature: &[u8]) -> bool {
        let key = match digest {
            RsaDigest::Sha1 => &self.sha1,
            RsaDigest::Sha256 => &self.sha256,
        };
        key.verify_sig(message, signature).is_ok()
    }
}

/// The size in bits of the modulus of an RSA SubjectPublicKeyInfo, or
/// `None` when it is not one.
fn modulus_bits(spki: &[u8]) -> Option<usize> {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).ok()?;
    let PublicKey::RSA(rsa) = info.parsed().ok()? else {
        return None;
    };
    // DER integers carry a leading zero byte when the top bit is set.
    let start = rsa.modulus.iter().position(|&b| b != 0)?;
    let n = &rsa.modulus[start..];
    Some(n.len() * 8 - n[0].leading_zeros() as usize)
}

/// Extracts public-key DER from a PEM file or bare Base64 text.
pub(crate) fn public_key_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::{PemObject, SectionKind};

    let text = std::str::from_utf8(bytes)
        .map_err(|_| "not a PEM public key (the file is binary)".to_owned())?;
    if text.contains("-----BEGIN") {
        if text.contains("-----BEGIN RSA PUBLIC KEY-----") {
            return Err("a PKCS#1 `RSA PUBLIC KEY` block; convert it with \
                 `openssl rsa -RSAPublicKey_in -in FILE -pubout`"
                .to_owned());
        }
        if text.contains("PRIVATE KEY-----") {
            return Err("this is a private key; give the public key here".to_owned());
        }
        for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
            match item {
                Ok((SectionKind::PublicKey, der)) => return Ok(der),
                Ok(_) => continue,
                Err(e) => return Err(crate::load::pem_reason(&e)),
            }
        }
        return Err("no -----BEGIN PUBLIC KEY----- block in the file".to_owned());
    }
    let compact: String = text.split_whitespace().collect();
    if compact.is_empty() {
        return Err("the file is empty".to_owned());
    }
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| "not a PEM public key (expected -----BEGIN PUBLIC KEY-----, or the bare Base64 key Alipay's console shows)".to_owned())
}

/// Loads an RSA public key named by a keys field, recording a problem at the
/// field's line on failure.
pub(crate) fn load_rsa_key(
    ctx: &mut FileCtx<'_>,
    field: &str,
    value: &Spanned<String>,
) -> Option<RsaKey> {
    match RsaKey::from_file(&ctx.resolve(value.get_ref())) {
        Ok(k) => Some(k),
        Err(reason) => {
            ctx.error(
                value.span(),
                RuleError::KeyFile {
                    field: field.to_owned(),
                    file: value.get_ref().clone(),
                    reason,
                },
            );
            None
        }
    }
}

// === charset ===

/// The encoding a charset label names: UTF-8, or GBK and its relatives
/// (decoded as GB18030, their superset). `None` for anything else, which
/// is then no hint at all.
pub(crate) fn charset_label(label: &[u8]) -> Option<&'static Encoding> {
    match label.trim_ascii().to_ascii_lowercase().as_slice() {
        b"utf-8" | b"utf8" => Some(encoding_rs::UTF_8),
        b"gbk" | b"gb2312" | b"gb18030" | b"cp936" => Some(encoding_rs::GB18030),
        _ => None,
    }
}

/// The charset a request's Content-Type names (`...; charset=GBK`).
fn content_type_charset(headers: &HeaderMap) -> Option<&'static Encoding> {
    let value = headers.get(http::header::CONTENT_TYPE)?.as_bytes();
    value.split(|&b| b == b';').skip(1).find_map(|param| {
        let eq = param.iter().position(|&b| b == b'=')?;
        let (name, label) = (&param[..eq], param[eq + 1..].trim_ascii());
        let label = label
            .strip_prefix(b"\"")
            .and_then(|l| l.strip_suffix(b"\""))
            .unwrap_or(label);
        if name.trim_ascii().eq_ignore_ascii_case(b"charset") {
            charset_label(label)
        } else {
            None
        }
    })
}

fn charset_name(encoding: &'static Encoding) -> &'static str {
    if encoding == encoding_rs::UTF_8 {
        "UTF-8"
    } else {
        "GBK"
    }
}

/// The charset a form's values are in, as [`form_encoding`] found it.
#[derive(Debug)]
pub(crate) struct FormCharset {
    /// The charset the values are read in.
    pub(crate) encoding: &'static Encoding,
    /// The charset the hints named, when `encoding` is the other one.
    named: &'static Encoding,
    /// The fields not valid text in `named`: what made `encoding` the other
    /// one (empty when it is the named one).
    fallback_for: Vec<String>,
}

impl FormCharset {
    /// `encoding`, once the signature is checked: a fallback to the other
    /// charset must rest on a field the signature covers. `outside` names
    /// the fields it never covers (the signature itself), `unsigned` those
    /// it left out (blank values). A field added outside the signature
    /// whose bytes are valid only in the other charset (Alipay: `%A1%A1`,
    /// U+3000 in GBK, Java whitespace, so blank there and unsigned) would
    /// otherwise switch a UTF-8 notification to GBK: accepted and dropped,
    /// where the SDK, reading the charset the notification names, signs it
    /// and refuses; and every `normalized` value would be read in the wrong
    /// charset. When a signed field does need the other charset (GBK sent
    /// under `charset=utf-8`, PROVIDERS.md §7 #4), that charset is the
    /// notification's, and unsigned fields are left out as always.
    pub(crate) fn covered(
        &self,
        outside: &[&str],
        unsigned: &[String],
    ) -> Result<&'static Encoding, VerifyError> {
        let signed = |f: &&String| !outside.contains(&f.as_str()) && !unsigned.contains(f);
        match self.fallback_for.first() {
            Some(field) if !self.fallback_for.iter().any(|f| signed(&f)) => {
                Err(VerifyError::UnsignedCharset {
                    field: field.clone(),
                    named: charset_name(self.named),
                    other: charset_name(self.encoding),
                })
            }
            _ => Ok(self.encoding),
        }
    }
}

/// The charset a form's values are in. The signature covers the raw bytes
/// whatever it is, so a notification that verifies is never refused for
/// it: the notification's own field (`charset`, `_input_charset`,
/// `encoding`: the first of `own` present) is believed first, then the
/// Content-Type's charset, then the route's `hint`, else UTF-8; if some
/// value is not valid text in that charset, the other one (GBK or UTF-8)
/// is tried. Only a form valid in neither is refused. The caller then
/// checks that a signed field is behind a fallback
/// ([`FormCharset::covered`]).
pub(crate) fn form_encoding(
    form: &Form,
    own: &[&str],
    content_type: Option<&'static Encoding>,
    hint: Option<&'static Encoding>,
) -> Result<FormCharset, VerifyError> {
    let named = own
        .iter()
        .find_map(|f| form.get(f).and_then(charset_label))
        .or(content_type)
        .or(hint)
        .unwrap_or(encoding_rs::UTF_8);
    let other = if named == encoding_rs::UTF_8 {
        encoding_rs::GB18030
    } else {
        encoding_rs::UTF_8
    };
    let mut fallback_for: Vec<String> = undecodable(form, named).map(str::to_owned).collect();
    if fallback_for.is_empty() {
        return Ok(FormCharset {
            encoding: named,
            named,
            fallback_for,
        });
    }
    if undecodable(form, other).next().is_none() {
        return Ok(FormCharset {
            encoding: other,
            named,
            fallback_for,
        });
    }
    Err(VerifyError::Undecodable {
        field: fallback_for.swap_remove(0),
        named: charset_name(named),
        other: charset_name(other),
    })
}

/// The fields whose value is not valid text in `encoding`.
fn undecodable<'a>(
    form: &'a Form,
    encoding: &'static Encoding,
) -> impl Iterator<Item = &'a str> + 'a {
    form.iter()
        .filter(move |(_, value)| {
            !value.is_ascii()
                && if encoding == encoding_rs::UTF_8 {
                    std::str::from_utf8(value).is_err()
                } else {
                    encoding
                        .decode_without_bom_handling_and_without_replacement(value)
                        .is_none()
                }
        })
        .map(|(key, _)| key)
}

// === Java whitespace ===

/// `java.lang.Character.isWhitespace`, which the Alipay Java SDK's
/// `StringUtils.isEmpty` applies to every char of a value.
pub(crate) fn java_whitespace(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r' | '\u{1C}'..='\u{1F}' | ' '
            | '\u{1680}'
            | '\u{2000}'..='\u{2006}'
            | '\u{2008}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_whitespace_set() {
        for c in [
            '\t', '\n', '\r', ' ', '\u{1F}', '\u{3000}', '\u{2028}', '\u{2000}',
        ] {
            assert!(java_whitespace(c), "{c:?}");
        }
        // Non-breaking spaces and NEL are not whitespace in Java.
        for c in ['\u{A0}', '\u{2007}', '\u{202F}', '\u{85}', 'a', '0'] {
            assert!(!java_whitespace(c), "{c:?}");
        }
    }

    #[test]
    fn charsets_are_hints_checked_against_the_bytes() {
        let form = |b: &[u8]| Form::parse(b).unwrap();
        let ct = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(v),
            );
            content_type_charset(&h)
        };
        assert_eq!(
            ct("application/x-www-form-urlencoded; charset=GBK"),
            Some(encoding_rs::GB18030)
        );
        assert_eq!(
            ct("application/x-www-form-urlencoded;charset=\"utf-8\""),
            Some(encoding_rs::UTF_8)
        );
        assert_eq!(
            ct("application/x-www-form-urlencoded; Charset = utf-8"),
            Some(encoding_rs::UTF_8)
        );
        assert_eq!(ct("application/x-www-form-urlencoded; charset=big5"), None);
        assert_eq!(ct("application/x-www-form-urlencoded"), None);

        // 测试 in GBK; 中 in UTF-8 (E4 B8 AD: not GBK, AD has no partner).
        let gbk = form(b"subject=%B2%E2%CA%D4&charset=utf-8");
        let utf8 = form(b"subject=%E4%B8%AD&charset=GBK");
        let gb = encoding_rs::GB18030;
        let u = encoding_rs::UTF_8;
        // The notification says utf-8, the bytes are GBK: GBK.
        assert_eq!(
            form_encoding(&gbk, &["charset"], None, None)
                .unwrap()
                .encoding,
            gb
        );
        // The notification says GBK, the bytes are UTF-8 and not GBK: UTF-8.
        assert_eq!(
            form_encoding(&utf8, &["charset"], None, None)
                .unwrap()
                .encoding,
            u
        );
        // Nothing said: UTF-8 unless the bytes are not.
        let plain = form(b"subject=%B2%E2%CA%D4");
        assert_eq!(
            form_encoding(&plain, &["charset"], None, None)
                .unwrap()
                .encoding,
            gb
        );
        assert_eq!(
            form_encoding(&plain, &["charset"], Some(u), Some(u))
                .unwrap()
                .encoding,
            gb
        );
        // Bytes valid in both follow the first hint: field, Content-Type, route.
        let both = form(b"subject=%C3%A9");
        assert_eq!(
            form_encoding(&both, &["charset"], Some(gb), Some(u))
                .unwrap()
                .encoding,
            gb
        );
        assert_eq!(
            form_encoding(&both, &["charset"], None, Some(gb))
                .unwrap()
                .encoding,
            gb
        );
        assert_eq!(
            form_encoding(&both, &["charset"], None, None)
                .unwrap()
                .encoding,
            u
        );
        // A fallback must rest on a signed field: `zz` (U+3000 in GBK, not
        // UTF-8) is what makes this form GBK; unsigned, it cannot.
        let added = form(b"subject=%E6%B5%8B%E8%AF%95&charset=utf-8&zz=%A1%A1");
        let found = form_encoding(&added, &["charset"], None, None).unwrap();
        assert_eq!(found.encoding, gb);
        assert_eq!(found.covered(&["sign"], &[]).unwrap(), gb);
        assert!(matches!(
            found.covered(&["sign"], &["zz".to_owned()]),
            Err(VerifyError::UnsignedCharset { ref field, .. }) if field == "zz"
        ));
        assert!(found.covered(&["zz"], &[]).is_err());
        // A signed GBK field decides it; an unsigned one beside it is
        // simply outside the signature.
        let genuine = form(b"subject=%B2%E2%CA%D4&charset=utf-8&zz=%A1%A1");
        let found = form_encoding(&genuine, &["charset"], None, None).unwrap();
        assert_eq!(found.covered(&["sign"], &["zz".to_owned()]).unwrap(), gb);
        assert!(
            found
                .covered(&["sign"], &["zz".to_owned(), "subject".to_owned()])
                .is_err()
        );
        // Without a fallback, unsigned fields do not matter.
        let named = form_encoding(&both, &["charset"], None, None).unwrap();
        assert_eq!(
            named.covered(&["sign"], &["subject".to_owned()]).unwrap(),
            u
        );
        // Valid in neither.
        let neither = form(b"subject=%FF%FF%FF");
        assert!(matches!(
            form_encoding(&neither, &["charset"], None, None),
            Err(VerifyError::Undecodable { .. })
        ));
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alipay");
        let pem = RsaKey::from_file(&fixtures.join("alipay_public.pem")).unwrap();
        assert_eq!(pem.bits(), 2048);
        let bare = RsaKey::from_file(&fixtures.join("alipay_public.b64")).unwrap();
        assert_eq!(bare.bits(), 2048);
        // Alipay's older RSA (SHA1) keys are 1024 bits: the partner key its
        // legacy demos publish, and one made by openssl.
        let partner = RsaKey::from_file(&fixtures.join("alipay_partner_rsa1024_public.b64"));
        assert_eq!(partner.unwrap().bits(), 1024);
        let small = RsaKey::from_file(&fixtures.join("rsa1024_public.pem")).unwrap();
        assert_eq!(small.bits(), 1024);
        let err = RsaKey::from_file(&fixtures.join("rsa512_public.pem")).unwrap_err();
        assert!(err.contains("512 bits; 1024 to 8192"), "{err}");
        let err = RsaKey::from_file(&fixtures.join("alipay_private.pem")).unwrap_err();
        assert!(err.contains("private key"), "{err}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello world").unwrap();
        assert!(
            RsaKey::from_file(&junk)
                .unwrap_err()
                .contains("not a PEM public key")
        );
        assert!(
            RsaKey::from_file(&dir.path().join("nope"))
                .unwrap_err()
                .contains("cannot read")
        );
    }
}

/// What `normalize` makes of shapes no fixture has (its inputs are built
/// here, where a `Verified` can be).
#[cfg(test)]
mod normalized_edges {
    use super::*;

    fn normalized(kind: ProviderKind, fields: Fields) -> serde_json::Value {
        let v = Verified::new(kind, "m".into(), "e".into(), 1_764_900_000, fields);
        serde_json::from_slice(&crate::normalize::normalize(&v)).unwrap()
    }

    #[test]
    fn a_negative_v3_amount_is_no_amount() {
        let resource = serde_json::json!({
            "out_trade_no": "CG1", "transaction_id": "4200001", "trade_state": "SUCCESS",
            "amount": {"total": -5, "currency": "CNY"}
        });
        let body = serde_json::json!({"create_time": "2026-12-05T10:00:00+08:00"});
        let v = normalized(ProviderKind::WechatV3, Fields::Json { body, resource });
        assert!(v["amount_fen"].is_null(), "{v}");
        assert_eq!(v["status"], "paid");
    }

    #[test]
    fn a_legacy_alipay_forex_trade_keeps_its_currency() {
        let form = |body: &[u8]| Fields::Form {
            form: crate::body::Form::parse(body).unwrap(),
            encoding: encoding_rs::UTF_8,
        };
        let usd = normalized(
            ProviderKind::AlipayMd5,
            form(b"trade_status=TRADE_FINISHED&total_fee=10.00&currency=USD&out_trade_no=F1"),
        );
        assert_eq!(
            (&usd["currency"], &usd["amount_fen"]),
            (&"USD".into(), &1000.into())
        );
        let cny = normalized(
            ProviderKind::AlipayMd5,
            form(b"trade_status=TRADE_FINISHED&total_fee=10.00&out_trade_no=F2"),
        );
        assert_eq!(cny["currency"], "CNY");
    }
}
