//! Errors: one type for everything the pool can report.
//!
//! Every variant prints as one sentence that says what happened and to which
//! endpoint, so that a log line is enough to act on. Underlying I/O errors
//! are kept as [`std::error::Error::source`], never flattened into text.

use std::io;
use std::time::Duration;

use crate::Endpoint;
use crate::stats::PoolState;

/// What went wrong. `#[non_exhaustive]`: new failure modes may be added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The resolver found no address for the host (or could not ask);
    /// never retried.
    #[error("{}DNS resolution failed for host {host:?}", pool_of(*protocol))]
    DnsResolutionFailed {
        /// The host name that did not resolve.
        host: String,
        /// What the resolver said.
        #[source]
        source: io::Error,
        /// The protocol pool the get was for ([`Protocol::name`](crate::Protocol::name));
        /// `None` for the byte-stream pool.
        protocol: Option<&'static str>,
    },

    /// Every connect attempt failed; `source` is the last attempt's error.
    #[error("{}could not connect to {endpoint} after {attempts} attempt{}", pool_of(*protocol), plural(*attempts))]
    ConnectionFailed {
        /// Where the pool tried to connect.
        endpoint: Endpoint,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        source: io::Error,
        /// The protocol pool the get was for ([`Protocol::name`](crate::Protocol::name));
        /// `None` for the byte-stream pool.
        protocol: Option<&'static str>,
    },

    /// The last connect attempt did not finish within `connect_timeout`.
    #[error(
        "{}connecting to {endpoint} timed out after {timeout:?} ({attempts} attempt{} made)",
        pool_of(*protocol),
        plural(*attempts)
    )]
    ConnectionTimeout {
        /// Where the pool tried to connect.
        endpoint: Endpoint,
        /// The configured `connect_timeout`.
        timeout: Duration,
        /// How many attempts were made.
        attempts: u32,
        /// The protocol pool the get was for ([`Protocol::name`](crate::Protocol::name));
        /// `None` for the byte-stream pool.
        protocol: Option<&'static str>,
    },

    /// The TLS handshake failed: the certificate did not verify, the name
    /// did not match, or the server spoke something other than TLS. Not
    /// retried, as retrying cannot fix it.
    #[error("{}TLS handshake with {endpoint} failed: {reason}", pool_of(*protocol))]
    Tls {
        /// The TLS endpoint.
        endpoint: Endpoint,
        /// What rustls reported, in words.
        reason: String,
        /// The underlying error.
        #[source]
        source: io::Error,
        /// The protocol pool the get was for ([`Protocol::name`](crate::Protocol::name));
        /// `None` for the byte-stream pool.
        protocol: Option<&'static str>,
    },

    /// The `on_connect` hook refused the new connection (the server said
    /// no to its AUTH, say); `source` is the hook's own error. Not
    /// retried, unless the hook said the failure was transient
    /// ([`OnConnectError::transient`](crate::dial::OnConnectError::transient)).
    #[error("{}on_connect failed for a new connection to {endpoint} ({attempts} attempt{} made): {source}", pool_of(*protocol), plural(*attempts))]
    OnConnect {
        /// The endpoint dialed.
        endpoint: Endpoint,
        /// How many attempts were made.
        attempts: u32,
        /// The hook's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// The protocol pool the get was for ([`Protocol::name`](crate::Protocol::name));
        /// `None` for the byte-stream pool.
        protocol: Option<&'static str>,
    },

    /// The endpoint's circuit breaker is open: its last
    /// `breaker_failures` dials failed, so this get fails at once instead
    /// of dialing again. Idle connections are still handed out; after the
    /// open time one get's dial probes the endpoint.
    #[error(
        "{}the circuit breaker of {endpoint} is open after {failures} failed dial{} in a row: {}{}",
        pool_of(*protocol),
        plural(*failures),
        next_try(*retry_in),
        last_dial_error_of(last_dial_error)
    )]
    CircuitOpen {
        /// The endpoint asked for.
        endpoint: Endpoint,
        /// Failed dials in a row so far.
        failures: u32,
        /// How long until a dial is let through again; zero while a probe
        /// dial is under way (the next may go once it fails).
        retry_in: Duration,
        /// The last dial's error, in words.
        last_dial_error: Option<std::sync::Arc<str>>,
        /// The protocol pool the get was for ([`Protocol::name`](crate::Protocol::name));
        /// `None` for the byte-stream pool.
        protocol: Option<&'static str>,
    },

    /// No connection could be had within `acquire_timeout`.
    #[error(
        "{}no connection to {endpoint} within {timeout:?} (the endpoint had {} active, {} idle, {} dialing, {} waiting){}",
        pool_of(*protocol),
        state.active, state.idle, state.dialing, state.waiting,
        last_dial_error_of(last_dial_error)
    )]
    AcquireTimeout {
        /// The endpoint asked for.
        endpoint: Endpoint,
        /// The configured `acquire_timeout`.
        timeout: Duration,
        /// The endpoint's pool at the moment the wait ended.
        state: PoolState,
        /// The last dial failure on this endpoint, if the last dial failed.
        last_dial_error: Option<std::sync::Arc<str>>,
        /// The protocol pool the get was for ([`Protocol::name`](crate::Protocol::name));
        /// `None` for the byte-stream pool.
        protocol: Option<&'static str>,
    },

    /// The endpoint already had `max_waiters_per_endpoint` callers waiting.
    #[error(
        "{}too many callers waiting for {endpoint}: the limit is {max_waiters} (the endpoint had {} active, {} idle, {} dialing)",
        pool_of(*protocol),
        state.active, state.idle, state.dialing
    )]
    TooManyWaiters {
        /// The endpoint asked for.
        endpoint: Endpoint,
        /// The configured `max_waiters_per_endpoint`.
        max_waiters: usize,
        /// The endpoint's pool at that moment.
        state: PoolState,
        /// The protocol pool the get was for ([`Protocol::name`](crate::Protocol::name));
        /// `None` for the byte-stream pool.
        protocol: Option<&'static str>,
    },

    /// A configuration value broke a rule; nothing was built.
    #[error("invalid config: {field} {reason}")]
    InvalidConfig {
        /// The field, named as its builder setter.
        field: &'static str,
        /// The value and the rule it broke.
        reason: String,
    },

    /// An endpoint could not be built or parsed.
    #[error("invalid endpoint: {reason}")]
    InvalidEndpoint {
        /// The value and the rule it broke.
        reason: String,
    },

    /// A [`Protocol`](crate::Protocol)'s handshake on a freshly dialed
    /// stream failed or ran out of `connect_timeout` (it counts as part of
    /// the dial). Retried only when the protocol calls its error
    /// [transient](crate::Protocol::is_transient): a handshake the server
    /// rejected, such as a wrong password, fails at once.
    #[error("the {protocol} handshake with {endpoint} failed: {source}")]
    Handshake {
        /// The endpoint dialed.
        endpoint: Endpoint,
        /// The protocol's [name](crate::Protocol::name).
        protocol: &'static str,
        /// The protocol's own error, or a timeout.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The pool was closed with [`Pool::close`](crate::Pool::close).
    #[error("the connection pool is closed")]
    PoolClosed,

    /// A get had to dial, wait in the queue or check a connection under a
    /// timer, which needs a tokio runtime, and was polled outside one (on
    /// another executor). A get that finds an idle connection needs none.
    #[error(
        "{}a get for {endpoint} had to dial, wait or time a check, which needs a tokio runtime, but was polled outside one",
        pool_of(*protocol)
    )]
    NoRuntime {
        /// The endpoint asked for.
        endpoint: Endpoint,
        /// The protocol pool the get was for ([`Protocol::name`](crate::Protocol::name));
        /// `None` for the byte-stream pool.
        protocol: Option<&'static str>,
    },
}

