//! Configuration: every limit, timeout and hook of a pool, validated once.
//!
//! [`Config::default()`] carries defaults that protect a user who sets
//! nothing: every wait is bounded and TLS verification is on. A
//! [`ConfigBuilder`] has one setter per field, named after the field, and
//! [`ConfigBuilder::build`] refuses a value that breaks a rule with
//! [`Error::InvalidConfig`] naming the field, the value and the rule. Values
//! are never clamped silently. Any duration may be as long as
//! `Duration::MAX`, which means "never".

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::dial::resolve::Resolve;
use crate::dial::{OnConnect, OnConnectError};
use crate::{CloseReason, Endpoint, Error, Stream};

mod tls;

pub use tls::{DEFAULT_TLS_SESSION_CACHE_SIZE, MAX_TLS_SESSION_CACHE_SIZE, TlsRoots};

/// A boxed, `Send` future, as returned by health checks and dialers.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An async check of an idle connection before it is handed out again.
///
/// Implemented for every `Fn(&mut Stream) -> BoxFuture<'_, bool>`; see
/// [`ConfigBuilder::health_check`].
pub trait HealthCheck: Send + Sync + 'static {
    /// Returns `true` when the connection may be reused.
    fn check<'a>(&'a self, stream: &'a mut Stream) -> BoxFuture<'a, bool>;
}

impl<F> HealthCheck for F
where
    F: for<'a> Fn(&'a mut Stream) -> BoxFuture<'a, bool> + Send + Sync + 'static,
{
    fn check<'a>(&'a self, stream: &'a mut Stream) -> BoxFuture<'a, bool> {
        self(stream)
    }
}

type EndpointHook = Arc<dyn Fn(&Endpoint) + Send + Sync>;
type CloseHook = Arc<dyn Fn(&Endpoint, CloseReason) + Send + Sync>;

/// When an endpoint keeps connections coming back in per-thread slots.
///
/// An endpoint's bookkeeping sits behind one lock. When tasks on several
/// cores take and return its connections at a high rate, that lock becomes
/// the cost: its cache line moves between cores on every call, and threads
/// start to park on it. An endpoint with per-thread slots parks a returned
/// connection in the returning thread's own slot, and the next get on that
/// thread takes it from there, without touching the shared lock. Parked
/// connections count as idle in [`Stats`](crate::Stats) and obey every rule
/// an idle one does (idle time, lifetime, the liveness check); they go to
/// callers on other threads before those dial or queue, and to waiting
/// callers first come, first served, as always.
///
/// Slots are never used while `max_connections_total`, `max_idle_total` or
/// `leak_threshold` is set: those keep their exact, pool-wide bookkeeping.
/// They cost a cache line per slot, and an endpoint has about two slots per
/// core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[non_exhaustive]
pub enum ThreadSlots {
    /// Never: every get and return takes the endpoint's lock.
    Off,
    /// From the first time a get or a return finds the endpoint's lock
    /// taken by another thread (the default): endpoints used from one
    /// thread at a time never pay for slots.
    #[default]
    WhenContended,
    /// From the endpoint's first use (mostly for tests).
    Always,
}

/// A pool's configuration. Build one with [`Config::builder`].
///
/// | field | default |
/// | --- | --- |
/// | `max_connections_per_endpoint` | 10 |
/// | `max_idle_time` | 60 s |
/// | `max_connection_lifetime` | 300 s |
/// | `max_connection_uses` | unlimited |
/// | `connect_timeout` | 10 s |
/// | `connect_retry_count` | 3 attempts |
/// | `connect_retry_delay` | 100 ms, doubled after each failed attempt |
/// | `acquire_timeout` | 30 s |
/// | `max_waiters_per_endpoint` | unbounded |
/// | `max_concurrent_dials` | 8 per endpoint |
/// | `max_connections_total` | unbounded |
/// | `max_idle_total` | unbounded |
/// | `min_idle_per_endpoint` | 0 |
/// | `liveness_check` | on |
/// | `liveness_peek_after` | 0 (the kernel at every checkout) |
/// | `max_connection_lifetime_jitter` | 0.025 (up to 2.5 % shorter) |
/// | `maintenance_interval` | 1 s |
/// | `leak_threshold` | off |
/// | `thread_slots` | [`ThreadSlots::WhenContended`] |
/// | `breaker_failures` | 5 failed dials in a row (0: off) |
/// | `health_check` | none |
/// | `on_connect` | none |
/// | hooks | none |
/// | `tls_config` | built from the `tls_` settings below: the webpki root certificates, ring provider |
/// | `tls_server_name` | none: each TLS endpoint's host |
/// | `resolver` | the system resolver ([`dial::resolve`](crate::dial::resolve)) |
/// | `dns_cache_ttl` | 30 s |
/// | `happy_eyeballs_delay` | 250 ms |
/// | `tcp_keepalive` | off |
/// | `tcp_keepalive_interval` | the OS's (75 s on Linux) |
/// | `tcp_keepalive_retries` | the OS's (9 on Linux) |
/// | `recv_buffer_size` / `send_buffer_size` | the OS's |
/// | `local_address` | none: the OS picks |
/// | `tcp_user_timeout` | the OS's (off) |
/// | `tcp_nodelay` | on: Nagle's algorithm off |
/// | `tls_roots` | [`TlsRoots::Webpki`] |
/// | `tls_ca_file` | none |
/// | `tls_client_cert`, `tls_client_key` | none |
/// | `tls_alpn_protocols` | none |
/// | `tls_session_cache_size` | 256 sessions |
/// | `tls_insecure_skip_verify` | false |
///
/// ```
/// use std::time::Duration;
/// use conpool::Config;
///
/// let config = Config::builder()
///     .max_connections_per_endpoint(32)
///     .max_idle_time(Duration::from_secs(30))
///     .connect_timeout(Duration::from_secs(2))
///     .max_connection_uses(1000)
///     .build()?;
/// assert_eq!(config.max_connections_per_endpoint(), 32);
///
/// let err = Config::builder().max_connections_per_endpoint(0).build().unwrap_err();
/// assert_eq!(err.to_string(), "invalid config: max_connections_per_endpoint is 0; it must be at least 1");
/// # Ok::<(), conpool::Error>(())
/// ```
#[derive(Clone)]
pub struct Config {
    max_connections_per_endpoint: usize,
    max_idle_time: Duration,
    max_connection_lifetime: Duration,
    max_connection_uses: Option<u64>,
    connect_timeout: Option<Duration>,
    connect_retry_count: u32,
    connect_retry_delay: Duration,
    acquire_timeout: Option<Duration>,
    max_waiters_per_endpoint: Option<usize>,
    max_concurrent_dials: usize,
    max_connections_total: Option<usize>,
    max_idle_total: Option<usize>,
    min_idle_per_endpoint: usize,
    liveness_check: bool,
    liveness_peek_after: Duration,
    max_connection_lifetime_jitter: f64,
    maintenance_interval: Option<Duration>,
    leak_threshold: Option<Duration>,
    thread_slots: ThreadSlots,
    breaker_failures: u32,
    health_check: Option<Arc<dyn HealthCheck>>,
    on_connect: Option<Arc<dyn OnConnect>>,
    on_connection_created: Option<EndpointHook>,
    on_connection_reused: Option<EndpointHook>,
    on_connection_closed: Option<CloseHook>,
    /// The rustls config dials use: `custom_tls_config`, or the one built
    /// from the `tls_` settings at `build()`.
    tls_config: Arc<rustls::ClientConfig>,
    /// What [`ConfigBuilder::tls_config`] was given, kept apart so that a
    /// rebuild (`to_builder().build()`) knows the user's own config from
    /// one built from the settings.
    custom_tls_config: Option<Arc<rustls::ClientConfig>>,
    tls_server_name: Option<ServerName<'static>>,
    resolver: Option<Arc<dyn Resolve>>,
    dns_cache_ttl: Duration,
    happy_eyeballs_delay: Option<Duration>,
    tcp_keepalive: Option<Duration>,
    tcp_keepalive_interval: Option<Duration>,
    tcp_keepalive_retries: Option<u32>,
    recv_buffer_size: Option<usize>,
    send_buffer_size: Option<usize>,
    local_address: Option<IpAddr>,
    tcp_user_timeout: Option<Duration>,
    tcp_nodelay: bool,
    tls_roots: TlsRoots,
    tls_ca_file: Option<PathBuf>,
    tls_client_cert: Option<PathBuf>,
    tls_client_key: Option<PathBuf>,
    tls_alpn_protocols: Vec<String>,
    tls_session_cache_size: usize,
    tls_insecure_skip_verify: bool,
}

