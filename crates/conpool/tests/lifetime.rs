//! The pool's own lifetime and that of its background work: used outside a
//! runtime and from one runtime after another, with durations as long as
//! `Duration::MAX`, and kept alive (or not) by hooks that refer to it.

mod support;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use conpool::dial::{Dial, DialError};
use conpool::{
    BoxFuture, CloseReason, Config, ConfigBuilder, Endpoint, Error, Pool, Stream, WeakPool,
};
use support::{EchoServer, eventually};
use tokio::io::DuplexStream;
use tokio::runtime::Runtime;

/// A dialer of in-memory streams whose server halves it keeps (so that no
/// connection depends on a runtime, or sees its peer go), counting dials;
/// `refusing` fails every dial instead.
#[derive(Clone, Default)]
struct MemoryDialer {
    halves: Arc<Mutex<Vec<DuplexStream>>>,
    dials: Arc<AtomicUsize>,
    refusing: bool,
}

impl MemoryDialer {
    fn refusing() -> Self {
        MemoryDialer {
            refusing: true,
            ..MemoryDialer::default()
        }
    }

    fn dials(&self) -> usize {
        self.dials.load(Ordering::SeqCst)
    }
}

impl Dial for MemoryDialer {
    fn dial<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
        Box::pin(async move {
            self.dials.fetch_add(1, Ordering::SeqCst);
            if self.refusing {
                return Err(DialError::connect(
                    std::io::ErrorKind::ConnectionRefused.into(),
                ));
            }
            let (client, server) = tokio::io::duplex(64);
            self.halves.lock().unwrap().push(server);
            Ok(Stream::custom(client))
        })
    }
}

fn endpoint() -> Endpoint {
    Endpoint::new("memory.example", 1).unwrap()
}

/// Evicts after 10 s idle, looking every second.
fn evicting() -> ConfigBuilder {
    Config::builder()
        .max_idle_time(Duration::from_secs(10))
        .maintenance_interval(Duration::from_secs(1))
}

fn paused_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A runtime whose one worker runs its tasks while the test thread does
/// something else (drops another runtime, say).
fn background_runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `future` once, outside any runtime.
fn poll_outside_a_runtime<F: Future>(future: F) -> Poll<F::Output> {
    pin!(future).poll(&mut Context::from_waker(Waker::noop()))
}

/// Waits on the test thread (real time) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("timed out waiting for: {what}");
}

/// One idle connection, made and returned on `runtime`.
fn leave_one_idle(runtime: &Runtime, pool: &Pool, ep: &Endpoint) {
    runtime.block_on(async {
        drop(pool.get(ep).await.unwrap());
    });
    assert_eq!(pool.stats(ep).idle, 1);
}

#[test]
fn the_pool_is_usable_outside_a_runtime_and_a_later_get_on_one_starts_its_maintenance() {
    let dialer = MemoryDialer::default();
    let pool = Pool::with_dialer(
        Config::builder()
            .min_idle_per_endpoint(2)
            .maintenance_interval(Duration::from_secs(1))
            .build()
            .unwrap(),
        dialer.clone(),
    );
    let ep = endpoint();
    let handle = pool.endpoint(&ep).unwrap();
    assert_eq!(pool.stats(&ep).idle, 0);
    assert_eq!(pool.all_stats().len(), 1);
    pool.clear_endpoint(&ep);
    assert!(!pool.is_closed());

    paused_runtime().block_on(async {
        drop(handle.get().await.unwrap());
        // The background task, started by that get, warms a second one.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(handle.stats().idle, 2);
    });
    assert_eq!(dialer.dials(), 2);
}

#[test]
fn maintenance_restarts_on_a_new_runtime_after_the_runtime_that_ran_it_is_dropped() {
    let pool = Pool::with_dialer(evicting().build().unwrap(), MemoryDialer::default());
    let ep = endpoint();
    let first = paused_runtime();
    leave_one_idle(&first, &pool, &ep);
    // Its maintenance task goes with it.
    drop(first);

    paused_runtime().block_on(async {
        // Reused as it is: the fast path starts the task again.
        let conn = pool.get(&ep).await.unwrap();
        assert!(conn.is_reused());
        drop(conn);
        tokio::time::sleep(Duration::from_secs(12)).await;
        let s = pool.stats(&ep);
        assert_eq!((s.idle, s.closed_for(CloseReason::IdleExpired)), (0, 1));
    });
}

#[test]
fn a_get_polled_outside_a_runtime_fails_with_no_runtime_where_it_needs_one_and_never_panics() {
    let pool = Pool::with_dialer(
        Config::builder()
            .max_connections_per_endpoint(1)
            .build()
            .unwrap(),
        MemoryDialer::default(),
    );
    let ep = endpoint();
    // A dial needs a runtime.
    assert!(matches!(
        poll_outside_a_runtime(pool.get(&ep)),
        Poll::Ready(Err(Error::NoRuntime { .. }))
    ));
    let runtime = paused_runtime();
    leave_one_idle(&runtime, &pool, &ep);
    // An idle connection needs none.
    let held = match poll_outside_a_runtime(pool.get(&ep)) {
        Poll::Ready(Ok(conn)) => conn,
        other => panic!(
            "expected the idle connection, got {:?}",
            other.map(|r| r.err())
        ),
    };
    // Waiting with a deadline needs someone to keep it.
    assert!(matches!(
        poll_outside_a_runtime(pool.get(&ep)),
        Poll::Ready(Err(Error::NoRuntime { .. }))
    ));
    drop(held);
    let s = pool.stats(&ep);
    assert_eq!((s.active, s.idle, s.dialing, s.waiting), (0, 1, 0, 0));
}

