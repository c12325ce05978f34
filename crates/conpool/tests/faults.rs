//! Faults between the pool and its servers, injected by the test harness's
//! proxy ([`support::proxy::FaultProxy`]) on real loopback sockets: the
//! server closing or resetting idle connections (TCP and TLS), the server
//! dying and coming back, a black-holed endpoint next to a healthy one, and
//! replies cut or half-closed in the middle of an exchange.
//!
//! Every test ends by checking the books: created − closed = active + idle,
//! the closes by reason add up, and the process holds exactly as many
//! sockets to the proxy as the pool says it has.

mod support;

use std::io;
use std::time::Duration;

use conpool::{CloseReason, Config, ConfigBuilder, Endpoint, Error, Pool, PooledConnection, Stats};
use support::proxy::{Fault, FaultProxy};
use support::{EchoServer, TlsCert, assert_books_balance, eventually, round_trip};
use tokio::task::JoinHandle;

/// A guard against hangs on the real clock: generous, never the point of a
/// test.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// An echo server (TLS or not) behind a fault proxy, the endpoint that
/// reaches it through the proxy, and a config that trusts its certificate.
struct Proxied {
    _echo: EchoServer,
    proxy: FaultProxy,
    ep: Endpoint,
    config: ConfigBuilder,
}

async fn proxied(tls: bool) -> Proxied {
    if tls {
        let cert = TlsCert::localhost();
        let echo = EchoServer::start_tls(&cert).await;
        let proxy = FaultProxy::start(echo.addr).await;
        // The proxy's port, by the name the certificate is valid for.
        let ep = Endpoint::tls("localhost", proxy.port()).unwrap();
        Proxied {
            _echo: echo,
            proxy,
            ep,
            config: Config::builder().tls_config(cert.client_config()),
        }
    } else {
        let echo = EchoServer::start().await;
        let proxy = FaultProxy::start(echo.addr).await;
        let ep = proxy.endpoint();
        Proxied {
            _echo: echo,
            proxy,
            ep,
            config: Config::builder(),
        }
    }
}

/// Leases `n` connections at once (so `n` different ones), each after a
/// successful round trip.
async fn hold(pool: &Pool, ep: &Endpoint, n: usize) -> Vec<PooledConnection> {
    let mut held = Vec::new();
    for i in 0..n {
        let mut conn = pool.get(ep).await.unwrap();
        round_trip(&mut conn, format!("warm {i}").as_bytes())
            .await
            .unwrap();
        held.push(conn);
    }
    held
}

fn closes_add_up(s: &Stats) {
    let by_reason: u64 = CloseReason::ALL.iter().map(|r| s.closed_for(*r)).sum();
    assert_eq!(by_reason, s.total_closed, "closes by reason: {s:?}");
}

#[derive(Clone, Copy, Debug)]
enum Kill {
    /// FIN from the server's side.
    Close,
    /// RST from the server's side.
    Reset,
}

const WARM: usize = 4;

