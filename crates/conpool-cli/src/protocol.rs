//! What `conpool bench` says on a connection: the target's scheme picks the
//! protocol (echo, Redis, memcached, HTTP/1.1), and this module owns the
//! parsing of targets and each protocol's request, reply and the checks on
//! it. HTTP goes through hyper, in `http.rs`.

use std::time::Duration;

use conpool::dial::{Dial, TcpTlsDialer};
use conpool::{Config, Endpoint, Error, PooledConnection, Scheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The length of every echo request, and of its echo; also of the values
/// stored under `--keys`.
const PAYLOAD_LEN: usize = 32;

/// The most `--keys`: each is stored before the load, on one connection.
pub const MAX_KEYS: u32 = 1_000_000;

/// The keys' values are stored this many commands at a time, the replies
/// read before the next batch, so that neither side's buffers fill up.
const STORE_BATCH: u32 = 1000;

/// A target from the command line: which protocol, at which endpoint.
#[derive(Clone, Debug)]
pub struct Target {
    pub kind: Kind,
    pub endpoint: Endpoint,
    /// HTTP's path and query; `/` for the others.
    pub path: String,
}

/// The protocols, one per pair of schemes (TCP and TLS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Echo,
    Redis,
    Memcached,
    Http,
}

/// The schemes a target may have, each with its protocol, transport and
/// default port (`None`: the port must be written).
const SCHEMES: &[(&str, Kind, Scheme, Option<u16>)] = &[
    ("tcp", Kind::Echo, Scheme::Tcp, None),
    ("tls", Kind::Echo, Scheme::Tls, None),
    ("redis", Kind::Redis, Scheme::Tcp, Some(6379)),
    ("rediss", Kind::Redis, Scheme::Tls, Some(6379)),
    ("memcached", Kind::Memcached, Scheme::Tcp, Some(11211)),
    ("http", Kind::Http, Scheme::Tcp, Some(80)),
    ("https", Kind::Http, Scheme::Tls, Some(443)),
];

const SCHEME_LIST: &str =
    "tcp:// or tls:// (echo), redis:// or rediss://, memcached://, http:// or https://";

/// Parses `scheme://host[:port][/path]`: the value parser of `TARGET`.
pub fn parse_target(text: &str) -> Result<Target, String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!("it has no scheme; write one of {SCHEME_LIST}"));
    };
    let Some(&(_, kind, transport, default_port)) =
        SCHEMES.iter().find(|(name, ..)| *name == scheme)
    else {
        return Err(format!(
            "unknown scheme {scheme:?}; conpool bench speaks {SCHEME_LIST}"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    if kind != Kind::Http && !path.is_empty() {
        return Err(format!(
            "{text:?} has a path ({path:?}); only http:// and https:// targets take one"
        ));
    }
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6
            .split_once(']')
            .is_some_and(|(_, after)| !after.is_empty()),
        None => authority.contains(':'),
    };
    let endpoint = match (has_port, default_port) {
        // Endpoint's own parser, for its own error messages.
        (true, _) | (false, None) => {
            let scheme = if transport == Scheme::Tls {
                "tls"
            } else {
                "tcp"
            };
            let parsed: Result<Endpoint, Error> = format!("{scheme}://{authority}").parse();
            parsed.map_err(|e| {
                // The message quotes what was parsed; quote what was
                // written instead.
                e.to_string()
                    .replace(&format!("\"{scheme}://{authority}\""), &format!("{text:?}"))
            })?
        }
        (false, Some(port)) => {
            let host = authority
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(authority);
            Endpoint::with_scheme(transport, host, port).map_err(|e| e.to_string())?
        }
    };
    Ok(Target {
        kind,
        endpoint,
        path: if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        },
    })
}

