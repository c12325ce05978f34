//! Scale: many endpoints, each with idle connections, over in-memory
//! streams (`tokio::io::duplex` behind `Stream::custom` and a custom
//! [`Dial`]), so that no socket limit gets in the way of 100,000
//! connections.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conpool::dial::{Dial, DialError};
use conpool::{BoxFuture, Config, Endpoint, Pool, Stream};
use pingora_pool::{ConnectionMeta, ConnectionPool};
use tokio::io::DuplexStream;

use crate::subjects::PingoraConn;

/// The endpoint counts the scale figures are taken at.
pub const KEY_COUNTS: [usize; 4] = [1, 100, 10_000, 100_000];

/// A step through the endpoints that visits each once per lap in an order
/// unrelated to the order they were made in (7919 is prime and does not
/// divide any of [`KEY_COUNTS`]), so that the walk does not just follow
/// the allocator's address order.
pub const STRIDE: usize = 7919;

/// The next index after `i` in a walk over `n` endpoints.
#[inline]
pub fn next_index(i: usize, n: usize) -> usize {
    (i + STRIDE) % n
}

/// `n` distinct endpoints with realistic host names
/// (`node-000042.cache.svc.cluster.local:6379`).
pub fn endpoints(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            Endpoint::new(format!("node-{i:06}.cache.svc.cluster.local"), 6379)
                .expect("a valid endpoint")
        })
        .collect()
}

/// A dialer of in-memory streams. Streams made ahead of time with
/// [`MemDialer::with_ready`] are handed out first, so that a memory count
/// taken after it was built excludes the streams themselves; the server
/// halves are kept open so nothing looks closed.
pub struct MemDialer {
    ready: Mutex<Vec<Stream>>,
    peers: Mutex<Vec<DuplexStream>>,
}

impl MemDialer {
    /// A dialer with no stream made ahead.
    pub fn new() -> MemDialer {
        MemDialer::with_ready(0)
    }

    /// A dialer with `n` streams made ahead.
    pub fn with_ready(n: usize) -> MemDialer {
        let mut ready = Vec::with_capacity(n);
        let mut peers = Vec::with_capacity(n);
        for _ in 0..n {
            let (client, server) = tokio::io::duplex(64);
            ready.push(Stream::custom(client));
            peers.push(server);
        }
        MemDialer {
            ready: Mutex::new(ready),
            peers: Mutex::new(peers),
        }
    }

    fn make(&self) -> Stream {
        if let Some(stream) = self.ready.lock().expect("not poisoned").pop() {
            return stream;
        }
        let (client, server) = tokio::io::duplex(64);
        self.peers.lock().expect("not poisoned").push(server);
        Stream::custom(client)
    }
}

impl Default for MemDialer {
    fn default() -> Self {
        MemDialer::new()
    }
}

impl Dial for MemDialer {
    fn dial<'a>(&'a self, _: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
        Box::pin(std::future::ready(Ok(self.make())))
    }
}

/// conpool's config for the scale runs: the defaults, with room for
/// `per_endpoint` connections per endpoint.
pub fn config(per_endpoint: usize) -> Config {
    Config::builder()
        .max_connections_per_endpoint(per_endpoint.max(1))
        .build()
        .expect("a valid config")
}

/// Leaves `per_endpoint` idle connections at every endpoint.
pub async fn populate(pool: &Pool, endpoints: &[Endpoint], per_endpoint: usize) {
    let mut held = Vec::with_capacity(per_endpoint);
    for endpoint in endpoints {
        for _ in 0..per_endpoint {
            held.push(pool.get(endpoint).await.expect("the in-memory dial works"));
        }
        held.clear();
    }
}

/// A conpool pool over in-memory streams with `per_endpoint` idle
/// connections at each of `endpoints`.
pub async fn conpool_populated(endpoints: &[Endpoint], per_endpoint: usize) -> Pool {
    let pool = Pool::with_dialer(config(per_endpoint), MemDialer::new());
    populate(&pool, endpoints, per_endpoint).await;
    pool
}

/// `iters` acquire+release cycles walking `endpoints` (one task).
pub async fn conpool_walk(pool: &Pool, endpoints: &[Endpoint], iters: u64) -> Duration {
    let n = endpoints.len();
    let mut i = 0;
    let start = Instant::now();
    for _ in 0..iters {
        let conn = pool.get(&endpoints[i]).await.expect("an idle connection");
        drop(conn);
        i = next_index(i, n);
    }
    start.elapsed()
}

