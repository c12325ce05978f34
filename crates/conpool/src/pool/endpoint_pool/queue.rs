//! An endpoint's queue of waiting callers: their places ([`WaitTicket`]),
//! what the queue holds for each ([`Waiter`]), and the one sweeper task per
//! endpoint that fails callers still queued at their deadline.
//!
//! A caller queues under the endpoint's lock and then waits on its own
//! grant cell, with no lock held; whoever frees a connection or a slot
//! grants it to the first live waiter under the lock. Leaving the queue
//! (a timeout, a dropped future) either withdraws the place or, if a grant
//! was already sent, gives the grant back, so nothing leaks.
//!
//! # Who keeps the deadlines
//!
//! Queued callers have no timer of their own; the sweeper keeps their
//! deadlines, on whichever runtime started it. It is started by a waiter,
//! on the waiter's own runtime, outside the endpoint's lock: a caller that
//! queues while no sweeper runs is nudged (see [`grant`]), and its first
//! poll starts one ([`EndpointPool::keep_deadlines`]). A sweeper dropped
//! before it finished (its runtime shut down) nudges every waiter that has
//! a deadline, after letting go of the lock, and the first of them polled
//! on a live runtime starts the next sweeper there. So every caller is
//! failed at its deadline whatever runtime it, or the last sweeper, ran
//! on. A waiter polled outside any runtime, with no sweeper to keep its
//! deadline, fails at once with `Error::NoRuntime` rather than wait
//! without end.

use std::sync::{Arc, Weak};
use std::task::Poll;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{EndpointPool, Grant, State};
use crate::Error;
use crate::pool::grant::{self, GrantReceiver, GrantSender, Received};

impl EndpointPool {
    /// Fails the waiters whose deadline has passed, and says when the next
    /// deadline falls. `None`: sweeper `id` stops, as nobody with a
    /// deadline waits, or as it is not the endpoint's sweeper any more.
    fn expire_waiters(&self, now: Instant, id: u64) -> Option<Instant> {
        let mut st = self.state.lock();
        let mut next: Option<Instant> = None;
        let cold = st.cold();
        if cold.sweeper.as_ref().is_none_or(|sweeper| sweeper.id != id) {
            return None;
        }
        let waiters = std::mem::take(&mut cold.waiters);
        for waiter in waiters {
            match waiter.deadline {
                _ if waiter.tx.is_closed() => {}
                Some(deadline) if deadline <= now => {
                    let _ = waiter.tx.send(Grant::TimedOut);
                }
                deadline => {
                    next = match (next, deadline) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    cold.waiters.push_back(waiter);
                }
            }
        }
        if next.is_none() {
            cold.sweeper = None;
        }
        self.sync_queued(&mut st);
        next
    }

    pub(super) fn enqueue(
        self: &Arc<Self>,
        st: &mut State,
        deadline: Option<Instant>,
    ) -> WaitTicket {
        let (tx, rx) = grant::channel();
        let cold = st.cold();
        let id = cold.next_id;
        cold.next_id += 1;
        if deadline.is_some() && cold.sweeper.is_none() {
            // Its first poll starts a sweeper (a fresh cell has no waker).
            let _ = tx.nudge();
        }
        cold.waiters.push_back(Waiter { id, tx, deadline });
        self.sync_queued(st);
        WaitTicket {
            pool: self.clone(),
            id,
            rx: Some(rx),
            deadline,
        }
    }

    /// Makes sure a sweeper keeps the queue's deadlines, starting one on
    /// this caller's runtime if none does; called by a nudged waiter, with
    /// no lock held. `false`: none does, and there is no runtime here.
    fn keep_deadlines(self: &Arc<Self>) -> bool {
        // Looked up before the lock is taken: it clones the runtime's
        // handle, and nudges are rare.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let (id, runtime) = {
            let mut st = self.state.lock();
            let Some(cold) = st.cold.as_mut() else {
                return true;
            };
            if cold.sweeper.is_some() || cold.waiters.iter().all(|w| w.deadline.is_none()) {
                return true;
            }
            let Some(runtime) = runtime else {
                return false;
            };
            let id = cold.next_id;
            cold.next_id += 1;
            cold.sweeper = Some(Sweeper { id, task: None });
            (id, runtime)
        };
        // Spawned with no lock held: a runtime shutting down drops the task
        // at once, and its guard takes the lock.
        let guard = SweepGuard {
            pool: Arc::downgrade(self),
            id,
            finished: false,
        };
        let task = runtime.spawn(sweep_waiters(guard)).abort_handle();
        let mut st = self.state.lock();
        match st.cold.as_mut().and_then(|c| c.sweeper.as_mut()) {
            Some(sweeper) if sweeper.id == id => sweeper.task = Some(task),
            // Stopped before it was known (the pool closed, the entry
            // retired), or already ended.
            _ => task.abort(),
        }
        true
    }

    /// Wakes every waiter with a deadline, with nobody keeping it now
    /// (see the module docs).
    fn nudge_waiters(&self) {
        let wakers: Vec<_> = {
            let st = self.state.lock();
            st.cold
                .iter()
                .flat_map(|cold| cold.waiters.iter())
                .filter(|waiter| waiter.deadline.is_some())
                .filter_map(|waiter| waiter.tx.nudge())
                .collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    pub(super) fn withdraw(&self, id: u64) -> bool {
        let mut st = self.state.lock();
        let Some(cold) = st.cold.as_mut() else {
            return false;
        };
        match cold.waiters.iter().position(|w| w.id == id) {
            Some(pos) => {
                cold.waiters.remove(pos);
                self.sync_queued(&mut st);
                true
            }
            None => false,
        }
    }
}

pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) tx: GrantSender,
    /// When the caller's `acquire_timeout` runs out, if it has one.
    pub(super) deadline: Option<Instant>,
}

