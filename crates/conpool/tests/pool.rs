//! The pool's core contract against an embedded TCP echo server: reuse,
//! limits, fairness, expiry, health checks, cancellation, clear and close.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conpool::{CloseReason, Config, ConfigBuilder, Endpoint, Error, Pool, Stream};
use support::{
    DeafServer, EchoServer, STALLING_WRITE, assert_books_balance, eventually, round_trip,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Records every close reason the pool reports through its hook.
#[derive(Clone, Default)]
struct Closes(Arc<Mutex<Vec<CloseReason>>>);

impl Closes {
    fn hook(&self, builder: ConfigBuilder) -> ConfigBuilder {
        let log = self.0.clone();
        builder.on_connection_closed(move |_, reason| log.lock().unwrap().push(reason))
    }
    fn take(&self) -> Vec<CloseReason> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A config with no timers, for tests on tokio's paused clock that also
/// do real socket I/O (a paused clock jumps to the next timer whenever the
/// runtime is idle, even while a socket is about to become ready).
///
/// Lifetimes are exact (no jitter) and there is no background task, whose
/// timer the paused clock would jump to.
fn untimed() -> ConfigBuilder {
    Config::builder()
        .connect_timeout(None)
        .acquire_timeout(None)
        .maintenance_interval(None)
        .max_connection_lifetime_jitter(0.0)
}

#[tokio::test]
async fn a_returned_connection_is_reused() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());

    let mut first = pool.get(&ep).await.unwrap();
    assert!(!first.is_reused());
    assert_eq!(first.use_count(), 1);
    round_trip(&mut first, b"one").await.unwrap();
    let id = first.id();
    assert_eq!(pool.stats(&ep).active, 1);
    drop(first);
    assert_eq!(pool.stats(&ep).idle, 1);

    let mut second = pool.get(&ep).await.unwrap();
    assert!(second.is_reused());
    assert_eq!(second.id(), id);
    assert_eq!(second.use_count(), 2);
    assert_eq!(second.endpoint(), &ep);
    round_trip(&mut second, b"two").await.unwrap();
    drop(second);

    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!(
        (s.total_created, s.total_reused, s.idle, s.errors),
        (1, 1, 1, 0)
    );
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn the_most_recently_used_idle_connection_goes_first() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    let a = pool.get(&ep).await.unwrap();
    let b = pool.get(&ep).await.unwrap();
    let (a_id, b_id) = (a.id(), b.id());
    drop(a);
    drop(b);
    assert_eq!(pool.get(&ep).await.unwrap().id(), b_id);
    let first = pool.get(&ep).await.unwrap();
    let second = pool.get(&ep).await.unwrap();
    assert_eq!(first.id(), b_id);
    assert_eq!(second.id(), a_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_with_200_concurrent_tasks() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(5)
            .build()
            .unwrap(),
    );
    let in_use = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));

    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (pool, ep, in_use, peak) = (pool.clone(), ep.clone(), in_use.clone(), peak.clone());
            tokio::spawn(async move {
                let mut conn = pool.get(&ep).await.unwrap();
                let now = in_use.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                assert!(pool.stats(&ep).active <= 5);
                round_trip(&mut conn, format!("task {i}").as_bytes())
                    .await
                    .unwrap();
                in_use.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }

    assert!(
        peak.load(Ordering::SeqCst) <= 5,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert!(
        server.accepted() <= 5,
        "server saw {} connections",
        server.accepted()
    );
    let s = assert_books_balance(&pool, &ep, server.port());
    assert!(s.total_created <= 5);
    assert_eq!(s.total_created + s.total_reused, 200);
}

#[tokio::test]
async fn waiters_are_served_in_arrival_order() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(1)
            .build()
            .unwrap(),
    );
    let held = pool.get(&ep).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));

    let mut tasks = Vec::new();
    for i in 0..10 {
        let (p, e, order) = (pool.clone(), ep.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = p.get(&e).await.unwrap();
            order.lock().unwrap().push(i);
            round_trip(&mut conn, b"x").await.unwrap();
        }));
        // Each task is queued before the next one starts.
        eventually("the task to queue", || pool.stats(&ep).waiting == i + 1).await;
    }
    drop(held);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..10).collect::<Vec<_>>());
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!((s.total_created, s.total_reused), (1, 10));
}

