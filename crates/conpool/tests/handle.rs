//! Endpoint handles (`Pool::endpoint`): they share the pool's connections
//! and counters, keep their endpoint's entry from being forgotten, and stop
//! working when the pool closes. Also the forgetting itself: entries empty
//! for longer than `max_idle_time` leave the pool's map, and each thread's
//! memory of the entries it found lately never outlives them or mixes up
//! two pools.

mod support;

use std::time::Duration;

use conpool::{Config, Error, Pool};
use support::{EchoServer, round_trip};

/// Idle connections expire after 5 s, and entries empty for 5 s more are
/// forgotten at the next maintenance pass (every second).
fn forgetful_pool() -> Pool {
    Pool::new(
        Config::builder()
            .connect_timeout(None)
            .max_idle_time(Duration::from_secs(5))
            .maintenance_interval(Duration::from_secs(1))
            .build()
            .unwrap(),
    )
}

#[tokio::test]
async fn a_handle_shares_connections_and_counters_with_the_pool() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    let handle = pool.endpoint(&ep).unwrap();
    assert_eq!(handle.endpoint(), &ep);

    let mut conn = handle.get().await.unwrap();
    round_trip(&mut conn, b"via the handle").await.unwrap();
    let id = conn.id();
    drop(conn);

    let mut again = pool.get(&ep).await.unwrap();
    assert_eq!(again.id(), id, "the pool reuses what the handle returned");
    round_trip(&mut again, b"via the pool").await.unwrap();
    drop(again);

    let via_handle = handle.get().await.unwrap();
    assert_eq!(via_handle.id(), id);
    drop(via_handle);
    let stats = handle.stats();
    assert_eq!(stats, pool.stats(&ep));
    assert_eq!((stats.total_created, stats.total_reused), (1, 2));
    support::assert_books_balance(&pool, &ep, server.port());
}

#[tokio::test(start_paused = true)]
async fn empty_entries_are_forgotten_unless_a_handle_holds_them() {
    let held = EchoServer::start().await;
    let loose = EchoServer::start().await;
    let pool = forgetful_pool();
    let handle = pool.endpoint(&held.endpoint()).unwrap();
    drop(handle.get().await.unwrap());
    drop(pool.get(&loose.endpoint()).await.unwrap());
    assert_eq!(pool.all_stats().len(), 2);

    // Idle connections expire after 5 s; entries empty for 5 s more go.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let left: Vec<_> = pool.all_stats().into_iter().map(|(ep, _)| ep).collect();
    assert_eq!(left, vec![held.endpoint()], "only the held entry stays");

    // The held entry still works, with its counters.
    let conn = handle.get().await.unwrap();
    assert!(!conn.is_reused(), "its idle connection expired");
    drop(conn);
    assert_eq!(handle.stats().total_created, 2);

    // Once the handle is gone, it is forgotten too.
    drop(handle);
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(pool.all_stats().is_empty());
}

#[tokio::test]
async fn a_closed_pool_refuses_handles_and_their_gets() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    let handle = pool.endpoint(&ep).unwrap();
    drop(handle.get().await.unwrap());

    pool.close().await;
    assert!(matches!(handle.get().await, Err(Error::PoolClosed)));
    assert!(matches!(pool.endpoint(&ep), Err(Error::PoolClosed)));
    assert_eq!(handle.stats().idle, 0, "close closed the idle connection");
}

#[tokio::test]
async fn a_handle_outliving_every_pool_fails_cleanly() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    let handle = pool.endpoint(&ep).unwrap();
    drop(handle.get().await.unwrap());
    drop(pool);
    assert!(matches!(handle.get().await, Err(Error::PoolClosed)));
    support::eventually("the idle connection to close", || server.open() == 0).await;
}

#[tokio::test(start_paused = true)]
async fn a_get_after_its_entry_was_forgotten_makes_a_new_one() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = forgetful_pool();
    // Two gets on this thread: the second finds the entry without the map.
    drop(pool.get(&ep).await.unwrap());
    assert!(pool.get(&ep).await.unwrap().is_reused());
    assert_eq!(pool.stats(&ep).total_reused, 1);

    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(pool.all_stats().is_empty(), "the empty entry was forgotten");

    // This thread still remembers the old entry; the get must not use it.
    let conn = pool.get(&ep).await.unwrap();
    assert!(!conn.is_reused());
    drop(conn);
    let stats = pool.stats(&ep);
    assert_eq!(
        (stats.total_created, stats.total_reused, stats.idle),
        (1, 0, 1)
    );
    assert_eq!(pool.all_stats().len(), 1);
    support::assert_books_balance(&pool, &ep, server.port());
}

#[tokio::test]
async fn two_pools_on_one_thread_keep_their_own_entries() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let first = Pool::new(Config::default());
    let second = Pool::new(Config::default());
    let a = first.get(&ep).await.unwrap();
    let a_id = a.id();
    drop(a);
    // Same endpoint, same thread, another pool: a connection of its own.
    let b = second.get(&ep).await.unwrap();
    assert!(!b.is_reused());
    assert_ne!(b.id(), a_id);
    drop(b);
    let again = first.get(&ep).await.unwrap();
    assert_eq!(again.id(), a_id);
    drop(again);
    let (one, two) = (first.stats(&ep), second.stats(&ep));
    assert_eq!((one.total_created, one.total_reused, one.idle), (1, 1, 1));
    assert_eq!((two.total_created, two.total_reused, two.idle), (1, 0, 1));
    assert_eq!(server.open(), 2);

    // Dropping a pool closes its connections although this thread
    // remembers its entry.
    drop(first);
    support::eventually("the first pool's connection to close", || {
        server.open() == 1
    })
    .await;
    assert!(second.get(&ep).await.unwrap().is_reused());
}
