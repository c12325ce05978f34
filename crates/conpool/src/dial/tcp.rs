//! TCP connect: one address, or a host's addresses one after another under
//! one deadline; `TCP_NODELAY` on, and the config's socket options
//! ([`SocketOptions`]) set before the connect.
//!
//! Request/response protocols write small messages and wait for the reply;
//! Nagle's algorithm would hold each one back for an ACK, so it is off.
//!
//! The default dialer races a host's addresses ([`happy_eyeballs`]);
//! [`connect_any`] is that race with no stagger, one address at a time,
//! each with its share of the deadline.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::Config;

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
    let options = SocketOptions::default();
    happy_eyeballs::race(addrs, None, deadline, |addr, until| {
        let options = &options;
        Box::pin(async move {
            connect(addr, until, options)
                .await
                .map_err(DialError::connect)
        })
    })
    .await
    .map(|(_, stream)| stream)
    .map_err(DialError::into_io)
}

/// The socket options the default dialer sets on each TCP socket: the
/// config's keepalive, buffer sizes, local address and `TCP_USER_TIMEOUT`
/// before it connects, `TCP_NODELAY` after. The default sets none of the
/// first (the OS's own) and `TCP_NODELAY`, as the config's default does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketOptions {
    keepalive: Option<Duration>,
    keepalive_interval: Option<Duration>,
    keepalive_retries: Option<u32>,
    recv_buffer_size: Option<usize>,
    send_buffer_size: Option<usize>,
    local_address: Option<IpAddr>,
    user_timeout: Option<Duration>,
    /// Leaves Nagle's algorithm on: `TCP_NODELAY` unset (false, the
    /// default, sets it).
    nagle: bool,
}

impl SocketOptions {
    /// The options `config` asks for.
    pub fn from_config(config: &Config) -> Self {
        SocketOptions {
            keepalive: config.tcp_keepalive(),
            keepalive_interval: config.tcp_keepalive_interval(),
            keepalive_retries: config.tcp_keepalive_retries(),
            recv_buffer_size: config.recv_buffer_size(),
            send_buffer_size: config.send_buffer_size(),
            local_address: config.local_address(),
            user_timeout: config.tcp_user_timeout(),
            nagle: !config.tcp_nodelay(),
        }
    }

    /// Whether a connection to `addr` can be made from the local address:
    /// one of the same family (any, without one).
    pub fn can_reach(&self, addr: &SocketAddr) -> bool {
        self.local_address
            .is_none_or(|local| local.is_ipv4() == addr.is_ipv4())
    }

    /// The local address, if the options bind one.
    pub fn local_address(&self) -> Option<IpAddr> {
        self.local_address
    }

    /// A TCP socket for `addr` with every option set.
    fn socket_for(&self, addr: SocketAddr) -> io::Result<TcpSocket> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        let sock = SockRef::from(&socket);
        if let Some(idle) = self.keepalive {
            let mut keepalive = TcpKeepalive::new().with_time(idle);
            if let Some(every) = self.keepalive_interval {
                keepalive = keepalive.with_interval(every);
            }
            if let Some(probes) = self.keepalive_retries {
                keepalive = keepalive.with_retries(probes);
            }
            sock.set_tcp_keepalive(&keepalive)?;
        }
        if let Some(bytes) = self.recv_buffer_size {
            sock.set_recv_buffer_size(bytes)?;
        }
        if let Some(bytes) = self.send_buffer_size {
            sock.set_send_buffer_size(bytes)?;
        }
        #[cfg(target_os = "linux")]
        if let Some(timeout) = self.user_timeout {
            sock.set_tcp_user_timeout(Some(timeout))?;
        }
        if let Some(local) = self.local_address {
            socket.bind(SocketAddr::new(local, 0)).map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("binding to local_address {local}: {err}"),
                )
            })?;
        }
        Ok(socket)
    }
}

/// Connects to `addr` with `options` set, failing with
/// [`io::ErrorKind::TimedOut`] at `deadline`.
pub async fn connect(
    addr: SocketAddr,
    deadline: Option<Instant>,
    options: &SocketOptions,
) -> io::Result<TcpStream> {
    let connecting = options.socket_for(addr)?.connect(addr);
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
    stream.set_nodelay(!options.nagle)?;
    Ok(stream)
}
