//! Protocol pools as a user sees them, with protocols written here over
//! in-memory streams: an exclusive one (a lease has the connection to
//! itself) and a shared one (leases are shares of a connection, up to
//! `max_shares` at once). Each connection has a control the test reaches
//! to make it not ready, end its driver, or see that its driver was
//! dropped; the dialer counts dials and can hold them until the test lets
//! them through. Time is tokio's paused clock.

mod support;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conpool::dial::{Dial, DialError};
use conpool::{
    BoxFuture, CloseReason, Config, ConfigBuilder, Connected, Endpoint, Error, Pool, Protocol,
    ProtocolLease, ProtocolPool, Stream,
};
use tokio::io::DuplexStream;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

// ---------------------------------------------------------------------------
// The dialer

/// In-memory streams whose server halves it keeps, counting dials; with a
/// gate, each dial waits for a permit the test adds.
#[derive(Clone, Default)]
struct MemDialer {
    halves: Arc<Mutex<Vec<DuplexStream>>>,
    dials: Arc<AtomicUsize>,
    gate: Option<Arc<Semaphore>>,
}

impl MemDialer {
    fn gated() -> Self {
        MemDialer {
            gate: Some(Arc::new(Semaphore::new(0))),
            ..MemDialer::default()
        }
    }

    fn dials(&self) -> usize {
        self.dials.load(Ordering::SeqCst)
    }

    /// Lets `n` held dials through.
    fn open_gate(&self, n: usize) {
        self.gate.as_ref().expect("a gated dialer").add_permits(n);
    }
}

impl Dial for MemDialer {
    fn dial<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
        Box::pin(async move {
            self.dials.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("never closed").forget();
            }
            let (client, server) = tokio::io::duplex(64);
            self.halves.lock().unwrap().push(server);
            Ok(Stream::custom(client))
        })
    }
}

// ---------------------------------------------------------------------------
// The protocols

/// What the test can see and do to one connection.
struct Control {
    /// The n-th connection made (from 1).
    n: usize,
    ready: AtomicBool,
    /// Whether it has a driver.
    driven: bool,
    /// The driver future was dropped (it ended, or was aborted).
    driver_dropped: AtomicBool,
    /// Ends the driver by itself (the peer went away).
    end_driver: Notify,
    _stream: Mutex<Stream>,
}

/// The connection a lease derefs to: a handle on its control (shares of
/// one connection are clones).
#[derive(Clone)]
struct TestConn {
    ctl: Arc<Control>,
}

impl TestConn {
    /// A request on the connection: fails if the pool handed out one the
    /// protocol said was not ready.
    fn call(&self) {
        assert!(
            self.ctl.ready.load(Ordering::SeqCst),
            "connection {} was handed out not ready",
            self.ctl.n
        );
        assert!(
            !self.ctl.driven || !self.ctl.driver_dropped.load(Ordering::SeqCst),
            "connection {} was handed out with its driver gone",
            self.ctl.n
        );
    }
}

/// How one handshake goes.
#[derive(Clone, Copy, Debug)]
enum Handshake {
    Ok,
    Fail { transient: bool },
    Hang,
}

#[derive(Debug)]
struct HandshakeError {
    transient: bool,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server said no (transient: {})", self.transient)
    }
}

impl std::error::Error for HandshakeError {}

#[derive(Default)]
struct ProtoState {
    conns: Mutex<Vec<Arc<Control>>>,
    handshakes: AtomicUsize,
    /// How the next handshakes go; `Ok` once it runs out.
    script: Mutex<VecDeque<Handshake>>,
    with_driver: bool,
    max_shares: usize,
}

/// The test protocol; `S`: whether it is shared.
#[derive(Clone)]
struct TestProto<const S: bool> {
    state: Arc<ProtoState>,
}

type Exclusive = TestProto<false>;
type SharedProto = TestProto<true>;

impl<const S: bool> TestProto<S> {
    fn build(with_driver: bool, max_shares: usize) -> Self {
        TestProto {
            state: Arc::new(ProtoState {
                with_driver,
                max_shares,
                ..ProtoState::default()
            }),
        }
    }

    fn conn(&self, n: usize) -> Arc<Control> {
        self.state.conns.lock().unwrap()[n - 1].clone()
    }

    fn made(&self) -> usize {
        self.state.conns.lock().unwrap().len()
    }

    fn handshakes(&self) -> usize {
        self.state.handshakes.load(Ordering::SeqCst)
    }

    fn script(&self, steps: &[Handshake]) {
        self.state
            .script
            .lock()
            .unwrap()
            .extend(steps.iter().copied());
    }

    /// Drivers still running (not dropped).
    fn drivers_running(&self) -> usize {
        self.state
            .conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.driven && !c.driver_dropped.load(Ordering::SeqCst))
            .count()
    }
}

impl Exclusive {
    fn exclusive() -> Self {
        Self::build(false, 1)
    }

    fn exclusive_driven() -> Self {
        Self::build(true, 1)
    }
}

impl SharedProto {
    fn shared(max_shares: usize) -> Self {
        Self::build(false, max_shares)
    }

    fn shared_driven(max_shares: usize) -> Self {
        Self::build(true, max_shares)
    }
}

/// Sets its control's `driver_dropped` when the driver future is dropped.
struct DropFlag(Arc<Control>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.driver_dropped.store(true, Ordering::SeqCst);
    }
}

impl<const S: bool> Protocol for TestProto<S> {
    type Conn = TestConn;
    type Error = HandshakeError;
    const SHARED: bool = S;

