//! The fault-injecting proxy of the test harness, checked on its own with
//! plain tokio sockets against the embedded echo server: each fault must do
//! to a client exactly what it claims.

mod support;

use std::io;
use std::time::Duration;

use support::proxy::{Fault, FaultProxy};
use support::{EchoServer, eventually, round_trip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// A guard against hangs, on the real clock.
const LIMIT: Duration = Duration::from_secs(10);

async fn proxied() -> (EchoServer, FaultProxy) {
    let echo = EchoServer::start().await;
    let proxy = FaultProxy::start(echo.addr).await;
    (echo, proxy)
}

/// Reads until EOF or an error; returns what arrived and how it ended.
async fn read_to_end(conn: &mut TcpStream) -> (Vec<u8>, io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// Reads until the connection ends, which must be a reset; returns the
/// bytes that arrived first.
async fn expect_reset(conn: &mut TcpStream) -> Vec<u8> {
    let (got, end) = timeout(LIMIT, read_to_end(conn)).await.expect("hung");
    let err = end.expect_err("the connection must end with a reset, not EOF");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    got
}

/// Reads until the connection ends, which must be a clean EOF.
async fn expect_eof(conn: &mut TcpStream) -> Vec<u8> {
    let (got, end) = timeout(LIMIT, read_to_end(conn)).await.expect("hung");
    end.expect("the connection must end with EOF, not an error");
    got
}

#[tokio::test]
async fn pass_forwards_both_ways() {
    let (echo, proxy) = proxied().await;
    assert_eq!(proxy.mode(), Fault::Pass);
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    for msg in [&b"hello"[..], b"a second message", &[7u8; 100_000]] {
        timeout(LIMIT, round_trip(&mut conn, msg))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.open(), 1);
    assert_eq!(echo.accepted(), 1);

    // The client closing ends both legs.
    drop(conn);
    proxy.wait_open(0).await;
    eventually("the echo server to see the close", || echo.open() == 0).await;
}

#[tokio::test]
async fn pass_passes_a_client_half_close_through() {
    let (_echo, proxy) = proxied().await;
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    conn.write_all(b"last words").await.unwrap();
    conn.shutdown().await.unwrap();
    // The echo server answers, sees EOF and closes; the proxy passes both on.
    assert_eq!(expect_eof(&mut conn).await, b"last words");
    proxy.wait_open(0).await;
}

#[tokio::test]
async fn reset_resets_the_client_at_once() {
    let (echo, proxy) = proxied().await;
    proxy.set_mode(Fault::Reset);
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(expect_reset(&mut conn).await.is_empty());
    assert_eq!(proxy.accepted(), 1);
    proxy.wait_open(0).await;
    assert_eq!(echo.accepted(), 0, "Reset must not dial upstream");
}

#[tokio::test(start_paused = true)]
async fn black_hole_swallows_everything_and_never_answers() {
    let (echo, proxy) = proxied().await;
    proxy.set_mode(Fault::BlackHole);
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    conn.write_all(b"anyone there?").await.unwrap();
    let mut buf = [0u8; 64];
    let read = timeout(Duration::from_secs(30), conn.read(&mut buf)).await;
    assert!(read.is_err(), "a black hole must not answer: {read:?}");

    // The connection was accepted and is held open; nothing went upstream.
    proxy.wait_accepted(1).await;
    assert_eq!(proxy.open(), 1);
    assert_eq!(echo.accepted(), 0);
    // More writes are swallowed too (the proxy keeps reading, so they
    // never back up).
    for _ in 0..64 {
        conn.write_all(&[0u8; 16 * 1024]).await.unwrap();
    }
    let read = timeout(Duration::from_secs(30), conn.read(&mut buf)).await;
    assert!(read.is_err(), "a black hole must not answer: {read:?}");

    // When the client leaves, the proxy lets go.
    drop(conn);
    proxy.wait_open(0).await;
}

#[tokio::test]
async fn cut_after_delivers_exactly_that_many_bytes_then_resets() {
    let (_echo, proxy) = proxied().await;
    proxy.set_mode(Fault::CutAfter(10));
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    conn.write_all(b"0123456789abcdefghijklmnopqrstuv")
        .await
        .unwrap();
    assert_eq!(expect_reset(&mut conn).await, b"0123456789");
    proxy.wait_open(0).await;
}

#[tokio::test]
async fn cut_after_counts_across_chunks() {
    let (_echo, proxy) = proxied().await;
    proxy.set_mode(Fault::CutAfter(10));
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    // Four bytes go through whole...
    timeout(LIMIT, round_trip(&mut conn, b"abcd"))
        .await
        .unwrap()
        .unwrap();
    // ...and of the next reply only six of the ten left.
    conn.write_all(b"0123456789").await.unwrap();
    assert_eq!(expect_reset(&mut conn).await, b"012345");
}

#[tokio::test]
async fn cut_after_zero_resets_on_the_first_reply() {
    let (echo, proxy) = proxied().await;
    proxy.set_mode(Fault::CutAfter(0));
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    conn.write_all(b"ping").await.unwrap();
    assert!(expect_reset(&mut conn).await.is_empty());
    // The request itself went through.
    assert_eq!(echo.accepted(), 1);
}

#[tokio::test]
async fn half_close_gives_eof_after_the_first_reply() {
    let (_echo, proxy) = proxied().await;
    proxy.set_mode(Fault::HalfClose);
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    conn.write_all(b"first").await.unwrap();
    assert_eq!(expect_eof(&mut conn).await, b"first");
    // The client's side stays open: writes still succeed.
    conn.write_all(b"second").await.unwrap();
    assert_eq!(proxy.open(), 1);
}

#[tokio::test]
async fn half_close_keeps_forwarding_the_client_upstream() {
    // A hand-driven upstream, to see what reaches it.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::start(upstream.local_addr().unwrap()).await;
    proxy.set_mode(Fault::HalfClose);
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut server, _) = timeout(LIMIT, upstream.accept()).await.unwrap().unwrap();

    server.write_all(b"banner").await.unwrap();
    assert_eq!(expect_eof(&mut conn).await, b"banner");

    // After the EOF the client still writes, and the proxy still forwards.
    conn.write_all(b"still here").await.unwrap();
    let mut got = [0u8; 10];
    timeout(LIMIT, server.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"still here");
    // Later replies are dropped; the client's FIN still reaches upstream.
    server.write_all(b"unheard").await.unwrap();
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(LIMIT, server.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    drop(server);
    proxy.wait_open(0).await;
}

#[tokio::test(start_paused = true)]
async fn delay_holds_each_chunk_on_tokios_clock() {
    let (_echo, proxy) = proxied().await;
    proxy.set_mode(Fault::Delay(Duration::from_secs(1)));
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    let started = Instant::now();
    round_trip(&mut conn, b"slow").await.unwrap();
    // One second on the way up, one on the way down.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_mode_applies_to_new_connections_only() {
    let (_echo, proxy) = proxied().await;
    let mut old = TcpStream::connect(proxy.addr()).await.unwrap();
    proxy.wait_accepted(1).await;
    proxy.set_mode(Fault::Reset);
    let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
    expect_reset(&mut new).await;
    timeout(LIMIT, round_trip(&mut old, b"unaffected"))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn reset_all_resets_every_open_connection() {
    let (echo, proxy) = proxied().await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut conn, b"up").await.unwrap();
        conns.push(conn);
    }
    assert_eq!(proxy.open(), 3);
    proxy.reset_all();
    for conn in &mut conns {
        assert!(expect_reset(conn).await.is_empty());
    }
    proxy.wait_open(0).await;
    eventually("the upstream legs to close", || echo.open() == 0).await;

    // The proxy itself carries on.
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut conn, b"after").await.unwrap();
    assert_eq!(proxy.accepted(), 4);
}

