//! `cli::PoolArgs` flattened into a small program's parser, as a user's
//! program would: a flag and an environment variable for every config
//! field, the library's defaults when nothing is set, values as people
//! write them, every bad value a clap error with the config's own rule
//! text (exit code 2, nothing dialed), and the TLS flags against embedded
//! TLS servers on loopback.
//!
//! The environment cannot be changed inside a test process (edition 2024
//! makes `set_var` unsafe, and tests run in parallel), so the tests of
//! environment variables and of the exit code run this test binary again
//! as a child process with the environment they need; the child is the
//! ignored test `child_program`.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{CommandFactory, Parser};
use conpool::cli::PoolArgs;
use conpool::{Config, Endpoint, Error, Pool, ThreadSlots, TlsRoots};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::servers::Pems;
use support::{EchoServer, TlsCert, round_trip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The program under test: an optional endpoint to dial, and the pool's
/// flags.
#[derive(Parser, Debug)]
#[command(name = "demo")]
struct Demo {
    /// Dialed once after parsing, by the child program.
    endpoint: Option<Endpoint>,
    #[command(flatten)]
    pool: PoolArgs,
}

/// Config fields that no flag can carry: code, not values.
const NOT_FLAGS: [&str; 6] = [
    "health_check",
    "resolver",
    "on_connect",
    "on_connection_created",
    "on_connection_reused",
    "on_connection_closed",
];

/// Parses `args` (after the program name) in this process, whose
/// environment must not hold any of the flags' variables.
fn parse(args: &[&str]) -> Result<Demo, clap::Error> {
    let set: Vec<String> = pool_env_vars()
        .into_iter()
        .filter(|name| std::env::var_os(name).is_some())
        .collect();
    assert!(
        set.is_empty(),
        "unset {set:?} to run these tests: they would stand in for unset flags"
    );
    Demo::try_parse_from(std::iter::once("demo").chain(args.iter().copied()))
}

fn config_of(args: &[&str]) -> Config {
    parse(args)
        .unwrap_or_else(|e| panic!("{args:?} should parse: {e}"))
        .pool
        .into_config()
        .unwrap()
}

/// The first line of the error `args` give, checked to be a usage error
/// (exit code 2).
fn error_of(args: &[&str]) -> String {
    let err = parse(args).expect_err("a bad value");
    assert_eq!(err.exit_code(), 2, "{err}");
    err.to_string().lines().next().unwrap().to_owned()
}

/// The line `args` would give if `rule_broken` were the error
/// `Config::builder()...build()` gives: the rule's text, from the builder.
fn rule_error(flag: &str, value: &str, rule_broken: Error) -> String {
    let Error::InvalidConfig { field, reason } = rule_broken else {
        panic!("expected InvalidConfig, got {rule_broken:?}");
    };
    format!("error: invalid value '{value}' for '{flag}': {field} {reason}")
}

/// Every argument PoolArgs adds to a program.
fn pool_args() -> Vec<clap::Arg> {
    let mut cmd = Demo::command();
    cmd.build();
    cmd.get_arguments()
        .filter(|arg| arg.get_long().is_some_and(|long| long != "help"))
        .cloned()
        .collect()
}

fn pool_env_vars() -> Vec<String> {
    pool_args()
        .iter()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect()
}

/// The fields of a config's `Debug` output, by name, each value as printed.
fn debug_fields(config: &Config) -> BTreeMap<String, String> {
    fields_of_debug(&format!("{config:?}"))
}

fn fields_of_debug(text: &str) -> BTreeMap<String, String> {
    let body = text
        .strip_prefix("Config { ")
        .and_then(|s| s.strip_suffix(", .. }"))
        .unwrap_or_else(|| panic!("unexpected Debug output: {text}"));
    let mut fields = BTreeMap::new();
    let (mut depth, mut start) = (0i32, 0);
    let mut push = |field: &str| {
        let (name, value) = field.split_once(": ").unwrap();
        fields.insert(name.to_owned(), value.to_owned());
    };
    for (i, c) in body.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                push(&body[start..i]);
                start = i + 2;
            }
            _ => {}
        }
    }
    push(&body[start..]);
    fields
}

