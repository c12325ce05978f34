//! The config as command-line flags, for any clap program (feature `clap`).
//!
//! This module owns [`PoolArgs`]: a [`clap::Args`] struct to
//! `#[command(flatten)]` into a program's own parser, with one long flag
//! per [`Config`] field that a flag can carry, named after the field
//! (`--max-idle-time` for `max_idle_time`), each with an environment
//! variable fallback (`CONPOOL_MAX_IDLE_TIME`), under the help headings
//! "Pool" and "Pool TLS". Every flag's help states its default and its
//! rule.
//!
//! ```no_run
//! use clap::Parser;
//! use conpool::{Endpoint, Pool, cli::PoolArgs};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! /// PINGs a Redis server through a pool.
//! #[derive(Parser)]
//! struct Cli {
//!     /// The server: host:port, or tls://host:port.
//!     #[arg(default_value = "127.0.0.1:6379")]
//!     server: Endpoint,
//!     #[command(flatten)]
//!     pool: PoolArgs,
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let cli = Cli::parse(); // a bad value exits here, with code 2
//!     let pool = Pool::new(cli.pool.into_config()?);
//!     let mut conn = pool.get(&cli.server).await?;
//!     conn.write_all(b"PING\r\n").await?;
//!     let mut reply = [0u8; 7];
//!     conn.read_exact(&mut reply).await?;
//!     println!("{}", String::from_utf8_lossy(&reply).trim_end());
//!     Ok(())
//! }
//! ```
//!
//! `ping --max-idle-time 30s --connect-timeout 2s tls://cache.internal:6380`
//! then pools with those two values and the library's defaults for the
//! rest; `ping --help` lists every flag. A flag left unset means the
//! library's default, so `PoolArgs::default()` gives exactly
//! [`Config::default()`]. What a flag cannot carry (hooks, a health check,
//! a resolver, a hand-built TLS config) the program adds to
//! [`PoolArgs::into_builder`]'s builder.
//!
//! # Values
//!
//! Counts are whole numbers; a setting that may be unbounded or off
//! (`Option` in [`Config`]) also takes `none`. Durations are written as
//! people write them: a number and a unit, several in a row if need be
//! (`500ms`, `2s`, `1m30s`, `1.5h`), with the units `ns`, `us` (or `µs`),
//! `ms`, `s`, `m`, `h` and `d`; a bare `0` is zero; an optional duration
//! also takes `none`. Anything up to `Duration::MAX`
//! (`18446744073709551615s999999999ns`) parses; longer is an error.
//!
//! The parser is this module's own, under a hundred lines, rather than a
//! crate's. jiff refuses days (`1d`) in a `SignedDuration` and in a
//! `std::time::Duration` alike, with an error that suggests parsing a
//! `jiff::Span`, which a user of someone else's program cannot act on;
//! `SignedDuration`'s own parse also takes ISO 8601 (`PT2S`), a second
//! grammar to document. humantime takes months and years of fuzzy length
//! (a month is 30.44 days) and reads `1M` as a month where `1m` is a
//! minute, a trap in flags that are mostly minutes. Neither knows `none`.
//! Ours takes exactly the grammar above, keeps nanosecond precision (a
//! value finer than a nanosecond is an error, never rounded), adds up in
//! `u128` so that no input overflows or panics, and words its errors for
//! whoever runs the program.
//!
//! # Bad values
//!
//! A bad value is a clap error, so it ends a `Cli::parse()` with exit code
//! 2 and one line naming the flag, the value and the rule, before the
//! program dials anything. A value clap cannot
//! read (`--max-idle-time soon`) is reported by clap itself; a value that
//! breaks one of the config's rules is reported with the rule's own text
//! from [`ConfigBuilder::build`], which every parse runs, so that the rules
//! live in one place:
//!
//! ```text
//! error: invalid value '0s' for '--max-idle-time <DURATION>': max_idle_time is 0s; it must be above zero
//! ```
//!
//! # TLS
//!
//! The "Pool TLS" flags are the config's `tls_` settings, each set through
//! its [`ConfigBuilder`] setter, which reads and checks the files:
//! `--tls-roots` (which trust store: webpki, platform or none),
//! `--tls-ca-file` (PEM root certificates to trust; without `--tls-roots`,
//! instead of the webpki roots, as this flag always meant),
//! `--tls-client-cert` with `--tls-client-key` (a PEM certificate chain and
//! its key, for mutual TLS), `--tls-server-name` (the name to verify, and
//! send as SNI, instead of each endpoint's host; see
//! [`ConfigBuilder::tls_server_name`]), `--tls-alpn-protocols`,
//! `--tls-session-cache-size`, and `--tls-insecure-skip-verify`, which
//! turns certificate verification off and says so with a warning (through
//! `tracing`) when the builder is made and on every certificate it lets
//! through. The files are read while the flags are parsed (and again at
//! [`build`](ConfigBuilder::build)): a file that cannot be read, holds no
//! certificate or key, or a key that is not the certificate's is a clap
//! error naming the flag and the file, like any other bad value.
//!
//! The arguments' ids are the config's field names (`max_idle_time`, ...):
//! a parser that flattens `PoolArgs` uses other ids, and other long names,
//! for its own arguments.

