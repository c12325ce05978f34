//! Real servers for the suite: nginx (plain and TLS, on loopback ports and
//! on Unix sockets, short keep-alive) and memcached, each started on free
//! loopback ports in a private directory and stopped when dropped.

use std::path::PathBuf;
use std::process::Child;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::{TlsCert, free_port, spawn_server, wait_for_port, wait_for_socket};

/// The length of the body nginx serves at `/big`: long enough to arrive
/// over many reads.
pub const BIG_BODY: usize = 4 << 20;

/// nginx serving `200 ok` on a plain and a TLS port (HTTP/1.1, and HTTP/2
/// by ALPN), HTTP/2 with prior knowledge on an h2c port, and on a plain
/// and a TLS Unix socket, closing idle keep-alive connections after
/// `keepalive_timeout`; started with a client CA, also on a mutual-TLS port
/// (`ssl_verify_client on`). `/close` answers with `Connection: close`;
/// `/big` serves [`BIG_BODY`] bytes.
pub struct Nginx {
    pub port: u16,
    pub tls_port: u16,
    pub h2c_port: u16,
    /// Plain HTTP on a Unix socket.
    pub socket: PathBuf,
    /// HTTPS on a Unix socket, with the suite's certificate for `localhost`.
    pub tls_socket: PathBuf,
    /// The port that demands a client certificate signed by the client CA.
    pub mtls_port: Option<u16>,
    child: Child,
    _dir: TempDir,
}

impl Nginx {
    /// Its plain port by address, or its TLS port by the name the suite's
    /// certificate is valid for.
    pub fn endpoint(&self, tls: bool) -> conpool::Endpoint {
        if tls {
            conpool::Endpoint::tls("localhost", self.tls_port).unwrap()
        } else {
            conpool::Endpoint::new("127.0.0.1", self.port).unwrap()
        }
    }

    pub async fn start(cert: &TlsCert, keepalive_timeout: &str) -> Nginx {
        Self::start_with(cert, keepalive_timeout, None).await
    }

    /// Also on a mutual-TLS port, trusting client certificates that
    /// `client_ca` (self-signed, so its own CA) is.
    pub async fn start_mtls(cert: &TlsCert, client_ca: &TlsCert) -> Nginx {
        Self::start_with(cert, "60s", Some(client_ca)).await
    }

    async fn start_with(
        cert: &TlsCert,
        keepalive_timeout: &str,
        client_ca: Option<&TlsCert>,
    ) -> Nginx {
        let dir = TempDir::new("nginx");
        let (port, tls_port, h2c_port) = (free_port(), free_port(), free_port());
        let socket = dir.path.join("http.sock");
        let tls_socket = dir.path.join("https.sock");
        let d = dir.path.display();
        std::fs::write(dir.path.join("cert.pem"), &cert.cert_pem).unwrap();
        std::fs::write(dir.path.join("key.pem"), &cert.key_pem).unwrap();
        std::fs::write(dir.path.join("big.bin"), vec![b'x'; BIG_BODY]).unwrap();
        let mtls_port = client_ca.map(|_| free_port());
        let mtls_server = match (client_ca, mtls_port) {
            (Some(ca), Some(mtls_port)) => {
                std::fs::write(dir.path.join("client-ca.pem"), &ca.cert_pem).unwrap();
                format!(
                    r#"
    server {{
        listen 127.0.0.1:{mtls_port} ssl;
        server_name localhost;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        ssl_client_certificate {d}/client-ca.pem;
        ssl_verify_client on;
        location / {{ return 200 "ok\n"; }}
    }}"#
                )
            }
            _ => String::new(),
        };
        let conf = format!(
            r#"
daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_timeout {keepalive_timeout};
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl http2;
        listen 127.0.0.1:{h2c_port} http2;
        listen unix:{d}/http.sock;
        listen unix:{d}/https.sock ssl http2;
        server_name localhost;
        # nginx before 1.23.4 (Debian 12 ships 1.22) offers TLS 1.3 only
        # when told; newer ones do by default. Told, both serve alike.
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location / {{ return 200 "ok\n"; }}
        location /close {{ keepalive_timeout 0; return 200 "bye\n"; }}
        location = /big {{ alias {d}/big.bin; default_type application/octet-stream; }}
    }}{mtls_server}
}}
"#
        );
        let conf_path = dir.path.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let nginx = if std::path::Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let child = spawn_server(
            nginx,
            "nginx",
            &["-p", &d.to_string(), "-c", conf_path.to_str().unwrap()],
        );
        wait_for_port(port, "nginx").await;
        wait_for_port(tls_port, "nginx (TLS)").await;
        wait_for_port(h2c_port, "nginx (h2c)").await;
        wait_for_socket(&socket, "nginx (Unix socket)").await;
        wait_for_socket(&tls_socket, "nginx (TLS Unix socket)").await;
        if let Some(mtls_port) = mtls_port {
            wait_for_port(mtls_port, "nginx (mutual TLS)").await;
        }
        Nginx {
            port,
            tls_port,
            h2c_port,
            socket,
            tls_socket,
            mtls_port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `GET /` with keep-alive and reads the whole response; returns the
/// status code and body.
pub async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut S,
) -> std::io::Result<(u16, String)> {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut reader = BufReader::with_capacity(1, conn);
    let mut status = String::new();
    if reader.read_line(&mut status).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// memcached on a free loopback port.
pub struct Memcached {
    pub port: u16,
    child: Child,
}

impl Memcached {
    pub async fn start() -> Memcached {
        let port = free_port();
        let child = spawn_server(
            "memcached",
            "memcached",
            &[
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-u",
                "root",
                "-m",
                "16",
            ],
        );
        wait_for_port(port, "memcached").await;
        Memcached { port, child }
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "conpool-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// PEM files of certificates and keys, in a directory of their own removed
/// when dropped.
pub struct Pems {
    dir: TempDir,
}

impl Pems {
    pub fn new(tag: &str) -> Pems {
        Pems {
            dir: TempDir::new(tag),
        }
    }

    /// Where the file `name` is (or would be) in the directory.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path.join(name)
    }

    /// Writes `contents` to the file `name`, and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// A builder that trusts `server` only, as the suite's servers need.
    pub fn trusting(&self, server: &super::TlsCert) -> conpool::ConfigBuilder {
        conpool::Config::builder()
            .tls_ca_file(self.write("server-ca.pem", &server.cert_pem))
            .tls_roots(conpool::TlsRoots::None)
    }

    /// `builder` presenting `client` as its certificate.
    pub fn presenting(
        &self,
        builder: conpool::ConfigBuilder,
        client: &super::TlsCert,
        tag: &str,
    ) -> conpool::ConfigBuilder {
        builder
            .tls_client_cert(self.write(&format!("{tag}-cert.pem"), &client.cert_pem))
            .tls_client_key(self.write(&format!("{tag}-key.pem"), &client.key_pem))
    }
}
