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
//! # Constant work per get, per cancel and per deadline
//!
//! An overloaded endpoint may hold thousands of waiters, and callers leave
//! it all the time (their own timeouts, dropped futures). So [`Queue`] never
//! searches: a caller that leaves closes its cell, which is then a dead
//! entry, skipped and dropped when the front reaches it, or all at once
//! when the dead come to outnumber the living. And the deadlines are kept
//! in the queue's own order: every caller that queues with a deadline gets
//! `acquire_timeout` from its start, so they fall in arrival order (to
//! within the few nanoseconds between two threads reading the clock and
//! taking the lock), and the sweeper expires callers from the front and
//! stops at the first whose deadline is still ahead.
//!
//! Every grant's waker is woken only after the endpoint's lock is released
//! (see `State::defer_wake`).
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

use std::collections::VecDeque;
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
        let mut st = self.lock_state();
        let mut wakes = Wakes::new();
        let cold = st.cold();
        if cold.sweeper.as_ref().is_none_or(|sweeper| sweeper.id != id) {
            return None;
        }
        let next = cold.queue.expire(now, &mut wakes);
        if next.is_none() {
            cold.sweeper = None;
        }
        self.sync_queued(&mut st);
        st.wake_later(wakes);
        next
    }

    pub(super) fn enqueue(
        self: &Arc<Self>,
        st: &mut State,
        deadline: Option<Instant>,
    ) -> WaitTicket {
        let (tx, rx) = grant::channel();
        let cold = st.cold();
        if deadline.is_some() && cold.sweeper.is_none() {
            // Its first poll starts a sweeper (a fresh cell has no waker).
            let _ = tx.nudge();
        }
        cold.queue.push(Waiter { tx, deadline });
        self.sync_queued(st);
        WaitTicket {
            pool: self.clone(),
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
            let mut st = self.lock();
            let Some(cold) = st.cold.as_mut() else {
                return true;
            };
            if cold.sweeper.is_some() || !cold.queue.any_deadline() {
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
        let mut st = self.lock();
        let (closed, retired) = (st.closed, st.retired);
        match st.cold.as_mut().and_then(|c| c.sweeper.as_mut()) {
            Some(sweeper) if sweeper.id == id => sweeper.task = Some(task),
            // Stopped before it was known: the pool closed, or the entry
            // retired; the caller hears of it through its cell.
            _ if closed || retired => task.abort(),
            // Gone already, with this caller still waiting: the runtime
            // dropped the task at once, as one that has shut down does
            // (its handle still entered on this thread). Starting another
            // would go the same way, and its guard's nudge would bring
            // this caller straight back here.
            _ => {
                task.abort();
                return false;
            }
        }
        true
    }

    /// Wakes every waiter with a deadline, with nobody keeping it now
    /// (see the module docs).
    fn nudge_waiters(&self) {
        let wakers: Vec<_> = {
            let st = self.lock();
            st.cold
                .iter()
                .flat_map(|cold| cold.queue.waiters.iter())
                .filter(|waiter| waiter.deadline.is_some())
                .filter_map(|waiter| waiter.tx.nudge())
                .collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// Takes a caller that gives up out of the queue: its cell closes, and
    /// a grant already in it comes back, for the caller to give back once
    /// no lock is held. Closing under the lock that every grant is sent
    /// under tells the two cases apart: no grant in the cell means the
    /// caller's entry is still queued, and now dead.
    fn withdraw(&self, rx: &mut GrantReceiver) -> Option<Grant> {
        let mut st = self.lock_state();
        let grant = rx.close();
        if grant.is_none() {
            if let Some(cold) = st.cold.as_mut() {
                cold.queue.left();
            }
            self.sync_queued(&mut st);
        }
        grant
    }
}

/// An endpoint's waiting callers, first come first served, and how many of
/// them still wait (see the module docs).
#[derive(Default)]
pub(super) struct Queue {
    /// In arrival order; entries whose caller left, or was served by the
    /// sweeper, are dead (their sender is closed) until they are dropped.
    waiters: VecDeque<Waiter>,
    /// The live entries.
    live: usize,
}

impl Queue {
    /// Callers waiting.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    fn push(&mut self, waiter: Waiter) {
        self.waiters.push_back(waiter);
        self.live += 1;
    }

    /// A live entry's caller left.
    fn left(&mut self) {
        debug_assert!(self.live > 0, "a caller left a queue with nobody in it");
        self.live -= 1;
        // Dead entries are dropped at the front as it reaches them; when
        // the front does not move (nothing is granted while every slot is
        // held), they are dropped all at once, once they outnumber the
        // living: O(1) per caller that left, amortised.
        if self.waiters.len() > 2 * self.live + 16 {
            self.waiters.retain(|waiter| !waiter.tx.is_closed());
            debug_assert_eq!(self.waiters.len(), self.live);
        }
    }

    /// Hands `grant` to the first live caller, dropping the dead entries
    /// before it; its waker goes to `wakes`. Gives the grant back if nobody
    /// waits.
    pub(super) fn grant(&mut self, mut grant: Grant, wakes: &mut Wakes) -> Result<(), Grant> {
        while let Some(mut waiter) = self.waiters.pop_front() {
            match waiter.tx.send(grant) {
                Ok(waker) => {
                    self.live -= 1;
                    wakes.extend(waker);
                    return Ok(());
                }
                Err(back) => grant = back,
            }
        }
        debug_assert_eq!(self.live, 0, "live callers left unserved");
        Err(grant)
    }

    /// Whether a live caller waits, dropping the dead entries before the
    /// first one.
    pub(super) fn has_live(&mut self) -> bool {
        while self.waiters.front().is_some_and(|w| w.tx.is_closed()) {
            self.waiters.pop_front();
        }
        debug_assert!(self.waiters.is_empty() == (self.live == 0));
        self.live > 0
    }

    /// Fails the callers whose deadline is at or before `now`, from the
    /// front, and returns the first deadline still ahead (`None`: none is).
    /// Callers without a deadline (they keep their own timer) are passed
    /// over; dead entries at the front are dropped.
    fn expire(&mut self, now: Instant, wakes: &mut Wakes) -> Option<Instant> {
        let mut i = 0;
        while let Some(waiter) = self.waiters.get_mut(i) {
            if !waiter.tx.is_closed() {
                match waiter.deadline {
                    Some(deadline) if deadline > now => return Some(deadline),
                    Some(_) => {
                        if let Ok(waker) = waiter.tx.send(Grant::TimedOut) {
                            self.live -= 1;
                            wakes.extend(waker);
                        }
                    }
                    None => {}
                }
            }
            if i == 0 && self.waiters[0].tx.is_closed() {
                self.waiters.pop_front();
            } else {
                i += 1;
            }
        }
        None
    }

    /// Whether any live caller has a deadline (for a nudged waiter deciding
    /// whether a sweeper is needed; rare).
    fn any_deadline(&self) -> bool {
        self.waiters
            .iter()
            .any(|w| w.deadline.is_some() && !w.tx.is_closed())
    }

    /// Its own invariant: the live entries are among the entries.
    #[cfg(debug_assertions)]
    pub(super) fn check(&self) {
        debug_assert!(
            self.live <= self.waiters.len(),
            "{} live callers counted in {} entries",
            self.live,
            self.waiters.len()
        );
    }

    /// Every entry, for `close`, which tells each live one.
    pub(super) fn take_all(&mut self) -> VecDeque<Waiter> {
        self.live = 0;
        std::mem::take(&mut self.waiters)
    }
}

/// Wakers of callers granted under the endpoint's lock, woken once it is
/// released.
pub(super) type Wakes = Vec<std::task::Waker>;

pub(super) struct Waiter {
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
        if let Some(cold) = pool.lock().cold.as_mut() {
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
                    // A grant (the sweeper's timeout, say) may have come
                    // meanwhile; failing for want of a runtime is for a
                    // caller with none.
                    Poll::Ready(Received::Nudged) => {
                        return Poll::Ready(match rx.poll_recv(cx) {
                            Poll::Ready(Received::Grant(grant)) => Ok(grant),
                            Poll::Ready(Received::Nothing) => Ok(Grant::Closed),
                            _ => Err(pool.no_runtime_error()),
                        });
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
        if let Some(grant) = self.pool.withdraw(&mut rx) {
            self.pool.give_back(grant);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::task::{Context, Wake, Waker};
    use std::time::Duration;

    use super::*;
    use crate::dial::{Dial, DialError};
    use crate::pool::grant::channel;
    use crate::{BoxFuture, Config, Endpoint, Pool, Stream};

    fn waiter(deadline: Option<Instant>) -> (Waiter, GrantReceiver) {
        let (tx, rx) = channel();
        (Waiter { tx, deadline }, rx)
    }

    #[test]
    fn callers_that_left_are_dropped_before_they_outnumber_the_living() {
        let mut queue = Queue::default();
        let mut receivers: Vec<_> = (0..10_000)
            .map(|_| {
                let (w, rx) = waiter(None);
                queue.push(w);
                rx
            })
            .collect();
        let last = receivers.pop().unwrap();
        for mut rx in receivers {
            assert!(rx.close().is_none());
            queue.left();
            assert!(queue.waiters.len() <= 2 * queue.len() + 16);
        }
        assert_eq!(queue.len(), 1);
        let mut wakes = Wakes::new();
        assert!(queue.grant(Grant::Dial, &mut wakes).is_ok());
        let mut last = last;
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            last.poll_recv(&mut cx),
            Poll::Ready(crate::pool::grant::Received::Grant(Grant::Dial))
        ));
        assert_eq!(queue.len(), 0);
        assert!(!queue.has_live());
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_expires_from_the_front_and_stops_at_the_first_deadline_ahead() {
        let now = Instant::now();
        let mut queue = Queue::default();
        let at = |ms| Some(now + Duration::from_millis(ms));
        let mut receivers = Vec::new();
        for deadline in [at(1), None, at(2), at(3), at(10), at(11)] {
            let (w, rx) = waiter(deadline);
            queue.push(w);
            receivers.push(rx);
        }
        let mut wakes = Wakes::new();
        let next = queue.expire(now + Duration::from_millis(3), &mut wakes);
        assert_eq!(next, at(10));
        assert_eq!(
            queue.len(),
            3,
            "the one without a deadline and the two ahead"
        );
        let mut cx = Context::from_waker(Waker::noop());
        let timed_out: Vec<bool> = receivers
            .iter_mut()
            .map(|rx| {
                matches!(
                    rx.poll_recv(&mut cx),
                    Poll::Ready(crate::pool::grant::Received::Grant(Grant::TimedOut))
                )
            })
            .collect();
        assert_eq!(timed_out, [true, false, true, true, false, false]);
        // The first grant goes to the caller without a deadline, next in line.
        assert!(queue.grant(Grant::Dial, &mut wakes).is_ok());
        assert!(matches!(
            receivers[1].poll_recv(&mut cx),
            Poll::Ready(crate::pool::grant::Received::Grant(Grant::Dial))
        ));
    }

    /// Records, when woken, whether the endpoint's lock was free.
    struct LockProbe {
        pool: std::sync::Mutex<Option<Arc<EndpointPool>>>,
        woken: AtomicUsize,
        lock_was_free: AtomicBool,
    }

    impl Wake for LockProbe {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            if let Some(pool) = self.pool.lock().unwrap().as_ref() {
                self.woken.fetch_add(1, Ordering::SeqCst);
                self.lock_was_free
                    .store(pool.state.try_lock().is_some(), Ordering::SeqCst);
            }
        }
    }

    struct Duplex;

    impl Dial for Duplex {
        fn dial<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
            Box::pin(async {
                let (client, server) = tokio::io::duplex(64);
                std::mem::forget(server);
                Ok(Stream::custom(client))
            })
        }
    }

    #[tokio::test]
    async fn a_caller_granted_a_connection_is_woken_after_the_lock_is_released() {
        let pool = Pool::with_dialer(
            Config::builder()
                .max_connections_per_endpoint(1)
                .build()
                .unwrap(),
            Duplex,
        );
        let ep = Endpoint::new("queue.test", 1).unwrap();
        let held = pool.get(&ep).await.unwrap();
        let endpoint_pool = pool.shared.ctx.endpoints.get(&ep).unwrap();
        let probe = Arc::new(LockProbe {
            pool: std::sync::Mutex::new(Some(endpoint_pool)),
            woken: AtomicUsize::new(0),
            lock_was_free: AtomicBool::new(false),
        });
        let waker = Waker::from(probe.clone());
        let mut waiting = std::pin::pin!(pool.get(&ep));
        assert!(
            waiting
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        drop(held);
        assert_eq!(probe.woken.load(Ordering::SeqCst), 1);
        assert!(
            probe.lock_was_free.load(Ordering::SeqCst),
            "woken while the endpoint's lock was held"
        );
        assert!(waiting.await.is_ok());
        probe.pool.lock().unwrap().take();
    }
}
