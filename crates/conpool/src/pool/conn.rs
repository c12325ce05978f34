//! A pooled connection's record, and the one rule for whether it may be
//! reused.
//!
//! [`Conn::reuse_verdict`] is the only place that decides if a connection is
//! still fit to hand out by age, idle time and use count (and
//! [`Conn::share_verdict`], the same rule less idle time, whether a shared
//! connection in use may take one more share). It is asked when a
//! lease comes back (so a spent connection is closed at once instead of
//! taking an idle slot) and when an idle connection is taken out (so one that
//! aged while idle is never handed out).
//!
//! The deadlines are computed once, when a connection goes idle
//! ([`Conn::mark_idle`]), so that the checkout path compares two instants
//! instead of subtracting them: a checkout reads the clock once and does no
//! time arithmetic. Nothing else is kept: the record is allocated per
//! connection, and a pool with 100,000 endpoints holds one for each idle
//! connection, so what can be derived is derived (the last return from
//! the kernel-look window's end, the creation from the expiry).

use std::hash::{BuildHasher, RandomState};
use std::ops::{Deref, DerefMut};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::Held;
use crate::deadline::{CENTURY, later};
use crate::{CloseReason, Config};

/// A live connection and what the pool knows about it, boxed: a connection
/// changes hands by value many times per checkout (idle stack, lease,
/// grant, release), and moving a pointer is cheaper than moving the record.
pub(crate) struct Conn(Box<Record>);

impl Deref for Conn {
    type Target = Record;

    fn deref(&self) -> &Record {
        &self.0
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Record {
        &mut self.0
    }
}

/// What the pool knows about a connection.
pub(crate) struct Record {
    pub(crate) held: Held,
    pub(crate) id: u64,
    /// Creation plus [`lifetime`]: the configured lifetime less this
    /// connection's jitter. The creation is not stored: see
    /// [`Conn::created_at`].
    expires_at: Instant,
    /// Past this instant it may not be handed out: the earlier of
    /// `expires_at` and `max_idle_time` after it last came back to the pool
    /// (or was created).
    reuse_by: Instant,
    /// From this instant on, a checkout asks the kernel, not only the
    /// runtime's readiness, whether the peer closed it or wrote to it:
    /// `liveness_peek_after` after it last came back (or was created).
    /// Being that return plus one length for every connection of a pool,
    /// it also orders connections by when they last came back (see
    /// [`Conn::return_order`]): storing the return too would cost 16 bytes
    /// in every idle connection's record, which the memory target (256 B
    /// per idle connection, 252 B used) does not have room for.
    peek_from: Instant,
    /// Its last lease outlasted `liveness_peek_after`: ask the kernel at
    /// the next checkout, however soon.
    peek_next: bool,
    /// How many times it has been handed out.
    pub(crate) uses: u64,
    /// The endpoint's generation when it was created; a connection of an
    /// older generation predates a `clear_endpoint` and is not reused.
    pub(crate) generation: u32,
}

impl Conn {
    pub(crate) fn new(held: Held, now: Instant, generation: u32, config: &Config) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let expires_at = later(now, lifetime(id, config));
        let mut conn = Conn(Box::new(Record {
            held,
            id,
            expires_at,
            reuse_by: expires_at,
            peek_from: expires_at,
            peek_next: false,
            uses: 0,
            generation,
        }));
        conn.set_deadlines(now, config);
        conn
    }

    /// Records that the connection came back at `now`, and computes the
    /// deadlines the checkout path compares against.
    ///
    /// A lease that outlasted `liveness_peek_after` may have sat silent all
    /// the while, long enough for the server to close it, so a connection
    /// that comes back past its previous `peek_from` has the kernel asked
    /// at its next checkout, however soon that is. (Its time idle before
    /// that lease counts too, which only errs towards asking.)
    #[inline]
    pub(crate) fn mark_idle(&mut self, now: Instant, config: &Config) {
        // `peek_from` is still the previous return (or the creation) plus
        // the window.
        self.peek_next = now >= self.peek_from;
        self.set_deadlines(now, config);
    }

    /// Whether a checkout at `now` asks the kernel: idle for at least
    /// `liveness_peek_after`, or back from a lease that lasted that long.
    pub(crate) fn due_for_peek(&self, now: Instant) -> bool {
        self.peek_next || now >= self.peek_from
    }

