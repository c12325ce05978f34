//! The circuit breaker per endpoint, on tokio's paused clock: against a
//! refused loopback port (it opens after `breaker_failures` failed dials,
//! fails gets without dialing, probes once after the open time, closes
//! when the server is back), and against a scripted dialer for what a
//! real server cannot be made to do on cue (a probe that hangs, whose
//! caller leaves, or whose task dies; callers queued behind the dial that
//! trips it).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conpool::dial::{Dial, DialError};
use conpool::{BoxFuture, BreakerState, Config, Endpoint, Error, Pool, Stream};
use support::refused_port;
use tokio::time::Instant;

/// What the scripted dialer does with the next dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    /// Fails at once, as a refused port does.
    Refuse,
    /// Fails after a second.
    RefuseSlowly,
    /// Never finishes: only the connect timeout ends it.
    Hang,
    /// Panics, so the dial task dies without an outcome.
    Panic,
    /// Connects (to an in-memory peer).
    Accept,
}

/// A dialer that does what its script says, counting dials.
#[derive(Clone)]
struct Scripted {
    behaviour: Arc<Mutex<Behaviour>>,
    dials: Arc<AtomicUsize>,
}

impl Scripted {
    fn new(behaviour: Behaviour) -> Scripted {
        Scripted {
            behaviour: Arc::new(Mutex::new(behaviour)),
            dials: Arc::new(AtomicUsize::new(0)),
        }
    }
    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }
    fn dials(&self) -> usize {
        self.dials.load(Ordering::SeqCst)
    }
}

impl Dial for Scripted {
    fn dial<'a>(&'a self, _endpoint: &'a Endpoint) -> BoxFuture<'a, Result<Stream, DialError>> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        let behaviour = *self.behaviour.lock().unwrap();
        Box::pin(async move {
            let refused =
                || DialError::connect(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
            match behaviour {
                Behaviour::Refuse => Err(refused()),
                Behaviour::RefuseSlowly => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Err(refused())
                }
                Behaviour::Hang => std::future::pending().await,
                Behaviour::Panic => panic!("the scripted dialer panics"),
                Behaviour::Accept => {
                    let (client, server) = tokio::io::duplex(64);
                    tokio::spawn(async move {
                        let _server = server;
                        std::future::pending::<()>().await
                    });
                    Ok(Stream::custom(client))
                }
            }
        })
    }
}

fn refused_endpoint() -> Endpoint {
    Endpoint::new("127.0.0.1", refused_port()).unwrap()
}

/// The open time the breaker reports in its refusal.
fn retry_in(err: &Error) -> Duration {
    match err {
        Error::CircuitOpen { retry_in, .. } => *retry_in,
        other => panic!("expected Error::CircuitOpen, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_sixth_get_to_a_refused_port_fails_at_once_with_circuit_open_without_dialing() {
    let ep = refused_endpoint();
    // The defaults: 5 failed dials open it, each dial 3 attempts.
    let pool = Pool::new(Config::default());

    for i in 1..=5 {
        let err = pool.get(&ep).await.unwrap_err();
        assert!(
            matches!(err, Error::ConnectionFailed { attempts: 3, .. }),
            "get {i}: {err:?}"
        );
    }
    let s = pool.stats(&ep);
    assert_eq!(
        (s.breaker, s.breaker_trips, s.errors),
        (BreakerState::Open, 1, 5)
    );

    let before = Instant::now();
    let err = pool.get(&ep).await.unwrap_err();
    assert_eq!(Instant::now(), before, "no dial, no backoff: at once");
    let Error::CircuitOpen {
        endpoint,
        failures,
        retry_in,
        last_dial_error,
        protocol: None,
    } = &err
    else {
        panic!("expected Error::CircuitOpen, got {err:?}");
    };
    assert_eq!((endpoint, *failures), (&ep, 5));
    assert!(
        *retry_in > Duration::ZERO && *retry_in <= Duration::from_secs(1),
        "{retry_in:?}"
    );
    let last = last_dial_error.as_deref().unwrap();
    assert!(
        last.contains(&format!("could not connect to {ep}")),
        "{last}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "the circuit breaker of {ep} is open after 5 failed dials in a row: it lets a dial through again in "
        )) && text.contains("; last dial error: could not connect to"),
        "{text}"
    );
    let s = pool.stats(&ep);
    assert_eq!(
        (s.errors, s.dialing, s.active, s.idle),
        (5, 0, 0, 0),
        "nothing dialed"
    );
}

