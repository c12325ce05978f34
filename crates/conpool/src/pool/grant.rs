//! The cell through which a queued caller is handed what it waited for.
//!
//! It does what a oneshot channel does (one value, one waker, either side
//! may leave) with one difference that matters on a busy endpoint: most
//! gets queue there, and a fresh channel per queued get is an allocation and
//! a free per request. A cell whose other side is gone by the time its
//! receiver is done is kept by the receiving thread for its next wait, so a
//! busy queue allocates almost nothing.
//!
//! The cell's state sits behind a small lock; the endpoint's own lock is
//! never taken while holding it, and waking happens after it is released.
//!
//! Besides its one grant, a cell can carry a nudge: a wake-up with nothing
//! in it, which tells the waiter that nobody keeps the queue's deadlines
//! (see `endpoint_pool::queue`), so that it sees to them on its next poll.

use std::cell::RefCell;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::endpoint_pool::Grant;

#[derive(Default)]
struct Cell {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    grant: Option<Grant>,
    waker: Option<Waker>,
    /// The sender was dropped without sending.
    sender_gone: bool,
    /// The receiver left; a send fails and hands the grant back.
    receiver_gone: bool,
    /// Nudged since the receiver last looked.
    nudged: bool,
}

thread_local! {
    /// One spare cell per thread, from a receiver that finished with it.
    static SPARE: RefCell<Option<Arc<Cell>>> = const { RefCell::new(None) };
}

/// A new (or recycled) cell's two sides.
pub(crate) fn channel() -> (GrantSender, GrantReceiver) {
    // `try_with`: a thread tearing down its locals may still queue.
    let cell = SPARE
        .try_with(|spare| spare.borrow_mut().take())
        .ok()
        .flatten()
        .unwrap_or_default();
    (GrantSender(Some(cell.clone())), GrantReceiver(Some(cell)))
}

/// The queue's side of a cell.
pub(crate) struct GrantSender(Option<Arc<Cell>>);

impl GrantSender {
    /// Hands `grant` over, or gives it back if the receiver left (or a
    /// grant was handed over already). Returns the receiver's waker, for
    /// the caller to wake once it holds no lock. Either way the sender is
    /// spent: [`is_closed`](Self::is_closed) says so from then on.
    pub(crate) fn send(&mut self, grant: Grant) -> Result<Option<Waker>, Grant> {
        let Some(cell) = self.0.take() else {
            return Err(grant);
        };
        let waker = {
            let mut st = cell.state.lock();
            if st.receiver_gone || st.grant.is_some() {
                return Err(grant);
            }
            st.grant = Some(grant);
            st.waker.take()
        };
        // Let go of the cell before the receiver is woken, so that it
        // usually finds itself its only owner and can keep it for its next
        // wait.
        drop(cell);
        Ok(waker)
    }

    /// Nudges the receiver (see the module docs), unless it left. Returns
    /// its waker, for the caller to wake once it holds no lock.
    pub(crate) fn nudge(&self) -> Option<Waker> {
        let cell = self.0.as_ref()?;
        let mut st = cell.state.lock();
        if st.receiver_gone {
            return None;
        }
        st.nudged = true;
        st.waker.take()
    }

    /// Whether the receiver left, or this sender has sent.
    pub(crate) fn is_closed(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|cell| cell.state.lock().receiver_gone)
    }
}

