//! Reuse you can trust: the liveness check, background maintenance, bounded
//! waiting, the dial cap, dials that outlive their caller, leak warnings.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conpool::dial::{Dial, DialError};
use conpool::{BoxFuture, CloseReason, Config, ConfigBuilder, Endpoint, Error, Pool, Stream};
use support::{EchoServer, TlsCert, assert_books_balance, eventually, round_trip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// The default config: every checkout is checked for liveness.
fn probing() -> ConfigBuilder {
    Config::builder()
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_never_handed_out() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(probing().build().unwrap());
    for round in 0..5 {
        let mut conn = pool.get(&ep).await.unwrap();
        round_trip(&mut conn, b"hello").await.unwrap();
        drop(conn);
        server.close_all();
        eventually("the server to close", || server.open() == 0).await;
        // The first try works: the dead one is found and replaced.
        let mut conn = pool.get(&ep).await.unwrap();
        assert!(!conn.is_reused(), "round {round}");
        round_trip(&mut conn, b"again").await.unwrap();
        drop(conn);
        server.close_all();
        eventually("the server to close", || server.open() == 0).await;
    }
    let mut conn = pool.get(&ep).await.unwrap();
    round_trip(&mut conn, b"last").await.unwrap();
    drop(conn);
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!(s.closed_for(CloseReason::PeerClosed), 10);
    assert_eq!(s.total_created, 11);
}

#[tokio::test]
async fn stray_bytes_on_an_idle_connection_get_it_closed() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(probing().build().unwrap());
    let mut conn = pool.get(&ep).await.unwrap();
    // A caller that reads only part of its reply and returns the
    // connection: the rest of the reply is left on the socket.
    conn.write_all(b"a long reply").await.unwrap();
    let mut first = [0u8; 1];
    conn.read_exact(&mut first).await.unwrap();
    drop(conn);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut next = pool.get(&ep).await.unwrap();
    assert!(!next.is_reused());
    round_trip(&mut next, b"clean").await.unwrap();
    drop(next);
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!(s.closed_for(CloseReason::UnexpectedData), 1);
}

#[tokio::test]
async fn with_the_liveness_check_off_a_closed_connection_is_handed_out() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(Config::builder().liveness_check(false).build().unwrap());
    let first = pool.get(&ep).await.unwrap().id();
    server.close_all();
    eventually("the server to close", || server.open() == 0).await;
    // Not checked: the caller gets the dead connection and sees the close.
    let mut conn = pool.get(&ep).await.unwrap();
    assert_eq!(conn.id(), first);
    let mut buf = [0u8; 1];
    assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_lease_held_silent_past_the_peek_window_is_checked_at_its_next_checkout() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .connect_timeout(None)
            .acquire_timeout(None)
            .maintenance_interval(None)
            .liveness_peek_after(Duration::from_millis(500))
            .build()
            .unwrap(),
    );
    let mut conn = pool.get(&ep).await.unwrap();
    round_trip(&mut conn, b"hi").await.unwrap();
    // Held without I/O for longer than the window while the server closes
    // it, then returned: it was idle for no time at all, but silent for
    // two seconds.
    server.close_all();
    eventually("the server to close", || server.open() == 0).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    drop(conn);
    let mut next = pool.get(&ep).await.unwrap();
    assert!(
        !next.is_reused(),
        "the dead connection was probed and replaced"
    );
    round_trip(&mut next, b"fresh").await.unwrap();
    drop(next);
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!(s.closed_for(CloseReason::PeerClosed), 1);
}

