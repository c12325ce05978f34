//! Endpoints: the keys of the pool.
//!
//! An [`Endpoint`] names one server the pool dials: a host (a DNS name or an
//! IP literal), a port, and whether the connection speaks TLS; or the path
//! of a Unix domain socket ([`Endpoint::unix`], [`Endpoint::unix_tls`]),
//! keyed by the path. Each distinct endpoint has its own per-endpoint pool,
//! limit and statistics, so a TLS endpoint and a plain one with the same
//! host and port are different keys.
//!
//! Endpoints are validated once, when they are built, so that the pool never
//! has to cope with a host name it cannot resolve for syntactic reasons.
//! Cloning is cheap (the host is reference counted).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use rustls::pki_types::ServerName;

use crate::Error;

/// Whether connections to an endpoint are plain TCP or TLS over TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Scheme {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP, with SNI and certificate verification for the host.
    Tls,
}

impl Scheme {
    /// The prefix used in the textual form (`tcp` or `tls`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
        }
    }
}

/// A server the pool connects to: host, port and [`Scheme`].
///
/// ```
/// use conpool::{Endpoint, Scheme};
///
/// let redis = Endpoint::new("localhost", 6379)?;
/// assert_eq!(redis.to_string(), "localhost:6379");
///
/// let https: Endpoint = "tls://example.com:443".parse()?;
/// assert_eq!(https.scheme(), Scheme::Tls);
/// assert_eq!(https.host(), "example.com");
///
/// let v6: Endpoint = "[::1]:11211".parse()?;
/// assert_eq!(v6.to_string(), "[::1]:11211");
///
/// assert!(Endpoint::new("bad host", 80).is_err());
///
/// let socket: Endpoint = "unix:///run/redis/redis.sock".parse()?;
/// assert_eq!(socket.unix_path(), Some(std::path::Path::new("/run/redis/redis.sock")));
/// # Ok::<(), conpool::Error>(())
/// ```
#[derive(Clone)]
pub struct Endpoint {
    /// The host, or a Unix socket's path.
    host: Arc<str>,
    /// 0 for a Unix socket.
    port: u16,
    scheme: Scheme,
    /// What makes a Unix socket's endpoint one; `None` for TCP. Behind a
    /// pointer so that TCP endpoints, the common case, stay small.
    unix: Option<Arc<UnixSocket>>,
    /// The hash of the three fields above, computed once with a per-process
    /// random key (so a hostile set of host names cannot flood one bucket),
    /// so that finding an endpoint's pool hashes eight bytes, not a string.
    hash: u64,
}

/// A Unix socket endpoint's own part.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct UnixSocket {
    /// The name a TLS endpoint's certificate is verified against, checked
    /// to be one rustls takes; `None` for plain.
    server_name: Option<Arc<str>>,
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.port == other.port
            && self.scheme == other.scheme
            && (Arc::ptr_eq(&self.host, &other.host) || self.host == other.host)
            && self.unix == other.unix
    }
}

impl Eq for Endpoint {}

impl Endpoint {
    /// The hash computed at construction (what [`Hash`] feeds a hasher).
    pub(crate) fn prehash(&self) -> u64 {
        self.hash
    }
}