#[test]
fn every_config_field_has_a_flag_and_an_environment_variable() {
    let args = pool_args();
    let fields = debug_fields(&Config::default());
    assert!(fields.len() > 20, "fields read from Debug: {fields:?}");
    for field in fields.keys().filter(|f| !NOT_FLAGS.contains(&f.as_str())) {
        let long = field.replace('_', "-");
        let env = format!("CONPOOL_{}", field.to_uppercase());
        let arg = args
            .iter()
            .find(|arg| arg.get_id() == field.as_str())
            .unwrap_or_else(|| panic!("Config::{field} has no flag in PoolArgs"));
        assert_eq!(arg.get_long(), Some(long.as_str()), "{field}");
        assert_eq!(
            arg.get_env().map(|e| e.to_string_lossy()).as_deref(),
            Some(env.as_str()),
            "{field}"
        );
    }
    // The TLS flags, which build the rustls config, follow the same naming.
    for arg in &args {
        let id = arg.get_id().as_str();
        assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()));
        let env = format!("CONPOOL_{}", id.to_uppercase());
        assert_eq!(
            arg.get_env().map(|e| e.to_string_lossy()).as_deref(),
            Some(env.as_str()),
            "--{id}"
        );
        let heading = arg.get_help_heading();
        assert!(
            heading == Some("Pool") || heading == Some("Pool TLS"),
            "--{id} is under {heading:?}"
        );
    }
    let tls: Vec<_> = args
        .iter()
        .filter(|arg| arg.get_help_heading() == Some("Pool TLS"))
        .map(|arg| arg.get_id().as_str())
        .collect();
    assert_eq!(
        tls,
        [
            "tls_roots",
            "tls_ca_file",
            "tls_client_cert",
            "tls_client_key",
            "tls_server_name",
            "tls_alpn_protocols",
            "tls_session_cache_size",
            "tls_insecure_skip_verify"
        ]
    );
}

#[test]
fn each_flag_states_its_default_and_that_value_is_the_librarys_default() {
    let defaults = debug_fields(&Config::default());
    for arg in pool_args() {
        let id = arg.get_id().as_str().to_owned();
        let help = arg.get_help().expect("every flag has help").to_string();
        let stated = help
            .split_once("[default: ")
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(value, _)| value.to_owned())
            .unwrap_or_else(|| panic!("--{id}'s help states no default: {help}"));
        let default = &defaults[&id];
        if id == "tls_server_name" {
            // Not a value: no name at all.
            assert_eq!(stated, "the endpoint's host");
            continue;
        }
        if ["tls_ca_file", "tls_client_cert", "tls_client_key"].contains(&id.as_str()) {
            // Not a value either: no file at all.
            assert_eq!((stated.as_str(), default.as_str()), ("none", "None"));
            continue;
        }
        let flag = format!("--{}", id.replace('_', "-"));
        let given = debug_fields(&config_of(&[&flag, &stated]));
        assert_eq!(&given[&id], default, "{flag} {stated} is not the default");
    }
}

#[test]
fn no_flags_and_default_pool_args_both_give_the_default_config() {
    let expected = Config::default();
    for (how, config) in [
        (
            "PoolArgs::default()",
            PoolArgs::default().into_config().unwrap(),
        ),
        ("no flags", config_of(&[])),
        (
            "PoolArgs::default().into_builder()",
            PoolArgs::default().into_builder().build().unwrap(),
        ),
    ] {
        let e = &expected;
        let c = &config;
        assert_eq!(
            c.max_connections_per_endpoint(),
            e.max_connections_per_endpoint(),
            "{how}"
        );
        assert_eq!(c.max_idle_time(), e.max_idle_time(), "{how}");
        assert_eq!(
            c.max_connection_lifetime(),
            e.max_connection_lifetime(),
            "{how}"
        );
        assert_eq!(c.max_connection_uses(), e.max_connection_uses(), "{how}");
        assert_eq!(c.connect_timeout(), e.connect_timeout(), "{how}");
        assert_eq!(c.connect_retry_count(), e.connect_retry_count(), "{how}");
        assert_eq!(c.connect_retry_delay(), e.connect_retry_delay(), "{how}");
        assert_eq!(c.acquire_timeout(), e.acquire_timeout(), "{how}");
        assert_eq!(
            c.max_waiters_per_endpoint(),
            e.max_waiters_per_endpoint(),
            "{how}"
        );
        assert_eq!(c.max_concurrent_dials(), e.max_concurrent_dials(), "{how}");
        assert_eq!(
            c.max_connections_total(),
            e.max_connections_total(),
            "{how}"
        );
        assert_eq!(c.max_idle_total(), e.max_idle_total(), "{how}");
        assert_eq!(
            c.min_idle_per_endpoint(),
            e.min_idle_per_endpoint(),
            "{how}"
        );
        assert_eq!(c.liveness_check(), e.liveness_check(), "{how}");
        assert_eq!(c.liveness_peek_after(), e.liveness_peek_after(), "{how}");
        assert_eq!(
            c.max_connection_lifetime_jitter(),
            e.max_connection_lifetime_jitter(),
            "{how}"
        );
        assert_eq!(c.maintenance_interval(), e.maintenance_interval(), "{how}");
        assert_eq!(c.leak_threshold(), e.leak_threshold(), "{how}");
        assert_eq!(c.thread_slots(), e.thread_slots(), "{how}");
        assert_eq!(c.breaker_failures(), e.breaker_failures(), "{how}");
        assert!(c.health_check().is_none(), "{how}");
        assert_eq!(c.tls_server_name(), e.tls_server_name(), "{how}");
        // The very default TLS config (webpki roots), not one rebuilt.
        assert!(Arc::ptr_eq(c.tls_config(), e.tls_config()), "{how}");
        // And nothing the getters miss.
        assert_eq!(format!("{c:?}"), format!("{e:?}"), "{how}");
    }
}

