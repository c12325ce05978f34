//! Happy Eyeballs as a user sees it: a host whose first address is black
//! holed, refuses, or accepts TCP but never finishes TLS still connects
//! quickly on its second address; the racers that lose are closed; the
//! address that won goes first next time. The host's two addresses are
//! 127.0.0.2 and 127.0.0.1 on one port, named through a test hosts table.
//!
//! Durations are on the real clock, since the connects are real, and are
//! asserted only against the configured delay and `connect_timeout`: a
//! dial that waited for the first address to time out takes at least half
//! the connect timeout, one that raced takes about the attempt delay.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use conpool::{Config, ConfigBuilder, Endpoint, Error, Pool};
use support::hosts::Hosts;
use support::{EchoServer, FullBacklog, TlsCert, client_sockets_to, round_trip};
use tokio::net::TcpListener;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The black-holed or refusing first address of the test host.
fn first(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2], port))
}

fn live(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// "two.test" resolving to 127.0.0.2, then 127.0.0.1.
fn two_addresses() -> Hosts {
    let hosts = Hosts::new();
    hosts.insert("two.test", &["127.0.0.2", "127.0.0.1"]);
    hosts
}

/// One attempt per get, so that only the race inside it is measured.
fn config(hosts: &Hosts) -> ConfigBuilder {
    Config::builder()
        .resolver(hosts.clone())
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_retry_count(1)
}

#[tokio::test]
async fn a_black_holed_first_address_costs_the_attempt_delay_not_the_connect_timeout() {
    let black_hole = FullBacklog::start_at(first(0));
    black_hole.assert_connects_hang().await;
    let port = black_hole.addr.port();
    let server = EchoServer::start_at(live(port)).await;
    let pool = Pool::new(config(&two_addresses()).build().unwrap());
    let endpoint = Endpoint::new("two.test", port).unwrap();

    let started = Instant::now();
    let mut conn = pool.get(&endpoint).await.unwrap();
    let took = started.elapsed();

    assert_eq!(conn.peer_addr(), Some(server.addr));
    round_trip(&mut conn, b"ping").await.unwrap();
    assert!(
        took >= Duration::from_millis(250),
        "the second address starts after the 250 ms delay: {took:?}"
    );
    assert!(
        took < CONNECT_TIMEOUT / 4,
        "connected in about the delay, not a share of the {CONNECT_TIMEOUT:?} timeout: {took:?}"
    );
}

#[tokio::test]
async fn a_refusing_first_address_connects_at_once_to_the_second() {
    let server = EchoServer::start_at(live(0)).await;
    let port = server.addr.port();
    // Nothing listens on 127.0.0.2 at that port: the connect is refused.
    let delay = Duration::from_secs(5);
    let pool = Pool::new(
        config(&two_addresses())
            .happy_eyeballs_delay(delay)
            .build()
            .unwrap(),
    );
    let endpoint = Endpoint::new("two.test", port).unwrap();

    let started = Instant::now();
    let mut conn = pool.get(&endpoint).await.unwrap();
    let took = started.elapsed();

    assert_eq!(conn.peer_addr(), Some(server.addr));
    round_trip(&mut conn, b"ping").await.unwrap();
    assert!(
        took < delay,
        "the refusal starts the next attempt at once, not after the {delay:?} delay: {took:?}"
    );
}

#[tokio::test]
async fn the_racers_that_lose_leave_no_open_socket() {
    let black_hole = FullBacklog::start_at(first(0));
    black_hole.assert_connects_hang().await;
    let port = black_hole.addr.port();
    let server = EchoServer::start_at(live(port)).await;
    let pool = Pool::new(config(&two_addresses()).build().unwrap());
    let endpoint = Endpoint::new("two.test", port).unwrap();
    // The black hole's own backlog fillers are sockets of this process to
    // the port too.
    let before = client_sockets_to(port);

    let conn = pool.get(&endpoint).await.unwrap();

    assert_eq!(conn.peer_addr(), Some(server.addr));
    assert_eq!(
        client_sockets_to(port),
        before + 1,
        "only the winner is open: the connect still waiting on the black hole was closed"
    );
    drop(conn);
}

#[tokio::test]
async fn for_tls_the_winner_is_the_first_whose_handshake_completes() {
    let cert = TlsCert::localhost();
    let server = EchoServer::start_tls_at(live(0), &cert).await;
    let port = server.addr.port();
    // 127.0.0.2 accepts the TCP connect at once and never says a word of TLS.
    let silent = TcpListener::bind(first(port)).await.unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let pool = Pool::new(
        config(&two_addresses())
            .tls_config(cert.client_config())
            .tls_server_name(rustls::pki_types::ServerName::try_from("localhost").unwrap())
            .build()
            .unwrap(),
    );
    let endpoint = Endpoint::tls("two.test", port).unwrap();

    let started = Instant::now();
    let mut conn = pool.get(&endpoint).await.unwrap();
    let took = started.elapsed();

    assert_eq!(conn.peer_addr(), Some(server.addr));
    assert!(conn.tls_session().is_some());
    round_trip(&mut conn, b"ping").await.unwrap();
    assert!(
        took < CONNECT_TIMEOUT / 4,
        "a TCP connect whose handshake hangs does not win the race: {took:?}"
    );
    held.abort();
}

#[tokio::test]
async fn the_address_that_last_worked_is_tried_first() {
    let black_hole = FullBacklog::start_at(first(0));
    black_hole.assert_connects_hang().await;
    let port = black_hole.addr.port();
    let server = EchoServer::start_at(live(port)).await;
    let delay = Duration::from_secs(1);
    let pool = Pool::new(
        config(&two_addresses())
            .happy_eyeballs_delay(delay)
            .build()
            .unwrap(),
    );
    let endpoint = Endpoint::new("two.test", port).unwrap();

    let started = Instant::now();
    pool.get(&endpoint).await.unwrap().discard();
    assert!(
        started.elapsed() >= delay,
        "the first dial raced the black hole"
    );

    let started = Instant::now();
    let conn = pool.get(&endpoint).await.unwrap();
    let took = started.elapsed();
    assert_eq!(conn.peer_addr(), Some(server.addr));
    assert!(
        took < delay,
        "127.0.0.1 worked last time, so it goes first, before the black hole: {took:?}"
    );
}

#[tokio::test]
async fn one_at_a_time_gives_each_address_a_share_of_the_connect_timeout() {
    let black_hole = FullBacklog::start_at(first(0));
    black_hole.assert_connects_hang().await;
    let port = black_hole.addr.port();
    let server = EchoServer::start_at(live(port)).await;
    let timeout = Duration::from_secs(2);
    let pool = Pool::new(
        config(&two_addresses())
            .connect_timeout(timeout)
            .happy_eyeballs_delay(None)
            .build()
            .unwrap(),
    );
    let endpoint = Endpoint::new("two.test", port).unwrap();

    let started = Instant::now();
    let conn = pool.get(&endpoint).await.unwrap();
    let took = started.elapsed();

    assert_eq!(conn.peer_addr(), Some(server.addr));
    assert!(
        took >= timeout / 2,
        "no racing: the black hole had its half of the timeout first: {took:?}"
    );
}

#[test]
fn a_happy_eyeballs_delay_under_10ms_other_than_0_is_refused_naming_the_value_and_the_rule() {
    for bad in [Duration::from_nanos(1), Duration::from_millis(9)] {
        let err = Config::builder()
            .happy_eyeballs_delay(bad)
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidConfig {
                field: "happy_eyeballs_delay",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            format!(
                "invalid config: happy_eyeballs_delay is {bad:?}; it must be at least 10ms \
                 (RFC 8305's floor), or 0 or None for one address at a time"
            )
        );
    }
    for good in [Some(Duration::ZERO), None, Some(Duration::from_millis(10))] {
        let config = Config::builder()
            .happy_eyeballs_delay(good)
            .build()
            .unwrap();
        assert_eq!(config.happy_eyeballs_delay(), good.filter(|d| !d.is_zero()));
    }
    assert_eq!(
        Config::default().happy_eyeballs_delay(),
        Some(Duration::from_millis(250))
    );
}
