//! A fault-injecting TCP proxy for tests: it sits between a client and an
//! upstream server on 127.0.0.1 and can pass traffic, delay it, cut it,
//! half-close it, swallow it, reset connections or refuse them.
//!
//! The proxy runs on the test's own runtime (`tokio::spawn`), so it follows
//! a paused clock: [`Fault::Delay`] sleeps with `tokio::time::sleep`.
//!
//! Every connection the proxy accepts gets its own task, registered under an
//! id with a control channel until it ends; [`FaultProxy::reset_all`],
//! [`FaultProxy::close_all`] and [`FaultProxy::reset_random`] act through
//! that registry on the connections alive at the time of the call;
//! [`FaultProxy::reset_random_confirmed`] also waits until each reset has
//! gone out and says which client connections it hit, and when.
//!
//! Caveats:
//! - The proxy acts on connections it has *accepted*. A client's `connect`
//!   can complete (the kernel finishes the handshake) before the proxy's
//!   accept task runs, so wait for [`FaultProxy::accepted`] to reach the
//!   count you expect (see [`FaultProxy::wait_accepted`]) before resetting
//!   or closing.
//! - Resets and closes are carried out by each connection's task, on its
//!   next poll: a client reading the socket sees them at once, but
//!   [`FaultProxy::open`] drops only when the tasks have finished (use
//!   [`FaultProxy::wait_open`] or `eventually`).
//! - [`FaultProxy::stop`] refuses new connects from the moment it returns
//!   (the listening socket is shut down synchronously); connections already
//!   accepted keep working.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conpool::Endpoint;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does with a connection. A mode applies to connections
/// accepted after it is set; connections already open keep theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward both ways.
    Pass,
    /// Accept, then reset (RST) the connection at once, without dialing
    /// upstream.
    Reset,
    /// Forward, but after the first chunk of response (upstream to client)
    /// shut down the write side towards the client, so the client reads
    /// EOF. The proxy keeps reading from the client and forwarding
    /// upstream; later responses are discarded.
    HalfClose,
    /// Accept and read from the client, never dial upstream, never answer.
    /// When the client closes its side, the proxy closes too.
    BlackHole,
    /// Forward both ways, sleeping this long (on tokio's clock) before
    /// forwarding each chunk.
    Delay(Duration),
    /// Forward, but deliver only this many bytes upstream to client in
    /// total, then reset the client connection. The reset comes as soon as
    /// the count is reached; with 0, when the first response bytes arrive
    /// (none delivered). Client to upstream traffic is forwarded untouched.
    CutAfter(usize),
    /// The listener is closed: connects are refused. The same as
    /// [`FaultProxy::stop`]; setting any other mode (or
    /// [`FaultProxy::restart`]) listens again on the same port.
    Refuse,
}

/// A TCP proxy on 127.0.0.1 in front of one upstream address, injecting
/// the configured [`Fault`]. Dropping it stops the listener and closes
/// (FIN) every connection still open.
pub struct FaultProxy {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: Mutex<State>,
    accepted: AtomicUsize,
    open: AtomicUsize,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, oneshot::Sender<Cmd>>>,
}

struct State {
    /// The mode for new connections; `Refuse` exactly when not listening.
    mode: Fault,
    /// The mode to go back to on `restart` after `stop`.
    resume: Fault,
    listening: Option<Listening>,
}

struct Listening {
    listener: Arc<TcpListener>,
    task: JoinHandle<()>,
}

enum Cmd {
    /// Reset; with a sender, report the reset on it once the RST is out.
    Reset(Option<oneshot::Sender<ResetRecord>>),
    Close,
}

/// A connection [`FaultProxy::reset_random_confirmed`] reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetRecord {
    /// The client's end of the connection (its local address).
    pub peer: SocketAddr,
    /// When the proxy accepted the connection (tokio's clock).
    pub accepted_at: Instant,
    /// Just after the RST went out (tokio's clock): the reset socket was
    /// closed with `SO_LINGER` 0.
    pub reset_at: Instant,
}