#[tokio::test]
async fn tls_session_tickets_are_not_stray_data_and_a_tls_close_is_seen() {
    let cert = TlsCert::localhost();
    let server = EchoServer::start_tls(&cert).await;
    let ep = server.tls_endpoint();
    let pool = Pool::new(probing().tls_config(cert.client_config()).build().unwrap());

    // A fresh TLS 1.3 connection whose session tickets arrive after the
    // handshake and have not been read yet.
    let first = pool.get(&ep).await.unwrap();
    assert_eq!(
        first.tls_session().unwrap().protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let first_id = first.id();
    drop(first);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut again = pool.get(&ep).await.unwrap();
    assert_eq!(again.id(), first_id, "tickets must not count as stray data");
    round_trip(&mut again, b"over tls").await.unwrap();
    drop(again);

    server.close_all();
    eventually("the server to close", || server.open() == 0).await;
    let mut fresh = pool.get(&ep).await.unwrap();
    assert_ne!(fresh.id(), first_id);
    round_trip(&mut fresh, b"after close").await.unwrap();
    drop(fresh);
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!(s.closed_for(CloseReason::UnexpectedData), 0);
    assert_eq!(
        s.closed_for(CloseReason::PeerClosed) + s.closed_for(CloseReason::ProbeFailed),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn maintenance_evicts_idle_connections_without_a_checkout() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .connect_timeout(None)
            .max_idle_time(Duration::from_secs(10))
            .maintenance_interval(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    drop(pool.get(&ep).await.unwrap());
    assert_eq!(pool.stats(&ep).idle, 1);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let s = pool.stats(&ep);
    assert_eq!((s.idle, s.closed_for(CloseReason::IdleExpired)), (0, 1));
    eventually("the server to see the close", || server.open() == 0).await;
    assert_eq!(support::client_sockets_to(server.port()), 0);
}

#[tokio::test]
async fn maintenance_evicts_connections_the_server_closed() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .maintenance_interval(Duration::from_millis(20))
            .build()
            .unwrap(),
    );
    drop(pool.get(&ep).await.unwrap());
    server.close_all();
    eventually("maintenance to evict it", || pool.stats(&ep).idle == 0).await;
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!(s.closed_for(CloseReason::PeerClosed), 1);
}

#[tokio::test(start_paused = true)]
async fn maintenance_keeps_min_idle_warm() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .connect_timeout(None)
            .min_idle_per_endpoint(3)
            .maintenance_interval(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    drop(pool.get(&ep).await.unwrap());
    eventually("three warm connections", || pool.stats(&ep).idle == 3).await;
    // Eviction by the server is made good again.
    server.close_all();
    tokio::time::sleep(Duration::from_secs(3)).await;
    eventually("three warm connections again", || {
        pool.stats(&ep).idle == 3 && server.open() == 3
    })
    .await;
    assert_books_balance(&pool, &ep, server.port());
}

#[tokio::test(start_paused = true)]
async fn lifetimes_are_jittered_so_connections_do_not_expire_together() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .connect_timeout(None)
            .acquire_timeout(None)
            .maintenance_interval(None)
            .max_connections_per_endpoint(20)
            .max_idle_time(Duration::from_secs(1000))
            .max_connection_lifetime(Duration::from_secs(100))
            .max_connection_lifetime_jitter(0.2)
            .build()
            .unwrap(),
    );
    let leases: Vec<_> = futures_join(&pool, &ep, 20).await;
    drop(leases);
    // At 90 s some (jitter up to 20 s) but not all have expired.
    tokio::time::advance(Duration::from_secs(90)).await;
    let leases: Vec<_> = futures_join(&pool, &ep, 20).await;
    let reused = leases.iter().filter(|l| l.is_reused()).count();
    assert!(reused > 0 && reused < 20, "{reused} of 20 survived");
    drop(leases);
    let s = pool.stats(&ep);
    assert_eq!(
        s.closed_for(CloseReason::LifetimeExpired),
        20 - reused as u64
    );
}

async fn futures_join(pool: &Pool, ep: &Endpoint, n: usize) -> Vec<conpool::PooledConnection> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(pool.get(ep).await.unwrap());
    }
    out
}

