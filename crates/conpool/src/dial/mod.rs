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
//! - the pool's attempt is the dial and then the config's `on_connect` hook
//!   on the new stream ([`OnConnect`]); it wraps every attempt in the
//!   configured `connect_timeout` and retries what can succeed on retry (a
//!   refused or timed-out connect, a hook's transient failure), with the
//!   delay from [`backoff_delay`]. What retrying cannot fix (a host that
//!   does not resolve, a certificate that does not verify, a hook's final
//!   failure) fails at once.
//!
//! The default dialer as [`Pool::new`](crate::Pool::new) makes it
//! ([`TcpTlsDialer::from_config`]) keeps `connect_timeout` too, to share it
//! out inside the attempt: the attempt's deadline is `connect_timeout` from
//! its start, resolving counts against it, each address gets the time left
//! divided by the addresses left (at least 500 ms, or all that is left; see
//! [`tcp`]) and the TLS handshake gets whatever is left. A first address
//! that drops SYNs (a broken IPv6 route) thus leaves the next one time to
//! connect. The pool's own timeout still bounds every attempt, whatever the
//! dialer.

mod backoff;
mod on_connect;
pub mod resolve;
pub mod tcp;
pub mod tls;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::time::Instant;

pub use backoff::backoff_delay;
pub use on_connect::{OnConnect, OnConnectError};

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
    /// For [`DialErrorKind::OnConnect`]: whether the hook said another
    /// attempt may succeed.
    transient: bool,
}

/// The step of an attempt that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DialErrorKind {
    /// Name resolution: not retried.
    Resolve,
    /// The transport connect, or the attempt running out of time: retried.
    Connect,
    /// The TLS handshake's verdict: not retried.
    Tls,
    /// The `on_connect` hook refused the new stream: retried only when the
    /// hook said it was transient.
    OnConnect,
}

impl DialError {
    /// Resolution failed.
    pub fn resolve(source: io::Error) -> Self {
        DialError {
            kind: DialErrorKind::Resolve,
            source,
            transient: false,
        }
    }
    /// The connect failed or the attempt ran out of time; worth retrying.
    pub fn connect(source: io::Error) -> Self {
        DialError {
            kind: DialErrorKind::Connect,
            source,
            transient: false,
        }
    }
    /// TLS refused the peer (or the peer refused TLS).
    pub fn tls(source: io::Error) -> Self {
        DialError {
            kind: DialErrorKind::Tls,
            source,
            transient: false,
        }
    }
    /// The `on_connect` hook refused the stream; `source` carries the
    /// hook's error inside.
    pub(crate) fn on_connect(source: io::Error, transient: bool) -> Self {
        DialError {
            kind: DialErrorKind::OnConnect,
            source,
            transient,
        }
    }
    /// Which step failed.
    pub fn kind(&self) -> DialErrorKind {
        self.kind
    }
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            DialErrorKind::Connect => true,
            DialErrorKind::OnConnect => self.transient,
            DialErrorKind::Resolve | DialErrorKind::Tls => false,
        }
    }
    /// The underlying error.
    pub fn into_io(self) -> io::Error {
        self.source
    }
}

/// The default dialer: system resolver, TCP with `TCP_NODELAY`, and rustls
/// for TLS endpoints, optionally under a connect timeout of its own.
///
/// With a connect timeout, an attempt's deadline is that timeout from the
/// attempt's start: resolving counts against it, each resolved address gets
/// a share of the time left (see [`tcp`]), and the TLS handshake gets what
/// is left; an attempt out of time fails with a retryable error whose
/// source is [`io::ErrorKind::TimedOut`].
///
/// ```
/// use std::time::Duration;
/// use conpool::dial::TcpTlsDialer;
/// use conpool::{Config, Pool};
///
/// let config = Config::builder().connect_timeout(Duration::from_secs(2)).build()?;
/// // The dialer Pool::new would make, here to be wrapped or passed on.
/// let dialer = TcpTlsDialer::from_config(&config);
/// let pool = Pool::with_dialer(config, dialer);
/// # Ok::<(), conpool::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct TcpTlsDialer {
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Option<Duration>,
    /// Verified instead of each endpoint's host.
    server_name: Option<ServerName<'static>>,
}

