//! A seeded contract fuzzer, in the spirit of Apache httpcore5's
//! `ConnPoolContractFuzzer`: random sequences of get, cancel (a `get`
//! future dropped after a random number of polls, sometimes with its dial
//! or its grant already delivered), use, partial use, drop, discard, I/O
//! errors, cancelled reads and writes (a cut-off write sometimes followed
//! by a flush or a read), `release()` with an idle read left pending (as
//! hyper's client leaves one), a panic while holding a lease,
//! server-side resets, half-closes and stray bytes, an endpoint's outage
//! (every dial to it refused until it ends) when the seed's circuit
//! breaker is on, time advance,
//! `clear_endpoint` and `close`, over two to four endpoints. Each seed
//! picks small limits (per endpoint, total, idle total, waiters, dial cap,
//! idle time, lifetime, uses), a kernel-peek window (often zero), maybe a
//! background task and `min_idle_per_endpoint`, maybe a health check that
//! fails or is slow, and a dialer that fails or is slow on a schedule.
//!
//! After every step it checks, through the public API only:
//! - limits: per endpoint (leased + idle + dialing), dial cap, waiters,
//!   total, idle total, and the pool's own count of total slots taken;
//! - books: created - closed = active + idle, closes by reason add up, the
//!   hooks saw what the counters count, reused leases match, and the
//!   streams the dialer made that are still open are exactly active + idle
//!   (nothing leaked, nothing dropped behind the pool's back);
//! - leases: no connection held twice, the fuzzer's leases (plus those in
//!   a health check) are exactly the active ones, every clean connection
//!   echoes at once, none handed out from idle was expired or spent, and
//!   none handed out on any path (idle, slot, straight from a returning
//!   lease) was dead (server closed, stray bytes) with the liveness check
//!   on; leases
//!   that must close on return (spent, expired, cleared, I/O failed,
//!   cancelled mid-I/O, panicked, pool closed) do;
//! - no stuck waiter: a caller waits only while its endpoint is at its
//!   limit or dial cap, or the total is full with nothing idle to close;
//!   errors are ones the plan and the state allow (`CircuitOpen` only
//!   from an endpoint whose breaker is open or half-open after
//!   `breaker_failures` failed dials);
//! - the breaker: off means closed and never tripped; half-open means its
//!   probe is dialing, so no probe (cancelled with its get or not) leaves
//!   it half-open.
//!
//! At the end it closes the pool and checks that every `get` still pending
//! resolves, that every endpoint is empty with created = closed, that
//! every stream was closed from the client side (the server half reads
//! end of stream), and that no task is left running.
//!
//! Everything is deterministic: each seed runs on its own current-thread
//! runtime with tokio's clock paused, the dialer hands out in-memory
//! `tokio::io::duplex` streams whose server halves the fuzzer keeps, and
//! `get` futures are polled by hand. A failure prints the seed, the step,
//! the last operations and the plan.
//!
//! - `CONPOOL_FUZZ_SEEDS=n` runs seeds `1..=n` (default [`DEFAULT_SEEDS`]);
//!   `CONPOOL_FUZZ_FIRST=m` starts at `m` instead of 1.
//! - `CONPOOL_FUZZ_SEED=n` runs only seed `n`.
//!
//! A seed replays the same operations on every run, with one caveat: when
//! idle connections of different endpoints went idle at the very same
//! instant, which one is least recently used is decided in the order of
//! the pool's endpoint map, hashed with a per-process key; and a circuit
//! breaker's open time is cut by a random fraction drawn per process, so
//! that with the breaker on, the first get after an open time may come a
//! step earlier or later than in another run. Every step
//! advances the clock a microsecond to make such ties rare. Connection ids
//! (`c…`) in the log are process-wide; server ids (`s…`) are per seed.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use conpool::dial::{Dial, DialError};
use conpool::{
    BoxFuture, BreakerState, CloseReason, Config, Endpoint, Error, Pool, PooledConnection, Stats,
    Stream, ThreadSlots,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::time::Instant;

/// Seeds run by default: a few hundred, a few seconds in a debug build.
const DEFAULT_SEEDS: u64 = 500;

/// Operations kept for the failure report.
const LOG_LINES: usize = 40;

/// In-flight `get` futures at most.
const MAX_GETS: usize = 10;

/// Capacity of each in-memory stream, each way.
const PIPE: usize = 1024;

#[test]
fn contract_fuzz() {
    install_panic_recorder();
    let seeds = seeds_from_env();
    let started = std::time::Instant::now();
    let count = seeds.clone().count();
    for seed in seeds {
        run_seed(seed);
    }
    eprintln!(
        "contract fuzzer: {count} seed{} passed in {:.1?}",
        if count == 1 { "" } else { "s" },
        started.elapsed()
    );
}

fn seeds_from_env() -> std::ops::RangeInclusive<u64> {
    let var = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
    };
    if let Some(seed) = var("CONPOOL_FUZZ_SEED") {
        return seed..=seed;
    }
    let first = var("CONPOOL_FUZZ_FIRST").unwrap_or(1);
    let count = var("CONPOOL_FUZZ_SEEDS").unwrap_or(DEFAULT_SEEDS).max(1);
    first..=first + count - 1
}

/// Runs one seed on a fresh paused runtime; on any panic (a broken
/// invariant, or a panic inside the pool) panics again with the seed, the
/// step, the config and the last operations.
fn run_seed(seed: u64) {
    TASK_PANICS.with(|p| p.borrow_mut().clear());
    let plan = Plan::new(seed);
    let report = Rc::new(RefCell::new(Report {
        seed,
        step: 0,
        steps: plan.steps,
        phase: "setup",
        plan: format!("{plan:#?}"),
        log: VecDeque::new(),
    }));
    let shared = report.clone();
    let outcome = catch_unwind(AssertUnwindSafe(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(tokio::task::unconstrained(async move {
            Fuzz::new(seed, plan, shared).run().await
        }));
    }));
    if let Err(payload) = outcome {
        let what = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into());
        panic!("{}", report.borrow().failure(&what));
    }
}

thread_local! {
    /// Panics on this thread, including those of tasks on the fuzzer's
    /// runtime, which tokio would otherwise swallow.
    static TASK_PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// Set while the fuzzer panics on purpose (a caller panicking while it
    /// holds a lease): that panic is neither recorded nor printed.
    static EXPECTED_PANIC: Cell<bool> = const { Cell::new(false) };
}

fn install_panic_recorder() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if EXPECTED_PANIC.try_with(Cell::get).unwrap_or(false) {
                return;
            }
            let _ = TASK_PANICS.try_with(|p| p.borrow_mut().push(info.to_string()));
            previous(info);
        }));
    });
}

/// What a failure prints.
struct Report {
    seed: u64,
    step: usize,
    steps: usize,
    phase: &'static str,
    plan: String,
    log: VecDeque<String>,
}

impl Report {
    fn failure(&self, what: &str) -> String {
        let mut out = format!(
            "contract fuzzer: seed {} failed at step {} of {} ({}):\n  {what}\n\nlast operations (oldest first; \
             per endpoint active/idle/dialing/waiting after the step):\n",
            self.seed, self.step, self.steps, self.phase
        );
        for line in &self.log {
            let _ = writeln!(out, "  {line}");
        }
        let _ = write!(
            out,
            "\nplan: {}\n\nrerun this seed alone: CONPOOL_FUZZ_SEED={} cargo test -p conpool --test contract_fuzz",
            self.plan, self.seed
        );
        out
    }
}

