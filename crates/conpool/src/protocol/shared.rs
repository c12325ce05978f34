//! Shares of a shared protocol's connections, per endpoint.
//!
//! A shared connection is leased from the core once, by the share that
//! finds no open connection with room, and given back to the core when its
//! last share comes back and nobody waits for one; so the core's books
//! count it as active while shares are out and as idle (its idle time
//! starting then) after, and every rule of the core (limits, lifetime,
//! idle time, use count, clears, `close`, the liveness look) applies to it
//! there. This module keeps only what the core has no word for:
//!
//! - which connections are out for sharing, how many shares each carries
//!   and may carry (`max_shares`), and whether it still takes new ones: a
//!   connection that expired, was cleared, was discarded or that the
//!   protocol calls not ready takes none, finishes its shares in flight,
//!   and is then given back, to be closed by the core (a drain);
//! - the *turn* to lease one more connection from the core: one caller at a
//!   time per endpoint holds it (so that 1,000 callers arriving on a cold
//!   endpoint open one connection), and it passes to the next waiter
//!   however its holder ends, cancelled included;
//! - the callers waiting for a share, served first come, first served, as
//!   shares come back or a new connection arrives, within
//!   `acquire_timeout`, and at most `max_waiters_per_endpoint` of them; the
//!   turn's holder came before them all, so it keeps a place at their head
//!   while it leases from the core (which may queue it at the endpoint's
//!   limit), and takes a share that comes back first.
//!
//! Lock order: an endpoint's share lock, then the core's endpoint lock
//! (asked whether a connection is of the current generation). Nothing the
//! core calls takes a share lock under its own, and connections leave for
//! the core only after the share lock is released, as closing one runs the
//! config's hooks.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::panic::Location;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Kind, Protocol, ProtocolLease, ProtocolPool, deadline, live_mut};
use crate::endpoint::PrehashedState;
use crate::pool::ProtocolConn;
use crate::{CloseReason, Endpoint, Error, PooledConnection};

/// Every endpoint's shares, for one protocol pool.
pub(crate) struct Shares<P: Protocol> {
    /// Tells this protocol pool's entries in each thread's [`LAST_SET`]
    /// from another's (never reused, unlike an address).
    id: u64,
    /// Keyed by the endpoint's own hash, as the core's map is: no
    /// hashing on the way to a share.
    sets: Mutex<HashMap<Endpoint, Arc<ShareSet<P>>, PrehashedState>>,
}

thread_local! {
    /// The share set this thread found last: a thread mostly shares
    /// connections to one endpoint per protocol pool, and the map's lock
    /// is one that every get on every core would otherwise take. A hint,
    /// checked on every use (the pool, the endpoint), and weak, so that it
    /// keeps nothing alive.
    static LAST_SET: RefCell<Option<LastSet>> = const { RefCell::new(None) };
}

struct LastSet {
    shares: u64,
    hash: u64,
    set: Weak<dyn Any + Send + Sync>,
}

impl<P: Protocol> Default for Shares<P> {
    fn default() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Shares {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            sets: Mutex::default(),
        }
    }
}

impl<P: Protocol> Shares<P> {
    fn set(&self, endpoint: &Endpoint, protocol: &Arc<P>) -> Arc<ShareSet<P>> {
        if let Some(set) = self.last_set(endpoint) {
            return set;
        }
        let set = self.set_in_map(endpoint, protocol);
        let weak: Weak<dyn Any + Send + Sync> = Arc::downgrade(&set) as _;
        let replaced = LAST_SET.try_with(|last| {
            let mut last = last.try_borrow_mut().ok()?;
            last.replace(LastSet {
                shares: self.id,
                hash: endpoint.prehash(),
                set: weak,
            })
        });
        // Dropped outside the borrow.
        drop(replaced);
        set
    }

