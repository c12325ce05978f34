//! The `on_connect` hook: what runs on every freshly dialed stream before
//! anyone sees it.
//!
//! This module owns the hook's trait ([`OnConnect`]), the error a hook
//! fails with ([`OnConnectError`], which says whether another attempt may
//! succeed), and the one attempt the pool retries: the dial, then the hook
//! ([`attempt`]). Running the hook there, rather than in a dialer, puts it
//! on every dialer's streams, custom ones included, after the TLS
//! handshake and inside the same `connect_timeout`, and makes its failure
//! a failed dial like any other.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use super::{Dial, DialError};
use crate::config::BoxFuture;
use crate::{Config, Endpoint, Stream};

/// An async step run on each new connection, after the dial (and the TLS
/// handshake) and before the pool hands it to anyone: authenticate, select
/// a database, set a socket option, agree on a private protocol's version.
///
/// Implemented for every
/// `Fn(&mut Stream, &Endpoint) -> BoxFuture<'_, Result<(), OnConnectError>>`;
/// see [`ConfigBuilder::on_connect`](crate::ConfigBuilder::on_connect).
pub trait OnConnect: Send + Sync + 'static {
    /// Prepares `stream`, a new connection to `endpoint`; an error fails
    /// the dial.
    fn on_connect<'a>(
        &'a self,
        stream: &'a mut Stream,
        endpoint: &'a Endpoint,
    ) -> BoxFuture<'a, Result<(), OnConnectError>>;
}

impl<F> OnConnect for F
where
    F: for<'a> Fn(&'a mut Stream, &'a Endpoint) -> BoxFuture<'a, Result<(), OnConnectError>>
        + Send
        + Sync
        + 'static,
{
    fn on_connect<'a>(
        &'a self,
        stream: &'a mut Stream,
        endpoint: &'a Endpoint,
    ) -> BoxFuture<'a, Result<(), OnConnectError>> {
        self(stream, endpoint)
    }
}

/// Why an `on_connect` hook refused a new connection, and whether a new
/// connection may fare better.
///
/// Any error converts into one with `?` or `.into()`: such a failure is
/// final (a wrong password stays wrong), so the dial fails at once.
/// [`OnConnectError::transient`] marks one that another attempt may get
/// past (the server said it is loading, try later): the pool then dials
/// again under its retry policy.
///
/// ```
/// use conpool::dial::OnConnectError;
///
/// let wrong_password = OnConnectError::from(std::io::Error::other("WRONGPASS"));
/// assert!(!wrong_password.is_transient());
/// let loading = OnConnectError::transient(std::io::Error::other("LOADING"));
/// assert!(loading.is_transient());
/// ```
pub struct OnConnectError {
    source: Box<dyn StdError + Send + Sync>,
    transient: bool,
}

impl OnConnectError {
    /// A failure that another connection may not have: the pool dials again
    /// (within `connect_retry_count`).
    pub fn transient(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        OnConnectError {
            source: source.into(),
            transient: true,
        }
    }
    /// A failure no new connection would fix: the dial fails at once. The
    /// same as `From`.
    pub fn fatal(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        OnConnectError {
            source: source.into(),
            transient: false,
        }
    }
    /// Whether the pool may dial again.
    pub fn is_transient(&self) -> bool {
        self.transient
    }
    /// The hook's own error.
    pub fn into_source(self) -> Box<dyn StdError + Send + Sync> {
        self.source
    }
}

/// Not `std::error::Error` itself, so that any error converts with `?`.
impl<E: StdError + Send + Sync + 'static> From<E> for OnConnectError {
    fn from(err: E) -> Self {
        OnConnectError::fatal(err)
    }
}

impl fmt::Debug for OnConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnConnectError")
            .field("source", &self.source)
            .field("transient", &self.transient)
            .finish()
    }
}

impl fmt::Display for OnConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.fmt(f)
    }
}

/// One attempt as the pool retries it: the dial, then the config's hook on
/// the new stream. A hook's failure is a [`DialError::on_connect`], whose
/// I/O error carries the hook's error inside.
pub(crate) async fn attempt(
    dialer: &dyn Dial,
    endpoint: &Endpoint,
    config: &Config,
) -> Result<Stream, DialError> {
    let mut stream = dialer.dial(endpoint).await?;
    if let Some(hook) = config.on_connect() {
        if let Err(err) = hook.on_connect(&mut stream, endpoint).await {
            tracing::warn!(%endpoint, error = %err, transient = err.transient, "on_connect failed");
            let transient = err.transient;
            return Err(DialError::on_connect(
                io::Error::other(err.into_source()),
                transient,
            ));
        }
    }
    Ok(stream)
}
