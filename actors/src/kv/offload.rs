//! Offload of a table's own blocks to host memory, and their restore — the
//! bookkeeping half (the engine's KV store copies the bytes).
//!
//! What moves: the **unshared suffix** of a table, the blocks only this
//! table references. Shared blocks stay: offloading them would free nothing.
//! Sharing only ever happens by prefix (a claimed prefix, a fork's full
//! blocks), so a table's reference counts never grow along the table, and
//! its unshared blocks are always a suffix.
//!
//! The protocol, each step under the caller's lock, the copies between:
//! 1. [`offload_plan`](BlockPool::offload_plan): where the suffix is. Nothing changes.
//! 2. The caller reads those blocks to host memory.
//! 3. [`offload`](BlockPool::offload): the blocks are released (a hashed one
//!    becomes an evictable cached prefix, any other free), the owner's charge
//!    drops, and the table remembers their hashes. A block that another table
//!    claimed between 1 and 3 is shared now and stays (the answer says from
//!    where the offload really began; the caller drops the copies before it).
//! 4. [`restore`](BlockPool::restore): fresh blocks for the suffix, charged
//!    again, **unhashed** (nobody can claim them before they hold the data).
//! 5. The caller writes the host copies into them.
//! 6. [`restored`](BlockPool::restored): the hashes come back, the blocks are
//!    findable again. If the writes failed, [`offload`](BlockPool::offload)
//!    and [`keep_offloaded`](BlockPool::keep_offloaded) put the table back
//!    as it was before step 4.
//!
//! A restore never reuses a cached copy of a block: it always writes the
//! host bytes, so the table holds exactly what it held (bit for bit).
//!
//! An offloaded table refuses appends, forks, prefix claims and snapshots
//! ([`KvError::Offloaded`]) until it is restored; releasing it is always
//! allowed and drops what is left on the device (the host copies are the
//! caller's).

use std::time::Instant;

use super::error::KvError;
use super::grant::Grant;
use super::hash::BlockHash;
use super::ids::{BlockLocation, TableId};
use super::pool::BlockPool;

/// The blocks an offload of a table would move, from `first` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffloadPlan {
    /// Index in the table of the first block to move.
    pub first: usize,
    /// Where each block to move is, in order.
    pub blocks: Vec<BlockLocation>,
}

/// The fresh blocks of a restore, to be written before [`BlockPool::restored`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    /// Index in the table of the first restored block.
    pub first: usize,
    /// Where each restored block is, in order.
    pub blocks: Vec<BlockLocation>,
    /// The blocks' hashes, handed back to [`BlockPool::restored`].
    pub hashes: Vec<Option<BlockHash>>,
}

impl BlockPool {
    /// Index of the first block of `id`'s unshared suffix.
    fn unshared_from(&self, id: TableId) -> Result<usize, KvError> {
        let t = self.tables.get(&id).ok_or(KvError::UnknownTable(id))?;
        let shared = t
            .blocks
            .iter()
            .rposition(|&b| self.ref_count(b) > 1)
            .map_or(0, |i| i + 1);
        Ok(shared)
    }

    /// Refuses an operation on an offloaded table.
    pub(crate) fn check_on_device(&self, id: TableId) -> Result<(), KvError> {
        match self.tables.get(&id) {
            None => Err(KvError::UnknownTable(id)),
            Some(t) if !t.offloaded.is_empty() => Err(KvError::Offloaded(id)),
            Some(_) => Ok(()),
        }
    }

    /// Step 1: the blocks an offload of `id` would move. Nothing changes.
    pub fn offload_plan(&self, id: TableId) -> Result<OffloadPlan, KvError> {
        self.check_on_device(id)?;
        let first = self.unshared_from(id)?;
        let t = &self.tables[&id];
        Ok(OffloadPlan {
            first,
            blocks: t.blocks[first..]
                .iter()
                .map(|&b| self.blocks.location(b))
                .collect(),
        })
    }

