//! Where the limit lies: the work any acquire + release with conpool's
//! guarantees cannot avoid, timed alone.
//!
//! A checkout that enforces idle time, and decides by how long a
//! connection sat idle (`liveness_peek_after`) whether its liveness check
//! asks the kernel, must read the clock when the connection comes back and
//! again when it is taken out; a pool shared between tasks must take a lock (or an atomic
//! read-modify-write) at each end; a lease that can outlive the caller's
//! borrow of the pool must hold a counted reference to it. The floor loop
//! does exactly that and nothing else: two `tokio::time::Instant::now()`,
//! two uncontended `parking_lot::Mutex` lock/unlock pairs around a push and
//! a pop, and one `Arc` clone and drop. Whatever a pool costs above this
//! figure is bookkeeping that could, in principle, be cut; the floor itself
//! could only be cut by dropping a guarantee (no idle-time check, no
//! sharing between tasks) or by a cheaper clock than the one tokio's paused
//! test clock needs.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Runs `iters` floor cycles on this thread; returns the wall time.
pub fn floor_cycles(iters: u64) -> Duration {
    let shared = Arc::new(Mutex::new(vec![0u64; 1]));
    let start = Instant::now();
    for _ in 0..iters {
        // Acquire: read the clock, lock, pop, unlock, count a reference.
        let now = tokio::time::Instant::now();
        let item = shared.lock().pop();
        let lease = Arc::clone(&shared);
        black_box((now, &item, &lease));
        // Release: read the clock, lock, push, unlock, drop the reference.
        let now = tokio::time::Instant::now();
        lease.lock().push(item.unwrap_or_default());
        drop(lease);
        black_box(now);
    }
    start.elapsed()
}

/// Runs `iters` pairs of clock reads (the floor's two
/// `tokio::time::Instant::now()` alone); returns the wall time. On a
/// virtual machine a clock read can cost as much as an uncontended lock
/// pair, and this shows how much of the floor is the clock.
pub fn clock_pairs(iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(tokio::time::Instant::now());
        black_box(tokio::time::Instant::now());
    }
    start.elapsed()
}
