//! A pooled connection's record, and the one rule for whether it may be
//! reused.
//!
//! [`Conn::reuse_verdict`] is the only place that decides if a connection is
//! still fit to hand out by age, idle time and use count. It is asked when a
//! lease comes back (so a spent connection is closed at once instead of
//! taking an idle slot) and when an idle connection is taken out (so one that
//! aged while idle is never handed out).

use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::{CloseReason, Config, Stream};

/// A live connection and what the pool knows about it.
pub(crate) struct Conn {
    pub(crate) stream: Stream,
    pub(crate) id: u64,
    pub(crate) created_at: Instant,
    /// Creation plus the lifetime, less this connection's jitter.
    pub(crate) expires_at: Instant,
    /// When it last came back to the pool (or was created).
    pub(crate) last_used: Instant,
    /// How many times it has been handed out.
    pub(crate) uses: u64,
    /// The endpoint's generation when it was created; a connection of an
    /// older generation predates a `clear_endpoint` and is not reused.
    pub(crate) generation: u64,
}

impl Conn {
    pub(crate) fn new(stream: Stream, now: Instant, generation: u64, config: &Config) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let lifetime = config.max_connection_lifetime();
        let cut = lifetime.mul_f64(config.max_connection_lifetime_jitter() * unit_random(id));
        Conn {
            stream,
            id,
            created_at: now,
            expires_at: now + lifetime.saturating_sub(cut).max(Duration::from_millis(1)),
            last_used: now,
            uses: 0,
            generation,
        }
    }

    /// `None` if the connection may be handed out at `now`, else why not.
    pub(crate) fn reuse_verdict(&self, now: Instant, config: &Config) -> Option<CloseReason> {
        if now > self.expires_at {
            Some(CloseReason::LifetimeExpired)
        } else if now.saturating_duration_since(self.last_used) > config.max_idle_time() {
            Some(CloseReason::IdleExpired)
        } else if config
            .max_connection_uses()
            .is_some_and(|max| self.uses >= max)
        {
            Some(CloseReason::UsesExhausted)
        } else {
            None
        }
    }
}

/// A number in [0, 1) that differs from connection to connection and from
/// process to process (splitmix64 of the id and a per-process seed).
fn unit_random(id: u64) -> f64 {
    static SEED: LazyLock<u64> = LazyLock::new(|| RandomState::new().hash_one(0x5eed_u64));
    let mut z = id.wrapping_add(*SEED).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_spreads_within_the_fraction() {
        let samples: Vec<f64> = (0..10_000).map(unit_random).collect();
        assert!(samples.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
    }
}