impl Target {
    /// The target as the report names it: scheme, host, port and (HTTP)
    /// path.
    pub fn url(&self) -> String {
        let tls = self.endpoint.is_tls();
        let scheme = SCHEMES
            .iter()
            .find(|(_, kind, transport, _)| {
                *kind == self.kind && (*transport == Scheme::Tls) == tls
            })
            .map_or("tcp", |(name, ..)| *name);
        let host = self.endpoint.host();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let path = if self.kind == Kind::Http {
            self.path.as_str()
        } else {
            ""
        };
        format!("{scheme}://{host}:{}{path}", self.endpoint.port())
    }
}

/// What one request is, for the whole run.
#[derive(Clone, Debug)]
pub enum Protocol {
    /// 32 bytes written, the same read back.
    Echo,
    /// `PING`, `+PONG` back.
    RedisPing,
    /// `GET` of one of `keys` keys stored before the load.
    RedisGet { keys: u32 },
    /// memcached `get` of one of `keys` keys stored before the load.
    MemcachedGet { keys: u32 },
    /// HTTP/1.1 `GET path`, a 2xx status and the whole body back.
    HttpGet { path: String },
}

impl Protocol {
    /// The protocol of a target, with `--keys`.
    pub fn of(target: &Target, keys: Option<u32>) -> Result<Protocol, String> {
        Ok(match (target.kind, keys) {
            (Kind::Echo, None) => Protocol::Echo,
            (Kind::Redis, None) => Protocol::RedisPing,
            (Kind::Redis, Some(keys)) => Protocol::RedisGet { keys },
            // memcached has no PING: one key unless told.
            (Kind::Memcached, keys) => Protocol::MemcachedGet {
                keys: keys.unwrap_or(1),
            },
            (Kind::Http, None) => Protocol::HttpGet {
                path: target.path.clone(),
            },
            (Kind::Echo | Kind::Http, Some(_)) => {
                return Err(
                    "--keys is for redis:// and memcached:// targets; echo and HTTP have no keys"
                        .to_owned(),
                );
            }
        })
    }

