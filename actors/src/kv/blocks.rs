//! The books of every block in every slab: free lists, reference counts,
//! the hash index and the LRU of cached blocks. No tables, no owners: those
//! are the pool's (`pool.rs`).
//!
//! Ground rules: every state change of a block goes through a method here,
//! which keeps the counters equal to what the blocks say
//! (`free + cached + referenced == total`). Nothing here reads a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::error::{KvError, SlabError};
use super::hash::BlockHash;
use super::ids::{BlockId, BlockLocation, SlabId};
use super::lru::Lru;
use super::scope::ShareScope;
use super::slab::{BlockMeta, BlockState, Slab, SlabClass};

/// The pool needs one more slab before it can grant the request: create a
/// buffer of `slab_bytes`, call [`BlockPool::add_slab`](super::BlockPool::add_slab),
/// and retry. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabRequest {
    /// Blocks the new slab holds.
    pub blocks_per_slab: u32,
    /// Bytes of the buffer to create.
    pub slab_bytes: u64,
}

/// Counters kept in step with the blocks' states.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BlockCounts {
    pub(crate) total: u64,
    pub(crate) free: u64,
    pub(crate) cached: u64,
    pub(crate) referenced: u64,
    /// Blocks with a reference count of 2 or more.
    pub(crate) shared: u64,
    /// Sum of all reference counts.
    pub(crate) refs: u64,
    pub(crate) allocations: u64,
    pub(crate) evictions: u64,
    pub(crate) slabs_created: u64,
    pub(crate) slabs_trimmed: u64,
}

#[derive(Debug)]
pub(crate) struct Blocks {
    blocks_per_slab: u32,
    block_bytes: u64,
    device_blocks: u64,
    cache_blocks: u64,
    /// Indexed by `SlabId`; `None` once trimmed (ids are never reused).
    slabs: Vec<Option<Slab>>,
    /// Slabs with blocks both in use and free: allocated from first, so that
    /// idle slabs can empty and be trimmed.
    partial: Vec<SlabId>,
    /// Slabs with every block free, oldest-emptied first.
    empty: Vec<SlabId>,
    pub(crate) lru: Lru,
    /// The one findable block per hash.
    index: HashMap<BlockHash, BlockId>,
    /// Blocks handed out again since the last `take_recycled`: their bytes
    /// are a previous holder's, and must be cleared before anyone reads them.
    recycled: Vec<BlockId>,
    pub(crate) counts: BlockCounts,
}

impl Blocks {
    pub(crate) fn new(
        blocks_per_slab: u32,
        block_bytes: u64,
        device_blocks: u64,
        cache_blocks: u64,
    ) -> Self {
        Blocks {
            blocks_per_slab,
            block_bytes,
            device_blocks,
            cache_blocks,
            slabs: Vec::new(),
            partial: Vec::new(),
            empty: Vec::new(),
            lru: Lru::default(),
            index: HashMap::new(),
            recycled: Vec::new(),
            counts: BlockCounts::default(),
        }
    }

    pub(crate) fn device_blocks(&self) -> u64 {
        self.device_blocks
    }

    pub(crate) fn meta(&self, id: BlockId) -> &BlockMeta {
        &self.slab(id.slab).expect("block of a live slab").blocks[id.index as usize]
    }

    pub(crate) fn meta_mut(&mut self, id: BlockId) -> &mut BlockMeta {
        &mut self.slabs[id.slab.0 as usize]
            .as_mut()
            .expect("block of a live slab")
            .blocks[id.index as usize]
    }

    pub(crate) fn slab(&self, id: SlabId) -> Option<&Slab> {
        self.slabs.get(id.0 as usize).and_then(Option::as_ref)
    }