/// The most connect attempts a config may ask for: past this, the doubling
/// backoff would wait for years.
pub const MAX_CONNECT_RETRY_COUNT: u32 = 32;

/// The shortest `happy_eyeballs_delay` above 0 a config may have: RFC 8305
/// § 5 forbids a Connection Attempt Delay below 10 ms, which would start
/// every address's connect almost at once and flood the network.
pub const MIN_HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(10);

impl Default for Config {
    fn default() -> Self {
        Config {
            max_connections_per_endpoint: 10,
            max_idle_time: Duration::from_secs(60),
            max_connection_lifetime: Duration::from_secs(300),
            max_connection_uses: None,
            connect_timeout: Some(Duration::from_secs(10)),
            connect_retry_count: 3,
            connect_retry_delay: Duration::from_millis(100),
            acquire_timeout: Some(Duration::from_secs(30)),
            max_waiters_per_endpoint: None,
            max_concurrent_dials: 8,
            max_connections_total: None,
            max_idle_total: None,
            min_idle_per_endpoint: 0,
            liveness_check: true,
            liveness_peek_after: Duration::ZERO,
            max_connection_lifetime_jitter: 0.025,
            maintenance_interval: Some(Duration::from_secs(1)),
            leak_threshold: None,
            thread_slots: ThreadSlots::WhenContended,
            breaker_failures: 5,
            health_check: None,
            on_connect: None,
            on_connection_created: None,
            on_connection_reused: None,
            on_connection_closed: None,
            tls_config: default_tls_config(),
            custom_tls_config: None,
            tls_server_name: None,
            resolver: None,
            dns_cache_ttl: Duration::from_secs(30),
            happy_eyeballs_delay: Some(Duration::from_millis(250)),
            tcp_keepalive: None,
            tcp_keepalive_interval: None,
            tcp_keepalive_retries: None,
            recv_buffer_size: None,
            send_buffer_size: None,
            local_address: None,
            tcp_user_timeout: None,
            tcp_nodelay: true,
            tls_roots: TlsRoots::Webpki,
            tls_ca_file: None,
            tls_client_cert: None,
            tls_client_key: None,
            tls_alpn_protocols: Vec::new(),
            tls_session_cache_size: DEFAULT_TLS_SESSION_CACHE_SIZE,
            tls_insecure_skip_verify: false,
        }
    }
}

/// A rustls client config that trusts the webpki roots, built once per
/// process since building the root store is not free.
pub fn default_tls_config() -> Arc<rustls::ClientConfig> {
    static DEFAULT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            Arc::new(
                tls_config_builder()
                    .with_root_certificates(webpki_root_store())
                    .with_no_client_auth(),
            )
        })
        .clone()
}