impl Hash for Endpoint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for Endpoint {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Endpoint {
    /// TCP before Unix sockets, then by host (or path), then port, then
    /// scheme, then a Unix socket's server name.
    fn cmp(&self, other: &Self) -> Ordering {
        (
            self.unix.is_some(),
            &*self.host,
            self.port,
            self.scheme,
            &self.unix,
        )
            .cmp(&(
                other.unix.is_some(),
                &*other.host,
                other.port,
                other.scheme,
                &other.unix,
            ))
    }
}

/// Hashes each endpoint once, at construction, with a key chosen per
/// process. A Unix socket's server name goes in too (port 0 already tells
/// its path from a host).
fn endpoint_hash(host: &str, port: u16, scheme: Scheme, server_name: Option<&str>) -> u64 {
    static KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    KEY.hash_one((host, port, scheme, server_name))
}

/// A hasher for keys that carry their own hash (`Endpoint`): it passes the
/// precomputed value through.
#[derive(Default, Clone, Copy)]
pub(crate) struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Endpoint`; fold anything else in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The map hasher for endpoint-keyed maps.
pub(crate) type PrehashedState = BuildHasherDefault<PrehashedHasher>;

impl Endpoint {
    /// A plain TCP endpoint.
    ///
    /// Fails with [`Error::InvalidEndpoint`] when the host is empty, contains
    /// white space, is not a valid DNS name or IP literal, or the port is 0.
    pub fn new(host: impl AsRef<str>, port: u16) -> Result<Self, Error> {
        Self::with_scheme(Scheme::Tcp, host, port)
    }

    /// A TLS endpoint; the host is also the SNI name and the name the
    /// server's certificate must be valid for.
    pub fn tls(host: impl AsRef<str>, port: u16) -> Result<Self, Error> {
        Self::with_scheme(Scheme::Tls, host, port)
    }

    /// An endpoint with an explicit scheme.
    pub fn with_scheme(scheme: Scheme, host: impl AsRef<str>, port: u16) -> Result<Self, Error> {
        let raw = host.as_ref();
        // Accept the bracketed form of IPv6 literals too, as users copy it
        // from URLs.
        let host = match raw.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inner) if inner.parse::<Ipv6Addr>().is_ok() => inner,
            _ => raw,
        };
        validate_host(host)?;
        if port == 0 {
            return Err(invalid(format!(
                "port 0 of {host:?} is not a port a server listens on (use 1-65535)"
            )));
        }
        Ok(Endpoint {
            hash: endpoint_hash(host, port, scheme, None),
            host: Arc::from(host),
            port,
            scheme,
            unix: None,
        })
    }

    /// A Unix domain socket at `path`, absolute or relative (to the
    /// working directory at each dial), keyed by the path as written. It
    /// is dialed with no name resolution and no Happy Eyeballs.
    ///
    /// Fails with [`Error::InvalidEndpoint`] when the path is empty, is not
    /// UTF-8, holds a NUL byte, or is longer than the 107 bytes a socket
    /// address holds.
    ///
    /// ```
    /// use conpool::Endpoint;
    ///
    /// let redis = Endpoint::unix("/run/redis/redis.sock")?;
    /// assert_eq!(redis.to_string(), "unix:///run/redis/redis.sock");
    /// assert_eq!(Endpoint::unix("app.sock")?.to_string(), "unix:app.sock");
    /// assert_eq!(
    ///     Endpoint::unix("").unwrap_err().to_string(),
    ///     "invalid endpoint: the Unix socket path is empty"
    /// );
    /// # Ok::<(), conpool::Error>(())
    /// ```
    pub fn unix(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = unix_path(path.as_ref())?;
        Ok(Self::unix_with(path, Scheme::Tcp, None))
    }

    /// TLS over the Unix domain socket at `path` (absolute: see below),
    /// the server's certificate verified against `server_name` (a DNS name
    /// or an IP address), which is also sent as SNI; a socket has no host
    /// to take the name from. The endpoint's name is used whatever the
    /// config's `tls_server_name` says.
    ///
    /// Its text form is `unix+tls://server_name/abs/path`, which has room
    /// only for an absolute path: a relative one is refused, as are the
    /// paths [`Endpoint::unix`] refuses and a name that is neither a DNS
    /// name nor an IP address.
    ///
    /// ```
    /// use conpool::Endpoint;
    ///
    /// let db = Endpoint::unix_tls("/run/db/tls.sock", "db.internal")?;
    /// assert!(db.is_tls());
    /// assert_eq!(db.to_string(), "unix+tls://db.internal/run/db/tls.sock");
    /// assert_eq!(db.to_string().parse::<Endpoint>()?, db);
    /// # Ok::<(), conpool::Error>(())
    /// ```
    pub fn unix_tls(path: impl AsRef<Path>, server_name: &str) -> Result<Self, Error> {
        let path = unix_path(path.as_ref())?;
        if !path.starts_with('/') {
            return Err(invalid(format!(
                "the TLS Unix socket path {path:?} is relative; it must be absolute (start with '/')"
            )));
        }
        if ServerName::try_from(server_name).is_err() {
            return Err(invalid(format!(
                "server name {server_name:?} of the TLS Unix socket {path:?} is neither a DNS name nor an IP address"
            )));
        }
        Ok(Self::unix_with(
            path,
            Scheme::Tls,
            Some(Arc::from(server_name)),
        ))
    }

