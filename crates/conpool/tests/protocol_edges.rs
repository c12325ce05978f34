//! Edges of protocol pools, Unix streams and shares, as a stranger probed
//! them: every error a protocol pool's get returns (a breaker open, a DNS
//! or TLS failure, no runtime) names the protocol once and the stream pool's
//! none; an idle Unix connection with stray bytes, a cut-off write, a close
//! or a TLS close_notify is not handed out, even before the runtime has
//! seen it; a share dropped after its pools, on another thread or after its
//! runtime leaves the books balanced; `--tcp-nodelay` parses.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use conpool::{Config, Connected, Endpoint, Error, Pool, Protocol, Stream};
use support::hosts::Hosts;
use support::{EchoServer, TlsCert, refused_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A protocol whose connection is the stream, kept; shares are handles.
#[derive(Clone, Default)]
struct Probe<const S: bool> {
    not_ready: Arc<AtomicBool>,
}

#[derive(Clone)]
struct ProbeConn {
    _stream: Arc<std::sync::Mutex<Stream>>,
}

#[derive(Debug)]
struct Never;
impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}
impl std::error::Error for Never {}

impl<const S: bool> Protocol for Probe<S> {
    type Conn = ProbeConn;
    type Error = Never;
    const SHARED: bool = S;

    fn name(&self) -> &'static str {
        if S { "probe-shared" } else { "probe-excl" }
    }

    async fn connect(&self, stream: Stream, _: &Endpoint) -> Result<Connected<ProbeConn>, Never> {
        Ok(Connected::new(ProbeConn {
            _stream: Arc::new(std::sync::Mutex::new(stream)),
        }))
    }

    fn is_ready(&self, _: &mut ProbeConn) -> bool {
        !self.not_ready.load(Ordering::SeqCst)
    }

    fn max_shares(&self, _: &ProbeConn) -> usize {
        2
    }

    fn share(&self, conn: &ProbeConn) -> Option<ProbeConn> {
        Some(conn.clone())
    }
}

fn assert_names(err: &Error, name: &str) {
    assert_eq!(err.protocol(), Some(name), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with(&format!("{name} pool: ")), "{text}");
    assert_eq!(text.matches(" pool: ").count(), 1, "double prefix: {text}");
}

// ---------------------------------------------------------------------------
// Errors

#[tokio::test]
async fn circuit_open_from_protocol_pools_names_the_protocol_once() {
    let port = refused_port();
    let config = Config::builder()
        .connect_retry_count(1)
        .breaker_failures(1)
        .build()
        .unwrap();
    let pool = Pool::new(config);
    let excl = pool.protocol(Probe::<false>::default());
    let shared = pool.protocol(Probe::<true>::default());
    let ep = Endpoint::new("127.0.0.1", port).unwrap();
    for (i, name) in ["probe-excl", "probe-shared"].into_iter().enumerate() {
        let get = || async {
            if i == 0 {
                excl.get(&ep).await.map(drop)
            } else {
                shared.get(&ep).await.map(drop)
            }
        };
        let err = get().await.unwrap_err();
        assert!(matches!(err, Error::ConnectionFailed { .. }), "{err}");
        assert_names(&err, name);
        let err = get().await.unwrap_err();
        assert!(matches!(err, Error::CircuitOpen { .. }), "{err}");
        assert_names(&err, name);
        eprintln!("{err}");
    }
    // The stream pool's breaker is its own, and names no protocol.
    let err = pool.get(&ep).await.unwrap_err();
    assert!(matches!(err, Error::ConnectionFailed { .. }), "{err}");
    assert_eq!(err.protocol(), None);
    assert!(!err.to_string().contains("pool:"), "{err}");
    let err = pool.get(&ep).await.unwrap_err();
    assert!(matches!(err, Error::CircuitOpen { .. }), "{err}");
    assert!(!err.to_string().contains("pool:"), "{err}");
}

