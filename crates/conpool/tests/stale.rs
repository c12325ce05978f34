//! No stale connection on any path, at the default config: a connection the
//! server closed, or that holds bytes nobody asked for, is never handed out
//! once that close or those bytes have reached this host, whether it comes
//! from idle, from a returning lease straight to a waiter, or back from a
//! waiter that left; and a dial in flight during a clear does not survive
//! it.
//!
//! Several tests here keep the runtime's I/O driver from seeing the event
//! under test: the server runs on threads of its own
//! ([`support::thread_server`]) and the test blocks its runtime's only
//! thread while the server acts, so that the event has reached the kernel
//! and the runtime's readiness flag has not caught up. That is what a busy
//! runtime, which polls its driver only every so many task polls, looks
//! like to a checkout.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Waker};
use std::time::Duration;

use conpool::dial::{Dial, DialError};
use conpool::{BoxFuture, CloseReason, Config, Endpoint, Pool, Stream};
use support::thread_server::{ThreadServer, exchange};
use support::{EchoServer, TlsCert, assert_books_balance, eventually, round_trip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// At the default config, a connection the server closed a moment after it
/// came back (well inside any window) is replaced, not handed out.
async fn closed_a_moment_after_its_return(tls: bool) {
    let cert = TlsCert::localhost();
    let (server, ep, config) = if tls {
        let server = EchoServer::start_tls(&cert).await;
        let ep = server.tls_endpoint();
        (
            server,
            ep,
            Config::builder().tls_config(cert.client_config()),
        )
    } else {
        let server = EchoServer::start().await;
        let ep = server.endpoint();
        (server, ep, Config::builder())
    };
    let pool = Pool::new(config.build().unwrap());
    for round in 0..3 {
        let mut conn = pool.get(&ep).await.unwrap();
        round_trip(&mut conn, b"hello").await.unwrap();
        let dead = conn.id();
        drop(conn);
        server.close_all();
        eventually("the server to close", || server.open() == 0).await;
        let mut next = pool.get(&ep).await.unwrap();
        assert_ne!(next.id(), dead, "round {round}: handed the closed one");
        round_trip(&mut next, b"first try").await.unwrap();
        drop(next);
        server.close_all();
        eventually("the server to close", || server.open() == 0).await;
    }
    let s = pool.stats(&ep);
    // Two closes a round, each found by the next checkout.
    assert_eq!(
        (
            s.total_created,
            s.closed_for(CloseReason::PeerClosed),
            s.errors
        ),
        (6, 5, 0),
        "{s:?}"
    );
}

#[tokio::test]
async fn a_tcp_connection_closed_a_moment_after_its_return_is_not_handed_out() {
    closed_a_moment_after_its_return(false).await;
}

#[tokio::test]
async fn a_tls_connection_closed_a_moment_after_its_return_is_not_handed_out() {
    closed_a_moment_after_its_return(true).await;
}

/// A caller writes a request and gives the connection back without reading
/// the reply (an early return); the reply arrives; the next caller, a
/// moment later, must not read it.
#[tokio::test]
async fn an_unread_reply_never_reaches_the_next_caller() {
    let server = ThreadServer::start();
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    let mut conn = pool.get(&ep).await.unwrap();
    round_trip(&mut conn, b"warm").await.unwrap();
    conn.write_all(b"A's request").await.unwrap();
    let first = conn.id();
    drop(conn);
    // The echo (A's reply) reaches the client, and the runtime sees it.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut next = pool.get(&ep).await.unwrap();
    assert_ne!(
        next.id(),
        first,
        "B was handed the connection holding A's reply"
    );
    next.write_all(b"B").await.unwrap();
    let mut reply = [0u8; 1];
    next.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"B");
    assert_eq!(pool.stats(&ep).closed_for(CloseReason::UnexpectedData), 1);
}

