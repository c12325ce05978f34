//! Overhead: acquire + release of an idle connection, no I/O, for conpool
//! and every peer, and for conpool with its liveness check off and asking
//! the kernel at every checkout: 1 task over 1 connection, and 64 tasks
//! over 16 connections on a 2-worker runtime.
//!
//! ```text
//! cargo bench -p conpool-bench --bench overhead
//! ```
//!
//! The `compare` binary measures the same loops side by side and writes
//! BENCHMARKS.md; this bench gives criterion's statistics for each.

use std::time::Duration;

use conpool_bench::load::{self, CONNS, TASKS};
use conpool_bench::net::{Target, start_echo};
use conpool_bench::subjects::Kind;
use conpool_bench::with_subject;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn overhead(c: &mut Criterion) {
    let rt = load::runtime(2);
    let target = rt.block_on(async { Target::tcp(start_echo(None).await) });
    let mut group = c.benchmark_group("overhead");
    group.measurement_time(Duration::from_secs(3));
    let liveness = Kind::LIVENESS
        .into_iter()
        .filter(|k| !Kind::ALL.contains(k));
    for kind in Kind::ALL.into_iter().chain(liveness) {
        rt.block_on(async {
            with_subject!(kind, &target, 1, |s| {
                // Criterion drives the runtime itself: step out of it.
                tokio::task::block_in_place(|| {
                    group.bench_function(BenchmarkId::new("1 task, 1 conn", kind.name()), |b| {
                        b.to_async(&rt)
                            .iter_custom(|iters| load::cycles(&s, 1, iters))
                    })
                });
            })
        });
        rt.block_on(async {
            with_subject!(kind, &target, CONNS, |s| {
                tokio::task::block_in_place(|| {
                    group.bench_function(BenchmarkId::new("64 tasks, 16 conns", kind.name()), |b| {
                        // One iteration is one cycle; each task does its share.
                        b.to_async(&rt).iter_custom(|iters| {
                            load::cycles(&s, TASKS, iters.div_ceil(TASKS as u64))
                        })
                    })
                });
            })
        });
    }
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