#[tokio::test(start_paused = true)]
async fn a_connection_past_its_lifetime_is_closed_not_reused() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let closes = Closes::default();
    let pool = Pool::new(
        closes
            .hook(
                untimed()
                    .max_connection_lifetime(Duration::from_secs(300))
                    .max_idle_time(Duration::from_secs(1000)),
            )
            .build()
            .unwrap(),
    );
    let first = pool.get(&ep).await.unwrap().id();
    tokio::time::advance(Duration::from_secs(299)).await;
    assert_eq!(
        pool.get(&ep).await.unwrap().id(),
        first,
        "still within its lifetime"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    let conn = pool.get(&ep).await.unwrap();
    assert_ne!(conn.id(), first);
    assert!(!conn.is_reused());
    drop(conn);
    assert_eq!(closes.take(), vec![CloseReason::LifetimeExpired]);
    eventually("the server to see the close", || server.open() == 1).await;
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!((s.total_created, s.total_closed, s.total_reused), (2, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_connection_idle_too_long_is_closed_not_reused() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let closes = Closes::default();
    let pool = Pool::new(
        closes
            .hook(untimed().max_idle_time(Duration::from_secs(60)))
            .build()
            .unwrap(),
    );
    let first = pool.get(&ep).await.unwrap().id();
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(pool.get(&ep).await.unwrap().id(), first);
    // Idle time counts from the last return, not from creation.
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(pool.get(&ep).await.unwrap().id(), first);
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_ne!(pool.get(&ep).await.unwrap().id(), first);
    assert_eq!(closes.take(), vec![CloseReason::IdleExpired]);
    assert_books_balance(&pool, &ep, server.port());
}

#[tokio::test]
async fn a_connection_used_max_times_is_closed_on_return() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let closes = Closes::default();
    let pool = Pool::new(
        closes
            .hook(Config::builder().max_connection_uses(3))
            .build()
            .unwrap(),
    );
    let first = pool.get(&ep).await.unwrap().id();
    assert_eq!(pool.get(&ep).await.unwrap().id(), first);
    let third = pool.get(&ep).await.unwrap();
    assert_eq!((third.id(), third.use_count()), (first, 3));
    drop(third);
    assert_eq!(closes.take(), vec![CloseReason::UsesExhausted]);
    assert_eq!(pool.stats(&ep).idle, 0, "closed on return, not parked idle");
    assert_ne!(pool.get(&ep).await.unwrap().id(), first);
    assert_books_balance(&pool, &ep, server.port());
}

#[tokio::test]
async fn a_failing_health_check_closes_the_connection_and_dials_anew() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let checks = Arc::new(AtomicUsize::new(0));
    let closes = Closes::default();
    let counter = checks.clone();
    let config = closes
        .hook(Config::builder().health_check(move |_: &mut Stream| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            // The first check fails, later ones pass.
            Box::pin(async move { n > 0 })
        }))
        .build()
        .unwrap();
    let pool = Pool::new(config);

    let first = pool.get(&ep).await.unwrap().id();
    assert_eq!(
        checks.load(Ordering::SeqCst),
        0,
        "a new connection is not checked"
    );
    let second = pool.get(&ep).await.unwrap();
    assert_ne!(second.id(), first);
    assert!(!second.is_reused());
    let second_id = second.id();
    drop(second);
    assert_eq!(closes.take(), vec![CloseReason::HealthCheckFailed]);
    let third = pool.get(&ep).await.unwrap();
    assert_eq!(third.id(), second_id, "a passing check lets it be reused");
    assert!(third.is_reused());
    assert_eq!(checks.load(Ordering::SeqCst), 2);
    drop(third);
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!((s.total_created, s.total_closed, s.total_reused), (2, 1, 1));
}

#[tokio::test]
async fn the_health_check_can_talk_to_the_server() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .health_check(|stream: &mut Stream| {
                Box::pin(async move { round_trip(stream, b"ping").await.is_ok() })
            })
            .build()
            .unwrap(),
    );
    let first = pool.get(&ep).await.unwrap().id();
    let again = pool.get(&ep).await.unwrap();
    assert_eq!(again.id(), first);
    assert!(again.is_reused());
}

