//! hyper's clients on pooled connections (feature `hyper`).
//!
//! This module owns the adapters between conpool and hyper 1.x:
//!
//! - [`Http1`]: an exclusive [`Protocol`] whose connection is hyper's
//!   HTTP/1.1 [`SendRequest`](http1::SendRequest): one request at a time
//!   per connection, the handshake done once per connection rather than
//!   per request, and the connection's task owned by the pool.
//! - [`Http2`]: a shared [`Protocol`] whose connection is hyper's HTTP/2
//!   [`SendRequest`](http2::SendRequest): up to
//!   [`max_shares`](Http2::max_shares) leases use one connection at once.
//!   Over TLS it offers ALPN `h2` and fails, naming the endpoint, when the
//!   server does not agree; over plain TCP it speaks HTTP/2 with prior
//!   knowledge (h2c).
//! - [`Connector`]: a `tower::Service<http::Uri>` that leases a byte stream
//!   for hyper-util's legacy `Client` and tonic's
//!   `Endpoint::connect_with_connector`, which keep connections in a pool
//!   of their own: conpool dials (retries, timeouts, TLS, limits), they
//!   reuse.
//!
//! A connection whose `SendRequest` is closed (the server sent
//! `Connection: close`, a GOAWAY, or went away) is not handed out again
//! and is closed as [`NotReady`](crate::CloseReason::NotReady). An HTTP/1.1
//! connection given back before hyper has seen the end of its response
//! waits in a task until it has (as hyper-util's pool does), so that a
//! caller dropping the lease right after reading the body does not lose it.
//!
//! ```no_run
//! use http_body_util::{BodyExt, Empty};
//! use hyper::body::Bytes;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = conpool::Pool::new(conpool::Config::default());
//! let http = pool.protocol(conpool::hyper::Http1::<Empty<Bytes>>::new());
//! let server = conpool::Endpoint::new("127.0.0.1", 8080)?;
//!
//! let mut conn = http.get(&server).await?;
//! let request = hyper::Request::get("/")
//!     .header(hyper::header::HOST, "127.0.0.1:8080")
//!     .body(Empty::new())?;
//! let response = conn.send_request(request).await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! drop(conn); // back to the pool once hyper is ready for the next request
//! println!("{}", String::from_utf8_lossy(&body));
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use ::hyper::body::Body;
use ::hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::{Connected as HyperConnected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::{Connected, Endpoint, Error, Pool, PooledConnection, Protocol, Stream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// HTTP/1.1 through hyper's client, one request at a time per connection.
/// Its connection is [`http1::SendRequest<B>`]; `B` is the request body
/// type, such as `http_body_util::Full<Bytes>`.
pub struct Http1<B> {
    builder: http1::Builder,
    _body: PhantomData<fn(B)>,
}

impl<B> Http1<B> {
    /// With hyper's default HTTP/1.1 settings.
    pub fn new() -> Self {
        Http1::with_builder(http1::Builder::new())
    }

    /// With hyper's HTTP/1.1 settings as `builder` has them (header case,
    /// buffer sizes, ...).
    pub fn with_builder(builder: http1::Builder) -> Self {
        Http1 {
            builder,
            _body: PhantomData,
        }
    }
}

impl<B> Default for Http1<B> {
    fn default() -> Self {
        Http1::new()
    }
}

impl<B> fmt::Debug for Http1<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1").finish_non_exhaustive()
    }
}

impl<B> Protocol for Http1<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Conn = http1::SendRequest<B>;
    type Error = ::hyper::Error;

    fn name(&self) -> &'static str {
        "http1"
    }

    async fn connect(
        &self,
        stream: Stream,
        _endpoint: &Endpoint,
    ) -> Result<Connected<Self::Conn>, Self::Error> {
        let (sender, connection) = self.builder.handshake(TokioIo::new(stream)).await?;
        Ok(Connected::with_driver(sender, async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "HTTP/1.1 connection ended with an error");
            }
        }))
    }

    fn is_ready(&self, conn: &mut Self::Conn) -> bool {
        conn.is_ready()
    }

    fn poll_ready(&self, conn: &mut Self::Conn, cx: &mut Context<'_>) -> Poll<bool> {
        conn.poll_ready(cx).map(|ready| ready.is_ok())
    }

    fn alpn_protocols(&self) -> &[&'static [u8]] {
        &[b"http/1.1"]
    }
}

/// HTTP/2 through hyper's client, many requests at once per connection.
/// Its connection is [`http2::SendRequest<B>`], of which each lease has a
/// handle of its own.
pub struct Http2<B> {
    builder: http2::Builder<TokioExecutor>,
    max_shares: usize,
    _body: PhantomData<fn(B)>,
}

impl<B> Http2<B> {
    /// With hyper's default HTTP/2 settings and up to 100 leases per
    /// connection.
    pub fn new() -> Self {
        Http2::with_builder(http2::Builder::new(TokioExecutor::new()))
    }

    /// With hyper's HTTP/2 settings as `builder` has them (window sizes,
    /// keep-alive pings, ...).
    pub fn with_builder(builder: http2::Builder<TokioExecutor>) -> Self {
        Http2 {
            builder,
            max_shares: 100,
            _body: PhantomData,
        }
    }

    /// How many leases may share one connection (at least 1; default 100,
    /// the least RFC 9113 advises servers to allow). hyper does not show
    /// the server's `SETTINGS_MAX_CONCURRENT_STREAMS`; past it, hyper
    /// queues requests on the connection, so set this to the server's
    /// limit to have the pool open another connection instead.
    ///
    /// ```
    /// # type Body = http_body_util::Empty<hyper::body::Bytes>;
    /// let h2 = conpool::hyper::Http2::<Body>::new().max_shares(250);
    /// ```
    pub fn max_shares(mut self, max: usize) -> Self {
        self.max_shares = max.max(1);
        self
    }
}