/// splitmix64: small, fast, and good enough to pick operations.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut rng = Rng(seed ^ 0x00c0_ffee_5eed_f00d);
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        assert!(n > 0);
        (self.next() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Everything a seed chooses up front: the pool's config, how the dialer
/// behaves, how long the run is.
#[derive(Clone, Debug)]
struct Plan {
    endpoints: usize,
    max_per_endpoint: usize,
    max_total: Option<usize>,
    max_idle_total: Option<usize>,
    max_waiters: Option<usize>,
    max_dials: usize,
    max_idle_time: Duration,
    lifetime: Duration,
    max_uses: Option<u64>,
    connect_timeout: Option<Duration>,
    connect_attempts: u32,
    retry_delay: Duration,
    acquire_timeout: Option<Duration>,
    liveness_check: bool,
    peek_after: Duration,
    maintenance: Option<Duration>,
    min_idle: usize,
    leak_threshold: Option<Duration>,
    /// Percent of dial attempts that fail (a fifth of those fail for good).
    dial_fail_pct: u64,
    /// Percent of dial attempts that first sleep up to `dial_max_delay`.
    dial_slow_pct: u64,
    dial_max_delay: Duration,
    steps: usize,
    /// The step at which the pool is closed, if before the end.
    close_at: Option<usize>,
    health_check: Option<HealthPlan>,
    /// Per-thread slots from the start (they park and unpark on this one
    /// thread) or only on contention (never, on one thread).
    thread_slots: ThreadSlots,
    /// Failed dials in a row that open an endpoint's breaker; 0: off.
    breaker_failures: u32,
}

/// A seeded health check: it fails `fail_pct` percent of the time, and
/// `slow_pct` percent of the time first sleeps up to `max_delay` (so that
/// a `get` can be cancelled in the middle of it).
#[derive(Clone, Copy, Debug)]
struct HealthPlan {
    fail_pct: u64,
    slow_pct: u64,
    max_delay: Duration,
}

impl Plan {
    fn new(seed: u64) -> Plan {
        let mut r = Rng::new(seed);
        let endpoints = r.range(2, 4) as usize;
        let max_per_endpoint = r.range(1, 4) as usize;
        let max_total = r
            .chance(50)
            .then(|| r.range(1, (endpoints * max_per_endpoint) as u64) as usize);
        let max_idle_total = r.chance(35).then(|| r.range(0, 4) as usize);
        let max_waiters = r.chance(30).then(|| r.range(0, 3) as usize);
        let max_dials = r.range(1, 3) as usize;
        let max_idle_time = r.millis(300, 5_000);
        let lifetime = r.millis(500, 20_000);
        let max_uses = r.chance(30).then(|| r.range(1, 5));
        let connect_timeout = r.chance(60).then(|| r.millis(50, 1_500));
        let connect_attempts = r.range(1, 3) as u32;
        let retry_delay = r.millis(1, 200);
        let acquire_timeout = r.chance(60).then(|| r.millis(100, 4_000));
        let liveness_check = r.chance(85);
        let peek_after = if r.chance(50) {
            Duration::ZERO
        } else {
            r.millis(1, 1_500)
        };
        let maintenance = r.chance(60).then(|| r.millis(50, 2_000));
        let min_idle = if maintenance.is_some() && r.chance(25) {
            r.range(1, max_per_endpoint as u64) as usize
        } else {
            0
        };
        let leak_threshold = r.chance(20).then(|| r.millis(100, 3_000));
        let dial_fail_pct = r.pick(&[0, 0, 5, 20, 50]);
        let dial_slow_pct = r.pick(&[0, 10, 40]);
        let dial_max_delay = r.millis(1, 2_000);
        let steps = r.range(80, 250) as usize;
        let close_at = r
            .chance(25)
            .then(|| r.range(steps as u64 * 2 / 3, steps as u64 - 1) as usize);
        let health_check = r.chance(25).then(|| HealthPlan {
            fail_pct: r.pick(&[0, 10, 40]),
            slow_pct: r.pick(&[0, 30, 70]),
            max_delay: r.millis(1, 1_500),
        });
        // Drawn last, so that adding it left every other draw as it was.
        let thread_slots = if r.chance(50) {
            ThreadSlots::Always
        } else {
            ThreadSlots::WhenContended
        };
        // After the slots, for the same reason.
        let breaker_failures = r.pick(&[0, 0, 1, 2, 5]);
        Plan {
            endpoints,
            max_per_endpoint,
            max_total,
            max_idle_total,
            max_waiters,
            max_dials,
            max_idle_time,
            lifetime,
            max_uses,
            connect_timeout,
            connect_attempts,
            retry_delay,
            acquire_timeout,
            liveness_check,
            peek_after,
            maintenance,
            min_idle,
            leak_threshold,
            dial_fail_pct,
            dial_slow_pct,
            dial_max_delay,
            steps,
            close_at,
            health_check,
            thread_slots,
            breaker_failures,
        }
    }

    fn config(&self, hooks: &Arc<Mutex<Hooks>>, health: Option<&Arc<HealthShared>>) -> Config {
        let (created, reused, closed) = (hooks.clone(), hooks.clone(), hooks.clone());
        let mut builder = Config::builder();
        if let Some(health) = health {
            let health = health.clone();
            builder = builder.health_check(move |stream: &mut Stream| {
                let health = health.clone();
                Box::pin(async move { health.check(stream).await })
            });
        }
        builder
            .max_connections_per_endpoint(self.max_per_endpoint)
            .max_connections_total(self.max_total)
            .max_idle_total(self.max_idle_total)
            .max_waiters_per_endpoint(self.max_waiters)
            .max_concurrent_dials(self.max_dials)
            .max_idle_time(self.max_idle_time)
            .max_connection_lifetime(self.lifetime)
            // Jitter draws from a per-process random seed: off, so that a
            // seed replays exactly.
            .max_connection_lifetime_jitter(0.0)
            .max_connection_uses(self.max_uses)
            .connect_timeout(self.connect_timeout)
            .connect_retry_count(self.connect_attempts)
            .connect_retry_delay(self.retry_delay)
            .acquire_timeout(self.acquire_timeout)
            .liveness_check(self.liveness_check)
            .liveness_peek_after(self.peek_after)
            .maintenance_interval(self.maintenance)
            .min_idle_per_endpoint(self.min_idle)
            .leak_threshold(self.leak_threshold)
            .thread_slots(self.thread_slots)
            .breaker_failures(self.breaker_failures)
            .on_connection_created(move |ep| created.lock().unwrap().created(ep))
            .on_connection_reused(move |ep| reused.lock().unwrap().reused(ep))
            .on_connection_closed(move |ep, why| closed.lock().unwrap().closed(ep, why))
            .build()
            .expect("the plan makes valid configs")
    }
}

/// What the pool's hooks reported, per endpoint.
struct Hooks {
    endpoints: Vec<Endpoint>,
    counts: Vec<HookCounts>,
}

#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct HookCounts {
    created: u64,
    reused: u64,
    closed: u64,
    closed_by: [u64; CloseReason::ALL.len()],
}

impl Hooks {
    fn index(&self, ep: &Endpoint) -> usize {
        self.endpoints
            .iter()
            .position(|e| e == ep)
            .expect("a hook for an endpoint the fuzzer never asked for")
    }
    fn created(&mut self, ep: &Endpoint) {
        let i = self.index(ep);
        self.counts[i].created += 1;
    }
    fn reused(&mut self, ep: &Endpoint) {
        let i = self.index(ep);
        self.counts[i].reused += 1;
    }
    fn closed(&mut self, ep: &Endpoint, why: CloseReason) {
        let i = self.index(ep);
        let reason = CloseReason::ALL.iter().position(|r| *r == why).unwrap();
        self.counts[i].closed += 1;
        self.counts[i].closed_by[reason] += 1;
    }
}

/// The dialer: in-memory duplex streams, failing or slow on a schedule
/// drawn from the seed, the endpoint and the attempt's number at that
/// endpoint (so that the order in which endpoints are visited does not
/// matter).
#[derive(Clone)]
struct FuzzDialer(Arc<DialShared>);

struct DialShared {
    seed: u64,
    endpoints: Vec<Endpoint>,
    fail_pct: u64,
    slow_pct: u64,
    max_delay: Duration,
    /// Endpoints in an outage: every dial to them is refused.
    down: Mutex<Vec<bool>>,
    attempts: Mutex<Vec<u64>>,
    /// Server halves made since the fuzzer last looked.
    inbox: Mutex<Vec<NewHalf>>,
    next_server: AtomicUsize,
    /// The server id of the stream flushed last (see [`Tracked`]).
    touched: Arc<AtomicUsize>,
    /// The endpoint of each server id.
    server_eps: Arc<Mutex<Vec<usize>>>,
}

struct NewHalf {
    id: usize,
    ep: usize,
    half: DuplexStream,
    alive: Arc<AtomicBool>,
    at: Instant,
}

