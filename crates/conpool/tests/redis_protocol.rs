//! `conpool::redis::Redis` against a real redis-server, driven with
//! redis-rs commands: shares of one multiplexed connection, the handshake
//! (database, user, password) on every new connection, a rejected
//! handshake, a connection the server closed, and the driver's end on
//! close, drop and clear. A plain redis-rs client, outside the pool,
//! checks what the server saw.
//!
//! `examples/redis.rs` is compiled into this test (examples cannot be
//! imported), so the test runs whatever the example does.

mod support;

#[path = "../examples/redis.rs"]
#[allow(dead_code)] // its `main` runs only as the example
mod redis_example;

use std::sync::Arc;
use std::time::Duration;

use conpool::redis::Redis;
use conpool::{CloseReason, Config, Endpoint, Error, Pool, ProtocolPool};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, RedisConnectionInfo};
use support::eventually;
use support::redis::RedisServer;

const PASSWORD: &str = "s3cret";

fn endpoint(server: &RedisServer) -> Endpoint {
    Endpoint::new("127.0.0.1", server.port).unwrap()
}

/// A redis-rs client of its own, outside the pool, on database `db`.
async fn outside(server: &RedisServer, db: i64, password: Option<&str>) -> MultiplexedConnection {
    let auth = password.map_or(String::new(), |p| format!(":{p}@"));
    let client =
        redis::Client::open(format!("redis://{auth}127.0.0.1:{}/{db}", server.port)).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// The clients the server has open (the asking one included).
async fn clients(admin: &mut MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .unwrap();
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Connections the server has accepted since it started.
async fn connections_received(admin: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(admin)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total_connections_received in {info:?}"))
}

/// Waits, in real time, until the server has `n` clients open.
async fn until_clients(admin: &mut MultiplexedConnection, n: usize, what: &str) {
    for _ in 0..1000 {
        if clients(admin).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "{what}: the server still has {} clients, not {n}",
        clients(admin).await
    );
}

fn redis_pool(config: Config, info: RedisConnectionInfo) -> (Pool, ProtocolPool<Redis>) {
    let pool = Pool::new(config);
    let redis = pool.protocol(Redis::new(info));
    (pool, redis)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_tasks_share_one_multiplexed_connection() {
    const TASKS: usize = 64;
    let server = RedisServer::start(&[]).await;
    let ep = endpoint(&server);
    let (_pool, redis) = redis_pool(Config::default(), RedisConnectionInfo::default());

    // Every task holds its share until all 64 do, so all are in flight at
    // once; then each runs its commands on it.
    let all_in = Arc::new(tokio::sync::Barrier::new(TASKS + 1));
    let done = Arc::new(tokio::sync::Barrier::new(TASKS + 1));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (redis, ep, all_in, done) =
                (redis.clone(), ep.clone(), all_in.clone(), done.clone());
            tokio::spawn(async move {
                let mut conn = redis.get(&ep).await.unwrap();
                let (id, reused) = (conn.id(), conn.is_reused());
                all_in.wait().await;
                let key = format!("task:{task}");
                for round in 0..20 {
                    let value = format!("{task}/{round}");
                    let () = conn.set(&key, &value).await.unwrap();
                    let got: String = conn.get(&key).await.unwrap();
                    assert_eq!(got, value);
                }
                done.wait().await;
                (id, reused)
            })
        })
        .collect();
    // Bounded, so that a pool that cannot give 64 shares at once fails
    // here instead of hanging.
    tokio::time::timeout(Duration::from_secs(10), all_in.wait())
        .await
        .expect("all 64 tasks hold a share at once");
    let s = redis.stats(&ep);
    assert_eq!((s.shares, s.active, s.idle), (TASKS, 1, 0), "{s:?}");
    assert_eq!(s.protocol, Some("redis"));
    done.wait().await;

    let mut ids = Vec::new();
    let mut reused = 0;
    for task in tasks {
        let (id, was_reused) = task.await.unwrap();
        ids.push(id);
        reused += usize::from(was_reused);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every share is of one connection");
    assert_eq!(reused, TASKS - 1, "every share after the first reuses it");

    let s = redis.stats(&ep);
    assert_eq!((s.shares, s.active, s.idle), (0, 0, 1), "{s:?}");
    assert_eq!(
        (s.total_created, s.total_closed, s.errors),
        (1, 0, 0),
        "{s:?}"
    );

    // Given back to the pool once its last share was: leased again, it is
    // a reuse.
    let conn = redis.get(&ep).await.unwrap();
    assert!(conn.is_reused());
    assert_eq!(conn.id(), ids[0]);
    drop(conn);
    let s = redis.stats(&ep);
    assert_eq!((s.total_created, s.total_reused), (1, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_limit_spreads_tasks_over_connections_within_the_endpoints_limit() {
    const TASKS: usize = 64;
    const SHARES: usize = 8;
    let server = RedisServer::start(&[]).await;
    let ep = endpoint(&server);
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(2)
            .build()
            .unwrap(),
    );
    let limit = std::num::NonZeroUsize::new(SHARES).unwrap();
    let redis = pool.protocol(Redis::new(RedisConnectionInfo::default()).max_shares(limit));

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (redis, ep) = (redis.clone(), ep.clone());
            tokio::spawn(async move {
                let mut most_shares = 0;
                for round in 0..200 {
                    let (key, value) = (format!("task:{task}"), format!("{task}/{round}"));
                    let mut conn = redis.get(&ep).await.unwrap();
                    most_shares = most_shares.max(redis.stats(&ep).shares);
                    let () = conn.set(&key, &value).await.unwrap();
                    drop(conn);
                    let mut conn = redis.get(&ep).await.unwrap();
                    let got: String = conn.get(&key).await.unwrap();
                    assert_eq!(got, value);
                }
                most_shares
            })
        })
        .collect();
    let mut most_shares = 0;
    for task in tasks {
        most_shares = most_shares.max(task.await.unwrap());
    }
    assert!(
        most_shares <= 2 * SHARES,
        "{most_shares} shares at once over 2 connections of {SHARES}"
    );
    let s = redis.stats(&ep);
    assert_eq!(s.total_created, 2, "{s:?}");
    assert_eq!((s.total_closed, s.errors, s.shares), (0, 0, 0), "{s:?}");
}

#[tokio::test]
async fn an_idle_connection_the_server_timed_out_is_replaced() {
    let server = RedisServer::start(&["--timeout", "1"]).await;
    let ep = endpoint(&server);
    let mut admin = outside(&server, 0, None).await;
    let (_pool, redis) = redis_pool(
        Config::builder()
            .maintenance_interval(None)
            .build()
            .unwrap(),
        RedisConnectionInfo::default(),
    );

    let mut conn = redis.get(&ep).await.unwrap();
    let () = conn.set("k", "v").await.unwrap();
    let mut old = (*conn).clone();
    drop(conn);
    // Real time: the server's idle timeout runs on its own clock (in
    // whole seconds: a client idle for more than one is closed within
    // about two). The asking client stays busy, so it is not closed.
    until_clients(&mut admin, 1, "the server closes the idle connection").await;
    let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut old).await;
    assert!(ping.is_err(), "the timed-out connection is over");

    let mut conn = redis.get(&ep).await.unwrap();
    let got: String = conn.get("k").await.unwrap();
    assert_eq!(got, "v");
    let s = redis.stats(&ep);
    assert_eq!(
        (s.total_created, s.closed_for(CloseReason::NotReady)),
        (2, 1),
        "{s:?}"
    );
}

#[tokio::test]
async fn the_database_and_the_user_are_sent_on_every_new_connection() {
    let server = RedisServer::start(&["--requirepass", PASSWORD]).await;
    let ep = endpoint(&server);
    let mut admin = outside(&server, 0, Some(PASSWORD)).await;
    let () = redis::cmd("ACL")
        .arg(&["SETUSER", "app", "on", ">app-password", "~*", "+@all"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let info = RedisConnectionInfo::default()
        .set_username("app")
        .set_password("app-password")
        .set_db(3);
    let (_pool, redis) = redis_pool(Config::default(), info);

    for key in ["first", "second"] {
        let mut conn = redis.get(&ep).await.unwrap();
        let whoami: String = redis::cmd("ACL")
            .arg("WHOAMI")
            .query_async(&mut *conn)
            .await
            .unwrap();
        assert_eq!(whoami, "app");
        let () = conn.set(key, "in db 3").await.unwrap();
        // The next get dials a new connection.
        conn.discard();
    }
    let s = redis.stats(&ep);
    assert_eq!(
        (s.total_created, s.closed_for(CloseReason::Discarded)),
        (2, 2),
        "{s:?}"
    );

    let mut db3 = outside(&server, 3, Some(PASSWORD)).await;
    let mut db0 = outside(&server, 0, Some(PASSWORD)).await;
    for key in ["first", "second"] {
        let in_3: Option<String> = db3.get(key).await.unwrap();
        let in_0: Option<String> = db0.get(key).await.unwrap();
        assert_eq!((in_3.as_deref(), in_0), (Some("in db 3"), None), "{key}");
    }
}

#[tokio::test]
async fn a_wrong_password_fails_at_once_and_is_not_dialed_again() {
    let server = RedisServer::start(&["--requirepass", PASSWORD]).await;
    let ep = endpoint(&server);
    let mut admin = outside(&server, 0, Some(PASSWORD)).await;
    let before = connections_received(&mut admin).await;
    let config = Config::builder()
        .connect_retry_count(5)
        .connect_retry_delay(Duration::from_secs(10))
        .build()
        .unwrap();
    let (_pool, redis) = redis_pool(config, RedisConnectionInfo::default().set_password("wrong"));

    // Five attempts ten seconds apart would take forty; a rejected
    // handshake takes one.
    let err = tokio::time::timeout(Duration::from_secs(5), redis.get(&ep))
        .await
        .expect("a rejected handshake is not dialed again")
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, Error::Handshake { ref endpoint, protocol: "redis", .. } if *endpoint == ep),
        "{err:?}"
    );
    assert!(
        message.contains(&ep.to_string()) && message.contains("redis"),
        "{message}"
    );
    let source = std::error::Error::source(&err).expect("the handshake's error is the source");
    let redis_error = source
        .downcast_ref::<redis::RedisError>()
        .expect("the source is redis-rs's error");
    assert_eq!(
        redis_error.kind(),
        redis::ErrorKind::AuthenticationFailed,
        "{redis_error}"
    );

    assert_eq!(
        connections_received(&mut admin).await - before,
        1,
        "the server saw one dial"
    );
    let s = redis.stats(&ep);
    assert_eq!(
        (s.total_created, s.errors, s.active, s.idle),
        (0, 1, 0, 0),
        "{s:?}"
    );
}

#[tokio::test]
async fn a_database_the_server_refuses_fails_with_the_servers_words() {
    let server = RedisServer::start(&["--databases", "4"]).await;
    let ep = endpoint(&server);
    let (_pool, redis) = redis_pool(Config::default(), RedisConnectionInfo::default().set_db(9));

    let err = redis.get(&ep).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Handshake {
                protocol: "redis",
                ..
            }
        ),
        "{err:?}"
    );
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("DB index is out of range"), "{source}");
    assert_eq!(redis.stats(&ep).errors, 1);
}

