//! Protocol pools: pooling what a protocol client makes of the stream.
//!
//! Most programs hand a stream to a protocol client (hyper, redis-rs) that
//! does a handshake, keeps state and often drives the socket from a task of
//! its own. A [`Protocol`] tells the pool how to make such a connection out
//! of a dialed [`Stream`], whether one can take another request, and how
//! many leases may share one. [`Pool::protocol`](crate::Pool::protocol)
//! gives a [`ProtocolPool`] of those connections, with every rule the pool
//! applies to streams: limits (across endpoints too), lifetime, idle time,
//! use count, clears, the background task and `close`.
//!
//! This module owns the protocol's side: the trait, the typed pool and
//! lease, the handshake as part of the dial (`connect`), the task that
//! drives a connection, and (in `shared`) the shares of a shared
//! protocol's connections. The endpoint's books stay in the core
//! (`crate::pool`), which holds a protocol's connection as an opaque
//! `ProtocolConn` beside its byte streams: one core, one set of books.
//!
//! Exclusive protocols (HTTP/1.1) lease a connection to one caller at a
//! time, as the byte-stream pool does. Shared ones (HTTP/2, Redis
//! multiplexing) lease *shares*: a connection is leased from the core once,
//! by the first share, and given back when its last share is; in between
//! the shares are handed out here (see `shared`).

mod shared;

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use tokio::time::Instant;

use crate::config::BoxFuture;
use crate::dial::{Dial, backoff_delay, dial_with_retry};
use crate::pool::{Context, Held, ProtocolConn};
use crate::{CloseReason, Config, Endpoint, Error, Pool, PooledConnection, Stats, Stream};