    #[cfg(test)]
    pub(crate) fn live_slabs(&self) -> impl Iterator<Item = (SlabId, &Slab)> {
        self.slabs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (SlabId(i as u32), s)))
    }

    pub(crate) fn location(&self, id: BlockId) -> BlockLocation {
        BlockLocation {
            slab: id.slab,
            offset: u64::from(id.index) * self.block_bytes,
        }
    }

    /// Blocks a new slab would add, if the device budget admits one.
    fn slab_headroom(&self) -> bool {
        self.counts.total + u64::from(self.blocks_per_slab) <= self.device_blocks
    }

    /// Whether `n` blocks can be taken now, and from where. `Ok(None)`: take
    /// them with [`take`](Self::take); `Ok(Some(request))`: add a slab first.
    ///
    /// The order: free blocks; cached blocks past their keep-alive (oldest
    /// first); a new slab, while the device budget admits one; then cached
    /// blocks still inside their keep-alive (pressure).
    pub(crate) fn plan(
        &self,
        n: u64,
        now: Instant,
        keep_alive: Duration,
    ) -> Result<Option<SlabRequest>, KvError> {
        let free = self.counts.free;
        if free >= n {
            return Ok(None);
        }
        if self.lru_expired(n - free, now, keep_alive) >= n - free {
            return Ok(None);
        }
        if self.slab_headroom() {
            return Ok(Some(SlabRequest {
                blocks_per_slab: self.blocks_per_slab,
                slab_bytes: self.block_bytes * u64::from(self.blocks_per_slab),
            }));
        }
        if free + self.counts.cached >= n {
            return Ok(None);
        }
        Err(KvError::OutOfBlocks {
            needed: n,
            reclaimable: free + self.counts.cached,
        })
    }

    /// Takes one block, referenced once. Only after [`plan`](Self::plan)
    /// said the blocks are there.
    pub(crate) fn take(&mut self, now: Instant) -> BlockId {
        let id = match self.partial.last().or(self.empty.last()).copied() {
            Some(slab_id) => {
                let slab = self.slabs[slab_id.0 as usize]
                    .as_mut()
                    .expect("listed slab is live");
                let index = slab.free.pop().expect("listed slab has a free block");
                slab.in_use += 1;
                self.counts.free -= 1;
                self.reclassify(slab_id, now);
                BlockId {
                    slab: slab_id,
                    index,
                }
            }
            None => {
                let id = self.lru.head.expect("plan counted a cached block");
                self.lru_unlink(id);
                self.unindex(id);
                self.counts.cached -= 1;
                self.counts.evictions += 1;
                id
            }
        };
        let m = self.meta_mut(id);
        m.state = BlockState::Referenced(1);
        m.hash = None;
        m.released_at = None;
        if std::mem::replace(&mut m.used, true) {
            self.recycled.push(id);
        }
        self.counts.referenced += 1;
        self.counts.refs += 1;
        self.counts.allocations += 1;
        id
    }

    /// The blocks handed out again since the last call (see `recycled`).
    pub(crate) fn take_recycled(&mut self) -> Vec<BlockId> {
        std::mem::take(&mut self.recycled)
    }

    /// One more reference to a referenced or cached block.
    pub(crate) fn add_ref(&mut self, id: BlockId) {
        match self.meta(id).state {
            BlockState::Referenced(n) => {
                if n == 1 {
                    self.counts.shared += 1;
                }
                self.meta_mut(id).state = BlockState::Referenced(n + 1);
            }
            BlockState::Cached => {
                self.lru_unlink(id);
                self.counts.cached -= 1;
                self.counts.referenced += 1;
                let m = self.meta_mut(id);
                m.state = BlockState::Referenced(1);
                m.released_at = None;
            }
            BlockState::Free => unreachable!("a free block is never referenced"),
        }
        self.counts.refs += 1;
    }

    /// Drops one reference. At zero, a hashed block becomes cached (if the
    /// cache budget has room, evicting the oldest cached block when full);
    /// any other block becomes free.
    pub(crate) fn release_ref(&mut self, id: BlockId, now: Instant) {
        let BlockState::Referenced(n) = self.meta(id).state else {
            unreachable!("only referenced blocks are released")
        };
        self.counts.refs -= 1;
        if n > 1 {
            if n == 2 {
                self.counts.shared -= 1;
            }
            self.meta_mut(id).state = BlockState::Referenced(n - 1);
            return;
        }
        self.counts.referenced -= 1;
        // A private copy of a prefix whose findable block is gone takes its place.
        if let Some((hash, _)) = self.meta(id).hash
            && !self.meta(id).indexed
            && !self.index.contains_key(&hash)
        {
            self.index.insert(hash, id);
            self.meta_mut(id).indexed = true;
        }
        if self.meta(id).indexed && self.cache_blocks > 0 {
            if self.counts.cached >= self.cache_blocks {
                let oldest = self.lru.head.expect("a full cache has a head");
                self.free_cached(oldest, now);
            }
            let m = self.meta_mut(id);
            m.state = BlockState::Cached;
            m.released_at = Some(now);
            self.lru_push_back(id);
            self.counts.cached += 1;
        } else {
            self.put_free(id, now);
        }
    }

    /// Records a full block's hash; makes it findable unless another block
    /// already is for that hash.
    pub(crate) fn set_hash(&mut self, id: BlockId, hash: BlockHash, scope: &ShareScope) {
        let indexed = !self.index.contains_key(&hash);
        if indexed {
            self.index.insert(hash, id);
        }
        let m = self.meta_mut(id);
        m.hash = Some((hash, scope.clone()));
        m.indexed = indexed;
    }

    /// The findable, live block holding `hash` in `scope`.
    pub(crate) fn lookup(&self, hash: &BlockHash, scope: &ShareScope) -> Option<BlockId> {
        let id = *self.index.get(hash)?;
        let m = self.meta(id);
        let same = matches!(&m.hash, Some((h, s)) if h == hash && s == scope);
        (same && m.state != BlockState::Free).then_some(id)
    }

    /// Frees up to `max` cached blocks, oldest first. Returns how many.
    pub(crate) fn evict_cached(&mut self, max: u64, now: Instant) -> u64 {
        let mut done = 0;
        while done < max {
            let Some(id) = self.lru.head else { break };
            self.free_cached(id, now);
            done += 1;
        }
        done
    }

    fn free_cached(&mut self, id: BlockId, now: Instant) {
        self.lru_unlink(id);
        self.counts.cached -= 1;
        self.counts.evictions += 1;
        self.put_free(id, now);
    }

    fn unindex(&mut self, id: BlockId) {
        let m = self.meta_mut(id);
        if std::mem::take(&mut m.indexed)
            && let Some((hash, _)) = m.hash
        {
            self.index.remove(&hash);
        }
    }

    fn put_free(&mut self, id: BlockId, now: Instant) {
        self.unindex(id);
        self.slabs[id.slab.0 as usize]
            .as_mut()
            .expect("block of a live slab")
            .put_free(id.index);
        self.counts.free += 1;
        self.reclassify(id.slab, now);
    }

    /// Moves a slab to the set its counts call for.
    fn reclassify(&mut self, id: SlabId, now: Instant) {
        let slab = self.slabs[id.0 as usize].as_mut().expect("live slab");
        let (old, new) = (slab.class, slab.wanted_class());
        if old == new {
            return;
        }
        slab.class = new;
        match old {
            SlabClass::Partial => {
                let pos = slab
                    .partial_pos
                    .take()
                    .expect("partial slab has a position");
                self.partial.swap_remove(pos);
                if let Some(&moved) = self.partial.get(pos) {
                    self.slabs[moved.0 as usize]
                        .as_mut()
                        .expect("live slab")
                        .partial_pos = Some(pos);
                }
            }
            SlabClass::Empty => {
                // Allocation takes the most recently emptied slab: the last one.
                let pos = self.empty.iter().rposition(|&s| s == id).expect("listed");
                self.empty.remove(pos);
            }
            SlabClass::Full => {}
        }
        let slab = self.slabs[id.0 as usize].as_mut().expect("live slab");
        slab.empty_since = None;
        match new {
            SlabClass::Partial => {
                slab.partial_pos = Some(self.partial.len());
                self.partial.push(id);
            }
            SlabClass::Empty => {
                slab.empty_since = Some(now);
                self.empty.push(id);
            }
            SlabClass::Full => {}
        }
    }

    pub(crate) fn add_slab(&mut self, now: Instant) -> Result<SlabId, SlabError> {
        if !self.slab_headroom() {
            return Err(SlabError::OverDeviceBudget {
                slab_blocks: self.blocks_per_slab,
                total_blocks: self.counts.total,
                budget_blocks: self.device_blocks,
            });
        }
        let id = SlabId(u32::try_from(self.slabs.len()).expect("fewer than 2^32 slabs ever"));
        self.slabs.push(Some(Slab::new(self.blocks_per_slab, now)));
        self.empty.push(id);
        let n = u64::from(self.blocks_per_slab);
        self.counts.total += n;
        self.counts.free += n;
        self.counts.slabs_created += 1;
        Ok(id)
    }

    /// Slabs whose blocks have all been free for `idle` at `now`.
    pub(crate) fn trimmable(&self, now: Instant, idle: Duration) -> impl Iterator<Item = SlabId> {
        self.empty.iter().copied().filter(move |&id| {
            self.slab(id)
                .and_then(|s| s.empty_since)
                .is_some_and(|t| now.saturating_duration_since(t) >= idle)
        })
    }

    pub(crate) fn remove_slab(&mut self, id: SlabId) -> Result<(), SlabError> {
        let slab = self.slab(id).ok_or(SlabError::UnknownSlab(id))?;
        if slab.in_use > 0 {
            return Err(SlabError::SlabInUse {
                slab: id,
                in_use: slab.in_use,
            });
        }
        let pos = self
            .empty
            .iter()
            .position(|&s| s == id)
            .expect("empty slab is listed");
        self.empty.remove(pos);
        self.slabs[id.0 as usize] = None;
        let n = u64::from(self.blocks_per_slab);
        self.counts.total -= n;
        self.counts.free -= n;
        self.counts.slabs_trimmed += 1;
        Ok(())
    }
}