/// The server ends every idle connection; each of the next gets is served
/// a live connection at once: its first round trip succeeds.
async fn idle_connections_killed_by_the_server(tls: bool, kill: Kill) {
    let p = proxied(tls).await;
    let pool = Pool::new(
        p.config
            // The checkout's check is under test, not the background one.
            .maintenance_interval(None)
            .build()
            .unwrap(),
    );
    let warm = hold(&pool, &p.ep, WARM).await;
    let dead: Vec<u64> = warm.iter().map(|c| c.id()).collect();
    drop(warm);
    assert_eq!(pool.stats(&p.ep).idle, WARM);
    p.proxy.wait_accepted(WARM).await;

    match kill {
        Kill::Close => p.proxy.close_all(),
        Kill::Reset => p.proxy.reset_all(),
    }
    p.proxy.wait_open(0).await;

    let mut fresh = Vec::new();
    for i in 0..WARM {
        let mut conn = pool.get(&p.ep).await.expect("the get itself");
        assert!(
            !conn.is_reused() && !dead.contains(&conn.id()),
            "get {i} was handed a connection the server had ended"
        );
        round_trip(&mut conn, format!("first try {i}").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("get {i}: the first round trip failed: {e}"));
        fresh.push(conn);
    }
    drop(fresh);

    let s = assert_books_balance(&pool, &p.ep, p.proxy.port());
    closes_add_up(&s);
    assert_eq!(
        (s.total_created, s.total_closed, s.idle, s.errors),
        (2 * WARM as u64, WARM as u64, WARM, 0),
        "{s:?}"
    );
    let (peer_closed, probe_failed) = (
        s.closed_for(CloseReason::PeerClosed),
        s.closed_for(CloseReason::ProbeFailed),
    );
    match (tls, kill) {
        (false, Kill::Close) => assert_eq!((peer_closed, probe_failed), (WARM as u64, 0)),
        (false, Kill::Reset) => assert_eq!((peer_closed, probe_failed), (0, WARM as u64)),
        // Under TLS a FIN without close_notify reads as a truncation error.
        (true, _) => assert_eq!(peer_closed + probe_failed, WARM as u64, "{s:?}"),
    }
    assert_eq!(p.proxy.accepted(), 2 * WARM);
}

#[tokio::test]
async fn idle_tcp_connections_the_server_closed_are_replaced_on_the_first_try() {
    idle_connections_killed_by_the_server(false, Kill::Close).await;
}

#[tokio::test]
async fn idle_tcp_connections_the_server_reset_are_replaced_on_the_first_try() {
    idle_connections_killed_by_the_server(false, Kill::Reset).await;
}

#[tokio::test]
async fn idle_tls_connections_the_server_closed_are_replaced_on_the_first_try() {
    idle_connections_killed_by_the_server(true, Kill::Close).await;
}

#[tokio::test]
async fn idle_tls_connections_the_server_reset_are_replaced_on_the_first_try() {
    idle_connections_killed_by_the_server(true, Kill::Reset).await;
}

/// The server dies (its port refuses, its connections are reset) and comes
/// back on the same port: meanwhile every get fails with a connection error
/// naming the endpoint after the configured attempts, none is handed a dead
/// connection, and afterwards the pool serves live ones again.
async fn server_dies_and_comes_back(tls: bool) {
    const ATTEMPTS: u32 = 2;
    let p = proxied(tls).await;
    let pool = Pool::new(
        p.config
            .connect_retry_count(ATTEMPTS)
            .connect_retry_delay(Duration::from_millis(10))
            .maintenance_interval(None)
            .build()
            .unwrap(),
    );
    drop(hold(&pool, &p.ep, 3).await);
    p.proxy.wait_accepted(3).await;

    p.proxy.stop();
    p.proxy.reset_all();
    p.proxy.wait_open(0).await;
    let accepted = p.proxy.accepted();
    for i in 0..3 {
        let err = pool
            .get(&p.ep)
            .await
            .map(|c| c.id())
            .expect_err("with the server down a get must fail, not hand out a dead connection");
        match &err {
            Error::ConnectionFailed {
                endpoint,
                attempts,
                source,
                protocol: None,
            } => {
                assert_eq!(endpoint, &p.ep, "get {i}");
                assert_eq!(*attempts, ATTEMPTS, "get {i}");
                assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused, "get {i}");
            }
            other => panic!("get {i}: expected a connection failure, got {other:?}"),
        }
        assert!(err.to_string().contains(&p.ep.to_string()), "{err}");
    }
    assert_eq!(p.proxy.accepted(), accepted, "nothing got through");
    let s = pool.stats(&p.ep);
    assert_eq!(
        (
            s.idle,
            s.active,
            s.closed_for(CloseReason::ProbeFailed),
            s.errors
        ),
        (0, 0, 3, 3),
        "the dead ones closed by the probe, one error per failed dial: {s:?}"
    );

    p.proxy.restart().await;
    // Every lease after the restart is live.
    serve(&pool, &p.ep, 8, 5, "the server is back").await;
    let s = assert_books_balance(&pool, &p.ep, p.proxy.port());
    closes_add_up(&s);
    assert_eq!(s.total_closed, 3, "{s:?}");
    assert_eq!(s.errors, 3, "{s:?}");
    assert_eq!(s.total_created - 3 + s.total_reused, 40, "{s:?}");
}

