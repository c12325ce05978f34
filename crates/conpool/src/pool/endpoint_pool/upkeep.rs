//! The maintenance pass's visit to one endpoint, and the endpoint's
//! retirement from the pool's map.
//!
//! The background task (`crate::maintenance`) calls [`EndpointPool::maintain`]
//! on every endpoint each interval: it closes what expired or died while
//! idle, warns about leases held too long, starts warm-up dials, and says
//! whether the endpoint has been empty long enough to be forgotten; the
//! pool then retires such entries under its map's write lock.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Closing, DialRoom, EndpointPool};
use crate::stream::Look;

/// What [`EndpointPool::maintain`] did, for the maintenance log.
#[derive(Debug, Default)]
pub(crate) struct Upkeep {
    pub(crate) closed: usize,
    pub(crate) warming: usize,
    pub(crate) leaks: usize,
    /// Empty since before the cut-off: may be removed from the map.
    pub(crate) removable: bool,
}

impl EndpointPool {
    /// The background task's visit: closes idle connections that expired
    /// or whose liveness check fails, warns once about each lease held past
    /// `leak_threshold`, starts warm-up dials up to `min_idle_per_endpoint`,
    /// and says whether the endpoint has been empty since before
    /// `empty_cutoff` (`None`: no cut-off is that far back).
    pub(crate) fn maintain(
        self: &Arc<Self>,
        now: Instant,
        empty_cutoff: Option<Instant>,
    ) -> Upkeep {
        // Parked connections join the idle stack, to be judged with it.
        self.take_back_parked();
        let config = self.config();
        let mut upkeep = Upkeep::default();
        let mut closing = Closing::new();
        let mut warm = 0;
        {
            let mut st = self.lock();
            if st.closed || st.retired {
                return upkeep;
            }
            st.idle.drop_where(
                |conn| {
                    conn.reuse_verdict(now, config).or_else(|| {
                        // The runtime's readiness only: a system call per
                        // idle connection per pass would cost a pool of
                        // 100,000 endpoints more than the pass itself, and
                        // every checkout looks again.
                        conn.held
                            .look(config.liveness_check().then_some(Look::Readiness))
                    })
                },
                &mut closing,
            );
            self.ctx.global.idle_changed(0, closing.len());
            for (_, reason) in &closing {
                st.counters.closed(*reason);
            }
            if let Some(threshold) = config.leak_threshold() {
                for (id, lease) in st.cold.iter_mut().flat_map(|c| c.leases.iter_mut()) {
                    if !lease.warned && now.saturating_duration_since(lease.since) >= threshold {
                        lease.warned = true;
                        upkeep.leaks += 1;
                        tracing::warn!(
                            endpoint = %self.endpoint,
                            connection = id,
                            held_for = ?now.saturating_duration_since(lease.since),
                            acquired_at = %lease.caller,
                            "a connection has been leased for longer than leak_threshold; is it leaked?"
                        );
                    }
                }
            }
            let want = config.min_idle_per_endpoint();
            let backing_off = st.cold.as_ref().is_some_and(|c| {
                c.warm_retry_at.is_some_and(|at| now < at) || !c.breaker.lets_warm_dials()
            });
            while want > 0
                && !backing_off
                && st.idle.len() + (st.dialing as usize) < want
                && st.waiting() == 0
                && self.take_dial_slot(&mut st) == DialRoom::Yes
            {
                warm += 1;
            }
            if st.is_empty() {
                let since = *st.cold().empty_since.get_or_insert(now);
                let breaker_done = st.cold.as_ref().is_none_or(|c| c.breaker.lets_retire(now));
                upkeep.removable =
                    want == 0 && breaker_done && empty_cutoff.is_some_and(|cut| since <= cut);
            } else {
                st.in_use();
            }
        }
        for _ in 0..warm {
            // Nobody receives: the connection goes to a waiter or to idle.
            let (tx, _) = oneshot::channel();
            if !self.spawn_dial(tx, true) {
                self.return_unused_dial(false);
            }
        }
        upkeep.closed = closing.len();
        upkeep.warming = warm;
        self.close_all(closing);
        upkeep
    }

    /// Marks the endpoint retired if it is still empty; called with the
    /// pool's map locked for writing, just before removing it.
    pub(crate) fn retire_if_empty(&self) -> bool {
        let mut st = self.lock();
        // A first handle is taken with the map locked, and this runs with
        // it locked for writing, so none can appear after this read (a
        // handle cloned from another finds the count above zero already).
        let held = st.cold.as_ref().is_some_and(|c| c.handles > 0);
        if st.is_empty() && !st.closed && !held {
            st.retired = true;
            // A sweeper left sleeping on a deadline of a caller that has
            // since gone would outlive the entry for no purpose.
            if let Some(sweeper) = st.cold.as_mut().and_then(|c| c.sweeper.take()) {
                sweeper.stop();
            }
        }
        st.retired
    }
}
