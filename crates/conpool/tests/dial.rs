//! Dialing as a user sees it: retries with exponential backoff, the connect
//! timeout per attempt and its share per address, failures that are not
//! retried, and a dead endpoint that must not hold up a healthy one.
//!
//! A host name that resolves to a black-holed address and a live one cannot
//! be made without editing `/etc/hosts`, so the fallback from one address to
//! the next under the attempt's deadline is tested where the addresses go
//! in: [`connect_any`], which the default dialer calls with every resolved
//! address and the deadline `connect_timeout` sets.

mod support;

use std::error::Error as _;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conpool::dial::tcp::connect_any;
use conpool::dial::{Dial, DialError, DialErrorKind, TcpTlsDialer};
use conpool::{BoxFuture, Config, Endpoint, Error, Pool, Stats, Stream};
use support::proxy::{Fault, FaultProxy};
use support::{EchoServer, FullBacklog, assert_books_balance, refused_port, round_trip};
use tokio::time::Instant;

/// Long enough for any dial here to end by itself; a dial still running
/// then is stuck, and the test fails instead of hanging.
const STUCK: Duration = Duration::from_secs(10);

/// The dialer `Pool::new` makes, wrapped to record when (on tokio's clock)
/// each attempt starts.
#[derive(Clone)]
struct Recording {
    inner: TcpTlsDialer,
    attempts: Arc<Mutex<Vec<Instant>>>,
}

impl Recording {
    fn new(config: &Config) -> Recording {
        Recording {
            inner: TcpTlsDialer::from_config(config),
            attempts: Arc::default(),
        }
    }

    fn attempts(&self) -> Vec<Instant> {
        self.attempts.lock().unwrap().clone()
    }
}

impl Dial for Recording {
    fn dial<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
        self.attempts.lock().unwrap().push(Instant::now());
        self.inner.dial(endpoint)
    }
}

/// The gaps between consecutive attempts.
fn gaps(attempts: &[Instant]) -> Vec<Duration> {
    attempts.windows(2).map(|w| w[1] - w[0]).collect()
}

fn assert_all_gauges_zero(s: &Stats) {
    assert_eq!(
        (s.active, s.idle, s.dialing, s.waiting),
        (0, 0, 0, 0),
        "nothing may be left active, idle, dialing or waiting: {s:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_connect_is_retried_with_doubling_backoff() {
    let port = refused_port();
    let ep = Endpoint::new("127.0.0.1", port).unwrap();
    // No timers but the backoff sleeps: the paused clock then moves only
    // when the pool sleeps between attempts.
    let config = Config::builder()
        .connect_timeout(None)
        .acquire_timeout(None)
        .connect_retry_count(3)
        .connect_retry_delay(Duration::from_millis(100))
        .build()
        .unwrap();
    let dialer = Recording::new(&config);
    let pool = Pool::with_dialer(config, dialer.clone());

    let err = pool.get(&ep).await.unwrap_err();

    let attempts = dialer.attempts();
    assert_eq!(attempts.len(), 3, "exactly connect_retry_count attempts");
    assert_eq!(
        gaps(&attempts),
        vec![Duration::from_millis(100), Duration::from_millis(200)],
        "the delay doubles after each failed attempt"
    );
    match &err {
        Error::ConnectionFailed {
            endpoint, attempts, ..
        } => {
            assert_eq!(endpoint, &ep);
            assert_eq!(*attempts, 3);
        }
        other => panic!("expected ConnectionFailed, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("could not connect to 127.0.0.1:{port} after 3 attempts")
    );
    assert!(!err.is_timeout());
    assert_eq!(err.endpoint(), Some(&ep));
    let source = err
        .source()
        .expect("the last attempt's error is kept as the source");
    let io_err = source
        .downcast_ref::<io::Error>()
        .expect("the source is an io::Error");
    assert_eq!(io_err.kind(), io::ErrorKind::ConnectionRefused);

    let s = pool.stats(&ep);
    assert_eq!(s.errors, 1, "one failed dial, however many attempts");
    assert_eq!((s.total_created, s.total_closed, s.total_reused), (0, 0, 0));
    assert_all_gauges_zero(&s);
}

#[tokio::test(start_paused = true)]
async fn a_connect_that_hangs_times_out_per_attempt() {
    let black_hole = FullBacklog::start();
    let ep = black_hole.endpoint();
    let port = ep.port();
    // The paused clock jumps to the connect timeout as soon as the runtime
    // is idle, which it is while the dropped SYN goes unanswered. The
    // dialer's own share of the timeout for the one address ends at the
    // same moment as the pool's: either way the attempt timed out.
    let config = Config::builder()
        .connect_timeout(Duration::from_secs(1))
        .connect_retry_count(2)
        .connect_retry_delay(Duration::from_millis(100))
        .acquire_timeout(None)
        .build()
        .unwrap();
    let dialer = Recording::new(&config);
    let pool = Pool::with_dialer(config, dialer.clone());

    let started = Instant::now();
    let err = pool.get(&ep).await.unwrap_err();

    match &err {
        Error::ConnectionTimeout {
            endpoint,
            timeout,
            attempts,
            protocol: None,
        } => {
            assert_eq!(endpoint, &ep);
            assert_eq!(*timeout, Duration::from_secs(1));
            assert_eq!(*attempts, 2);
        }
        other => panic!("expected ConnectionTimeout, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("connecting to 127.0.0.1:{port} timed out after 1s (2 attempts made)")
    );
    assert!(err.is_timeout());
    assert_eq!(dialer.attempts().len(), 2);
    assert_eq!(
        gaps(&dialer.attempts()),
        vec![Duration::from_millis(1100)],
        "the second attempt starts after the first's timeout plus the backoff"
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(2100),
        "the timeout bounds each attempt: 1s + 100ms backoff + 1s"
    );
    let s = pool.stats(&ep);
    assert_eq!((s.errors, s.total_created), (1, 0));
    assert_all_gauges_zero(&s);
}

/// A dialer whose resolver finds nothing, as the system resolver answers
/// for a name that does not exist; it stands in for the real resolver so
/// that the test sends no DNS query off this machine.
#[derive(Clone, Default)]
struct Unresolvable {
    attempts: Arc<Mutex<Vec<Instant>>>,
}

impl Dial for Unresolvable {
    fn dial<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
        self.attempts.lock().unwrap().push(Instant::now());
        let err = io::Error::new(
            io::ErrorKind::NotFound,
            format!("failed to lookup address information: {}", endpoint.host()),
        );
        Box::pin(async move { Err(DialError::resolve(err)) })
    }
}

#[tokio::test]
async fn a_host_that_does_not_resolve_fails_at_once_without_retries() {
    let ep = Endpoint::new("does-not-exist.invalid", 80).unwrap();
    let dialer = Unresolvable::default();
    let config = Config::builder()
        .connect_retry_count(5)
        .connect_retry_delay(Duration::from_millis(10))
        .build()
        .unwrap();
    let pool = Pool::with_dialer(config, dialer.clone());

    let err = pool.get(&ep).await.unwrap_err();

    match &err {
        Error::DnsResolutionFailed { host, .. } => assert_eq!(host, "does-not-exist.invalid"),
        other => panic!("expected DnsResolutionFailed, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "DNS resolution failed for host \"does-not-exist.invalid\""
    );
    assert!(err.source().is_some(), "the resolver's error is kept");
    assert_eq!(dialer.attempts.lock().unwrap().len(), 1, "not retried");
    let s = pool.stats(&ep);
    assert_eq!((s.errors, s.total_created), (1, 0));
    assert_all_gauges_zero(&s);
}

#[tokio::test]
async fn a_black_holed_endpoint_does_not_delay_a_healthy_one() {
    let black_hole = FullBacklog::start();
    let dead = black_hole.endpoint();
    let server = EchoServer::start().await;
    let healthy = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .connect_timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    );

    let stuck = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get(&dead).await.map(drop) }
    });
    // Let the stuck get start its dial before the healthy traffic begins.
    support::eventually("the dead endpoint to be dialing", || {
        pool.stats(&black_hole.endpoint()).dialing == 1
    })
    .await;

    for i in 0..20u32 {
        let mut conn = pool.get(&healthy).await.unwrap();
        round_trip(&mut conn, format!("request {i}").as_bytes())
            .await
            .unwrap();
    }

    assert!(
        !stuck.is_finished(),
        "the healthy endpoint's 20 round trips finished while the dead one's dial still hangs"
    );
    assert_eq!(pool.stats(&black_hole.endpoint()).dialing, 1);
    stuck.abort();
    let s = assert_books_balance(&pool, &healthy, server.port());
    assert_eq!((s.total_created, s.total_reused, s.errors), (1, 19, 0));
}

