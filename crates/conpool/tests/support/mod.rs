//! The test harness: embedded echo servers (TCP and TLS), real servers
//! started on free loopback ports, and ways to count what the process holds.
//!
//! Every server binds to 127.0.0.1 on a port the kernel picks, so tests run
//! in parallel without clashing and no traffic leaves the machine.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conpool::{Endpoint, Pool, Stats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub mod hosts;
pub mod proxy;
pub mod redis;
pub mod servers;
pub mod thread_server;

/// A TCP echo server on 127.0.0.1. It counts the connections it has
/// accepted and those still open on its side, and can close every open one
/// (a server-side close).
pub struct EchoServer {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    kill: watch::Sender<u64>,
    /// The server name (SNI) the last TLS client sent.
    sni: Arc<std::sync::Mutex<Option<String>>>,
}

impl EchoServer {
    pub async fn start() -> EchoServer {
        Self::start_with(None).await
    }

    /// An echo server on `addr` (any 127.0.0.0/8 address; port 0 for one
    /// the kernel picks), for a test host whose addresses share a port.
    pub async fn start_at(addr: SocketAddr) -> EchoServer {
        Self::start_on(addr, None).await
    }

    /// A TLS echo server on `addr`, its certificate `cert`'s.
    pub async fn start_tls_at(addr: SocketAddr, cert: &TlsCert) -> EchoServer {
        Self::start_on(addr, Some(cert.acceptor())).await
    }

    /// A TLS echo server whose certificate is valid for `localhost`; use
    /// [`TlsCert::client_config`] to trust it.
    pub async fn start_tls(cert: &TlsCert) -> EchoServer {
        Self::start_with(Some(cert.acceptor())).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> EchoServer {
        Self::start_on("127.0.0.1:0".parse().unwrap(), tls).await
    }

    async fn start_on(addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> EchoServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (kill, _) = watch::channel(0u64);
        let sni = Arc::new(std::sync::Mutex::new(None));
        let server = EchoServer {
            addr,
            accepted: accepted.clone(),
            open: open.clone(),
            kill: kill.clone(),
            sni: sni.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let open = open.clone();
                let mut killed = kill.subscribe();
                let tls = tls.clone();
                let sni = sni.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = echo(socket, tls, sni) => {}
                        _ = killed.changed() => {}
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        server
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new("127.0.0.1", self.port()).unwrap()
    }

    /// A TLS endpoint by the name the test certificate is valid for.
    pub fn tls_endpoint(&self) -> Endpoint {
        Endpoint::tls("localhost", self.port()).unwrap()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections the server still has open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Closes every connection open now, from the server's side.
    pub fn close_all(&self) {
        self.kill.send_modify(|n| *n += 1);
    }

    /// The server name the last TLS client sent (SNI), if it sent one.
    pub fn sni(&self) -> Option<String> {
        self.sni.lock().unwrap().clone()
    }
}

async fn echo(
    socket: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    sni: Arc<std::sync::Mutex<Option<String>>>,
) {
    match tls {
        None => echo_stream(socket).await,
        Some(acceptor) => {
            if let Ok(stream) = acceptor.accept(socket).await {
                *sni.lock().unwrap() = stream.get_ref().1.server_name().map(str::to_owned);
                echo_stream(stream).await
            }
        }
    }
}

async fn echo_stream<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut stream: S) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A TCP server on 127.0.0.1 that greets each connection with
/// [`DeafServer::GREETING`] and never reads from it, so that a large enough
/// write stalls part-way: once the socket buffers on both sides are full,
/// `poll_write` returns `Pending`.
pub struct DeafServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DeafServer {
    pub const GREETING: &'static [u8] = b"hello\n";

    pub async fn start() -> DeafServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Held, never read: closing them would end the stall.
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                if socket.write_all(Self::GREETING).await.is_ok() {
                    held.push(socket);
                }
            }
        });
        DeafServer { addr, task }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new("127.0.0.1", self.addr.port()).unwrap()
    }
}

impl Drop for DeafServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// More bytes than the socket buffers of a loopback connection hold on
/// both sides together (a few MiB each at most), so that writing it to a
/// [`DeafServer`] never completes.
pub const STALLING_WRITE: usize = 64 << 20;

