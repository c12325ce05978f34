//! The memory figures alone: bytes of bookkeeping per idle connection,
//! conpool against pingora-pool, for the three layouts `compare` reports,
//! without the rest of the comparison (seconds, not minutes).
//!
//! ```text
//! cargo run --release -p conpool-bench --example memory
//! ```
//!
//! The counting allocator is installed here, so the figures are the same
//! ones `compare` writes to BENCHMARKS.md: everything the pool allocates
//! and keeps while `endpoints × per endpoint` connections sit idle, the
//! streams themselves excluded (made before counting starts).

use conpool_bench::scale;

#[global_allocator]
static ALLOC: conpool_bench::alloc::Counting = conpool_bench::alloc::Counting;

fn main() {
    assert!(
        conpool_bench::alloc::installed(),
        "the counting allocator is not installed"
    );
    // The runtime `compare` measures on, so the figures match its own.
    let rt = conpool_bench::load::runtime(2);
    rt.block_on(async {
        for (endpoints, per_endpoint) in [(100_000, 1), (10_000, 10), (1, 1_000)] {
            let conpool = scale::conpool_bytes_per_idle(endpoints, per_endpoint).await;
            let pingora = scale::pingora_bytes_per_idle(endpoints, per_endpoint);
            println!(
                "{endpoints:>7} endpoints × {per_endpoint:>5} idle: \
                 conpool {conpool:>4.0} B, pingora-pool {pingora:>4.0} B per idle connection"
            );
        }
    });
}
