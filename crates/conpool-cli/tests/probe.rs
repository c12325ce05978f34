//! `conpool probe` run as a process: what it tells of a TLS handshake with
//! the suite's nginx, how it fails (one line, an exit code per kind), and
//! the idle timeout it measures with `--watch`.

mod common;
#[path = "../../conpool/tests/support/mod.rs"]
mod support;

use std::process::Output;

use common::{Served, conpool};
use serde_json::Value;
use support::TlsCert;
use support::servers::{Nginx, TempDir};

/// `conpool ARGS` on a blocking thread: the servers' tasks keep the
/// runtime.
async fn run(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        conpool(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("the blocking task ran")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_names_nginx_s_tls_version_and_certificate_and_fails_one_it_does_not_trust() {
    let cert = TlsCert::localhost();
    let nginx = Nginx::start(&cert, "60s").await;
    let dir = TempDir::new("probe-ca");
    let ca = dir.path.join("ca.pem");
    std::fs::write(&ca, &cert.cert_pem).expect("write the CA file");
    let ca = ca.to_str().expect("a UTF-8 path");
    let endpoint = format!("tls://localhost:{}", nginx.tls_port);

    let out = run(&["probe", &endpoint, "--tls-ca-file", ca]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with(&format!("{endpoint} #1/3: resolve ")),
        "{line}"
    );
    for part in [
        &format!("connect 127.0.0.1:{} ", nginx.tls_port)[..],
        " TLSv1_3 TLS13_",
        "subject \"CN=rcgen self signed cert\"",
        "connected in ",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }

    let out = run(&["probe", &endpoint, "--tls-ca-file", ca, "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let probed = &report["endpoints"][0];
    assert_eq!(probed["result"], "connected", "{report:#}");
    let tls = &probed["attempts"][0]["tls"];
    assert_eq!(tls["version"], "TLSv1_3", "{report:#}");
    assert_eq!(tls["subject"], "CN=rcgen self signed cert", "{report:#}");
    assert!(
        tls["not_after"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{report:#}"
    );

    // Without the CA: the certificate does not verify, which no retry
    // fixes.
    let out = run(&["probe", &endpoint]).await;
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {endpoint}: TLS handshake failed: invalid peer certificate: UnknownIssuer; not retried\n"
        )
    );
}

#[test]
fn probe_of_a_refused_port_fails_in_one_line_after_the_pool_s_attempts() {
    let port = support::refused_port();
    let endpoint = format!("127.0.0.1:{port}");
    let out = conpool(&["probe", &endpoint, "--connect-retry-delay", "1ms"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {endpoint}: connect failed: Connection refused (os error 111); 3 attempts, all failed\n"
        )
    );
    // A line per attempt, as the pool makes them (3 by default).
    assert_eq!(
        text(&out.stdout).lines().count(),
        3,
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_of_an_address_that_drops_syns_runs_out_of_time_with_exit_code_5() {
    let black_hole = support::FullBacklog::start();
    black_hole.assert_connects_hang().await;
    let endpoint = black_hole.addr.to_string();
    let out = run(&[
        "probe",
        &endpoint,
        "--connect-timeout",
        "300ms",
        "--connect-retry-count",
        "1",
    ])
    .await;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: {endpoint}: connect timed out")),
        "{stderr}"
    );
}

#[test]
fn probe_watch_measures_the_idle_timeout_of_conpool_serve() {
    let dir = TempDir::new("probe-watch");
    let cert = dir.path.join("cert.pem");
    let cert = cert.to_str().expect("a UTF-8 path");
    let served = Served::start(
        &[
            "--tcp",
            "127.0.0.1:0",
            "--tls",
            "127.0.0.1:0",
            "--cert-out",
            cert,
            "--idle-close",
            "300ms",
        ],
        2,
    );
    let tcp = served.addr("tcp");
    let tls_port = served
        .addr("tls")
        .rsplit(':')
        .next()
        .expect("a port")
        .to_owned();
    let tls = format!("tls://localhost:{tls_port}");
    let out = conpool(&[
        "probe",
        &tcp,
        &tls,
        "--tls-ca-file",
        cert,
        "--watch",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    for (i, closed_by) in [(0, "fin"), (1, "close_notify")] {
        let watch = &report["endpoints"][i]["watch"];
        assert_eq!(watch["closed_by"], closed_by, "{report:#}");
        let idle_ms = watch["idle_ms"].as_f64().expect("idle_ms");
        assert!((250.0..2000.0).contains(&idle_ms), "{report:#}");
    }

    // The same, as lines: the attempt's, then the close's.
    let out = conpool(&["probe", &tcp, "--watch"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = text(&out.stdout);
    let close = lines.lines().nth(1).unwrap_or_default();
    assert!(
        close.starts_with(&format!("{tcp}: closed by the server after "))
            && close.ends_with(" idle: FIN"),
        "{lines}"
    );
}

#[test]
fn bad_probe_input_is_one_line_with_exit_code_2() {
    for (args, expected) in [
        (
            &["probe"][..],
            "error: the following required arguments were not provided: <ENDPOINT>...",
        ),
        (
            &["probe", "127.0.0.1"],
            "error: invalid value '127.0.0.1' for '<ENDPOINT>...': invalid endpoint: \
             \"127.0.0.1\" has no port; write host:port",
        ),
        (
            &["probe", "gopher://127.0.0.1:70"],
            "error: invalid value 'gopher://127.0.0.1:70' for '<ENDPOINT>...': unknown scheme \"gopher\"; \
             conpool bench speaks tcp:// or tls:// (echo), redis:// or rediss://, memcached://, \
             http:// or https://",
        ),
        (
            &["probe", "127.0.0.1:7", "--connect-timeout", "soon"],
            "error: invalid value 'soon' for '--connect-timeout <DURATION>': expected a number at \
             \"soon\"; write a duration such as 500ms, 2s or 1m30s",
        ),
    ] {
        let out = conpool(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(text(&out.stdout), "", "{args:?}");
        assert_eq!(text(&out.stderr), format!("{expected}\n"), "{args:?}");
    }
}
