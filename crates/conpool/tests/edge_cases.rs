//! Hard cases found by a review that tried to break issue 13's work, each
//! a reproducer of a defect it found (fixed since) or a probe of an area it
//! found sound:
//!
//! - a FIN, an unread reply or a dead runtime that reached this host a
//!   moment before the checkout, with the runtime's driver not yet run
//!   (the server acts from threads of its own while the test blocks its
//!   runtime's only thread for a fraction of a millisecond, as a busy
//!   runtime would): at the default config the kernel is asked at every
//!   checkout, so none is handed out;
//! - a write cut off and followed by another, completed write;
//! - TLS: session tickets and a KeyUpdate arriving while idle (quiet, and
//!   the stream stays usable), half a stray record, a close_notify without
//!   a FIN, a large stray write;
//! - `clear_endpoint` during a health check and between a grant and its
//!   waiter's wake-up;
//! - eviction under `max_idle_total` after a grant given back;
//! - a get on the handle of a runtime that has shut down;
//! - dead queue entries, `Duration::MAX` everywhere, a panic while held,
//!   `release()` with an unread reply.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use conpool::{CloseReason, Config, Endpoint, Pool, PooledConnection, ThreadSlots};
use support::thread_server::{ThreadServer, exchange};
use support::{EchoServer, round_trip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Blocks this (the runtime's only) thread briefly: long enough for a
/// loopback segment sent just before to be processed by the kernel, short
/// enough to be "a moment before the checkout".
fn let_the_kernel_settle() {
    std::thread::sleep(Duration::from_micros(200));
}

// ---------------------------------------------------------------------------
// 1. Stale connections a moment after the return (issue 13: "inside and
//    outside any window").

/// The server's FIN reaches this host a few hundred microseconds after
/// the return, while the runtime is busy (its driver has not run): its
/// readiness flag is clear, and only the kernel knows.
async fn fin_just_before_the_checkout(slots: ThreadSlots) -> (usize, usize) {
    let rounds = 20;
    let mut stale = 0;
    for _ in 0..rounds {
        let server = ThreadServer::start();
        let ep = server.endpoint();
        let pool = Pool::new(Config::builder().thread_slots(slots).build().unwrap());
        // Dial and warm up: a first lease longer than any window marks the next
        // checkout for a kernel look; this round clears that mark.
        let mut conn = pool.get(&ep).await.unwrap();
        exchange(&mut conn, b"warm").await;
        drop(conn);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut conn = pool.get(&ep).await.unwrap();
        exchange(&mut conn, b"warm again").await;
        drop(conn);
        // The round under test: a short lease, then the close, then the get.
        let mut conn = pool.get(&ep).await.unwrap();
        exchange(&mut conn, b"hi").await;
        let dead = conn.id();
        drop(conn);
        server.close_all_now();
        let_the_kernel_settle();
        let mut next = pool.get(&ep).await.unwrap();
        if next.id() == dead {
            // Prove it is dead: the kernel holds the FIN.
            let mut byte = [std::mem::MaybeUninit::uninit(); 1];
            let peeked = socket2::SockRef::from(next.as_tcp().unwrap())
                .peek(&mut byte)
                .unwrap();
            assert_eq!(peeked, 0, "the FIN had reached this host");
            let mut buf = [0u8; 8];
            let _ = next.write_all(b"x").await;
            assert!(matches!(next.read(&mut buf).await, Ok(0) | Err(_)));
            stale += 1;
        }
    }
    (stale, rounds)
}

#[tokio::test]
async fn a_fin_that_reached_the_kernel_a_moment_before_the_checkout_is_not_handed_out() {
    let (stale, rounds) = fin_just_before_the_checkout(ThreadSlots::WhenContended).await;
    assert_eq!(
        stale, 0,
        "{stale} of {rounds} checkouts were handed a connection whose FIN had reached this host"
    );
}

#[tokio::test]
async fn a_fin_a_moment_before_the_checkout_is_not_handed_out_from_a_thread_slot() {
    let (stale, rounds) = fin_just_before_the_checkout(ThreadSlots::Always).await;
    assert_eq!(
        stale, 0,
        "{stale} of {rounds} checkouts (ThreadSlots::Always) were handed a connection whose FIN had reached this host"
    );
}

/// A writes a request and drops the lease without reading (an early
/// return); the reply reaches this host before B's get, a moment later, on
/// a runtime that has not polled its driver since. B reads A's reply.
#[tokio::test]
async fn an_unread_reply_that_arrived_a_moment_before_the_checkout_does_not_reach_the_next_caller()
{
    let rounds = 20;
    let mut leaked = 0;
    for _ in 0..rounds {
        let server = ThreadServer::start();
        let ep = server.endpoint();
        let pool = Pool::new(Config::default());
        let mut conn = pool.get(&ep).await.unwrap();
        exchange(&mut conn, b"warm").await;
        drop(conn);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut conn = pool.get(&ep).await.unwrap();
        exchange(&mut conn, b"warm again").await;
        drop(conn);
        let mut a = pool.get(&ep).await.unwrap();
        exchange(&mut a, b"hi").await;
        a.write_all(b"A").await.unwrap();
        let first = a.id();
        drop(a);
        // "warm", "warm again", "hi" and "A": the reply is on its way.
        server.wait_echoed_blocking(4 + 10 + 2 + 1);
        let_the_kernel_settle();
        let mut b = pool.get(&ep).await.unwrap();
        b.write_all(b"B").await.unwrap();
        let mut reply = [0u8; 1];
        b.read_exact(&mut reply).await.unwrap();
        if &reply == b"A" {
            assert_eq!(b.id(), first);
            leaked += 1;
        }
    }
    assert_eq!(
        leaked, 0,
        "{leaked} of {rounds} callers read the previous caller's reply"
    );
}

/// A connection registered with a runtime that has just shut down can never
/// be read again, though its readiness flag merely looks clear; a checkout
/// on the next runtime a moment later must not hand it out.
#[test]
fn a_connection_of_a_runtime_that_shut_down_a_moment_ago_is_not_handed_out() {
    let server = ThreadServer::start();
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let rounds = 20;
    let mut broken = 0;
    for _ in 0..rounds {
        let rt = runtime();
        let next = runtime();
        let (first, first_try) = {
            let id = rt.block_on(async {
                let mut conn = pool.get(&ep).await.unwrap();
                exchange(&mut conn, b"on the first runtime").await;
                conn.id()
            });
            drop(rt);
            next.block_on(async {
                let mut conn = pool.get(&ep).await.unwrap();
                let same = conn.id() == id;
                let ok = round_trip(&mut conn, b"on the next").await.is_ok();
                (same, ok)
            })
        };
        if first && !first_try {
            broken += 1;
        }
        drop(next);
        // Start the next round from a clean pool.
        pool.clear_endpoint(&ep);
    }
    assert_eq!(
        broken, 0,
        "{broken} of {rounds} checkouts were handed a connection of a dead runtime (first I/O failed)"
    );
}

// ---------------------------------------------------------------------------
// 2. Cancellation.

/// A connection whose peer reads nothing until told to, then drains.
fn stall_then_drain() -> (Endpoint, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (go, wait) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let _ = wait.recv();
        let mut buf = vec![0u8; 1 << 16];
        while matches!(sock.read(&mut buf), Ok(n) if n > 0) {}
    });
    (Endpoint::new("127.0.0.1", port).unwrap(), go)
}

