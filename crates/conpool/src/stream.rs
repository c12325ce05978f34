//! The byte stream under a pooled connection.
//!
//! A [`Stream`] is plain TCP, TLS over TCP, or any other
//! `AsyncRead + AsyncWrite` a custom [`Dial`](crate::dial::Dial)
//! produces (Unix sockets, in-memory test doubles). The two built-in kinds
//! are enum variants rather than trait objects so that the common case pays
//! no virtual call per read or write.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// What a custom dialer may return: any owned async byte stream.
pub trait CustomStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> CustomStream for T {}

/// A connection's byte stream: TCP, TLS, or custom.
pub struct Stream {
    inner: Inner,
}

enum Inner {
    Tcp(TcpStream),
    // Boxed: the rustls session is large, and TCP is the common case.
    Tls(Box<TlsStream<TcpStream>>),
    Custom(Box<dyn CustomStream>),
}

impl Stream {
    /// Wraps a TCP stream.
    pub fn tcp(stream: TcpStream) -> Self {
        Stream {
            inner: Inner::Tcp(stream),
        }
    }

    /// Wraps an established TLS client stream.
    pub fn tls(stream: TlsStream<TcpStream>) -> Self {
        Stream {
            inner: Inner::Tls(Box::new(stream)),
        }
    }

    /// Wraps any other stream, such as a `UnixStream` or a
    /// `tokio::io::DuplexStream` in tests.
    pub fn custom(stream: impl CustomStream) -> Self {
        Stream {
            inner: Inner::Custom(Box::new(stream)),
        }
    }

    /// The TCP stream underneath, for TCP and TLS streams.
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match &self.inner {
            Inner::Tcp(s) => Some(s),
            Inner::Tls(s) => Some(s.get_ref().0),
            Inner::Custom(_) => None,
        }
    }

    /// The TLS session, for TLS streams: the negotiated ALPN protocol,
    /// version, cipher suite and peer certificates.
    pub fn tls_session(&self) -> Option<&rustls::ClientConnection> {
        match &self.inner {
            Inner::Tls(s) => Some(s.get_ref().1),
            _ => None,
        }
    }

    /// The remote address, for TCP and TLS streams.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.as_tcp().and_then(|s| s.peer_addr().ok())
    }

    /// The local address, for TCP and TLS streams.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.as_tcp().and_then(|s| s.local_addr().ok())
    }
}

/// What a non-blocking look at an idle stream found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Nothing to read: the peer has said nothing since the last exchange.
    Quiet,
    /// End of stream (for TLS, also a close_notify).
    Closed,
    /// Bytes nobody asked for.
    UnexpectedData,
    /// A read error, such as a reset.
    Failed,
}

impl Stream {
    /// Looks, without blocking, at whether the peer closed the connection
    /// or sent something while it sat idle.
    ///
    /// It is one `poll_read` of a single byte. For TCP, tokio answers
    /// `Pending` from its readiness flags without a system call while
    /// nothing has arrived; for TLS, the read goes through rustls, so a
    /// post-handshake session ticket is consumed as the protocol message it
    /// is and a close_notify reads as end of stream. A byte read here is
    /// lost, which does not matter: a connection with stray bytes is closed.
    ///
    /// The caller runs this outside tokio's cooperative budget (see
    /// `tokio::task::unconstrained`): with the budget spent, a ready socket
    /// would look quiet.
    pub(crate) fn poll_liveness(&mut self, cx: &mut Context<'_>) -> Liveness {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        match Pin::new(self).poll_read(cx, &mut buf) {
            Poll::Pending => Liveness::Quiet,
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Liveness::Closed,
            Poll::Ready(Ok(())) => Liveness::UnexpectedData,
            Poll::Ready(Err(_)) => Liveness::Failed,
        }
    }

    /// [`poll_liveness`](Self::poll_liveness) from any code, async or not:
    /// one poll with a noop waker (a quiet stream wakes nobody later),
    /// outside the cooperative budget.
    pub(crate) fn liveness(&mut self) -> Liveness {
        let probe = tokio::task::unconstrained(std::future::poll_fn(|cx| {
            Poll::Ready(self.poll_liveness(cx))
        }));
        match pin!(probe).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(liveness) => liveness,
            Poll::Pending => unreachable!("the probe is ready at its first poll"),
        }
    }
}

impl Liveness {
    /// The close reason for a stream that is not quiet.
    pub(crate) fn close_reason(self) -> Option<crate::CloseReason> {
        match self {
            Liveness::Quiet => None,
            Liveness::Closed => Some(crate::CloseReason::PeerClosed),
            Liveness::UnexpectedData => Some(crate::CloseReason::UnexpectedData),
            Liveness::Failed => Some(crate::CloseReason::ProbeFailed),
        }
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            Inner::Tcp(_) => "tcp",
            Inner::Tls(_) => "tls",
            Inner::Custom(_) => "custom",
        };
        f.debug_struct("Stream")
            .field("kind", &kind)
            .field("peer", &self.peer_addr())
            .finish()
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().inner {
            Inner::Tcp($s) => $e,
            Inner::Tls($s) => $e,
            Inner::Custom($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Tcp(s) => s.is_write_vectored(),
            Inner::Tls(s) => s.is_write_vectored(),
            Inner::Custom(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
