//! Protocol pools side by side (issue 14's HTTP and shared-mode benchmarks):
//!
//! - HTTP/1.1 GETs to a real nginx from 64 tasks for a fixed time:
//!   conpool's `Http1` (16 and 64 connections per endpoint), hyper-util's
//!   legacy `Client` (its own pool) and reqwest; requests per second and
//!   the p99 latency (an HDR histogram of every request in the window).
//! - Shared-mode overhead: get + drop of a share of one in-memory
//!   connection, no I/O, against `Arc::clone` + drop of that connection's
//!   handle (the floor), and the byte-stream pool's acquire + release over
//!   the same in-memory streams for reference; at 1 and 64 tasks on a
//!   current-thread and a 2-worker runtime; with instruction counts per
//!   cycle from callgrind where valgrind is installed.
//!
//! ```text
//! cargo run --release -p conpool-bench --features protocols --bin protocols            # prints the section
//! cargo run --release -p conpool-bench --features protocols --bin protocols -- --write # and puts it in BENCHMARKS.md
//! ```
//!
//! `--quick` runs one short round of each. BENCHMARKS.md's other sections
//! are written by `scripts/bench`; `--write` replaces only the "Protocol
//! pools" section (adding it before "How it is measured" if missing).
//!
//! `protocols http REQUESTS CLIENT` (CLIENT one of `conpool64`,
//! `conpool16`, `hyper-util`, `reqwest`) sends only that many GETs through
//! that client, for a profiler.
//!
//! With a first argument `share`, `arc` or `lease` it runs only that cycle
//! (`protocols share 200000 [64|64held]`: cycles, and 64 tasks on a
//! current-thread runtime instead of one, each holding its share across a
//! yield with `64held`), which is what callgrind counts.

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conpool::hyper::{Http1, endpoint_of};
use conpool::{Config, Connected, Endpoint, Pool, Protocol, ProtocolPool, Stream};
use conpool_bench::report::{self, Figure, thousands};
use conpool_bench::scale::MemDialer;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = Empty<Bytes>;

/// Tasks sending requests (and cycling shares) at once.
const TASKS: usize = 64;

#[derive(Clone, Copy)]
struct Plan {
    rounds: usize,
    warm_up: Duration,
    window: Duration,
    cycle_rounds: usize,
    cycle_goal: Duration,
}

const FULL: Plan = Plan {
    rounds: 5,
    warm_up: Duration::from_secs(1),
    window: Duration::from_secs(3),
    cycle_rounds: 5,
    cycle_goal: Duration::from_millis(200),
};

const QUICK: Plan = Plan {
    rounds: 1,
    warm_up: Duration::from_millis(300),
    window: Duration::from_secs(1),
    cycle_rounds: 2,
    cycle_goal: Duration::from_millis(50),
};

// ----------------------------------------------------------------- nginx

/// nginx serving `200 ok` over plain HTTP/1.1 on a loopback port, with
/// keep-alive long enough that no connection closes during a run; killed
/// and its directory removed on drop.
struct Nginx {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn start() -> Result<Nginx, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let dir = std::env::temp_dir().join(format!("conpool-bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let d = dir.display();
        let conf = format!(
            r#"
daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{ return 200 "ok\n"; }}
    }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| format!("{}: {e}", conf_path.display()))?;
        let program = nginx_program();
        let child = Command::new(&program)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => format!("{program} is not installed"),
                _ => format!("{program} did not start: {e}"),
            })?;
        let nginx = Nginx { port, child, dir };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "nginx did not listen on 127.0.0.1:{port} within 10 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    fn uri(&self) -> hyper::Uri {
        format!("http://127.0.0.1:{}/", self.port)
            .parse()
            .expect("a valid URI")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx_program() -> String {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx".into()
    } else {
        "nginx".into()
    }
}