    fn unix_with(path: &str, scheme: Scheme, server_name: Option<Arc<str>>) -> Self {
        Endpoint {
            hash: endpoint_hash(path, 0, scheme, server_name.as_deref()),
            host: Arc::from(path),
            port: 0,
            scheme,
            unix: Some(Arc::new(UnixSocket { server_name })),
        }
    }

    /// The socket's path, for a Unix socket endpoint.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|_| Path::new(&*self.host))
    }

    /// The name a TLS Unix socket endpoint's certificate is verified
    /// against ([`Endpoint::unix_tls`]): a DNS name or an IP address.
    pub fn unix_server_name(&self) -> Option<&str> {
        self.unix
            .as_ref()
            .and_then(|unix| unix.server_name.as_deref())
    }

    /// The host name or IP literal (IPv6 without brackets); a Unix
    /// socket endpoint's path.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port; 0 for a Unix socket.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Plain TCP or TLS.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Whether connections to this endpoint use TLS.
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::Tls
    }

    /// The host as an IP address, when it is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        if self.unix.is_some() {
            return None;
        }
        self.host.parse().ok()
    }
}

/// The longest Unix socket path: `sun_path` holds 108 bytes on Linux, the
/// last for the NUL.
const MAX_UNIX_PATH: usize = 107;

/// Checks a Unix socket path: UTF-8 (it is also the endpoint's text form),
/// not empty, no NUL, short enough for a socket address.
fn unix_path(path: &Path) -> Result<&str, Error> {
    let text = path.to_str().ok_or_else(|| {
        invalid(format!(
            "the Unix socket path {path:?} is not UTF-8; conpool takes UTF-8 paths"
        ))
    })?;
    if text.is_empty() {
        return Err(invalid("the Unix socket path is empty".into()));
    }
    if text.contains('\0') {
        return Err(invalid(format!(
            "the Unix socket path {text:?} contains a NUL byte"
        )));
    }
    if text.len() > MAX_UNIX_PATH {
        return Err(invalid(format!(
            "the Unix socket path {text:?} is {} bytes long; a socket address holds at most {MAX_UNIX_PATH}",
            text.len()
        )));
    }
    Ok(text)
}

fn invalid(reason: String) -> Error {
    Error::InvalidEndpoint { reason }
}