use std::ffi::OsStr;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgMatches, Args, FromArgMatches};
use rustls::pki_types::ServerName;

use crate::config::{
    DEFAULT_TLS_SESSION_CACHE_SIZE, MAX_CONNECT_RETRY_COUNT, MAX_TLS_SESSION_CACHE_SIZE,
};
use crate::{Config, ConfigBuilder, Error, ThreadSlots, TlsRoots};

/// Every [`Config`] setting a flag can carry, as flags; see the
/// [module docs](self) for the grammar of values and how bad ones are
/// reported.
///
/// `PoolArgs::default()` (no flag set) gives [`Config::default()`]; a
/// parsed one has been checked against every rule of
/// [`ConfigBuilder::build`].
///
/// ```
/// use clap::Parser;
/// use conpool::cli::PoolArgs;
/// use std::time::Duration;
///
/// #[derive(Parser)]
/// struct Cli {
///     #[command(flatten)]
///     pool: PoolArgs,
/// }
///
/// let cli = Cli::try_parse_from(["demo", "--max-idle-time", "1m30s", "--acquire-timeout", "none"])?;
/// let config = cli.pool.into_config()?;
/// assert_eq!(config.max_idle_time(), Duration::from_secs(90));
/// assert_eq!(config.acquire_timeout(), None);
///
/// let err = Cli::try_parse_from(["demo", "--max-connections-per-endpoint", "0"]).err().unwrap();
/// assert_eq!(err.exit_code(), 2);
/// assert!(err.to_string().contains(
///     "invalid value '0' for '--max-connections-per-endpoint <N>': \
///      max_connections_per_endpoint is 0; it must be at least 1"
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct PoolArgs {
    flags: PoolFlags,
}

/// `Option<T>` under another name, so that clap's derive does not read
/// `Option<Option<T>>` as a flag whose value may be left out: the outer
/// `Option` is whether the flag was given, the inner one its `none`.
type NoneOr<T> = Option<T>;

/// A list under another name, so that clap's derive does not read
/// `Option<Vec<T>>` as a flag given once per value: it is one value,
/// comma-separated, whose `none` is the empty list.
type List = Vec<String>;

// The flags as clap parses them, before the rules are checked and the TLS
// files read. Each field is named as the config field (and setter) it
// sets, which is also its argument id. (Not a doc comment: clap would make
// it the about text of the program that flattens the flags.)
#[derive(Args, Clone, Debug, Default)]
#[group(id = "PoolArgs")]
#[command(next_help_heading = "Pool")]
struct PoolFlags {
    /// Most connections per endpoint, leased, idle and being dialed
    /// together; at least 1 [default: 10]
    #[arg(long, env = "CONPOOL_MAX_CONNECTIONS_PER_ENDPOINT", value_name = "N")]
    max_connections_per_endpoint: Option<usize>,

