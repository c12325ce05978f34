//! The `on_connect` hook: run on every new connection before anyone sees
//! it, against redis-server with `requirepass` (AUTH on connect) and
//! against in-memory custom dialers (retry of transient failures, the
//! connect timeout around the hook).

mod support;

use std::error::Error as _;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conpool::dial::{Dial, DialError, OnConnectError};
use conpool::{BoxFuture, Config, ConfigBuilder, Endpoint, Error, Pool, Stream};
use support::assert_books_balance;
use support::redis::{RedisServer, Reply, call};

/// A builder whose hook AUTHs with `password`, failing with the server's
/// words when it says no, and counts its runs in `runs`.
fn authenticating(password: &'static str, runs: Arc<AtomicUsize>) -> ConfigBuilder {
    Config::builder().on_connect(move |stream: &mut Stream, _endpoint: &Endpoint| {
        let runs = runs.clone();
        Box::pin(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            match call(stream, &[b"AUTH", password.as_bytes()]).await? {
                Reply::Simple(ok) if ok == "OK" => Ok(()),
                Reply::Error(words) => Err(OnConnectError::fatal(words)),
                other => Err(OnConnectError::fatal(format!("unexpected reply {other:?}"))),
            }
        })
    })
}

#[tokio::test]
async fn on_connect_authenticates_every_new_redis_connection_before_it_is_handed_out() {
    let redis = RedisServer::with_password("s3cret").await;
    let ep = Endpoint::new("127.0.0.1", redis.port).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let pool = Pool::new(authenticating("s3cret", runs.clone()).build().unwrap());

    // Two at once: two new connections, each authenticated.
    let mut first = pool.get(&ep).await.unwrap();
    let mut second = pool.get(&ep).await.unwrap();
    for conn in [&mut first, &mut second] {
        assert_eq!(
            call(conn, &[b"PING"]).await.unwrap(),
            Reply::Simple("PONG".into())
        );
    }
    drop((first, second));
    // A reused connection is not authenticated again.
    let mut again = pool.get(&ep).await.unwrap();
    assert!(again.is_reused());
    call(&mut again, &[b"PING"]).await.unwrap();
    drop(again);

    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let s = assert_books_balance(&pool, &ep, redis.port);
    assert_eq!((s.total_created, s.errors), (2, 0));
}

#[tokio::test]
async fn a_wrong_password_fails_the_get_at_once_with_the_servers_words() {
    let redis = RedisServer::with_password("s3cret").await;
    let ep = Endpoint::new("127.0.0.1", redis.port).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let pool = Pool::new(
        authenticating("wrong", runs.clone())
            .connect_retry_count(3)
            .build()
            .unwrap(),
    );

    let err = pool.get(&ep).await.unwrap_err();
    let Error::OnConnect {
        endpoint, attempts, ..
    } = &err
    else {
        panic!("expected Error::OnConnect, got {err:?}");
    };
    assert_eq!((endpoint, *attempts), (&ep, 1), "not retried");
    let words = err.source().unwrap().to_string();
    assert!(
        words.starts_with("WRONGPASS invalid username-password pair"),
        "{words}"
    );
    assert!(err.to_string().contains(&words), "{err}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // A failed dial: counted, and nothing left open.
    let s = assert_books_balance(&pool, &ep, redis.port);
    assert_eq!((s.total_created, s.active, s.idle, s.errors), (0, 0, 0, 1));
}

/// Connects every endpoint to an in-memory stream, counting dials.
struct InMemory {
    dials: Arc<AtomicUsize>,
}

impl Dial for InMemory {
    fn dial<'a>(&'a self, _endpoint: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
        Box::pin(async move {
            self.dials.fetch_add(1, Ordering::SeqCst);
            let (client, server) = tokio::io::duplex(64);
            // The far end stays open as long as the runtime does.
            tokio::spawn(async move {
                let _server = server;
                std::future::pending::<()>().await
            });
            Ok(Stream::custom(client))
        })
    }
}

/// A pool over [`InMemory`] whose hook fails transiently on its first
/// `failures` runs.
fn flaky(failures: usize, attempts: u32) -> (Pool, Arc<AtomicUsize>) {
    let dials = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    let config = Config::builder()
        .connect_retry_count(attempts)
        .connect_retry_delay(Duration::from_millis(10))
        .on_connect(move |_stream: &mut Stream, _endpoint: &Endpoint| {
            let run = runs.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if run < failures {
                    Err(OnConnectError::transient(io::Error::other(
                        "LOADING the server is loading its data set",
                    )))
                } else {
                    Ok(())
                }
            })
        })
        .build()
        .unwrap();
    let pool = Pool::with_dialer(
        config,
        InMemory {
            dials: dials.clone(),
        },
    );
    (pool, dials)
}

#[tokio::test(start_paused = true)]
async fn a_transient_hook_error_is_retried_on_a_new_connection_for_custom_dialers_too() {
    let ep = Endpoint::new("memory", 1).unwrap();
    let (pool, dials) = flaky(2, 3);
    pool.get(&ep).await.unwrap();
    assert_eq!(dials.load(Ordering::SeqCst), 3, "a new stream per attempt");

    let (pool, dials) = flaky(5, 2);
    let err = pool.get(&ep).await.unwrap_err();
    assert!(
        matches!(&err, Error::OnConnect { attempts: 2, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.source().unwrap().to_string(),
        "LOADING the server is loading its data set"
    );
    assert_eq!(dials.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hook_that_hangs_is_cut_by_the_connect_timeout() {
    let ep = Endpoint::new("memory", 1).unwrap();
    let config = Config::builder()
        .connect_timeout(Duration::from_secs(2))
        .connect_retry_count(1)
        .on_connect(|_stream: &mut Stream, _endpoint: &Endpoint| Box::pin(std::future::pending()))
        .build()
        .unwrap();
    let dials = Arc::new(AtomicUsize::new(0));
    let pool = Pool::with_dialer(config, InMemory { dials });

    let err = pool.get(&ep).await.unwrap_err();
    assert!(
        matches!(&err, Error::ConnectionTimeout { timeout, .. } if *timeout == Duration::from_secs(2)),
        "{err:?}"
    );
}