/// `write_all` of a large request is cut off by a timeout (half a request
/// on the wire); the caller then writes something small (a terminator, or
/// the next request), which completes, and drops the lease. The half
/// request is on the wire: the connection is closed, not kept (issue 13: "a
/// cancelled exchange ... never reaches the next caller, whatever the
/// caller did afterwards").
#[tokio::test]
async fn a_completed_write_after_a_cut_off_write_does_not_make_the_connection_reusable() {
    let (ep, drain) = stall_then_drain();
    let pool = Pool::new(Config::default());
    let mut conn = pool.get(&ep).await.unwrap();
    let id = conn.id();
    let request = vec![b'x'; support::STALLING_WRITE];
    assert!(
        tokio::time::timeout(Duration::from_millis(100), conn.write_all(&request))
            .await
            .is_err(),
        "the write stalls"
    );
    drain.send(()).unwrap();
    conn.write_all(b"\r\n\r\n").await.unwrap();
    drop(conn);
    let s = pool.stats(&ep);
    assert!(
        s.idle == 0 && s.closed_for(CloseReason::Cancelled) == 1,
        "the half-written connection {id} went back to the pool: {s:?}"
    );
}

// ---------------------------------------------------------------------------
// 1b. TLS: a rustls server on a thread of its own, driven record by record.

