//! Name resolution: the [`Resolve`] trait, the default resolvers, and the
//! pool's cache in front of whichever resolver it has.
//!
//! A [`Resolve`] turns a host name into its addresses; users plug in their
//! own (service discovery, a fixed table) with
//! [`ConfigBuilder::resolver`](crate::ConfigBuilder::resolver). The default
//! is [`SystemResolver`] (`getaddrinfo` on tokio's blocking pool), or, with
//! the cargo feature `hickory`, [`HickoryResolver`], which reports each
//! answer's TTL.
//!
//! Whatever the resolver, the dialer asks it through a [`CachedResolver`]:
//! concurrent lookups of one host are merged into one (as Go's resolver
//! does), an answer is kept for its TTL when the resolver gives one, else
//! for `dns_cache_ttl` (the system resolver gives none, so a fixed time, as
//! curl and Chromium use), and never longer than `dns_cache_ttl`. A failed
//! lookup is kept for [`FAILURE_TTL`] (or `dns_cache_ttl` if shorter), so
//! that a dead name costs one lookup a second, not one per caller.
//!
//! An IP literal is used as it is, without a lookup. Every address returned
//! is kept, in the resolver's order, for Happy Eyeballs to race.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::Endpoint;
use crate::config::BoxFuture;
use crate::deadline::later;

/// How long a failed lookup is remembered (unless `dns_cache_ttl` is
/// shorter): long enough that a burst of callers to a dead name makes one
/// lookup, short enough that a name that comes back is found within a
/// second, as a retry would.
pub const FAILURE_TTL: Duration = Duration::from_secs(1);

/// What a resolver found for a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The addresses, most preferred first; at least one.
    pub addrs: Vec<IpAddr>,
    /// How long the answer stays true, when the resolver knows (a DNS
    /// record's TTL); `None` keeps it for `dns_cache_ttl`.
    pub ttl: Option<Duration>,
}

impl Resolved {
    /// Addresses without a TTL of their own.
    pub fn new(addrs: Vec<IpAddr>) -> Self {
        Resolved { addrs, ttl: None }
    }
}

/// Turns a host name into its addresses.
///
/// Errors are returned as the resolver words them, and a dial that fails to
/// resolve fails at once with
/// [`Error::DnsResolutionFailed`](crate::Error::DnsResolutionFailed), never
/// retried. An answer with no address is an error too.
///
/// ```
/// use std::collections::HashMap;
/// use std::io;
/// use std::net::IpAddr;
/// use conpool::dial::resolve::{Resolve, Resolved};
/// use conpool::{BoxFuture, Config};
///
/// /// A fixed table, as service discovery might fill it.
/// struct Table(HashMap<String, Vec<IpAddr>>);
///
/// impl Resolve for Table {
///     fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Resolved>> {
///         Box::pin(async move {
///             match self.0.get(host) {
///                 Some(addrs) => Ok(Resolved::new(addrs.clone())),
///                 None => Err(io::Error::new(io::ErrorKind::NotFound, format!("{host} is not in the table"))),
///             }
///         })
///     }
/// }
///
/// let table = Table(HashMap::from([("db".to_owned(), vec!["127.0.0.1".parse().unwrap()])]));
/// let config = Config::builder().resolver(table).build()?;
/// # Ok::<(), conpool::Error>(())
/// ```
pub trait Resolve: Send + Sync + 'static {
    /// Every address of `host` (a DNS name, never an IP literal).
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Resolved>>;
}

/// The system resolver: `getaddrinfo` on tokio's blocking pool, which
/// reads `/etc/hosts` and the system's DNS settings and gives no TTL.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Resolved>> {
        Box::pin(async move {
            // getaddrinfo wants a port; any will do, only the IPs are kept.
            let addrs = tokio::net::lookup_host((host, 0)).await?;
            Ok(Resolved::new(addrs.map(|a| a.ip()).collect()))
        })
    }
}

/// hickory-resolver (cargo feature `hickory`), set up from the system's
/// DNS settings (`/etc/resolv.conf`), reporting each answer's TTL.
#[cfg(feature = "hickory")]
#[derive(Default)]
pub struct HickoryResolver {
    // Made on first use: reading the system's settings can fail, and that
    // failure belongs to a lookup, not to building a config.
    inner: std::sync::OnceLock<Result<hickory_resolver::TokioResolver, String>>,
}

#[cfg(feature = "hickory")]
impl fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HickoryResolver")
    }
}

#[cfg(feature = "hickory")]
impl Resolve for HickoryResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Resolved>> {
        Box::pin(async move {
            let resolver = self
                .inner
                .get_or_init(|| {
                    hickory_resolver::Resolver::builder_tokio()
                        .map(|builder| builder.build())
                        .map_err(|e| format!("reading the system's DNS settings failed: {e}"))
                })
                .as_ref()
                .map_err(|e| io::Error::other(e.clone()))?;
            let lookup = resolver.lookup_ip(host).await.map_err(|e| {
                let kind = if e.is_nx_domain() || e.is_no_records_found() {
                    io::ErrorKind::NotFound
                } else {
                    io::ErrorKind::Other
                };
                io::Error::new(kind, e)
            })?;
            let ttl = lookup
                .valid_until()
                .saturating_duration_since(std::time::Instant::now());
            Ok(Resolved {
                addrs: lookup.iter().collect(),
                ttl: Some(ttl),
            })
        })
    }
}