    fn name(&self) -> &'static str {
        if S { "test-shared" } else { "test-exclusive" }
    }

    async fn connect(
        &self,
        stream: Stream,
        _: &Endpoint,
    ) -> Result<Connected<TestConn>, HandshakeError> {
        self.state.handshakes.fetch_add(1, Ordering::SeqCst);
        let step = self
            .state
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Handshake::Ok);
        match step {
            Handshake::Ok => {}
            Handshake::Fail { transient } => return Err(HandshakeError { transient }),
            Handshake::Hang => std::future::pending::<()>().await,
        }
        let ctl = {
            let mut conns = self.state.conns.lock().unwrap();
            let ctl = Arc::new(Control {
                n: conns.len() + 1,
                ready: AtomicBool::new(true),
                driven: self.state.with_driver,
                driver_dropped: AtomicBool::new(false),
                end_driver: Notify::new(),
                _stream: Mutex::new(stream),
            });
            conns.push(ctl.clone());
            ctl
        };
        let conn = TestConn { ctl: ctl.clone() };
        if !self.state.with_driver {
            return Ok(Connected::new(conn));
        }
        Ok(Connected::with_driver(conn, async move {
            let flag = DropFlag(ctl);
            flag.0.end_driver.notified().await;
        }))
    }

    fn is_ready(&self, conn: &mut TestConn) -> bool {
        conn.ctl.ready.load(Ordering::SeqCst)
    }

    fn max_shares(&self, _: &TestConn) -> usize {
        self.state.max_shares
    }

    fn share(&self, conn: &TestConn) -> Option<TestConn> {
        Some(conn.clone())
    }

    fn is_transient(&self, error: &HandshakeError) -> bool {
        error.transient
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn ep() -> Endpoint {
    Endpoint::new("memory.example", 1).unwrap()
}

fn ep2() -> Endpoint {
    Endpoint::new("memory.example", 2).unwrap()
}

/// No jitter, no background pass unless a test asks for one.
fn base() -> ConfigBuilder {
    Config::builder()
        .max_connection_lifetime_jitter(0.0)
        .maintenance_interval(None)
}

fn pools<P: Protocol>(config: ConfigBuilder, dialer: &MemDialer, p: P) -> (Pool, ProtocolPool<P>) {
    let pool = Pool::with_dialer(config.build().unwrap(), dialer.clone());
    let pp = pool.protocol(p);
    (pool, pp)
}

/// Lets every task run until all wait (the paused clock moves 1 ms).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn n_of<P: Protocol<Conn = TestConn>>(lease: &ProtocolLease<P>) -> usize {
    lease.ctl.n
}

// ---------------------------------------------------------------------------
// Exclusive

#[tokio::test(start_paused = true)]
async fn exclusive_connection_is_reused_created_once() {
    let dialer = MemDialer::default();
    let (_pool, pp) = pools(base(), &dialer, Exclusive::exclusive());
    for i in 0..6 {
        let lease = pp.get(&ep()).await.unwrap();
        lease.call();
        assert_eq!(lease.is_reused(), i > 0, "get {i}");
        assert_eq!(lease.endpoint(), &ep());
    }
    let stats = pp.stats(&ep());
    assert_eq!((stats.total_created, stats.total_reused), (1, 5));
    assert_eq!((stats.active, stats.idle), (0, 1));
    assert_eq!(stats.protocol, Some("test-exclusive"));
    assert_eq!(dialer.dials(), 1);
    assert_eq!(pp.protocol().handshakes(), 1);
}

#[tokio::test(start_paused = true)]
async fn exclusive_leases_have_the_connection_to_themselves() {
    let dialer = MemDialer::default();
    let (_pool, pp) = pools(base(), &dialer, Exclusive::exclusive());
    let a = pp.get(&ep()).await.unwrap();
    let b = pp.get(&ep()).await.unwrap();
    assert_ne!(a.id(), b.id());
    assert_eq!(pp.stats(&ep()).active, 2);
    assert_eq!(pp.stats(&ep()).shares, 0, "exclusive leases are not shares");
}

#[tokio::test(start_paused = true)]
async fn exclusive_connection_not_ready_at_return_is_closed_as_not_ready() {
    let dialer = MemDialer::default();
    let (_pool, pp) = pools(base(), &dialer, Exclusive::exclusive());
    let lease = pp.get(&ep()).await.unwrap();
    let first = lease.id();
    lease.ctl.ready.store(false, Ordering::SeqCst);
    drop(lease);
    let stats = pp.stats(&ep());
    assert_eq!(stats.closed_for(CloseReason::NotReady), 1);
    assert_eq!(stats.idle, 0);
    let next = pp.get(&ep()).await.unwrap();
    next.call();
    assert_ne!(next.id(), first);
    assert!(!next.is_reused());
}

