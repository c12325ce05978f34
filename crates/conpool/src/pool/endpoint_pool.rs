//! One endpoint's pool: its idle connections, its waiters and its limit.
//!
//! An endpoint's books sit behind one short [`Mutex`]: the idle stack (most
//! recently used on top, so a busy pool keeps a few connections hot and lets
//! the rest expire), the FIFO queue of waiters, the counts of connections
//! leased out and being dialed, and the counters. (Only the per-thread
//! slots keep their own: the connections parked in them, their reuse
//! counts, and mirrors of the queue length and the generation that
//! releasers read without this lock.) The lock is never
//! held across an `.await`, a dial, a health check or a close: work that
//! needs any of these is decided under the lock and done after it.
//!
//! # Slots
//!
//! The limit counts `active + idle + dialing`. A slot changes hands in
//! exactly three ways, and each is a method here:
//!
//! - a returned connection goes straight to the first live waiter
//!   ([`Grant::Conn`]), else onto the idle stack;
//! - a closed connection's slot goes to the first live waiter as permission
//!   to dial ([`Grant::Dial`]);
//! - a waiter that gives up after a grant was sent to it gives the grant
//!   back ([`WaitTicket`]'s `Drop`), so no permit leaks on cancellation.
//!
//! Dials run in their own task ([`dialing`]): a caller that gives up does
//! not cancel the dial it started, and the new connection goes to the next
//! waiter or to idle. The queue and its deadline sweeper are in [`queue`],
//! the maintenance pass's visit and retirement in [`upkeep`].
//!
//! # Around the lock
//!
//! Three things keep the lock's work small when an endpoint is busy. The
//! queue's deadlines are kept by one sweeper task per endpoint, not a timer
//! per waiting caller. Once the lock is found contended, returned
//! connections are parked in per-thread slots ([`super::slots`]) while
//! nobody waits, so that gets and returns on different cores stop meeting
//! here. And the counters are plain integers under the lock, not atomics on
//! a line of their own.

use std::collections::HashMap;
use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::task::Poll;
use std::task::Waker;

use once_cell::race::OnceBox;
use parking_lot::{Mutex, MutexGuard};
use tokio::time::Instant;

mod breaker;
mod dialing;
mod queue;
mod upkeep;

use super::conn::Conn;
use super::global::Global;
use super::held::Held;
use super::idle::IdleStack;
use super::map::EndpointMap;
use super::slots::Slots;
use crate::dial::{Dial, dial_with_retry};
use crate::maintenance::Maintenance;
use crate::protocol::ErasedProtocol;
use crate::stats::{Counters, PoolState};
use crate::stream::Look;
use crate::{CloseReason, Config, Endpoint, Error, PooledConnection, Stats, ThreadSlots};
use queue::{Queue, Sweeper, WaitTicket, Wakes};

/// What every endpoint of a pool shares: the config, the dialer, the map
/// of endpoints, the limits across them and the background task's state
/// (here, not in `Pool`, because `EndpointHandle::get` starts the task too).
///
/// A pool has one context for its byte streams and one more for each
/// [`ProtocolPool`](crate::ProtocolPool) made from it: each has its own
/// map of endpoints (so that an endpoint's books count one kind of
/// connection), and all of them share the pool's config, dialer, limits
/// across endpoints and background task.
pub(crate) struct Context {
    pub(crate) config: Config,
    pub(crate) dialer: Arc<dyn Dial>,
    /// Every endpoint's pool. It refers back to this context; the cycle is
    /// broken when the last `Pool` handle is dropped, which empties it.
    pub(crate) endpoints: EndpointMap,
    pub(crate) global: Arc<Global>,
    pub(crate) maintenance: Arc<Maintenance>,
    /// What a dialed stream is made into: `None` for the byte-stream
    /// pool, whose connection is the stream itself.
    pub(crate) protocol: Option<Arc<dyn ErasedProtocol>>,
}

impl Context {
    /// A context for `protocol`'s connections, sharing everything but the
    /// map of endpoints (and the dialer, which may offer the protocol's
    /// ALPN) with `streams`, the pool's own.
    pub(crate) fn for_protocol(
        streams: &Context,
        dialer: Arc<dyn Dial>,
        protocol: Arc<dyn ErasedProtocol>,
    ) -> Self {
        Context {
            config: streams.config.clone(),
            dialer,
            endpoints: EndpointMap::default(),
            global: streams.global.clone(),
            maintenance: streams.maintenance.clone(),
            protocol: Some(protocol),
        }
    }

    /// Dials `endpoint` with the retries and timeouts of the config, and
    /// makes the stream into this context's kind of connection.
    pub(crate) async fn connect(&self, endpoint: &Endpoint) -> Result<Held, Error> {
        match &self.protocol {
            None => dial_with_retry(&*self.dialer, endpoint, &self.config)
                .await
                .map(Held::Stream),
            Some(protocol) => {
                crate::protocol::connect(protocol, &*self.dialer, endpoint, &self.config).await
            }
        }
    }

    /// Closes the least recently used idle connection of any endpoint, to
    /// make room under a total limit. Returns whether one was closed.
    pub(crate) fn evict_lru_idle(&self) -> bool {
        while let Some((at, endpoint)) = self.global.pop_oldest_idle() {
            if endpoint
                .upgrade()
                .is_some_and(|endpoint| endpoint.evict_idle_returned_at(at))
            {
                return true;
            }
        }
        false
    }
}

pub(crate) struct EndpointPool {
    pub(crate) endpoint: Endpoint,
    pub(crate) ctx: Arc<Context>,
    state: Mutex<State>,
    /// Per-thread slots, made when the lock is first found contended (see
    /// [`super::slots`]), with what releasers read without the lock.
    slots: OnceBox<Slots>,
}

/// An endpoint's books. What every checkout and return touches is kept
/// inline; the rest is in [`Cold`], made the first time any of it is
/// needed, so that an endpoint that only ever hands out and takes back
/// idle connections (most of a pool with many endpoints) stays small.
#[derive(Default)]
struct State {
    idle: IdleStack,
    // Counts of live connections and dials, which memory bounds far below
    // 2^32 (each is a socket and a record), whatever the configured limits.
    active: u32,
    dialing: u32,
    /// Bumped by each clear; wraps, so a lease would have to outlive 2^32
    /// clears to be mistaken for a current one.
    generation: u32,
    closed: bool,
    /// Removed from the pool's map for being empty too long: callers that
    /// still hold it look the endpoint up again.
    retired: bool,
    counters: Counters,
    /// Queued in the pool's list of endpoints held back by
    /// `max_connections_total`.
    starved: bool,
    /// No connection is parked in a per-thread slot: set by a look into
    /// every slot that found none, cleared when `queued` next drops to zero
    /// (see `unpark_for_caller`).
    none_parked: bool,
    cold: Option<Box<Cold>>,
}

