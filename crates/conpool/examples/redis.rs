//! redis-rs's multiplexed connection, pooled:
//! `cargo run --example redis --features redis -- [ADDR] [TASKS]`, where
//! `ADDR` is `host:port` or `tls://host:port` of a redis-server (or set
//! `CONPOOL_REDIS_ADDR`; 127.0.0.1:6379 when neither is given).
//!
//! `TASKS` tasks (default 64) each SET and GET their own keys, every
//! command on a lease of the pool: the leases are shares of one
//! connection, on which redis-rs pipelines every task's commands. The
//! report at the end shows the pool's books.

use std::error::Error;

use conpool::redis::Redis;
use conpool::{Config, Endpoint, Pool, ProtocolPool, Stats};

type BoxError = Box<dyn Error + Send + Sync>;

/// The server to ask when the command line names none.
const ADDR_VAR: &str = "CONPOOL_REDIS_ADDR";
const DEFAULT_ADDR: &str = "127.0.0.1:6379";
const DEFAULT_TASKS: usize = 64;
/// SET/GET pairs per task.
const ROUNDS: usize = 10;

/// `tasks` tasks, each doing `ROUNDS` SET/GET pairs of keys of its own
/// through `redis`, checking every value read; the endpoint's stats after.
pub async fn set_and_get(
    redis: &ProtocolPool<Redis>,
    endpoint: &Endpoint,
    tasks: usize,
) -> Result<Stats, BoxError> {
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let (redis, endpoint) = (redis.clone(), endpoint.clone());
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let key = format!("conpool:example:{task}");
                    let value = format!("task {task}, round {round}");
                    let mut conn = redis.get(&endpoint).await?;
                    let () = redis::cmd("SET")
                        .arg(&key)
                        .arg(&value)
                        .query_async(&mut *conn)
                        .await?;
                    let got: String = redis::cmd("GET").arg(&key).query_async(&mut *conn).await?;
                    if got != value {
                        return Err(format!("{key} held {got:?}, not {value:?}").into());
                    }
                }
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for handle in handles {
        handle.await??;
    }
    Ok(redis.stats(endpoint))
}

/// `host:port` or `tls://host:port`.
pub fn parse_addr(addr: &str) -> Result<Endpoint, BoxError> {
    let (tls, host_port) = match addr.strip_prefix("tls://") {
        Some(rest) => (true, rest),
        None => (false, addr),
    };
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not host:port or tls://host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|e| format!("the port in {addr:?} is not a port number: {e}"))?;
    Ok(if tls {
        Endpoint::tls(host, port)?
    } else {
        Endpoint::new(host, port)?
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .or_else(|| std::env::var(ADDR_VAR).ok())
        .unwrap_or_else(|| DEFAULT_ADDR.to_string());
    let tasks = match args.next() {
        Some(n) => n
            .parse()
            .map_err(|e| format!("TASKS {n:?} is not a count: {e}"))?,
        None => DEFAULT_TASKS,
    };
    let endpoint = parse_addr(&addr)?;

    let pool = Pool::new(Config::builder().max_connections_per_endpoint(4).build()?);
    let redis = pool.protocol(Redis::new(redis::RedisConnectionInfo::default()));
    let stats = set_and_get(&redis, &endpoint, tasks).await?;
    println!(
        "{tasks} tasks x {ROUNDS} SET/GET pairs against {endpoint}: \
         {} connection(s) created, {} reused, {} closed, {} errors",
        stats.total_created, stats.total_reused, stats.total_closed, stats.errors
    );
    pool.close().await;
    Ok(())
}
