//! Happy Eyeballs (RFC 8305): racing a host's addresses instead of waiting
//! for each in turn to fail.
//!
//! This module owns the order addresses are tried in ([`order`]: the
//! address that last worked for the endpoint first, then the families
//! interleaved), the race itself (`race`), and the memory of which
//! address last worked (`LastGood`).
//!
//! The race starts an attempt on the first address, and another on the
//! next address every `happy_eyeballs_delay` (RFC 8305's Connection
//! Attempt Delay, 250 ms by default), or at once when every attempt
//! started so far has failed. The first attempt to finish wins: for a TLS
//! endpoint an attempt is the connect and the handshake, so the winner is
//! the first whose handshake completes. The others are dropped when the
//! race ends, which closes their sockets then and there: the attempts run
//! inside the race's own future, not in tasks, so none is left behind.
//!
//! Every attempt ends by the dial's deadline (`connect_timeout` from the
//! dial's start). With no delay (one address at a time), each address gets
//! its own share of the time left instead, so that one that hangs leaves
//! the next time to connect: the time left divided by the addresses left,
//! but at least 500 ms (or all that is left). An error that retrying cannot
//! fix (a certificate that does not verify) ends the race at once.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::{Instant, Sleep};

use super::DialError;
use crate::Endpoint;

/// The shortest share of the deadline an address gets when addresses are
/// tried one at a time, unless less is left. It lets a SYN and its answer
/// cross any but a satellite path. Go's `net.Dialer` splits its deadline
/// the same way with a 2 s floor; conpool's is lower because pools for
/// caches and databases often run with connect timeouts of a second or
/// less, where a 2 s floor would let a black-holed first address of two
/// take the whole attempt again.
const MIN_ADDRESS_SHARE: Duration = Duration::from_millis(500);

/// The most endpoints [`LastGood`] remembers; past it, it starts afresh
/// (it is only a hint, and a pool with more endpoints than this dials each
/// rarely).
const LAST_GOOD_CAPACITY: usize = 4096;

/// The order to try `addrs` in: `preferred` first when it is one of them,
/// then the address families interleaved (one of the other family after
/// each), each family in the resolver's order, as RFC 8305 § 4 asks.
///
/// ```
/// use std::net::SocketAddr;
/// use conpool::dial::happy_eyeballs::order;
///
/// let addrs: Vec<SocketAddr> = ["[::1]:80", "[::2]:80", "127.0.0.1:80", "127.0.0.2:80"]
///     .iter().map(|a| a.parse().unwrap()).collect();
/// let tried: Vec<String> = order(&addrs, None).iter().map(|a| a.to_string()).collect();
/// assert_eq!(tried, ["[::1]:80", "127.0.0.1:80", "[::2]:80", "127.0.0.2:80"]);
///
/// // The address that last worked goes first, and the other family next.
/// let tried: Vec<String> = order(&addrs, Some(addrs[3])).iter().map(|a| a.to_string()).collect();
/// assert_eq!(tried, ["127.0.0.2:80", "[::1]:80", "127.0.0.1:80", "[::2]:80"]);
/// ```
pub fn order(addrs: &[SocketAddr], preferred: Option<SocketAddr>) -> Vec<SocketAddr> {
    let mut rest: Vec<SocketAddr> = addrs.to_vec();
    let mut ordered = Vec::with_capacity(rest.len());
    if let Some(first) = preferred.and_then(|p| rest.iter().position(|a| *a == p)) {
        ordered.push(rest.remove(first));
    }
    let (mut v6, mut v4): (Vec<_>, Vec<_>) = rest.into_iter().partition(SocketAddr::is_ipv6);
    v6.reverse();
    v4.reverse();
    // The family to take from next: the other one than the last taken, or
    // the resolver's first family to begin with.
    let mut want_v6 = match ordered.last() {
        Some(last) => !last.is_ipv6(),
        None => addrs.first().is_some_and(SocketAddr::is_ipv6),
    };
    loop {
        let next = if want_v6 {
            v6.pop().or_else(|| v4.pop())
        } else {
            v4.pop().or_else(|| v6.pop())
        };
        let Some(addr) = next else { break };
        want_v6 = !addr.is_ipv6();
        ordered.push(addr);
    }
    ordered
}