    /// Its name in the report.
    pub fn name(&self) -> &'static str {
        match self {
            Protocol::Echo => "echo",
            Protocol::RedisPing => "redis PING",
            Protocol::RedisGet { .. } => "redis GET",
            Protocol::MemcachedGet { .. } => "memcached get",
            Protocol::HttpGet { .. } => "http GET",
        }
    }

    /// The keys the load reads, `None` for protocols without.
    pub fn keys(&self) -> Option<u32> {
        match self {
            Protocol::RedisGet { keys } | Protocol::MemcachedGet { keys } => Some(*keys),
            _ => None,
        }
    }

    /// Stores every key's value before the load, on a connection of its
    /// own dialed as the pool dials, so that the pool's counts are the
    /// load's alone.
    pub async fn prepare(&self, config: &Config, endpoint: &Endpoint) -> Result<(), String> {
        let Some(keys) = self.keys() else {
            return Ok(());
        };
        let mut stream = TcpTlsDialer::from_config(config)
            .dial(endpoint)
            .await
            .map_err(|e| {
                format!(
                    "cannot connect to {endpoint} to store the keys: {}",
                    e.into_io()
                )
            })?;
        let mut reply = Vec::new();
        let mut first = 0;
        while first < keys {
            let last = keys.min(first + STORE_BATCH);
            let mut commands = Vec::new();
            for key in first..last {
                let (name, value) = (key_name(key), value_of(key));
                match self {
                    Protocol::RedisGet { .. } => {
                        resp(&mut commands, &[b"SET", name.as_bytes(), &value]);
                    }
                    _ => {
                        commands.extend_from_slice(
                            format!("set {name} 0 0 {PAYLOAD_LEN}\r\n").as_bytes(),
                        );
                        commands.extend_from_slice(&value);
                        commands.extend_from_slice(b"\r\n");
                    }
                }
            }
            let expected: &[u8] = match self {
                Protocol::RedisGet { .. } => b"+OK\r\n",
                _ => b"STORED\r\n",
            };
            let io = async {
                stream.write_all(&commands).await?;
                reply.resize(expected.len() * (last - first) as usize, 0);
                stream.read_exact(&mut reply).await
            };
            io.await
                .map_err(|e| format!("storing the keys on {endpoint}: {e}"))?;
            if let Some(other) = reply.chunks(expected.len()).find(|r| *r != expected) {
                return Err(format!(
                    "storing the keys on {endpoint}: the server answered {:?}",
                    String::from_utf8_lossy(other)
                ));
            }
            first = last;
        }
        Ok(())
    }

    /// One request on a leased connection, `id` telling it from every other
    /// request of the run; gives the connection back (or discards it, with
    /// `reuse` off) once the reply is whole and right.
    pub async fn request(
        &self,
        mut conn: PooledConnection,
        id: u64,
        reuse: bool,
        request_timeout: Duration,
        scratch: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        // The request, the reply it must get, and how to tell that reply
        // is whole.
        let (request, expected, complete): (Vec<u8>, Vec<u8>, ReplyLen) = match self {
            // HTTP goes through the pool of hyper's connections
            // (`bench::Source::Http`), never a bare stream.
            Protocol::HttpGet { path } => {
                conn.discard();
                return Err(Failure {
                    kind: "other",
                    message: format!("GET {path}: HTTP is not sent on a bare stream"),
                });
            }
            Protocol::Echo => {
                let mut request = *b"conpool bench 0000000000000000\r\n";
                request[14..30].copy_from_slice(format!("{id:016x}").as_bytes());
                (request.to_vec(), request.to_vec(), echo_reply_len)
            }
            Protocol::RedisPing => (
                b"*1\r\n$4\r\nPING\r\n".to_vec(),
                b"+PONG\r\n".to_vec(),
                redis_reply_len,
            ),
            Protocol::RedisGet { keys } => {
                let key = (id % u64::from(*keys)) as u32;
                let mut request = Vec::with_capacity(64);
                resp(&mut request, &[b"GET", key_name(key).as_bytes()]);
                let expected = [
                    format!("${PAYLOAD_LEN}\r\n").as_bytes(),
                    &value_of(key),
                    b"\r\n",
                ]
                .concat();
                (request, expected, redis_reply_len)
            }
            Protocol::MemcachedGet { keys } => {
                let key = (id % u64::from(*keys)) as u32;
                let name = key_name(key);
                let expected = [
                    format!("VALUE {name} 0 {PAYLOAD_LEN}\r\n").as_bytes(),
                    &value_of(key),
                    b"\r\nEND\r\n",
                ]
                .concat();
                (
                    format!("get {name}\r\n").into_bytes(),
                    expected,
                    memcached_reply_len,
                )
            }
        };
        scratch.clear();
        let io = async {
            conn.write_all(&request).await?;
            read_until(&mut conn, scratch, complete).await
        };
        match tokio::time::timeout(request_timeout, io).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Failure::io(e)),
            // Dropping the lease with its read pending closes it.
            Err(_) => return Err(Failure::timed_out(request_timeout)),
        }
        if *scratch != expected {
            conn.discard();
            return Err(Failure {
                kind: "bad_reply",
                message: format!(
                    "expected {:?}, got {:?}",
                    String::from_utf8_lossy(&expected),
                    String::from_utf8_lossy(scratch)
                ),
            });
        }
        if !reuse {
            conn.discard();
        }
        Ok(())
    }
}

/// A request that failed: the kind it is counted under, and its error.
pub struct Failure {
    pub kind: &'static str,
    pub message: String,
}

impl Failure {
    pub fn io(err: std::io::Error) -> Failure {
        Failure {
            kind: "io",
            message: err.to_string(),
        }
    }

    pub fn timed_out(limit: Duration) -> Failure {
        Failure {
            kind: "request_timeout",
            message: format!("no reply within {limit:?}"),
        }
    }
}

/// An error and its sources, as in "could not connect to …: Connection
/// refused (os error 111)".
pub fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(source) = cause {
        message.push_str(": ");
        message.push_str(&source.to_string());
        cause = source.source();
    }
    message
}

fn key_name(key: u32) -> String {
    format!("conpool:bench:{key}")
}

