//! Each thread's memory of the endpoints it looked up lately.
//!
//! [`Pool::get`](super::Pool::get) finds the endpoint's pool in the map on
//! every call. The map is behind a lock sharded by thread, and a read still
//! costs two atomic read-modify-writes (lock and unlock) on top of the
//! hash-table probe and the reference count taken for the lease: with one
//! task, that is a quarter of a whole acquire + release. A service mostly
//! talks to a handful of endpoints per thread, so each thread remembers the
//! pools it found in a few slots, indexed by the endpoint's precomputed hash.
//! A hit costs one atomic (upgrading the slot's weak reference, which is
//! the count the lease needs anyway) and no lock.
//!
//! The memory is only a hint, checked on every use:
//!
//! - slots hold weak references, so they keep neither an endpoint pool nor
//!   the pool it belongs to alive (a dropped `Pool` still closes its
//!   connections); a weak reference only keeps the endpoint pool's
//!   allocation (about 140 bytes) until the slot is overwritten, at most
//!   eight per thread;
//! - a hit is taken only if the upgraded endpoint pool belongs to the
//!   asking pool and is for the same endpoint (two pools share the slots);
//! - an endpoint pool that was retired from the map after the lookup says
//!   so when acquired from ([`Started::Retired`](super::endpoint_pool::Started)),
//!   and the caller [forgets](forget) it and looks in the map again.
//!
//! A thread that walks over more endpoints than it has slots would rewrite
//! a slot on every get, which costs two atomics instead of saving them; so
//! a slot holding a live entry is overwritten only on one miss in eight
//! (counted over all of the thread's misses, not per slot),
//! which lets a walk pay for one rewrite in eight while a thread with a few
//! hot endpoints still settles on them after a few gets.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use super::{Context, EndpointPool};
use crate::Endpoint;

/// Slots per thread; a power of two (indexed by the hash's low bits).
const SLOTS: usize = 8;

/// A slot with a live entry is overwritten on one miss in this many.
const OVERWRITE_EVERY: u32 = 8;

struct Recent {
    slots: [Option<Entry>; SLOTS],
    misses: u32,
}

struct Entry {
    /// The endpoint's hash, compared before the upgrade so that a slot
    /// shared by two endpoints costs no atomic for the wrong one.
    hash: u64,
    pool: Weak<EndpointPool>,
}

thread_local! {
    static RECENT: RefCell<Recent> = const {
        RefCell::new(Recent { slots: [const { None }; SLOTS], misses: 0 })
    };
}

fn slot_of(endpoint: &Endpoint) -> usize {
    // The hash comes from a keyed hasher: its low bits are as good as any.
    endpoint.prehash() as usize % SLOTS
}

/// `endpoint`'s pool in `ctx`, if this thread found it lately and it is
/// still alive.
#[inline]
pub(crate) fn find(ctx: &Arc<Context>, endpoint: &Endpoint) -> Option<Arc<EndpointPool>> {
    let found = RECENT
        .try_with(|recent| {
            let recent = recent.try_borrow().ok()?;
            let entry = recent.slots[slot_of(endpoint)].as_ref()?;
            if entry.hash != endpoint.prehash() {
                return None;
            }
            entry.pool.upgrade()
        })
        .ok()
        .flatten()?;
    // Dropped, if it is not the one, outside the borrow above: the last
    // reference to an endpoint pool may take its whole pool down with it.
    (Arc::ptr_eq(&found.ctx, ctx) && found.endpoint == *endpoint).then_some(found)
}

/// Notes `pool` as this thread's latest lookup of its endpoint.
pub(crate) fn remember(pool: &Arc<EndpointPool>) {
    let replaced = RECENT.try_with(|recent| {
        let mut recent = recent.try_borrow_mut().ok()?;
        let slot = slot_of(&pool.endpoint);
        let vacant = recent.slots[slot]
            .as_ref()
            .is_none_or(|entry| entry.pool.strong_count() == 0);
        recent.misses = recent.misses.wrapping_add(1);
        if !vacant && recent.misses % OVERWRITE_EVERY != 0 {
            return None;
        }
        let entry = Entry {
            hash: pool.endpoint.prehash(),
            pool: Arc::downgrade(pool),
        };
        recent.slots[slot].replace(entry)
    });
    // A weak reference frees at most memory when dropped, but drop it after
    // the borrow all the same.
    drop(replaced);
}

/// Forgets this thread's entry for `endpoint` (its pool was retired).
pub(crate) fn forget(endpoint: &Endpoint) {
    let removed = RECENT.try_with(|recent| {
        let mut recent = recent.try_borrow_mut().ok()?;
        let slot = &mut recent.slots[slot_of(endpoint)];
        if slot.as_ref()?.hash == endpoint.prehash() {
            slot.take()
        } else {
            None
        }
    });
    drop(removed);
}