#[tokio::test]
async fn a_tcp_server_that_dies_and_comes_back() {
    server_dies_and_comes_back(false).await;
}

#[tokio::test]
async fn a_tls_server_that_dies_and_comes_back() {
    server_dies_and_comes_back(true).await;
}

/// `tasks` tasks each do `rounds` get + round trip on `ep`, every one of
/// which must succeed; `what` names the endpoint's state in a failure.
async fn serve(pool: &Pool, ep: &Endpoint, tasks: usize, rounds: usize, what: &'static str) {
    let tasks: Vec<JoinHandle<()>> = (0..tasks)
        .map(|t| {
            let (pool, ep) = (pool.clone(), ep.clone());
            tokio::spawn(async move {
                for i in 0..rounds {
                    let mut conn = pool.get(&ep).await.expect(what);
                    round_trip(&mut conn, format!("{what} {t}.{i}").as_bytes())
                        .await
                        .expect(what);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// A TLS endpoint whose connects are accepted but never answered (the
/// handshake hangs) holds its callers, dialing and waiting; a healthy
/// endpoint served by the same pool, cold at first, meanwhile serves
/// hundreds of round trips. Only then are the stuck callers let go, on a
/// paused clock: each ends with a timeout naming the black-holed endpoint.
#[tokio::test]
async fn a_black_holed_endpoint_does_not_slow_a_healthy_one() {
    let healthy = proxied(false).await;
    let hole = proxied(true).await;
    hole.proxy.set_mode(Fault::BlackHole);
    let pool = Pool::new(
        hole.config
            .max_connections_per_endpoint(2)
            .connect_retry_count(1)
            // Long enough never to fire on the real clock during the test.
            .connect_timeout(Duration::from_secs(600))
            .acquire_timeout(Duration::from_secs(1200))
            .build()
            .unwrap(),
    );
    let stuck: Vec<JoinHandle<Result<u64, Error>>> = (0..5)
        .map(|_| {
            let (pool, ep) = (pool.clone(), hole.ep.clone());
            tokio::spawn(async move { pool.get(&ep).await.map(|c| c.id()) })
        })
        .collect();
    eventually(
        "two dials into the black hole and three callers queued",
        || {
            let s = pool.stats(&hole.ep);
            s.dialing == 2 && s.waiting == 3 && hole.proxy.accepted() == 2
        },
    )
    .await;

    tokio::time::timeout(
        HANG_GUARD,
        serve(&pool, &healthy.ep, 4, 50, "the healthy endpoint"),
    )
    .await
    .expect("the healthy endpoint kept serving");

    // The black-holed callers are all still stuck.
    assert!(stuck.iter().all(|t| !t.is_finished()));
    let s = pool.stats(&hole.ep);
    assert_eq!((s.dialing, s.waiting, s.total_created), (2, 3, 0), "{s:?}");
    let h = assert_books_balance(&pool, &healthy.ep, healthy.proxy.port());
    assert_eq!(h.total_created + h.total_reused, 200, "{h:?}");
    assert!(h.total_created <= 4, "{h:?}");

    // Now let time run: the handshakes time out, then the next dials and
    // the waits.
    tokio::time::pause();
    for task in stuck {
        let err = task.await.unwrap().expect_err("a black hole serves nobody");
        assert!(err.is_timeout(), "{err}");
        assert_eq!(err.endpoint(), Some(&hole.ep), "{err}");
        assert!(err.to_string().contains(&hole.ep.to_string()), "{err}");
    }
    // Dials outlive the callers that gave up; they time out too.
    eventually("the last dials to time out", || {
        pool.stats(&hole.ep).dialing == 0
    })
    .await;
    let s = assert_books_balance(&pool, &hole.ep, hole.proxy.port());
    assert_eq!(s.total_created, 0, "{s:?}");
    assert_eq!(
        s.errors,
        hole.proxy.accepted() as u64,
        "every dial into the hole (one attempt each) failed: {s:?}"
    );
}

/// A TCP endpoint that accepts but never answers hands out connections
/// whose reads hang: its callers hold all its slots and the rest queue.
/// The healthy endpoint keeps serving; then the queued callers give up
/// with a timeout naming the endpoint, and the leases dropped mid-read are
/// closed, not reused.
#[tokio::test]
async fn a_black_holed_endpoint_holding_all_its_slots_does_not_slow_a_healthy_one() {
    let healthy = proxied(false).await;
    let hole = proxied(false).await;
    hole.proxy.set_mode(Fault::BlackHole);
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(2)
            .acquire_timeout(Duration::from_secs(600))
            .build()
            .unwrap(),
    );
    let holders: Vec<JoinHandle<()>> = (0..2)
        .map(|i| {
            let (pool, ep) = (pool.clone(), hole.ep.clone());
            tokio::spawn(async move {
                let mut conn = pool.get(&ep).await.expect("the connect is accepted");
                let msg = format!("into the void {i}");
                let exchange = round_trip(&mut conn, msg.as_bytes());
                let outcome = tokio::time::timeout(Duration::from_secs(1200), exchange).await;
                assert!(outcome.is_err(), "a black hole never answers");
                // Dropped with its read pending.
            })
        })
        .collect();
    eventually("both slots leased", || pool.stats(&hole.ep).active == 2).await;
    let waiters: Vec<JoinHandle<Result<u64, Error>>> = (0..3)
        .map(|_| {
            let (pool, ep) = (pool.clone(), hole.ep.clone());
            tokio::spawn(async move { pool.get(&ep).await.map(|c| c.id()) })
        })
        .collect();
    eventually("three callers queued", || pool.stats(&hole.ep).waiting == 3).await;

    tokio::time::timeout(
        HANG_GUARD,
        serve(&pool, &healthy.ep, 4, 50, "the healthy endpoint"),
    )
    .await
    .expect("the healthy endpoint kept serving");
    assert!(holders.iter().all(|t| !t.is_finished()));
    assert!(waiters.iter().all(|t| !t.is_finished()));
    let s = pool.stats(&hole.ep);
    assert_eq!((s.active, s.waiting), (2, 3), "{s:?}");
    assert_books_balance(&pool, &healthy.ep, healthy.proxy.port());

    tokio::time::pause();
    for waiter in waiters {
        let err = waiter.await.unwrap().expect_err("no slot ever freed");
        assert!(matches!(err, Error::AcquireTimeout { .. }), "{err}");
        assert_eq!(err.endpoint(), Some(&hole.ep));
        assert!(err.to_string().contains(&hole.ep.to_string()), "{err}");
    }
    for holder in holders {
        holder.await.unwrap();
    }
    let s = assert_books_balance(&pool, &hole.ep, hole.proxy.port());
    closes_add_up(&s);
    assert_eq!(
        (
            s.total_created,
            s.closed_for(CloseReason::Cancelled),
            s.idle
        ),
        (2, 2, 0),
        "{s:?}"
    );
}

/// A reply cut by a reset after a few bytes, on a connection the pool had
/// reused: the lease sees the error, the connection is closed, and the
/// next get dials a fresh one that works.
#[tokio::test]
async fn a_reply_cut_mid_way_closes_the_connection_and_the_next_get_is_fresh() {
    let p = proxied(false).await;
    p.proxy.set_mode(Fault::CutAfter(10));
    let pool = Pool::new(p.config.build().unwrap());

    let mut conn = pool.get(&p.ep).await.unwrap();
    round_trip(&mut conn, b"abcd").await.unwrap();
    let first = conn.id();
    drop(conn);
    // Reused; the proxy delivers 6 of the next 10 bytes, then resets.
    let mut conn = pool.get(&p.ep).await.unwrap();
    assert!(conn.is_reused());
    assert_eq!(conn.id(), first);
    let err = round_trip(&mut conn, b"0123456789").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    drop(conn);
    let s = pool.stats(&p.ep);
    assert_eq!(
        (s.idle, s.closed_for(CloseReason::IoError), s.errors),
        (0, 1, 1),
        "{s:?}"
    );

    p.proxy.set_mode(Fault::Pass);
    let mut conn = pool.get(&p.ep).await.unwrap();
    assert!(!conn.is_reused() && conn.id() != first);
    round_trip(&mut conn, b"a fresh one").await.unwrap();
    drop(conn);
    let s = assert_books_balance(&pool, &p.ep, p.proxy.port());
    closes_add_up(&s);
    assert_eq!((s.total_created, s.total_closed), (2, 1), "{s:?}");
}

/// The server half-closes after its first reply: the lease's next exchange
/// reads end of stream, the connection is closed, and the next get dials a
/// fresh one that works.
#[tokio::test]
async fn a_half_close_mid_exchange_closes_the_connection_and_the_next_get_is_fresh() {
    let p = proxied(false).await;
    p.proxy.set_mode(Fault::HalfClose);
    let pool = Pool::new(p.config.build().unwrap());

    let mut conn = pool.get(&p.ep).await.unwrap();
    round_trip(&mut conn, b"first").await.unwrap();
    let first = conn.id();
    // The request still goes out; the reply never comes, the stream ends.
    let err = round_trip(&mut conn, b"second").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    drop(conn);
    let s = pool.stats(&p.ep);
    assert_eq!(
        (s.idle, s.closed_for(CloseReason::PeerClosed)),
        (0, 1),
        "{s:?}"
    );

    p.proxy.set_mode(Fault::Pass);
    let mut conn = pool.get(&p.ep).await.unwrap();
    assert!(!conn.is_reused() && conn.id() != first);
    round_trip(&mut conn, b"a fresh one").await.unwrap();
    drop(conn);
    let s = assert_books_balance(&pool, &p.ep, p.proxy.port());
    closes_add_up(&s);
    assert_eq!(
        (s.total_created, s.total_closed, s.errors),
        (2, 1, 0),
        "{s:?}"
    );
}

/// At the default config every checkout is checked, a connection handed
/// straight from a returning lease to a queued caller included: the server
/// reset it while its holder sat on it without I/O, and the queued caller
/// gets a live connection, not the dead one.
#[tokio::test]
async fn a_connection_handed_straight_to_a_waiter_is_checked_at_the_default_config() {
    let p = proxied(false).await;
    let pool = Pool::new(
        p.config
            .max_connections_per_endpoint(1)
            .maintenance_interval(None)
            .build()
            .unwrap(),
    );
    let mut held = pool.get(&p.ep).await.unwrap();
    round_trip(&mut held, b"before").await.unwrap();
    let dead = held.id();
    p.proxy.wait_accepted(1).await;
    p.proxy.reset_all();
    p.proxy.wait_open(0).await;

    let waiter = {
        let (pool, ep) = (pool.clone(), p.ep.clone());
        tokio::spawn(async move {
            let mut conn = pool.get(&ep).await.unwrap();
            let first_try = round_trip(&mut conn, b"after").await;
            (conn.id(), conn.is_reused(), first_try)
        })
    };
    eventually("the caller to queue", || pool.stats(&p.ep).waiting == 1).await;
    // Straight to the queued caller.
    drop(held);
    let (id, reused, first_try) = waiter.await.unwrap();
    assert!(
        id != dead && !reused,
        "the queued caller was handed the connection the server reset"
    );
    first_try.expect("the first round trip");

    let s = assert_books_balance(&pool, &p.ep, p.proxy.port());
    closes_add_up(&s);
    assert_eq!(
        (
            s.total_created,
            s.closed_for(CloseReason::ProbeFailed),
            s.errors
        ),
        (2, 1, 0),
        "{s:?}"
    );
}
