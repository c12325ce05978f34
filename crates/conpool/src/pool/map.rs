//! The map from endpoint to endpoint pool, read on every `get`.
//!
//! It is a [`ShardedLock`]: a read locks only the calling thread's shard,
//! so gets running on different cores do not bounce one lock word between
//! them (with two threads reading, a plain reader-writer lock costs about
//! ten times as much per read on this kind of machine). A write locks every
//! shard; writes are rare: the first use of an endpoint, the removal of
//! long-empty ones, and close. Keys carry their hash, computed once when
//! the endpoint is made, so a lookup hashes nothing.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

use super::EndpointPool;
use crate::Endpoint;
use crate::endpoint::PrehashedState;

type Map = HashMap<Endpoint, Arc<EndpointPool>, PrehashedState>;

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
}