#[test]
fn every_flag_sets_its_config_field() {
    let config = config_of(&[
        "--max-connections-per-endpoint",
        "16",
        "--max-idle-time",
        "45s",
        "--max-connection-lifetime",
        "1h",
        "--max-connection-uses",
        "500",
        "--connect-timeout",
        "2s",
        "--connect-retry-count",
        "5",
        "--connect-retry-delay",
        "50ms",
        "--acquire-timeout",
        "none",
        "--max-waiters-per-endpoint",
        "0",
        "--max-concurrent-dials",
        "2",
        "--max-connections-total",
        "100",
        "--max-idle-total",
        "40",
        "--min-idle-per-endpoint",
        "3",
        "--liveness-check",
        "false",
        "--liveness-peek-after",
        "0",
        "--max-connection-lifetime-jitter",
        "0.1",
        "--maintenance-interval",
        "250ms",
        "--leak-threshold",
        "1m30s",
        "--thread-slots",
        "always",
        "--breaker-failures",
        "0",
        "--tls-server-name",
        "db.internal",
    ]);
    assert_eq!(config.max_connections_per_endpoint(), 16);
    assert_eq!(config.max_idle_time(), Duration::from_secs(45));
    assert_eq!(config.max_connection_lifetime(), Duration::from_secs(3600));
    assert_eq!(config.max_connection_uses(), Some(500));
    assert_eq!(config.connect_timeout(), Some(Duration::from_secs(2)));
    assert_eq!(config.connect_retry_count(), 5);
    assert_eq!(config.connect_retry_delay(), Duration::from_millis(50));
    assert_eq!(config.acquire_timeout(), None);
    assert_eq!(config.max_waiters_per_endpoint(), Some(0));
    assert_eq!(config.max_concurrent_dials(), 2);
    assert_eq!(config.max_connections_total(), Some(100));
    assert_eq!(config.max_idle_total(), Some(40));
    assert_eq!(config.min_idle_per_endpoint(), 3);
    assert!(!config.liveness_check());
    assert_eq!(config.liveness_peek_after(), Duration::ZERO);
    assert_eq!(config.max_connection_lifetime_jitter(), 0.1);
    assert_eq!(
        config.maintenance_interval(),
        Some(Duration::from_millis(250))
    );
    assert_eq!(config.leak_threshold(), Some(Duration::from_secs(90)));
    assert_eq!(config.thread_slots(), ThreadSlots::Always);
    assert_eq!(config.breaker_failures(), 0);
    assert_eq!(
        config.tls_server_name(),
        Some(&ServerName::try_from("db.internal").unwrap())
    );
}

