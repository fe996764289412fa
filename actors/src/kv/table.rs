//! One session's block table: which blocks hold its tokens, in order.

use super::hash::BlockHash;
use super::ids::{BlockId, TokenId};
use super::scope::ShareScope;
use crate::ids::Owner;

/// A session's tokens as blocks: every block but the last is full; the last
/// may be partial. Full blocks may be shared with other tables; the partial
/// last block never is (a fork copies it).
///
/// The pool owns every table (so that releasing one is the only way its
/// references go, and happens once); read one with
/// [`BlockPool::table`](super::BlockPool::table).
#[derive(Clone, Debug)]
pub struct BlockTable {
    owner: Owner,
    scope: ShareScope,
    pub(crate) blocks: Vec<BlockId>,
    pub(crate) tokens: u64,
    /// Hash of the last full block: the parent of the next one.
    pub(crate) last_full_hash: Option<BlockHash>,
    /// The tokens of the partial last block (to hash it when it fills).
    pub(crate) partial: Vec<TokenId>,
    /// The hashes of the blocks after `blocks` that are in host memory
    /// (offloaded; see `offload.rs`). Empty when the table is all on the device.
    pub(crate) offloaded: Vec<Option<BlockHash>>,
}

impl BlockTable {
    pub(crate) fn new(owner: Owner, scope: ShareScope) -> Self {
        BlockTable {
            owner,
            scope,
            blocks: Vec::new(),
            tokens: 0,
            last_full_hash: None,
            partial: Vec::new(),
            offloaded: Vec::new(),
        }
    }

    /// The owner whose budget the table's blocks are charged to.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// The scope its blocks are shared in.
    pub fn scope(&self) -> &ShareScope {
        &self.scope
    }

    /// The blocks, in token order.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Blocks in host memory (offloaded); the table refuses appends,
    /// forks and snapshots until they are restored.
    pub fn offloaded_blocks(&self) -> usize {
        self.offloaded.len()
    }

    /// Tokens held.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Tokens in the partial last block (0 when every block is full).
    pub fn partial_tokens(&self) -> u32 {
        self.partial.len() as u32
    }

    /// New blocks an append of `n` tokens needs: what does not fit in the
    /// partial last block, in whole blocks.
    pub fn blocks_needed(&self, tokens_per_block: u32, n: u64) -> u64 {
        let tpb = u64::from(tokens_per_block);
        let room = if self.partial.is_empty() {
            0
        } else {
            tpb - self.partial.len() as u64
        };
        n.saturating_sub(room).div_ceil(tpb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> BlockTable {
        BlockTable::new(Owner::new("a"), ShareScope::Owner(Owner::new("a")))
    }

    #[test]
    fn an_empty_table_needs_whole_blocks() {
        let t = table();
        assert_eq!(t.blocks_needed(4, 0), 0);
        assert_eq!(t.blocks_needed(4, 1), 1);
        assert_eq!(t.blocks_needed(4, 4), 1);
        assert_eq!(t.blocks_needed(4, 5), 2);
    }

    #[test]
    fn the_partial_block_is_filled_first() {
        let mut t = table();
        t.partial = vec![1, 2, 3];
        t.tokens = 3;
        assert_eq!(t.blocks_needed(4, 1), 0);
        assert_eq!(t.blocks_needed(4, 2), 1);
        assert_eq!(t.blocks_needed(4, 5), 1);
        assert_eq!(t.blocks_needed(4, 6), 2);
    }
}
