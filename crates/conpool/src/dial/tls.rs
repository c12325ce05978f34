//! The TLS handshake, with SNI and verification for the endpoint's host.
//!
//! The server name comes from the endpoint ([`server_name`]), unless the
//! config names one for every TLS endpoint
//! ([`Config::tls_server_name`](crate::Config::tls_server_name)): an IP
//! literal is verified as an IP address (and sends no SNI, as RFC 6066
//! requires), a DNS name as a DNS name. Whatever verifier the rustls config
//! carries decides; the default config verifies the chain against the
//! webpki roots.

use std::io;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::Endpoint;

/// The name a TLS endpoint's certificate is verified against: its host,
/// without a trailing dot.
pub fn server_name(endpoint: &Endpoint) -> io::Result<ServerName<'static>> {
    let host = endpoint.host();
    ServerName::try_from(host.strip_suffix('.').unwrap_or(host))
        .map(|name| name.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Runs the client handshake over `io` (TCP, or a Unix socket), verifying
/// the server as `name`.
pub async fn handshake<IO: AsyncRead + AsyncWrite + Unpin>(
    config: &Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    io: IO,
) -> io::Result<TlsStream<IO>> {
    TlsConnector::from(config.clone()).connect(name, io).await
}

/// Whether an I/O error from the handshake is TLS's own verdict (a
/// certificate that does not verify, a protocol error) rather than the
/// network's; such an error is not retried.
pub fn is_tls_failure(err: &io::Error) -> Option<String> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(|tls| tls.to_string())
}
