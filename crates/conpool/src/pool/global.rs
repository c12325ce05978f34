//! Limits across endpoints: `max_connections_total` and `max_idle_total`.
//!
//! Per-endpoint state stays behind each endpoint's own lock; what the
//! endpoints share is two atomic counts and, only while some endpoint is
//! held back by the total limit, a FIFO of those endpoints. Nothing here is
//! touched when neither limit is set, so the common configuration pays
//! nothing for it.
//!
//! Lock order: an endpoint's lock may be held while taking the `starved`
//! queue's lock, never the other way round, and no two endpoint locks are
//! ever held at once. Work that touches another endpoint (waking it,
//! evicting its least recently used idle connection) runs with no endpoint
//! lock held.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::EndpointPool;
use crate::Config;

pub(crate) struct Global {
    max_open: Option<usize>,
    max_idle: Option<usize>,
    /// Connections leased, idle or being dialed, across endpoints.
    open: AtomicUsize,
    /// Idle connections across endpoints (counted only with `max_idle`).
    idle: AtomicUsize,
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

    /// Counts idle connections added (positive) or removed (negative).
    #[inline]
    pub(crate) fn idle_changed(&self, added: usize, removed: usize) {
        if self.max_idle.is_some() {
            self.idle.fetch_add(added, Ordering::AcqRel);
            self.idle.fetch_sub(removed, Ordering::AcqRel);
        }
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