    /// An idle connection unused for longer is closed instead of reused;
    /// above 0 [default: 1m]
    #[arg(long, env = "CONPOOL_MAX_IDLE_TIME", value_name = "DURATION", value_parser = duration)]
    max_idle_time: Option<Duration>,

    /// A connection older than this is closed instead of reused; above 0
    /// [default: 5m]
    #[arg(long, env = "CONPOOL_MAX_CONNECTION_LIFETIME", value_name = "DURATION", value_parser = duration)]
    max_connection_lifetime: Option<Duration>,

    /// A connection handed out this many times is closed on its return; at
    /// least 1, or none for unlimited [default: none]
    #[arg(long, env = "CONPOOL_MAX_CONNECTION_USES", value_name = "N", value_parser = count_or_none::<u64>)]
    max_connection_uses: Option<NoneOr<u64>>,

    /// The bound on one connect attempt (resolve, TCP connect and TLS
    /// handshake), the racing addresses and all; above 0, or none for the
    /// OS's own [default: 10s]
    #[arg(long, env = "CONPOOL_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = duration_or_none)]
    connect_timeout: Option<NoneOr<Duration>>,

    // The rule's bound is a constant: the help is made at run time.
    #[arg(
        long,
        env = "CONPOOL_CONNECT_RETRY_COUNT",
        value_name = "N",
        help = format!("How many connect attempts a dial makes before it fails; 1 to {MAX_CONNECT_RETRY_COUNT} [default: 3]")
    )]
    connect_retry_count: Option<u32>,

    /// The wait after the first failed connect attempt, doubled after each
    /// next one; any duration [default: 100ms]
    #[arg(long, env = "CONPOOL_CONNECT_RETRY_DELAY", value_name = "DURATION", value_parser = duration)]
    connect_retry_delay: Option<Duration>,

    /// The bound on a get as a whole, waiting for a free slot plus dialing;
    /// above 0, or none to wait without bound [default: 30s]
    #[arg(long, env = "CONPOOL_ACQUIRE_TIMEOUT", value_name = "DURATION", value_parser = duration_or_none)]
    acquire_timeout: Option<NoneOr<Duration>>,

    /// Callers allowed to wait per endpoint, past which a get fails at
    /// once; 0 never waits, none for unbounded [default: none]
    #[arg(long, env = "CONPOOL_MAX_WAITERS_PER_ENDPOINT", value_name = "N", value_parser = count_or_none::<usize>)]
    max_waiters_per_endpoint: Option<NoneOr<usize>>,

    /// Dials in flight per endpoint at most; at least 1 [default: 8]
    #[arg(long, env = "CONPOOL_MAX_CONCURRENT_DIALS", value_name = "N")]
    max_concurrent_dials: Option<usize>,

    /// Connections across all endpoints at most, leased, idle and dialing;
    /// at least 1, or none for unbounded [default: none]
    #[arg(long, env = "CONPOOL_MAX_CONNECTIONS_TOTAL", value_name = "N", value_parser = count_or_none::<usize>)]
    max_connections_total: Option<NoneOr<usize>>,

    /// Idle connections across all endpoints at most, past which the least
    /// recently used one closes; none for unbounded [default: none]
    #[arg(long, env = "CONPOOL_MAX_IDLE_TOTAL", value_name = "N", value_parser = count_or_none::<usize>)]
    max_idle_total: Option<NoneOr<usize>>,

    /// Idle connections the background task keeps warm per endpoint in use;
    /// at most --max-connections-per-endpoint, and not with
    /// --maintenance-interval none [default: 0]
    #[arg(long, env = "CONPOOL_MIN_IDLE_PER_ENDPOINT", value_name = "N")]
    min_idle_per_endpoint: Option<usize>,

    /// Look at every connection before it is handed out, for a peer close,
    /// a reset or stray bytes; true or false [default: true]
    #[arg(long, env = "CONPOOL_LIVENESS_CHECK", value_name = "BOOL", action = clap::ArgAction::Set)]
    liveness_check: Option<bool>,

    /// From how long idle (or how long a lease) the liveness check asks the
    /// kernel, not only the runtime's readiness; any duration, 0 asks at
    /// every checkout [default: 0]
    #[arg(long, env = "CONPOOL_LIVENESS_PEEK_AFTER", value_name = "DURATION", value_parser = duration)]
    liveness_peek_after: Option<Duration>,

    /// Largest random fraction cut from each connection's lifetime, so that
    /// connections made together do not expire together; 0.0 to 0.5
    /// [default: 0.025]
    #[arg(
        long,
        env = "CONPOOL_MAX_CONNECTION_LIFETIME_JITTER",
        value_name = "FRACTION"
    )]
    max_connection_lifetime_jitter: Option<f64>,

    /// How often the background task evicts expired and dead idle
    /// connections and refills --min-idle-per-endpoint; above 0, or none
    /// for no background task [default: 1s]
    #[arg(long, env = "CONPOOL_MAINTENANCE_INTERVAL", value_name = "DURATION", value_parser = duration_or_none)]
    maintenance_interval: Option<NoneOr<Duration>>,

    /// A lease held longer than this logs one warning naming where it was
    /// acquired; above 0, or none for off [default: none]
    #[arg(long, env = "CONPOOL_LEAK_THRESHOLD", value_name = "DURATION", value_parser = duration_or_none)]
    leak_threshold: Option<NoneOr<Duration>>,

    /// When endpoints keep returned connections in per-thread slots; never
    /// used with a total limit or a leak threshold [default: when-contended]
    #[arg(long, env = "CONPOOL_THREAD_SLOTS", value_name = "WHEN", value_enum)]
    thread_slots: Option<ThreadSlots>,

    /// The longest a resolved name's addresses are kept (a shorter TTL
    /// from the resolver wins; failures are kept 1s); any duration, 0
    /// keeps none [default: 30s]
    #[arg(long, env = "CONPOOL_DNS_CACHE_TTL", value_name = "DURATION", value_parser = duration)]
    dns_cache_ttl: Option<Duration>,

    /// How long one of a host's addresses gets before the next is raced
    /// against it (Happy Eyeballs); at least 10ms, or 0 or none for one
    /// address at a time [default: 250ms]
    #[arg(long, env = "CONPOOL_HAPPY_EYEBALLS_DELAY", value_name = "DURATION", value_parser = duration_or_none)]
    happy_eyeballs_delay: Option<NoneOr<Duration>>,

    /// Idle time before the first TCP keepalive probe; whole seconds from
    /// 1s to 32767s, or none for keepalive off [default: none]
    #[arg(long, env = "CONPOOL_TCP_KEEPALIVE", value_name = "DURATION", value_parser = duration_or_none)]
    tcp_keepalive: Option<NoneOr<Duration>>,

    /// Time between TCP keepalive probes; whole seconds from 1s to 32767s,
    /// needs --tcp-keepalive; none for the OS's [default: none]
    #[arg(long, env = "CONPOOL_TCP_KEEPALIVE_INTERVAL", value_name = "DURATION", value_parser = duration_or_none)]
    tcp_keepalive_interval: Option<NoneOr<Duration>>,

    /// Unanswered TCP keepalive probes before the connection is dropped; 1
    /// to 127, needs --tcp-keepalive; none for the OS's [default: none]
    #[arg(long, env = "CONPOOL_TCP_KEEPALIVE_RETRIES", value_name = "N", value_parser = count_or_none::<u32>)]
    tcp_keepalive_retries: Option<NoneOr<u32>>,

    /// SO_RCVBUF of every TCP socket, in bytes, set before it connects; 1
    /// to 2147483647, or none for the OS's [default: none]
    #[arg(long, env = "CONPOOL_RECV_BUFFER_SIZE", value_name = "BYTES", value_parser = count_or_none::<usize>)]
    recv_buffer_size: Option<NoneOr<usize>>,

    /// SO_SNDBUF of every TCP socket, in bytes, set before it connects; 1
    /// to 2147483647, or none for the OS's [default: none]
    #[arg(long, env = "CONPOOL_SEND_BUFFER_SIZE", value_name = "BYTES", value_parser = count_or_none::<usize>)]
    send_buffer_size: Option<NoneOr<usize>>,

    /// The local IP address every TCP connection is bound to; only a
    /// host's addresses of its family are dialed; none lets the OS pick
    /// [default: none]
    #[arg(long, env = "CONPOOL_LOCAL_ADDRESS", value_name = "IP", value_parser = ip_or_none)]
    local_address: Option<NoneOr<IpAddr>>,

    /// TCP_USER_TIMEOUT (Linux): how long sent data may stay unacknowledged
    /// before the connection is dropped; whole milliseconds from 1ms, or
    /// none for the OS's [default: none]
    #[arg(long, env = "CONPOOL_TCP_USER_TIMEOUT", value_name = "DURATION", value_parser = duration_or_none)]
    tcp_user_timeout: Option<NoneOr<Duration>>,

    /// TCP_NODELAY on every TCP connection (Nagle's algorithm off); true
    /// or false [default: true]
    #[arg(long, env = "CONPOOL_TCP_NODELAY", value_name = "BOOL", action = clap::ArgAction::Set)]
    tcp_nodelay: Option<bool>,
    /// Failed dials in a row after which an endpoint's circuit breaker
    /// opens and gets fail fast until a probe dial succeeds; 0 turns it off
    /// [default: 5]
    #[arg(long, env = "CONPOOL_BREAKER_FAILURES", value_name = "N")]
    breaker_failures: Option<u32>,

    /// Which trust store verifies TLS servers: webpki (the Mozilla roots
    /// built in), platform (the operating system's; needs conpool's
    /// platform-verifier feature) or none (only --tls-ca-file). With
    /// --tls-ca-file and without this flag, none [default: webpki]
    #[arg(
        long,
        env = "CONPOOL_TLS_ROOTS",
        value_name = "STORE",
        help_heading = "Pool TLS",
        value_enum
    )]
    tls_roots: Option<TlsRoots>,

    /// PEM file of the root certificates to trust, instead of the webpki
    /// roots (beside --tls-roots, when that is given) [default: none]
    #[arg(
        long,
        env = "CONPOOL_TLS_CA_FILE",
        value_name = "PEM_FILE",
        help_heading = "Pool TLS"
    )]
    tls_ca_file: Option<PathBuf>,

    /// PEM file of the client certificate chain to present (mutual TLS);
    /// needs --tls-client-key [default: none]
    #[arg(
        long,
        env = "CONPOOL_TLS_CLIENT_CERT",
        value_name = "PEM_FILE",
        help_heading = "Pool TLS",
        requires = "tls_client_key"
    )]
    tls_client_cert: Option<PathBuf>,

    /// PEM file of the private key of --tls-client-cert [default: none]
    #[arg(
        long,
        env = "CONPOOL_TLS_CLIENT_KEY",
        value_name = "PEM_FILE",
        help_heading = "Pool TLS",
        requires = "tls_client_cert"
    )]
    tls_client_key: Option<PathBuf>,

    /// The name to verify every TLS endpoint's certificate against, and
    /// send as SNI, instead of the endpoint's host; a DNS name or an IP
    /// address [default: the endpoint's host]
    #[arg(
        long,
        env = "CONPOOL_TLS_SERVER_NAME",
        value_name = "NAME",
        help_heading = "Pool TLS",
        value_parser = server_name
    )]
    tls_server_name: Option<ServerName<'static>>,

    /// ALPN protocols to offer, most preferred first, comma-separated
    /// (h2,http/1.1); each 1 to 255 bytes, or none [default: none]
    #[arg(
        long,
        env = "CONPOOL_TLS_ALPN_PROTOCOLS",
        value_name = "LIST",
        help_heading = "Pool TLS",
        value_parser = list_or_none
    )]
    tls_alpn_protocols: Option<List>,

    // The default is a constant: the help is made at run time.
    #[arg(
        long,
        env = "CONPOOL_TLS_SESSION_CACHE_SIZE",
        value_name = "N",
        help_heading = "Pool TLS",
        help = format!("TLS sessions kept to resume later handshakes with the same hosts; 0 (resumption off) to {MAX_TLS_SESSION_CACHE_SIZE} [default: {DEFAULT_TLS_SESSION_CACHE_SIZE}]")
    )]
    tls_session_cache_size: Option<usize>,

    /// Accept any server certificate, unverified: anyone on the path can
    /// pose as the server. Warns on every use; true or false, alone true
    /// [default: false]
    #[arg(
        long,
        env = "CONPOOL_TLS_INSECURE_SKIP_VERIFY",
        value_name = "BOOL",
        help_heading = "Pool TLS",
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    tls_insecure_skip_verify: Option<bool>,
}

