//! Event identity: how the fields that key replay state are read, once a
//! signature checked out (part of the sixth step of the flow).
//!
//! An event id, a signed time and a merchant id are only as strong as
//! their canonical form. Most platforms sign a string that joins values
//! unescaped (`k=v&k=v`), skip blank values or trim them, so several
//! different bodies verify with one signature. A field that keys state is
//! therefore accepted only when nothing about it is left to that slack:
//!
//! * [`token`]: present, not blank, no surrounding whitespace, and exactly
//!   the platform's syntax ([`Syntax`]: an alphabet and a length), so a
//!   padded or blank copy cannot pose as a new event;
//! * [`check_unambiguous`]: no field name holds `&` or `=`, no other
//!   signed value holds `&<unfoldable field>=` (nor `&<whole field>=`
//!   while that field is missing), and a pinned field's own value holds no
//!   `&`. Under any of them, the field could have been moved into
//!   a neighbouring value (and replaced by a blank or absent one), or have
//!   taken the next one into its own, without changing the signed string.
//!   With all three, the signed string alone fixes every pinned field. The
//!   pinned fields are the identity fields and the ones that say what
//!   happened (order, amounts, status, refund markers): folding Alipay's
//!   `&refund_fee=` and `&gmt_refund=` into their neighbours turned a
//!   genuine partial refund into what reads as a payment, under the
//!   refund's own (new) event id;
//! * [`beijing_time`]: exactly `yyyy-MM-dd HH:mm:ss` or `yyyyMMddHHmmss`,
//!   no padding, no missing digit.
//!
//! Refusals are [`VerifyError`]s with their own `reason` labels:
//! `bad_event_id`, `bad_merchant_id`, `bad_time`, `ambiguous_fields` (all
//! 400: the notification verified, it is its shape that is refused).

use super::{VerifyError, java_whitespace};
use crate::secret::shown;
use chrono::format::{Item, Numeric, Pad, Parsed};

/// The syntax a platform gives an identity field.
#[derive(Debug, Clone, Copy)]
pub struct Syntax {
    /// Which bytes may appear.
    allowed: fn(u8) -> bool,
    min: usize,
    max: usize,
    /// For messages: "1 to 64 ASCII letters and digits".
    pub text: &'static str,
}

impl Syntax {
    const fn of(allowed: fn(u8) -> bool, min: usize, max: usize, text: &'static str) -> Syntax {
        Syntax {
            allowed,
            min,
            max,
            text,
        }
    }
}

fn digit(b: u8) -> bool {
    b.is_ascii_digit()
}

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn alnum_dash(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn upper_underscore(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'_'
}

/// WeChat Pay state words (`trade_state`: `SUCCESS`, `PAY_FAIL`, ...).
pub const STATE: Syntax = Syntax::of(
    upper_underscore,
    1,
    32,
    "1 to 32 ASCII capital letters and `_`",
);

/// Alipay `notify_id`: 34 digits today, letters and digits in older
/// notifications (`91722adff935e8cfa58b3aabf4dead6ibe`).
pub const NOTIFY_ID: Syntax = Syntax::of(alnum, 1, 64, "1 to 64 ASCII letters and digits");

/// Platform-issued numeric ids: WeChat `transaction_id` (28 digits),
/// `refund_id` (29), merchant numbers, Alipay app ids.
pub const DIGITS: Syntax = Syntax::of(digit, 1, 32, "1 to 32 ASCII digits");

/// Alipay user ids (`seller_id`): `2088` and 12 more digits.
pub const ALIPAY_USER_ID: Syntax = Syntax::of(digit, 16, 16, "16 ASCII digits");

/// WeChat Pay v3 notification `id` (`EV-2018022511223320873`, or a UUID).
pub const V3_ID: Syntax = Syntax::of(
    alnum_dash,
    1,
    64,
    "1 to 64 ASCII letters, digits, `-` and `_`",
);

/// UnionPay `queryId` (21 digits in every known notification).
pub const QUERY_ID: Syntax = Syntax::of(alnum, 1, 32, "1 to 32 ASCII letters and digits");

/// UnionPay `txnType`: two digits (`01` payment, `04` refund, ...).
pub const TXN_TYPE: Syntax = Syntax::of(digit, 2, 2, "2 ASCII digits");

/// JD `tradeNum`: the merchant's order number (`asd784374823472389_r`).
pub const TRADE_NUM: Syntax = Syntax::of(
    alnum_dash,
    1,
    64,
    "1 to 64 ASCII letters, digits, `-` and `_`",
);

/// JD `tradeType` and `status`: one or two digits.
pub const SMALL_CODE: Syntax = Syntax::of(digit, 1, 2, "1 or 2 ASCII digits");

/// What a field is for, which decides the refusal's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Part of the event id.
    Event,
    /// Names the merchant the event belongs to.
    Merchant,
}

