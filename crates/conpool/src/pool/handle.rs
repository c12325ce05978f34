//! Endpoint handles: a caller's own reference to one endpoint's pool.
//!
//! [`Pool::get`](super::Pool::get) finds the endpoint's pool in the map on
//! every call. A hot caller that always talks to the same endpoint (a
//! client object for one Redis server, say) can look it up once with
//! [`Pool::endpoint`](super::Pool::endpoint) and keep the
//! [`EndpointHandle`]: its [`get`](EndpointHandle::get) goes straight to the
//! endpoint's slots. A handle shares everything with the pool (limits,
//! idle connections, waiters, counters) and keeps the endpoint's entry from
//! being dropped as long-empty while it is held. It does not keep the pool
//! open: after [`Pool::close`](super::Pool::close), or once the last `Pool`
//! is dropped, its `get` fails with [`Error::PoolClosed`].

use std::fmt;
use std::panic::Location;
use std::sync::Arc;

use super::EndpointPool;
use super::endpoint_pool::Started;
use crate::{Endpoint, Error, PooledConnection, Stats};

/// One endpoint's share of a [`Pool`](crate::Pool), looked up once.
///
/// ```no_run
/// use conpool::{Config, Endpoint, Pool};
/// use tokio::io::AsyncWriteExt;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::new(Config::default());
/// let redis = pool.endpoint(&Endpoint::new("127.0.0.1", 6379)?)?;
///
/// let mut conn = redis.get().await?; // no map lookup
/// conn.write_all(b"PING\r\n").await?;
/// # Ok(()) }
/// ```
pub struct EndpointHandle {
    pool: Arc<EndpointPool>,
}

impl EndpointHandle {
    /// Takes a handle on `pool`. A first handle is taken with the pool's
    /// map locked (for reading at least), so that the entry cannot be
    /// retired in between; a clone finds the count above zero already.
    pub(crate) fn new(pool: Arc<EndpointPool>) -> Self {
        pool.handle_taken();
        EndpointHandle { pool }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.pool.endpoint
    }

    /// Leases a connection to this endpoint, exactly as
    /// [`Pool::get`](crate::Pool::get) does, without looking the endpoint up.
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<PooledConnection, Error>> + Send + '_ {
        let caller = Location::caller();
        async move {
            match self.pool.clone().start_acquire(caller) {
                Started::Leased(lease) => Ok(lease),
                Started::Pending(rest) => rest.finish(caller).await,
                Started::Refused(error) => Err(*error),
                // An endpoint with a handle out is never retired; were it
                // ever, the honest answer is that this entry is gone.
                Started::Retired => Err(Error::PoolClosed),
            }
        }
    }

    /// A snapshot of this endpoint's statistics; the same as
    /// [`Pool::stats`](crate::Pool::stats) for it.
    pub fn stats(&self) -> Stats {
        self.pool.stats()
    }
}

impl Clone for EndpointHandle {
    fn clone(&self) -> Self {
        EndpointHandle::new(self.pool.clone())
    }
}

impl Drop for EndpointHandle {
    fn drop(&mut self) {
        self.pool.handle_dropped();
    }
}

impl fmt::Debug for EndpointHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointHandle")
            .field("endpoint", self.endpoint())
            .finish()
    }
}
