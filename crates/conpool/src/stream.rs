//! The byte stream under a pooled connection.
//!
//! A [`Stream`] is plain TCP, TLS over TCP, a Unix socket (plain or TLS),
//! or any other `AsyncRead + AsyncWrite` a dialer produces: a custom
//! [`Dial`](crate::dial::Dial)'s streams, in-memory test doubles. The
//! default dialer's kinds are enum variants rather than trait objects, so
//! that the common case pays no virtual call per read or write, and so
//! that the liveness look can ask the kernel about the socket and a TLS
//! session can be read back (ALPN, for one) whatever it runs over.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio_rustls::client::TlsStream;

/// What a custom dialer may return: any owned async byte stream.
pub trait CustomStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> CustomStream for T {}

/// A connection's byte stream: TCP, TLS, a Unix socket, or custom.
pub struct Stream {
    inner: Inner,
}

enum Inner {
    Tcp(TcpStream),
    // Boxed: the rustls session is large, and TCP is the common case.
    Tls(Box<TlsStream<TcpStream>>),
    #[cfg(unix)]
    Unix(UnixStream),
    #[cfg(unix)]
    UnixTls(Box<TlsStream<UnixStream>>),
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

    /// Wraps a Unix domain socket stream.
    #[cfg(unix)]
    pub fn unix(stream: UnixStream) -> Self {
        Stream {
            inner: Inner::Unix(stream),
        }
    }

    /// Wraps an established TLS client stream over a Unix domain socket.
    #[cfg(unix)]
    pub fn unix_tls(stream: TlsStream<UnixStream>) -> Self {
        Stream {
            inner: Inner::UnixTls(Box::new(stream)),
        }
    }

    /// Wraps any other stream, such as a `tokio::io::DuplexStream` in
    /// tests. The pool's liveness look polls it once for a byte; it has no
    /// TLS session to read back.
    pub fn custom(stream: impl CustomStream) -> Self {
        Stream {
            inner: Inner::Custom(Box::new(stream)),
        }
    }

    /// The TCP stream underneath, for TCP and TLS-over-TCP streams.
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match &self.inner {
            Inner::Tcp(s) => Some(s),
            Inner::Tls(s) => Some(s.get_ref().0),
            _ => None,
        }
    }

    /// The Unix socket underneath, for Unix streams, plain or TLS.
    #[cfg(unix)]
    pub fn as_unix(&self) -> Option<&UnixStream> {
        match &self.inner {
            Inner::Unix(s) => Some(s),
            Inner::UnixTls(s) => Some(s.get_ref().0),
            _ => None,
        }
    }

    /// The TLS session, for TLS streams (over TCP or a Unix socket): the
    /// negotiated ALPN protocol, version, cipher suite and peer
    /// certificates.
    pub fn tls_session(&self) -> Option<&rustls::ClientConnection> {
        match &self.inner {
            Inner::Tls(s) => Some(s.get_ref().1),
            #[cfg(unix)]
            Inner::UnixTls(s) => Some(s.get_ref().1),
            _ => None,
        }
    }

    /// The ALPN protocol the TLS server chose from
    /// [`tls_alpn_protocols`](crate::ConfigBuilder::tls_alpn_protocols);
    /// `None` for a plain stream, or when none was offered or chosen.
    ///
    /// ```no_run
    /// # async fn run(pool: conpool::Pool, ep: conpool::Endpoint) -> Result<(), conpool::Error> {
    /// let conn = pool.get(&ep).await?;
    /// if conn.alpn_protocol() == Some(b"h2") {
    ///     // speak HTTP/2
    /// }
    /// # Ok(()) }
    /// ```
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls_session()
            .and_then(|session| session.alpn_protocol())
    }

    /// The remote address, for TCP and TLS-over-TCP streams (`None` for a
    /// Unix socket).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.as_tcp().and_then(|s| s.peer_addr().ok())
    }

    /// The local address, for TCP and TLS-over-TCP streams (`None` for a
    /// Unix socket).
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

/// How far a liveness check looks ([`Stream::liveness`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Look {
    /// The runtime's readiness flag: no system call while it is clear.
    /// It is set only once the runtime's I/O driver has collected the
    /// socket's event, which a busy runtime does only every so many task
    /// polls, so a close that has reached the kernel may not show yet.
    Readiness,
    /// The kernel itself, with a non-blocking `recv` (`MSG_PEEK` for TCP):
    /// one system call, which sees whatever has reached this host.
    Kernel,
}