/// The value stored under a key: 32 bytes that name the key.
fn value_of(key: u32) -> [u8; PAYLOAD_LEN] {
    let mut value = *b"conpool bench value 000000000000";
    value[20..].copy_from_slice(format!("{key:012}").as_bytes());
    value
}

/// Appends a command as a RESP array of bulk strings.
fn resp(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads until `complete` finds a whole reply in what was read; what
/// follows it, if the server sent more, stays in `buf` and fails the
/// comparison with the expected reply.
async fn read_until<S: AsyncRead + Unpin>(
    conn: &mut S,
    buf: &mut Vec<u8>,
    complete: ReplyLen,
) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    while complete(buf).is_none() {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection mid-reply",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// The length of the first whole reply in a buffer, `None` until it is
/// whole.
type ReplyLen = fn(&[u8]) -> Option<usize>;

/// An echo is whole once it is as long as every request.
fn echo_reply_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= PAYLOAD_LEN).then_some(PAYLOAD_LEN)
}

/// The length of the first RESP reply in `buf` (a simple string, error,
/// integer or bulk string), once it is whole.
fn redis_reply_len(buf: &[u8]) -> Option<usize> {
    let line = line_len(buf)?;
    if buf[0] != b'$' {
        return Some(line);
    }
    let len: i64 = std::str::from_utf8(&buf[1..line - 2]).ok()?.parse().ok()?;
    if len < 0 {
        return Some(line);
    }
    let whole = line + len as usize + 2;
    (buf.len() >= whole).then_some(whole)
}

/// The length of the first memcached `get` reply in `buf` (`END`, an
/// error line, or one `VALUE` and its data, then `END`), once it is whole.
fn memcached_reply_len(buf: &[u8]) -> Option<usize> {
    let line = line_len(buf)?;
    let Some(header) = buf.strip_prefix(b"VALUE ") else {
        return Some(line);
    };
    let bytes: usize = std::str::from_utf8(&header[..line - 8])
        .ok()?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()?;
    let end = line + bytes + 2;
    let rest = buf.get(end..)?;
    Some(end + line_len(rest)?)
}

/// The length of the first line of `buf` with its `\r\n`, once whole.
fn line_len(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n").map(|at| at + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_whole_only_once_every_byte_is_in() {
        let bulk = b"$5\r\nhello\r\n";
        for cut in 0..bulk.len() {
            assert_eq!(redis_reply_len(&bulk[..cut]), None, "{cut}");
        }
        assert_eq!(redis_reply_len(bulk), Some(bulk.len()));
        assert_eq!(redis_reply_len(b"+PONG\r\n+PONG\r\n"), Some(7));
        assert_eq!(redis_reply_len(b"$-1\r\n"), Some(5));
        let value = b"VALUE k 0 5\r\nhello\r\nEND\r\n";
        for cut in 0..value.len() {
            assert_eq!(memcached_reply_len(&value[..cut]), None, "{cut}");
        }
        assert_eq!(memcached_reply_len(value), Some(value.len()));
        assert_eq!(memcached_reply_len(b"END\r\n"), Some(5));
    }

    #[test]
    fn a_target_s_scheme_picks_the_protocol_and_the_default_port() {
        let t = parse_target("rediss://localhost").unwrap();
        assert_eq!(
            (t.kind, t.endpoint.port(), t.endpoint.is_tls()),
            (Kind::Redis, 6379, true)
        );
        assert_eq!(t.url(), "rediss://localhost:6379");
        let t = parse_target("http://[::1]:8080/status?x=1").unwrap();
        assert_eq!(
            (t.kind, t.endpoint.port(), t.path.as_str()),
            (Kind::Http, 8080, "/status?x=1")
        );
        assert_eq!(t.url(), "http://[::1]:8080/status?x=1");
        let t = parse_target("memcached://127.0.0.1").unwrap();
        assert_eq!((t.kind, t.endpoint.port()), (Kind::Memcached, 11211));
    }
}