/// A protocol spoken over pooled streams: how a dialed stream becomes the
/// protocol's connection, and what the pool may ask of that connection.
///
/// A complete protocol, one line per request over one stream at a time:
///
/// ```
/// use conpool::{Connected, Endpoint, Protocol, Stream};
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
///
/// /// A line protocol: the server greets with "hello\n", then answers each
/// /// line with one line.
/// struct Lines;
///
/// struct LineConn {
///     stream: BufReader<Stream>,
///     broken: bool,
/// }
///
/// impl LineConn {
///     async fn call(&mut self, line: &str) -> std::io::Result<String> {
///         self.broken = true; // until the exchange completes
///         self.stream.get_mut().write_all(format!("{line}\n").as_bytes()).await?;
///         let mut reply = String::new();
///         self.stream.read_line(&mut reply).await?;
///         self.broken = reply.is_empty();
///         Ok(reply)
///     }
/// }
///
/// impl Protocol for Lines {
///     type Conn = LineConn;
///     type Error = std::io::Error;
///
///     fn name(&self) -> &'static str {
///         "lines"
///     }
///
///     async fn connect(&self, stream: Stream, _: &Endpoint) -> std::io::Result<Connected<LineConn>> {
///         let mut stream = BufReader::new(stream);
///         let mut greeting = String::new();
///         stream.read_line(&mut greeting).await?;
///         if greeting != "hello\n" {
///             return Err(std::io::Error::other(format!("unexpected greeting {greeting:?}")));
///         }
///         Ok(Connected::new(LineConn { stream, broken: false }))
///     }
///
///     fn is_ready(&self, conn: &mut LineConn) -> bool {
///         !conn.broken
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let port = listener.local_addr()?.port();
/// # tokio::spawn(async move {
/// #     loop {
/// #         let (socket, _) = listener.accept().await.unwrap();
/// #         tokio::spawn(async move {
/// #             let (r, mut w) = socket.into_split();
/// #             w.write_all(b"hello\n").await.unwrap();
/// #             let mut lines = BufReader::new(r).lines();
/// #             while let Ok(Some(line)) = lines.next_line().await {
/// #                 w.write_all(format!("{}\n", line.to_uppercase()).as_bytes()).await.unwrap();
/// #             }
/// #         });
/// #     }
/// # });
/// let pool = conpool::Pool::new(conpool::Config::default());
/// let lines = pool.protocol(Lines);
/// let server = Endpoint::new("127.0.0.1", port)?;
/// for word in ["one", "two"] {
///     let mut conn = lines.get(&server).await?;
///     assert_eq!(conn.call(word).await?, format!("{}\n", word.to_uppercase()));
/// }
/// let stats = lines.stats(&server);
/// assert_eq!((stats.total_created, stats.total_reused), (1, 1));
/// assert_eq!(stats.protocol, Some("lines"));
/// # Ok(()) }
/// ```
pub trait Protocol: Send + Sync + 'static {
    /// The protocol's connection: what a lease derefs to.
    type Conn: Send + 'static;

    /// What a failed handshake reports; kept as the `source()` of
    /// [`Error::Handshake`].
    type Error: std::error::Error + Send + Sync + 'static;

    /// Whether leases share a connection. `false` (the default): a lease
    /// has the connection to itself, as HTTP/1.1's does. `true`: up to
    /// [`max_shares`](Self::max_shares) leases use one connection at once,
    /// each through its own handle from [`share`](Self::share), as
    /// HTTP/2 streams and multiplexed Redis commands do.
    const SHARED: bool = false;

    /// A short name for errors, logs and [`Stats::protocol`], such as
    /// `"http1"`.
    fn name(&self) -> &'static str;

    /// Makes a freshly dialed stream (connected, TLS done) into a
    /// connection: the protocol's handshake. It runs as part of the dial,
    /// within `connect_timeout`; its error fails the dial and is retried
    /// only when [`is_transient`](Self::is_transient) says so.
    fn connect(
        &self,
        stream: Stream,
        endpoint: &Endpoint,
    ) -> impl Future<Output = Result<Connected<Self::Conn>, Self::Error>> + Send;

    /// Whether `conn` can take another request, answered cheaply and
    /// without I/O: the pool asks before every lease (and share), at every
    /// return and in the background pass, and closes a connection that
    /// cannot (counted as [`NotReady`](crate::CloseReason::NotReady)). A
    /// connection whose [driver](Connected::with_driver) ended is not
    /// ready whatever this says.
    fn is_ready(&self, conn: &mut Self::Conn) -> bool;

    /// Whether `conn`, just given back, is ready for the next request, for
    /// a client that needs a moment after an exchange: hyper's HTTP/1.1
    /// client is ready again only once its task has seen the response end.
    /// `Pending` (with `cx` woken when that changes) has the pool wait in
    /// a task of its own before taking the connection back, as hyper-util's
    /// pool does; `Ready(false)` closes it. The default answers at once
    /// with [`is_ready`](Self::is_ready). Asked of exclusive protocols only.
    fn poll_ready(&self, conn: &mut Self::Conn, cx: &mut std::task::Context<'_>) -> Poll<bool> {
        let _ = cx;
        Poll::Ready(self.is_ready(conn))
    }

    /// The ALPN protocols to offer on a TLS endpoint (`h2` for HTTP/2),
    /// most preferred first; empty (the default) keeps the config's. A
    /// pool with the default dialer offers these on this protocol's
    /// connections; a custom dialer makes its own TLS, and the protocol
    /// should check what was negotiated (in [`Stream::tls_session`]).
    fn alpn_protocols(&self) -> &[&'static [u8]] {
        &[]
    }

    /// For a shared protocol, how many leases may share `conn` at once
    /// (the peer's limit, such as HTTP/2's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`); at least 1. Exclusive
    /// protocols are never asked.
    fn max_shares(&self, conn: &Self::Conn) -> usize {
        let _ = conn;
        1
    }

    /// For a shared protocol, a handle on `conn` for one more lease (the
    /// connection types of shared clients are cheap clones); `None` if
    /// `conn` takes no more shares, which closes it once its shares are
    /// back. Exclusive protocols are never asked.
    fn share(&self, conn: &Self::Conn) -> Option<Self::Conn> {
        let _ = conn;
        None
    }

    /// Whether a failed handshake may succeed if dialed again (a
    /// server that was busy); the default, `false`, fails the dial at once.
    fn is_transient(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }
}

/// What a [`Protocol`]'s handshake made: the connection, and the task that
/// drives it, if the client has one (hyper's `Connection`, redis-rs's
/// driver future).
///
/// The pool owns the driver: it runs on the runtime of the dial, ends when
/// the connection is closed (by the pool's rules, a clear or `close`), and
/// a connection whose driver ended by itself is no longer handed out.
pub struct Connected<C> {
    conn: C,
    driver: Option<BoxFuture<'static, ()>>,
}

impl<C> Connected<C> {
    /// A connection that needs no task of its own.
    pub fn new(conn: C) -> Self {
        Connected { conn, driver: None }
    }

    /// A connection driven by `driver`, which the pool spawns and owns.
    pub fn with_driver(conn: C, driver: impl Future<Output = ()> + Send + 'static) -> Self {
        Connected {
            conn,
            driver: Some(Box::pin(driver)),
        }
    }
}

impl<C> fmt::Debug for Connected<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connected")
            .field("driver", &self.driver.is_some())
            .finish_non_exhaustive()
    }
}