/// Why a value is not a token of its syntax, or `None` when it is.
fn problem(value: &[u8], syntax: &Syntax) -> Option<&'static str> {
    let text = String::from_utf8_lossy(value);
    let ws = |c: char| c.is_whitespace() || java_whitespace(c);
    if text.chars().all(ws) {
        return Some("is blank");
    }
    if text.starts_with(ws) || text.ends_with(ws) {
        return Some("has surrounding whitespace");
    }
    if value.len() < syntax.min || value.len() > syntax.max {
        return Some("has the wrong length");
    }
    if !value.iter().all(|&b| (syntax.allowed)(b)) {
        return Some("holds a character the platform never issues there");
    }
    None
}

/// The refusal of an identity field in `role`.
fn refusal(
    role: Role,
    field: &'static str,
    problem: &'static str,
    syntax: &Syntax,
    value: &[u8],
) -> VerifyError {
    let (syntax, value) = (syntax.text, shown(value));
    match role {
        Role::Event => VerifyError::BadEventId {
            field,
            problem,
            syntax,
            value,
        },
        Role::Merchant => VerifyError::BadMerchantId {
            field,
            problem,
            syntax,
            value,
        },
    }
}

/// Reads an identity field that must be present: the value of `field`, as
/// text, when it is exactly a token of `syntax`.
pub fn token<'a>(
    role: Role,
    field: &'static str,
    value: Option<&'a [u8]>,
    syntax: &Syntax,
) -> Result<&'a str, VerifyError> {
    let value = value.ok_or_else(|| refusal(role, field, "is missing", syntax, b""))?;
    if let Some(problem) = problem(value, syntax) {
        return Err(refusal(role, field, problem, syntax, value));
    }
    // Every syntax admits ASCII only, so this cannot fail.
    std::str::from_utf8(value).map_err(|_| {
        refusal(
            role,
            field,
            "holds a character the platform never issues there",
            syntax,
            value,
        )
    })
}

/// An event id made of identity fields joined with `:` (`<id>:<status>`),
/// built without `format!` (it is on every verified notification's path).
pub fn event_id(parts: &[&str]) -> String {
    let len = parts.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut id = String::with_capacity(len.saturating_sub(1));
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            id.push(':');
        }
        id.push_str(part);
    }
    id
}

/// Reads an identity field that may be absent; when present it must be a
/// token like any other (a blank one is refused, never taken as absent).
pub fn optional_token<'a>(
    role: Role,
    field: &'static str,
    value: Option<&'a [u8]>,
    syntax: &Syntax,
) -> Result<Option<&'a str>, VerifyError> {
    match value {
        None => Ok(None),
        Some(v) => token(role, field, Some(v), syntax).map(Some),
    }
}

/// Reads an identity field that takes one of a few fixed values (WeChat
/// `result_code`, `refund_status`).
pub fn one_of(
    field: &'static str,
    value: Option<&[u8]>,
    allowed: &[&'static str],
    text: &'static str,
) -> Result<&'static str, VerifyError> {
    let bad = |problem, value: &[u8]| VerifyError::BadEventId {
        field,
        problem,
        syntax: text,
        value: shown(value),
    };
    let value = value.ok_or_else(|| bad("is missing", b""))?;
    allowed
        .iter()
        .find(|a| a.as_bytes() == value)
        .copied()
        .ok_or_else(|| bad("is not one of the values the platform sends", value))
}

