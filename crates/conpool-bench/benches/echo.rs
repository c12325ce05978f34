//! Pooled echo: 64 tasks over 16 pooled connections, 64-byte round trips
//! over loopback TCP and TLS, for conpool and every peer, beside dedicated
//! connections (one per task) and a connection (or TLS handshake) per
//! request.
//!
//! ```text
//! cargo bench -p conpool-bench --bench echo
//! ```

use std::sync::Arc;
use std::time::Duration;

use conpool_bench::load::{self, CONNS, Dedicated, TASKS};
use conpool_bench::net::{Target, TlsCert, TlsClient, start_echo};
use conpool_bench::subjects::Kind;
use conpool_bench::with_subject;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn echo(c: &mut Criterion) {
    let rt = load::runtime(2);
    let cert = TlsCert::localhost();
    let targets = rt.block_on(async {
        let tcp = Target::tcp(start_echo(None).await);
        let tls = Target::tls(
            start_echo(Some(cert.acceptor())).await,
            TlsClient::new(&cert),
        );
        [("tcp", tcp), ("tls", tls)]
    });
    for (proto, target) in &targets {
        let mut group = c.benchmark_group(format!("echo {proto}"));
        group.throughput(Throughput::Elements(1));
        group.measurement_time(Duration::from_secs(3));
        let per_task = |iters: u64| iters.div_ceil(TASKS as u64);

        let dedicated = Arc::new(rt.block_on(Dedicated::connect(target, TASKS)));
        group.bench_function("dedicated", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let d = dedicated.clone();
                async move { d.run(per_task(iters)).await }
            })
        });
        for kind in Kind::ALL {
            rt.block_on(async {
                with_subject!(kind, target, CONNS, |s| {
                    // Criterion drives the runtime itself: step out of it.
                    tokio::task::block_in_place(|| {
                        group.bench_function(BenchmarkId::from_parameter(kind.name()), |b| {
                            b.to_async(&rt)
                                .iter_custom(|iters| load::exchanges(&s, TASKS, per_task(iters)))
                        })
                    });
                })
            });
        }
        group.sample_size(10);
        let per_request = if target.is_tls() {
            "handshake per request"
        } else {
            "connect per request"
        };
        group.bench_function(per_request, |b| {
            b.to_async(&rt)
                .iter_custom(|iters| load::per_request(target, TASKS, per_task(iters)))
        });
        group.finish();
    }
}

criterion_group!(benches, echo);
criterion_main!(benches);
