//! The lease: a connection on loan from the pool.
//!
//! A [`PooledConnection`] is an RAII guard. It is itself the stream
//! (`AsyncRead + AsyncWrite`), and it watches every I/O result that passes
//! through it, so that when it is given back it knows whether the
//! connection is still clean:
//!
//! - an I/O error, an end of stream, or a shutdown means the connection is
//!   spent;
//! - a read, write or flush that returned `Pending` and was never completed
//!   means the caller was cancelled mid-request: the stream may carry half a
//!   request or an unread reply, which must never reach the next caller.
//!   Each kind of operation has its own mark, cleared only by a completed
//!   operation of the same kind, so that a flush or a read after a cut-off
//!   write does not make the half-written connection look clean;
//! - a drop while the thread is panicking means the caller's state is
//!   unknown.
//!
//! In each of these cases the connection is closed; otherwise it goes back
//! to the pool.
//!
//! # Giving a connection back
//!
//! - **Drop** it: the careful default. Any operation left pending closes
//!   the connection, since a lease dropped by a cancelled task looks just
//!   like one whose owner finished. Right for code that reads exactly its
//!   reply and stops, as hand-written protocol code does.
//! - [`release`](PooledConnection::release) it: the caller vouches that the
//!   last exchange is complete, so a read left pending since then (a
//!   protocol client such as hyper's HTTP/1.1 client keeps one while the
//!   connection is idle, to notice the server's close) does not count as a
//!   cancelled exchange. Everything else still closes it, and bytes
//!   waiting unread are looked for at once.
//! - [`discard`](PooledConnection::discard) it: the caller knows the
//!   connection is unusable (a protocol error, leftover bytes).

use std::fmt;
use std::io;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::pool::{Conn, EndpointPool, Held};
use crate::stream::Look;
use crate::{CloseReason, Endpoint, Stream};

/// A connection leased from a [`Pool`](crate::Pool). Use it as a stream;
/// drop it (or [`release`](Self::release) it) to give it back.
///
/// It derefs to the [`Stream`] for inspection (`peer_addr`, the TLS
/// session), but I/O goes through the lease itself so that it can tell a
/// clean connection from a broken one.
///
/// ```no_run
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// # async fn demo(pool: conpool::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let endpoint = conpool::Endpoint::new("127.0.0.1", 6379)?;
/// let mut conn = pool.get(&endpoint).await?;
/// conn.write_all(b"PING\r\n").await?;
/// let mut reply = [0u8; 7];
/// conn.read_exact(&mut reply).await?;
/// println!("{} (reused: {}, uses: {})", String::from_utf8_lossy(&reply), conn.is_reused(), conn.use_count());
/// drop(conn); // back to the pool
/// # Ok(()) }
/// ```
pub struct PooledConnection {
    conn: Option<Conn>,
    pool: Arc<EndpointPool>,
    reused: bool,
    unfinished: Unfinished,
    /// The bytes a write left pending was given (where they start, how
    /// many), while it is pending. A caller resuming a write polls again
    /// with the same bytes (`write_all` does, and so do the buffered
    /// writers); a write of other bytes means the pending one was given
    /// up part-way, and its half request is on the wire.
    pending_write: Option<(usize, usize)>,
    spent: Option<CloseReason>,
}

/// The kinds of operation whose cut-off leaves the stream mid-exchange.
#[derive(Clone, Copy)]
enum Op {
    Read = 1,
    Write = 2,
    Flush = 4,
    /// A health check the pool runs on the stream before handing it out.
    HealthCheck = 8,
}

/// The operations begun (a poll returned `Pending`) and not completed
/// since, one mark per kind.
#[derive(Clone, Copy, Default)]
struct Unfinished(u8);

impl Unfinished {
    fn set(&mut self, op: Op, pending: bool) {
        if pending {
            self.0 |= op as u8;
        } else {
            self.0 &= !(op as u8);
        }
    }

    fn any_except(self, op: Option<Op>) -> bool {
        self.0 & !op.map_or(0, |op| op as u8) != 0
    }
}

/// How the caller gives the connection back.
#[derive(Clone, Copy)]
enum Return {
    Dropped,
    Released,
}

impl PooledConnection {
    #[inline]
    pub(crate) fn new(conn: Conn, pool: Arc<EndpointPool>) -> Self {
        PooledConnection {
            conn: Some(conn),
            pool,
            reused: false,
            unfinished: Unfinished::default(),
            pending_write: None,
            spent: None,
        }
    }