#[tokio::test]
async fn cancelling_a_waiting_get_leaks_no_slot() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(1)
            .build()
            .unwrap(),
    );
    let held = pool.get(&ep).await.unwrap();

    let waiter = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move { pool.get(&ep).await.map(|_| ()) })
    };
    eventually("the get to queue", || pool.stats(&ep).waiting == 1).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    assert_eq!(pool.stats(&ep).waiting, 0);

    // A get dropped at its first poll, and one cancelled by a timeout.
    drop(pool.get(&ep));
    assert!(
        tokio::time::timeout(Duration::from_millis(20), pool.get(&ep))
            .await
            .is_err()
    );
    assert_eq!(pool.stats(&ep).waiting, 0);

    let held_id = held.id();
    drop(held);
    let again = pool.get(&ep).await.unwrap();
    assert_eq!(again.id(), held_id, "the slot and its connection came back");
    drop(again);
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!((s.total_created, s.idle), (1, 1));
}

#[tokio::test]
async fn a_grant_sent_to_a_waiter_that_left_goes_to_the_next() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(1)
            .build()
            .unwrap(),
    );
    let held = pool.get(&ep).await.unwrap();
    let held_id = held.id();

    // First waiter: polled once (queued), then dropped only after the
    // connection was handed to it.
    let mut first = Box::pin(pool.get(&ep));
    assert!(futures_poll_once(first.as_mut()).await.is_none());
    let second = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move { pool.get(&ep).await.unwrap().id() })
    };
    eventually("both to queue", || pool.stats(&ep).waiting == 2).await;
    drop(held); // handed to `first`, which never looks at it
    drop(first); // gives it back: it goes to `second`
    assert_eq!(second.await.unwrap(), held_id);
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!((s.total_created, s.active, s.idle), (1, 0, 1));
}

#[tokio::test]
async fn a_get_dropped_after_its_dial_finished_leaks_nothing() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(1)
            .build()
            .unwrap(),
    );
    // Polled once: its dial starts in a task of its own.
    let mut get = Box::pin(pool.get(&ep));
    assert!(futures_poll_once(get.as_mut()).await.is_none());
    // The dial finishes and the new connection waits for the get, which
    // is dropped without looking. (Found by tests/contract_fuzz.rs, seed 8.)
    eventually("the dial to finish", || pool.stats(&ep).dialing == 0).await;
    drop(get);
    let s = pool.stats(&ep);
    assert_eq!(
        (s.active, s.idle, s.total_closed),
        (0, 1, 0),
        "the connection goes to the pool: {s:?}"
    );
    let conn = pool.get(&ep).await.unwrap();
    assert!(conn.is_reused());
    drop(conn);
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!((s.total_created, s.total_reused), (1, 1));
}