struct TlsBits {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn tls_bits() -> TlsBits {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsBits {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

/// Accepts one connection and runs `script` on it, on a thread.
fn one_tls_conn(
    config: Arc<rustls::ServerConfig>,
    script: impl FnOnce(rustls::ServerConnection, TcpStream) + Send + 'static,
) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        sock.set_nodelay(true).unwrap();
        script(rustls::ServerConnection::new(config).unwrap(), sock);
    });
    Endpoint::tls("localhost", port).unwrap()
}

/// Completes the handshake but keeps the TLS 1.3 session tickets back,
/// returning their bytes, so that the test decides when they arrive.
fn handshake_holding_tickets(conn: &mut rustls::ServerConnection, sock: &mut TcpStream) -> Vec<u8> {
    loop {
        if conn.wants_write() {
            let mut out = Vec::new();
            conn.write_tls(&mut out).unwrap();
            if !conn.is_handshaking() {
                return out;
            }
            sock.write_all(&out).unwrap();
            continue;
        }
        if !conn.is_handshaking() {
            return Vec::new();
        }
        conn.read_tls(sock).unwrap();
        conn.process_new_packets().unwrap();
    }
}

/// Reads one message and echoes it.
fn echo_once(conn: &mut rustls::ServerConnection, sock: &mut TcpStream) {
    let mut stream = rustls::Stream::new(conn, sock);
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).unwrap();
    stream.write_all(&buf[..n]).unwrap();
    stream.flush().unwrap();
}

/// The encrypted bytes of `plaintext` as application data.
fn sealed(conn: &mut rustls::ServerConnection, plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in plaintext.chunks(16 * 1024) {
        conn.writer().write_all(chunk).unwrap();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
    }
    out
}

