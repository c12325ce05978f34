//! TCP connect: one address, or a host's addresses one after another under
//! one deadline; `TCP_NODELAY` on.
//!
//! Request/response protocols write small messages and wait for the reply;
//! Nagle's algorithm would hold each one back for an ACK, so it is off.
//!
//! The default dialer races a host's addresses ([`happy_eyeballs`]);
//! [`connect_any`] is that race with no stagger, one address at a time,
//! each with its share of the deadline.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{DialError, happy_eyeballs};

/// Connects to the first address that accepts, trying them in order; the
/// error is the last address's.
///
/// With a `deadline`, each address gets its share of the time left (the
/// time left divided by the addresses left, but at least 500 ms, or all
/// that is left), and the connect fails with [`io::ErrorKind::TimedOut`]
/// once the deadline has passed. With `None`, each address waits as long
/// as the OS does.
///
/// ```no_run
/// use std::time::Duration;
/// use conpool::dial::tcp::connect_any;
/// use tokio::time::Instant;
///
/// # async fn run() -> std::io::Result<()> {
/// let addrs = ["[::1]:6379".parse().unwrap(), "127.0.0.1:6379".parse().unwrap()];
/// // If ::1 drops SYNs, it gets 1 s and 127.0.0.1 the remaining 1 s.
/// let stream = connect_any(&addrs, Some(Instant::now() + Duration::from_secs(2))).await?;
/// # Ok(()) }
/// ```
pub async fn connect_any(addrs: &[SocketAddr], deadline: Option<Instant>) -> io::Result<TcpStream> {
    happy_eyeballs::race(addrs, None, deadline, |addr, until| {
        Box::pin(async move { connect(addr, until).await.map_err(DialError::connect) })
    })
    .await
    .map(|(_, stream)| stream)
    .map_err(DialError::into_io)
}

/// Connects to `addr`, failing with [`io::ErrorKind::TimedOut`] at
/// `deadline`, and turns Nagle's algorithm off.
pub async fn connect(addr: SocketAddr, deadline: Option<Instant>) -> io::Result<TcpStream> {
    let connecting = TcpStream::connect(addr);
    let stream = match deadline {
        None => connecting.await?,
        Some(deadline) => {
            let given = deadline.saturating_duration_since(Instant::now());
            tokio::time::timeout_at(deadline, connecting)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connect to {addr} timed out after {given:?}"),
                    )
                })??
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}