/// The resolver a config without one of its own uses: [`SystemResolver`],
/// or [`HickoryResolver`] with the feature `hickory`.
pub fn default_resolver() -> Arc<dyn Resolve> {
    #[cfg(feature = "hickory")]
    {
        Arc::new(HickoryResolver::default())
    }
    #[cfg(not(feature = "hickory"))]
    {
        Arc::new(SystemResolver)
    }
}

/// A resolver's answers kept for a while, and concurrent lookups of one
/// host merged into one; see the [module docs](self) for how long.
///
/// The default dialer makes one per pool, so that every dial of the pool
/// shares it.
///
/// ```
/// use std::time::Duration;
/// use conpool::dial::resolve::{CachedResolver, SystemResolver};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let cache = CachedResolver::new(SystemResolver, Duration::from_secs(30));
/// let endpoint = conpool::Endpoint::new("127.0.0.1", 6379).unwrap();
/// // An IP literal needs no lookup.
/// assert_eq!(cache.resolve(&endpoint).await?, vec!["127.0.0.1:6379".parse().unwrap()]);
/// # Ok(()) }
/// ```
pub struct CachedResolver {
    resolver: Arc<dyn Resolve>,
    ttl: Duration,
    hosts: Mutex<Hosts>,
}

#[derive(Default)]
struct Hosts {
    by_name: HashMap<Arc<str>, Arc<Lookup>>,
    /// The map's size after it was last swept of expired answers: it is
    /// swept again when it has doubled, so sweeping costs O(1) a lookup.
    swept_at: usize,
}

/// One lookup of one host: every caller that comes while it runs waits on
/// the same cell, and it holds the answer until it expires. If the caller
/// running the lookup is cancelled, the next waiter runs it instead
/// (`OnceCell`'s promise), so nobody waits on a lookup nobody runs.
#[derive(Default)]
struct Lookup {
    outcome: OnceCell<Outcome>,
}

struct Outcome {
    /// The error as kind and words: `io::Error` is not `Clone`, and every
    /// caller gets its own.
    answer: Result<Arc<[IpAddr]>, (io::ErrorKind, String)>,
    expires: Instant,
}

impl Lookup {
    fn is_expired(&self, now: Instant) -> bool {
        self.outcome.get().is_some_and(|o| o.expires <= now)
    }
}

impl CachedResolver {
    /// `resolver`'s answers kept for at most `ttl` (`Duration::ZERO`: a
    /// lookup per dial, still merged with those running at the same time).
    pub fn new(resolver: impl Resolve, ttl: Duration) -> Self {
        Self::from_arc(Arc::new(resolver), ttl)
    }

    /// As [`CachedResolver::new`], for a resolver already shared.
    pub fn from_arc(resolver: Arc<dyn Resolve>, ttl: Duration) -> Self {
        CachedResolver {
            resolver,
            ttl,
            hosts: Mutex::default(),
        }
    }

    /// Every address of the endpoint, in the resolver's order: the IP of an
    /// IP literal, else the host's addresses, from the cache when fresh.
    pub async fn resolve(&self, endpoint: &Endpoint) -> io::Result<Vec<SocketAddr>> {
        let port = endpoint.port();
        if let Some(ip) = endpoint.ip() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let ips = self.lookup(endpoint.host()).await?;
        Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
    }

    async fn lookup(&self, host: &str) -> io::Result<Arc<[IpAddr]>> {
        let lookup = self.current(host);
        let outcome = lookup
            .outcome
            .get_or_init(|| async {
                let answer = match self.resolver.resolve(host).await {
                    Ok(found) if found.addrs.is_empty() => {
                        Err(not_found(format!("{host} has no addresses")))
                    }
                    other => other,
                };
                let (answer, keep) = match answer {
                    Ok(found) => {
                        let keep = found.ttl.map_or(self.ttl, |ttl| ttl.min(self.ttl));
                        (Ok(Arc::from(found.addrs)), keep)
                    }
                    Err(err) => (
                        Err((err.kind(), err.to_string())),
                        FAILURE_TTL.min(self.ttl),
                    ),
                };
                Outcome {
                    answer,
                    expires: later(Instant::now(), keep),
                }
            })
            .await;
        match &outcome.answer {
            Ok(ips) => Ok(ips.clone()),
            Err((kind, words)) => Err(io::Error::new(*kind, words.clone())),
        }
    }

    /// The lookup of `host` to wait on: the one in the map unless it has
    /// expired, else a new one put in its place.
    fn current(&self, host: &str) -> Arc<Lookup> {
        let now = Instant::now();
        let mut hosts = self.hosts.lock();
        if let Some(lookup) = hosts.by_name.get(host).filter(|l| !l.is_expired(now)) {
            return lookup.clone();
        }
        let lookup = Arc::new(Lookup::default());
        hosts.by_name.insert(Arc::from(host), lookup.clone());
        if hosts.by_name.len() >= 2 * hosts.swept_at.max(32) {
            hosts.by_name.retain(|_, l| !l.is_expired(now));
            hosts.swept_at = hosts.by_name.len();
        }
        lookup
    }
}

impl fmt::Debug for CachedResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedResolver")
            .field("ttl", &self.ttl)
            .field("hosts", &self.hosts.lock().by_name.len())
            .finish_non_exhaustive()
    }
}

fn not_found(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, what)
}
