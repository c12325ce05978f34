//! An overloaded endpoint: what a queued get, a cancelled one and a
//! deadline cost as the queue grows.
//!
//! One endpoint with room for one connection, held for the whole run, so
//! that every get queues. [`waiter_costs`] queues `n` gets, then measures
//! three things per caller: queuing it (a get polled once), cancelling it
//! (its future dropped, in a seeded random order, so that a queue that
//! searched for the leaver would pay for its length), and failing it at its
//! deadline (each caller queued a millisecond, the timer's resolution, after
//! the one before, so that the sweeper wakes once per caller). A queue whose work per caller does
//! not grow with its length shows the same figures at 100 callers and at
//! 10,000.
//!
//! Time is tokio's paused clock, so that the deadlines fall where they are
//! put; the figures are wall time. (This is an example of the library
//! rather than part of the bench crate because the paused clock needs
//! tokio's `test-util`, which would slow every clock read of the other
//! benchmarks.)
//!
//! ```text
//! cargo run --release -p conpool --example waiters
//! ```
//!
//! It prints one line per queue length, and `--json` prints the figures as
//! one JSON array, which `scripts/bench` puts into BENCHMARKS.md.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use conpool::dial::{Dial, DialError};
use conpool::{BoxFuture, Config, Endpoint, Error, Pool, PooledConnection, Stream};

/// In-memory connections whose other halves are kept open.
#[derive(Default)]
struct MemDialer(std::sync::Mutex<Vec<tokio::io::DuplexStream>>);

impl Dial for MemDialer {
    fn dial<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
        let (client, server) = tokio::io::duplex(64);
        self.0.lock().expect("not poisoned").push(server);
        Box::pin(std::future::ready(Ok(Stream::custom(client))))
    }
}

/// Nanoseconds per caller, for a queue of `n` callers.
#[derive(Clone, Copy, Debug)]
struct WaiterCosts {
    /// Queuing a get (its first poll).
    enqueue: f64,
    /// Dropping a queued get.
    cancel: f64,
    /// Failing a queued get at its deadline (the sweeper's share).
    expire: f64,
}

type Get = Pin<Box<dyn Future<Output = Result<PooledConnection, Error>> + Send>>;

/// Measures [`WaiterCosts`] with `n` callers queued.
fn waiter_costs(n: usize) -> WaiterCosts {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let timeout = Duration::from_secs(24 * 3600);
        let pool = Pool::with_dialer(
            Config::builder()
                .max_connections_per_endpoint(1)
                .acquire_timeout(timeout)
                .maintenance_interval(None)
                .build()
                .expect("a valid config"),
            MemDialer::default(),
        );
        let ep = Endpoint::new("queue.bench", 1).expect("a valid endpoint");
        let held = pool.get(&ep).await.expect("the one connection");
        let mut cx = Context::from_waker(Waker::noop());

        // Queue, then cancel in a scrambled order.
        let (gets, enqueue) = queue(&pool, &ep, n, &mut cx, None).await;
        let mut order: Vec<usize> = (0..n).collect();
        scramble(&mut order);
        let mut gets: Vec<Option<Get>> = gets.into_iter().map(Some).collect();
        let started = Instant::now();
        for i in order {
            drop(gets[i].take());
        }
        let cancel = per(started.elapsed(), n);
        assert_eq!(pool.stats(&ep).waiting, 0, "every caller left");

        // Queue a millisecond apart (the timer's resolution), then let
        // every deadline pass, one by one.
        let step = Duration::from_millis(1);
        let (mut gets, _) = queue(&pool, &ep, n, &mut cx, Some(step)).await;
        tokio::time::advance(timeout - step * n as u32).await;
        let started = Instant::now();
        for _ in 0..n {
            tokio::time::advance(step).await;
        }
        let expire = per(started.elapsed(), n);
        // The sweeper's last round runs once this task yields.
        tokio::time::sleep(step).await;
        for get in &mut gets {
            assert!(
                matches!(get.as_mut().poll(&mut cx), std::task::Poll::Ready(Err(_))),
                "every caller timed out"
            );
        }
        drop(held);
        WaiterCosts {
            enqueue,
            cancel,
            expire,
        }
    })
}

/// Queues `n` gets, `apart` from each other on tokio's clock, and returns
/// them with the wall time each took to queue.
async fn queue(
    pool: &Pool,
    ep: &Endpoint,
    n: usize,
    cx: &mut Context<'_>,
    apart: Option<Duration>,
) -> (Vec<Get>, f64) {
    let mut gets: Vec<Get> = Vec::with_capacity(n);
    let mut spent = Duration::ZERO;
    for _ in 0..n {
        if let Some(apart) = apart {
            tokio::time::advance(apart).await;
        }
        let (pool, ep) = (pool.clone(), ep.clone());
        let mut get: Get = Box::pin(async move { pool.get(&ep).await });
        let started = Instant::now();
        assert!(get.as_mut().poll(cx).is_pending(), "every get queues");
        spent += started.elapsed();
        gets.push(get);
    }
    (gets, per(spent, n))
}

fn per(took: Duration, n: usize) -> f64 {
    took.as_nanos() as f64 / n as f64
}

/// A fixed shuffle (splitmix64-driven Fisher–Yates), the same every run.
fn scramble(order: &mut [usize]) {
    let mut state = 0x5eed_u64;
    for i in (1..order.len()).rev() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        order.swap(i, (z % (i as u64 + 1)) as usize);
    }
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let rows: Vec<(usize, WaiterCosts)> = [100, 1_000, 10_000]
        .into_iter()
        .map(|n| (n, waiter_costs(n)))
        .collect();
    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|(n, c)| {
                format!(
                    "{{\"queued\":{n},\"enqueue_ns\":{:.0},\"cancel_ns\":{:.0},\"expire_ns\":{:.0}}}",
                    c.enqueue, c.cancel, c.expire
                )
            })
            .collect();
        println!("[{}]", items.join(","));
        return;
    }
    println!("callers queued | queue one | cancel one | time one out");
    for (n, c) in rows {
        println!(
            "{n:>14} | {:>6.0} ns | {:>7.0} ns | {:>9.0} ns",
            c.enqueue, c.cancel, c.expire
        );
    }
}