    /// The endpoint this connection goes to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.pool.endpoint
    }

    /// Whether the connection was used before this lease (not freshly dialed).
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// How many leases this connection has had, this one included.
    pub fn use_count(&self) -> u64 {
        self.conn().uses
    }

    /// A process-wide unique id of the underlying connection, stable across
    /// leases; useful in logs and to tell connections apart.
    pub fn id(&self) -> u64 {
        self.conn().id
    }

    /// Closes the connection instead of returning it to the pool.
    pub fn discard(mut self) {
        self.spent.get_or_insert(CloseReason::Discarded);
    }

    /// Gives the connection back, vouching that the last exchange on it is
    /// complete (the whole reply read), so that a read left pending since
    /// does not count as a cancelled exchange.
    ///
    /// Call it from protocol clients that keep a read pending on an idle
    /// connection, such as hyper's HTTP/1.1 client (see the
    /// [crate docs](crate#giving-connections-back) and
    /// `examples/hyper_http1.rs`), once the exchange is over: a plain drop
    /// would close the connection as [`Cancelled`](CloseReason::Cancelled).
    ///
    /// The connection is still closed if its lease saw an I/O error or the
    /// end of the stream, if a write or flush was left pending (half a
    /// request), while panicking, and if a look at the stream, taken here
    /// without blocking, finds it closed, broken, or holding bytes nobody
    /// read (for TLS, buffered plaintext counts). Bytes still in flight
    /// cannot be seen yet: the caller's word that the exchange is complete
    /// is what makes this safe.
    pub fn release(mut self) {
        self.end(Return::Released);
    }

    fn conn(&self) -> &Conn {
        self.conn
            .as_ref()
            .expect("a lease holds its connection until dropped")
    }

    fn conn_mut(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }

    /// The stream: a `PooledConnection` that users hold is a byte-stream
    /// pool's (a protocol's connection is leased as a
    /// [`ProtocolLease`](crate::ProtocolLease), which never does I/O
    /// through this one).
    pub(crate) fn stream_mut(&mut self) -> &mut Stream {
        self.conn_mut()
            .held
            .stream_mut()
            .expect("a byte-stream pool's connection holds a stream")
    }

    fn stream(&self) -> &Stream {
        self.conn()
            .held
            .stream()
            .expect("a byte-stream pool's connection holds a stream")
    }

    /// What the connection holds.
    pub(crate) fn held(&self) -> &Held {
        &self.conn().held
    }

    /// What the connection holds.
    pub(crate) fn held_mut(&mut self) -> &mut Held {
        &mut self.conn_mut().held
    }

    /// Counts one more use of the connection: for a shared connection,
    /// each share is a use, so that `max_connection_uses` bounds shares.
    pub(crate) fn count_use(&mut self) {
        self.conn_mut().uses += 1;
    }

    /// Gives the connection back vouching for the exchange (as
    /// [`release`](Self::release)), from the protocol layer, which holds
    /// the lease by `&mut`.
    pub(crate) fn end_released(&mut self) {
        self.end(Return::Released);
    }

    /// Whether one more share of the connection may be handed out at
    /// `now` by its age and use count (see `Conn::share_verdict`).
    pub(crate) fn share_verdict(&self, now: tokio::time::Instant) -> Option<CloseReason> {
        self.conn().share_verdict(now, self.pool.config())
    }

    /// Whether the connection is of its endpoint's current generation and
    /// the pool is open: a clear or a close since it was leased means it
    /// takes no new shares.
    pub(crate) fn is_current(&self) -> bool {
        self.pool.admits(self.generation())
    }

    /// Whether the lease still holds its connection (it has not ended).
    pub(crate) fn holds_conn(&self) -> bool {
        self.conn.is_some()
    }

    /// Moves the connection into a new lease with this one's marks,
    /// leaving this one ended: for a return that has to wait in a task.
    pub(crate) fn detach(&mut self) -> PooledConnection {
        PooledConnection {
            conn: self.conn.take(),
            pool: self.pool.clone(),
            reused: self.reused,
            unfinished: self.unfinished,
            pending_write: self.pending_write,
            spent: self.spent,
        }
    }

    /// Marks the connection to be closed for `reason` when the lease ends.
    pub(crate) fn spend(&mut self, reason: CloseReason) {
        self.spent.get_or_insert(reason);
    }

    /// Marks I/O the pool itself runs on the lease (a health check) as in
    /// progress, so that a cancellation in the middle closes the connection.
    pub(crate) fn set_busy(&mut self, busy: bool) {
        self.unfinished.set(Op::HealthCheck, busy);
    }

    /// Flags the lease as reused and runs the pool's reused hook; the
    /// counter is bumped by the pool, under the lock that decided the reuse.
    #[inline]
    pub(crate) fn mark_reused(&mut self) {
        self.reused = true;
        self.pool.config().notify_reused(&self.pool.endpoint);
    }

    /// The endpoint's generation the connection belongs to.
    pub(crate) fn generation(&self) -> u32 {
        self.conn().generation
    }

    /// Takes the connection out, leaving nothing for `Drop` to return.
    pub(crate) fn take_conn(&mut self) -> Option<Conn> {
        self.conn.take()
    }

    /// Returns the connection to the pool, or closes it for the reason
    /// [`close_reason`](Self::close_reason) finds; once, as the lease ends.
    fn end(&mut self, how: Return) {
        if self.conn.is_some() {
            let reason = self.close_reason(how);
            let conn = self.take_conn().expect("checked just above");
            self.pool.release(conn, reason);
        }
    }

    /// Why the connection must not be reused, as its I/O showed and, for a
    /// release, as a look at the stream shows now.
    fn close_reason(&mut self, how: Return) -> Option<CloseReason> {
        // A release vouches for the exchange, so a read left pending since
        // is the caller's idle read; unread bytes are looked for instead.
        let excused = match how {
            Return::Dropped => None,
            Return::Released => Some(Op::Read),
        };
        if std::thread::panicking() {
            Some(CloseReason::Panicked)
        } else if self.spent.is_some() {
            self.spent
        } else if self.unfinished.any_except(excused) {
            Some(CloseReason::Cancelled)
        } else if excused.is_some() {
            self.look_at_release()
        } else {
            None
        }
    }

    /// The look a release takes: the kernel, not only the runtime's
    /// readiness, as the reply's unread rest may have arrived a moment ago
    /// and the runtime the caller's client ran on may be gone. Out of line,
    /// so that a plain drop, the common return, does not carry it.
    #[inline(never)]
    fn look_at_release(&mut self) -> Option<CloseReason> {
        self.held_mut().look(Some(Look::Kernel))
    }

    /// Notes a write's result, `bytes` naming what it was given (`None`
    /// for a write of nothing, which moves no bytes). A write of other
    /// bytes than the one left pending gave that one up part-way: the
    /// connection is spent, whatever completes after.
    fn track_write<T>(&mut self, bytes: Option<(usize, usize)>, result: &Poll<io::Result<T>>) {
        if bytes.is_some() && self.pending_write.is_some() && self.pending_write != bytes {
            self.spent.get_or_insert(CloseReason::Cancelled);
        }
        if bytes.is_some() {
            self.pending_write = bytes.filter(|_| result.is_pending());
        }
        self.track(bytes.map(|_| Op::Write), result);
    }

    /// Notes an I/O result: an error spends the connection; for operation
    /// `op`, `Pending` marks it unfinished and only its completion clears
    /// the mark. `op` is `None` where no mark applies: a read into a full
    /// buffer or a write of nothing moves no bytes, so it neither begins
    /// nor ends an exchange, and a shutdown spends the connection anyway.
    fn track<T>(&mut self, op: Option<Op>, result: &Poll<io::Result<T>>) {
        if let Poll::Ready(Err(_)) = result {
            self.spent.get_or_insert(CloseReason::IoError);
        }
        if let Some(op) = op {
            self.unfinished.set(op, result.is_pending());
        }
    }
}