/// Nothing waits unread in the kernel for this connection.
fn socket_is_empty(conn: &PooledConnection) -> bool {
    let mut byte = [std::mem::MaybeUninit::uninit(); 1];
    let peeked = socket2::SockRef::from(conn.as_tcp().unwrap()).peek(&mut byte);
    matches!(peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn tls_pool(bits: &TlsBits) -> Pool {
    Pool::new(
        Config::builder()
            .tls_config(bits.client.clone())
            .build()
            .unwrap(),
    )
}

/// Session tickets (and then a KeyUpdate) that arrive while the connection is idle are consumed
/// by the kernel look (raw bytes fed to rustls under tokio-rustls); the
/// connection is reused, and reads through the TLS stream go on working,
/// whether the runtime has seen the bytes or not.
#[tokio::test]
async fn tickets_arriving_while_idle_are_consumed_by_the_look_and_the_connection_stays_usable() {
    let bits = tls_bits();
    let (idle_tx, idle_rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let ep = one_tls_conn(bits.server.clone(), move |mut conn, mut sock| {
        let tickets = handshake_holding_tickets(&mut conn, &mut sock);
        assert!(!tickets.is_empty(), "TLS 1.3 sends tickets");
        // Records must arrive in order, so nothing is sent before the
        // tickets: the client's first lease ends without an exchange.
        // Round one: the tickets held back. Round two: a KeyUpdate (the
        // server refreshes its keys), another post-handshake message.
        for round in 0..2 {
            idle_rx.recv().unwrap();
            let bytes = if round == 0 {
                tickets.clone()
            } else {
                conn.refresh_traffic_keys().unwrap();
                let mut out = Vec::new();
                conn.write_tls(&mut out).unwrap();
                out
            };
            sock.write_all(&bytes).unwrap();
            sent_tx.send(()).unwrap();
            echo_once(&mut conn, &mut sock);
        }
        let mut buf = [0u8; 1];
        let _ = sock.read(&mut buf);
    });
    let pool = tls_pool(&bits);
    let conn = pool.get(&ep).await.unwrap();
    let id = conn.id();
    drop(conn);

    // The tickets arrive, and the runtime does not see them.
    idle_tx.send(()).unwrap();
    sent_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(3));
    let mut next = pool.get(&ep).await.unwrap();
    assert_eq!(next.id(), id, "tickets are not stray data (kernel look)");
    assert!(socket_is_empty(&next), "the look consumed the tickets");
    exchange(&mut next, b"after the tickets").await;
    drop(next);

    // The KeyUpdate arrives, and the runtime sees it (a yield polls its
    // driver).
    idle_tx.send(()).unwrap();
    sent_rx.recv().unwrap();
    let_the_kernel_settle();
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    let mut again = pool.get(&ep).await.unwrap();
    assert_eq!(
        again.id(),
        id,
        "a KeyUpdate is not stray data (readiness look)"
    );
    assert!(socket_is_empty(&again), "the look consumed the KeyUpdate");
    exchange(&mut again, b"and again").await;
    drop(again);
    let s = pool.stats(&ep);
    assert_eq!(
        (s.total_created, s.total_closed, s.errors),
        (1, 0, 0),
        "{s:?}"
    );
}

/// A stray application-data record of which only the first part has
/// reached this host: the kernel look feeds the part to rustls, which
/// cannot decrypt it yet and says nothing, so the look calls the
/// connection quiet, though it holds bytes nobody asked for (for TCP any
/// byte counts). The next caller then reads the stray reply.
#[tokio::test]
async fn half_a_stray_tls_record_gets_the_connection_closed() {
    let bits = tls_bits();
    let (idle_tx, idle_rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let (rest_tx, rest_rx) = mpsc::channel::<()>();
    let ep = one_tls_conn(bits.server.clone(), move |mut conn, mut sock| {
        let tickets = handshake_holding_tickets(&mut conn, &mut sock);
        sock.write_all(&tickets).unwrap();
        echo_once(&mut conn, &mut sock);
        idle_rx.recv().unwrap();
        let stray = sealed(&mut conn, b"a reply nobody asked for");
        let half = stray.len() / 2;
        sock.write_all(&stray[..half]).unwrap();
        sent_tx.send(()).unwrap();
        rest_rx.recv().unwrap();
        sock.write_all(&stray[half..]).unwrap();
        echo_once(&mut conn, &mut sock);
        let mut buf = [0u8; 1];
        let _ = sock.read(&mut buf);
    });
    // The server takes one connection: a replacement is never answered,
    // so the get that refuses the dirty one fails soon, with its reason.
    let pool = Pool::new(
        Config::builder()
            .tls_config(bits.client.clone())
            .connect_timeout(Duration::from_millis(200))
            .connect_retry_count(1)
            .acquire_timeout(Duration::from_millis(500))
            .build()
            .unwrap(),
    );
    let mut conn = pool.get(&ep).await.unwrap();
    let id = conn.id();
    exchange(&mut conn, b"hello").await;
    drop(conn);
    idle_tx.send(()).unwrap();
    sent_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(3));
    let next = pool.get(&ep).await;
    rest_tx.send(()).unwrap();
    assert!(
        next.as_ref().map_or(true, |c| c.id() != id),
        "handed out the connection holding half a stray record"
    );
    assert_eq!(
        pool.stats(&ep).closed_for(CloseReason::UnexpectedData),
        1,
        "closed for the half record"
    );
}

/// A TLS close_notify without a FIN (the TCP connection stays open) is a
/// close; and a large stray write is stray. Both through the kernel look.
#[tokio::test]
async fn a_close_notify_without_fin_and_a_large_stray_write_close_the_connection() {
    for case in ["close_notify", "large stray"] {
        let bits = tls_bits();
        let (idle_tx, idle_rx) = mpsc::channel::<()>();
        let (sent_tx, sent_rx) = mpsc::channel::<()>();
        let ep = one_tls_conn(bits.server.clone(), move |mut conn, mut sock| {
            let tickets = handshake_holding_tickets(&mut conn, &mut sock);
            sock.write_all(&tickets).unwrap();
            echo_once(&mut conn, &mut sock);
            idle_rx.recv().unwrap();
            let bytes = if case == "close_notify" {
                conn.send_close_notify();
                let mut out = Vec::new();
                conn.write_tls(&mut out).unwrap();
                out
            } else {
                sealed(&mut conn, &vec![b'z'; 300_000])
            };
            // The large one may not fit the socket buffers: write it from
            // another thread.
            let mut writer = sock.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = writer.write_all(&bytes);
            });
            std::thread::sleep(Duration::from_millis(20));
            sent_tx.send(()).unwrap();
            let mut buf = [0u8; 1];
            let _ = sock.read(&mut buf);
        });
        let pool = tls_pool(&bits);
        let mut conn = pool.get(&ep).await.unwrap();
        let id = conn.id();
        exchange(&mut conn, b"hello").await;
        drop(conn);
        idle_tx.send(()).unwrap();
        sent_rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(3));
        let next = pool.get(&ep).await;
        // The only server accepts once: a redial is refused or hangs, so a
        // failed get or a different id both mean "not handed out".
        if let Ok(next) = &next {
            assert_ne!(next.id(), id, "{case}: handed out");
        }
        let s = pool.stats(&ep);
        let reason = if case == "close_notify" {
            CloseReason::PeerClosed
        } else {
            CloseReason::UnexpectedData
        };
        assert_eq!(s.closed_for(reason), 1, "{case}: {s:?}");
    }
}

