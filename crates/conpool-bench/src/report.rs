//! What BENCHMARKS.md says about the run: the machine, the date, the crate
//! versions, and small helpers for figures and verdicts.

use std::path::Path;
use std::process::Command;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// The machine a run happened on.
pub struct Machine {
    /// Cores the process may use.
    pub cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// `rustc --version`.
    pub rustc: String,
    /// The kernel (`uname -sr`).
    pub kernel: String,
}

impl Machine {
    /// Looks at this machine.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            rustc: command_line("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
            kernel: command_line("uname", &["-sr"]).unwrap_or_else(|| "unknown".into()),
        }
    }
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The commit conpool was built from, with "+ uncommitted changes" when
/// crates/conpool differs from it.
pub fn conpool_revision(root: &Path) -> String {
    let root = root.to_string_lossy();
    let Some(head) = command_line("git", &["-C", &root, "rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = command_line(
        "git",
        &["-C", &root, "status", "--porcelain", "--", "crates/conpool"],
    )
    .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head} + uncommitted changes in crates/conpool")
    } else {
        head
    }
}

/// The versions Cargo.lock pins for `names`, in that order.
pub fn locked_versions(root: &Path, names: &[&str]) -> Vec<(String, String)> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let mut found: Vec<(String, String)> = Vec::new();
    let mut name: Option<String> = None;
    for line in lock.lines() {
        if let Some(v) = line.strip_prefix("name = ") {
            name = Some(v.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            found.push((n, v.trim_matches('"').to_string()));
        }
    }
    names
        .iter()
        .map(|&n| {
            let versions: Vec<&str> = found
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .collect();
            let v = if versions.is_empty() {
                "?".to_string()
            } else {
                versions.join(", ")
            };
            (n.to_string(), v)
        })
        .collect()
}

/// Today's date (UTC) as YYYY-MM-DD, and the time as HH:MM.
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}", rem / 3600, rem % 3600 / 60),
    )
}

/// The median of some samples (they are sorted in place).
pub fn median(samples: &mut [f64]) -> f64 {
    assert!(!samples.is_empty(), "a figure needs samples");
    samples.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

/// A figure from several rounds: the median and the spread.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Median of the rounds.
    pub median: f64,
    /// Smallest round.
    pub min: f64,
    /// Largest round.
    pub max: f64,
}

impl Figure {
    /// Summarises `samples`.
    pub fn of(mut samples: Vec<f64>) -> Figure {
        let median = median(&mut samples);
        Figure {
            median,
            min: samples[0],
            max: samples[samples.len() - 1],
        }
    }
}

/// "met" or "**not met**".
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**not met**" }
}

/// `123,456`.
pub fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// A part of BENCHMARKS.md written by a run of its own rather than by
/// `compare` (it needs a server, or minutes, or a hand): kept between two
/// marker comments, so that `compare`, rewriting the rest, keeps it as it
/// was, and its own writer replaces it in place.
#[derive(Clone, Copy, Debug)]
pub struct Kept {
    pub begin: &'static str,
    pub end: &'static str,
}

/// The `protocols` binary's section (`--write`).
pub const PROTOCOLS: Kept = Kept {
    begin: "<!-- protocols: begin -->",
    end: "<!-- protocols: end -->",
};
/// What limits the protocol pools, written by hand after a `protocols` run.
pub const PROTOCOLS_NOTES: Kept = Kept {
    begin: "<!-- protocols notes: begin -->",
    end: "<!-- protocols notes: end -->",
};
/// The `redis-compare` binary's section (`--write`).
pub const REDIS: Kept = Kept {
    begin: "<!-- redis-compare: begin -->",
    end: "<!-- redis-compare: end -->",
};
/// `scripts/bench-tools`' section, its hand-written notes included.
pub const TOOLS: Kept = Kept {
    begin: "<!-- bench-tools -->",
    end: "<!-- /bench-tools -->",
};
/// Every kept part, in the order they stand in a file that has them all.
pub const KEPT: [Kept; 4] = [PROTOCOLS, PROTOCOLS_NOTES, REDIS, TOOLS];

impl Kept {
    /// This part of `doc`, markers included, if it has one.
    pub fn section(self, doc: &str) -> Option<&str> {
        let begin = doc.find(self.begin)?;
        let end = doc[begin..].find(self.end)? + begin + self.end.len();
        Some(doc[begin..end].trim_end())
    }

    /// `doc` with `section` in place of this part, or, if it has none,
    /// before its "How it is measured" part (at the end without one).
    pub fn with_section(self, doc: &str, section: &str) -> String {
        let section = section.trim_end();
        if let Some(old) = self.section(doc) {
            return doc.replacen(old, section, 1);
        }
        match doc.find("\n## How it is measured") {
            Some(at) => format!("{}{section}\n\n{}", &doc[..=at], &doc[at + 1..]),
            None if doc.is_empty() => format!("{section}\n"),
            None => format!("{}\n\n{section}\n", doc.trim_end()),
        }
    }
}

/// `doc` (a fresh `compare` report) with every kept part `old` (the file
/// it replaces) has and it lacks.
pub fn with_kept_sections(mut doc: String, old: &str) -> String {
    for kept in KEPT {
        if let (Some(section), None) = (kept.section(old), kept.section(&doc)) {
            doc = kept.with_section(&doc, section);
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_section_replaces_the_old_one_or_goes_before_how_it_is_measured() {
        let section = format!("{}\n## 9. Redis\nnew\n{}\n", REDIS.begin, REDIS.end);
        let fresh = "# B\n\n## 5. Five\n\n## How it is measured\n\nwords\n";
        let once = REDIS.with_section(fresh, &section);
        assert_eq!(
            once,
            format!(
                "# B\n\n## 5. Five\n\n{}\n\n## How it is measured\n\nwords\n",
                section.trim_end()
            )
        );
        let again = REDIS.with_section(&once, &section.replace("new", "newer"));
        assert_eq!(again, once.replace("new\n", "newer\n"));
        assert_eq!(
            REDIS.section(&again).map(|s| s.contains("newer")),
            Some(true)
        );
        assert_eq!(REDIS.section(fresh), None);
    }

    #[test]
    fn a_fresh_report_keeps_every_part_the_old_file_had_in_their_order() {
        let part = |k: Kept, body: &str| format!("{}\n{body}\n{}", k.begin, k.end);
        let old = [
            "# B\n".to_owned(),
            part(PROTOCOLS, "p"),
            part(PROTOCOLS_NOTES, "n"),
            part(REDIS, "r"),
            "## How it is measured\n".to_owned(),
            part(TOOLS, "t"),
        ]
        .join("\n\n");
        let fresh = "# B\n\n## How it is measured\n".to_owned();
        let kept = with_kept_sections(fresh, &old);
        let at = |k: Kept| kept.find(k.begin).expect("kept");
        assert!(at(PROTOCOLS) < at(PROTOCOLS_NOTES));
        assert!(at(PROTOCOLS_NOTES) < at(REDIS));
        assert!(at(REDIS) < at(TOOLS));
        assert!(at(TOOLS) < kept.find("## How it is measured").unwrap());
    }
}