/// The part of an endpoint's books that only queuing, failed dials, leak
/// tracking, warm-up, retirement and endpoint handles use. Once made it is
/// kept: sweepers' ids must stay unique for as long as one may still run.
#[derive(Default)]
struct Cold {
    queue: Queue,
    /// Numbers sweepers.
    next_id: u64,
    /// The sweeper keeping the waiters' deadlines, while one runs.
    sweeper: Option<Sweeper>,
    last_dial_error: Option<Arc<str>>,
    /// Leases out now, tracked only when `leak_threshold` is set.
    leases: HashMap<u64, LeaseRecord>,
    /// Since when the endpoint has had nothing in it, for retirement.
    empty_since: Option<Instant>,
    /// Consecutive failed warm-up dials, and when the next may start.
    warm_failures: u32,
    warm_retry_at: Option<Instant>,
    /// [`EndpointHandle`](super::EndpointHandle)s out: while any is held,
    /// the entry is not retired.
    handles: usize,
    breaker: breaker::Breaker,
}

struct LeaseRecord {
    since: Instant,
    caller: &'static Location<'static>,
    warned: bool,
}

/// An endpoint's books, locked: the only way they are reached, so that
/// every act on them ends here. When it is dropped, the books' invariants
/// are checked (in debug builds, which the test suite and its fuzzer run
/// as), and then, once the lock has been let go, the callers granted a
/// connection or a slot meanwhile are woken, so that a woken task (which
/// may run at once, on another core) does not find the lock still held.
///
/// Their wakers wait in a list of the thread's own ([`DEFERRED`]): no two
/// endpoint locks are ever held at once on a thread, and a `Locked` that
/// granted nothing (every one on the checkout's fast path) carries a flag
/// and no list, so that dropping it costs the unlock and a test.
struct Locked<'a> {
    state: MutexGuard<'a, State>,
    deferred: bool,
    #[cfg(debug_assertions)]
    pool: &'a EndpointPool,
}

thread_local! {
    /// Wakers of callers granted under the lock a `Locked` of this thread
    /// holds, woken when it lets go.
    static DEFERRED: std::cell::RefCell<Wakes> = const { std::cell::RefCell::new(Vec::new()) };
}

impl<'a> Locked<'a> {
    #[inline]
    fn new(pool: &'a EndpointPool, state: MutexGuard<'a, State>) -> Self {
        #[cfg(not(debug_assertions))]
        let _ = pool;
        Locked {
            state,
            deferred: false,
            #[cfg(debug_assertions)]
            pool,
        }
    }

    /// Hands `grant` to the first caller still queued; gives it back if
    /// nobody waits.
    #[inline]
    fn grant_first(&mut self, grant: Grant) -> Result<(), Grant> {
        match self.state.cold.as_mut() {
            Some(cold) if cold.queue.len() > 0 => {
                let mut wakes = Wakes::new();
                let granted = cold.queue.grant(grant, &mut wakes);
                self.wake_later(wakes);
                granted
            }
            _ => Err(grant),
        }
    }

    /// Wakes these once the lock is let go. A thread tearing down its
    /// locals wakes them at once instead, lock held: late, not lost.
    fn wake_later(&mut self, wakes: Wakes) {
        if wakes.is_empty() {
            return;
        }
        let mut wakes = Some(wakes);
        let kept = DEFERRED.try_with(|deferred| {
            deferred
                .borrow_mut()
                .extend(wakes.take().into_iter().flatten());
        });
        match kept {
            Ok(()) => self.deferred = true,
            Err(_) => wakes.into_iter().flatten().for_each(Waker::wake),
        }
    }
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;

    #[inline]
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Locked<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Locked<'_> {
    #[cold]
    #[inline(never)]
    fn wake_deferred(&mut self) {
        let wakes = DEFERRED
            .try_with(|deferred| std::mem::take(&mut *deferred.borrow_mut()))
            .unwrap_or_default();
        MutexGuard::unlocked(&mut self.state, || wakes.into_iter().for_each(Waker::wake));
    }
}

impl Drop for Locked<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        if !std::thread::panicking() {
            self.pool.check_books(&self.state);
        }
        if self.deferred {
            self.wake_deferred();
        }
    }
}

impl State {
    fn total(&self) -> usize {
        self.active as usize + self.idle.len() + self.dialing as usize
    }

    fn is_empty(&self) -> bool {
        self.total() == 0 && self.waiting() == 0
    }

    fn gauges(&self) -> PoolState {
        PoolState {
            active: self.active as usize,
            idle: self.idle.len(),
            dialing: self.dialing as usize,
            waiting: self.waiting(),
        }
    }

    /// The cold part, made if it is not yet.
    fn cold(&mut self) -> &mut Cold {
        self.cold.get_or_insert_default()
    }

    /// Callers queued.
    fn waiting(&self) -> usize {
        self.cold.as_ref().map_or(0, |cold| cold.queue.len())
    }

    /// The endpoint is in use: it has not been empty since any earlier
    /// time.
    fn in_use(&mut self) {
        if let Some(cold) = self.cold.as_mut() {
            cold.empty_since = None;
        }
    }

    /// Stops tracking a lease that ended.
    fn forget_lease(&mut self, id: u64) {
        if let Some(cold) = self.cold.as_mut() {
            // Most pools never track leases: hash nothing for none.
            if !cold.leases.is_empty() {
                cold.leases.remove(&id);
            }
        }
    }
}

/// What a waiter is woken with.
pub(crate) enum Grant {
    /// A connection fresh from a lease; it counts as active already.
    Conn(Conn),
    /// Permission to dial; it counts as dialing already.
    Dial,
    /// The pool closed.
    Closed,
    /// The waiter's deadline passed (sent by the endpoint's sweeper).
    TimedOut,
}

/// How a get starts ([`EndpointPool::start_acquire`]).
#[must_use = "a started get holds a connection or a slot until it is finished"]
pub(crate) enum Started {
    /// A fit idle connection that needed no check: the get is done.
    Leased(PooledConnection),
    /// The get goes on asynchronously: a health check, a dial or a wait.
    Pending(Pending),
    /// The get fails at once: the pool is closed, or too many wait. Boxed,
    /// so that the common outcome does not move an error's worth of bytes.
    Refused(Box<Error>),
    /// This endpoint pool was retired from the map; look the endpoint up
    /// again.
    Retired,
}

/// The rest of a get that could not finish synchronously.
#[must_use = "dropped unpolled, a pending dial would keep its slot: call `finish`"]
pub(crate) struct Pending {
    pool: Arc<EndpointPool>,
    step: Step,
    /// When the get started, which `acquire_timeout` counts from.
    since: Instant,
}

