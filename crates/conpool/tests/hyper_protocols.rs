//! conpool's hyper adapters against a real nginx, driven with hyper's own
//! clients: `Http1` reuses connections across requests (the handshake
//! once per connection), `Http2` shares one connection among requests in
//! flight, a `Connection: close` answer retires a connection, a TLS server
//! that does not agree to `h2` fails the handshake in words, and
//! `Connector` serves hyper-util's legacy `Client`.
//!
//! The examples' code is compiled into this test (examples cannot be
//! imported), so the test runs whatever the examples do.

mod support;

#[path = "../examples/http1.rs"]
#[allow(dead_code)] // its `main` runs only as the example
mod http1;

#[path = "../examples/http2.rs"]
#[allow(dead_code)]
mod http2;

use conpool::hyper::{Connector, Http1, Http2, endpoint_of};
use conpool::{CloseReason, Config, Endpoint, Error, Pool};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use support::servers::Nginx;
use support::{EchoServer, TlsCert};

async fn nginx_and_pool(max_per_endpoint: usize) -> (TlsCert, Nginx, Pool) {
    let cert = TlsCert::localhost();
    let nginx = Nginx::start(&cert, "60s").await;
    let pool = Pool::new(
        Config::builder()
            .tls_config(cert.client_config())
            .max_connections_per_endpoint(max_per_endpoint)
            .build()
            .unwrap(),
    );
    (cert, nginx, pool)
}

fn url(nginx: &Nginx, tls: bool, path: &str) -> hyper::Uri {
    if tls {
        format!("https://localhost:{}{path}", nginx.tls_port)
    } else {
        format!("http://127.0.0.1:{}{path}", nginx.port)
    }
    .parse()
    .unwrap()
}