impl Deref for PooledConnection {
    type Target = Stream;

    fn deref(&self) -> &Stream {
        self.stream()
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        self.end(Return::Dropped);
    }
}

impl fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConnection")
            .field("endpoint", self.endpoint())
            .field("id", &self.conn.as_ref().map(|c| c.id))
            .field("reused", &self.reused)
            .field("uses", &self.conn.as_ref().map(|c| c.uses))
            .finish()
    }
}

impl AsyncRead for PooledConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        let result = Pin::new(this.stream_mut()).poll_read(cx, buf);
        this.track(wanted.then_some(Op::Read), &result);
        if matches!(result, Poll::Ready(Ok(()))) && wanted && buf.filled().len() == before {
            this.spent.get_or_insert(CloseReason::PeerClosed);
        }
        result
    }
}

impl AsyncWrite for PooledConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let bytes = (!buf.is_empty()).then(|| (buf.as_ptr().addr(), buf.len()));
        let result = Pin::new(this.stream_mut()).poll_write(cx, buf);
        this.track_write(bytes, &result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let first = bufs.iter().find(|b| !b.is_empty());
        let bytes = first.map(|b| (b.as_ptr().addr(), len));
        let result = Pin::new(this.stream_mut()).poll_write_vectored(cx, bufs);
        this.track_write(bytes, &result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(this.stream_mut()).poll_flush(cx);
        this.track(Some(Op::Flush), &result);
        result
    }

    /// Shutting down the write side ends the connection's usefulness to
    /// the pool: it is closed when the lease is given back.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.spent.get_or_insert(CloseReason::Discarded);
        let result = Pin::new(this.stream_mut()).poll_shutdown(cx);
        this.track(None, &result);
        result
    }
}
