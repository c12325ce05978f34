//! Dialing: turning an [`Endpoint`] into a connected [`Stream`].
//!
//! Dialing is split in two so that transports plug in without touching the
//! pool core:
//!
//! - a [`Dial`] makes **one attempt**: endpoint in, stream out. The default,
//!   [`TcpTlsDialer`], resolves the host through the pool's cache of a
//!   [`Resolve`]r's answers ([`resolve`]), races TCP connects to its
//!   addresses ([`happy_eyeballs`], [`tcp`]) and runs the TLS handshake for
//!   TLS endpoints ([`tls`]) inside each racer; a Unix socket endpoint it
//!   connects by path, with TLS over it for a TLS one. Proxies and test
//!   doubles are other implementations.
//! - the pool's attempt is the dial and then the config's `on_connect` hook
//!   on the new stream ([`OnConnect`]); it wraps every attempt in the
//!   configured `connect_timeout` and retries what can succeed on retry (a
//!   refused or timed-out connect, a hook's transient failure), with the
//!   delay from [`backoff_delay`]. What retrying cannot fix (a host that
//!   does not resolve, a certificate that does not verify, a hook's final
//!   failure) fails at once.
//!
//! The default dialer as [`Pool::new`](crate::Pool::new) makes it
//! ([`TcpTlsDialer::from_config`]) keeps `connect_timeout` too, to bound
//! what happens inside the attempt: the attempt's deadline is
//! `connect_timeout` from its start, resolving counts against it, and every
//! racer (connect and handshake) ends by it. A first address that drops
//! SYNs (a broken IPv6 route) thus costs `happy_eyeballs_delay`, not the
//! timeout: the next address starts racing it then. With
//! `happy_eyeballs_delay` 0 or `None` the addresses are tried one at a
//! time, each with a share of the time left (see [`happy_eyeballs`]). The
//! pool's own timeout still bounds every attempt, whatever the dialer.

mod backoff;
pub mod happy_eyeballs;
mod on_connect;
pub mod resolve;
pub mod tcp;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::time::Instant;

pub use backoff::backoff_delay;
pub use on_connect::{OnConnect, OnConnectError};
pub use resolve::Resolve;

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
    /// No address of the host can be reached from this side (none of the
    /// family of the config's `local_address`): not retried.
    Unreachable,
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
    /// No address can be reached from here, whatever a retry does.
    pub fn unreachable(source: io::Error) -> Self {
        DialError {
            kind: DialErrorKind::Unreachable,
            source,
            transient: false,
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
            DialErrorKind::Resolve | DialErrorKind::Tls | DialErrorKind::Unreachable => false,
        }
    }
    /// The underlying error.
    pub fn into_io(self) -> io::Error {
        self.source
    }
}

/// The default dialer: a cached resolver (the system's unless the config
/// names one), TCP with `TCP_NODELAY`, and rustls for TLS endpoints,
/// optionally under a connect timeout of its own.
///
/// Clones share one cache of resolved names ([`resolve::CachedResolver`]).
///
/// A host's addresses are raced ([`happy_eyeballs`]): an attempt on the
/// next address starts every `happy_eyeballs_delay`, or as soon as the
/// previous one fails; the first to connect (for TLS, to complete its
/// handshake) wins, and the address that won goes first next time.
///
/// With a connect timeout, an attempt's deadline is that timeout from the
/// attempt's start: resolving counts against it, and each racer ends by it
/// (one at a time, with `happy_eyeballs_delay` 0 or `None`, each address
/// gets a share of the time left); an attempt out of time fails with a
/// retryable error whose source is [`io::ErrorKind::TimedOut`].
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
    resolver: Arc<resolve::CachedResolver>,
    happy_eyeballs_delay: Option<Duration>,
    last_good: Arc<happy_eyeballs::LastGood>,
    socket_options: tcp::SocketOptions,
}

