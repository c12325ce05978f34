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

    #[inline]
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

    /// A stack of `conns`, given oldest first.
    pub(crate) fn from_oldest_first(mut conns: Vec<Conn>) -> Self {
        let top = conns.pop();
        let rest = (!conns.is_empty()).then(|| Box::new(conns));
        IdleStack { top, rest }
    }

    /// Takes every connection, oldest first.
    pub(crate) fn take_all(&mut self) -> Vec<Conn> {
        let mut all = self.rest.take().map_or_else(Vec::new, |rest| *rest);
        all.extend(self.top.take());
        all
    }
}