/// The runtime's driver has not run since the server's FIN reached the
/// kernel: its readiness flag still says quiet. At the default config every
/// checkout asks the kernel, which sees the FIN.
#[tokio::test]
async fn a_close_the_runtime_has_not_seen_yet_is_caught_by_asking_the_kernel() {
    let server = ThreadServer::start();
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    let mut conn = pool.get(&ep).await.unwrap();
    exchange(&mut conn, b"hi").await;
    let dead = conn.id();
    drop(conn);
    // Blocks this runtime's only thread past the peek window while the
    // server closes: nothing polls the driver until the get below.
    server.close_all_blocking();
    let mut next = pool.get(&ep).await.unwrap();
    assert_ne!(next.id(), dead, "handed the connection the server closed");
    round_trip(&mut next, b"first try").await.unwrap();
    drop(next);
    let s = assert_books_balance(&pool, &ep, server.addr.port());
    assert_eq!(s.closed_for(CloseReason::PeerClosed), 1, "{s:?}");
}

/// The same for bytes nobody asked for.
#[tokio::test]
async fn stray_bytes_the_runtime_has_not_seen_yet_are_caught_by_asking_the_kernel() {
    let server = ThreadServer::start();
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    let mut conn = pool.get(&ep).await.unwrap();
    exchange(&mut conn, b"hi").await;
    let first = conn.id();
    drop(conn);
    server.write_all_blocking(b"unasked");
    let mut next = pool.get(&ep).await.unwrap();
    assert_ne!(
        next.id(),
        first,
        "handed a connection with stray bytes on it"
    );
    round_trip(&mut next, b"clean").await.unwrap();
    assert_eq!(pool.stats(&ep).closed_for(CloseReason::UnexpectedData), 1);
}

/// With a peek window (an opt-out of the default), a connection idle past
/// it still has the kernel asked.
#[tokio::test]
async fn with_a_peek_window_a_connection_idle_past_it_has_the_kernel_asked() {
    let server = ThreadServer::start();
    let ep = server.endpoint();
    let window = Duration::from_millis(1);
    let pool = Pool::new(
        Config::builder()
            .liveness_peek_after(window)
            .build()
            .unwrap(),
    );
    for round in 0..3 {
        let mut conn = pool.get(&ep).await.unwrap();
        exchange(&mut conn, b"hi").await;
        let dead = conn.id();
        drop(conn);
        server.close_all_blocking();
        std::thread::sleep(window * 2);
        let mut next = pool.get(&ep).await.unwrap();
        assert_ne!(next.id(), dead, "round {round}: handed the closed one");
        round_trip(&mut next, b"first try").await.unwrap();
    }
}

/// A lease returned while a caller waits goes straight to that caller; it
/// is checked, and through the kernel (callers queue when the runtime is
/// busy): the server closed it while its holder sat on it, and the runtime
/// has not seen the close yet.
#[tokio::test]
async fn a_connection_handed_straight_to_a_waiter_is_checked() {
    let server = ThreadServer::start();
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(1)
            .build()
            .unwrap(),
    );
    let mut held = pool.get(&ep).await.unwrap();
    exchange(&mut held, b"before").await;
    let dead = held.id();
    let waiter = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move {
            let mut conn = pool.get(&ep).await.unwrap();
            let first_try = round_trip(&mut conn, b"after").await;
            (conn.id(), conn.is_reused(), first_try)
        })
    };
    eventually("the caller to queue", || pool.stats(&ep).waiting == 1).await;
    server.close_all_blocking();
    // Straight to the queued caller.
    drop(held);
    let (id, reused, first_try) = waiter.await.unwrap();
    assert!(
        id != dead && !reused,
        "the queued caller was handed the connection the server closed"
    );
    first_try.expect("the first round trip");
    let s = assert_books_balance(&pool, &ep, server.addr.port());
    assert_eq!((s.total_created, s.errors), (2, 0), "{s:?}");
}

