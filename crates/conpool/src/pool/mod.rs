//! The pool: a map from endpoint to that endpoint's pool.
//!
//! [`Pool`] is a cheap handle (`Arc` inside) shared by every task, and
//! [`WeakPool`] one that does not keep the pool alive (for hooks). It owns
//! the map of per-endpoint pools ([`EndpointPool`]) and nothing else: all
//! limits, queues and counters are per endpoint, so the map's lock is held
//! only for a lookup (or an insert the first time an endpoint is seen) and a
//! slow endpoint never slows another.
//!
//! - `map`: the endpoint map, behind a lock sharded by thread;
//! - `recent`: each thread's memory of the endpoint pools it found lately,
//!   which spares most gets the map's lock;
//! - `endpoint_pool`: one endpoint's books (its limit, counters and lock),
//!   and (in its `queue` module) its queue of waiting callers and their
//!   deadline sweeper;
//! - `idle`: an endpoint's stack of idle connections;
//! - `slots`: the per-thread slots a contended endpoint parks connections in;
//! - `conn`: a connection's record and the one reuse rule;
//! - `handle`: [`EndpointHandle`], a caller's own reference to one endpoint;
//! - `grant`: the cell through which a queued caller receives its grant;
//! - `global`: the limits across endpoints.

mod conn;
mod endpoint_pool;
mod global;
mod grant;
mod handle;
mod held;
mod idle;
mod map;
mod recent;
mod slots;

use std::panic::Location;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

pub(crate) use conn::Conn;
use endpoint_pool::Started;
pub(crate) use endpoint_pool::{Context, EndpointPool};
pub use handle::EndpointHandle;
pub(crate) use held::{Held, ProtocolConn};

use crate::dial::{Dial, TcpTlsDialer};
use crate::maintenance::Maintenance;
use crate::{Config, Endpoint, Error, PooledConnection, Protocol, ProtocolPool, Stats};

/// A connection pool keyed by [`Endpoint`]. Clone it freely: clones share
/// one pool.
///
/// ```no_run
/// use conpool::{Config, Endpoint, Pool};
/// use tokio::io::AsyncWriteExt;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::new(Config::default());
/// let redis = Endpoint::new("127.0.0.1", 6379)?;
///
/// let mut conn = pool.get(&redis).await?;
/// conn.write_all(b"PING\r\n").await?;
/// drop(conn); // returned for reuse
///
/// println!("{:?}", pool.stats(&redis));
/// pool.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    /// The byte streams' books.
    ctx: Arc<Context>,
    /// One context per [`Pool::protocol`] call: each protocol pool's books,
    /// sharing the limits and the background task with the streams'.
    protocols: parking_lot::Mutex<Vec<Arc<Context>>>,
    /// The dialer, when it is the default one: a protocol that names its
    /// ALPN protocols gets a copy offering them.
    default_dialer: Option<TcpTlsDialer>,
    closed: AtomicBool,
}

/// A handle on a [`Pool`] that does not keep it alive, made by
/// [`Pool::downgrade`]: for a hook (or anything else the pool itself
/// keeps) that needs the pool, where a `Pool` would keep the pool from ever
/// being dropped. See
/// [`ConfigBuilder::on_connection_closed`](crate::ConfigBuilder::on_connection_closed)
/// for a hook that reads the pool's stats.
///
/// ```
/// use conpool::{Config, Pool};
///
/// let pool = Pool::new(Config::default());
/// let weak = pool.downgrade();
/// assert!(weak.upgrade().is_some());
/// drop(pool); // the last `Pool`: its idle connections close now
/// assert!(weak.upgrade().is_none());
/// ```
#[derive(Clone)]
pub struct WeakPool {
    shared: Weak<Shared>,
}

impl WeakPool {
    /// The pool, if a [`Pool`] handle on it still exists (closed or not).
    pub fn upgrade(&self) -> Option<Pool> {
        self.shared.upgrade().map(|shared| Pool { shared })
    }
}

impl std::fmt::Debug for WeakPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakPool")
            .field("alive", &(self.shared.strong_count() > 0))
            .finish()
    }
}

impl Pool {
    /// A pool that dials TCP, and TLS with the config's `tls_config`, with
    /// [`TcpTlsDialer::from_config`].
    pub fn new(config: Config) -> Self {
        let dialer = TcpTlsDialer::from_config(&config);
        Pool::build(config, Arc::new(dialer.clone()), Some(dialer))
    }

