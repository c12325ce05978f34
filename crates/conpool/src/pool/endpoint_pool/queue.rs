//! An endpoint's queue of waiting callers: their places ([`WaitTicket`]),
//! what the queue holds for each ([`Waiter`]), and the one sweeper task per
//! endpoint that fails callers still queued at their deadline.
//!
//! A caller queues under the endpoint's lock and then waits on its own
//! grant cell, with no lock held; whoever frees a connection or a slot
//! grants it to the first live waiter under the lock. Leaving the queue
//! (a timeout, a dropped future) either withdraws the place or, if a grant
//! was already sent, gives the grant back, so nothing leaks.

use std::sync::Arc;

use tokio::time::Instant;

use super::{EndpointPool, Grant, State};
use crate::pool::grant::{self, GrantReceiver, GrantSender};

impl EndpointPool {
    /// Fails the waiters whose deadline has passed, and says when the next
    /// deadline falls (`None`: nobody with a deadline waits; the sweeper
    /// stops).
    pub(super) fn expire_waiters(&self, now: Instant) -> Option<Instant> {
        let mut st = self.state.lock();
        let mut next: Option<Instant> = None;
        let cold = st.cold();
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
        let id = cold.next_waiter_id;
        cold.next_waiter_id += 1;
        cold.waiters.push_back(Waiter { id, tx, deadline });
        if deadline.is_some() && cold.sweeper.is_none() {
            let task = tokio::spawn(sweep_waiters(Arc::downgrade(self)));
            cold.sweeper = Some(task.abort_handle());
        }
        self.sync_queued(st);
        WaitTicket {
            pool: self.clone(),
            id,
            rx: Some(rx),
            deadline,
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

/// Keeps the deadlines of an endpoint's queue: one task per endpoint while
/// callers with a deadline wait, sleeping until the earliest deadline and
/// failing whoever is past theirs. It holds the endpoint weakly and stops
/// when the queue has no deadline left.
async fn sweep_waiters(pool: std::sync::Weak<EndpointPool>) {
    let mut guard = SweepGuard(Some(pool));
    loop {
        let pool = guard.0.as_ref().and_then(std::sync::Weak::upgrade);
        let Some(next) = pool.and_then(|pool| pool.expire_waiters(Instant::now())) else {
            // `expire_waiters` cleared the flag (or the endpoint is gone).
            guard.0 = None;
            return;
        };
        tokio::time::sleep_until(next).await;
    }
}

/// Forgets the sweeper if it is dropped before it finished (aborted by
/// `close`, or its runtime shut down), so that a later waiter starts
/// another.
struct SweepGuard(Option<std::sync::Weak<EndpointPool>>);

impl Drop for SweepGuard {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take().and_then(|weak| weak.upgrade()) {
            if let Some(cold) = pool.state.lock().cold.as_mut() {
                cold.sweeper = None;
            }
        }
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
    pub(super) async fn wait(&mut self) -> Grant {
        let rx = self.rx.as_mut().expect("a ticket is waited on once");
        // The sender is only dropped unsent when its waiter has left, or
        // after `close` sent Closed; treat a vanished sender as closed.
        let grant = std::future::poll_fn(|cx| rx.poll_recv(cx))
            .await
            .unwrap_or(Grant::Closed);
        self.rx = None;
        grant
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