fn nginx_version() -> String {
    Command::new(nginx_program())
        .arg("-v")
        .output()
        .ok()
        .map(|out| {
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("nginx version: ")
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}

// ------------------------------------------------------------ HTTP/1.1

/// The HTTP clients compared.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Client1 {
    Conpool(usize),
    HyperUtil,
    Reqwest,
}

impl Client1 {
    /// The argument naming it in `protocols http REQUESTS CLIENT`.
    fn arg(self) -> String {
        match self {
            Client1::Conpool(n) => format!("conpool{n}"),
            Client1::HyperUtil => "hyper-util".into(),
            Client1::Reqwest => "reqwest".into(),
        }
    }

    const ALL: [Client1; 4] = [
        Client1::Conpool(64),
        Client1::Conpool(16),
        Client1::HyperUtil,
        Client1::Reqwest,
    ];

    fn name(self) -> String {
        match self {
            Client1::Conpool(n) => format!("conpool `Http1`, {n} connections"),
            Client1::HyperUtil => "hyper-util legacy `Client`".into(),
            Client1::Reqwest => "reqwest".into(),
        }
    }
}

/// A client ready to GET one URI, built fresh for each round.
enum Getter {
    Conpool {
        pool: Pool,
        http: ProtocolPool<Http1<Body>>,
        endpoint: Endpoint,
        host: String,
    },
    // Boxed: hyper-util's client is several times the size of the others.
    HyperUtil(Box<Client<HttpConnector, Body>>, hyper::Uri),
    Reqwest(reqwest::Client, String),
}

impl Getter {
    fn new(client: Client1, uri: &hyper::Uri) -> Getter {
        match client {
            Client1::Conpool(max) => {
                let config = Config::builder()
                    .max_connections_per_endpoint(max)
                    .build()
                    .expect("a valid config");
                let pool = Pool::new(config);
                let http = pool.protocol(Http1::<Body>::new());
                let endpoint = endpoint_of(uri).expect("an http URI");
                let host = uri.authority().expect("a host").to_string();
                Getter::Conpool {
                    pool,
                    http,
                    endpoint,
                    host,
                }
            }
            Client1::HyperUtil => {
                // TCP_NODELAY as conpool and reqwest set it.
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                let client = Client::builder(TokioExecutor::new()).build(connector);
                Getter::HyperUtil(Box::new(client), uri.clone())
            }
            Client1::Reqwest => {
                let client = reqwest::Client::builder()
                    .build()
                    .expect("a reqwest client");
                Getter::Reqwest(client, uri.to_string())
            }
        }
    }

    /// One GET, its body read to the end.
    async fn get(&self) -> Result<(), BoxError> {
        let body = match self {
            Getter::Conpool {
                http,
                endpoint,
                host,
                ..
            } => {
                let mut conn = http.get(endpoint).await?;
                let request = hyper::Request::get("/")
                    .header(hyper::header::HOST, host.as_str())
                    .body(Empty::new())?;
                let response = conn.send_request(request).await?;
                response.into_body().collect().await?.to_bytes()
            }
            Getter::HyperUtil(client, uri) => {
                let response = client.get(uri.clone()).await?;
                response.into_body().collect().await?.to_bytes()
            }
            Getter::Reqwest(client, url) => client.get(url).send().await?.bytes().await?,
        };
        if body.as_ref() != b"ok\n" {
            return Err(format!("unexpected body {body:?}").into());
        }
        Ok(())
    }

    async fn close(self) {
        if let Getter::Conpool { pool, .. } = self {
            pool.close().await;
        }
    }
}

/// One round of one client: requests per second in the window, and the
/// latency histogram (µs) of the requests that started and ended in it.
struct Round {
    per_sec: f64,
    hist: Histogram<u64>,
}

async fn http_round(client: Client1, uri: &hyper::Uri, plan: Plan) -> Round {
    let getter = Arc::new(Getter::new(client, uri));
    let begin = Instant::now() + plan.warm_up;
    let end = begin + plan.window;
    let handles: Vec<_> = (0..TASKS)
        .map(|_| {
            let getter = getter.clone();
            tokio::spawn(async move {
                let mut hist =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
                loop {
                    let start = Instant::now();
                    if start >= end {
                        break;
                    }
                    getter.get().await.expect("a GET to nginx");
                    let done = Instant::now();
                    if start >= begin && done <= end {
                        let micros = (done - start).as_micros() as u64;
                        hist.record(micros.max(1)).expect("within the bounds");
                    }
                }
                hist
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for handle in handles {
        hist.add(handle.await.expect("a request task panicked"))
            .expect("same bounds");
    }
    if let Ok(getter) = Arc::try_unwrap(getter) {
        getter.close().await;
    }
    Round {
        per_sec: hist.len() as f64 / plan.window.as_secs_f64(),
        hist,
    }
}

struct HttpResult {
    client: Client1,
    per_sec: Figure,
    p99_us: Figure,
    p50_us: Figure,
}

/// Every client, interleaved in each round.
fn http(plan: Plan, nginx: &Nginx) -> Vec<HttpResult> {
    let rt = conpool_bench::load::runtime(2);
    let uri = nginx.uri();
    let mut samples: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> =
        vec![Default::default(); Client1::ALL.len()];
    for round in 0..plan.rounds {
        for (i, &client) in Client1::ALL.iter().enumerate() {
            let r = rt.block_on(http_round(client, &uri, plan));
            eprintln!(
                "round {}: {}: {} requests/s, p99 {} µs",
                round + 1,
                client.name(),
                thousands(r.per_sec),
                r.hist.value_at_quantile(0.99)
            );
            samples[i].0.push(r.per_sec);
            samples[i].1.push(r.hist.value_at_quantile(0.99) as f64);
            samples[i].2.push(r.hist.value_at_quantile(0.50) as f64);
        }
    }
    Client1::ALL
        .iter()
        .zip(samples)
        .map(|(&client, (per_sec, p99, p50))| HttpResult {
            client,
            per_sec: Figure::of(per_sec),
            p99_us: Figure::of(p99),
            p50_us: Figure::of(p50),
        })
        .collect()
}

// ------------------------------------------------------- shared-mode cost

/// A shared protocol over in-memory streams: the connection is a handle
/// on the stream, every lease a clone of it; no I/O ever.
struct MemShared;

/// The connection [`MemShared`] makes; its handle is what shares clone.
struct MemConn {
    _stream: std::sync::Mutex<Stream>,
}

impl Protocol for MemShared {
    type Conn = Arc<MemConn>;
    type Error = std::io::Error;
    const SHARED: bool = true;

    fn name(&self) -> &'static str {
        "mem-shared"
    }

    async fn connect(
        &self,
        stream: Stream,
        _: &Endpoint,
    ) -> std::io::Result<Connected<Arc<MemConn>>> {
        Ok(Connected::new(Arc::new(MemConn {
            _stream: std::sync::Mutex::new(stream),
        })))
    }

    fn is_ready(&self, _: &mut Arc<MemConn>) -> bool {
        true
    }

    /// Room for every task on one connection, so that no share waits.
    fn max_shares(&self, _: &Arc<MemConn>) -> usize {
        1024
    }

    fn share(&self, conn: &Arc<MemConn>) -> Option<Arc<MemConn>> {
        Some(conn.clone())
    }
}

/// What a cycle is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cycle {
    /// `Arc::clone` + drop of one connection's handle: the floor.
    Arc,
    /// get + drop of a share through `ProtocolPool<MemShared>`.
    Share,
    /// The byte-stream pool's get + drop of an idle in-memory stream.
    Lease,
}

impl Cycle {
    const ALL: [Cycle; 3] = [Cycle::Arc, Cycle::Share, Cycle::Lease];

    fn arg(self) -> &'static str {
        match self {
            Cycle::Arc => "arc",
            Cycle::Share => "share",
            Cycle::Lease => "lease",
        }
    }

    fn named(arg: &str) -> Option<Cycle> {
        Cycle::ALL.into_iter().find(|c| c.arg() == arg)
    }

    fn name(self) -> &'static str {
        match self {
            Cycle::Arc => "`Arc::clone` + drop of the connection's handle (the floor)",
            Cycle::Share => "conpool: share get + drop (`ProtocolPool<MemShared>`)",
            Cycle::Lease => "conpool: byte-stream lease get + drop (`Pool::get`), for reference",
        }
    }
}

/// What the cycles run on, built once per runtime and cycle kind.
struct CycleSubject {
    pool: Pool,
    shares: ProtocolPool<MemShared>,
    endpoint: Endpoint,
    handle: Arc<MemConn>,
}

impl CycleSubject {
    async fn new() -> CycleSubject {
        let config = Config::builder()
            .max_connections_per_endpoint(1)
            .build()
            .expect("a valid config");
        let pool = Pool::with_dialer(config, MemDialer::new());
        let shares = pool.protocol(MemShared);
        let endpoint = Endpoint::new("mem.invalid", 1).expect("a valid endpoint");
        // One connection in each pool, made before the clock starts.
        let handle = shares.get(&endpoint).await.expect("a share").clone();
        drop(pool.get(&endpoint).await.expect("a lease"));
        CycleSubject {
            pool,
            shares,
            endpoint,
            handle,
        }
    }

    /// One get + drop; with `held`, the handle is held across one yield to
    /// the scheduler, so that the other tasks' shares overlap with it.
    async fn cycle(&self, kind: Cycle, held: bool) {
        match kind {
            Cycle::Arc => hold(black_box(Arc::clone(&self.handle)), held).await,
            Cycle::Share => {
                hold(
                    black_box(self.shares.get(&self.endpoint).await.expect("a share")),
                    held,
                )
                .await
            }
            Cycle::Lease => {
                hold(
                    black_box(self.pool.get(&self.endpoint).await.expect("a lease")),
                    held,
                )
                .await
            }
        }
    }
}

async fn hold<T>(handle: T, held: bool) {
    if held {
        tokio::task::yield_now().await;
    }
    drop(handle);
}

/// `tasks` tasks × `per_task` cycles; the wall time.
async fn cycles(subject: &Arc<CycleSubject>, kind: Cycle, shape: Shape, per_task: u64) -> Duration {
    conpool_bench::load::spawn_timed(shape.tasks, |_| {
        let s = subject.clone();
        async move {
            for _ in 0..per_task {
                s.cycle(kind, shape.held).await;
            }
        }
    })
    .await
}

/// Nanoseconds per cycle, the run sized to take about `goal` (grown from
/// small runs, which double as warm-up).
async fn ns_per_cycle(
    subject: &Arc<CycleSubject>,
    kind: Cycle,
    shape: Shape,
    goal: Duration,
) -> f64 {
    let tasks = shape.tasks;
    let mut per_task = 16u64;
    let mut took;
    loop {
        took = cycles(subject, kind, shape, per_task).await;
        if took >= goal / 8 {
            break;
        }
        per_task *= 4;
    }
    let per_cycle = took.as_secs_f64() / (per_task * tasks as u64) as f64;
    let per_task = ((goal.as_secs_f64() / per_cycle / tasks as f64).ceil() as u64).max(1);
    let took = cycles(subject, kind, shape, per_task).await;
    took.as_nanos() as f64 / (per_task * tasks as u64) as f64
}

/// The runtimes the cycles run on.
#[derive(Clone, Copy)]
enum Flavour {
    CurrentThread,
    TwoWorkers,
}

impl Flavour {
    fn runtime(self) -> tokio::runtime::Runtime {
        match self {
            Flavour::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime"),
            Flavour::TwoWorkers => conpool_bench::load::runtime(2),
        }
    }
}

/// How many tasks cycle at once, on what runtime, and whether each holds
/// its handle across a yield.
#[derive(Clone, Copy)]
struct Shape {
    flavour: Flavour,
    tasks: usize,
    held: bool,
    title: &'static str,
}

const fn shape(flavour: Flavour, tasks: usize, held: bool, title: &'static str) -> Shape {
    Shape {
        flavour,
        tasks,
        held,
        title,
    }
}

/// The shapes measured.
const SHAPES: [Shape; 6] = [
    shape(Flavour::CurrentThread, 1, false, "1 task, current-thread"),
    shape(
        Flavour::CurrentThread,
        TASKS,
        false,
        "64 tasks, current-thread",
    ),
    shape(
        Flavour::CurrentThread,
        TASKS,
        true,
        "64 tasks held across a yield, current-thread",
    ),
    shape(Flavour::TwoWorkers, 1, false, "1 task, 2 workers"),
    shape(Flavour::TwoWorkers, TASKS, false, "64 tasks, 2 workers"),
    shape(
        Flavour::TwoWorkers,
        TASKS,
        true,
        "64 tasks held across a yield, 2 workers",
    ),
];

/// ns per cycle: `[cycle kind][shape]`.
fn share_costs(plan: Plan) -> Vec<Vec<Figure>> {
    let mut samples = vec![vec![Vec::new(); SHAPES.len()]; Cycle::ALL.len()];
    for (s, &shape) in SHAPES.iter().enumerate() {
        let rt = shape.flavour.runtime();
        rt.block_on(async {
            let subject = Arc::new(CycleSubject::new().await);
            for _ in 0..plan.cycle_rounds {
                for (k, &kind) in Cycle::ALL.iter().enumerate() {
                    let ns = ns_per_cycle(&subject, kind, shape, plan.cycle_goal).await;
                    samples[k][s].push(ns);
                }
            }
            eprintln!("cycles, {}: done", shape.title);
            subject.pool.close().await;
        });
    }
    samples
        .into_iter()
        .map(|row| row.into_iter().map(Figure::of).collect())
        .collect()
}

/// The one-client mode, `protocols http REQUESTS CLIENT`: `REQUESTS` GETs
/// from 64 tasks to a fresh nginx, for callgrind or perf to look at one
/// client alone (nginx is a process of its own, which neither follows).
fn http_main(args: &[String]) -> Result<(), String> {
    let usage = || {
        let names: Vec<_> = Client1::ALL.iter().map(|c| c.arg()).collect();
        format!("protocols http REQUESTS {}", names.join("|"))
    };
    let requests: usize = args
        .first()
        .and_then(|n| n.parse().ok())
        .ok_or_else(usage)?;
    let client = args
        .get(1)
        .and_then(|a| Client1::ALL.into_iter().find(|c| &c.arg() == a))
        .ok_or_else(usage)?;
    let nginx = Nginx::start()?;
    let uri = nginx.uri();
    conpool_bench::load::runtime(2).block_on(async {
        let getter = Arc::new(Getter::new(client, &uri));
        let start = Instant::now();
        let handles: Vec<_> = (0..TASKS)
            .map(|task| {
                let getter = getter.clone();
                let mine = requests / TASKS + usize::from(task < requests % TASKS);
                tokio::spawn(async move {
                    for _ in 0..mine {
                        getter.get().await.expect("a GET to nginx");
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.expect("a request task panicked");
        }
        let took = start.elapsed();
        println!(
            "{}: {requests} requests in {took:?}, {} requests/s",
            client.name(),
            thousands(requests as f64 / took.as_secs_f64())
        );
        if let Ok(getter) = Arc::try_unwrap(getter) {
            getter.close().await;
        }
    });
    Ok(())
}

/// The cycle-only mode: `protocols KIND CYCLES [64|64held]`, for
/// callgrind; a current-thread runtime.
fn cycle_main(kind: Cycle, cycles_total: u64, shape: Shape) {
    let rt = shape.flavour.runtime();
    rt.block_on(async {
        let subject = Arc::new(CycleSubject::new().await);
        let per_task = cycles_total / shape.tasks as u64;
        let took = cycles(&subject, kind, shape, per_task).await;
        println!(
            "{}, {}: {:.0} ns per cycle",
            kind.arg(),
            shape.title,
            took.as_nanos() as f64 / cycles_total as f64
        );
        subject.pool.close().await;
    });
}

/// Instructions per cycle from callgrind, `[cycle kind][1 task, 64 tasks,
/// 64 held]`, or why not.
fn share_instructions() -> Result<Vec<[f64; 3]>, String> {
    let me = std::env::current_exe().map_err(|e| format!("no path to this binary: {e}"))?;
    Cycle::ALL
        .iter()
        .map(|kind| {
            let one = conpool_bench::external::instructions_per_cycle(
                &me,
                kind.arg(),
                None,
                (20_000, 220_000),
            )?;
            let many = conpool_bench::external::instructions_per_cycle(
                &me,
                kind.arg(),
                Some("64"),
                (19_200, 211_200),
            )?;
            let held = conpool_bench::external::instructions_per_cycle(
                &me,
                kind.arg(),
                Some("64held"),
                (19_200, 211_200),
            )?;
            Ok([one, many, held])
        })
        .collect()
}

/// Instructions per request in the client's process (nginx is a process
/// of its own, which callgrind does not follow), `[client]`, or why not:
/// two runs of 2,000 and 12,000 GETs, the difference over 10,000.
fn http_instructions() -> Result<Vec<f64>, String> {
    let me = std::env::current_exe().map_err(|e| format!("no path to this binary: {e}"))?;
    Client1::ALL
        .iter()
        .map(|client| {
            conpool_bench::external::instructions_per_cycle(
                &me,
                "http",
                Some(&client.arg()),
                (2_000, 12_000),
            )
        })
        .collect()
}

// ----------------------------------------------------------------- report

fn ns(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} µs", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0} ns")
    } else {
        format!("{v:.1} ns")
    }
}

fn us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

fn write_section(
    plan: Plan,
    http: &[HttpResult],
    http_instructions: &Result<Vec<f64>, String>,
    costs: &[Vec<Figure>],
    instructions: &Result<Vec<[f64; 3]>, String>,
    took: Duration,
) -> String {
    let root = report::workspace_root();
    let machine = report::Machine::detect();
    let (date, time) = report::utc_now();
    let mut w = String::new();
    let _ = writeln!(w, "{}", report::PROTOCOLS.begin);
    let _ = writeln!(w, "## 8. Protocol pools: HTTP/1.1 and shares\n");
    let _ = writeln!(
        w,
        "Written by `cargo run --release -p conpool-bench --features protocols --bin protocols -- --write` on {date} at {time} UTC (conpool revision {}); the run took {} s. {} CPUs ({}), {}, {}; the load generator, nginx and everything else on the machine share those cores, so the absolute figures are noisy and the ratios between figures of this one run are what counts.\n",
        report::conpool_revision(&root),
        took.as_secs(),
        machine.cpus,
        machine.cpu_model,
        machine.kernel,
        machine.rustc,
    );
    let mut versions = vec![("nginx".to_string(), nginx_version())];
    versions.extend(report::locked_versions(
        &root,
        &["hyper", "hyper-util", "reqwest", "hdrhistogram", "tokio"],
    ));
    let _ = writeln!(w, "| crate or program | version |\n| --- | --- |");
    for (name, version) in versions {
        let _ = writeln!(w, "| {name} | {version} |");
    }

    // HTTP.
    let _ = writeln!(
        w,
        "\n### HTTP/1.1 GETs to nginx, {TASKS} tasks\n\n{TASKS} tasks on a 2-worker runtime each send `GET /` over plain HTTP/1.1 to a local nginx (1 worker process, `keepalive_timeout 300s`, `return 200 \"ok\\n\"`) and read the body, one request after the other, for {} s after a {} s warm-up; each client is built fresh for each round and the clients take turns within a round ({} round{}; the median, min–max in brackets). Requests per second count the requests that started and ended in the window; the latency is each such request's, from asking the pool to the body's end, in an HDR histogram. \"÷\" is conpool's `Http1` with 64 connections over that client (above 1 means conpool is ahead in requests per second).\n",
        plan.window.as_secs_f64(),
        plan.warm_up.as_secs_f64(),
        plan.rounds,
        if plan.rounds == 1 { "" } else { "s" },
    );
    let base = &http[0];
    let _ = writeln!(
        w,
        "| client | requests/s | conpool ÷ | p50 | p99 | p99 ÷ conpool's | instructions per request (callgrind, the client's process) |\n| --- | --- | --- | --- | --- | --- | --- |"
    );
    for (i, r) in http.iter().enumerate() {
        let instructions = match http_instructions {
            Ok(counts) => thousands(counts[i]),
            Err(_) => "—".into(),
        };
        let _ = writeln!(
            w,
            "| {} | {} ({}–{}) | {:.2} | {} | {} ({}–{}) | {:.2} | {instructions} |",
            r.client.name(),
            thousands(r.per_sec.median),
            thousands(r.per_sec.min),
            thousands(r.per_sec.max),
            base.per_sec.median / r.per_sec.median,
            us(r.p50_us.median),
            us(r.p99_us.median),
            us(r.p99_us.min),
            us(r.p99_us.max),
            r.p99_us.median / base.p99_us.median,
        );
    }
    let of = |c: Client1| http.iter().find(|r| r.client == c).expect("measured");
    let (hyper_util, reqwest) = (of(Client1::HyperUtil), of(Client1::Reqwest));
    let ahead = base.per_sec.median > hyper_util.per_sec.median
        && base.per_sec.median > reqwest.per_sec.median;
    if let Err(why) = http_instructions {
        let _ = writeln!(w, "\nNo instruction counts: {why}.");
    } else {
        let _ = writeln!(
            w,
            "\nInstructions per request: `valgrind --tool=callgrind target/release/protocols http REQUESTS CLIENT` (CLIENT `conpool64`, `conpool16`, `hyper-util` or `reqwest`) at 2,000 and 12,000 GETs from 64 tasks, the difference over 10,000; user space of the client's process only (not the kernel's TCP work, not nginx)."
        );
    }
    let _ = writeln!(
        w,
        "\nTarget (issue 14): conpool ahead of both in requests/s — {:.2}× hyper-util's `Client`, {:.2}× reqwest: {}.\n",
        base.per_sec.median / hyper_util.per_sec.median,
        base.per_sec.median / reqwest.per_sec.median,
        report::verdict(ahead),
    );

    // Shares.
    let _ = writeln!(
        w,
        "### Shared-mode overhead: get + drop of a share, no I/O\n\nA shared protocol defined in the bench (`MemShared` in `crates/conpool-bench/src/bin/protocols.rs`: its connection an `Arc` handle on an in-memory stream, `tokio::io::duplex` behind `Stream::custom` and a custom `Dial`; `max_shares` 1024, so no share ever waits) and one connection made before the clock starts. Each task runs get + drop in a loop with nothing in between (\"held across a yield\": with one `yield_now` between, so that the tasks' shares overlap and the connection stays out for sharing, as it does under real concurrent requests); nanoseconds per cycle over all tasks (median of {} rounds, min–max in brackets). The floor is what a share must at least cost: `Arc::clone` + drop of the connection's handle (the protocol's `share`). The byte-stream pool's acquire + release of an idle in-memory stream, over the same config and dialer (one connection per endpoint: held across a yield, its 64 tasks queue for it, so that column is no like-for-like), is there for reference.\n",
        plan.cycle_rounds,
    );
    let _ = write!(w, "| cycle |");
    for shape in SHAPES {
        let _ = write!(w, " {} |", shape.title);
    }
    let _ = writeln!(w, "\n| --- |{}", " --- |".repeat(SHAPES.len()));
    for (k, kind) in Cycle::ALL.iter().enumerate() {
        let _ = write!(w, "| {} |", kind.name());
        for f in &costs[k] {
            let _ = write!(w, " {} ({}–{}) |", ns(f.median), ns(f.min), ns(f.max));
        }
        let _ = writeln!(w);
    }
    let (floor, share, lease) = (&costs[0], &costs[1], &costs[2]);
    let _ = write!(w, "| share ÷ floor |");
    for (share, floor) in share.iter().zip(floor) {
        let _ = write!(w, " {:.0}× |", share.median / floor.median);
    }
    let _ = writeln!(w);
    // Held across a yield, 64 leases of one stream queue: no like for like.
    let _ = write!(w, "| share ÷ byte-stream lease |");
    for ((share, lease), shape) in share.iter().zip(lease).zip(SHAPES) {
        if shape.held {
            let _ = write!(w, " — |");
        } else {
            let _ = write!(w, " {:.2} |", share.median / lease.median);
        }
    }
    let _ = writeln!(w);
    match instructions {
        Ok(counts) => {
            let _ = writeln!(
                w,
                "\nInstructions per cycle under `valgrind --tool=callgrind` (`protocols share|arc|lease CYCLES [64|64held]`, a current-thread runtime; two runs, 20,000 and 220,000 cycles with one task, 19,200 and 211,200 with 64, and the difference in instructions over the difference in cycles, as section 3 does):\n\n| cycle | 1 task | 64 tasks | 64 tasks held across a yield |\n| --- | --- | --- | --- |"
            );
            for (kind, [one, many, held]) in Cycle::ALL.iter().zip(counts) {
                let _ = writeln!(w, "| {} | {one:.0} | {many:.0} | {held:.0} |", kind.name());
            }
        }
        Err(why) => {
            let _ = writeln!(w, "\nNo instruction counts: {why}.");
        }
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "To reproduce: `cargo run --release -p conpool-bench --features protocols --bin protocols` (about {} s; `--quick` for one short round; `--write` to put the section here). One cycle under callgrind: `valgrind --tool=callgrind target/release/protocols share 220000`.\n",
        took.as_secs().max(1)
    );
    let _ = writeln!(w, "{}", report::PROTOCOLS.end);
    w
}

/// Puts `section` (markers included) in place of the protocol pools'
/// section of BENCHMARKS.md, leaving the notes written by hand after it.
fn write_into(path: &Path, section: &str) -> Result<(), String> {
    let md = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let out = report::PROTOCOLS.with_section(&md, section);
    std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(kind) = args.first().and_then(|a| Cycle::named(a)) {
        let total: u64 = args
            .get(1)
            .map_or(Ok(200_000), |n| n.parse())
            .expect("a number of cycles");
        let shape = match args.get(2).map(String::as_str) {
            None => SHAPES[0],
            Some("64") => SHAPES[1],
            Some("64held") => SHAPES[2],
            Some(other) => {
                eprintln!("the shape is 64, 64held or nothing, not {other:?}");
                std::process::exit(2);
            }
        };
        cycle_main(kind, total, shape);
        return;
    }
    if args.first().map(String::as_str) == Some("http") {
        if let Err(why) = http_main(&args[1..]) {
            eprintln!("protocols: {why}");
            std::process::exit(2);
        }
        return;
    }
    let mut plan = FULL;
    let mut write = false;
    for arg in &args {
        match arg.as_str() {
            "--quick" => plan = QUICK,
            "--write" => write = true,
            other => {
                eprintln!(
                    "protocols [--quick] [--write], or protocols share|arc|lease CYCLES [64|64held]: not {other:?}"
                );
                std::process::exit(2);
            }
        }
    }
    let start = Instant::now();
    let nginx = match Nginx::start() {
        Ok(nginx) => nginx,
        Err(why) => {
            eprintln!("protocols: {why}");
            std::process::exit(1);
        }
    };
    let http = http(plan, &nginx);
    drop(nginx);
    let costs = share_costs(plan);
    let http_counts = http_instructions();
    let instructions = share_instructions();
    let section = write_section(
        plan,
        &http,
        &http_counts,
        &costs,
        &instructions,
        start.elapsed(),
    );
    print!("{section}");
    if write {
        let path = report::workspace_root().join("BENCHMARKS.md");
        if let Err(why) = write_into(&path, &section) {
            eprintln!("protocols: {why}");
            std::process::exit(1);
        }
    }
}
