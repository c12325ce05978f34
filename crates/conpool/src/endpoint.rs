//! Endpoints: the keys of the pool.
//!
//! An [`Endpoint`] names one server the pool dials: a host (a DNS name or an
//! IP literal), a port, and whether the connection speaks TLS. Each distinct
//! endpoint has its own per-endpoint pool, limit and statistics, so a TLS
//! endpoint and a plain one with the same host and port are different keys.
//!
//! Endpoints are validated once, when they are built, so that the pool never
//! has to cope with a host name it cannot resolve for syntactic reasons.
//! Cloning is cheap (the host is reference counted).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

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
/// # Ok::<(), conpool::Error>(())
/// ```
#[derive(Clone)]
pub struct Endpoint {
    host: Arc<str>,
    port: u16,
    scheme: Scheme,
    /// The hash of the three fields above, computed once with a per-process
    /// random key (so a hostile set of host names cannot flood one bucket),
    /// so that finding an endpoint's pool hashes eight bytes, not a string.
    hash: u64,
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.port == other.port
            && self.scheme == other.scheme
            && (Arc::ptr_eq(&self.host, &other.host) || self.host == other.host)
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
    /// By host, then port, then scheme.
    fn cmp(&self, other: &Self) -> Ordering {
        (&*self.host, self.port, self.scheme).cmp(&(&*other.host, other.port, other.scheme))
    }
}

/// Hashes each endpoint once, at construction, with a key chosen per process.
fn endpoint_hash(host: &str, port: u16, scheme: Scheme) -> u64 {
    static KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    KEY.hash_one((host, port, scheme))
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
            hash: endpoint_hash(host, port, scheme),
            host: Arc::from(host),
            port,
            scheme,
        })
    }

    /// The host name or IP literal (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
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
        self.host.parse().ok()
    }
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

    /// Parses `host:port`, `[v6addr]:port`, `tcp://host:port` or
    /// `tls://host:port`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let (scheme, rest) = match s.split_once("://") {
            Some(("tcp", rest)) => (Scheme::Tcp, rest),
            Some(("tls", rest)) => (Scheme::Tls, rest),
            Some((other, _)) => {
                return Err(invalid(format!(
                    "{s:?} has scheme {other:?}; use tcp:// or tls://"
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
    /// bracketed. The output parses back to an equal endpoint.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
            "invalid endpoint: \"http://a:1\" has scheme \"http\"; use tcp:// or tls://"
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