/// How a connection ends, which decides how its client socket is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Both directions finished (FINs already sent): just drop.
    Done,
    /// Graceful close from the proxy: FIN towards the client.
    Close,
    /// RST towards the client.
    Reset,
    /// The client went away or failed: drop without ceremony.
    Drop,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (a port the kernel picks) forwarding to
    /// `upstream`, in [`Fault::Pass`] mode.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        assert!(
            upstream.ip().is_loopback(),
            "the fault proxy only forwards to loopback, not {upstream}"
        );
        let listener = bind("127.0.0.1:0".parse().unwrap()).expect("bind the fault proxy");
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            addr,
            upstream,
            state: Mutex::new(State {
                mode: Fault::Pass,
                resume: Fault::Pass,
                listening: None,
            }),
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        });
        let mut state = inner.state.lock().unwrap();
        state.listening = Some(Inner::serve(&inner, listener));
        drop(state);
        FaultProxy { inner }
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn port(&self) -> u16 {
        self.inner.addr.port()
    }

    /// The upstream address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.inner.upstream
    }

    /// A plain TCP endpoint for the proxy.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new("127.0.0.1", self.port()).unwrap()
    }

    /// The mode new connections get ([`Fault::Refuse`] while stopped).
    pub fn mode(&self) -> Fault {
        self.inner.state.lock().unwrap().mode
    }

    /// Sets the mode for connections accepted from now on. `Refuse` closes
    /// the listener (like [`stop`](Self::stop)); any other mode while
    /// refusing listens again on the same port (panicking if the port
    /// cannot be bound again; [`restart`](Self::restart) retries instead).
    pub fn set_mode(&self, mode: Fault) {
        if mode == Fault::Refuse {
            self.stop();
            return;
        }
        let mut state = self.inner.state.lock().unwrap();
        if state.listening.is_none() {
            let listener = bind(self.inner.addr).unwrap_or_else(|e| {
                panic!(
                    "the fault proxy could not listen on {} again: {e}",
                    self.inner.addr
                )
            });
            state.listening = Some(Inner::serve(&self.inner, listener));
        }
        state.mode = mode;
    }

    /// Client connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// Client connections still open on the proxy's side.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// Resets (RST: `SO_LINGER` 0, then close) every open client
    /// connection; the upstream side of each is closed normally.
    pub fn reset_all(&self) {
        for tx in self.inner.take_all() {
            let _ = tx.send(Cmd::Reset(None));
        }
    }

    /// Closes every open connection gracefully from the server's side: FIN
    /// towards the client, and the upstream connection closed too.
    pub fn close_all(&self) {
        for tx in self.inner.take_all() {
            let _ = tx.send(Cmd::Close);
        }
    }

    /// Resets `round(fraction × open)` of the open connections (`fraction`
    /// clamped to 0..=1), picked by a splitmix64 generator seeded with
    /// `rng_seed`: the same seed over the same connections picks the same
    /// ones. Returns how many were reset.
    pub fn reset_random(&self, rng_seed: u64, fraction: f64) -> usize {
        self.pick_random(rng_seed, fraction)
            .into_iter()
            .filter_map(|tx| tx.send(Cmd::Reset(None)).ok())
            .count()
    }

    /// [`reset_random`](Self::reset_random) (the same pick for the same
    /// seed), and then waits until every picked connection has been reset:
    /// returns a record of each, in the order picked. A picked connection
    /// that ended on its own before its task saw the command is not reset
    /// and has no record.
    pub async fn reset_random_confirmed(&self, rng_seed: u64, fraction: f64) -> Vec<ResetRecord> {
        let mut acks = Vec::new();
        for tx in self.pick_random(rng_seed, fraction) {
            let (ack, done) = oneshot::channel();
            if tx.send(Cmd::Reset(Some(ack))).is_ok() {
                acks.push(done);
            }
        }
        let mut records = Vec::with_capacity(acks.len());
        for done in acks {
            // An error: the connection ended before carrying the reset out,
            // dropping the command and its sender.
            if let Ok(record) = done.await {
                records.push(record);
            }
        }
        records
    }

    /// Takes the control channels of a seeded random pick of
    /// `round(fraction × open)` connections out of the registry.
    fn pick_random(&self, rng_seed: u64, fraction: f64) -> Vec<oneshot::Sender<Cmd>> {
        let mut conns = self.inner.conns.lock().unwrap();
        let mut ids: Vec<u64> = conns.keys().copied().collect();
        ids.sort_unstable();
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        let want = ((ids.len() as f64) * fraction).round() as usize;
        let want = want.min(ids.len());
        // A partial Fisher–Yates shuffle: the first `want` ids are the pick.
        let mut rng = SplitMix64(rng_seed);
        for i in 0..want {
            let j = i + (rng.next() % (ids.len() - i) as u64) as usize;
            ids.swap(i, j);
        }
        ids[..want]
            .iter()
            .filter_map(|id| conns.remove(id))
            .collect()
    }

    /// Stops accepting: the listening socket is shut down and closed, so
    /// later connects are refused. Open connections are left alone. The
    /// mode reads [`Fault::Refuse`] until [`restart`](Self::restart).
    pub fn stop(&self) {
        let mut state = self.inner.state.lock().unwrap();
        if let Some(listening) = state.listening.take() {
            listening.close();
        }
        if state.mode != Fault::Refuse {
            state.resume = state.mode;
            state.mode = Fault::Refuse;
        }
    }

    /// Listens again on the same port, with the mode in force before
    /// [`stop`](Self::stop) or `set_mode(Fault::Refuse)`. Does nothing if
    /// the proxy is listening. Retries for a while (10 ms apart, on tokio's
    /// clock) if the port is briefly unavailable, then panics.
    pub async fn restart(&self) {
        let mut last_err = None;
        for _ in 0..200 {
            {
                let mut state = self.inner.state.lock().unwrap();
                if state.listening.is_some() {
                    return;
                }
                match bind(self.inner.addr) {
                    Ok(listener) => {
                        state.listening = Some(Inner::serve(&self.inner, listener));
                        state.mode = state.resume;
                        return;
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "the fault proxy could not listen on {} again: {:?}",
            self.inner.addr, last_err
        );
    }

    /// Waits (on tokio's clock) until the proxy has accepted at least `n`
    /// connections.
    pub async fn wait_accepted(&self, n: usize) {
        super::eventually(&format!("the proxy to accept {n} connections"), || {
            self.accepted() >= n
        })
        .await
    }

    /// Waits (on tokio's clock) until exactly `n` connections are open on
    /// the proxy's side.
    pub async fn wait_open(&self, n: usize) {
        super::eventually(&format!("the proxy to hold {n} open connections"), || {
            self.open() == n
        })
        .await
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(listening) = self.inner.state.lock().unwrap().listening.take() {
            listening.close();
        }
        self.close_all();
    }
}

impl Listening {
    /// Shuts the listening socket down now, so that the kernel refuses new
    /// connects at once (on Linux, `shutdown` on a listener stops it
    /// listening and wakes the pending accept), then ends the accept task,
    /// which drops the last handle and closes the socket.
    fn close(self) {
        let _ = SockRef::from(&*self.listener).shutdown(Shutdown::Both);
        self.task.abort();
    }
}

impl Inner {
    /// Spawns the accept loop for `listener`.
    fn serve(inner: &Arc<Inner>, listener: TcpListener) -> Listening {
        let listener = Arc::new(listener);
        let task = tokio::spawn(accept_loop(inner.clone(), listener.clone()));
        Listening { listener, task }
    }

    fn take_all(&self) -> Vec<oneshot::Sender<Cmd>> {
        let mut conns = self.conns.lock().unwrap();
        let mut all: Vec<(u64, oneshot::Sender<Cmd>)> = conns.drain().collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all.into_iter().map(|(_, tx)| tx).collect()
    }

    /// Whether `listener` is still the one the proxy listens with.
    fn is_current(&self, listener: &Arc<TcpListener>) -> bool {
        let state = self.state.lock().unwrap();
        state
            .listening
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(&l.listener, listener))
    }
}

/// Binds a listener with `SO_REUSEADDR`, so the same port can be bound
/// again after a stop while old connections sit in `TIME_WAIT`.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(inner: Arc<Inner>, listener: Arc<TcpListener>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                if !inner.is_current(&listener) {
                    return;
                }
                // A transient error (an aborted handshake, say).
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let mode = inner.state.lock().unwrap().mode;
        let id = inner.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        inner.conns.lock().unwrap().insert(id, tx);
        inner.accepted.fetch_add(1, Ordering::SeqCst);
        inner.open.fetch_add(1, Ordering::SeqCst);
        let accepted = Accepted {
            id,
            peer,
            at: Instant::now(),
        };
        tokio::spawn(connection(inner.clone(), accepted, client, mode, rx));
    }
}

