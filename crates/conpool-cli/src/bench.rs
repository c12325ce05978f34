//! `conpool bench`: the load, and what is measured of it.
//!
//! `--concurrency` tasks each make one request at a time through one
//! [`Pool`], until `--requests` have been made or `--duration` has passed.
//! A request leases a connection, makes one exchange of the target's
//! protocol on it (`protocol.rs`), checks the reply and gives the lease
//! back (or discards it, with `--no-reuse`).
//! Its latency runs from before the lease is asked for to after the reply
//! is read, so time spent waiting for a free connection counts. With
//! `--rate`, requests are due on a fixed schedule instead (request k at
//! k / rate seconds from the start, taken by whichever task is free) and a
//! request that starts late, because every task was busy, has its latency
//! run from when it was due, as wrk2 measures: a server that stalls is
//! charged for the requests that queued behind the stall, not only for the
//! one it stalled (coordinated omission). Each task
//! keeps its own counts, merged at the end, and hands its latencies to one
//! shared histogram a batch at a time, so that the tasks share little
//! while they run but the pool itself and the budget, and a task costs a
//! small buffer, not a histogram of its own.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use clap::value_parser;
use conpool::cli::{PoolArgs, parse_duration};
use conpool::hyper::Http1;
use conpool::{CloseReason, Endpoint, EndpointHandle, Error, Pool, ProtocolPool, Stats};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::Exit;
use crate::echo;
use crate::http;
use crate::protocol::{self, Failure, MAX_KEYS, Protocol, Target, with_causes};
use crate::report::{ErrorCount, Latency, PoolView, Report};

/// The most tasks `--concurrency` starts: a thousand times the pool's
/// default limit per endpoint, beyond which the tasks' own memory and
/// scheduling, not the pool, is what would be measured.
const MAX_CONCURRENCY: u32 = 10_000;

/// The highest `--rate`: a request due every 100 ns, past what one process
/// on loopback gets near.
const MAX_RATE: u64 = 10_000_000;

/// Latencies a task collects before it takes the shared histogram's lock.
const LATENCY_BATCH: usize = 128;

/// How long a run lasts when neither `--requests` nor `--duration` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(5);

/// The options of `conpool bench`, and every pool setting as a flag.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The server to load, its protocol named by the scheme: tcp:// or
    /// tls:// (echo), redis:// or rediss:// (PING; GET with --keys),
    /// memcached:// (get), http:// or https:// (GET of the URL's path);
    /// host:port, the port optional but for echo [default: an echo server
    /// started inside this process, on 127.0.0.1]
    #[arg(value_name = "TARGET", value_parser = protocol::parse_target)]
    target: Option<Target>,

    /// Redis and memcached: store this many keys before the load (on a
    /// connection of their own), then GET them in turn; 1 to 1000000
    /// [default: redis PINGs; memcached gets 1 key]
    #[arg(
        long,
        value_name = "N",
        value_parser = value_parser!(u32).range(1..=i64::from(MAX_KEYS))
    )]
    keys: Option<u32>,

    /// Requests in flight at once, each task making one at a time; 1 to
    /// 10000
    #[arg(
        long,
        short = 'c',
        value_name = "N",
        default_value_t = 64,
        value_parser = value_parser!(u32).range(1..=i64::from(MAX_CONCURRENCY))
    )]
    concurrency: u32,

    /// Requests to make in all; at least 1 [default: as many as --duration
    /// allows]
    #[arg(
        long,
        short = 'n',
        value_name = "N",
        conflicts_with = "duration",
        value_parser = value_parser!(u64).range(1..)
    )]
    requests: Option<u64>,

    /// How long to make requests, such as 500ms, 10s or 1m30s; above 0
    /// [default: 5s]
    #[arg(long, short = 'd', value_name = "DURATION", value_parser = run_time)]
    duration: Option<Duration>,

    /// The bound on one request's write and read, past which it counts as
    /// a timeout error and its connection is closed; above 0
    #[arg(long, value_name = "DURATION", value_parser = run_time, default_value = "10s")]
    request_timeout: Duration,

    /// Start requests at this fixed rate, in requests per second over all
    /// tasks, each latency measured from when its request was due; 1 to
    /// 10000000 [default: as fast as the tasks go]
    #[arg(
        long,
        value_name = "N",
        value_parser = value_parser!(u64).range(1..=MAX_RATE)
    )]
    rate: Option<u64>,

    /// Close every connection after its one request, so that each request
    /// dials a new one (a connection per request, to compare pooling with)
    #[arg(long)]
    no_reuse: bool,

    /// Print the result as one JSON document instead of a table (its fields
    /// are described in the README)
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    pool: PoolArgs,
}

