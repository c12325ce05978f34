//! Dialing a host whose first address is black-holed, and what a cached
//! resolution saves: the figures of BENCHMARKS.md's section 6.
//!
//! Time to the first connection, from a cold start, to a host whose first
//! address drops SYNs (a listener with a full accept backlog) and whose
//! second is an echo server on the same port: through a fresh conpool
//! `Pool` (the name resolved by a fixed table through `Resolve`), through
//! hyper-util's `HttpConnector` (the same addresses from a fixed resolver),
//! and through a plain `TcpStream::connect` of the addresses the name
//! stands for (what connecting to the name does once it is resolved). Both
//! an IPv4 + IPv4 host (two A records) and an IPv6 + IPv4 host (black hole
//! on ::1) are measured. Every connect timeout is 10 s; the plain connect,
//! which has none, is cut at 10 s.
//!
//! Then the cost of resolving `localhost` (from /etc/hosts: no DNS query)
//! with the system resolver on every dial against the pool's cache.
//!
//! `cargo run --release -p conpool-bench --example dial`

use std::future::Ready;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use conpool::dial::resolve::{CachedResolver, Resolve, Resolved, SystemResolver};
use conpool::{BoxFuture, Config, Endpoint, Pool};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

const TIMEOUT: Duration = Duration::from_secs(10);
const ROUNDS: usize = 5;

/// A listener whose accept queue is full: connects to it hang.
struct BlackHole {
    _listener: Socket,
    _fillers: Vec<Socket>,
}

fn black_hole(addr: SocketAddr) -> (BlackHole, u16) {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let listener = Socket::new(domain, Type::STREAM, None).unwrap();
    listener.bind(&addr.into()).unwrap();
    listener.listen(0).unwrap();
    let bound = listener.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..64 {
        let s = Socket::new(domain, Type::STREAM, None).unwrap();
        if s.connect_timeout(&bound.into(), Duration::from_millis(200))
            .is_err()
        {
            break;
        }
        fillers.push(s);
    }
    (
        BlackHole {
            _listener: listener,
            _fillers: fillers,
        },
        bound.port(),
    )
}

async fn echo_server(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// "bench.test" and its addresses, for conpool.
#[derive(Clone)]
struct Table(Vec<IpAddr>);

impl Resolve for Table {
    fn resolve<'a>(&'a self, _host: &'a str) -> BoxFuture<'a, io::Result<Resolved>> {
        Box::pin(async move { Ok(Resolved::new(self.0.clone())) })
    }
}

/// The same addresses, for hyper-util.
#[derive(Clone)]
struct Fixed(Vec<SocketAddr>);

impl Service<Name> for Fixed {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Ready<io::Result<Self::Response>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Name) -> Self::Future {
        std::future::ready(Ok(self.0.clone().into_iter()))
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn show(d: Duration) -> String {
    if d >= TIMEOUT {
        format!("> {} s (cut)", TIMEOUT.as_secs())
    } else if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    }
}

async fn first_connection(dead: IpAddr, live: IpAddr) -> [Duration; 3] {
    let (_hole, port) = black_hole(SocketAddr::new(dead, 0));
    echo_server(SocketAddr::new(live, port)).await;
    let addrs = vec![SocketAddr::new(dead, port), SocketAddr::new(live, port)];

    let mut conpool_t = Vec::new();
    let mut hyper_t = Vec::new();
    for _ in 0..ROUNDS {
        // A fresh pool each round: nothing remembered, nothing cached.
        let pool = Pool::new(
            Config::builder()
                .resolver(Table(vec![dead, live]))
                .connect_timeout(TIMEOUT)
                .build()
                .unwrap(),
        );
        let endpoint = Endpoint::new("bench.test", port).unwrap();
        let started = Instant::now();
        let conn = pool.get(&endpoint).await.unwrap();
        conpool_t.push(started.elapsed());
        assert_eq!(conn.peer_addr().map(|a| a.ip()), Some(live));
        drop(conn);

        let mut http = HttpConnector::new_with_resolver(Fixed(addrs.clone()));
        http.set_connect_timeout(Some(TIMEOUT));
        let uri: hyper::Uri = format!("http://bench.test:{port}/").parse().unwrap();
        let started = Instant::now();
        let io = http.call(uri).await.unwrap();
        hyper_t.push(started.elapsed());
        assert_eq!(io.inner().peer_addr().unwrap().ip(), live);
    }
    let started = Instant::now();
    let plain = tokio::time::timeout(TIMEOUT, TcpStream::connect(&addrs[..])).await;
    let plain_t = match plain {
        Ok(Ok(_)) => started.elapsed(),
        _ => TIMEOUT,
    };
    [median(conpool_t), median(hyper_t), plain_t]
}

async fn per_resolution(ops: u32, resolve: impl AsyncFn()) -> Duration {
    resolve().await;
    let started = Instant::now();
    for _ in 0..ops {
        resolve().await;
    }
    started.elapsed() / ops
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
    let two_a = first_connection(v4("127.0.0.2"), v4("127.0.0.1")).await;
    let v6_v4 = first_connection(v4("::1"), v4("127.0.0.1")).await;

    println!("## 7. Dialing: a black-holed first address, and a cached resolution\n");
    println!(
        "Time to the first connection to a host whose first address drops SYNs (a listener with a full accept backlog) and whose second accepts; connect timeout {} s everywhere; median of {ROUNDS} cold starts (a fresh pool or connector each), the plain connect once.\n",
        TIMEOUT.as_secs()
    );
    println!(
        "| host | conpool (Happy Eyeballs, 250 ms) | hyper-util `HttpConnector` | `TcpStream::connect` of its addresses |"
    );
    println!("| --- | --- | --- | --- |");
    for (name, [c, h, p]) in [
        ("127.0.0.2 (black hole), 127.0.0.1", two_a),
        ("::1 (black hole), 127.0.0.1", v6_v4),
    ] {
        println!("| {name} | {} | {} | {} |", show(c), show(h), show(p));
    }

    println!(
        "\nconpool starts the next address {} ms after the first whatever its family; hyper-util races only the other family (its fallback, after 300 ms), and tries addresses of one family in turn, each with its share of the connect timeout; a plain connect waits on the first address as long as the OS does (about 2 minutes on Linux).",
        Config::default()
            .happy_eyeballs_delay()
            .unwrap()
            .as_millis()
    );

    let endpoint = Endpoint::new("localhost", 6379).unwrap();
    let cache = CachedResolver::new(SystemResolver, Duration::from_secs(30));
    let cached = per_resolution(100_000, async || {
        cache.resolve(&endpoint).await.unwrap();
    })
    .await;
    let system = per_resolution(2_000, async || {
        SystemResolver.resolve("localhost").await.unwrap();
    })
    .await;
    println!("\nResolving `localhost` (from /etc/hosts, no DNS query), per resolution:\n");
    println!(
        "| system resolver (`getaddrinfo` on the blocking pool) | the pool's cache, fresh answer | ratio |"
    );
    println!("| --- | --- | --- |");
    println!(
        "| {:.2} µs | {:.0} ns | {:.0}× |",
        system.as_secs_f64() * 1e6,
        cached.as_secs_f64() * 1e9,
        system.as_secs_f64() / cached.as_secs_f64()
    );
}