/// The end of a message that names the endpoint's last dial error, if any.
fn last_dial_error_of(error: &Option<std::sync::Arc<str>>) -> String {
    error
        .as_deref()
        .map(|e| format!("; last dial error: {e}"))
        .unwrap_or_default()
}

fn next_try(retry_in: Duration) -> String {
    if retry_in.is_zero() {
        "a probe dial is under way".to_owned()
    } else {
        format!("it lets a dial through again in {retry_in:?}")
    }
}

/// What starts the message of an error from a protocol pool, so that a
/// log line says which of a pool's protocols failed: `"redis pool: "`.
fn pool_of(protocol: Option<&'static str>) -> String {
    protocol.map(|p| format!("{p} pool: ")).unwrap_or_default()
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

impl Error {
    /// The endpoint the error concerns, when there is one.
    pub fn endpoint(&self) -> Option<&Endpoint> {
        match self {
            Error::ConnectionFailed { endpoint, .. }
            | Error::ConnectionTimeout { endpoint, .. }
            | Error::Tls { endpoint, .. }
            | Error::OnConnect { endpoint, .. }
            | Error::CircuitOpen { endpoint, .. }
            | Error::AcquireTimeout { endpoint, .. }
            | Error::TooManyWaiters { endpoint, .. }
            | Error::Handshake { endpoint, .. }
            | Error::NoRuntime { endpoint, .. } => Some(endpoint),
            _ => None,
        }
    }

    /// The protocol pool the error came from ([`Protocol::name`](crate::Protocol::name)),
    /// or `None` for the byte-stream pool (and for errors of no endpoint).
    ///
    /// ```
    /// # #[cfg(feature = "redis")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Nothing listens on port 1 of loopback.
    /// let config = conpool::Config::builder().connect_retry_count(1).build()?;
    /// let pool = conpool::Pool::new(config);
    /// let redis = pool.protocol(conpool::redis::Redis::new(Default::default()));
    /// let err = redis.get(&conpool::Endpoint::new("127.0.0.1", 1)?).await.unwrap_err();
    /// assert_eq!(err.protocol(), Some("redis"));
    /// assert!(err.to_string().starts_with("redis pool: could not connect to 127.0.0.1:1"));
    /// # Ok(()) }
    /// # #[cfg(not(feature = "redis"))]
    /// # fn main() {}
    /// ```
    pub fn protocol(&self) -> Option<&'static str> {
        match self {
            Error::Handshake { protocol, .. } => Some(protocol),
            Error::DnsResolutionFailed { protocol, .. }
            | Error::ConnectionFailed { protocol, .. }
            | Error::ConnectionTimeout { protocol, .. }
            | Error::Tls { protocol, .. }
            | Error::OnConnect { protocol, .. }
            | Error::CircuitOpen { protocol, .. }
            | Error::AcquireTimeout { protocol, .. }
            | Error::TooManyWaiters { protocol, .. }
            | Error::NoRuntime { protocol, .. } => *protocol,
            _ => None,
        }
    }

    /// The same error, said of `name`'s protocol pool: the core makes its
    /// errors without knowing which pool asked, and a protocol pool's get
    /// names itself in whatever comes back.
    pub(crate) fn in_protocol_pool(mut self, name: &'static str) -> Error {
        match &mut self {
            Error::DnsResolutionFailed { protocol, .. }
            | Error::ConnectionFailed { protocol, .. }
            | Error::ConnectionTimeout { protocol, .. }
            | Error::Tls { protocol, .. }
            | Error::OnConnect { protocol, .. }
            | Error::CircuitOpen { protocol, .. }
            | Error::AcquireTimeout { protocol, .. }
            | Error::TooManyWaiters { protocol, .. }
            | Error::NoRuntime { protocol, .. } => *protocol = Some(name),
            Error::Handshake { .. }
            | Error::InvalidConfig { .. }
            | Error::InvalidEndpoint { .. }
            | Error::PoolClosed => {}
        }
        self
    }

    /// Whether the error is about time running out.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Error::ConnectionTimeout { .. } | Error::AcquireTimeout { .. }
        )
    }
}