impl PoolArgs {
    /// A builder with every flag given set, and the library's defaults for
    /// the rest, for the program to add what flags cannot carry (hooks, a
    /// health check, a TLS config of its own) before
    /// [`build`](ConfigBuilder::build).
    ///
    /// With `--tls-insecure-skip-verify`, logs a warning that certificates
    /// will not be verified.
    pub fn into_builder(self) -> ConfigBuilder {
        if self.flags.tls_insecure_skip_verify == Some(true) {
            tracing::warn!(
                "--tls-insecure-skip-verify: TLS server certificates are not verified; anyone on the path can pose as any TLS endpoint"
            );
        }
        self.builder()
    }

    /// The config the flags describe: [`into_builder`](Self::into_builder)
    /// then [`build`](ConfigBuilder::build). Parsed flags were checked
    /// against the same rules, and `PoolArgs::default()` is the default
    /// config, so the `Result` is only `build`'s own.
    pub fn into_config(self) -> Result<Config, Error> {
        self.into_builder().build()
    }

    fn builder(&self) -> ConfigBuilder {
        // Each flag's field is named as the setter it feeds.
        macro_rules! set_given {
            ($builder:expr; $($field:ident),* $(,)?) => {{
                let mut builder = $builder;
                $(
                    if let Some(value) = self.flags.$field.clone() {
                        builder = builder.$field(value);
                    }
                )*
                builder
            }};
        }
        let builder = set_given!(Config::builder();
            max_connections_per_endpoint,
            max_idle_time,
            max_connection_lifetime,
            max_connection_uses,
            connect_timeout,
            connect_retry_count,
            connect_retry_delay,
            acquire_timeout,
            max_waiters_per_endpoint,
            max_concurrent_dials,
            max_connections_total,
            max_idle_total,
            min_idle_per_endpoint,
            liveness_check,
            liveness_peek_after,
            max_connection_lifetime_jitter,
            maintenance_interval,
            leak_threshold,
            thread_slots,
            breaker_failures,
            tls_server_name,
            dns_cache_ttl,
            happy_eyeballs_delay,
            tcp_keepalive,
            tcp_keepalive_interval,
            tcp_keepalive_retries,
            recv_buffer_size,
            send_buffer_size,
            local_address,
            tcp_user_timeout,
            tcp_nodelay,
            tls_roots,
            tls_ca_file,
            tls_client_cert,
            tls_client_key,
            tls_alpn_protocols,
            tls_session_cache_size,
            tls_insecure_skip_verify,
        );
        // The flag's meaning from before --tls-roots: the file's roots
        // instead of the webpki ones, never beside them unasked.
        if self.flags.tls_ca_file.is_some() && self.flags.tls_roots.is_none() {
            builder.tls_roots(TlsRoots::None)
        } else {
            builder
        }
    }

