//! The pool under a real protocol: redis-server on a free loopback port,
//! spoken to with the hand-written RESP in `support::redis`.

mod support;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use conpool::{Config, Endpoint, Pool, Stream};
use support::assert_books_balance;
use support::redis::{RedisServer, Reply, call};

fn endpoint(redis: &RedisServer) -> Endpoint {
    Endpoint::new("127.0.0.1", redis.port).unwrap()
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

#[tokio::test]
async fn ping_answers_pong() {
    let redis = RedisServer::start(&[]).await;
    let ep = endpoint(&redis);
    let pool = Pool::new(Config::default());

    let mut conn = pool.get(&ep).await.unwrap();
    assert_eq!(
        call(&mut conn, &[b"PING"]).await.unwrap(),
        Reply::Simple("PONG".into())
    );
    drop(conn);

    let s = assert_books_balance(&pool, &ep, redis.port);
    assert_eq!((s.total_created, s.idle, s.errors), (1, 1, 0));
}

#[tokio::test]
async fn set_and_get_over_pooled_connections() {
    let redis = RedisServer::start(&[]).await;
    let ep = endpoint(&redis);
    let pool = Pool::new(Config::default());

    // SET through with_connection, GET through a plain lease: the second
    // runs on the connection the first gave back.
    let set = pool
        .with_connection(&ep, async |conn| {
            call(conn, &[b"SET", b"greeting", b"hello pool"]).await
        })
        .await
        .unwrap();
    assert_eq!(set, Reply::Simple("OK".into()));

    let mut conn = pool.get(&ep).await.unwrap();
    assert!(conn.is_reused());
    assert_eq!(
        call(&mut conn, &[b"GET", b"greeting"]).await.unwrap(),
        bulk("hello pool")
    );
    assert_eq!(
        call(&mut conn, &[b"GET", b"no-such-key"]).await.unwrap(),
        Reply::Nil
    );
    drop(conn);

    // A redis error reply is data, not an I/O failure: the closure decides.
    let wrong = pool
        .with_connection(&ep, async |conn| call(conn, &[b"INCR", b"greeting"]).await)
        .await
        .unwrap();
    assert!(
        matches!(wrong, Reply::Error(ref e) if e.starts_with("ERR")),
        "{wrong:?}"
    );

    let s = assert_books_balance(&pool, &ep, redis.port);
    assert_eq!(
        (s.total_created, s.total_reused, s.total_closed, s.errors),
        (1, 2, 0, 0)
    );
}

#[tokio::test]
async fn a_hundred_tasks_never_see_each_others_replies() {
    const TASKS: usize = 100;
    const ROUNDS: usize = 5; // a SET and a GET each: 10 commands per task
    let redis = RedisServer::start(&[]).await;
    let ep = endpoint(&redis);
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(8)
            .build()
            .unwrap(),
    );

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let pool = pool.clone();
            let ep = ep.clone();
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let key = format!("task:{task}:round:{round}");
                    let value = format!("value of task {task} in round {round}");
                    // SET and GET on separate leases, so the GET most likely
                    // runs on a connection another task used in between.
                    let set = pool
                        .with_connection(&ep, async |conn| {
                            call(conn, &[b"SET", key.as_bytes(), value.as_bytes()]).await
                        })
                        .await?;
                    assert_eq!(set, Reply::Simple("OK".into()), "{key}");
                    let mut conn = pool.get(&ep).await?;
                    let got = call(&mut conn, &[b"GET", key.as_bytes()]).await?;
                    assert_eq!(got, bulk(&value), "{key}");
                }
                Ok::<_, io::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    let gets = (TASKS * ROUNDS * 2) as u64;
    let s = assert_books_balance(&pool, &ep, redis.port);
    assert!(
        (1..=8).contains(&s.total_created),
        "at most 8 connections: {s:?}"
    );
    assert_eq!(s.total_reused, gets - s.total_created, "{s:?}");
    assert_eq!((s.total_closed, s.errors), (0, 0), "{s:?}");
}

#[tokio::test]
async fn a_ping_health_check_passes_on_healthy_redis_connections() {
    let redis = RedisServer::start(&[]).await;
    let ep = endpoint(&redis);
    let checks = Arc::new(AtomicUsize::new(0));
    let counter = checks.clone();
    let pool = Pool::new(
        Config::builder()
            .health_check(move |stream: &mut Stream| {
                counter.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    matches!(call(stream, &[b"PING"]).await, Ok(Reply::Simple(ref s)) if s == "PONG")
                })
            })
            .build()
            .unwrap(),
    );

    let mut first = pool.get(&ep).await.unwrap();
    let id = first.id();
    assert_eq!(
        call(&mut first, &[b"SET", b"k", b"v"]).await.unwrap(),
        Reply::Simple("OK".into())
    );
    drop(first);
    assert_eq!(
        checks.load(Ordering::SeqCst),
        0,
        "a new connection is not checked"
    );

    for round in 1..=3 {
        let mut conn = pool.get(&ep).await.unwrap();
        assert_eq!(checks.load(Ordering::SeqCst), round, "checked before reuse");
        assert!(conn.is_reused());
        assert_eq!(conn.id(), id, "the healthy connection is the one reused");
        // The check's PONG was consumed whole: the next reply is ours.
        assert_eq!(call(&mut conn, &[b"GET", b"k"]).await.unwrap(), bulk("v"));
    }

    let s = assert_books_balance(&pool, &ep, redis.port);
    assert_eq!(
        (s.total_created, s.total_reused, s.total_closed),
        (1, 3, 0),
        "no connection failed its check"
    );
}
