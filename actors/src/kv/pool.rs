//! The block pool: tables, owners and budgets over the block books.

use std::collections::HashMap;
use std::time::Instant;

use super::blocks::Blocks;
use super::config::KvPoolConfig;
use super::error::{KvConfigError, KvError, SlabError};
use super::grant::{Appended, BlockCopy, Forked, Grant, Released};
use super::hash::BlockHash;
use super::ids::{BlockId, BlockLocation, SlabId, TableId, TokenId};
use super::layout::KvLayout;
use super::scope::ShareScope;
use super::slab::BlockState;
use super::table::BlockTable;
use crate::ids::Owner;

/// The bookkeeping of every KV block: slabs, block tables, the prefix
/// cache and the budgets. Pure: it holds no memory (the caller maps each
/// [`SlabId`] to a buffer) and reads no clock (every call that needs the
/// time takes `now`, which must not go backwards).
///
/// **Budgets.** The device budget counts every block in every slab once.
/// An owner is charged one block per entry of each of its live tables, so a
/// block shared by several sessions is charged to each of them, and one
/// tenant can never pin another tenant's budget. Cached (unreferenced)
/// blocks count only against the cache budget.
///
/// **Sharing** happens only inside one [`ShareScope`] (the owner by
/// default). A cache hit across owners is a timing side channel: share a
/// [`Salt`](super::Salt) only for prefixes that are not secret.
///
/// The full design (allocation order, keep-alive, trimming, how the engine
/// plugs it in) is in the docs at the top of `actors/src/kv/mod.rs`.
#[derive(Debug)]
pub struct BlockPool {
    config: KvPoolConfig,
    pub(crate) blocks: Blocks,
    pub(crate) tables: HashMap<TableId, BlockTable>,
    next_table: u64,
    /// Blocks each owner's live tables reference (a shared block once per table).
    pub(crate) owners: HashMap<Owner, u64>,
    owner_limit: Option<u64>,
    /// Sum of the live tables' lengths; equals the sum of reference counts.
    pub(crate) table_refs: u64,
    pub(crate) prefix: PrefixCounters,
    pub(crate) offload_counts: super::offload::OffloadCounts,
}

/// Prefix-cache lookups, for the stats.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PrefixCounters {
    pub(crate) lookups: u64,
    pub(crate) hit_lookups: u64,
    pub(crate) hit_blocks: u64,
    pub(crate) miss_blocks: u64,
}