impl Stream {
    /// Looks, without blocking and without waiting on the runtime, at
    /// whether the peer closed the connection or sent something while it
    /// sat idle.
    ///
    /// TCP is peeked, so nothing is consumed. For TLS the bytes go through
    /// rustls, so that a post-handshake session ticket is consumed as the
    /// protocol message it is and a close_notify reads as end of stream;
    /// plaintext rustls already holds (the unread rest of a reply) counts
    /// as stray. Unix sockets are looked at as TCP ones are. A custom stream is polled once for a byte, outside tokio's
    /// cooperative budget (with the budget spent, a ready stream would
    /// look quiet); a byte read there is lost, which does not matter, as a
    /// connection with stray bytes is closed. `look` does not apply to
    /// custom streams: their own `poll_read` is all there is to ask.
    #[inline]
    pub(crate) fn liveness(&mut self, look: Look) -> Liveness {
        match &mut self.inner {
            Inner::Tcp(tcp) => socket_liveness(tcp, look),
            Inner::Tls(tls) => tls_liveness(&mut **tls, look),
            #[cfg(unix)]
            Inner::Unix(unix) => socket_liveness(unix, look),
            #[cfg(unix)]
            Inner::UnixTls(tls) => tls_liveness(&mut **tls, look),
            Inner::Custom(_) => self.poll_once(),
        }
    }

    fn poll_once(&mut self) -> Liveness {
        let mut look = std::pin::pin!(tokio::task::unconstrained(std::future::poll_fn(|cx| {
            let mut byte = [0u8; 1];
            let mut buf = ReadBuf::new(&mut byte);
            Poll::Ready(match Pin::new(&mut *self).poll_read(cx, &mut buf) {
                Poll::Pending => Liveness::Quiet,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => Liveness::Closed,
                Poll::Ready(Ok(())) => Liveness::UnexpectedData,
                Poll::Ready(Err(_)) => Liveness::Failed,
            })
        })));
        match look
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
        {
            Poll::Ready(liveness) => liveness,
            Poll::Pending => unreachable!("the look is ready at its first poll"),
        }
    }
}

/// A socket the liveness look can ask the kernel about: TCP or Unix.
trait Socket {
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn sock_ref(&self) -> socket2::SockRef<'_>;
}

macro_rules! socket {
    ($ty:ty) => {
        impl Socket for $ty {
            #[inline]
            fn try_io<R>(
                &self,
                interest: Interest,
                f: impl FnOnce() -> io::Result<R>,
            ) -> io::Result<R> {
                <$ty>::try_io(self, interest, f)
            }
            fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$ty>::poll_read_ready(self, cx)
            }
            fn sock_ref(&self) -> socket2::SockRef<'_> {
                socket2::SockRef::from(self)
            }
        }
    };
}
socket!(TcpStream);
#[cfg(unix)]
socket!(UnixStream);

/// Runs `read` on the socket: through tokio's readiness (which skips the
/// call while the flag is clear, and clears a flag the call finds stale),
/// and, for [`Look::Kernel`], straight on the socket when readiness skipped
/// it. `read` answers `Err(WouldBlock)` for a quiet socket.
#[inline]
fn look_at<S: Socket>(
    socket: &S,
    look: Look,
    mut read: impl FnMut() -> io::Result<Liveness>,
) -> Liveness {
    if look == Look::Kernel && driver_gone(socket) {
        return Liveness::Failed;
    }
    let mut asked = false;
    let seen = socket.try_io(Interest::READABLE, || {
        asked = true;
        read()
    });
    // Unasked, tokio found the flag clear (and answered `WouldBlock`): the
    // common case, decided without looking at the error.
    let seen = match (asked, look) {
        (true, _) => seen,
        // An error made from a kind owns nothing: forgetting it spares the
        // hot path a call to its destructor.
        (false, Look::Readiness) => {
            std::mem::forget(seen);
            return Liveness::Quiet;
        }
        (false, Look::Kernel) => {
            std::mem::forget(seen);
            read()
        }
    };
    match seen {
        Ok(liveness) => liveness,
        Err(err) => match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Liveness::Quiet,
            _ => Liveness::Failed,
        },
    }
}

/// Whether the runtime the socket is registered with has shut down: its
/// readiness flag then never changes again, and every read fails. Only a
/// poll tells (the flag looks merely clear); it runs outside the
/// cooperative budget, which would otherwise make it look pending, and
/// leaves a no-op waker behind, which the next read replaces.
fn driver_gone<S: Socket>(socket: &S) -> bool {
    let mut poll = std::pin::pin!(tokio::task::unconstrained(std::future::poll_fn(|cx| {
        Poll::Ready(socket.poll_read_ready(cx))
    })));
    matches!(
        poll.as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop())),
        Poll::Ready(Poll::Ready(Err(_)))
    )
}