    fn last_set(&self, endpoint: &Endpoint) -> Option<Arc<ShareSet<P>>> {
        let found = LAST_SET
            .try_with(|last| {
                let last = last.try_borrow().ok()?;
                let last = last.as_ref()?;
                (last.shares == self.id && last.hash == endpoint.prehash())
                    .then(|| last.set.upgrade())
                    .flatten()
            })
            .ok()
            .flatten()?;
        let set = found.downcast::<ShareSet<P>>().ok()?;
        (set.endpoint == *endpoint).then_some(set)
    }

    fn set_in_map(&self, endpoint: &Endpoint, protocol: &Arc<P>) -> Arc<ShareSet<P>> {
        let mut sets = self.sets.lock();
        if let Some(set) = sets.get(endpoint) {
            return set.clone();
        }
        sets.entry(endpoint.clone())
            .or_insert_with(|| {
                Arc::new(ShareSet {
                    endpoint: endpoint.clone(),
                    protocol: protocol.clone(),
                    state: Mutex::new(SetState {
                        conns: Vec::new(),
                        acquiring: false,
                        waiters: VecDeque::new(),
                        shares: 0,
                    }),
                })
            })
            .clone()
    }

    /// After a clear or a close of `endpoint`: its connections out for
    /// sharing take no new shares, and those with none in flight go back
    /// to the core now (which closes them).
    pub(crate) fn retire(&self, endpoint: &Endpoint) {
        let Some(set) = self.sets.lock().get(endpoint).cloned() else {
            return;
        };
        let finished = {
            let mut st = set.state.lock();
            for c in &mut st.conns {
                c.open = false;
            }
            ShareSet::take_finished(&mut st)
        };
        give_back(finished);
    }

    /// `endpoint`'s shares in flight, and the callers waiting for one
    /// (the turn's holder among them).
    pub(crate) fn counts(&self, endpoint: &Endpoint) -> (usize, usize) {
        let set = self.sets.lock().get(endpoint).cloned();
        set.map_or((0, 0), |set| {
            let st = set.state.lock();
            let waiting = st.waiters.iter().filter(|w| !w.is_closed()).count();
            (st.shares, waiting)
        })
    }
}

/// One endpoint's shared connections and the callers waiting for a share.
pub(crate) struct ShareSet<P: Protocol> {
    endpoint: Endpoint,
    /// The pool's protocol: what a share asks as it comes back, and what
    /// makes a share's handle. Held here so that a share holds one
    /// reference, to its set, not a second to the pool's books: each is a
    /// count that both cores write on every get.
    protocol: Arc<P>,
    state: Mutex<SetState<P>>,
}

struct SetState<P: Protocol> {
    /// The connections leased from the core for sharing; each has a share
    /// in flight, or is about to be given back.
    conns: Vec<Shared>,
    /// A caller holds the turn to lease one more connection from the
    /// core. True exactly while one [`AcquireTurn`] is armed or a
    /// `Turn::Acquire` is on its way to a waiter.
    acquiring: bool,
    /// Callers waiting for a share (or the turn), first come first.
    waiters: VecDeque<oneshot::Sender<Turn<P>>>,
    /// Shares in flight, over all `conns`: the sum of their `in_flight`.
    shares: usize,
}

/// A connection out for sharing.
struct Shared {
    /// The lease's [`id`](PooledConnection::id), beside the counts that a
    /// share's return looks it up with: the lease's own lies further off,
    /// on another cache line.
    id: u64,
    lease: PooledConnection,
    /// `max_shares` as the protocol gave it when the connection came out.
    max: usize,
    /// Shares of it in flight; at most `max`.
    in_flight: usize,
    /// Whether it takes new shares; once false, never true again.
    open: bool,
    /// Shares handed out since it came out of the core.
    handed: u64,
}

/// What a waiting caller is sent.
enum Turn<P: Protocol> {
    Share(Share<P>),
    /// The turn to lease one more connection from the core.
    Acquire,
}

impl<P: Protocol> SetState<P> {
    /// How many callers wait for a share (the turn's holder, which keeps
    /// a place at the head, among them) if that is `max` or more, as
    /// `max_waiters_per_endpoint` counts them.
    fn too_many_waiters(&self, max: Option<usize>) -> Option<usize> {
        let max = max?;
        let waiting = self.waiters.iter().filter(|w| !w.is_closed()).count();
        (waiting >= max).then_some(waiting)
    }