/// The fields of a provider whose bytes the signed string must fix (see
/// [`check_unambiguous`]).
#[derive(Debug, Clone, Copy)]
pub struct Pinned {
    /// Never folded into another value (no other value may hold
    /// `&<name>=`) and never holding `&`: the identity fields, and the ones
    /// that decide what the shop is told happened (status, amounts, refund
    /// markers), which folding away could turn a refund into a payment.
    pub unfoldable: &'static [&'static str],
    /// Never holding `&` (they could have taken in the field after them),
    /// and never missing while another value holds `&<name>=` (they could
    /// have been folded away into it): what the shop reads (order numbers,
    /// amounts on a platform where the status is an identity field).
    /// Free-text values of the merchant's own (`attach`, `reqReserved`)
    /// may legitimately hold `&name=`, which is why that alone is not
    /// refused. Folded away, an order number left the shop without one: a
    /// shop that answers `success` to an order it cannot find would have
    /// had the event recorded as delivered, and the platform's genuine
    /// copy then answered as a duplicate, never reaching it.
    pub whole: &'static [&'static str],
}

/// Refuses a signed form or XML whose pinned fields could have been moved
/// without changing the signed string: a field name holding `&` or `=`, a
/// value holding `&<unfoldable field>=`, or a pinned field's own value
/// holding `&` (it could have taken in the field after it). See the module
/// doc.
///
/// `present` says whether the body has a field of that name: a value
/// holding `&<whole field>=` is fine while that field is there (the
/// merchant's own text may say so), not when it is missing.
pub fn check_unambiguous<'a>(
    fields: impl Iterator<Item = (&'a str, &'a [u8])>,
    pinned: &Pinned,
    present: impl Fn(&str) -> bool,
) -> Result<(), VerifyError> {
    for (key, value) in fields {
        // Bytes, not chars: `&` and `=` are never part of another
        // character's UTF-8, and a char pattern decoded each name's
        // characters one by one (about 1,000 instructions of a WeChat body).
        if key.bytes().any(|b| matches!(b, b'&' | b'=')) {
            return Err(VerifyError::Ambiguous {
                field: shown(key.as_bytes()),
                holds: "`&` or `=` in its name".to_owned(),
            });
        }
        // Most values hold no `&`: one word-at-a-time search says so.
        if !value.contains(&b'&') {
            continue;
        }
        ampersands(key, value, pinned, &present)?;
    }
    Ok(())
}

/// [`check_unambiguous`] of a value holding `&` (seldom: kept out of the
/// loop every field goes through).
#[cold]
#[inline(never)]
fn ampersands(
    key: &str,
    value: &[u8],
    pinned: &Pinned,
    present: &dyn Fn(&str) -> bool,
) -> Result<(), VerifyError> {
    if pinned.unfoldable.contains(&key) || pinned.whole.contains(&key) {
        return Err(VerifyError::Ambiguous {
            field: shown(key.as_bytes()),
            holds: "`&` in its value, where the platform never puts one".to_owned(),
        });
    }
    let names = |list: &'static [&'static str], rest: &[u8]| {
        list.iter().copied().find(|id| {
            rest.len() > id.len() && rest.starts_with(id.as_bytes()) && rest[id.len()] == b'='
        })
    };
    for at in value
        .iter()
        .enumerate()
        .filter_map(|(i, &b)| (b == b'&').then_some(i + 1))
    {
        let rest = &value[at..];
        if let Some(id) = names(pinned.unfoldable, rest) {
            return Err(VerifyError::Ambiguous {
                field: shown(key.as_bytes()),
                holds: format!("`&{id}=` in its value"),
            });
        }
        // The merchant's own text may name an order number that is there.
        if let Some(whole) = names(pinned.whole, rest)
            && !present(whole)
        {
            return Err(folded_away(key, whole));
        }
    }
    Ok(())
}

/// A value (of field `key`) holds `&<whole>=` while `whole` is missing.
#[cold]
fn folded_away(key: &str, whole: &str) -> VerifyError {
    VerifyError::Ambiguous {
        field: shown(key.as_bytes()),
        holds: format!(
            "`&{whole}=` in its value while `{whole}` is missing: it could have been folded away"
        ),
    }
}

// === time ===

/// The two time formats the platforms sign, in Beijing time (UTC+8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// `yyyy-MM-dd HH:mm:ss` (Alipay `notify_time`, WeChat refund
    /// `success_time`).
    Dashed,
    /// `yyyyMMddHHmmss` (WeChat `time_end`, UnionPay `txnTime`, JD
    /// `tradeTime`).
    Compact,
}