    /// Checks every rule, reading the TLS files as the builder does, as a
    /// clap error naming the flag and its value as given.
    fn checked(flags: PoolFlags, matches: &ArgMatches) -> Result<PoolArgs, clap::Error> {
        let args = PoolArgs { flags };
        match args.builder().build() {
            Ok(_) => Ok(args),
            Err(err) => Err(rule_broken(err, matches)),
        }
    }
}

impl fmt::Debug for PoolArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The flags say all the rustls config was built from.
        self.flags.fmt(f)
    }
}

impl Args for PoolArgs {
    fn group_id() -> Option<clap::Id> {
        PoolFlags::group_id()
    }
    fn augment_args(cmd: clap::Command) -> clap::Command {
        PoolFlags::augment_args(cmd)
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        PoolFlags::augment_args_for_update(cmd)
    }
}

impl FromArgMatches for PoolArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        PoolArgs::checked(PoolFlags::from_arg_matches(matches)?, matches)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let mut flags = self.flags.clone();
        flags.update_from_arg_matches(matches)?;
        *self = PoolArgs::checked(flags, matches)?;
        Ok(())
    }
}

/// A rule of [`ConfigBuilder::build`] broken, as the clap error of the flag
/// that set the field, with the rule's own words.
fn rule_broken(err: Error, matches: &ArgMatches) -> clap::Error {
    if let Error::InvalidConfig { field, reason } = &err {
        let given = matches.try_get_raw(field).ok().flatten();
        if let Some(value) = given.and_then(|mut values| values.next()) {
            return invalid_value(field, value, format!("{field} {reason}"));
        }
    }
    clap::Error::raw(ErrorKind::ValueValidation, err.to_string())
}