/// A duration that must be above zero, in the pool flags' grammar.
fn run_time(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("it must be above zero, such as 500ms, 10s or 1m30s".to_owned());
    }
    Ok(duration)
}

/// Which requests the tasks take, and when each is due.
struct Budget {
    limit: Limit,
    /// Requests handed out so far: the next one's number.
    taken: AtomicU64,
    /// With `--rate`: when each request is due.
    schedule: Option<Schedule>,
}

/// When the tasks stop taking requests.
enum Limit {
    /// After this many have been taken.
    Requests(u64),
    /// When the run time is over: with a schedule, once the next request
    /// would be due after it; without, once the flag is set, by a timer.
    Until {
        run_time: Duration,
        stopped: AtomicBool,
    },
}

/// A fixed rate: request k is due `k * interval` after `start`.
struct Schedule {
    start: Instant,
    interval: Duration,
}

impl Schedule {
    fn offset(&self, request: u64) -> Duration {
        // Exact in nanoseconds for any run of fewer than 584 years.
        Duration::from_nanos(
            u64::try_from(self.interval.as_nanos().saturating_mul(u128::from(request)))
                .unwrap_or(u64::MAX),
        )
    }
}

impl Budget {
    /// Takes the next request: when it is due (now, without a schedule);
    /// `None` once the budget is spent.
    fn take(&self) -> Option<Instant> {
        let request = self.taken.fetch_add(1, Ordering::Relaxed);
        let offset = self.schedule.as_ref().map(|s| s.offset(request));
        let within = match &self.limit {
            Limit::Requests(total) => request < *total,
            Limit::Until { run_time, .. } if offset.is_some() => offset < Some(*run_time),
            Limit::Until { stopped, .. } => !stopped.load(Ordering::Relaxed),
        };
        within.then(|| match (&self.schedule, offset) {
            (Some(schedule), Some(offset)) => schedule.start + offset,
            _ => Instant::now(),
        })
    }
}

/// Connections open at once, counted by the pool's created and closed
/// hooks: they run once per connection, not per request, so the count
/// costs the reused path nothing.
#[derive(Default)]
struct OpenConnections {
    now: AtomicI64,
    peak: AtomicI64,
}

/// What one task saw, but its latencies.
struct Tally {
    successes: u64,
    errors: BTreeMap<&'static str, ErrorCount>,
}