impl Pending {
    fn new(pool: Arc<EndpointPool>, step: Step, since: Instant) -> Self {
        Pending { pool, step, since }
    }

    /// Checks, dials or waits until the get has a connection, an error, or
    /// runs out of time.
    pub(crate) async fn finish(
        self,
        caller: &'static Location<'static>,
    ) -> Result<PooledConnection, Error> {
        self.pool.acquire_slow(self.step, self.since, caller).await
    }
}

/// The outcome of the synchronous part of an acquire.
pub(crate) enum Step {
    /// An idle connection that needs no check: hand it out (its reuse is
    /// counted already).
    Ready(Conn),
    /// An idle connection to health-check first.
    Reuse(Conn),
    /// A connection handed over by a returning lease, to check first (its
    /// liveness, and that no clear came since the grant); its reuse is
    /// counted already.
    Handoff(Conn),
    Dial,
    Wait(WaitTicket),
}

/// Whether a caller may start a dial now.
#[derive(PartialEq, Eq)]
enum DialRoom {
    Yes,
    /// The endpoint's own limit or dial cap is reached.
    EndpointFull,
    /// `max_connections_total` is reached.
    PoolFull,
}

/// Where a connection being checked comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The idle stack: the liveness check, then the health check; reuse counted on
    /// success.
    Idle,
    /// A returning lease (see [`Step::Handoff`]): the liveness check only; reuse counted
    /// already.
    Handoff,
}

/// Why the connection parked in a caller's slot is not handed out as it
/// is ([`EndpointPool::judge_parked`]).
enum Parked {
    /// It is fit, but the health check must run first (the slow path).
    Check,
    /// It must be closed: for this reason, or (`None`) for the one
    /// `take_back` finds (a clear, or the pool closed).
    Close(Option<CloseReason>),
}

/// The outcome of a health check.
enum Checked {
    Healthy(PooledConnection),
    /// It failed; what the caller does next with its slot.
    Next(Step),
}

/// Connections to close once the lock is released.
type Closing = Vec<(Conn, CloseReason)>;

impl EndpointPool {
    pub(crate) fn new(endpoint: Endpoint, ctx: Arc<Context>) -> Self {
        let pool = EndpointPool {
            endpoint,
            ctx,
            state: Mutex::new(State::default()),
            slots: OnceBox::new(),
        };
        if pool.config().thread_slots() == ThreadSlots::Always {
            pool.grow_slots(&pool.lock());
        }
        pool
    }

    pub(crate) fn config(&self) -> &Config {
        &self.ctx.config
    }

    /// Whether a connection of `generation` is still of this endpoint's
    /// current one, in an open pool.
    pub(crate) fn admits(&self, generation: u32) -> bool {
        let st = self.lock();
        !st.closed && st.generation == generation
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut stats = {
            let st = self.lock();
            let mut stats = st.counters.snapshot(self.gauges(&st));
            if let Some(cold) = &st.cold {
                cold.breaker.report(&mut stats);
            }
            stats
        };
        if let Some(slots) = self.slots.get() {
            stats.total_reused += slots.tally().1;
        }
        if let Some(protocol) = &self.ctx.protocol {
            stats.protocol = Some(protocol.name());
            let (shares, waiting) = protocol.share_counts(&self.endpoint);
            stats.shares = shares;
            // A shared endpoint's callers wait for a share; the one among
            // them whose turn it is to lease a connection may wait in this
            // endpoint's queue too, and is counted once.
            stats.waiting = stats.waiting.max(waiting);
        }
        stats
    }

    /// The synchronous start of a get: an idle connection if one is fit,
    /// else a new dial, else a place in the queue.
    ///
    /// The common case, a fit idle connection that needs no check, is
    /// decided here under one lock with one clock read, and the caller
    /// returns the lease without suspending. A health check, a dial or a wait
    /// comes back as [`Started::Pending`] for
    /// [`acquire_slow`](Self::acquire_slow), so that the caller's future is
    /// only entered on the slow path and the fast one moves nothing larger
    /// than a lease; a refusal or a retired entry comes back as such.
    ///
    /// Every get first makes sure the pool's background task runs (one
    /// relaxed load while it does): on the fast path alone a pool could
    /// serve forever with its task gone (see `crate::maintenance`).
    #[inline]
    pub(crate) fn start_acquire(self: Arc<Self>, caller: &'static Location<'static>) -> Started {
        crate::maintenance::ensure_task(&self.ctx);
        let now = Instant::now();
        if let Some(slots) = self.slots.get() {
            // A connection parked before a clear is not handed out after it.
            let epoch = slots.epoch.load(Ordering::Acquire);
            let mut refused = Parked::Close(None);
            let fit = |c: &mut Conn| match self.judge_parked(c, epoch, now) {
                Ok(()) => true,
                Err(why) => {
                    refused = why;
                    false
                }
            };
            match slots.take_mine(fit) {
                Ok(Some(conn)) => return Started::Leased(self.lease_reused(conn, caller)),
                Ok(None) => {}
                Err(conn) => match refused {
                    Parked::Check => {
                        return Started::Pending(Pending::new(self, Step::Reuse(conn), now));
                    }
                    Parked::Close(reason) => self.take_back(conn, reason),
                },
            }
        }
        loop {
            let begun = match self.take_ready_idle(now) {
                Ok(conn) => Ok(Some(Step::Ready(conn))),
                Err(held) => self.begin_acquire(now, held),
            };
            return match begun {
                Ok(Some(Step::Ready(mut conn))) => match self.look(&mut conn, now, false) {
                    None => Started::Leased(self.lease_reused(conn, caller)),
                    Some(reason) => {
                        // Counted as reused when taken; nobody used it.
                        self.lock().counters.unreused();
                        self.take_back(conn, Some(reason));
                        continue;
                    }
                },
                Ok(Some(step)) => Started::Pending(Pending::new(self, step, now)),
                Ok(None) => Started::Retired,
                Err(error) => Started::Refused(Box::new(error)),
            };
        }
    }

    /// Whether the connection parked in this thread's slot may be handed
    /// out as it is, judged under the slot's own lock: of the current
    /// generation (`epoch`), fit by the reuse rule, needing no health
    /// check, and alive by the liveness check.
    fn judge_parked(&self, conn: &mut Conn, epoch: u64, now: Instant) -> Result<(), Parked> {
        if u64::from(conn.generation) * 2 != epoch {
            // `take_back` names the reason: cleared, or the pool closed.
            return Err(Parked::Close(None));
        }
        if let Some(reason) = conn.reuse_verdict(now, self.config()) {
            return Err(Parked::Close(Some(reason)));
        }
        if self.config().health_check().is_some() {
            return Err(Parked::Check);
        }
        match self.look(conn, now, false) {
            None => Ok(()),
            reason => Err(Parked::Close(reason)),
        }
    }

