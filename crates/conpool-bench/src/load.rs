//! The load generators: `tasks` tokio tasks, each doing a fixed number of
//! operations, timed from the first spawn to the last join. Criterion's
//! `iter_custom` and the `compare` binary both drive these.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::{PAYLOAD, PeerStream, Target, request, round_trip};
use crate::subjects::Subject;

/// Tasks in the contended shapes: the overhead loops' "64 tasks" and the
/// pooled echo's callers.
pub const TASKS: usize = 64;

/// Connections those tasks share.
pub const CONNS: usize = 16;

/// Spawns `op(i)` for each of `tasks` tasks and waits for them all;
/// returns the wall time.
pub async fn spawn_timed<F, Fut>(tasks: usize, op: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks).map(|i| tokio::spawn(op(i))).collect();
    for handle in handles {
        handle.await.expect("a benchmark task panicked");
    }
    start.elapsed()
}

/// Acquire + release with no I/O: `tasks` tasks × `per_task` cycles.
pub async fn cycles<S: Subject>(subject: &Arc<S>, tasks: usize, per_task: u64) -> Duration {
    spawn_timed(tasks, |_| {
        let s = subject.clone();
        async move {
            for _ in 0..per_task {
                s.cycle().await;
            }
        }
    })
    .await
}

/// Acquire, yield to the scheduler once while holding the connection,
/// release: with 64 tasks over 16 connections this keeps every connection
/// busy, so callers queue and releases hand over to waiters.
pub async fn held_cycles<S: Subject>(subject: &Arc<S>, tasks: usize, per_task: u64) -> Duration {
    spawn_timed(tasks, |_| {
        let s = subject.clone();
        async move {
            for _ in 0..per_task {
                s.held_cycle().await;
            }
        }
    })
    .await
}

/// Pooled echo: `tasks` tasks × `per_task` (acquire, round trip, release).
pub async fn exchanges<S: Subject>(subject: &Arc<S>, tasks: usize, per_task: u64) -> Duration {
    spawn_timed(tasks, |_| {
        let s = subject.clone();
        async move {
            let req = request();
            for _ in 0..per_task {
                s.exchange(&req).await;
            }
        }
    })
    .await
}

/// A persistent connection per task, never shared: the physical limit for
/// pooled I/O. The connections are made before the clock starts and are
/// reused from run to run.
pub struct Dedicated {
    streams: std::sync::Mutex<Vec<PeerStream>>,
}

impl Dedicated {
    /// `tasks` connections to `target`.
    pub async fn connect(target: &Target, tasks: usize) -> Dedicated {
        let mut streams = Vec::with_capacity(tasks);
        for _ in 0..tasks {
            streams.push(target.connect().await.expect("dial the echo server"));
        }
        Dedicated {
            streams: std::sync::Mutex::new(streams),
        }
    }

    /// Each task runs `per_task` round trips on its own connection.
    pub async fn run(&self, per_task: u64) -> Duration {
        let streams = std::mem::take(&mut *self.streams.lock().expect("not poisoned"));
        let start = Instant::now();
        let handles: Vec<_> = streams
            .into_iter()
            .map(|mut stream| {
                tokio::spawn(async move {
                    let req = request();
                    for _ in 0..per_task {
                        round_trip(&mut stream, &req).await.expect("round trip");
                    }
                    stream
                })
            })
            .collect();
        let mut back = Vec::with_capacity(handles.len());
        for handle in handles {
            back.push(handle.await.expect("a benchmark task panicked"));
        }
        let elapsed = start.elapsed();
        *self.streams.lock().expect("not poisoned") = back;
        elapsed
    }
}

/// A new connection (and for TLS a full handshake) per request, closed
/// after it: the floor that pooling saves you from.
pub async fn per_request(target: &Target, tasks: usize, per_task: u64) -> Duration {
    let target = Arc::new(target.clone());
    spawn_timed(tasks, |_| {
        let target = target.clone();
        async move {
            let req: [u8; PAYLOAD] = request();
            for _ in 0..per_task {
                let mut stream = target.connect().await.expect("dial the echo server");
                round_trip(&mut stream, &req).await.expect("round trip");
            }
        }
    })
    .await
}

/// A multi-threaded runtime with `workers` workers, as every measurement
/// uses (2 on this machine's 2 cores).
pub fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