impl Drop for GrantSender {
    fn drop(&mut self) {
        if let Some(cell) = self.0.take() {
            let waker = {
                let mut st = cell.state.lock();
                st.sender_gone = true;
                st.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// What a waiting receiver found.
pub(crate) enum Received {
    Grant(Grant),
    /// The sender went away without sending.
    Nothing,
    /// A nudge: no grant yet, and the cell stays in use (poll again).
    Nudged,
}

/// The waiting caller's side of a cell.
pub(crate) struct GrantReceiver(Option<Arc<Cell>>);

impl GrantReceiver {
    /// The grant, once sent; a nudge, if one came first.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Received> {
        let cell = self.0.as_ref().expect("polled after completion");
        let mut st = cell.state.lock();
        if let Some(grant) = st.grant.take() {
            drop(st);
            self.finish();
            return Poll::Ready(Received::Grant(grant));
        }
        if st.sender_gone {
            drop(st);
            self.finish();
            return Poll::Ready(Received::Nothing);
        }
        if std::mem::take(&mut st.nudged) {
            return Poll::Ready(Received::Nudged);
        }
        match &mut st.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Leaves: a later send fails. Returns a grant sent before this, if
    /// any, for the caller to give back.
    pub(crate) fn close(&mut self) -> Option<Grant> {
        let cell = self.0.as_ref()?;
        let grant = {
            let mut st = cell.state.lock();
            st.receiver_gone = true;
            st.waker = None;
            st.grant.take()
        };
        self.0 = None;
        grant
    }

    /// Done with the cell: keep it for this thread's next wait if nobody
    /// else holds it.
    fn finish(&mut self) {
        let Some(cell) = self.0.take() else { return };
        if Arc::strong_count(&cell) == 1 {
            *cell.state.lock() = State::default();
            let _ = SPARE.try_with(|spare| {
                let mut spare = spare.borrow_mut();
                if spare.is_none() {
                    *spare = Some(cell);
                }
            });
        }
    }
}

impl Drop for GrantReceiver {
    fn drop(&mut self) {
        if let Some(cell) = &self.0 {
            cell.state.lock().receiver_gone = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn poll(rx: &mut GrantReceiver) -> Poll<Received> {
        rx.poll_recv(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_sent_grant_is_received_once() {
        let (mut tx, mut rx) = channel();
        assert!(poll(&mut rx).is_pending());
        assert!(!tx.is_closed());
        assert!(tx.send(Grant::Dial).is_ok());
        assert!(matches!(
            poll(&mut rx),
            Poll::Ready(Received::Grant(Grant::Dial))
        ));
    }

    #[test]
    fn a_nudge_wakes_the_receiver_once_and_leaves_the_cell_waiting() {
        let (mut tx, mut rx) = channel();
        assert!(poll(&mut rx).is_pending());
        assert!(tx.nudge().is_some(), "the waker registered by the poll");
        assert!(matches!(poll(&mut rx), Poll::Ready(Received::Nudged)));
        assert!(poll(&mut rx).is_pending(), "one nudge, seen once");
        assert!(tx.send(Grant::Dial).is_ok());
        assert!(matches!(
            poll(&mut rx),
            Poll::Ready(Received::Grant(Grant::Dial))
        ));
    }

    #[test]
    fn a_receiver_that_left_gets_nothing_and_the_grant_comes_back() {
        let (mut tx, mut rx) = channel();
        assert!(rx.close().is_none());
        assert!(tx.is_closed());
        assert!(matches!(tx.send(Grant::Dial), Err(Grant::Dial)));
    }

    #[test]
    fn a_grant_sent_just_before_the_receiver_left_is_handed_back() {
        let (mut tx, mut rx) = channel();
        assert!(tx.send(Grant::TimedOut).is_ok());
        assert!(matches!(rx.close(), Some(Grant::TimedOut)));
    }

    #[test]
    fn a_sender_gone_without_sending_ends_the_wait() {
        let (tx, mut rx) = channel();
        drop(tx);
        assert!(matches!(poll(&mut rx), Poll::Ready(Received::Nothing)));
    }

    #[test]
    fn a_finished_cell_is_reused_clean() {
        let (mut tx, mut rx) = channel();
        let first = Arc::as_ptr(rx.0.as_ref().unwrap());
        assert!(tx.send(Grant::Dial).is_ok());
        assert!(poll(&mut rx).is_ready());
        let (tx, mut rx) = channel();
        assert_eq!(Arc::as_ptr(rx.0.as_ref().unwrap()), first, "recycled");
        assert!(poll(&mut rx).is_pending(), "nothing left over in it");
        drop(tx);
        assert!(matches!(poll(&mut rx), Poll::Ready(Received::Nothing)));
    }
}
