//! Background maintenance: one task per pool, not one per connection, and
//! what keeps that task running for as long as the pool lives.
//!
//! Every `maintenance_interval` the task visits each endpoint pool: it
//! closes idle connections that expired or whose liveness check fails
//! (without waiting for a checkout to find them), warns about leases held
//! past `leak_threshold`, starts warm-up dials up to
//! `min_idle_per_endpoint`, and drops endpoint entries that have been empty
//! for longer than `max_idle_time`, so that a pool that has talked to
//! 100,000 endpoints does not keep 100,000 entries.
//!
//! The task holds only a weak handle: it ends when the pool is closed or
//! its last handle is dropped. It runs outside tokio's cooperative budget
//! so that its liveness checks see a socket's real readiness.
//!
//! # Which runtime runs it
//!
//! A pool is not tied to a runtime: it may be made outside one and used
//! from several, one after another. The task is started by a call made on
//! a live runtime, and runs there; when that runtime shuts down it drops
//! the task, and the task's [`TaskClaim`] says so (`needs_task`), so that
//! the next call from a live runtime starts another. Nothing is marked
//! started unless a task was spawned.
//!
//! The calls that start it are every get ([`ensure_task`] in
//! `EndpointPool::start_acquire`, `EndpointHandle::get` included) and
//! [`Pool::endpoint`](crate::Pool::endpoint). Slow paths alone would not
//! do: a warm endpoint whose top idle connection always fits serves every
//! get on the fast path, forever, while the idle connections under it
//! expire unclosed and `min_idle_per_endpoint` goes unrefilled. On the
//! fast path the check is one relaxed load of a flag that is written only
//! when a task starts or is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Config;
use crate::deadline::later;
use crate::pool::{Context, Shared, WeakShared};

/// A pool's side of its background task: whether one runs, and what a
/// new one needs.
pub(crate) struct Maintenance {
    /// The config wants a task and none runs: none was started yet, or the
    /// runtime that ran it dropped it. Cleared by whoever starts one; set
    /// again by the task's [`TaskClaim`] if its runtime drops it; left
    /// clear by a task that ended because the pool closed or went away.
    needs_task: AtomicBool,
    /// Wakes the task when the pool closes.
    closing: Notify,
    /// The pool, weakly: the task must not keep it alive.
    pool: WeakShared,
}

impl Maintenance {
    pub(crate) fn new(pool: WeakShared, config: &Config) -> Self {
        Maintenance {
            needs_task: AtomicBool::new(config.maintenance_interval().is_some()),
            closing: Notify::new(),
            pool,
        }
    }

    /// The pool closed: the task wakes to end.
    pub(crate) fn pool_closed(&self) {
        self.closing.notify_waiters();
    }

    /// The pool, unless it was closed or dropped (then the task ends).
    fn open_pool(&self) -> Option<Arc<Shared>> {
        self.pool.upgrade().filter(|pool| !pool.is_closed())
    }
}

/// Starts the pool's task on the current runtime if it needs one and there
/// is a runtime here; otherwise does nothing (a later call on a runtime
/// starts it).
#[inline]
pub(crate) fn ensure_task(ctx: &Arc<Context>) {
    if ctx.maintenance.needs_task.load(Ordering::Relaxed) {
        start_task(ctx);
    }
}

#[cold]
#[inline(never)]
fn start_task(ctx: &Arc<Context>) {
    let Some(every) = ctx.config.maintenance_interval() else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let needs_task = &ctx.maintenance.needs_task;
    if needs_task
        .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        // Another caller started it meanwhile.
        return;
    }
    // Made before the spawn, so that a runtime shutting down, which drops
    // the task unpolled, hands the claim back as surely as one that drops
    // it later.
    let claim = TaskClaim {
        ctx: ctx.clone(),
        finished: false,
    };
    runtime.spawn(tokio::task::unconstrained(async move {
        run(&claim.ctx, every).await;
        claim.finish();
    }));
}

/// The running task's claim to be the pool's one task. Dropped before the
/// task finished (its runtime dropped it, or it panicked), it says the pool
/// needs a task again.
struct TaskClaim {
    ctx: Arc<Context>,
    finished: bool,
}

impl TaskClaim {
    /// The task ended because the pool closed or went away: none is
    /// needed again.
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for TaskClaim {
    fn drop(&mut self) {
        if !self.finished {
            tracing::debug!("maintenance task dropped by its runtime; the next call restarts it");
            self.ctx
                .maintenance
                .needs_task
                .store(true, Ordering::Release);
        }
    }
}

async fn run(ctx: &Context, every: Duration) {
    let maintenance = &ctx.maintenance;
    tracing::debug!(?every, "maintenance task started");
    // As tokio's `MissedTickBehavior::Delay`: the next pass is due an
    // interval after this one began. (`tokio::time::Interval` adds the
    // period to an instant unchecked, which a long interval overflows.)
    let mut due = later(Instant::now(), every);
    loop {
        let closing = maintenance.closing.notified();
        tokio::pin!(closing);
        // Listening before the pool is looked at, so that a close after
        // the look still wakes the task.
        closing.as_mut().enable();
        // Sleeps holding no strong handle, so that dropping the last
        // `Pool` drops the pool (which wakes this task to end).
        if maintenance.open_pool().is_none() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = closing => {}
        }
        let now = Instant::now();
        due = later(now, every);
        let Some(pool) = maintenance.open_pool() else {
            break;
        };
        pass(&pool, now);
    }
    tracing::debug!("maintenance task stopped");
}

/// One visit to every endpoint pool.
fn pass(pool: &Shared, now: Instant) {
    // `None` when `max_idle_time` reaches back past what the clock holds:
    // no entry has been empty that long.
    let empty_cutoff = now.checked_sub(pool.config().max_idle_time());
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
