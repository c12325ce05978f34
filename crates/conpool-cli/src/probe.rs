//! `conpool probe`: dials each endpoint as the pool would (the pool's
//! resolver, TCP connect and TLS handshake from `conpool::dial`, its
//! timeout and retries from the pool flags) and tells how each attempt
//! went, step by step; with `--watch`, keeps the connection idle and tells
//! when and how the server closes it: the server's idle timeout, which is
//! what `--max-idle-time` should be set below.

use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::time::Duration;

use conpool::cli::PoolArgs;
use conpool::dial::{backoff_delay, resolve, tcp, tls};
use conpool::{Config, Endpoint};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use crate::Exit;
use crate::protocol;

/// The exit codes of a probe that failed, by the first failed endpoint's
/// kind of failure (documented in the README).
const EXIT_RESOLVE: u8 = 3;
const EXIT_CONNECT: u8 = 4;
const EXIT_TIMEOUT: u8 = 5;
const EXIT_TLS: u8 = 6;

/// The options of `conpool probe`.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// The endpoints to dial: host:port, tcp://host:port, tls://host:port,
    /// or a target of conpool bench (redis://, https://, ...)
    #[arg(value_name = "ENDPOINT", required = true, value_parser = endpoint)]
    endpoints: Vec<Endpoint>,

    /// Keep each connection idle once made, and report when and how the
    /// server closes it (FIN, RST, TLS close_notify)
    #[arg(long)]
    watch: bool,

    /// Print the result as one JSON document instead of lines (its fields
    /// are described in the README)
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    pool: PoolArgs,
}

fn endpoint(text: &str) -> Result<Endpoint, String> {
    if text.contains("://") && !text.starts_with("tcp://") && !text.starts_with("tls://") {
        return protocol::parse_target(text).map(|target| target.endpoint);
    }
    text.parse().map_err(|e: conpool::Error| e.to_string())
}

/// `--json`'s document.
#[derive(Serialize, Debug)]
struct ProbeReport {
    /// In the command line's order.
    endpoints: Vec<EndpointReport>,
}

/// What was seen of one endpoint.
#[derive(Serialize, Debug)]
struct EndpointReport {
    /// As `conpool::Endpoint` prints it: `host:port`, or `tls://host:port`.
    endpoint: String,
    attempts: Vec<Attempt>,
    /// `"connected"`, or the kind of failure of the last attempt:
    /// `"resolve"`, `"connect"`, `"timeout"`, `"tls"`.
    result: &'static str,
    /// Why the last attempt failed; `None` when connected.
    error: Option<String>,
    /// With `--watch`: how the idle connection ended.
    watch: Option<Watch>,
}

/// One connection attempt, step by step.
#[derive(Serialize, Debug, Default)]
struct Attempt {
    /// From 1.
    attempt: u32,
    resolve_ms: Option<f64>,
    /// What the name resolved to, in the order tried.
    addresses: Vec<String>,
    /// Each address tried, until one connected.
    connects: Vec<Connect>,
    tls: Option<TlsInfo>,
    /// From the start of the attempt to its end.
    total_ms: f64,
    /// Why it failed; `None` when it connected.
    error: Option<String>,
}

#[derive(Serialize, Debug)]
struct Connect {
    address: String,
    ms: f64,
    /// `None` when it connected.
    error: Option<String>,
}

#[derive(Serialize, Debug, Default)]
struct TlsInfo {
    ms: f64,
    version: Option<String>,
    cipher: Option<String>,
    alpn: Option<String>,
    /// The server certificate's subject and issuer (RFC 4514 style) and
    /// the end of its validity.
    subject: Option<String>,
    issuer: Option<String>,
    not_after: Option<String>,
}

/// How a watched idle connection ended.
#[derive(Serialize, Debug)]
struct Watch {
    /// From the connection's last exchange (connect or TLS handshake) to
    /// its end.
    idle_ms: f64,
    /// `"fin"`, `"rst"`, `"close_notify"`, `"fin_without_close_notify"`,
    /// `"data"` (the server sent bytes unasked) or `"error"`.
    closed_by: &'static str,
    detail: Option<String>,
}

/// A failed attempt's kind, with its exit code and whether the pool would
/// try again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Failure {
    Resolve,
    Connect,
    Timeout,
    Tls,
}