impl TcpTlsDialer {
    /// A dialer that uses `tls` for TLS endpoints, verifies each as its
    /// host, and keeps no timeout of its own: each address waits as long as
    /// the OS does, and only a pool's `connect_timeout` cuts the attempt,
    /// whatever address it is on. Addresses are raced every 250 ms (the
    /// default `happy_eyeballs_delay`). Use [`TcpTlsDialer::from_config`]
    /// for a dialer that bounds the race by a timeout of its own. Names
    /// are resolved by the [default resolver](resolve::default_resolver)
    /// and its answers kept for the default `dns_cache_ttl`, 30 s.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        let defaults = Config::default();
        TcpTlsDialer {
            tls,
            connect_timeout: None,
            server_name: None,
            resolver: Arc::new(resolve::CachedResolver::from_arc(
                resolve::default_resolver(),
                defaults.dns_cache_ttl(),
            )),
            happy_eyeballs_delay: defaults.happy_eyeballs_delay(),
            last_good: Arc::default(),
            socket_options: tcp::SocketOptions::default(),
        }
    }

    /// The dialer [`Pool::new`](crate::Pool::new) makes: TLS with the
    /// config's `tls_config` and `tls_server_name`, and the config's
    /// `connect_timeout` bounding the race between a host's addresses
    /// started every `happy_eyeballs_delay`, and the config's `resolver`
    /// behind a cache of `dns_cache_ttl`.
    pub fn from_config(config: &Config) -> Self {
        let resolver = config
            .resolver()
            .cloned()
            .unwrap_or_else(resolve::default_resolver);
        TcpTlsDialer {
            tls: config.tls_config().clone(),
            connect_timeout: config.connect_timeout(),
            server_name: config.tls_server_name().cloned(),
            resolver: Arc::new(resolve::CachedResolver::from_arc(
                resolver,
                config.dns_cache_ttl(),
            )),
            happy_eyeballs_delay: config.happy_eyeballs_delay(),
            last_good: Arc::default(),
            socket_options: tcp::SocketOptions::from_config(config),
        }
    }
}

impl TcpTlsDialer {
    /// This dialer offering `protocols` by ALPN on TLS endpoints instead
    /// of its TLS config's (the session cache stays shared): how a pool
    /// dials for a [`Protocol`](crate::Protocol) that names its own.
    pub(crate) fn with_alpn(&self, protocols: &[&'static [u8]]) -> TcpTlsDialer {
        let mut tls = (*self.tls).clone();
        tls.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        TcpTlsDialer {
            tls: Arc::new(tls),
            ..self.clone()
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
            if let Some(path) = endpoint.unix_path() {
                return self.dial_unix(endpoint, path, deadline).await;
            }
            let addrs = within(deadline, self.resolver.resolve(endpoint))
                .await
                .ok_or_else(|| {
                    out_of_time(format!(
                        "resolving {} took the whole connect timeout",
                        endpoint.host()
                    ))
                })?
                .map_err(DialError::resolve)?;
            let addrs = self.reachable(endpoint, addrs)?;
            let order = happy_eyeballs::order(&addrs, self.last_good.get(endpoint));
            let (addr, stream) = happy_eyeballs::race(
                &order,
                self.happy_eyeballs_delay,
                deadline,
                |addr, until| Box::pin(self.attempt(endpoint, addr, until)),
            )
            .await?;
            if addrs.len() > 1 {
                self.last_good.set(endpoint, addr);
            }
            Ok(stream)
        })
    }
}