    fn check_books(&self) {
        debug_assert_eq!(
            self.shares,
            self.conns.iter().map(|c| c.in_flight).sum::<usize>(),
            "shares in flight are the sum of each connection's"
        );
        debug_assert!(
            self.conns.iter().all(|c| c.in_flight <= c.max),
            "no connection carries more shares than it may"
        );
    }
}

impl<P: Protocol> ShareSet<P> {
    /// One more share of the first open connection with room, counted in
    /// the books (its caller makes it a [`Share`]), marking those found
    /// unfit on the way as taking no more.
    fn take_share(&self, st: &mut SetState<P>, now: Instant) -> Option<Taken<P>> {
        for c in st.conns.iter_mut() {
            if !c.open || c.in_flight >= c.max {
                continue;
            }
            // The core judged the connection fit by age and use count as
            // it leased it out, and counted that use: the first share's.
            let first = c.handed == 0;
            let spent = !first && c.lease.share_verdict(now).is_some();
            // A clear or a close since it came out marked it not open
            // (`retire`), so no generation check is needed here.
            let handle = if spent {
                None
            } else {
                let live = live_mut::<P>(&mut c.lease);
                if live.is_ready() {
                    self.protocol.share(&live.conn)
                } else {
                    None
                }
            };
            let Some(conn) = handle else {
                c.open = false;
                continue;
            };
            c.in_flight += 1;
            if !first {
                c.lease.count_use();
            }
            let reused = c.handed > 0 || c.lease.is_reused();
            c.handed += 1;
            let id = c.id;
            st.shares += 1;
            st.check_books();
            return Some(Taken { conn, id, reused });
        }
        None
    }

    /// Takes back, under the lock, a share that found no taker.
    fn undo(st: &mut SetState<P>, mut share: Share<P>) {
        share.armed = false;
        if let Some(c) = st.conns.iter_mut().find(|c| c.id == share.id) {
            c.in_flight -= 1;
            c.handed -= 1;
        }
        st.shares -= 1;
        st.check_books();
    }

    /// Hands shares to waiters, first come first served, while an open
    /// connection has room. The clock is read only if someone waits: most
    /// returns find nobody.
    fn serve_waiters(self: &Arc<Self>, st: &mut SetState<P>) {
        let mut clock = None;
        loop {
            // Places of callers that left (the turn's holder's, once it
            // has its connection, among them) go first, so that no share
            // is taken, and counted as a use, for nobody.
            while st.waiters.front().is_some_and(|w| w.is_closed()) {
                st.waiters.pop_front();
            }
            if st.waiters.is_empty() {
                return;
            }
            let now = *clock.get_or_insert_with(Instant::now);
            let Some(taken) = self.take_share(st, now) else {
                return;
            };
            let mut share = taken.into_share(self.clone());
            loop {
                let Some(waiter) = st.waiters.pop_front() else {
                    Self::undo(st, share);
                    return;
                };
                match waiter.send(Turn::Share(share)) {
                    Ok(()) => break,
                    // That waiter left: the next one.
                    Err(Turn::Share(back)) => share = back,
                    Err(Turn::Acquire) => return,
                }
            }
        }
    }

    /// Passes the turn to lease from the core to the first waiter still
    /// there, or frees it. Under the lock.
    fn pass_turn_locked(st: &mut SetState<P>) {
        while let Some(waiter) = st.waiters.pop_front() {
            if waiter.send(Turn::Acquire).is_ok() {
                return;
            }
        }
        st.acquiring = false;
    }

    fn pass_turn(&self) {
        Self::pass_turn_locked(&mut self.state.lock());
    }

    /// The connections done with sharing, taken out to be given back to
    /// the core (after the lock is released): those that take no more
    /// shares and have none in flight, and, when nobody waits, every one
    /// with none in flight (its idle time starts in the core).
    fn take_finished(st: &mut SetState<P>) -> Vec<PooledConnection> {
        let nobody_waits = st.waiters.is_empty();
        let mut finished = Vec::new();
        for i in (0..st.conns.len()).rev() {
            let c = &st.conns[i];
            if c.in_flight == 0 && (!c.open || nobody_waits) {
                finished.push(st.conns.swap_remove(i).lease);
            }
        }
        finished
    }

