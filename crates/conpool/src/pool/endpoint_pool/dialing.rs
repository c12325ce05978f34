//! Dialing for an endpoint: a dial runs in a task of its own, holding a
//! dialing slot that is given back however the task ends.
//!
//! A caller that starts a dial may give up before it finishes; the dial
//! goes on, and its connection goes to the next waiter or to idle
//! ([`DialReceiver`]). A dial task that dies without finishing (a custom
//! dialer that panics, a runtime that shuts down) frees its slot when its
//! [`DialSlot`] drops. A dial needs a runtime to run on: a get polled
//! outside one fails instead ([`Error::NoRuntime`]). Warm-up
//! dials for `min_idle_per_endpoint` go the same way with nobody waiting,
//! and a failed one backs off the next.

use std::panic::Location;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Conn, EndpointPool, Held};
use crate::deadline::later;
use crate::dial::backoff_delay;
use crate::{CloseReason, Error, PooledConnection};

impl EndpointPool {
    /// Dials in a task of its own (this caller holds a dialing slot) and
    /// waits for the result. If this caller goes away, the task still
    /// finishes and the connection goes to the next waiter or to idle.
    pub(super) async fn dial(
        self: &Arc<Self>,
        caller: &'static Location<'static>,
    ) -> Result<PooledConnection, Error> {
        if let Err(refused) = self.admit_dial() {
            self.return_unused_dial(false);
            return Err(refused);
        }
        let (tx, rx) = oneshot::channel();
        if !self.spawn_dial(tx, false) {
            self.breaker_dial_abandoned();
            self.return_unused_dial(false);
            return Err(self.no_runtime_error());
        }
        let mut rx = DialReceiver {
            pool: self.clone(),
            rx,
        };
        match (&mut rx.rx).await {
            Ok(Ok(conn)) => Ok(self.clone().lease(conn, caller)),
            Ok(Err(err)) => Err(err),
            // The dial task ended unfinished: a custom dialer panicked, or
            // the runtime shut down under it. The slot's guard gave the
            // slot back.
            Err(_) => Err(Error::ConnectionFailed {
                protocol: None,
                endpoint: self.endpoint.clone(),
                attempts: 1,
                source: std::io::Error::other(
                    "the dial task ended unfinished (the dialer panicked, or its runtime shut down)",
                ),
            }),
        }
    }

