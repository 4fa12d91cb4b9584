//! Per-source rate limit: the step right after the address check.
//!
//! A route may set `rate_limit = { per_second = 50, burst = 100 }`: a token
//! bucket per source address holds up to `burst` tokens and refills at
//! `per_second`; each notification takes one. Without a token the request
//! ends with `RateLimited` (429), the provider's failure ack and the
//! rejection reason `rate_limited`; the platform retries later, as it does
//! after any failure ack. Absent means no limit.
//!
//! Sizing: a platform's own retries are far below any sane limit. Each
//! platform resends one undelivered notification on a schedule of seconds
//! to hours (WeChat Pay: 15 s, 15 s, 30 s, 3 m, 10 m, ...; Alipay: 4 m,
//! 10 m, 10 m, 1 h, 2 h, 6 h, 15 h; UnionPay and JD similar), so what one
//! platform address sends is the shop's own order rate plus a trickle of
//! retries. Set `per_second` several times the shop's busiest minute of
//! payments from one platform, and `burst` to cover a platform that flushes
//! a backlog after an outage of its own: `per_second = 50, burst = 200` is a
//! safe default for a shop taking fewer than 1,000 payments a minute.
//! The limit exists to stop floods from addresses the allow list admits
//! (a shared cloud range, a dry-run `allow_mode = "log"` route), not to
//! shape a platform's traffic.
//!
//! Keys: the source address the allow check decided on; IPv6 addresses are
//! bucketed by their /64 (one host usually owns a whole /64). Memory is
//! bounded: buckets live in a moka cache of at most [`MAX_BUCKETS`] per
//! route, dropped once idle for the time a bucket takes to refill (after
//! which a new bucket is the same as the old one). A flood from more
//! addresses than that evicts buckets early, which can only let a request
//! through, never refuse one wrongly. A bucket costs about 400 bytes in the
//! cache, so a route with a limit holds at most some 40 MB of them (a flood
//! of 19,500 IPv6 /64s through a trusted proxy's `X-Forwarded-For` grew the
//! process by 7.6 MB); the bound is per route, so count it once for every
//! route that sets a limit. A reload starts every route with fresh
//! buckets.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use serde::Deserialize;
use toml::Spanned;

use crate::load::{FileCtx, RuleError};

/// Bound on remembered source addresses per route.
pub const MAX_BUCKETS: u64 = 100_000;

/// `rate_limit = { per_second = .., burst = .. }` as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// Sustained notifications per second from one source address.
    pub per_second: f64,
    /// How many may arrive at once before the sustained rate applies.
    pub burst: u32,
}

/// A route's compiled limit and its buckets.
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    buckets: Cache<IpAddr, Arc<Mutex<Bucket>>>,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A request over its source's limit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("source {source_key} is above the route's rate limit ({per_second}/s, burst {burst})")]
pub struct Limited {
    pub source_key: IpAddr,
    pub per_second: f64,
    pub burst: u32,
}

impl RateLimit {
    /// Checks a raw limit; `Err` says what is wrong with it.
    pub fn new(raw: RateLimitFile) -> Result<RateLimit, String> {
        if !raw.per_second.is_finite() || raw.per_second <= 0.0 {
            return Err("per_second must be a number greater than zero".to_owned());
        }
        if raw.burst == 0 {
            return Err("burst must be at least 1".to_owned());
        }
        let burst = f64::from(raw.burst);
        let refill = Duration::from_secs_f64((burst / raw.per_second).clamp(1.0, 86_400.0));
        Ok(RateLimit {
            per_second: raw.per_second,
            burst,
            buckets: Cache::builder()
                .max_capacity(MAX_BUCKETS)
                .time_to_idle(refill)
                .build(),
        })
    }

    /// Sustained notifications per second from one source.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Notifications one source may send at once.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Compiles a route's optional `rate_limit`, recording a problem at its
    /// line.
    pub fn compile(raw: Option<&Spanned<RateLimitFile>>, ctx: &mut FileCtx<'_>) -> Option<Self> {
        let raw = raw?;
        match RateLimit::new(*raw.get_ref()) {
            Ok(limit) => Some(limit),
            Err(reason) => {
                ctx.error(raw.span(), RuleError::RateLimit { reason });
                None
            }
        }
    }

