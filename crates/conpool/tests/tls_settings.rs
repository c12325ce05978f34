//! TLS from the config's own settings, against nginx and rustls servers on
//! loopback: roots and a client certificate from PEM files (mutual TLS
//! with `ssl_verify_client on`), ALPN, session resumption across a pool's
//! connections, a server's refusal of the client certificate in words, and
//! the bad input `build()` refuses.

mod support;

use std::sync::Arc;

use conpool::{Config, ConfigBuilder, Endpoint, Error, Pool, TlsRoots};
use rustls::HandshakeKind;
use support::servers::{Nginx, Pems, http_get};
use support::{EchoServer, TlsCert, round_trip};
use tokio::io::AsyncReadExt;

fn mtls_endpoint(nginx: &Nginx) -> Endpoint {
    Endpoint::tls("localhost", nginx.mtls_port.unwrap()).unwrap()
}

#[tokio::test]
async fn mutual_tls_with_the_client_certificate_nginx_trusts_gets_200() {
    let (server, client) = (TlsCert::localhost(), TlsCert::localhost());
    let nginx = Nginx::start_mtls(&server, &client).await;
    let pems = Pems::new("tls-settings");
    let pool = Pool::new(
        pems.presenting(pems.trusting(&server), &client, "client")
            .build()
            .unwrap(),
    );

    let mut conn = pool.get(&mtls_endpoint(&nginx)).await.unwrap();
    assert_eq!(http_get(&mut conn).await.unwrap(), (200, "ok\n".into()));
}

#[tokio::test]
async fn nginx_with_ssl_verify_client_on_refuses_no_certificate_and_a_wrong_one_in_words() {
    let (server, client, stranger) = (
        TlsCert::localhost(),
        TlsCert::localhost(),
        TlsCert::localhost(),
    );
    let nginx = Nginx::start_mtls(&server, &client).await;
    let pems = Pems::new("tls-settings");
    let endpoint = mtls_endpoint(&nginx);

    // nginx's http module completes the handshake either way and answers
    // the first request with its verdict.
    let none = Pool::new(pems.trusting(&server).build().unwrap());
    let mut conn = none.get(&endpoint).await.unwrap();
    let (status, body) = http_get(&mut conn).await.unwrap();
    assert_eq!(status, 400);
    assert!(
        body.contains("No required SSL certificate was sent"),
        "{body}"
    );

    let wrong = Pool::new(
        pems.presenting(pems.trusting(&server), &stranger, "stranger")
            .build()
            .unwrap(),
    );
    let mut conn = wrong.get(&endpoint).await.unwrap();
    let (status, body) = http_get(&mut conn).await.unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("The SSL certificate error"), "{body}");
}

/// A rustls echo server on 127.0.0.1 that demands a client certificate
/// `client_ca` is, speaking only `version`.
async fn rustls_mtls_server(
    server: &TlsCert,
    client_ca: &TlsCert,
    version: &'static rustls::SupportedProtocolVersion,
) -> Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.cert_der()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.cert_der()], server.key_der())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let (mut r, mut w) = tokio::io::split(&mut tls);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Endpoint::tls("localhost", port).unwrap()
}

#[tokio::test]
async fn a_tls13_server_that_wants_a_client_certificate_says_so_in_words_on_the_first_read() {
    let (server, client, stranger) = (
        TlsCert::localhost(),
        TlsCert::localhost(),
        TlsCert::localhost_named("a stranger"),
    );
    let endpoint = rustls_mtls_server(&server, &client, &rustls::version::TLS13).await;
    let pems = Pems::new("tls-settings");

    // TLS 1.3: the client's side of the handshake is done before the
    // server judges its certificate, so the verdict is the first read's.
    let none = Pool::new(pems.trusting(&server).build().unwrap());
    let mut conn = none.get(&endpoint).await.unwrap();
    let err = conn.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the server requires a client certificate and none was sent; set tls_client_cert \
         and tls_client_key (received fatal alert: CertificateRequired)"
    );
    let alert = err.get_ref().and_then(|e| e.source()).unwrap();
    assert_eq!(
        alert.downcast_ref::<rustls::Error>(),
        Some(&rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired
        ))
    );

    let wrong = Pool::new(
        pems.presenting(pems.trusting(&server), &stranger, "stranger")
            .build()
            .unwrap(),
    );
    let mut conn = wrong.get(&endpoint).await.unwrap();
    let err = conn.read(&mut [0u8; 16]).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the server refused the client certificate (received fatal alert: "),
        "{err}"
    );

    // And the right one is let in.
    let right = Pool::new(
        pems.presenting(pems.trusting(&server), &client, "client")
            .build()
            .unwrap(),
    );
    let mut conn = right.get(&endpoint).await.unwrap();
    round_trip(&mut conn, b"mutual").await.unwrap();
}

