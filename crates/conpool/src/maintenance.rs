//! Background maintenance: one task per pool, not one per connection.
//!
//! Every `maintenance_interval` the task visits each endpoint pool: it
//! closes idle connections that expired or whose liveness probe fails
//! (without waiting for a checkout to find them), warns about leases held
//! past `leak_threshold`, starts warm-up dials up to
//! `min_idle_per_endpoint`, and drops endpoint entries that have been empty
//! for longer than `max_idle_time`, so that a pool that has talked to
//! 100,000 endpoints does not keep 100,000 entries.
//!
//! The task holds only a weak handle: it ends when the pool is closed or
//! its last handle is dropped. It runs outside tokio's cooperative budget
//! so that its probes see a socket's real readiness.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

use crate::pool::WeakShared;

/// Spawns the task on the current runtime.
pub(crate) fn spawn(shared: WeakShared, closing: Arc<Notify>, every: Duration) {
    tokio::spawn(tokio::task::unconstrained(run(shared, closing, every)));
}

async fn run(shared: WeakShared, closing: Arc<Notify>, every: Duration) {
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::debug!(?every, "maintenance task started");
    loop {
        // Sleeps holding no strong handle, so that dropping the last
        // `Pool` drops the pool (which wakes this task to end).
        tokio::select! {
            _ = ticker.tick() => {}
            _ = closing.notified() => {}
        }
        let Some(pool) = shared.upgrade() else { break };
        if pool.is_closed() {
            break;
        }
        let now = Instant::now();
        let empty_cutoff = now
            .checked_sub(pool.config().max_idle_time())
            .unwrap_or(now);
        let mut removable = Vec::new();
        let (mut closed, mut warming, mut leaks) = (0, 0, 0);
        for endpoint_pool in pool.endpoint_pools() {
            let upkeep = endpoint_pool.maintain(now, empty_cutoff);
            closed += upkeep.closed;
            warming += upkeep.warming;
            leaks += upkeep.leaks;
            if upkeep.removable {
                removable.push(endpoint_pool);
            }
        }
        let removed = pool.remove_empty(&removable);
        // A safety net for a wake-up lost to a waiter that left at the
        // wrong moment: offer free total slots again.
        pool.wake_starved();
        if closed + warming + leaks + removed > 0 {
            tracing::debug!(closed, warming, leaks, removed, "maintenance pass");
        }
    }
    tracing::debug!("maintenance task stopped");
}
