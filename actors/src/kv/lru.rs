//! The LRU of cached blocks: an intrusive doubly linked list threaded through
//! the blocks' own books, so linking, unlinking and evicting are O(1) and
//! allocate nothing.

use std::time::{Duration, Instant};

use super::blocks::Blocks;
use super::ids::BlockId;

/// Head (least recently released) and tail of the list, and its length.
#[derive(Debug, Default)]
pub(crate) struct Lru {
    pub(crate) head: Option<BlockId>,
    pub(crate) tail: Option<BlockId>,
    pub(crate) len: u64,
}

impl Blocks {
    /// Appends `id` as the most recently released block.
    pub(crate) fn lru_push_back(&mut self, id: BlockId) {
        let old_tail = self.lru.tail;
        {
            let m = self.meta_mut(id);
            m.prev = old_tail;
            m.next = None;
        }
        match old_tail {
            Some(t) => self.meta_mut(t).next = Some(id),
            None => self.lru.head = Some(id),
        }
        self.lru.tail = Some(id);
        self.lru.len += 1;
    }

    /// Takes `id` out of the list.
    pub(crate) fn lru_unlink(&mut self, id: BlockId) {
        let (prev, next) = {
            let m = self.meta_mut(id);
            (m.prev.take(), m.next.take())
        };
        match prev {
            Some(p) => self.meta_mut(p).next = next,
            None => self.lru.head = next,
        }
        match next {
            Some(n) => self.meta_mut(n).prev = prev,
            None => self.lru.tail = prev,
        }
        self.lru.len -= 1;
    }

    /// How many of the oldest cached blocks, up to `want`, are past their
    /// keep-alive at `now`. Walks at most `want` entries.
    pub(crate) fn lru_expired(&self, want: u64, now: Instant, keep_alive: Duration) -> u64 {
        let mut found = 0;
        let mut at = self.lru.head;
        while let Some(id) = at {
            if found == want {
                break;
            }
            let m = self.meta(id);
            let expired = m
                .released_at
                .is_none_or(|t| now.saturating_duration_since(t) >= keep_alive);
            if !expired {
                break;
            }
            found += 1;
            at = m.next;
        }
        found
    }
}
