//! TLS endpoints against an embedded TLS echo server with a self-signed
//! certificate for `localhost`: reuse, verification failures (never
//! retried), keying by scheme, and the limit under concurrency.

mod support;

use std::error::Error as _;
use std::io;

use conpool::{Config, Endpoint, Error, Pool};
use rustls::CertificateError;
use rustls::pki_types::ServerName;
use support::{EchoServer, TlsCert, assert_books_balance, round_trip};

/// A pool that trusts `cert` (and nothing else).
fn trusting(cert: &TlsCert) -> conpool::ConfigBuilder {
    Config::builder().tls_config(cert.client_config())
}

/// The rustls verdict under a TLS error.
fn rustls_error(err: &Error) -> &rustls::Error {
    err.source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("expected a rustls error under {err:?}"))
}

#[tokio::test]
async fn a_tls_connection_is_reused_across_leases() {
    let cert = TlsCert::localhost();
    let server = EchoServer::start_tls(&cert).await;
    let ep = server.tls_endpoint();
    let pool = Pool::new(trusting(&cert).build().unwrap());

    let mut first_id = None;
    for i in 0..5u32 {
        let mut conn = pool.get(&ep).await.unwrap();
        assert_eq!(conn.is_reused(), i > 0, "lease {i}");
        let session = conn
            .tls_session()
            .expect("a TLS endpoint gives a TLS stream");
        assert!(session.protocol_version().is_some(), "handshake completed");
        assert_eq!(*first_id.get_or_insert(conn.id()), conn.id());
        round_trip(&mut conn, format!("hello over tls {i}").as_bytes())
            .await
            .unwrap();
    }

    let s = assert_books_balance(&pool, &ep, server.port());
    assert_eq!(
        (s.total_created, s.total_reused, s.idle, s.errors),
        (1, 4, 1, 0)
    );
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn an_untrusted_certificate_fails_at_once_without_retries() {
    let cert = TlsCert::localhost();
    let server = EchoServer::start_tls(&cert).await;
    let ep = server.tls_endpoint();
    // The default TLS config trusts the webpki roots, not our self-signed
    // certificate.
    let pool = Pool::new(Config::builder().connect_retry_count(3).build().unwrap());

    let err = pool.get(&ep).await.unwrap_err();

    let Error::Tls {
        endpoint, reason, ..
    } = &err
    else {
        panic!("expected Error::Tls, got {err:?}");
    };
    assert_eq!(endpoint, &ep);
    assert!(
        reason.contains("UnknownIssuer"),
        "the reason names the unknown issuer: {reason}"
    );
    assert_eq!(
        err.to_string(),
        format!("TLS handshake with {ep} failed: {reason}")
    );
    assert_eq!(
        rustls_error(&err),
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert_eq!(
        server.accepted(),
        1,
        "a verification failure is not retried"
    );
    let s = pool.stats(&ep);
    assert_eq!(
        (s.errors, s.total_created, s.dialing, s.active),
        (1, 0, 0, 0)
    );
}

#[tokio::test]
async fn a_certificate_for_another_name_fails_at_once_without_retries() {
    let cert = TlsCert::localhost();
    let server = EchoServer::start_tls(&cert).await;
    // Trusted issuer, but the certificate is for "localhost" only.
    let ep = Endpoint::tls("127.0.0.1", server.port()).unwrap();
    let pool = Pool::new(trusting(&cert).connect_retry_count(3).build().unwrap());

    let err = pool.get(&ep).await.unwrap_err();

    let Error::Tls { reason, .. } = &err else {
        panic!("expected Error::Tls, got {err:?}");
    };
    assert!(
        reason.contains("not valid for name") && reason.contains("127.0.0.1"),
        "the reason names the mismatch: {reason}"
    );
    assert!(
        matches!(
            rustls_error(&err),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{err:?}"
    );
    assert_eq!(server.accepted(), 1, "a name mismatch is not retried");
    let s = pool.stats(&ep);
    assert_eq!((s.errors, s.total_created), (1, 0));
}

#[tokio::test]
async fn tls_server_name_verifies_an_endpoint_dialed_by_address_as_that_name() {
    let cert = TlsCert::localhost();
    let server = EchoServer::start_tls(&cert).await;
    // Dialed by address; the certificate names only localhost.
    let ep = Endpoint::tls("127.0.0.1", server.port()).unwrap();
    let localhost = ServerName::try_from("localhost").unwrap().to_owned();
    let pool = Pool::new(trusting(&cert).tls_server_name(localhost).build().unwrap());

    let mut conn = pool.get(&ep).await.unwrap();
    round_trip(&mut conn, b"verified as localhost")
        .await
        .unwrap();
    drop(conn);
    assert_eq!(
        server.sni().as_deref(),
        Some("localhost"),
        "sent as SNI too"
    );

    // Another name than the certificate's fails as a mismatch.
    let other = ServerName::try_from("db.internal").unwrap().to_owned();
    let pool = Pool::new(trusting(&cert).tls_server_name(other).build().unwrap());
    let err = pool.get(&ep).await.unwrap_err();
    assert!(
        matches!(&err, Error::Tls { reason, .. } if reason.contains("not valid for name \"db.internal\"")),
        "{err:?}"
    );
}

#[tokio::test]
async fn tls_and_plain_endpoints_to_one_address_are_separate_pools() {
    let cert = TlsCert::localhost();
    let server = EchoServer::start_tls(&cert).await;
    let tls = server.tls_endpoint();
    let plain = Endpoint::new("localhost", server.port()).unwrap();
    assert_ne!(tls, plain);
    let pool = Pool::new(trusting(&cert).build().unwrap());

    let mut secure = pool.get(&tls).await.unwrap();
    round_trip(&mut secure, b"secret").await.unwrap();
    drop(secure);
    // A plain connection to the TLS port: only TCP is dialed, and no bytes
    // are sent, so it stays open and idle.
    drop(pool.get(&plain).await.unwrap());

    // Each endpoint gets its own idle connection back, never the other's.
    let again_plain = pool.get(&plain).await.unwrap();
    assert!(again_plain.is_reused());
    assert!(again_plain.tls_session().is_none());
    let again_tls = pool.get(&tls).await.unwrap();
    assert!(again_tls.is_reused());
    assert!(again_tls.tls_session().is_some());
    assert_ne!(again_plain.id(), again_tls.id());
    drop((again_plain, again_tls));

    let all = pool.all_stats();
    let endpoints: Vec<&Endpoint> = all.iter().map(|(ep, _)| ep).collect();
    assert_eq!(endpoints, vec![&plain, &tls]);
    for (ep, s) in &all {
        assert_eq!((s.total_created, s.total_reused, s.idle), (1, 1, 1), "{ep}");
    }
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn fifty_concurrent_tls_tasks_share_at_most_four_connections() {
    let cert = TlsCert::localhost();
    let server = EchoServer::start_tls(&cert).await;
    let ep = server.tls_endpoint();
    let pool = Pool::new(
        trusting(&cert)
            .max_connections_per_endpoint(4)
            .build()
            .unwrap(),
    );

    let tasks: Vec<_> = (0..50u32)
        .map(|i| {
            let pool = pool.clone();
            let ep = ep.clone();
            tokio::spawn(async move {
                let mut conn = pool.get(&ep).await?;
                assert!(conn.tls_session().is_some());
                round_trip(&mut conn, format!("task {i}").as_bytes()).await?;
                Ok::<_, io::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    let s = assert_books_balance(&pool, &ep, server.port());
    assert!(
        (1..=4).contains(&s.total_created),
        "at most 4 connections: {s:?}"
    );
    assert_eq!(s.total_created + s.total_reused, 50, "{s:?}");
    assert_eq!((s.errors, s.total_closed), (0, 0));
    assert!(server.accepted() <= 4);
}
