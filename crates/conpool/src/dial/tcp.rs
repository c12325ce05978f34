//! TCP connect: one address after another under one deadline, `TCP_NODELAY`
//! on.
//!
//! A host's first address may drop SYNs (a broken IPv6 route is the usual
//! case), and then its connect hangs until someone gives up. So that such an
//! address cannot use up the whole deadline, each address gets a share of
//! the time left: the time left divided by the number of addresses left, but
//! at least 500 ms (or all that is left, if less). The 500 ms floor lets a
//! SYN and its answer cross any but a satellite path; when shares would be
//! shorter (many addresses, a short deadline), the first addresses keep 500
//! ms each and the last ones may get no time at all. Go's `net.Dialer`
//! splits its deadline the same way, with a 2 s floor; conpool's is lower
//! because connection pools for caches and databases often run with connect
//! timeouts of a second or less, where a 2 s floor would let a black-holed
//! first address of two take the whole attempt again.
//!
//! Request/response protocols write small messages and wait for the reply;
//! Nagle's algorithm would hold each one back for an ACK, so it is off.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// The shortest share of the deadline an address gets, unless less is left.
const MIN_ADDRESS_SHARE: Duration = Duration::from_millis(500);

/// Connects to the first address that accepts, trying them in order; the
/// error is the last address's.
///
/// With a `deadline`, each address gets its share of the time left (see the
/// [module docs](self)), and the connect fails with
/// [`io::ErrorKind::TimedOut`] once the deadline has passed. With `None`,
/// each address waits as long as the OS does.
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
    let mut last_err = None;
    for (tried, addr) in addrs.iter().enumerate() {
        let connected = match deadline {
            None => TcpStream::connect(addr).await,
            Some(deadline) => {
                let now = Instant::now();
                let left = deadline.saturating_duration_since(now);
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the connect deadline passed with {} of {} addresses not tried",
                            addrs.len() - tried,
                            addrs.len()
                        ),
                    ));
                }
                let share = address_share(left, addrs.len() - tried);
                tokio::time::timeout_at(now + share, TcpStream::connect(addr))
                    .await
                    .unwrap_or_else(|_| {
                        Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("connect to {addr} timed out after {share:?}"),
                        ))
                    })
            }
        };
        match connected {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(err) => {
                tracing::debug!(%addr, error = %err, "connect to one address failed");
                last_err = Some(err);
            }
        }
    }
    Err(last_err
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to connect to")))
}

/// The time the next address gets when `left` remains for `addresses`
/// (at least one) addresses.
fn address_share(left: Duration, addresses: usize) -> Duration {
    let even = left / u32::try_from(addresses).unwrap_or(u32::MAX);
    even.max(MIN_ADDRESS_SHARE.min(left))
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn each_address_gets_the_time_left_divided_by_the_addresses_left() {
        assert_eq!(address_share(ms(10_000), 2), ms(5_000));
        assert_eq!(address_share(ms(1_000), 2), ms(500));
        assert_eq!(address_share(ms(3_000), 1), ms(3_000));
    }

    #[test]
    fn a_share_is_at_least_500ms_or_all_that_is_left() {
        assert_eq!(address_share(ms(1_000), 4), ms(500));
        assert_eq!(address_share(ms(300), 2), ms(300));
        assert_eq!(address_share(ms(10_000), usize::MAX), ms(500));
    }
}
