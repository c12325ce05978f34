//! Scale: one task cycling acquire + release over 1, 100, 10,000 and
//! 100,000 endpoints, each holding an idle in-memory connection, against
//! pingora-pool with as many keys, and the bare map lookup underneath.
//! Memory per idle connection and the time to evict or close 100,000 idle
//! connections are one-shot figures, so they are in the `compare` report
//! only.
//!
//! ```text
//! cargo bench -p conpool-bench --bench scale
//! ```

use std::time::Duration;

use conpool_bench::load;
use conpool_bench::scale::{self, KEY_COUNTS, MapFloor, PingoraKeys};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn scale(c: &mut Criterion) {
    let rt = load::runtime(2);
    let mut group = c.benchmark_group("scale");
    group.measurement_time(Duration::from_secs(3));
    for n in KEY_COUNTS {
        let endpoints = scale::endpoints(n);
        let pool = rt.block_on(scale::conpool_populated(&endpoints, 1));
        group.bench_with_input(BenchmarkId::new("conpool", n), &n, |b, _| {
            b.to_async(&rt)
                .iter_custom(|iters| scale::conpool_walk(&pool, &endpoints, iters))
        });
        drop(pool);
        let pingora = PingoraKeys::populated(endpoints.clone(), 1);
        group.bench_with_input(BenchmarkId::new("pingora-pool", n), &n, |b, _| {
            b.iter_custom(|iters| pingora.walk(iters))
        });
        drop(pingora);
        let floor = MapFloor::new(endpoints);
        group.bench_with_input(BenchmarkId::new("map lookup", n), &n, |b, _| {
            b.iter_custom(|iters| floor.walk(iters))
        });
        group.bench_with_input(
            BenchmarkId::new("lookup + state + record", n),
            &n,
            |b, _| b.iter_custom(|iters| floor.walk_chain(iters)),
        );
        group.bench_with_input(
            BenchmarkId::new("lookup + state + record, serial", n),
            &n,
            |b, _| b.iter_custom(|iters| floor.walk_chain_serial(iters)),
        );
    }
    group.finish();
}

criterion_group!(benches, scale);
criterion_main!(benches);