/// A self-signed certificate for `localhost`, made with rcgen.
pub struct TlsCert {
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TlsCert {
    pub fn localhost() -> TlsCert {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        TlsCert {
            cert: certified.cert.der().clone(),
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(
                certified.signing_key.serialize_der().into(),
            ),
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        }
    }

    /// A self-signed certificate for `localhost` issued by and to
    /// `common_name`: a verifier that trusts another name's finds no
    /// issuer for it (rcgen's default name is the same for every one).
    pub fn localhost_named(common_name: &str) -> TlsCert {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TlsCert {
            cert: cert.der().clone(),
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn cert_der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.cert.clone()
    }

    pub fn key_der(&self) -> rustls::pki_types::PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// A client config that trusts this certificate only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A loopback port nothing listens on: connecting is refused at once.
pub fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A listener that never accepts, with its accept queue filled, so that a
/// new connect hangs (the kernel drops the SYN) until the client gives up.
pub struct FullBacklog {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<socket2::Socket>,
}

impl FullBacklog {
    pub fn start() -> FullBacklog {
        Self::start_at("127.0.0.1:0".parse().unwrap())
    }

    /// A black hole on `addr` (an IPv4 loopback address; port 0 for one
    /// the kernel picks).
    pub fn start_at(addr: SocketAddr) -> FullBacklog {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener.bind(&addr.into()).unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        // Connect until one does not complete: then the queue is full.
        for _ in 0..64 {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            if s.connect_timeout(&addr.into(), Duration::from_millis(200))
                .is_err()
            {
                break;
            }
            fillers.push(s);
        }
        FullBacklog {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new("127.0.0.1", self.addr.port()).unwrap()
    }

    /// Fails unless a new connect to the listener hangs, so that a test that
    /// relies on the black hole cannot pass on a kernel that answers instead.
    pub async fn assert_connects_hang(&self) {
        let attempt =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(self.addr)).await;
        assert!(
            attempt.is_err(),
            "a connect to the full backlog at {} must hang, but it ended: {attempt:?}",
            self.addr
        );
    }
}

/// The sockets of this process connected to `remote_port` on loopback:
/// the client side of connections to one test server, whatever else the
/// test process has open.
pub fn client_sockets_to(remote_port: u16) -> usize {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let remote = cols[2];
            let state = cols[3];
            let port = remote
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 0A is LISTEN; TIME_WAIT (06) sockets have no inode.
            if port == Some(remote_port) && state != "0A" {
                inodes.insert(cols[9].to_string());
            }
        }
    }
    let mut count = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                if inodes.contains(inode) {
                    count += 1;
                }
            }
        }
    }
    count
}

/// Checks the pool's books for one endpoint with nothing in flight:
/// created − closed = active + idle, and the process holds exactly that
/// many sockets to the server.
pub fn assert_books_balance(pool: &Pool, endpoint: &Endpoint, server_port: u16) -> Stats {
    let s = pool.stats(endpoint);
    assert_eq!(
        s.total_created - s.total_closed,
        (s.active + s.idle) as u64,
        "created - closed must equal active + idle: {s:?}"
    );
    assert_eq!(s.dialing, 0, "nothing should be dialing: {s:?}");
    assert_eq!(s.waiting, 0, "nobody should be waiting: {s:?}");
    assert_eq!(
        client_sockets_to(server_port),
        s.active + s.idle,
        "the process must hold exactly active + idle sockets: {s:?}"
    );
    s
}

/// Waits (on tokio's clock) until `cond` holds, polling; panics with `what`
/// after `limit` polls. For conditions a server task settles asynchronously.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Writes `msg` and reads the echo back.
pub async fn round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    conn: &mut S,
    msg: &[u8],
) -> std::io::Result<()> {
    conn.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back).await?;
    assert_eq!(back, msg);
    Ok(())
}

/// Starts a binary a test needs; a missing one fails the test with what to
/// install, never skips it.
pub fn spawn_server(binary: &str, package: &str, args: &[&str]) -> Child {
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "could not start {binary} ({e}); the test suite needs it: install it with `apt-get install {package}` (or run ./scripts/test as root)"
            )
        })
}

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_for_port(port: u16, what: &str) {
    for _ in 0..500 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not start listening on port {port}");
}

/// Waits until a server accepts connections on the Unix socket at `path`.
pub async fn wait_for_socket(path: &std::path::Path, what: &str) {
    for _ in 0..500 {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not start listening on {}", path.display());
}

/// A free loopback port for a server we start ourselves.
pub fn free_port() -> u16 {
    refused_port()
}
