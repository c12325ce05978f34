//! An echo server on threads of its own, outside any tokio runtime.
//!
//! A test that must keep its runtime from seeing a socket event (a close
//! that has reached the kernel, but not the runtime's I/O driver) blocks
//! its runtime's only thread while this server acts: nothing the server
//! does then depends on the test's runtime making progress, and every call
//! here returns only once the server's side is done.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conpool::Endpoint;

pub struct ThreadServer {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl ThreadServer {
    pub fn start() -> ThreadServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accepted = conns.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                accepted.lock().unwrap().push(stream.try_clone().unwrap());
                std::thread::spawn(move || echo(stream));
            }
        });
        ThreadServer { addr, conns }
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
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
        settle();
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

fn echo(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}