/// Who a connection is, for its [`ResetRecord`].
struct Accepted {
    id: u64,
    peer: SocketAddr,
    at: Instant,
}

/// One client connection, from accept to close.
async fn connection(
    inner: Arc<Inner>,
    accepted: Accepted,
    mut client: TcpStream,
    mode: Fault,
    mut ctl: oneshot::Receiver<Cmd>,
) {
    // Without Nagle every write leaves at once, so nothing is still queued
    // (and thrown away) when a reset follows a write.
    let _ = client.set_nodelay(true);
    let mut upstream = None;
    let mut ack = None;
    let end = match mode {
        Fault::Reset | Fault::Refuse => End::Reset,
        Fault::BlackHole => {
            tokio::select! {
                cmd = &mut ctl => on_cmd(cmd, &mut ack),
                end = black_hole(&mut client) => end,
            }
        }
        Fault::Pass | Fault::HalfClose | Fault::Delay(_) | Fault::CutAfter(_) => {
            let dialed = tokio::select! {
                cmd = &mut ctl => Err(on_cmd(cmd, &mut ack)),
                dialed = TcpStream::connect(inner.upstream) => dialed.map_err(|_| End::Reset),
            };
            match dialed {
                Err(end) => end,
                Ok(mut up) => {
                    let _ = up.set_nodelay(true);
                    let end = tokio::select! {
                        cmd = &mut ctl => on_cmd(cmd, &mut ack),
                        end = pump(&mut client, &mut up, mode) => end,
                    };
                    upstream = Some(up);
                    end
                }
            }
        }
    };
    finish(client, end);
    if let Some(ack) = ack {
        let _ = ack.send(ResetRecord {
            peer: accepted.peer,
            accepted_at: accepted.at,
            reset_at: Instant::now(),
        });
    }
    drop(upstream);
    inner.conns.lock().unwrap().remove(&accepted.id);
    inner.open.fetch_sub(1, Ordering::SeqCst);
}

