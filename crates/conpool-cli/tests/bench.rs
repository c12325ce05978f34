//! `conpool bench` run as a process, as a user runs it: its exit code, its
//! stdout (the report, parsed from `--json`) and its stderr.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{assert_counts_add_up, bench_json, conpool, u};

#[test]
fn bench_with_no_target_loads_the_embedded_server_on_a_few_reused_connections() {
    let report = bench_json(&["--requests", "500", "--concurrency", "16"]);
    assert_counts_add_up(&report);
    assert_eq!(report["server"], "embedded");
    assert!(
        report["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("tcp://127.0.0.1:")),
        "{report:#}"
    );
    assert_eq!(u(&report, "/requests"), 500);
    assert_eq!(u(&report, "/successes"), 500, "{report:#}");
    // 16 tasks share the default limit of 10 connections per endpoint:
    // every other request is served by a connection already open.
    let created = u(&report, "/pool/created");
    assert!((1..=10).contains(&created), "{report:#}");
    assert_eq!(u(&report, "/pool/reused"), 500 - created, "{report:#}");
    assert!(u(&report, "/pool/peak_open") <= 10, "{report:#}");
    let ratio = report["pool"]["reuse_ratio"].as_f64().expect("a ratio");
    assert!(ratio >= 0.98, "{report:#}");

    let latency = ["min", "p50", "p90", "p99", "p99_9", "max"]
        .map(|field| u(&report, &format!("/latency_ns/{field}")));
    assert!(latency.is_sorted(), "{report:#}");
    // A loopback round trip is at least a write and a read on each side:
    // well above a microsecond; a latency below one was not measured.
    assert!(latency[0] >= 1_000, "{report:#}");
    let elapsed_ns = report["elapsed_s"].as_f64().expect("elapsed_s") * 1e9;
    assert!(latency[5] as f64 <= elapsed_ns, "{report:#}");
}

#[test]
fn no_reuse_dials_a_connection_per_request() {
    let report = bench_json(&["--requests", "100", "--concurrency", "8", "--no-reuse"]);
    assert_counts_add_up(&report);
    assert_eq!(report["reuse"], false);
    assert_eq!(u(&report, "/successes"), 100, "{report:#}");
    assert_eq!(u(&report, "/pool/created"), 100, "{report:#}");
    assert_eq!(u(&report, "/pool/reused"), 0, "{report:#}");
    assert_eq!(
        u(&report, "/pool/closed_by_reason/discarded"),
        100,
        "{report:#}"
    );
    assert_eq!(u(&report, "/pool/open_at_end"), 0, "{report:#}");
}

#[test]
fn a_timed_run_ends_by_itself_and_counts_what_it_made() {
    let report = bench_json(&["--duration", "300ms", "--concurrency", "4"]);
    assert_counts_add_up(&report);
    assert!(u(&report, "/successes") > 0, "{report:#}");
    assert_eq!(u(&report, "/errors"), 0, "{report:#}");
}

#[test]
fn a_fixed_rate_run_makes_the_requests_the_rate_and_duration_call_for() {
    // 400 requests/s for 2 s: 800 requests, on a loopback echo server that
    // could answer a hundred times as many were they not held to the rate.
    let report = bench_json(&["--rate", "400", "--duration", "2s", "--concurrency", "8"]);
    assert_counts_add_up(&report);
    assert_eq!(report["rate"], 400, "{report:#}");
    let requests = u(&report, "/requests") as f64;
    assert!((720.0..=880.0).contains(&requests), "{report:#}");
    let per_s = report["requests_per_s"].as_f64().expect("requests_per_s");
    assert!((360.0..=440.0).contains(&per_s), "{report:#}");
    assert_eq!(u(&report, "/errors"), 0, "{report:#}");
}

#[test]
fn at_a_fixed_rate_the_requests_queued_behind_a_stall_are_charged_for_it() {
    // The server stalls 300 ms at the tenth request; one task at 1000
    // requests/s: some 300 requests fall due during the stall and start
    // late. Measured from when each was due, most of the run's requests
    // are slow; measured from when each was sent, one would be.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        let Some(Ok(mut socket)) = listener.incoming().next() else {
            return;
        };
        let mut buf = [0u8; 32];
        let mut served = 0;
        while socket.read_exact(&mut buf).is_ok() {
            served += 1;
            if served == 10 {
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            if socket.write_all(&buf).is_err() {
                return;
            }
        }
    });
    let target = format!("tcp://127.0.0.1:{port}");
    let report = bench_json(&[
        &target,
        "--rate",
        "1000",
        "--requests",
        "500",
        "--concurrency",
        "1",
    ]);
    assert_counts_add_up(&report);
    assert_eq!(u(&report, "/successes"), 500, "{report:#}");
    // About 300 of 500 requests waited out part of the stall, half of them
    // more than 150 ms; 10 ms leaves room for any machine.
    assert!(u(&report, "/latency_ns/p50") > 10_000_000, "{report:#}");
    assert!(u(&report, "/latency_ns/max") >= 250_000_000, "{report:#}");
}