#[tokio::test(start_paused = true)]
async fn after_the_open_time_one_probe_dials_while_the_other_gets_fail_fast() {
    let ep = refused_endpoint();
    let pool = Pool::new(
        Config::builder()
            .breaker_failures(2)
            .connect_retry_count(1)
            .build()
            .unwrap(),
    );
    for _ in 0..2 {
        pool.get(&ep).await.unwrap_err();
    }
    let open = retry_in(&pool.get(&ep).await.unwrap_err());
    tokio::time::advance(open).await;

    // Two gets at once: the first is the probe, the second fails fast.
    let (probe, other) = tokio::join!(pool.get(&ep), pool.get(&ep));
    assert!(
        matches!(probe, Err(Error::ConnectionFailed { .. })),
        "{probe:?}"
    );
    let other = other.unwrap_err();
    assert!(matches!(other, Error::CircuitOpen { .. }), "{other:?}");
    let s = pool.stats(&ep);
    assert_eq!(s.errors, 3, "exactly one probe dialed");
    // The probe failed: open again, for longer.
    assert_eq!((s.breaker, s.breaker_trips), (BreakerState::Open, 2));
    let reopened = retry_in(&pool.get(&ep).await.unwrap_err());
    assert!(reopened > open, "{open:?} then {reopened:?}");
}

