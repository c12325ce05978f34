//! Side-by-side benchmarks of conpool against the pools a Rust user would
//! otherwise pick: bb8, deadpool, mobc and pingora-pool, beside dedicated
//! connections and a connection (or TLS handshake) per request.
//!
//! - [`net`]: loopback echo servers (TCP and TLS) and the stream every pool
//!   holds;
//! - [`subjects`]: each pool behind the [`subjects::Subject`] trait;
//! - [`load`]: the task-based load generators;
//! - [`scale`]: many endpoints over in-memory streams, memory and eviction;
//! - [`alloc`]: the counting global allocator;
//! - [`floor`]: the work no checkout with conpool's guarantees can avoid;
//! - [`external`]: figures from tools run on the examples (callgrind, and
//!   perf or strace counting the liveness check's kernel looks);
//! - [`redis_get`]: Redis GET through conpool's `Redis`, bb8-redis,
//!   deadpool-redis and one shared connection (the `redis-compare` binary);
//! - [`report`] and [`chart`]: what the `compare` binary writes.
//!
//! The criterion benches under `benches/` and the `compare` binary share
//! all of this, so both measure exactly the same thing.

pub mod alloc;
pub mod chart;
pub mod external;
pub mod floor;
pub mod load;
pub mod net;
pub mod redis_get;
pub mod report;
pub mod scale;
pub mod subjects;
