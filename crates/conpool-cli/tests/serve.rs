//! `conpool serve` run as a process: it echoes over TCP and TLS (its
//! certificate the one whose fingerprint it prints), closes idle
//! connections when told, and resets the share of connections it is told
//! to.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Served, assert_counts_add_up, bench_json, conpool, u};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("conpool-cli-{}-{name}", std::process::id()))
}

#[test]
fn serve_echoes_over_tcp_and_tls_with_the_certificate_it_prints_the_fingerprint_of() {
    let cert_path = temp_path("serve-cert.pem");
    let cert_arg = cert_path.to_str().expect("a UTF-8 path");
    let served = Served::start(
        &[
            "--tcp",
            "127.0.0.1:0",
            "--tls",
            "127.0.0.1:0",
            "--cert-out",
            cert_arg,
        ],
        2,
    );

    let tcp = format!("tcp://{}", served.addr("tcp"));
    let report = bench_json(&[&tcp, "--requests", "200", "--concurrency", "4"]);
    assert_counts_add_up(&report);
    assert_eq!(u(&report, "/successes"), 200, "{report:#}");
    assert!(u(&report, "/pool/reused") >= 190, "{report:#}");

    // The certificate is for localhost; a client trusting the file it
    // wrote verifies it.
    let port = served
        .addr("tls")
        .rsplit(':')
        .next()
        .expect("a port")
        .to_owned();
    let tls = format!("tls://localhost:{port}");
    let report = bench_json(&[
        &tls,
        "--requests",
        "200",
        "--concurrency",
        "4",
        "--tls-ca-file",
        cert_arg,
    ]);
    assert_counts_add_up(&report);
    assert_eq!(u(&report, "/successes"), 200, "{report:#}");

    let der = CertificateDer::from_pem_file(&cert_path).expect("a PEM certificate");
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    let fingerprint: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    let tls_line = served
        .lines
        .iter()
        .find(|l| l.contains("tls://"))
        .expect("the TLS line");
    assert!(
        tls_line.ends_with(&format!("SHA-256 fingerprint {})", fingerprint.join(":"))),
        "{tls_line}"
    );
    let _ = std::fs::remove_file(&cert_path);
}

#[test]
fn idle_close_closes_a_quiet_connection_with_a_fin_after_the_time_given() {
    let served = Served::start(&["--idle-close", "300ms"], 1);
    let mut socket = TcpStream::connect(served.addr("tcp")).expect("connect");
    // A request in time is answered, and the idle time starts again.
    std::thread::sleep(Duration::from_millis(100));
    socket.write_all(b"ping").expect("write");
    let mut reply = [0u8; 4];
    socket.read_exact(&mut reply).expect("the echo");
    assert_eq!(&reply, b"ping");

    let quiet_since = Instant::now();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let mut buf = [0u8; 16];
    let read = socket.read(&mut buf);
    let waited = quiet_since.elapsed();
    assert_eq!(
        read.expect("a clean close, not an error"),
        0,
        "end of stream"
    );
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
}

#[test]
fn reset_fraction_resets_that_share_of_connections_at_their_first_request() {
    let served = Served::start(&["--reset-fraction", "0.5"], 1);
    let mut resets = 0;
    for _ in 0..10 {
        let mut socket = TcpStream::connect(served.addr("tcp")).expect("connect");
        socket.write_all(b"ping").expect("write");
        let mut reply = [0u8; 4];
        match socket.read_exact(&mut reply) {
            Ok(()) => assert_eq!(&reply, b"ping"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => resets += 1,
            Err(e) => panic!("neither an echo nor a reset: {e}"),
        }
    }
    assert_eq!(resets, 5);
}

#[test]
fn a_pool_sees_the_resets_as_io_errors() {
    let served = Served::start(&["--reset-fraction", "1"], 1);
    let target = format!("tcp://{}", served.addr("tcp"));
    let report = bench_json(&[&target, "--requests", "20", "--concurrency", "2"]);
    assert_counts_add_up(&report);
    assert_eq!(u(&report, "/errors_by_kind/io/count"), 20, "{report:#}");
    let first = report["errors_by_kind"]["io"]["first"]
        .as_str()
        .expect("a message");
    assert!(first.contains("reset"), "{first}");
}

#[test]
fn bad_serve_input_is_one_line_with_exit_code_2() {
    for (args, expected) in [
        (
            &["serve", "--reset-fraction", "1.5"][..],
            "error: invalid value '1.5' for '--reset-fraction <F>': it must be a number from 0 to 1, such as 0.1",
        ),
        (
            &["serve", "--idle-close", "0ms"],
            "error: invalid value '0ms' for '--idle-close <DURATION>': it must be above zero, such as 300ms, 10s or 1m",
        ),
        (
            &["serve", "--tcp", "localhost"],
            "error: invalid value 'localhost' for '--tcp <ADDR>': invalid socket address syntax",
        ),
        (
            &["serve", "--cert-out", "/tmp/x.pem"],
            "error: the following required arguments were not provided: --tls <ADDR>",
        ),
    ] {
        let out = conpool(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("{expected}\n"),
            "{args:?}"
        );
    }
}