#[test]
fn a_caller_queued_on_one_runtime_times_out_after_the_runtime_that_kept_the_deadlines_is_gone() {
    let pool = Pool::with_dialer(
        Config::builder()
            .max_connections_per_endpoint(1)
            .acquire_timeout(Duration::from_millis(300))
            .maintenance_interval(None)
            .build()
            .unwrap(),
        MemoryDialer::default(),
    );
    let ep = endpoint();
    let (first, second) = (background_runtime(), background_runtime());
    let held = second.block_on(pool.get(&ep)).unwrap();
    let get = |pool: &Pool| {
        let (pool, ep) = (pool.clone(), ep.clone());
        async move { pool.get(&ep).await.map(drop) }
    };
    // The first caller to queue starts the endpoint's sweeper, on `first`.
    let _queued_first = first.spawn(get(&pool));
    wait_until("the first caller to queue", || pool.stats(&ep).waiting == 1);
    let queued_second = second.spawn(get(&pool));
    wait_until("the second caller to queue", || {
        pool.stats(&ep).waiting == 2
    });
    // The sweeper, and the first caller, go with their runtime.
    drop(first);
    let outcome = second
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), queued_second).await });
    assert!(
        matches!(outcome, Ok(Ok(Err(Error::AcquireTimeout { .. })))),
        "{outcome:?}"
    );
    drop(held);
    assert_eq!(pool.stats(&ep).waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn a_maintenance_interval_of_duration_max_neither_panics_nor_outlives_the_pool() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let pool = Pool::with_dialer(
        Config::builder()
            .maintenance_interval(Duration::MAX)
            .build()
            .unwrap(),
        MemoryDialer::default(),
    );
    let ep = endpoint();
    drop(pool.get(&ep).await.unwrap());
    tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    // The dial's task is done; the maintenance task sleeps on.
    assert_eq!(metrics.num_alive_tasks(), baseline + 1);
    assert_eq!(pool.stats(&ep).idle, 1);
    drop(pool);
    eventually("the maintenance task to end", || {
        metrics.num_alive_tasks() == baseline
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_warm_up_with_duration_max_retry_delay_and_idle_time_backs_off_for_good() {
    let dialer = MemoryDialer::refusing();
    let pool = Pool::with_dialer(
        Config::builder()
            .min_idle_per_endpoint(1)
            .connect_retry_count(1)
            .connect_retry_delay(Duration::MAX)
            .max_idle_time(Duration::MAX)
            .maintenance_interval(Duration::from_secs(1))
            .build()
            .unwrap(),
        dialer.clone(),
    );
    let ep = endpoint();
    let _handle = pool.endpoint(&ep).unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    // One warm-up, then a backoff as long as the config allows.
    assert_eq!(dialer.dials(), 1);
    assert_eq!(pool.stats(&ep).errors, 1);
    // A caller's own dial still runs, and fails as a dial does.
    assert!(matches!(
        pool.get(&ep).await,
        Err(Error::ConnectionFailed { attempts: 1, .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_max_idle_time_of_duration_max_keeps_idle_connections_and_empty_endpoints() {
    let pool = Pool::with_dialer(
        Config::builder()
            .max_idle_time(Duration::MAX)
            .max_connection_lifetime(Duration::MAX)
            .maintenance_interval(Duration::from_secs(3600))
            .build()
            .unwrap(),
        MemoryDialer::default(),
    );
    let ep = endpoint();
    drop(pool.get(&ep).await.unwrap());
    tokio::time::sleep(Duration::from_secs(30 * 24 * 3600)).await;
    let conn = pool.get(&ep).await.unwrap();
    assert!(conn.is_reused(), "never idle too long");
    conn.discard();
    // Empty now, but not for longer than `max_idle_time`: the entry and
    // its counters stay.
    tokio::time::sleep(Duration::from_secs(30 * 24 * 3600)).await;
    let s = pool.stats(&ep);
    assert_eq!((s.total_created, s.total_reused, s.total_closed), (1, 1, 1));
}

#[tokio::test]
async fn a_hook_holding_a_weak_pool_reads_stats_and_dropping_the_last_pool_closes_its_idle_sockets()
{
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let this_pool: Arc<OnceLock<WeakPool>> = Arc::default();
    // What the hook saw at each close: the pool's count of closes, or
    // `None` once the pool was gone.
    let seen: Arc<Mutex<Vec<Option<u64>>>> = Arc::default();
    let config = {
        let (this_pool, seen) = (this_pool.clone(), seen.clone());
        Config::builder()
            .on_connection_closed(move |endpoint, _| {
                let pool = this_pool.get().and_then(WeakPool::upgrade);
                let closed = pool.map(|pool| pool.stats(endpoint).total_closed);
                seen.lock().unwrap().push(closed);
            })
            .build()
            .unwrap()
    };
    let pool = Pool::new(config);
    this_pool.set(pool.downgrade()).unwrap();
    let conns = [
        pool.get(&ep).await.unwrap(),
        pool.get(&ep).await.unwrap(),
        pool.get(&ep).await.unwrap(),
    ];
    let [first, rest @ ..] = conns;
    first.discard();
    drop(rest);
    assert_eq!(pool.stats(&ep).idle, 2);
    assert_eq!(*seen.lock().unwrap(), [Some(1)]);

    drop(pool);
    assert!(this_pool.get().unwrap().upgrade().is_none());
    eventually("the server to see every connection close", || {
        server.open() == 0
    })
    .await;
    assert_eq!(support::client_sockets_to(server.port()), 0);
    assert_eq!(*seen.lock().unwrap(), [Some(1), None, None]);
}
