//! Unix domain sockets against real servers: redis-server and nginx (plain
//! and TLS) listening on sockets; endpoints keyed by path, dialed without
//! a lookup, and the forms and mistakes of their text.

mod support;

use std::error::Error as _;

use conpool::{Config, Endpoint, Error, Pool};
use support::TlsCert;
use support::hosts::Hosts;
use support::redis::{RedisServer, Reply, call};
use support::servers::{Nginx, http_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn redis_on_a_unix_socket_answers_and_its_connection_is_reused() {
    let redis = RedisServer::start(&[]).await;
    let hosts = Hosts::new();
    let pool = Pool::new(Config::builder().resolver(hosts.clone()).build().unwrap());
    let endpoint = Endpoint::unix(&redis.socket).unwrap();

    for _ in 0..3 {
        let mut conn = pool.get(&endpoint).await.unwrap();
        assert_eq!(conn.peer_addr(), None, "not a TCP connection");
        let reply = call(&mut conn, &[b"PING"]).await.unwrap();
        assert_eq!(reply, Reply::Simple("PONG".into()));
    }

    let stats = pool.stats(&endpoint);
    assert_eq!((stats.total_created, stats.total_reused), (1, 2));
    assert_eq!(hosts.lookups(), 0, "a socket path is never resolved");
}

#[tokio::test]
async fn nginx_on_a_unix_socket_serves_plain_http() {
    let nginx = Nginx::start(&TlsCert::localhost(), "60s").await;
    let pool = Pool::new(Config::default());
    let endpoint: Endpoint = format!("unix://{}", nginx.socket.display())
        .parse()
        .unwrap();

    for _ in 0..2 {
        let mut conn = pool.get(&endpoint).await.unwrap();
        assert_eq!(http_get(&mut conn).await.unwrap(), (200, "ok\n".into()));
    }
    assert_eq!(pool.stats(&endpoint).total_created, 1);
}

#[tokio::test]
async fn tls_over_a_unix_socket_verifies_the_endpoints_server_name() {
    let cert = TlsCert::localhost();
    let nginx = Nginx::start(&cert, "60s").await;
    let pool = Pool::new(
        Config::builder()
            .tls_config(cert.client_config())
            .build()
            .unwrap(),
    );
    let endpoint = Endpoint::unix_tls(&nginx.tls_socket, "localhost").unwrap();

    let mut conn = pool.get(&endpoint).await.unwrap();
    assert_eq!(http_get(&mut conn).await.unwrap(), (200, "ok\n".into()));
    drop(conn);

    // The certificate is for localhost: another name fails, at once.
    let wrong = Endpoint::unix_tls(&nginx.tls_socket, "db.internal").unwrap();
    let err = pool.get(&wrong).await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    assert!(
        err.to_string().contains("certificate"),
        "the reason is rustls's, in words: {err}"
    );
    assert_eq!(pool.stats(&wrong).errors, 1);
}

/// A Unix socket's server closes it while it sits idle, and the get comes
/// before the runtime has turned its I/O driver (so tokio's readiness flag
/// is still clear): the kernel is asked, as for TCP, and the closed
/// connection is not handed out.
#[tokio::test(flavor = "current_thread")]
async fn a_unix_connection_closed_while_idle_is_never_handed_out_even_before_the_driver_sees_it() {
    use std::io::{Read, Write};
    let dir = support::servers::TempDir::new("unix-close");
    let path = dir.path.join("echo.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
    // A server on a thread of its own: answers each connection's first
    // byte, and closes the first connection when told.
    let server = std::thread::spawn(move || {
        for (i, socket) in listener.incoming().take(2).enumerate() {
            let mut socket = socket.unwrap();
            let mut byte = [0u8; 1];
            socket.read_exact(&mut byte).unwrap();
            socket.write_all(&byte).unwrap();
            if i == 0 {
                close_rx.recv().unwrap();
                drop(socket);
                closed_tx.send(()).unwrap();
            }
        }
    });
    let pool = Pool::new(Config::default());
    let endpoint = Endpoint::unix(&path).unwrap();

    let mut conn = pool.get(&endpoint).await.unwrap();
    assert!(conn.as_unix().is_some());
    conn.write_all(b"a").await.unwrap();
    let mut byte = [0u8; 1];
    conn.read_exact(&mut byte).await.unwrap();
    let first = conn.id();
    // A release looks at the socket (and finds it quiet), which leaves
    // tokio's readiness flag clear: from here only the kernel knows.
    conn.release();
    // Blocking, so that the runtime does not run meanwhile: the close is
    // in the kernel, not yet in tokio's readiness.
    close_tx.send(()).unwrap();
    closed_rx.recv().unwrap();

    let mut conn = pool.get(&endpoint).await.unwrap();
    assert_ne!(conn.id(), first, "the closed connection was handed out");
    conn.write_all(b"b").await.unwrap();
    conn.read_exact(&mut byte).await.unwrap();
    assert_eq!(&byte, b"b");
    let stats = pool.stats(&endpoint);
    assert_eq!(
        (stats.total_created, stats.total_closed),
        (2, 1),
        "{stats:?}"
    );
    drop(conn);
    server.join().unwrap();
}

#[tokio::test]
async fn a_socket_with_no_server_fails_the_get_naming_the_path() {
    let dir = support::servers::TempDir::new("unix-missing");
    let path = dir.path.join("nobody.sock");
    let pool = Pool::new(Config::builder().connect_retry_count(1).build().unwrap());
    let endpoint = Endpoint::unix(&path).unwrap();

    let err = pool.get(&endpoint).await.unwrap_err();

    assert!(matches!(err, Error::ConnectionFailed { .. }), "{err:?}");
    let source = err.source().unwrap().to_string();
    assert!(
        source.contains(&format!("unix://{}", path.display())),
        "{source}"
    );
}

#[test]
fn unix_endpoints_parse_print_and_are_keyed_by_path() {
    let abs: Endpoint = "unix:///run/redis.sock".parse().unwrap();
    assert_eq!(abs, Endpoint::unix("/run/redis.sock").unwrap());
    assert_eq!(
        abs.unix_path(),
        Some(std::path::Path::new("/run/redis.sock"))
    );
    assert!(!abs.is_tls());
    assert_eq!(abs.ip(), None);

    let rel: Endpoint = "unix:run/app.sock".parse().unwrap();
    assert_eq!(rel.unix_path(), Some(std::path::Path::new("run/app.sock")));
    // A relative path that reads as an IP address is still a path.
    assert_eq!("unix:127.0.0.1".parse::<Endpoint>().unwrap().ip(), None);

    let tls: Endpoint = "unix+tls://db.internal/run/db.sock".parse().unwrap();
    assert_eq!(
        tls,
        Endpoint::unix_tls("/run/db.sock", "db.internal").unwrap()
    );
    assert_eq!(tls.unix_server_name(), Some("db.internal"));
    assert!(tls.is_tls());

    for text in [
        "unix:///run/redis.sock",
        "unix:run/app.sock",
        "unix+tls://db.internal/run/db.sock",
    ] {
        let endpoint: Endpoint = text.parse().unwrap();
        assert_eq!(endpoint.to_string(), text);
    }

    let mut keys = std::collections::HashSet::new();
    keys.insert(abs.clone());
    keys.insert(Endpoint::unix("/run/redis.sock").unwrap());
    keys.insert(Endpoint::unix("/run/other.sock").unwrap());
    keys.insert(tls.clone());
    keys.insert(Endpoint::unix_tls("/run/db.sock", "other.internal").unwrap());
    keys.insert(Endpoint::unix_tls("/run/redis.sock", "db.internal").unwrap());
    assert_eq!(keys.len(), 5, "one key per path, scheme and server name");
}

#[test]
fn bad_unix_endpoints_name_the_value_and_the_rule() {
    let err = |text: &str| text.parse::<Endpoint>().unwrap_err().to_string();
    assert_eq!(
        err("unix://"),
        "invalid endpoint: the Unix socket path is empty"
    );
    assert_eq!(
        err("unix:"),
        "invalid endpoint: the Unix socket path is empty"
    );
    assert_eq!(
        Endpoint::unix("").unwrap_err().to_string(),
        "invalid endpoint: the Unix socket path is empty"
    );
    assert_eq!(
        err("unix://run/redis.sock"),
        "invalid endpoint: \"unix://run/redis.sock\" has the relative path \"run/redis.sock\" \
         after unix://, where only absolute ones are allowed; write unix:///abs/path, or \
         unix:run/redis.sock for a relative path"
    );
    assert_eq!(
        Endpoint::unix_tls("run/db.sock", "db.internal")
            .unwrap_err()
            .to_string(),
        "invalid endpoint: the TLS Unix socket path \"run/db.sock\" is relative; it must be \
         absolute (start with '/')"
    );
    assert_eq!(
        err("unix+tls:///run/db.sock"),
        "invalid endpoint: \"unix+tls:///run/db.sock\" names no server to verify; write \
         unix+tls://server_name/abs/path"
    );
    assert_eq!(
        err("unix+tls://db.internal"),
        "invalid endpoint: the Unix socket path is empty"
    );
    assert_eq!(
        Endpoint::unix_tls("/run/db.sock", "not a name")
            .unwrap_err()
            .to_string(),
        "invalid endpoint: server name \"not a name\" of the TLS Unix socket \"/run/db.sock\" \
         is neither a DNS name nor an IP address"
    );
    let long = format!("/{}", "x".repeat(107));
    assert_eq!(
        Endpoint::unix(&long).unwrap_err().to_string(),
        format!(
            "invalid endpoint: the Unix socket path {long:?} is 108 bytes long; a socket \
             address holds at most 107"
        )
    );
    assert_eq!(
        Endpoint::unix("a\0b").unwrap_err().to_string(),
        "invalid endpoint: the Unix socket path \"a\\0b\" contains a NUL byte"
    );
}