    /// Takes a token for `source` at `now`.
    pub fn take(&self, source: IpAddr, now: Instant) -> Result<(), Limited> {
        let key = source_key(source);
        let bucket = self.buckets.get_with(key, || {
            Arc::new(Mutex::new(Bucket {
                tokens: self.burst,
                last: now,
            }))
        });
        let mut b = match bucket.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.last = b.last.max(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Limited {
                source_key: key,
                per_second: self.per_second,
                burst: self.burst as u32,
            })
        }
    }

    /// Source addresses currently remembered.
    pub fn buckets(&self) -> u64 {
        self.buckets.run_pending_tasks();
        self.buckets.entry_count()
    }
}

/// The key one source is counted under, here and by the per-source
/// connection cap (`accept`): IPv4 as is; IPv6 by its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// The pipeline's step: a token for `client` on `route`, when the route has
/// a limit.
pub fn check(limit: Option<&RateLimit>, client: IpAddr) -> Result<(), Limited> {
    match limit {
        Some(limit) => limit.take(client, Instant::now()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: f64, burst: u32) -> RateLimit {
        RateLimit::new(RateLimitFile { per_second, burst }).unwrap()
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let l = limit(2.0, 3);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take(ip, t0).is_ok());
        }
        let refused = l.take(ip, t0).unwrap_err();
        assert_eq!(refused.source_key, ip);
        // Half a second refills one token at 2/s.
        assert!(l.take(ip, t0 + Duration::from_millis(500)).is_ok());
        assert!(l.take(ip, t0 + Duration::from_millis(500)).is_err());
        // Never more than the burst, however long it waited.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(l.take(ip, later).is_ok());
        }
        assert!(l.take(ip, later).is_err());
    }

    #[test]
    fn sources_are_separate_and_ipv6_counts_by_64() {
        let l = limit(0.001, 1);
        let t = Instant::now();
        assert!(l.take("203.0.113.7".parse().unwrap(), t).is_ok());
        assert!(l.take("203.0.113.8".parse().unwrap(), t).is_ok());
        assert!(l.take("203.0.113.7".parse().unwrap(), t).is_err());
        assert!(l.take("2001:db8:1:2::1".parse().unwrap(), t).is_ok());
        assert!(l.take("2001:db8:1:2:ffff::9".parse().unwrap(), t).is_err());
        assert!(l.take("2001:db8:1:3::1".parse().unwrap(), t).is_ok());
        // An IPv4-mapped address is the IPv4 address.
        assert!(l.take("::ffff:203.0.113.8".parse().unwrap(), t).is_err());
    }

    #[test]
    fn a_clock_that_goes_backwards_refills_nothing() {
        let l = limit(1.0, 1);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let t = Instant::now() + Duration::from_secs(10);
        assert!(l.take(ip, t).is_ok());
        assert!(l.take(ip, t - Duration::from_secs(5)).is_err());
    }

    #[test]
    fn memory_is_bounded_and_a_flood_of_sources_never_refuses_another() {
        let l = limit(1.0, 2);
        let t = Instant::now();
        // The platform has one of its two tokens left when the flood starts.
        let platform: IpAddr = "203.0.113.7".parse().unwrap();
        assert!(l.take(platform, t).is_ok());
        // More sources than the bound (one /64 each: an IPv6 attacker's
        // whole supply, or X-Forwarded-For values through a trusted proxy).
        for i in 0..(MAX_BUCKETS + 5_000) {
            let ip = IpAddr::V6(((0x2001_0db8u128 << 96) | (u128::from(i) << 64) | 1).into());
            let _ = l.take(ip, t);
        }
        assert!(l.buckets() <= MAX_BUCKETS, "{}", l.buckets());
        // Its bucket was kept or dropped; either way its token is there.
        assert!(l.take(platform, t).is_ok());
    }

    #[test]
    fn bad_limits_are_refused() {
        for (per_second, burst) in [
            (0.0, 1),
            (-1.0, 1),
            (f64::NAN, 1),
            (f64::INFINITY, 1),
            (1.0, 0),
        ] {
            assert!(RateLimit::new(RateLimitFile { per_second, burst }).is_err());
        }
    }
}