/// The root certificates TLS endpoints are verified against by default.
pub(crate) fn webpki_root_store() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// Where every TLS client config the crate makes starts: the ring provider
/// and rustls's safe default protocol versions.
pub(crate) fn tls_config_builder()
-> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
        }
    }

    /// A builder starting from this config.
    pub fn to_builder(&self) -> ConfigBuilder {
        ConfigBuilder {
            config: self.clone(),
        }
    }

    /// Most connections per endpoint: leased, idle and being dialed together.
    pub fn max_connections_per_endpoint(&self) -> usize {
        self.max_connections_per_endpoint
    }
    /// An idle connection unused for longer is closed instead of reused.
    pub fn max_idle_time(&self) -> Duration {
        self.max_idle_time
    }
    /// A connection older than this is closed instead of reused.
    pub fn max_connection_lifetime(&self) -> Duration {
        self.max_connection_lifetime
    }
    /// A connection handed out this many times is closed on its return.
    pub fn max_connection_uses(&self) -> Option<u64> {
        self.max_connection_uses
    }
    /// The bound on one connect attempt (resolve, TCP connect and TLS
    /// handshake); `None` waits as long as the OS does.
    ///
    /// Inside the attempt, the dialer [`Pool::new`](crate::Pool::new) makes
    /// races the host's addresses ([`happy_eyeballs_delay`](Self::happy_eyeballs_delay)),
    /// each racer ending by this deadline. With the addresses tried one at
    /// a time instead (a delay of 0 or `None`), each gets the time left
    /// divided by the addresses left, but at least 500 ms (or all that is
    /// left), and the TLS handshake gets what remains: with the default
    /// 10 s, a first address that drops SYNs then takes 5 s and the second
    /// has the other 5 s.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }
    /// How many connect attempts a dial makes before it fails.
    pub fn connect_retry_count(&self) -> u32 {
        self.connect_retry_count
    }
    /// The wait after the first failed attempt; doubled after each next one.
    pub fn connect_retry_delay(&self) -> Duration {
        self.connect_retry_delay
    }
    /// The bound on [`Pool::get`](crate::Pool::get) as a whole: waiting
    /// for a free slot plus dialing. `None` waits forever.
    pub fn acquire_timeout(&self) -> Option<Duration> {
        self.acquire_timeout
    }
    /// Callers allowed to wait per endpoint; past it `get` fails at once
    /// with [`Error::TooManyWaiters`].
    pub fn max_waiters_per_endpoint(&self) -> Option<usize> {
        self.max_waiters_per_endpoint
    }
    /// Dials in flight per endpoint at most; callers past it wait.
    pub fn max_concurrent_dials(&self) -> usize {
        self.max_concurrent_dials
    }
    /// Connections across all endpoints at most (leased, idle and dialing).
    /// At the limit, the least recently used idle connection of any
    /// endpoint is closed to make room, else the caller waits.
    pub fn max_connections_total(&self) -> Option<usize> {
        self.max_connections_total
    }
    /// Idle connections across all endpoints at most; past it the least
    /// recently used idle connection of any endpoint is closed.
    pub fn max_idle_total(&self) -> Option<usize> {
        self.max_idle_total
    }
    /// Idle connections the background task keeps warm per endpoint in use.
    pub fn min_idle_per_endpoint(&self) -> usize {
        self.min_idle_per_endpoint
    }
    /// Whether every checkout first looks (without blocking) for a peer
    /// close, a reset or stray bytes on the connection.
    pub fn liveness_check(&self) -> bool {
        self.liveness_check
    }
    /// From how long idle (or how long a lease) the liveness check asks the
    /// kernel, not only the runtime's readiness; see
    /// [`ConfigBuilder::liveness_peek_after`].
    pub fn liveness_peek_after(&self) -> Duration {
        self.liveness_peek_after
    }
    /// Each connection's lifetime is shortened by a random fraction up to
    /// this, so that connections made together do not expire together.
    pub fn max_connection_lifetime_jitter(&self) -> f64 {
        self.max_connection_lifetime_jitter
    }
    /// How often the background task evicts expired and dead idle
    /// connections and refills `min_idle_per_endpoint`; `None`: no task.
    pub fn maintenance_interval(&self) -> Option<Duration> {
        self.maintenance_interval
    }
    /// A lease held longer than this logs one warning naming where it was
    /// acquired.
    pub fn leak_threshold(&self) -> Option<Duration> {
        self.leak_threshold
    }
    /// When endpoints keep returned connections in per-thread slots.
    pub fn thread_slots(&self) -> ThreadSlots {
        self.thread_slots
    }
    /// Failed dials in a row after which an endpoint's circuit breaker
    /// opens; 0: no breaker.
    pub fn breaker_failures(&self) -> u32 {
        self.breaker_failures
    }
    /// The custom check run on an idle connection before reuse, if any.
    pub fn health_check(&self) -> Option<&Arc<dyn HealthCheck>> {
        self.health_check.as_ref()
    }
    /// The hook run on every new connection before it is handed out, if
    /// any.
    pub fn on_connect(&self) -> Option<&Arc<dyn OnConnect>> {
        self.on_connect.as_ref()
    }
    /// The TLS client configuration used for TLS endpoints: the one given
    /// to [`ConfigBuilder::tls_config`], or the one built from the `tls_`
    /// settings. Every connection of a pool shares it, and with it its
    /// session cache.
    pub fn tls_config(&self) -> &Arc<rustls::ClientConfig> {
        &self.tls_config
    }
    /// Which trust store verifies TLS servers, besides `tls_ca_file`.
    pub fn tls_roots(&self) -> TlsRoots {
        self.tls_roots
    }
    /// The PEM file of extra root certificates to trust, if any.
    pub fn tls_ca_file(&self) -> Option<&std::path::Path> {
        self.tls_ca_file.as_deref()
    }
    /// The PEM file of the client certificate chain presented to TLS
    /// servers that ask for one (mutual TLS), if any.
    pub fn tls_client_cert(&self) -> Option<&std::path::Path> {
        self.tls_client_cert.as_deref()
    }
    /// The PEM file of `tls_client_cert`'s private key, if any.
    pub fn tls_client_key(&self) -> Option<&std::path::Path> {
        self.tls_client_key.as_deref()
    }
    /// The ALPN protocols offered in every TLS handshake, most preferred
    /// first; empty: no ALPN.
    pub fn tls_alpn_protocols(&self) -> &[String] {
        &self.tls_alpn_protocols
    }
    /// How many TLS sessions the pool keeps to resume later handshakes;
    /// 0: no resumption.
    pub fn tls_session_cache_size(&self) -> usize {
        self.tls_session_cache_size
    }
    /// Whether TLS server certificates go unverified.
    pub fn tls_insecure_skip_verify(&self) -> bool {
        self.tls_insecure_skip_verify
    }
    /// The name every TLS endpoint's certificate is verified against (and
    /// sent as SNI), instead of the endpoint's host; `None`: the host.
    pub fn tls_server_name(&self) -> Option<&ServerName<'static>> {
        self.tls_server_name.as_ref()
    }
    /// The resolver set with [`ConfigBuilder::resolver`]; `None`: the
    /// default ([`default_resolver`](crate::dial::resolve::default_resolver)).
    pub fn resolver(&self) -> Option<&Arc<dyn Resolve>> {
        self.resolver.as_ref()
    }
    /// How long the default dialer waits on one address before it starts
    /// connecting to the next as well (RFC 8305's Connection Attempt
    /// Delay); `None` (or 0): one address at a time.
    pub fn happy_eyeballs_delay(&self) -> Option<Duration> {
        self.happy_eyeballs_delay.filter(|d| !d.is_zero())
    }
    /// Idle time before the first TCP keepalive probe; `None`: keepalive
    /// off (the default, as in tokio).
    pub fn tcp_keepalive(&self) -> Option<Duration> {
        self.tcp_keepalive
    }
    /// Time between keepalive probes; `None`: the OS's.
    pub fn tcp_keepalive_interval(&self) -> Option<Duration> {
        self.tcp_keepalive_interval
    }
    /// Unanswered keepalive probes before the connection is dropped;
    /// `None`: the OS's.
    pub fn tcp_keepalive_retries(&self) -> Option<u32> {
        self.tcp_keepalive_retries
    }
    /// `SO_RCVBUF` in bytes, set before connecting; `None`: the OS's.
    pub fn recv_buffer_size(&self) -> Option<usize> {
        self.recv_buffer_size
    }
    /// `SO_SNDBUF` in bytes, set before connecting; `None`: the OS's.
    pub fn send_buffer_size(&self) -> Option<usize> {
        self.send_buffer_size
    }
    /// The local address TCP connections are bound to before connecting
    /// (port chosen by the OS); `None`: the OS picks.
    pub fn local_address(&self) -> Option<IpAddr> {
        self.local_address
    }
    /// `TCP_USER_TIMEOUT` (Linux): how long sent data may stay
    /// unacknowledged before the connection is dropped; `None`: the OS's.
    pub fn tcp_user_timeout(&self) -> Option<Duration> {
        self.tcp_user_timeout
    }
    /// Whether TCP connections set `TCP_NODELAY` (Nagle's algorithm off);
    /// see [`ConfigBuilder::tcp_nodelay`].
    pub fn tcp_nodelay(&self) -> bool {
        self.tcp_nodelay
    }
    /// The longest the default dialer keeps a resolver's answer; see
    /// [`ConfigBuilder::dns_cache_ttl`].
    pub fn dns_cache_ttl(&self) -> Duration {
        self.dns_cache_ttl
    }

    #[inline]
    pub(crate) fn notify_created(&self, endpoint: &Endpoint) {
        if let Some(hook) = &self.on_connection_created {
            run_hook("on_connection_created", || hook(endpoint));
        }
    }

    #[inline]
    pub(crate) fn notify_reused(&self, endpoint: &Endpoint) {
        if let Some(hook) = &self.on_connection_reused {
            run_hook("on_connection_reused", || hook(endpoint));
        }
    }

    #[inline]
    pub(crate) fn notify_closed(&self, endpoint: &Endpoint, reason: CloseReason) {
        if let Some(hook) = &self.on_connection_closed {
            run_hook("on_connection_closed", || hook(endpoint, reason));
        }
    }
}