    /// Step 3: releases the unshared blocks of `id` from index `first` on
    /// (or from later, if some became shared since the plan). Answers the
    /// index the offload really began at; `blocks().len()` if nothing moved.
    pub fn offload(&mut self, id: TableId, first: usize, now: Instant) -> Result<usize, KvError> {
        self.check_on_device(id)?;
        let first = first.max(self.unshared_from(id)?);
        let t = self.tables.get_mut(&id).expect("checked above");
        let moved: Vec<_> = t.blocks.drain(first..).collect();
        let owner = t.owner().clone();
        let mut hashes = Vec::with_capacity(moved.len());
        // Last block first, as a release does: the chain's head stays freshest.
        for &b in moved.iter().rev() {
            hashes.push(self.blocks.meta(b).hash.as_ref().map(|(h, _)| *h));
            self.blocks.release_ref(b, now);
        }
        hashes.reverse();
        let n = moved.len() as u64;
        self.uncharge(&owner, n);
        self.tables.get_mut(&id).expect("checked above").offloaded = hashes;
        self.offload_counts.offloads += u64::from(n > 0);
        self.offload_counts.blocks_now += n;
        Ok(first)
    }

    /// After a failed restore: the table keeps `hashes` as its offloaded
    /// blocks (call right after [`offload`](Self::offload) of the restored
    /// blocks, which were unhashed).
    pub fn keep_offloaded(
        &mut self,
        id: TableId,
        hashes: Vec<Option<BlockHash>>,
    ) -> Result<(), KvError> {
        let t = self.tables.get_mut(&id).ok_or(KvError::UnknownTable(id))?;
        t.offloaded = hashes;
        Ok(())
    }

    /// Step 4: fresh blocks for every offloaded block of `id`, charged to
    /// its owner again, unhashed until [`restored`](Self::restored). All or
    /// nothing, like an append: an error or a `NeedSlab` changes nothing.
    pub fn restore(&mut self, id: TableId, now: Instant) -> Result<Grant<Restore>, KvError> {
        let t = self.tables.get(&id).ok_or(KvError::UnknownTable(id))?;
        let n = t.offloaded.len() as u64;
        if n == 0 {
            return Ok(Grant::Granted(Restore {
                first: t.blocks.len(),
                blocks: Vec::new(),
                hashes: Vec::new(),
            }));
        }
        self.check_owner(t.owner(), n)?;
        if let Some(request) = self.blocks.plan(n, now, self.config().keep_alive)? {
            return Ok(Grant::NeedSlab(request));
        }
        let t = self.tables.get_mut(&id).expect("checked above");
        let first = t.blocks.len();
        let hashes = std::mem::take(&mut t.offloaded);
        self.offload_counts.blocks_now -= n;
        for _ in 0..n {
            t.blocks.push(self.blocks.take(now));
        }
        let owner = t.owner().clone();
        let blocks = t.blocks[first..]
            .iter()
            .map(|&b| self.blocks.location(b))
            .collect();
        self.charge(&owner, n);
        Ok(Grant::Granted(Restore {
            first,
            blocks,
            hashes,
        }))
    }

    /// Step 6: the restored blocks hold their data again; their hashes make
    /// them findable (unless another block is, for the same hash).
    pub fn restored(&mut self, id: TableId, restore: Restore) -> Result<(), KvError> {
        let t = self.tables.get(&id).ok_or(KvError::UnknownTable(id))?;
        let scope = t.scope().clone();
        let ids: Vec<_> = t.blocks[restore.first..].to_vec();
        for (b, hash) in ids.into_iter().zip(restore.hashes) {
            if let Some(hash) = hash {
                self.blocks.set_hash(b, hash, &scope);
            }
        }
        self.offload_counts.restores += 1;
        Ok(())
    }

    /// Blocks of live tables that are in host memory now. O(1).
    pub fn offloaded_blocks(&self) -> u64 {
        self.offload_counts.blocks_now
    }
}

/// Offloads and restores since the pool started.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OffloadCounts {
    pub(crate) offloads: u64,
    pub(crate) restores: u64,
    /// Blocks of live tables in host memory now.
    pub(crate) blocks_now: u64,
}