// ---------------------------------------------------------------------------
// 6. clear_endpoint and connections in the middle of a checkout.

/// A health check that waits for the test's word.
fn gated_health_check(gate: Arc<tokio::sync::Semaphore>) -> conpool::ConfigBuilder {
    Config::builder().health_check(move |_stream: &mut conpool::Stream| {
        let gate = gate.clone();
        Box::pin(async move {
            gate.acquire().await.unwrap().forget();
            true
        }) as conpool::BoxFuture<'_, bool>
    })
}

/// A connection taken from idle for its health check when
/// `clear_endpoint` runs existed before the clear; it is handed out after
/// the clear returned (check_idle's success path checks `closed`, not the
/// generation). After a failover clear, that caller talks to the old
/// address.
#[tokio::test]
async fn a_connection_in_its_health_check_during_clear_endpoint_is_not_handed_out_after_it() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let pool = Pool::new(gated_health_check(gate.clone()).build().unwrap());
    let conn = pool.get(&ep).await.unwrap();
    let before = conn.id();
    drop(conn);
    let caller = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move { pool.get(&ep).await.unwrap().id() })
    };
    support::eventually("the check to start", || pool.stats(&ep).active == 1).await;
    pool.clear_endpoint(&ep);
    gate.add_permits(10);
    let got = caller.await.unwrap();
    assert_ne!(got, before, "handed out a connection from before the clear");
}

