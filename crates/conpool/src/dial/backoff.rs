//! Backoff: the one place that computes how long to wait before trying again.
//!
//! Used between connect attempts of a dial, and by anything else in the pool
//! that retries, so that every retry in the crate follows the same curve.

use std::time::Duration;

/// The wait after failed attempt `attempt` (1-based): `base × 2^(attempt−1)`,
/// saturating instead of overflowing.
///
/// ```
/// use std::time::Duration;
/// use conpool::dial::backoff_delay;
///
/// let base = Duration::from_millis(100);
/// assert_eq!(backoff_delay(base, 1), Duration::from_millis(100));
/// assert_eq!(backoff_delay(base, 2), Duration::from_millis(200));
/// assert_eq!(backoff_delay(base, 3), Duration::from_millis(400));
/// ```
pub fn backoff_delay(base: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(63);
    base.saturating_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_saturates() {
        let base = Duration::from_millis(10);
        assert_eq!(backoff_delay(base, 0), base);
        assert_eq!(backoff_delay(base, 4), Duration::from_millis(80));
        assert_eq!(backoff_delay(Duration::MAX, 5), Duration::MAX);
        assert_eq!(backoff_delay(Duration::ZERO, 30), Duration::ZERO);
        assert!(backoff_delay(base, 200) >= backoff_delay(base, 32));
    }
}
