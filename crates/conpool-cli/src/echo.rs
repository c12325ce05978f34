//! The embedded echo server: what `conpool bench` loads when given no
//! target, so that the command works on a machine with nothing else
//! installed, and what `conpool serve` runs on its own, over TCP or TLS,
//! with ways to misbehave (closing idle connections, resetting some) for
//! trying a pool against.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// How the server treats its connections.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// TLS on accepted connections; `None`: plain TCP.
    pub tls: Option<TlsAcceptor>,
    /// Close a connection (FIN; for TLS, close_notify first) after this
    /// long without a byte from the client.
    pub idle_close: Option<Duration>,
    /// Reset (RST) this share of connections, 0 to 1.
    pub reset_fraction: f64,
}

/// Listens on a free port of 127.0.0.1 and echoes every byte back on every
/// connection, on tasks of the current runtime, until the runtime ends.
/// Returns the address it listens on.
pub async fn start() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, Behaviour::default()));
    Ok(addr)
}

/// Accepts connections on `listener` and serves each on a task of its
/// own, as `behaviour` says, until the runtime ends.
pub async fn serve(listener: TcpListener, behaviour: Behaviour) {
    let behaviour = Arc::new(behaviour);
    let accepted = AtomicU64::new(0);
    loop {
        match listener.accept().await {
            Ok((socket, _)) => {
                let n = accepted.fetch_add(1, Ordering::Relaxed);
                let reset = is_reset(n, behaviour.reset_fraction);
                tokio::spawn(connection(socket, behaviour.clone(), reset));
            }
            // Out of file descriptors, say: the clients count their
            // failed dials; a pause keeps this loop from spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Whether the `n`th connection (from 0) is one to reset: spread evenly,
/// so that of any run of connections the share `fraction` is reset, the
/// same on every run, rather than by chance.
fn is_reset(n: u64, fraction: f64) -> bool {
    let reset_by = |count: u64| (count as f64 * fraction).floor();
    reset_by(n + 1) > reset_by(n)
}

async fn connection(socket: TcpStream, behaviour: Arc<Behaviour>, reset: bool) {
    match &behaviour.tls {
        None => echo(socket, &behaviour, reset).await,
        Some(acceptor) => {
            // A failed handshake is the client's to report.
            if let Ok(stream) = acceptor.accept(socket).await {
                echo(stream, &behaviour, reset).await;
            }
        }
    }
}

/// The TCP socket under a stream, to reset it.
trait Socket {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Copies what it reads back until the peer closes or an error; closes an
/// idle connection after `idle_close`; resets the connection at its first
/// request instead of answering, if `reset`.
async fn echo<S: AsyncRead + AsyncWrite + Socket + Unpin>(
    mut stream: S,
    behaviour: &Behaviour,
    reset: bool,
) {
    let mut buf = [0u8; 4096];
    loop {
        let read = match behaviour.idle_close {
            Some(idle) => match tokio::time::timeout(idle, stream.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => {
                    // TLS sends close_notify, then both send FIN.
                    let _ = stream.shutdown().await;
                    return;
                }
            },
            None => stream.read(&mut buf).await,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if reset {
            // Lingering for zero seconds makes the close an RST, and
            // discards what is unsent.
            let _ = socket2::SockRef::from(stream.tcp()).set_linger(Some(Duration::ZERO));
            return;
        }
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_of_connections_reset_is_the_fraction_in_any_run() {
        let resets =
            |fraction: f64, count: u64| (0..count).filter(|&n| is_reset(n, fraction)).count();
        assert_eq!(resets(0.0, 1000), 0);
        assert_eq!(resets(1.0, 1000), 1000);
        assert_eq!(resets(0.5, 10), 5);
        assert_eq!(resets(0.1, 100), 10);
        assert_eq!(resets(0.25, 3), 0);
        assert_eq!(resets(0.25, 4), 1);
    }
}