#[tokio::test]
async fn dns_failure_from_protocol_pools_names_the_protocol() {
    let hosts = Hosts::new();
    hosts.fail("nowhere.test", "no such host");
    let pool = Pool::new(Config::builder().resolver(hosts.clone()).build().unwrap());
    let excl = pool.protocol(Probe::<false>::default());
    let shared = pool.protocol(Probe::<true>::default());
    let ep = Endpoint::new("nowhere.test", 80).unwrap();
    let err = excl.get(&ep).await.unwrap_err();
    assert!(matches!(err, Error::DnsResolutionFailed { .. }), "{err}");
    assert_names(&err, "probe-excl");
    assert!(err.to_string().contains("nowhere.test"), "{err}");
    let err = shared.get(&ep).await.unwrap_err();
    assert!(matches!(err, Error::DnsResolutionFailed { .. }), "{err}");
    assert_names(&err, "probe-shared");
    let err = pool.get(&ep).await.unwrap_err();
    assert_eq!(err.protocol(), None, "{err}");
}

#[tokio::test]
async fn tls_failure_from_protocol_pools_names_the_protocol() {
    // A plain echo server answers the ClientHello with itself.
    let server = EchoServer::start().await;
    let cert = TlsCert::localhost();
    let pool = Pool::new(
        Config::builder()
            .tls_config(cert.client_config())
            .connect_retry_count(1)
            .build()
            .unwrap(),
    );
    let excl = pool.protocol(Probe::<false>::default());
    let shared = pool.protocol(Probe::<true>::default());
    let ep = Endpoint::tls("127.0.0.1", server.port()).unwrap();
    let err = excl.get(&ep).await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert_names(&err, "probe-excl");
    let err = shared.get(&ep).await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert_names(&err, "probe-shared");
    let err = pool.get(&ep).await.unwrap_err();
    assert!(matches!(err, Error::Tls { protocol: None, .. }), "{err}");
}

fn poll_outside_a_runtime<F: std::future::Future>(fut: F) -> Poll<F::Output> {
    let mut fut = std::pin::pin!(fut);
    fut.as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
}

#[test]
fn no_runtime_from_both_protocol_paths_names_the_protocol() {
    let pool = Pool::new(Config::default());
    let excl = pool.protocol(Probe::<false>::default());
    let shared = pool.protocol(Probe::<true>::default());
    let ep = Endpoint::new("127.0.0.1", refused_port()).unwrap();
    match poll_outside_a_runtime(excl.get(&ep)) {
        Poll::Ready(Err(err)) => {
            assert!(matches!(err, Error::NoRuntime { .. }), "{err}");
            assert_names(&err, "probe-excl");
        }
        other => panic!("{:?}", other.map(|r| r.map(drop))),
    }
    match poll_outside_a_runtime(shared.get(&ep)) {
        Poll::Ready(Err(err)) => {
            assert!(matches!(err, Error::NoRuntime { .. }), "{err}");
            assert_names(&err, "probe-shared");
        }
        other => panic!("{:?}", other.map(|r| r.map(drop))),
    }
}

#[tokio::test]
async fn pool_closed_from_a_protocol_pool() {
    let pool = Pool::new(Config::default());
    let excl = pool.protocol(Probe::<false>::default());
    let shared = pool.protocol(Probe::<true>::default());
    pool.close().await;
    let ep = Endpoint::new("127.0.0.1", refused_port()).unwrap();
    let a = excl.get(&ep).await.unwrap_err();
    let b = shared.get(&ep).await.unwrap_err();
    eprintln!(
        "excl: {a} / {:?}; shared: {b} / {:?}",
        a.protocol(),
        b.protocol()
    );
    assert!(matches!(a, Error::PoolClosed) && matches!(b, Error::PoolClosed));
}

// ---------------------------------------------------------------------------
// Unix sockets

#[cfg(unix)]
mod unix {
    use super::*;
    use tokio::net::UnixListener;

    fn socket(tag: &str) -> (support::servers::TempDir, std::path::PathBuf) {
        let dir = support::servers::TempDir::new(tag);
        let path = dir.path.join("s.sock");
        (dir, path)
    }