#[tokio::test]
async fn close_all_gives_every_client_eof() {
    let (echo, proxy) = proxied().await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut conn, b"up").await.unwrap();
        conns.push(conn);
    }
    proxy.close_all();
    for conn in &mut conns {
        assert!(expect_eof(conn).await.is_empty());
    }
    proxy.wait_open(0).await;
    eventually("the upstream legs to close", || echo.open() == 0).await;
}

#[tokio::test]
async fn close_all_closes_a_black_hole_with_eof() {
    let (_echo, proxy) = proxied().await;
    proxy.set_mode(Fault::BlackHole);
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    conn.write_all(b"unanswered").await.unwrap();
    proxy.wait_accepted(1).await;
    proxy.close_all();
    assert!(expect_eof(&mut conn).await.is_empty());
}

#[tokio::test]
async fn reset_random_resets_the_fraction_asked_for_deterministically() {
    async fn run(seed: u64) -> Vec<usize> {
        let (_echo, proxy) = proxied().await;
        let mut conns = Vec::new();
        for _ in 0..10 {
            let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
            round_trip(&mut conn, b"up").await.unwrap();
            conns.push(conn);
        }
        assert_eq!(proxy.reset_random(seed, 0.5), 5);
        proxy.wait_open(5).await;
        let mut reset = Vec::new();
        for (i, conn) in conns.iter_mut().enumerate() {
            match timeout(LIMIT, round_trip(conn, b"are you there"))
                .await
                .unwrap()
            {
                Ok(()) => {}
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
                    reset.push(i);
                }
            }
        }
        // Nothing left to pick from the reset ones; none at 0, all at 1.
        assert_eq!(proxy.reset_random(seed, 0.0), 0);
        assert_eq!(proxy.reset_random(seed, 1.0), 5);
        proxy.wait_open(0).await;
        reset
    }
    let first = run(42).await;
    assert_eq!(first.len(), 5);
    assert_eq!(run(42).await, first, "the same seed must pick the same");
}