/// Kills the pool's connection from the server's side and waits until a
/// handle on it outside the pool sees it dead (its driver has ended).
async fn kill_and_see_dead(admin: &mut MultiplexedConnection, old: &mut MultiplexedConnection) {
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal"])
        .query_async(admin)
        .await
        .unwrap();
    assert_eq!(killed, 1, "the pool's connection is the only other client");
    let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(old).await;
    assert!(ping.is_err(), "a killed connection answers no PING");
}

#[tokio::test]
async fn the_next_get_after_the_server_closed_the_connection_gets_a_new_one() {
    let server = RedisServer::start(&[]).await;
    let ep = endpoint(&server);
    let mut admin = outside(&server, 0, None).await;
    let (_pool, redis) = redis_pool(
        Config::builder()
            .maintenance_interval(None)
            .build()
            .unwrap(),
        RedisConnectionInfo::default(),
    );

    let mut conn = redis.get(&ep).await.unwrap();
    let () = conn.set("k", "v").await.unwrap();
    let (first, mut old) = (conn.id(), (*conn).clone());
    drop(conn);
    kill_and_see_dead(&mut admin, &mut old).await;

    let mut conn = redis.get(&ep).await.unwrap();
    assert_ne!(conn.id(), first, "the dead connection is not handed out");
    let got: String = conn.get("k").await.unwrap();
    assert_eq!(got, "v");
    drop(conn);
    let s = redis.stats(&ep);
    assert_eq!((s.total_created, s.total_closed), (2, 1), "{s:?}");
    assert_eq!(s.closed_for(CloseReason::NotReady), 1, "{s:?}");
}

