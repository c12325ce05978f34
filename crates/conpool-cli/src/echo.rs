//! The embedded echo server `conpool bench` loads when given no target, so
//! that the command works on a machine with nothing else installed.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Listens on a free port of 127.0.0.1 and echoes every byte back on every
/// connection, on tasks of the current runtime, until the runtime ends.
/// Returns the address it listens on.
pub async fn start() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((socket, _)) => {
                    tokio::spawn(echo(socket));
                }
                // Out of file descriptors, say: the clients count their
                // failed dials; a pause keeps this loop from spinning.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    });
    Ok(addr)
}

/// Copies what it reads back until the peer closes or an error.
async fn echo(mut socket: TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.read(&mut buf).await {
        if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
