//! conpool in one minute: `cargo run --example demo`.
//!
//! Starts two echo servers inside this process, one plain TCP and one TLS
//! (with a self-signed certificate for `localhost`), then lets 32 tasks per
//! server do 20 request/reply round trips each through one pool that allows
//! at most 4 connections per endpoint. The report at the end shows how few
//! connections all that traffic needed.

use std::sync::Arc;

use conpool::{Config, Endpoint, Pool};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const TASKS: usize = 32;
const ROUND_TRIPS: usize = 20;
const MAX_PER_ENDPOINT: usize = 4;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A self-signed certificate for "localhost", and a client TLS config
    // that trusts exactly that certificate (ring is the crypto provider).
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();

    // The two servers, on ports the kernel picks on 127.0.0.1.
    let tcp_port = start_echo_server(None).await?;
    let tls_port = start_echo_server(Some(TlsAcceptor::from(Arc::new(server_tls)))).await?;
    let endpoints = [
        Endpoint::new("127.0.0.1", tcp_port)?,
        // TLS endpoints verify the certificate against the host name.
        Endpoint::tls("localhost", tls_port)?,
    ];

    // One pool for both: limits, idle connections and stats are per endpoint.
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(MAX_PER_ENDPOINT)
            .tls_config(Arc::new(client_tls))
            .build()?,
    );

    // Every task leases a connection for each round trip and gives it back
    // right after, so the tasks take turns on a handful of connections.
    let mut tasks = Vec::new();
    for endpoint in &endpoints {
        for task in 0..TASKS {
            let (pool, endpoint) = (pool.clone(), endpoint.clone());
            tasks.push(tokio::spawn(async move {
                for trip in 0..ROUND_TRIPS {
                    let mut conn = pool.get(&endpoint).await?;
                    let request = format!("task {task}, round trip {trip}\n");
                    conn.write_all(request.as_bytes()).await?;
                    let mut reply = vec![0u8; request.len()];
                    conn.read_exact(&mut reply).await?;
                    assert_eq!(reply, request.as_bytes(), "the echo came back intact");
                } // `conn` is dropped here: back to the pool
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }));
        }
    }
    for task in tasks {
        task.await?.map_err(|e| e.to_string())?;
    }

    // The report.
    println!(
        "conpool demo: {TASKS} tasks x {ROUND_TRIPS} round trips on each endpoint, \
         at most {MAX_PER_ENDPOINT} connections per endpoint\n"
    );
    println!(
        "{:<24} {:>8} {:>7} {:>7} {:>5} {:>7} {:>7}",
        "endpoint", "created", "reused", "closed", "idle", "active", "reuse"
    );
    for (endpoint, s) in pool.all_stats() {
        let leases = s.total_created + s.total_reused;
        println!(
            "{:<24} {:>8} {:>7} {:>7} {:>5} {:>7} {:>6.1}%",
            endpoint.to_string(),
            s.total_created,
            s.total_reused,
            s.total_closed,
            s.idle,
            s.active,
            100.0 * s.total_reused as f64 / leases as f64,
        );
    }
    println!("(reuse: the share of leases served by a connection that was already open)\n");
    for (endpoint, s) in pool.all_stats() {
        println!(
            "{endpoint}: {} round trips used only {} connection{} ({} errors).",
            TASKS * ROUND_TRIPS,
            s.total_created,
            if s.total_created == 1 { "" } else { "s" },
            s.errors,
        );
    }

    // Closing the pool closes the idle connections; the servers stop with
    // the process.
    pool.close().await;
    Ok(())
}

/// An echo server on 127.0.0.1: every byte received is sent back. With an
/// acceptor, it speaks TLS first. Returns the port.
async fn start_echo_server(tls: Option<TlsAcceptor>) -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => echo(socket).await,
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(socket).await {
                            echo(stream).await;
                        }
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Copies what it reads back to the writer until the peer closes.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
