//! What can go wrong in the block pool, as values the caller can act on.

use super::ids::{SlabId, TableId};

/// A KV configuration that cannot work. Names the field as written in TOML.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvConfigError {
    /// A count or size that must be at least 1.
    #[error("{field} must be at least 1")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// A product of fields does not fit in 64 bits.
    #[error("{field} is so large that the sizes derived from it overflow")]
    Overflow {
        /// The field.
        field: &'static str,
    },
    /// A block or slab larger than the device's largest buffer.
    #[error(
        "{field} makes a buffer of {bytes} bytes; the device's largest buffer is {max_buffer_size} bytes"
    )]
    TooLarge {
        /// The field.
        field: &'static str,
        /// The buffer it would need.
        bytes: u64,
        /// The device's largest buffer.
        max_buffer_size: u64,
    },
    /// A budget smaller than one slab: nothing could ever be allocated.
    #[error("{field} is smaller than one slab ({slab_blocks} blocks)")]
    BudgetBelowOneSlab {
        /// The field.
        field: &'static str,
        /// Blocks in one slab.
        slab_blocks: u32,
    },
}

impl KvConfigError {
    /// The field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            KvConfigError::Zero { field }
            | KvConfigError::Overflow { field }
            | KvConfigError::TooLarge { field, .. }
            | KvConfigError::BudgetBelowOneSlab { field, .. } => field,
        }
    }
}

/// Why a block-table operation was refused. Nothing changed when one is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// No live table has this id (never opened, or already released).
    #[error("{0} is not a live block table")]
    UnknownTable(TableId),
    /// The device budget is reached and not enough blocks are free or cached.
    #[error("{needed} KV blocks needed, {reclaimable} free or evictable within the device budget")]
    OutOfBlocks {
        /// Blocks the operation needs.
        needed: u64,
        /// Free plus cached blocks right now (the budget admits no new slab).
        reclaimable: u64,
    },
    /// The owner's sessions would reference more blocks than its budget.
    #[error(
        "the owner's KV budget is {limit} blocks; it references {charged}, this needs {needed} more"
    )]
    OverOwnerBudget {
        /// Blocks the operation needs.
        needed: u64,
        /// Blocks the owner's live tables reference now.
        charged: u64,
        /// The owner's budget.
        limit: u64,
    },
    /// The table would hold more blocks than the per-table cap.
    #[error(
        "a block table may hold {limit} blocks; this one holds {held}, this needs {needed} more"
    )]
    OverTableCap {
        /// Blocks the operation needs.
        needed: u64,
        /// Blocks the table holds now.
        held: u64,
        /// The cap.
        limit: u64,
    },
    /// The table's own blocks are in host memory; restore them first.
    #[error("{0} has blocks offloaded to host memory; restore them before using it")]
    Offloaded(TableId),
    /// A prefix may only be claimed by an empty table.
    #[error("{0} already holds tokens; claim a prefix before the first append")]
    TableNotEmpty(TableId),
    /// The prefix was matched in another scope than the claiming table's.
    #[error("the prefix was matched in another sharing scope than the table's")]
    PrefixScopeMismatch,
    /// The tokens given with the claim do not hash to the matched blocks.
    #[error("the claimed tokens do not match cached block {block_index} of the prefix")]
    PrefixMismatch {
        /// The first block (0-based) whose tokens differ.
        block_index: usize,
    },
    /// A matched block was evicted (and maybe reused) since the match: match again.
    #[error(
        "cached block {block_index} of the prefix was evicted since it was matched; match again"
    )]
    PrefixStale {
        /// The first block (0-based) no longer cached.
        block_index: usize,
    },
}

/// Why a slab could not be added or removed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlabError {
    /// Adding a slab would exceed the device budget.
    #[error(
        "one more slab of {slab_blocks} blocks exceeds the device budget of {budget_blocks} blocks ({total_blocks} in slabs now)"
    )]
    OverDeviceBudget {
        /// Blocks in one slab.
        slab_blocks: u32,
        /// Blocks in slabs now.
        total_blocks: u64,
        /// The device budget.
        budget_blocks: u64,
    },
    /// No slab has this id (never added, or already removed).
    #[error("{0} is not in the pool")]
    UnknownSlab(SlabId),
    /// The slab still has blocks in use (referenced or cached): it cannot go.
    #[error("{slab} still has {in_use} blocks in use")]
    SlabInUse {
        /// The slab.
        slab: SlabId,
        /// Its blocks that are not free.
        in_use: u32,
    },
}
