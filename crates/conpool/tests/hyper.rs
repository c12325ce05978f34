//! hyper's HTTP/1.1 client on pooled connections against a real nginx, as
//! `examples/hyper_http1.rs` does it: given back with `release()`, the
//! connections are reused; dropped, they are closed as cancelled, since
//! hyper leaves a read pending on an idle connection.
//!
//! The example's code is compiled into this test (examples cannot be
//! imported), so the test runs whatever the example does.

mod support;

#[path = "../examples/hyper_http1.rs"]
#[allow(dead_code)] // its `main` runs only as the example
mod hyper_http1;

use conpool::{CloseReason, Config, Endpoint, Pool};
use support::TlsCert;
use support::servers::Nginx;

const REQUESTS: usize = 8;

/// nginx (keep-alive far longer than a test), an endpoint on its plain or
/// TLS port, and a pool trusting its certificate.
async fn nginx_and_pool(tls: bool) -> (Nginx, Endpoint, Pool) {
    let cert = TlsCert::localhost();
    let nginx = Nginx::start(&cert, "60s").await;
    let ep = nginx.endpoint(tls);
    let pool = Pool::new(
        Config::builder()
            .tls_config(cert.client_config())
            .build()
            .unwrap(),
    );
    (nginx, ep, pool)
}

async fn released_connections_are_reused(tls: bool) {
    let (_nginx, ep, pool) = nginx_and_pool(tls).await;
    let responses = hyper_http1::get_sequentially(&pool, &ep, "/", REQUESTS)
        .await
        .unwrap();
    assert_eq!(responses.len(), REQUESTS);
    for (status, body) in responses {
        assert_eq!((status.as_u16(), &body[..]), (200, &b"ok\n"[..]));
    }
    let s = pool.stats(&ep);
    assert_eq!(
        (s.total_created, s.total_reused),
        (1, REQUESTS as u64 - 1),
        "one connection serves every request: {s:?}"
    );
    assert_eq!(s.closed_for(CloseReason::Cancelled), 0, "{s:?}");
    assert_eq!((s.total_closed, s.errors, s.idle), (0, 0, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_http1_reuses_connections_given_back_with_release() {
    released_connections_are_reused(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_http1_over_tls_reuses_connections_given_back_with_release() {
    released_connections_are_reused(true).await;
}

/// The careful default, unchanged: hyper's idle read is still pending when
/// it hands the connection back, and a drop cannot tell it from a reply
/// cut off by a cancelled caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_http1_connections_dropped_instead_are_closed_as_cancelled() {
    let (_nginx, ep, pool) = nginx_and_pool(false).await;
    for _ in 0..REQUESTS {
        let conn = pool.get(&ep).await.unwrap();
        let exchange = hyper_http1::get(conn, "/").await.unwrap();
        assert_eq!(exchange.status.as_u16(), 200);
        assert!(!exchange.overread);
        drop(exchange.conn);
    }
    let s = pool.stats(&ep);
    assert_eq!(
        (s.total_created, s.total_reused),
        (REQUESTS as u64, 0),
        "{s:?}"
    );
    assert_eq!(
        s.closed_for(CloseReason::Cancelled),
        REQUESTS as u64,
        "{s:?}"
    );
}
