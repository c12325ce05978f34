//! The circuit breaker of one endpoint: after `breaker_failures`
//! consecutive failed dials, gets stop dialing it for a while.
//!
//! This module owns the breaker's state machine ([`Breaker`], kept in the
//! endpoint's cold books) and the two places the endpoint asks it:
//! [`EndpointPool::admit_dial`] before a caller's dial, and
//! [`EndpointPool::breaker_dial_abandoned`] when a dial ends without an
//! outcome. The dial's outcome reaches it where the books record it.
//!
//! - **Closed**: every dial goes ahead; failures are counted, a success
//!   resets the count. At `breaker_failures` in a row it opens.
//! - **Open**: a get that would dial fails at once with
//!   [`Error::CircuitOpen`]: callers queued for a dial slot fail the same
//!   way as the slot reaches them, while idle connections (and those
//!   handed back by leases) are still handed out, since the liveness
//!   check catches dead ones. The open time starts at 1 s and doubles with
//!   each trip since the breaker last closed, up to 60 s (the crate's one
//!   backoff curve, [`backoff_delay`]), cut by up to a fifth at random so
//!   that endpoints (and processes) that tripped together do not probe
//!   together; it is never longer than the stated time.
//! - **Half-open**: once the open time is over, the next caller's dial is
//!   let through as the probe; everyone else still fails fast. Its
//!   success closes the breaker; its failure opens it again, for longer. A
//!   probe that ends with no outcome (its task died: a panicking dialer, a
//!   runtime shut down) gives its turn back: the next caller probes. A
//!   probe whose caller went away is no such probe: its dial runs on to
//!   its end (as every dial does) and its outcome counts.
//!
//! Any dial's outcome counts, including those started before the breaker
//! opened: a success is proof the endpoint is back, whenever it comes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::EndpointPool;
use crate::Error;
use crate::dial::backoff_delay;
use crate::pool::conn::unit_random;
use crate::stats::{BreakerState, Stats};

/// The first open time, doubled on each trip.
const FIRST_OPEN_TIME: Duration = Duration::from_secs(1);
/// The longest open time.
const MAX_OPEN_TIME: Duration = Duration::from_secs(60);
/// The largest fraction cut from an open time at random.
const OPEN_TIME_JITTER: f64 = 0.2;

/// One endpoint's breaker.
#[derive(Debug, Default)]
pub(super) struct Breaker {
    phase: Phase,
    /// Failed dials in a row since the last success.
    failures: u32,
    /// Trips since the breaker last closed: the open time's exponent.
    streak: u32,
    /// Trips since the endpoint was made.
    trips: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Closed,
    Open {
        until: Instant,
    },
    /// Half-open, with the probe dialing.
    Probing,
}

/// What the breaker says to a caller about to dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Admission {
    /// Dial: the breaker is closed.
    Dial,
    /// Dial as the probe of a half-open breaker.
    Probe,
    /// Fail at once; a dial is let through again in this long (zero: once
    /// the probe under way has failed).
    Refused { retry_in: Duration },
}

impl Breaker {
    /// Whether a caller may dial at `now`; a probe's admission moves the
    /// breaker to half-open.
    pub(super) fn admit(&mut self, now: Instant) -> Admission {
        match self.phase {
            Phase::Closed => Admission::Dial,
            Phase::Open { until } if now >= until => {
                self.phase = Phase::Probing;
                Admission::Probe
            }
            Phase::Open { until } => Admission::Refused {
                retry_in: until - now,
            },
            Phase::Probing => Admission::Refused {
                retry_in: Duration::ZERO,
            },
        }
    }

    /// A dial succeeded: closed, count reset.
    pub(super) fn dial_succeeded(&mut self) {
        self.phase = Phase::Closed;
        self.failures = 0;
        self.streak = 0;
    }

    /// A dial failed at `now`. Returns the open time when this trips the
    /// breaker (`threshold` failures in a row while closed, or the probe's
    /// failure); `threshold` 0 is a breaker turned off.
    pub(super) fn dial_failed(&mut self, now: Instant, threshold: u32) -> Option<Duration> {
        if threshold == 0 {
            return None;
        }
        self.failures = self.failures.saturating_add(1);
        match self.phase {
            Phase::Closed if self.failures >= threshold => Some(self.trip(now)),
            Phase::Probing => Some(self.trip(now)),
            // Counted; a dial from before the breaker opened changes nothing.
            Phase::Closed | Phase::Open { .. } => None,
        }
    }

    /// A dial ended with no outcome: a probe's turn goes to the next caller.
    pub(super) fn dial_abandoned(&mut self, now: Instant) {
        if self.phase == Phase::Probing {
            self.phase = Phase::Open { until: now };
        }
    }

