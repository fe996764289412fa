//! What an operation that may need memory answers.

use super::blocks::SlabRequest;
use super::ids::{BlockLocation, TableId};

/// Done, or not yet: the pool needs a slab first.
///
/// Needing a slab is not an error: the caller creates the buffer, calls
/// [`BlockPool::add_slab`](super::BlockPool::add_slab) and retries (nothing
/// changed). Each retry either succeeds or asks again while the device budget
/// has room, so the loop ends.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant<T> {
    /// Done.
    Granted(T),
    /// Add a slab like this, then retry.
    NeedSlab(SlabRequest),
}

impl<T> Grant<T> {
    /// The result, if granted.
    pub fn granted(self) -> Option<T> {
        match self {
            Grant::Granted(t) => Some(t),
            Grant::NeedSlab(_) => None,
        }
    }
}

/// What an append did to the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Index in the table of the first new block (`table.blocks()[first_new..]`).
    pub first_new: usize,
    /// Blocks added.
    pub new_blocks: usize,
    /// Tokens the table holds now.
    pub tokens: u64,
}

/// A fork's new table, and the copy its kernel must make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forked {
    /// The new table: shares every full block of the parent.
    pub table: TableId,
    /// Copy-on-write of the parent's partial last block, if it had one.
    pub copy: Option<BlockCopy>,
}

/// Copy the first `tokens` tokens of KV from one block to another before the
/// forked table is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCopy {
    /// The parent's partial block.
    pub from: BlockLocation,
    /// The fork's own fresh block.
    pub to: BlockLocation,
    /// Tokens to copy.
    pub tokens: u32,
}

/// What releasing a table did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// References dropped: one per block the table held on the device.
    pub blocks: u64,
    /// Blocks the table had in host memory (the caller drops their copies).
    pub offloaded: u64,
}