#[test]
fn the_tls_flags_set_their_config_fields_through_the_builder() {
    let pems = Pems::new("cli");
    let cert = TlsCert::localhost();
    let ca = pems.write("ca.pem", &cert.cert_pem);
    let key = pems.write("key.pem", &cert.key_pem);
    let config = config_of(&[
        "--tls-roots",
        "webpki",
        "--tls-ca-file",
        &ca,
        "--tls-client-cert",
        &ca,
        "--tls-client-key",
        &key,
        "--tls-alpn-protocols",
        "h2,http/1.1",
        "--tls-session-cache-size",
        "16",
    ]);
    assert_eq!(config.tls_roots(), TlsRoots::Webpki);
    assert_eq!(config.tls_ca_file(), Some(std::path::Path::new(&ca)));
    assert_eq!(config.tls_client_cert(), Some(std::path::Path::new(&ca)));
    assert_eq!(config.tls_client_key(), Some(std::path::Path::new(&key)));
    assert_eq!(config.tls_alpn_protocols(), ["h2", "http/1.1"]);
    assert_eq!(config.tls_session_cache_size(), 16);
    assert_eq!(
        config.tls_config().alpn_protocols,
        [b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    assert!(config.tls_config().client_auth_cert_resolver.has_certs());

    // --tls-ca-file alone keeps its meaning: its roots instead of webpki's.
    assert_eq!(
        config_of(&["--tls-ca-file", &ca]).tls_roots(),
        TlsRoots::None
    );
    assert!(config_of(&["--tls-insecure-skip-verify"]).tls_insecure_skip_verify());
    assert!(!config_of(&["--tls-insecure-skip-verify", "false"]).tls_insecure_skip_verify());
    assert_eq!(
        error_of(&["--tls-alpn-protocols", "h2,,http/1.1"]),
        "error: invalid value 'h2,,http/1.1' for '--tls-alpn-protocols <LIST>': \
         tls_alpn_protocols is [\"h2\", \"\", \"http/1.1\"]; entry 2 is 0 bytes long, \
         and each protocol must be 1 to 255 bytes"
    );
}

#[test]
fn the_builder_takes_what_flags_cannot_carry() {
    let args = parse(&["--max-idle-time", "5s"]).unwrap().pool;
    let config = args
        .into_builder()
        .health_check(|_stream| Box::pin(async { true }))
        .on_connection_created(|_endpoint| {})
        .build()
        .unwrap();
    assert_eq!(config.max_idle_time(), Duration::from_secs(5));
    assert!(config.health_check().is_some());
}

#[test]
fn durations_parse_as_people_write_them() {
    let idle = |value: &str| config_of(&["--max-idle-time", value]).max_idle_time();
    assert_eq!(idle("500ms"), Duration::from_millis(500));
    assert_eq!(idle("2s"), Duration::from_secs(2));
    assert_eq!(idle("1m30s"), Duration::from_secs(90));
    assert_eq!(idle("1.5h"), Duration::from_secs(5400));
    assert_eq!(idle("2d"), Duration::from_secs(2 * 86_400));
    assert_eq!(idle("18446744073709551615s999999999ns"), Duration::MAX);

    let connect = |value: &str| config_of(&["--connect-timeout", value]).connect_timeout();
    assert_eq!(connect("none"), None);
    assert_eq!(connect("750ms"), Some(Duration::from_millis(750)));
    assert_eq!(
        config_of(&["--leak-threshold", "none"]).leak_threshold(),
        None
    );
    assert_eq!(
        config_of(&["--maintenance-interval", "none"]).maintenance_interval(),
        None
    );
}

#[tokio::test]
async fn a_pool_with_the_longest_durations_works() {
    let server = EchoServer::start().await;
    let max = "18446744073709551615s999999999ns";
    let config = config_of(&[
        "--max-idle-time",
        max,
        "--max-connection-lifetime",
        max,
        "--connect-timeout",
        max,
        "--acquire-timeout",
        max,
        "--connect-retry-delay",
        max,
        "--maintenance-interval",
        max,
        "--leak-threshold",
        max,
    ]);
    let pool = Pool::new(config);
    for _ in 0..2 {
        let mut conn = pool.get(&server.endpoint()).await.unwrap();
        round_trip(&mut conn, b"ping").await.unwrap();
    }
    assert_eq!(pool.stats(&server.endpoint()).total_reused, 1);
    pool.close().await;
}

#[test]
fn a_duration_that_is_not_one_says_what_to_write() {
    for (value, why) in [
        (
            "soon",
            "expected a number at \"soon\"; write a duration such as 500ms, 2s or 1m30s",
        ),
        (
            "30",
            "the number 30 has no unit; write a duration such as 500ms, 2s or 1m30s",
        ),
        (
            "5min",
            "unknown unit \"min\"; the units are ns, us, ms, s, m, h and d, as in 500ms, 2s or 1m30s",
        ),
        (
            "none",
            "this setting always has a duration (none is for settings that can be off); write a duration such as 500ms, 2s or 1m30s",
        ),
        (
            "18446744073709551616s",
            "it is longer than the longest duration, 18446744073709551615999999999ns",
        ),
        ("0.5ns", "it is finer than a nanosecond"),
    ] {
        assert_eq!(
            error_of(&["--max-idle-time", value]),
            format!("error: invalid value '{value}' for '--max-idle-time <DURATION>': {why}")
        );
    }
}

#[test]
fn a_value_of_the_wrong_kind_is_a_clap_error_naming_flag_and_value() {
    assert_eq!(
        error_of(&["--max-connection-uses", "lots"]),
        "error: invalid value 'lots' for '--max-connection-uses <N>': invalid digit found in string; write a whole number, or none"
    );
    assert_eq!(
        error_of(&["--max-connections-per-endpoint", "none"]),
        "error: invalid value 'none' for '--max-connections-per-endpoint <N>': invalid digit found in string"
    );
    assert_eq!(
        error_of(&["--liveness-check", "maybe"]),
        "error: invalid value 'maybe' for '--liveness-check <BOOL>'"
    );
    assert_eq!(
        error_of(&["--thread-slots", "sometimes"]),
        "error: invalid value 'sometimes' for '--thread-slots <WHEN>'"
    );
    assert_eq!(
        error_of(&["--tls-server-name", "not a name"]),
        "error: invalid value 'not a name' for '--tls-server-name <NAME>': it must be a DNS name or an IP address"
    );
}

#[test]
fn each_broken_rule_is_a_clap_error_with_the_rule_text_of_build() {
    let b = Config::builder;
    let zero = Duration::ZERO;
    let cases: Vec<(&[&str], &str, Error)> = vec![
        (
            &["--max-connections-per-endpoint", "0"],
            "--max-connections-per-endpoint <N>",
            b().max_connections_per_endpoint(0).build().unwrap_err(),
        ),
        (
            &["--max-idle-time", "0ms"],
            "--max-idle-time <DURATION>",
            b().max_idle_time(zero).build().unwrap_err(),
        ),
        (
            &["--max-connection-lifetime", "0s"],
            "--max-connection-lifetime <DURATION>",
            b().max_connection_lifetime(zero).build().unwrap_err(),
        ),
        (
            &["--max-connection-uses", "0"],
            "--max-connection-uses <N>",
            b().max_connection_uses(0).build().unwrap_err(),
        ),
        (
            &["--connect-timeout", "0"],
            "--connect-timeout <DURATION>",
            b().connect_timeout(zero).build().unwrap_err(),
        ),
        (
            &["--connect-retry-count", "0"],
            "--connect-retry-count <N>",
            b().connect_retry_count(0).build().unwrap_err(),
        ),
        (
            &["--connect-retry-count", "33"],
            "--connect-retry-count <N>",
            b().connect_retry_count(33).build().unwrap_err(),
        ),
        (
            &["--acquire-timeout", "0s"],
            "--acquire-timeout <DURATION>",
            b().acquire_timeout(zero).build().unwrap_err(),
        ),
        (
            &["--max-concurrent-dials", "0"],
            "--max-concurrent-dials <N>",
            b().max_concurrent_dials(0).build().unwrap_err(),
        ),
        (
            &["--max-connections-total", "0"],
            "--max-connections-total <N>",
            b().max_connections_total(0).build().unwrap_err(),
        ),
        (
            &["--min-idle-per-endpoint", "11"],
            "--min-idle-per-endpoint <N>",
            b().min_idle_per_endpoint(11).build().unwrap_err(),
        ),
        (
            &[
                "--max-connections-per-endpoint",
                "2",
                "--min-idle-per-endpoint",
                "3",
            ],
            "--min-idle-per-endpoint <N>",
            b().max_connections_per_endpoint(2)
                .min_idle_per_endpoint(3)
                .build()
                .unwrap_err(),
        ),
        (
            &[
                "--min-idle-per-endpoint",
                "1",
                "--maintenance-interval",
                "none",
            ],
            "--min-idle-per-endpoint <N>",
            b().min_idle_per_endpoint(1)
                .maintenance_interval(None)
                .build()
                .unwrap_err(),
        ),
        (
            &["--max-connection-lifetime-jitter", "0.7"],
            "--max-connection-lifetime-jitter <FRACTION>",
            b().max_connection_lifetime_jitter(0.7).build().unwrap_err(),
        ),
        (
            &["--max-connection-lifetime-jitter", "NaN"],
            "--max-connection-lifetime-jitter <FRACTION>",
            b().max_connection_lifetime_jitter(f64::NAN)
                .build()
                .unwrap_err(),
        ),
        (
            &["--maintenance-interval", "0s"],
            "--maintenance-interval <DURATION>",
            b().maintenance_interval(zero).build().unwrap_err(),
        ),
        (
            &["--leak-threshold", "0s"],
            "--leak-threshold <DURATION>",
            b().leak_threshold(zero).build().unwrap_err(),
        ),
    ];
    for (args, flag, rule_broken) in cases {
        let value = args[args.iter().position(|a| flag.starts_with(a)).unwrap() + 1];
        assert_eq!(
            error_of(args),
            rule_error(flag, value, rule_broken),
            "{args:?}"
        );
    }
    // What a person reads, once in full.
    assert_eq!(
        error_of(&["--max-idle-time", "0ms"]),
        "error: invalid value '0ms' for '--max-idle-time <DURATION>': max_idle_time is 0s; it must be above zero"
    );
}

#[test]
fn a_later_update_is_checked_against_the_rules_with_the_earlier_flags() {
    let mut demo = parse(&[
        "--max-connections-per-endpoint",
        "4",
        "--min-idle-per-endpoint",
        "2",
    ])
    .unwrap();
    demo.try_update_from(["demo", "--max-idle-time", "5s"])
        .unwrap();
    let config = demo.pool.clone().into_config().unwrap();
    assert_eq!(
        (
            config.max_connections_per_endpoint(),
            config.min_idle_per_endpoint(),
            config.max_idle_time()
        ),
        (4, 2, Duration::from_secs(5))
    );
    let err = demo
        .try_update_from(["demo", "--max-connections-per-endpoint", "1"])
        .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string().starts_with(
            "error: invalid config: min_idle_per_endpoint is 2; it must not exceed max_connections_per_endpoint (1)"
        ),
        "{err}"
    );
}

#[test]
fn a_tls_file_that_cannot_be_used_is_a_clap_error_naming_flag_and_file() {
    let pems = Pems::new("cli");
    let cert = TlsCert::localhost();
    let other = TlsCert::localhost();
    let cert_file = pems.write("cert.pem", &cert.cert_pem);
    let key_file = pems.write("key.pem", &cert.key_pem);
    let other_key = pems.write("other-key.pem", &other.key_pem);
    let not_pem = pems.write("notes.txt", "not a certificate\n");
    let missing = pems.path("missing.pem");
    let missing = missing.to_str().unwrap();

    let first_line = |args: &[&str]| error_of(args);
    let line = first_line(&["--tls-ca-file", missing]);
    assert!(
        line.starts_with(&format!(
            "error: invalid value '{missing}' for '--tls-ca-file <PEM_FILE>': tls_ca_file is {missing}, which cannot be read: No such file or directory"
        )),
        "{line}"
    );
    assert_eq!(
        first_line(&["--tls-ca-file", &not_pem]),
        format!(
            "error: invalid value '{not_pem}' for '--tls-ca-file <PEM_FILE>': tls_ca_file is {not_pem}, which holds no certificate (no -----BEGIN CERTIFICATE----- block)"
        )
    );
    // A key is not a certificate.
    assert_eq!(
        first_line(&[
            "--tls-client-cert",
            &key_file,
            "--tls-client-key",
            &key_file
        ]),
        format!(
            "error: invalid value '{key_file}' for '--tls-client-cert <PEM_FILE>': tls_client_cert is {key_file}, which holds no certificate (no -----BEGIN CERTIFICATE----- block)"
        )
    );
    assert_eq!(
        first_line(&[
            "--tls-client-cert",
            &cert_file,
            "--tls-client-key",
            &cert_file
        ]),
        format!(
            "error: invalid value '{cert_file}' for '--tls-client-key <PEM_FILE>': tls_client_key is {cert_file}, which holds no private key (no PKCS#8, RSA or EC PRIVATE KEY block)"
        )
    );
    let line = first_line(&[
        "--tls-client-cert",
        &cert_file,
        "--tls-client-key",
        &other_key,
    ]);
    assert!(
        line.starts_with(&format!(
            "error: invalid value '{other_key}' for '--tls-client-key <PEM_FILE>': tls_client_key is {other_key}, which is not the key of tls_client_cert {cert_file}: "
        )),
        "{line}"
    );
    // Both of a pair, and not verification off with roots to verify against.
    assert_eq!(
        first_line(&["--tls-client-cert", &cert_file]),
        "error: the following required arguments were not provided:"
    );
    assert_eq!(
        first_line(&["--tls-insecure-skip-verify", "--tls-ca-file", &cert_file]),
        format!(
            "error: invalid value '{cert_file}' for '--tls-ca-file <PEM_FILE>': tls_ca_file is {cert_file}, \
             but tls_insecure_skip_verify is true: no certificate is verified, against these roots or any"
        )
    );
    // Verification asked for in so many words is no conflict.
    config_of(&[
        "--tls-insecure-skip-verify",
        "false",
        "--tls-ca-file",
        &cert_file,
    ]);
}

#[tokio::test]
async fn ca_file_and_server_name_reach_a_tls_server_by_its_address() {
    let cert = TlsCert::localhost();
    let server = EchoServer::start_tls(&cert).await;
    let pems = Pems::new("cli");
    let ca = pems.write("ca.pem", &cert.cert_pem);
    // Dialed by address; the certificate names only localhost.
    let by_address = Endpoint::tls("127.0.0.1", server.port()).unwrap();

    let pool = Pool::new(config_of(&[
        "--tls-ca-file",
        &ca,
        "--tls-server-name",
        "localhost",
    ]));
    let mut conn = pool.get(&by_address).await.unwrap();
    round_trip(&mut conn, b"by address").await.unwrap();
    drop(conn);
    assert_eq!(server.sni().as_deref(), Some("localhost"), "sent as SNI");

    // The roots alone: verified as 127.0.0.1, which the certificate is not.
    let pool = Pool::new(config_of(&["--tls-ca-file", &ca]));
    let err = pool.get(&by_address).await.unwrap_err();
    assert!(
        matches!(&err, Error::Tls { reason, .. } if reason.contains("certificate not valid for name \"127.0.0.1\"")),
        "{err:?}"
    );
    // And the webpki roots do not know the test certificate at all.
    let pool = Pool::new(config_of(&["--tls-server-name", "localhost"]));
    let err = pool.get(&by_address).await.unwrap_err();
    assert!(
        matches!(&err, Error::Tls { reason, .. } if reason.contains("UnknownIssuer")),
        "{err:?}"
    );
}

/// A TLS echo server on 127.0.0.1 that demands a client certificate
/// issued by (here: being) `client`.
async fn mutual_tls_server(server: &TlsCert, client: &TlsCert) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(client.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = tls.read(&mut buf).await {
                    if tls.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn client_certificate_flags_give_mutual_tls() {
    let server_cert = TlsCert::localhost();
    let client_cert = TlsCert::localhost();
    let port = mutual_tls_server(&server_cert, &client_cert).await;
    let endpoint = Endpoint::tls("localhost", port).unwrap();
    let pems = Pems::new("cli");
    let ca = pems.write("ca.pem", &server_cert.cert_pem);
    let cert = pems.write("client.pem", &client_cert.cert_pem);
    let key = pems.write("client-key.pem", &client_cert.key_pem);

    let pool = Pool::new(config_of(&[
        "--tls-ca-file",
        &ca,
        "--tls-client-cert",
        &cert,
        "--tls-client-key",
        &key,
    ]));
    let mut conn = pool.get(&endpoint).await.unwrap();
    round_trip(&mut conn, b"with a client certificate")
        .await
        .unwrap();
    drop(conn);

    // Without one, the server refuses: in TLS 1.3 the client's handshake
    // may finish first, and the refusal comes with the first read.
    let pool = Pool::new(config_of(&["--tls-ca-file", &ca]));
    let refused = match pool.get(&endpoint).await {
        Err(err) => format!("{err:?}"),
        Ok(mut conn) => format!("{:?}", round_trip(&mut conn, b"without").await.unwrap_err()),
    };
    assert!(refused.contains("CertificateRequired"), "{refused}");
}

/// Log lines written while `captured` is the thread's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_with(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }
}

#[tokio::test]
async fn insecure_skip_verify_reaches_an_untrusted_server_and_warns_on_every_use() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let cert = TlsCert::localhost();
    let server = EchoServer::start_tls(&cert).await;

    let args = parse(&["--tls-insecure-skip-verify"]).unwrap().pool;
    assert_eq!(logs.lines_with("verif"), 0, "parsing alone logs nothing");
    let pool = Pool::new(args.into_builder().build().unwrap());
    assert_eq!(
        logs.lines_with(
            "WARN conpool::cli: --tls-insecure-skip-verify: TLS server certificates are not verified"
        ),
        1
    );

    // Two connections at once: two handshakes, two certificates let through.
    let mut first = pool.get(&server.tls_endpoint()).await.unwrap();
    let mut second = pool.get(&server.tls_endpoint()).await.unwrap();
    round_trip(&mut first, b"one").await.unwrap();
    round_trip(&mut second, b"two").await.unwrap();
    assert_eq!(
        logs.lines_with(
            "accepted a TLS server certificate without verifying it (tls_insecure_skip_verify) server=localhost"
        ),
        2
    );
}

/// Runs this test binary as the child program: `args` as its command line,
/// `env` added to an environment without any of the flags' variables.
fn run_child(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(std::env::current_exe().unwrap());
    child.args([
        "--exact",
        "child_program",
        "--ignored",
        "--nocapture",
        "--quiet",
    ]);
    for name in pool_env_vars() {
        child.env_remove(name);
    }
    child.env("CONPOOL_TEST_CHILD_ARGS", args.join("\n"));
    child.envs(env.iter().copied());
    child.output().unwrap()
}

/// The child program of `run_child`: parses its command line as a program
/// would (exiting 2 on a bad value), prints the config, and dials the
/// endpoint if there is one.
#[test]
#[ignore = "run by the tests below as a child process, with its own environment"]
fn child_program() {
    let args = std::env::var("CONPOOL_TEST_CHILD_ARGS").unwrap_or_default();
    let argv = std::iter::once("demo").chain(args.lines().filter(|a| !a.is_empty()));
    let demo = Demo::parse_from(argv);
    let config = demo.pool.into_config().unwrap();
    println!("config: {config:?}");
    if let Some(endpoint) = demo.endpoint {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let pool = Pool::new(config);
            drop(pool.get(&endpoint).await.unwrap());
            println!("dialed {endpoint}");
        });
    }
}