/// Polls a future once; `Some` if it finished.
async fn futures_poll_once<F: Future>(fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut fut = Some(fut);
    std::future::poll_fn(move |cx| {
        let f = fut.take().unwrap();
        std::task::Poll::Ready(match f.poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test]
async fn a_lease_dropped_mid_read_is_closed_not_reused() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let closes = Closes::default();
    let pool = Pool::new(closes.hook(Config::builder()).build().unwrap());
    let mut conn = pool.get(&ep).await.unwrap();
    let id = conn.id();
    let mut buf = [0u8; 16];
    // Nothing was sent, so the read stays pending until cancelled.
    assert!(
        tokio::time::timeout(Duration::from_millis(10), conn.read(&mut buf))
            .await
            .is_err()
    );
    drop(conn);
    assert_eq!(closes.take(), vec![CloseReason::Cancelled]);
    let next = pool.get(&ep).await.unwrap();
    assert_ne!(next.id(), id);
    drop(next);
    eventually("the server to see the close", || server.open() == 1).await;
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!((s.total_closed, s.errors), (1, 1));
}

/// A write cut off by a timeout, half sent, then a flush (ready at once on
/// TCP, where nothing is buffered above the socket) and a completed read:
/// the connection still carries half a request and must not be reused.
#[tokio::test]
async fn a_flush_or_read_after_a_cut_off_write_does_not_make_the_connection_reusable() {
    let server = DeafServer::start().await;
    let ep = server.endpoint();
    let closes = Closes::default();
    let pool = Pool::new(closes.hook(Config::builder()).build().unwrap());
    let mut conn = pool.get(&ep).await.unwrap();
    let id = conn.id();
    let request = vec![b'x'; STALLING_WRITE];
    assert!(
        tokio::time::timeout(Duration::from_millis(100), conn.write_all(&request))
            .await
            .is_err(),
        "the server reads nothing, so the write cannot finish"
    );
    conn.flush().await.unwrap();
    let mut greeting = [0u8; DeafServer::GREETING.len()];
    conn.read_exact(&mut greeting).await.unwrap();
    drop(conn);
    assert_eq!(closes.take(), vec![CloseReason::Cancelled]);
    let next = pool.get(&ep).await.unwrap();
    assert_ne!(next.id(), id, "a new connection, not the half-written one");
    let s = pool.stats(&ep);
    assert_eq!((s.total_created, s.total_reused), (2, 0), "{s:?}");
}

/// A write that blocks (the peer reads slowly) and is resumed with the
/// same bytes until it completes, as `write_all` does, finishes the
/// exchange: the connection is reused. Over loopback TCP against the echo
/// server, with 8 MiB (more than the socket buffers hold, so the write
/// returns `Pending` on the way) read back as it is echoed.
#[tokio::test]
async fn a_write_that_blocked_and_was_resumed_to_the_end_leaves_the_connection_reusable() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    let mut conn = pool.get(&ep).await.unwrap();
    let id = conn.id();
    let request = vec![b'y'; 8 << 20];
    let (mut reader, mut writer) = tokio::io::split(&mut conn);
    let read_back = async {
        let mut back = vec![0u8; request.len()];
        reader.read_exact(&mut back).await.map(|_| back)
    };
    let (written, back) = tokio::join!(writer.write_all(&request), read_back);
    written.unwrap();
    assert!(back.unwrap() == request, "the echo came back whole");
    drop(conn);
    let next = pool.get(&ep).await.unwrap();
    assert_eq!(next.id(), id, "the same connection, reused");
    let s = pool.stats(&ep);
    assert_eq!((s.total_created, s.total_closed), (1, 0), "{s:?}");
}

#[tokio::test]
async fn a_cancelled_request_never_hands_its_reply_to_the_next_caller() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(1)
            .build()
            .unwrap(),
    );
    // A request whose task is aborted half-way through reading its reply:
    // the read of 100 bytes got the 11 echoed so far and waits for more.
    let task = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move {
            let mut conn = pool.get(&ep).await.unwrap();
            use tokio::io::AsyncWriteExt;
            conn.write_all(b"stale reply").await.unwrap();
            let mut buf = [0u8; 100];
            conn.read_exact(&mut buf).await.unwrap();
        })
    };
    eventually("the request to be in flight", || {
        pool.stats(&ep).active == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    task.abort();
    let _ = task.await;
    let mut conn = pool.get(&ep).await.unwrap();
    round_trip(&mut conn, b"fresh").await.unwrap();
}

#[tokio::test]
async fn a_panic_while_holding_a_lease_closes_the_connection() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let closes = Closes::default();
    let pool = Pool::new(closes.hook(Config::builder()).build().unwrap());
    let task = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move {
            let _conn = pool.get(&ep).await.unwrap();
            panic!("the caller fails while holding a lease");
        })
    };
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(closes.take(), vec![CloseReason::Panicked]);
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!(
        (s.total_created, s.total_closed, s.errors, s.idle),
        (1, 1, 1, 0)
    );
}

#[tokio::test]
async fn a_peer_close_seen_by_the_lease_closes_the_connection() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let closes = Closes::default();
    let pool = Pool::new(closes.hook(Config::builder()).build().unwrap());
    let mut conn = pool.get(&ep).await.unwrap();
    server.close_all();
    let mut buf = [0u8; 8];
    assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
    drop(conn);
    assert_eq!(closes.take(), vec![CloseReason::PeerClosed]);
    assert_books_balance(&pool, &ep, server.port());
}

#[tokio::test]
async fn discard_and_with_connection_errors_close_the_connection() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let closes = Closes::default();
    let pool = Pool::new(closes.hook(Config::builder()).build().unwrap());

    pool.get(&ep).await.unwrap().discard();
    assert_eq!(closes.take(), vec![CloseReason::Discarded]);

    let echoed = pool
        .with_connection(&ep, async |conn| {
            round_trip(conn, b"ok").await?;
            Ok::<_, std::io::Error>(conn.id())
        })
        .await
        .unwrap();
    assert_eq!(pool.stats(&ep).idle, 1, "Ok returns the connection");
    let failed: Result<(), std::io::Error> = pool
        .with_connection(&ep, async |conn| {
            assert_eq!(conn.id(), echoed);
            Err(std::io::Error::other("protocol error"))
        })
        .await;
    assert_eq!(failed.unwrap_err().to_string(), "protocol error");
    assert_eq!(closes.take(), vec![CloseReason::Discarded]);
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!(
        (s.total_created, s.total_closed, s.idle, s.errors),
        (2, 2, 0, 0)
    );
}