#[tokio::test]
async fn the_background_task_closes_a_connection_whose_driver_ended() {
    let server = RedisServer::start(&[]).await;
    let ep = endpoint(&server);
    let mut admin = outside(&server, 0, None).await;
    let (_pool, redis) = redis_pool(
        Config::builder()
            .maintenance_interval(Duration::from_millis(20))
            .build()
            .unwrap(),
        RedisConnectionInfo::default(),
    );

    let mut conn = redis.get(&ep).await.unwrap();
    let () = conn.set("k", "v").await.unwrap();
    let mut old = (*conn).clone();
    drop(conn);
    kill_and_see_dead(&mut admin, &mut old).await;

    eventually("the background task closes the dead connection", || {
        redis.stats(&ep).closed_for(CloseReason::NotReady) == 1
    })
    .await;
    let s = redis.stats(&ep);
    assert_eq!((s.idle, s.active, s.total_created), (0, 0, 1), "{s:?}");
}

#[tokio::test]
async fn closing_the_pool_ends_the_connections_driver() {
    let server = RedisServer::start(&[]).await;
    let ep = endpoint(&server);
    let mut admin = outside(&server, 0, None).await;
    let (pool, redis) = redis_pool(Config::default(), RedisConnectionInfo::default());

    let mut conn = redis.get(&ep).await.unwrap();
    let () = conn.set("k", "v").await.unwrap();
    let mut old = (*conn).clone();
    drop(conn);
    assert_eq!(clients(&mut admin).await, 2, "this client and the pool's");

    pool.close().await;
    until_clients(&mut admin, 1, "after close").await;
    let ping: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut old).await;
    assert!(ping.is_err(), "the closed pool's connection is over");
    assert!(matches!(redis.get(&ep).await, Err(Error::PoolClosed)));
    let s = redis.stats(&ep);
    assert_eq!(
        (s.total_closed, s.closed_for(CloseReason::PoolClosed)),
        (1, 1),
        "{s:?}"
    );
}