#[tokio::test]
async fn past_max_waiters_get_fails_at_once() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(1)
            .max_waiters_per_endpoint(1)
            .build()
            .unwrap(),
    );
    let held = pool.get(&ep).await.unwrap();
    let waiter = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move { pool.get(&ep).await.map(|c| c.id()) })
    };
    eventually("the waiter to queue", || pool.stats(&ep).waiting == 1).await;
    let err = pool.get(&ep).await.unwrap_err();
    assert!(matches!(err, Error::TooManyWaiters { max_waiters: 1, .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "too many callers waiting for {ep}: the limit is 1 (the endpoint had 1 active, 0 idle, 0 dialing)"
        )
    );
    let held_id = held.id();
    drop(held);
    assert_eq!(waiter.await.unwrap().unwrap(), held_id);
}

/// A dialer whose dials wait for a permit, and which records how many are
/// in flight at once.
#[derive(Clone)]
struct GatedDialer {
    gate: Arc<Semaphore>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
}

impl GatedDialer {
    fn new() -> Self {
        GatedDialer {
            gate: Arc::new(Semaphore::new(0)),
            in_flight: Arc::default(),
            peak: Arc::default(),
            started: Arc::default(),
        }
    }
}

impl Dial for GatedDialer {
    fn dial<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
        Box::pin(async move {
            self.started.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            self.gate.acquire().await.unwrap().forget();
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let (client, server) = tokio::io::duplex(64);
            // The server half lives as long as the test's runtime.
            tokio::spawn(async move {
                let _server = server;
                std::future::pending::<()>().await
            });
            Ok(Stream::custom(client))
        })
    }
}

#[tokio::test]
async fn concurrent_dials_per_endpoint_are_capped() {
    let dialer = GatedDialer::new();
    let pool = Pool::with_dialer(
        Config::builder()
            .max_connections_per_endpoint(50)
            .max_concurrent_dials(3)
            .build()
            .unwrap(),
        dialer.clone(),
    );
    let ep = Endpoint::new("cold.example", 1).unwrap();
    let gets: Vec<_> = (0..40)
        .map(|_| {
            let (pool, ep) = (pool.clone(), ep.clone());
            tokio::spawn(async move { pool.get(&ep).await.map(|c| c.id()) })
        })
        .collect();
    eventually("three dials and the rest queued", || {
        let s = pool.stats(&ep);
        s.dialing == 3 && s.waiting == 37
    })
    .await;
    assert_eq!(dialer.started.load(Ordering::SeqCst), 3);
    dialer.gate.add_permits(1000);
    let mut ids = std::collections::HashSet::new();
    for g in gets {
        ids.insert(g.await.unwrap().unwrap());
    }
    assert!(dialer.peak.load(Ordering::SeqCst) <= 3);
    let s = pool.stats(&ep);
    assert!(s.total_created <= 40 && s.total_created >= 3);
    assert_eq!(s.total_created - s.total_closed, (s.active + s.idle) as u64);
}

#[tokio::test]
async fn a_dial_outlives_the_caller_that_gave_up_and_serves_the_next() {
    let dialer = GatedDialer::new();
    let pool = Pool::with_dialer(Config::default(), dialer.clone());
    let ep = Endpoint::new("slow.example", 1).unwrap();
    let impatient = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move { pool.get(&ep).await.map(|_| ()) })
    };
    eventually("the dial to start", || pool.stats(&ep).dialing == 1).await;
    impatient.abort();
    let _ = impatient.await;
    assert_eq!(pool.stats(&ep).dialing, 1, "the dial goes on");
    dialer.gate.add_permits(1);
    eventually("the connection to land in idle", || {
        pool.stats(&ep).idle == 1
    })
    .await;
    let conn = pool.get(&ep).await.unwrap();
    assert!(conn.is_reused());
    assert_eq!(dialer.started.load(Ordering::SeqCst), 1);
    let s = pool.stats(&ep);
    assert_eq!((s.total_created, s.total_closed, s.dialing), (1, 0, 0));
}