#[tokio::test(start_paused = true)]
async fn exclusive_idle_connection_turning_not_ready_is_never_handed_out() {
    let dialer = MemDialer::default();
    for slots in [
        conpool::ThreadSlots::Off,
        conpool::ThreadSlots::Always,
        conpool::ThreadSlots::WhenContended,
    ] {
        let (_pool, pp) = pools(base().thread_slots(slots), &dialer, Exclusive::exclusive());
        drop(pp.get(&ep()).await.unwrap());
        pp.protocol().conn(1).ready.store(false, Ordering::SeqCst);
        let lease = pp.get(&ep()).await.unwrap();
        lease.call();
        assert_eq!(n_of(&lease), 2, "{slots:?}");
        let stats = pp.stats(&ep());
        assert_eq!(stats.closed_for(CloseReason::NotReady), 1, "{slots:?}");
        assert_eq!(
            stats.total_reused, 0,
            "{slots:?}: the unready one was not reused"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn exclusive_not_ready_idle_connection_is_removed_by_the_background_pass() {
    let dialer = MemDialer::default();
    let config = base().maintenance_interval(Duration::from_secs(1));
    let (_pool, pp) = pools(config, &dialer, Exclusive::exclusive());
    drop(pp.get(&ep()).await.unwrap());
    pp.protocol().conn(1).ready.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = pp.stats(&ep());
    assert_eq!(stats.idle, 0);
    assert_eq!(stats.closed_for(CloseReason::NotReady), 1);
}

#[tokio::test(start_paused = true)]
async fn exclusive_discard_closes_the_connection() {
    let dialer = MemDialer::default();
    let (_pool, pp) = pools(base(), &dialer, Exclusive::exclusive());
    let lease = pp.get(&ep()).await.unwrap();
    let first = lease.id();
    lease.discard();
    let stats = pp.stats(&ep());
    assert_eq!(stats.closed_for(CloseReason::Discarded), 1);
    assert_eq!((stats.active, stats.idle), (0, 0));
    assert_ne!(pp.get(&ep()).await.unwrap().id(), first);
    assert_eq!(dialer.dials(), 2);
}

#[tokio::test(start_paused = true)]
async fn exclusive_lifetime_idle_time_and_use_count_apply() {
    // Lifetime.
    let dialer = MemDialer::default();
    let config = base().max_connection_lifetime(Duration::from_secs(10));
    let (_pool, pp) = pools(config, &dialer, Exclusive::exclusive());
    let first = pp.get(&ep()).await.unwrap().id();
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_ne!(pp.get(&ep()).await.unwrap().id(), first);
    assert_eq!(pp.stats(&ep()).closed_for(CloseReason::LifetimeExpired), 1);

    // Idle time.
    let config = base().max_idle_time(Duration::from_secs(5));
    let (_pool, pp) = pools(config, &dialer, Exclusive::exclusive());
    let first = pp.get(&ep()).await.unwrap().id();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(pp.get(&ep()).await.unwrap().id(), first, "4 s idle is fine");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_ne!(pp.get(&ep()).await.unwrap().id(), first);
    assert_eq!(pp.stats(&ep()).closed_for(CloseReason::IdleExpired), 1);

    // Use count.
    let config = base().max_connection_uses(3);
    let (_pool, pp) = pools(config, &dialer, Exclusive::exclusive());
    let ids: Vec<u64> = {
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(pp.get(&ep()).await.unwrap().id());
        }
        ids
    };
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[0], ids[2]);
    assert_ne!(ids[0], ids[3]);
    assert_eq!(pp.stats(&ep()).closed_for(CloseReason::UsesExhausted), 1);
}

#[tokio::test(start_paused = true)]
async fn exclusive_max_connections_per_endpoint_holds() {
    let dialer = MemDialer::default();
    let config = base()
        .max_connections_per_endpoint(2)
        .acquire_timeout(Duration::from_secs(1));
    let (_pool, pp) = pools(config, &dialer, Exclusive::exclusive());
    let a = pp.get(&ep()).await.unwrap();
    let _b = pp.get(&ep()).await.unwrap();
    let err = pp.get(&ep()).await.unwrap_err();
    assert!(matches!(err, Error::AcquireTimeout { .. }), "{err}");
    assert_eq!(dialer.dials(), 2);
    // A freed one goes to the next caller.
    let id = a.id();
    let waiter = {
        let pp = pp.clone();
        tokio::spawn(async move { pp.get(&ep()).await.map(|l| l.id()) })
    };
    settle().await;
    drop(a);
    assert_eq!(waiter.await.unwrap().unwrap(), id);
    assert_eq!(dialer.dials(), 2);
}

#[tokio::test(start_paused = true)]
async fn max_connections_total_is_shared_with_the_byte_stream_pool() {
    let dialer = MemDialer::default();
    let config = base()
        .max_connections_total(2)
        .acquire_timeout(Duration::from_secs(1));
    let (pool, pp) = pools(config, &dialer, Exclusive::exclusive());
    let stream = pool.get(&ep()).await.unwrap();
    let lease = pp.get(&ep2()).await.unwrap();
    let err = pp.get(&ep()).await.unwrap_err();
    assert!(matches!(err, Error::AcquireTimeout { .. }), "{err}");
    let err = pool.get(&ep2()).await.unwrap_err();
    assert!(matches!(err, Error::AcquireTimeout { .. }), "{err}");
    // The stream's slot, once it is idle, is made room of for a protocol get.
    drop(stream);
    let other = pp.get(&ep()).await.unwrap();
    other.call();
    assert_eq!(pool.stats(&ep()).idle, 0, "the idle stream was evicted");
    drop((lease, other));
    assert_eq!(dialer.dials(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_protocol_get_is_served_when_a_stream_lease_frees_the_total() {
    let dialer = MemDialer::default();
    let config = base()
        .max_connections_total(1)
        .acquire_timeout(Duration::from_secs(5));
    let (pool, pp) = pools(config, &dialer, Exclusive::exclusive());
    let stream = pool.get(&ep()).await.unwrap();
    let waiter = {
        let pp = pp.clone();
        tokio::spawn(async move { pp.get(&ep2()).await.map(|l| l.is_reused()) })
    };
    settle().await;
    stream.discard();
    assert!(!waiter.await.unwrap().unwrap());
}

#[tokio::test(start_paused = true)]
async fn stats_and_all_stats_name_the_protocol() {
    let dialer = MemDialer::default();
    let (pool, excl) = pools(base(), &dialer, Exclusive::exclusive());
    let shared = pool.protocol(SharedProto::shared(4));
    drop(pool.get(&ep()).await.unwrap());
    drop(excl.get(&ep()).await.unwrap());
    let share = shared.get(&ep()).await.unwrap();
    let all = pool.all_stats();
    let names: Vec<(Endpoint, Option<&str>)> =
        all.iter().map(|(e, s)| (e.clone(), s.protocol)).collect();
    assert_eq!(
        names,
        vec![
            (ep(), None),
            (ep(), Some("test-exclusive")),
            (ep(), Some("test-shared")),
        ]
    );
    let of = |name: &str| {
        all.iter()
            .find(|(_, s)| s.protocol == Some(name))
            .unwrap()
            .1
    };
    assert_eq!(of("test-exclusive").idle, 1);
    assert_eq!(of("test-shared").shares, 1);
    assert_eq!(of("test-shared").active, 1);
    assert_eq!(pool.stats(&ep()).protocol, None);
    assert_eq!(
        excl.stats(&ep2()).protocol,
        Some("test-exclusive"),
        "unused endpoint"
    );
    drop(share);
}

// ---------------------------------------------------------------------------
// Shared

#[tokio::test(start_paused = true)]
async fn a_thousand_callers_on_a_cold_endpoint_open_one_connection() {
    let dialer = MemDialer::gated();
    let (_pool, pp) = pools(base(), &dialer, SharedProto::shared(10_000));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..1000 {
        let pp = pp.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(pp.get(&ep()).await);
        });
    }
    drop(tx);
    settle().await;
    assert_eq!(dialer.dials(), 1, "one dial while the first is under way");
    dialer.open_gate(1000);
    let mut shares = Vec::new();
    while let Some(share) = rx.recv().await {
        shares.push(share.unwrap());
    }
    assert_eq!(shares.len(), 1000);
    assert_eq!(dialer.dials(), 1);
    assert!(shares.iter().all(|s| s.id() == shares[0].id()));
    assert_eq!(shares.iter().filter(|s| !s.is_reused()).count(), 1);
    let stats = pp.stats(&ep());
    assert_eq!(
        (stats.total_created, stats.shares, stats.active),
        (1, 1000, 1)
    );
    drop(shares);
    let stats = pp.stats(&ep());
    assert_eq!((stats.shares, stats.active, stats.idle), (0, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn shared_connections_are_dialed_one_at_a_time_and_only_when_every_one_is_full() {
    let dialer = MemDialer::gated();
    let (_pool, pp) = pools(base(), &dialer, SharedProto::shared(3));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..8 {
        let pp = pp.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(pp.get(&ep()).await.unwrap());
        });
    }
    let mut shares = Vec::new();
    for round in 1..=3 {
        settle().await;
        assert_eq!(dialer.dials(), round, "round {round}: one dial at a time");
        dialer.open_gate(1);
        settle().await;
        while let Ok(share) = rx.try_recv() {
            shares.push(share);
        }
        assert_eq!(shares.len(), (round * 3).min(8), "round {round}");
        let mut per_conn: HashMap<u64, usize> = HashMap::new();
        for s in &shares {
            *per_conn.entry(s.id()).or_default() += 1;
        }
        assert!(per_conn.values().all(|&n| n <= 3), "{per_conn:?}");
        assert_eq!(pp.stats(&ep()).shares, shares.len());
    }
    settle().await;
    assert_eq!(dialer.dials(), 3, "8 callers, 3 shares each: 3 connections");
    // With room on an open connection, nobody dials.
    shares.pop();
    let more = pp.get(&ep()).await.unwrap();
    assert_eq!(dialer.dials(), 3);
    drop(more);
}

#[tokio::test(start_paused = true)]
async fn shared_callers_past_every_limit_time_out_within_acquire_timeout() {
    let dialer = MemDialer::default();
    let config = base()
        .max_connections_per_endpoint(2)
        .acquire_timeout(Duration::from_secs(5));
    let (_pool, pp) = pools(config, &dialer, SharedProto::shared(2));
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pp.get(&ep()).await.unwrap());
    }
    assert_eq!(dialer.dials(), 2);
    let start = Instant::now();
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let pp = pp.clone();
        waiters.push(tokio::spawn(async move { pp.get(&ep()).await.map(|_| ()) }));
    }
    for w in waiters {
        let err = w.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::AcquireTimeout { .. }), "{err}");
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    assert_eq!(pp.stats(&ep()).shares, 4);
    drop(held);
    assert_eq!(pp.stats(&ep()).shares, 0);
}

