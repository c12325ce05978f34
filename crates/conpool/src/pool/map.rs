//! The map from endpoint to endpoint pool, read by every `get` that the
//! thread's memory of recent lookups ([`super::recent`]) does not answer.
//!
//! It is a [`ShardedLock`]: a read locks only the calling thread's shard,
//! so gets running on different cores do not bounce one lock word between
//! them (with two threads reading, a plain reader-writer lock costs about
//! ten times as much per read on this kind of machine). A write locks every
//! shard; writes are rare: the first use of an endpoint, the removal of
//! long-empty ones, and close. Keys carry their hash, computed once when
//! the endpoint is made, so a lookup hashes nothing.
//!
//! It is a set of endpoint pools found by the endpoint each one carries,
//! not a map from a copy of that endpoint: with 100,000 endpoints, a second
//! copy of each key would be a tenth of the pool's memory.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, PoisonError};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

use super::EndpointPool;
use crate::Endpoint;
use crate::endpoint::PrehashedState;

type Map = HashSet<Entry, PrehashedState>;

#[derive(Default)]
pub(crate) struct EndpointMap {
    inner: ShardedLock<Map>,
}

impl EndpointMap {
    pub(crate) fn read(&self) -> ShardedLockReadGuard<'_, Map> {
        // Nothing panics while holding the lock (hooks and closes run
        // outside it), so a poisoned lock still holds a consistent map.
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> ShardedLockWriteGuard<'_, Map> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// `endpoint`'s pool, if it has one.
    pub(crate) fn get(&self, endpoint: &Endpoint) -> Option<Arc<EndpointPool>> {
        self.read().get(endpoint).map(|entry| entry.0.clone())
    }

    /// Every endpoint pool, taken out so that the lock is not held while
    /// they are visited.
    pub(crate) fn pools(&self) -> Vec<Arc<EndpointPool>> {
        self.read().iter().map(|entry| entry.0.clone()).collect()
    }
}

/// An endpoint pool as the map holds it: hashed and compared as its
/// endpoint (exactly as [`Endpoint`] hashes and compares, as [`Borrow`]
/// requires), so that the set is looked up with a plain `&Endpoint`.
pub(crate) struct Entry(pub(crate) Arc<EndpointPool>);

impl Deref for Entry {
    type Target = Arc<EndpointPool>;

    fn deref(&self) -> &Arc<EndpointPool> {
        &self.0
    }
}

impl Borrow<Endpoint> for Entry {
    fn borrow(&self) -> &Endpoint {
        &self.0.endpoint
    }
}

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.endpoint.hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0.endpoint == other.0.endpoint
    }
}

impl Eq for Entry {}
