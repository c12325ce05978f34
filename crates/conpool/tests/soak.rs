//! The soak test: thousands of tasks on several endpoints for a minute
//! (`CONPOOL_SOAK_SECS`, default 60) while a fault-injecting proxy in front
//! of each server resets a random fraction of the open connections every
//! few hundred milliseconds.
//!
//! A reset can fail a request in two legitimate ways: it lands while the
//! lease is held, or it races the checkout (it goes out just as the pool
//! checks or hands over the connection). What must never happen is a
//! *stale* failure: a caller handed a connection whose reset had reached
//! this host when the caller asked for a connection.
//!
//! # How a failure is classified, exactly
//!
//! The pool runs at its default config: every checkout is checked, through
//! the runtime's readiness flag, and through the kernel for connections
//! idle (or last leased) past `liveness_peek_after` and for connections
//! handed straight to a queued caller. The reset driver:
//!
//! 1. has each proxy reset a seeded random pick of its connections and
//!    waits until every RST is out ([`FaultProxy::reset_random_confirmed`],
//!    which names the client port of each, and stamps when it went out);
//! 2. writes one byte on a sentinel socket pair of the *pool's* runtime
//!    and waits until that runtime's I/O driver reports it readable: the
//!    driver has then collected every event that happened before the write,
//!    the resets included;
//! 3. stamps those resets `visible` at that moment.
//!
//! Every failed round trip is matched, by the client port, to the reset of
//! its connection. It is *stale* if that reset was visible to the runtime
//! before the caller called `get`, *kernel-only* if it had gone out (and so
//! reached this host, over loopback) before the `get` but the runtime had
//! not seen it yet; a failure with no matching reset is *unexplained*. All
//! three must be zero.
//!
//! At the end, with the load and the resets stopped, a last sweep checks
//! out every idle connection of each endpoint at once (each must make a
//! round trip), and then: no get failed, the books balance per endpoint
//! (created − closed = idle, closes by reason add up, gets = created +
//! reused), and the process holds exactly as many sockets to each proxy as
//! the pool says it has idle (counted in `/proc/self/fd`).

mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conpool::{CloseReason, Config, Endpoint, Pool, Stats};
use support::proxy::{FaultProxy, ResetRecord, SplitMix64};
use support::{EchoServer, TlsCert, assert_books_balance, round_trip};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// Tasks in all, spread over the endpoints. Half of them are steady: each
/// pauses a random while between requests. The other half come in waves:
/// all at once, so that every endpoint runs at its limit with callers
/// queued, and every idle connection (whatever the proxy did to it since
/// the last wave) is checked out again.
const TASKS: usize = 2_000;
/// A steady task's pause between requests, in milliseconds (uniform).
/// With the waves this is a few thousand requests a second: enough to keep
/// every endpoint busy without taking over a small shared machine.
const THINK_MS: (u64, u64) = (200, 1_000);
/// The pause between two waves, in milliseconds (uniform).
const WAVE_EVERY_MS: (u64, u64) = (300, 900);
/// How far a wave task's request lags the wave, in milliseconds (uniform).
const WAVE_JITTER_MS: (u64, u64) = (0, 20);
/// The pause between two bursts of resets, in milliseconds (uniform).
const BURST_EVERY_MS: (u64, u64) = (100, 300);
/// The share of each proxy's open connections reset per burst.
const BURST_FRACTION: f64 = 0.2;
/// Longest request message, in bytes.
const MAX_MESSAGE: u64 = 4_096;
/// A guard against a request that never ends (it would be a bug): not a
/// timing threshold, one minute.
const HANG_GUARD: Duration = Duration::from_secs(60);

