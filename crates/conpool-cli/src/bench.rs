//! `conpool bench`: the load, and what is measured of it.
//!
//! `--concurrency` tasks each make one request at a time through one
//! [`Pool`], until `--requests` have been made or `--duration` has passed.
//! A request is an echo exchange: lease a connection, write 32 bytes, read
//! them back, compare, drop the lease (or discard it, with `--no-reuse`).
//! Its latency runs from before the lease is asked for to after the reply
//! is read, so time spent waiting for a free connection counts. Each task
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
use conpool::{CloseReason, Endpoint, EndpointHandle, Error, Pool, Scheme};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::echo;
use crate::report::{ErrorCount, Latency, PoolView, Report};

/// The most tasks `--concurrency` starts: a thousand times the pool's
/// default limit per endpoint, beyond which the tasks' own memory and
/// scheduling, not the pool, is what would be measured.
const MAX_CONCURRENCY: u32 = 10_000;

/// Latencies a task collects before it takes the shared histogram's lock.
const LATENCY_BATCH: usize = 128;

/// How long a run lasts when neither `--requests` nor `--duration` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(5);

/// The length of every request, and of its echo.
const REQUEST_LEN: usize = 32;

/// The options of `conpool bench`, and every pool setting as a flag.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The echo server to load: tcp://host:port or tls://host:port
    /// [default: an echo server started inside this process, on 127.0.0.1]
    #[arg(value_name = "TARGET", value_parser = target)]
    target: Option<Endpoint>,

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

/// A target on the command line: an echo server over TCP or TLS.
fn target(text: &str) -> Result<Endpoint, String> {
    match text.split_once("://") {
        Some(("tcp" | "tls", _)) => text.parse().map_err(|e: Error| e.to_string()),
        Some((scheme, _)) => Err(format!(
            "unknown scheme {scheme:?}; conpool bench speaks echo over tcp://host:port or tls://host:port"
        )),
        None => Err("it has no scheme; write tcp://host:port or tls://host:port".to_owned()),
    }
}

/// A duration that must be above zero, in the pool flags' grammar.
fn run_time(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("it must be above zero, such as 500ms, 10s or 1m30s".to_owned());
    }
    Ok(duration)
}

/// When the tasks stop taking requests.
enum Budget {
    /// After this many have been taken.
    Requests { total: u64, taken: AtomicU64 },
    /// Once the flag is set, by a timer.
    Until { stopped: AtomicBool },
}

impl Budget {
    /// Takes one request from the budget; false once it is spent.
    fn take(&self) -> bool {
        match self {
            Budget::Requests { total, taken } => taken.fetch_add(1, Ordering::Relaxed) < *total,
            Budget::Until { stopped } => !stopped.load(Ordering::Relaxed),
        }
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

/// A request that failed: the kind it is counted under, and its error.
struct Failure {
    kind: &'static str,
    message: String,
}

/// Runs `conpool bench` and prints its report on stdout.
pub async fn run(args: BenchArgs) -> Result<(), String> {
    let (endpoint, embedded) = match args.target {
        Some(endpoint) => (endpoint, false),
        None => {
            let addr = echo::start()
                .await
                .map_err(|e| format!("the embedded echo server cannot listen on 127.0.0.1: {e}"))?;
            let endpoint = Endpoint::new(addr.ip().to_string(), addr.port())
                .map_err(|e| format!("the embedded echo server's address {addr}: {e}"))?;
            (endpoint, true)
        }
    };

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
    let pool = Pool::new(config);
    let handle = Arc::new(pool.endpoint(&endpoint).map_err(|e| e.to_string())?);

    let run_time = args.duration.unwrap_or(DEFAULT_DURATION);
    let budget = Arc::new(match args.requests {
        Some(total) => Budget::Requests {
            total,
            taken: AtomicU64::new(0),
        },
        None => Budget::Until {
            stopped: AtomicBool::new(false),
        },
    });
    let progress = std::io::stdout()
        .is_terminal()
        .then(|| progress_bar(args.requests, run_time));

    // Nanoseconds to three significant digits, the range growing as
    // values need.
    let latency = Arc::new(Mutex::new(
        Histogram::<u64>::new(3).map_err(|e| e.to_string())?,
    ));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..args.concurrency {
        tasks.spawn(load(
            handle.clone(),
            latency.clone(),
            budget.clone(),
            task,
            !args.no_reuse,
            args.request_timeout,
        ));
    }
    if let Budget::Until { .. } = &*budget {
        let budget = budget.clone();
        tokio::spawn(async move {
            // tokio takes a sleep too long for an `Instant` as forever.
            tokio::time::sleep(run_time).await;
            if let Budget::Until { stopped } = &*budget {
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
    let stats = handle.stats();
    drop(handle);
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
        target: format!(
            "{}://{}:{}",
            match endpoint.scheme() {
                Scheme::Tls => "tls",
                _ => "tcp",
            },
            endpoint.host(),
            endpoint.port()
        ),
        server: if embedded { "embedded" } else { "external" },
        protocol: "echo",
        concurrency: args.concurrency,
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
    handle: Arc<EndpointHandle>,
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
    let mut request = *b"conpool bench 0000000000000000\r\n";
    let mut sequence: u64 = 0;
    while budget.take() {
        let id = (u64::from(task) << 40) | (sequence & ((1 << 40) - 1));
        sequence += 1;
        request[14..30].copy_from_slice(format!("{id:016x}").as_bytes());
        let start = Instant::now();
        match exchange(&handle, &request, reuse, request_timeout).await {
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

/// One request: lease, write, read the echo back, check it.
async fn exchange(
    handle: &EndpointHandle,
    request: &[u8; REQUEST_LEN],
    reuse: bool,
    request_timeout: Duration,
) -> Result<(), Failure> {
    let mut conn = handle.get().await.map_err(|e| Failure {
        kind: acquire_error_kind(&e),
        message: with_causes(&e),
    })?;
    let mut reply = [0u8; REQUEST_LEN];
    let io = async {
        conn.write_all(request).await?;
        conn.read_exact(&mut reply).await
    };
    match tokio::time::timeout(request_timeout, io).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(Failure {
                kind: "io",
                message: e.to_string(),
            });
        }
        // Dropping the lease with its read pending closes it.
        Err(_) => {
            return Err(Failure {
                kind: "request_timeout",
                message: format!("no reply within {request_timeout:?}"),
            });
        }
    }
    if &reply != request {
        conn.discard();
        return Err(Failure {
            kind: "bad_reply",
            message: format!(
                "sent {:?}, got back {:?}",
                String::from_utf8_lossy(request),
                String::from_utf8_lossy(&reply)
            ),
        });
    }
    if !reuse {
        conn.discard();
    }
    Ok(())
}

/// An error and its sources, as in "could not connect to …: Connection
/// refused (os error 111)".
fn with_causes(err: &Error) -> String {
    let mut message = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(source) = cause {
        message.push_str(": ");
        message.push_str(&source.to_string());
        cause = source.source();
    }
    message
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
        bar.set_position(match &*budget {
            Budget::Until { .. } => millis(started.elapsed().min(run_time)),
            Budget::Requests { total, taken } => taken.load(Ordering::Relaxed).min(*total),
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