    /// Adds a connection the turn's holder leased from the core: a share of
    /// it for the holder, the rest of its room for waiters; the turn goes
    /// to the next waiter if some still wait with every connection full.
    fn add(
        self: &Arc<Self>,
        mut lease: PooledConnection,
        mut turn: AcquireTurn<P>,
    ) -> Option<Share<P>> {
        let now = Instant::now();
        let max = self
            .protocol
            .max_shares(&live_mut::<P>(&mut lease).conn)
            .max(1);
        let (mine, finished) = {
            let mut st = self.state.lock();
            turn.disarm();
            // Asked under this lock, which `retire` takes after a clear or
            // a close has moved the endpoint on: either this sees it, or
            // `retire` sees this connection.
            let open = lease.is_current();
            st.conns.push(Shared {
                id: lease.id(),
                lease,
                max,
                in_flight: 0,
                open,
                handed: 0,
            });
            let mine = self
                .take_share(&mut st, now)
                .map(|taken| taken.into_share(self.clone()));
            self.serve_waiters(&mut st);
            if st.waiters.is_empty() {
                st.acquiring = false;
            } else {
                Self::pass_turn_locked(&mut st);
            }
            (mine, Self::take_finished(&mut st))
        };
        give_back(finished);
        mine
    }
}

/// Gives connections done with sharing back to the core: a release, so
/// that the protocol is asked whether the connection is still ready.
fn give_back(finished: Vec<PooledConnection>) {
    if finished.is_empty() {
        return;
    }
    for lease in finished {
        lease.release();
    }
}

/// The turn to lease one more connection from the core; passed on to the
/// next waiter when dropped armed (its holder failed, timed out or was
/// cancelled).
struct AcquireTurn<P: Protocol> {
    set: Option<Arc<ShareSet<P>>>,
}

impl<P: Protocol> AcquireTurn<P> {
    fn new(set: &Arc<ShareSet<P>>) -> Self {
        AcquireTurn {
            set: Some(set.clone()),
        }
    }

    fn disarm(&mut self) {
        self.set = None;
    }
}

impl<P: Protocol> Drop for AcquireTurn<P> {
    fn drop(&mut self) {
        if let Some(set) = self.set.take() {
            set.pass_turn();
        }
    }
}

/// A caller's place among the waiters. Dropped with the turn in its
/// channel (the caller left just as it came), it passes the turn on; a
/// share in its channel is given back as the share drops.
struct Waiting<P: Protocol> {
    rx: oneshot::Receiver<Turn<P>>,
    set: Arc<ShareSet<P>>,
}

impl<P: Protocol> Drop for Waiting<P> {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(Turn::Acquire) = self.rx.try_recv() {
            self.set.pass_turn();
        }
    }
}

/// What a get that found no share at once does next.
enum Next<P: Protocol> {
    /// The turn, and a place at the head of the waiters while it is used.
    Acquire(AcquireTurn<P>, Waiting<P>),
    Wait(Waiting<P>),
    /// `max_waiters_per_endpoint` callers wait already: this many.
    TooManyWaiters(usize),
}

/// A place at the head of the waiters for the caller holding the turn
/// while it leases from the core (which may wait, at the endpoint's
/// limit): it came before every waiter, so a share coming back meanwhile
/// is its, not theirs. Under the lock, with the turn held: no other place
/// is put first meanwhile, and no turn is sent to this one.
fn place_first<P: Protocol>(st: &mut SetState<P>, set: &Arc<ShareSet<P>>) -> Waiting<P> {
    let (tx, rx) = oneshot::channel();
    st.waiters.push_front(tx);
    Waiting {
        rx,
        set: set.clone(),
    }
}

