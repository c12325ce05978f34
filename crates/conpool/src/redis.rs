//! Redis through redis-rs (feature `redis`): [`Redis`], a shared
//! [`Protocol`] whose connection is redis-rs's
//! [`MultiplexedConnection`].
//!
//! This module owns the Redis side of a connection's life: the handshake
//! on a freshly dialed stream (redis-rs's own, with the database, the user
//! and the password of a [`RedisConnectionInfo`] sent on every new
//! connection), which handshake errors are worth dialing again for, and
//! how many leases may share one connection. Dialing (TCP, TLS, retries,
//! `connect_timeout`), limits, expiry and the driver task are the pool's,
//! as for every protocol.
//!
//! A lease is a share: a clone of the connection's
//! [`MultiplexedConnection`], on which redis-rs pipelines the commands of
//! every share over one socket. The driver future redis-rs returns with
//! the connection runs as the pool's task; when it ends (the server closed
//! the connection, or it broke) the connection is no longer handed out
//! and is closed as [`NotReady`](crate::CloseReason::NotReady); closing or
//! clearing the pool ends it.
//!
//! ```no_run
//! use conpool::redis::Redis;
//! use conpool::{Config, Endpoint, Pool};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::new(Config::builder().max_connections_per_endpoint(2).build()?);
//! let info = redis::RedisConnectionInfo::default().set_db(3);
//! let redis = pool.protocol(Redis::new(info));
//! let server = Endpoint::new("127.0.0.1", 6379)?;
//!
//! let mut conn = redis.get(&server).await?;
//! let () = redis::cmd("SET").arg("greeting").arg("hello").query_async(&mut *conn).await?;
//! let greeting: String = redis::cmd("GET").arg("greeting").query_async(&mut *conn).await?;
//! assert_eq!(greeting, "hello");
//! # Ok(()) }
//! ```

use std::num::NonZeroUsize;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, ErrorKind, RedisConnectionInfo, RedisError, ServerErrorKind};

use crate::{Connected, Endpoint, Protocol, Stream};

/// The Redis protocol over pooled streams, as redis-rs speaks it: each
/// lease is a share of a [`MultiplexedConnection`].
///
/// Every new connection runs redis-rs's handshake with the
/// [`RedisConnectionInfo`] given to [`Redis::new`]: `AUTH` (or `HELLO` for
/// RESP3) with its user and password, `SELECT` of its database, and the
/// client's name. A handshake the server rejects (a wrong password, a
/// database out of range, a missing permission) fails the get at once
/// with [`Error::Handshake`](crate::Error::Handshake), the server's words
/// in its `source()`, and is not dialed again; the only errors dialed
/// again (within `connect_retry_count`) are the server saying it is still
/// loading its data set (`LOADING`) and the fresh connection dropping
/// during the handshake (a server restarting).
///
/// How many leases share a connection: by default, all of them. A
/// multiplexed connection pipelines commands and has no limit of its own,
/// and one connection carries the most commands per second for the least
/// work on both sides; [`max_shares`](Redis::max_shares) caps it, so that
/// more callers open more connections (up to
/// `max_connections_per_endpoint`), to spread a slow command's wait or use
/// more of the server's I/O threads.
///
/// ```no_run
/// use conpool::redis::Redis;
/// use conpool::{Config, Endpoint, Pool};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::new(Config::default());
/// let info = redis::RedisConnectionInfo::default()
///     .set_username("app")
///     .set_password("secret");
/// let redis = pool.protocol(Redis::new(info));
/// let mut conn = redis.get(&Endpoint::new("127.0.0.1", 6379)?).await?;
/// let pong: String = redis::cmd("PING").query_async(&mut *conn).await?;
/// assert_eq!(pong, "PONG");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Redis {
    info: RedisConnectionInfo,
    max_shares: Option<NonZeroUsize>,
}

impl Redis {
    /// The protocol whose new connections log in and select the database
    /// as `info` says; unlimited shares per connection.
    ///
    /// ```
    /// use conpool::redis::Redis;
    ///
    /// let redis = Redis::new(redis::RedisConnectionInfo::default().set_db(3));
    /// assert_eq!(redis.connection_info().db(), 3);
    /// ```
    pub fn new(info: RedisConnectionInfo) -> Self {
        Redis {
            info,
            max_shares: None,
        }
    }

    /// Lets at most `limit` leases share one connection at once; callers
    /// past it get a share of another connection, a new one if the
    /// endpoint's limit allows, or wait for a share to come back.
    ///
    /// ```
    /// use std::num::NonZeroUsize;
    /// use conpool::redis::Redis;
    ///
    /// let limit = NonZeroUsize::new(16).expect("16 is not zero");
    /// let redis = Redis::new(redis::RedisConnectionInfo::default()).max_shares(limit);
    /// assert_eq!(redis.shares_per_connection(), Some(limit));
    /// ```
    pub fn max_shares(mut self, limit: NonZeroUsize) -> Self {
        self.max_shares = Some(limit);
        self
    }

    /// The most leases that may share one connection at once; `None`:
    /// no limit (the default).
    ///
    /// ```
    /// use conpool::redis::Redis;
    ///
    /// assert_eq!(Redis::new(Default::default()).shares_per_connection(), None);
    /// ```
    pub fn shares_per_connection(&self) -> Option<NonZeroUsize> {
        self.max_shares
    }

    /// What every new connection's handshake sends: database, user,
    /// password, protocol version and client name.
    ///
    /// ```
    /// use conpool::redis::Redis;
    ///
    /// let info = redis::RedisConnectionInfo::default().set_username("app");
    /// assert_eq!(Redis::new(info).connection_info().username(), Some("app"));
    /// ```
    pub fn connection_info(&self) -> &RedisConnectionInfo {
        &self.info
    }
}

impl Protocol for Redis {
    type Conn = MultiplexedConnection;
    type Error = RedisError;
    const SHARED: bool = true;

    fn name(&self) -> &'static str {
        "redis"
    }

    async fn connect(
        &self,
        stream: Stream,
        _: &Endpoint,
    ) -> Result<Connected<MultiplexedConnection>, RedisError> {
        // `new_with_config`, not `new`: only its driver is `'static`.
        let (conn, driver) = MultiplexedConnection::new_with_config(
            &self.info,
            stream,
            AsyncConnectionConfig::new(),
        )
        .await?;
        Ok(Connected::with_driver(conn, driver))
    }

    /// redis-rs tells nothing of a connection without I/O but through its
    /// driver, whose end the pool watches itself.
    fn is_ready(&self, _: &mut MultiplexedConnection) -> bool {
        true
    }

    fn max_shares(&self, _: &MultiplexedConnection) -> usize {
        self.max_shares.map_or(usize::MAX, NonZeroUsize::get)
    }

    fn share(&self, conn: &MultiplexedConnection) -> Option<MultiplexedConnection> {
        Some(conn.clone())
    }

    fn is_transient(&self, error: &RedisError) -> bool {
        error.kind() == ErrorKind::Server(ServerErrorKind::BusyLoading)
            || error.is_connection_dropped()
    }
}