#[tokio::test]
async fn reset_random_confirmed_names_each_client_it_reset_once_the_rst_is_out() {
    let (_echo, proxy) = proxied().await;
    let mut conns = Vec::new();
    for _ in 0..10 {
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut conn, b"up").await.unwrap();
        conns.push(conn);
    }
    let asked = Instant::now();
    let records = proxy.reset_random_confirmed(42, 0.5).await;
    assert_eq!(records.len(), 5);
    let mut reset = Vec::new();
    for record in &records {
        assert!(
            record.accepted_at <= asked && asked <= record.reset_at,
            "{record:?}"
        );
        let i = conns
            .iter()
            .position(|c| c.local_addr().unwrap() == record.peer)
            .unwrap_or_else(|| panic!("{record:?} names no client socket"));
        // The RST is out when the record comes back: the client's kernel
        // socket holds the error already, before anyone reads it.
        let err = socket2::SockRef::from(&conns[i]).take_error().unwrap();
        assert_eq!(
            err.map(|e| e.kind()),
            Some(io::ErrorKind::ConnectionReset),
            "{record:?}"
        );
        reset.push(i);
    }
    reset.sort_unstable();
    reset.dedup();
    assert_eq!(reset.len(), 5, "five different connections");
    for (i, conn) in conns.iter_mut().enumerate() {
        if !reset.contains(&i) {
            timeout(LIMIT, round_trip(conn, b"untouched"))
                .await
                .unwrap()
                .unwrap();
        }
    }
    // The same seed picks the same connections as reset_random does.
    let (_echo, twin) = proxied().await;
    let mut twins = Vec::new();
    for _ in 0..10 {
        let mut conn = TcpStream::connect(twin.addr()).await.unwrap();
        round_trip(&mut conn, b"up").await.unwrap();
        twins.push(conn);
    }
    assert_eq!(twin.reset_random(42, 0.5), 5);
    let mut twin_reset = Vec::new();
    for (i, conn) in twins.iter_mut().enumerate() {
        if timeout(LIMIT, round_trip(conn, b"there?"))
            .await
            .unwrap()
            .is_err()
        {
            twin_reset.push(i);
        }
    }
    assert_eq!(twin_reset, reset);
}

#[tokio::test]
async fn stop_refuses_and_restart_listens_on_the_same_port() {
    let (_echo, proxy) = proxied().await;
    let port = proxy.port();
    let mut kept = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut kept, b"before").await.unwrap();

    proxy.stop();
    assert_eq!(proxy.mode(), Fault::Refuse);
    let err = TcpStream::connect(proxy.addr()).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    // Connections already open are not touched.
    round_trip(&mut kept, b"during").await.unwrap();

    proxy.restart().await;
    assert_eq!(proxy.port(), port);
    assert_eq!(proxy.mode(), Fault::Pass);
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    round_trip(&mut conn, b"after").await.unwrap();
    assert_eq!(proxy.accepted(), 2);

    // Twice over, with connections in TIME_WAIT on the port.
    drop(conn);
    drop(kept);
    proxy.wait_open(0).await;
    proxy.stop();
    TcpStream::connect(proxy.addr()).await.unwrap_err();
    proxy.restart().await;
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    round_trip(&mut conn, b"again").await.unwrap();
}

#[tokio::test]
async fn refuse_mode_is_stop_and_leaving_it_listens_again() {
    let (_echo, proxy) = proxied().await;
    proxy.set_mode(Fault::Delay(Duration::from_millis(1)));
    proxy.set_mode(Fault::Refuse);
    let err = TcpStream::connect(proxy.addr()).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    // restart() goes back to the mode before Refuse.
    proxy.restart().await;
    assert_eq!(proxy.mode(), Fault::Delay(Duration::from_millis(1)));

    proxy.set_mode(Fault::Refuse);
    TcpStream::connect(proxy.addr()).await.unwrap_err();
    proxy.set_mode(Fault::Reset);
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    expect_reset(&mut conn).await;
    assert_eq!(proxy.accepted(), 1);
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_connections_and_port() {
    let (echo, proxy) = proxied().await;
    let addr = proxy.addr();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut conn, b"up").await.unwrap();
    drop(proxy);
    assert!(expect_eof(&mut conn).await.is_empty());
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    eventually("the upstream leg to close", || echo.open() == 0).await;
}