#[test]
fn soak_thousands_of_tasks_while_the_proxies_reset_random_connections() {
    let secs: u64 = std::env::var("CONPOOL_SOAK_SECS")
        .map(|s| s.parse().expect("CONPOOL_SOAK_SECS: a number of seconds"))
        .unwrap_or(60);
    let seed: u64 = std::env::var("CONPOOL_SOAK_SEED")
        .map(|s| s.parse().expect("CONPOOL_SOAK_SEED: a number"))
        .unwrap_or(0x5eed);

    // Servers and proxies on a runtime of their own, so that the pool's
    // runtime (and its I/O driver) holds only the pool and its callers.
    let servers_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("soak-servers")
        .enable_all()
        .build()
        .unwrap();
    let cert = TlsCert::localhost();
    let (servers, proxies) = servers_rt.block_on(async {
        let servers = vec![
            EchoServer::start().await,
            EchoServer::start().await,
            EchoServer::start_tls(&cert).await,
        ];
        let mut proxies = Vec::new();
        for server in &servers {
            proxies.push(FaultProxy::start(server.addr).await);
        }
        (servers, proxies)
    });
    let endpoints = vec![
        proxies[0].endpoint(),
        proxies[1].endpoint(),
        Endpoint::tls("localhost", proxies[2].port()).unwrap(),
    ];
    let proxies = Arc::new(proxies);

    let pool_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("soak-pool")
        .enable_all()
        .build()
        .unwrap();
    pool_rt.block_on(soak(
        Duration::from_secs(secs),
        seed,
        &cert,
        &endpoints,
        &proxies,
    ));
    drop(pool_rt);
    drop(proxies);
    drop(servers);
}

/// What a task saw when a round trip failed.
struct Failure {
    endpoint: usize,
    conn: u64,
    port: u16,
    reused: bool,
    /// When the caller called `get`.
    asked: Instant,
    /// When `get` returned.
    got: Instant,
    failed: Instant,
    error: String,
    /// No reply within [`HANG_GUARD`]: a bug, whatever the proxy did.
    hung: bool,
}

/// A reset, and when the pool's runtime could first see it.
struct Reset {
    endpoint: usize,
    record: ResetRecord,
    visible: Instant,
}

#[derive(Default)]
struct Tally {
    ok: Vec<AtomicU64>,
    failures: Mutex<Vec<Failure>>,
    get_errors: Mutex<Vec<String>>,
    /// Each connection's first lease (the one that dialed it): when its
    /// caller asked. The proxy accepted it later.
    born: Mutex<HashMap<u64, Instant>>,
}

#[derive(Debug, Default)]
struct Kinds {
    /// The reset went out while the lease was held.
    during_lease: u64,
    /// The reset went out after the caller asked, before the lease began:
    /// it raced the checkout.
    raced_checkout: u64,
    /// The reset had reached this host before the caller asked, but the
    /// pool's runtime had not collected its event yet: only asking the
    /// kernel could have seen it (see `liveness_peek_after`).
    kernel_only: Vec<String>,
    stale: Vec<String>,
    unexplained: Vec<String>,
}

