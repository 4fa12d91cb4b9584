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

use crate::provider::{Fields, ProviderKind, Verified};

/// The normalized JSON body for `verified`.
pub fn normalize(verified: &Verified) -> Vec<u8> {
    let value = match (verified.kind(), verified.fields()) {
        (ProviderKind::Alipay, Fields::Form { form, encoding }) => {
            let mut fields = Map::new();
            for (k, v) in form.iter() {
                if k == "sign" {
                    continue;
                }
                let (text, _) = encoding.decode_without_bom_handling(v);
                fields.insert(k.to_owned(), Value::String(text.into_owned()));
            }
            alipay(verified, fields)
        }
        (ProviderKind::Unionpay, Fields::Form { form, encoding }) => {
            unionpay(verified, form_fields(form, encoding, "signature"))
        }
        (ProviderKind::Jdpay, Fields::Jdpay(decrypted)) => jdpay(verified, decrypted),
        (kind, _) => json!({
            "provider": kind.as_str(),
            "event_id": verified.event_id(),
        }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
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
    let when = match status {
        "refunded" => get("gmt_refund"),
        "paid" => get("gmt_payment"),
        "closed" => get("gmt_close"),
        _ => None,
    }
    .or_else(|| get("notify_time"))
    .and_then(beijing_rfc3339);
    json!({
        "provider": "alipay",
        "event_id": verified.event_id(),
        "out_trade_no": get("out_trade_no"),
        "provider_trade_no": get("trade_no"),
        "amount_fen": amount,
        "currency": "CNY",
        "status": status,
        "occurred_at": when,
        "fields": fields,
    })
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

/// UnionPay: `respCode` 00/A6 is success; then `txnType` 01 (消费) and 03
/// (预授权完成) are `paid`, 04 (退货) and 31 (消费撤销) `refunded`, others
/// `pending`. A failure notification is `pending` for 03/04/05 (状态未明)
/// and `closed` otherwise. `txnAmt` is already in fen.
fn unionpay(verified: &Verified, fields: Map<String, Value>) -> Value {
    let get = |k: &str| {
        fields
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let status = match (get("respCode"), get("txnType")) {
        (Some("00" | "A6"), Some("01" | "03")) => "paid",
        (Some("00" | "A6"), Some("04" | "31")) => "refunded",
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
        "fields": root.to_json(),
    })
}

/// `"8888"` (fen, digits only) → 8888.
pub fn fen(s: &str) -> Option<i64> {
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
    fn fen_and_compact_times() {
        assert_eq!(fen("8888"), Some(8888));
        assert_eq!(fen("0"), Some(0));
        for bad in ["", "1.00", "-1", "1e3", "１"] {
            assert_eq!(fen(bad), None, "{bad}");
        }
        assert_eq!(
            compact_beijing_rfc3339("20261122100000").as_deref(),
            Some("2026-11-22T10:00:00+08:00")
        );
        assert_eq!(compact_beijing_rfc3339("2026-11-22"), None);
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
    }
}