/// The config line the child printed, as fields.
fn child_config(output: &Output) -> BTreeMap<String, String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed: {stdout}{stderr}");
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("config: "))
        .unwrap_or_else(|| panic!("no config printed: {stdout}"));
    fields_of_debug(line)
}

#[test]
fn environment_variables_stand_in_for_unset_flags_and_flags_win() {
    let output = run_child(
        &["--connect-timeout", "3s"],
        &[
            ("CONPOOL_MAX_IDLE_TIME", "2s"),
            ("CONPOOL_MAX_CONNECTION_USES", "none"),
            ("CONPOOL_MAX_CONNECTIONS_PER_ENDPOINT", "7"),
            ("CONPOOL_LIVENESS_CHECK", "false"),
            ("CONPOOL_THREAD_SLOTS", "off"),
            ("CONPOOL_CONNECT_TIMEOUT", "9s"),
        ],
    );
    let fields = child_config(&output);
    assert_eq!(fields["max_idle_time"], "2s");
    assert_eq!(fields["max_connection_uses"], "None");
    assert_eq!(fields["max_connections_per_endpoint"], "7");
    assert_eq!(fields["liveness_check"], "false");
    assert_eq!(fields["thread_slots"], "Off");
    assert_eq!(fields["connect_timeout"], "Some(3s)", "the flag wins");
    // Unset in both: the library's default.
    assert_eq!(fields["acquire_timeout"], "Some(30s)");
}

