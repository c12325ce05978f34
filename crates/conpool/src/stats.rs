//! Statistics: the one place the pool counts.
//!
//! Each endpoint's pool owns a `Counters` of monotonically increasing
//! counts (created, reused, closed by reason, failed dials), bumped only
//! through the methods here so that every path that opens, hands out or
//! closes a connection counts it the same way. They live in the endpoint's state,
//! behind the lock every such path holds anyway: plain integers, not
//! atomics, so counting costs no extra contended cache line. The gauges
//! (active, idle, dialing, waiting) are not stored twice: they are read
//! from the same state when a snapshot is taken.
//!
//! The invariant the test suite checks after every scenario: when nothing is
//! in flight, `total_created - total_closed == active + idle`.

use std::fmt;

/// Why a connection was closed; given to the `on_connection_closed` hook and
/// written to the debug log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum CloseReason {
    /// Older than `max_connection_lifetime`.
    LifetimeExpired,
    /// Idle for longer than `max_idle_time`.
    IdleExpired,
    /// Handed out `max_connection_uses` times.
    UsesExhausted,
    /// The configured health check returned `false`.
    HealthCheckFailed,
    /// The lease's owner called [`PooledConnection::discard`](crate::PooledConnection::discard),
    /// or `with_connection`'s closure returned `Err`.
    Discarded,
    /// A read or write on the lease returned an error.
    IoError,
    /// The peer closed the connection: a read on the lease, the look at
    /// the stream [`release`](crate::PooledConnection::release) takes, or
    /// the liveness check of an idle connection saw end of stream (or a TLS
    /// close_notify).
    PeerClosed,
    /// The liveness check found bytes on an idle connection that nobody
    /// asked for (a late reply, or a server's goodbye message), or
    /// [`release`](crate::PooledConnection::release) found bytes the caller
    /// left unread.
    UnexpectedData,
    /// The liveness check of an idle connection, or the look at the stream
    /// [`release`](crate::PooledConnection::release) takes, saw an error,
    /// such as a reset, or found the socket's runtime shut down.
    ProbeFailed,
    /// Closed to keep the pool within `max_idle_total` or
    /// `max_connections_total`: it was the least recently used idle one.
    PoolLimit,
    /// The lease was given back with an operation it began still pending:
    /// dropped with a read, write or flush pending, or
    /// [released](crate::PooledConnection::release) with a write or flush
    /// pending. The stream may hold half a request or an unread reply.
    Cancelled,
    /// The lease was dropped while its task was panicking.
    Panicked,
    /// [`Pool::clear_endpoint`](crate::Pool::clear_endpoint) was called.
    Cleared,
    /// [`Pool::close`](crate::Pool::close) was called.
    PoolClosed,
    /// A [`Protocol`](crate::Protocol)'s connection could take no more
    /// requests: the protocol said so (hyper's `SendRequest` closed, an
    /// HTTP/2 GOAWAY), or the task driving it ended (a Redis connection
    /// whose server went away).
    NotReady,
}

impl CloseReason {
    /// Whether the close means the connection failed while in use, which
    /// counts in [`Stats::errors`].
    pub fn is_error(self) -> bool {
        matches!(
            self,
            CloseReason::IoError | CloseReason::Cancelled | CloseReason::Panicked
        )
    }

    /// A short name for logs and metrics, such as `"idle_expired"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::LifetimeExpired => "lifetime_expired",
            CloseReason::IdleExpired => "idle_expired",
            CloseReason::UsesExhausted => "uses_exhausted",
            CloseReason::HealthCheckFailed => "health_check_failed",
            CloseReason::Discarded => "discarded",
            CloseReason::IoError => "io_error",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::UnexpectedData => "unexpected_data",
            CloseReason::ProbeFailed => "probe_failed",
            CloseReason::PoolLimit => "pool_limit",
            CloseReason::Cancelled => "cancelled",
            CloseReason::Panicked => "panicked",
            CloseReason::Cleared => "cleared",
            CloseReason::PoolClosed => "pool_closed",
            CloseReason::NotReady => "not_ready",
        }
    }
}

impl CloseReason {
    /// Every reason, in a fixed order.
    pub const ALL: [CloseReason; 15] = [
        CloseReason::LifetimeExpired,
        CloseReason::IdleExpired,
        CloseReason::UsesExhausted,
        CloseReason::HealthCheckFailed,
        CloseReason::Discarded,
        CloseReason::IoError,
        CloseReason::PeerClosed,
        CloseReason::UnexpectedData,
        CloseReason::ProbeFailed,
        CloseReason::PoolLimit,
        CloseReason::Cancelled,
        CloseReason::Panicked,
        CloseReason::Cleared,
        CloseReason::PoolClosed,
        CloseReason::NotReady,
    ];

