//! A real redis-server on a free loopback port and a Unix socket, and just
//! enough RESP to talk to it (written by hand: the tests check the pool,
//! not a client).

use std::path::PathBuf;
use std::process::Child;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::servers::TempDir;
use super::{free_port, spawn_server, wait_for_port, wait_for_socket};

pub struct RedisServer {
    pub port: u16,
    /// The Unix socket it also listens on.
    pub socket: PathBuf,
    child: Child,
    _dir: TempDir,
}

impl RedisServer {
    /// Starts redis-server with no persistence; `extra` adds config
    /// arguments such as `["--timeout", "1"]`.
    pub async fn start(extra: &[&str]) -> RedisServer {
        let port = free_port();
        let port_s = port.to_string();
        let dir = TempDir::new("redis");
        let socket = dir.path.join("redis.sock");
        let socket_s = socket.to_str().unwrap().to_owned();
        let mut args = vec![
            "--unixsocket",
            &socket_s,
            "--unixsocketperm",
            "700",
            "--port",
            &port_s,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ];
        args.extend_from_slice(extra);
        let child = spawn_server("redis-server", "redis-server", &args);
        wait_for_port(port, "redis-server").await;
        wait_for_socket(&socket, "redis-server").await;
        RedisServer {
            port,
            socket,
            child,
            _dir: dir,
        }
    }

    /// Starts redis-server with `requirepass password`: every connection
    /// must AUTH before any other command.
    pub async fn with_password(password: &str) -> RedisServer {
        Self::start(&["--requirepass", password]).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one command as a RESP array of bulk strings.
pub async fn send<S: AsyncWrite + Unpin>(conn: &mut S, args: &[&[u8]]) -> std::io::Result<()> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    conn.write_all(&out).await
}

/// A reply: simple string, error, integer, bulk string or nil.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Nil,
}

/// Reads one (non-array) reply. Reads byte-exactly so nothing of the next
/// reply is consumed.
pub async fn read_reply<S: AsyncRead + Unpin>(conn: &mut S) -> std::io::Result<Reply> {
    let mut reader = BufReader::with_capacity(1, conn);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1);
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Integer(rest.parse().unwrap()),
        "$" => {
            let len: i64 = rest.parse().unwrap();
            if len < 0 {
                Reply::Nil
            } else {
                let mut data = vec![0u8; len as usize + 2];
                reader.read_exact(&mut data).await?;
                data.truncate(len as usize);
                Reply::Bulk(data)
            }
        }
        other => panic!("unexpected RESP type {other:?} in {line:?}"),
    })
}

/// Sends a command and reads its reply.
pub async fn call<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut S,
    args: &[&[u8]],
) -> std::io::Result<Reply> {
    send(conn, args).await?;
    read_reply(conn).await
}