#[test]
fn a_bad_value_exits_with_code_2_before_anything_is_dialed() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();

    // The same program dials when its values are good...
    let output = run_child(&[&endpoint, "--max-idle-time", "5s"], &[]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&format!("dialed {endpoint}")),
        "{output:?}"
    );
    assert!(listener.accept().is_ok(), "the good run connected");

    // ...and stops at the parse, with clap's exit code, for a bad one, on
    // the command line or in the environment.
    for (args, env, line) in [
        (
            vec![endpoint.as_str(), "--max-idle-time", "0s"],
            vec![],
            "error: invalid value '0s' for '--max-idle-time <DURATION>': max_idle_time is 0s; it must be above zero",
        ),
        (
            vec![endpoint.as_str()],
            vec![("CONPOOL_CONNECT_RETRY_COUNT", "99")],
            "error: invalid value '99' for '--connect-retry-count <N>': connect_retry_count is 99; it must be from 1 to 32 attempts",
        ),
        (
            vec![endpoint.as_str()],
            vec![("CONPOOL_ACQUIRE_TIMEOUT", "forever")],
            "error: invalid value 'forever' for '--acquire-timeout <DURATION>': expected a number at \"forever\"; write a duration such as 500ms, 2s or 1m30s",
        ),
    ] {
        let output = run_child(&args, &env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.lines().next(), Some(line), "{stderr}");
        assert!(stderr.contains("try '--help'"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            listener.accept().is_err(),
            "{args:?} {env:?}: nothing may be dialed"
        );
    }
}
