//! `PooledConnection::release`: a caller that vouches for its last
//! exchange gets a connection with an idle read left pending back into the
//! pool, and every other sign of a broken exchange still closes it.

mod support;

use std::time::Duration;

use conpool::{CloseReason, Config, Endpoint, Pool, PooledConnection};
use support::{DeafServer, EchoServer, STALLING_WRITE, TlsCert, eventually, round_trip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pool_trusting(cert: &TlsCert) -> Pool {
    Pool::new(
        Config::builder()
            .tls_config(cert.client_config())
            .build()
            .unwrap(),
    )
}

/// What a protocol client watching for the server's close does between
/// exchanges: a read that waits, given up when the client is done.
async fn cut_off_idle_read(conn: &mut PooledConnection) {
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(20), conn.read(&mut buf))
            .await
            .is_err(),
        "the server said nothing, so the read waits"
    );
}

async fn an_idle_read_left_pending_is_reused_after_release(tls: bool) {
    let cert = TlsCert::localhost();
    let server = if tls {
        EchoServer::start_tls(&cert).await
    } else {
        EchoServer::start().await
    };
    let ep = if tls {
        server.tls_endpoint()
    } else {
        server.endpoint()
    };
    let pool = pool_trusting(&cert);
    let mut conn = pool.get(&ep).await.unwrap();
    let id = conn.id();
    round_trip(&mut conn, b"request").await.unwrap();
    cut_off_idle_read(&mut conn).await;
    conn.release();
    let s = pool.stats(&ep);
    assert_eq!((s.idle, s.total_closed), (1, 0), "{s:?}");
    let mut next = pool.get(&ep).await.unwrap();
    assert_eq!(next.id(), id);
    assert!(next.is_reused());
    round_trip(&mut next, b"next request").await.unwrap();
}

#[tokio::test]
async fn release_reuses_a_connection_with_an_idle_read_left_pending() {
    an_idle_read_left_pending_is_reused_after_release(false).await;
}

#[tokio::test]
async fn release_reuses_a_tls_connection_with_an_idle_read_left_pending() {
    an_idle_read_left_pending_is_reused_after_release(true).await;
}

#[tokio::test]
async fn release_after_a_cut_off_write_still_closes_the_connection() {
    let server = DeafServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    let mut conn = pool.get(&ep).await.unwrap();
    let id = conn.id();
    let request = vec![b'x'; STALLING_WRITE];
    assert!(
        tokio::time::timeout(Duration::from_millis(100), conn.write_all(&request))
            .await
            .is_err(),
        "the server reads nothing, so the write cannot finish"
    );
    // Neither a flush nor a read since makes the half-sent request whole.
    conn.flush().await.unwrap();
    let mut greeting = [0u8; DeafServer::GREETING.len()];
    conn.read_exact(&mut greeting).await.unwrap();
    cut_off_idle_read(&mut conn).await;
    conn.release();
    let s = pool.stats(&ep);
    assert_eq!(s.closed_for(CloseReason::Cancelled), 1, "{s:?}");
    assert_ne!(pool.get(&ep).await.unwrap().id(), id);
}

async fn unread_bytes_close_on_release(tls: bool) {
    let cert = TlsCert::localhost();
    let server = if tls {
        EchoServer::start_tls(&cert).await
    } else {
        EchoServer::start().await
    };
    let ep: Endpoint = if tls {
        server.tls_endpoint()
    } else {
        server.endpoint()
    };
    let pool = pool_trusting(&cert);
    let mut conn = pool.get(&ep).await.unwrap();
    let id = conn.id();
    conn.write_all(b"hello world").await.unwrap();
    let mut half = [0u8; 5];
    conn.read_exact(&mut half).await.unwrap();
    if !tls {
        // The rest of the echo is in the socket before the release looks.
        // (Over TLS it came in the same record, so rustls holds it.)
        let tcp = conn.as_tcp().unwrap();
        let mut peeked = [0u8; 16];
        while tcp.peek(&mut peeked).await.unwrap() < 6 {
            tokio::task::yield_now().await;
        }
    }
    conn.release();
    let s = pool.stats(&ep);
    assert_eq!(s.closed_for(CloseReason::UnexpectedData), 1, "{s:?}");
    assert_ne!(pool.get(&ep).await.unwrap().id(), id);
}

#[tokio::test]
async fn release_with_unread_bytes_closes_the_connection() {
    unread_bytes_close_on_release(false).await;
}

#[tokio::test]
async fn release_with_unread_tls_plaintext_closes_the_connection() {
    unread_bytes_close_on_release(true).await;
}

#[tokio::test]
async fn release_sees_a_server_close_that_came_while_a_read_was_idle() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    let mut conn = pool.get(&ep).await.unwrap();
    round_trip(&mut conn, b"request").await.unwrap();
    cut_off_idle_read(&mut conn).await;
    server.close_all();
    eventually("the server to close", || server.open() == 0).await;
    conn.release();
    let s = pool.stats(&ep);
    assert_eq!(s.closed_for(CloseReason::PeerClosed), 1, "{s:?}");
    assert_eq!(s.idle, 0);
}

#[test]
fn release_after_its_runtime_ended_closes_the_connection_without_panicking() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pool, ep, conn) = runtime.block_on(async {
        let server = EchoServer::start().await;
        let ep = server.endpoint();
        let pool = Pool::new(Config::default());
        let mut conn = pool.get(&ep).await.unwrap();
        round_trip(&mut conn, b"request").await.unwrap();
        cut_off_idle_read(&mut conn).await;
        (pool, ep, conn)
    });
    drop(runtime);
    conn.release();
    let s = pool.stats(&ep);
    assert_eq!((s.idle, s.total_closed), (0, 1), "{s:?}");
}
