//! Name resolution with the system resolver.
//!
//! An IP literal is used as it is, without a lookup; anything else goes
//! through `getaddrinfo` on tokio's blocking pool. Every address returned is
//! kept, in the resolver's order, so that the connect step can fall back from
//! one to the next (the seed used only the first).

use std::io;
use std::net::SocketAddr;

use crate::Endpoint;

/// Every address of the endpoint, in the system resolver's order.
pub async fn resolve(endpoint: &Endpoint) -> io::Result<Vec<SocketAddr>> {
    if let Some(ip) = endpoint.ip() {
        return Ok(vec![SocketAddr::new(ip, endpoint.port())]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((endpoint.host(), endpoint.port()))
        .await?
        .collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} has no addresses", endpoint.host()),
        ));
    }
    Ok(addrs)
}