/// The error clap gives for a value its parser refuses, for a value refused
/// after parsing: `invalid value '…' for '--flag <VALUE>': why`.
fn invalid_value(id: &str, value: &OsStr, why: impl fmt::Display) -> clap::Error {
    let mut cmd = PoolFlags::augment_args(clap::Command::new("conpool"));
    // Arguments print with their value names only once built.
    cmd.build();
    let flag = match cmd.get_arguments().find(|arg| arg.get_id() == id) {
        Some(arg) => arg.to_string(),
        None => id.to_owned(),
    };
    clap::Error::raw(
        ErrorKind::ValueValidation,
        format!(
            "invalid value '{}' for '{flag}': {why}",
            value.to_string_lossy()
        ),
    )
}

fn server_name(value: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(value.to_owned())
        .map_err(|_| "it must be a DNS name or an IP address".to_owned())
}

fn list_or_none(value: &str) -> Result<List, String> {
    Ok(match value {
        "none" => Vec::new(),
        list => list.split(',').map(str::to_owned).collect(),
    })
}

fn count_or_none<T>(value: &str) -> Result<Option<T>, String>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    if value == "none" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e| format!("{e}; write a whole number, or none"))
}

fn ip_or_none(value: &str) -> Result<Option<IpAddr>, String> {
    if value == "none" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| "write an IPv4 or IPv6 address, such as 10.0.0.5 or ::1, or none".to_owned())
}

