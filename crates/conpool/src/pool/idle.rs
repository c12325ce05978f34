//! An endpoint's idle connections: a stack, the most recently returned on
//! top, so that a busy pool keeps a few connections hot and lets the rest
//! expire.
//!
//! Most endpoints of a pool with many hold one idle connection, so the top
//! is held inline and the others go to a vector made when a second one
//! comes back: an endpoint with one idle connection carries no heap block
//! for it, and the inline part is two pointers. Taking the top and putting
//! one back, the checkout path, touch the vector only when it exists.

use super::Conn;

#[derive(Default)]
pub(crate) struct IdleStack {
    top: Option<Conn>,
    /// The ones under the top, oldest first.
    // Boxed: an empty vector would take 24 bytes in every endpoint; the box
    // takes 8 until a second connection is idle.
    #[allow(clippy::box_collection)]
    rest: Option<Box<Vec<Conn>>>,
}

impl IdleStack {
    pub(crate) fn len(&self) -> usize {
        usize::from(self.top.is_some()) + self.rest.as_ref().map_or(0, |rest| rest.len())
    }

    #[inline(always)]
    pub(crate) fn push(&mut self, conn: Conn) {
        if let Some(below) = self.top.replace(conn) {
            self.rest.get_or_insert_default().push(below);
        }
    }

    /// The most recently returned connection, left in place.
    #[inline]
    pub(crate) fn peek(&self) -> Option<&Conn> {
        self.top.as_ref()
    }

    /// The most recently returned connection.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Conn> {
        let top = self.top.take()?;
        self.top = self.rest.as_mut().and_then(|rest| rest.pop());
        Some(top)
    }

    /// The least recently returned connection.
    pub(crate) fn oldest(&self) -> Option<&Conn> {
        self.rest
            .as_ref()
            .and_then(|rest| rest.first())
            .or(self.top.as_ref())
    }

    pub(crate) fn remove_oldest(&mut self) -> Option<Conn> {
        match self.rest.as_mut() {
            Some(rest) if !rest.is_empty() => Some(rest.remove(0)),
            _ => self.top.take(),
        }
    }

    /// Whether a connection that came back at `at` (as
    /// [`Conn::return_order`] tells it) is still idle here. The stack is in
    /// return order, so this is a binary search.
    pub(crate) fn holds_returned_at(&self, at: tokio::time::Instant) -> bool {
        self.top
            .as_ref()
            .is_some_and(|top| top.return_order() == at)
            || self
                .rest
                .as_ref()
                .is_some_and(|rest| rest.binary_search_by_key(&at, |c| c.return_order()).is_ok())
    }

    /// Moves the connections that `verdict` gives a reason to drop into
    /// `dropped`, oldest first, with that reason; the rest keep their order.
    /// Allocates nothing for an endpoint with one idle connection (most of
    /// them, in a pool with many), as the maintenance pass calls this on
    /// every endpoint every interval.
    pub(crate) fn drop_where<R>(
        &mut self,
        mut verdict: impl FnMut(&mut Conn) -> Option<R>,
        dropped: &mut Vec<(Conn, R)>,
    ) {
        if let Some(rest) = self.rest.as_mut() {
            let mut i = 0;
            while i < rest.len() {
                match verdict(&mut rest[i]) {
                    Some(reason) => dropped.push((rest.remove(i), reason)),
                    None => i += 1,
                }
            }
        }
        if let Some(reason) = self.top.as_mut().and_then(&mut verdict) {
            let top = self.top.take().expect("checked above");
            dropped.push((top, reason));
            self.top = self.rest.as_mut().and_then(|rest| rest.pop());
        }
        if self.rest.as_ref().is_some_and(|rest| rest.is_empty()) {
            self.rest = None;
        }
    }

    /// Takes every connection, oldest first.
    pub(crate) fn take_all(&mut self) -> Vec<Conn> {
        let mut all = self.rest.take().map_or_else(Vec::new, |rest| *rest);
        all.extend(self.top.take());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Stream};
    use tokio::time::Instant;

    fn conns(n: usize) -> Vec<Conn> {
        let config = Config::default();
        (0..n)
            .map(|_| {
                let (client, _server) = tokio::io::duplex(8);
                Conn::new(
                    super::super::Held::Stream(Stream::custom(client)),
                    Instant::now(),
                    0,
                    &config,
                )
            })
            .collect()
    }

    fn ids(stack: &mut IdleStack) -> Vec<u64> {
        let all = stack.take_all();
        let ids = all.iter().map(|c| c.id).collect();
        for conn in all {
            stack.push(conn);
        }
        ids
    }

    #[test]
    fn drop_where_keeps_the_order_of_the_rest_and_reports_reasons() {
        let mut stack = IdleStack::default();
        let made = conns(4);
        let want: Vec<u64> = made.iter().map(|c| c.id).collect();
        for conn in made {
            stack.push(conn);
        }
        // Drop the oldest and the newest (the top).
        let (oldest, newest) = (want[0], want[3]);
        let mut dropped = Vec::new();
        stack.drop_where(
            |c| (c.id == oldest || c.id == newest).then_some(c.id),
            &mut dropped,
        );
        let reasons: Vec<u64> = dropped.iter().map(|(_, r)| *r).collect();
        assert_eq!(reasons, vec![oldest, newest], "oldest first");
        assert_eq!(stack.len(), 2);
        assert_eq!(ids(&mut stack), vec![want[1], want[2]]);
        assert_eq!(
            stack.pop().map(|c| c.id),
            Some(want[2]),
            "the newest left is on top"
        );
    }

    #[test]
    fn drop_where_on_one_connection_frees_the_stack() {
        let mut stack = IdleStack::default();
        stack.push(conns(1).pop().unwrap());
        let mut dropped = Vec::new();
        stack.drop_where(|_| None::<()>, &mut dropped);
        assert_eq!((stack.len(), dropped.len()), (1, 0));
        stack.drop_where(|_| Some(()), &mut dropped);
        assert_eq!((stack.len(), dropped.len()), (0, 1));
        assert!(stack.rest.is_none() && stack.top.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_found_by_its_return_until_it_leaves() {
        let config = Config::default();
        let mut stack = IdleStack::default();
        let mut returns = Vec::new();
        for mut conn in conns(5) {
            tokio::time::advance(std::time::Duration::from_millis(1)).await;
            conn.mark_idle(Instant::now(), &config);
            returns.push(conn.return_order());
            stack.push(conn);
        }
        assert!(returns.iter().all(|&at| stack.holds_returned_at(at)));
        let top = stack.pop().unwrap().return_order();
        let oldest = stack.remove_oldest().unwrap().return_order();
        assert!(!stack.holds_returned_at(top) && !stack.holds_returned_at(oldest));
        assert!(returns[1..4].iter().all(|&at| stack.holds_returned_at(at)));
    }
}
