//! Redis GET through each way a Rust program shares redis-rs connections:
//! conpool's `Redis` protocol (a share of a pooled multiplexed connection
//! per GET), one `MultiplexedConnection` cloned into every task (no pool:
//! the floor), bb8-redis and deadpool-redis (a pooled multiplexed
//! connection leased to one caller per GET). The `redis-compare` binary
//! drives these against a redis-server it starts on a free loopback port.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conpool::redis::Redis;
use conpool::{Config, Endpoint, Pool, ProtocolPool};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, IntoConnectionInfo};

/// The key every GET reads, and what it holds.
pub const KEY: &str = "conpool:bench:key";
const VALUE: &str = "sixteen bytes...";

/// Connections bb8 and deadpool may open (their callers lease one each).
pub const POOL_SIZE: u32 = 16;

/// A redis-server of the benchmark's own, on a free loopback port, with
/// no persistence; killed when dropped.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts `redis-server` and waits until it accepts connections, or
    /// says why it could not.
    pub fn start() -> Result<RedisServer, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "redis-server is not installed (apt-get install redis-server)".to_string()
                }
                _ => format!("redis-server did not start: {e}"),
            })?;
        let server = RedisServer { port, child };
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "redis-server did not listen on port {port} within 5 s"
        ))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One way of getting a connection to run a GET on.
pub enum Subject {
    /// conpool's `Redis`: a share per GET.
    Conpool(ProtocolPool<Redis>, Endpoint),
    /// One connection, a clone per task, no pool.
    Shared(MultiplexedConnection),
    /// One connection, a clone per GET, no pool: what a share costs of
    /// redis-rs's own, without conpool's books.
    ClonePerGet(MultiplexedConnection),
    /// bb8-redis, checking each connection with a PING on checkout (its
    /// default) or not.
    Bb8(bb8::Pool<bb8_redis::RedisConnectionManager>),
    /// deadpool-redis (it PINGs a connection when it recycles one).
    Deadpool(deadpool_redis::Pool),
}

impl Subject {
    /// Each subject, named, against `server`, its connections made before
    /// the clock starts.
    pub async fn all(server: &RedisServer) -> Vec<(&'static str, Subject)> {
        // Every subject's sockets are set alike: `TCP_NODELAY`, as conpool
        // sets it. redis-rs leaves Nagle's algorithm on by default, which
        // in this pipelined load merges the GETs of many tasks into one
        // segment and is worth far more than any pool's books (twice the
        // GETs/s with one worker on this machine): left so, the
        // comparison would measure the socket option, not the pools.
        let info = server
            .url()
            .as_str()
            .into_connection_info()
            .expect("a redis URL")
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let mut seed = redis::Client::open(info.clone())
            .expect("a redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the benchmark's redis-server");
        let () = seed.set(KEY, VALUE).await.expect("SET the benchmark's key");

        let pool = Pool::new(Config::default());
        let conpool = pool.protocol(Redis::new(redis::RedisConnectionInfo::default()));
        let endpoint = Endpoint::new("127.0.0.1", server.port).expect("a loopback endpoint");

        let manager = || bb8_redis::RedisConnectionManager::new(info.clone()).expect("a URL");
        let bb8 = bb8::Pool::builder()
            .max_size(POOL_SIZE)
            .build(manager())
            .await
            .expect("a bb8 pool");
        let bb8_unchecked = bb8::Pool::builder()
            .max_size(POOL_SIZE)
            .test_on_check_out(false)
            .build(manager())
            .await
            .expect("a bb8 pool");
        let deadpool = deadpool_redis::Pool::builder(
            deadpool_redis::Manager::new(info.clone()).expect("a URL"),
        )
        .max_size(POOL_SIZE as usize)
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .expect("a deadpool pool");

        vec![
            (
                "one shared MultiplexedConnection (no pool)",
                Subject::Shared(seed.clone()),
            ),
            ("conpool `Redis`", Subject::Conpool(conpool, endpoint)),
            (
                "one shared MultiplexedConnection, cloned per GET (no pool)",
                Subject::ClonePerGet(seed.clone()),
            ),
            ("bb8-redis", Subject::Bb8(bb8)),
            (
                "bb8-redis, no check on checkout",
                Subject::Bb8(bb8_unchecked),
            ),
            ("deadpool-redis", Subject::Deadpool(deadpool)),
        ]
    }

    /// One GET of [`KEY`], through the subject's way of getting a
    /// connection; `shared` is the task's clone for [`Subject::Shared`].
    async fn get(&self, shared: &mut Option<MultiplexedConnection>) -> String {
        let got: redis::RedisResult<String> = match self {
            Subject::Conpool(pool, endpoint) => {
                let mut conn = pool.get(endpoint).await.expect("a conpool share");
                conn.get(KEY).await
            }
            Subject::Shared(_) => shared.as_mut().expect("a clone per task").get(KEY).await,
            Subject::ClonePerGet(conn) => conn.clone().get(KEY).await,
            Subject::Bb8(pool) => {
                let mut conn = pool.get().await.expect("a bb8 connection");
                conn.get(KEY).await
            }
            Subject::Deadpool(pool) => {
                let mut conn = pool.get().await.expect("a deadpool connection");
                conn.get(KEY).await
            }
        };
        got.expect("GET the benchmark's key")
    }
}

/// What one round measured.
pub struct Round {
    /// GETs per second over the round's wall time.
    pub ops_per_sec: f64,
    /// The 99th percentile of one GET's latency (its connection's
    /// acquire included).
    pub p99: Duration,
}

/// `tasks` tasks × `per_task` GETs through `subject`, each GET timed.
pub async fn round(subject: &Arc<Subject>, tasks: usize, per_task: usize) -> Round {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let subject = subject.clone();
            tokio::spawn(async move {
                let mut shared = match &*subject {
                    Subject::Shared(conn) => Some(conn.clone()),
                    _ => None,
                };
                let mut latencies = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let began = Instant::now();
                    let value = subject.get(&mut shared).await;
                    latencies.push(began.elapsed());
                    assert_eq!(value, VALUE);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(tasks * per_task);
    for handle in handles {
        latencies.extend(handle.await.expect("a benchmark task panicked"));
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100).saturating_sub(1)];
    Round {
        ops_per_sec: (tasks * per_task) as f64 / elapsed.as_secs_f64(),
        p99,
    }
}
