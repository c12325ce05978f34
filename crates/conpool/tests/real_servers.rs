//! Real servers closing idle connections on their own schedule: the next
//! `get` after the server's idle close works on the first try.
//!
//! These tests wait in real time for the servers' timers (a second or two):
//! what they assert is behaviour, never a duration.

mod support;

use std::time::Duration;

use conpool::{CloseReason, Config, Endpoint, Pool};
use support::TlsCert;
use support::redis::{RedisServer, Reply, call};
use support::servers::{Memcached, Nginx, http_get};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Holds `n` connections at once, so that `n` distinct ones go idle.
async fn hold(pool: &Pool, ep: &Endpoint, n: usize) -> Vec<conpool::PooledConnection> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.get(ep).await.unwrap());
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_idle_timeout_never_fails_the_next_get() {
    let redis = RedisServer::start(&["--timeout", "1"]).await;
    let ep = Endpoint::new("127.0.0.1", redis.port).unwrap();
    let pool = Pool::new(Config::default());
    for mut conn in hold(&pool, &ep, 4).await {
        assert_eq!(
            call(&mut conn, &[b"PING"]).await.unwrap(),
            Reply::Simple("PONG".into())
        );
    }
    // redis closes clients idle for more than a second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Every get works on the first try: the dead ones are found and
    // replaced before they are handed out.
    for _ in 0..4 {
        let mut conn = pool.get(&ep).await.unwrap();
        assert_eq!(
            call(&mut conn, &[b"PING"]).await.unwrap(),
            Reply::Simple("PONG".into())
        );
    }
    let s = pool.stats(&ep);
    assert_eq!(s.closed_for(CloseReason::PeerClosed), 4, "{s:?}");
    assert_eq!(s.errors, 0);
}

async fn nginx_keepalive_close(tls: bool) {
    let cert = TlsCert::localhost();
    let nginx = Nginx::start(&cert, "1s").await;
    let ep = nginx.endpoint(tls);
    let pool = Pool::new(
        Config::builder()
            .tls_config(cert.client_config())
            .build()
            .unwrap(),
    );
    // nginx applies keepalive_timeout after a first request (before it,
    // client_header_timeout), so every connection serves one.
    for mut conn in hold(&pool, &ep, 3).await {
        assert_eq!(
            http_get(&mut conn).await.unwrap(),
            (200, "ok\n".to_string())
        );
    }
    assert_eq!(pool.stats(&ep).total_created, 3);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Every get works on the first try: the dead ones are found and
    // replaced before they are handed out.
    for _ in 0..3 {
        let mut conn = pool.get(&ep).await.unwrap();
        assert_eq!(
            http_get(&mut conn).await.unwrap(),
            (200, "ok\n".to_string())
        );
    }
    let s = pool.stats(&ep);
    let dead = s.closed_for(CloseReason::PeerClosed) + s.closed_for(CloseReason::ProbeFailed);
    assert_eq!(dead, 3, "{s:?}");
    assert_eq!(s.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_keepalive_timeout_never_fails_the_next_get() {
    nginx_keepalive_close(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_tls_keepalive_timeout_never_fails_the_next_get() {
    nginx_keepalive_close(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_set_and_get_over_pooled_connections() {
    let memcached = Memcached::start().await;
    let ep = Endpoint::new("127.0.0.1", memcached.port).unwrap();
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(4)
            .build()
            .unwrap(),
    );
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (pool, ep) = (pool.clone(), ep.clone());
            tokio::spawn(async move {
                for j in 0..5 {
                    let mut conn = pool.get(&ep).await.unwrap();
                    let (key, value) = (format!("k{i}-{j}"), format!("value of {i} {j}"));
                    let set = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
                    conn.write_all(set.as_bytes()).await.unwrap();
                    let mut reader = BufReader::with_capacity(1, &mut conn);
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    assert_eq!(line, "STORED\r\n");
                    drop(reader);
                    conn.write_all(format!("get {key}\r\n").as_bytes())
                        .await
                        .unwrap();
                    let mut reader = BufReader::with_capacity(1, &mut conn);
                    let mut lines = Vec::new();
                    for _ in 0..3 {
                        let mut line = String::new();
                        reader.read_line(&mut line).await.unwrap();
                        lines.push(line);
                    }
                    assert_eq!(lines[1], format!("{value}\r\n"));
                    assert_eq!(lines[2], "END\r\n");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let s = pool.stats(&ep);
    assert!(s.total_created <= 4);
    assert_eq!(s.total_created + s.total_reused, 160);
    assert_eq!(
        support::client_sockets_to(memcached.port),
        s.idle,
        "the process holds exactly the idle connections"
    );
}