/// Checks a host: an IP literal, or a DNS name of labels made of letters,
/// digits, `-` and `_` (underscores appear in many internal names), each
/// 1-63 bytes, not starting or ending with `-`, 253 bytes at most, with an
/// optional trailing dot.
fn validate_host(host: &str) -> Result<(), Error> {
    if host.is_empty() {
        return Err(invalid("the host is empty".into()));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if host.chars().any(char::is_whitespace) {
        return Err(invalid(format!("host {host:?} contains white space")));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 {
        return Err(invalid(format!(
            "host {host:?} is {} bytes long; a DNS name has at most 253",
            name.len()
        )));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(invalid(format!("host {host:?} has an empty label")));
        }
        if label.len() > 63 {
            return Err(invalid(format!(
                "host {host:?} has a label of {} bytes; a label has at most 63",
                label.len()
            )));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(invalid(format!(
                "host {host:?} contains {bad:?}; a host name has only letters, digits, '-', '_' and '.'"
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid(format!(
                "host {host:?} has label {label:?}, which starts or ends with '-'"
            )));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        // "1.2.3" or "999.1.1.1": looks numeric but is no IP address.
        return Err(invalid(format!(
            "host {host:?} is neither a valid IP address nor a DNS name (its last label is numeric)"
        )));
    }
    Ok(())
}

impl FromStr for Endpoint {
    type Err = Error;

    /// Parses `host:port`, `[v6addr]:port`, `tcp://host:port`,
    /// `tls://host:port`, or a Unix socket: `unix:///abs/path`,
    /// `unix:relative/path`, `unix+tls://server_name/abs/path`.
    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.is_empty() && !path.starts_with('/') {
                return Err(invalid(format!(
                    "{s:?} has the relative path {path:?} after unix://, where only absolute ones are allowed; write unix:///abs/path, or unix:{path} for a relative path"
                )));
            }
            return Endpoint::unix(path);
        }
        if let Some(rest) = s.strip_prefix("unix+tls://") {
            let (name, path) = match rest.find('/') {
                Some(slash) => rest.split_at(slash),
                None => (rest, ""),
            };
            if name.is_empty() {
                return Err(invalid(format!(
                    "{s:?} names no server to verify; write unix+tls://server_name/abs/path"
                )));
            }
            return Endpoint::unix_tls(path, name);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            return Endpoint::unix(path);
        }
        let (scheme, rest) = match s.split_once("://") {
            Some(("tcp", rest)) => (Scheme::Tcp, rest),
            Some(("tls", rest)) => (Scheme::Tls, rest),
            Some((other, _)) => {
                return Err(invalid(format!(
                    "{s:?} has scheme {other:?}; use tcp://, tls://, unix:// or unix+tls://"
                )));
            }
            None => (Scheme::Tcp, s),
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or_else(|| {
                invalid(format!(
                    "{s:?} opens an IPv6 address with '[' but never closes it"
                ))
            })?;
            if addr.parse::<Ipv6Addr>().is_err() {
                return Err(invalid(format!(
                    "{s:?}: {addr:?} between brackets is not an IPv6 address"
                )));
            }
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| invalid(format!("{s:?} has no port; write [address]:port")))?;
            (addr, port)
        } else {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| invalid(format!("{s:?} has no port; write host:port")))?;
            if host.contains(':') {
                return Err(invalid(format!(
                    "{s:?}: put an IPv6 address in brackets, as in [::1]:6379"
                )));
            }
            (host, port)
        };
        let port: u16 = port.parse().map_err(|_| {
            invalid(format!(
                "{s:?} has port {port:?}, which is not a number from 1 to 65535"
            ))
        })?;
        Endpoint::with_scheme(scheme, host, port)
    }
}