/// Lets a closure given to [`Pool::with_connection`](crate::Pool::with_connection)
/// return `io::Result` and still use `?` on pool errors.
impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        let kind = match &err {
            Error::ConnectionFailed { source, .. } => source.kind(),
            Error::ConnectionTimeout { .. } | Error::AcquireTimeout { .. } => {
                io::ErrorKind::TimedOut
            }
            Error::InvalidConfig { .. } | Error::InvalidEndpoint { .. } => {
                io::ErrorKind::InvalidInput
            }
            Error::Tls { .. } => io::ErrorKind::InvalidData,
            Error::OnConnect { source, .. } => match source.downcast_ref::<io::Error>() {
                Some(io) => io.kind(),
                None => io::ErrorKind::Other,
            },
            Error::DnsResolutionFailed { .. } => io::ErrorKind::NotFound,
            Error::PoolClosed => io::ErrorKind::NotConnected,
            // Refused on the endpoint's behalf, after it refused (or failed)
            // `breaker_failures` dials in a row.
            Error::CircuitOpen { .. } => io::ErrorKind::ConnectionRefused,
            Error::TooManyWaiters { .. } => io::ErrorKind::WouldBlock,
            Error::NoRuntime { .. } => io::ErrorKind::Unsupported,
            Error::Handshake { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}
