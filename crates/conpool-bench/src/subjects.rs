//! The pools under test, behind one small trait.
//!
//! Each adapter implements [`Checkout`] in its own pool's API (take a
//! connection, name its stream, give it back); the measured shapes
//! ([`Subject`]: a bare cycle, a cycle held across a yield, a round trip)
//! are written once over it. Checked with callgrind: against adapters that
//! each spelled the shapes out, the instruction counts per cycle moved by at
//! most 0.5 % for conpool, bb8, deadpool and pingora-pool (3 % for mobc, ten
//! times slower than the rest).
//!
//! Each [`Subject`] pools the same object ([`PeerStream`]: a loopback TCP
//! socket, optionally under TLS) to the same echo server, and is warmed so
//! that exactly `size` connections sit idle before a measurement starts.
//!
//! Peer settings, chosen so that no peer does work conpool does not:
//! - bb8: `test_on_check_out(false)` (its `is_valid` would be a no-op
//!   anyway), `has_broken` returns `false`.
//! - deadpool (managed): `recycle` returns `Ok(())` at once.
//! - mobc: `test_on_check_out(false)` as the issue asks, and
//!   `max_idle = max_open` (its default of 2 idle would close the rest).
//! - pingora-pool has no limit and no waiting: a miss means "dial". To share
//!   the same number of connections as the others, a miss here yields
//!   (`tokio::task::yield_now`) and retries instead of dialing.
//! - pingora-pool + watcher: what pingora-core's connector does on release
//!   (`Arc<Mutex<stream>>`, `try_lock_owned`, `put`, a spawned `idle_poll`
//!   task with its default `idle_timeout` of `None`) and on reuse (`get`,
//!   `lock().await` until the watcher lets go, `Arc::try_unwrap`; if the
//!   watcher's guard has not dropped its `Arc` yet we yield and retry rather
//!   than lose the connection). pingora-core's extra non-blocking read on
//!   reuse is left out, which only flatters pingora.
//!
//! conpool runs with its defaults (idle time, lifetime, use count, liveness
//! check, acquire timeout), only `max_connections_per_endpoint` set to the
//! number of connections and the TLS config trusting the test certificate.
//! Two more conpool subjects, outside [`Kind::ALL`], change only the
//! liveness check ([`Kind::LIVENESS`]): off, and readiness alone for
//! connections back less than 1 ms ago; they are what the report's liveness
//! section compares with the default.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::task::{Context, Poll};

use pingora_pool::{ConnectionMeta, ConnectionPool};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::net::{PAYLOAD, PeerStream, Target, round_trip};

/// A pool under test.
pub trait Subject: Send + Sync + 'static {
    /// Acquires an idle connection and releases it, with no I/O.
    fn cycle(&self) -> impl Future<Output = ()> + Send;
    /// Acquires a connection, yields to the scheduler once, releases it.
    fn held_cycle(&self) -> impl Future<Output = ()> + Send;
    /// Acquires a connection, runs one round trip on it, releases it.
    fn exchange<'a>(&'a self, request: &'a [u8; PAYLOAD]) -> impl Future<Output = ()> + Send + 'a;
}

/// What each pool's adapter says in its own API: how to take a connection,
/// what to talk over, and how to give it back. The three measured shapes
/// are written once, for all pools, in the [`Subject`] implementation
/// below; each is monomorphised per pool, so no pool pays for the sharing.
pub trait Checkout: Send + Sync + 'static {
    /// A connection on loan.
    type Lease<'a>: Send
    where
        Self: 'a;
    /// What a round trip talks over: the lease itself for conpool (whose
    /// lease watches its I/O), the pooled stream for the others.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + ?Sized;
    /// Why a take failed (it never should here).
    type Error: std::fmt::Debug;

    /// Takes an idle connection, waiting (the pool's way) while none is:
    /// the pool's own future where it has one, so that the shared code adds
    /// no layer of its own.
    fn take(&self) -> impl Future<Output = Result<Self::Lease<'_>, Self::Error>> + Send;

    /// The stream of `lease`.
    fn stream<'l>(lease: &'l mut Self::Lease<'_>) -> &'l mut Self::Stream;

    /// Gives `lease` back; dropping it, for the pools whose leases are
    /// guards.
    #[inline]
    fn give_back(&self, lease: Self::Lease<'_>) {
        drop(lease);
    }
}

impl<P: Checkout> Subject for P {
    async fn cycle(&self) {
        let lease = self.take().await.expect("take");
        self.give_back(lease);
    }

    async fn held_cycle(&self) {
        let lease = self.take().await.expect("take");
        tokio::task::yield_now().await;
        self.give_back(lease);
    }