/// A protocol as the core holds it, whatever its type.
pub(crate) trait ErasedProtocol: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// The protocol's handshake on `stream`, its driver spawned.
    fn handshake(
        self: Arc<Self>,
        stream: Stream,
        endpoint: Endpoint,
    ) -> BoxFuture<'static, Result<Box<dyn ProtocolConn>, HandshakeFailure>>;

    /// Shares of `endpoint`'s connections in flight, and callers waiting
    /// for one (both 0 for exclusive protocols).
    fn share_counts(&self, endpoint: &Endpoint) -> (usize, usize);

    /// `endpoint` was cleared or its pool closed: its connections out for
    /// sharing take no new shares.
    fn retire_shares(&self, endpoint: &Endpoint);
}

pub(crate) struct HandshakeFailure {
    transient: bool,
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// A protocol and what the pool keeps beside the core's books for it: the
/// shares of its connections.
pub(crate) struct Books<P: Protocol> {
    /// Shared with each endpoint's share set, whose shares ask it whether
    /// their connection is still ready as they come back.
    protocol: Arc<P>,
    shares: shared::Shares<P>,
}

impl<P: Protocol> Books<P> {
    pub(crate) fn new(protocol: P) -> Self {
        Books {
            protocol: Arc::new(protocol),
            shares: shared::Shares::default(),
        }
    }
}

impl<P: Protocol> ErasedProtocol for Books<P> {
    fn name(&self) -> &'static str {
        self.protocol.name()
    }

    fn handshake(
        self: Arc<Self>,
        stream: Stream,
        endpoint: Endpoint,
    ) -> BoxFuture<'static, Result<Box<dyn ProtocolConn>, HandshakeFailure>> {
        Box::pin(async move {
            match self.protocol.connect(stream, &endpoint).await {
                Ok(connected) => {
                    Ok(Box::new(Live::start(connected, self)) as Box<dyn ProtocolConn>)
                }
                Err(err) => Err(HandshakeFailure {
                    transient: self.protocol.is_transient(&err),
                    source: Box::new(err),
                }),
            }
        })
    }

    fn share_counts(&self, endpoint: &Endpoint) -> (usize, usize) {
        self.shares.counts(endpoint)
    }

    fn retire_shares(&self, endpoint: &Endpoint) {
        self.shares.retire(endpoint);
    }
}

/// A protocol's connection in the core's record: the connection, and its
/// driver task, ended when this is dropped (the core closing it).
pub(crate) struct Live<P: Protocol> {
    conn: P::Conn,
    books: Arc<Books<P>>,
    driver: Option<Driver>,
}

struct Driver {
    task: tokio::task::AbortHandle,
    /// Set when the driver future returned (the connection is over).
    ended: Arc<AtomicBool>,
}

impl<P: Protocol> Live<P> {
    /// Spawns the driver, if any, on the current runtime (the dial's).
    fn start(connected: Connected<P::Conn>, books: Arc<Books<P>>) -> Self {
        let driver = connected.driver.map(|future| {
            let ended = Arc::new(AtomicBool::new(false));
            let flag = ended.clone();
            let task = tokio::spawn(async move {
                future.await;
                flag.store(true, Ordering::Release);
            });
            Driver {
                task: task.abort_handle(),
                ended,
            }
        });
        Live {
            conn: connected.conn,
            books,
            driver,
        }
    }
}