impl TimeFormat {
    fn text(self) -> &'static str {
        match self {
            TimeFormat::Dashed => "yyyy-MM-dd HH:mm:ss",
            TimeFormat::Compact => "yyyyMMddHHmmss",
        }
    }

    /// Whether `value` has exactly this format's shape (digits where digits
    /// go, the separators where they go, nothing else).
    fn shaped(self, value: &[u8]) -> bool {
        match self {
            TimeFormat::Compact => value.len() == 14 && value.iter().all(u8::is_ascii_digit),
            TimeFormat::Dashed => {
                value.len() == 19
                    && value.iter().enumerate().all(|(i, &b)| match i {
                        4 | 7 => b == b'-',
                        10 => b == b' ',
                        13 | 16 => b == b':',
                        _ => b.is_ascii_digit(),
                    })
            }
        }
    }
}

/// Parses a Beijing-time (UTC+8) timestamp of exactly `format` into Unix
/// seconds.
pub fn beijing_time(
    field: &'static str,
    value: &[u8],
    format: TimeFormat,
) -> Result<i64, VerifyError> {
    let bad = || VerifyError::BadTime {
        field,
        value: shown(value),
        format: format.text(),
    };
    if !format.shaped(value) {
        return Err(bad());
    }
    if let Some(t) = plain_time(value, format) {
        return Ok(t);
    }
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let items = match format {
        TimeFormat::Dashed => DASHED,
        TimeFormat::Compact => COMPACT,
    };
    let mut parsed = Parsed::new();
    chrono::format::parse(&mut parsed, text, items.iter()).map_err(|_| bad())?;
    let naive = parsed.to_naive_datetime_with_offset(0).map_err(|_| bad())?;
    Ok(naive.and_utc().timestamp() - 8 * 3600)
}

/// A shaped `value` that names an ordinary second (a real date, hour below
/// 24, minute and second below 60) read from its digits, in Unix seconds;
/// `None` for anything else, which chrono's parser then judges. A
/// notification's time is always ordinary, and chrono's `parse` of it
/// cost about 700 instructions of the 1,300 its check took.
fn plain_time(value: &[u8], format: TimeFormat) -> Option<i64> {
    // Where year, month, day, hour, minute and second start.
    let at: [usize; 6] = match format {
        TimeFormat::Compact => [0, 4, 6, 8, 10, 12],
        TimeFormat::Dashed => [0, 5, 8, 11, 14, 17],
    };
    let number = |from: usize, len: usize| -> Option<u32> {
        value.get(from..from + len)?.iter().try_fold(0u32, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
        })
    };
    let year = i32::try_from(number(at[0], 4)?).ok()?;
    let [month, day, hour, minute, second] = [
        number(at[1], 2)?,
        number(at[2], 2)?,
        number(at[3], 2)?,
        number(at[4], 2)?,
        number(at[5], 2)?,
    ];
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let naive =
        chrono::NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(hour, minute, second)?;
    Some(naive.and_utc().timestamp() - 8 * 3600)
}

