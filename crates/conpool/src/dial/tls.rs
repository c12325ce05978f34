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
/// network's; such an error is not retried. The verdict is in words: see
/// [`describe`].
pub fn is_tls_failure(err: &io::Error) -> Option<String> {
    rustls_error(err).map(describe)
}

fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// rustls's words for a TLS failure, and for a server's refusal of the
/// client certificate also what happened and what to set: rustls alone
/// says `received fatal alert: CertificateRequired`.
///
/// A client receives certificate alerts only about its own certificate
/// (the server's is checked here, not there), so any of them means the
/// server refused the client's.
pub fn describe(tls: &rustls::Error) -> String {
    use rustls::AlertDescription as Alert;
    match tls {
        rustls::Error::AlertReceived(Alert::CertificateRequired) => format!(
            "the server requires a client certificate and none was sent; set tls_client_cert \
             and tls_client_key ({tls})"
        ),
        rustls::Error::AlertReceived(
            Alert::BadCertificate
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::CertificateUnknown
            | Alert::UnknownCA,
        ) => format!("the server refused the client certificate ({tls})"),
        _ => tls.to_string(),
    }
}

/// A read error of a TLS stream, with the server's refusal of the client
/// certificate in words: in TLS 1.3 the server judges the client's
/// certificate after the client's side of the handshake is done, so the
/// refusal reaches the client as the first read's error, not the dial's.
pub(crate) fn worded_read_error(err: io::Error) -> io::Error {
    match rustls_error(&err) {
        Some(tls) if describe(tls) != tls.to_string() => io::Error::new(
            err.kind(),
            ClientCertificateRefused {
                words: describe(tls),
                alert: tls.clone(),
            },
        ),
        _ => err,
    }
}

/// The error under an I/O error when a TLS server refused the client
/// certificate, or wanted one and got none: says so, and what to set; its
/// [`source`](std::error::Error::source) is rustls's error for the
/// server's alert.
#[derive(Debug)]
pub struct ClientCertificateRefused {
    words: String,
    alert: rustls::Error,
}

impl std::fmt::Display for ClientCertificateRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.words)
    }
}

impl std::error::Error for ClientCertificateRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.alert)
    }
}
