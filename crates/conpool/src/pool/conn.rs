//! A pooled connection's record, and the one rule for whether it may be
//! reused.
//!
//! [`Conn::reuse_verdict`] is the only place that decides if a connection is
//! still fit to hand out by age, idle time and use count. It is asked when a
//! lease comes back (so a spent connection is closed at once instead of
//! taking an idle slot) and when an idle connection is taken out (so one that
//! aged while idle is never handed out).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use crate::{CloseReason, Config, Stream};

/// A live connection and what the pool knows about it.
pub(crate) struct Conn {
    pub(crate) stream: Stream,
    pub(crate) id: u64,
    pub(crate) created_at: Instant,
    /// When it last came back to the pool (or was created).
    pub(crate) last_used: Instant,
    /// How many times it has been handed out.
    pub(crate) uses: u64,
    /// The endpoint's generation when it was created; a connection of an
    /// older generation predates a `clear_endpoint` and is not reused.
    pub(crate) generation: u64,
}

impl Conn {
    pub(crate) fn new(stream: Stream, now: Instant, generation: u64) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Conn {
            stream,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            created_at: now,
            last_used: now,
            uses: 0,
            generation,
        }
    }

    /// `None` if the connection may be handed out at `now`, else why not.
    pub(crate) fn reuse_verdict(&self, now: Instant, config: &Config) -> Option<CloseReason> {
        if now.saturating_duration_since(self.created_at) > config.max_connection_lifetime() {
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