/// Hooks run inside the pool's bookkeeping, sometimes from a `Drop`; a
/// panicking hook must not unwind through it and corrupt the counts.
fn run_hook(name: &str, hook: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(hook)).is_err() {
        tracing::warn!(hook = name, "a conpool hook panicked; the panic was caught");
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured without `..`, so that a new field does not compile
        // until it is printed here: tests (the flags of `cli::PoolArgs`
        // among them) read the list of fields from this output.
        let Config {
            max_connections_per_endpoint,
            max_idle_time,
            max_connection_lifetime,
            max_connection_uses,
            connect_timeout,
            connect_retry_count,
            connect_retry_delay,
            acquire_timeout,
            max_waiters_per_endpoint,
            max_concurrent_dials,
            max_connections_total,
            max_idle_total,
            min_idle_per_endpoint,
            liveness_check,
            liveness_peek_after,
            max_connection_lifetime_jitter,
            maintenance_interval,
            leak_threshold,
            thread_slots,
            breaker_failures,
            health_check,
            on_connect,
            on_connection_created,
            on_connection_reused,
            on_connection_closed,
            // Built from the fields below, or the user's own: the rustls
            // config prints pages of provider internals.
            tls_config: _,
            custom_tls_config: _,
            tls_server_name,
            resolver,
            dns_cache_ttl,
            happy_eyeballs_delay,
            tcp_keepalive,
            tcp_keepalive_interval,
            tcp_keepalive_retries,
            recv_buffer_size,
            send_buffer_size,
            local_address,
            tcp_user_timeout,
            tcp_nodelay,
            tls_roots,
            tls_ca_file,
            tls_client_cert,
            tls_client_key,
            tls_alpn_protocols,
            tls_session_cache_size,
            tls_insecure_skip_verify,
        } = self;
        f.debug_struct("Config")
            .field("max_connections_per_endpoint", max_connections_per_endpoint)
            .field("max_idle_time", max_idle_time)
            .field("max_connection_lifetime", max_connection_lifetime)
            .field("max_connection_uses", max_connection_uses)
            .field("connect_timeout", connect_timeout)
            .field("connect_retry_count", connect_retry_count)
            .field("connect_retry_delay", connect_retry_delay)
            .field("acquire_timeout", acquire_timeout)
            .field("max_waiters_per_endpoint", max_waiters_per_endpoint)
            .field("max_concurrent_dials", max_concurrent_dials)
            .field("max_connections_total", max_connections_total)
            .field("max_idle_total", max_idle_total)
            .field("min_idle_per_endpoint", min_idle_per_endpoint)
            .field("liveness_check", liveness_check)
            .field("liveness_peek_after", liveness_peek_after)
            .field(
                "max_connection_lifetime_jitter",
                max_connection_lifetime_jitter,
            )
            .field("maintenance_interval", maintenance_interval)
            .field("leak_threshold", leak_threshold)
            .field("thread_slots", thread_slots)
            .field("breaker_failures", breaker_failures)
            .field("health_check", &health_check.is_some())
            .field("on_connect", &on_connect.is_some())
            .field("on_connection_created", &on_connection_created.is_some())
            .field("on_connection_reused", &on_connection_reused.is_some())
            .field("on_connection_closed", &on_connection_closed.is_some())
            .field("tls_server_name", tls_server_name)
            .field("resolver", &resolver.is_some())
            .field("dns_cache_ttl", dns_cache_ttl)
            .field("happy_eyeballs_delay", happy_eyeballs_delay)
            .field("tcp_keepalive", tcp_keepalive)
            .field("tcp_keepalive_interval", tcp_keepalive_interval)
            .field("tcp_keepalive_retries", tcp_keepalive_retries)
            .field("recv_buffer_size", recv_buffer_size)
            .field("send_buffer_size", send_buffer_size)
            .field("local_address", local_address)
            .field("tcp_user_timeout", tcp_user_timeout)
            .field("tcp_nodelay", tcp_nodelay)
            // The rustls config prints pages of provider internals.
            .field("tls_roots", tls_roots)
            .field("tls_ca_file", tls_ca_file)
            .field("tls_client_cert", tls_client_cert)
            .field("tls_client_key", tls_client_key)
            .field("tls_alpn_protocols", tls_alpn_protocols)
            .field("tls_session_cache_size", tls_session_cache_size)
            .field("tls_insecure_skip_verify", tls_insecure_skip_verify)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Config`]; every setter is named after its field.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct ConfigBuilder {
    config: Config,
}

impl ConfigBuilder {
    /// Most connections per endpoint (leased + idle + dialing); at least 1.
    pub fn max_connections_per_endpoint(mut self, max: usize) -> Self {
        self.config.max_connections_per_endpoint = max;
        self
    }
    /// Longest time a connection may sit idle and still be reused; above 0.
    pub fn max_idle_time(mut self, max: Duration) -> Self {
        self.config.max_idle_time = max;
        self
    }
    /// Longest time a connection may live; above 0.
    pub fn max_connection_lifetime(mut self, max: Duration) -> Self {
        self.config.max_connection_lifetime = max;
        self
    }
    /// Most times a connection is handed out (`None`: unlimited); at least 1.
    pub fn max_connection_uses(mut self, max: impl Into<Option<u64>>) -> Self {
        self.config.max_connection_uses = max.into();
        self
    }
    /// Bound on one connect attempt, racers and all (see
    /// [`Config::connect_timeout`]; `None`: the OS's own); above 0.
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.connect_timeout = timeout.into();
        self
    }
    /// Connect attempts per dial, 1 to [`MAX_CONNECT_RETRY_COUNT`].
    pub fn connect_retry_count(mut self, attempts: u32) -> Self {
        self.config.connect_retry_count = attempts;
        self
    }
    /// Wait after the first failed attempt, doubled after each next one.
    pub fn connect_retry_delay(mut self, delay: Duration) -> Self {
        self.config.connect_retry_delay = delay;
        self
    }
    /// Bound on [`Pool::get`](crate::Pool::get) (`None`: unbounded); above 0.
    pub fn acquire_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.acquire_timeout = timeout.into();
        self
    }
    /// Callers allowed to wait per endpoint (`None`: unbounded); `Some(0)`
    /// fails at once whenever the endpoint is at its limit.
    pub fn max_waiters_per_endpoint(mut self, max: impl Into<Option<usize>>) -> Self {
        self.config.max_waiters_per_endpoint = max.into();
        self
    }
    /// Dials in flight per endpoint at most; at least 1.
    pub fn max_concurrent_dials(mut self, max: usize) -> Self {
        self.config.max_concurrent_dials = max;
        self
    }
    /// Connections across all endpoints (`None`: unbounded); at least 1.
    pub fn max_connections_total(mut self, max: impl Into<Option<usize>>) -> Self {
        self.config.max_connections_total = max.into();
        self
    }
    /// Idle connections across all endpoints (`None`: unbounded).
    pub fn max_idle_total(mut self, max: impl Into<Option<usize>>) -> Self {
        self.config.max_idle_total = max.into();
        self
    }
    /// Warm idle connections kept per endpoint in use; at most
    /// `max_connections_per_endpoint`, and needs a `maintenance_interval`.
    pub fn min_idle_per_endpoint(mut self, min: usize) -> Self {
        self.config.min_idle_per_endpoint = min;
        self
    }
    /// Look at every connection before it is handed out, from idle, from a
    /// per-thread slot or straight from a returning lease (on by default):
    /// one the peer closed, reset or wrote to unasked is closed and
    /// replaced before anyone sees it.
    pub fn liveness_check(mut self, on: bool) -> Self {
        self.config.liveness_check = on;
        self
    }
    /// When the liveness check asks the kernel (a non-blocking peek, one
    /// system call) rather than only the runtime's readiness flag (no
    /// system call while it is clear). By default, `Duration::ZERO`, it
    /// asks at every checkout: no connection whose close or stray bytes
    /// reached this host before the checkout is handed out. With a longer
    /// window, the kernel is asked only for a connection idle at least this
    /// long, back from a lease that lasted at least this long (it may have
    /// sat silent), or handed straight from a returning lease to a caller
    /// that queued; the others are judged by readiness alone.
    ///
    /// That is an opt-out of safety, for speed: the readiness flag is set
    /// only once the runtime's I/O driver has collected the socket's event,
    /// which a busy runtime does only every so many task polls, so a close
    /// that reached this host within the window before a checkout, on a
    /// runtime whose driver has not run since, can pass the readiness look;
    /// so can a socket whose runtime shut down within the window. The
    /// system call costs several times a whole checkout on some machines;
    /// BENCHMARKS.md has what each look costs.
    ///
    /// ```
    /// use std::time::Duration;
    /// // Trust the runtime's readiness for connections back less than a
    /// // millisecond ago: no system call on a hot connection's checkout.
    /// let config = conpool::Config::builder()
    ///     .liveness_peek_after(Duration::from_millis(1))
    ///     .build()?;
    /// assert_eq!(config.liveness_peek_after(), Duration::from_millis(1));
    /// # Ok::<(), conpool::Error>(())
    /// ```
    pub fn liveness_peek_after(mut self, after: Duration) -> Self {
        self.config.liveness_peek_after = after;
        self
    }
    /// Largest random fraction cut from each connection's lifetime, from
    /// 0.0 (none) to 0.5.
    pub fn max_connection_lifetime_jitter(mut self, fraction: f64) -> Self {
        self.config.max_connection_lifetime_jitter = fraction;
        self
    }
    /// Period of the background task (`None`: no background task); above 0.
    pub fn maintenance_interval(mut self, every: impl Into<Option<Duration>>) -> Self {
        self.config.maintenance_interval = every.into();
        self
    }
    /// Warn about leases held longer than this (`None`: off); above 0.
    pub fn leak_threshold(mut self, threshold: impl Into<Option<Duration>>) -> Self {
        self.config.leak_threshold = threshold.into();
        self
    }
    /// When an endpoint keeps returned connections in per-thread slots
    /// (see [`ThreadSlots`]).
    pub fn thread_slots(mut self, slots: ThreadSlots) -> Self {
        self.config.thread_slots = slots;
        self
    }
    /// After this many failed dials in a row (each after its retries) an
    /// endpoint's circuit breaker opens (default 5; 0 turns it off): a get
    /// that would dial fails at once with [`Error::CircuitOpen`], naming
    /// the endpoint, when a dial is let through again and the last dial
    /// error, and so do callers queued for a dial; idle connections are
    /// still handed out. After an open time (1 s, doubling on each trip up
    /// to 60 s, up to a fifth shorter at random) one get's dial probes the
    /// endpoint while the others still fail fast: its success closes the
    /// breaker, its failure opens it again. [`Stats`](crate::Stats) has the
    /// breaker's state and trips.
    ///
    /// ```
    /// let config = conpool::Config::builder().breaker_failures(3).build()?;
    /// assert_eq!(config.breaker_failures(), 3);
    /// # Ok::<(), conpool::Error>(())
    /// ```
    pub fn breaker_failures(mut self, failures: u32) -> Self {
        self.config.breaker_failures = failures;
        self
    }

    /// A check run on an idle connection before it is handed out again; a
    /// connection that fails it is closed and the next one (or a new dial)
    /// is used. Connections handed straight from one lease to a waiting
    /// caller were never idle and are not checked.
    ///
    /// ```
    /// use conpool::{Config, Stream};
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// let config = Config::builder()
    ///     .health_check(|stream: &mut Stream| {
    ///         Box::pin(async move {
    ///             let mut reply = [0u8; 7];
    ///             stream.write_all(b"PING\r\n").await.is_ok()
    ///                 && stream.read_exact(&mut reply).await.is_ok()
    ///                 && &reply == b"+PONG\r\n"
    ///         })
    ///     })
    ///     .build()?;
    /// # Ok::<(), conpool::Error>(())
    /// ```
    pub fn health_check<F>(mut self, check: F) -> Self
    where
        F: for<'a> Fn(&'a mut Stream) -> BoxFuture<'a, bool> + Send + Sync + 'static,
    {
        self.config.health_check = Some(Arc::new(check));
        self
    }

    /// An async hook run on every new connection, after the dial (and the
    /// TLS handshake) and before anyone sees it: send AUTH and SELECT,
    /// set a socket option, agree on a protocol version. It runs inside
    /// the attempt's `connect_timeout`, for the pool's own dialer and
    /// custom ones alike. An error closes the stream and fails the dial as
    /// [`Error::OnConnect`], with the hook's error as its `source()`,
    /// counted as a failed dial; it is not retried unless the hook says it
    /// is transient ([`OnConnectError::transient`]). A hook that needs the
    /// pool holds a [`WeakPool`](crate::WeakPool).
    ///
    /// ```
    /// use conpool::dial::OnConnectError;
    /// use conpool::{Config, Endpoint, Stream};
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// let config = Config::builder()
    ///     .on_connect(|stream: &mut Stream, _endpoint: &Endpoint| {
    ///         Box::pin(async move {
    ///             stream.write_all(b"AUTH s3cret\r\n").await?;
    ///             let mut reply = [0u8; 5];
    ///             stream.read_exact(&mut reply).await?;
    ///             if &reply != b"+OK\r\n" {
    ///                 return Err(OnConnectError::fatal("AUTH was refused"));
    ///             }
    ///             Ok(())
    ///         })
    ///     })
    ///     .build()?;
    /// # Ok::<(), conpool::Error>(())
    /// ```
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: for<'a> Fn(&'a mut Stream, &'a Endpoint) -> BoxFuture<'a, Result<(), OnConnectError>>
            + Send
            + Sync
            + 'static,
    {
        self.config.on_connect = Some(Arc::new(hook));
        self
    }

    /// Called with the endpoint after each new connection is established.
    /// A hook that needs the pool holds a [`WeakPool`](crate::WeakPool)
    /// (see [`on_connection_closed`](Self::on_connection_closed)).
    pub fn on_connection_created(
        mut self,
        hook: impl Fn(&Endpoint) + Send + Sync + 'static,
    ) -> Self {
        self.config.on_connection_created = Some(Arc::new(hook));
        self
    }
    /// Called with the endpoint each time an existing connection is handed
    /// out again. A hook that needs the pool holds a
    /// [`WeakPool`](crate::WeakPool) (see
    /// [`on_connection_closed`](Self::on_connection_closed)).
    pub fn on_connection_reused(
        mut self,
        hook: impl Fn(&Endpoint) + Send + Sync + 'static,
    ) -> Self {
        self.config.on_connection_reused = Some(Arc::new(hook));
        self
    }
    /// Called with the endpoint and the reason each time a connection is
    /// closed.
    ///
    /// The pool keeps its hooks, so a hook that holds a
    /// [`Pool`](crate::Pool) keeps the pool alive: it is then never
    /// dropped, and its idle connections stay open until
    /// [`Pool::close`](crate::Pool::close). A hook that needs the pool (to
    /// read its stats, say) holds a [`WeakPool`](crate::WeakPool) instead,
    /// which does not keep it alive:
    ///
    /// ```
    /// use std::sync::{Arc, OnceLock};
    /// use conpool::{Config, Pool, WeakPool};
    ///
    /// let this_pool: Arc<OnceLock<WeakPool>> = Arc::default();
    /// let config = Config::builder()
    ///     .on_connection_closed({
    ///         let this_pool = this_pool.clone();
    ///         move |endpoint, reason| {
    ///             // `None` while the last `Pool` is dropped (its idle
    ///             // connections close as it goes).
    ///             if let Some(pool) = this_pool.get().and_then(WeakPool::upgrade) {
    ///                 let idle = pool.stats(endpoint).idle;
    ///                 println!("{endpoint}: closed ({reason}), {idle} idle left");
    ///             }
    ///         }
    ///     })
    ///     .build()?;
    /// let pool = Pool::new(config);
    /// this_pool.set(pool.downgrade()).expect("set once");
    /// # Ok::<(), conpool::Error>(())
    /// ```
    pub fn on_connection_closed(
        mut self,
        hook: impl Fn(&Endpoint, CloseReason) + Send + Sync + 'static,
    ) -> Self {
        self.config.on_connection_closed = Some(Arc::new(hook));
        self
    }
    /// A hand-built rustls client configuration for TLS endpoints, for
    /// what the `tls_` setters do not cover (a custom verifier, a key in
    /// hardware). Certificate verification is whatever this config says.
    /// It replaces the `tls_` settings, so [`build`](Self::build) refuses a
    /// builder that sets both.
    pub fn tls_config(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.config.custom_tls_config = Some(tls);
        self
    }
    /// Which trust store verifies TLS servers ([`TlsRoots::Webpki`] by
    /// default); [`TlsRoots::Platform`] needs the cargo feature
    /// `platform-verifier`, [`TlsRoots::None`] a `tls_ca_file`.
    pub fn tls_roots(mut self, roots: TlsRoots) -> Self {
        self.config.tls_roots = roots;
        self
    }
    /// A PEM file of root certificates to trust as well as `tls_roots`
    /// (a private CA, a self-signed server), read at
    /// [`build`](Self::build); it must hold at least one certificate.
    ///
    /// ```no_run
    /// use conpool::{Config, TlsRoots};
    ///
    /// // The company CA beside the webpki roots ...
    /// let config = Config::builder().tls_ca_file("/etc/ssl/company-ca.pem").build()?;
    /// // ... or instead of them.
    /// let config = Config::builder()
    ///     .tls_ca_file("/etc/ssl/company-ca.pem")
    ///     .tls_roots(TlsRoots::None)
    ///     .build()?;
    /// # Ok::<(), conpool::Error>(())
    /// ```
    pub fn tls_ca_file(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.config.tls_ca_file = Some(pem_file.into());
        self
    }
    /// A PEM file of the client certificate chain (leaf first) to present
    /// to servers that ask for one (mutual TLS); needs
    /// [`tls_client_key`](Self::tls_client_key). Read at
    /// [`build`](Self::build), which checks that the key is the
    /// certificate's.
    ///
    /// ```no_run
    /// let config = conpool::Config::builder()
    ///     .tls_client_cert("/etc/app/client.pem")
    ///     .tls_client_key("/etc/app/client-key.pem")
    ///     .build()?;
    /// # Ok::<(), conpool::Error>(())
    /// ```
    pub fn tls_client_cert(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.config.tls_client_cert = Some(pem_file.into());
        self
    }
    /// A PEM file of the private key (PKCS#8, RSA or EC) of
    /// [`tls_client_cert`](Self::tls_client_cert).
    pub fn tls_client_key(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.config.tls_client_key = Some(pem_file.into());
        self
    }
    /// The ALPN protocols to offer, most preferred first, each 1 to 255
    /// bytes; the one the server picked is
    /// [`Stream::alpn_protocol`](crate::Stream::alpn_protocol) on the
    /// lease.
    ///
    /// ```
    /// let config = conpool::Config::builder()
    ///     .tls_alpn_protocols(["h2", "http/1.1"])
    ///     .build()?;
    /// assert_eq!(config.tls_config().alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    ///
    /// let err = conpool::Config::builder().tls_alpn_protocols(["h2", ""]).build().unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "invalid config: tls_alpn_protocols is [\"h2\", \"\"]; entry 2 is 0 bytes long, \
    ///      and each protocol must be 1 to 255 bytes"
    /// );
    /// # Ok::<(), conpool::Error>(())
    /// ```
    pub fn tls_alpn_protocols<I, P>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.config.tls_alpn_protocols = protocols.into_iter().map(Into::into).collect();
        self
    }
    /// How many TLS sessions (per pool, across its hosts) to keep for
    /// resumption, so that a new connection to a host the pool has spoken
    /// to skips the full handshake (one round trip and the certificate
    /// check fewer); 0 turns resumption off, at most
    /// [`MAX_TLS_SESSION_CACHE_SIZE`]. Default 256, as rustls's.
    pub fn tls_session_cache_size(mut self, sessions: usize) -> Self {
        self.config.tls_session_cache_size = sessions;
        self
    }
    /// Accept any server certificate without verifying it: anyone on the
    /// path can then pose as any TLS endpoint. For tests and first aid
    /// only; every certificate let through logs a warning. Not with
    /// `tls_ca_file` or `tls_roots`, which it would ignore.
    pub fn tls_insecure_skip_verify(mut self, skip: bool) -> Self {
        self.config.tls_insecure_skip_verify = skip;
        self
    }
    /// The name to verify every TLS endpoint's certificate against, and to
    /// send as SNI (unless it is an IP address), instead of the endpoint's
    /// host (`None`: the host). For a pool that reaches one service by
    /// address, or through a tunnel, whose certificate names it otherwise;
    /// it applies to every TLS endpoint of the pool.
    ///
    /// ```
    /// use conpool::{Config, Endpoint};
    /// use rustls::pki_types::ServerName;
    ///
    /// // Dial 10.0.0.5, verify the certificate as db.internal.
    /// let config = Config::builder()
    ///     .tls_server_name(ServerName::try_from("db.internal")?.to_owned())
    ///     .build()?;
    /// let db = Endpoint::tls("10.0.0.5", 5432)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tls_server_name(mut self, name: impl Into<Option<ServerName<'static>>>) -> Self {
        self.config.tls_server_name = name.into();
        self
    }

    /// The resolver the default dialer asks for host names, instead of the
    /// system's (service discovery, a fixed table); see
    /// [`Resolve`] for an example. Its
    /// answers are cached and concurrent lookups merged, as the default's
    /// are ([`dns_cache_ttl`](Self::dns_cache_ttl)).
    pub fn resolver(mut self, resolver: impl Resolve) -> Self {
        self.config.resolver = Some(Arc::new(resolver));
        self
    }
    /// The longest the default dialer keeps a resolver's answer (default
    /// 30 s; a shorter TTL the resolver reports wins); `Duration::ZERO`
    /// keeps none, though lookups of one host at the same time are still
    /// merged. A failed lookup is kept for 1 s
    /// ([`FAILURE_TTL`](crate::dial::resolve::FAILURE_TTL)), or this if
    /// shorter. Any duration.
    pub fn dns_cache_ttl(mut self, ttl: Duration) -> Self {
        self.config.dns_cache_ttl = ttl;
        self
    }

    /// How long the default dialer gives one of a host's addresses before
    /// it starts connecting to the next as well, Happy Eyeballs style (RFC
    /// 8305; default 250 ms). The families are interleaved (one address of
    /// the other family after each), the next attempt starts at once when
    /// the previous fails, the first to connect wins (for TLS, the first
    /// whose handshake completes), the others are closed, and the address
    /// that won is tried first next time. `None` or `Duration::ZERO` tries
    /// one address at a time. Otherwise at least 10 ms, RFC 8305's floor.
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = conpool::Config::builder()
    ///     .happy_eyeballs_delay(Duration::from_millis(100))
    ///     .build()?;
    /// assert_eq!(config.happy_eyeballs_delay(), Some(Duration::from_millis(100)));
    ///
    /// let err = conpool::Config::builder()
    ///     .happy_eyeballs_delay(Duration::from_millis(5))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "invalid config: happy_eyeballs_delay is 5ms; it must be at least 10ms \
    ///      (RFC 8305's floor), or 0 or None for one address at a time"
    /// );
    /// # Ok::<(), conpool::Error>(())
    /// ```
    pub fn happy_eyeballs_delay(mut self, delay: impl Into<Option<Duration>>) -> Self {
        self.config.happy_eyeballs_delay = delay.into();
        self
    }

    /// Turns TCP keepalive on, with this idle time before the first probe
    /// (`None`, the default: off, as in tokio), so that a peer that
    /// vanished (a crashed host, a dropped NAT entry) is noticed on an idle
    /// connection. Whole seconds from 1 s to 32767 s, the kernel's unit and
    /// limit. The default dialer sets it on every TCP connection.
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = conpool::Config::builder()
    ///     .tcp_keepalive(Duration::from_secs(60))
    ///     .tcp_keepalive_interval(Duration::from_secs(10))
    ///     .tcp_keepalive_retries(3)
    ///     .build()?;
    /// assert_eq!(config.tcp_keepalive(), Some(Duration::from_secs(60)));
    /// # Ok::<(), conpool::Error>(())
    /// ```
    pub fn tcp_keepalive(mut self, idle: impl Into<Option<Duration>>) -> Self {
        self.config.tcp_keepalive = idle.into();
        self
    }
    /// Time between keepalive probes (`None`: the OS's); whole seconds
    /// from 1 s to 32767 s, and only with [`tcp_keepalive`](Self::tcp_keepalive).
    pub fn tcp_keepalive_interval(mut self, every: impl Into<Option<Duration>>) -> Self {
        self.config.tcp_keepalive_interval = every.into();
        self
    }
    /// Unanswered keepalive probes before the connection is dropped
    /// (`None`: the OS's); 1 to 127, and only with
    /// [`tcp_keepalive`](Self::tcp_keepalive).
    pub fn tcp_keepalive_retries(mut self, probes: impl Into<Option<u32>>) -> Self {
        self.config.tcp_keepalive_retries = probes.into();
        self
    }
    /// `SO_RCVBUF`, set on every TCP socket before it connects, so that
    /// the TCP window is sized from the start (`None`: the OS's); 1 to
    /// 2147483647 bytes. Linux doubles the value for its bookkeeping and
    /// caps it at `net.core.rmem_max`.
    pub fn recv_buffer_size(mut self, bytes: impl Into<Option<usize>>) -> Self {
        self.config.recv_buffer_size = bytes.into();
        self
    }
    /// `SO_SNDBUF`, set on every TCP socket before it connects (`None`:
    /// the OS's); 1 to 2147483647 bytes. Linux doubles the value and caps
    /// it at `net.core.wmem_max`.
    pub fn send_buffer_size(mut self, bytes: impl Into<Option<usize>>) -> Self {
        self.config.send_buffer_size = bytes.into();
        self
    }
    /// The local address every TCP connection is bound to before it
    /// connects, the port left to the OS (`None`: the OS picks). Only a
    /// host's addresses of the same family are dialed; a host with none
    /// fails to connect, saying so. Not used for Unix sockets.
    pub fn local_address(mut self, addr: impl Into<Option<IpAddr>>) -> Self {
        self.config.local_address = addr.into();
        self
    }
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged
    /// before the kernel drops the connection, where keepalive alone would
    /// wait for its probes (`None`: the OS's). Linux only; whole
    /// milliseconds from 1 ms to 4294967295 ms.
    pub fn tcp_user_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.tcp_user_timeout = timeout.into();
        self
    }
    /// `TCP_NODELAY` on every TCP connection (on by default): each write
    /// goes out at once, as a request-reply protocol wants. Off, the kernel
    /// holds a small write back while an earlier one is unacknowledged
    /// (Nagle's algorithm), so that many callers' small requests on one
    /// shared connection leave in fewer segments: more throughput under a
    /// pipelined load, a round trip more of latency for a lone request.
    /// redis-rs leaves it off by default; conpool's `Redis` follows this
    /// setting.
    ///
    /// ```
    /// let config = conpool::Config::builder().tcp_nodelay(false).build()?;
    /// assert!(!config.tcp_nodelay());
    /// assert!(conpool::Config::default().tcp_nodelay());
    /// # Ok::<(), conpool::Error>(())
    /// ```
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.config.tcp_nodelay = on;
        self
    }

    /// Checks every value and returns the config, or the first rule broken.
    pub fn build(self) -> Result<Config, Error> {
        let c = &self.config;
        fn bad(field: &'static str, reason: String) -> Result<Config, Error> {
            Err(Error::InvalidConfig { field, reason })
        }
        if c.max_connections_per_endpoint == 0 {
            return bad(
                "max_connections_per_endpoint",
                "is 0; it must be at least 1".into(),
            );
        }
        if c.max_idle_time.is_zero() {
            return bad("max_idle_time", "is 0s; it must be above zero".into());
        }
        if c.max_connection_lifetime.is_zero() {
            return bad(
                "max_connection_lifetime",
                "is 0s; it must be above zero".into(),
            );
        }
        if c.max_connection_uses == Some(0) {
            return bad(
                "max_connection_uses",
                "is 0; it must be at least 1 (or None for unlimited)".into(),
            );
        }
        if c.connect_timeout.is_some_and(|t| t.is_zero()) {
            return bad(
                "connect_timeout",
                "is 0s; it must be above zero (or None for the OS's own timeout)".into(),
            );
        }
        if c.connect_retry_count == 0 || c.connect_retry_count > MAX_CONNECT_RETRY_COUNT {
            return bad(
                "connect_retry_count",
                format!(
                    "is {}; it must be from 1 to {MAX_CONNECT_RETRY_COUNT} attempts",
                    c.connect_retry_count
                ),
            );
        }
        if c.acquire_timeout.is_some_and(|t| t.is_zero()) {
            return bad(
                "acquire_timeout",
                "is 0s; it must be above zero (or None to wait without bound)".into(),
            );
        }
        if c.max_concurrent_dials == 0 {
            return bad("max_concurrent_dials", "is 0; it must be at least 1".into());
        }
        if c.max_connections_total == Some(0) {
            return bad(
                "max_connections_total",
                "is 0; it must be at least 1 (or None for unbounded)".into(),
            );
        }
        if c.min_idle_per_endpoint > c.max_connections_per_endpoint {
            return bad(
                "min_idle_per_endpoint",
                format!(
                    "is {}; it must not exceed max_connections_per_endpoint ({})",
                    c.min_idle_per_endpoint, c.max_connections_per_endpoint
                ),
            );
        }
        if c.min_idle_per_endpoint > 0 && c.maintenance_interval.is_none() {
            return bad(
                "min_idle_per_endpoint",
                format!(
                    "is {}, but maintenance_interval is None; the background task keeps idle connections warm",
                    c.min_idle_per_endpoint
                ),
            );
        }
        if !(0.0..=0.5).contains(&c.max_connection_lifetime_jitter) {
            return bad(
                "max_connection_lifetime_jitter",
                format!(
                    "is {}; it must be a fraction from 0.0 to 0.5",
                    c.max_connection_lifetime_jitter
                ),
            );
        }
        if c.maintenance_interval.is_some_and(|t| t.is_zero()) {
            return bad(
                "maintenance_interval",
                "is 0s; it must be above zero (or None for no background task)".into(),
            );
        }
        if c.leak_threshold.is_some_and(|t| t.is_zero()) {
            return bad(
                "leak_threshold",
                "is 0s; it must be above zero (or None for off)".into(),
            );
        }
        if let Some(delay) = c
            .happy_eyeballs_delay
            .filter(|d| !d.is_zero() && *d < MIN_HAPPY_EYEBALLS_DELAY)
        {
            return bad(
                "happy_eyeballs_delay",
                format!(
                    "is {delay:?}; it must be at least {MIN_HAPPY_EYEBALLS_DELAY:?} (RFC 8305's floor), or 0 or None for one address at a time"
                ),
            );
        }
        socket_option_rules(c)?;
        let tls_config = tls::client_config(c)?;
        Ok(Config {
            tls_config,
            ..self.config
        })
    }
}