/// The floor under any pool keyed by endpoint: a plain
/// `HashMap<Endpoint, _>` (std's SipHash), looked up in the same walk.
///
/// [`walk`](MapFloor::walk) does the lookup alone and reads the value
/// found. [`walk_chain`](MapFloor::walk_chain) also follows what a
/// checkout cannot avoid touching after the lookup when the connection's
/// record is its own allocation (it moves into the lease): one cache line
/// of the endpoint's state, then one of the connection's record, each a
/// dependent read. Once the endpoints outgrow the caches, each of those
/// reads is a miss, whatever the pool.
pub struct MapFloor {
    map: HashMap<Endpoint, Box<FloorEndpoint>>,
    endpoints: Vec<Endpoint>,
}

/// One line of an endpoint's state, pointing at a connection record.
#[repr(align(64))]
struct FloorEndpoint {
    state: [u64; 7],
    record: Box<FloorRecord>,
}

/// One line of a connection's record.
#[repr(align(64))]
struct FloorRecord([u64; 8]);

impl MapFloor {
    /// A map holding every one of `endpoints`.
    pub fn new(endpoints: Vec<Endpoint>) -> MapFloor {
        let map = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let value = FloorEndpoint {
                    state: [i as u64; 7],
                    record: Box::new(FloorRecord([i as u64; 8])),
                };
                (e.clone(), Box::new(value))
            })
            .collect();
        MapFloor { map, endpoints }
    }

    /// `iters` lookups walking the endpoints, each reading the value found.
    pub fn walk(&self, iters: u64) -> Duration {
        self.walk_with::<false>(iters, |found| found.state[0])
    }

    /// `iters` lookups walking the endpoints, each then reading the
    /// endpoint's state and, through it, the connection's record.
    pub fn walk_chain(&self, iters: u64) -> Duration {
        self.walk_with::<false>(iters, |found| found.state[0] ^ found.record.0[0])
    }

    /// As [`walk_chain`](MapFloor::walk_chain), but each lookup starts
    /// only once the previous one's reads are done, so that the misses of
    /// consecutive gets cannot overlap. A real checkout runs hundreds of
    /// instructions between its reads (more than the processor looks ahead
    /// over), so its misses mostly add up like these, not overlap as the
    /// short loop's do: this is the latency-bound floor.
    pub fn walk_chain_serial(&self, iters: u64) -> Duration {
        self.walk_with::<true>(iters, |found| found.state[0] ^ found.record.0[0])
    }

    /// The walk; with `SERIAL`, the next index waits for this read.
    fn walk_with<const SERIAL: bool>(
        &self,
        iters: u64,
        read: impl Fn(&FloorEndpoint) -> u64,
    ) -> Duration {
        let n = self.endpoints.len();
        let mut i = 0;
        let mut sum = 0u64;
        let start = Instant::now();
        for _ in 0..iters {
            let found = self.map.get(&self.endpoints[i]).expect("present");
            let value = read(found);
            sum = sum.wrapping_add(value);
            i = next_index(i, n);
            if SERIAL {
                // Never true (the values are below n), but the next index
                // cannot be known before the read is.
                i += usize::from(value == u64::MAX);
            }
        }
        let took = start.elapsed();
        std::hint::black_box(sum);
        took
    }
}

/// pingora-pool keyed like the endpoints, one in-memory stream per key.
pub struct PingoraKeys {
    /// The pool.
    pub pool: ConnectionPool<PingoraConn<DuplexStream>>,
    /// One key per endpoint, as a pingora user precomputes them.
    pub keys: Vec<u64>,
    /// The endpoints the keys stand for.
    pub endpoints: Vec<Endpoint>,
    _peers: Vec<DuplexStream>,
}

impl PingoraKeys {
    /// `per_key` idle streams under each of `endpoints.len()` keys.
    pub fn populated(endpoints: Vec<Endpoint>, per_key: usize) -> PingoraKeys {
        let n = endpoints.len();
        let pool = ConnectionPool::new(n * per_key);
        let keys: Vec<u64> = endpoints.iter().map(pingora_key).collect();
        let mut peers = Vec::with_capacity(n * per_key);
        for &key in &keys {
            for _ in 0..per_key {
                let (client, server) = tokio::io::duplex(64);
                peers.push(server);
                let conn = PingoraConn::new(client);
                let _ = pool.put(&ConnectionMeta::new(key, conn.id), conn);
            }
        }
        PingoraKeys {
            pool,
            keys,
            endpoints,
            _peers: peers,
        }
    }

    /// `iters` get+put cycles walking the precomputed keys.
    pub fn walk(&self, iters: u64) -> Duration {
        let n = self.keys.len();
        let mut i = 0;
        let start = Instant::now();
        for _ in 0..iters {
            let key = self.keys[i];
            self.cycle(key);
            i = next_index(i, n);
        }
        start.elapsed()
    }

