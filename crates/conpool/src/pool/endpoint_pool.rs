//! One endpoint's pool: its idle connections, its waiters and its limit.
//!
//! All of an endpoint's bookkeeping sits behind one short [`Mutex`]: the
//! idle stack (most recently used on top, so a busy pool keeps a few
//! connections hot and lets the rest expire), the FIFO queue of waiters, and
//! the counts of connections leased out and being dialed. The lock is never
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
//! Dials run in their own task: a caller that gives up does not cancel the
//! dial it started, and the new connection goes to the next waiter or to
//! idle.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::conn::Conn;
use crate::dial::{Dial, dial_with_retry};
use crate::stats::{Counters, PoolState};
use crate::{CloseReason, Config, Endpoint, Error, PooledConnection, Stats};

/// What every endpoint of a pool shares: the config and the dialer.
pub(crate) struct Context {
    pub(crate) config: Config,
    pub(crate) dialer: Arc<dyn Dial>,
}

pub(crate) struct EndpointPool {
    pub(crate) endpoint: Endpoint,
    pub(crate) ctx: Arc<Context>,
    pub(crate) counters: Counters,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Most recently used last.
    idle: Vec<Conn>,
    waiters: VecDeque<Waiter>,
    active: usize,
    dialing: usize,
    generation: u64,
    closed: bool,
    next_waiter_id: u64,
    last_dial_error: Option<String>,
}

impl State {
    fn total(&self) -> usize {
        self.active + self.idle.len() + self.dialing
    }

    fn gauges(&self) -> PoolState {
        PoolState {
            active: self.active,
            idle: self.idle.len(),
            dialing: self.dialing,
            waiting: self.waiters.len(),
        }
    }
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
}

/// What a waiter is woken with.
enum Grant {
    /// A connection fresh from a lease; it counts as active already.
    Conn(Conn),
    /// Permission to dial; it counts as dialing already.
    Dial,
    /// The pool closed.
    Closed,
}

/// The outcome of the synchronous part of an acquire.
pub(crate) enum Step {
    Reuse(Conn),
    Dial,
    Wait(WaitTicket),
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
        EndpointPool {
            endpoint,
            ctx,
            counters: Counters::default(),
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.ctx.config
    }

    pub(crate) fn stats(&self) -> Stats {
        let gauges = self.state.lock().gauges();
        self.counters.snapshot(gauges)
    }