    async fn exchange<'a>(&'a self, request: &'a [u8; PAYLOAD]) {
        let mut lease = self.take().await.expect("take");
        round_trip(P::stream(&mut lease), request)
            .await
            .expect("round trip");
        self.give_back(lease);
    }
}

/// Every pool compared, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// This crate, through `pool.get(&endpoint)` (a map lookup per call).
    Conpool,
    /// This crate, through an `EndpointHandle` (`pool.endpoint(&ep)` once,
    /// then `handle.get()`).
    ConpoolHandle,
    /// bb8 0.9.
    Bb8,
    /// deadpool 0.13 (managed).
    Deadpool,
    /// mobc 0.9.
    Mobc,
    /// pingora-pool, get + put only.
    PingoraBare,
    /// pingora-pool with pingora-core's idle watcher task per idle
    /// connection.
    PingoraWatch,
    /// This crate through `pool.get(&endpoint)`, with
    /// `liveness_check(false)`: nothing looks at a connection at checkout.
    ConpoolNoLiveness,
    /// This crate through `pool.get(&endpoint)`, with
    /// `liveness_peek_after(1 ms)`: a checkout asks only the runtime's
    /// readiness flag unless the connection sat idle (or leased) for 1 ms or
    /// goes straight to a queued caller, where the default asks the kernel
    /// at every checkout (a non-blocking `MSG_PEEK` for TCP, records fed to
    /// rustls for TLS).
    ConpoolReadiness,
}

impl Kind {
    /// All pools, conpool first, each with the settings it is compared
    /// with (conpool's defaults): the pools of the peer tables.
    pub const ALL: [Kind; 7] = [
        Kind::Conpool,
        Kind::ConpoolHandle,
        Kind::Bb8,
        Kind::Deadpool,
        Kind::Mobc,
        Kind::PingoraBare,
        Kind::PingoraWatch,
    ];

    /// The peers only.
    pub const PEERS: [Kind; 5] = [
        Kind::Bb8,
        Kind::Deadpool,
        Kind::Mobc,
        Kind::PingoraBare,
        Kind::PingoraWatch,
    ];

    /// conpool's liveness check off, with a 1 ms window of readiness alone,
    /// and at its default (the kernel at every checkout): the subjects of
    /// the liveness section, cheapest first.
    pub const LIVENESS: [Kind; 3] = [
        Kind::ConpoolNoLiveness,
        Kind::ConpoolReadiness,
        Kind::Conpool,
    ];

    /// Whether this is conpool (any way of calling or setting it), not a
    /// peer.
    pub fn is_conpool(self) -> bool {
        matches!(
            self,
            Kind::Conpool | Kind::ConpoolHandle | Kind::ConpoolNoLiveness | Kind::ConpoolReadiness
        )
    }

    /// The kind whose [`name`](Self::name) is `name`, among [`Kind::ALL`]
    /// and [`Kind::LIVENESS`].
    pub fn named(name: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .chain(Kind::LIVENESS)
            .find(|k| k.name() == name)
    }

    /// `builder` with this kind's liveness settings (conpool's defaults
    /// unless the kind says otherwise).
    pub fn liveness_settings(self, builder: conpool::ConfigBuilder) -> conpool::ConfigBuilder {
        match self {
            Kind::ConpoolNoLiveness => builder.liveness_check(false),
            Kind::ConpoolReadiness => {
                builder.liveness_peek_after(std::time::Duration::from_millis(1))
            }
            _ => builder,
        }
    }

    /// A short name for tables, charts and benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Conpool => "conpool",
            Kind::ConpoolHandle => "conpool (handle)",
            Kind::Bb8 => "bb8",
            Kind::Deadpool => "deadpool",
            Kind::Mobc => "mobc",
            Kind::PingoraBare => "pingora-pool",
            Kind::PingoraWatch => "pingora-pool+watcher",
            Kind::ConpoolNoLiveness => "conpool (no liveness check)",
            Kind::ConpoolReadiness => "conpool (readiness below 1 ms)",
        }
    }
}