fn duration_or_none(value: &str) -> Result<Option<Duration>, String> {
    if value == "none" {
        return Ok(None);
    }
    parse_duration(value).map(Some)
}

fn duration(value: &str) -> Result<Duration, String> {
    if value == "none" {
        return Err(format!(
            "this setting always has a duration (none is for settings that can be off); {EXAMPLES}"
        ));
    }
    parse_duration(value)
}

const EXAMPLES: &str = "write a duration such as 500ms, 2s or 1m30s";

/// `Duration::MAX` in nanoseconds, the most a duration can hold.
const MAX_NANOS: u128 = u64::MAX as u128 * NANOS_PER_SEC + 999_999_999;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration as the duration flags take it (see the
/// [module docs](self#values)): numbers, each with a unit, added up, or a
/// bare `0`; not `none`. For a program's own duration flags, so that they
/// read as the pool's do; the error says what is wrong and what to write,
/// ready for a clap `value_parser`.
///
/// ```
/// use conpool::cli::parse_duration;
/// use std::time::Duration;
///
/// assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(
///     parse_duration("90").unwrap_err(),
///     "the number 90 has no unit; write a duration such as 500ms, 2s or 1m30s"
/// );
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(format!("it is empty; {EXAMPLES}"));
    }
    let too_long = || format!("it is longer than the longest duration, {MAX_NANOS}ns");
    let mut rest = text;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (whole, after) = split_digits(rest);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => split_digits(after),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(format!("expected a number at {rest:?}; {EXAMPLES}"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3_600 * NANOS_PER_SEC,
            "d" => 86_400 * NANOS_PER_SEC,
            "" => {
                return Err(format!(
                    "the number {whole}{}{fraction} has no unit; {EXAMPLES}",
                    if fraction.is_empty() { "" } else { "." }
                ));
            }
            other => {
                return Err(format!(
                    "unknown unit {other:?}; the units are ns, us, ms, s, m, h and d, as in 500ms, 2s or 1m30s"
                ));
            }
        };
        let mut nanos: u128 = 0;
        for digit in whole.bytes() {
            nanos = nanos
                .checked_mul(10)
                .and_then(|n| n.checked_add(u128::from(digit - b'0')))
                .ok_or_else(too_long)?;
        }
        nanos = nanos.checked_mul(unit_nanos).ok_or_else(too_long)?;
        let fraction = fraction.trim_end_matches('0');
        if !fraction.is_empty() {
            // A day is under 10^14 ns: past 14 decimals no unit is still
            // a whole number of nanoseconds, and 10^18 keeps the product
            // within u128.
            let finer = || "it is finer than a nanosecond".to_owned();
            if fraction.len() > 18 {
                return Err(finer());
            }
            let scale = 10u128.pow(fraction.len() as u32);
            let digits: u128 = fraction.parse().map_err(|_| finer())?;
            let part = digits * unit_nanos;
            if part % scale != 0 {
                return Err(finer());
            }
            nanos = nanos.checked_add(part / scale).ok_or_else(too_long)?;
        }
        total = total.checked_add(nanos).ok_or_else(too_long)?;
        rest = after.trim_start();
    }
    if total > MAX_NANOS {
        return Err(too_long());
    }
    // Both fit: total is at most MAX_NANOS.
    let secs = (total / NANOS_PER_SEC) as u64;
    let nanos = (total % NANOS_PER_SEC) as u32;
    Ok(Duration::new(secs, nanos))
}