/// Collects everything tracing writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_held_past_the_leak_threshold_is_reported_once_with_its_caller() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dialer = GatedDialer::new();
    dialer.gate.add_permits(10);
    let pool = Pool::with_dialer(
        Config::builder()
            .leak_threshold(Duration::from_secs(5))
            .maintenance_interval(Duration::from_secs(1))
            .build()
            .unwrap(),
        dialer,
    );
    let ep = Endpoint::new("leaky.example", 1).unwrap();
    let short = pool.get(&ep).await.unwrap();
    let (leaked, line) = (pool.get(&ep).await.unwrap(), line!());
    drop(short);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("leak_threshold"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("leaky.example:1"), "{}", warnings[0]);
    assert!(
        warnings[0].contains(&format!("reliability.rs:{line}")),
        "names the acquiring line: {}",
        warnings[0]
    );
    drop(leaked);
}

#[tokio::test]
async fn dropping_the_pool_stops_its_maintenance_task() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let dialer = GatedDialer::new();
    dialer.gate.add_permits(1);
    let pool = Pool::with_dialer(
        Config::builder()
            .maintenance_interval(Duration::from_millis(10))
            .build()
            .unwrap(),
        dialer,
    );
    let ep = Endpoint::new("a.example", 1).unwrap();
    drop(pool.get(&ep).await.unwrap());
    // The maintenance task, and the in-memory server half.
    assert_eq!(metrics.num_alive_tasks(), baseline + 2);
    drop(pool);
    eventually("the maintenance task to end", || {
        metrics.num_alive_tasks() == baseline + 1
    })
    .await;
}

#[tokio::test]
async fn past_max_idle_total_the_least_recently_used_idle_connection_closes() {
    let servers = [
        EchoServer::start().await,
        EchoServer::start().await,
        EchoServer::start().await,
    ];
    let eps: Vec<Endpoint> = servers.iter().map(|s| s.endpoint()).collect();
    let pool = Pool::new(Config::builder().max_idle_total(2).build().unwrap());
    for ep in &eps {
        drop(pool.get(ep).await.unwrap());
    }
    let idle: Vec<usize> = eps.iter().map(|ep| pool.stats(ep).idle).collect();
    assert_eq!(
        idle,
        vec![0, 1, 1],
        "the first endpoint's connection was the oldest"
    );
    assert_eq!(pool.stats(&eps[0]).closed_for(CloseReason::PoolLimit), 1);
    for (server, ep) in servers.iter().zip(&eps) {
        assert_books_balance(&pool, ep, server.port());
    }
}