impl Dial for FuzzDialer {
    fn dial<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
        Box::pin(async move {
            let d = &self.0;
            let ep = d
                .endpoints
                .iter()
                .position(|e| e == endpoint)
                .expect("a dial to an endpoint the fuzzer never asked for");
            let attempt = {
                let mut attempts = d.attempts.lock().unwrap();
                attempts[ep] += 1;
                attempts[ep]
            };
            let mut rng = Rng::new(
                d.seed
                    ^ (ep as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407)
                    ^ attempt.wrapping_mul(0x9FB2_1C65_1E98_DF25),
            );
            if rng.chance(d.slow_pct) {
                let delay = rng.range(1, d.max_delay.as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let roll = rng.range(0, 99);
            if d.down.lock().unwrap()[ep] {
                return Err(DialError::connect(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "fuzz: connection refused (an outage)",
                )));
            }
            if roll < d.fail_pct / 5 {
                return Err(DialError::resolve(io::Error::new(
                    io::ErrorKind::NotFound,
                    "fuzz: no such host",
                )));
            }
            if roll < d.fail_pct {
                return Err(DialError::connect(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "fuzz: connection refused",
                )));
            }
            let (client, half) = tokio::io::duplex(PIPE);
            let alive = Arc::new(AtomicBool::new(true));
            let id = d.next_server.fetch_add(1, SeqCst);
            d.server_eps.lock().unwrap().push(ep);
            d.inbox.lock().unwrap().push(NewHalf {
                id,
                ep,
                half,
                alive: alive.clone(),
                at: Instant::now(),
            });
            Ok(Stream::custom(Tracked {
                inner: client,
                id,
                alive,
                touched: d.touched.clone(),
            }))
        })
    }
}

/// The state behind the seeded health check.
struct HealthShared {
    plan: HealthPlan,
    rng: Mutex<Rng>,
    touched: Arc<AtomicUsize>,
    server_eps: Arc<Mutex<Vec<usize>>>,
    /// Checks running now, per endpoint: their connections count as active.
    running: Mutex<Vec<usize>>,
    /// When the last check of each server id started: the moment its
    /// connection left the idle stack.
    started: Mutex<HashMap<usize, Instant>>,
}

impl HealthShared {
    async fn check(&self, stream: &mut Stream) -> bool {
        // Flushing reaches the `Tracked` stream, which says who it is.
        self.touched.store(usize::MAX, SeqCst);
        let _ = stream.flush().await;
        let sid = self.touched.load(SeqCst);
        let ep = self.server_eps.lock().unwrap()[sid];
        let (delay, healthy) = {
            let mut rng = self.rng.lock().unwrap();
            let delay = if rng.chance(self.plan.slow_pct) {
                rng.millis(1, self.plan.max_delay.as_millis() as u64)
            } else {
                Duration::ZERO
            };
            (delay, !rng.chance(self.plan.fail_pct))
        };
        let _running = Running::start(self, sid, ep);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        healthy
    }
}

/// A health check in progress; ended (or cancelled) when dropped.
struct Running<'a> {
    health: &'a HealthShared,
    sid: usize,
    ep: usize,
    since: Instant,
}