/// Builds the subject of `kind` for `target` with `size` idle connections,
/// binds it (in an `Arc`) to `$s`, and evaluates `$body` with it. The body
/// is compiled once per concrete pool type, so the hot loops are
/// monomorphised for each pool.
#[macro_export]
macro_rules! with_subject {
    ($kind:expr, $target:expr, $size:expr, |$s:ident| $body:expr) => {{
        use $crate::subjects::*;
        match $kind {
            // One body for the three settings: they differ in data only.
            kind @ (Kind::Conpool | Kind::ConpoolNoLiveness | Kind::ConpoolReadiness) => {
                let $s = ::std::sync::Arc::new(
                    ConpoolSubject::configured($target, $size, |c| kind.liveness_settings(c)).await,
                );
                $body
            }
            Kind::ConpoolHandle => {
                let $s = ::std::sync::Arc::new(ConpoolSubject::with_handle($target, $size).await);
                $body
            }
            Kind::Bb8 => {
                let $s = ::std::sync::Arc::new(Bb8Subject::new($target, $size).await);
                $body
            }
            Kind::Deadpool => {
                let $s = ::std::sync::Arc::new(DeadpoolSubject::new($target, $size).await);
                $body
            }
            Kind::Mobc => {
                let $s = ::std::sync::Arc::new(MobcSubject::new($target, $size).await);
                $body
            }
            Kind::PingoraBare => {
                let $s = ::std::sync::Arc::new(PingoraBare::new($target, $size).await);
                $body
            }
            Kind::PingoraWatch => {
                let $s = ::std::sync::Arc::new(PingoraWatch::new($target, $size).await);
                $body
            }
        }
    }};
}

// ---------------------------------------------------------------- conpool

/// conpool with its default checks (or another liveness setting, see
/// [`ConpoolSubject::configured`]), called through `pool.get(&endpoint)`
/// or, with a handle, through `handle.get()`.
pub struct ConpoolSubject {
    /// The pool.
    pub pool: conpool::Pool,
    /// The one endpoint.
    pub endpoint: conpool::Endpoint,
    /// A handle on the endpoint, for the handle's subject.
    pub handle: Option<conpool::EndpointHandle>,
}

impl ConpoolSubject {
    /// A pool of `size` connections to `target`, all idle.
    pub async fn new(target: &Target, size: usize) -> Self {
        ConpoolSubject::configured(target, size, |c| c).await
    }

    /// The same, with `configure` applied to the config first (the limit
    /// and the TLS roots are set after it).
    pub async fn configured(
        target: &Target,
        size: usize,
        configure: impl FnOnce(conpool::ConfigBuilder) -> conpool::ConfigBuilder,
    ) -> Self {
        let mut config = configure(conpool::Config::builder()).max_connections_per_endpoint(size);
        if let Some(tls) = &target.tls {
            config = config.tls_config(tls.config.clone());
        }
        let pool = conpool::Pool::new(config.build().expect("a valid config"));
        let endpoint = target.endpoint();
        let mut held = Vec::with_capacity(size);
        for _ in 0..size {
            held.push(
                pool.get(&endpoint)
                    .await
                    .expect("conpool dials the echo server"),
            );
        }
        drop(held);
        ConpoolSubject {
            pool,
            endpoint,
            handle: None,
        }
    }

    /// The same, leasing through an endpoint handle.
    pub async fn with_handle(target: &Target, size: usize) -> Self {
        let mut subject = ConpoolSubject::new(target, size).await;
        subject.handle = Some(
            subject
                .pool
                .endpoint(&subject.endpoint)
                .expect("an open pool"),
        );
        subject
    }
}

impl Checkout for ConpoolSubject {
    type Lease<'a> = conpool::PooledConnection;
    type Stream = conpool::PooledConnection;
    type Error = conpool::Error;

    async fn take(&self) -> Result<conpool::PooledConnection, conpool::Error> {
        match &self.handle {
            Some(handle) => handle.get().await,
            None => self.pool.get(&self.endpoint).await,
        }
    }

    fn stream(lease: &mut conpool::PooledConnection) -> &mut conpool::PooledConnection {
        lease
    }
}

// ---------------------------------------------------------------- bb8

/// bb8's manager for [`PeerStream`].
pub struct Bb8Manager(pub Target);

impl bb8::ManageConnection for Bb8Manager {
    type Connection = PeerStream;
    type Error = io::Error;

    fn connect(&self) -> impl Future<Output = io::Result<PeerStream>> + Send {
        self.0.connect()
    }

    fn is_valid(&self, _: &mut PeerStream) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }

    fn has_broken(&self, _: &mut PeerStream) -> bool {
        false
    }
}

/// bb8 0.9.
pub struct Bb8Subject {
    /// The pool.
    pub pool: bb8::Pool<Bb8Manager>,
}