    /// Gets a connection: an idle one if any is fit, else a new dial, else
    /// a place in the queue.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<PooledConnection, Error> {
        let step = self.begin_acquire(Instant::now())?;
        let config = self.config();
        if let Step::Reuse(conn) = step {
            if config.health_check().is_none() {
                return Ok(self.lease(conn, true));
            }
            return self.bounded(self.finish_acquire(Step::Reuse(conn))).await;
        }
        self.bounded(self.finish_acquire(step)).await
    }

    /// Runs the slow part of an acquire under `acquire_timeout`.
    async fn bounded(
        self: &Arc<Self>,
        acquire: impl Future<Output = Result<PooledConnection, Error>>,
    ) -> Result<PooledConnection, Error> {
        let Some(timeout) = self.config().acquire_timeout() else {
            return acquire.await;
        };
        let outcome = tokio::time::timeout(timeout, acquire).await;
        // The acquire future is dropped by now, so the state below no longer
        // counts this caller as waiting.
        outcome.unwrap_or_else(|_| {
            let state = self.state.lock().gauges();
            tracing::warn!(endpoint = %self.endpoint, ?timeout, ?state, "acquire timed out");
            Err(Error::AcquireTimeout {
                endpoint: self.endpoint.clone(),
                timeout,
                state,
                last_dial_error: self.state.lock().last_dial_error.clone(),
            })
        })
    }

    /// The synchronous decision: take an idle connection, dial, or wait.
    fn begin_acquire(self: &Arc<Self>, now: Instant) -> Result<Step, Error> {
        let mut closing = Closing::new();
        let step = {
            let mut st = self.state.lock();
            if st.closed {
                return Err(Error::PoolClosed);
            }
            self.pop_fit_idle(&mut st, now, &mut closing)
                .map(Step::Reuse)
                .unwrap_or_else(|| {
                    if st.total() < self.config().max_connections_per_endpoint()
                        && st.waiters.is_empty()
                    {
                        st.dialing += 1;
                        Step::Dial
                    } else {
                        Step::Wait(self.enqueue(&mut st))
                    }
                })
        };
        self.close_all(closing);
        Ok(step)
    }

    /// Pops idle connections until one is fit; the unfit ones are counted
    /// closed and queued in `closing`. The one returned counts as active.
    fn pop_fit_idle(&self, st: &mut State, now: Instant, closing: &mut Closing) -> Option<Conn> {
        while let Some(conn) = st.idle.pop() {
            match conn.reuse_verdict(now, self.config()) {
                None => {
                    st.active += 1;
                    return Some(conn);
                }
                Some(reason) => {
                    self.counters.closed(reason);
                    closing.push((conn, reason));
                }
            }
        }
        None
    }

    fn enqueue(self: &Arc<Self>, st: &mut State) -> WaitTicket {
        let (tx, rx) = oneshot::channel();
        let id = st.next_waiter_id;
        st.next_waiter_id += 1;
        st.waiters.push_back(Waiter { id, tx });
        WaitTicket {
            pool: self.clone(),
            id,
            rx: Some(rx),
        }
    }

    async fn finish_acquire(self: &Arc<Self>, mut step: Step) -> Result<PooledConnection, Error> {
        loop {
            step = match step {
                Step::Reuse(conn) => match self.health_check(conn).await? {
                    Checked::Healthy(lease) => return Ok(lease),
                    Checked::Next(next) => next,
                },
                Step::Dial => return self.dial().await,
                Step::Wait(mut ticket) => match ticket.wait().await {
                    // Straight from another lease: it was never idle.
                    Grant::Conn(conn) => return Ok(self.lease(conn, true)),
                    Grant::Dial => Step::Dial,
                    Grant::Closed => return Err(Error::PoolClosed),
                },
            };
        }
    }

    /// Runs the configured health check on a connection taken from idle.
    /// On failure the connection is closed and this caller keeps its slot:
    /// the next step is another idle connection or a dial.
    async fn health_check(self: &Arc<Self>, conn: Conn) -> Result<Checked, Error> {
        let Some(check) = self.config().health_check() else {
            return Ok(Checked::Healthy(self.lease(conn, true)));
        };
        // Held as a lease during the check, so that a caller cancelled
        // mid-check closes the connection rather than returning it with a
        // half-done exchange on it.
        let mut lease = self.lease_without_counting(conn);
        lease.set_busy(true);
        let healthy = check.check(lease.stream_mut()).await;
        lease.set_busy(false);
        if healthy {
            self.count_checkout(&mut lease, true);
            return Ok(Checked::Healthy(lease));
        }
        tracing::debug!(endpoint = %self.endpoint, "connection failed its health check");
        let conn = lease
            .take_conn()
            .expect("the lease still holds its connection");
        let mut closing = vec![(conn, CloseReason::HealthCheckFailed)];
        self.counters.closed(CloseReason::HealthCheckFailed);
        let next = {
            let mut st = self.state.lock();
            st.active -= 1;
            if st.closed {
                Err(Error::PoolClosed)
            } else if let Some(conn) = self.pop_fit_idle(&mut st, Instant::now(), &mut closing) {
                Ok(Checked::Next(Step::Reuse(conn)))
            } else {
                st.dialing += 1;
                Ok(Checked::Next(Step::Dial))
            }
        };
        self.close_all(closing);
        next
    }

    /// Dials in a task of its own (this caller holds a dialing slot) and
    /// waits for the result. If this caller goes away, the task still
    /// finishes and the connection goes to the next waiter or to idle.
    async fn dial(self: &Arc<Self>) -> Result<PooledConnection, Error> {
        let (tx, rx) = oneshot::channel();
        let slot = DialSlot(Some(self.clone()));
        tokio::spawn(async move {
            let pool = slot
                .0
                .as_ref()
                .expect("the slot is held until the dial ends");
            let ctx = &pool.ctx;
            let result = dial_with_retry(&*ctx.dialer, &pool.endpoint, &ctx.config).await;
            slot.finish(result, tx);
        });
        match rx.await {
            Ok(Ok(conn)) => Ok(self.lease(conn, false)),
            Ok(Err(err)) => Err(err),
            // The dial task panicked (a custom dialer's bug); the slot's
            // guard gave the slot back.
            Err(_) => Err(Error::ConnectionFailed {
                endpoint: self.endpoint.clone(),
                attempts: 1,
                source: std::io::Error::other("the dialer panicked"),
            }),
        }
    }

    fn finish_dial(
        self: &Arc<Self>,
        result: Result<crate::Stream, Error>,
        tx: oneshot::Sender<Result<Conn, Error>>,
    ) {
        match result {
            Ok(stream) => {
                let now = Instant::now();
                self.counters.created();
                tracing::debug!(endpoint = %self.endpoint, "connection created");
                self.config().notify_created(&self.endpoint);
                let conn = {
                    let mut st = self.state.lock();
                    st.dialing -= 1;
                    st.last_dial_error = None;
                    let conn = Conn::new(stream, now, st.generation);
                    if st.closed {
                        self.counters.closed(CloseReason::PoolClosed);
                        drop(st);
                        self.close_all(vec![(conn, CloseReason::PoolClosed)]);
                        let _ = tx.send(Err(Error::PoolClosed));
                        return;
                    }
                    st.active += 1;
                    conn
                };
                if let Err(Ok(conn)) = tx.send(Ok(conn)) {
                    // The caller gave up: the next waiter or idle gets it.
                    self.release(conn, None);
                }
            }
            Err(err) => {
                self.counters.dial_failed();
                {
                    let mut st = self.state.lock();
                    st.dialing -= 1;
                    st.last_dial_error = Some(err.to_string());
                    self.grant_free_slot(&mut st);
                }
                let _ = tx.send(Err(err));
            }
        }
    }

    fn lease(self: &Arc<Self>, conn: Conn, reused: bool) -> PooledConnection {
        let mut lease = self.lease_without_counting(conn);
        self.count_checkout(&mut lease, reused);
        lease
    }

    fn lease_without_counting(self: &Arc<Self>, mut conn: Conn) -> PooledConnection {
        conn.uses += 1;
        PooledConnection::new(conn, self.clone())
    }

    fn count_checkout(&self, lease: &mut PooledConnection, reused: bool) {
        if reused {
            lease.set_reused();
            self.counters.reused();
            self.config().notify_reused(&self.endpoint);
        }
    }

    /// Takes back a connection that was active. `close` is the lease's own
    /// reason to close it, if it has one.
    pub(crate) fn release(&self, mut conn: Conn, close: Option<CloseReason>) {
        let now = Instant::now();
        conn.last_used = now;
        let reason = close.or_else(|| conn.reuse_verdict(now, self.config()));
        let mut st = self.state.lock();
        let reason = reason
            .or(st.closed.then_some(CloseReason::PoolClosed))
            .or((conn.generation != st.generation).then_some(CloseReason::Cleared));
        if let Some(reason) = reason {
            st.active -= 1;
            self.counters.closed(reason);
            self.grant_free_slot(&mut st);
            drop(st);
            self.close_all(vec![(conn, reason)]);
            return;
        }
        while let Some(waiter) = st.waiters.pop_front() {
            match waiter.tx.send(Grant::Conn(conn)) {
                Ok(()) => return,
                Err(Grant::Conn(back)) => conn = back,
                Err(_) => unreachable!("a grant comes back as it was sent"),
            }
        }
        st.active -= 1;
        st.idle.push(conn);
    }

    /// A slot just became free: the first live waiter may dial into it.
    fn grant_free_slot(&self, st: &mut State) {
        if st.closed || st.total() >= self.config().max_connections_per_endpoint() {
            return;
        }
        while let Some(waiter) = st.waiters.pop_front() {
            st.dialing += 1;
            if waiter.tx.send(Grant::Dial).is_ok() {
                return;
            }
            st.dialing -= 1;
        }
    }

    /// Closes every idle connection; leases out now close when they come
    /// back. Counters are kept.
    pub(crate) fn clear(&self) {
        let closing = {
            let mut st = self.state.lock();
            st.generation += 1;
            self.drain_idle(&mut st, CloseReason::Cleared)
        };
        tracing::info!(endpoint = %self.endpoint, closed = closing.len(), "endpoint cleared");
        self.close_all(closing);
    }

    /// Closes idle connections, fails waiters, and refuses new acquires.
    pub(crate) fn close(&self) {
        let (closing, waiters) = {
            let mut st = self.state.lock();
            st.closed = true;
            (
                self.drain_idle(&mut st, CloseReason::PoolClosed),
                std::mem::take(&mut st.waiters),
            )
        };
        for waiter in waiters {
            let _ = waiter.tx.send(Grant::Closed);
        }
        self.close_all(closing);
    }

    fn drain_idle(&self, st: &mut State, reason: CloseReason) -> Closing {
        st.idle
            .drain(..)
            .map(|conn| {
                self.counters.closed(reason);
                (conn, reason)
            })
            .collect()
    }

    /// Closes connections already counted closed; called with no lock held.
    /// Dropping a socket closes it without blocking.
    fn close_all(&self, closing: Closing) {
        for (conn, reason) in closing {
            tracing::debug!(
                endpoint = %self.endpoint,
                id = conn.id,
                uses = conn.uses,
                %reason,
                "closing connection"
            );
            drop(conn);
            self.config().notify_closed(&self.endpoint, reason);
        }
    }

    fn withdraw(&self, id: u64) -> bool {
        let mut st = self.state.lock();
        match st.waiters.iter().position(|w| w.id == id) {
            Some(pos) => {
                st.waiters.remove(pos);
                true
            }
            None => false,
        }
    }

    /// Returns a grant whose waiter went away before using it.
    fn give_back(&self, grant: Grant) {
        match grant {
            Grant::Conn(conn) => self.release(conn, None),
            Grant::Dial => {
                let mut st = self.state.lock();
                st.dialing -= 1;
                self.grant_free_slot(&mut st);
            }
            Grant::Closed => {}
        }
    }
}

