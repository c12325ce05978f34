//! TCP connect: one address after another, `TCP_NODELAY` on.
//!
//! Request/response protocols write small messages and wait for the reply;
//! Nagle's algorithm would hold each one back for an ACK, so it is off.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Connects to the first address that accepts; the error is the last
/// address's.
pub async fn connect_any(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last_err = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(err) => {
                tracing::debug!(%addr, error = %err, "connect to one address failed");
                last_err = Some(err);
            }
        }
    }
    Err(last_err
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to connect to")))
}
