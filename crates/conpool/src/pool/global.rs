//! Limits across endpoints: `max_connections_total` and `max_idle_total`.
//!
//! Per-endpoint state stays behind each endpoint's own lock; what the
//! endpoints share is two atomic counts, the order in which idle
//! connections came back across endpoints (so that making room closes the
//! least recently used one without looking at every endpoint), and, only
//! while some endpoint is held back by the total limit, a FIFO of those
//! endpoints. Nothing here is touched when neither limit is set, so the
//! common configuration pays nothing for it.
//!
//! Lock order: an endpoint's lock may be held while taking the `starved`
//! queue's lock or the idle order's, never the other way round, and no two
//! endpoint locks are ever held at once. Work that touches another endpoint
//! (waking it, evicting its least recently used idle connection) runs with
//! no endpoint lock held.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::time::Instant;

use super::EndpointPool;
use crate::Config;

pub(crate) struct Global {
    max_open: Option<usize>,
    max_idle: Option<usize>,
    /// Connections leased, idle or being dialed, across endpoints.
    open: AtomicUsize,
    /// Idle connections across endpoints (counted only with a limit).
    idle: AtomicUsize,
    /// Idle connections across endpoints as they came back, oldest first
    /// (kept only with a limit): one entry per return, naming the
    /// connection by its return order ([`Conn::return_order`]) and its
    /// endpoint. An entry goes stale when its connection leaves idle; stale
    /// ones are dropped when eviction reaches them, or all at once when
    /// they come to outnumber the idle connections, so that eviction and
    /// upkeep cost O(1) per return, amortised, whatever the number of
    /// endpoints.
    ///
    /// [`Conn::return_order`]: super::Conn::return_order
    idle_order: Mutex<VecDeque<(Instant, Weak<EndpointPool>)>>,
    /// Endpoints with callers waiting for a slot under the total limit.
    starved: Mutex<VecDeque<Weak<EndpointPool>>>,
}

impl Global {
    pub(crate) fn new(config: &Config) -> Self {
        Global {
            max_open: config.max_connections_total(),
            max_idle: config.max_idle_total(),
            open: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            idle_order: Mutex::new(VecDeque::new()),
            starved: Mutex::new(VecDeque::new()),
        }
    }

    /// Takes a slot under `max_connections_total`; always succeeds without
    /// the limit.
    #[inline]
    pub(crate) fn try_take(&self) -> bool {
        let Some(max) = self.max_open else {
            return true;
        };
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back `n` slots. Returns whether an endpoint may be waiting for
    /// one (the caller then calls [`wake_starved`](Self::wake_starved) with
    /// no endpoint lock held).
    #[inline]
    pub(crate) fn put_back(&self, n: usize) -> bool {
        if self.max_open.is_none() || n == 0 {
            return false;
        }
        self.open.fetch_sub(n, Ordering::AcqRel);
        !self.starved.lock().is_empty()
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Whether a limit is set, and so the idle count and order are kept.
    #[inline]
    fn limited(&self) -> bool {
        self.max_open.is_some() || self.max_idle.is_some()
    }

    /// Counts idle connections added (positive) or removed (negative).
    #[inline]
    pub(crate) fn idle_changed(&self, added: usize, removed: usize) {
        if self.limited() {
            self.idle.fetch_add(added, Ordering::AcqRel);
            self.idle.fetch_sub(removed, Ordering::AcqRel);
        }
    }

    /// Notes that a connection of `endpoint` that came back at `at` went
    /// idle (called under that endpoint's lock, after
    /// [`idle_changed`](Self::idle_changed)). Returns whether stale entries
    /// now outnumber the idle connections: the caller then calls
    /// [`forget_stale_idle`](Self::forget_stale_idle) with no endpoint
    /// lock held.
    #[inline]
    pub(crate) fn went_idle(&self, at: Instant, endpoint: &Arc<EndpointPool>) -> bool {
        if !self.limited() {
            return false;
        }
        let mut order = self.idle_order.lock();
        order.push_back((at, Arc::downgrade(endpoint)));
        order.len() > 2 * self.idle.load(Ordering::Acquire) + 32
    }

    /// The entry of the least recently returned idle connection, taken out
    /// of the order; it may be stale.
    pub(crate) fn pop_oldest_idle(&self) -> Option<(Instant, Weak<EndpointPool>)> {
        self.idle_order.lock().pop_front()
    }

    /// Drops the stale entries of the idle order. Entries added meanwhile
    /// are newer than every one looked at, so they go after those kept.
    pub(crate) fn forget_stale_idle(&self) {
        let old = std::mem::take(&mut *self.idle_order.lock());
        let kept: VecDeque<_> = old
            .into_iter()
            .filter(|(at, endpoint)| endpoint.upgrade().is_some_and(|e| e.holds_idle(*at)))
            .collect();
        let mut order = self.idle_order.lock();
        let newer = std::mem::replace(&mut *order, kept);
        order.extend(newer);
    }

    /// Whether the pool holds more idle connections than `max_idle_total`.
    #[inline]
    pub(crate) fn over_idle_limit(&self) -> bool {
        self.max_idle
            .is_some_and(|max| self.idle.load(Ordering::Acquire) > max)
    }

    /// Whether some endpoint is held back by the total limit: then a
    /// connection coming back is closed to make room rather than kept idle.
    #[inline]
    pub(crate) fn has_starved(&self) -> bool {
        self.max_open.is_some() && self.any_starved()
    }

    #[inline(never)]
    fn any_starved(&self) -> bool {
        !self.starved.lock().is_empty()
    }

    /// Queues an endpoint held back by the total limit.
    pub(crate) fn register_starved(&self, endpoint: &Arc<EndpointPool>) {
        self.starved.lock().push_back(Arc::downgrade(endpoint));
    }

    /// Offers freed slots to the endpoints held back, in the order they
    /// were held back, until one takes a slot or each was asked once.
    pub(crate) fn wake_starved(&self) {
        let rounds = self.starved.lock().len();
        for _ in 0..rounds {
            let Some(weak) = self.starved.lock().pop_front() else {
                return;
            };
            if let Some(endpoint) = weak.upgrade() {
                if endpoint.serve_starved() {
                    return;
                }
            }
        }
    }
}