/// An echo server on a thread of the test, counting the connections it
/// accepts.
fn echo_server() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("its address").port();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = socket.read(&mut buf) {
                    if n == 0 || socket.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted)
}

#[test]
fn a_tcp_target_is_loaded_on_the_connections_the_pool_reports() {
    let (port, accepted) = echo_server();
    let target = format!("tcp://127.0.0.1:{port}");
    let report = bench_json(&[&target, "--requests", "300", "--concurrency", "8"]);
    assert_counts_add_up(&report);
    assert_eq!(report["server"], "external");
    assert_eq!(report["target"], target.as_str());
    assert_eq!(u(&report, "/successes"), 300, "{report:#}");
    // What the pool says it created is what the server saw.
    assert_eq!(
        u(&report, "/pool/created"),
        accepted.load(Ordering::SeqCst),
        "{report:#}"
    );
    assert!(u(&report, "/pool/reused") > 0, "{report:#}");
}

#[test]
fn failed_requests_are_counted_by_kind_with_the_first_error() {
    // A port nobody listens on: bound, then let go.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let target = format!("tcp://127.0.0.1:{port}");
    let report = bench_json(&[
        &target,
        "--requests",
        "20",
        "--concurrency",
        "4",
        "--connect-retry-delay",
        "1ms",
        // Every request dials: no circuit breaker to fail them fast.
        "--breaker-failures",
        "0",
    ]);
    assert_counts_add_up(&report);
    assert_eq!(u(&report, "/successes"), 0, "{report:#}");
    assert_eq!(
        u(&report, "/errors_by_kind/connect/count"),
        20,
        "{report:#}"
    );
    let first = report["errors_by_kind"]["connect"]["first"]
        .as_str()
        .expect("the first error");
    assert!(first.contains(&format!("127.0.0.1:{port}")), "{first}");
    assert!(report["latency_ns"].is_null(), "{report:#}");
    assert_eq!(u(&report, "/pool/created"), 0, "{report:#}");
}

#[test]
fn requests_to_a_dead_target_past_the_breaker_count_as_circuit_open() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let target = format!("tcp://127.0.0.1:{port}");
    let report = bench_json(&[
        &target,
        "--requests",
        "20",
        "--concurrency",
        "4",
        "--connect-retry-delay",
        "1ms",
    ]);
    assert_counts_add_up(&report);
    let connect = u(&report, "/errors_by_kind/connect/count");
    let open = u(&report, "/errors_by_kind/circuit_open/count");
    // The default breaker opens after 5 failed dials; dials already under
    // way when it opens still fail as connect errors.
    assert!((5..20).contains(&connect), "{report:#}");
    assert_eq!(connect + open, 20, "{report:#}");
    let first = report["errors_by_kind"]["circuit_open"]["first"]
        .as_str()
        .expect("the first error");
    assert!(
        first.starts_with(&format!("the circuit breaker of 127.0.0.1:{port} is open")),
        "{first}"
    );
}

