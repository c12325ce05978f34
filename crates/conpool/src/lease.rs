//! The lease: a connection on loan from the pool.
//!
//! A [`PooledConnection`] is an RAII guard. It is itself the stream
//! (`AsyncRead + AsyncWrite`), and it watches every I/O result that passes
//! through it, so that when it is dropped it knows whether the connection is
//! still clean:
//!
//! - an I/O error, an end of stream, or a shutdown means the connection is
//!   spent;
//! - a read or write that returned `Pending` and was never completed means
//!   the caller was cancelled mid-request: the stream may carry half a
//!   request or an unread reply, which must never reach the next caller;
//! - a drop while the thread is panicking means the caller's state is
//!   unknown.
//!
//! In each of these cases the connection is closed; otherwise it goes back
//! to the pool. [`PooledConnection::discard`] closes it explicitly.

use std::fmt;
use std::io;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::pool::{Conn, EndpointPool};
use crate::{CloseReason, Endpoint, Stream};

/// A connection leased from a [`Pool`](crate::Pool). Use it as a stream;
/// drop it to give it back.
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
    read_pending: bool,
    write_pending: bool,
    spent: Option<CloseReason>,
}

impl PooledConnection {
    #[inline]
    pub(crate) fn new(conn: Conn, pool: Arc<EndpointPool>) -> Self {
        PooledConnection {
            conn: Some(conn),
            pool,
            reused: false,
            read_pending: false,
            write_pending: false,
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

    pub(crate) fn stream_mut(&mut self) -> &mut Stream {
        &mut self.conn_mut().stream
    }

    /// Marks I/O the pool itself runs on the lease (a health check) as in
    /// progress, so that a cancellation in the middle closes the connection.
    pub(crate) fn set_busy(&mut self, busy: bool) {
        self.write_pending = busy;
    }

    /// Flags the lease as reused and runs the pool's reused hook; the
    /// counter is bumped by the pool, under the lock that decided the reuse.
    #[inline]
    pub(crate) fn mark_reused(&mut self) {
        self.reused = true;
        self.pool.config().notify_reused(&self.pool.endpoint);
    }

    /// Takes the connection out, leaving nothing for `Drop` to return.
    pub(crate) fn take_conn(&mut self) -> Option<Conn> {
        self.conn.take()
    }

    /// Why the connection must not be reused, as its I/O showed.
    fn close_reason(&self) -> Option<CloseReason> {
        if std::thread::panicking() {
            Some(CloseReason::Panicked)
        } else if self.spent.is_some() {
            self.spent
        } else if self.read_pending || self.write_pending {
            Some(CloseReason::Cancelled)
        } else {
            None
        }
    }

    /// Notes an I/O error; returns whether the operation is still pending.
    fn track<T>(&mut self, result: &Poll<io::Result<T>>) -> bool {
        if let Poll::Ready(Err(_)) = result {
            self.spent.get_or_insert(CloseReason::IoError);
        }
        result.is_pending()
    }
}

impl Deref for PooledConnection {
    type Target = Stream;

    fn deref(&self) -> &Stream {
        &self.conn().stream
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let reason = self.close_reason();
            self.pool.release(conn, reason);
        }
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
        this.read_pending = this.track(&result);
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
        let result = Pin::new(this.stream_mut()).poll_write(cx, buf);
        this.write_pending = this.track(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(this.stream_mut()).poll_write_vectored(cx, bufs);
        this.write_pending = this.track(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.conn().stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(this.stream_mut()).poll_flush(cx);
        this.write_pending = this.track(&result);
        result
    }

    /// Shutting down the write side ends the connection's usefulness to
    /// the pool: it is closed when the lease is dropped.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.spent.get_or_insert(CloseReason::Discarded);
        let result = Pin::new(this.stream_mut()).poll_shutdown(cx);
        this.write_pending = this.track(&result);
        result
    }
}