impl Bb8Subject {
    /// A pool of `size` connections to `target`, all idle.
    pub async fn new(target: &Target, size: usize) -> Self {
        let pool = bb8::Pool::builder()
            .max_size(size as u32)
            .test_on_check_out(false)
            .build(Bb8Manager(target.clone()))
            .await
            .expect("bb8 pool");
        let mut held = Vec::with_capacity(size);
        for _ in 0..size {
            held.push(pool.get_owned().await.expect("bb8 dials the echo server"));
        }
        drop(held);
        Bb8Subject { pool }
    }
}

impl Checkout for Bb8Subject {
    type Lease<'a> = bb8::PooledConnection<'a, Bb8Manager>;
    type Stream = PeerStream;
    type Error = bb8::RunError<io::Error>;

    fn take(
        &self,
    ) -> impl Future<Output = Result<bb8::PooledConnection<'_, Bb8Manager>, Self::Error>> + Send
    {
        self.pool.get()
    }

    fn stream<'l>(lease: &'l mut Self::Lease<'_>) -> &'l mut PeerStream {
        lease
    }
}

// ---------------------------------------------------------------- deadpool

/// deadpool's manager for [`PeerStream`].
pub struct DeadpoolManager(pub Target);

impl deadpool::managed::Manager for DeadpoolManager {
    type Type = PeerStream;
    type Error = io::Error;

    fn create(&self) -> impl Future<Output = io::Result<PeerStream>> + Send {
        self.0.connect()
    }

    fn recycle(
        &self,
        _: &mut PeerStream,
        _: &deadpool::managed::Metrics,
    ) -> impl Future<Output = deadpool::managed::RecycleResult<io::Error>> + Send {
        std::future::ready(Ok(()))
    }
}

/// deadpool 0.13, managed.
pub struct DeadpoolSubject {
    /// The pool.
    pub pool: deadpool::managed::Pool<DeadpoolManager>,
}

impl DeadpoolSubject {
    /// A pool of `size` connections to `target`, all idle.
    pub async fn new(target: &Target, size: usize) -> Self {
        let pool = deadpool::managed::Pool::builder(DeadpoolManager(target.clone()))
            .max_size(size)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("deadpool pool");
        let mut held = Vec::with_capacity(size);
        for _ in 0..size {
            held.push(pool.get().await.expect("deadpool dials the echo server"));
        }
        drop(held);
        DeadpoolSubject { pool }
    }
}

impl Checkout for DeadpoolSubject {
    type Lease<'a> = deadpool::managed::Object<DeadpoolManager>;
    type Stream = PeerStream;
    type Error = deadpool::managed::PoolError<io::Error>;

    fn take(
        &self,
    ) -> impl Future<Output = Result<deadpool::managed::Object<DeadpoolManager>, Self::Error>> + Send
    {
        self.pool.get()
    }

    fn stream<'l>(lease: &'l mut Self::Lease<'_>) -> &'l mut PeerStream {
        lease
    }
}

// ---------------------------------------------------------------- mobc

/// mobc's manager for [`PeerStream`].
pub struct MobcManager(pub Target);

#[mobc::async_trait]
impl mobc::Manager for MobcManager {
    type Connection = PeerStream;
    type Error = io::Error;

    async fn connect(&self) -> io::Result<PeerStream> {
        self.0.connect().await
    }

    async fn check(&self, conn: PeerStream) -> io::Result<PeerStream> {
        Ok(conn)
    }
}

/// mobc 0.9.
pub struct MobcSubject {
    /// The pool.
    pub pool: mobc::Pool<MobcManager>,
}

impl MobcSubject {
    /// A pool of `size` connections to `target`, all idle.
    pub async fn new(target: &Target, size: usize) -> Self {
        let pool = mobc::Pool::builder()
            .max_open(size as u64)
            .max_idle(size as u64)
            .test_on_check_out(false)
            .build(MobcManager(target.clone()));
        let mut held = Vec::with_capacity(size);
        for _ in 0..size {
            held.push(
                pool.get()
                    .await
                    .map_err(|_| ())
                    .expect("mobc dials the echo server"),
            );
        }
        drop(held);
        MobcSubject { pool }
    }
}

impl Checkout for MobcSubject {
    type Lease<'a> = mobc::Connection<MobcManager>;
    type Stream = PeerStream;
    type Error = mobc::Error<io::Error>;

    fn take(
        &self,
    ) -> impl Future<Output = Result<mobc::Connection<MobcManager>, Self::Error>> + Send {
        self.pool.get()
    }

    fn stream<'l>(lease: &'l mut Self::Lease<'_>) -> &'l mut PeerStream {
        lease
    }
}

// ---------------------------------------------------------------- pingora

static NEXT_ID: AtomicI32 = AtomicI32::new(1);