/// [`ProtocolPool::get`] for a shared protocol.
pub(super) async fn get<P: Protocol>(
    pp: &ProtocolPool<P>,
    endpoint: &Endpoint,
    caller: &'static Location<'static>,
) -> Result<ProtocolLease<P>, Error> {
    if pp.pool.is_closed() {
        return Err(Error::PoolClosed);
    }
    let set = pp.books.shares.set(endpoint, &pp.books.protocol);
    let max_waiters = pp.ctx.config.max_waiters_per_endpoint();
    // `acquire_timeout` runs from the first time a share is not there at
    // once (a lock's hold after the call): a get that finds one reads the
    // clock only to check the connection's age.
    let mut waits_until: Option<Option<Instant>> = None;
    let mut turn: Option<AcquireTurn<P>> = None;
    loop {
        let (next, finished) = {
            let mut st = set.state.lock();
            let taken = set.take_share(&mut st, Instant::now());
            let next = match (taken, turn.take()) {
                (Some(taken), unused) => {
                    // Passed on once the lock is released.
                    turn = unused;
                    Ok(taken)
                }
                (None, Some(turn)) => Err(Next::Acquire(turn, place_first(&mut st, &set))),
                (None, None) if !st.acquiring => {
                    st.acquiring = true;
                    Err(Next::Acquire(
                        AcquireTurn::new(&set),
                        place_first(&mut st, &set),
                    ))
                }
                (None, None) if st.too_many_waiters(max_waiters).is_some() => Err(
                    Next::TooManyWaiters(st.too_many_waiters(max_waiters).unwrap_or_default()),
                ),
                (None, None) => {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.push_back(tx);
                    Err(Next::Wait(Waiting {
                        rx,
                        set: set.clone(),
                    }))
                }
            };
            (next, ShareSet::take_finished(&mut st))
        };
        let next = match next {
            Ok(taken) => {
                // A `Share` (whose drop gives it back) before anything else
                // runs: giving connections back runs the protocol's code,
                // and a panic there must leave no share counted that
                // nothing would give back. This get's reference to the set
                // becomes the share's.
                let share = taken.into_share(set);
                give_back(finished);
                drop(turn.take());
                return Ok(shared_lease(share));
            }
            Err(next) => next,
        };
        give_back(finished);
        drop(turn.take());
        let deadline = *waits_until.get_or_insert_with(|| deadline(&pp.ctx.config));
        match next {
            Next::TooManyWaiters(waiting) => {
                return Err(too_many_waiters_error(pp, endpoint, waiting));
            }
            Next::Acquire(turn, mut place) => {
                let leased = {
                    let core =
                        std::pin::pin!(within(deadline, pp.pool.get_in(&pp.ctx, endpoint, caller)));
                    tokio::select! {
                        biased;
                        lease = core => Ok(lease),
                        Ok(Turn::Share(share)) = &mut place.rx => Err(share),
                    }
                };
                // Before the connection is added, so that its shares go to
                // those still waiting.
                drop(place);
                let lease = match leased {
                    // A share came back first: the core's lease is given
                    // up (a dial goes on, to idle) and the turn passes on.
                    Err(share) => return Ok(shared_lease(share)),
                    Ok(lease) => lease,
                };
                match lease {
                    Some(Ok(lease)) => {
                        if let Some(share) = set.add(lease, turn) {
                            return Ok(shared_lease(share));
                        }
                        // The new connection could not be shared (not
                        // ready at once): look again.
                    }
                    Some(Err(err)) => return Err(err),
                    None => return Err(timeout_error(pp, endpoint)),
                }
            }
            // Its timer needs a runtime: a get polled on another
            // executor that has to wait fails as the core's does.
            Next::Wait(_)
                if deadline.is_some() && tokio::runtime::Handle::try_current().is_err() =>
            {
                return Err(Error::NoRuntime {
                    protocol: None,
                    endpoint: endpoint.clone(),
                });
            }
            Next::Wait(mut waiting) => match within(deadline, &mut waiting.rx).await {
                Some(Ok(Turn::Share(share))) => return Ok(shared_lease(share)),
                Some(Ok(Turn::Acquire)) => turn = Some(AcquireTurn::new(&set)),
                // Not sent to: look again.
                Some(Err(_)) => {}
                None => return Err(timeout_error(pp, endpoint)),
            },
        }
    }
}