#[tokio::test]
async fn max_connections_total_holds_across_endpoints() {
    let servers = [
        EchoServer::start().await,
        EchoServer::start().await,
        EchoServer::start().await,
    ];
    let eps: Vec<Endpoint> = servers.iter().map(|s| s.endpoint()).collect();
    let pool = Pool::new(Config::builder().max_connections_total(2).build().unwrap());

    // An idle connection elsewhere is closed to make room.
    drop(pool.get(&eps[0]).await.unwrap());
    let held_b = pool.get(&eps[1]).await.unwrap();
    let held_c = pool.get(&eps[2]).await.unwrap();
    assert_eq!(pool.stats(&eps[0]).closed_for(CloseReason::PoolLimit), 1);
    assert_eq!(pool.stats(&eps[0]).idle, 0);

    // With nothing idle, a caller waits until a connection anywhere goes.
    let waiter = {
        let (pool, ep) = (pool.clone(), eps[0].clone());
        tokio::spawn(async move {
            let mut conn = pool.get(&ep).await.unwrap();
            round_trip(&mut conn, b"served").await.unwrap();
        })
    };
    eventually("the caller to wait", || pool.stats(&eps[0]).waiting == 1).await;
    assert_eq!(pool.stats(&eps[0]).dialing, 0);
    // A connection coming back to another endpoint is closed for it.
    drop(held_b);
    waiter.await.unwrap();
    assert_eq!(pool.stats(&eps[1]).closed_for(CloseReason::PoolLimit), 1);
    let total: usize = eps
        .iter()
        .map(|ep| pool.stats(ep))
        .map(|s| s.active + s.idle + s.dialing)
        .sum();
    assert!(total <= 2, "{total} connections open");
    drop(held_c);
    for (server, ep) in servers.iter().zip(&eps) {
        assert_books_balance(&pool, ep, server.port());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_total_holds_under_load() {
    let servers = [
        EchoServer::start().await,
        EchoServer::start().await,
        EchoServer::start().await,
    ];
    let eps: Vec<Endpoint> = servers.iter().map(|s| s.endpoint()).collect();
    // Connections alive across endpoints, from the hooks: a connection is
    // created after its slot is taken and closed before its slot is freed.
    let live = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (up, down, top) = (live.clone(), live.clone(), peak.clone());
    let pool = Pool::new(
        Config::builder()
            .max_connections_total(4)
            .on_connection_created(move |_| {
                let now = up.fetch_add(1, Ordering::SeqCst) + 1;
                top.fetch_max(now, Ordering::SeqCst);
            })
            .on_connection_closed(move |_, _| {
                down.fetch_sub(1, Ordering::SeqCst);
            })
            .build()
            .unwrap(),
    );
    let tasks: Vec<_> = (0..120)
        .map(|i| {
            let (pool, ep) = (pool.clone(), eps[i % 3].clone());
            tokio::spawn(async move {
                let mut conn = pool.get(&ep).await.unwrap();
                round_trip(&mut conn, b"x").await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        peak.load(Ordering::SeqCst) <= 4,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    let mut total = conpool::Stats::default();
    for (server, ep) in servers.iter().zip(&eps) {
        total.add(&assert_books_balance(&pool, ep, server.port()));
    }
    assert_eq!(live.load(Ordering::SeqCst), total.idle);
    assert!(
        total.closed_for(CloseReason::PoolLimit) > 0,
        "endpoints had to make room: {total:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_closed_on_return_hands_its_total_slot_to_a_waiter() {
    // The endpoint's own limit and the pool's total are both 1: the caller
    // queues behind the endpoint's limit, and the slot it needs under
    // max_connections_total comes back only once the discarded connection
    // is closed. (Found by tests/contract_fuzz.rs, seed 8.)
    let dialer = GatedDialer::new();
    dialer.gate.add_permits(10);
    let pool = Pool::with_dialer(
        Config::builder()
            .max_connections_per_endpoint(1)
            .max_connections_total(1)
            .build()
            .unwrap(),
        dialer,
    );
    let ep = Endpoint::new("total.example", 1).unwrap();
    let held = pool.get(&ep).await.unwrap();
    let waiter = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move { pool.get(&ep).await.map(|c| c.id()) })
    };
    eventually("the caller to wait", || pool.stats(&ep).waiting == 1).await;
    held.discard();
    let served = tokio::time::timeout(Duration::from_secs(5), waiter).await;
    assert!(
        served.is_ok(),
        "the caller was left waiting with a free slot: {:?}",
        pool.stats(&ep)
    );
    served.unwrap().unwrap().unwrap();
    let s = pool.stats(&ep);
    assert_eq!(
        (s.total_created, s.closed_for(CloseReason::Discarded)),
        (2, 1)
    );
}

/// A pool of at most two connections in all, one dial at a time, over a
/// gated dialer, and two endpoints, for the dial-cap cases below.
fn two_endpoints_under_a_total_of_two() -> (GatedDialer, Pool, Endpoint, Endpoint) {
    let dialer = GatedDialer::new();
    let pool = Pool::with_dialer(
        Config::builder()
            .max_connections_total(2)
            .max_concurrent_dials(1)
            .build()
            .unwrap(),
        dialer.clone(),
    );
    let a = Endpoint::new("a.example", 1).unwrap();
    let b = Endpoint::new("b.example", 1).unwrap();
    (dialer, pool, a, b)
}

/// A `get` in a task of its own.
fn spawn_get(
    pool: &Pool,
    ep: &Endpoint,
) -> tokio::task::JoinHandle<Result<conpool::PooledConnection, conpool::Error>> {
    let (pool, ep) = (pool.clone(), ep.clone());
    tokio::spawn(async move { pool.get(&ep).await })
}

#[tokio::test(start_paused = true)]
async fn a_caller_past_the_dial_cap_at_max_connections_total_gets_room_from_idle_elsewhere() {
    // The caller queues behind max_concurrent_dials; when that dial ends,
    // the total is full, and another endpoint's idle connection must make
    // room, as it does for a caller that meets the total limit directly.
    // (Found by tests/contract_fuzz.rs, seed 36.)
    let (dialer, pool, a, b) = two_endpoints_under_a_total_of_two();
    dialer.gate.add_permits(1);
    drop(pool.get(&b).await.unwrap());
    assert_eq!(pool.stats(&b).idle, 1);
    let spawn_get = || spawn_get(&pool, &a);
    let first = spawn_get();
    eventually("the first dial to start", || pool.stats(&a).dialing == 1).await;
    let second = spawn_get();
    eventually("the second caller to wait", || pool.stats(&a).waiting == 1).await;
    dialer.gate.add_permits(2);
    let _first = first.await.unwrap().unwrap(); // held: it does not serve the second
    let served = tokio::time::timeout(Duration::from_secs(5), second).await;
    assert!(
        served.is_ok(),
        "the caller was left waiting while b held an idle connection: a {:?}, b {:?}",
        pool.stats(&a),
        pool.stats(&b)
    );
    served.unwrap().unwrap().unwrap();
    assert_eq!(pool.stats(&b).closed_for(CloseReason::PoolLimit), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dial_whose_caller_left_serves_one_waiter_and_makes_room_for_the_next() {
    // As above, but the caller of the dial gave up: its connection goes to
    // the first waiter, and the second still needs room under the total.
    // (Found by tests/contract_fuzz.rs, seed 743.)
    let (dialer, pool, a, b) = two_endpoints_under_a_total_of_two();
    dialer.gate.add_permits(1);
    drop(pool.get(&b).await.unwrap());
    let spawn_get = || spawn_get(&pool, &a);
    let gone = spawn_get();
    eventually("the dial to start", || pool.stats(&a).dialing == 1).await;
    let (first, second) = (spawn_get(), spawn_get());
    eventually("two callers to wait", || pool.stats(&a).waiting == 2).await;
    gone.abort();
    dialer.gate.add_permits(2);
    let _first = first.await.unwrap().unwrap(); // the dial of the caller that left
    let served = tokio::time::timeout(Duration::from_secs(5), second).await;
    assert!(
        served.is_ok(),
        "the second caller was left waiting while b held an idle connection: a {:?}, b {:?}",
        pool.stats(&a),
        pool.stats(&b)
    );
    served.unwrap().unwrap().unwrap();
    assert_eq!(pool.stats(&b).closed_for(CloseReason::PoolLimit), 1);
}

#[tokio::test(start_paused = true)]
async fn every_caller_held_back_by_max_connections_total_is_served_as_room_frees() {
    // Two callers wait for room under the total. The first slot freed
    // serves the first caller, whose dial is slow; the endpoint must stay
    // in line for the next slot, so that the second caller does not wait
    // for the first one's dial. (Found by tests/contract_fuzz.rs, seed 41.)
    let dialer = GatedDialer::new();
    dialer.gate.add_permits(2);
    let pool = Pool::with_dialer(
        Config::builder().max_connections_total(2).build().unwrap(),
        dialer.clone(),
    );
    let (a, b) = (
        Endpoint::new("a.example", 1).unwrap(),
        Endpoint::new("b.example", 1).unwrap(),
    );
    let b1 = pool.get(&b).await.unwrap();
    let b2 = pool.get(&b).await.unwrap();
    let spawn_get = || spawn_get(&pool, &a);
    let first = spawn_get();
    eventually("the first caller to wait", || pool.stats(&a).waiting == 1).await;
    let second = spawn_get();
    eventually("the second caller to wait", || pool.stats(&a).waiting == 2).await;
    drop(b1);
    eventually("the first caller to dial", || pool.stats(&a).dialing == 1).await;
    // The first dial hangs at the gate; the next slot freed is the
    // second caller's.
    drop(b2);
    let s = pool.stats(&a);
    assert_eq!(
        (s.dialing, s.waiting),
        (2, 0),
        "the second caller must get the slot b2 freed: a {s:?}, b {:?}",
        pool.stats(&b)
    );
    assert_eq!(pool.stats(&b).closed_for(CloseReason::PoolLimit), 2);
    dialer.gate.add_permits(2);
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
}

/// A dialer whose dials wait for a permit, and which keeps the server
/// halves so that a test can close them.
#[derive(Clone)]
struct HeldDialer {
    gate: Arc<Semaphore>,
    servers: Arc<Mutex<Vec<tokio::io::DuplexStream>>>,
}

impl HeldDialer {
    fn new() -> Self {
        HeldDialer {
            gate: Arc::new(Semaphore::new(0)),
            servers: Arc::default(),
        }
    }
}

impl Dial for HeldDialer {
    fn dial<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
        Box::pin(async move {
            self.gate.acquire().await.unwrap().forget();
            let (client, server) = tokio::io::duplex(64);
            self.servers.lock().unwrap().push(server);
            Ok(Stream::custom(client))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_whose_idle_connection_fails_its_probe_respects_max_waiters() {
    // The caller's idle connection turns out dead, and the dial cap is
    // reached: with max_waiters_per_endpoint(0) it must fail at once, not
    // wait. (Found by tests/contract_fuzz.rs, seed 150.)
    let dialer = HeldDialer::new();
    let pool = Pool::with_dialer(
        probing()
            .max_concurrent_dials(1)
            .max_waiters_per_endpoint(0)
            .build()
            .unwrap(),
        dialer.clone(),
    );
    let ep = Endpoint::new("probe.example", 1).unwrap();
    dialer.gate.add_permits(1);
    let held = pool.get(&ep).await.unwrap();
    // A second caller's dial hangs at the gate, taking the only dial slot.
    let dialing = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move { pool.get(&ep).await.map(|c| c.id()) })
    };
    eventually("the dial to start", || pool.stats(&ep).dialing == 1).await;
    drop(held);
    dialer.servers.lock().unwrap().clear(); // the server closes the idle one
    let err = pool.get(&ep).await.unwrap_err();
    assert!(matches!(err, Error::TooManyWaiters { .. }), "{err}");
    let s = pool.stats(&ep);
    assert_eq!(
        (s.waiting, s.idle, s.closed_for(CloseReason::PeerClosed)),
        (0, 0, 1)
    );
    dialer.gate.add_permits(1);
    dialing.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_caller_whose_health_check_fails_keeps_its_slot_under_max_connections_total() {
    // The caller's idle connection fails a slow health check while callers
    // wait on this endpoint and on another one for room under the total.
    // The caller keeps the failed connection's slot and dials into it: it
    // neither queues past max_waiters_per_endpoint nor loses the slot.
    // (Found by tests/contract_fuzz.rs, seed 1119.)
    let dialer = HeldDialer::new();
    dialer.gate.add_permits(10);
    let pool = Pool::with_dialer(
        Config::builder()
            .max_connections_per_endpoint(1)
            .max_connections_total(1)
            .max_waiters_per_endpoint(1)
            .health_check(|_: &mut Stream| {
                Box::pin(async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    false
                })
            })
            .build()
            .unwrap(),
        dialer,
    );
    let (a, b) = (
        Endpoint::new("a.example", 1).unwrap(),
        Endpoint::new("b.example", 1).unwrap(),
    );
    drop(pool.get(&a).await.unwrap());
    let spawn_get = |ep: &Endpoint| {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move { pool.get(&ep).await })
    };
    let checked = spawn_get(&a); // takes the idle connection; its check is slow
    eventually("the check to start", || pool.stats(&a).active == 1).await;
    let queued = spawn_get(&a);
    eventually("a caller to wait on a", || pool.stats(&a).waiting == 1).await;
    let other = spawn_get(&b);
    eventually("a caller to wait on b", || pool.stats(&b).waiting == 1).await;
    let conn = checked.await.unwrap().unwrap();
    assert!(!conn.is_reused(), "a new connection, dialed into the slot");
    let (sa, sb) = (pool.stats(&a), pool.stats(&b));
    assert_eq!(
        (sa.active, sa.waiting, sb.waiting),
        (1, 1, 1),
        "{sa:?} {sb:?}"
    );
    assert_eq!(sa.closed_for(CloseReason::HealthCheckFailed), 1);
    drop(conn); // now the others are served in turn
    queued.await.unwrap().unwrap();
    other.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_caller_whose_idle_connection_fails_its_probe_keeps_its_slot_with_max_waiters_zero() {
    // At max_connections_total, the total looks full only because the dead
    // connection's slot is not given back yet: the caller dials into it
    // rather than fail as if it had to wait. (Found by
    // tests/contract_fuzz.rs, seed 83.)
    let dialer = HeldDialer::new();
    dialer.gate.add_permits(10);
    let pool = Pool::with_dialer(
        probing()
            .max_connections_total(1)
            .max_waiters_per_endpoint(0)
            .build()
            .unwrap(),
        dialer.clone(),
    );
    let ep = Endpoint::new("probe.example", 1).unwrap();
    drop(pool.get(&ep).await.unwrap());
    dialer.servers.lock().unwrap().clear(); // the server closes the idle one
    let conn = pool.get(&ep).await.unwrap();
    assert!(!conn.is_reused());
    assert_eq!(pool.stats(&ep).closed_for(CloseReason::PeerClosed), 1);
}

#[tokio::test]
async fn at_max_connections_total_an_idle_connection_makes_room_even_with_max_waiters_zero() {
    // The endpoint is not at its own limit: the caller must get room by
    // closing another endpoint's idle connection, not fail as if it had to
    // wait. (Found by tests/contract_fuzz.rs, seed 83.)
    let dialer = GatedDialer::new();
    dialer.gate.add_permits(10);
    let pool = Pool::with_dialer(
        Config::builder()
            .max_connections_total(1)
            .max_waiters_per_endpoint(0)
            .build()
            .unwrap(),
        dialer,
    );
    let (a, b) = (
        Endpoint::new("a.example", 1).unwrap(),
        Endpoint::new("b.example", 1).unwrap(),
    );
    drop(pool.get(&a).await.unwrap());
    assert_eq!(pool.stats(&a).idle, 1);
    let conn = pool.get(&b).await;
    assert!(
        conn.is_ok(),
        "{}: a {:?}",
        conn.unwrap_err(),
        pool.stats(&a)
    );
    let a_stats = pool.stats(&a);
    assert_eq!(
        (a_stats.idle, a_stats.closed_for(CloseReason::PoolLimit)),
        (0, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_get_whose_health_check_outlasts_close_gets_no_connection() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .maintenance_interval(None)
            .health_check(|_: &mut Stream| {
                Box::pin(async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    true
                })
            })
            .build()
            .unwrap(),
    );
    drop(pool.get(&ep).await.unwrap());
    let checked = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move { pool.get(&ep).await })
    };
    eventually("the check to start", || pool.stats(&ep).active == 1).await;
    pool.close().await;
    let outcome = checked.await.unwrap();
    assert!(
        matches!(outcome, Err(Error::PoolClosed)),
        "a get still checking when the pool closed gets {outcome:?}"
    );
    let stats = pool.stats(&ep);
    assert_eq!((stats.active, stats.idle, stats.total_reused), (0, 0, 0));
    assert_eq!(stats.closed_for(CloseReason::PoolClosed), 1);
    eventually("the server to see the close", || server.open() == 0).await;
}