async fn soak(
    duration: Duration,
    seed: u64,
    cert: &TlsCert,
    endpoints: &[Endpoint],
    proxies: &Arc<Vec<FaultProxy>>,
) {
    let pool = Pool::new(
        Config::builder()
            .tls_config(cert.client_config())
            .max_connections_per_endpoint(16)
            // Otherwise the default config: every checkout is checked.
            .build()
            .unwrap(),
    );
    let tally = Arc::new(Tally {
        ok: endpoints.iter().map(|_| AtomicU64::new(0)).collect(),
        ..Tally::default()
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (wave_tx, wave_rx) = watch::channel(0u64);

    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let which = t % endpoints.len();
            tokio::spawn(caller(
                Caller {
                    pool: pool.clone(),
                    ep: endpoints[which].clone(),
                    which,
                    seed: seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    tally: tally.clone(),
                    waves: (t / endpoints.len() % 2 == 1).then(|| wave_rx.clone()),
                },
                stop_rx.clone(),
            ))
        })
        .collect();
    let waves = tokio::spawn(wave_maker(wave_tx, seed.rotate_left(17), stop_rx.clone()));
    let driver = tokio::spawn(reset_driver(proxies.clone(), seed, stop_rx.clone()));

    tokio::time::sleep(duration).await;
    // The load stops first, then the driver (so every reset that may have
    // failed a request is stamped).
    stop_tx.send(true).unwrap();
    for task in tasks {
        task.await.expect("a caller task panicked");
    }
    waves.await.unwrap();
    let resets = driver.await.expect("the reset driver panicked");
    let ran_for = started.elapsed();
    // Every reset is visible now: every idle connection must be found dead
    // or work.
    let mut swept = Vec::new();
    for ep in endpoints {
        swept.push(sweep(&pool, ep).await);
    }

    let failures = std::mem::take(&mut *tally.failures.lock().unwrap());
    let born = std::mem::take(&mut *tally.born.lock().unwrap());
    let kinds = classify(&failures, &resets, &born);
    let get_errors = tally.get_errors.lock().unwrap().clone();

    let mut summary = String::new();
    let requests: u64 = tally.ok.iter().map(|n| n.load(Ordering::Relaxed)).sum();
    writeln!(
        summary,
        "soak: {TASKS} tasks on {} endpoints for {ran_for:.1?} (seed {seed}): \
         {requests} round trips ok, {} failed ({} during the lease, {} racing the checkout, \
         {} reset before the get but seen only by the kernel then, {} stale, {} unexplained), \
         {} gets failed; {} connections reset by the proxies",
        endpoints.len(),
        failures.len(),
        kinds.during_lease,
        kinds.raced_checkout,
        kinds.kernel_only.len(),
        kinds.stale.len(),
        kinds.unexplained.len(),
        get_errors.len(),
        resets.len(),
    )
    .unwrap();

    let mut checks = Vec::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let s = pool.stats(ep);
        let failed = failures.iter().filter(|f| f.endpoint == i).count() as u64;
        let ok = tally.ok[i].load(Ordering::Relaxed);
        writeln!(
            summary,
            "  {ep}: {}; the last sweep checked out {}",
            describe(&s, ok, failed),
            swept[i]
        )
        .unwrap();
        checks.push((i, ep, s, ok + swept[i] as u64, failed));
    }
    // Report before asserting, so that a failure comes with the figures;
    // also to a file, for a run whose output is captured.
    eprintln!("{summary}");
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak-summary.txt");
    let _ = std::fs::write(&file, &summary);

    assert!(
        kinds.stale.is_empty(),
        "{} failures on connections whose reset the pool could see before the get:\n{}",
        kinds.stale.len(),
        kinds.stale.join("\n")
    );
    assert!(
        kinds.kernel_only.is_empty(),
        "{} failures on connections reset before the get, which the runtime had not seen \
         yet and the kernel had:\n{}",
        kinds.kernel_only.len(),
        kinds.kernel_only.join("\n")
    );
    assert!(
        kinds.unexplained.is_empty(),
        "{} failures no reset explains:\n{}",
        kinds.unexplained.len(),
        kinds.unexplained.join("\n")
    );
    let hung = failures.iter().filter(|f| f.hung).count();
    assert_eq!(
        hung, 0,
        "{hung} requests got no reply within {HANG_GUARD:?}"
    );
    assert!(get_errors.is_empty(), "gets failed: {get_errors:#?}");
    assert!(requests > 0 && !resets.is_empty(), "the soak did nothing");
    for (i, ep, s, ok, failed) in checks {
        let s2 = assert_books_balance(&pool, ep, proxies[i].port());
        assert_eq!(s2.active, 0, "{ep}: {s2:?}");
        let by_reason: u64 = CloseReason::ALL.iter().map(|r| s.closed_for(*r)).sum();
        assert_eq!(by_reason, s.total_closed, "{ep}: closes by reason: {s:?}");
        assert_eq!(
            s.total_created + s.total_reused,
            ok + failed,
            "{ep}: every successful get is one created or one reused: {s:?}"
        );
        // A failed round trip closes its connection for an I/O error or
        // (an end of stream) as closed by the peer, which the probe also
        // counts.
        let io = s.closed_for(CloseReason::IoError);
        assert!(
            io <= failed && failed <= io + s.closed_for(CloseReason::PeerClosed),
            "{ep}: {failed} failed round trips against {s:?}"
        );
    }
    pool.close().await;
}