#[test]
fn the_table_off_a_terminal_is_the_report_alone() {
    let out = conpool(&["bench", "--requests", "50", "--concurrency", "4"]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).expect("UTF-8");
    // No progress bar: nothing redrawn, no escape codes.
    assert!(!table.contains(['\r', '\x1b']), "{table:?}");
    let first = table.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("target          tcp://127.0.0.1:"),
        "{table}"
    );
    for line in [
        "  succeeded     50",
        "  failed        0",
        "  reuse ratio   ",
    ] {
        assert!(table.contains(line), "{line:?} missing from\n{table}");
    }
}

#[test]
fn bad_input_is_one_line_naming_the_value_and_the_rule_with_exit_code_2() {
    for (args, expected) in [
        (
            &["bench", "gopher://127.0.0.1:70"][..],
            "error: invalid value 'gopher://127.0.0.1:70' for '[TARGET]': unknown scheme \"gopher\"; \
             conpool bench speaks tcp:// or tls:// (echo), redis:// or rediss://, memcached://, \
             http:// or https://",
        ),
        (
            &["bench", "redis://127.0.0.1/0"],
            "error: invalid value 'redis://127.0.0.1/0' for '[TARGET]': \"redis://127.0.0.1/0\" \
             has a path (\"/0\"); only http:// and https:// targets take one",
        ),
        (
            &["bench", "http://127.0.0.1:65536/"],
            "error: invalid value 'http://127.0.0.1:65536/' for '[TARGET]': invalid endpoint: \
             \"http://127.0.0.1:65536/\" has port \"65536\", which is not a number from 1 to 65535",
        ),
        (
            &["bench", "tcp://127.0.0.1:7", "--keys", "10"],
            "error: --keys is for redis:// and memcached:// targets; echo and HTTP have no keys",
        ),
        (
            &["bench", "tcp://127.0.0.1:65536"],
            "error: invalid value 'tcp://127.0.0.1:65536' for '[TARGET]': invalid endpoint: \
             \"tcp://127.0.0.1:65536\" has port \"65536\", which is not a number from 1 to 65535",
        ),
        (
            &["bench", "tcp://127.0.0.1"],
            "error: invalid value 'tcp://127.0.0.1' for '[TARGET]': invalid endpoint: \
             \"tcp://127.0.0.1\" has no port; write host:port",
        ),
        (
            &["bench", "127.0.0.1:7"],
            "error: invalid value '127.0.0.1:7' for '[TARGET]': it has no scheme; \
             write one of tcp:// or tls:// (echo), redis:// or rediss://, memcached://, \
             http:// or https://",
        ),
        (
            &["bench", "--concurrency", "0"],
            "error: invalid value '0' for '--concurrency <N>': 0 is not in 1..=10000",
        ),
        (
            &["bench", "--requests", "many"],
            "error: invalid value 'many' for '--requests <N>': invalid digit found in string",
        ),
        (
            &["bench", "--duration", "0s"],
            "error: invalid value '0s' for '--duration <DURATION>': it must be above zero, \
             such as 500ms, 10s or 1m30s",
        ),
        (
            &["bench", "--duration", "5min"],
            "error: invalid value '5min' for '--duration <DURATION>': unknown unit \"min\"; \
             the units are ns, us, ms, s, m, h and d, as in 500ms, 2s or 1m30s",
        ),
        (
            &["bench", "--rate", "0"],
            "error: invalid value '0' for '--rate <N>': 0 is not in 1..=10000000",
        ),
        (
            &["bench", "--requests", "5", "--duration", "1s"],
            "error: the argument '--requests <N>' cannot be used with '--duration <DURATION>'",
        ),
        (
            &["bench", "--max-connections-per-endpoint", "0"],
            "error: invalid value '0' for '--max-connections-per-endpoint <N>': \
             max_connections_per_endpoint is 0; it must be at least 1",
        ),
    ] {
        let out = conpool(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("{expected}\n"),
            "{args:?}"
        );
    }
}

#[test]
fn an_unknown_flag_is_one_line_with_clap_s_suggestion() {
    let out = conpool(&["bench", "--jsn"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: unexpected argument '--jsn' found; tip: a similar argument exists: '--json'\n"
    );
}