/// Callers that find every connection full and the endpoint at its limit
/// are served in the order they came, whoever of them holds the turn to
/// lease a connection from the core.
#[tokio::test(start_paused = true)]
async fn shared_waiters_past_every_limit_are_served_first_come_first_served() {
    let dialer = MemDialer::default();
    let config = base()
        .max_connections_per_endpoint(1)
        .acquire_timeout(Duration::from_secs(60));
    let (_pool, pp) = pools(config, &dialer, SharedProto::shared(1));
    let first = pp.get(&ep()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..4 {
        let pp = pp.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let share = pp.get(&ep()).await.unwrap();
            tx.send(i).unwrap();
            // Each holds its share a moment, then hands on.
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(share);
        });
        settle().await;
    }
    drop(first);
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(rx.recv().await.unwrap());
    }
    assert_eq!(order, vec![0, 1, 2, 3]);
    assert_eq!(dialer.dials(), 1);
}

/// A waiter that holds the turn (waiting on the core for a connection at
/// the endpoint's limit) must not starve while the shares of the open
/// connection pass among later callers.
#[tokio::test(start_paused = true)]
async fn the_caller_holding_the_turn_is_not_starved_by_later_callers() {
    let dialer = MemDialer::default();
    let config = base()
        .max_connections_per_endpoint(1)
        .acquire_timeout(Duration::from_secs(2));
    let (_pool, pp) = pools(config, &dialer, SharedProto::shared(1));
    let first = pp.get(&ep()).await.unwrap();
    let early = {
        let pp = pp.clone();
        tokio::spawn(async move { pp.get(&ep()).await.map(drop) })
    };
    settle().await;
    // Later callers keep the one share busy, passing it among themselves.
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..2 {
        let pp = pp.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(share) = pp.get(&ep()).await {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    drop(share);
                }
            }
        });
    }
    settle().await;
    drop(first);
    let outcome = early.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    outcome.expect("the first waiter was served");
}

#[tokio::test(start_paused = true)]
async fn shared_waiters_beyond_max_waiters_per_endpoint_are_refused_at_once() {
    let dialer = MemDialer::default();
    let config = base()
        .max_connections_per_endpoint(1)
        .max_waiters_per_endpoint(2)
        .acquire_timeout(Duration::from_secs(10));
    let (_pool, pp) = pools(config, &dialer, SharedProto::shared(1));
    let held = pp.get(&ep()).await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let pp = pp.clone();
        waiters.push(tokio::spawn(async move { pp.get(&ep()).await.map(drop) }));
    }
    settle().await;
    let start = Instant::now();
    let err = pp.get(&ep()).await.unwrap_err();
    assert!(
        matches!(err, Error::TooManyWaiters { max_waiters: 2, state, .. } if state.waiting == 2),
        "{err}"
    );
    assert_eq!(start.elapsed(), Duration::ZERO, "refused without waiting");
    drop(held);
    for w in waiters {
        w.await
            .unwrap()
            .expect("the two within the limit are served");
    }
}