#[tokio::test]
async fn a_tls12_server_that_wants_a_client_certificate_fails_the_dial_in_words() {
    let (server, client) = (TlsCert::localhost(), TlsCert::localhost());
    let endpoint = rustls_mtls_server(&server, &client, &rustls::version::TLS12).await;
    let pems = Pems::new("tls-settings");
    let pool = Pool::new(pems.trusting(&server).build().unwrap());

    let err = pool.get(&endpoint).await.unwrap_err();
    let Error::Tls { reason, .. } = &err else {
        panic!("expected Error::Tls, got {err:?}");
    };
    assert_eq!(
        reason,
        "the server requires a client certificate and none was sent; set tls_client_cert \
         and tls_client_key (received fatal alert: CertificateRequired)"
    );
}

#[tokio::test]
async fn alpn_negotiates_h2_or_http11_with_nginx_and_the_lease_shows_which() {
    let cert = TlsCert::localhost();
    let nginx = Nginx::start(&cert, "60s").await;
    let pems = Pems::new("tls-settings");
    let endpoint = nginx.endpoint(true);

    let h2_first = Pool::new(
        pems.trusting(&cert)
            .tls_alpn_protocols(["h2", "http/1.1"])
            .build()
            .unwrap(),
    );
    let conn = h2_first.get(&endpoint).await.unwrap();
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));

    let http11 = Pool::new(
        pems.trusting(&cert)
            .tls_alpn_protocols(["http/1.1"])
            .build()
            .unwrap(),
    );
    let mut conn = http11.get(&endpoint).await.unwrap();
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(http_get(&mut conn).await.unwrap(), (200, "ok\n".into()));

    let no_alpn = Pool::new(pems.trusting(&cert).build().unwrap());
    let conn = no_alpn.get(&endpoint).await.unwrap();
    assert_eq!(conn.alpn_protocol(), None);
}

/// Over a Unix socket the TLS session is the lease's as over TCP: the
/// negotiated protocol and the session can be read back.
#[tokio::test]
async fn alpn_over_tls_on_a_unix_socket_shows_on_the_lease() {
    let cert = TlsCert::localhost();
    let nginx = Nginx::start(&cert, "60s").await;
    let pems = Pems::new("tls-settings");
    let endpoint = Endpoint::unix_tls(&nginx.tls_socket, "localhost").unwrap();

    let h2_first = Pool::new(
        pems.trusting(&cert)
            .tls_alpn_protocols(["h2", "http/1.1"])
            .build()
            .unwrap(),
    );
    let conn = h2_first.get(&endpoint).await.unwrap();
    assert!(conn.as_unix().is_some() && conn.as_tcp().is_none());
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    let session = conn.tls_session().expect("a TLS session over the socket");
    assert!(session.protocol_version().is_some());

    let http11 = Pool::new(
        pems.trusting(&cert)
            .tls_alpn_protocols(["http/1.1"])
            .build()
            .unwrap(),
    );
    let mut conn = http11.get(&endpoint).await.unwrap();
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(http_get(&mut conn).await.unwrap(), (200, "ok\n".into()));
}

#[tokio::test]
async fn the_second_connection_to_a_host_resumes_the_first_ones_session() {
    let cert = TlsCert::localhost();
    let nginx = Nginx::start(&cert, "60s").await;
    let pems = Pems::new("tls-settings");
    let endpoint = nginx.endpoint(true);
    let pool = Pool::new(pems.trusting(&cert).build().unwrap());

    let mut first = pool.get(&endpoint).await.unwrap();
    // The session tickets of TLS 1.3 arrive after the handshake, with the
    // first reply.
    http_get(&mut first).await.unwrap();
    let session = first.tls_session().unwrap();
    assert_eq!(session.handshake_kind(), Some(HandshakeKind::Full));
    // Held, so that the second get dials.
    let mut second = pool.get(&endpoint).await.unwrap();
    assert_ne!(first.id(), second.id());
    assert_eq!(
        second.tls_session().unwrap().handshake_kind(),
        Some(HandshakeKind::Resumed)
    );
    assert_eq!(http_get(&mut second).await.unwrap(), (200, "ok\n".into()));

    // With the cache off, every connection runs a full handshake.
    let no_cache = Pool::new(
        pems.trusting(&cert)
            .tls_session_cache_size(0)
            .build()
            .unwrap(),
    );
    let mut first = no_cache.get(&endpoint).await.unwrap();
    http_get(&mut first).await.unwrap();
    let second = no_cache.get(&endpoint).await.unwrap();
    assert_eq!(
        second.tls_session().unwrap().handshake_kind(),
        Some(HandshakeKind::Full)
    );
}

#[tokio::test]
async fn extra_roots_from_a_pem_file_sit_beside_the_webpki_roots() {
    let cert = TlsCert::localhost();
    let server = EchoServer::start_tls(&cert).await;
    let pems = Pems::new("tls-settings");
    let config = Config::builder()
        .tls_ca_file(pems.write("ca.pem", &cert.cert_pem))
        .build()
        .unwrap();
    assert_eq!(config.tls_roots(), TlsRoots::Webpki);
    let pool = Pool::new(config);
    let mut conn = pool.get(&server.tls_endpoint()).await.unwrap();
    round_trip(&mut conn, b"extra root").await.unwrap();
}