impl fmt::Display for Endpoint {
    /// `host:port` for TCP, `tls://host:port` for TLS; IPv6 literals are
    /// bracketed; `unix:///abs/path` or `unix:relative/path` for a Unix
    /// socket, `unix+tls://server_name/abs/path` for TLS over one. The
    /// output parses back to an equal endpoint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(unix) = &self.unix {
            return match &unix.server_name {
                Some(name) => write!(f, "unix+tls://{name}{}", self.host),
                None if self.host.starts_with('/') => write!(f, "unix://{}", self.host),
                None => write!(f, "unix:{}", self.host),
            };
        }
        if self.scheme == Scheme::Tls {
            f.write_str("tls://")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        s.parse::<Endpoint>().unwrap_err().to_string()
    }

    #[test]
    fn parses_every_form() {
        let e: Endpoint = "example.com:80".parse().unwrap();
        assert_eq!(
            (e.host(), e.port(), e.scheme()),
            ("example.com", 80, Scheme::Tcp)
        );
        let e: Endpoint = "tcp://10.0.0.1:6379".parse().unwrap();
        assert_eq!(e.ip(), Some("10.0.0.1".parse().unwrap()));
        let e: Endpoint = "tls://example.com:443".parse().unwrap();
        assert!(e.is_tls());
        let e: Endpoint = "[::1]:11211".parse().unwrap();
        assert_eq!(e.host(), "::1");
        let e: Endpoint = "tls://[2001:db8::1]:443".parse().unwrap();
        assert_eq!(e.to_string(), "tls://[2001:db8::1]:443");
        assert_eq!(Endpoint::new("[::1]", 1).unwrap().host(), "::1");
        assert_eq!(
            Endpoint::new("fqdn.example.", 1).unwrap().host(),
            "fqdn.example."
        );
        assert_eq!(Endpoint::new("my_service", 1).unwrap().host(), "my_service");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "a.b:1",
            "tls://a.b:443",
            "[::1]:2",
            "tls://[::1]:3",
            "127.0.0.1:65535",
        ] {
            let e: Endpoint = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
            assert_eq!(e.to_string().parse::<Endpoint>().unwrap(), e);
        }
    }

    #[test]
    fn tls_and_tcp_are_different_keys() {
        let plain = Endpoint::new("h", 1).unwrap();
        let tls = Endpoint::tls("h", 1).unwrap();
        assert_ne!(plain, tls);
        let mut set = std::collections::HashSet::new();
        set.insert(plain.clone());
        set.insert(tls);
        set.insert(plain);
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn bad_input_names_value_and_rule() {
        assert_eq!(
            Endpoint::new("", 80).unwrap_err().to_string(),
            "invalid endpoint: the host is empty"
        );
        assert_eq!(
            Endpoint::new("bad host", 80).unwrap_err().to_string(),
            "invalid endpoint: host \"bad host\" contains white space"
        );
        assert_eq!(
            Endpoint::new("a..b", 80).unwrap_err().to_string(),
            "invalid endpoint: host \"a..b\" has an empty label"
        );
        assert_eq!(
            Endpoint::new("-a.com", 80).unwrap_err().to_string(),
            "invalid endpoint: host \"-a.com\" has label \"-a\", which starts or ends with '-'"
        );
        assert_eq!(
            Endpoint::new("a!b", 80).unwrap_err().to_string(),
            "invalid endpoint: host \"a!b\" contains '!'; a host name has only letters, digits, '-', '_' and '.'"
        );
        let long = "x".repeat(64);
        assert_eq!(
            Endpoint::new(&long, 80).unwrap_err().to_string(),
            format!(
                "invalid endpoint: host \"{long}\" has a label of 64 bytes; a label has at most 63"
            )
        );
        assert_eq!(
            Endpoint::new("999.1.1.1", 80).unwrap_err().to_string(),
            "invalid endpoint: host \"999.1.1.1\" is neither a valid IP address nor a DNS name (its last label is numeric)"
        );
        assert_eq!(
            Endpoint::new("localhost", 0).unwrap_err().to_string(),
            "invalid endpoint: port 0 of \"localhost\" is not a port a server listens on (use 1-65535)"
        );
        assert_eq!(
            err("localhost"),
            "invalid endpoint: \"localhost\" has no port; write host:port"
        );
        assert_eq!(
            err("localhost:http"),
            "invalid endpoint: \"localhost:http\" has port \"http\", which is not a number from 1 to 65535"
        );
        assert_eq!(
            err("localhost:70000"),
            "invalid endpoint: \"localhost:70000\" has port \"70000\", which is not a number from 1 to 65535"
        );
        assert_eq!(
            err("http://a:1"),
            "invalid endpoint: \"http://a:1\" has scheme \"http\"; use tcp://, tls://, unix:// or unix+tls://"
        );
        assert_eq!(
            err("::1:80"),
            "invalid endpoint: \"::1:80\": put an IPv6 address in brackets, as in [::1]:6379"
        );
        assert_eq!(
            err("[::1:80"),
            "invalid endpoint: \"[::1:80\" opens an IPv6 address with '[' but never closes it"
        );
        assert_eq!(
            err("[zz]:80"),
            "invalid endpoint: \"[zz]:80\": \"zz\" between brackets is not an IPv6 address"
        );
        assert_eq!(
            err("[::1]80"),
            "invalid endpoint: \"[::1]80\" has no port; write [address]:port"
        );
    }
}