impl TcpTlsDialer {
    /// One address: the TCP connect, then the TLS handshake for a TLS
    /// endpoint, both by `deadline`.
    async fn attempt(
        &self,
        endpoint: &Endpoint,
        addr: SocketAddr,
        deadline: Option<Instant>,
    ) -> Result<Stream, DialError> {
        let tcp = tcp::connect(addr, deadline, &self.socket_options)
            .await
            .map_err(DialError::connect)?;
        if !endpoint.is_tls() {
            return Ok(Stream::tcp(tcp));
        }
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => tls::server_name(endpoint).map_err(DialError::tls)?,
        };
        self.secure(endpoint, name, tcp, deadline)
            .await
            .map(Stream::tls)
    }

    /// The addresses a connection can be made to from the configured
    /// local address: those of its family.
    fn reachable(
        &self,
        endpoint: &Endpoint,
        mut addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, DialError> {
        let Some(local) = self.socket_options.local_address() else {
            return Ok(addrs);
        };
        addrs.retain(|addr| self.socket_options.can_reach(addr));
        if addrs.is_empty() {
            return Err(DialError::unreachable(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!(
                    "no address of {} is of the family of local_address {local}",
                    endpoint.host()
                ),
            )));
        }
        Ok(addrs)
    }

    /// A Unix socket endpoint: connect by path, and the TLS handshake
    /// verifying the endpoint's own server name for a TLS one; no
    /// resolving, no race.
    #[cfg(unix)]
    async fn dial_unix(
        &self,
        endpoint: &Endpoint,
        path: &std::path::Path,
        deadline: Option<Instant>,
    ) -> Result<Stream, DialError> {
        let socket = within(deadline, tokio::net::UnixStream::connect(path))
            .await
            .ok_or_else(|| out_of_time(format!("connect to {endpoint} timed out")))?
            .map_err(|err| {
                DialError::connect(io::Error::new(
                    err.kind(),
                    format!("connect to {endpoint}: {err}"),
                ))
            })?;
        let Some(name) = endpoint.unix_server_name() else {
            return Ok(Stream::unix(socket));
        };
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| DialError::tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let tls = self.secure(endpoint, name, socket, deadline).await?;
        Ok(Stream::unix_tls(tls))
    }

    #[cfg(not(unix))]
    async fn dial_unix(
        &self,
        endpoint: &Endpoint,
        _path: &std::path::Path,
        _deadline: Option<Instant>,
    ) -> Result<Stream, DialError> {
        Err(DialError::tls(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{endpoint}: Unix domain sockets are not supported on this platform"),
        )))
    }

    /// The TLS handshake over `io` by `deadline`, its failure sorted into
    /// what a retry may fix (the network's doing) and what it cannot.
    async fn secure<IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        endpoint: &Endpoint,
        name: ServerName<'static>,
        io: IO,
        deadline: Option<Instant>,
    ) -> Result<tokio_rustls::client::TlsStream<IO>, DialError> {
        let handshake = within(deadline, tls::handshake(&self.tls, name, io))
            .await
            .ok_or_else(|| {
                out_of_time(format!(
                    "the TLS handshake with {endpoint} ran out of the connect timeout"
                ))
            })?;
        match handshake {
            Ok(tls) => Ok(tls),
            Err(err) if tls::is_tls_failure(&err).is_some() => Err(DialError::tls(err)),
            Err(err) if err.kind() == io::ErrorKind::InvalidInput => Err(DialError::tls(err)),
            // A reset or EOF mid-handshake is the network's doing.
            Err(err) => Err(DialError::connect(err)),
        }
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
                    protocol: None,
                    endpoint: endpoint.clone(),
                    attempts,
                    source,
                },
                Failure::TimedOut(timeout) => Error::ConnectionTimeout {
                    protocol: None,
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
        DialErrorKind::Unreachable => {
            tracing::warn!(%endpoint, error = %err.source, "no address can be reached");
            Error::ConnectionFailed {
                protocol: None,
                endpoint: endpoint.clone(),
                attempts,
                source: err.source,
            }
        }
        DialErrorKind::OnConnect => Error::OnConnect {
            protocol: None,
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
                protocol: None,
                host: endpoint.host().to_owned(),
                source: err.source,
            }
        }
        DialErrorKind::Tls | DialErrorKind::Connect => {
            let reason = tls::is_tls_failure(&err.source).unwrap_or_else(|| err.source.to_string());
            tracing::warn!(%endpoint, %reason, "TLS handshake failed");
            Error::Tls {
                protocol: None,
                endpoint: endpoint.clone(),
                reason,
                source: err.source,
            }
        }
    }
}