#[tokio::test(start_paused = true)]
async fn close_fails_the_shared_callers_waiting_at_once() {
    let dialer = MemDialer::default();
    let config = base()
        .max_connections_per_endpoint(1)
        .acquire_timeout(Duration::from_secs(10));
    let (pool, pp) = pools(config, &dialer, SharedProto::shared(1));
    let held = pp.get(&ep()).await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let pp = pp.clone();
        waiters.push(tokio::spawn(async move { pp.get(&ep()).await.map(drop) }));
    }
    settle().await;
    let start = Instant::now();
    pool.close().await;
    for w in waiters {
        let err = w.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::PoolClosed), "{err}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    drop(held);
    let stats = pp.stats(&ep());
    assert_eq!((stats.shares, stats.active), (0, 0));
    assert_eq!(stats.closed_for(CloseReason::PoolClosed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_acquirer_mid_dial_does_not_wedge_the_others() {
    let dialer = MemDialer::gated();
    let config = base().acquire_timeout(Duration::from_secs(10));
    let (_pool, pp) = pools(config, &dialer, SharedProto::shared(100));
    let turn_holder = {
        let pp = pp.clone();
        tokio::spawn(async move { pp.get(&ep()).await.map(drop) })
    };
    settle().await;
    assert_eq!(dialer.dials(), 1);
    let mut others = Vec::new();
    for _ in 0..5 {
        let pp = pp.clone();
        others.push(tokio::spawn(async move { pp.get(&ep()).await }));
    }
    settle().await;
    turn_holder.abort();
    settle().await;
    dialer.open_gate(10);
    let mut shares = Vec::new();
    for o in others {
        shares.push(o.await.unwrap().expect("served after the turn holder left"));
    }
    assert!(dialer.dials() <= 2, "{} dials", dialer.dials());
    assert_eq!(pp.stats(&ep()).shares, 5);
    let ids: std::collections::HashSet<u64> = shares.iter().map(|s| s.id()).collect();
    assert_eq!(ids.len(), 1, "five shares fit one connection");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_does_not_take_a_share_with_it() {
    let dialer = MemDialer::default();
    let config = base()
        .max_connections_per_endpoint(1)
        .acquire_timeout(Duration::from_secs(10));
    let (_pool, pp) = pools(config, &dialer, SharedProto::shared(1));
    let first = pp.get(&ep()).await.unwrap();
    let mut gone = Vec::new();
    for _ in 0..3 {
        let pp = pp.clone();
        gone.push(tokio::spawn(async move { pp.get(&ep()).await.map(drop) }));
        settle().await;
    }
    let last = {
        let pp = pp.clone();
        tokio::spawn(async move { pp.get(&ep()).await.map(|s| s.id()) })
    };
    settle().await;
    for g in &gone {
        g.abort();
    }
    settle().await;
    let id = first.id();
    drop(first);
    assert_eq!(last.await.unwrap().unwrap(), id);
    let stats = pp.stats(&ep());
    assert_eq!((stats.shares, stats.active, stats.idle), (0, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_shared_get_that_must_wait_outside_a_runtime_fails_instead_of_panicking() {
    let dialer = MemDialer::default();
    let config = base()
        .max_connections_per_endpoint(1)
        .acquire_timeout(Duration::from_secs(10));
    let (_pool, pp) = pools(config, &dialer, SharedProto::shared(1));
    let held = pp.get(&ep()).await.unwrap();
    // This one holds the turn, queued in the core for the one connection.
    let turn = {
        let pp = pp.clone();
        tokio::spawn(async move { pp.get(&ep()).await.map(drop) })
    };
    settle().await;
    let outside = {
        let pp = pp.clone();
        std::thread::spawn(move || {
            let endpoint = ep();
            let mut get = std::pin::pin!(pp.get(&endpoint));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match get.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(Err(err)) => err.to_string(),
                std::task::Poll::Ready(Ok(_)) => "served".to_owned(),
                std::task::Poll::Pending => "pending".to_owned(),
            }
        })
        .join()
        .expect("no panic outside a runtime")
    };
    assert!(outside.contains("needs a tokio runtime"), "{outside}");
    drop(held);
    turn.await.unwrap().expect("the turn's holder is served");
}

#[tokio::test(start_paused = true)]
async fn an_expired_shared_connection_takes_no_new_shares_finishes_its_own_then_closes() {
    let dialer = MemDialer::default();
    let config = base().max_connection_lifetime(Duration::from_secs(10));
    let (_pool, pp) = pools(config, &dialer, SharedProto::shared(10));
    let a = pp.get(&ep()).await.unwrap();
    let b = pp.get(&ep()).await.unwrap();
    assert_eq!(a.id(), b.id());
    tokio::time::sleep(Duration::from_secs(11)).await;
    let c = pp.get(&ep()).await.unwrap();
    assert_ne!(c.id(), a.id(), "the expired one takes no new share");
    a.call();
    drop(a);
    assert_eq!(pp.stats(&ep()).closed_for(CloseReason::LifetimeExpired), 0);
    b.call();
    drop(b);
    let stats = pp.stats(&ep());
    assert_eq!(stats.closed_for(CloseReason::LifetimeExpired), 1);
    assert_eq!((stats.shares, stats.active), (1, 1));
    drop(c);
}

#[tokio::test(start_paused = true)]
async fn use_count_bounds_the_shares_of_a_shared_connection() {
    let dialer = MemDialer::default();
    let config = base().max_connection_uses(3);
    let (_pool, pp) = pools(config, &dialer, SharedProto::shared(10));
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pp.get(&ep()).await.unwrap());
    }
    assert_eq!(held[0].id(), held[2].id());
    assert_ne!(held[0].id(), held[3].id());
    drop(held);
    assert_eq!(pp.stats(&ep()).closed_for(CloseReason::UsesExhausted), 1);

    // One share at a time: the connection goes back to the core between
    // them, and still serves three.
    let (_pool, pp) = pools(
        base().max_connection_uses(3),
        &dialer,
        SharedProto::shared(10),
    );
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(pp.get(&ep()).await.unwrap().id());
    }
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[0], ids[2]);
    assert_ne!(ids[0], ids[3]);
    assert_eq!(pp.stats(&ep()).closed_for(CloseReason::UsesExhausted), 1);
}

#[tokio::test(start_paused = true)]
async fn shared_idle_time_counts_from_when_the_last_share_came_back() {
    let dialer = MemDialer::default();
    let config = base()
        .max_idle_time(Duration::from_secs(10))
        .maintenance_interval(Duration::from_secs(1));
    let (_pool, pp) = pools(config, &dialer, SharedProto::shared(10));
    let a = pp.get(&ep()).await.unwrap();
    let b = pp.get(&ep()).await.unwrap();
    let id = a.id();
    // In use far longer than the idle time: not idle.
    tokio::time::sleep(Duration::from_secs(15)).await;
    drop(a);
    tokio::time::sleep(Duration::from_secs(15)).await;
    let c = pp.get(&ep()).await.unwrap();
    assert_eq!(c.id(), id, "a share was out all along");
    drop((b, c));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let d = pp.get(&ep()).await.unwrap();
    assert_eq!(d.id(), id, "8 s since the last share came back");
    drop(d);
    assert_eq!(pp.stats(&ep()).closed_for(CloseReason::IdleExpired), 0);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let stats = pp.stats(&ep());
    assert_eq!(stats.closed_for(CloseReason::IdleExpired), 1);
    assert_eq!(stats.idle, 0);
    assert_ne!(pp.get(&ep()).await.unwrap().id(), id);
}

#[tokio::test(start_paused = true)]
async fn clear_endpoint_drains_a_shared_connection() {
    let dialer = MemDialer::default();
    let (_pool, pp) = pools(base(), &dialer, SharedProto::shared(10));
    let a = pp.get(&ep()).await.unwrap();
    pp.clear_endpoint(&ep());
    let b = pp.get(&ep()).await.unwrap();
    assert_ne!(a.id(), b.id(), "no new share after a clear");
    a.call();
    assert_eq!(pp.stats(&ep()).shares, 2);
    drop(a);
    let stats = pp.stats(&ep());
    assert_eq!(stats.closed_for(CloseReason::Cleared), 1);
    assert_eq!((stats.shares, stats.active), (1, 1));
    drop(b);
    let stats = pp.stats(&ep());
    assert_eq!((stats.shares, stats.active, stats.idle), (0, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn the_pools_clear_endpoint_reaches_its_protocol_pools_too() {
    let dialer = MemDialer::default();
    let (pool, pp) = pools(base(), &dialer, Exclusive::exclusive());
    drop(pp.get(&ep()).await.unwrap());
    assert_eq!(pp.stats(&ep()).idle, 1);
    pool.clear_endpoint(&ep());
    let stats = pp.stats(&ep());
    assert_eq!(
        (stats.idle, stats.closed_for(CloseReason::Cleared)),
        (0, 1),
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn callers_waiting_for_a_share_count_as_waiting() {
    let dialer = MemDialer::default();
    let config = base()
        .max_connections_per_endpoint(1)
        .acquire_timeout(Duration::from_secs(10));
    let (_pool, pp) = pools(config, &dialer, SharedProto::shared(1));
    let held = pp.get(&ep()).await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let pp = pp.clone();
        waiters.push(tokio::spawn(async move { pp.get(&ep()).await.map(drop) }));
    }
    settle().await;
    let stats = pp.stats(&ep());
    assert_eq!((stats.shares, stats.waiting), (1, 3), "{stats:?}");
    drop(held);
    for w in waiters {
        w.await.unwrap().expect("served in turn");
    }
    assert_eq!(pp.stats(&ep()).waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn a_discarded_share_drains_its_connection() {
    let dialer = MemDialer::default();
    let (_pool, pp) = pools(base(), &dialer, SharedProto::shared(10));
    let a = pp.get(&ep()).await.unwrap();
    let b = pp.get(&ep()).await.unwrap();
    let id = a.id();
    a.discard();
    assert_eq!(pp.stats(&ep()).closed_for(CloseReason::Discarded), 0);
    let c = pp.get(&ep()).await.unwrap();
    assert_ne!(c.id(), id, "a discarded connection takes no new share");
    b.call();
    drop(b);
    let stats = pp.stats(&ep());
    assert_eq!(stats.closed_for(CloseReason::Discarded), 1);
    assert_eq!(stats.shares, 1);
    drop(c);
}

#[tokio::test(start_paused = true)]
async fn a_shared_connection_not_ready_takes_no_new_share_and_closes_as_not_ready() {
    let dialer = MemDialer::default();
    let (_pool, pp) = pools(base(), &dialer, SharedProto::shared(10));
    let a = pp.get(&ep()).await.unwrap();
    let id = a.id();
    a.ctl.ready.store(false, Ordering::SeqCst);
    let b = pp.get(&ep()).await.unwrap();
    b.call();
    assert_ne!(b.id(), id);
    drop(a);
    let stats = pp.stats(&ep());
    assert_eq!(stats.closed_for(CloseReason::NotReady), 1);
    assert_eq!((stats.shares, stats.active), (1, 1));
    // Idle and then not ready: not handed out either.
    drop(b);
    pp.protocol().conn(2).ready.store(false, Ordering::SeqCst);
    let c = pp.get(&ep()).await.unwrap();
    c.call();
    assert_eq!(n_of(&c), 3);
    assert_eq!(pp.stats(&ep()).closed_for(CloseReason::NotReady), 2);
}

#[tokio::test(start_paused = true)]
async fn stats_shares_follow_the_shares_out() {
    let dialer = MemDialer::default();
    let (_pool, pp) = pools(base(), &dialer, SharedProto::shared(3));
    let mut held = Vec::new();
    for n in 1..=7 {
        held.push(pp.get(&ep()).await.unwrap());
        let stats = pp.stats(&ep());
        assert_eq!(stats.shares, n);
        assert_eq!(stats.active, n.div_ceil(3));
    }
    while let Some(share) = held.pop() {
        drop(share);
        assert_eq!(pp.stats(&ep()).shares, held.len());
    }
    let stats = pp.stats(&ep());
    assert_eq!((stats.shares, stats.active, stats.idle), (0, 0, 3));
}

// ---------------------------------------------------------------------------
// Drivers

#[tokio::test(start_paused = true)]
async fn close_ends_the_drivers() {
    let dialer = MemDialer::default();
    let (pool, excl) = pools(base(), &dialer, Exclusive::exclusive_driven());
    let shared = pool.protocol(SharedProto::shared_driven(4));
    drop(excl.get(&ep()).await.unwrap());
    let leased = excl.get(&ep()).await.unwrap();
    drop(excl.get(&ep2()).await.unwrap());
    let share = shared.get(&ep()).await.unwrap();
    drop(shared.get(&ep2()).await.unwrap());
    settle().await;
    assert_eq!(excl.protocol().drivers_running(), 2);
    assert_eq!(shared.protocol().drivers_running(), 2);
    pool.close().await;
    settle().await;
    assert_eq!(
        excl.protocol().drivers_running(),
        1,
        "the leased one runs on"
    );
    assert_eq!(
        shared.protocol().drivers_running(),
        1,
        "the shared one drains"
    );
    drop((leased, share));
    settle().await;
    assert_eq!(excl.protocol().drivers_running(), 0);
    assert_eq!(shared.protocol().drivers_running(), 0);
    assert!(matches!(shared.get(&ep()).await, Err(Error::PoolClosed)));
    assert!(matches!(excl.get(&ep()).await, Err(Error::PoolClosed)));
}

#[tokio::test(start_paused = true)]
async fn clear_and_expiry_end_the_drivers() {
    let dialer = MemDialer::default();
    let config = base()
        .max_connection_lifetime(Duration::from_secs(10))
        .maintenance_interval(Duration::from_secs(1));
    let (pool, excl) = pools(config, &dialer, Exclusive::exclusive_driven());
    let shared = pool.protocol(SharedProto::shared_driven(4));
    drop(excl.get(&ep()).await.unwrap());
    drop(shared.get(&ep()).await.unwrap());
    settle().await;
    excl.clear_endpoint(&ep());
    shared.clear_endpoint(&ep());
    settle().await;
    assert!(
        excl.protocol()
            .conn(1)
            .driver_dropped
            .load(Ordering::SeqCst)
    );
    assert!(
        shared
            .protocol()
            .conn(1)
            .driver_dropped
            .load(Ordering::SeqCst)
    );

    drop(excl.get(&ep()).await.unwrap());
    drop(shared.get(&ep()).await.unwrap());
    settle().await;
    assert!(
        !excl
            .protocol()
            .conn(2)
            .driver_dropped
            .load(Ordering::SeqCst)
    );
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        excl.protocol()
            .conn(2)
            .driver_dropped
            .load(Ordering::SeqCst)
    );
    assert!(
        shared
            .protocol()
            .conn(2)
            .driver_dropped
            .load(Ordering::SeqCst)
    );
    assert_eq!(
        excl.stats(&ep()).closed_for(CloseReason::LifetimeExpired),
        1
    );
    assert_eq!(
        shared.stats(&ep()).closed_for(CloseReason::LifetimeExpired),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_whose_driver_ended_is_not_handed_out() {
    let dialer = MemDialer::default();
    let (pool, excl) = pools(base(), &dialer, Exclusive::exclusive_driven());
    let shared = pool.protocol(SharedProto::shared_driven(4));
    drop(excl.get(&ep()).await.unwrap());
    let held = shared.get(&ep()).await.unwrap();
    settle().await;
    excl.protocol().conn(1).end_driver.notify_one();
    shared.protocol().conn(1).end_driver.notify_one();
    settle().await;
    let e = excl.get(&ep()).await.unwrap();
    e.call();
    assert_eq!(n_of(&e), 2);
    assert_eq!(excl.stats(&ep()).closed_for(CloseReason::NotReady), 1);
    let s = shared.get(&ep()).await.unwrap();
    s.call();
    assert_eq!(
        n_of(&s),
        2,
        "no new share of a connection whose driver ended"
    );
    drop(held);
    assert_eq!(shared.stats(&ep()).closed_for(CloseReason::NotReady), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_leaves_no_driver_running() {
    let dialer = MemDialer::default();
    let (pool, excl) = pools(base(), &dialer, Exclusive::exclusive_driven());
    let shared = pool.protocol(SharedProto::shared_driven(4));
    let excl_proto = excl.protocol().clone();
    let shared_proto = shared.protocol().clone();
    drop(excl.get(&ep()).await.unwrap());
    drop(excl.get(&ep2()).await.unwrap());
    drop(shared.get(&ep()).await.unwrap());
    let share = shared.get(&ep2()).await.unwrap();
    let lease = excl.get(&ep2()).await.unwrap();
    settle().await;
    assert_eq!(
        excl_proto.drivers_running() + shared_proto.drivers_running(),
        4
    );
    drop((pool, excl, shared));
    settle().await;
    assert_eq!(shared_proto.drivers_running(), 1, "the share out is in use");
    drop((share, lease));
    settle().await;
    assert_eq!(excl_proto.drivers_running(), 0);
    assert_eq!(shared_proto.drivers_running(), 0);
}

// ---------------------------------------------------------------------------
// Handshake

#[tokio::test(start_paused = true)]
async fn a_handshake_error_fails_the_get_naming_endpoint_and_protocol_without_retry() {
    let dialer = MemDialer::default();
    let config = base().connect_retry_count(3);
    let (_pool, pp) = pools(config, &dialer, SharedProto::shared(4));
    pp.protocol()
        .script(&[Handshake::Fail { transient: false }]);
    let err = pp.get(&ep()).await.unwrap_err();
    match &err {
        Error::Handshake {
            endpoint, protocol, ..
        } => {
            assert_eq!(endpoint, &ep());
            assert_eq!(*protocol, "test-shared");
        }
        other => panic!("not a handshake error: {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("test-shared") && text.contains("memory.example"),
        "{text}"
    );
    let source = std::error::Error::source(&err).expect("the protocol's error is kept");
    assert!(
        source.downcast_ref::<HandshakeError>().is_some(),
        "{source}"
    );
    assert_eq!(pp.protocol().handshakes(), 1, "not retried");
    assert_eq!(dialer.dials(), 1);
    assert_eq!(pp.stats(&ep()).errors, 1);
    // The next get dials afresh, and succeeds.
    pp.get(&ep()).await.unwrap().call();
}

/// A user with one pool for streams and several protocols reads from an
/// error alone which of them failed: every error of a protocol pool's get
/// names the protocol (in `protocol()` and at the head of its message),
/// the byte-stream pool's none.
#[tokio::test(start_paused = true)]
async fn every_error_of_a_protocol_pool_names_its_protocol() {
    fn assert_names(err: &Error, name: &str) {
        assert_eq!(err.protocol(), Some(name), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with(&format!("{name} pool: ")), "{text}");
        assert!(text.contains("memory.example"), "{text}");
    }
    let dialer = MemDialer::default();
    let config = base()
        .max_connections_per_endpoint(1)
        .max_waiters_per_endpoint(1)
        .acquire_timeout(Duration::from_secs(1));
    let pool = Pool::with_dialer(config.build().unwrap(), dialer.clone());
    let excl = pool.protocol(Exclusive::exclusive());
    let shared = pool.protocol(SharedProto::shared(1));

    // Timeouts, the stream pool's too.
    let stream = pool.get(&ep()).await.unwrap();
    let err = pool.get(&ep()).await.unwrap_err();
    assert!(
        matches!(err, Error::AcquireTimeout { protocol: None, .. }),
        "{err:?}"
    );
    assert_eq!(err.protocol(), None);
    assert!(
        err.to_string()
            .starts_with("no connection to memory.example:1"),
        "{err}"
    );
    drop(stream);
    let held = excl.get(&ep()).await.unwrap();
    let err = excl.get(&ep()).await.unwrap_err();
    assert!(matches!(err, Error::AcquireTimeout { .. }), "{err}");
    assert_names(&err, "test-exclusive");
    drop(held);
    let held = shared.get(&ep2()).await.unwrap();
    let err = shared.get(&ep2()).await.unwrap_err();
    assert!(matches!(err, Error::AcquireTimeout { .. }), "{err}");
    assert_names(&err, "test-shared");

    // Too many waiters, from the shared path and from the core's queue.
    let waiter = {
        let shared = shared.clone();
        tokio::spawn(async move { shared.get(&ep2()).await.map(drop) })
    };
    settle().await;
    let err = shared.get(&ep2()).await.unwrap_err();
    assert!(matches!(err, Error::TooManyWaiters { .. }), "{err}");
    assert_names(&err, "test-shared");
    drop(held);
    waiter.await.unwrap().unwrap();
    let held = excl.get(&ep()).await.unwrap();
    let waiter = {
        let excl = excl.clone();
        tokio::spawn(async move { excl.get(&ep()).await.map(drop) })
    };
    settle().await;
    let err = excl.get(&ep()).await.unwrap_err();
    assert!(matches!(err, Error::TooManyWaiters { .. }), "{err}");
    assert_names(&err, "test-exclusive");
    drop(held);
    waiter.await.unwrap().unwrap();

    // A handshake error names it as before, once.
    excl.protocol()
        .script(&[Handshake::Fail { transient: false }]);
    excl.clear_endpoint(&ep());
    let err = excl.get(&ep()).await.unwrap_err();
    assert!(matches!(err, Error::Handshake { .. }), "{err}");
    assert_eq!(err.protocol(), Some("test-exclusive"));
    assert_eq!(
        err.to_string().matches("test-exclusive").count(),
        1,
        "{err}"
    );
}

/// A dial that fails (nothing listens) reaches a protocol pool's caller
/// naming the protocol too.
#[tokio::test]
async fn a_failed_dial_names_the_protocol() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let pool = Pool::new(Config::builder().connect_retry_count(1).build().unwrap());
    let pp = pool.protocol(Exclusive::exclusive());
    let server = Endpoint::new("127.0.0.1", port).unwrap();
    let err = pp.get(&server).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::ConnectionFailed {
                protocol: Some("test-exclusive"),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("test-exclusive pool: could not connect to 127.0.0.1:{port} after 1 attempt")
    );
    let err = pool.get(&server).await.unwrap_err();
    assert_eq!(err.protocol(), None);
}

#[tokio::test(start_paused = true)]
async fn a_transient_handshake_error_is_retried_up_to_connect_retry_count() {
    let dialer = MemDialer::default();
    let config = base().connect_retry_count(3);
    let (_pool, pp) = pools(config, &dialer, Exclusive::exclusive());
    let transient = Handshake::Fail { transient: true };
    pp.protocol().script(&[transient, transient]);
    pp.get(&ep()).await.unwrap().call();
    assert_eq!(pp.protocol().handshakes(), 3);
    assert_eq!(dialer.dials(), 3, "each attempt dials a fresh stream");

    pp.clear_endpoint(&ep());
    pp.protocol().script(&[transient; 5]);
    let err = pp.get(&ep()).await.unwrap_err();
    assert!(matches!(err, Error::Handshake { .. }), "{err}");
    assert_eq!(pp.protocol().handshakes(), 6, "three attempts in all");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_handshake_is_cut_at_connect_timeout() {
    let dialer = MemDialer::default();
    let config = base()
        .connect_timeout(Duration::from_secs(2))
        .acquire_timeout(Duration::from_secs(30));
    let (_pool, pp) = pools(config, &dialer, SharedProto::shared(4));
    pp.protocol().script(&[Handshake::Hang]);
    let start = Instant::now();
    let err = pp.get(&ep()).await.unwrap_err();
    let waited = start.elapsed();
    assert!(matches!(err, Error::Handshake { .. }), "{err}");
    let source = std::error::Error::source(&err).unwrap();
    let io = source.downcast_ref::<std::io::Error>().expect("a timeout");
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(pp.stats(&ep()).dialing, 0);
    pp.get(&ep()).await.unwrap().call();
}

// ---------------------------------------------------------------------------
// A randomized run

/// xorshift64*: small, seeded, enough for picking steps.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn check_invariants(
    seed: u64,
    step: usize,
    pp: &ProtocolPool<SharedProto>,
    held: &[ProtocolLease<SharedProto>],
    max_shares: usize,
    max_conns: usize,
) {
    let mut per_conn: HashMap<u64, usize> = HashMap::new();
    for s in held {
        *per_conn.entry(s.id()).or_default() += 1;
    }
    let ctx = format!("seed {seed} step {step}");
    assert!(
        per_conn.values().all(|&n| n <= max_shares),
        "{ctx}: {per_conn:?} over {max_shares}"
    );
    let stats = pp.stats(&ep());
    assert_eq!(stats.shares, held.len(), "{ctx}: {stats:?}");
    assert!(
        stats.active + stats.idle + stats.dialing <= max_conns,
        "{ctx}: {stats:?}"
    );
    assert!(per_conn.len() <= stats.active, "{ctx}: {stats:?}");
    let open = stats.total_created - stats.total_closed;
    assert!(open as usize <= max_conns, "{ctx}: {stats:?}");
    assert_eq!(open as usize, stats.active + stats.idle, "{ctx}: {stats:?}");
    // A driver may end by itself before the pool notices; none runs for
    // a connection the pool closed.
    let running = pp.protocol().drivers_running();
    assert!(
        running <= open as usize,
        "{ctx}: {running} drivers, {stats:?}"
    );
}

async fn fuzz_one(seed: u64) {
    let mut rng = Rng::new(seed);
    let max_shares = 1 + rng.below(4);
    let max_conns = 1 + rng.below(3);
    let dialer = MemDialer::default();
    let config = base()
        .max_connections_per_endpoint(max_conns)
        .max_connection_lifetime(Duration::from_secs(5 + rng.below(20) as u64))
        .max_idle_time(Duration::from_secs(3 + rng.below(10) as u64))
        .max_connection_uses(if rng.below(2) == 0 {
            None
        } else {
            Some(2 + rng.below(6) as u64)
        })
        .maintenance_interval(Duration::from_secs(1))
        .acquire_timeout(Duration::from_millis(50));
    let (pool, pp) = pools(config, &dialer, SharedProto::shared_driven(max_shares));
    let mut held: Vec<ProtocolLease<SharedProto>> = Vec::new();
    for step in 0..60 {
        match rng.below(10) {
            0..=2 => match pp.get(&ep()).await {
                Ok(share) => {
                    share.call();
                    held.push(share);
                }
                // Every connection full, or spent and draining.
                Err(Error::AcquireTimeout { .. }) => {}
                Err(err) => panic!("seed {seed} step {step}: {err}"),
            },
            3 => {
                // A burst of concurrent gets, all dropped at once.
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..1 + rng.below(6) {
                    let pp = pp.clone();
                    set.spawn(async move { pp.get(&ep()).await.ok() });
                }
                let mut burst = Vec::new();
                while let Some(out) = set.join_next().await {
                    burst.extend(out.unwrap());
                }
                burst.append(&mut held);
                check_invariants(seed, step, &pp, &burst, max_shares, max_conns);
                held = burst;
            }
            4 | 5 if !held.is_empty() => {
                let i = rng.below(held.len());
                drop(held.swap_remove(i));
            }
            6 if !held.is_empty() => {
                let i = rng.below(held.len());
                held.swap_remove(i).discard();
            }
            7 => pp.clear_endpoint(&ep()),
            8 => {
                let made = pp.protocol().made();
                if made > 0 {
                    let ctl = pp.protocol().conn(1 + rng.below(made));
                    if rng.below(2) == 0 {
                        ctl.ready.store(false, Ordering::SeqCst);
                    } else {
                        ctl.end_driver.notify_one();
                    }
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(rng.below(4000) as u64)).await,
        }
        // Aborted drivers end when the runtime next runs them.
        settle().await;
        check_invariants(seed, step, &pp, &held, max_shares, max_conns);
    }
    drop(held);
    let stats = pp.stats(&ep());
    assert_eq!(
        (stats.shares, stats.active),
        (0, 0),
        "seed {seed}: {stats:?}"
    );
    let proto = pp.protocol().clone();
    drop((pool, pp));
    settle().await;
    assert_eq!(
        proto.drivers_running(),
        0,
        "seed {seed}: drivers left running"
    );
}

#[test]
fn randomized_shared_gets_drops_discards_and_clears_keep_the_books() {
    for seed in 0..300 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(fuzz_one(seed));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_stay_within_the_limits_under_concurrent_tasks() {
    let dialer = MemDialer::default();
    let config = base()
        .max_connections_per_endpoint(3)
        .acquire_timeout(Duration::from_secs(30));
    let (_pool, pp) = pools(config, &dialer, SharedProto::shared_driven(4));
    let in_use: Arc<Mutex<HashMap<u64, usize>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let pp = pp.clone();
        let in_use = in_use.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let share = pp.get(&ep()).await.unwrap();
                share.call();
                {
                    let mut in_use = in_use.lock().unwrap();
                    let n = in_use.entry(share.id()).or_default();
                    *n += 1;
                    assert!(*n <= 4, "{n} shares of one connection");
                    assert!(in_use.values().filter(|&&n| n > 0).count() <= 3);
                }
                tokio::task::yield_now().await;
                *in_use.lock().unwrap().get_mut(&share.id()).unwrap() -= 1;
                drop(share);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = pp.stats(&ep());
    assert_eq!((stats.shares, stats.active), (0, 0));
    assert!(stats.total_created <= 3, "{stats:?}");
}
