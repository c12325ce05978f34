//! What the tests of the `conpool` binary share: running it, reading its
//! JSON report, and the checks every report must pass.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// Runs `conpool ARGS` to its end.
pub fn conpool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_conpool"))
        .args(args)
        .output()
        .expect("the conpool binary runs")
}

/// Runs `conpool bench ARGS --json`, checks it succeeded with nothing on
/// stderr, and returns the report.
pub fn bench_json(args: &[&str]) -> Value {
    let mut all = vec!["bench", "--json"];
    all.extend_from_slice(args);
    let out = conpool(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{all:?} failed: {stderr}");
    assert_eq!(stderr, "", "{all:?} wrote to stderr");
    // Not a terminal: the whole of stdout is the report.
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

pub fn u(report: &Value, path: &str) -> u64 {
    report
        .pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} is not a count in {report:#}"))
}

/// The counts every report must make add up, whatever the run.
pub fn assert_counts_add_up(report: &Value) {
    assert_eq!(
        u(report, "/requests"),
        u(report, "/successes") + u(report, "/errors"),
        "{report:#}"
    );
    let by_kind: u64 = report["errors_by_kind"]
        .as_object()
        .expect("errors_by_kind is an object")
        .values()
        .map(|e| e["count"].as_u64().expect("a count"))
        .sum();
    assert_eq!(by_kind, u(report, "/errors"), "{report:#}");
    let by_reason: u64 = report["pool"]["closed_by_reason"]
        .as_object()
        .expect("closed_by_reason is an object")
        .values()
        .map(|n| n.as_u64().expect("a count"))
        .sum();
    assert_eq!(by_reason, u(report, "/pool/closed"), "{report:#}");
    assert_eq!(
        u(report, "/pool/created") - u(report, "/pool/closed"),
        u(report, "/pool/open_at_end"),
        "{report:#}"
    );
}

/// `conpool serve ARGS` as a child process, killed when dropped.
pub struct Served {
    child: Child,
    /// The lines it printed at start, one per listener.
    pub lines: Vec<String>,
}

impl Served {
    /// Starts `conpool serve ARGS` and reads the `listeners` lines it
    /// prints once it listens.
    pub fn start(args: &[&str], listeners: usize) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_conpool"))
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the conpool binary runs");
        let mut stdout = BufReader::new(child.stdout.take().expect("its stdout"));
        let lines = (0..listeners)
            .map(|_| {
                let mut line = String::new();
                stdout
                    .read_line(&mut line)
                    .expect("a line from conpool serve");
                line.trim_end().to_owned()
            })
            .collect();
        Served { child, lines }
    }

    /// The address in the line that starts with `scheme://`, such as
    /// `127.0.0.1:40123`.
    pub fn addr(&self, scheme: &str) -> String {
        let prefix = format!("echo server on {scheme}://");
        self.lines
            .iter()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {scheme} listener in {:?}", self.lines))
            .to_owned()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