impl<B> Default for Http2<B> {
    fn default() -> Self {
        Http2::new()
    }
}

impl<B> fmt::Debug for Http2<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http2")
            .field("max_shares", &self.max_shares)
            .finish_non_exhaustive()
    }
}

/// Why an HTTP/2 handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Http2Error {
    /// The TLS server did not agree to HTTP/2 by ALPN.
    #[error(
        "the server at {endpoint} did not agree to HTTP/2: ALPN offered h2, the server chose {}",
        chosen.as_deref().map_or("none".to_owned(), |p| format!("{:?}", String::from_utf8_lossy(p)))
    )]
    NotNegotiated {
        /// The TLS endpoint.
        endpoint: Endpoint,
        /// The protocol the server chose, if any.
        chosen: Option<Vec<u8>>,
    },
    /// hyper's handshake failed.
    #[error(transparent)]
    Hyper(#[from] ::hyper::Error),
}

impl<B> Protocol for Http2<B>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Conn = http2::SendRequest<B>;
    type Error = Http2Error;
    const SHARED: bool = true;

    fn name(&self) -> &'static str {
        "http2"
    }

    async fn connect(
        &self,
        stream: Stream,
        endpoint: &Endpoint,
    ) -> Result<Connected<Self::Conn>, Self::Error> {
        if endpoint.is_tls() {
            let chosen = stream
                .tls_session()
                .and_then(|session| session.alpn_protocol())
                .map(<[u8]>::to_vec);
            if chosen.as_deref() != Some(b"h2") {
                return Err(Http2Error::NotNegotiated {
                    endpoint: endpoint.clone(),
                    chosen,
                });
            }
        }
        let (sender, connection) = self.builder.handshake(TokioIo::new(stream)).await?;
        Ok(Connected::with_driver(sender, async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "HTTP/2 connection ended with an error");
            }
        }))
    }

    fn is_ready(&self, conn: &mut Self::Conn) -> bool {
        !conn.is_closed()
    }

    fn max_shares(&self, _conn: &Self::Conn) -> usize {
        self.max_shares
    }

    fn share(&self, conn: &Self::Conn) -> Option<Self::Conn> {
        (!conn.is_closed()).then(|| conn.clone())
    }

    fn alpn_protocols(&self) -> &[&'static [u8]] {
        &[b"h2"]
    }
}

/// A `tower::Service<http::Uri>` that leases a pooled byte stream to the
/// URI's host, for clients that pool connections themselves: hyper-util's
/// legacy `Client` and tonic's `Endpoint::connect_with_connector`. `http`
/// URIs get TCP, `https` URIs TLS (port 80 and 443 unless given).
///
/// Such a client keeps each connection for as long as it wants it, so a
/// connection is one lease for its whole life, closed when the client
/// drops it; what conpool adds is its dialing (retries, timeouts, TLS from
/// the config) and its limits. To have conpool reuse HTTP connections,
/// use [`Http1`] or [`Http2`].
///
/// ```no_run
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// # type Body = http_body_util::Empty<hyper::body::Bytes>;
///
/// let pool = conpool::Pool::new(conpool::Config::default());
/// let client: Client<_, Body> =
///     Client::builder(TokioExecutor::new()).build(conpool::hyper::Connector::new(pool));
/// ```
#[derive(Clone, Debug)]
pub struct Connector {
    pool: Pool,
}

impl Connector {
    /// Leases streams from `pool`.
    pub fn new(pool: Pool) -> Self {
        Connector { pool }
    }
}

/// The endpoint a URI names: its host, its port or the scheme's, TLS for
/// `https`.
pub fn endpoint_of(uri: &http::Uri) -> Result<Endpoint, Error> {
    let invalid = |rule: &str| Error::InvalidEndpoint {
        reason: format!("{uri:?}: {rule}"),
    };
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(invalid(&format!(
                "the scheme must be http or https, not {other:?}"
            )));
        }
        None => {
            return Err(invalid(
                "a URI to connect to needs a scheme (http or https)",
            ));
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| invalid("a URI to connect to needs a host"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    if tls {
        Endpoint::tls(host, port)
    } else {
        Endpoint::new(host, port)
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = ConnectorStream;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<ConnectorStream, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let pool = self.pool.clone();
        Box::pin(async move {
            let endpoint = endpoint_of(&uri)?;
            let lease = pool.get(&endpoint).await?;
            Ok(ConnectorStream {
                io: TokioIo::new(lease),
            })
        })
    }
}

/// A stream leased by [`Connector`]: hyper's I/O traits over the lease,
/// which goes back to the pool (or is closed) when the client drops it.
#[derive(Debug)]
pub struct ConnectorStream {
    io: TokioIo<PooledConnection>,
}

impl ConnectorStream {
    /// The lease.
    pub fn lease(&self) -> &PooledConnection {
        self.io.inner()
    }
}

impl Connection for ConnectorStream {
    fn connected(&self) -> HyperConnected {
        let connected = HyperConnected::new();
        let h2 = self
            .lease()
            .tls_session()
            .and_then(|session| session.alpn_protocol())
            == Some(b"h2");
        if h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl ::hyper::rt::Read for ConnectorStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ::hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl ::hyper::rt::Write for ConnectorStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