/// Runs `conpool bench` and prints its report on stdout.
pub async fn run(args: BenchArgs) -> Result<(), Exit> {
    let (target, embedded) = match args.target {
        Some(target) => (target, false),
        None => {
            let addr = echo::start()
                .await
                .map_err(|e| format!("the embedded echo server cannot listen on 127.0.0.1: {e}"))?;
            let endpoint = Endpoint::new(addr.ip().to_string(), addr.port())
                .map_err(|e| format!("the embedded echo server's address {addr}: {e}"))?;
            let target = Target {
                kind: protocol::Kind::Echo,
                endpoint,
                path: "/".to_owned(),
            };
            (target, true)
        }
    };
    let protocol = Protocol::of(&target, args.keys).map_err(Exit::Usage)?;
    let endpoint = &target.endpoint;

    let open = Arc::new(OpenConnections::default());
    let config = args
        .pool
        .into_builder()
        .on_connection_created({
            let open = open.clone();
            move |_| {
                let now = open.now.fetch_add(1, Ordering::Relaxed) + 1;
                open.peak.fetch_max(now, Ordering::Relaxed);
            }
        })
        .on_connection_closed({
            let open = open.clone();
            move |_, _| {
                open.now.fetch_sub(1, Ordering::Relaxed);
            }
        })
        .build()
        .map_err(|e| e.to_string())?;
    protocol.prepare(&config, endpoint).await?;
    let protocol = Arc::new(protocol);
    let pool = Pool::new(config);
    let source = match &*protocol {
        Protocol::HttpGet { .. } => Source::Http(
            pool.protocol(Http1::<http::Body>::new()),
            Arc::new(endpoint.clone()),
        ),
        _ => Source::Streams(Arc::new(
            pool.endpoint(endpoint).map_err(|e| e.to_string())?,
        )),
    };

    let run_time = args.duration.unwrap_or(DEFAULT_DURATION);
    let started = Instant::now();
    let budget = Arc::new(Budget {
        limit: match args.requests {
            Some(total) => Limit::Requests(total),
            None => Limit::Until {
                run_time,
                stopped: AtomicBool::new(false),
            },
        },
        taken: AtomicU64::new(0),
        schedule: args.rate.map(|rate| Schedule {
            start: started,
            interval: Duration::from_nanos(1_000_000_000 / rate),
        }),
    });
    let progress = std::io::stdout()
        .is_terminal()
        .then(|| progress_bar(args.requests, run_time));

    // Nanoseconds to three significant digits, the range growing as
    // values need.
    let latency = Arc::new(Mutex::new(
        Histogram::<u64>::new(3).map_err(|e| e.to_string())?,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..args.concurrency {
        tasks.spawn(load(
            source.clone(),
            protocol.clone(),
            latency.clone(),
            budget.clone(),
            task,
            !args.no_reuse,
            args.request_timeout,
        ));
    }
    if let (Limit::Until { .. }, None) = (&budget.limit, &budget.schedule) {
        let budget = budget.clone();
        tokio::spawn(async move {
            // tokio takes a sleep too long for an `Instant` as forever.
            tokio::time::sleep(run_time).await;
            if let Limit::Until { stopped, .. } = &budget.limit {
                stopped.store(true, Ordering::Relaxed);
            }
        });
    }
    let ticker = progress
        .clone()
        .map(|bar| tokio::spawn(show_progress(budget.clone(), started, run_time, bar)));

    let mut tallies = Vec::with_capacity(args.concurrency as usize);
    while let Some(tally) = tasks.join_next().await {
        tallies.push(tally.map_err(|e| format!("a load task failed: {e}"))?);
    }
    let elapsed = started.elapsed();
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }

    // The pool's view before it is closed, so that the closes it counts
    // are the run's own and what is still open shows.
    let stats = source.stats();
    drop(source);
    pool.close().await;

    let mut successes = 0;
    let mut errors: BTreeMap<&'static str, ErrorCount> = BTreeMap::new();
    for tally in tallies {
        successes += tally.successes;
        for (kind, count) in tally.errors {
            errors
                .entry(kind)
                .and_modify(|total| total.count += count.count)
                .or_insert(count);
        }
    }
    let failed: u64 = errors.values().map(|e| e.count).sum();
    let requests = successes + failed;
    let leases = stats.total_created + stats.total_reused;
    let report = Report {
        target: target.url(),
        server: if embedded { "embedded" } else { "external" },
        protocol: protocol.name(),
        keys: protocol.keys(),
        concurrency: args.concurrency,
        rate: args.rate,
        reuse: !args.no_reuse,
        requests,
        successes,
        errors: failed,
        errors_by_kind: errors,
        elapsed_s: elapsed.as_secs_f64(),
        requests_per_s: requests as f64 / elapsed.as_secs_f64(),
        latency_ns: (successes > 0).then(|| Latency::of(&lock(&latency))),
        pool: PoolView {
            created: stats.total_created,
            reused: stats.total_reused,
            reuse_ratio: (leases > 0).then(|| stats.total_reused as f64 / leases as f64),
            closed: stats.total_closed,
            closed_by_reason: CloseReason::ALL
                .iter()
                .filter(|&&reason| stats.closed_for(reason) > 0)
                .map(|&reason| (reason.as_str(), stats.closed_for(reason)))
                .collect(),
            open_at_end: (stats.active + stats.idle) as u64,
            peak_open: open.peak.load(Ordering::Relaxed).max(0) as u64,
            errors: stats.errors,
        },
    };
    let text = if args.json {
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
    } else {
        report.table()
    };
    println!("{text}");
    Ok(())
}

/// One task's requests, one at a time, until the budget is spent.
async fn load(
    source: Source,
    protocol: Arc<Protocol>,
    latency: Arc<Mutex<Histogram<u64>>>,
    budget: Arc<Budget>,
    task: u32,
    reuse: bool,
    request_timeout: Duration,
) -> Tally {
    let mut batch = Vec::with_capacity(LATENCY_BATCH);
    let mut tally = Tally {
        successes: 0,
        errors: BTreeMap::new(),
    };
    // Every request is different (task and sequence number), so that a
    // reply meant for another request is seen as wrong.
    let mut sequence: u64 = 0;
    let mut scratch = Vec::with_capacity(256);
    while let Some(due) = budget.take() {
        let id = (u64::from(task) << 40) | (sequence & ((1 << 40) - 1));
        sequence += 1;
        // A request not yet due waits, and its latency runs from when the
        // task woke: tokio's timer wakes up to a millisecond late, which is
        // the load generator's own delay, not the server's. One already
        // due (the tasks have fallen behind) goes at once, its latency
        // from its due time.
        let start = if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
            Instant::now()
        } else {
            due
        };
        let outcome = match (&source, &*protocol) {
            (Source::Http(http, endpoint), Protocol::HttpGet { path }) => {
                match http.get(endpoint).await {
                    Ok(conn) => http::get(conn, path, reuse, request_timeout).await,
                    Err(e) => Err(acquire_failure(&e)),
                }
            }
            (_, protocol) => match source.stream_get().await {
                Ok(conn) => {
                    protocol
                        .request(conn, id, reuse, request_timeout, &mut scratch)
                        .await
                }
                Err(e) => Err(acquire_failure(&e)),
            },
        };
        match outcome {
            Ok(()) => {
                let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                batch.push(nanos);
                if batch.len() == LATENCY_BATCH {
                    record(&latency, &mut batch);
                }
                tally.successes += 1;
            }
            Err(failure) => {
                tally
                    .errors
                    .entry(failure.kind)
                    .and_modify(|e| e.count += 1)
                    .or_insert(ErrorCount {
                        count: 1,
                        first: failure.message,
                    });
            }
        }
    }
    record(&latency, &mut batch);
    tally
}