impl<P: Protocol> ProtocolConn for Live<P> {
    fn is_ready(&mut self) -> bool {
        let driving = self
            .driver
            .as_ref()
            .is_none_or(|driver| !driver.ended.load(Ordering::Acquire));
        driving && self.books.protocol.is_ready(&mut self.conn)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl<P: Protocol> Drop for Live<P> {
    fn drop(&mut self) {
        if let Some(driver) = &self.driver {
            driver.task.abort();
        }
    }
}

/// The protocol's connection in a lease of `books`' pool.
fn live<P: Protocol>(lease: &PooledConnection) -> &Live<P> {
    lease
        .held()
        .protocol()
        .and_then(|conn| conn.as_any().downcast_ref())
        .expect("a protocol pool's connection is that protocol's")
}

fn live_mut<P: Protocol>(lease: &mut PooledConnection) -> &mut Live<P> {
    lease
        .held_mut()
        .protocol_mut()
        .and_then(|conn| conn.as_any_mut().downcast_mut())
        .expect("a protocol pool's connection is that protocol's")
}

/// Dials `endpoint` as the byte-stream pool does (retries and timeouts
/// included) and runs `protocol`'s handshake on the stream within
/// `connect_timeout`; a transient handshake failure dials again, up to
/// `connect_retry_count` attempts in all.
pub(crate) async fn connect(
    protocol: &Arc<dyn ErasedProtocol>,
    dialer: &dyn Dial,
    endpoint: &Endpoint,
    config: &Config,
) -> Result<Held, Error> {
    let attempts = config.connect_retry_count();
    let mut attempt = 1;
    loop {
        let stream = dial_with_retry(dialer, endpoint, config).await?;
        let handshake = protocol.clone().handshake(stream, endpoint.clone());
        let outcome = match config.connect_timeout() {
            Some(limit) => tokio::time::timeout(limit, handshake)
                .await
                .map_err(|_| limit),
            None => Ok(handshake.await),
        };
        let failure = match outcome {
            Ok(Ok(conn)) => return Ok(Held::Protocol(conn)),
            Ok(Err(failure)) => failure,
            Err(limit) => HandshakeFailure {
                transient: false,
                source: Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("it did not finish within connect_timeout ({limit:?})"),
                )),
            },
        };
        if !failure.transient || attempt >= attempts {
            tracing::warn!(%endpoint, protocol = protocol.name(), error = %failure.source, "handshake failed");
            return Err(Error::Handshake {
                endpoint: endpoint.clone(),
                protocol: protocol.name(),
                source: failure.source,
            });
        }
        tracing::warn!(%endpoint, protocol = protocol.name(), attempt, error = %failure.source, "handshake failed; dialing again");
        tokio::time::sleep(backoff_delay(config.connect_retry_delay(), attempt)).await;
        attempt += 1;
    }
}

/// A pool of a [`Protocol`]'s connections, made by
/// [`Pool::protocol`](crate::Pool::protocol): keyed by endpoint, with the
/// pool's config, dialer, limits across endpoints, background task and
/// `close`. A cheap `Clone`: clones share one set of books.
///
/// See [`Protocol`] for a complete example.
pub struct ProtocolPool<P: Protocol> {
    pool: Pool,
    ctx: Arc<Context>,
    books: Arc<Books<P>>,
}

impl<P: Protocol> Clone for ProtocolPool<P> {
    fn clone(&self) -> Self {
        ProtocolPool {
            pool: self.pool.clone(),
            ctx: self.ctx.clone(),
            books: self.books.clone(),
        }
    }
}

impl<P: Protocol> ProtocolPool<P> {
    pub(crate) fn new(pool: Pool, ctx: Arc<Context>, books: Arc<Books<P>>) -> Self {
        ProtocolPool { pool, ctx, books }
    }

    /// Leases a connection to `endpoint` (for a shared protocol, a share
    /// of one): as [`Pool::get`](crate::Pool::get) does, the most recently
    /// used fit connection, else a new one, else the first one freed, in
    /// arrival order, within `acquire_timeout`. A shared protocol dials a
    /// new connection only when every open one is at its
    /// [`max_shares`](Protocol::max_shares), one dial at a time per
    /// endpoint. Every error it returns but [`Error::PoolClosed`] names
    /// this pool's protocol ([`Error::protocol`]) as well as the endpoint.
    #[track_caller]
    pub fn get<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> impl Future<Output = Result<ProtocolLease<P>, Error>> + Send + 'a {
        let caller = Location::caller();
        async move {
            let got = if P::SHARED {
                shared::get(self, endpoint, caller).await
            } else {
                self.pool
                    .get_in(&self.ctx, endpoint, caller)
                    .await
                    .map(|lease| ProtocolLease {
                        kind: Kind::Exclusive(lease, PhantomData),
                    })
            };
            got.map_err(|err| err.in_protocol_pool(self.books.protocol.name()))
        }
    }

    /// A snapshot of `endpoint`'s statistics in this protocol pool, with
    /// [`Stats::protocol`] set and, for a shared protocol,
    /// [`Stats::shares`] in flight.
    pub fn stats(&self, endpoint: &Endpoint) -> Stats {
        match self.ctx.endpoints.get(endpoint) {
            Some(pool) => pool.stats(),
            None => {
                let mut stats = Stats::default();
                stats.protocol = Some(self.books.protocol.name());
                stats
            }
        }
    }

    /// Closes `endpoint`'s idle connections in this protocol pool now;
    /// those in use close when they come back (a shared one takes no new
    /// shares and closes once its last share is back).
    pub fn clear_endpoint(&self, endpoint: &Endpoint) {
        if let Some(pool) = self.ctx.endpoints.get(endpoint) {
            pool.clear();
        }
    }

    /// The protocol.
    pub fn protocol(&self) -> &P {
        &self.books.protocol
    }

    /// The pool this protocol pool is part of (closing it closes this).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