    /// `ALL` lists the variants in declaration order, so the discriminant
    /// is the index.
    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of one endpoint's pool.
///
/// ```
/// # async fn demo(pool: conpool::Pool, ep: conpool::Endpoint) {
/// let s = pool.stats(&ep);
/// println!("{} active, {} idle, {} reused of {} created", s.active, s.idle, s.total_reused, s.total_created);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections leased out right now.
    pub active: usize,
    /// Connections idle in the pool right now.
    pub idle: usize,
    /// Connections opened since the pool started.
    pub total_created: u64,
    /// Times an idle connection was handed out again.
    pub total_reused: u64,
    /// Connections closed since the pool started.
    pub total_closed: u64,
    /// Failed dials (after their retries) plus connections that failed while
    /// leased (I/O error, cancelled I/O, panic).
    pub errors: u64,
    /// Callers waiting for a connection right now.
    pub waiting: usize,
    /// Connections being dialed right now.
    pub dialing: usize,
    /// Leases sharing connections right now, for a shared protocol's
    /// endpoint (each of its active connections carries one or more); 0
    /// for exclusive ones, whose leases are `active`.
    pub shares: usize,
    /// The [`Protocol`](crate::Protocol)'s name for an endpoint of a
    /// [`ProtocolPool`](crate::ProtocolPool), such as `"http1"`; `None`
    /// for the byte-stream pool's.
    pub protocol: Option<&'static str>,
    /// The endpoint's circuit breaker now (in totals across endpoints,
    /// the most open of them).
    pub breaker: BreakerState,
    /// Times the endpoint's circuit breaker opened (a failed probe's
    /// reopening included).
    pub breaker_trips: u64,
    closed_by: [u64; CloseReason::ALL.len()],
}

impl Stats {
    /// How many connections were closed for `reason`; these add up to
    /// [`total_closed`](Stats::total_closed).
    pub fn closed_for(&self, reason: CloseReason) -> u64 {
        self.closed_by[reason.index()]
    }

    /// Adds another snapshot's figures to these (for totals across
    /// endpoints).
    pub fn add(&mut self, other: &Stats) {
        self.active += other.active;
        self.idle += other.idle;
        self.waiting += other.waiting;
        self.dialing += other.dialing;
        self.shares += other.shares;
        self.total_created += other.total_created;
        self.total_reused += other.total_reused;
        self.total_closed += other.total_closed;
        self.errors += other.errors;
        self.breaker = self.breaker.max(other.breaker);
        self.breaker_trips += other.breaker_trips;
        for (mine, theirs) in self.closed_by.iter_mut().zip(other.closed_by) {
            *mine += theirs;
        }
    }
}

/// Where an endpoint's circuit breaker stands (see
/// [`ConfigBuilder::breaker_failures`](crate::ConfigBuilder::breaker_failures)).
/// Ordered from closed to open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum BreakerState {
    /// Dials go ahead (also: the breaker is off).
    #[default]
    Closed,
    /// The open time is over and one probe dial is under way; other gets
    /// that would dial fail fast.
    HalfOpen,
    /// Gets that would dial fail fast with
    /// [`Error::CircuitOpen`](crate::Error::CircuitOpen).
    Open,
}

/// The gauges of an endpoint's pool at one moment; carried by
/// [`Error::AcquireTimeout`](crate::Error::AcquireTimeout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolState {
    /// Connections leased out.
    pub active: usize,
    /// Idle connections.
    pub idle: usize,
    /// Connections being dialed.
    pub dialing: usize,
    /// Callers waiting.
    pub waiting: usize,
}

/// The cumulative counters of one endpoint, kept under its lock.
///
/// Only what every endpoint counts is kept inline. Closes and failed dials
/// are counted in a box made at the first of them: an endpoint that never
/// closed anything (most of a pool with many endpoints, most of the time)
/// carries one pointer instead of a counter per reason. The totals of
/// closes and of errors are not kept at all: they are sums of the per-reason
/// counts, taken when a snapshot is.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    created: u64,
    reused: u64,
    endings: Option<Box<Endings>>,
}

/// How connections and dials ended: closes by reason (an idle timeout as much
/// as an error), and dials that failed.
#[derive(Debug, Default)]
struct Endings {
    closed_by: [u64; CloseReason::ALL.len()],
    dials_failed: u64,
}

impl Counters {
    pub(crate) fn created(&mut self) {
        self.created += 1;
    }

    pub(crate) fn reused(&mut self) {
        self.reused += 1;
    }

    /// Takes back a reuse counted for a connection granted to a waiter that
    /// left before taking it.
    pub(crate) fn unreused(&mut self) {
        self.reused -= 1;
    }

    pub(crate) fn closed(&mut self, reason: CloseReason) {
        self.endings.get_or_insert_default().closed_by[reason.index()] += 1;
    }

    pub(crate) fn dial_failed(&mut self) {
        self.endings.get_or_insert_default().dials_failed += 1;
    }

    pub(crate) fn snapshot(&self, state: PoolState) -> Stats {
        let (closed_by, dials_failed) = self
            .endings
            .as_deref()
            .map_or(Default::default(), |f| (f.closed_by, f.dials_failed));
        let errors = CloseReason::ALL
            .iter()
            .filter(|reason| reason.is_error())
            .map(|reason| closed_by[reason.index()])
            .sum::<u64>();
        Stats {
            active: state.active,
            idle: state.idle,
            dialing: state.dialing,
            waiting: state.waiting,
            total_created: self.created,
            total_reused: self.reused,
            total_closed: closed_by.iter().sum(),
            errors: dials_failed + errors,
            shares: 0,
            protocol: None,
            breaker: BreakerState::Closed,
            breaker_trips: 0,
            closed_by,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_at_its_index() {
        for (i, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason}");
        }
    }
}