#[tokio::test]
async fn clear_endpoint_closes_idle_now_and_leases_on_return() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let other = EchoServer::start().await;
    let other_ep = other.endpoint();
    let closes = Closes::default();
    let pool = Pool::new(closes.hook(Config::builder()).build().unwrap());
    let a = pool.get(&ep).await.unwrap();
    let b = pool.get(&ep).await.unwrap();
    let leased = pool.get(&ep).await.unwrap();
    drop((a, b));
    drop(pool.get(&other_ep).await.unwrap());

    pool.clear_endpoint(&ep);
    assert_eq!(
        closes.take(),
        vec![CloseReason::Cleared, CloseReason::Cleared]
    );
    let s = pool.stats(&ep);
    assert_eq!((s.idle, s.active, s.total_closed), (0, 1, 2));
    assert_eq!(
        pool.stats(&other_ep).idle,
        1,
        "other endpoints are untouched"
    );

    let leased_id = leased.id();
    drop(leased);
    assert_eq!(closes.take(), vec![CloseReason::Cleared]);
    let fresh = pool.get(&ep).await.unwrap();
    assert_ne!(fresh.id(), leased_id);
    drop(fresh);
    eventually("the server to see the closes", || server.open() == 1).await;
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!((s.total_created, s.total_closed, s.idle), (4, 3, 1));
    pool.clear_endpoint(&Endpoint::new("127.0.0.1", 1).unwrap()); // unknown: no-op
}

#[tokio::test]
async fn close_closes_idle_fails_waiters_and_new_gets_and_closes_leases_on_return() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let closes = Closes::default();
    let pool = Pool::new(
        closes
            .hook(Config::builder().max_connections_per_endpoint(2))
            .build()
            .unwrap(),
    );
    let idle = pool.get(&ep).await.unwrap();
    let leased = pool.get(&ep).await.unwrap();
    drop(idle);
    let held = pool.get(&ep).await.unwrap();
    let waiter = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move { pool.get(&ep).await.map(|_| ()) })
    };
    eventually("the get to queue", || pool.stats(&ep).waiting == 1).await;

    pool.close().await;
    assert!(pool.is_closed());
    assert!(matches!(waiter.await.unwrap(), Err(Error::PoolClosed)));
    let err = pool.get(&ep).await.unwrap_err();
    assert_eq!(err.to_string(), "the connection pool is closed");
    let other = Endpoint::new("127.0.0.1", 9).unwrap();
    assert!(matches!(pool.get(&other).await, Err(Error::PoolClosed)));

    drop((leased, held));
    assert_eq!(closes.take().len(), 2, "both leases closed on return");
    eventually("the server to see every close", || server.open() == 0).await;
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!(
        (s.active, s.idle, s.total_created, s.total_closed),
        (0, 0, 2, 2)
    );
    pool.close().await; // idempotent
}

#[tokio::test]
async fn dropping_the_last_pool_handle_closes_idle_connections() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    drop(pool.get(&ep).await.unwrap());
    assert_eq!(support::client_sockets_to(server.port()), 1);
    drop(pool);
    assert_eq!(support::client_sockets_to(server.port()), 0);
}