/// Races `attempt` over `addrs` (already in [`order`]), starting one every
/// `delay` (`None` or zero: one at a time), each ending by `deadline` (or
/// its share of it, one at a time). Returns the winner and its address, or
/// the error of the last attempt to fail; see the [module docs](self).
///
/// `attempt` gets the address and the instant by which it must end.
pub(crate) async fn race<'a, T, F>(
    addrs: &[SocketAddr],
    delay: Option<Duration>,
    deadline: Option<Instant>,
    attempt: F,
) -> Result<(SocketAddr, T), DialError>
where
    F: Fn(
        SocketAddr,
        Option<Instant>,
    ) -> Pin<Box<dyn Future<Output = Result<T, DialError>> + Send + 'a>>,
{
    let delay = delay.filter(|d| !d.is_zero());
    let mut waiting = addrs.iter().copied();
    let mut running = Vec::new();
    let mut stagger: Option<Pin<Box<Sleep>>> = None;
    let mut last_err: Option<DialError> = None;
    let mut start_next = true;
    std::future::poll_fn(|cx| {
        loop {
            if std::mem::take(&mut start_next) {
                let left = waiting.len();
                if let Some(addr) = waiting.next() {
                    match attempt_deadline(deadline, delay, left) {
                        Some(until) => {
                            running.push((addr, attempt(addr, until)));
                            stagger = delay
                                .filter(|_| waiting.len() > 0)
                                .map(|d| Box::pin(tokio::time::sleep(d)));
                        }
                        None => {
                            // Out of time: what was not started never is.
                            let not_tried = waiting.len() + 1;
                            waiting.by_ref().for_each(drop);
                            if running.is_empty() {
                                return Poll::Ready(Err(last_err.take().unwrap_or_else(|| {
                                    out_of_time(not_tried, addrs.len())
                                })));
                            }
                        }
                    }
                }
            }
            let mut i = 0;
            while i < running.len() {
                match running[i].1.as_mut().poll(cx) {
                    Poll::Ready(Ok(won)) => return Poll::Ready(Ok((running[i].0, won))),
                    Poll::Ready(Err(err)) => {
                        let (addr, _) = running.swap_remove(i);
                        if !err.is_retryable() {
                            return Poll::Ready(Err(err));
                        }
                        tracing::debug!(%addr, error = %err.source, "connect to one address failed");
                        last_err = Some(err);
                        // The next address starts at once when nothing
                        // else is running (or, racing, always: RFC 8305
                        // § 5 starts the next attempt on a failure).
                        start_next = delay.is_some() || running.is_empty();
                    }
                    Poll::Pending => i += 1,
                }
            }
            if stagger
                .as_mut()
                .is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
            {
                stagger = None;
                start_next = true;
            }
            if start_next && waiting.len() > 0 {
                continue;
            }
            if running.is_empty() {
                return Poll::Ready(Err(last_err.take().unwrap_or_else(|| {
                    DialError::connect(io::Error::new(
                        io::ErrorKind::NotFound,
                        "no address to connect to",
                    ))
                })));
            }
            start_next = false;
            return Poll::Pending;
        }
    })
    .await
}

/// The instant by which an attempt started now must end: the dial's
/// deadline when racing, else this address's share of the time left with
/// `left` addresses (this one included) still to try; `None` when the
/// deadline has passed.
fn attempt_deadline(
    deadline: Option<Instant>,
    delay: Option<Duration>,
    left: usize,
) -> Option<Option<Instant>> {
    let Some(deadline) = deadline else {
        return Some(None);
    };
    let now = Instant::now();
    let time_left = deadline.saturating_duration_since(now);
    if time_left.is_zero() {
        return None;
    }
    if delay.is_some() {
        return Some(Some(deadline));
    }
    Some(Some(now + address_share(time_left, left)))
}

/// The time the next address gets when `left` remains for `addresses`
/// (at least one) addresses, one at a time.
fn address_share(left: Duration, addresses: usize) -> Duration {
    let even = left / u32::try_from(addresses).unwrap_or(u32::MAX);
    even.max(MIN_ADDRESS_SHARE.min(left))
}

fn out_of_time(not_tried: usize, of: usize) -> DialError {
    DialError::connect(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the connect deadline passed with {not_tried} of {of} addresses not tried"),
    ))
}

/// Which address last worked for each endpoint, to try it first next time.
#[derive(Debug, Default)]
pub(crate) struct LastGood {
    by_endpoint: Mutex<HashMap<Endpoint, SocketAddr>>,
}

impl LastGood {
    pub(crate) fn get(&self, endpoint: &Endpoint) -> Option<SocketAddr> {
        self.by_endpoint.lock().get(endpoint).copied()
    }

    pub(crate) fn set(&self, endpoint: &Endpoint, addr: SocketAddr) {
        let mut map = self.by_endpoint.lock();
        if map.get(endpoint) == Some(&addr) {
            return;
        }
        if map.len() >= LAST_GOOD_CAPACITY {
            map.clear();
        }
        map.insert(endpoint.clone(), addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
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

    #[test]
    fn families_alternate_starting_with_the_resolvers_first() {
        let list = addrs(&["127.0.0.1:1", "127.0.0.2:1", "127.0.0.3:1", "[::1]:1"]);
        assert_eq!(
            order(&list, None),
            addrs(&["127.0.0.1:1", "[::1]:1", "127.0.0.2:1", "127.0.0.3:1"])
        );
        let one_family = addrs(&["127.0.0.1:1", "127.0.0.2:1"]);
        assert_eq!(order(&one_family, None), one_family);
        assert_eq!(
            order(&one_family, Some(one_family[1])),
            addrs(&["127.0.0.2:1", "127.0.0.1:1"])
        );
        let gone: SocketAddr = "127.0.0.9:1".parse().unwrap();
        assert_eq!(order(&one_family, Some(gone)), one_family);
    }
}