    /// A connection whose server sent bytes nobody asked for while it sat
    /// idle is not handed out (the peek, no byte consumed to judge).
    #[tokio::test]
    async fn unix_stray_bytes_while_idle_are_never_handed_out() {
        let (_dir, path) = socket("probe-stray");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            for i in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                s.write_all(&b).await.unwrap();
                if i == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    s.write_all(b"stray").await.unwrap();
                }
                held.push(s);
            }
            held
        });
        let pool = Pool::new(Config::default());
        let ep = Endpoint::unix(&path).unwrap();
        let mut conn = pool.get(&ep).await.unwrap();
        conn.write_all(b"a").await.unwrap();
        let mut b = [0u8; 1];
        conn.read_exact(&mut b).await.unwrap();
        let first = conn.id();
        drop(conn);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut conn = pool.get(&ep).await.unwrap();
        assert_ne!(conn.id(), first);
        conn.write_all(b"b").await.unwrap();
        conn.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"b");
        let s = pool.stats(&ep);
        assert_eq!(
            s.closed_for(conpool::CloseReason::UnexpectedData),
            1,
            "{s:?}"
        );
        drop(conn);
        drop(server.await.unwrap());
    }

    /// A write cut off part-way on a Unix socket spends the connection.
    #[tokio::test]
    async fn unix_cut_off_write_spends_the_connection() {
        let (_dir, path) = socket("probe-cut");
        let listener = UnixListener::bind(&path).unwrap();
        // Accepts and never reads: the socket buffer fills.
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (s, _) = listener.accept().await.unwrap();
                held.push(s);
            }
        });
        let pool = Pool::new(Config::default());
        let ep = Endpoint::unix(&path).unwrap();
        let mut conn = pool.get(&ep).await.unwrap();
        let big = vec![7u8; 64 << 20];
        let cut = tokio::time::timeout(Duration::from_millis(200), conn.write_all(&big)).await;
        assert!(cut.is_err(), "the write should stall");
        let first = conn.id();
        conn.release();
        let conn = pool.get(&ep).await.unwrap();
        assert_ne!(conn.id(), first, "a cut-off connection was handed out");
        assert_eq!(
            pool.stats(&ep).closed_for(conpool::CloseReason::Cancelled),
            1
        );
        drop(conn);
        server.abort();
    }

    #[tokio::test]
    async fn unix_peer_addr_and_debug() {
        let (_dir, path) = socket("probe-peer");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move { listener.accept().await.unwrap() });
        let pool = Pool::new(Config::default());
        let ep = Endpoint::unix(&path).unwrap();
        let conn = pool.get(&ep).await.unwrap();
        assert_eq!(conn.peer_addr(), None);
        assert_eq!(conn.local_addr(), None);
        assert!(conn.as_unix().is_some());
        assert!(conn.tls_session().is_none() && conn.alpn_protocol().is_none());
        eprintln!("{conn:?}");
        let _ = server.await;
    }

    /// An idle Unix connection whose runtime ended is not handed out on
    /// another runtime (its registration is gone).
    #[test]
    fn unix_idle_connection_from_an_ended_runtime_is_not_handed_out() {
        let (_dir, path) = socket("probe-rt");
        let std_listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in std_listener.incoming().take(2) {
                held.push(s.unwrap());
            }
            held
        });
        let pool = Pool::new(Config::default());
        let ep = Endpoint::unix(&path).unwrap();
        let first = {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let conn = pool.get(&ep).await.unwrap();
                let id = conn.id();
                drop(conn);
                id
            })
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let conn = pool.get(&ep).await.unwrap();
            assert_ne!(
                conn.id(),
                first,
                "a connection of a dead runtime was handed out"
            );
        });
        drop(server.join());
    }

    fn tls_acceptor(cert: &TlsCert) -> tokio_rustls::TlsAcceptor {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert_der()], cert.key_der())
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// A TLS server on a Unix socket sends close_notify while the
    /// connection is idle and keeps the socket open: the connection is
    /// not handed out. Session tickets (TLS 1.3) sent after the handshake
    /// do not close it.
    #[tokio::test]
    async fn unix_tls_close_notify_while_idle_is_never_handed_out() {
        let (_dir, path) = socket("probe-tls");
        let listener = UnixListener::bind(&path).unwrap();
        let cert = TlsCert::localhost();
        let acceptor = tls_acceptor(&cert);
        let (close_tx, mut close_rx) = tokio::sync::mpsc::channel::<()>(1);
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            for i in 0..2 {
                let (s, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(s).await.unwrap();
                let mut b = [0u8; 1];
                tls.read_exact(&mut b).await.unwrap();
                tls.write_all(&b).await.unwrap();
                tls.flush().await.unwrap();
                if i == 0 {
                    close_rx.recv().await.unwrap();
                    tls.get_mut().1.send_close_notify();
                    tls.flush().await.unwrap();
                }
                held.push(tls);
            }
            held
        });
        let pool = Pool::new(
            Config::builder()
                .tls_config(cert.client_config())
                .build()
                .unwrap(),
        );
        let ep = Endpoint::unix_tls(&path, "localhost").unwrap();
        let mut conn = pool.get(&ep).await.unwrap();
        assert!(conn.tls_session().is_some());
        conn.write_all(b"a").await.unwrap();
        let mut b = [0u8; 1];
        conn.read_exact(&mut b).await.unwrap();
        let first = conn.id();
        drop(conn);
        // Quiet idle connection (tickets only): reused.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let conn = pool.get(&ep).await.unwrap();
        assert_eq!(conn.id(), first, "a quiet TLS connection was not reused");
        drop(conn);
        close_tx.send(()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut conn = pool.get(&ep).await.unwrap();
        assert_ne!(conn.id(), first, "a closed TLS connection was handed out");
        conn.write_all(b"b").await.unwrap();
        conn.read_exact(&mut b).await.unwrap();
        let s = pool.stats(&ep);
        assert_eq!(s.closed_for(conpool::CloseReason::PeerClosed), 1, "{s:?}");
        drop(conn);
        drop(server.await.unwrap());
    }
}