/// One caller task's part.
struct Caller {
    pool: Pool,
    ep: Endpoint,
    which: usize,
    seed: u64,
    tally: Arc<Tally>,
    /// For a wave task, the wave counter.
    waves: Option<watch::Receiver<u64>>,
}

/// One task: wait (a random pause, or the next wave), get, round trip,
/// release; until told to stop.
async fn caller(me: Caller, mut stop: watch::Receiver<bool>) {
    let Caller {
        pool,
        ep,
        which,
        seed,
        tally,
        mut waves,
    } = me;
    let mut rng = SplitMix64(seed);
    for n in 0u64.. {
        let pause = match &mut waves {
            None => Duration::from_millis(rng.between(THINK_MS)),
            Some(waves) => {
                tokio::select! {
                    _ = waves.changed() => {}
                    _ = stop.changed() => {}
                }
                Duration::from_millis(rng.between(WAVE_JITTER_MS))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let asked = Instant::now();
        let mut conn = match pool.get(&ep).await {
            Ok(conn) => conn,
            Err(e) => {
                tally.get_errors.lock().unwrap().push(format!("{ep}: {e}"));
                continue;
            }
        };
        let got = Instant::now();
        let (id, reused) = (conn.id(), conn.is_reused());
        let port = conn.local_addr().expect("a TCP or TLS stream").port();
        if !reused {
            tally.born.lock().unwrap().insert(id, asked);
        }
        // A message only this request sends, of a random length: a reply
        // that is not its own echo fails the task.
        let mut msg = format!("{seed:x}/{n}:").into_bytes();
        msg.resize(msg.len() + rng.between((0, MAX_MESSAGE)) as usize, b'.');
        let (error, hung) =
            match tokio::time::timeout(HANG_GUARD, round_trip(&mut conn, &msg)).await {
                Ok(Ok(())) => {
                    tally.ok[which].fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok(Err(e)) => (e.to_string(), false),
                Err(_) => (format!("no reply within {HANG_GUARD:?}"), true),
            };
        tally.failures.lock().unwrap().push(Failure {
            endpoint: which,
            conn: id,
            port,
            reused,
            asked,
            got,
            failed: Instant::now(),
            error,
            hung,
        });
    }
}

/// Starts a wave of requests every few hundred milliseconds.
async fn wave_maker(waves: watch::Sender<u64>, seed: u64, mut stop: watch::Receiver<bool>) {
    let mut rng = SplitMix64(seed);
    loop {
        let pause = Duration::from_millis(rng.between(WAVE_EVERY_MS));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        waves.send_modify(|n| *n += 1);
    }
}

/// Checks out as many connections at once as `ep` has idle, so that every
/// idle one is probed, and makes a round trip on each; returns how many.
async fn sweep(pool: &Pool, ep: &Endpoint) -> usize {
    let n = pool.stats(ep).idle;
    let mut held = Vec::new();
    for i in 0..n {
        let mut conn = pool.get(ep).await.expect("the last sweep's get");
        round_trip(&mut conn, format!("sweep {i}").as_bytes())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{ep}: the last sweep was handed a dead connection ({}reused): {e}",
                    if conn.is_reused() { "" } else { "not " }
                )
            });
        held.push(conn);
    }
    n
}