/// A pooled stream with the id pingora-pool keys its LRU on (pingora uses
/// the file descriptor).
pub struct PingoraConn<S> {
    /// Unique per connection.
    pub id: i32,
    /// The stream.
    pub stream: S,
}

impl<S> PingoraConn<S> {
    /// Gives `stream` a fresh id.
    pub fn new(stream: S) -> Self {
        PingoraConn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            stream,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PingoraConn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

/// The group key every pingora subject uses for its one endpoint.
pub const PINGORA_KEY: u64 = 0x5eed;

/// pingora-pool, get + put only.
pub struct PingoraBare {
    /// The pool.
    pub pool: ConnectionPool<PingoraConn<PeerStream>>,
}

impl PingoraBare {
    /// A pool of `size` connections to `target`, all idle.
    pub async fn new(target: &Target, size: usize) -> Self {
        let pool = ConnectionPool::new(size.max(1));
        for _ in 0..size {
            let conn = PingoraConn::new(target.connect().await.expect("dial the echo server"));
            let _ = pool.put(&ConnectionMeta::new(PINGORA_KEY, conn.id), conn);
        }
        PingoraBare { pool }
    }

    /// A miss yields and retries (see the module docs); it never fails.
    async fn acquire(&self) -> Result<PingoraConn<PeerStream>, std::convert::Infallible> {
        loop {
            if let Some(conn) = self.pool.get(&PINGORA_KEY) {
                return Ok(conn);
            }
            tokio::task::yield_now().await;
        }
    }

    fn release(&self, conn: PingoraConn<PeerStream>) {
        let meta = ConnectionMeta::new(PINGORA_KEY, conn.id);
        let _ = self.pool.put(&meta, conn);
    }
}

impl Checkout for PingoraBare {
    type Lease<'a> = PingoraConn<PeerStream>;
    type Stream = PeerStream;
    type Error = std::convert::Infallible;

    fn take(&self) -> impl Future<Output = Result<PingoraConn<PeerStream>, Self::Error>> + Send {
        self.acquire()
    }

    fn stream(lease: &mut PingoraConn<PeerStream>) -> &mut PeerStream {
        &mut lease.stream
    }

    fn give_back(&self, lease: PingoraConn<PeerStream>) {
        self.release(lease);
    }
}

type Watched = Arc<tokio::sync::Mutex<PingoraConn<PeerStream>>>;

/// pingora-pool as pingora-core's connector uses it: a watcher task per
/// idle connection.
pub struct PingoraWatch {
    /// The pool.
    pub pool: Arc<ConnectionPool<Watched>>,
}

impl PingoraWatch {
    /// A pool of `size` connections to `target`, all idle and watched.
    pub async fn new(target: &Target, size: usize) -> Self {
        let subject = PingoraWatch {
            pool: Arc::new(ConnectionPool::new(size.max(1))),
        };
        for _ in 0..size {
            let conn = PingoraConn::new(target.connect().await.expect("dial the echo server"));
            subject.release(conn);
        }
        subject
    }

    /// A miss yields and retries (see the module docs); it never fails.
    async fn acquire(&self) -> Result<PingoraConn<PeerStream>, std::convert::Infallible> {
        loop {
            let Some(mut shared) = self.pool.get(&PINGORA_KEY) else {
                tokio::task::yield_now().await;
                continue;
            };
            {
                // Wait for the idle watcher to let go.
                let _ = shared.lock().await;
            }
            loop {
                match Arc::try_unwrap(shared) {
                    Ok(mutex) => return Ok(mutex.into_inner()),
                    Err(back) => {
                        shared = back;
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
    }

    fn release(&self, conn: PingoraConn<PeerStream>) {
        let meta = ConnectionMeta::new(PINGORA_KEY, conn.id);
        let stream = Arc::new(tokio::sync::Mutex::new(conn));
        let locked = stream
            .clone()
            .try_lock_owned()
            .expect("nobody else has it yet");
        let (notify_close, watch_use) = self.pool.put(&meta, stream);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            pool.idle_poll(locked, &meta, None, notify_close, watch_use)
                .await;
        });
    }
}

impl Checkout for PingoraWatch {
    type Lease<'a> = PingoraConn<PeerStream>;
    type Stream = PeerStream;
    type Error = std::convert::Infallible;

    fn take(&self) -> impl Future<Output = Result<PingoraConn<PeerStream>, Self::Error>> + Send {
        self.acquire()
    }

    fn stream(lease: &mut PingoraConn<PeerStream>) -> &mut PeerStream {
        &mut lease.stream
    }

    fn give_back(&self, lease: PingoraConn<PeerStream>) {
        self.release(lease);
    }
}