async fn http1_reuses_each_connection(tls: bool) {
    let (_cert, nginx, pool) = nginx_and_pool(4).await;
    let http = pool.protocol(Http1::<http1::Body>::new());
    let uri = url(&nginx, tls, "/");
    let responses = http1::get_concurrently(&http, &uri, 64, 8).await.unwrap();
    assert_eq!(responses.len(), 64);
    assert!(
        responses
            .iter()
            .all(|(status, body)| *status == 200 && body == "ok\n")
    );
    let s = http.stats(&endpoint_of(&uri).unwrap());
    assert_eq!(s.protocol, Some("http1"));
    assert!(s.total_created <= 4, "at most the endpoint's limit: {s:?}");
    assert_eq!(s.total_created + s.total_reused, 64, "{s:?}");
    // Dropped right after the body was read, before hyper's task had seen
    // the response end, none was lost.
    assert_eq!((s.total_closed, s.errors), (0, 0), "{s:?}");
    assert_eq!(
        s.idle as u64, s.total_created,
        "all back in the pool: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tcp_hands_each_connection_to_request_after_request() {
    http1_reuses_each_connection(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_hands_each_connection_to_request_after_request() {
    http1_reuses_each_connection(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_retires_a_connection_the_server_closes_with_connection_close() {
    let (_cert, nginx, pool) = nginx_and_pool(4).await;
    let http = pool.protocol(Http1::<http1::Body>::new());
    let uri = url(&nginx, false, "/close");
    let responses = http1::get_concurrently(&http, &uri, 3, 1).await.unwrap();
    assert!(
        responses
            .iter()
            .all(|(status, body)| *status == 200 && body == "bye\n")
    );
    let s = http.stats(&endpoint_of(&uri).unwrap());
    assert_eq!((s.total_created, s.total_reused), (3, 0), "{s:?}");
    assert_eq!(s.closed_for(CloseReason::NotReady), 3, "{s:?}");
    assert_eq!(s.idle, 0, "{s:?}");
}

async fn http2_shares_one_connection(uri: hyper::Uri, pool: Pool) {
    let http = pool.protocol(Http2::<http2::Body>::new());
    let burst = http2::get_at_once(&http, &uri, 50).await.unwrap();
    assert_eq!(burst.responses.len(), 50);
    assert!(
        burst
            .responses
            .iter()
            .all(|(status, body)| *status == 200 && body == "ok\n")
    );
    assert_eq!(burst.peak_shares, 50, "all 50 in flight at once");
    let s = http.stats(&endpoint_of(&uri).unwrap());
    assert_eq!(s.protocol, Some("http2"));
    assert_eq!(s.total_created, 1, "one connection carries them all: {s:?}");
    assert_eq!((s.shares, s.active, s.idle), (0, 0, 1), "{s:?}");
    assert_eq!((s.total_closed, s.errors), (0, 0), "{s:?}");
    // The next burst shares the same connection again.
    http2::get_at_once(&http, &uri, 10).await.unwrap();
    let s = http.stats(&endpoint_of(&uri).unwrap());
    assert_eq!((s.total_created, s.total_reused), (1, 1), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_shares_one_connection_among_requests_in_flight() {
    let (_cert, nginx, pool) = nginx_and_pool(4).await;
    http2_shares_one_connection(url(&nginx, true, "/"), pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_shares_one_connection_among_requests_in_flight() {
    let (_cert, nginx, pool) = nginx_and_pool(4).await;
    let uri = format!("http://127.0.0.1:{}/", nginx.h2c_port)
        .parse()
        .unwrap();
    http2_shares_one_connection(uri, pool).await;
}

/// TLS over a Unix socket offers and checks ALPN `h2` as over TCP, and the
/// connection is shared the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_on_a_unix_socket_negotiates_h2_and_shares_one_connection() {
    let (_cert, nginx, pool) = nginx_and_pool(4).await;
    let http = pool.protocol(Http2::<http2::Body>::new());
    let endpoint = conpool::Endpoint::unix_tls(&nginx.tls_socket, "localhost").unwrap();
    let mut leases = Vec::new();
    for _ in 0..8 {
        leases.push(http.get(&endpoint).await.unwrap());
    }
    let mut replies = Vec::new();
    for lease in &mut leases {
        let request = hyper::Request::get("https://localhost/")
            .body(http2::Body::new())
            .unwrap();
        replies.push(lease.send_request(request));
    }
    for reply in replies {
        let response = reply.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
    }
    let s = http.stats(&endpoint);
    assert_eq!((s.total_created, s.shares), (1, 8), "{s:?}");
    drop(leases);
    assert_eq!(http.stats(&endpoint).shares, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_opens_another_connection_only_when_every_one_is_full() {
    let (_cert, nginx, pool) = nginx_and_pool(4).await;
    let http = pool.protocol(Http2::<http2::Body>::new().max_shares(10));
    let uri = url(&nginx, true, "/");
    let burst = http2::get_at_once(&http, &uri, 25).await.unwrap();
    assert_eq!(burst.responses.len(), 25);
    let s = http.stats(&endpoint_of(&uri).unwrap());
    assert_eq!(s.total_created, 3, "25 shares of at most 10 each: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_fails_in_words_when_the_tls_server_does_not_agree_to_h2() {
    let cert = TlsCert::localhost();
    // An echo server speaks TLS and no ALPN at all.
    let server = EchoServer::start_tls(&cert).await;
    let pool = Pool::new(
        Config::builder()
            .tls_config(cert.client_config())
            .build()
            .unwrap(),
    );
    let http = pool.protocol(Http2::<http2::Body>::new());
    let endpoint = server.tls_endpoint();
    let err = http.get(&endpoint).await.unwrap_err();
    let Error::Handshake {
        endpoint: named,
        protocol,
        ..
    } = &err
    else {
        panic!("expected a handshake error, got {err:?}");
    };
    assert_eq!((named, *protocol), (&endpoint, "http2"));
    let text = err.to_string();
    assert!(
        text.contains(&endpoint.to_string()) && text.contains("did not agree to HTTP/2"),
        "{text}"
    );
    let s = http.stats(&endpoint);
    assert_eq!(
        (s.total_created, s.errors),
        (0, 1),
        "one failed dial, not retried: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_dials_for_hyper_utils_legacy_client() {
    let (_cert, nginx, pool) = nginx_and_pool(4).await;
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(Connector::new(pool.clone()));
    for tls in [false, true] {
        let uri = url(&nginx, tls, "/");
        for _ in 0..3 {
            let response = client.get(uri.clone()).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok\n");
        }
        let s = pool.stats(&endpoint_of(&uri).unwrap());
        // hyper-util takes a connection back a moment after its response
        // ends, so a request right after may have dialed another.
        assert!(
            (1..=3).contains(&s.total_created),
            "dialed by conpool: {s:?}"
        );
        assert_eq!(
            s.active as u64,
            s.total_created - s.total_closed,
            "leased for as long as hyper-util keeps them: {s:?}"
        );
    }
}

#[test]
fn a_uri_names_its_endpoint_or_the_rule_it_broke() {
    let uri = |s: &str| s.parse::<hyper::Uri>().unwrap();
    assert_eq!(
        endpoint_of(&uri("https://example.com/x")).unwrap(),
        Endpoint::tls("example.com", 443).unwrap()
    );
    assert_eq!(
        endpoint_of(&uri("http://[::1]:8080")).unwrap(),
        Endpoint::new("::1", 8080).unwrap()
    );
    let err = endpoint_of(&uri("ftp://example.com/"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ftp") && err.contains("http or https"),
        "{err}"
    );
    let err = endpoint_of(&uri("/just/a/path")).unwrap_err().to_string();
    assert!(err.contains("needs a scheme"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_lease_dropped_before_the_body_is_read_waits_for_it_and_is_reused() {
    let (_cert, nginx, pool) = nginx_and_pool(4).await;
    let http = pool.protocol(Http1::<http1::Body>::new());
    let endpoint = Endpoint::new("127.0.0.1", nginx.port).unwrap();
    for _ in 0..3 {
        let mut conn = http.get(&endpoint).await.unwrap();
        let request = hyper::Request::get("/big")
            .header(hyper::header::HOST, "localhost")
            .body(Empty::new())
            .unwrap();
        let response = conn.send_request(request).await.unwrap();
        // Given back with most of the body still to come: the body must
        // still arrive, and the connection come back once it has.
        drop(conn);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), support::servers::BIG_BODY);
        support::eventually("the connection is back", || http.stats(&endpoint).idle == 1).await;
    }
    let s = http.stats(&endpoint);
    assert_eq!(
        (s.total_created, s.total_reused, s.total_closed),
        (1, 2, 0),
        "{s:?}"
    );
}
