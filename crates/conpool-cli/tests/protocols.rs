//! `conpool bench` against the real servers the library's suite runs
//! (redis-server, memcached, nginx over TCP and TLS), as a process with
//! `--json`: each protocol's requests succeed, the counts add up, and the
//! connections were reused.
//!
//! The servers are started by the library's own test harness, included
//! here by path: one copy of the launchers, whichever crate's tests run.

mod common;
#[path = "../../conpool/tests/support/mod.rs"]
mod support;

use common::u;
use serde_json::Value;
use support::TlsCert;
use support::redis::RedisServer;
use support::servers::{Memcached, Nginx, TempDir};

/// `common::bench_json` on a blocking thread: the servers' tasks keep
/// the runtime.
async fn bench_json(args: &[&str]) -> Value {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        common::bench_json(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("the blocking task ran")
}

/// Every request succeeded, the counts add up, and all but the first
/// request of each connection reused one.
fn assert_all_succeeded_on_reused_connections(report: &Value, requests: u64) {
    common::assert_counts_add_up(report);
    assert_eq!(u(report, "/requests"), requests, "{report:#}");
    assert_eq!(u(report, "/successes"), requests, "{report:#}");
    let created = u(report, "/pool/created");
    assert!((1..=10).contains(&created), "{report:#}");
    assert_eq!(u(report, "/pool/reused"), requests - created, "{report:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_ping_and_get_of_stored_keys() {
    let redis = RedisServer::start(&[]).await;
    let target = format!("redis://127.0.0.1:{}", redis.port);

    let ping = bench_json(&[&target, "--requests", "400", "--concurrency", "8"]).await;
    assert_eq!(ping["protocol"], "redis PING", "{ping:#}");
    assert_eq!(ping["target"], target.as_str());
    assert_all_succeeded_on_reused_connections(&ping, 400);

    // GETs check each value against the one stored: a miss would fail.
    let get = bench_json(&[
        &target,
        "--keys",
        "50",
        "--requests",
        "400",
        "--concurrency",
        "8",
    ])
    .await;
    assert_eq!(get["protocol"], "redis GET", "{get:#}");
    assert_eq!(u(&get, "/keys"), 50);
    assert_all_succeeded_on_reused_connections(&get, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn memcached_get_of_stored_keys() {
    let memcached = Memcached::start().await;
    let target = format!("memcached://127.0.0.1:{}", memcached.port);
    let report = bench_json(&[
        &target,
        "--keys",
        "20",
        "--requests",
        "300",
        "--concurrency",
        "4",
    ])
    .await;
    assert_eq!(report["protocol"], "memcached get", "{report:#}");
    assert_all_succeeded_on_reused_connections(&report, 300);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_and_https_get_through_hyper_on_released_connections() {
    let cert = TlsCert::localhost();
    let nginx = Nginx::start(&cert, "60s").await;
    let dir = TempDir::new("cli-ca");
    let ca = dir.path.join("ca.pem");
    std::fs::write(&ca, &cert.cert_pem).expect("write the CA file");

    let http = format!("http://127.0.0.1:{}/", nginx.port);
    let report = bench_json(&[&http, "--requests", "300", "--concurrency", "4"]).await;
    assert_eq!(report["protocol"], "http GET", "{report:#}");
    assert_all_succeeded_on_reused_connections(&report, 300);
    // Released after the body, not dropped with hyper's read pending.
    assert!(
        report["pool"]["closed_by_reason"]
            .get("cancelled")
            .is_none(),
        "{report:#}"
    );

    let https = format!("https://localhost:{}/", nginx.tls_port);
    let report = bench_json(&[
        &https,
        "--requests",
        "200",
        "--concurrency",
        "4",
        "--tls-ca-file",
        ca.to_str().expect("a UTF-8 path"),
    ])
    .await;
    assert_eq!(report["target"], https.as_str());
    assert_all_succeeded_on_reused_connections(&report, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_status_other_than_2xx_counts_as_an_error_of_its_kind() {
    let cert = TlsCert::localhost();
    let nginx = Nginx::start(&cert, "60s").await;
    // The suite's nginx answers 200 everywhere; a path it cannot take as a
    // URI is answered 400.
    let target = format!("http://127.0.0.1:{}/%zz", nginx.port);
    let report = bench_json(&[&target, "--requests", "20", "--concurrency", "2"]).await;
    assert_eq!(u(&report, "/successes"), 0, "{report:#}");
    assert_eq!(
        u(&report, "/errors_by_kind/http_status/count"),
        20,
        "{report:#}"
    );
}