impl TcpTlsDialer {
    /// A dialer that uses `tls` for TLS endpoints, verifies each as its
    /// host, and keeps no timeout of its own: each address waits as long as
    /// the OS does, and only a pool's `connect_timeout` cuts the attempt,
    /// whatever address it is on. Use [`TcpTlsDialer::from_config`] for a
    /// dialer that shares the timeout between a host's addresses.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        TcpTlsDialer {
            tls,
            connect_timeout: None,
            server_name: None,
        }
    }

    /// The dialer [`Pool::new`](crate::Pool::new) makes: TLS with the
    /// config's `tls_config` and `tls_server_name`, and the config's
    /// `connect_timeout` shared between a host's addresses.
    pub fn from_config(config: &Config) -> Self {
        TcpTlsDialer {
            tls: config.tls_config().clone(),
            connect_timeout: config.connect_timeout(),
            server_name: config.tls_server_name().cloned(),
        }
    }
}

impl Dial for TcpTlsDialer {
    fn dial<'a>(&'a self, endpoint: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
        Box::pin(async move {
            // A timeout too long to add to the clock is no timeout.
            let deadline = self
                .connect_timeout
                .and_then(|limit| Instant::now().checked_add(limit));
            let addrs = within(deadline, resolve::resolve(endpoint))
                .await
                .ok_or_else(|| {
                    out_of_time(format!(
                        "resolving {} took the whole connect timeout",
                        endpoint.host()
                    ))
                })?
                .map_err(DialError::resolve)?;
            let tcp = tcp::connect_any(&addrs, deadline)
                .await
                .map_err(DialError::connect)?;
            if !endpoint.is_tls() {
                return Ok(Stream::tcp(tcp));
            }
            let name = match &self.server_name {
                Some(name) => name.clone(),
                None => tls::server_name(endpoint).map_err(DialError::tls)?,
            };
            let handshake = within(deadline, tls::handshake(&self.tls, name, tcp))
                .await
                .ok_or_else(|| {
                    out_of_time(format!(
                        "the TLS handshake with {endpoint} ran out of the connect timeout"
                    ))
                })?;
            match handshake {
                Ok(tls) => Ok(Stream::tls(tls)),
                Err(err) if tls::is_tls_failure(&err).is_some() => Err(DialError::tls(err)),
                Err(err) if err.kind() == io::ErrorKind::InvalidInput => Err(DialError::tls(err)),
                // A reset or EOF mid-handshake is the network's doing.
                Err(err) => Err(DialError::connect(err)),
            }
        })
    }
}

/// Runs `step` to its end, or to `deadline` if that comes first (`None`).
async fn within<F: Future>(deadline: Option<Instant>, step: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, step).await.ok(),
        None => Some(step.await),
    }
}

/// An attempt that ran out of time: worth another.
fn out_of_time(what: String) -> DialError {
    DialError::connect(io::Error::new(io::ErrorKind::TimedOut, what))
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
        let started = Instant::now();
        let outcome = match config.connect_timeout() {
            Some(limit) => {
                match tokio::time::timeout(limit, on_connect::attempt(dialer, endpoint, config))
                    .await
                {
                    // The default dialer keeps the same timeout itself, to share
                    // it between addresses, and its timer may fire first: an
                    // attempt that fails once its time is up timed out,
                    // whichever timer noticed.
                    Ok(Err(err)) if err.is_retryable() && started.elapsed() >= limit => Err(limit),
                    outcome => outcome.map_err(|_| limit),
                }
            }
            None => Ok(on_connect::attempt(dialer, endpoint, config).await),
        };
        let failure = match outcome {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(err)) if !err.is_retryable() => {
                return Err(final_error(endpoint, err, attempt));
            }
            // The hook's last word, not a connect error's.
            Ok(Err(err)) if err.kind == DialErrorKind::OnConnect && attempt >= attempts => {
                return Err(final_error(endpoint, err, attempt));
            }
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

fn final_error(endpoint: &Endpoint, err: DialError, attempts: u32) -> Error {
    match err.kind {
        DialErrorKind::OnConnect => Error::OnConnect {
            endpoint: endpoint.clone(),
            attempts,
            source: err
                .source
                .into_inner()
                .unwrap_or_else(|| "the on_connect hook failed".into()),
        },
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