#[tokio::test]
async fn connect_any_moves_on_from_a_black_holed_address_to_the_next() {
    let black_hole = FullBacklog::start();
    black_hole.assert_connects_hang().await;
    let server = EchoServer::start().await;

    // Two addresses in 1 s: the black hole gets 500 ms, the server the rest.
    let deadline = Instant::now() + Duration::from_secs(1);
    let connected = tokio::time::timeout(
        STUCK,
        connect_any(&[black_hole.addr, server.addr], Some(deadline)),
    )
    .await
    .expect("connect_any keeps to its deadline");

    let mut stream = connected.expect("the second address is reached within the deadline");
    assert_eq!(stream.peer_addr().unwrap(), server.addr);
    round_trip(&mut stream, b"ping").await.unwrap();
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn connect_any_times_out_at_its_deadline_when_every_address_hangs() {
    let first = FullBacklog::start();
    let second = FullBacklog::start();
    first.assert_connects_hang().await;
    second.assert_connects_hang().await;

    let deadline = Instant::now() + Duration::from_secs(1);
    let outcome = tokio::time::timeout(
        STUCK,
        connect_any(&[first.addr, second.addr], Some(deadline)),
    )
    .await
    .expect("connect_any keeps to its deadline");

    let err = outcome.expect_err("no address accepts");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(
        err.to_string()
            .starts_with(&format!("connect to {} timed out after", second.addr)),
        "the error is the last address's, which had its share too: {err}"
    );
}

#[tokio::test]
async fn the_default_dialer_gives_the_tls_handshake_what_is_left_of_its_connect_timeout() {
    let upstream = EchoServer::start().await;
    let silent = FaultProxy::start(upstream.addr).await;
    silent.set_mode(Fault::BlackHole);
    let ep = Endpoint::tls("127.0.0.1", silent.port()).unwrap();
    let config = Config::builder()
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let dialer = TcpTlsDialer::from_config(&config);

    // Straight to the dialer: no pool timeout around it.
    let outcome = tokio::time::timeout(STUCK, dialer.dial(&ep))
        .await
        .expect("the dialer keeps to its connect timeout by itself");

    let Err(err) = outcome else {
        panic!("a server that never answers the handshake gave a stream")
    };
    assert_eq!(err.kind(), DialErrorKind::Connect);
    assert!(err.is_retryable(), "running out of time is worth a retry");
    let err = err.into_io();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(
        err.to_string(),
        format!("the TLS handshake with {ep} ran out of the connect timeout")
    );
    assert_eq!(silent.accepted(), 1, "the TCP connect itself went through");
}