#[cfg(unix)]
mod unix_tls_kernel {
    use super::*;

    /// As the suite's plain-Unix test, over TLS: the server's close_notify
    /// (socket left open) reaches the kernel while the runtime does not
    /// run; the next get must not hand the connection out.
    #[tokio::test(flavor = "current_thread")]
    async fn unix_tls_close_notify_before_the_driver_sees_it() {
        use std::io::{Read, Write};
        let dir = support::servers::TempDir::new("probe-tls-k");
        let path = dir.path.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let cert = TlsCert::localhost();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert_der()], cert.key_der())
            .unwrap(),
        );
        let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
        let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let mut held = Vec::new();
            for (i, socket) in listener.incoming().take(2).enumerate() {
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, socket.unwrap());
                let mut b = [0u8; 1];
                tls.read_exact(&mut b).unwrap();
                tls.write_all(&b).unwrap();
                tls.flush().unwrap();
                if i == 0 {
                    close_rx.recv().unwrap();
                    tls.conn.send_close_notify();
                    tls.conn.complete_io(&mut tls.sock).unwrap();
                    closed_tx.send(()).unwrap();
                }
                held.push(tls);
            }
            held
        });
        let pool = Pool::new(
            Config::builder()
                .tls_config(cert.client_config())
                .build()
                .unwrap(),
        );
        let ep = Endpoint::unix_tls(&path, "localhost").unwrap();
        let mut conn = pool.get(&ep).await.unwrap();
        conn.write_all(b"a").await.unwrap();
        let mut b = [0u8; 1];
        conn.read_exact(&mut b).await.unwrap();
        let first = conn.id();
        conn.release();
        close_tx.send(()).unwrap();
        closed_rx.recv().unwrap();
        let mut conn = pool.get(&ep).await.unwrap();
        assert_ne!(conn.id(), first, "the closed TLS connection was handed out");
        conn.write_all(b"b").await.unwrap();
        conn.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"b");
        drop(conn);
        drop(server.join().unwrap());
    }
}

// ---------------------------------------------------------------------------
// Shares

/// A share outlives its pool (and protocol pool) and is dropped after.
#[tokio::test]
async fn a_share_dropped_after_its_pools_are_dropped() {
    let server = EchoServer::start().await;
    let pool = Pool::new(Config::default());
    let shared = pool.protocol(Probe::<true>::default());
    let ep = server.endpoint();
    let a = shared.get(&ep).await.unwrap();
    let b = shared.get(&ep).await.unwrap();
    assert_eq!(a.id(), b.id());
    drop(shared);
    drop(pool);
    drop(a);
    tokio::task::yield_now().await;
    drop(b);
    support::eventually("the server sees the close", || server.open() == 0).await;
}

