//! A protocol-agnostic TCP/TLS client connection pool for tokio.
//!
//! A program that speaks any request/response protocol over TCP (Redis,
//! memcached, HTTP/1.1, SMTP, a private RPC) asks the [`Pool`] for a
//! connection to an [`Endpoint`], uses it as an ordinary
//! `AsyncRead + AsyncWrite` stream, and drops it. The pool keeps it warm for
//! the next caller, and closes it instead when it is too old, idle too long,
//! used too often, fails a health check, or broke while in use.
//!
//! # Quick start
//!
//! ```
//! use conpool::{Config, Endpoint, Pool};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // An echo server to talk to.
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let port = listener.local_addr()?.port();
//! # tokio::spawn(async move {
//! #     loop {
//! #         let (mut socket, _) = listener.accept().await.unwrap();
//! #         tokio::spawn(async move {
//! #             let (mut r, mut w) = socket.split();
//! #             let _ = tokio::io::copy(&mut r, &mut w).await;
//! #         });
//! #     }
//! # });
//! let pool = Pool::new(Config::builder().max_connections_per_endpoint(4).build()?);
//! let echo = Endpoint::new("127.0.0.1", port)?;
//!
//! for _ in 0..3 {
//!     let mut conn = pool.get(&echo).await?;
//!     conn.write_all(b"hello").await?;
//!     let mut reply = [0u8; 5];
//!     conn.read_exact(&mut reply).await?;
//!     assert_eq!(&reply, b"hello");
//! } // each `conn` goes back to the pool here
//!
//! let stats = pool.stats(&echo);
//! assert_eq!((stats.total_created, stats.total_reused, stats.idle), (1, 2, 1));
//! pool.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Giving connections back
//!
//! Dropping a lease returns its connection, unless the lease saw the
//! exchange on it break off: an I/O error, an end of stream, a panic, or a
//! read, write or flush left pending, as a caller cancelled mid-request
//! leaves it. That suits code that reads exactly its reply and stops, and it
//! is the only safe default: a drop cannot tell a caller that finished from
//! one that was cancelled.
//!
//! Some protocol clients keep a read pending while the connection is idle,
//! to notice the server closing it; hyper's HTTP/1.1 client does. Dropped,
//! each of their connections is closed as
//! [`Cancelled`](CloseReason::Cancelled). Once the exchange is complete,
//! give such a connection back with [`PooledConnection::release`] instead:
//! the pending read is excused, and everything else still closes it, bytes
//! left unread included. [`PooledConnection::discard`] closes a connection
//! known to be unusable. The [`lease`] module has the rules;
//! `examples/hyper_http1.rs` is a whole program.
//!
//! ```no_run
//! use http_body_util::{BodyExt, Empty};
//! use hyper::body::Bytes;
//! use hyper_util::rt::TokioIo;
//!
//! # async fn demo(pool: conpool::Pool, endpoint: conpool::Endpoint) -> Result<(), Box<dyn std::error::Error>> {
//! let conn = pool.get(&endpoint).await?;
//! let (mut sender, connection) =
//!     hyper::client::conn::http1::handshake(TokioIo::new(conn)).await?;
//! let request = hyper::Request::get("/")
//!     .header(hyper::header::HOST, endpoint.host())
//!     .body(Empty::<Bytes>::new())?;
//! let exchange = async move {
//!     let response = sender.send_request(request).await?;
//!     // The sender is dropped here: the connection future can end once idle.
//!     Ok::<_, hyper::Error>(response.into_body().collect().await?.to_bytes())
//! };
//! let (parts, body) = tokio::join!(connection.without_shutdown(), exchange);
//! let (parts, body) = (parts?, body?);
//! println!("{} bytes", body.len());
//! let conn = parts.io.into_inner();
//! if parts.read_buf.is_empty() {
//!     conn.release(); // the exchange is complete: back to the pool
//! } else {
//!     conn.discard(); // hyper read bytes past the response
//! }
//! # Ok(()) }
//! ```
//!
//! # What is where
//!
//! | module | owns |
//! | --- | --- |
//! | [`endpoint`] | the pool's keys: host, port, TCP or TLS; or a Unix socket's path |
//! | [`config`] | every limit, timeout and hook, validated once |
//! | `cli` | (feature `clap`) `PoolArgs`: the config as flags of a clap program |
//! | [`error`] | the one error type |
//! | [`stats`] | counters, snapshots and close reasons |
//! | [`dial`] | resolve (and cache), race the addresses, TCP or Unix connect, TLS handshake, retry with backoff |
//! | `pool` | the map of endpoints and each endpoint's slots and queue |
//! | [`lease`] | the RAII guard that returns or closes a connection |
//! | `maintenance` | the background task: eviction, warm-up, leak warnings, and which runtime runs it |
//! | `deadline` | instants that cannot overflow, for durations up to `Duration::MAX` |
//! | [`stream`] | the byte stream: TCP, TLS or custom |
//! | `redis` | (feature `redis`) `Redis`: redis-rs's multiplexed connection as a shared protocol |
//!
//! # Guarantees
//!
//! - At most `max_connections_per_endpoint` connections per endpoint exist
//!   at once, counting those leased, idle and being dialed. Callers past the
//!   limit wait first come, first served, for at most `acquire_timeout`.
//! - A connection whose lease saw an I/O error, an end of stream, a panic,
//!   or a read, write or flush left pending by a cancelled caller is
//!   closed, never handed out again; what the caller did after (a flush, a
//!   read) does not undo a cut-off write. [`PooledConnection::release`]
//!   excuses only a pending read, and looks for unread bytes instead.
//! - No lock is held across an `.await`, a dial, a handshake or a close.
//! - Dropping a `get` future at any point leaks no slot.
//! - The background task runs for as long as the pool lives, on whichever
//!   runtime is alive, and queued callers fail at their `acquire_timeout`
//!   whatever runtime they or the deadline keeper ran on. Nothing panics
//!   outside a runtime: a get that needs one there fails with
//!   [`Error::NoRuntime`].

#![warn(missing_docs)]

#[cfg(feature = "clap")]
pub mod cli;
pub mod config;
mod deadline;
pub mod dial;
pub mod endpoint;
pub mod error;
#[cfg(feature = "hyper")]
pub mod hyper;
pub mod lease;
mod maintenance;
mod pool;
pub mod protocol;
#[cfg(feature = "redis")]
pub mod redis;
pub mod stats;
pub mod stream;

pub use config::{BoxFuture, Config, ConfigBuilder, HealthCheck, ThreadSlots, TlsRoots};
pub use endpoint::{Endpoint, Scheme};
pub use error::Error;
pub use lease::PooledConnection;
pub use pool::{EndpointHandle, Pool, WeakPool};
pub use protocol::{Connected, Protocol, ProtocolLease, ProtocolPool};
pub use stats::{BreakerState, CloseReason, PoolState, Stats};
pub use stream::Stream;

/// The README's Rust examples, compiled as doctests, so that the README
/// stays true to the API (they use the optional integrations, so only
/// with those features on, as `scripts/test` runs them).
#[cfg(all(doctest, feature = "hyper", feature = "clap"))]
#[doc = include_str!("../../../README.md")]
struct ReadmeExamples;
