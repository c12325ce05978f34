//! Figures taken by running an example under a tool outside the process:
//! callgrind's count of instructions per acquire + release, and how often
//! conpool's liveness check asks the kernel (perf or strace counting the
//! `recvfrom` calls that carry `MSG_PEEK`). The `compare` binary reports
//! them where the tools are installed, and says why not where they are
//! not: every function here answers a missing tool with an error naming
//! it, never a panic.
//!
//! Why `MSG_PEEK` and not every `recvfrom`: the Rust standard library reads
//! a socket with `recv` too (glibc makes it a `recvfrom`), so tokio's own
//! reads, the echo server's and the liveness check's look all show up as
//! `recvfrom`; only the TCP look peeks. The TLS look reads records into
//! rustls with the same 4,096-byte `recv` as tokio-rustls does, so no
//! trace of system calls tells it apart: its kernel looks are counted over
//! TCP only (the rule for when to ask the kernel is the same for both).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// `MSG_PEEK` on Linux.
const MSG_PEEK: u32 = 2;

/// The example `name` built beside the running binary (for `compare`,
/// `target/release/examples/`), or why it is not there.
pub fn example(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no path to this binary: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no directory", exe.display()))?;
    let path = dir.join("examples").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "`{}` is not built (`cargo build --release -p conpool-bench --examples`, which \
             scripts/bench runs first)",
            path.display()
        ))
    }
}

/// Runs the built example at `program` with `args` and returns what it
/// printed.
pub fn output_of(program: &Path, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new(program);
    command.args(args);
    let out = run(command, &program.display().to_string())?;
    String::from_utf8(out.stdout).map_err(|e| format!("{} printed no text: {e}", program.display()))
}

/// Runs `command` (`tool` names it in errors) to completion, its output
/// captured.
fn run(mut command: Command, tool: &str) -> Result<Output, String> {
    let out = command.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{tool} is not installed (not on PATH)"),
        _ => format!("{tool} did not start: {e}"),
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The program's own last word, not valgrind's summary (its lines
        // start with `==PID==`).
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.starts_with("=="));
        Err(format!(
            "{tool} failed ({}): {}",
            out.status,
            last.unwrap_or("no message")
        ))
    }
}

/// A file of its own in the temporary directory, for a tool's output.
fn scratch_file(tool: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "conpool-bench-{tool}-{}-{}.txt",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The instructions per cycle of `cycle POOL CYCLES [SHAPE]` (the
/// `examples/cycle.rs` binary at `cycle`) under
/// `valgrind --tool=callgrind`: two runs, of `short` and of `long` cycles,
/// and the difference in instructions over the difference in cycles, so
/// that the start-up (runtime, echo server, dials) drops out. Only
/// instructions run in user space count: what the kernel does inside a
/// system call is not among them.
pub fn instructions_per_cycle(
    cycle: &Path,
    pool: &str,
    shape: Option<&str>,
    (short, long): (u64, u64),
) -> Result<f64, String> {
    if long <= short {
        return Err(format!(
            "the long run ({long} cycles) must be longer than the short one ({short})"
        ));
    }
    let refs = |cycles: u64| -> Result<u64, String> {
        let mut command = Command::new("valgrind");
        command
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(cycle)
            .arg(pool)
            .arg(cycles.to_string())
            .args(shape);
        let out = run(command, "valgrind")?;
        instructions_counted(&String::from_utf8_lossy(&out.stderr))
            .ok_or_else(|| "callgrind printed no \"I refs\" line".to_string())
    };
    let (few, many) = (refs(short)?, refs(long)?);
    Ok((many as f64 - few as f64) / (long - short) as f64)
}

/// The total from callgrind's summary (`==PID== I   refs:      1,234`).
fn instructions_counted(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|line| {
        let (head, count) = line.split_once("refs:")?;
        head.trim_end()
            .ends_with(" I")
            .then(|| count.trim().replace(',', ""))?
            .parse()
            .ok()
    })
}

/// What counts the liveness check's kernel looks: the `recvfrom` calls
/// with `MSG_PEEK` a program and all its threads make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeekCounter {
    /// `perf stat` on the `syscalls:sys_enter_recvfrom` tracepoint, filtered
    /// to `MSG_PEEK` in the kernel: the program runs at full speed, so a
    /// rule that depends on timing fires as often as it does unobserved.
    Perf,
    /// `strace -f --seccomp-bpf -e trace=recvfrom`, counting the calls
    /// with `MSG_PEEK`: the program stops at every `recvfrom` (its reads
    /// too) and runs slower, which can change how often a rule that
    /// depends on timing fires.
    Strace,
}

