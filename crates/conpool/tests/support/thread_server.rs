//! An echo server on threads of its own, outside any tokio runtime.
//!
//! A test that must keep its runtime from seeing a socket event (a close
//! that has reached the kernel, but not the runtime's I/O driver) blocks
//! its runtime's only thread while this server acts: nothing the server
//! does then depends on the test's runtime making progress, and every call
//! here returns only once the server's side is done.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conpool::{Endpoint, PooledConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct ThreadServer {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    /// Bytes echoed so far, over every connection.
    echoed: Arc<AtomicUsize>,
}

impl ThreadServer {
    pub fn start() -> ThreadServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let echoed: Arc<AtomicUsize> = Arc::default();
        let (accepted, counter) = (conns.clone(), echoed.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                stream.set_nodelay(true).unwrap();
                accepted.lock().unwrap().push(stream.try_clone().unwrap());
                let counter = counter.clone();
                std::thread::spawn(move || echo(stream, &counter));
            }
        });
        ThreadServer {
            addr,
            conns,
            echoed,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new("127.0.0.1", self.addr.port()).unwrap()
    }

    /// Connections accepted and not closed by this server.
    pub fn open(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Closes every connection from the server's side (a FIN each), and
    /// returns once the FINs have had time to reach the client's kernel,
    /// blocking the calling thread (and so its runtime) meanwhile.
    pub fn close_all_blocking(&self) {
        self.close_all_now();
        settle();
    }

    /// Closes every connection from the server's side, returning as soon
    /// as the system calls have.
    pub fn close_all_now(&self) {
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// Blocks this thread (and so its runtime) until `total` bytes have
    /// been echoed, whatever the machine's load.
    pub fn wait_echoed_blocking(&self, total: usize) {
        while self.echoed.load(Ordering::SeqCst) < total {
            std::thread::yield_now();
        }
    }

    /// Writes `bytes` on every connection unasked, and returns once they
    /// have had time to reach the client's kernel, blocking meanwhile.
    pub fn write_all_blocking(&self, bytes: &[u8]) {
        for mut conn in self.conns.lock().unwrap().iter() {
            conn.write_all(bytes).unwrap();
        }
        settle();
    }
}

/// Loopback hands a segment to the receiving socket within the sender's
/// system call; a short sleep covers a softirq that runs a moment later.
fn settle() {
    std::thread::sleep(Duration::from_millis(30));
}

fn echo(mut stream: TcpStream, echoed: &AtomicUsize) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
                echoed.fetch_add(n, Ordering::SeqCst);
            }
        }
    }
}

/// A round trip whose last read comes up short of its buffer, which makes
/// tokio clear the socket's readiness flag: from then on only the kernel
/// knows what arrives until the runtime's driver runs again. (A read that
/// fills its buffer exactly leaves the flag set.)
pub async fn exchange(conn: &mut PooledConnection, msg: &[u8]) {
    conn.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len() + 64];
    let mut got = 0;
    while got < msg.len() {
        got += conn.read(&mut buf[got..]).await.unwrap();
    }
    assert_eq!(&buf[..got], msg);
}