    /// The liveness check, when it is on: `None` if the connection looks
    /// alive, else why it is not. It asks the kernel when the connection
    /// is due for that (see [`Conn::due_for_peek`]) or `handoff` says it
    /// comes straight from a returning lease to a caller that queued;
    /// otherwise the runtime's readiness alone answers. Never run under the
    /// endpoint's lock: asking the kernel is a system call.
    #[inline]
    fn look(&self, conn: &mut Conn, now: Instant, handoff: bool) -> Option<CloseReason> {
        let look = self.config().liveness_check().then(|| {
            if handoff || conn.due_for_peek(now) {
                Look::Kernel
            } else {
                Look::Readiness
            }
        });
        conn.held.look(look)
    }

    /// Checks, dials or waits, within `acquire_timeout` of `start`.
    ///
    /// A caller queued by [`begin_acquire`](Self::begin_acquire) waits
    /// without a timer of its own: the queue's deadlines are kept by one
    /// sweeper task per endpoint (see [`queue`]), so that a busy
    /// pool, where most gets queue, does not register and cancel a timer
    /// per get. Everything else (health checks, dials) runs under a
    /// timer for what is left of the deadline, in a boxed future: it is
    /// rare next to queuing, and keeping it out of line keeps the future
    /// every queued get builds small.
    async fn acquire_slow(
        self: Arc<Self>,
        step: Step,
        start: Instant,
        caller: &'static Location<'static>,
    ) -> Result<PooledConnection, Error> {
        // A queued caller's deadline was computed when it queued.
        let deadline = match &step {
            Step::Wait(ticket) => ticket.deadline,
            _ => self.deadline_from(start),
        };
        let step = match step {
            Step::Wait(mut ticket) if deadline.is_some() => {
                match self.after_grant(ticket.wait().await?)? {
                    Step::Handoff(conn) => match self.check_handoff(conn, caller)? {
                        Checked::Healthy(lease) => return Ok(lease),
                        Checked::Next(next) => next,
                    },
                    next => next,
                }
            }
            step => step,
        };
        Box::pin(self.bounded(deadline, self.finish_acquire(step, caller))).await
    }

    /// When an acquire that started at `start` must give up.
    fn deadline_from(&self, start: Instant) -> Option<Instant> {
        self.config()
            .acquire_timeout()
            .and_then(|timeout| start.checked_add(timeout))
    }