    /// `iters` get+put cycles walking the endpoints, hashing each one into
    /// its key on every call (as pingora-core's `reuse_hash` does per
    /// request).
    pub fn walk_hashing(&self, iters: u64) -> Duration {
        let n = self.endpoints.len();
        let mut i = 0;
        let start = Instant::now();
        for _ in 0..iters {
            let key = pingora_key(&self.endpoints[i]);
            self.cycle(key);
            i = next_index(i, n);
        }
        start.elapsed()
    }

    #[inline]
    fn cycle(&self, key: u64) {
        let conn = self.pool.get(&key).expect("an idle connection");
        let meta = ConnectionMeta::new(key, conn.id);
        let _ = self.pool.put(&meta, conn);
    }
}

/// A pingora group key for an endpoint: SipHash of host, port and scheme.
pub fn pingora_key(endpoint: &Endpoint) -> u64 {
    let mut h = DefaultHasher::new();
    endpoint.hash(&mut h);
    h.finish()
}

/// Bytes of bookkeeping per idle connection, as the counting allocator
/// sees them: `endpoints × per_endpoint` idle connections, the streams made
/// before counting starts. The process must have installed
/// [`crate::alloc::Counting`].
pub async fn conpool_bytes_per_idle(endpoints: usize, per_endpoint: usize) -> f64 {
    let eps = self::endpoints(endpoints);
    let total = endpoints * per_endpoint;
    let config = config(per_endpoint);
    let dialer = MemDialer::with_ready(total);
    crate::alloc::enable();
    let pool = Pool::with_dialer(config, dialer);
    populate(&pool, &eps, per_endpoint).await;
    // Let detached dial tasks finish and free themselves.
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The least of a few readings: a maintenance pass caught mid-way holds
    // a passing list of every endpoint (8 B per endpoint), which is no
    // bookkeeping the pool keeps.
    let mut live = isize::MAX;
    for _ in 0..10 {
        live = live.min(crate::alloc::live_bytes());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    crate::alloc::disable();
    pool.close().await;
    live as f64 / total as f64
}

/// The same figure for pingora-pool (bare get + put), streams excluded.
pub fn pingora_bytes_per_idle(endpoints: usize, per_key: usize) -> f64 {
    let keys: Vec<u64> = self::endpoints(endpoints).iter().map(pingora_key).collect();
    let total = endpoints * per_key;
    let mut conns = Vec::with_capacity(total);
    let mut peers = Vec::with_capacity(total);
    for _ in 0..total {
        let (client, server) = tokio::io::duplex(64);
        conns.push(PingoraConn::new(client));
        peers.push(server);
    }
    crate::alloc::enable();
    let pool = ConnectionPool::new(total);
    for &key in &keys {
        for _ in 0..per_key {
            let conn = conns.pop().expect("made ahead");
            let _ = pool.put(&ConnectionMeta::new(key, conn.id), conn);
        }
    }
    let live = crate::alloc::live_bytes();
    crate::alloc::disable();
    drop(pool);
    live as f64 / total as f64
}

/// How long conpool takes to drop `endpoints × per_endpoint` idle
/// connections: by `clear_endpoint` on every endpoint, and by `close()`
/// (each on its own freshly populated pool).
pub async fn conpool_evict_and_close(
    endpoints: usize,
    per_endpoint: usize,
) -> (Duration, Duration) {
    let eps = self::endpoints(endpoints);
    let pool = conpool_populated(&eps, per_endpoint).await;
    let start = Instant::now();
    for ep in &eps {
        pool.clear_endpoint(ep);
    }
    let clear = start.elapsed();
    drop(pool);

    let pool = conpool_populated(&eps, per_endpoint).await;
    let start = Instant::now();
    pool.close().await;
    let close = start.elapsed();
    (clear, close)
}

/// How long pingora-pool takes to drop the same number of idle
/// connections: dropping the whole pool (it has no close of its own).
pub fn pingora_drop(endpoints: usize, per_key: usize) -> Duration {
    let keys = PingoraKeys::populated(self::endpoints(endpoints), per_key);
    let start = Instant::now();
    drop(keys.pool);
    start.elapsed()
}

/// Shared handle to a populated conpool pool and its endpoints, for the
/// criterion benches.
pub struct ConpoolKeys {
    /// The pool.
    pub pool: Pool,
    /// Its endpoints.
    pub endpoints: Arc<Vec<Endpoint>>,
}

impl ConpoolKeys {
    /// One idle connection at each of `n` endpoints.
    pub async fn populated(n: usize) -> ConpoolKeys {
        let endpoints = Arc::new(endpoints(n));
        let pool = conpool_populated(&endpoints, 1).await;
        ConpoolKeys { pool, endpoints }
    }
}
