//! Certificate lifetimes, judged at load (`callgate check`, start-up,
//! reload): not part of the request flow.
//!
//! Every certificate-backed key (Alipay certificate mode, WeChat Pay v3
//! platform certificates, UnionPay root, middle and verification
//! certificates) and the TLS certificate is judged the same way:
//! * expired: a problem (`PATH:LINE: message`, the route or the gateway
//!   file does not load), except where the platform's own SDK keeps
//!   verifying with an expired certificate (Alipay certificate mode, see
//!   `provider::alipay_cert`): there it is a warning, and callgate keeps
//!   verifying, like the SDK; and except an entry of a rotation list
//!   (WeChat Pay v3 `platform_keys`, UnionPay `verify_certs`) while another
//!   entry of the list is still valid: a warning, and the entry is skipped;
//! * expiring within [`WARN_WITHIN_SECS`] (30 days): a warning,
//!   `PATH:LINE: warning: ...`;
//! * otherwise nothing.
//!
//! What stays in force is also exported as
//! `callgate_key_expiry_timestamp_seconds{route,key}` (see `metrics`), so
//! an alert fires before `check` would fail.

use std::ops::Range;

use crate::load::{FileCtx, RuleError};

/// How long before its notAfter a certificate starts being warned about.
pub const WARN_WITHIN_SECS: i64 = 30 * 24 * 3600;

/// Where a certificate stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    Valid,
    /// Expires within [`WARN_WITHIN_SECS`]; `days` left, rounded up (a
    /// certificate with 4 days and 1 hour left expires "in 5 days").
    Expiring {
        days: i64,
    },
    Expired,
}

/// Classifies a notAfter (Unix seconds, inclusive: the certificate is still
/// valid at that second) at `now`.
pub fn lifetime(not_after: i64, now: i64) -> Lifetime {
    if now > not_after {
        Lifetime::Expired
    } else if not_after - now < WARN_WITHIN_SECS {
        Lifetime::Expiring {
            days: (not_after - now + 86_399) / 86_400,
        }
    } else {
        Lifetime::Valid
    }
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// "in 3 days", "in 1 day", "now".
pub fn days_left(days: i64) -> String {
    match days {
        0 => "now".to_owned(),
        1 => "in 1 day".to_owned(),
        n => format!("in {n} days"),
    }
}

/// What a provider does with a key certificate that has expired.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WhenExpired {
    /// The route does not load; the text says what to do.
    Refuse(&'static str),
    /// The platform's SDK keeps verifying with it, and so does callgate: a
    /// warning that says so.
    Warn(&'static str),
    /// An entry of a rotation list (WeChat Pay v3 `platform_keys`, UnionPay
    /// `verify_certs`) while another entry is still valid: a warning, and
    /// the entry is not used. Its gauge stays, so the expiry alert fires.
    Skip(&'static str),
}

/// A certificate named by a `[route.keys]` field.
pub(crate) struct KeyCert<'a> {
    /// The keys field (`alipay_cert`, `platform_keys`, `verify_certs`, ...).
    pub field: &'a str,
    /// The file as the rule file writes it.
    pub file: &'a str,
    /// The serial as the platform names the certificate.
    pub serial: &'a str,
    /// The subject, RFC 2253 or x509-parser's rendering.
    pub subject: String,
    pub not_after: i64,
}

impl KeyCert<'_> {
    /// The `key` label of `callgate_key_expiry_timestamp_seconds`:
    /// `<field>:<serial>`, bounded by the configuration.
    pub fn label(&self) -> String {
        format!("{}:{}", self.field, self.serial)
    }

    fn what(&self) -> String {
        format!(
            "keys.{} `{}`: certificate {} (`{}`)",
            self.field, self.file, self.serial, self.subject
        )
    }
}

/// Judges one key certificate at `now`, recording a problem or a warning at
/// `span` of the rule file. Returns whether the key can be used: false when
/// it has expired and is refused (the route does not load) or skipped.
pub(crate) fn judge(
    ctx: &mut FileCtx<'_>,
    span: Range<usize>,
    cert: &KeyCert<'_>,
    now: i64,
    when_expired: WhenExpired,
    renew: &'static str,
) -> bool {
    match (lifetime(cert.not_after, now), when_expired) {
        (Lifetime::Valid, _) => true,
        (Lifetime::Expiring { days }, _) => {
            ctx.warn(
                span,
                format_args!(
                    "{} expires on {}, {}; {renew}",
                    cert.what(),
                    utc(cert.not_after),
                    days_left(days)
                ),
            );
            true
        }
        (Lifetime::Expired, WhenExpired::Warn(advice)) => {
            ctx.warn(
                span,
                format_args!(
                    "{} expired on {}; {advice}",
                    cert.what(),
                    utc(cert.not_after)
                ),
            );
            true
        }
        (Lifetime::Expired, WhenExpired::Skip(advice)) => {
            ctx.warn(
                span,
                format_args!(
                    "{} expired on {}; skipped while the other entries are in use: {advice}",
                    cert.what(),
                    utc(cert.not_after)
                ),
            );
            false
        }
        (Lifetime::Expired, WhenExpired::Refuse(advice)) => {
            ctx.error(
                span,
                RuleError::CertificateExpired {
                    what: cert.what(),
                    at: utc(cert.not_after),
                    advice,
                },
            );
            false
        }
    }
}

/// A certificate's serial as `openssl x509 -serial` prints it: upper-case
/// hex of the magnitude, an even number of digits.
pub fn serial_hex(cert: &x509_parser::certificate::X509Certificate<'_>) -> String {
    let bytes = cert.tbs_certificate.serial.to_bytes_be();
    let hex = hex::encode_upper(&bytes);
    if hex.is_empty() { "00".to_owned() } else { hex }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        let day = 86_400;
        let t = 1_800_000_000;
        assert_eq!(lifetime(t + 31 * day, t), Lifetime::Valid);
        assert_eq!(lifetime(t + 30 * day, t), Lifetime::Valid);
        assert_eq!(
            lifetime(t + 30 * day - 1, t),
            Lifetime::Expiring { days: 30 }
        );
        assert_eq!(lifetime(t + 5 * day, t), Lifetime::Expiring { days: 5 });
        assert_eq!(lifetime(t + 4 * day + 1, t), Lifetime::Expiring { days: 5 });
        assert_eq!(lifetime(t + 10, t), Lifetime::Expiring { days: 1 });
        // notAfter itself is still inside the validity period.
        assert_eq!(lifetime(t, t), Lifetime::Expiring { days: 0 });
        assert_eq!(lifetime(t - 1, t), Lifetime::Expired);
    }

    #[test]
    fn formats() {
        assert_eq!(utc(1_609_459_200), "2021-01-01 00:00:00 UTC");
        assert_eq!(days_left(0), "now");
        assert_eq!(days_left(1), "in 1 day");
        assert_eq!(days_left(12), "in 12 days");
    }
}
