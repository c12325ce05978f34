//! Per-thread slots: where a returned connection waits for the next get on
//! the same thread when an endpoint is busy on several cores at once.
//!
//! An endpoint's bookkeeping sits behind one lock. When tasks on two cores
//! take and return connections to one endpoint as fast as they can, that
//! lock's cache line travels between the cores on every call and the lock
//! starts to park threads, which costs far more than the work it guards.
//! HikariCP meets the same problem with a thread-local list of the
//! connections a thread used last; this is the same idea for tokio's worker
//! threads. Once an endpoint's lock is found contended, it grows one slot
//! per thread (a few more than the machine has cores, chosen by a
//! per-thread index): a connection coming back is parked in the returning
//! thread's slot, and the next get on that thread takes it from there, each
//! under the slot's own lock, which no other core touches in the common
//! case.
//!
//! A parked connection still counts as *leased* in the endpoint's books, so
//! the limits and the counters need no change; [`EndpointPool`] reports it
//! as idle in its gauges. Everything that needs the true idle set first
//! empties the slots back through the endpoint's lock: a caller about to
//! dial or queue takes a parked connection instead, and `clear_endpoint`,
//! `close` and the maintenance pass return them. A connection is parked only
//! while nobody waits in the queue; see `EndpointPool::release` for the
//! handshake that keeps a waiter and a parked connection from missing each
//! other. The slots therefore also hold what a releaser reads without the
//! endpoint's lock: a mirror of the queue's length (`queued`) and of the
//! generation and closed flag (`epoch`), both written only under that lock.
//!
//! [`EndpointPool`]: super::EndpointPool

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use super::Conn;

/// One endpoint's per-thread slots, and the two figures a releaser reads
/// without the endpoint's lock to decide whether it may park. Both are
/// written only under that lock; they live here, not in the endpoint,
/// because only an endpoint with slots has anyone to read them.
pub(crate) struct Slots {
    slots: Box<[CachePadded<Mutex<Slot>>]>,
    /// At least the number of callers queued (or about to queue): releasers
    /// park a connection in a slot only while it reads 0. Raised under the
    /// lock before a caller looks for parked connections and queues; lowered
    /// to the queue's length under the lock after callers leave it. Only
    /// `enqueue` adds to the queue and it always raises this; a removal
    /// that forgot to lower it would only keep releasers off the slots
    /// (slower), never strand a waiter.
    pub(crate) queued: AtomicUsize,
    /// The endpoint's `generation * 2 + closed`, mirrored under the lock,
    /// so that a releaser can tell without the lock whether a connection
    /// may be parked.
    pub(crate) epoch: AtomicU64,
}

#[derive(Default)]
struct Slot {
    conn: Option<Conn>,
    /// Checkouts served from this slot, counted here so that the fast path
    /// takes no other lock; added into the endpoint's stats.
    reused: u64,
}

impl Slots {
    /// Slots starting from the endpoint's queue length and epoch now.
    pub(crate) fn new(queued: usize, epoch: u64) -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        // More slots than cores, so that runtimes with a few more threads
        // than cores (blocking pools, a second runtime) rarely share one.
        let n = (cores * 2).next_power_of_two().clamp(2, 64);
        Slots {
            slots: (0..n).map(|_| CachePadded::new(Mutex::default())).collect(),
            queued: AtomicUsize::new(queued),
            epoch: AtomicU64::new(epoch),
        }
    }

    fn mine(&self) -> &Mutex<Slot> {
        &self.slots[thread_index() & (self.slots.len() - 1)]
    }

    /// Takes this thread's parked connection if `fit` accepts it (counting
    /// the reuse); returns it in `Err` if `fit` refuses it. `fit` runs under
    /// the slot's lock, which only this thread takes in the common case, and
    /// may look at the stream.
    pub(crate) fn take_mine(
        &self,
        fit: impl FnOnce(&mut Conn) -> bool,
    ) -> Result<Option<Conn>, Conn> {
        let mut slot = self.mine().lock();
        let Some(mut conn) = slot.conn.take() else {
            return Ok(None);
        };
        if fit(&mut conn) {
            slot.reused += 1;
            Ok(Some(conn))
        } else {
            Err(conn)
        }
    }

    /// Parks `conn` in this thread's slot if it is free and `may_park`
    /// (asked under the slot's lock) agrees; otherwise hands it back.
    pub(crate) fn park(
        &self,
        conn: Conn,
        may_park: impl FnOnce(&Conn) -> bool,
    ) -> Result<(), Conn> {
        let mut slot = self.mine().lock();
        if slot.conn.is_none() && may_park(&conn) {
            slot.conn = Some(conn);
            Ok(())
        } else {
            Err(conn)
        }
    }

    /// Takes back what this thread parked, if it is still there.
    pub(crate) fn unpark_mine(&self) -> Option<Conn> {
        self.mine().lock().conn.take()
    }

    /// Takes a parked connection from any slot, this thread's first.
    pub(crate) fn take_any(&self) -> Option<Conn> {
        if let Some(conn) = self.unpark_mine() {
            return Some(conn);
        }
        self.slots.iter().find_map(|slot| slot.lock().conn.take())
    }

    /// Takes every parked connection.
    pub(crate) fn drain(&self) -> Vec<Conn> {
        self.slots
            .iter()
            .filter_map(|slot| slot.lock().conn.take())
            .collect()
    }

    /// How many connections are parked, and how many checkouts the slots
    /// served.
    pub(crate) fn tally(&self) -> (usize, u64) {
        self.slots.iter().fold((0, 0), |(parked, reused), slot| {
            let slot = slot.lock();
            (
                parked + usize::from(slot.conn.is_some()),
                reused + slot.reused,
            )
        })
    }
}

/// A small number that differs between the threads that use pools.
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}
