//! One slab's blocks: their states and the slab's free list.

use std::time::Instant;

use super::hash::BlockHash;
use super::ids::BlockId;
use super::scope::ShareScope;

/// What a block is doing. Exactly one at a time; the pool's counters
/// (free + cached + referenced == blocks in slabs) follow these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockState {
    /// In its slab's free list; holds nothing.
    Free,
    /// Referenced by this many live tables (at least 1).
    Referenced(u32),
    /// Referenced by nobody, hashed, in the LRU: a prefix kept for reuse.
    Cached,
}

/// The books of one block.
#[derive(Clone, Debug)]
pub(crate) struct BlockMeta {
    pub(crate) state: BlockState,
    /// Set when the block is full: its content's identity and scope.
    pub(crate) hash: Option<(BlockHash, ShareScope)>,
    /// Whether the pool's hash index points at this block (at most one
    /// block per hash is findable; the others are private copies).
    pub(crate) indexed: bool,
    /// Whether the block was ever handed out: its bytes are a previous
    /// holder's until cleared (a new slab's blocks are zero).
    pub(crate) used: bool,
    /// When the last table released it (for the LRU's keep-alive).
    pub(crate) released_at: Option<Instant>,
    /// LRU neighbours while cached.
    pub(crate) prev: Option<BlockId>,
    pub(crate) next: Option<BlockId>,
}

impl BlockMeta {
    fn free() -> Self {
        BlockMeta {
            state: BlockState::Free,
            hash: None,
            indexed: false,
            used: false,
            released_at: None,
            prev: None,
            next: None,
        }
    }
}

/// Which of the pool's slab sets a slab is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlabClass {
    /// Every block free: last in line for allocation, a trim candidate.
    Empty,
    /// Some blocks in use, some free: allocated from first.
    Partial,
    /// No free block.
    Full,
}

/// One slab.
#[derive(Debug)]
pub(crate) struct Slab {
    pub(crate) blocks: Vec<BlockMeta>,
    /// Indexes of free blocks; a stack, so reuse is cache-warm and O(1).
    pub(crate) free: Vec<u32>,
    /// Blocks that are not free (referenced or cached).
    pub(crate) in_use: u32,
    /// Since when every block has been free (set while `Empty`).
    pub(crate) empty_since: Option<Instant>,
    pub(crate) class: SlabClass,
    /// Position in the pool's list of partial slabs, while `Partial`.
    pub(crate) partial_pos: Option<usize>,
}

impl Slab {
    pub(crate) fn new(blocks: u32, now: Instant) -> Self {
        Slab {
            blocks: vec![BlockMeta::free(); blocks as usize],
            // Reversed so that block 0 is handed out first.
            free: (0..blocks).rev().collect(),
            in_use: 0,
            empty_since: Some(now),
            class: SlabClass::Empty,
            partial_pos: None,
        }
    }

    /// The class its counts call for.
    pub(crate) fn wanted_class(&self) -> SlabClass {
        if self.in_use == 0 {
            SlabClass::Empty
        } else if self.free.is_empty() {
            SlabClass::Full
        } else {
            SlabClass::Partial
        }
    }

    /// Resets a block to free and puts it on the free list.
    pub(crate) fn put_free(&mut self, index: u32) {
        // Still `used`: its bytes are the last holder's until cleared.
        self.blocks[index as usize] = BlockMeta {
            used: true,
            ..BlockMeta::free()
        };
        self.free.push(index);
        self.in_use -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_slab_is_empty_and_hands_out_block_zero_first() {
        let mut s = Slab::new(4, Instant::now());
        assert_eq!(s.wanted_class(), SlabClass::Empty);
        assert_eq!(s.free.pop(), Some(0));
        s.in_use += 1;
        assert_eq!(s.wanted_class(), SlabClass::Partial);
        s.put_free(0);
        assert_eq!(s.wanted_class(), SlabClass::Empty);
        assert_eq!(s.free.len(), 4);
    }
}
