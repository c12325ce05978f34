//! Per-thread slots (`ThreadSlots`) under real threads: connections parked
//! on one worker thread serve callers on the other, limits and books hold,
//! a waiter is never stranded while a connection sits parked, and clear and
//! close reach parked connections.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conpool::{CloseReason, Config, Pool, ThreadSlots};
use support::{EchoServer, assert_books_balance, round_trip};

fn slots_config(max: usize) -> Config {
    Config::builder()
        .max_connections_per_endpoint(max)
        .thread_slots(ThreadSlots::Always)
        .acquire_timeout(Duration::from_secs(5))
        // No maintenance pass to take parked connections back: only the
        // pool's own handover may serve a waiter.
        .maintenance_interval(None)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_threads_share_parked_connections_within_the_limit() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(slots_config(4));
    let peak = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (pool, ep, peak) = (pool.clone(), ep.clone(), peak.clone());
            tokio::spawn(async move {
                for j in 0..50 {
                    let mut conn = pool.get(&ep).await.unwrap();
                    round_trip(&mut conn, format!("{i}/{j}").as_bytes())
                        .await
                        .unwrap();
                    let s = pool.stats(&ep);
                    peak.fetch_max(s.active + s.idle + s.dialing, Ordering::Relaxed);
                    if j % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert!(peak.load(Ordering::Relaxed) <= 4, "the limit held");
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!(s.active, 0, "parked connections count as idle: {s:?}");
    assert_eq!(s.total_created + s.total_reused, 64 * 50);
    assert_eq!(s.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_parked_on_one_thread_serves_a_caller_on_another() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(slots_config(1));
    // Park the one connection on whichever worker runs this task...
    let first = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move {
            let conn = pool.get(&ep).await.unwrap();
            let id = conn.id();
            drop(conn);
            id
        })
        .await
        .unwrap()
    };
    // ...then take it from a plain thread that is not a worker at all: it
    // must get the parked connection, not wait for the limit of 1.
    let (pool2, ep2) = (pool.clone(), ep.clone());
    let handle = tokio::runtime::Handle::current();
    let second = std::thread::spawn(move || {
        handle.block_on(async move { pool2.get(&ep2).await.map(|c| c.id()) })
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(second, first);
    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!((s.total_created, s.total_reused), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_served_by_connections_returned_on_other_threads() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(slots_config(2));
    for _ in 0..20 {
        // Two holders on the workers; a third caller queues; the holders
        // return theirs: the waiter must get one, never a parked one left
        // behind.
        let a = pool.get(&ep).await.unwrap();
        let b = pool.get(&ep).await.unwrap();
        let waiter = {
            let (pool, ep) = (pool.clone(), ep.clone());
            tokio::spawn(async move { pool.get(&ep).await.map(drop) })
        };
        support::eventually("the third caller to queue", || pool.stats(&ep).waiting == 1).await;
        tokio::spawn(async move { drop(a) }).await.unwrap();
        tokio::spawn(async move { drop(b) }).await.unwrap();
        waiter.await.unwrap().expect("the waiter is served");
    }
    assert_books_balance(&pool, &ep, server.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_and_close_reach_parked_connections() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(slots_config(4));
    let held: Vec<_> = futures_join(&pool, &ep, 4).await;
    drop(held);
    assert_eq!(pool.stats(&ep).idle, 4);
    pool.clear_endpoint(&ep);
    let s = pool.stats(&ep);
    assert_eq!(
        (s.idle, s.closed_for(CloseReason::Cleared)),
        (0, 4),
        "{s:?}"
    );

    let held: Vec<_> = futures_join(&pool, &ep, 3).await;
    drop(held);
    pool.close().await;
    let s = pool.stats(&ep);
    assert_eq!(
        (s.idle, s.closed_for(CloseReason::PoolClosed)),
        (0, 3),
        "{s:?}"
    );
    support::eventually("the server to see every close", || server.open() == 0).await;
    assert_eq!(support::client_sockets_to(server.port()), 0);
}

async fn futures_join(
    pool: &Pool,
    ep: &conpool::Endpoint,
    n: usize,
) -> Vec<conpool::PooledConnection> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.get(ep).await.unwrap());
    }
    held
}
