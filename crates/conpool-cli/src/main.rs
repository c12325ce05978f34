//! The `conpool` command: `conpool bench`, a load generator on pooled
//! connections, with every pool setting as a flag (`conpool::cli::PoolArgs`),
//! `conpool serve`, the echo server it embeds, on its own, and `conpool
//! probe`, a dial told step by step.
//!
//! This file owns the command line as a whole: parsing, turning a bad
//! value into one line on stderr with exit code 2, and the runtime the
//! subcommands run on. `bench.rs` owns the load and its measurement,
//! `protocol.rs` and `http.rs` what a request says, `report.rs` how the
//! result is printed, `echo.rs` the embedded server, `serve.rs` its
//! command, `probe.rs` the probe.

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};

mod bench;
mod echo;
mod http;
mod probe;
mod protocol;
mod report;
mod serve;

/// Pooled connections from the command line.
#[derive(Parser, Debug)]
#[command(name = "conpool", version, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load a server (echo, Redis, memcached or HTTP, by the target's
    /// scheme) through a pool and report throughput, latency and reuse.
    /// With no target, starts an echo server inside the process on
    /// 127.0.0.1 and loads that.
    Bench(Box<bench::BenchArgs>),
    /// Run the embedded echo server over TCP and TLS (a self-signed
    /// certificate, its fingerprint printed), optionally closing idle
    /// connections or resetting some, until interrupted.
    Serve(serve::ServeArgs),
    /// Dial each endpoint as the pool would and print how each attempt went:
    /// resolve, each address tried, TCP connect, TLS handshake (version,
    /// cipher, ALPN, the server certificate), the result; with --watch, how
    /// long the server keeps an idle connection open, and how it closes it.
    /// Exit code 3: a name did not resolve, 4: a connect failed, 5: a
    /// connect or handshake timed out, 6: TLS failed.
    Probe(Box<probe::ProbeArgs>),
}

/// Bad input (a value, a flag, a target).
const EXIT_USAGE: u8 = 2;
/// The command could not run (no runtime, the embedded server could not
/// listen, the output could not be written).
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return failure(format_args!("cannot start the tokio runtime: {err}")),
    };
    let result = match cli.command {
        Command::Bench(args) => runtime.block_on(bench::run(*args)),
        Command::Serve(args) => runtime.block_on(serve::run(args)),
        Command::Probe(args) => runtime.block_on(probe::run(*args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Exit::Usage(why)) => {
            let _ = writeln!(std::io::stderr(), "error: {why}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Exit::Failure(why)) => failure(why),
        Err(Exit::Quiet(code)) => ExitCode::from(code),
    }
}

/// Why a subcommand ended without success, and so its exit code.
#[derive(Debug)]
pub enum Exit {
    /// Flags that parse one by one but not together: exit code 2.
    Usage(String),
    /// The command could not run: exit code 1.
    Failure(String),
    /// It ran and has said what went wrong: this exit code.
    Quiet(u8),
}

impl From<String> for Exit {
    fn from(why: String) -> Exit {
        Exit::Failure(why)
    }
}

/// Prints help and version as clap does; anything else as one line on
/// stderr, exit code 2.
fn usage_error(err: clap::Error) -> ExitCode {
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // Help on a bare `conpool` is a usage error too (code 2), but the
        // whole help is what the user needs there.
        let _ = err.print();
        return ExitCode::from(err.exit_code().clamp(0, 255) as u8);
    }
    let _ = writeln!(std::io::stderr(), "{}", one_line(&err.render().to_string()));
    ExitCode::from(EXIT_USAGE)
}

/// clap's error text without its usage and "For more information" lines,
/// its remaining lines (an error and maybe a tip, or a list a line ending
/// in ':' introduces) joined into one.
fn one_line(rendered: &str) -> String {
    let mut joined = String::new();
    for line in rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty())
    {
        if !joined.is_empty() {
            joined.push_str(if joined.ends_with(':') { " " } else { "; " });
        }
        joined.push_str(line);
    }
    joined
}

fn failure(why: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {why}");
    ExitCode::from(EXIT_FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clap_error_becomes_its_message_and_tip_on_one_line() {
        let err = Cli::try_parse_from(["conpool", "bench", "--jsn"]).unwrap_err();
        assert_eq!(
            one_line(&err.render().to_string()),
            "error: unexpected argument '--jsn' found; tip: a similar argument exists: '--json'"
        );
    }
}