    #[inline]
    fn set_deadlines(&mut self, now: Instant, config: &Config) {
        // Past `expires_at` nothing matters any more.
        self.reuse_by = later(now, config.max_idle_time()).min(self.expires_at);
        // A window too long to add means "never"; `later`'s century on (the
        // same for every connection) keeps the order of returns that
        // `return_order` reads.
        self.peek_from = later(now, config.liveness_peek_after());
    }

    /// When it was created: its expiry less the lifetime that expiry was
    /// computed with, which its id and the config determine.
    pub(crate) fn created_at(&self, config: &Config) -> Instant {
        self.expires_at
            .checked_sub(lifetime(self.id, config))
            .unwrap_or(self.expires_at)
    }

    /// Puts this connection, coming back to the idle stack, after `top`,
    /// the one on top of it: returns read the clock before taking the
    /// endpoint's lock, and a grant given back keeps the return it had, so
    /// a connection can reach the stack with an earlier return than its
    /// top. The stack (and the pool's order of idle returns) is kept in
    /// return order by moving this one's return up to the top's, a few
    /// nanoseconds at most for racing returns. That also moves the instant
    /// from which it is due for a kernel look by as much, which only
    /// matters to a checkout that came before the top's return, and none
    /// can: this one is not idle yet.
    pub(crate) fn come_back_after(&mut self, top: &Conn) {
        self.peek_from = self.peek_from.max(top.peek_from);
    }

    /// Orders connections of one pool as their last returns to it (or
    /// creations) do, earliest first: for least-recently-used eviction.
    pub(crate) fn return_order(&self) -> Instant {
        self.peek_from
    }

    /// `None` if the connection may be handed out at `now`, else why not.
    pub(crate) fn reuse_verdict(&self, now: Instant, config: &Config) -> Option<CloseReason> {
        if now > self.reuse_by {
            Some(if now > self.expires_at {
                CloseReason::LifetimeExpired
            } else {
                CloseReason::IdleExpired
            })
        } else {
            self.uses_verdict(config)
        }
    }

    /// `None` if one more lease may share the connection at `now`, else
    /// why not: the reuse rule less idle time, as a shared connection with
    /// shares in flight is not idle (its idle time starts when its last
    /// share comes back, and the rule above applies from then).
    pub(crate) fn share_verdict(&self, now: Instant, config: &Config) -> Option<CloseReason> {
        if now > self.expires_at {
            Some(CloseReason::LifetimeExpired)
        } else {
            self.uses_verdict(config)
        }
    }

    #[inline]
    fn uses_verdict(&self, config: &Config) -> Option<CloseReason> {
        config
            .max_connection_uses()
            .is_some_and(|max| self.uses >= max)
            .then_some(CloseReason::UsesExhausted)
    }
}

/// Connection `id`'s lifetime: the configured one less its jitter, at least
/// a millisecond. A lifetime past a century means "never" as much as one
/// too long to add to an instant; capped there, adding it never overflows,
/// so that [`Conn::created_at`] can take it back off the expiry.
fn lifetime(id: u64, config: &Config) -> Duration {
    let lifetime = config.max_connection_lifetime();
    let cut = lifetime.mul_f64(config.max_connection_lifetime_jitter() * unit_random(id));
    lifetime
        .saturating_sub(cut)
        .max(Duration::from_millis(1))
        .min(CENTURY)
}

/// A number in [0, 1) that differs from connection to connection and from
/// process to process (splitmix64 of the id and a per-process seed).
pub(crate) fn unit_random(id: u64) -> f64 {
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
    use crate::Stream;

    #[tokio::test]
    async fn the_creation_time_is_read_back_exactly_from_the_expiry() {
        for lifetime in [
            Duration::from_secs(1),
            Duration::from_secs(3600),
            Duration::MAX,
        ] {
            let config = Config::builder()
                .max_connection_lifetime(lifetime)
                .max_connection_lifetime_jitter(0.5)
                .build()
                .unwrap();
            let now = Instant::now();
            for _ in 0..100 {
                let (client, _server) = tokio::io::duplex(8);
                let conn = Conn::new(Held::Stream(Stream::custom(client)), now, 0, &config);
                assert_eq!(conn.created_at(&config), now, "lifetime {lifetime:?}");
            }
        }
    }

    #[test]
    fn jitter_spreads_within_the_fraction() {
        let samples: Vec<f64> = (0..10_000).map(unit_random).collect();
        assert!(samples.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
    }
}