#[inline]
fn socket_liveness<S: Socket>(socket: &S, look: Look) -> Liveness {
    look_at(socket, look, || {
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        match socket.sock_ref().peek(&mut byte)? {
            0 => Ok(Liveness::Closed),
            _ => Ok(Liveness::UnexpectedData),
        }
    })
}

fn tls_liveness<S: Socket>(tls: &mut TlsStream<S>, look: Look) -> Liveness {
    let (io, session) = tls.get_mut();
    // What an earlier read left decrypted: the rest of a reply, a close.
    match tls_verdict(session) {
        Liveness::Quiet => {}
        other => return other,
    }
    look_at(&*io, look, || {
        let socket = io.sock_ref();
        let mut chunk = [0u8; 4096];
        let mut edge = RecordEdge::default();
        loop {
            let n = match io::Read::read(&mut &*socket, &mut chunk) {
                Ok(n) => n,
                // Part of a record, which rustls cannot judge until the
                // rest arrives: a ticket would have come whole by now, with
                // the reply it followed, so it is bytes nobody asked for.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock && !edge.at_boundary() => {
                    return Ok(Liveness::UnexpectedData);
                }
                Err(err) => return Err(err),
            };
            if n == 0 {
                return Ok(Liveness::Closed);
            }
            edge.pass(&chunk[..n]);
            let mut fed = &chunk[..n];
            while !fed.is_empty() {
                // rustls refuses more once its buffer is full, which only
                // a peer sending a lot unasked makes happen.
                if !matches!(session.read_tls(&mut fed), Ok(taken) if taken > 0) {
                    return Ok(Liveness::UnexpectedData);
                }
            }
            match tls_verdict(session) {
                Liveness::Quiet => {}
                other => return Ok(other),
            }
        }
    })
}

/// Where a run of TLS records read off the socket stands: inside a record's
/// 5-byte header, inside its body, or between records. (The look starts
/// between records: a lease that ended its exchange cleanly left rustls no
/// part of one.)
#[derive(Default)]
struct RecordEdge {
    header: [u8; 5],
    header_len: usize,
    body_left: usize,
}

impl RecordEdge {
    fn pass(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let k = self.body_left.min(bytes.len());
                self.body_left -= k;
                bytes = &bytes[k..];
                continue;
            }
            let k = (self.header.len() - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + k].copy_from_slice(&bytes[..k]);
            self.header_len += k;
            bytes = &bytes[k..];
            if self.header_len == self.header.len() {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header_len = 0;
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.body_left == 0
    }
}

/// What rustls makes of the records it holds: a session ticket is quiet,
/// plaintext is stray, a close_notify is a close.
fn tls_verdict(session: &mut rustls::ClientConnection) -> Liveness {
    match session.process_new_packets() {
        Err(_) => Liveness::Failed,
        Ok(state) if state.plaintext_bytes_to_read() > 0 => Liveness::UnexpectedData,
        Ok(state) if state.peer_has_closed() => Liveness::Closed,
        Ok(_) => Liveness::Quiet,
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
            #[cfg(unix)]
            Inner::Unix(_) => "unix",
            #[cfg(unix)]
            Inner::UnixTls(_) => "unix+tls",
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
            #[cfg(unix)]
            Inner::Unix($s) => $e,
            #[cfg(unix)]
            Inner::UnixTls($s) => $e,
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
        match &mut self.get_mut().inner {
            Inner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s)
                .poll_read(cx, buf)
                .map_err(crate::dial::tls::worded_read_error),
            #[cfg(unix)]
            Inner::Unix(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Inner::UnixTls(s) => Pin::new(s)
                .poll_read(cx, buf)
                .map_err(crate::dial::tls::worded_read_error),
            Inner::Custom(s) => Pin::new(s).poll_read(cx, buf),
        }
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
            #[cfg(unix)]
            Inner::Unix(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Inner::UnixTls(s) => s.is_write_vectored(),
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

#[cfg(test)]
mod tests {
    use super::RecordEdge;

    #[test]
    fn a_record_edge_is_found_across_chunks() {
        // Two records: 3 and 0 bytes of body.
        let records = [23u8, 3, 3, 0, 3, 1, 2, 3, 23, 3, 3, 0, 0];
        for split in 0..=records.len() {
            let mut edge = RecordEdge::default();
            edge.pass(&records[..split]);
            let inside = (1..8).contains(&split) || (9..13).contains(&split);
            assert_eq!(edge.at_boundary(), !inside, "after {split} bytes");
            edge.pass(&records[split..]);
            assert!(edge.at_boundary(), "after all, split at {split}");
        }
    }
}
