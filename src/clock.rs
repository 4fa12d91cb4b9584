//! The wall clock, in the one unit every step compares times in: Unix
//! seconds. Freshness (`replay::check_fresh`), certificate validity at
//! verification and at load (`expiry`), journal records and the key
//! expiry gauge all read it here.

/// Seconds since the Unix epoch, now (0 if the clock is before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
