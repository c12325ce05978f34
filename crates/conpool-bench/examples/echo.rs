//! Pooled echo side by side, quickly: 64 tasks over 16 connections, each
//! pool in turn, three rounds interleaved. For experiments on the echo
//! path; the `compare` binary writes the report.
//!
//! ```text
//! cargo run --release -p conpool-bench --example echo [-- tls] [POOL...]
//! ```
//!
//! With pool names (`dedicated`, `conpool`, `bb8`, ...) only those run,
//! once, which suits `valgrind --tool=callgrind`.

use std::time::Duration;

use conpool_bench::load::{self, Dedicated};
use conpool_bench::net::{Target, TlsCert, TlsClient, start_echo};
use conpool_bench::subjects::Kind;
use conpool_bench::with_subject;

const TASKS: usize = 64;
const CONNS: usize = 16;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tls = args.iter().any(|a| a == "tls");
    let only: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "tls")
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
            for name in only {
                let per_task = 500;
                let took = if name == "dedicated" {
                    Dedicated::connect(&target, TASKS).await.run(per_task).await
                } else {
                    let kind = Kind::ALL
                        .into_iter()
                        .find(|k| k.name() == name)
                        .unwrap_or_else(|| panic!("no pool named {name:?}"));
                    with_subject!(kind, &target, CONNS, |s| {
                        load::exchanges(&s, TASKS, per_task).await
                    })
                };
                println!("{name}: {:.0} round trips/s", rate(took, per_task));
            }
            return;
        }
        let per_task = 2_000;
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
