//! Dialing: turning an [`Endpoint`] into a connected [`Stream`].
//!
//! Dialing is split in two so that transports plug in without touching the
//! pool core:
//!
//! - a [`Dial`] makes **one attempt**: endpoint in, stream out. The default,
//!   [`TcpTlsDialer`], resolves the host ([`resolve`]), connects over TCP to
//!   each address in turn ([`tcp`]) and runs the TLS handshake for TLS
//!   endpoints ([`tls`]). Unix sockets, proxies and test doubles are other
//!   implementations.
//! - the pool wraps every attempt in the configured `connect_timeout` and
//!   retries what can succeed on retry (a refused or timed-out connect), with
//!   the delay from [`backoff_delay`]. What retrying cannot fix (a host that
//!   does not resolve, a certificate that does not verify) fails at once.

mod backoff;
pub mod resolve;
pub mod tcp;
pub mod tls;

use std::io;
use std::sync::Arc;
use std::time::Duration;

pub use backoff::backoff_delay;

use crate::config::BoxFuture;
use crate::{Config, Endpoint, Error, Stream};

/// Makes one connection attempt to an endpoint.
///
/// ```
/// use conpool::dial::{Dial, DialError};
/// use conpool::{BoxFuture, Endpoint, Stream};
///
/// /// Connects every endpoint to an in-memory echo task: a test double.
/// struct InMemory;
///
/// impl Dial for InMemory {
///     fn dial<'a>(&'a self, _endpoint: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
///         Box::pin(async move {
///             let (client, mut server) = tokio::io::duplex(1024);
///             tokio::spawn(async move {
///                 let (mut r, mut w) = tokio::io::split(&mut server);
///                 let _ = tokio::io::copy(&mut r, &mut w).await;
///             });
///             Ok(Stream::custom(client))
///         })
///     }
/// }
/// ```
pub trait Dial: Send + Sync + 'static {
    /// One attempt; the pool applies timeout and retries around it.
    fn dial<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>>;
}

/// Why one connection attempt failed, and so whether to try again.
#[derive(Debug)]
pub struct DialError {
    kind: DialErrorKind,
    source: io::Error,
}

/// The step of an attempt that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DialErrorKind {
    /// Name resolution: not retried.
    Resolve,
    /// The transport connect: retried.
    Connect,
    /// The TLS handshake's verdict: not retried.
    Tls,
}

impl DialError {
    /// Resolution failed.
    pub fn resolve(source: io::Error) -> Self {
        DialError {
            kind: DialErrorKind::Resolve,
            source,
        }
    }
    /// The connect failed; worth retrying.
    pub fn connect(source: io::Error) -> Self {
        DialError {
            kind: DialErrorKind::Connect,
            source,
        }
    }
    /// TLS refused the peer (or the peer refused TLS).
    pub fn tls(source: io::Error) -> Self {
        DialError {
            kind: DialErrorKind::Tls,
            source,
        }
    }
    /// Which step failed.
    pub fn kind(&self) -> DialErrorKind {
        self.kind
    }
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == DialErrorKind::Connect
    }
    /// The underlying error.
    pub fn into_io(self) -> io::Error {
        self.source
    }
}

/// The default dialer: system resolver, TCP with `TCP_NODELAY`, and rustls
/// for TLS endpoints.
#[derive(Clone, Debug)]
pub struct TcpTlsDialer {
    tls: Arc<rustls::ClientConfig>,
}

impl TcpTlsDialer {
    /// A dialer that uses `tls` for TLS endpoints.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        TcpTlsDialer { tls }
    }
}

impl Dial for TcpTlsDialer {
    fn dial<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
        Box::pin(async move {
            let addrs = resolve::resolve(endpoint)
                .await
                .map_err(DialError::resolve)?;
            let tcp = tcp::connect_any(&addrs).await.map_err(DialError::connect)?;
            if !endpoint.is_tls() {
                return Ok(Stream::tcp(tcp));
            }
            match tls::handshake(&self.tls, endpoint, tcp).await {
                Ok(tls) => Ok(Stream::tls(tls)),
                Err(err) if tls::is_tls_failure(&err).is_some() => Err(DialError::tls(err)),
                Err(err) if err.kind() == io::ErrorKind::InvalidInput => Err(DialError::tls(err)),
                // A reset or EOF mid-handshake is the network's doing.
                Err(err) => Err(DialError::connect(err)),
            }
        })
    }
}

/// Dials with the config's timeout per attempt and its retry policy.
pub(crate) async fn dial_with_retry(
    dialer: &dyn Dial,
    endpoint: &Endpoint,
    config: &Config,
) -> Result<Stream, Error> {
    let attempts = config.connect_retry_count();
    let mut attempt = 1;
    loop {
        tracing::debug!(%endpoint, attempt, attempts, "connecting");
        let outcome = match config.connect_timeout() {
            Some(limit) => tokio::time::timeout(limit, dialer.dial(endpoint))
                .await
                .map_err(|_| limit),
            None => Ok(dialer.dial(endpoint).await),
        };
        let failure = match outcome {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(err)) if !err.is_retryable() => return Err(final_error(endpoint, err)),
            Ok(Err(err)) => {
                tracing::warn!(%endpoint, attempt, attempts, error = %err.source, "connect attempt failed");
                Failure::Io(err.source)
            }
            Err(limit) => {
                tracing::warn!(%endpoint, attempt, attempts, timeout = ?limit, "connect attempt timed out");
                Failure::TimedOut(limit)
            }
        };
        if attempt >= attempts {
            return Err(match failure {
                Failure::Io(source) => Error::ConnectionFailed {
                    endpoint: endpoint.clone(),
                    attempts,
                    source,
                },
                Failure::TimedOut(timeout) => Error::ConnectionTimeout {
                    endpoint: endpoint.clone(),
                    timeout,
                    attempts,
                },
            });
        }
        tokio::time::sleep(backoff_delay(config.connect_retry_delay(), attempt)).await;
        attempt += 1;
    }
}

enum Failure {
    Io(io::Error),
    TimedOut(Duration),
}

fn final_error(endpoint: &Endpoint, err: DialError) -> Error {
    match err.kind {
        DialErrorKind::Resolve => {
            tracing::warn!(host = endpoint.host(), error = %err.source, "DNS resolution failed");
            Error::DnsResolutionFailed {
                host: endpoint.host().to_owned(),
                source: err.source,
            }
        }
        DialErrorKind::Tls | DialErrorKind::Connect => {
            let reason = tls::is_tls_failure(&err.source).unwrap_or_else(|| err.source.to_string());
            tracing::warn!(%endpoint, %reason, "TLS handshake failed");
            Error::Tls {
                endpoint: endpoint.clone(),
                reason,
                source: err.source,
            }
        }
    }
}
