//! What a connection record holds: a byte stream, or the connection a
//! [`Protocol`](crate::Protocol) made of one.
//!
//! The byte-stream pool is the exclusive protocol whose connection is the
//! stream itself, so the core keeps one kind of record and one set of books
//! for both, and tells them apart only where they differ: how a look at an
//! idle connection is taken ([`Held::look`]) and what a lease hands out.
//! A protocol's connection is boxed behind [`ProtocolConn`], so that the core
//! is not generic over protocols and the common case, a stream, pays
//! nothing for the other (the enum is no larger than [`Stream`]).

use std::any::Any;

use crate::stream::Look;
use crate::{CloseReason, Stream};

/// A pooled connection's payload.
pub(crate) enum Held {
    Stream(Stream),
    Protocol(Box<dyn ProtocolConn>),
}

/// A protocol's connection as the core sees it: something it can ask,
/// without I/O, whether it can take another request, and drop to close.
pub(crate) trait ProtocolConn: Send + 'static {
    /// Whether the connection can take another request: the protocol says
    /// so, and its driver task (if it has one) still runs.
    fn is_ready(&mut self) -> bool;

    /// For the typed layer above the core, which knows the concrete type.
    fn as_any(&self) -> &dyn Any;

    /// For the typed layer above the core, which knows the concrete type.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl Held {
    /// Why the connection must not be handed out, as a look that neither
    /// blocks nor waits on the runtime finds it. `look` is how far a
    /// stream is looked at, `None` when the liveness check is off; a
    /// protocol's connection is always asked, as asking costs no I/O.
    #[inline]
    pub(crate) fn look(&mut self, look: Option<Look>) -> Option<CloseReason> {
        match self {
            Held::Stream(stream) => look.and_then(|look| stream.liveness(look).close_reason()),
            Held::Protocol(conn) => (!conn.is_ready()).then_some(CloseReason::NotReady),
        }
    }

    /// The stream, for a byte-stream pool's connection.
    pub(crate) fn stream(&self) -> Option<&Stream> {
        match self {
            Held::Stream(stream) => Some(stream),
            Held::Protocol(_) => None,
        }
    }

    /// The stream, for a byte-stream pool's connection.
    pub(crate) fn stream_mut(&mut self) -> Option<&mut Stream> {
        match self {
            Held::Stream(stream) => Some(stream),
            Held::Protocol(_) => None,
        }
    }

    /// The protocol's connection, for a protocol pool's connection.
    pub(crate) fn protocol(&self) -> Option<&dyn ProtocolConn> {
        match self {
            Held::Protocol(conn) => Some(&**conn),
            Held::Stream(_) => None,
        }
    }

    /// The protocol's connection, for a protocol pool's connection.
    pub(crate) fn protocol_mut(&mut self) -> Option<&mut dyn ProtocolConn> {
        match self {
            Held::Protocol(conn) => Some(&mut **conn),
            Held::Stream(_) => None,
        }
    }
}
