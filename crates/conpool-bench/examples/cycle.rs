//! The loop to profile: one task cycling acquire + release of an idle
//! connection on one pool, with no I/O, for `valgrind --tool=callgrind`.
//!
//! ```text
//! cargo build --release -p conpool-bench --example cycle
//! valgrind --tool=callgrind target/release/examples/cycle conpool 200000
//! ```
//!
//! The first argument names the pool (`conpool`, `conpool (handle)`, `bb8`,
//! `deadpool`, `mobc`, `pingora-pool`, `pingora-pool+watcher`, or conpool
//! with another liveness setting: `conpool (no liveness check)`,
//! `conpool (readiness below 1 ms)`), or `floor` for the floor loop of
//! `conpool_bench::floor` (one task only); the second the number of cycles.
//! With a third, `64`, 64 tasks share 16 connections on a 2-worker runtime
//! instead (the contended case); with `64held`, each also holds its
//! connection across a yield (so that callers queue).
//!
//! The `compare` binary runs this under callgrind for the instruction
//! counts of BENCHMARKS.md's liveness section, and counts the kernel looks
//! it makes (see `conpool_bench::external`).

use conpool_bench::load::{CONNS, TASKS};
use conpool_bench::net::{Target, start_echo};
use conpool_bench::with_subject;

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "conpool".into());
    let cycles: u64 = args
        .next()
        .map_or(200_000, |n| n.parse().expect("a number of cycles"));
    if name == "floor" {
        let took = conpool_bench::floor::floor_cycles(cycles);
        let ns = took.as_nanos() as f64 / cycles as f64;
        println!("floor: {ns:.0} ns per cycle");
        return;
    }
    let kind = conpool_bench::subjects::Kind::named(&name)
        .unwrap_or_else(|| panic!("no pool named {name:?}"));
    let shape = args.next();
    if let Some(shape @ ("64" | "64held")) = shape.as_deref() {
        let held = shape == "64held";
        let rt = conpool_bench::load::runtime(2);
        rt.block_on(async {
            let target = Target::tcp(start_echo(None).await);
            with_subject!(kind, &target, CONNS, |subject| {
                let per_task = cycles / TASKS as u64;
                let took = if held {
                    conpool_bench::load::held_cycles(&subject, TASKS, per_task).await
                } else {
                    conpool_bench::load::cycles(&subject, TASKS, per_task).await
                };
                let ns = took.as_nanos() as f64 / cycles as f64;
                let how = if held { ", held across a yield" } else { "" };
                println!(
                    "{name}, {TASKS} tasks over {CONNS} connections{how}: {ns:.0} ns per cycle"
                );
            })
        });
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let target = Target::tcp(start_echo(None).await);
        with_subject!(kind, &target, 1, |subject| {
            let start = std::time::Instant::now();
            for _ in 0..cycles {
                subject.cycle().await;
            }
            let took = start.elapsed();
            println!(
                "{name}: {:.0} ns per cycle",
                took.as_nanos() as f64 / cycles as f64
            );
        })
    });
}