/// A lease returned while a caller waits is granted to it; the clear runs
/// before the caller wakes; the caller is then handed the pre-clear
/// connection (a handoff is checked for liveness only, never against the
/// generation).
#[tokio::test]
async fn a_connection_granted_to_a_waiter_just_before_clear_endpoint_is_not_handed_out_after_it() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(1)
            .build()
            .unwrap(),
    );
    let held = pool.get(&ep).await.unwrap();
    let before = held.id();
    let waiter = {
        let (pool, ep) = (pool.clone(), ep.clone());
        tokio::spawn(async move { pool.get(&ep).await.unwrap().id() })
    };
    support::eventually("the caller to queue", || pool.stats(&ep).waiting == 1).await;
    // Granted to the waiter, whose task has not run yet (one thread).
    drop(held);
    pool.clear_endpoint(&ep);
    let got = waiter.await.unwrap();
    assert_ne!(got, before, "handed out a connection from before the clear");
}

/// A dialer of in-memory echo streams, counting its dials, optionally held
/// back by a gate.
#[derive(Clone)]
struct MemDialer {
    gate: Option<Arc<tokio::sync::Semaphore>>,
    dials: Arc<std::sync::atomic::AtomicUsize>,
}

impl conpool::dial::Dial for MemDialer {
    fn dial<'a>(
        &'a self,
        _: &'a Endpoint,
    ) -> conpool::BoxFuture<'a, Result<conpool::Stream, conpool::dial::DialError>> {
        Box::pin(async move {
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            self.dials.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (client, server) = tokio::io::duplex(1024);
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(server);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
            Ok(conpool::Stream::custom(client))
        })
    }
}