/// A share moved to a plain thread (no runtime) and dropped there hands
/// its room to a caller waiting on the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_dropped_on_another_thread_serves_a_waiter() {
    let server = EchoServer::start().await;
    let pool = Pool::new(
        Config::builder()
            .max_connections_per_endpoint(1)
            .acquire_timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let shared = pool.protocol(Probe::<true>::default());
    let ep = server.endpoint();
    let a = shared.get(&ep).await.unwrap();
    let b = shared.get(&ep).await.unwrap();
    let waiter = {
        let shared = shared.clone();
        let ep = ep.clone();
        tokio::spawn(async move { shared.get(&ep).await.map(|l| l.id()) })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(shared.stats(&ep).shares, 2);
    std::thread::spawn(move || drop(a)).join().unwrap();
    let id = waiter.await.unwrap().unwrap();
    assert_eq!(id, b.id());
    assert_eq!(shared.stats(&ep).shares, 1);
    // The last share dropped after its runtime is gone.
    let c = {
        let shared = shared.clone();
        let ep = ep.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let c = rt.block_on(async { shared.get(&ep).await.unwrap() });
            drop(rt);
            c
        })
        .join()
        .unwrap()
    };
    assert_eq!(c.id(), b.id());
    std::thread::spawn(move || drop(c)).join().unwrap();
    drop(b);
    let s = shared.stats(&ep);
    assert_eq!((s.shares, s.active), (0, 0), "{s:?}");
}

/// Clear drains: shares in flight finish, no new ones, connection closes;
/// waiters are served by a new connection.
#[tokio::test]
async fn clear_drains_shares_and_books_balance() {
    let server = EchoServer::start().await;
    let pool = Pool::new(Config::default());
    let shared = pool.protocol(Probe::<true>::default());
    let ep = server.endpoint();
    let a = shared.get(&ep).await.unwrap();
    shared.clear_endpoint(&ep);
    let b = shared.get(&ep).await.unwrap();
    assert_ne!(a.id(), b.id());
    let first = a.id();
    drop(a);
    let s = shared.stats(&ep);
    assert_eq!((s.shares, s.active, s.total_closed), (1, 1, 1), "{s:?}");
    let c = shared.get(&ep).await.unwrap();
    assert_ne!(c.id(), first);
    c.discard();
    let s = shared.stats(&ep);
    assert_eq!(s.shares, 1, "{s:?}");
    drop(b);
    let s = shared.stats(&ep);
    assert_eq!(
        (s.shares, s.active, s.idle, s.total_closed),
        (0, 0, 0, 2),
        "{s:?}"
    );
}

// ---------------------------------------------------------------------------
// --tcp-nodelay

#[cfg(feature = "clap")]
#[derive(clap::Parser, Debug)]
struct Cmd {
    #[command(flatten)]
    pool: conpool::cli::PoolArgs,
}

#[cfg(feature = "clap")]
fn parsed(args: &[&str]) -> Result<Cmd, clap::Error> {
    use clap::Parser;
    Cmd::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
}

#[cfg(feature = "clap")]
#[test]
fn tcp_nodelay_flag_and_env() {
    let on = parsed(&[]).unwrap().pool.into_config().unwrap();
    assert!(on.tcp_nodelay());
    let off = parsed(&["--tcp-nodelay", "false"])
        .unwrap()
        .pool
        .into_config()
        .unwrap();
    assert!(!off.tcp_nodelay());
    let on = parsed(&["--tcp-nodelay", "true"])
        .unwrap()
        .pool
        .into_config()
        .unwrap();
    assert!(on.tcp_nodelay());
    let err = parsed(&["--tcp-nodelay", "maybe"]).unwrap_err();
    eprintln!("{err}");
    assert!(err.to_string().contains("--tcp-nodelay"), "{err}");
    assert!(err.to_string().contains("maybe"), "{err}");
    // A bare flag: is it accepted (as "on")?
    match parsed(&["--tcp-nodelay"]) {
        Ok(c) => eprintln!(
            "bare flag accepted: {}",
            c.pool.into_config().unwrap().tcp_nodelay()
        ),
        Err(e) => eprintln!(
            "bare flag refused: {}",
            e.to_string().lines().next().unwrap()
        ),
    }
}
