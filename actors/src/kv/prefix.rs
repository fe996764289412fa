//! Finding and claiming a cached prefix.

use super::error::KvError;
use super::hash::BlockHash;
use super::ids::{BlockId, TableId, TokenId};
use super::pool::BlockPool;
use super::scope::ShareScope;
use super::slab::BlockState;

/// The longest run of full blocks at the start of some tokens that the pool
/// holds (referenced or cached) in one scope. Claim it with
/// [`BlockPool::claim_prefix`]; it may go stale if blocks are evicted before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixMatch {
    scope: ShareScope,
    blocks: Vec<BlockId>,
    hashes: Vec<BlockHash>,
    tokens: u64,
}

impl PrefixMatch {
    /// Tokens covered (whole blocks).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The matched blocks, in order.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }
}

impl BlockPool {
    /// Finds the longest chain of full blocks matching the start of `tokens`
    /// in `scope`. Only full blocks match: a trailing partial block never does.
    pub fn match_prefix(&mut self, scope: &ShareScope, tokens: &[TokenId]) -> PrefixMatch {
        let tpb = self.layout().tokens_per_block as usize;
        let mut found = PrefixMatch {
            scope: scope.clone(),
            blocks: Vec::new(),
            hashes: Vec::new(),
            tokens: 0,
        };
        let mut parent = None;
        let full = tokens.len() / tpb;
        for chunk in tokens.chunks_exact(tpb) {
            let hash = BlockHash::chain(parent.as_ref(), scope, chunk);
            let Some(block) = self.blocks.lookup(&hash, scope) else {
                break;
            };
            found.blocks.push(block);
            found.hashes.push(hash);
            parent = Some(hash);
        }
        found.tokens = (found.blocks.len() * tpb) as u64;
        let hits = found.blocks.len() as u64;
        self.prefix.lookups += 1;
        self.prefix.hit_lookups += u64::from(hits > 0);
        self.prefix.hit_blocks += hits;
        self.prefix.miss_blocks += full as u64 - hits;
        found
    }

    /// References a matched prefix from an empty table instead of allocating:
    /// each block's reference count goes up by one and cached blocks leave
    /// the LRU. `tokens` are the table's tokens (at least the prefix); their
    /// hash chain must be the matched one. Returns the tokens now in the
    /// table; append the rest. All or nothing.
    pub fn claim_prefix(
        &mut self,
        id: TableId,
        prefix: &PrefixMatch,
        tokens: &[TokenId],
    ) -> Result<u64, KvError> {
        let tpb = self.layout().tokens_per_block as usize;
        let t = self.tables.get(&id).ok_or(KvError::UnknownTable(id))?;
        if t.tokens > 0 {
            return Err(KvError::TableNotEmpty(id));
        }
        if t.scope() != &prefix.scope {
            return Err(KvError::PrefixScopeMismatch);
        }
        let mut parent: Option<BlockHash> = None;
        for (i, (expected, &block)) in prefix.hashes.iter().zip(&prefix.blocks).enumerate() {
            let Some(chunk) = tokens.get(i * tpb..(i + 1) * tpb) else {
                return Err(KvError::PrefixMismatch { block_index: i });
            };
            let hash = BlockHash::chain(parent.as_ref(), &prefix.scope, chunk);
            if &hash != expected {
                return Err(KvError::PrefixMismatch { block_index: i });
            }
            if self.blocks.slab(block.slab).is_none() {
                return Err(KvError::PrefixStale { block_index: i });
            }
            let m = self.blocks.meta(block);
            let live = m.state != BlockState::Free
                && matches!(&m.hash, Some((h, s)) if *h == hash && *s == prefix.scope);
            if !live {
                return Err(KvError::PrefixStale { block_index: i });
            }
            parent = Some(hash);
        }
        let n = prefix.blocks.len() as u64;
        self.check_cap(0, n)?;
        self.check_owner(t.owner(), n)?;
        for &b in &prefix.blocks {
            self.blocks.add_ref(b);
        }
        let t = self.tables.get_mut(&id).expect("checked above");
        t.blocks.extend_from_slice(&prefix.blocks);
        t.tokens = prefix.tokens;
        t.last_full_hash = parent;
        let owner = t.owner().clone();
        self.charge(&owner, n);
        Ok(prefix.tokens)
    }
}