/// An endpoint's sweeper, as its books know it.
pub(super) struct Sweeper {
    /// Tells this sweeper from the one before and the one after.
    id: u64,
    /// `None` while its starter is spawning it.
    task: Option<AbortHandle>,
}

impl Sweeper {
    /// Stops it (nobody waits any more); one still being spawned is
    /// stopped by its starter, which finds it gone from the books.
    pub(super) fn stop(self) {
        if let Some(task) = self.task {
            task.abort();
        }
    }
}

/// Keeps the deadlines of an endpoint's queue: one task per endpoint while
/// callers with a deadline wait, sleeping until the earliest deadline and
/// failing whoever is past theirs. It holds the endpoint weakly and stops
/// when the queue has no deadline left.
async fn sweep_waiters(mut guard: SweepGuard) {
    loop {
        let next = guard
            .pool
            .upgrade()
            .and_then(|pool| pool.expire_waiters(Instant::now(), guard.id));
        let Some(next) = next else {
            // `expire_waiters` took it off the books (or the endpoint is
            // gone, and its waiters with it).
            guard.finished = true;
            return;
        };
        tokio::time::sleep_until(next).await;
    }
}

/// Held by a sweeper from before it is spawned. Dropped before the sweeper
/// finished (stopped by `close`, or dropped by a runtime shutting down,
/// polled or not), it takes the sweeper off the books and nudges the
/// waiters that still have deadlines, so that one of them starts another.
struct SweepGuard {
    pool: Weak<EndpointPool>,
    id: u64,
    finished: bool,
}

impl Drop for SweepGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        if let Some(cold) = pool.state.lock().cold.as_mut() {
            if cold.sweeper.as_ref().is_some_and(|s| s.id == self.id) {
                cold.sweeper = None;
            }
        }
        pool.nudge_waiters();
    }
}

/// A caller's place in an endpoint's queue. Dropping it before it is
/// served leaves the queue; dropping it after a grant was sent returns the
/// grant.
pub(crate) struct WaitTicket {
    pool: Arc<EndpointPool>,
    id: u64,
    rx: Option<GrantReceiver>,
    /// When the caller gives up, as the sweeper keeps it.
    pub(super) deadline: Option<Instant>,
}

impl WaitTicket {
    /// Waits for the grant. Fails only when the caller was nudged outside
    /// any runtime with nobody keeping its deadline; it is still queued
    /// then, and dropping the ticket withdraws it.
    pub(super) async fn wait(&mut self) -> Result<Grant, Error> {
        let pool = &self.pool;
        let rx = self.rx.as_mut().expect("a ticket is waited on once");
        let grant = std::future::poll_fn(|cx| {
            loop {
                match rx.poll_recv(cx) {
                    Poll::Ready(Received::Grant(grant)) => return Poll::Ready(Ok(grant)),
                    // The sender is only dropped unsent when its waiter
                    // has left, or after `close` sent Closed.
                    Poll::Ready(Received::Nothing) => return Poll::Ready(Ok(Grant::Closed)),
                    // Polled again at once, which registers the waker.
                    Poll::Ready(Received::Nudged) if pool.keep_deadlines() => {}
                    Poll::Ready(Received::Nudged) => {
                        return Poll::Ready(Err(pool.no_runtime_error()));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await?;
        self.rx = None;
        Ok(grant)
    }
}

impl Drop for WaitTicket {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        if self.pool.withdraw(self.id) {
            return;
        }
        // Grants are sent under the lock that `withdraw` took, so if one was
        // sent it is in the cell now.
        if let Some(grant) = rx.close() {
            self.pool.give_back(grant);
        }
    }
}