    /// A pool that dials with a custom [`Dial`] (proxies, tunnels, test
    /// doubles; the default dialer already reaches TCP, TLS and Unix
    /// socket endpoints). Timeouts, retries and limits still come from
    /// `config`.
    pub fn with_dialer(config: Config, dialer: impl Dial) -> Self {
        Pool::build(config, Arc::new(dialer), None)
    }

    fn build(config: Config, dialer: Arc<dyn Dial>, default_dialer: Option<TcpTlsDialer>) -> Self {
        tracing::info!(
            max_per_endpoint = config.max_connections_per_endpoint(),
            max_idle = ?config.max_idle_time(),
            max_lifetime = ?config.max_connection_lifetime(),
            "connection pool created"
        );
        let shared = Arc::new_cyclic(|pool| Shared {
            ctx: Arc::new(Context {
                global: Arc::new(global::Global::new(&config)),
                maintenance: Arc::new(Maintenance::new(pool.clone(), &config)),
                config,
                dialer,
                endpoints: map::EndpointMap::default(),
                protocol: None,
            }),
            protocols: parking_lot::Mutex::default(),
            default_dialer,
            closed: AtomicBool::new(false),
        });
        Pool { shared }
    }

    /// A handle that does not keep the pool alive; see [`WeakPool`].
    pub fn downgrade(&self) -> WeakPool {
        WeakPool {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// The pool's configuration.
    pub fn config(&self) -> &Config {
        &self.shared.ctx.config
    }

    /// Leases a connection to `endpoint`: the most recently used idle one
    /// that is still fit, else a new one, else (at the endpoint's limit) the
    /// first one freed, in arrival order, within `acquire_timeout`.
    ///
    /// Cancelling the returned future at any point leaks nothing: a caller
    /// that stops waiting leaves the queue, and a dial it started finishes
    /// for the next caller.
    ///
    /// The caller's source location is remembered for the
    /// `leak_threshold` warning.
    #[track_caller]
    pub fn get<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> impl Future<Output = Result<PooledConnection, Error>> + Send + 'a {
        self.get_in(&self.shared.ctx, endpoint, Location::caller())
    }

    /// [`get`](Self::get) from the books of `ctx`: the streams' or a
    /// protocol's.
    pub(crate) async fn get_in(
        &self,
        ctx: &Arc<Context>,
        endpoint: &Endpoint,
        caller: &'static Location<'static>,
    ) -> Result<PooledConnection, Error> {
        loop {
            let Some(pool) = self.endpoint_pool(ctx, endpoint) else {
                return Err(Error::PoolClosed);
            };
            match pool.start_acquire(caller) {
                Started::Leased(lease) => return Ok(lease),
                Started::Pending(rest) => return rest.finish(caller).await,
                Started::Refused(error) => return Err(*error),
                // Retired between lookup and acquire: look it up again.
                Started::Retired => recent::forget(endpoint),
            }
        }
    }

    /// A pool of `protocol`'s connections (see [`ProtocolPool`]), with
    /// this pool's config, dialer, limits across endpoints, background
    /// task and [`close`](Pool::close). Each call makes books of its own:
    /// clone the `ProtocolPool` to share them.
    ///
    /// ```
    /// # async fn demo() -> Result<(), conpool::Error> {
    /// # type Body = http_body_util::Empty<hyper::body::Bytes>;
    /// let pool = conpool::Pool::new(conpool::Config::default());
    /// # #[cfg(feature = "hyper")]
    /// let http = pool.protocol(conpool::hyper::Http1::<Body>::new());
    /// # Ok(()) }
    /// ```
    pub fn protocol<P: Protocol>(&self, protocol: P) -> ProtocolPool<P> {
        let dialer = match (&self.shared.default_dialer, protocol.alpn_protocols()) {
            (Some(default), alpn) if !alpn.is_empty() => Arc::new(default.with_alpn(alpn)),
            _ => self.shared.ctx.dialer.clone(),
        };
        let books = Arc::new(crate::protocol::Books::new(protocol));
        let ctx = Arc::new(Context::for_protocol(
            &self.shared.ctx,
            dialer,
            books.clone(),
        ));
        self.shared.protocols.lock().push(ctx.clone());
        ProtocolPool::new(self.clone(), ctx, books)
    }

    /// A handle on `endpoint`'s share of this pool, for a caller that
    /// talks to one endpoint a lot: its [`get`](EndpointHandle::get) skips
    /// the lookup that every [`Pool::get`] makes. Fails only when the pool
    /// is closed. It may be called outside a runtime; the background task
    /// then starts with the first get made on one.
    ///
    /// ```no_run
    /// # async fn demo(pool: conpool::Pool) -> Result<(), conpool::Error> {
    /// let cache = pool.endpoint(&"127.0.0.1:11211".parse()?)?;
    /// let conn = cache.get().await?;
    /// # Ok(()) }
    /// ```
    pub fn endpoint(&self, endpoint: &Endpoint) -> Result<EndpointHandle, Error> {
        if self.is_closed() {
            return Err(Error::PoolClosed);
        }
        let handle = self.with_endpoint_pool(&self.shared.ctx, endpoint, |pool| {
            EndpointHandle::new(pool.clone())
        });
        // A handle may be taken for the warm-up alone, before any get.
        crate::maintenance::ensure_task(&self.shared.ctx);
        handle
    }

    /// Runs `f` with a leased connection and returns its result. The
    /// connection goes back to the pool when `f` returns `Ok`, and is closed
    /// when it returns `Err` (the exchange may have stopped half-way).
    ///
    /// ```no_run
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// # async fn demo(pool: conpool::Pool, ep: conpool::Endpoint) -> std::io::Result<()> {
    /// let reply = pool
    ///     .with_connection(&ep, async |conn| {
    ///         conn.write_all(b"PING\r\n").await?;
    ///         let mut reply = [0u8; 7];
    ///         conn.read_exact(&mut reply).await?;
    ///         Ok::<_, std::io::Error>(reply)
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn with_connection<F, T, E>(&self, endpoint: &Endpoint, f: F) -> Result<T, E>
    where
        F: AsyncFnOnce(&mut PooledConnection) -> Result<T, E>,
        E: From<Error>,
    {
        let mut conn = self.get(endpoint).await?;
        let result = f(&mut conn).await;
        if result.is_err() {
            conn.discard();
        }
        result
    }

    /// A snapshot of one endpoint's statistics (all zero for an endpoint
    /// never used).
    pub fn stats(&self, endpoint: &Endpoint) -> Stats {
        self.shared
            .ctx
            .endpoints
            .read()
            .get(endpoint)
            .map(|pool| pool.stats())
            .unwrap_or_default()
    }

    /// Every endpoint's statistics, sorted by endpoint, protocol pools'
    /// included ([`Stats::protocol`] says whose they are; the byte streams'
    /// come first).
    pub fn all_stats(&self) -> Vec<(Endpoint, Stats)> {
        let pools = self.shared.endpoint_pools();
        let mut all: Vec<(Endpoint, Stats)> = pools
            .iter()
            .map(|p| (p.endpoint.clone(), p.stats()))
            .collect();
        all.sort_by(|a, b| (&a.0, a.1.protocol).cmp(&(&b.0, b.1.protocol)));
        all
    }

    /// Closes every idle connection to `endpoint` now, the protocol pools'
    /// included; connections leased out close when they come back instead
    /// of being reused (a shared protocol's take no new shares). Waiting
    /// callers keep waiting and are served by new connections. The
    /// endpoint's counters are kept.
    pub fn clear_endpoint(&self, endpoint: &Endpoint) {
        let pools: Vec<_> = self
            .shared
            .contexts()
            .iter()
            .filter_map(|ctx| ctx.endpoints.get(endpoint))
            .collect();
        if pools.is_empty() {
            tracing::debug!(%endpoint, "clear_endpoint: no pool for this endpoint");
        }
        for pool in pools {
            pool.clear();
        }
    }

    /// Closes the pool: idle connections close at once, waiting and new
    /// calls to [`get`](Pool::get) fail with [`Error::PoolClosed`], and
    /// leased connections close as they come back. Never blocks on a peer.
    pub async fn close(&self) {
        self.shared.close();
    }

    /// Whether [`close`](Pool::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// `endpoint`'s pool, made if it is new; `None` once the pool is
    /// closed. (Not a `Result`: `get` checks it on every call, and an
    /// `Error` is large to move around.)
    #[inline]
    fn endpoint_pool(&self, ctx: &Arc<Context>, endpoint: &Endpoint) -> Option<Arc<EndpointPool>> {
        if let Some(pool) = recent::find(ctx, endpoint) {
            return Some(pool);
        }
        let pool = self.with_endpoint_pool(ctx, endpoint, Arc::clone).ok()?;
        recent::remember(&pool);
        Some(pool)
    }

    /// Runs `f` on `endpoint`'s pool, made if it is new, with the map still
    /// locked (so that the entry cannot be retired meanwhile).
    fn with_endpoint_pool<T>(
        &self,
        ctx: &Arc<Context>,
        endpoint: &Endpoint,
        f: impl FnOnce(&Arc<EndpointPool>) -> T,
    ) -> Result<T, Error> {
        if let Some(pool) = ctx.endpoints.read().get(endpoint) {
            return Ok(f(pool));
        }
        let mut map = ctx.endpoints.write();
        // Checked under the write lock, which `close` also takes, so no
        // endpoint pool is created after the pool closed.
        if self.is_closed() {
            return Err(Error::PoolClosed);
        }
        Ok(match map.get(endpoint) {
            Some(pool) => f(pool),
            None => {
                tracing::info!(%endpoint, "endpoint pool created");
                let pool = Arc::new(EndpointPool::new(endpoint.clone(), ctx.clone()));
                let out = f(&pool);
                map.insert(map::Entry(pool));
                out
            }
        })
    }
}

impl Shared {
    pub(crate) fn config(&self) -> &Config {
        &self.ctx.config
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn wake_starved(&self) {
        self.ctx.global.wake_starved();
    }

    /// Every context: the streams' first, then each protocol pool's.
    fn contexts(&self) -> Vec<Arc<Context>> {
        let mut all = vec![self.ctx.clone()];
        all.extend(self.protocols.lock().iter().cloned());
        all
    }

    /// Every endpoint pool, protocol pools' included, for the maintenance
    /// pass and `all_stats`.
    pub(crate) fn endpoint_pools(&self) -> Vec<Arc<EndpointPool>> {
        let mut pools = self.ctx.endpoints.pools();
        for ctx in self.protocols.lock().iter() {
            pools.extend(ctx.endpoints.pools());
        }
        pools
    }

    /// Removes the endpoint pools that are still empty.
    pub(crate) fn remove_empty(&self, candidates: &[Arc<EndpointPool>]) -> usize {
        if candidates.is_empty() {
            return 0;
        }
        let mut removed = 0;
        for pool in candidates {
            let mut map = pool.ctx.endpoints.write();
            if pool.retire_if_empty() {
                map.remove(&pool.endpoint);
                removed += 1;
            }
        }
        removed
    }
}

/// A handle the maintenance task holds without keeping the pool alive.
pub(crate) type WeakShared = Weak<Shared>;

impl Shared {
    fn close(&self) {
        let mut pools: Vec<Arc<EndpointPool>> = {
            let map = self.ctx.endpoints.write();
            if self.closed.swap(true, Ordering::AcqRel) {
                return;
            }
            map.iter().map(|entry| entry.0.clone()).collect()
        };
        // A protocol's endpoint pool made meanwhile was made under its
        // map's write lock, taken here after the flag was set: it is
        // either in the map now or was refused.
        for ctx in self.protocols.lock().iter() {
            pools.extend(ctx.endpoints.write().iter().map(|entry| entry.0.clone()));
        }
        tracing::info!(endpoints = pools.len(), "connection pool closing");
        self.ctx.maintenance.pool_closed();
        for pool in pools {
            pool.close();
        }
    }
}

impl Drop for Shared {
    /// The last handle is gone: nothing can lease again, so idle
    /// connections close now and leases close as they come back. Emptying
    /// the map breaks the cycle between it and the endpoint pools.
    fn drop(&mut self) {
        self.close();
        for ctx in self.contexts() {
            ctx.endpoints.write().clear();
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("endpoints", &self.shared.ctx.endpoints.read().len())
            .field("open", &self.shared.ctx.global.open())
            .field("closed", &self.is_closed())
            .finish()
    }
}