fn shared_lease<P: Protocol>(share: Share<P>) -> ProtocolLease<P> {
    ProtocolLease {
        kind: Kind::Shared(share),
    }
}

/// `step`, unless `deadline` passes first. A step ready at its first poll
/// (an idle connection in the core) sets no timer: tokio's `Timeout` would
/// poll it first all the same, but only after registering one.
async fn within<F: Future>(deadline: Option<Instant>, step: F) -> Option<F::Output> {
    let Some(deadline) = deadline else {
        return Some(step.await);
    };
    let mut step = pin!(step);
    let first = std::future::poll_fn(|cx| Poll::Ready(step.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(out) => Some(out),
        Poll::Pending => tokio::time::timeout_at(deadline, step).await.ok(),
    }
}

fn too_many_waiters_error<P: Protocol>(
    pp: &ProtocolPool<P>,
    endpoint: &Endpoint,
    waiting: usize,
) -> Error {
    let stats = pp.stats(endpoint);
    let state = crate::PoolState {
        active: stats.active,
        idle: stats.idle,
        dialing: stats.dialing,
        waiting,
    };
    Error::TooManyWaiters {
        protocol: None,
        endpoint: endpoint.clone(),
        max_waiters: pp.ctx.config.max_waiters_per_endpoint().unwrap_or(0),
        state,
    }
}

fn timeout_error<P: Protocol>(pp: &ProtocolPool<P>, endpoint: &Endpoint) -> Error {
    match pp.ctx.endpoints.get(endpoint) {
        Some(pool) => pool.timeout_error(),
        None => Error::AcquireTimeout {
            protocol: None,
            endpoint: endpoint.clone(),
            timeout: pp.ctx.config.acquire_timeout().unwrap_or_default(),
            state: crate::PoolState::default(),
            last_dial_error: None,
        },
    }
}

/// A share counted in the books under the set's lock, before it has the
/// reference to its set that makes it a [`Share`]: taken after the lock's
/// release, from the get's own where it can, so that a get moves no count
/// it does not have to.
struct Taken<P: Protocol> {
    conn: P::Conn,
    id: u64,
    reused: bool,
}

impl<P: Protocol> Taken<P> {
    fn into_share(self, set: Arc<ShareSet<P>>) -> Share<P> {
        Share {
            conn: self.conn,
            id: self.id,
            set,
            reused: self.reused,
            armed: true,
            discard: false,
        }
    }
}

/// A share of a connection: its own handle on the connection, given back
/// when dropped.
pub(crate) struct Share<P: Protocol> {
    conn: P::Conn,
    id: u64,
    set: Arc<ShareSet<P>>,
    reused: bool,
    /// Whether dropping it gives it back (false once taken back unsent).
    armed: bool,
    discard: bool,
}

impl<P: Protocol> Share<P> {
    pub(super) fn conn(&self) -> &P::Conn {
        &self.conn
    }

    pub(super) fn conn_mut(&mut self) -> &mut P::Conn {
        &mut self.conn
    }

    pub(super) fn endpoint(&self) -> &Endpoint {
        &self.set.endpoint
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn is_reused(&self) -> bool {
        self.reused
    }

    pub(super) fn discard(&mut self) {
        self.discard = true;
    }
}

impl<P: Protocol> Drop for Share<P> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let ready = self.set.protocol.is_ready(&mut self.conn);
        let finished = {
            let mut st = self.set.state.lock();
            if let Some(c) = st.conns.iter_mut().find(|c| c.id == self.id) {
                c.in_flight -= 1;
                if self.discard {
                    c.open = false;
                    c.lease.spend(CloseReason::Discarded);
                } else if !ready {
                    c.open = false;
                }
            }
            st.shares -= 1;
            st.check_books();
            self.set.serve_waiters(&mut st);
            ShareSet::take_finished(&mut st)
        };
        give_back(finished);
    }
}