/// The leading ASCII digits of `text`, and what follows them.
fn split_digits(text: &str) -> (&str, &str) {
    text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_people_write_them() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        for (text, expected) in [
            ("500ms", ms(500)),
            ("2s", s(2)),
            ("1m30s", s(90)),
            ("1m 30s", s(90)),
            ("1.5h", s(5400)),
            (".5s", ms(500)),
            ("1d", s(86_400)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1.000000001s", Duration::new(1, 1)),
            ("1.10s", ms(1100)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn the_longest_duration_parses_and_one_nanosecond_more_is_an_error() {
        let max = "18446744073709551615s999999999ns";
        assert_eq!(parse_duration(max), Ok(Duration::MAX));
        let too_long =
            "it is longer than the longest duration, 18446744073709551615999999999ns".to_owned();
        for text in [
            "18446744073709551615s1000000000ns",
            "18446744073709551616s",
            "213503982334601d8h",
            // More digits than a u128 holds, and a unit that multiplies them.
            "99999999999999999999999999999999999999999ns",
            "9999999999999999999999999999999d",
        ] {
            assert_eq!(parse_duration(text), Err(too_long.clone()), "{text}");
        }
    }

    #[test]
    fn garbage_is_an_error_that_says_what_to_write() {
        for (text, expected) in [
            (
                "",
                "it is empty; write a duration such as 500ms, 2s or 1m30s",
            ),
            (
                "90",
                "the number 90 has no unit; write a duration such as 500ms, 2s or 1m30s",
            ),
            (
                "5min",
                "unknown unit \"min\"; the units are ns, us, ms, s, m, h and d, as in 500ms, 2s or 1m30s",
            ),
            (
                "1M",
                "unknown unit \"M\"; the units are ns, us, ms, s, m, h and d, as in 500ms, 2s or 1m30s",
            ),
            (
                "soon",
                "expected a number at \"soon\"; write a duration such as 500ms, 2s or 1m30s",
            ),
            (
                "-1s",
                "expected a number at \"-1s\"; write a duration such as 500ms, 2s or 1m30s",
            ),
            ("1.5ns", "it is finer than a nanosecond"),
            ("0.0000000000000000001d", "it is finer than a nanosecond"),
        ] {
            assert_eq!(parse_duration(text), Err(expected.to_owned()), "{text:?}");
        }
    }
}
