//! Normalization: for routes with `forward = "normalized"`, turns a
//! [`Verified`] notification into one JSON shape whatever the platform:
//!
//! ```json
//! {"provider": "alipay", "event_id": "...", "out_trade_no": "...",
//!  "provider_trade_no": "...", "amount_fen": 8888, "currency": "CNY",
//!  "status": "paid", "occurred_at": "2026-11-22T10:00:00+08:00",
//!  "fields": {"every verified field": "decoded to UTF-8"}}
//! ```
//!
//! `status` is one of `paid`, `refunded`, `closed`, `pending`.
//! `amount_fen` is the paid amount in fen, or the refunded amount for a
//! refund; `null` when the platform's amount field is missing or is not a
//! decimal. `occurred_at` is the time of the event itself (payment, refund,
//! close), falling back to the notification time. Only verified fields
//! appear; the signature itself is left out.

use chrono::{FixedOffset, NaiveDateTime, TimeZone};
use serde_json::{Map, Value, json};

use crate::body::XmlMap;
use crate::provider::{Fields, ProviderKind, Verified};

/// The normalized JSON body for `verified`.
pub fn normalize(verified: &Verified) -> Vec<u8> {
    let fields = verified.fields();
    // Each provider verifies into its own shape of fields; another shape
    // (never built) gives the bare event.
    let value = match verified.kind() {
        ProviderKind::Alipay => match fields {
            Fields::Form { form, encoding } => {
                alipay(verified, form_fields(form, encoding, "sign"))
            }
            _ => bare(verified),
        },
        ProviderKind::AlipayMd5 => match fields {
            Fields::Form { form, encoding } => {
                alipay_md5(verified, form_fields(form, encoding, "sign"))
            }
            _ => bare(verified),
        },
        ProviderKind::Unionpay => match fields {
            Fields::Form { form, encoding } => {
                unionpay(verified, form_fields(form, encoding, "signature"))
            }
            _ => bare(verified),
        },
        ProviderKind::Jdpay => match fields {
            Fields::Jdpay(decrypted) => jdpay(verified, decrypted),
            _ => bare(verified),
        },
        ProviderKind::WechatV2 => match fields {
            Fields::Xml { xml, refund } => wechat_v2(verified, xml, refund.as_ref()),
            _ => bare(verified),
        },
        ProviderKind::WechatV3 => match fields {
            Fields::Json { body, resource } => wechat_v3(verified, body, resource),
            _ => bare(verified),
        },
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// The merchant's own order number of a verified notification, the
/// `out_trade_no` of [`normalize`]: Alipay `out_trade_no`, WeChat
/// `out_trade_no` (of the decrypted resource or refund), UnionPay
/// `orderId`, JD Pay `tradeNum` (`oTradeNum` for a refund). For the
/// console's search; not a secret, and no buyer's id.
pub fn order_number(verified: &Verified) -> Option<String> {
    let nonblank = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
    match verified.fields() {
        Fields::Form { form, encoding } => {
            let field = match verified.kind() {
                ProviderKind::Unionpay => "orderId",
                _ => "out_trade_no",
            };
            let raw = form.get(field)?;
            let (text, _) = encoding.decode_without_bom_handling(raw);
            nonblank(Some(&text))
        }
        Fields::Xml { xml, refund } => nonblank(
            refund
                .as_ref()
                .and_then(|r| r.get("out_trade_no"))
                .or_else(|| xml.get("out_trade_no")),
        ),
        Fields::Json { resource, .. } => {
            nonblank(resource.get("out_trade_no").and_then(Value::as_str))
        }
        Fields::Jdpay(d) => {
            let root = d.root();
            nonblank(
                root.leaf("oTradeNum")
                    .filter(|s| !s.is_empty())
                    .or_else(|| root.leaf("tradeNum")),
            )
        }
    }
}

/// Every field of a form but `skip`, decoded to UTF-8 from `encoding`.
fn form_fields(
    form: &crate::body::Form,
    encoding: &'static encoding_rs::Encoding,
    skip: &str,
) -> Map<String, Value> {
    let mut fields = Map::new();
    for (k, v) in form.iter() {
        if k != skip {
            let (text, _) = encoding.decode_without_bom_handling(v);
            fields.insert(k.to_owned(), Value::String(text.into_owned()));
        }
    }
    fields
}

fn alipay(verified: &Verified, fields: Map<String, Value>) -> Value {
    let get = |k: &str| {
        fields
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let refunded = get("refund_fee")
        .and_then(yuan_to_fen)
        .is_some_and(|f| f > 0)
        || get("gmt_refund").is_some();
    let status = match get("trade_status") {
        _ if refunded => "refunded",
        Some("TRADE_SUCCESS") | Some("TRADE_FINISHED") => "paid",
        Some("TRADE_CLOSED") => "closed",
        _ => "pending",
    };
    let amount = if status == "refunded" {
        get("refund_fee")
    } else {
        get("total_amount")
    }
    .and_then(yuan_to_fen);
    // A cross-border trade priced in another currency names it in
    // `trans_currency` (标价币种), and `total_amount` is in it.
    let currency = get("trans_currency").unwrap_or("CNY");
    alipay_event(verified, status, amount, currency, get, &fields)
}

/// WeChat v2. Payment: `total_fee` (already fen), `result_code` SUCCESS is
/// `paid` unless a withholding result's `trade_state` says otherwise
/// ([`wechat_v2_payment`]), anything else `pending` (the payment did not
/// complete), `time_end`. Refund: the decrypted `req_info` fields,
/// `refund_fee`, `refund_status` SUCCESS `refunded`, REFUNDCLOSE `closed`,
/// CHANGE (the refund failed and needs the merchant) `pending`,
/// `success_time`, else (not succeeded) the time callgate took it as sent.
/// `fields` holds every field but `sign`; for a refund, the decrypted
/// fields and the outer ones callgate checked ([`REFUND_CHECKED_OUTER`]).
fn wechat_v2(verified: &Verified, xml: &XmlMap, refund: Option<&XmlMap>) -> Value {
    let mut fields = Map::new();
    for (k, v) in xml.iter() {
        // A refund's outer XML is signed by nothing: only what callgate
        // checked against the route is a verified field.
        let verified_outer = refund.is_none() || REFUND_CHECKED_OUTER.contains(&k);
        if k == "sign" || k == "req_info" || !verified_outer {
            continue;
        }
        fields.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    let outer = |k: &str| xml.get(k).filter(|s| !s.is_empty());
    let (out_trade_no, trade_no, amount, status, when, currency) = match refund {
        Some(r) => {
            for (k, v) in r.iter() {
                fields.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let get = |k: &str| r.get(k).filter(|s| !s.is_empty());
            let status = match get("refund_status") {
                Some("SUCCESS") => "refunded",
                Some("REFUNDCLOSE") => "closed",
                _ => "pending",
            };
            (
                get("out_trade_no"),
                get("transaction_id"),
                get("refund_fee").and_then(fen),
                status,
                // A refund that did not succeed has no time of its own.
                get("success_time")
                    .and_then(beijing_rfc3339)
                    .or_else(|| unix_beijing_rfc3339(verified.signed_at())),
                get("refund_fee_type").or(get("fee_type")),
            )
        }
        None => {
            let (status, amount) = wechat_v2_payment(outer("result_code"), outer("trade_state"));
            (
                outer("out_trade_no"),
                outer("transaction_id"),
                amount.then(|| outer("total_fee").and_then(fen)).flatten(),
                status,
                outer("time_end").and_then(compact_beijing_rfc3339),
                outer("fee_type"),
            )
        }
    };
    json!({
        "provider": "wechat_v2",
        "event_id": verified.event_id(),
        "out_trade_no": out_trade_no,
        "provider_trade_no": trade_no,
        "amount_fen": amount,
        "currency": currency.unwrap_or("CNY"),
        "status": status,
        "occurred_at": when,
        "fields": fields,
    })
}

/// The outer elements of a WeChat v2 refund that callgate checked (against
/// the route, or as the only value it takes): the normalized `fields` keep
/// these and the decrypted `req_info`, never the rest of the unsigned
/// envelope (`return_msg`, `nonce_str`, `sub_appid`, ...).
const REFUND_CHECKED_OUTER: [&str; 3] = ["return_code", "appid", "mch_id"];

/// A WeChat v2 payment's status, and whether `total_fee` is its amount.
/// `result_code` SUCCESS is a payment unless a `trade_state` (withholding
/// debit results) says otherwise, read as v3 reads it: SUCCESS `paid`,
/// REFUND `refunded` (a transaction turned to refunds: `total_fee` is the
/// order's, not the refund's, so no amount), CLOSED / REVOKED `closed`,
/// anything else (ACCEPT, PAY_FAIL, NOTPAY, ...) `pending`.
fn wechat_v2_payment(result_code: Option<&str>, trade_state: Option<&str>) -> (&'static str, bool) {
    match (result_code, trade_state) {
        (Some("SUCCESS"), None | Some("SUCCESS")) => ("paid", true),
        (Some("SUCCESS"), Some("REFUND")) => ("refunded", false),
        (Some("SUCCESS"), Some("CLOSED" | "REVOKED")) => ("closed", true),
        _ => ("pending", true),
    }
}

/// Unix seconds → RFC 3339 in Beijing time.
fn unix_beijing_rfc3339(secs: i64) -> Option<String> {
    let tz = FixedOffset::east_opt(8 * 3600)?;
    Some(
        chrono::DateTime::from_timestamp(secs, 0)?
            .with_timezone(&tz)
            .to_rfc3339(),
    )
}

/// WeChat v3, from the decrypted resource. Payment (`trade_state`): SUCCESS
/// `paid`, REFUND `refunded`, CLOSED / REVOKED `closed`, others `pending`;
/// `amount.total`, except for REFUND: a transaction says that part or all
/// of it was refunded, not how much (`amount.total` is the order's total),
/// so its amount is `null`. Refund (`refund_status`): SUCCESS `refunded`,
/// CLOSED `closed`, ABNORMAL / PROCESSING `pending`; `amount.refund`.
/// `occurred_at`: `success_time` (for a transaction in REFUND that is when
/// it was paid, so not used), else the body's `create_time`. `fields` is
/// the decrypted resource; `event_type` is added at the top level.
fn wechat_v3(verified: &Verified, body: &Value, resource: &Value) -> Value {
    let get = |k: &str| {
        resource
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    // Fen, never negative: anything else is no amount (`null`), as the
    // other providers' decimals are.
    let amount = |k: &str| {
        resource
            .get("amount")
            .and_then(|a| a.get(k))
            .and_then(Value::as_i64)
            .filter(|fen| *fen >= 0)
    };
    let (status, amount_fen, time) = match get("refund_status") {
        Some(r) => (
            match r {
                "SUCCESS" => "refunded",
                "CLOSED" => "closed",
                _ => "pending",
            },
            amount("refund"),
            get("success_time"),
        ),
        // A transaction turned to refunds: neither the sum nor the time of
        // the refund is in it.
        None if get("trade_state") == Some("REFUND") => ("refunded", None, None),
        None => (
            match get("trade_state") {
                Some("SUCCESS") => "paid",
                Some("CLOSED") | Some("REVOKED") => "closed",
                _ => "pending",
            },
            amount("total"),
            get("success_time"),
        ),
    };
    let currency = resource
        .get("amount")
        .and_then(|a| a.get("currency"))
        .and_then(Value::as_str)
        .unwrap_or("CNY");
    let when = time.or_else(|| body.get("create_time").and_then(Value::as_str));
    json!({
        "provider": "wechat_v3",
        "event_id": verified.event_id(),
        "event_type": body.get("event_type"),
        "out_trade_no": get("out_trade_no"),
        "provider_trade_no": get("transaction_id"),
        "amount_fen": amount_fen,
        "currency": currency,
        "status": status,
        "occurred_at": when,
        "fields": resource,
    })
}

/// A whole number of fen (`"100"`); anything else is `None`.
fn fen(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `yyyyMMddHHmmss` Beijing time → RFC 3339 with `+08:00`.
pub fn compact_beijing_rfc3339(s: &str) -> Option<String> {
    let naive = NaiveDateTime::parse_from_str(s, "%Y%m%d%H%M%S").ok()?;
    let tz = FixedOffset::east_opt(8 * 3600)?;
    Some(tz.from_local_datetime(&naive).single()?.to_rfc3339())
}

/// Legacy Alipay (create_direct_pay_by_user and escrow): `total_fee` in
/// yuan; TRADE_SUCCESS / TRADE_FINISHED, and the escrow states in which the
/// buyer has paid (WAIT_SELLER_SEND_GOODS, WAIT_BUYER_CONFIRM_GOODS), are
/// `paid`; TRADE_CLOSED is `closed`; anything else (WAIT_BUYER_PAY) is
/// `pending`. A refund is `refunded`: `refund_status` REFUND_SUCCESS, or,
/// without a `refund_status`, a `gmt_refund` or a `refund_fee` above zero;
/// its amount is `refund_fee` when the notification has one, `total_fee`
/// for a refund that closed the trade (a full refund), else `null` (a
/// partial refund without `refund_fee` does not say how much). Any other
/// `refund_status` is a refund not made (REFUND_CLOSED, an escrow refund
/// still asked for) and leaves the trade's own status.
fn alipay_md5(verified: &Verified, fields: Map<String, Value>) -> Value {
    let get = |k: &str| {
        fields
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    // A `refund_status` says how the refund stands: only REFUND_SUCCESS is
    // money given back. REFUND_CLOSED (退款关闭) and the escrow steps
    // before it (WAIT_SELLER_AGREE, SELLER_REFUSE_BUYER, ...) carry
    // `gmt_refund` or `refund_fee` too, yet nothing was refunded.
    let refunded = match get("refund_status") {
        Some(r) => r == "REFUND_SUCCESS",
        None => {
            get("gmt_refund").is_some()
                || get("refund_fee")
                    .and_then(yuan_to_fen)
                    .is_some_and(|f| f > 0)
        }
    };
    let status = match get("trade_status") {
        _ if refunded => "refunded",
        Some(
            "TRADE_SUCCESS"
            | "TRADE_FINISHED"
            | "WAIT_SELLER_SEND_GOODS"
            | "WAIT_BUYER_CONFIRM_GOODS",
        ) => "paid",
        Some("TRADE_CLOSED") => "closed",
        _ => "pending",
    };
    let amount = match status {
        "refunded" if get("refund_fee").is_some() => get("refund_fee"),
        "refunded" if get("trade_status") != Some("TRADE_CLOSED") => None,
        _ => get("total_fee"),
    }
    .and_then(yuan_to_fen);
    // A cross-border (forex) trade names its currency, and `total_fee` is
    // in it; the rest are yuan.
    let currency = get("currency").unwrap_or("CNY");
    alipay_event(verified, status, amount, currency, get, &fields)
}

/// The normalized event of an Alipay form (open platform or legacy): the
/// same fields whatever the provider.
fn alipay_event<'a>(
    verified: &Verified,
    status: &str,
    amount: Option<i64>,
    currency: &str,
    get: impl Fn(&str) -> Option<&'a str>,
    fields: &Map<String, Value>,
) -> Value {
    json!({
        "provider": verified.kind().as_str(),
        "event_id": verified.event_id(),
        "out_trade_no": get("out_trade_no"),
        "provider_trade_no": get("trade_no"),
        "amount_fen": amount,
        "currency": currency,
        "status": status,
        "occurred_at": alipay_time(status, get),
        "fields": fields,
    })
}

/// UnionPay: `respCode` 00/A6 is success; then `txnType` 01 (消费), 03
/// (预授权完成) and 11 (代收, the card debited to the merchant) are `paid`; 04 (退货), 31 (消费撤销) and 33 (预授权完成撤销),
/// which give the money back, `refunded`; 32 (预授权撤销: nothing will be
/// captured) `closed`; others (02 预授权, funds only held; 12 代付, the
/// merchant paying out) `pending`. A
/// failure notification is `pending` for 03/04/05 (状态未明) and `closed`
/// otherwise. `txnAmt` is already in fen.
fn unionpay(verified: &Verified, fields: Map<String, Value>) -> Value {
    let get = |k: &str| {
        fields
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let status = match (get("respCode"), get("txnType")) {
        (Some("00" | "A6"), Some("01" | "03" | "11")) => "paid",
        (Some("00" | "A6"), Some("04" | "31" | "33")) => "refunded",
        (Some("00" | "A6"), Some("32")) => "closed",
        (Some("00" | "A6"), _) => "pending",
        (Some("03" | "04" | "05"), _) => "pending",
        _ => "closed",
    };
    let currency = match get("currencyCode") {
        None | Some("156") => "CNY",
        Some(other) => other,
    };
    json!({
        "provider": "unionpay",
        "event_id": verified.event_id(),
        "out_trade_no": get("orderId"),
        "provider_trade_no": get("queryId"),
        "amount_fen": get("txnAmt").and_then(fen),
        "currency": currency,
        "status": status,
        "occurred_at": get("txnTime").and_then(compact_beijing_rfc3339),
        "fields": fields,
    })
}

/// JD Pay: `tradeType` 0 is a payment, `paid` when `status` is 2 and
/// `result/code` 000000; `tradeType` 1 or 2 (or an `oTradeNum` without a
/// type) is a refund, `refunded` when `result/code` is 000000. Anything
/// else is `pending`. For a refund `out_trade_no` is the original order
/// (`oTradeNum`); the refund's own number stays in `fields.tradeNum`.
fn jdpay(verified: &Verified, d: &crate::provider::jdpay::Decrypted) -> Value {
    let root = d.root();
    let get = |k: &str| root.leaf(k).filter(|s| !s.is_empty());
    let first_pay = root.child("payList").and_then(|p| p.child("pay"));
    let ok = root.child("result").and_then(|r| r.leaf("code")) == Some("000000");
    let refund = match get("tradeType") {
        Some("1" | "2") => true,
        None => get("oTradeNum").is_some(),
        _ => false,
    };
    let status = if refund {
        if ok { "refunded" } else { "pending" }
    } else if ok && get("tradeType") == Some("0") && get("status") == Some("2") {
        "paid"
    } else {
        "pending"
    };
    let out_trade_no = if refund {
        get("oTradeNum").or_else(|| get("tradeNum"))
    } else {
        get("tradeNum")
    };
    let currency = get("currency")
        .or_else(|| first_pay.and_then(|p| p.leaf("currency")))
        .unwrap_or("CNY");
    json!({
        "provider": "jdpay",
        "event_id": verified.event_id(),
        "out_trade_no": out_trade_no,
        "provider_trade_no": Value::Null,
        "amount_fen": get("amount").and_then(fen),
        "currency": currency,
        "status": status,
        "occurred_at": compact_beijing_rfc3339(d.time()),
        "fields": jd_json(root),
    })
}

/// When an Alipay event (new or legacy) happened: the time field of its
/// status, else `notify_time`; Beijing time as RFC 3339.
fn alipay_time<'a>(status: &str, get: impl Fn(&str) -> Option<&'a str>) -> Option<String> {
    match status {
        "refunded" => get("gmt_refund"),
        "paid" => get("gmt_payment"),
        "closed" => get("gmt_close"),
        _ => None,
    }
    .or_else(|| get("notify_time"))
    .and_then(beijing_rfc3339)
}

/// `"88.88"` → 8888. At most two decimals; anything else is `None`.
pub fn yuan_to_fen(s: &str) -> Option<i64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty()
        || frac.len() > 2
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>().ok()? * 10,
        _ => frac.parse().ok()?,
    };
    whole.checked_mul(100)?.checked_add(frac)
}

/// `yyyy-MM-dd HH:mm:ss[.SSS]` Beijing time → RFC 3339 with `+08:00`.
pub fn beijing_rfc3339(s: &str) -> Option<String> {
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    let tz = FixedOffset::east_opt(8 * 3600)?;
    Some(tz.from_local_datetime(&naive).single()?.to_rfc3339())
}

/// The provider and event id alone.
fn bare(verified: &Verified) -> Value {
    json!({
        "provider": verified.kind().as_str(),
        "event_id": verified.event_id(),
    })
}

/// A JD payload as JSON: leaves are strings, elements objects; `pay`
/// (inside `payList`) is always an array.
fn jd_json(element: &crate::body::xml::Element) -> Value {
    if element.children.is_empty() {
        return Value::String(element.text.clone());
    }
    let mut map = Map::new();
    for c in &element.children {
        let v = jd_json(c);
        if c.name == "pay" {
            match map
                .entry(c.name.clone())
                .or_insert_with(|| Value::Array(vec![]))
            {
                Value::Array(a) => a.push(v),
                other => *other = Value::Array(vec![v]),
            }
        } else {
            map.insert(c.name.clone(), v);
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan() {
        assert_eq!(yuan_to_fen("88.88"), Some(8888));
        assert_eq!(yuan_to_fen("0.1"), Some(10));
        assert_eq!(yuan_to_fen("12"), Some(1200));
        assert_eq!(yuan_to_fen("0.01"), Some(1));
        for bad in ["", ".5", "1.234", "-1.00", "1,00", "abc", "1.2.3"] {
            assert_eq!(yuan_to_fen(bad), None, "{bad}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(
            beijing_rfc3339("2026-11-22 10:00:00").as_deref(),
            Some("2026-11-22T10:00:00+08:00")
        );
        assert_eq!(
            beijing_rfc3339("2015-04-28 15:45:57.320").as_deref(),
            Some("2015-04-28T15:45:57.320+08:00")
        );
        assert_eq!(beijing_rfc3339("yesterday"), None);
        assert_eq!(
            compact_beijing_rfc3339("20261122100000").as_deref(),
            Some("2026-11-22T10:00:00+08:00")
        );
        assert_eq!(fen("8888"), Some(8888));
        assert_eq!(fen("88.88"), None);
        assert_eq!(fen(""), None);
    }
}
