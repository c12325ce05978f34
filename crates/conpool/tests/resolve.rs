//! The resolver as a user sees it through the pool: lookups merged, answers
//! cached for `dns_cache_ttl` (or a shorter TTL the resolver reports),
//! failures cached for a second, and a name that does not exist failing at
//! once. Names come from a test hosts table plugged in through `Resolve`:
//! no DNS query leaves the machine.

mod support;

use std::error::Error as _;
use std::io;
use std::time::Duration;

use conpool::{Config, Endpoint, Error, Pool};
use support::hosts::Hosts;
use support::{EchoServer, round_trip};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

fn pool_with(hosts: &Hosts, builder: conpool::ConfigBuilder) -> Pool {
    Pool::new(builder.resolver(hosts.clone()).build().unwrap())
}

/// One get that dials (the connection is discarded, so the next get
/// dials again) and proves the connection works.
async fn dial_once(pool: &Pool, endpoint: &Endpoint) {
    let mut conn = pool.get(endpoint).await.unwrap();
    round_trip(&mut conn, b"ping").await.unwrap();
    conn.discard();
}

#[tokio::test(start_paused = true)]
async fn a_hundred_concurrent_gets_to_a_cold_host_make_one_lookup() {
    let server = EchoServer::start().await;
    // A lookup that takes a while, so that all hundred gets ask while it runs.
    let hosts = Hosts::new().with_delay(50 * MS);
    hosts.insert("cold.test", &["127.0.0.1"]);
    let pool = pool_with(
        &hosts,
        Config::builder()
            .max_connections_per_endpoint(100)
            .max_concurrent_dials(100),
    );
    let endpoint = Endpoint::new("cold.test", server.port()).unwrap();

    let mut gets = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (pool, endpoint) = (pool.clone(), endpoint.clone());
        gets.spawn(async move {
            let mut conn = pool.get(&endpoint).await.unwrap();
            round_trip(&mut conn, b"hi").await.unwrap();
            // Held until every get has its own connection, so each dials.
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
    }
    while let Some(done) = gets.join_next().await {
        done.unwrap();
    }

    assert_eq!(pool.stats(&endpoint).total_created, 100, "every get dialed");
    assert_eq!(hosts.lookups(), 1, "the hundred dials shared one lookup");
}

#[tokio::test(start_paused = true)]
async fn an_answer_is_reused_until_dns_cache_ttl_then_looked_up_again() {
    let server = EchoServer::start().await;
    let hosts = Hosts::new();
    hosts.insert("db.test", &["127.0.0.1"]);
    let pool = pool_with(
        &hosts,
        Config::builder().dns_cache_ttl(Duration::from_secs(30)),
    );
    let endpoint = Endpoint::new("db.test", server.port()).unwrap();
    let start = Instant::now();

    dial_once(&pool, &endpoint).await;
    assert_eq!(hosts.lookups(), 1);
    tokio::time::sleep_until(start + Duration::from_secs(30) - MS).await;
    dial_once(&pool, &endpoint).await;
    assert_eq!(hosts.lookups(), 1, "still fresh just before 30 s");

    tokio::time::sleep_until(start + Duration::from_secs(30)).await;
    dial_once(&pool, &endpoint).await;
    assert_eq!(hosts.lookups(), 2, "expired at 30 s: looked up again");
    assert_eq!(pool.stats(&endpoint).total_created, 3);
}

#[tokio::test(start_paused = true)]
async fn a_shorter_ttl_from_the_resolver_wins_over_dns_cache_ttl() {
    let server = EchoServer::start().await;
    let hosts = Hosts::new();
    hosts.insert_with_ttl("short.test", &["127.0.0.1"], Duration::from_secs(5));
    let pool = pool_with(&hosts, Config::builder());
    let endpoint = Endpoint::new("short.test", server.port()).unwrap();
    let start = Instant::now();

    dial_once(&pool, &endpoint).await;
    tokio::time::sleep_until(start + Duration::from_secs(5) - MS).await;
    dial_once(&pool, &endpoint).await;
    assert_eq!(hosts.lookups(), 1, "fresh within the record's 5 s");
    tokio::time::sleep_until(start + Duration::from_secs(5)).await;
    dial_once(&pool, &endpoint).await;
    assert_eq!(hosts.lookups(), 2, "the record's TTL, not the 30 s default");
}

#[tokio::test(start_paused = true)]
async fn a_failed_lookup_is_kept_for_a_second_then_asked_again() {
    let hosts = Hosts::new();
    hosts.fail("down.test", "down.test: SERVFAIL");
    let pool = pool_with(&hosts, Config::builder());
    let endpoint = Endpoint::new("down.test", 6379).unwrap();
    let start = Instant::now();

    for _ in 0..10 {
        let err = pool.get(&endpoint).await.unwrap_err();
        assert!(matches!(err, Error::DnsResolutionFailed { .. }), "{err:?}");
    }
    assert_eq!(
        hosts.lookups(),
        1,
        "ten callers within the second, one lookup"
    );

    tokio::time::sleep_until(start + Duration::from_secs(1) - MS).await;
    pool.get(&endpoint).await.unwrap_err();
    assert_eq!(hosts.lookups(), 1, "still cached just before 1 s");

    // The name comes back: the next lookup after the second finds it.
    let server = EchoServer::start().await;
    hosts.insert("down.test", &["127.0.0.1"]);
    let endpoint = Endpoint::new("down.test", server.port()).unwrap();
    tokio::time::sleep_until(start + Duration::from_secs(1)).await;
    dial_once(&pool, &endpoint).await;
    assert_eq!(hosts.lookups(), 2, "asked again once the second had passed");
}

#[tokio::test(start_paused = true)]
async fn a_name_that_does_not_exist_fails_at_once_with_the_resolvers_words() {
    let hosts = Hosts::new();
    hosts.fail("nowhere.test", "nowhere.test: NXDOMAIN");
    // No cache, three attempts allowed: a retry would show as a lookup.
    let pool = pool_with(
        &hosts,
        Config::builder()
            .dns_cache_ttl(Duration::ZERO)
            .connect_retry_count(3),
    );
    let endpoint = Endpoint::new("nowhere.test", 80).unwrap();
    let start = Instant::now();

    let err = pool.get(&endpoint).await.unwrap_err();

    assert_eq!(start.elapsed(), Duration::ZERO, "no backoff, no retry");
    assert_eq!(hosts.lookups(), 1, "never retried");
    assert_eq!(
        err.to_string(),
        "DNS resolution failed for host \"nowhere.test\""
    );
    let source = err.source().unwrap().downcast_ref::<io::Error>().unwrap();
    assert_eq!(source.kind(), io::ErrorKind::NotFound);
    assert_eq!(source.to_string(), "nowhere.test: NXDOMAIN");
}

#[tokio::test(start_paused = true)]
async fn a_resolver_that_answers_no_address_fails_the_dial_as_unresolved() {
    let hosts = Hosts::new();
    hosts.insert("empty.test", &[]);
    let pool = pool_with(&hosts, Config::builder());
    let err = pool
        .get(&Endpoint::new("empty.test", 80).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DnsResolutionFailed { .. }), "{err:?}");
    assert_eq!(
        err.source().unwrap().to_string(),
        "empty.test has no addresses"
    );
}

#[tokio::test(start_paused = true)]
async fn an_ip_literal_is_never_looked_up() {
    let server = EchoServer::start().await;
    let hosts = Hosts::new();
    let pool = pool_with(&hosts, Config::builder());
    dial_once(&pool, &server.endpoint()).await;
    assert_eq!(hosts.lookups(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_name_that_does_not_resolve_does_not_trip_the_circuit_breaker() {
    let hosts = Hosts::new();
    hosts.fail("gone.test", "gone.test: NXDOMAIN");
    let pool = pool_with(&hosts, Config::builder().breaker_failures(2));
    let endpoint = Endpoint::new("gone.test", 6379).unwrap();
    for _ in 0..5 {
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        let err = pool.get(&endpoint).await.unwrap_err();
        assert!(
            matches!(err, Error::DnsResolutionFailed { .. }),
            "the resolver's answer: {err:?}"
        );
    }
    assert_eq!(pool.stats(&endpoint).breaker_trips, 0);
}