/// The end a command asks for; keeps a reset's confirmation channel in
/// `ack`.
fn on_cmd(
    cmd: Result<Cmd, oneshot::error::RecvError>,
    ack: &mut Option<oneshot::Sender<ResetRecord>>,
) -> End {
    match cmd {
        Ok(Cmd::Reset(confirm)) => {
            *ack = confirm;
            End::Reset
        }
        // A dropped sender means the proxy is going away: close.
        Ok(Cmd::Close) | Err(_) => End::Close,
    }
}

/// Closes the client socket the way `end` says.
fn finish(client: TcpStream, end: End) {
    match end {
        End::Done | End::Drop => drop(client),
        End::Reset => {
            let _ = SockRef::from(&client).set_linger(Some(Duration::ZERO));
            drop(client);
        }
        End::Close => {
            let _ = SockRef::from(&client).shutdown(Shutdown::Write);
            // Closing with unread data would send a RST instead of a FIN.
            let mut buf = [0u8; 4096];
            while matches!(client.try_read(&mut buf), Ok(n) if n > 0) {}
            drop(client);
        }
    }
}

/// Reads and discards until the client closes.
async fn black_hole(client: &mut TcpStream) -> End {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match client.read(&mut buf).await {
            Ok(0) => return End::Close,
            Ok(_) => {}
            Err(_) => return End::Drop,
        }
    }
}

/// How one direction of a forwarded connection ended.
enum Dir {
    /// EOF, passed on as a FIN.
    Eof,
    /// The `CutAfter` budget is spent: reset the client.
    Cut,
    /// The client side failed.
    ClientError,
    /// The upstream side failed: reset the client, as a real server's
    /// failure would.
    UpstreamError,
}

/// Forwards both directions until both have ended, or one fails.
async fn pump(client: &mut TcpStream, upstream: &mut TcpStream, mode: Fault) -> End {
    let delay = match mode {
        Fault::Delay(d) => Some(d),
        _ => None,
    };
    let (mut client_rd, mut client_wr) = client.split();
    let (mut up_rd, mut up_wr) = upstream.split();

    let to_upstream = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_rd.read(&mut buf).await {
                Ok(0) => {
                    let _ = up_wr.shutdown().await;
                    return Dir::Eof;
                }
                Ok(n) => n,
                Err(_) => return Dir::ClientError,
            };
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            if up_wr.write_all(&buf[..n]).await.is_err() {
                return Dir::UpstreamError;
            }
        }
    };

    let to_client = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut budget = match mode {
            Fault::CutAfter(n) => Some(n),
            _ => None,
        };
        let mut half_closed = false;
        loop {
            let n = match up_rd.read(&mut buf).await {
                Ok(0) => {
                    if !half_closed {
                        let _ = client_wr.shutdown().await;
                    }
                    return Dir::Eof;
                }
                Ok(n) => n,
                Err(_) => return Dir::UpstreamError,
            };
            if half_closed {
                // HalfClose: the client gets nothing more.
                continue;
            }
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let (n, cut) = match budget {
                Some(left) if n >= left => (left, true),
                Some(left) => {
                    budget = Some(left - n);
                    (n, false)
                }
                None => (n, false),
            };
            if n > 0 && client_wr.write_all(&buf[..n]).await.is_err() {
                return Dir::ClientError;
            }
            if cut {
                return Dir::Cut;
            }
            if mode == Fault::HalfClose {
                let _ = client_wr.shutdown().await;
                half_closed = true;
            }
        }
    };

    tokio::pin!(to_upstream, to_client);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        let dir = tokio::select! {
            dir = &mut to_upstream, if !up_done => { up_done = true; dir }
            dir = &mut to_client, if !down_done => { down_done = true; dir }
        };
        match dir {
            Dir::Eof if up_done && down_done => return End::Done,
            Dir::Eof => {}
            Dir::Cut | Dir::UpstreamError => return End::Reset,
            Dir::ClientError => return End::Drop,
        }
    }
}

/// splitmix64: a small, fast, deterministic generator, for the proxy's
/// seeded choices and the tests' own.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}
