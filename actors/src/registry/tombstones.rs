//! Ended sessions, remembered so late requests get "session gone" and a
//! second close gets the first close's receipt.
//!
//! Bounded in count and age. A tombstone whose release is still under way is
//! never forgotten: someone may be waiting on it, and forgetting it early
//! would let a late message look like an unknown id.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::events::ReleaseReceipt;
use crate::ids::{IdMap, SessionId};
use crate::lifecycle::EndReason;
use crate::session::SessionShared;

#[derive(Debug)]
pub(crate) struct Tombstone {
    pub(crate) reason: EndReason,
    pub(crate) shared: Arc<SessionShared>,
    pub(crate) receipt: Option<ReleaseReceipt>,
    pub(crate) waiters: Vec<oneshot::Sender<ReleaseReceipt>>,
}

/// Tombstones by id. Only released ones are in `released_order`, so only
/// they are ever forgotten: a release still under way never blocks the
/// eviction of others, and is never itself evicted.
#[derive(Debug)]
pub(crate) struct Tombstones {
    /// Boxed, so growing the table moves 24-byte entries, not whole tombstones.
    by_id: IdMap<Box<Tombstone>>,
    released_order: VecDeque<(SessionId, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl Tombstones {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Tombstones {
            by_id: IdMap::default(),
            released_order: VecDeque::new(),
            capacity,
            ttl,
        }
    }

    pub(crate) fn contains(&self, id: &SessionId) -> bool {
        self.by_id.contains_key(id)
    }

    pub(crate) fn get_mut(&mut self, id: &SessionId) -> Option<&mut Tombstone> {
        self.by_id.get_mut(id).map(|stone| &mut **stone)
    }

    /// A session just ended; its release is under way.
    pub(crate) fn insert(&mut self, id: SessionId, tombstone: Tombstone) {
        self.by_id.insert(id, Box::new(tombstone));
    }

    /// A session's release completed: keep the receipt, and from now on the
    /// tombstone may be forgotten (oldest first, past capacity or age).
    pub(crate) fn released(&mut self, id: SessionId, receipt: ReleaseReceipt, now: Instant) {
        if let Some(stone) = self.by_id.get_mut(&id) {
            stone.receipt = Some(receipt);
            self.released_order.push_back((id, now));
        }
        self.forget_old(now);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn forget_old(&mut self, now: Instant) {
        while let Some(&(id, at)) = self.released_order.front() {
            let over =
                self.released_order.len() > self.capacity || now.duration_since(at) > self.ttl;
            if !over {
                break;
            }
            self.released_order.pop_front();
            self.by_id.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Owner;

    fn tombstone() -> Tombstone {
        Tombstone {
            reason: EndReason::Closed,
            shared: Arc::new(SessionShared::new(0, Owner::new("o"))),
            receipt: None,
            waiters: Vec::new(),
        }
    }

    fn receipt(id: SessionId) -> ReleaseReceipt {
        ReleaseReceipt {
            id,
            reason: EndReason::Closed,
            buffers: 0,
            bytes: 0,
            ended_at: Instant::now(),
            released_at: Instant::now(),
            paced_for: Duration::ZERO,
            error: None,
            deadline: None,
            trace_id: crate::ids::TraceId(0),
            steps: Default::default(),
        }
    }

    fn end_and_release(stones: &mut Tombstones, id: SessionId, at: Instant) {
        stones.insert(id, tombstone());
        stones.released(id, receipt(id), at);
    }

    #[test]
    fn oldest_released_tombstones_are_forgotten_past_capacity() {
        let mut stones = Tombstones::new(2, Duration::from_secs(3600));
        let now = Instant::now();
        let ids: Vec<_> = (0..3).map(|_| SessionId::random()).collect();
        for id in &ids {
            end_and_release(&mut stones, *id, now);
        }
        assert_eq!(stones.len(), 2);
        assert!(!stones.contains(&ids[0]));
        assert!(stones.contains(&ids[2]));
    }

    #[test]
    fn a_release_still_under_way_is_kept_and_does_not_block_eviction() {
        let mut stones = Tombstones::new(1, Duration::from_secs(1));
        let now = Instant::now();
        let pending = SessionId::random();
        stones.insert(pending, tombstone());
        let (a, b) = (SessionId::random(), SessionId::random());
        end_and_release(&mut stones, a, now);
        end_and_release(&mut stones, b, now + Duration::from_secs(10));
        assert!(
            stones.contains(&pending),
            "a pending release is never forgotten"
        );
        assert!(
            !stones.contains(&a),
            "older released tombstones are forgotten past the pending one"
        );
        assert!(stones.contains(&b));
    }

    #[test]
    fn tombstones_expire_with_age_even_without_new_ends() {
        let mut stones = Tombstones::new(100, Duration::from_secs(1));
        let now = Instant::now();
        let old = SessionId::random();
        end_and_release(&mut stones, old, now);
        stones.forget_old(now + Duration::from_secs(5));
        assert!(!stones.contains(&old));
    }
}