/// A warm-up dial (min_idle_per_endpoint) in flight during a clear is
/// closed when it ends and dialed again.
#[tokio::test]
async fn a_warm_up_dial_in_flight_during_clear_endpoint_does_not_survive_it() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let dialer = MemDialer {
        gate: Some(gate.clone()),
        dials: Arc::default(),
    };
    let pool = Pool::with_dialer(
        Config::builder()
            .min_idle_per_endpoint(1)
            .maintenance_interval(Duration::from_millis(10))
            .build()
            .unwrap(),
        dialer.clone(),
    );
    let ep = Endpoint::new("warm.example", 1).unwrap();
    // Any call makes the endpoint known; the background task warms it.
    let _ = pool.endpoint(&ep).unwrap();
    support::eventually("a warm-up dial", || pool.stats(&ep).dialing == 1).await;
    pool.clear_endpoint(&ep);
    gate.add_permits(1);
    support::eventually("the first dial to end", || {
        dialer.dials.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    gate.add_permits(10);
    support::eventually("a live idle connection", || pool.stats(&ep).idle == 1).await;
    let s = pool.stats(&ep);
    assert_eq!(s.closed_for(CloseReason::Cleared), 1, "{s:?}");
}

// ---------------------------------------------------------------------------
// 5. Eviction under max_idle_total.

/// The idle order names each idle connection by its return instant, and
/// `IdleStack::holds_returned_at` binary-searches the stack for it,
/// assuming the stack is in return order. A grant given back by a waiter
/// that left (`give_back` -> `take_back`, which keeps the earlier return
/// instant on purpose) is pushed on top of connections that came back
/// after it, so the stack is not sorted; the purge of stale entries
/// (`forget_stale_idle`) then misses a connection that is idle and drops
/// its entry. That connection is the endpoint's oldest, and
/// `evict_idle_returned_at` only evicts an endpoint's oldest: from then on
/// no connection of the endpoint can be evicted, and eviction takes the
/// most recently used connection of another endpoint instead.
#[tokio::test(start_paused = true)]
async fn after_a_grant_given_back_max_idle_total_still_evicts_the_oldest() {
    use std::future::Future;
    use std::task::{Context, Waker};
    let dialer = MemDialer {
        gate: None,
        dials: Arc::default(),
    };
    let pool = Pool::with_dialer(
        Config::builder()
            .max_connections_per_endpoint(4)
            .max_idle_total(4)
            .connect_timeout(None)
            .acquire_timeout(None)
            .maintenance_interval(None)
            .build()
            .unwrap(),
        dialer,
    );
    let e = Endpoint::new("e.example", 1).unwrap();
    let f = Endpoint::new("f.example", 1).unwrap();
    let step = Duration::from_millis(10);
    let l1 = pool.get(&e).await.unwrap();
    let l2 = pool.get(&e).await.unwrap();
    let l3 = pool.get(&e).await.unwrap();
    let l4 = pool.get(&e).await.unwrap();
    let oldest = l2.id();
    {
        let mut waiter = std::pin::pin!(pool.get(&e));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(waiter.as_mut().poll(&mut cx).is_pending(), "it queues");
        drop(l1); // granted to the waiter, which has not looked yet
        tokio::time::advance(step).await;
        drop(l2); // idle: the least recently used from now on
        tokio::time::advance(step).await;
    } // the waiter leaves: l1 comes back with its earlier return instant
    tokio::time::advance(step).await;
    drop(l3);
    drop(l4);
    // The stack, oldest first: l2, l1 (returned before l2), l3, l4.
    assert_eq!(pool.stats(&e).idle, 4);
    // Churn on the top of the stack: stale entries pile up until they are
    // purged.
    for _ in 0..60 {
        tokio::time::advance(Duration::from_millis(1)).await;
        drop(pool.get(&e).await.unwrap());
    }
    let idle_e = pool.stats(&e).idle;
    // One connection on another endpoint, the most recently used of all,
    // takes the pool past the total: the least recently used idle one
    // must go.
    tokio::time::advance(step).await;
    drop(pool.get(&f).await.unwrap());
    let (se, sf) = (pool.stats(&e), pool.stats(&f));
    assert_eq!(
        (se.idle, sf.idle),
        (idle_e - 1, 1),
        "max_idle_total evicted the newest connection (of f) instead of e's least recently used (id {oldest}): e {se:?} f {sf:?}"
    );
}

// ---------------------------------------------------------------------------
// 3. The queue.

/// Callers that left are dead entries until the front reaches them; the
/// `max_waiters_per_endpoint` check counts only the living, and a grant
/// skips the dead.
#[tokio::test]
async fn dead_queue_entries_count_neither_against_max_waiters_nor_for_a_grant() {
    use std::future::Future;
    use std::task::{Context, Waker};
    let dialer = MemDialer {
        gate: None,
        dials: Arc::default(),
    };
    let pool = Pool::with_dialer(
        Config::builder()
            .max_connections_per_endpoint(1)
            .max_waiters_per_endpoint(2)
            .build()
            .unwrap(),
        dialer,
    );
    let ep = Endpoint::new("q.example", 1).unwrap();
    let held = pool.get(&ep).await.unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..50 {
        let mut a = Box::pin(pool.get(&ep));
        let mut b = Box::pin(pool.get(&ep));
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        let mut c = Box::pin(pool.get(&ep));
        assert!(matches!(
            c.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Err(conpool::Error::TooManyWaiters { .. }))
        ));
        drop((a, b));
        assert_eq!(pool.stats(&ep).waiting, 0);
    }
    let w1 = tokio::spawn({
        let (pool, ep) = (pool.clone(), ep.clone());
        async move { pool.get(&ep).await.map(|c| c.id()) }
    });
    let w2 = tokio::spawn({
        let (pool, ep) = (pool.clone(), ep.clone());
        async move { pool.get(&ep).await.map(|c| c.id()) }
    });
    support::eventually("two waiters", || pool.stats(&ep).waiting == 2).await;
    let id = held.id();
    drop(held);
    assert_eq!(w1.await.unwrap().unwrap(), id);
    assert_eq!(w2.await.unwrap().unwrap(), id);
    let s = pool.stats(&ep);
    assert_eq!(
        (s.waiting, s.active, s.idle, s.total_created),
        (0, 0, 1, 1),
        "{s:?}"
    );
}

// ---------------------------------------------------------------------------
// 4. Runtimes and durations.