impl PeekCounter {
    /// The first counter that works here (perf needs the tracepoint, which
    /// usually means root), or why neither does.
    pub fn detect() -> Result<PeekCounter, String> {
        let program = Path::new("true");
        let perf = PeekCounter::Perf.count(program, &[]);
        if perf.is_ok() {
            return Ok(PeekCounter::Perf);
        }
        let strace = PeekCounter::Strace.count(program, &[]);
        match (perf, strace) {
            (_, Ok(_)) => Ok(PeekCounter::Strace),
            (Err(perf), Err(strace)) => Err(format!("{perf}; {strace}")),
            (Ok(_), Err(_)) => unreachable!("perf was tried first"),
        }
    }

    /// The tool's name.
    pub fn name(self) -> &'static str {
        match self {
            PeekCounter::Perf => "perf",
            PeekCounter::Strace => "strace",
        }
    }

    /// How to count by hand the peeks of `PROGRAM` with this tool.
    pub fn command_line(self) -> String {
        match self {
            PeekCounter::Perf => format!(
                "perf stat -e syscalls:sys_enter_recvfrom --filter 'flags & {MSG_PEEK}' -- PROGRAM"
            ),
            PeekCounter::Strace => "strace -f -qq --seccomp-bpf -e trace=recvfrom -o trace.txt \
                 PROGRAM && grep -c MSG_PEEK trace.txt"
                .to_string(),
        }
    }

    /// The `recvfrom` calls with `MSG_PEEK` that `program args` makes, its
    /// threads included.
    pub fn count(self, program: &Path, args: &[&str]) -> Result<u64, String> {
        let file = scratch_file(self.name());
        let mut command = Command::new(self.name());
        match self {
            PeekCounter::Perf => command
                .args(["stat", "-x", ",", "-e", "syscalls:sys_enter_recvfrom"])
                .arg("--filter")
                .arg(format!("flags & {MSG_PEEK}"))
                .arg("-o")
                .arg(&file),
            PeekCounter::Strace => command
                .args(["-f", "-qq", "--seccomp-bpf", "-e", "trace=recvfrom", "-o"])
                .arg(&file),
        };
        command.arg("--").arg(program).args(args);
        let counted = run(command, self.name()).and_then(|_| {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("{} wrote no {}: {e}", self.name(), file.display()))?;
            match self {
                PeekCounter::Perf => text
                    .lines()
                    .find(|l| l.contains("syscalls:sys_enter_recvfrom"))
                    .and_then(|l| l.split(',').next())
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or_else(|| {
                        format!("perf counted nothing on syscalls:sys_enter_recvfrom: {text:?}")
                    }),
                // A call interrupted by another thread's is printed in two
                // lines, its flags in one of them.
                PeekCounter::Strace => {
                    Ok(text.lines().filter(|l| l.contains("MSG_PEEK")).count() as u64)
                }
            }
        });
        let _ = std::fs::remove_file(&file);
        counted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_that_is_not_installed_is_named_in_the_error() {
        let err = run(Command::new("conpool-bench-no-such-tool"), "no-such-tool").unwrap_err();
        assert!(err.contains("no-such-tool is not installed"), "{err}");
    }

    #[test]
    fn an_example_that_is_not_built_is_named_in_the_error() {
        let err = example("no-such-example").unwrap_err();
        assert!(
            err.contains("no-such-example") && err.contains("is not built"),
            "{err}"
        );
    }

    #[test]
    fn callgrinds_total_is_read_from_its_summary() {
        let stderr =
            "==7549== Collected : 149773589\n==7549== \n==7549== I   refs:      149,773,589\n";
        assert_eq!(instructions_counted(stderr), Some(149_773_589));
        assert_eq!(instructions_counted("==1== Events    : Ir\n"), None);
    }
}