    /// The common checkout, decided before any of the general machinery:
    /// the top idle connection, when it may be handed out as it is.
    /// Otherwise the lock, if it was free, is handed on to
    /// [`begin_acquire`](Self::begin_acquire), which also deals with unfit
    /// connections, dials and the queue; a lock found taken is left to it
    /// too, as contention is what turns the per-thread slots on.
    #[inline]
    fn take_ready_idle(&self, now: Instant) -> Result<Conn, Option<Locked<'_>>> {
        let Some(mut st) = self.state.try_lock().map(|st| Locked::new(self, st)) else {
            return Err(None);
        };
        if st.closed || st.retired || !st.idle.peek().is_some_and(|c| self.ready_as_is(c, now)) {
            return Err(Some(st));
        }
        let Some(conn) = st.idle.pop() else {
            return Err(Some(st));
        };
        self.ctx.global.idle_changed(0, 1);
        st.active += 1;
        st.counters.reused();
        st.in_use();
        Ok(conn)
    }

    /// Whether a connection that passed the generation check may be handed
    /// out at `now` with no further ado: fit by the reuse rule and not due
    /// for a health check.
    #[inline]
    fn ready_as_is(&self, conn: &Conn, now: Instant) -> bool {
        conn.reuse_verdict(now, self.config()).is_none() && !self.needs_check()
    }

    /// Whether an idle connection must be health-checked, which is async,
    /// before it is handed out. (The liveness check is synchronous: every
    /// path runs it, see [`look`](Self::look).)
    fn needs_check(&self) -> bool {
        self.config().health_check().is_some()
    }

    /// Runs the slow part of an acquire until `deadline`, if any.
    ///
    /// The timer is set only if the first poll leaves the acquire pending:
    /// a check usually answers at once and needs none. A timer needs a
    /// runtime; polled outside one, a pending acquire is dropped (which,
    /// once it has been polled, leaks nothing) and the get fails.
    async fn bounded(
        self: &Arc<Self>,
        deadline: Option<Instant>,
        acquire: impl Future<Output = Result<PooledConnection, Error>>,
    ) -> Result<PooledConnection, Error> {
        let Some(deadline) = deadline else {
            return acquire.await;
        };
        let mut acquire = std::pin::pin!(acquire);
        let first = std::future::poll_fn(|cx| Poll::Ready(acquire.as_mut().poll(cx))).await;
        if let Poll::Ready(outcome) = first {
            return outcome;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(self.no_runtime_error());
        }
        let outcome = tokio::time::timeout_at(deadline, acquire).await;
        // The acquire future is dropped by now, so the state in the error
        // no longer counts this caller as waiting.
        outcome.unwrap_or_else(|_| Err(self.timeout_error()))
    }

    /// The error of an acquire that ran out of time: the endpoint, its
    /// state now and the last dial error.
    pub(crate) fn timeout_error(&self) -> Error {
        let timeout = self.config().acquire_timeout().unwrap_or_default();
        let (state, last_dial_error) = {
            let st = self.lock();
            let last_dial_error = st.cold.as_ref().and_then(|c| c.last_dial_error.clone());
            (self.gauges(&st), last_dial_error)
        };
        tracing::warn!(endpoint = %self.endpoint, ?timeout, ?state, "acquire timed out");
        Error::AcquireTimeout {
            protocol: None,
            endpoint: self.endpoint.clone(),
            timeout,
            state,
            last_dial_error,
        }
    }

    /// The error of a get that needs a runtime and was polled outside one.
    fn no_runtime_error(&self) -> Error {
        tracing::warn!(endpoint = %self.endpoint, "a get was polled outside a tokio runtime");
        Error::NoRuntime {
            protocol: None,
            endpoint: self.endpoint.clone(),
        }
    }

    /// The synchronous decision: take an idle connection, dial, or wait.
    #[inline]
    fn begin_acquire(
        self: &Arc<Self>,
        now: Instant,
        held: Option<Locked<'_>>,
    ) -> Result<Option<Step>, Error> {
        let mut closing = Closing::new();
        let step = {
            let mut st = held.unwrap_or_else(|| self.lock_state());
            if st.closed {
                return Err(Error::PoolClosed);
            }
            if st.retired {
                return Ok(None);
            }
            st.in_use();
            let room = if let Some(conn) = self.pop_fit_idle(&mut st, now, &mut closing) {
                let step = if self.needs_check() {
                    Step::Reuse(conn)
                } else {
                    st.counters.reused();
                    Step::Ready(conn)
                };
                return self.finish_begin(st, closing, step);
            } else if st.waiting() == 0 {
                self.take_dial_slot(&mut st)
            } else {
                DialRoom::EndpointFull
            };
            if room == DialRoom::Yes {
                self.sync_queued(&mut st);
                Step::Dial
            } else if self
                .config()
                .max_waiters_per_endpoint()
                .is_some_and(|max| st.waiting() >= max)
            {
                let state = self.gauges(&st);
                self.sync_queued(&mut st);
                drop(st);
                let freed = !closing.is_empty();
                self.close_all(closing);
                // A caller that may not wait still gets the room a waiting
                // one would: slots freed by closing idle connections (its
                // own expired ones, or the least recently used anywhere).
                if room == DialRoom::PoolFull && (freed || self.ctx.evict_lru_idle()) {
                    return self.begin_acquire(now, None);
                }
                return Err(Error::TooManyWaiters {
                    protocol: None,
                    endpoint: self.endpoint.clone(),
                    max_waiters: self.config().max_waiters_per_endpoint().unwrap_or(0),
                    state,
                });
            } else {
                let ticket = self.enqueue(&mut st, self.deadline_from(now));
                if room == DialRoom::PoolFull {
                    self.mark_starved(&mut st);
                    drop(st);
                    self.close_all(closing);
                    // Make room by closing the least recently used idle
                    // connection anywhere; that wakes this endpoint.
                    self.ctx.evict_lru_idle();
                    return Ok(Some(Step::Wait(ticket)));
                }
                Step::Wait(ticket)
            }
        };
        self.close_all(closing);
        Ok(Some(step))
    }

    /// The gauges, with connections parked in slots counted as idle (the
    /// books count them as leased).
    fn gauges(&self, st: &State) -> PoolState {
        let mut gauges = st.gauges();
        if let Some(slots) = self.slots.get() {
            let parked = slots.tally().0;
            // Parked ones are counted active in the books.
            gauges.active = gauges.active.saturating_sub(parked);
            gauges.idle += parked;
        }
        gauges
    }

    /// Locks the books.
    #[inline]
    fn lock(&self) -> Locked<'_> {
        Locked::new(self, self.state.lock())
    }

    /// The invariants of the books, true whenever the lock is let go:
    /// the limit counts leased, idle and dialing connections together;
    /// the dial cap holds; the queue's count of live callers is no more
    /// than its entries; releasers' mirror of the queue's length is at
    /// least that count (or they would park a connection with a caller
    /// waiting); and nothing counts as queued on a closed endpoint.
    #[cfg(debug_assertions)]
    fn check_books(&self, st: &State) {
        let config = self.config();
        debug_assert!(
            st.total() <= config.max_connections_per_endpoint(),
            "{}: {} active + {} idle + {} dialing past the limit of {}",
            self.endpoint,
            st.active,
            st.idle.len(),
            st.dialing,
            config.max_connections_per_endpoint()
        );
        debug_assert!(
            st.dialing as usize <= config.max_concurrent_dials(),
            "{}: {} dials past the cap of {}",
            self.endpoint,
            st.dialing,
            config.max_concurrent_dials()
        );
        if let Some(cold) = st.cold.as_ref() {
            cold.queue.check();
        }
        if let Some(slots) = self.slots.get() {
            debug_assert!(
                slots.queued.load(Ordering::SeqCst) >= st.waiting(),
                "{}: releasers may park with {} callers queued",
                self.endpoint,
                st.waiting()
            );
        }
        debug_assert!(
            !st.closed || st.waiting() == 0,
            "{}: callers queued on a closed endpoint",
            self.endpoint
        );
    }

    /// Locks the state; finding it taken by another thread is what turns
    /// per-thread slots on (with [`ThreadSlots::WhenContended`]).
    #[inline]
    fn lock_state(&self) -> Locked<'_> {
        match self.state.try_lock() {
            Some(st) => Locked::new(self, st),
            None => self.lock_contended(),
        }
    }

    #[cold]
    fn lock_contended(&self) -> Locked<'_> {
        let st = self.lock();
        if self.slots.get().is_none() && self.config().thread_slots() == ThreadSlots::WhenContended
        {
            self.grow_slots(&st);
        }
        st
    }

    /// Makes the per-thread slots, unless a pool-wide limit or leak
    /// tracking needs every idle connection and lease in the books. Called
    /// with the state locked: the slots' mirrors of the queue's length and
    /// of the epoch start from the state they mirror, and every later
    /// change to either is made under the same lock, so none is missed.
    fn grow_slots(&self, st: &State) {
        let config = self.config();
        if config.max_connections_total().is_none()
            && config.max_idle_total().is_none()
            && config.leak_threshold().is_none()
        {
            self.slots
                .get_or_init(|| Box::new(Slots::new(st.waiting(), Self::epoch(st))));
        }
    }

    /// Publishes the queue's length for releasers (see [`Slots::queued`]).
    ///
    /// `queued` is only written under the lock, so a relaxed read here sees
    /// its latest value; a return with nobody queued (most of them) then
    /// skips the store, which as a sequentially consistent store is a full
    /// barrier.
    fn sync_queued(&self, st: &mut State) {
        let waiting = st.waiting();
        if let Some(slots) = self.slots.get() {
            if slots.queued.load(Ordering::Relaxed) != waiting {
                slots.queued.store(waiting, Ordering::SeqCst);
            }
        }
        if waiting == 0 {
            // Releasers may park again.
            st.none_parked = false;
        }
    }

    /// Publishes the generation and whether the pool closed (see
    /// [`Slots::epoch`]).
    fn publish_epoch(&self, st: &State) {
        if let Some(slots) = self.slots.get() {
            slots.epoch.store(Self::epoch(st), Ordering::Release);
        }
    }

    fn epoch(st: &State) -> u64 {
        u64::from(st.generation) * 2 + u64::from(st.closed)
    }

    /// Takes a parked connection for a caller that found the idle stack
    /// empty, before it dials or queues. `queued` is raised first, so that
    /// a connection parked after the look is taken back by its releaser
    /// (see `release`).
    ///
    /// A look that finds nothing while `queued` stays raised (callers keep
    /// queuing) need not be repeated: nothing is parked from then until the
    /// queue empties, so a busy queue does not pay for scanning every slot.
    fn unpark_for_caller(&self, st: &mut State) -> Option<Conn> {
        let slots = self.slots.get()?;
        if st.none_parked {
            return None;
        }
        slots.queued.store(st.waiting() + 1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let found = slots.take_any();
        if found.is_some() {
            self.sync_queued(st);
        } else {
            st.none_parked = true;
        }
        found
    }

    /// Takes every parked connection back into the books (for a clear, a
    /// close or the maintenance pass).
    fn take_back_parked(self: &Arc<Self>) {
        if let Some(slots) = self.slots.get() {
            for conn in slots.drain() {
                self.take_back(conn, None);
            }
        }
    }

    #[inline]
    fn finish_begin(
        &self,
        st: Locked<'_>,
        closing: Closing,
        step: Step,
    ) -> Result<Option<Step>, Error> {
        drop(st);
        self.close_all(closing);
        Ok(Some(step))
    }

    /// Takes a dialing slot if the endpoint's limit, its dial cap and the
    /// pool's total limit all allow one.
    fn take_dial_slot(&self, st: &mut State) -> DialRoom {
        let config = self.config();
        if st.total() >= config.max_connections_per_endpoint()
            || st.dialing as usize >= config.max_concurrent_dials()
        {
            return DialRoom::EndpointFull;
        }
        if !self.ctx.global.try_take() {
            return DialRoom::PoolFull;
        }
        st.dialing += 1;
        DialRoom::Yes
    }

    /// Undoes [`take_dial_slot`](Self::take_dial_slot) for a grant nobody
    /// took, under the lock; the caller wakes starved endpoints after.
    fn return_dial_slot(&self, st: &mut State) -> bool {
        st.dialing -= 1;
        self.ctx.global.put_back(1)
    }

    fn mark_starved(self: &Arc<Self>, st: &mut State) {
        if !st.starved {
            st.starved = true;
            self.ctx.global.register_starved(self);
        }
    }

    /// Called by [`Global::wake_starved`] with a freed total slot: serves
    /// the first waiter if it can. Returns whether a slot was taken.
    pub(crate) fn serve_starved(self: &Arc<Self>) -> bool {
        let mut st = self.lock();
        st.starved = false;
        let before = st.dialing;
        // Still held back, it is queued again.
        self.grant_free_slot(&mut st);
        st.dialing > before
    }

    /// Whether the connection that came back at `at` (as
    /// [`Conn::return_order`] tells it) is still idle here.
    pub(crate) fn holds_idle(&self, at: Instant) -> bool {
        self.lock().idle.holds_returned_at(at)
    }

    /// Closes this endpoint's least recently used idle connection if it is
    /// the one that came back at `at`: the pool's oldest idle connection,
    /// as the order across endpoints names it. Every return has its entry
    /// in that order, so an older idle connection here would have come
    /// first; a mismatch means the entry is stale.
    fn evict_idle_returned_at(&self, at: Instant) -> bool {
        let conn = {
            let mut st = self.lock();
            if st.idle.oldest().map(|c| c.return_order()) != Some(at) {
                return false;
            }
            let Some(conn) = st.idle.remove_oldest() else {
                return false;
            };
            self.ctx.global.idle_changed(0, 1);
            st.counters.closed(CloseReason::PoolLimit);
            conn
        };
        self.close_all(vec![(conn, CloseReason::PoolLimit)]);
        true
    }

    /// Pops idle connections until one is fit; the unfit ones are counted
    /// closed and queued in `closing`. The one returned counts as active.
    ///
    /// With the stack empty, connections parked in per-thread slots come
    /// next (they count as active already), so that a caller never dials or
    /// queues while one sits parked on another thread.
    #[inline]
    fn pop_fit_idle(&self, st: &mut State, now: Instant, closing: &mut Closing) -> Option<Conn> {
        while let Some(conn) = st.idle.pop() {
            self.ctx.global.idle_changed(0, 1);
            match conn.reuse_verdict(now, self.config()) {
                None => {
                    st.active += 1;
                    return Some(conn);
                }
                Some(reason) => {
                    st.counters.closed(reason);
                    closing.push((conn, reason));
                }
            }
        }
        while let Some(conn) = self.unpark_for_caller(st) {
            match conn.reuse_verdict(now, self.config()) {
                None => return Some(conn),
                Some(reason) => {
                    st.active -= 1;
                    st.counters.closed(reason);
                    closing.push((conn, reason));
                }
            }
        }
        None
    }

    async fn finish_acquire(
        self: &Arc<Self>,
        mut step: Step,
        caller: &'static Location<'static>,
    ) -> Result<PooledConnection, Error> {
        loop {
            step = match step {
                Step::Ready(conn) => return Ok(self.clone().lease_reused(conn, caller)),
                Step::Reuse(conn) => match self.check_idle(conn, caller).await? {
                    Checked::Healthy(lease) => return Ok(lease),
                    Checked::Next(next) => next,
                },
                Step::Handoff(conn) => match self.check_handoff(conn, caller)? {
                    Checked::Healthy(lease) => return Ok(lease),
                    Checked::Next(next) => next,
                },
                Step::Dial => return self.dial(caller).await,
                Step::Wait(mut ticket) => self.after_grant(ticket.wait().await?)?,
            };
        }
    }

    /// What a waiter does next with the grant it was woken with.
    fn after_grant(&self, grant: Grant) -> Result<Step, Error> {
        match grant {
            // Checked like any other checkout: the peer may have closed the
            // connection while its last holder sat on it, or a clear may
            // have come since the grant.
            Grant::Conn(conn) => Ok(Step::Handoff(conn)),
            Grant::Dial => Ok(Step::Dial),
            Grant::Closed => Err(Error::PoolClosed),
            Grant::TimedOut => Err(self.timeout_error()),
        }
    }

    /// Checks a connection taken from idle before it is handed out: the
    /// liveness check ([`look`](Self::look)), then the configured health
    /// check. (A handoff has [`check_handoff`](Self::check_handoff).) On
    /// failure the
    /// connection is closed and this caller keeps its slot: the next step is
    /// another idle connection or a dial.
    async fn check_idle(
        self: &Arc<Self>,
        mut conn: Conn,
        caller: &'static Location<'static>,
    ) -> Result<Checked, Error> {
        let mut failure = self.look(&mut conn, Instant::now(), false);
        // Held as a lease during the health check, so that a caller
        // cancelled mid-check closes the connection rather than returning
        // it with a half-done exchange on it.
        let mut lease = self.clone().lease(conn, caller);
        // The health check speaks to byte streams; a protocol's connection
        // has the protocol's own word, which the look asked.
        let check = self.config().health_check();
        let is_stream = lease.held().stream().is_some();
        if let (None, Some(check), true) = (failure, check, is_stream) {
            lease.set_busy(true);
            let healthy = check.check(lease.stream_mut()).await;
            lease.set_busy(false);
            failure = (!healthy).then_some(CloseReason::HealthCheckFailed);
        }
        self.conclude_check(lease, failure, Origin::Idle)
    }

    /// Checks a connection handed straight from a returning lease, at
    /// once: it gets no health check and the look is synchronous, so the
    /// caller needs none of the timed slow path unless the look fails.
    fn check_handoff(
        self: &Arc<Self>,
        mut conn: Conn,
        caller: &'static Location<'static>,
    ) -> Result<Checked, Error> {
        let failure = self.look(&mut conn, Instant::now(), true);
        let lease = self.clone().lease(conn, caller);
        self.conclude_check(lease, failure, Origin::Handoff)
    }

    /// The end of a check: the lease goes to the caller, unless the check
    /// found a `failure` (or the pool closed meanwhile); then the
    /// connection is closed and the caller's next step is another idle
    /// connection, a dial into its slot, or a wait.
    fn conclude_check(
        self: &Arc<Self>,
        mut lease: PooledConnection,
        failure: Option<CloseReason>,
        origin: Origin,
    ) -> Result<Checked, Error> {
        let config = self.config();
        let mut failure = failure;
        if failure.is_none() {
            let mut st = self.lock();
            if st.closed {
                // The pool closed while the check ran: no connection is
                // handed out after `close`. Dropped, the lease takes it back
                // and closes it.
                if origin == Origin::Handoff {
                    // Counted when it was granted; it was never handed out.
                    st.counters.unreused();
                }
                drop(st);
                drop(lease);
                return Err(Error::PoolClosed);
            }
            if lease.generation() == st.generation {
                if origin == Origin::Idle {
                    st.counters.reused();
                }
                drop(st);
                lease.mark_reused();
                return Ok(Checked::Healthy(lease));
            }
            // Cleared while it was checked, or between its grant and now:
            // the clear reaches it too.
            failure = Some(CloseReason::Cleared);
        }
        let reason = failure.expect("set on every way here");
        tracing::debug!(endpoint = %self.endpoint, %reason, "idle connection failed its check");
        let failed = lease
            .take_conn()
            .expect("the lease still holds its connection");
        let mut closing = Closing::new();
        let (next, keeps_slot) = {
            let mut st = self.lock();
            st.counters.closed(reason);
            if origin == Origin::Handoff {
                // Counted when it was granted; it was never handed out.
                st.counters.unreused();
            }
            st.forget_lease(failed.id);
            st.active -= 1;
            if st.closed {
                (Err(Error::PoolClosed), false)
            } else if let Some(conn) = self.pop_fit_idle(&mut st, Instant::now(), &mut closing) {
                (Ok(Checked::Next(Step::Reuse(conn))), false)
            } else if (st.dialing as usize) < config.max_concurrent_dials() {
                // It keeps the failed connection's slot, here and under
                // max_connections_total, and dials into it.
                st.dialing += 1;
                self.sync_queued(&mut st);
                (Ok(Checked::Next(Step::Dial)), true)
            } else if config
                .max_waiters_per_endpoint()
                .is_some_and(|max| st.waiting() >= max)
            {
                let err = Error::TooManyWaiters {
                    protocol: None,
                    endpoint: self.endpoint.clone(),
                    max_waiters: config.max_waiters_per_endpoint().unwrap_or(0),
                    state: self.gauges(&st),
                };
                self.sync_queued(&mut st);
                (Err(err), false)
            } else {
                // The dial cap holds it back; a dial ending serves it, and
                // the caller's own timer bounds the wait (see `acquire_slow`).
                (
                    Ok(Checked::Next(Step::Wait(self.enqueue(&mut st, None)))),
                    false,
                )
            }
        };
        if keeps_slot {
            self.close_conns(vec![(failed, reason)]);
        } else {
            closing.push((failed, reason));
        }
        self.close_all(closing);
        next
    }

    /// Hands out a reused connection whose reuse is counted already.
    #[inline(always)]
    fn lease_reused(
        self: Arc<Self>,
        conn: Conn,
        caller: &'static Location<'static>,
    ) -> PooledConnection {
        let mut lease = self.lease(conn, caller);
        lease.mark_reused();
        lease
    }

    /// Wraps an active connection in a lease (which keeps this endpoint
    /// pool alive through `self`).
    #[inline]
    fn lease(
        self: Arc<Self>,
        mut conn: Conn,
        caller: &'static Location<'static>,
    ) -> PooledConnection {
        conn.uses += 1;
        if self.config().leak_threshold().is_some() {
            let record = LeaseRecord {
                since: Instant::now(),
                caller,
                warned: false,
            };
            let mut st = self.lock();
            st.cold().leases.insert(conn.id, record);
        }
        PooledConnection::new(conn, self)
    }

    /// Takes back a connection that was active. `close` is the lease's own
    /// reason to close it, if it has one.
    ///
    /// With per-thread slots and nobody queued, a fit connection is parked
    /// in this thread's slot without taking the endpoint's lock. Parking
    /// races with a caller that is about to queue; the two follow a
    /// store-then-look handshake, each with a full fence between: the
    /// releaser parks, then reads `queued`; the caller raises `queued`, then
    /// looks in every slot (`unpark_for_caller`). At least one of them sees
    /// the other, so either the caller takes the parked connection, or the
    /// releaser takes it back and hands it over through the lock.
    #[inline]
    pub(crate) fn release(self: &Arc<Self>, mut conn: Conn, close: Option<CloseReason>) {
        let now = Instant::now();
        conn.mark_idle(now, self.config());
        let reason = close.or_else(|| conn.reuse_verdict(now, self.config()));
        if let (None, Some(slots)) = (reason, self.slots.get()) {
            if slots.queued.load(Ordering::SeqCst) == 0 {
                let epoch = u64::from(conn.generation) * 2;
                match slots.park(conn, |_| slots.epoch.load(Ordering::Acquire) == epoch) {
                    Ok(()) => {
                        fence(Ordering::SeqCst);
                        if slots.queued.load(Ordering::SeqCst) == 0 {
                            return;
                        }
                        match slots.unpark_mine() {
                            Some(back) => conn = back,
                            // The caller found it.
                            None => return,
                        }
                    }
                    Err(back) => conn = back,
                }
            }
        }
        self.take_back(conn, reason);
    }

    /// The locked part of a release: closes the connection (for `reason`,
    /// or because the pool closed or was cleared), hands it to the first
    /// waiter, or puts it on the idle stack. Also takes back connections
    /// parked in slots, with `reason` `None`.
    #[inline]
    fn take_back(self: &Arc<Self>, mut conn: Conn, reason: Option<CloseReason>) {
        let mut st = self.lock_state();
        st.forget_lease(conn.id);
        let reason = reason
            .or(st.closed.then_some(CloseReason::PoolClosed))
            .or((conn.generation != st.generation).then_some(CloseReason::Cleared));
        if let Some(reason) = reason {
            st.active -= 1;
            st.counters.closed(reason);
            self.grant_free_slot(&mut st);
            drop(st);
            self.close_all(vec![(conn, reason)]);
            return;
        }
        match st.grant_first(Grant::Conn(conn)) {
            Ok(()) => {
                st.counters.reused();
                self.sync_queued(&mut st);
                return;
            }
            Err(Grant::Conn(back)) => conn = back,
            Err(_) => unreachable!("a grant comes back as it was sent"),
        }
        self.sync_queued(&mut st);
        st.active -= 1;
        if self.ctx.global.has_starved() {
            // Another endpoint waits for room under max_connections_total.
            st.counters.closed(CloseReason::PoolLimit);
            drop(st);
            self.close_all(vec![(conn, CloseReason::PoolLimit)]);
            return;
        }
        if let Some(top) = st.idle.peek() {
            conn.come_back_after(top);
        }
        let returned = conn.return_order();
        st.idle.push(conn);
        self.ctx.global.idle_changed(1, 0);
        let stale = self.ctx.global.went_idle(returned, self);
        drop(st);
        if stale {
            self.ctx.global.forget_stale_idle();
        }
        if self.ctx.global.over_idle_limit() {
            self.ctx.evict_lru_idle();
        }
    }

    /// A slot just became free: the first live waiter may dial into it,
    /// and so may the next ones while there is room (the endpoint's limit,
    /// its dial cap and the pool's total). Returns whether waiters are held
    /// back by the pool's total limit; if so, the endpoint is queued as
    /// starved, so that the next total slot given back (often the one of
    /// the connection whose close called this, given back only after the
    /// lock is released) is offered to it.
    fn grant_free_slot(self: &Arc<Self>, st: &mut Locked<'_>) -> bool {
        if st.closed {
            return false;
        }
        loop {
            // Waiters that left are skipped before a slot is taken for them.
            if !st.cold.as_mut().is_some_and(|cold| cold.queue.has_live()) {
                return false;
            }
            match self.take_dial_slot(st) {
                DialRoom::Yes => {}
                DialRoom::EndpointFull => return false,
                DialRoom::PoolFull => {
                    self.mark_starved(st);
                    return true;
                }
            }
            let granted = st.grant_first(Grant::Dial).is_ok();
            self.sync_queued(st);
            if !granted {
                // Nobody took it; the slot stays free for the next caller.
                self.return_dial_slot(st);
                return false;
            }
        }
    }

    /// Closes every idle connection; leases out now close when they come
    /// back. Counters are kept.
    pub(crate) fn clear(self: &Arc<Self>) {
        let closing = {
            let mut st = self.lock();
            st.generation = st.generation.wrapping_add(1);
            self.publish_epoch(&st);
            self.drain_idle(&mut st, CloseReason::Cleared)
        };
        tracing::info!(endpoint = %self.endpoint, closed = closing.len(), "endpoint cleared");
        self.close_all(closing);
        // Parked connections predate the clear: taken back, they close.
        self.take_back_parked();
        self.retire_shares();
    }

    /// For a shared protocol's endpoint, after a clear or a close: the
    /// connections out for sharing take no new shares (they come back,
    /// and close, once their shares in flight do).
    fn retire_shares(&self) {
        if let Some(protocol) = &self.ctx.protocol {
            protocol.retire_shares(&self.endpoint);
        }
    }

    /// Closes idle connections, fails waiters, and refuses new acquires.
    pub(crate) fn close(self: &Arc<Self>) {
        let (closing, waiters, sweeper) = {
            let mut st = self.lock();
            st.closed = true;
            self.publish_epoch(&st);
            self.sync_queued(&mut st);
            let (waiters, sweeper) = st.cold.as_mut().map_or_else(Default::default, |cold| {
                (cold.queue.take_all(), cold.sweeper.take())
            });
            (
                self.drain_idle(&mut st, CloseReason::PoolClosed),
                waiters,
                sweeper,
            )
        };
        for mut waiter in waiters {
            if let Ok(Some(waker)) = waiter.tx.send(Grant::Closed) {
                waker.wake();
            }
        }
        // Nobody waits any more: the sweeper need not sleep on.
        if let Some(sweeper) = sweeper {
            sweeper.stop();
        }
        self.close_all(closing);
        self.take_back_parked();
        self.retire_shares();
    }

    fn drain_idle(&self, st: &mut State, reason: CloseReason) -> Closing {
        self.ctx.global.idle_changed(0, st.idle.len());
        let State { idle, counters, .. } = st;
        idle.take_all()
            .into_iter()
            .map(|conn| {
                counters.closed(reason);
                (conn, reason)
            })
            .collect()
    }

    /// Closes connections already counted closed, and gives their slots
    /// back to the pool's total; called with no lock held. Dropping a
    /// socket closes it without blocking.
    #[inline]
    fn close_all(&self, closing: Closing) {
        if !closing.is_empty() {
            self.close_now(closing);
        }
    }

    #[inline(never)]
    fn close_now(&self, closing: Closing) {
        let freed = self.close_conns(closing);
        // Only now may another connection take the slots: a closed hook
        // always runs before the created hook of a connection replacing it.
        if self.ctx.global.put_back(freed) {
            self.ctx.global.wake_starved();
        }
    }

    /// Closes connections already counted closed, keeping their slots
    /// under `max_connections_total` (for a caller that dials into one);
    /// returns how many.
    fn close_conns(&self, closing: Closing) -> usize {
        let closed = closing.len();
        for (conn, reason) in closing {
            tracing::debug!(
                endpoint = %self.endpoint,
                id = conn.id,
                uses = conn.uses,
                age = ?conn.created_at(self.config()).elapsed(),
                %reason,
                "closing connection"
            );
            drop(conn);
            self.config().notify_closed(&self.endpoint, reason);
        }
        closed
    }

    /// Counts a handle taken. Under the endpoint's lock, which the hot path
    /// also takes: handles are meant to be kept, not cloned per request.
    pub(crate) fn handle_taken(&self) {
        self.lock().cold().handles += 1;
    }

    pub(crate) fn handle_dropped(&self) {
        self.lock().cold().handles -= 1;
    }

    /// Returns a grant whose waiter went away before using it.
    fn give_back(self: &Arc<Self>, grant: Grant) {
        match grant {
            Grant::Conn(conn) => {
                // Counted as reused when granted; nobody used it. It was
                // marked idle when its lease ended: `take_back`, not
                // `release`, so that a second mark does not clear what the
                // first noted (a lease that outlasted the peek window).
                self.lock().counters.unreused();
                self.take_back(conn, None);
            }
            Grant::Dial => self.return_unused_dial(false),
            Grant::Closed | Grant::TimedOut => {}
        }
    }
}