#[cfg(feature = "platform-verifier")]
#[tokio::test]
async fn the_platform_verifier_takes_extra_roots_and_refuses_an_unknown_issuer() {
    let cert = TlsCert::localhost();
    let server = EchoServer::start_tls(&cert).await;
    let pems = Pems::new("tls-settings");
    let platform = || Config::builder().tls_roots(TlsRoots::Platform);

    let pool = Pool::new(
        platform()
            .tls_ca_file(pems.write("ca.pem", &cert.cert_pem))
            .build()
            .unwrap(),
    );
    let mut conn = pool.get(&server.tls_endpoint()).await.unwrap();
    round_trip(&mut conn, b"platform").await.unwrap();

    let pool = Pool::new(platform().build().unwrap());
    let err = pool.get(&server.tls_endpoint()).await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err:?}");
}

#[cfg(not(feature = "platform-verifier"))]
#[test]
fn the_platform_roots_without_their_feature_are_refused_at_build() {
    let err = Config::builder()
        .tls_roots(TlsRoots::Platform)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid config: tls_roots is Platform, but conpool was built without its \
         platform-verifier feature"
    );
}

/// `build()`'s verdict on `builder`, as a user reads it.
fn refusal(builder: ConfigBuilder) -> String {
    builder.build().unwrap_err().to_string()
}

#[test]
fn bad_tls_settings_are_refused_at_build_naming_the_value_and_the_rule() {
    let pems = Pems::new("tls-settings");
    let cert = TlsCert::localhost();
    let other = TlsCert::localhost();
    let cert_file = pems.write("cert.pem", &cert.cert_pem);
    let key_file = pems.write("key.pem", &cert.key_pem);
    let other_key = pems.write("other-key.pem", &other.key_pem);
    let not_pem = pems.write("notes.txt", "not a certificate\n");

    assert_eq!(
        refusal(Config::builder().tls_alpn_protocols(["h2", "", "http/1.1"])),
        "invalid config: tls_alpn_protocols is [\"h2\", \"\", \"http/1.1\"]; entry 2 is 0 bytes \
         long, and each protocol must be 1 to 255 bytes"
    );
    assert_eq!(
        refusal(Config::builder().tls_alpn_protocols(["x".repeat(256)])),
        format!(
            "invalid config: tls_alpn_protocols is [{:?}]; entry 1 is 256 bytes long, and each \
             protocol must be 1 to 255 bytes",
            "x".repeat(256)
        )
    );
    assert_eq!(
        refusal(Config::builder().tls_ca_file(&not_pem)),
        format!(
            "invalid config: tls_ca_file is {not_pem}, which holds no certificate \
             (no -----BEGIN CERTIFICATE----- block)"
        )
    );
    assert_eq!(
        refusal(
            Config::builder()
                .tls_client_cert(&key_file)
                .tls_client_key(&key_file)
        ),
        format!(
            "invalid config: tls_client_cert is {key_file}, which holds no certificate \
             (no -----BEGIN CERTIFICATE----- block)"
        )
    );
    let mismatch = refusal(
        Config::builder()
            .tls_client_cert(&cert_file)
            .tls_client_key(&other_key),
    );
    assert!(
        mismatch.starts_with(&format!(
            "invalid config: tls_client_key is {other_key}, which is not the key of \
             tls_client_cert {cert_file}: "
        )),
        "{mismatch}"
    );
    assert_eq!(
        refusal(Config::builder().tls_client_cert(&cert_file)),
        format!(
            "invalid config: tls_client_cert is {cert_file}, but tls_client_key is not set; \
             a client certificate needs its key"
        )
    );
    assert_eq!(
        refusal(Config::builder().tls_session_cache_size(usize::MAX)),
        format!(
            "invalid config: tls_session_cache_size is {}; it must be at most 100000 sessions \
             (0 turns resumption off)",
            usize::MAX
        )
    );
    assert_eq!(
        refusal(Config::builder().tls_roots(TlsRoots::None)),
        "invalid config: tls_roots is None, but no tls_ca_file is set: no server certificate \
         could verify"
    );
    assert_eq!(
        refusal(
            Config::builder()
                .tls_config(cert.client_config())
                .tls_alpn_protocols(["h2"])
        ),
        "invalid config: tls_alpn_protocols is set along with tls_config; a hand-built rustls \
         config carries its own TLS settings, so set this one on it instead"
    );
}

#[test]
fn a_config_with_default_tls_settings_shares_the_process_wide_rustls_config() {
    let built = Config::builder().build().unwrap();
    assert!(Arc::ptr_eq(
        built.tls_config(),
        Config::default().tls_config()
    ));
    // A rebuild keeps the user's own config, not one made from settings.
    let own = TlsCert::localhost().client_config();
    let config = Config::builder().tls_config(own.clone()).build().unwrap();
    let rebuilt = config
        .to_builder()
        .max_idle_time(std::time::Duration::from_secs(5));
    assert!(Arc::ptr_eq(rebuilt.build().unwrap().tls_config(), &own));
}