    /// Whether warm-up dials (for `min_idle_per_endpoint`) may run: only
    /// while closed, so that they neither hammer an endpoint that is down
    /// nor take the probe's turn.
    pub(super) fn lets_warm_dials(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether the endpoint may be forgotten (retired from the pool's map)
    /// at `now`: not while the breaker is open or probing, or a dead
    /// endpoint would be dialed at full cost again by the next get. Once
    /// the open time is over that get would probe anyway.
    pub(super) fn lets_retire(&self, now: Instant) -> bool {
        match self.phase {
            Phase::Closed => true,
            Phase::Open { until } => now >= until,
            Phase::Probing => false,
        }
    }

    /// Writes the breaker's state and trips into `stats`.
    pub(super) fn report(&self, stats: &mut Stats) {
        stats.breaker = match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::Probing => BreakerState::HalfOpen,
        };
        stats.breaker_trips = self.trips;
    }

    fn trip(&mut self, now: Instant) -> Duration {
        self.trips += 1;
        self.streak = self.streak.saturating_add(1);
        let open = open_time(self.streak, next_draw());
        self.phase = Phase::Open {
            until: crate::deadline::later(now, open),
        };
        open
    }
}

/// The open time after the `streak`th trip in a row, cut by the fraction
/// `draw` (in [0, 1)) of its jitter.
fn open_time(streak: u32, draw: f64) -> Duration {
    let full = backoff_delay(FIRST_OPEN_TIME, streak).min(MAX_OPEN_TIME);
    full.saturating_sub(full.mul_f64(OPEN_TIME_JITTER * draw))
}

/// A fresh random draw per trip, across the process.
fn next_draw() -> f64 {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    unit_random(DRAWS.fetch_add(1, Ordering::Relaxed))
}

impl EndpointPool {
    /// Asks the breaker whether this caller, holding a dialing slot, may
    /// dial; its refusal is the caller's error (the slot is the caller's
    /// to give back).
    pub(super) fn admit_dial(&self) -> Result<(), Error> {
        let threshold = self.config().breaker_failures();
        if threshold == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut st = self.lock();
        let cold = st.cold();
        match cold.breaker.admit(now) {
            Admission::Dial => Ok(()),
            Admission::Probe => {
                tracing::info!(endpoint = %self.endpoint, "circuit breaker half-open: one probe dial");
                Ok(())
            }
            Admission::Refused { retry_in } => Err(Error::CircuitOpen {
                protocol: None,
                endpoint: self.endpoint.clone(),
                failures: cold.breaker.failures,
                retry_in,
                last_dial_error: cold.last_dial_error.clone(),
            }),
        }
    }

    /// A dial this endpoint admitted ended with no outcome.
    pub(super) fn breaker_dial_abandoned(&self) {
        if self.config().breaker_failures() == 0 {
            return;
        }
        if let Some(cold) = self.lock().cold.as_mut() {
            cold.breaker.dial_abandoned(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A breaker tripped by `threshold` failures at `now`.
    fn tripped(now: Instant, threshold: u32) -> (Breaker, Duration) {
        let mut b = Breaker::default();
        for _ in 1..threshold {
            assert_eq!(b.dial_failed(now, threshold), None);
            assert_eq!(b.admit(now), Admission::Dial);
        }
        let open = b
            .dial_failed(now, threshold)
            .expect("the last failure trips it");
        (b, open)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_and_refuses_until_the_open_time_is_over() {
        let now = Instant::now();
        let (mut b, open) = tripped(now, 5);
        assert!(open <= secs(1) && open >= secs(1).mul_f64(0.8), "{open:?}");
        assert_eq!(b.admit(now), Admission::Refused { retry_in: open });
        tokio::time::advance(open / 2).await;
        assert_eq!(
            b.admit(Instant::now()),
            Admission::Refused {
                retry_in: open - open / 2
            }
        );
        tokio::time::advance(open).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        // Exactly one probe: the rest fail fast while it dials.
        assert_eq!(
            b.admit(Instant::now()),
            Admission::Refused {
                retry_in: Duration::ZERO
            }
        );
        let mut stats = Stats::default();
        b.report(&mut stats);
        assert_eq!(
            (stats.breaker, stats.breaker_trips),
            (BreakerState::HalfOpen, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_longer_and_a_successful_one_closes() {
        let (mut b, first) = tripped(Instant::now(), 2);
        tokio::time::advance(first).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        let second = b
            .dial_failed(Instant::now(), 2)
            .expect("the probe's failure reopens");
        assert!(
            second > first && second <= secs(2),
            "{first:?} then {second:?}"
        );
        tokio::time::advance(second).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        b.dial_succeeded();
        assert_eq!(b.admit(Instant::now()), Admission::Dial);
        // Closed again: the count and the doubling start over.
        assert_eq!(b.dial_failed(Instant::now(), 2), None);
        let again = b.dial_failed(Instant::now(), 2).unwrap();
        assert!(again <= secs(1), "{again:?}");
        let mut stats = Stats::default();
        b.report(&mut stats);
        assert_eq!(
            (stats.breaker, stats.breaker_trips),
            (BreakerState::Open, 3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_gives_its_turn_to_the_next_caller() {
        let (mut b, open) = tripped(Instant::now(), 1);
        tokio::time::advance(open).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        b.dial_abandoned(Instant::now());
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        // Not a trip: the next failure doubles from where it was.
        assert_eq!(b.trips, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_of_dials_from_before_the_trip_change_nothing_while_open() {
        let now = Instant::now();
        let (mut b, open) = tripped(now, 3);
        assert_eq!(b.dial_failed(now, 3), None);
        assert_eq!(b.admit(now), Admission::Refused { retry_in: open });
        // A success from one of them closes it: the endpoint is back.
        b.dial_succeeded();
        assert_eq!(b.admit(now), Admission::Dial);
    }

    #[test]
    fn threshold_zero_is_off() {
        let mut b = Breaker::default();
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(b.dial_failed(now, 0), None);
        }
        assert_eq!(b.admit(now), Admission::Dial);
    }

    #[test]
    fn the_open_time_doubles_to_a_minute_and_jitter_only_shortens_it() {
        assert_eq!(open_time(1, 0.0), secs(1));
        assert_eq!(open_time(2, 0.0), secs(2));
        assert_eq!(open_time(6, 0.0), secs(32));
        assert_eq!(open_time(7, 0.0), secs(60));
        assert_eq!(open_time(u32::MAX, 0.0), secs(60));
        assert_eq!(open_time(1, 0.5), Duration::from_millis(900));
        assert!(open_time(7, 0.999_999) > secs(48));
    }
}