impl Failure {
    fn name(self) -> &'static str {
        match self {
            Failure::Resolve => "resolve",
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Tls => "tls",
        }
    }

    fn exit_code(self) -> u8 {
        match self {
            Failure::Resolve => EXIT_RESOLVE,
            Failure::Connect => EXIT_CONNECT,
            Failure::Timeout => EXIT_TIMEOUT,
            Failure::Tls => EXIT_TLS,
        }
    }

    /// As the pool: only a connect that failed or ran out of time.
    fn is_retried(self) -> bool {
        matches!(self, Failure::Connect | Failure::Timeout)
    }
}

/// A connection a probe made, kept for `--watch`.
enum Connection {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Runs `conpool probe`: a line per attempt on stdout (or one JSON
/// document), one line on stderr per endpoint that could not be reached.
pub async fn run(args: ProbeArgs) -> Result<(), Exit> {
    let config = args
        .pool
        .into_config()
        .map_err(|e| Exit::Usage(e.to_string()))?;
    let mut reports = Vec::new();
    let mut connections = Vec::new();
    let mut first_failure = None;
    for endpoint in &args.endpoints {
        let (report, connection, failure) = probe(&config, endpoint, !args.json).await;
        if let Some(failure) = failure {
            first_failure.get_or_insert(failure);
            let why = report.error.as_deref().unwrap_or("");
            let tries = match report.attempts.len() {
                _ if !failure.is_retried() => "not retried".to_owned(),
                1 => "1 attempt".to_owned(),
                n => format!("{n} attempts, all failed"),
            };
            eprintln!("error: {endpoint}: {why}; {tries}");
        }
        reports.push(report);
        connections.push(connection);
    }
    if args.watch {
        let watches = connections.into_iter().enumerate().filter_map(|(i, c)| {
            c.map(|(connection, since)| async move { (i, watch(connection, since).await) })
        });
        let mut watching: tokio::task::JoinSet<_> = watches.collect();
        while let Some(done) = watching.join_next().await {
            let (i, watched) = done.map_err(|e| format!("a watch failed: {e}"))?;
            if !args.json {
                say(&format!(
                    "{}: closed by the server after {} idle: {}{}",
                    reports[i].endpoint,
                    ms(watched.idle_ms),
                    match watched.closed_by {
                        "fin" => "FIN",
                        "rst" => "RST",
                        "close_notify" => "TLS close_notify",
                        "fin_without_close_notify" => "FIN without TLS close_notify",
                        "data" => "it sent data unasked",
                        other => other,
                    },
                    watched
                        .detail
                        .as_deref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ));
            }
            reports[i].watch = Some(watched);
        }
    }
    if args.json {
        let text = serde_json::to_string_pretty(&ProbeReport { endpoints: reports })
            .map_err(|e| e.to_string())?;
        say(&text);
    }
    match first_failure {
        None => Ok(()),
        Some(failure) => Err(Exit::Quiet(failure.exit_code())),
    }
}

/// Prints a line at once: a watch's lines come long after the probe's.
fn say(line: &str) {
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Dials `endpoint` with the config's attempts, backoff and timeout;
/// prints each attempt's line when `lines`.
async fn probe(
    config: &Config,
    endpoint: &Endpoint,
    lines: bool,
) -> (
    EndpointReport,
    Option<(Connection, Instant)>,
    Option<Failure>,
) {
    let attempts = config.connect_retry_count().max(1);
    let mut report = EndpointReport {
        endpoint: endpoint.to_string(),
        attempts: Vec::new(),
        result: "connected",
        error: None,
        watch: None,
    };
    let mut number = 1;
    loop {
        let (attempt, outcome) = dial(config, endpoint, number).await;
        if lines {
            say(&attempt_line(endpoint, attempts, &attempt));
        }
        report.attempts.push(attempt);
        match outcome {
            Ok(connection) => return (report, Some((connection, Instant::now())), None),
            Err(failure) => {
                report.result = failure.name();
                report.error = report.attempts.last().and_then(|a| a.error.clone());
                if !failure.is_retried() || number == attempts {
                    return (report, None, Some(failure));
                }
            }
        }
        tokio::time::sleep(backoff_delay(config.connect_retry_delay(), number)).await;
        number += 1;
    }
}

/// One attempt, as the pool's default dialer makes it, step by step.
async fn dial(
    config: &Config,
    endpoint: &Endpoint,
    number: u32,
) -> (Attempt, Result<Connection, Failure>) {
    let started = Instant::now();
    let deadline = config
        .connect_timeout()
        .and_then(|t| started.checked_add(t));
    let mut attempt = Attempt {
        attempt: number,
        ..Attempt::default()
    };
    let outcome = steps(config, endpoint, deadline, &mut attempt).await;
    attempt.total_ms = millis(started.elapsed());
    (attempt, outcome)
}

async fn steps(
    config: &Config,
    endpoint: &Endpoint,
    deadline: Option<Instant>,
    attempt: &mut Attempt,
) -> Result<Connection, Failure> {
    let fail = |attempt: &mut Attempt, failure: Failure, why: String| {
        attempt.error = Some(why);
        Err(failure)
    };
    let step = Instant::now();
    // The config's resolver, as the pool's dialer asks it (one probe
    // attempt has nothing to share a cache with).
    let resolver = resolve::CachedResolver::from_arc(
        config
            .resolver()
            .cloned()
            .unwrap_or_else(resolve::default_resolver),
        Duration::ZERO,
    );
    let addrs: Vec<SocketAddr> = match within(deadline, resolver.resolve(endpoint)).await {
        None => {
            return fail(
                attempt,
                Failure::Timeout,
                "resolving took the whole connect timeout".into(),
            );
        }
        Some(Err(e)) => {
            attempt.resolve_ms = Some(millis(step.elapsed()));
            return fail(
                attempt,
                Failure::Resolve,
                format!("{} does not resolve: {e}", endpoint.host()),
            );
        }
        Some(Ok(addrs)) => addrs,
    };
    attempt.resolve_ms = Some(millis(step.elapsed()));
    attempt.addresses = addrs.iter().map(|a| a.ip().to_string()).collect();

    let mut tcp_stream = None;
    let mut last_error = None;
    for addr in &addrs {
        let step = Instant::now();
        // Each address gets all the time left, so that one that drops SYNs
        // shows as such instead of hiding behind its share.
        let connected = tcp::connect_any(std::slice::from_ref(addr), deadline).await;
        attempt.connects.push(Connect {
            address: addr.to_string(),
            ms: millis(step.elapsed()),
            error: connected.as_ref().err().map(ToString::to_string),
        });
        match connected {
            Ok(stream) => {
                tcp_stream = Some(stream);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let tcp_stream = match (tcp_stream, last_error) {
        (Some(stream), _) => stream,
        (None, Some(e)) if e.kind() == ErrorKind::TimedOut => {
            return fail(attempt, Failure::Timeout, format!("connect timed out: {e}"));
        }
        (None, e) => {
            let why = e.map_or_else(|| "no address".to_owned(), |e| e.to_string());
            return fail(attempt, Failure::Connect, format!("connect failed: {why}"));
        }
    };
    if !endpoint.is_tls() {
        return Ok(Connection::Tcp(tcp_stream));
    }

    let name = match config.tls_server_name() {
        Some(name) => name.clone(),
        None => match tls::server_name(endpoint) {
            Ok(name) => name,
            Err(e) => return fail(attempt, Failure::Tls, format!("no TLS server name: {e}")),
        },
    };
    let step = Instant::now();
    let handshake = within(
        deadline,
        tls::handshake(config.tls_config(), name, tcp_stream),
    )
    .await;
    let mut info = TlsInfo {
        ms: millis(step.elapsed()),
        ..TlsInfo::default()
    };
    let stream = match handshake {
        None => {
            attempt.tls = Some(info);
            return fail(
                attempt,
                Failure::Timeout,
                "the TLS handshake ran out of the connect timeout".into(),
            );
        }
        Some(Err(e)) => {
            attempt.tls = Some(info);
            // As the pool: TLS's own verdict is final; a reset or an end of
            // stream mid-handshake is the network's, and retried.
            let (failure, why) = match tls::is_tls_failure(&e) {
                Some(verdict) => (Failure::Tls, verdict),
                None if e.kind() == ErrorKind::InvalidInput => (Failure::Tls, e.to_string()),
                None => (Failure::Connect, e.to_string()),
            };
            return fail(attempt, failure, format!("TLS handshake failed: {why}"));
        }
        Some(Ok(stream)) => stream,
    };
    let session = stream.get_ref().1;
    info.version = session.protocol_version().map(|v| format!("{v:?}"));
    info.cipher = session
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()));
    info.alpn = session
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    if let Some(cert) = session.peer_certificates().and_then(|certs| certs.first()) {
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert) {
            info.subject = Some(cert.subject().to_string());
            info.issuer = Some(cert.issuer().to_string());
            info.not_after = Some(utc(cert.validity().not_after.timestamp()));
        }
    }
    attempt.tls = Some(info);
    Ok(Connection::Tls(Box::new(stream)))
}

async fn within<F: Future>(deadline: Option<Instant>, step: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, step).await.ok(),
        None => Some(step.await),
    }
}

/// `tls://localhost:8443 #1/3: resolve 0.04ms [127.0.0.1]; connect
/// 127.0.0.1:8443 0.09ms; tls 2.10ms TLSv1_3 ...; connected in 2.31ms`.
fn attempt_line(endpoint: &Endpoint, attempts: u32, attempt: &Attempt) -> String {
    let mut parts = Vec::new();
    if let Some(resolve) = attempt.resolve_ms {
        parts.push(format!(
            "resolve {} [{}]",
            ms(resolve),
            attempt.addresses.join(", ")
        ));
    }
    for connect in &attempt.connects {
        parts.push(match &connect.error {
            None => format!("connect {} {}", connect.address, ms(connect.ms)),
            Some(e) => format!("connect {} {} failed: {e}", connect.address, ms(connect.ms)),
        });
    }
    if let Some(tls) = &attempt.tls {
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".to_owned());
        parts.push(match (&tls.version, &attempt.error) {
            (Some(version), _) => format!(
                "tls {} {version} {} alpn {}, subject \"{}\", issuer \"{}\", expires {}",
                ms(tls.ms),
                or_none(&tls.cipher),
                or_none(&tls.alpn),
                or_none(&tls.subject),
                or_none(&tls.issuer),
                or_none(&tls.not_after)
            ),
            (None, _) => format!("tls {}", ms(tls.ms)),
        });
    }
    parts.push(match &attempt.error {
        None => format!("connected in {}", ms(attempt.total_ms)),
        Some(e) => format!("failed in {}: {e}", ms(attempt.total_ms)),
    });
    format!(
        "{endpoint} #{}/{attempts}: {}",
        attempt.attempt,
        parts.join("; ")
    )
}

/// Waits, reading, until the server ends the idle connection.
async fn watch(connection: Connection, since: Instant) -> Watch {
    let mut buf = [0u8; 1024];
    let (read, tls) = match connection {
        Connection::Tcp(mut stream) => (stream.read(&mut buf).await, false),
        Connection::Tls(mut stream) => (stream.read(&mut buf).await, true),
    };
    let idle_ms = millis(since.elapsed());
    let (closed_by, detail) = match read {
        // rustls reports the end of the plaintext only after close_notify.
        Ok(0) if tls => ("close_notify", None),
        Ok(0) => ("fin", None),
        Ok(n) => ("data", Some(format!("the server sent {n} bytes unasked"))),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => ("rst", None),
        Err(e) if tls && e.kind() == ErrorKind::UnexpectedEof => ("fin_without_close_notify", None),
        Err(e) => ("error", Some(e.to_string())),
    };
    Watch {
        idle_ms,
        closed_by,
        detail,
    }
}

/// Seconds since 1970 as `2026-12-01T09:55:42Z` (proleptic Gregorian,
/// Howard Hinnant's days-to-civil).
fn utc(timestamp: i64) -> String {
    let (days, secs) = (timestamp.div_euclid(86_400), timestamp.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn ms(millis: f64) -> String {
    if millis < 1000.0 {
        format!("{millis:.2}ms")
    } else {
        format!("{:.3}s", millis / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_032_542), "2026-11-30T09:55:42Z");
        assert_eq!(utc(-1), "1969-12-31T23:59:59Z");
    }
}