impl<P: Protocol> fmt::Debug for ProtocolPool<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtocolPool")
            .field("protocol", &self.books.protocol.name())
            .field("endpoints", &self.ctx.endpoints.read().len())
            .finish()
    }
}

/// A connection leased from a [`ProtocolPool`] (for a shared protocol, a
/// share of one). It derefs to the protocol's connection; dropping it
/// gives the connection back, unless the protocol says it can take no
/// more requests.
pub struct ProtocolLease<P: Protocol> {
    kind: Kind<P>,
}

enum Kind<P: Protocol> {
    /// The core's lease of the connection, which holds a `Live<P>`.
    Exclusive(PooledConnection, PhantomData<fn() -> P>),
    Shared(shared::Share<P>),
}

impl<P: Protocol> ProtocolLease<P> {
    /// The endpoint the connection goes to.
    pub fn endpoint(&self) -> &Endpoint {
        match &self.kind {
            Kind::Exclusive(lease, _) => lease.endpoint(),
            Kind::Shared(share) => share.endpoint(),
        }
    }

    /// Whether the connection served a lease before this one (for a
    /// shared protocol: another share).
    pub fn is_reused(&self) -> bool {
        match &self.kind {
            Kind::Exclusive(lease, _) => lease.is_reused(),
            Kind::Shared(share) => share.is_reused(),
        }
    }

    /// A process-wide unique id of the connection, stable across leases
    /// (shares of one connection have the same).
    pub fn id(&self) -> u64 {
        match &self.kind {
            Kind::Exclusive(lease, _) => lease.id(),
            Kind::Shared(share) => share.id(),
        }
    }

    /// Closes the connection instead of returning it (for a shared
    /// protocol: it takes no new shares, and closes once the shares in
    /// flight are back).
    pub fn discard(mut self) {
        match &mut self.kind {
            Kind::Exclusive(lease, _) => lease.spend(CloseReason::Discarded),
            Kind::Shared(share) => share.discard(),
        }
    }
}

impl<P: Protocol> Deref for ProtocolLease<P> {
    type Target = P::Conn;

    fn deref(&self) -> &P::Conn {
        match &self.kind {
            Kind::Exclusive(lease, _) => &live::<P>(lease).conn,
            Kind::Shared(share) => share.conn(),
        }
    }
}

impl<P: Protocol> DerefMut for ProtocolLease<P> {
    fn deref_mut(&mut self) -> &mut P::Conn {
        match &mut self.kind {
            Kind::Exclusive(lease, _) => &mut live_mut::<P>(lease).conn,
            Kind::Shared(share) => share.conn_mut(),
        }
    }
}

impl<P: Protocol> Drop for ProtocolLease<P> {
    fn drop(&mut self) {
        if let Kind::Exclusive(lease, _) = &mut self.kind {
            give_back::<P>(lease);
        }
    }
}

/// Gives an exclusive protocol's connection back once the protocol says it
/// is ready again (see [`Protocol::poll_ready`]): at once if it says so
/// now, else from a task that waits for its word. The lease did no I/O of
/// its own, so a release decides, which asks the protocol once more.
fn give_back<P: Protocol>(lease: &mut PooledConnection) {
    if !std::thread::panicking() && lease.holds_conn() {
        let Live { conn, books, .. } = live_mut::<P>(lease);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // Most returns find the connection ready: the runtime and a second
        // reference to the protocol are only fetched for one that is not.
        let pending = books.protocol.poll_ready(conn, &mut cx).is_pending();
        if let (true, Ok(runtime)) = (pending, tokio::runtime::Handle::try_current()) {
            let books = books.clone();
            let mut lease = lease.detach();
            runtime.spawn(async move {
                let ready = std::future::poll_fn(|cx| {
                    books
                        .protocol
                        .poll_ready(&mut live_mut::<P>(&mut lease).conn, cx)
                })
                .await;
                if !ready {
                    lease.spend(CloseReason::NotReady);
                }
                lease.release();
            });
            return;
        }
    }
    lease.end_released();
}

impl<P: Protocol> fmt::Debug for ProtocolLease<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProtocolLease")
            .field("endpoint", self.endpoint())
            .field("id", &self.id())
            .field("reused", &self.is_reused())
            .finish()
    }
}

/// Instants for the shared module's deadlines.
fn deadline(config: &Config) -> Option<Instant> {
    config
        .acquire_timeout()
        .map(|timeout| crate::deadline::later(Instant::now(), timeout))
}
