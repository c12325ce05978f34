//! The loopback side of every benchmark: echo servers (TCP and TLS), the
//! stream every peer pool holds, and the one round trip they all run.
//!
//! Every pool under test pools the same kind of object: a connected
//! loopback socket with `TCP_NODELAY` on, optionally wrapped in a rustls
//! client session. [`PeerStream`] is an enum over the two, as conpool's own
//! `Stream` is, so no pool pays a virtual call the others do not.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The size of one request and of its echoed reply.
pub const PAYLOAD: usize = 64;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `localhost` (rcgen), with the server and
/// client configs that use it.
pub struct TlsCert {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl TlsCert {
    /// A fresh certificate for `localhost`.
    pub fn localhost() -> TlsCert {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("rcgen makes a self-signed certificate");
        TlsCert {
            cert: certified.cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
        }
    }

    /// The server side: rustls defaults (TLS 1.3, session resumption on).
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .expect("the key matches the certificate");
        TlsAcceptor::from(Arc::new(config))
    }

    /// A client config that trusts this certificate only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).expect("a valid certificate");
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// An echo server on 127.0.0.1, TCP or TLS. It runs on the current tokio
/// runtime until the runtime shuts down.
pub async fn start_echo(tls: Option<TlsAcceptor>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let _ = socket.set_nodelay(true);
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
    addr
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = vec![0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Where the peers dial, and how: plain TCP, or TLS for `localhost`.
#[derive(Clone)]
pub struct Target {
    /// The echo server.
    pub addr: SocketAddr,
    /// Set for TLS.
    pub tls: Option<TlsClient>,
}

/// A TLS client for the echo server's certificate.
#[derive(Clone)]
pub struct TlsClient {
    /// The client config (also given to conpool).
    pub config: Arc<rustls::ClientConfig>,
    connector: TlsConnector,
}

impl TlsClient {
    /// A client trusting `cert`.
    pub fn new(cert: &TlsCert) -> TlsClient {
        let config = cert.client_config();
        TlsClient {
            connector: TlsConnector::from(config.clone()),
            config,
        }
    }
}

impl Target {
    /// Plain TCP to `addr`.
    pub fn tcp(addr: SocketAddr) -> Target {
        Target { addr, tls: None }
    }

    /// TLS to `addr`, verified as `localhost`.
    pub fn tls(addr: SocketAddr, client: TlsClient) -> Target {
        Target {
            addr,
            tls: Some(client),
        }
    }

    /// Whether this target speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The conpool endpoint for this target: `127.0.0.1:port` for TCP,
    /// `tls://localhost:port` for TLS (the name the certificate is for).
    pub fn endpoint(&self) -> conpool::Endpoint {
        match self.tls {
            None => conpool::Endpoint::new("127.0.0.1", self.addr.port()),
            Some(_) => conpool::Endpoint::tls("localhost", self.addr.port()),
        }
        .expect("a valid endpoint")
    }

    /// Dials one connection: TCP connect with `TCP_NODELAY` (as conpool's
    /// dialer does), then the TLS handshake for TLS.
    pub async fn connect(&self) -> io::Result<PeerStream> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(PeerStream::tcp(tcp)),
            Some(client) => {
                let name = ServerName::try_from("localhost").expect("a valid name");
                let tls = client.connector.connect(name, tcp).await?;
                Ok(PeerStream::tls(tls))
            }
        }
    }
}

/// What every pool holds: conpool's own [`conpool::Stream`] (TCP, or TLS
/// over TCP), so that the peers pool exactly the object conpool does.
pub type PeerStream = conpool::Stream;

/// One request/response exchange: write [`PAYLOAD`] bytes, flush, read the
/// echo back. Every subject runs exactly this on its stream.
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    request: &[u8; PAYLOAD],
) -> io::Result<()> {
    let mut reply = [0u8; PAYLOAD];
    stream.write_all(request).await?;
    stream.flush().await?;
    stream.read_exact(&mut reply).await?;
    debug_assert_eq!(&reply, request);
    Ok(())
}

/// The request every round trip sends.
pub fn request() -> [u8; PAYLOAD] {
    let mut req = [0u8; PAYLOAD];
    for (i, b) in req.iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    req
}
