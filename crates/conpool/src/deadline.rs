//! Instants that cannot overflow: the one place that adds a configured
//! duration to the clock.
//!
//! Every duration the config takes may be as long as `Duration::MAX`
//! ("practically never"); `Instant + Duration` panics past what an instant
//! can hold. [`later`] answers such a sum with an instant a century on
//! instead, which no timer reaches and which still compares after every
//! instant the pool will see.

use std::time::Duration;

use tokio::time::Instant;

/// A century: a duration past it means "never" as much as one too long to
/// add to an instant.
pub(crate) const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + by`, or, if that is past what an instant can hold, a century on
/// (or as far as the platform's clock reaches).
#[inline]
pub(crate) fn later(now: Instant, by: Duration) -> Instant {
    now.checked_add(by).unwrap_or_else(|| far_future(now))
}

/// An instant a century on or, on a platform whose clock ends sooner, as
/// far as it reaches: never `now` itself while any later instant exists,
/// so that a timer set to it does not fire at once.
#[cold]
fn far_future(now: Instant) -> Instant {
    let mut ahead = CENTURY;
    while !ahead.is_zero() {
        if let Some(at) = now.checked_add(ahead) {
            return at;
        }
        ahead /= 2;
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sum_past_the_clock_means_a_century_on() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(later(now, Duration::MAX), now + CENTURY);
        assert!(later(now, Duration::MAX) > later(now, Duration::from_secs(3600 * 24 * 365)));
    }
}