/// The rules of the socket options: the kernel's units and limits, so that
/// a value is never truncated or clamped on its way to `setsockopt`.
fn socket_option_rules(c: &Config) -> Result<(), Error> {
    fn bad(field: &'static str, reason: String) -> Result<(), Error> {
        Err(Error::InvalidConfig { field, reason })
    }
    const MAX_KEEPALIVE_SECS: u64 = 32767;
    for (field, value) in [
        ("tcp_keepalive", c.tcp_keepalive),
        ("tcp_keepalive_interval", c.tcp_keepalive_interval),
    ] {
        if let Some(d) = value.filter(|d| {
            d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > MAX_KEEPALIVE_SECS
        }) {
            return bad(
                field,
                format!(
                    "is {d:?}; it must be whole seconds from 1s to {MAX_KEEPALIVE_SECS}s (the kernel's unit and limit)"
                ),
            );
        }
    }
    if let Some(probes) = c.tcp_keepalive_retries.filter(|n| !(1..=127).contains(n)) {
        return bad(
            "tcp_keepalive_retries",
            format!("is {probes}; it must be from 1 to 127 probes"),
        );
    }
    if c.tcp_keepalive.is_none() {
        let given = [
            (
                "tcp_keepalive_interval",
                c.tcp_keepalive_interval.map(|d| format!("{d:?}")),
            ),
            (
                "tcp_keepalive_retries",
                c.tcp_keepalive_retries.map(|n| n.to_string()),
            ),
        ];
        if let Some((field, Some(value))) = given.into_iter().find(|(_, v)| v.is_some()) {
            return bad(
                field,
                format!(
                    "is {value}, but tcp_keepalive is None (off); set tcp_keepalive to turn keepalive on"
                ),
            );
        }
    }
    for (field, value) in [
        ("recv_buffer_size", c.recv_buffer_size),
        ("send_buffer_size", c.send_buffer_size),
    ] {
        if let Some(bytes) = value.filter(|&b| b == 0 || b > i32::MAX as usize) {
            return bad(
                field,
                format!("is {bytes}; it must be from 1 to {} bytes", i32::MAX),
            );
        }
    }
    if let Some(d) = c.tcp_user_timeout {
        if !cfg!(target_os = "linux") {
            return bad(
                "tcp_user_timeout",
                format!("is {d:?}; TCP_USER_TIMEOUT exists only on Linux (or None)"),
            );
        }
        if d.subsec_nanos() % 1_000_000 != 0 || d.is_zero() || d.as_millis() > u128::from(u32::MAX)
        {
            return bad(
                "tcp_user_timeout",
                format!(
                    "is {d:?}; it must be whole milliseconds from 1ms to {}ms (or None)",
                    u32::MAX
                ),
            );
        }
    }
    Ok(())
}