#[tokio::test(start_paused = true)]
async fn when_the_server_comes_back_the_probe_closes_the_breaker_and_gets_succeed() {
    let port = refused_port();
    let ep = Endpoint::new("127.0.0.1", port).unwrap();
    let pool = Pool::new(
        Config::builder()
            .breaker_failures(3)
            .connect_retry_count(1)
            .build()
            .unwrap(),
    );
    for _ in 0..3 {
        pool.get(&ep).await.unwrap_err();
    }
    let open = retry_in(&pool.get(&ep).await.unwrap_err());

    // The server comes back on its port; the breaker has not seen it yet.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let err = pool.get(&ep).await.unwrap_err();
    assert!(matches!(err, Error::CircuitOpen { .. }), "{err:?}");

    tokio::time::advance(open).await;
    let first = pool.get(&ep).await.unwrap();
    assert_eq!(pool.stats(&ep).breaker, BreakerState::Closed);
    // Closed: more connections are dialed as usual.
    let second = pool.get(&ep).await.unwrap();
    assert_ne!(first.id(), second.id());
    let s = pool.stats(&ep);
    assert_eq!((s.total_created, s.active, s.breaker_trips), (2, 2, 1));
    drop(listener);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_still_handed_out_while_the_breaker_is_open() {
    let dialer = Scripted::new(Behaviour::Accept);
    let ep = Endpoint::new("scripted", 1).unwrap();
    let pool = Pool::with_dialer(
        Config::builder()
            .breaker_failures(2)
            .connect_retry_count(1)
            .build()
            .unwrap(),
        dialer.clone(),
    );
    let kept = pool.get(&ep).await.unwrap();
    let kept_id = kept.id();
    dialer.set(Behaviour::Refuse);
    for _ in 0..2 {
        pool.get(&ep).await.unwrap_err();
    }
    assert_eq!(pool.stats(&ep).breaker, BreakerState::Open);
    drop(kept);

    let reused = pool.get(&ep).await.unwrap();
    assert_eq!(reused.id(), kept_id);
    // With that one leased, another get would dial: refused.
    let err = pool.get(&ep).await.unwrap_err();
    assert!(matches!(err, Error::CircuitOpen { .. }), "{err:?}");
    assert_eq!(dialer.dials(), 3);
}

#[tokio::test(start_paused = true)]
async fn callers_queued_for_a_dial_fail_with_circuit_open_when_the_dial_before_them_trips_it() {
    let dialer = Scripted::new(Behaviour::RefuseSlowly);
    let ep = Endpoint::new("scripted", 1).unwrap();
    let pool = Pool::with_dialer(
        Config::builder()
            .breaker_failures(1)
            .connect_retry_count(1)
            .max_concurrent_dials(1)
            .build()
            .unwrap(),
        dialer.clone(),
    );
    // The first dials; the other two queue behind the dial cap.
    let (first, second, third) = tokio::join!(pool.get(&ep), pool.get(&ep), pool.get(&ep));
    assert!(
        matches!(first, Err(Error::ConnectionFailed { .. })),
        "{first:?}"
    );
    for queued in [second, third] {
        let err = queued.unwrap_err();
        assert!(matches!(err, Error::CircuitOpen { .. }), "{err:?}");
    }
    assert_eq!(dialer.dials(), 1);
    let s = pool.stats(&ep);
    assert_eq!((s.waiting, s.dialing), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_caller_left_still_ends_and_does_not_wedge_the_breaker_half_open() {
    let dialer = Scripted::new(Behaviour::Refuse);
    let ep = Endpoint::new("scripted", 1).unwrap();
    let pool = Pool::with_dialer(
        Config::builder()
            .breaker_failures(1)
            .connect_retry_count(1)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
        dialer.clone(),
    );
    pool.get(&ep).await.unwrap_err();
    let open = retry_in(&pool.get(&ep).await.unwrap_err());
    tokio::time::advance(open).await;

    // The probe hangs, and its caller gives up on it.
    dialer.set(Behaviour::Hang);
    let gave_up = tokio::time::timeout(Duration::from_millis(100), pool.get(&ep)).await;
    assert!(gave_up.is_err());
    assert_eq!(pool.stats(&ep).breaker, BreakerState::HalfOpen);
    assert_eq!(retry_in(&pool.get(&ep).await.unwrap_err()), Duration::ZERO);

    // The probe's dial runs on to its timeout: a failure, open again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = pool.stats(&ep);
    assert_eq!(
        (s.breaker, s.breaker_trips, s.dialing),
        (BreakerState::Open, 2, 0)
    );

    // And the next probe, after the open time, may close it.
    dialer.set(Behaviour::Accept);
    let reopened = retry_in(&pool.get(&ep).await.unwrap_err());
    tokio::time::advance(reopened).await;
    pool.get(&ep).await.unwrap();
    assert_eq!(pool.stats(&ep).breaker, BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_dial_task_died_gives_its_turn_to_the_next_get() {
    let dialer = Scripted::new(Behaviour::Refuse);
    let ep = Endpoint::new("scripted", 1).unwrap();
    let pool = Pool::with_dialer(
        Config::builder()
            .breaker_failures(1)
            .connect_retry_count(1)
            .build()
            .unwrap(),
        dialer.clone(),
    );
    pool.get(&ep).await.unwrap_err();
    let open = retry_in(&pool.get(&ep).await.unwrap_err());
    tokio::time::advance(open).await;

    dialer.set(Behaviour::Panic);
    let err = pool.get(&ep).await.unwrap_err();
    assert!(matches!(err, Error::ConnectionFailed { .. }), "{err:?}");
    // No outcome, no trip: the very next get probes, without a new wait.
    dialer.set(Behaviour::Accept);
    pool.get(&ep).await.unwrap();
    let s = pool.stats(&ep);
    assert_eq!((s.breaker, s.breaker_trips), (BreakerState::Closed, 1));
}

#[tokio::test(start_paused = true)]
async fn breaker_failures_zero_turns_the_breaker_off() {
    let ep = refused_endpoint();
    let pool = Pool::new(
        Config::builder()
            .breaker_failures(0)
            .connect_retry_count(1)
            .build()
            .unwrap(),
    );
    for _ in 0..20 {
        let err = pool.get(&ep).await.unwrap_err();
        assert!(matches!(err, Error::ConnectionFailed { .. }), "{err:?}");
    }
    let s = pool.stats(&ep);
    assert_eq!(
        (s.breaker, s.breaker_trips, s.errors),
        (BreakerState::Closed, 0, 20)
    );
}