#[tokio::test]
async fn hooks_see_created_reused_and_closed() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let events = Arc::new(Mutex::new(Vec::new()));
    let (c, r, x) = (events.clone(), events.clone(), events.clone());
    let pool = Pool::new(
        Config::builder()
            .on_connection_created(move |e| c.lock().unwrap().push(format!("created {e}")))
            .on_connection_reused(move |e| r.lock().unwrap().push(format!("reused {e}")))
            .on_connection_closed(move |e, why| x.lock().unwrap().push(format!("closed {e} {why}")))
            .build()
            .unwrap(),
    );
    drop(pool.get(&ep).await.unwrap());
    pool.get(&ep).await.unwrap().discard();
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            format!("created {ep}"),
            format!("reused {ep}"),
            format!("closed {ep} discarded")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn acquire_timeout_names_the_endpoint_and_its_state() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        untimed()
            .max_connections_per_endpoint(1)
            .acquire_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    );
    let _held = pool.get(&ep).await.unwrap();
    let err = pool.get(&ep).await.unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(
        err.to_string(),
        format!(
            "no connection to {ep} within 2s (the endpoint had 1 active, 0 idle, 0 dialing, 0 waiting)"
        )
    );
    assert_eq!(pool.stats(&ep).waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn each_waiter_times_out_at_its_own_deadline() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        untimed()
            .max_connections_per_endpoint(1)
            .acquire_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    );
    let held = pool.get(&ep).await.unwrap();
    let start = tokio::time::Instant::now();
    let timed = |pool: Pool, ep: Endpoint| async move {
        let outcome = pool.get(&ep).await.map(drop);
        (outcome, start.elapsed())
    };
    let first = tokio::spawn(timed(pool.clone(), ep.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = tokio::spawn(timed(pool.clone(), ep.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let third = tokio::spawn(timed(pool.clone(), ep.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.stats(&ep).waiting, 3);

    let (outcome, at) = first.await.unwrap();
    assert!(outcome.unwrap_err().is_timeout());
    assert_eq!(at, Duration::from_secs(2));
    let (outcome, at) = second.await.unwrap();
    assert!(outcome.unwrap_err().is_timeout());
    assert_eq!(at, Duration::from_millis(2500));
    // The third is served before its deadline: the lease comes back.
    drop(held);
    let (outcome, at) = third.await.unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(at, Duration::from_millis(2500));
    assert_eq!(pool.stats(&ep).waiting, 0);
}

#[tokio::test]
async fn config_validation_refuses_bad_values() {
    let cases: Vec<(ConfigBuilder, &str)> = vec![
        (
            Config::builder().max_connections_per_endpoint(0),
            "invalid config: max_connections_per_endpoint is 0; it must be at least 1",
        ),
        (
            Config::builder().max_idle_time(Duration::ZERO),
            "invalid config: max_idle_time is 0s; it must be above zero",
        ),
        (
            Config::builder().max_connection_lifetime(Duration::ZERO),
            "invalid config: max_connection_lifetime is 0s; it must be above zero",
        ),
        (
            Config::builder().max_connection_uses(0),
            "invalid config: max_connection_uses is 0; it must be at least 1 (or None for unlimited)",
        ),
        (
            Config::builder().connect_timeout(Duration::ZERO),
            "invalid config: connect_timeout is 0s; it must be above zero (or None for the OS's own timeout)",
        ),
        (
            Config::builder().connect_retry_count(0),
            "invalid config: connect_retry_count is 0; it must be from 1 to 32 attempts",
        ),
        (
            Config::builder().connect_retry_count(33),
            "invalid config: connect_retry_count is 33; it must be from 1 to 32 attempts",
        ),
        (
            Config::builder().acquire_timeout(Duration::ZERO),
            "invalid config: acquire_timeout is 0s; it must be above zero (or None to wait without bound)",
        ),
    ];
    for (builder, expected) in cases {
        let err = builder.build().unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }));
        assert_eq!(err.to_string(), expected);
    }
    let d = Config::default();
    assert_eq!(d.max_connections_per_endpoint(), 10);
    assert_eq!(d.max_idle_time(), Duration::from_secs(60));
    assert_eq!(d.max_connection_lifetime(), Duration::from_secs(300));
    assert_eq!(d.max_connection_uses(), None);
    assert_eq!(d.connect_timeout(), Some(Duration::from_secs(10)));
    assert_eq!(d.connect_retry_count(), 3);
    assert_eq!(d.connect_retry_delay(), Duration::from_millis(100));
    assert_eq!(d.acquire_timeout(), Some(Duration::from_secs(30)));
    // None is accepted where the field is optional.
    let c = Config::builder()
        .connect_timeout(None)
        .acquire_timeout(None)
        .max_connection_uses(None)
        .build()
        .unwrap();
    assert_eq!(
        (
            c.connect_timeout(),
            c.acquire_timeout(),
            c.max_connection_uses()
        ),
        (None, None, None)
    );
}
