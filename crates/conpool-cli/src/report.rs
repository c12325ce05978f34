//! The result of `conpool bench`, as a table for people and as one JSON
//! document for programs: the same fields, described in the README
//! ("`conpool bench --json`").

use std::collections::BTreeMap;
use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Everything a run measured.
#[derive(Serialize, Debug)]
pub struct Report {
    /// The target as `scheme://host:port`, and the path for HTTP.
    pub target: String,
    /// `"embedded"` (started by the command) or `"external"`.
    pub server: &'static str,
    /// `"echo"`, `"redis PING"`, `"redis GET"`, `"memcached get"` or
    /// `"http GET"`.
    pub protocol: &'static str,
    /// `--keys`: the keys stored and read; `None` for echo, PING and HTTP.
    pub keys: Option<u32>,
    pub concurrency: u32,
    /// `--rate`: requests due per second; latencies then run from each
    /// request's due time. `None`: as fast as the tasks go.
    pub rate: Option<u64>,
    /// False with `--no-reuse`.
    pub reuse: bool,
    /// Requests made: `successes + errors`.
    pub requests: u64,
    pub successes: u64,
    pub errors: u64,
    /// Failed requests by kind, only the kinds that occurred.
    pub errors_by_kind: BTreeMap<&'static str, ErrorCount>,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    /// Latencies of the successful requests, in nanoseconds; `None` when
    /// none succeeded.
    pub latency_ns: Option<Latency>,
    pub pool: PoolView,
}

/// How often one kind of failure happened, and the first one's message.
#[derive(Serialize, Debug)]
pub struct ErrorCount {
    pub count: u64,
    pub first: String,
}

/// A latency distribution's landmarks, in nanoseconds.
#[derive(Serialize, Debug)]
pub struct Latency {
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
    pub mean: u64,
}

impl Latency {
    /// The landmarks of a histogram of nanoseconds.
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        Latency {
            min: histogram.min(),
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p99_9: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean().round() as u64,
        }
    }
}

/// The pool's own counts for the target, taken when the load ended and
/// before the pool was closed.
#[derive(Serialize, Debug)]
pub struct PoolView {
    pub created: u64,
    pub reused: u64,
    /// `reused / (created + reused)`: the share of leases served by a
    /// connection already open; `None` when nothing was leased.
    pub reuse_ratio: Option<f64>,
    pub closed: u64,
    /// Closes by reason (`conpool::CloseReason::as_str`), only the reasons
    /// that occurred; they add up to `closed`.
    pub closed_by_reason: BTreeMap<&'static str, u64>,
    /// Connections still open (idle or leased): `created - closed`.
    pub open_at_end: u64,
    /// The most connections open at once during the run.
    pub peak_open: u64,
    /// The pool's `Stats::errors`: failed dials and connections that
    /// failed while leased.
    pub errors: u64,
}

impl Report {
    /// The report as a table, for a terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let mut line = |label: &str, value: String| {
            let _ = writeln!(out, "{label:<16}{value}");
        };
        line(
            "target",
            format!(
                "{} ({} server, {}{})",
                self.target,
                self.server,
                self.protocol,
                match self.keys {
                    Some(keys) => format!(" of {keys} keys"),
                    None => String::new(),
                }
            ),
        );
        line(
            "load",
            format!(
                "{} tasks, {}{}",
                self.concurrency,
                if self.reuse {
                    "connections reused"
                } else {
                    "a connection per request (--no-reuse)"
                },
                match self.rate {
                    Some(rate) => {
                        format!(", {rate} requests/s due (a late one's latency from its due time)")
                    }
                    None => String::new(),
                }
            ),
        );
        line(
            "requests",
            format!(
                "{} in {:.3} s: {:.0} requests/s",
                self.requests, self.elapsed_s, self.requests_per_s
            ),
        );
        line("  succeeded", self.successes.to_string());
        line("  failed", self.errors.to_string());
        for (kind, count) in &self.errors_by_kind {
            line(
                &format!("    {kind}"),
                format!("{} (first: {})", count.count, count.first),
            );
        }
        let _ = writeln!(out);
        match &self.latency_ns {
            Some(l) => {
                let _ = writeln!(
                    out,
                    "{:<16}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
                    "latency", "min", "p50", "p90", "p99", "p99.9", "max"
                );
                let _ = writeln!(
                    out,
                    "{:<16}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
                    "",
                    nanos(l.min),
                    nanos(l.p50),
                    nanos(l.p90),
                    nanos(l.p99),
                    nanos(l.p99_9),
                    nanos(l.max)
                );
            }
            None => {
                let _ = writeln!(out, "{:<16}none: no request succeeded", "latency");
            }
        }
        let _ = writeln!(out);
        let pool = &self.pool;
        let _ = writeln!(out, "pool");
        let mut line = |label: &str, value: String| {
            let _ = writeln!(out, "{label:<16}{value}");
        };
        line("  created", pool.created.to_string());
        line("  reused", pool.reused.to_string());
        line(
            "  reuse ratio",
            match pool.reuse_ratio {
                // Rounded down, so that 100% means every lease.
                Some(ratio) => format!("{:.2}%", (10_000.0 * ratio).floor() / 100.0),
                None => "-".to_owned(),
            },
        );
        line("  closed", pool.closed.to_string());
        for (reason, count) in &pool.closed_by_reason {
            line(&format!("    {reason}"), count.to_string());
        }
        line("  open at end", pool.open_at_end.to_string());
        line("  peak open", pool.peak_open.to_string());
        line("  errors", pool.errors.to_string());
        out.trim_end().to_owned()
    }
}

/// Nanoseconds in the unit that keeps three or four digits.
fn nanos(ns: u64) -> String {
    let ns = ns as f64;
    if ns < 1e3 {
        format!("{ns:.0}ns")
    } else if ns < 1e6 {
        format!("{:.1}µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2}ms", ns / 1e6)
    } else {
        format!("{:.2}s", ns / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_print_in_the_unit_that_fits() {
        assert_eq!(nanos(950), "950ns");
        assert_eq!(nanos(41_230), "41.2µs");
        assert_eq!(nanos(2_914_000), "2.91ms");
        assert_eq!(nanos(1_200_000_000), "1.20s");
    }
}
