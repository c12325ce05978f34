//! A compact timestamp for what a connection's record keeps but the
//! checkout path never reads: signed nanoseconds from an origin instant
//! taken when the pool is made, 8 bytes where a tokio `Instant` takes 16.
//!
//! Only times read off the hot path are kept this way: turning an
//! `Instant` into nanoseconds takes a subtraction that costs more than the
//! comparisons it would save, so the deadlines a checkout compares stay
//! `Instant`s. The clock is still read as a tokio `Instant`, so tokio's
//! paused test clock drives it.
//!
//! Ticks are signed because an instant may come before the origin: a pool
//! made outside a paused runtime may read a later real clock than the
//! paused one it is then used under.

use std::time::Duration;

use tokio::time::Instant;

/// A moment, as nanoseconds after (or, negative, before) the pool's origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tick(i64);

pub(crate) struct Clock {
    origin: Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    pub(crate) fn tick(&self, at: Instant) -> Tick {
        match at.checked_duration_since(self.origin) {
            Some(after) => Tick(nanos(after)),
            None => Tick(-nanos(self.origin - at)),
        }
    }

    /// The time from `since` to now, zero if `since` is later.
    pub(crate) fn elapsed(&self, since: Tick) -> Duration {
        let now = self.tick(Instant::now());
        Duration::from_nanos(u64::try_from(now.0.saturating_sub(since.0)).unwrap_or(0))
    }
}

/// A duration in nanoseconds; past 292 years it saturates.
fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_follow_the_paused_clock_on_both_sides_of_the_origin() {
        let clock = Clock::new();
        let start = clock.tick(Instant::now());
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(clock.elapsed(start), Duration::from_secs(3));

        // The origin was 3 s ago, so this is 3597 s before it.
        let an_hour_ago = clock.tick(Instant::now() - Duration::from_secs(3600));
        assert!(an_hour_ago < start);
        assert_eq!(clock.elapsed(an_hour_ago), Duration::from_secs(3600));
    }
}
