//! What a get to a dead endpoint costs: with its circuit breaker open (the
//! get fails at once with `CircuitOpen`) against the breaker off, where
//! every get dials the refused port again (one attempt, and the default
//! three attempts with their backoff).
//!
//! The endpoint is a loopback port nothing listens on, so a connect is
//! refused at once by the kernel: the cheapest dead endpoint there is (a
//! black-holed one costs the whole connect timeout per attempt instead).
//! `TASKS` tasks on a 2-worker runtime get from it in a loop for a fixed
//! wall time; each case runs `ROUNDS` times, interleaved, and the median
//! is printed with the spread, as the markdown table and the sentence that
//! the `compare` binary (scripts/bench) puts into BENCHMARKS.md's section
//! 6.
//! The open breaker's pool is tripped before its clock starts; over a run
//! longer than its open time it lets one probe dial through now and then,
//! as it would in production.
//!
//! ```text
//! cargo run --release -p conpool-bench --example breaker
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use conpool::{BreakerState, Config, Endpoint, Error, Pool};

const TASKS: usize = 16;
const ROUNDS: usize = 5;
const RUN: Duration = Duration::from_millis(500);

#[derive(Clone, Copy)]
enum Case {
    /// The defaults, breaker tripped before the run.
    BreakerOpen,
    /// `breaker_failures(0)`, one connect attempt per get.
    OffOneAttempt,
    /// `breaker_failures(0)`, the default three attempts and backoff.
    OffDefaults,
}

impl Case {
    const ALL: [Case; 3] = [Case::BreakerOpen, Case::OffOneAttempt, Case::OffDefaults];

    fn label(self) -> &'static str {
        match self {
            Case::BreakerOpen => "breaker open (defaults)",
            Case::OffOneAttempt => "breaker off, 1 connect attempt per get",
            Case::OffDefaults => "breaker off, defaults (3 attempts, 100 ms backoff doubling)",
        }
    }

    fn config(self) -> Config {
        let builder = Config::builder();
        match self {
            Case::BreakerOpen => builder,
            Case::OffOneAttempt => builder.breaker_failures(0).connect_retry_count(1),
            Case::OffDefaults => builder.breaker_failures(0),
        }
        .build()
        .expect("a valid config")
    }
}

/// The waits between the default config's connect attempts, added up.
fn default_backoff() -> Duration {
    let config = Config::default();
    (1..config.connect_retry_count())
        .map(|attempt| conpool::dial::backoff_delay(config.connect_retry_delay(), attempt))
        .sum()
}

fn refused_endpoint() -> Endpoint {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("its address").port();
    drop(listener);
    Endpoint::new("127.0.0.1", port).expect("a valid endpoint")
}

/// Gets per second over one run of `case`.
async fn gets_per_second(case: Case) -> f64 {
    let endpoint = refused_endpoint();
    let pool = Pool::new(case.config());
    if let Case::BreakerOpen = case {
        while pool.stats(&endpoint).breaker != BreakerState::Open {
            let _ = pool.get(&endpoint).await;
        }
    }
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (pool, endpoint, done) = (pool.clone(), endpoint.clone(), done.clone());
            tokio::spawn(async move {
                while started.elapsed() < RUN {
                    match pool.get(&endpoint).await {
                        Err(Error::CircuitOpen { .. } | Error::ConnectionFailed { .. }) => {}
                        other => panic!("a refused port gave {other:?}"),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a get loop");
    }
    let took = started.elapsed();
    pool.close().await;
    done.load(Ordering::Relaxed) as f64 / took.as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); Case::ALL.len()];
    for _ in 0..ROUNDS {
        for (i, case) in Case::ALL.into_iter().enumerate() {
            samples[i].push(rt.block_on(gets_per_second(case)));
        }
    }
    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        })
        .collect();
    println!(
        "| endpoint ({TASKS} tasks, {} ms per run, median of {ROUNDS}) | gets/s (min–max) | wall time per get | the open breaker's gets/s ÷ these |",
        RUN.as_millis()
    );
    println!("| --- | --- | --- | --- |");
    for (i, case) in Case::ALL.into_iter().enumerate() {
        let s = &samples[i];
        let per_get = Duration::from_secs_f64(1.0 / medians[i]);
        println!(
            "| {} | {:.0} ({:.0}–{:.0}) | {per_get:.2?} | {:.0}× |",
            case.label(),
            medians[i],
            s[0],
            s[s.len() - 1],
            medians[0] / medians[i]
        );
    }
    println!(
        "\nWith the breaker open, a get to a dead endpoint costs {:.0}× less than one that dials \
         the refused port once, and does not wait out the {} ms of backoff that the default \
         retries add to each get.",
        medians[0] / medians[1],
        default_backoff().as_millis()
    );
}