/// Resets a random fraction of every proxy's connections every few hundred
/// milliseconds, until told to stop; returns every reset, stamped with when
/// the pool's runtime could first see it.
async fn reset_driver(
    proxies: Arc<Vec<FaultProxy>>,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) -> Vec<Reset> {
    let mut rng = SplitMix64(seed);
    let mut sentinel = Sentinel::new().await;
    let mut resets = Vec::new();
    loop {
        let pause = Duration::from_millis(rng.between(BURST_EVERY_MS));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return resets;
        }
        let mut burst = Vec::new();
        for (i, proxy) in proxies.iter().enumerate() {
            for record in proxy
                .reset_random_confirmed(rng.next(), BURST_FRACTION)
                .await
            {
                burst.push((i, record));
            }
        }
        sentinel.driver_turned().await;
        let visible = Instant::now();
        resets.extend(burst.into_iter().map(|(endpoint, record)| Reset {
            endpoint,
            record,
            visible,
        }));
    }
}

fn classify(failures: &[Failure], resets: &[Reset], born: &HashMap<u64, Instant>) -> Kinds {
    let mut kinds = Kinds::default();
    for f in failures {
        // The reset of this very connection: same proxy, same client port,
        // accepted after the connection's first caller asked and before the
        // failure. A port is held by one connection at a time, so at most
        // one reset matches; take the latest to be safe.
        let since = born.get(&f.conn).copied();
        let reset = resets
            .iter()
            .filter(|r| {
                r.endpoint == f.endpoint
                    && r.record.peer.port() == f.port
                    && since.is_none_or(|t| r.record.accepted_at >= t)
                    && r.record.accepted_at <= f.failed
            })
            .max_by_key(|r| r.record.accepted_at);
        let describe = || {
            format!(
                "  endpoint {} connection {} (port {}, {}): asked {:?} before the failure, \
                 got it {:?} before; {}; matching reset: {}",
                f.endpoint,
                f.conn,
                f.port,
                if f.reused { "reused" } else { "fresh" },
                f.failed - f.asked,
                f.failed - f.got,
                f.error,
                reset.map_or("none".to_string(), |r| format!(
                    "sent {:?} before the failure, visible {:?} {} the get",
                    f.failed.saturating_duration_since(r.record.reset_at),
                    r.visible.max(f.asked) - r.visible.min(f.asked),
                    if r.visible < f.asked {
                        "before"
                    } else {
                        "after"
                    },
                )),
            )
        };
        match reset {
            None => kinds.unexplained.push(describe()),
            Some(r) if r.visible < f.asked => kinds.stale.push(describe()),
            Some(r) if r.record.reset_at >= f.got => kinds.during_lease += 1,
            Some(r) if r.record.reset_at < f.asked => kinds.kernel_only.push(describe()),
            Some(_) => kinds.raced_checkout += 1,
        }
    }
    kinds
}

fn describe(s: &Stats, ok: u64, failed: u64) -> String {
    let mut closed = String::new();
    for reason in CloseReason::ALL {
        let n = s.closed_for(reason);
        if n > 0 {
            let _ = write!(closed, " {reason} {n},");
        }
    }
    format!(
        "{ok} ok, {failed} failed; connections created {}, reused {}, closed {} ({}), \
         idle at the end {}, errors {}",
        s.total_created,
        s.total_reused,
        s.total_closed,
        closed.trim().trim_end_matches(','),
        s.idle,
        s.errors
    )
}

/// A connected socket pair on the pool's runtime, used to tell when that
/// runtime's I/O driver has collected the events that happened before a
/// given moment.
struct Sentinel {
    tx: TcpStream,
    rx: TcpStream,
}

impl Sentinel {
    async fn new() -> Sentinel {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tx = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (rx, _) = listener.accept().await.unwrap();
        Sentinel { tx, rx }
    }

    /// Returns once the I/O driver has reported a byte written now: it has
    /// then also collected every readiness event raised before the write
    /// (epoll hands events out in the order they were raised).
    async fn driver_turned(&mut self) {
        let mut buf = [0u8; 64];
        // Clear the readiness left from the last turn: tokio clears it only
        // on a read that would block.
        loop {
            match self.rx.try_read(&mut buf) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                other => panic!("the sentinel socket: {other:?}"),
            }
        }
        self.tx.write_all(&[1]).await.unwrap();
        self.rx.readable().await.unwrap();
    }
}
