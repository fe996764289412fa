//! The names of things in the block pool: slabs, blocks, tables, tokens.

use std::fmt;

/// A token id, as the model's tokenizer gives it.
pub type TokenId = u32;

/// One slab: one large device buffer carved into blocks.
///
/// Ids are never reused, so a stale [`BlockId`] of a trimmed slab can never
/// name a block of a newer slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlabId(pub(crate) u32);

impl SlabId {
    /// The id as a number (for the application's map from slab to buffer).
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for SlabId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slab-{}", self.0)
    }
}

/// One block: a slab and the block's index inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId {
    /// The slab that holds the block.
    pub slab: SlabId,
    /// The block's index inside the slab (`0..blocks_per_slab`).
    pub index: u32,
}

/// Where a kernel finds a block: the slab's buffer and the byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockLocation {
    /// The slab whose buffer holds the block.
    pub slab: SlabId,
    /// Byte offset of the block's first token in that buffer.
    pub offset: u64,
}

/// One session's block table in the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
///
/// Non-zero: a session keeps `Option<TableId>` in 8 bytes.
pub struct TableId(pub(crate) std::num::NonZeroU64);

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table-{}", self.0)
    }
}