/// A dialing slot held by a dial task; if the task dies without finishing
/// (a panicking dialer), dropping it frees the slot.
struct DialSlot(Option<Arc<EndpointPool>>);

impl DialSlot {
    fn finish(
        mut self,
        result: Result<crate::Stream, Error>,
        tx: oneshot::Sender<Result<Conn, Error>>,
    ) {
        if let Some(pool) = self.0.take() {
            pool.finish_dial(result, tx);
        }
    }
}

impl Drop for DialSlot {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            pool.counters.dial_failed();
            pool.give_back(Grant::Dial);
        }
    }
}

/// A caller's place in an endpoint's queue. Dropping it before it is
/// served leaves the queue; dropping it after a grant was sent returns the
/// grant.
pub(crate) struct WaitTicket {
    pool: Arc<EndpointPool>,
    id: u64,
    rx: Option<oneshot::Receiver<Grant>>,
}

impl WaitTicket {
    async fn wait(&mut self) -> Grant {
        let rx = self.rx.as_mut().expect("a ticket is waited on once");
        // The sender is only dropped unsent by `close`, which sends Closed
        // first; treat a vanished sender the same way.
        let grant = rx.await.unwrap_or(Grant::Closed);
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
        // sent it is in the channel now.
        rx.close();
        if let Ok(grant) = rx.try_recv() {
            self.pool.give_back(grant);
        }
    }
}