/// Where the load's connections come from: the byte-stream pool (an
/// endpoint handle, which skips the map), or for HTTP the pool of hyper's
/// HTTP/1.1 connections.
#[derive(Clone)]
enum Source {
    Streams(Arc<EndpointHandle>),
    Http(ProtocolPool<Http1<http::Body>>, Arc<Endpoint>),
}

impl Source {
    /// A stream lease (an HTTP source has none to give).
    async fn stream_get(&self) -> Result<conpool::PooledConnection, Error> {
        match self {
            Source::Streams(handle) => handle.get().await,
            Source::Http(http, endpoint) => http.pool().get(endpoint).await,
        }
    }

    fn stats(&self) -> Stats {
        match self {
            Source::Streams(handle) => handle.stats(),
            Source::Http(http, endpoint) => http.stats(endpoint),
        }
    }
}

fn acquire_failure(err: &Error) -> Failure {
    Failure {
        kind: acquire_error_kind(err),
        message: with_causes(err),
    }
}

/// Moves a batch of latencies into the shared histogram.
fn record(histogram: &Mutex<Histogram<u64>>, batch: &mut Vec<u64>) {
    let mut histogram = lock(histogram);
    for nanos in batch.drain(..) {
        // `record` grows the range (`saturating_record` would clamp to
        // it); past what it can grow to (146 years), clamp.
        if histogram.record(nanos).is_err() {
            histogram.saturating_record(nanos);
        }
    }
}

/// The histogram, even if a task panicked holding it: its counts are whole
/// (a record is one increment).
fn lock(histogram: &Mutex<Histogram<u64>>) -> MutexGuard<'_, Histogram<u64>> {
    histogram.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The kind a failed lease is counted under.
fn acquire_error_kind(err: &Error) -> &'static str {
    match err {
        Error::DnsResolutionFailed { .. } => "dns",
        Error::ConnectionFailed { .. } => "connect",
        Error::ConnectionTimeout { .. } => "connect_timeout",
        Error::Tls { .. } => "tls",
        Error::AcquireTimeout { .. } => "acquire_timeout",
        Error::TooManyWaiters { .. } => "too_many_waiters",
        Error::CircuitOpen { .. } => "circuit_open",
        _ => "other",
    }
}

/// Moves the bar every tenth of a second, until aborted.
async fn show_progress(
    budget: Arc<Budget>,
    started: Instant,
    run_time: Duration,
    bar: ProgressBar,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        bar.set_position(match &budget.limit {
            Limit::Until { .. } => millis(started.elapsed().min(run_time)),
            Limit::Requests(total) => budget.taken.load(Ordering::Relaxed).min(*total),
        });
    }
}

/// A bar of requests made, or of time passed in a timed run.
fn progress_bar(requests: Option<u64>, run_time: Duration) -> ProgressBar {
    let (len, template) = match requests {
        Some(total) => (total, "{bar:40} {pos}/{len} requests"),
        None => (millis(run_time), "{bar:40} {elapsed} of the run"),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stdout());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