impl BlockPool {
    /// A pool with no slab yet, for a device whose largest buffer is
    /// `max_buffer_size` bytes.
    pub fn new(config: KvPoolConfig, max_buffer_size: u64) -> Result<Self, KvConfigError> {
        config.validate(max_buffer_size)?;
        let layout = config.layout;
        let blocks = Blocks::new(
            config.blocks_per_slab,
            layout.block_bytes(),
            config.device_blocks(),
            config.cache_budget.blocks(&layout),
        );
        let owner_limit = config.owner_budget.map(|b| b.blocks(&layout));
        Ok(BlockPool {
            config,
            blocks,
            tables: HashMap::new(),
            next_table: 1,
            owners: HashMap::new(),
            owner_limit,
            table_refs: 0,
            prefix: PrefixCounters::default(),
            offload_counts: Default::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KvPoolConfig {
        &self.config
    }

    /// The layout.
    pub fn layout(&self) -> &KvLayout {
        &self.config.layout
    }

    /// Opens an empty table for a session of `owner`, sharing in `scope`.
    pub fn open_table(&mut self, owner: Owner, scope: ShareScope) -> TableId {
        let id = self.next_table_id();
        self.tables.insert(id, BlockTable::new(owner, scope));
        id
    }

    /// A new table's id (never reused).
    fn next_table_id(&mut self) -> TableId {
        let id = std::num::NonZeroU64::new(self.next_table).expect("table ids count up from 1");
        self.next_table += 1;
        TableId(id)
    }

    /// A live table.
    pub fn table(&self, id: TableId) -> Option<&BlockTable> {
        self.tables.get(&id)
    }

    /// Where a block lives. Stable while any table references the block.
    pub fn location(&self, block: BlockId) -> BlockLocation {
        self.blocks.location(block)
    }

    /// A table's blocks as (slab, offset), in token order: a copy the caller
    /// may hand to a kernel (guarded by the caller's lease).
    pub fn snapshot(&self, id: TableId) -> Result<Vec<BlockLocation>, KvError> {
        self.check_on_device(id)?;
        let t = &self.tables[&id];
        Ok(t.blocks.iter().map(|&b| self.blocks.location(b)).collect())
    }

    /// How many tables reference a block now (0 for a free or cached block,
    /// or a block of a trimmed slab).
    pub fn ref_count(&self, block: BlockId) -> u32 {
        match self
            .blocks
            .slab(block.slab)
            .and_then(|s| s.blocks.get(block.index as usize))
        {
            Some(m) => match m.state {
                BlockState::Referenced(n) => n,
                BlockState::Free | BlockState::Cached => 0,
            },
            None => 0,
        }
    }

    /// Blocks `owner`'s live tables reference (a shared block once per table).
    pub fn owner_charge(&self, owner: &Owner) -> u64 {
        self.owners.get(owner).copied().unwrap_or(0)
    }

    /// Refuses `n` more blocks for `owner` past its budget.
    pub(crate) fn check_owner(&self, owner: &Owner, n: u64) -> Result<(), KvError> {
        let charged = self.owner_charge(owner);
        match self.owner_limit {
            Some(limit) if charged + n > limit => Err(KvError::OverOwnerBudget {
                needed: n,
                charged,
                limit,
            }),
            _ => Ok(()),
        }
    }

    pub(crate) fn check_cap(&self, held: u64, n: u64) -> Result<(), KvError> {
        match self.config.table_cap_blocks {
            Some(limit) if held + n > limit => Err(KvError::OverTableCap {
                needed: n,
                held,
                limit,
            }),
            _ => Ok(()),
        }
    }

    pub(crate) fn charge(&mut self, owner: &Owner, n: u64) {
        if n > 0 {
            *self.owners.entry(owner.clone()).or_insert(0) += n;
            self.table_refs += n;
        }
    }

    /// Takes back `n` blocks charged to `owner` (references its tables dropped).
    pub(crate) fn uncharge(&mut self, owner: &Owner, n: u64) {
        self.table_refs -= n;
        if let Some(c) = self.owners.get_mut(owner) {
            *c -= n;
            if *c == 0 {
                self.owners.remove(owner);
            }
        }
    }

    /// Appends tokens to a table. Fills the partial last block, then takes
    /// new blocks; every block that becomes full is hashed and becomes
    /// findable by [`match_prefix`](Self::match_prefix). All or nothing.
    pub fn append(
        &mut self,
        id: TableId,
        tokens: &[TokenId],
        now: Instant,
    ) -> Result<Grant<Appended>, KvError> {
        let tpb = self.config.layout.tokens_per_block;
        self.check_on_device(id)?;
        let t = &self.tables[&id];
        let n = t.blocks_needed(tpb, tokens.len() as u64);
        self.check_cap(t.blocks.len() as u64, n)?;
        self.check_owner(t.owner(), n)?;
        if let Some(request) = self.blocks.plan(n, now, self.config.keep_alive)? {
            return Ok(Grant::NeedSlab(request));
        }
        let t = self.tables.get_mut(&id).expect("checked above");
        let first_new = t.blocks.len();
        for _ in 0..n {
            t.blocks.push(self.blocks.take(now));
        }
        let owner = t.owner().clone();
        let tpb = tpb as usize;
        for &token in tokens {
            t.partial.push(token);
            t.tokens += 1;
            if t.partial.len() == tpb {
                let hash = BlockHash::chain(t.last_full_hash.as_ref(), t.scope(), &t.partial);
                let block = t.blocks[((t.tokens - 1) / tpb as u64) as usize];
                self.blocks.set_hash(block, hash, t.scope());
                t.last_full_hash = Some(hash);
                t.partial.clear();
            }
        }
        let appended = Appended {
            first_new,
            new_blocks: n as usize,
            tokens: t.tokens,
        };
        self.charge(&owner, n);
        Ok(Grant::Granted(appended))
    }

    /// A new table with the parent's owner and scope that shares every full
    /// block of the parent; the parent's partial last block is copied into a
    /// fresh block (see [`Forked::copy`]).
    pub fn fork(&mut self, parent: TableId, now: Instant) -> Result<Grant<Forked>, KvError> {
        let tpb = u64::from(self.config.layout.tokens_per_block);
        self.check_on_device(parent)?;
        let p = &self.tables[&parent];
        let held = p.blocks.len() as u64;
        self.check_owner(p.owner(), held)?;
        let has_partial = !p.partial.is_empty();
        if has_partial && let Some(request) = self.blocks.plan(1, now, self.config.keep_alive)? {
            return Ok(Grant::NeedSlab(request));
        }
        let mut child = p.clone();
        let full = (p.tokens / tpb) as usize;
        for &b in &child.blocks[..full] {
            self.blocks.add_ref(b);
        }
        let copy = if has_partial {
            let fresh = self.blocks.take(now);
            let from = self.blocks.location(child.blocks[full]);
            child.blocks[full] = fresh;
            Some(BlockCopy {
                from,
                to: self.blocks.location(fresh),
                tokens: child.partial.len() as u32,
            })
        } else {
            None
        };
        let owner = child.owner().clone();
        let table = self.next_table_id();
        self.tables.insert(table, child);
        self.charge(&owner, held);
        Ok(Grant::Granted(Forked { table, copy }))
    }

    /// Ends a table: drops its reference to every block it holds, exactly
    /// once (the table is gone afterwards). A block nobody references any
    /// more becomes cached if it is hashed and the cache budget has room
    /// (evicting the oldest cached block when it is full), else free.
    pub fn release_table(&mut self, id: TableId, now: Instant) -> Result<Released, KvError> {
        let t = self.tables.remove(&id).ok_or(KvError::UnknownTable(id))?;
        // Last block first: the prefix's root ends up most recently used,
        // so eviction takes a chain's tail before its head.
        for &b in t.blocks.iter().rev() {
            self.blocks.release_ref(b, now);
        }
        let n = t.blocks.len() as u64;
        self.uncharge(t.owner(), n);
        // Blocks in host memory are already off the device: only the count goes.
        let offloaded = t.offloaded.len() as u64;
        self.offload_counts.blocks_now -= offloaded;
        Ok(Released {
            blocks: n,
            offloaded,
        })
    }

    /// Where the blocks are that were handed out again (by appends, forks
    /// and restores) since the last call: they hold a previous holder's
    /// bytes. The engine clears them before their new holder can read them;
    /// a block of a new slab is zero already and is never listed.
    pub fn take_recycled(&mut self) -> Vec<BlockLocation> {
        let ids = self.blocks.take_recycled();
        ids.into_iter().map(|b| self.blocks.location(b)).collect()
    }

    /// Adds a slab (the caller has created its buffer). Refused past the
    /// device budget.
    pub fn add_slab(&mut self, now: Instant) -> Result<SlabId, SlabError> {
        self.blocks.add_slab(now)
    }

    /// Slabs whose blocks have all been free for `slab_idle_trim` at `now`.
    pub fn trimmable_slabs(&self, now: Instant) -> impl Iterator<Item = SlabId> + '_ {
        self.blocks.trimmable(now, self.config.slab_idle_trim)
    }

    /// Takes a slab out of the pool, so that its buffer can be released.
    /// Refused while any of its blocks is referenced or cached.
    ///
    /// A trim cannot race an append: both take `&mut self`, so one happens
    /// first. If the append did, the slab has a block in use and the trim is
    /// refused; if the trim did, the slab's blocks are gone from the free
    /// lists and the append takes others (or asks for a new slab).
    pub fn remove_slab(&mut self, id: SlabId) -> Result<(), SlabError> {
        self.blocks.remove_slab(id)
    }

    /// Frees up to `max` cached blocks, least recently used first (for
    /// memory pressure from outside the pool, or to let slabs empty).
    /// Returns how many.
    pub fn evict_cached(&mut self, max: u64, now: Instant) -> u64 {
        self.blocks.evict_cached(max, now)
    }

    /// Whether `n` more blocks could fit even if every session ended: the
    /// device budget's blocks less those of `table` itself (which would not
    /// end). When not, ending sessions cannot help: refuse at once.
    ///
    /// `held` is what the table has on the device: a restore asks for its
    /// offloaded blocks as `n`, so counting them as held too would refuse
    /// every restore of more than half the device.
    pub fn could_fit_if_others_ended(&self, table: TableId, n: u64) -> bool {
        let held = self.tables.get(&table).map_or(0, |t| t.blocks.len() as u64);
        n.saturating_add(held) <= self.blocks.device_blocks()
    }

    /// Whether `n` more blocks for `owner` could be had without ending any
    /// session: free + cached blocks + the room the device budget leaves for
    /// new slabs, and the owner's budget. When not, refuse at once instead of
    /// waiting: only ending sessions could make the room.
    pub fn can_ever_fit(&self, owner: &Owner, n: u64) -> bool {
        let c = &self.blocks.counts;
        let headroom = self.blocks.device_blocks() - c.total;
        let reclaimable = c.free + c.cached + headroom;
        n <= reclaimable && self.check_owner(owner, n).is_ok()
    }
}