#[tokio::test]
async fn dropping_the_pool_ends_the_connections_driver() {
    let server = RedisServer::start(&[]).await;
    let ep = endpoint(&server);
    let mut admin = outside(&server, 0, None).await;
    let (pool, redis) = redis_pool(Config::default(), RedisConnectionInfo::default());

    let mut conn = redis.get(&ep).await.unwrap();
    let () = conn.set("k", "v").await.unwrap();
    drop(conn);
    assert_eq!(clients(&mut admin).await, 2, "this client and the pool's");

    drop((pool, redis));
    until_clients(&mut admin, 1, "after the pool is dropped").await;
}

#[tokio::test]
async fn clear_endpoint_drains_the_shared_connection() {
    let server = RedisServer::start(&[]).await;
    let ep = endpoint(&server);
    let mut admin = outside(&server, 0, None).await;
    let (_pool, redis) = redis_pool(Config::default(), RedisConnectionInfo::default());

    let mut in_flight = redis.get(&ep).await.unwrap();
    let () = in_flight.set("k", "before").await.unwrap();
    let old = in_flight.id();
    redis.clear_endpoint(&ep);

    // The cleared connection takes no new shares: a new get dials anew.
    let mut new = redis.get(&ep).await.unwrap();
    assert_ne!(new.id(), old);
    assert!(!new.is_reused());
    // The share in flight still works until it is given back.
    let () = in_flight.set("k", "after the clear").await.unwrap();
    let got: String = new.get("k").await.unwrap();
    assert_eq!(got, "after the clear");
    let s = redis.stats(&ep);
    assert_eq!(
        (s.total_created, s.total_closed, s.shares),
        (2, 0, 2),
        "{s:?}"
    );
    assert_eq!(clients(&mut admin).await, 3);

    drop(in_flight);
    let s = redis.stats(&ep);
    assert_eq!(
        (s.total_closed, s.closed_for(CloseReason::Cleared)),
        (1, 1),
        "{s:?}"
    );
    until_clients(&mut admin, 2, "after the drained connection closed").await;

    // New gets share the new connection.
    drop(new);
    let again = redis.get(&ep).await.unwrap();
    assert!(again.is_reused());
    assert_eq!(redis.stats(&ep).total_created, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_example_runs_against_redis_server() {
    let server = RedisServer::start(&[]).await;
    let ep = redis_example::parse_addr(&format!("127.0.0.1:{}", server.port)).unwrap();
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(4)
            .build()
            .unwrap(),
    );
    let redis = pool.protocol(Redis::new(RedisConnectionInfo::default()));

    let stats = redis_example::set_and_get(&redis, &ep, 64).await.unwrap();
    assert_eq!((stats.errors, stats.total_closed), (0, 0), "{stats:?}");
    assert_eq!(
        stats.total_created, 1,
        "the 64 tasks share one connection: {stats:?}"
    );
    pool.close().await;
}
