//! The registry's deadline queue: one entry per session, ordered by due time.
//!
//! Ground rules: a touch never touches this queue. Activity only stores a
//! timestamp in the session's shared atomics; when an entry comes due the
//! registry recomputes the real deadline from that timestamp and either ends
//! the session or re-files it once. So the queue's work grows with the number
//! of *deadlines that come due*, not with traffic, and one timer (for the
//! earliest entry) serves every session.

use std::collections::BTreeSet;

use crate::ids::SessionId;

/// Sessions ordered by their next deadline (microseconds on the engine epoch).
#[derive(Debug, Default)]
pub(crate) struct DeadlineQueue {
    entries: BTreeSet<(u64, SessionId)>,
}

impl DeadlineQueue {
    pub(crate) fn insert(&mut self, id: SessionId, due_us: u64) {
        self.entries.insert((due_us, id));
    }

    pub(crate) fn remove(&mut self, id: SessionId, due_us: u64) -> bool {
        self.entries.remove(&(due_us, id))
    }

    /// The earliest due time, if any.
    pub(crate) fn next(&self) -> Option<u64> {
        self.entries.first().map(|(due, _)| *due)
    }

    /// Takes the earliest entry if it is due at or before `now_us`. One at a
    /// time, not as a list: a timer that fires late takes thousands at once,
    /// and growing a list of them showed in the profile of a million
    /// sessions expiring (reallocations of a large block).
    pub(crate) fn pop_due(&mut self, now_us: u64) -> Option<(SessionId, u64)> {
        let &(at, id) = self.entries.first()?;
        if at > now_us {
            return None;
        }
        self.entries.pop_first();
        Some((id, at))
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_order_and_only_what_is_due() {
        let mut q = DeadlineQueue::default();
        let (a, b, c) = (
            SessionId::random(),
            SessionId::random(),
            SessionId::random(),
        );
        q.insert(a, 30);
        q.insert(b, 10);
        q.insert(c, 20);
        assert_eq!(q.next(), Some(10));
        assert_eq!(q.pop_due(20), Some((b, 10)));
        assert_eq!(q.pop_due(20), Some((c, 20)));
        assert_eq!(q.pop_due(20), None);
        assert!(q.remove(a, 30));
        assert!(!q.remove(a, 30));
        assert_eq!(q.len(), 0);
    }
}