    /// Starts a dial into a dialing slot this caller already holds, on the
    /// current runtime. With `warm`, nobody waits for it (the maintenance
    /// task keeping `min_idle_per_endpoint`): the connection goes to a
    /// waiter or idle, and a failure backs off the next warm-up. Returns
    /// `false`, and leaves the slot to the caller, when there is no runtime
    /// here to dial on.
    #[must_use = "without a runtime the caller must give the slot back"]
    pub(super) fn spawn_dial(
        self: &Arc<Self>,
        tx: oneshot::Sender<Result<Conn, Error>>,
        warm: bool,
    ) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let slot = DialSlot(Some(self.clone()));
        // A clear while the dial runs must reach its connection too: the
        // dial belongs to the generation it started in.
        let generation = self.lock().generation;
        runtime.spawn(async move {
            let pool = slot
                .0
                .as_ref()
                .expect("the slot is held until the dial ends");
            let ctx = &pool.ctx;
            let result = ctx.connect(&pool.endpoint).await;
            slot.finish(result, generation, tx, warm);
        });
        true
    }

    fn finish_dial(
        self: &Arc<Self>,
        result: Result<Held, Error>,
        generation: u32,
        tx: oneshot::Sender<Result<Conn, Error>>,
        warm: bool,
    ) {
        match result {
            Ok(held) => {
                let now = Instant::now();
                tracing::debug!(endpoint = %self.endpoint, warm, "connection created");
                self.config().notify_created(&self.endpoint);
                let (conn, starved) = {
                    let mut st = self.lock();
                    st.counters.created();
                    st.dialing -= 1;
                    if let Some(cold) = st.cold.as_mut() {
                        cold.breaker.dial_succeeded();
                        cold.last_dial_error = None;
                        if warm {
                            cold.warm_failures = 0;
                            cold.warm_retry_at = None;
                        }
                    }
                    let conn = Conn::new(held, now, generation, self.config());
                    if generation != st.generation && !st.closed {
                        // Cleared while it was being dialed: it may go to
                        // the address the clear was about (a failover).
                        // Closed, and dialed again into the same slot for
                        // whoever waits for it.
                        st.counters.closed(CloseReason::Cleared);
                        // The redial keeps the slot this dial held.
                        st.dialing += 1;
                        drop(st);
                        self.close_conns(vec![(conn, CloseReason::Cleared)]);
                        // This runs in the dial's task, so on a runtime;
                        // should it not, the waiting caller sees its dial
                        // end without a connection.
                        if !self.spawn_dial(tx, warm) {
                            self.return_unused_dial(false);
                        }
                        return;
                    }
                    if st.closed {
                        st.counters.closed(CloseReason::PoolClosed);
                        drop(st);
                        self.close_all(vec![(conn, CloseReason::PoolClosed)]);
                        let _ = tx.send(Err(Error::PoolClosed));
                        return;
                    }
                    st.active += 1;
                    // The dial cap may have held a waiter back.
                    (conn, self.grant_free_slot(&mut st))
                };
                if let Err(Ok(conn)) = tx.send(Ok(conn)) {
                    // The caller gave up: the next waiter or idle gets it.
                    self.release(conn, None);
                }
                if starved && self.lock().waiting() > 0 {
                    // The total holds back waiters the dial cap held back
                    // before: make room as `begin_acquire` does, which
                    // wakes this endpoint.
                    self.ctx.evict_lru_idle();
                }
            }
            Err(err) => {
                let wake = {
                    let mut st = self.lock();
                    st.counters.dial_failed();
                    let wake = self.return_dial_slot(&mut st);
                    let threshold = self.config().breaker_failures();
                    let cold = st.cold();
                    cold.last_dial_error = Some(err.to_string().into());
                    // A name that does not resolve is the resolver's to
                    // answer (it keeps failures for a second), with its own
                    // words, not the breaker's: it does not count, and a
                    // probe that met it gives its turn to the next get.
                    if matches!(err, Error::DnsResolutionFailed { .. }) {
                        cold.breaker.dial_abandoned(Instant::now());
                    } else if let Some(open) = cold.breaker.dial_failed(Instant::now(), threshold) {
                        tracing::warn!(endpoint = %self.endpoint, ?open, error = %err, "circuit breaker open");
                    }
                    if warm {
                        cold.warm_failures += 1;
                        let wait =
                            backoff_delay(self.config().connect_retry_delay(), cold.warm_failures);
                        cold.warm_retry_at = Some(later(
                            Instant::now(),
                            wait.min(self.config().max_idle_time()),
                        ));
                    }
                    self.grant_free_slot(&mut st);
                    wake
                };
                if wake {
                    self.ctx.global.wake_starved();
                }
                let _ = tx.send(Err(err));
            }
        }
    }

    /// Frees a dialing slot that produced no connection; `failed`: a dial
    /// task died without finishing (counted as a failed dial).
    pub(super) fn return_unused_dial(self: &Arc<Self>, failed: bool) {
        let wake = {
            let mut st = self.lock();
            if failed {
                st.counters.dial_failed();
            }
            let wake = self.return_dial_slot(&mut st);
            self.grant_free_slot(&mut st);
            wake
        };
        if wake {
            self.ctx.global.wake_starved();
        }
    }
}

/// A dialing slot held by a dial task; if the task dies without finishing
/// (a panicking dialer), dropping it frees the slot.
struct DialSlot(Option<Arc<EndpointPool>>);

impl DialSlot {
    fn finish(
        mut self,
        result: Result<Held, Error>,
        generation: u32,
        tx: oneshot::Sender<Result<Conn, Error>>,
        warm: bool,
    ) {
        if let Some(pool) = self.0.take() {
            pool.finish_dial(result, generation, tx, warm);
        }
    }
}

impl Drop for DialSlot {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            pool.breaker_dial_abandoned();
            pool.return_unused_dial(true);
        }
    }
}

/// The receiving end of a dial a caller waits for. If the caller goes
/// away after the dial finished but before it looked, the connection is
/// waiting in the channel: dropping this gives it back to the pool (the
/// next waiter or idle) instead of dropping it uncounted.
struct DialReceiver {
    pool: Arc<EndpointPool>,
    rx: oneshot::Receiver<Result<Conn, Error>>,
}

impl Drop for DialReceiver {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(Ok(conn)) = self.rx.try_recv() {
            self.pool.release(conn, None);
        }
    }
}
