//! Pooled echo side by side, quickly: 64 tasks over 16 connections, each
//! pool in turn, three rounds interleaved. For experiments on the echo
//! path; the `compare` binary writes the report.
//!
//! ```text
//! cargo run --release -p conpool-bench --example echo [-- tls] [PER_TASK] [POOL...]
//! ```
//!
//! Each task does `PER_TASK` round trips per run (2,000 unless given). With
//! pool names (`dedicated`, `conpool`, `bb8`, ...,
//! `conpool (readiness below 1 ms)`) only those run, once (500 round trips
//! per task unless given), which suits `valgrind --tool=callgrind` and
//! counting system calls (the `compare` binary counts the liveness check's
//! kernel looks this way).

use std::time::Duration;

use conpool_bench::load::{self, CONNS, Dedicated, TASKS};
use conpool_bench::net::{Target, TlsCert, TlsClient, start_echo};
use conpool_bench::subjects::Kind;
use conpool_bench::with_subject;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tls = args.iter().any(|a| a == "tls");
    let count: Option<u64> = args.iter().find_map(|a| a.parse().ok());
    let only: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "tls" && a.parse::<u64>().is_err())
        .collect();
    let rt = load::runtime(2);
    rt.block_on(async {
        let target = if tls {
            let cert = TlsCert::localhost();
            let addr = start_echo(Some(cert.acceptor())).await;
            Target::tls(addr, TlsClient::new(&cert))
        } else {
            Target::tcp(start_echo(None).await)
        };
        if !only.is_empty() {
            let per_task = count.unwrap_or(500);
            for name in only {
                let took = if name == "dedicated" {
                    Dedicated::connect(&target, TASKS).await.run(per_task).await
                } else {
                    let kind =
                        Kind::named(name).unwrap_or_else(|| panic!("no pool named {name:?}"));
                    with_subject!(kind, &target, CONNS, |s| {
                        load::exchanges(&s, TASKS, per_task).await
                    })
                };
                println!("{name}: {:.0} round trips/s", rate(took, per_task));
            }
            return;
        }
        let per_task = count.unwrap_or(2_000);
        let kinds = [
            Kind::Conpool,
            Kind::ConpoolHandle,
            Kind::Bb8,
            Kind::Deadpool,
            Kind::PingoraBare,
        ];
        for round in 0..3 {
            let d = Dedicated::connect(&target, TASKS).await;
            let dedicated = rate(d.run(per_task).await, per_task);
            print!("round {round}: dedicated {dedicated:.0}/s");
            for kind in kinds {
                let r = with_subject!(kind, &target, CONNS, |s| {
                    rate(load::exchanges(&s, TASKS, per_task).await, per_task)
                });
                print!("  {} {:.3}", kind.name(), r / dedicated);
            }
            println!();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

fn rate(took: Duration, per_task: u64) -> f64 {
    (TASKS as u64 * per_task) as f64 / took.as_secs_f64()
}