impl<'a> Running<'a> {
    fn start(health: &'a HealthShared, sid: usize, ep: usize) -> Self {
        health.running.lock().unwrap()[ep] += 1;
        Running {
            health,
            sid,
            ep,
            since: Instant::now(),
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.health.running.lock().unwrap()[self.ep] -= 1;
        self.health
            .started
            .lock()
            .unwrap()
            .insert(self.sid, self.since);
    }
}

/// The client half as the pool sees it. Dropping it marks the connection
/// closed for the fuzzer; flushing it tells the fuzzer which server half a
/// lease is talking to.
struct Tracked {
    inner: DuplexStream,
    id: usize,
    alive: Arc<AtomicBool>,
    touched: Arc<AtomicUsize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.alive.store(false, SeqCst);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.touched.store(self.id, SeqCst);
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Fails the seed; the report around it adds the seed, the step and the
/// last operations.
fn fail(what: impl std::fmt::Display) -> ! {
    panic!("{what}")
}

/// Polls a future once, outside tokio's cooperative budget, with a waker
/// that does nothing: the fuzzer polls again when it chooses.
fn now_or_never<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(tokio::task::unconstrained(fut));
    poll_once(fut.as_mut())
}

fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Option<F::Output> {
    match fut.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// The far end of one connection, as the fuzzer keeps it.
struct Server {
    ep: usize,
    /// `None` once the server reset it (dropped its half).
    half: Option<DuplexStream>,
    /// The server shut its writing side (a FIN).
    half_closed: bool,
    /// A probe of the client side would not find it quiet: the server
    /// closed it, or bytes nobody asked for wait on it. Sticky.
    dirty: bool,
    /// When it first became dirty.
    dirty_at: Option<Instant>,
    /// The client half still exists (in the pool or in a lease).
    alive: Arc<AtomicBool>,
    /// The pool's id of the connection, once it was leased.
    conn: Option<u64>,
    leases: u64,
    created_at: Instant,
    created_op: usize,
    released_at: Option<Instant>,
    released_op: Option<usize>,
}

impl Server {
    fn alive(&self) -> bool {
        self.alive.load(SeqCst)
    }
    fn make_dirty(&mut self) {
        self.dirty = true;
        self.dirty_at.get_or_insert_with(Instant::now);
    }
    fn clean(&self) -> bool {
        !self.dirty && self.half.is_some() && !self.half_closed
    }
    fn state(&self) -> &'static str {
        match (self.half.is_some(), self.half_closed, self.dirty) {
            (false, _, _) => "reset",
            (true, true, _) => "half-closed",
            (true, false, true) => "stray bytes",
            (true, false, false) => "clean",
        }
    }
}

struct Held {
    lease: PooledConnection,
    ep: usize,
    server: usize,
    /// `clear_endpoint` ran while it was leased.
    cleared: bool,
}

type GetFuture = Pin<Box<dyn Future<Output = Result<PooledConnection, Error>> + Send>>;

struct InFlight {
    id: usize,
    ep: usize,
    fut: GetFuture,
    polls: u32,
    started: Instant,
}

/// The counts the fuzzer keeps per endpoint, restarted when the pool
/// retires the endpoint's entry (which restarts its counters).
#[derive(Clone, Copy, Default)]
struct Books {
    hooks_base: HookCounts,
    fresh: u64,
    reused: u64,
    present: bool,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Get,
    Use,
    Drop,
    Discard,
    CancelIo,
    UsePartial,
    IoError,
    Cancel,
    DropThenCancel,
    ServerClose,
    ServerStray,
    Advance,
    Clear,
    Panic,
    /// Give a lease back with `release()` after leaving an idle read
    /// pending, as hyper's HTTP/1.1 client does.
    Release,
    /// Start or end an endpoint's outage (seeds with a breaker only).
    Outage,
}

struct Fuzz {
    plan: Plan,
    rng: Rng,
    pool: Option<Pool>,
    eps: Vec<Endpoint>,
    dial: Arc<DialShared>,
    hooks: Arc<Mutex<Hooks>>,
    health: Option<Arc<HealthShared>>,
    servers: Vec<Server>,
    held: Vec<Held>,
    gets: Vec<InFlight>,
    books: Vec<Books>,
    /// Endpoints that have been down (see [`Op::Outage`]).
    had_outage: Vec<bool>,
    next_get: usize,
    next_token: u64,
    /// The operation being run (1-based); steps and final phases count.
    op: usize,
    closed: bool,
    /// Gets in the middle of a health check when the pool closed: each may
    /// still end with a connection (closed on return).
    late_leases: usize,
    report: Rc<RefCell<Report>>,
}

impl Fuzz {
    fn new(seed: u64, plan: Plan, report: Rc<RefCell<Report>>) -> Fuzz {
        let eps: Vec<Endpoint> = (0..plan.endpoints)
            .map(|i| Endpoint::new(format!("fuzz-{i}.test"), 7000 + i as u16).unwrap())
            .collect();
        let hooks = Arc::new(Mutex::new(Hooks {
            endpoints: eps.clone(),
            counts: vec![HookCounts::default(); eps.len()],
        }));
        let dial = Arc::new(DialShared {
            seed,
            endpoints: eps.clone(),
            fail_pct: plan.dial_fail_pct,
            slow_pct: plan.dial_slow_pct,
            max_delay: plan.dial_max_delay,
            down: Mutex::new(vec![false; eps.len()]),
            attempts: Mutex::new(vec![0; eps.len()]),
            inbox: Mutex::new(Vec::new()),
            next_server: AtomicUsize::new(0),
            touched: Arc::new(AtomicUsize::new(usize::MAX)),
            server_eps: Arc::default(),
        });
        let health = plan.health_check.map(|hp| {
            Arc::new(HealthShared {
                plan: hp,
                rng: Mutex::new(Rng::new(seed ^ 0x4EA1_7400_C4EC_4000)),
                touched: dial.touched.clone(),
                server_eps: dial.server_eps.clone(),
                running: Mutex::new(vec![0; eps.len()]),
                started: Mutex::new(HashMap::new()),
            })
        });
        let pool = Pool::with_dialer(
            plan.config(&hooks, health.as_ref()),
            FuzzDialer(dial.clone()),
        );
        Fuzz {
            rng: Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D)),
            books: vec![Books::default(); eps.len()],
            had_outage: vec![false; eps.len()],
            plan,
            pool: Some(pool),
            eps,
            dial,
            hooks,
            health,
            servers: Vec::new(),
            held: Vec::new(),
            gets: Vec::new(),
            next_get: 0,
            next_token: 0,
            op: 0,
            closed: false,
            late_leases: 0,
            report,
        }
    }

    fn pool(&self) -> &Pool {
        self.pool
            .as_ref()
            .expect("the pool is dropped only at the very end")
    }

    // ---------------------------------------------------------------- driving

    async fn run(mut self) {
        self.report.borrow_mut().phase = "random operations";
        for step in 1..=self.plan.steps {
            self.op = step;
            self.report.borrow_mut().step = step;
            if self.plan.close_at == Some(step) {
                self.close().await;
            } else {
                self.random_op().await;
            }
            self.end_step().await;
        }
        self.finish().await;
    }

    /// Lets time move on a microsecond (so that events of different steps
    /// never share an instant), lets every task run, polls every `get`,
    /// and checks every invariant.
    async fn end_step(&mut self) {
        tokio::time::advance(Duration::from_micros(1)).await;
        self.settle().await;
        self.poll_gets();
        self.check();
        let summary = self.summary();
        if let Some(line) = self.report.borrow_mut().log.back_mut() {
            let _ = write!(line, "  | {summary}");
        }
    }

    /// Lets the dial and maintenance tasks run until they wait, without
    /// moving the clock.
    async fn settle(&self) {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    fn log(&self, line: String) {
        let mut report = self.report.borrow_mut();
        if report.log.len() == LOG_LINES {
            report.log.pop_front();
        }
        let op = self.op;
        report.log.push_back(format!("#{op} {line}"));
    }

    /// Fails with the state of every endpoint appended.
    fn fail_now(&self, what: String) -> ! {
        fail(format!("{what}\n  now: {}", self.summary()))
    }

    fn summary(&self) -> String {
        self.eps
            .iter()
            .enumerate()
            .map(|(i, ep)| {
                let s = self.pool().stats(ep);
                format!("ep{i} {}/{}/{}/{}", s.active, s.idle, s.dialing, s.waiting)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    async fn random_op(&mut self) {
        let live_servers = self.servers.iter().any(|s| s.half.is_some() && s.alive());
        let mut menu: Vec<(u32, Op)> = vec![(10, Op::Advance), (1, Op::Clear)];
        if self.gets.len() < MAX_GETS {
            menu.push((24, Op::Get));
        }
        if !self.held.is_empty() {
            menu.extend([
                (14, Op::Use),
                (14, Op::Drop),
                (3, Op::Discard),
                (3, Op::CancelIo),
                (3, Op::UsePartial),
                (3, Op::IoError),
                (1, Op::Panic),
                (5, Op::Release),
            ]);
        }
        if !self.gets.is_empty() {
            menu.push((7, Op::Cancel));
            if !self.held.is_empty() {
                menu.push((3, Op::DropThenCancel));
            }
        }
        if live_servers {
            menu.extend([(5, Op::ServerClose), (3, Op::ServerStray)]);
        }
        if self.plan.breaker_failures > 0 {
            menu.push((2, Op::Outage));
        }
        let total: u32 = menu.iter().map(|(w, _)| w).sum();
        let mut roll = self.rng.below(total as usize) as u32;
        let op = menu
            .iter()
            .find(|(w, _)| {
                if roll < *w {
                    true
                } else {
                    roll -= w;
                    false
                }
            })
            .map(|(_, op)| *op)
            .unwrap();
        match op {
            Op::Get => {
                let ep = self.rng.below(self.eps.len());
                self.get(ep);
            }
            Op::Use => {
                let h = self.rng.below(self.held.len());
                self.use_lease(h);
            }
            Op::Drop => {
                let h = self.rng.below(self.held.len());
                self.drop_lease(h, "drop");
            }
            Op::Discard => {
                let h = self.rng.below(self.held.len());
                self.discard(h);
            }
            Op::CancelIo => {
                let h = self.rng.below(self.held.len());
                self.cancel_io(h);
            }
            Op::UsePartial => {
                let h = self.rng.below(self.held.len());
                self.use_partially(h);
            }
            Op::IoError => {
                let h = self.rng.below(self.held.len());
                self.io_error(h);
            }
            Op::Cancel => {
                let g = self.rng.below(self.gets.len());
                if self.rng.chance(30) {
                    // Dials finish into the `get`'s channel, unpolled.
                    self.settle().await;
                    self.log("(settled first)".into());
                }
                self.cancel(g);
            }
            Op::DropThenCancel => {
                let h = self.rng.below(self.held.len());
                let ep = self.held[h].ep;
                let same: Vec<usize> = (0..self.gets.len())
                    .filter(|&g| self.gets[g].ep == ep)
                    .collect();
                let g = if same.is_empty() {
                    self.rng.below(self.gets.len())
                } else {
                    same[self.rng.below(same.len())]
                };
                self.drop_lease(h, "drop (then cancel at once)");
                self.cancel(g);
            }
            Op::Release => {
                let h = self.rng.below(self.held.len());
                self.release_after_idle_read(h);
            }
            Op::ServerClose => self.server_close(),
            Op::ServerStray => self.server_stray(),
            Op::Outage => {
                let ep = self.rng.below(self.eps.len());
                let mut down = self.dial.down.lock().unwrap();
                down[ep] = !down[ep];
                let now_down = down[ep];
                drop(down);
                self.had_outage[ep] |= now_down;
                self.log(format!(
                    "ep{ep} {}",
                    if now_down { "goes down" } else { "comes back" }
                ));
            }
            Op::Advance => {
                let by = match self.rng.below(10) {
                    0..=3 => self.rng.millis(1, 50),
                    4..=7 => self.rng.millis(50, 1_000),
                    _ => self.rng.millis(1_000, 8_000),
                };
                self.advance(by).await;
            }
            Op::Panic => {
                let h = self.rng.below(self.held.len());
                self.panic_holding(h);
            }
            Op::Clear => {
                let ep = self.rng.below(self.eps.len());
                self.clear(ep);
            }
        }
    }

    // ------------------------------------------------------------ operations

    fn get(&mut self, ep: usize) {
        self.next_get += 1;
        let id = self.next_get;
        let (pool, endpoint) = (self.pool().clone(), self.eps[ep].clone());
        self.gets.push(InFlight {
            id,
            ep,
            fut: Box::pin(async move { pool.get(&endpoint).await }),
            polls: 0,
            started: Instant::now(),
        });
        self.log(format!("get g{id} ep{ep}"));
        let index = self.gets.len() - 1;
        self.poll_get(index);
    }

    fn cancel(&mut self, g: usize) {
        let get = self.gets.remove(g);
        self.log(format!(
            "cancel g{} ep{} after {} poll{}",
            get.id,
            get.ep,
            get.polls,
            if get.polls == 1 { "" } else { "s" }
        ));
        drop(get);
    }

    /// Polls every in-flight `get`, oldest first.
    fn poll_gets(&mut self) {
        self.drain_inbox();
        let mut i = 0;
        while i < self.gets.len() {
            if !self.poll_get(i) {
                i += 1;
            }
        }
    }

    /// Polls one `get`; returns whether it finished (and left the list).
    fn poll_get(&mut self, index: usize) -> bool {
        let get = &mut self.gets[index];
        get.polls += 1;
        let Some(result) = poll_once(get.fut.as_mut()) else {
            return false;
        };
        let get = self.gets.remove(index);
        self.drain_inbox();
        match result {
            Ok(lease) => self.acquired(lease, &get),
            Err(err) => self.get_failed(err, &get),
        }
        true
    }

    fn get_failed(&mut self, err: Error, get: &InFlight) {
        self.log(format!("  g{} ep{} failed: {err}", get.id, get.ep));
        let plan = &self.plan;
        let expected = match &err {
            Error::PoolClosed => self.closed,
            Error::AcquireTimeout { timeout, .. } => {
                plan.acquire_timeout == Some(*timeout)
                    && Instant::now().duration_since(get.started) >= *timeout
            }
            Error::TooManyWaiters {
                max_waiters, state, ..
            } => {
                // At once, or after a failed health check (which runs
                // across polls); and only if the caller could not have had
                // a connection: its endpoint at its own limit or with
                // callers ahead of it, or the total full with nothing idle
                // anywhere to close to make room.
                let endpoint_full = state.active + state.idle + state.dialing
                    >= plan.max_per_endpoint
                    || state.dialing >= plan.max_dials
                    || state.waiting > 0;
                let stats: Vec<Stats> = self.eps.iter().map(|ep| self.pool().stats(ep)).collect();
                let open: usize = stats.iter().map(|s| s.active + s.idle + s.dialing).sum();
                let idle: usize = stats.iter().map(|s| s.idle).sum();
                let pool_full = plan.max_total.is_some_and(|max| open >= max) && idle == 0;
                plan.max_waiters == Some(*max_waiters)
                    && (get.polls == 1 || plan.health_check.is_some())
                    && (endpoint_full || pool_full)
            }
            Error::ConnectionFailed { attempts, .. } => {
                (plan.dial_fail_pct > 0 || self.had_outage[get.ep])
                    && *attempts == plan.connect_attempts
            }
            Error::CircuitOpen {
                endpoint, failures, ..
            } => {
                let breaker = self.pool().stats(&self.eps[get.ep]).breaker;
                plan.breaker_failures > 0
                    && endpoint == &self.eps[get.ep]
                    && *failures >= plan.breaker_failures
                    && breaker != BreakerState::Closed
            }
            Error::DnsResolutionFailed { .. } => plan.dial_fail_pct > 0,
            Error::ConnectionTimeout { .. } => {
                plan.connect_timeout.is_some() && plan.dial_slow_pct > 0
            }
            _ => false,
        };
        if !expected {
            self.fail_now(format!(
                "g{} on ep{} failed with an error this plan and this state cannot produce: {err:?}",
                get.id, get.ep
            ));
        }
    }

    /// Takes in the server halves the dialer made since the last look.
    fn drain_inbox(&mut self) {
        let new: Vec<NewHalf> = std::mem::take(&mut *self.dial.inbox.lock().unwrap());
        for half in new {
            assert_eq!(half.id, self.servers.len(), "server halves arrive in order");
            self.servers.push(Server {
                ep: half.ep,
                half: Some(half.half),
                half_closed: false,
                dirty: false,
                dirty_at: None,
                alive: half.alive,
                conn: None,
                leases: 0,
                created_at: half.at,
                created_op: self.op,
                released_at: None,
                released_op: None,
            });
        }
    }

    /// Which server half a lease talks to: flushing the lease reaches its
    /// [`Tracked`] stream, which says.
    fn identify(&mut self, lease: &mut PooledConnection) -> usize {
        self.dial.touched.store(usize::MAX, SeqCst);
        if !matches!(now_or_never(lease.flush()), Some(Ok(()))) {
            fail(format!(
                "flushing lease c{} did not succeed at once",
                lease.id()
            ));
        }
        self.drain_inbox();
        let server = self.dial.touched.load(SeqCst);
        if server >= self.servers.len() {
            fail(format!(
                "lease c{} is not a stream this fuzzer's dialer made",
                lease.id()
            ));
        }
        server
    }

    /// A `get` succeeded: checks what it handed out.
    fn acquired(&mut self, mut lease: PooledConnection, get: &InFlight) {
        let ep = get.ep;
        let id = lease.id();
        if lease.endpoint() != &self.eps[ep] {
            fail(format!(
                "g{} asked for ep{ep} and got a lease to {}",
                get.id,
                lease.endpoint()
            ));
        }
        if self.closed {
            // Waiters fail at close; only a get in the middle of a health
            // check may still finish with a connection (closed on return).
            if self.late_leases == 0 {
                fail(format!(
                    "g{} got c{id} although the pool was closed",
                    get.id
                ));
            }
            self.late_leases -= 1;
        }
        if self.held.iter().any(|h| h.lease.id() == id) {
            fail(format!(
                "c{id} leased twice: g{} got it while the fuzzer still holds it",
                get.id
            ));
        }
        let sid = self.identify(&mut lease);
        // The moment it left the idle stack: now, or when its health check
        // started.
        let now = self
            .health
            .as_ref()
            .and_then(|h| h.started.lock().unwrap().remove(&sid))
            .unwrap_or_else(Instant::now);
        let op = self.op;
        let plan = self.plan.clone();
        let reused = lease.is_reused();
        let uses = lease.use_count();
        let s = &self.servers[sid];
        if s.ep != ep {
            fail(format!("c{id} (s{sid}) belongs to ep{}, not ep{ep}", s.ep));
        }
        match s.conn {
            Some(conn) if conn != id => fail(format!(
                "server half s{sid} was c{conn} and is now leased as c{id}"
            )),
            Some(_) => {}
            None => {
                if let Some(other) = self.servers.iter().position(|o| o.conn == Some(id)) {
                    fail(format!("c{id} is both s{other} and s{sid}"));
                }
            }
        }
        if uses != s.leases + 1 {
            fail(format!(
                "c{id} (s{sid}) says it has had {uses} leases; the fuzzer counted {} before this one",
                s.leases
            ));
        }
        if !reused && s.leases > 0 {
            fail(format!("c{id} was leased before but is not marked reused"));
        }
        if let Some(max) = plan.max_uses {
            if uses > max {
                fail(format!(
                    "c{id} handed out for use {uses} past max_connection_uses {max}"
                ));
            }
        }
        // Unless it came straight from a release (or a dial) in this very
        // operation, it sat idle: the reuse checks apply.
        let last_op = s.released_op.unwrap_or(s.created_op);
        if last_op != op {
            let since = s.released_at.unwrap_or(s.created_at);
            if now.duration_since(s.created_at) > plan.lifetime {
                fail(format!(
                    "c{id} (s{sid}) handed out from idle {:?} after it was created, past max_connection_lifetime {:?}",
                    now.duration_since(s.created_at),
                    plan.lifetime
                ));
            }
            if now.duration_since(since) > plan.max_idle_time {
                fail(format!(
                    "c{id} (s{sid}) handed out after {:?} idle, past max_idle_time {:?}",
                    now.duration_since(since),
                    plan.max_idle_time
                ));
            }
        }
        // The liveness check runs on every path, a connection handed
        // straight from a returning lease to a waiter included, and sees
        // an in-memory stream's state at once.
        let dirty = s.dirty_at.is_some_and(|at| at <= now);
        if plan.liveness_check && dirty {
            fail(format!(
                "c{id} (s{sid}) handed out dead ({}) {:?} after it last came back, although the liveness check is on",
                s.state(),
                now.duration_since(s.released_at.unwrap_or(s.created_at)),
            ));
        }
        let clean = s.clean();
        let s = &mut self.servers[sid];
        s.conn = Some(id);
        s.leases += 1;
        let books = &mut self.books[ep];
        if reused {
            books.reused += 1;
        } else {
            books.fresh += 1;
        }
        self.log(format!(
            "  g{} ep{ep} got c{id} (s{sid}, {}, use {uses}, {})",
            get.id,
            if reused { "reused" } else { "new" },
            self.servers[sid].state()
        ));
        self.held.push(Held {
            lease,
            ep,
            server: sid,
            cleared: false,
        });
        if clean {
            // Every clean lease must echo at once.
            let h = self.held.len() - 1;
            self.round_trip(h);
        }
    }

    fn token(&mut self) -> Vec<u8> {
        self.next_token += 1;
        format!("<token {:06}>", self.next_token).into_bytes()
    }

    /// Writes a token through lease `h`, echoes it from the server half if
    /// it can, and reads it back. A clean connection must echo it exactly
    /// and at once. Returns `(echoed, lease_saw_failure)`.
    fn round_trip(&mut self, h: usize) -> (bool, bool) {
        let token = self.token();
        let held = &mut self.held[h];
        let id = held.lease.id();
        let sid = held.server;
        let s = &mut self.servers[sid];
        let clean = s.clean();
        let write = now_or_never(held.lease.write_all(&token));
        let mut trouble = match &write {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(format!("the write failed: {e}")),
            None => Some("the write did not finish at once".into()),
        };
        let failed_io = matches!(write, Some(Err(_)));
        if trouble.is_none() {
            if let Some(half) = s.half.as_mut() {
                let mut got = vec![0u8; token.len()];
                match now_or_never(half.read_exact(&mut got)) {
                    Some(Ok(_)) if got == token => {}
                    other => {
                        trouble = Some(format!(
                            "the server half read {other:?} {:?} instead of the token",
                            String::from_utf8_lossy(&got)
                        ))
                    }
                }
                if !s.half_closed
                    && trouble.is_none()
                    && !matches!(now_or_never(half.write_all(&token)), Some(Ok(())))
                {
                    trouble = Some("the server half could not echo".into());
                }
            }
        }
        let mut saw_failure = failed_io;
        if trouble.is_none() {
            let mut back = vec![0u8; token.len()];
            match now_or_never(held.lease.read_exact(&mut back)) {
                Some(Ok(_)) if back == token => {}
                Some(Ok(_)) => {
                    trouble = Some(format!("read back {:?}", String::from_utf8_lossy(&back)))
                }
                Some(Err(e)) => {
                    saw_failure = true;
                    trouble = Some(format!("the read failed: {e}"));
                }
                None => trouble = Some("the reply was not readable at once".into()),
            }
        }
        let state = s.state();
        match trouble {
            None => {
                self.log(format!("  round trip on c{id} (s{sid}): ok"));
                (true, false)
            }
            Some(what) if clean => fail(format!(
                "a round trip on c{id} (s{sid}), whose server side is clean, went wrong: {what}"
            )),
            Some(what) => {
                self.log(format!("  round trip on c{id} (s{sid}, {state}): {what}"));
                (false, saw_failure)
            }
        }
    }

    fn use_lease(&mut self, h: usize) {
        let (id, sid) = (self.held[h].lease.id(), self.held[h].server);
        self.log(format!("use c{id} (s{sid})"));
        let (echoed, saw_failure) = self.round_trip(h);
        if echoed {
            return;
        }
        // The exchange went wrong: a client gives the connection up. If the
        // lease saw the failure itself, a plain drop must close it too.
        if saw_failure && self.rng.chance(50) {
            self.drop_lease_expecting_close(h, "the lease saw its I/O fail");
        } else {
            self.discard(h);
        }
    }

    /// Drops lease `h`, giving it back.
    fn drop_lease(&mut self, h: usize, what: &str) {
        let must_close = self.must_close(h);
        let held = self.held.remove(h);
        let (id, sid) = (held.lease.id(), held.server);
        drop(held);
        self.released(sid);
        self.log(format!(
            "{what} c{id} (s{sid}): {}",
            if self.servers[sid].alive() {
                "kept"
            } else {
                "closed"
            }
        ));
        if let Some(why) = must_close {
            if self.servers[sid].alive() {
                fail(format!(
                    "c{id} (s{sid}) was given back and kept although {why}"
                ));
            }
        }
    }

    fn drop_lease_expecting_close(&mut self, h: usize, why: &str) {
        let held = self.held.remove(h);
        let (id, sid) = (held.lease.id(), held.server);
        drop(held);
        self.released(sid);
        self.log(format!("drop c{id} (s{sid}), expecting a close: {why}"));
        if self.servers[sid].alive() {
            fail(format!(
                "c{id} (s{sid}) was dropped and kept although {why}"
            ));
        }
    }

    /// Leaves a read pending on lease `h`, as an idle protocol client
    /// does, and gives the lease back with `release()`: kept, unless the
    /// read found the end, an error or stray bytes, or the lease must close
    /// for another reason.
    fn release_after_idle_read(&mut self, h: usize) {
        let must_close = self.must_close(h);
        let (id, sid) = (self.held[h].lease.id(), self.held[h].server);
        let mut buf = [0u8; 64];
        let read = now_or_never(self.held[h].lease.read(&mut buf));
        match read {
            None => {}
            Some(Ok(n)) if n > 0 => {
                self.log(format!("idle read on c{id} (s{sid}) found {n} stray bytes"));
                self.discard(h);
                return;
            }
            Some(result) => {
                self.log(format!("idle read on c{id} (s{sid}): {result:?}"));
                let held = self.held.remove(h);
                held.lease.release();
                self.released(sid);
                if self.servers[sid].alive() {
                    fail(format!(
                        "c{id} (s{sid}) was released and kept although its read saw the end or an error"
                    ));
                }
                return;
            }
        }
        let held = self.held.remove(h);
        let pool = self
            .pool
            .as_ref()
            .expect("leases exist only while the pool does");
        let cancelled = || {
            pool.stats(&self.eps[held.ep])
                .closed_for(CloseReason::Cancelled)
        };
        let before = cancelled();
        held.lease.release();
        let after = cancelled();
        self.released(sid);
        let kept = self.servers[sid].alive();
        self.log(format!(
            "release c{id} (s{sid}) with an idle read pending: {}",
            if kept { "kept" } else { "closed" }
        ));
        if after != before {
            fail(format!(
                "c{id} (s{sid}) was released with only an idle read pending, and closed as cancelled"
            ));
        }
        if let (Some(why), true) = (must_close, kept) {
            fail(format!(
                "c{id} (s{sid}) was released and kept although {why}"
            ));
        }
    }

    fn released(&mut self, sid: usize) {
        let s = &mut self.servers[sid];
        s.released_at = Some(Instant::now());
        s.released_op = Some(self.op);
    }

    /// Why lease `h` must be closed when given back, if it must.
    fn must_close(&self, h: usize) -> Option<&'static str> {
        let held = &self.held[h];
        let s = &self.servers[held.server];
        if self.closed {
            Some("the pool is closed")
        } else if held.cleared {
            Some("its endpoint was cleared while it was leased")
        } else if self
            .plan
            .max_uses
            .is_some_and(|max| held.lease.use_count() >= max)
        {
            Some("it reached max_connection_uses")
        } else if Instant::now() > s.created_at + self.plan.lifetime {
            Some("it outlived max_connection_lifetime")
        } else {
            None
        }
    }

    fn discard(&mut self, h: usize) {
        let held = self.held.remove(h);
        let (id, sid) = (held.lease.id(), held.server);
        held.lease.discard();
        self.released(sid);
        self.log(format!("discard c{id} (s{sid})"));
        if self.servers[sid].alive() {
            fail(format!("c{id} (s{sid}) was discarded but is still open"));
        }
    }

    /// A read or write left pending, then the lease dropped: a cancelled
    /// request. The connection must be closed, never reused.
    fn cancel_io(&mut self, h: usize) {
        let (id, sid) = (self.held[h].lease.id(), self.held[h].server);
        let lease = &mut self.held[h].lease;
        if self.rng.chance(50) {
            let mut buf = [0u8; 64];
            match now_or_never(lease.read(&mut buf)) {
                None => {
                    self.log(format!("read on c{id} (s{sid}) left pending"));
                    self.drop_lease_expecting_close(h, "a read was left pending");
                }
                Some(Ok(n)) if n > 0 => {
                    self.log(format!("read on c{id} (s{sid}) found {n} stray bytes"));
                    self.discard(h);
                }
                Some(result) => {
                    self.log(format!("read on c{id} (s{sid}) failed: {result:?}"));
                    self.drop_lease_expecting_close(h, "its read saw the end or an error");
                }
            }
        } else {
            // More than the pipe holds: the write stays pending.
            let big = vec![b'w'; PIPE * 4];
            let outcome = now_or_never(lease.write_all(&big));
            self.log(format!(
                "write on c{id} (s{sid}): {}",
                match outcome {
                    None => "left pending".to_string(),
                    Some(r) => format!("{r:?}"),
                }
            ));
            // What a caller may do after its write was cut off: none of it
            // makes the half-written connection reusable.
            if self.rng.chance(50) {
                let flushed = now_or_never(self.held[h].lease.flush());
                self.log(format!("  then flush c{id}: {flushed:?}"));
            }
            if self.rng.chance(30) {
                let mut buf = [0u8; 8];
                let read =
                    now_or_never(self.held[h].lease.read(&mut buf)).map(|r| r.map(|n| n > 0));
                self.log(format!("  then read c{id}: {read:?}"));
            }
            self.drop_lease_expecting_close(h, "a write was left pending or failed");
        }
    }

    /// A request whose reply is only partly read before the lease goes
    /// back: the rest waits on the connection.
    fn use_partially(&mut self, h: usize) {
        let sid = self.held[h].server;
        if !self.servers[sid].clean() {
            return self.use_lease(h);
        }
        let token = self.token();
        let keep = self.rng.range(1, token.len() as u64 - 1) as usize;
        let held = &mut self.held[h];
        let id = held.lease.id();
        let s = &mut self.servers[sid];
        let half = s.half.as_mut().unwrap();
        let mut got = vec![0u8; token.len()];
        let mut part = vec![0u8; keep];
        let ok = matches!(now_or_never(held.lease.write_all(&token)), Some(Ok(())))
            && matches!(now_or_never(half.read_exact(&mut got)), Some(Ok(_)))
            && matches!(now_or_never(half.write_all(&token)), Some(Ok(())))
            && matches!(now_or_never(held.lease.read_exact(&mut part)), Some(Ok(_)));
        if !ok {
            fail(format!(
                "a partial exchange on clean c{id} (s{sid}) did not go through"
            ));
        }
        s.make_dirty();
        self.log(format!(
            "use c{id} (s{sid}) reading {keep} of {} reply bytes",
            token.len()
        ));
        self.drop_lease(h, "  then drop");
    }

    /// The caller panics while it holds the lease: the connection must be
    /// closed, its state unknown.
    fn panic_holding(&mut self, h: usize) {
        let held = self.held.remove(h);
        let (id, sid) = (held.lease.id(), held.server);
        EXPECTED_PANIC.with(|e| e.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(move || {
            let _held = held;
            panic!("the fuzzer's caller panics while holding a lease");
        }));
        EXPECTED_PANIC.with(|e| e.set(false));
        assert!(outcome.is_err());
        self.released(sid);
        self.log(format!("a caller panics holding c{id} (s{sid})"));
        if self.servers[sid].alive() {
            fail(format!(
                "c{id} (s{sid}) was kept although its caller panicked"
            ));
        }
    }

    /// The server resets the connection under a lease, which then writes.
    fn io_error(&mut self, h: usize) {
        let (id, sid) = (self.held[h].lease.id(), self.held[h].server);
        let s = &mut self.servers[sid];
        s.half = None;
        s.make_dirty();
        let token = self.token();
        let result = now_or_never(self.held[h].lease.write_all(&token));
        self.log(format!("reset s{sid} under c{id}, then write: {result:?}"));
        if !matches!(result, Some(Err(_))) {
            fail(format!(
                "writing to c{id} after its server reset did not fail: {result:?}"
            ));
        }
        if self.rng.chance(50) {
            self.drop_lease_expecting_close(h, "its write failed");
        } else {
            self.discard(h);
        }
    }

    fn live_server(&mut self, writable: bool) -> Option<usize> {
        let live: Vec<usize> = (0..self.servers.len())
            .filter(|&i| {
                let s = &self.servers[i];
                s.alive() && s.half.is_some() && !(writable && s.half_closed)
            })
            .collect();
        (!live.is_empty()).then(|| live[self.rng.below(live.len())])
    }

    fn where_is(&self, sid: usize) -> String {
        match self.held.iter().find(|h| h.server == sid) {
            Some(h) => format!("leased as c{}", h.lease.id()),
            None => "in the pool".into(),
        }
    }

    /// The server closes a connection: a reset (its half dropped) or a FIN
    /// (its writing side shut).
    fn server_close(&mut self) {
        let Some(sid) = self.live_server(false) else {
            return;
        };
        let place = self.where_is(sid);
        let s = &mut self.servers[sid];
        s.make_dirty();
        if self.rng.chance(50) {
            s.half = None;
            self.log(format!("server resets s{sid} ({place})"));
        } else {
            let half = s.half.as_mut().unwrap();
            if !matches!(now_or_never(half.shutdown()), Some(Ok(()))) {
                fail(format!("could not shut server half s{sid}"));
            }
            s.half_closed = true;
            self.log(format!("server half-closes s{sid} ({place})"));
        }
    }

    /// The server sends bytes nobody asked for.
    fn server_stray(&mut self) {
        let Some(sid) = self.live_server(true) else {
            return;
        };
        let place = self.where_is(sid);
        let n = self.rng.range(1, 8) as usize;
        let s = &mut self.servers[sid];
        let half = s.half.as_mut().unwrap();
        if matches!(
            now_or_never(half.write_all(&b"!stray!!"[..n])),
            Some(Ok(()))
        ) {
            s.make_dirty();
            self.log(format!("server writes {n} stray bytes to s{sid} ({place})"));
        }
    }

    /// Lets time pass in slices, polling the `get`s between them as their
    /// callers would.
    async fn advance(&mut self, by: Duration) {
        self.log(format!("advance {by:?}"));
        let mut left = by;
        while !left.is_zero() {
            let slice = left.min(self.rng.millis(1, 300));
            tokio::time::sleep(slice).await;
            left -= slice;
            self.poll_gets();
        }
    }

    fn clear(&mut self, ep: usize) {
        self.pool().clear_endpoint(&self.eps[ep]);
        for held in self.held.iter_mut().filter(|h| h.ep == ep) {
            held.cleared = true;
        }
        self.log(format!("clear_endpoint ep{ep}"));
        let idle = self.pool().stats(&self.eps[ep]).idle;
        if idle != 0 {
            fail(format!(
                "ep{ep} still has {idle} idle right after clear_endpoint"
            ));
        }
    }

    async fn close(&mut self) {
        self.pool().close().await;
        self.closed = true;
        self.late_leases = self
            .health
            .as_ref()
            .map_or(0, |h| h.running.lock().unwrap().iter().sum());
        self.log("close the pool".into());
        for (i, ep) in self.eps.iter().enumerate() {
            let s = self.pool().stats(ep);
            if s.idle != 0 || s.waiting != 0 {
                fail(format!(
                    "right after close, ep{i} still has {} idle and {} waiting",
                    s.idle, s.waiting
                ));
            }
        }
    }

    // ------------------------------------------------------------ invariants

    fn check(&mut self) {
        self.drain_inbox();
        let panics = TASK_PANICS.with(|p| p.borrow().clone());
        if let Some(first) = panics.first() {
            self.fail_now(format!("a task panicked: {first}"));
        }
        let plan = self.plan.clone();
        let hooks = self.hooks.lock().unwrap().counts.clone();
        let present: HashSet<Endpoint> = self
            .pool()
            .all_stats()
            .into_iter()
            .map(|(ep, _)| ep)
            .collect();
        let stats: Vec<Stats> = self.eps.iter().map(|ep| self.pool().stats(ep)).collect();
        let mut held_ids = HashSet::new();
        for held in &self.held {
            let id = held.lease.id();
            if !held_ids.insert(id) {
                self.fail_now(format!("c{id} is held twice"));
            }
            if !self.servers[held.server].alive() {
                self.fail_now(format!(
                    "the stream of c{id} (s{}) was dropped while leased",
                    held.server
                ));
            }
        }
        let (mut open, mut idle) = (0, 0);
        for (e, s) in stats.iter().enumerate() {
            let name = format!("ep{e}");
            if plan.breaker_failures == 0
                && (s.breaker != BreakerState::Closed || s.breaker_trips > 0)
            {
                self.fail_now(format!(
                    "{name}'s breaker is off, yet {:?} after {} trips",
                    s.breaker, s.breaker_trips
                ));
            }
            if s.breaker == BreakerState::HalfOpen && s.dialing == 0 {
                self.fail_now(format!(
                    "{name}'s breaker is half-open with no probe dialing"
                ));
            }
            let is_present = present.contains(&self.eps[e]);
            let books = &mut self.books[e];
            if books.present && !is_present {
                // Retired for being empty (possibly in the middle of a long
                // advance): its counters start again.
                let base = books.hooks_base;
                let (created, closed) = (
                    hooks[e].created - base.created,
                    hooks[e].closed - base.closed,
                );
                let held = self.held.iter().filter(|h| h.ep == e).count();
                let pending = self.gets.iter().filter(|g| g.ep == e).count();
                if created != closed || held + pending != 0 {
                    self.fail_now(format!(
                        "{name} was retired although it was not empty: it created {created} \
                         and closed {closed}; the fuzzer holds {held} leases and {pending} gets on it"
                    ));
                }
                *books = Books {
                    hooks_base: hooks[e],
                    ..Books::default()
                };
                self.log(format!("  ({name} was retired; its counters restart)"));
            }
            let books = &mut self.books[e];
            books.present = is_present;
            let books = *books;
            let total = s.active + s.idle + s.dialing;
            open += total;
            idle += s.idle;
            if total > plan.max_per_endpoint {
                self.fail_now(format!(
                    "{name} has {total} connections, past max_connections_per_endpoint {}: {s:?}",
                    plan.max_per_endpoint
                ));
            }
            if s.dialing > plan.max_dials {
                self.fail_now(format!(
                    "{name} has {} dials in flight, past max_concurrent_dials {}",
                    s.dialing, plan.max_dials
                ));
            }
            if let Some(max) = plan.max_waiters {
                if s.waiting > max {
                    self.fail_now(format!(
                        "{name} has {} waiters, past max_waiters_per_endpoint {max}",
                        s.waiting
                    ));
                }
            }
            let Some(live) = s.total_created.checked_sub(s.total_closed) else {
                self.fail_now(format!("{name} closed more than it created: {s:?}"));
            };
            if live != (s.active + s.idle) as u64 {
                self.fail_now(format!(
                    "{name}: created - closed = {live}, but active + idle = {}: {s:?}",
                    s.active + s.idle
                ));
            }
            let by_reason: u64 = CloseReason::ALL.iter().map(|r| s.closed_for(*r)).sum();
            if by_reason != s.total_closed {
                self.fail_now(format!(
                    "{name}: closes by reason add up to {by_reason}, not {}",
                    s.total_closed
                ));
            }
            let failed_in_use = s.closed_for(CloseReason::IoError)
                + s.closed_for(CloseReason::Cancelled)
                + s.closed_for(CloseReason::Panicked);
            if s.errors < failed_in_use {
                self.fail_now(format!(
                    "{name}: {} errors, fewer than the {failed_in_use} connections that failed in use",
                    s.errors
                ));
            }
            let streams = self
                .servers
                .iter()
                .filter(|srv| srv.ep == e && srv.alive())
                .count();
            if streams != s.active + s.idle {
                self.fail_now(format!(
                    "{name} has {streams} streams open, but the pool counts {} active + {} idle: \
                     a connection was leaked or dropped behind the pool's back",
                    s.active, s.idle
                ));
            }
            let held = self.held.iter().filter(|h| h.ep == e).count();
            let checking = self
                .health
                .as_ref()
                .map_or(0, |h| h.running.lock().unwrap()[e]);
            if held + checking != s.active {
                self.fail_now(format!(
                    "{name}: the fuzzer holds {held} leases and {checking} are being health-checked, \
                     but the pool counts {} active",
                    s.active
                ));
            }
            if s.total_reused != books.reused || books.fresh > s.total_created {
                self.fail_now(format!(
                    "{name}: the fuzzer got {} reused and {} new leases; the pool counts {} reused and {} created",
                    books.reused, books.fresh, s.total_reused, s.total_created
                ));
            }
            let h = hooks[e];
            let base = books.hooks_base;
            let closed_by_hooks: Vec<u64> = (0..CloseReason::ALL.len())
                .map(|i| h.closed_by[i] - base.closed_by[i])
                .collect();
            let closed_by_stats: Vec<u64> =
                CloseReason::ALL.iter().map(|r| s.closed_for(*r)).collect();
            if h.created - base.created != s.total_created
                || h.reused - base.reused != s.total_reused
                || h.closed - base.closed != s.total_closed
                || closed_by_hooks != closed_by_stats
            {
                self.fail_now(format!(
                    "{name}: the hooks saw {} created, {} reused, {} closed {closed_by_hooks:?}; \
                     the stats say {s:?}",
                    h.created - base.created,
                    h.reused - base.reused,
                    h.closed - base.closed
                ));
            }
            let pending = self.gets.iter().filter(|g| g.ep == e).count();
            if s.waiting > pending {
                self.fail_now(format!(
                    "{name} counts {} waiting, but only {pending} gets are in flight",
                    s.waiting
                ));
            }
            if self.closed && (s.idle != 0 || s.waiting != 0) {
                self.fail_now(format!("{name} has idle or waiting after close: {s:?}"));
            }
        }
        if let Some(max) = plan.max_total {
            if open > max {
                self.fail_now(format!(
                    "{open} connections across endpoints, past max_connections_total {max}"
                ));
            }
            // The pool's own count of total slots taken, from its Debug
            // output; skipped if a later version stops printing it.
            let debug = format!("{:?}", self.pool());
            if let Some(taken) = debug
                .split("open: ")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<usize>().ok())
            {
                if taken != open {
                    self.fail_now(format!(
                        "the pool counts {taken} slots taken under max_connections_total, \
                         but its endpoints hold {open} connections: {debug}"
                    ));
                }
            }
        }
        if let Some(max) = plan.max_idle_total {
            if idle > max {
                self.fail_now(format!(
                    "{idle} idle connections across endpoints, past max_idle_total {max}"
                ));
            }
        }
        // No waiter is stuck: a caller waits only while its endpoint, its
        // dial cap or the pool's total (with nothing idle to evict) is full.
        let pool_full = plan.max_total.is_some_and(|max| open >= max);
        for (e, s) in stats.iter().enumerate() {
            if s.waiting == 0 {
                continue;
            }
            let endpoint_full = s.active + s.idle + s.dialing >= plan.max_per_endpoint
                || s.dialing >= plan.max_dials;
            if s.idle > 0 || !(endpoint_full || (pool_full && idle == 0)) {
                self.fail_now(format!(
                    "ep{e} has {} waiting although a connection could be had: {s:?}; \
                     {open} connections and {idle} idle across endpoints",
                    s.waiting
                ));
            }
        }
    }

    // ------------------------------------------------------------ the end

    async fn finish(&mut self) {
        self.op += 1;
        self.report.borrow_mut().phase = "closing";
        if !self.closed {
            if self.rng.chance(50) {
                // Callers served by those drops take their connections
                // at the end of the step, and drop them in turn.
                while !self.held.is_empty() {
                    while !self.held.is_empty() {
                        self.drop_lease(0, "drop before close");
                    }
                    self.end_step().await;
                }
            }
            self.close().await;
        }
        while !self.held.is_empty() {
            let h = self.rng.below(self.held.len());
            self.drop_lease(h, "drop after close");
        }
        self.settle().await;
        self.poll_gets();
        self.check();

        // Every get still in flight must end: waiters at once, dials when
        // they finish (each is bounded by its delays and retries).
        self.report.borrow_mut().phase = "waiting for gets and dials after close";
        let limit = Instant::now() + Duration::from_secs(120);
        while !self.gets.is_empty() || self.eps.iter().any(|ep| self.pool().stats(ep).dialing > 0) {
            if Instant::now() >= limit {
                let stuck: Vec<String> = self
                    .gets
                    .iter()
                    .map(|g| format!("g{} on ep{} ({} polls)", g.id, g.ep, g.polls))
                    .collect();
                fail(format!(
                    "120 s after close, gets are still pending: {stuck:?}; {}",
                    self.summary()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            self.poll_gets();
            // A get that was in the middle of a health check may end with
            // a connection; it must close on return.
            while !self.held.is_empty() {
                self.drop_lease(0, "drop after close");
            }
        }
        self.settle().await;
        self.check();

        self.report.borrow_mut().phase = "final checks";
        for (e, ep) in self.eps.iter().enumerate() {
            let s = self.pool().stats(ep);
            if s.active + s.idle + s.dialing + s.waiting != 0 || s.total_created != s.total_closed {
                fail(format!("after close, ep{e} is not empty: {s:?}"));
            }
            if !matches!(
                now_or_never(self.pool().get(ep)),
                Some(Err(Error::PoolClosed))
            ) {
                fail(format!(
                    "a get on ep{e} after close did not fail with PoolClosed"
                ));
            }
        }
        let pool = self.pool.take().unwrap();
        drop(pool);
        self.settle().await;
        for (sid, s) in self.servers.iter_mut().enumerate() {
            if s.alive() {
                fail(format!("the client stream of s{sid} was never closed"));
            }
            if let Some(half) = s.half.as_mut() {
                // Whatever the client wrote last, then the end of stream.
                let mut sink = Vec::new();
                if !matches!(now_or_never(half.read_to_end(&mut sink)), Some(Ok(_))) {
                    fail(format!("server half s{sid} never saw the client close"));
                }
            }
        }
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        if tasks != 0 {
            fail(format!(
                "{tasks} tasks still alive after the pool closed and was dropped"
            ));
        }
        self.log(format!(
            "done: {} connections made, all closed",
            self.servers.len()
        ));
    }
}