/// Every duration in the config at `Duration::MAX`: builds, serves, reuses,
/// queues and hands over, with the background task running, and nothing
/// panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_max_everywhere_in_the_config_works() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let max = Duration::MAX;
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(1)
            .max_idle_time(max)
            .max_connection_lifetime(max)
            .connect_timeout(max)
            .connect_retry_delay(max)
            .acquire_timeout(max)
            .liveness_peek_after(max)
            .maintenance_interval(max)
            .leak_threshold(max)
            .min_idle_per_endpoint(1)
            .build()
            .unwrap(),
    );
    let mut conn = pool.get(&ep).await.unwrap();
    round_trip(&mut conn, b"max").await.unwrap();
    let id = conn.id();
    let waiter = tokio::spawn({
        let (pool, ep) = (pool.clone(), ep.clone());
        async move { pool.get(&ep).await.map(|c| c.id()) }
    });
    support::eventually("the caller to queue", || pool.stats(&ep).waiting == 1).await;
    drop(conn);
    assert_eq!(waiter.await.unwrap().unwrap(), id);
    let mut again = pool.get(&ep).await.unwrap();
    round_trip(&mut again, b"again").await.unwrap();
    drop(again);
    pool.clear_endpoint(&ep);
    tokio::time::sleep(Duration::from_millis(50)).await;
    pool.close().await;
}

/// A get polled with the handle of a runtime that has shut down entered
/// (`Handle::try_current` succeeds, but every spawn drops its task at
/// once), on a full endpoint: the waiter is nudged to start a sweeper,
/// spawns one, the spawn drops it, the sweeper's guard nudges the waiter
/// again, and so on inside one poll. Expected: an error (`NoRuntime`), as
/// outside any runtime.
#[test]
fn a_get_on_a_dead_runtimes_handle_fails_instead_of_spinning() {
    let server = ThreadServer::start();
    let ep = server.endpoint();
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(1)
            .maintenance_interval(None)
            .build()
            .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = rt.handle().clone();
    let held = rt.block_on(pool.get(&ep)).unwrap();
    drop(rt);
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn({
        let (pool, ep) = (pool.clone(), ep.clone());
        move || {
            let _entered = handle.enter();
            let mut get = std::pin::pin!(pool.get(&ep));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let outcome = std::future::Future::poll(get.as_mut(), &mut cx);
            let _ = done_tx.send(format!("{outcome:?}"));
        }
    });
    let outcome = done_rx.recv_timeout(Duration::from_secs(5));
    drop(held);
    assert!(
        outcome.is_ok(),
        "the first poll of the get did not return within 5 s (a thread is left spinning)"
    );
}

// ---------------------------------------------------------------------------
// 2b. Panics and release().

/// A task that panics while holding a lease: the lease is dropped during
/// the unwind, and the connection is closed as Panicked.
#[tokio::test]
async fn a_lease_held_by_a_task_that_panics_is_closed() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    let task = tokio::spawn({
        let (pool, ep) = (pool.clone(), ep.clone());
        async move {
            let mut conn = pool.get(&ep).await.unwrap();
            conn.write_all(b"half a request").await.unwrap();
            tokio::task::yield_now().await;
            panic!("caller bug");
        }
    });
    assert!(task.await.is_err());
    let s = pool.stats(&ep);
    assert_eq!(
        (s.idle, s.closed_for(CloseReason::Panicked)),
        (0, 1),
        "{s:?}"
    );
}

/// release() with the unread rest of a reply already in the kernel closes
/// it (the look at release asks the kernel), over TCP.
#[tokio::test]
async fn release_with_an_unread_reply_in_the_kernel_closes_it() {
    let server = EchoServer::start().await;
    let ep = server.endpoint();
    let pool = Pool::new(Config::default());
    let mut conn = pool.get(&ep).await.unwrap();
    conn.write_all(b"0123456789").await.unwrap();
    let mut part = [0u8; 4];
    conn.read_exact(&mut part).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    conn.release();
    let s = pool.stats(&ep);
    assert_eq!(
        (s.idle, s.closed_for(CloseReason::UnexpectedData)),
        (0, 1),
        "{s:?}"
    );
}