/// `%Y-%m-%d %H:%M:%S` and `%Y%m%d%H%M%S` as chrono's parsed items, so that
/// the pattern is not parsed again for every notification.
const DASHED: &[Item<'static>] = &[
    Item::Numeric(Numeric::Year, Pad::Zero),
    Item::Literal("-"),
    Item::Numeric(Numeric::Month, Pad::Zero),
    Item::Literal("-"),
    Item::Numeric(Numeric::Day, Pad::Zero),
    Item::Literal(" "),
    Item::Numeric(Numeric::Hour, Pad::Zero),
    Item::Literal(":"),
    Item::Numeric(Numeric::Minute, Pad::Zero),
    Item::Literal(":"),
    Item::Numeric(Numeric::Second, Pad::Zero),
];
const COMPACT: &[Item<'static>] = &[
    Item::Numeric(Numeric::Year, Pad::Zero),
    Item::Numeric(Numeric::Month, Pad::Zero),
    Item::Numeric(Numeric::Day, Pad::Zero),
    Item::Numeric(Numeric::Hour, Pad::Zero),
    Item::Numeric(Numeric::Minute, Pad::Zero),
    Item::Numeric(Numeric::Second, Pad::Zero),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_joins_its_parts_like_format_does() {
        assert_eq!(
            event_id(&["4200000123", "SUCCESS"]),
            format!("{}:{}", "4200000123", "SUCCESS")
        );
        assert_eq!(event_id(&["T1", "0001", "2"]), "T1:0001:2");
        assert_eq!(event_id(&["only"]), "only");
        assert_eq!(event_id(&[]), "");
    }

    #[test]
    fn the_prepared_time_patterns_read_as_their_strftime_text() {
        for (format, pattern, values) in [
            (
                TimeFormat::Dashed,
                "%Y-%m-%d %H:%M:%S",
                &[
                    "2026-12-03 16:20:00",
                    "2024-02-29 23:59:59",
                    "2026-02-30 10:00:00",
                    "2026-12-03 24:00:00",
                ][..],
            ),
            (
                TimeFormat::Compact,
                "%Y%m%d%H%M%S",
                &[
                    "20261203162000",
                    "20240229235959",
                    "20261301000000",
                    "20261203126000",
                ][..],
            ),
        ] {
            for v in values {
                let want = chrono::NaiveDateTime::parse_from_str(v, pattern)
                    .ok()
                    .map(|n| n.and_utc().timestamp() - 8 * 3600);
                assert_eq!(beijing_time("t", v.as_bytes(), format).ok(), want, "{v}");
            }
        }
    }

    /// The digits read directly give what chrono's parser gives, over a
    /// sweep of every field's edges (a day or month of 0, the 29th to 31st
    /// of February, hour 24, minute and second 60, years 0000 and 9999).
    #[test]
    fn the_plain_reading_agrees_with_chrono() {
        let mut checked = 0;
        for year in ["0000", "1969", "1970", "2024", "2026", "2100", "9999"] {
            for month in ["00", "01", "02", "04", "12", "13"] {
                for day in ["00", "01", "28", "29", "30", "31", "32"] {
                    for (hour, minute, second) in [
                        ("00", "00", "00"),
                        ("23", "59", "59"),
                        ("24", "00", "00"),
                        ("12", "60", "00"),
                        ("12", "30", "60"),
                        ("07", "08", "09"),
                    ] {
                        for (format, pattern, v) in [
                            (
                                TimeFormat::Compact,
                                "%Y%m%d%H%M%S",
                                format!("{year}{month}{day}{hour}{minute}{second}"),
                            ),
                            (
                                TimeFormat::Dashed,
                                "%Y-%m-%d %H:%M:%S",
                                format!("{year}-{month}-{day} {hour}:{minute}:{second}"),
                            ),
                        ] {
                            let want = chrono::NaiveDateTime::parse_from_str(&v, pattern)
                                .ok()
                                .map(|n| n.and_utc().timestamp() - 8 * 3600);
                            assert_eq!(beijing_time("t", v.as_bytes(), format).ok(), want, "{v}");
                            if let Some(plain) = plain_time(v.as_bytes(), format) {
                                assert_eq!(Some(plain), want, "{v}");
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        // The plain reading did take most of them.
        assert!(checked > 600, "{checked}");
    }

    #[test]
    fn tokens_are_exact() {
        let ok = token(Role::Event, "notify_id", Some(b"2026abc"), &NOTIFY_ID).unwrap();
        assert_eq!(ok, "2026abc");
        for (value, problem) in [
            (&b""[..], "is blank"),
            (b" ", "is blank"),
            (b"\t\t", "is blank"),
            ("\u{3000}".as_bytes(), "is blank"),
            (b" 2026", "has surrounding whitespace"),
            (b"2026\n", "has surrounding whitespace"),
            ("2026\u{3000}".as_bytes(), "has surrounding whitespace"),
            (
                b"20 26",
                "holds a character the platform never issues there",
            ),
            (
                b"2026&x",
                "holds a character the platform never issues there",
            ),
            ("2026\u{A0}".as_bytes(), "has surrounding whitespace"),
            (
                "20\u{A0}26".as_bytes(),
                "holds a character the platform never issues there",
            ),
        ] {
            match token(Role::Event, "notify_id", Some(value), &NOTIFY_ID) {
                Err(VerifyError::BadEventId { problem: p, .. }) => {
                    assert_eq!(p, problem, "{value:?}")
                }
                other => panic!("{value:?}: {other:?}"),
            }
        }
        let long = [b'1'; 65];
        assert!(token(Role::Event, "notify_id", Some(&long), &NOTIFY_ID).is_err());
        assert!(matches!(
            token(Role::Merchant, "sub_mch_id", None, &DIGITS),
            Err(VerifyError::BadMerchantId {
                problem: "is missing",
                ..
            })
        ));
        assert_eq!(
            optional_token(Role::Merchant, "auth_app_id", None, &DIGITS).unwrap(),
            None
        );
        assert!(optional_token(Role::Merchant, "auth_app_id", Some(b" "), &DIGITS).is_err());
    }

    #[test]
    fn folded_identity_fields_are_ambiguous() {
        let id = Pinned {
            unfoldable: &["notify_id", "notify_time"],
            whole: &["out_trade_no"],
        };
        let fine: Vec<(&str, &[u8])> = vec![
            ("body", b"a&b=c"),
            ("notify_id", b"1"),
            ("subject", b"notify_id=2"),
            ("x", b"&notify_idx=1"),
            ("y", b"&notify_id"),
            ("attach", b"a=1&out_trade_no=2"),
            ("out_trade_no", b"2"),
            ("n\u{e9}\u{2261}\u{ff06}", b"1"),
        ];
        check_unambiguous(fine.clone().into_iter(), &id, |n| {
            fine.iter().any(|(k, _)| *k == n)
        })
        .unwrap();
        // The same text with the order number itself missing: it could
        // have been folded away into that value.
        let folded: Vec<(&str, &[u8])> = vec![("attach", b"a=1&out_trade_no=2"), ("body", b"x")];
        // Every such name counts, not only the first one found.
        let two = Pinned {
            unfoldable: &[],
            whole: &["out_trade_no", "trade_no"],
        };
        let second: Vec<(&str, &[u8])> = vec![
            ("attach", b"a=1&out_trade_no=2&trade_no=3"),
            ("out_trade_no", b"2"),
        ];
        assert!(matches!(
            check_unambiguous(second.clone().into_iter(), &two, |n| second
                .iter()
                .any(|(k, _)| *k == n)),
            Err(VerifyError::Ambiguous { .. })
        ));
        assert!(matches!(
            check_unambiguous(folded.clone().into_iter(), &id, |n| folded
                .iter()
                .any(|(k, _)| *k == n)),
            Err(VerifyError::Ambiguous { .. })
        ));
        for (key, value) in [
            ("body", &b"x&notify_id=1"[..]),
            ("body", b"&notify_time=2026-11-22 10:00:00"),
            ("a=b", b"1"),
            ("a&b", b"1"),
            ("\u{e9}=", b"1"),
            ("&\u{4e2d}", b"1"),
            ("long_name_\u{ff1d}_x&", b"1"),
            // A pinned field that took the next field into its value.
            ("notify_id", b"1&subject=x"),
            ("notify_id", b"1&"),
            ("out_trade_no", b"1&subject=x"),
        ] {
            assert!(
                matches!(
                    check_unambiguous([(key, value)].into_iter(), &id, |n| n == key),
                    Err(VerifyError::Ambiguous { .. })
                ),
                "{key} {value:?}"
            );
        }
    }

    #[test]
    fn times_have_one_shape() {
        let t = beijing_time("notify_time", b"2026-11-22 10:00:00", TimeFormat::Dashed).unwrap();
        assert_eq!(t, 1_795_312_800); // 2026-11-22T02:00:00Z
        assert_eq!(
            beijing_time("time_end", b"20261122100000", TimeFormat::Compact).unwrap(),
            t
        );
        for bad in [
            &b"2026-11-22 10:00:00 "[..],
            b" 2026-11-22 10:00:00",
            b"2026-11-22  10:00:00",
            b"2026-11-22 1:00:00",
            b"2026-1-22 10:00:00",
            b"2026-11-22T10:00:00",
            b"+2026-11-22 10:00:0",
            b"2026-13-01 00:00:00",
            b"2026-02-30 00:00:00",
            b"",
            b"\xff",
        ] {
            assert!(
                beijing_time("notify_time", bad, TimeFormat::Dashed).is_err(),
                "{bad:?}"
            );
        }
        for bad in [
            &b"2026112210000"[..],
            b"202611221000000",
            b" 0261122100000",
            b"2026112210000a",
        ] {
            assert!(
                beijing_time("time_end", bad, TimeFormat::Compact).is_err(),
                "{bad:?}"
            );
        }
    }
}
