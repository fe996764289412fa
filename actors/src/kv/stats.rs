//! What the pool reports about itself.

use serde::Serialize;

use super::pool::BlockPool;

/// A snapshot of the pool's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KvStats {
    /// Blocks in slabs (free or not).
    pub blocks_total: u64,
    /// Blocks referenced by at least one table.
    pub blocks_referenced: u64,
    /// Blocks referenced by two tables or more.
    pub blocks_shared: u64,
    /// Blocks referenced by nobody, kept as a prefix cache.
    pub blocks_cached: u64,
    /// Free blocks.
    pub blocks_free: u64,
    /// Blocks handed out since the pool started (a cached block reused counts again).
    pub blocks_allocated_total: u64,
    /// Cached blocks evicted since the pool started.
    pub blocks_evicted_total: u64,
    /// References that no live table accounts for. Must be 0: anything
    /// else is a leak of a released table's blocks.
    pub blocks_held_by_released_tables: u64,
    /// `match_prefix` calls.
    pub prefix_lookups: u64,
    /// `match_prefix` calls that found at least one block.
    pub prefix_hit_lookups: u64,
    /// Full blocks found by `match_prefix`.
    pub prefix_hit_blocks: u64,
    /// Full blocks `match_prefix` looked for and did not find.
    pub prefix_miss_blocks: u64,
    /// Bytes that sharing saves now: every reference past a block's first,
    /// times the block size.
    pub bytes_saved_by_sharing: u64,
    /// Slabs added since the pool started.
    pub slabs_created: u64,
    /// Slabs removed since the pool started.
    pub slabs_trimmed: u64,
    /// Live block tables.
    pub tables: u64,
    /// Blocks of live tables that are offloaded to host memory now.
    pub blocks_offloaded: u64,
    /// Offloads that moved at least one block, since the pool started.
    pub offloads_total: u64,
    /// Restores of offloaded blocks, since the pool started.
    pub restores_total: u64,
}

impl BlockPool {
    /// The counters now. O(1).
    pub fn stats(&self) -> KvStats {
        let c = &self.blocks.counts;
        let p = &self.prefix;
        KvStats {
            blocks_total: c.total,
            blocks_referenced: c.referenced,
            blocks_shared: c.shared,
            blocks_cached: c.cached,
            blocks_free: c.free,
            blocks_allocated_total: c.allocations,
            blocks_evicted_total: c.evictions,
            blocks_held_by_released_tables: c.refs.abs_diff(self.table_refs),
            prefix_lookups: p.lookups,
            prefix_hit_lookups: p.hit_lookups,
            prefix_hit_blocks: p.hit_blocks,
            prefix_miss_blocks: p.miss_blocks,
            bytes_saved_by_sharing: (c.refs - c.referenced) * self.layout().block_bytes(),
            slabs_created: c.slabs_created,
            slabs_trimmed: c.slabs_trimmed,
            tables: self.tables.len() as u64,
            blocks_offloaded: self.offload_counts.blocks_now,
            offloads_total: self.offload_counts.offloads,
            restores_total: self.offload_counts.restores,
        }
    }
}