/// A lease that sat silent past the peek window is returned while a caller
/// waits; the caller leaves just as the connection is granted to it, and
/// gives it back. The mark "ask the kernel next time", set when the lease
/// ended, survives the give-back: the next checkout sees the close the
/// runtime has not.
#[tokio::test(start_paused = true)]
async fn a_grant_given_back_by_a_waiter_that_left_keeps_its_peek_mark() {
    let server = ThreadServer::start();
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(1)
            .connect_timeout(None)
            .acquire_timeout(None)
            .maintenance_interval(None)
            .liveness_peek_after(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let mut held = pool.get(&ep).await.unwrap();
    exchange(&mut held, b"before").await;
    let dead = held.id();
    // Silent for longer than the window.
    tokio::time::advance(Duration::from_secs(2)).await;
    {
        let mut waiter = std::pin::pin!(pool.get(&ep));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(waiter.as_mut().poll(&mut cx).is_pending(), "it queues");
        assert_eq!(pool.stats(&ep).waiting, 1);
        server.close_all_blocking();
        // Granted to the waiter, which leaves before it looks.
        drop(held);
    }
    let mut next = pool.get(&ep).await.unwrap();
    assert_ne!(next.id(), dead, "handed the connection the server closed");
    round_trip(&mut next, b"first try").await.unwrap();
    assert_eq!(pool.stats(&ep).closed_for(CloseReason::PeerClosed), 1);
}

/// A dialer whose dials wait for a permit, counting how many it made.
struct GatedDialer {
    gate: Arc<Semaphore>,
    dials: Arc<AtomicUsize>,
}

impl Dial for GatedDialer {
    fn dial<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
        Box::pin(async move {
            self.gate.acquire().await.unwrap().forget();
            self.dials.fetch_add(1, Ordering::SeqCst);
            let (client, server) = tokio::io::duplex(64);
            // The server half stays open as long as the client's.
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(server);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
            Ok(Stream::custom(client))
        })
    }
}

/// A clear reaches every connection that existed or was being dialed
/// before it returned: a dial that was in flight (to the address the clear
/// was about, say, after a failover) is closed when it ends, and its
/// caller is served by a dial made after the clear.
#[tokio::test]
async fn a_dial_in_flight_during_clear_endpoint_does_not_survive_the_clear() {
    let gate = Arc::new(Semaphore::new(0));
    let dials = Arc::new(AtomicUsize::new(0));
    let pool = Pool::with_dialer(
        Config::default(),
        GatedDialer {
            gate: gate.clone(),
            dials: dials.clone(),
        },
    );
    let ep = Endpoint::new("failover.example", 1).unwrap();
    let caller = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move { pool.get(&ep).await.map(|conn| conn.id()) })
    };
    eventually("the dial to start", || pool.stats(&ep).dialing == 1).await;
    pool.clear_endpoint(&ep);
    gate.add_permits(2);
    caller.await.unwrap().expect("the caller is served");
    assert_eq!(
        dials.load(Ordering::SeqCst),
        2,
        "dialed again after the clear"
    );
    let s = pool.stats(&ep);
    assert_eq!(
        (s.total_created, s.closed_for(CloseReason::Cleared), s.idle),
        (2, 1, 1),
        "{s:?}"
    );
}

/// A connection registered with a runtime that has since shut down can
/// never be read again; a checkout on another runtime closes it and dials
/// a new one.
#[test]
fn a_connection_left_by_a_runtime_that_shut_down_is_not_handed_out() {
    let server = ThreadServer::start();
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime().block_on(async {
        let mut conn = pool.get(&ep).await.unwrap();
        exchange(&mut conn, b"on the first runtime").await;
        conn.id()
    });
    runtime().block_on(async {
        let mut conn = pool.get(&ep).await.unwrap();
        assert_ne!(conn.id(), first, "handed a connection of the dead runtime");
        exchange(&mut conn, b"on the second").await;
    });
    let s = pool.stats(&ep);
    assert_eq!(
        (s.total_created, s.closed_for(CloseReason::ProbeFailed)),
        (2, 1),
        "{s:?}"
    );
}
