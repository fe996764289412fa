//! How big the block pool may grow and how long it keeps what is idle.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::KvConfigError;
use super::layout::KvLayout;
use crate::units;

/// A budget in blocks, or in bytes (rounded down to whole blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BlockBudget {
    /// A number of blocks.
    Blocks(u64),
    /// A number of bytes (`"8 GiB"`).
    Bytes(#[serde(with = "units::size")] u64),
}

impl BlockBudget {
    /// The budget in whole blocks of `layout`.
    pub fn blocks(self, layout: &KvLayout) -> u64 {
        match self {
            BlockBudget::Blocks(n) => n,
            BlockBudget::Bytes(b) => b / layout.block_bytes().max(1),
        }
    }
}

/// The block pool's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvPoolConfig {
    /// The shape of one token's KV and of a block.
    pub layout: KvLayout,
    /// Blocks in one slab (one device buffer). Larger slabs mean fewer
    /// buffers but coarser growth and trimming.
    pub blocks_per_slab: u32,
    /// Every block in every slab counts once against this, free or not.
    /// Rounded down to whole slabs.
    pub device_budget: BlockBudget,
    /// Cached blocks (hashed, referenced by nobody) count against this
    /// alone. Zero turns the prefix cache off past the last sharer.
    pub cache_budget: BlockBudget,
    /// Each owner's sessions may reference at most this many blocks,
    /// counting a shared block once per session that references it. `None`: no limit.
    #[serde(default)]
    pub owner_budget: Option<BlockBudget>,
    /// One table may hold at most this many blocks. `None`: no cap.
    #[serde(default)]
    pub table_cap_blocks: Option<u64>,
    /// A cached block is not evicted for this long after its last user
    /// released it while a new slab could be added instead; under pressure
    /// (device budget reached, or cache budget full) it is. Zero: plain LRU.
    #[serde(with = "units::duration", default)]
    pub keep_alive: Duration,
    /// A slab whose blocks have all been free this long is offered for
    /// trimming by [`BlockPool::trimmable_slabs`](super::BlockPool::trimmable_slabs).
    #[serde(with = "units::duration")]
    pub slab_idle_trim: Duration,
}

impl KvPoolConfig {
    /// Refuses a configuration that cannot work on a device whose largest
    /// buffer is `max_buffer_size` bytes, naming the field.
    pub fn validate(&self, max_buffer_size: u64) -> Result<(), KvConfigError> {
        self.layout.validate(max_buffer_size)?;
        if self.blocks_per_slab == 0 {
            return Err(KvConfigError::Zero {
                field: "kv.blocks_per_slab",
            });
        }
        let slab = self
            .layout
            .block_bytes()
            .checked_mul(u64::from(self.blocks_per_slab))
            .ok_or(KvConfigError::Overflow {
                field: "kv.blocks_per_slab",
            })?;
        if slab > max_buffer_size {
            return Err(KvConfigError::TooLarge {
                field: "kv.blocks_per_slab",
                bytes: slab,
                max_buffer_size,
            });
        }
        if self.device_budget.blocks(&self.layout) < u64::from(self.blocks_per_slab) {
            return Err(KvConfigError::BudgetBelowOneSlab {
                field: "kv.device_budget",
                slab_blocks: self.blocks_per_slab,
            });
        }
        Ok(())
    }

    /// The device budget in blocks, rounded down to whole slabs.
    pub(crate) fn device_blocks(&self) -> u64 {
        let per_slab = u64::from(self.blocks_per_slab.max(1));
        self.device_budget.blocks(&self.layout) / per_slab * per_slab
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn config() -> KvPoolConfig {
        KvPoolConfig {
            layout: KvLayout {
                tokens_per_block: 4,
                bytes_per_token: 16,
            },
            blocks_per_slab: 8,
            device_budget: BlockBudget::Blocks(20),
            cache_budget: BlockBudget::Blocks(4),
            owner_budget: None,
            table_cap_blocks: None,
            keep_alive: Duration::ZERO,
            slab_idle_trim: Duration::from_secs(10),
        }
    }

    #[test]
    fn device_budget_rounds_down_to_whole_slabs() {
        assert_eq!(config().device_blocks(), 16);
        let bytes = KvPoolConfig {
            device_budget: BlockBudget::Bytes(64 * 17),
            ..config()
        };
        assert_eq!(bytes.device_blocks(), 16);
    }

    #[test]
    fn a_slab_larger_than_the_largest_buffer_is_refused() {
        let e = config().validate(64 * 8 - 1).unwrap_err();
        assert_eq!(e.field(), "kv.blocks_per_slab");
        assert!(config().validate(64 * 8).is_ok());
    }

    #[test]
    fn zero_blocks_per_slab_and_tiny_budgets_are_refused() {
        let zero = KvPoolConfig {
            blocks_per_slab: 0,
            ..config()
        };
        assert_eq!(
            zero.validate(u64::MAX).unwrap_err().field(),
            "kv.blocks_per_slab"
        );
        let tiny = KvPoolConfig {
            device_budget: BlockBudget::Blocks(7),
            ..config()
        };
        assert_eq!(
            tiny.validate(u64::MAX).unwrap_err().field(),
            "kv.device_budget"
        );
    }

    #[test]
    fn layout_errors_pass_through() {
        let mut c = config();
        c.layout.bytes_per_token = 0;
        assert_eq!(
            c.validate(u64::MAX).unwrap_err().field(),
            "kv.layout.bytes_per_token"
        );
    }

    #[test]
    fn reads_human_units() {
        let c: KvPoolConfig = serde_json::from_str(
            r#"{"layout":{"tokens_per_block":16,"bytes_per_token":1024},
                "blocks_per_slab":64,"device_budget":{"bytes":"64 MiB"},
                "cache_budget":{"blocks":128},"keep_alive":"30s","slab_idle_trim":"1m"}"#,
        )
        .unwrap();
        assert_eq!(c.device_budget, BlockBudget::Bytes(64 << 20));
        assert_eq!(c.device_blocks(), 4096);
        assert_eq!(c.keep_alive, Duration::from_secs(30));
    }
}
