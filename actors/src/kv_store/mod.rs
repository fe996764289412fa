//! The engine's KV block store: the pure [`BlockPool`](crate::kv::BlockPool)
//! behind a lock, with its slabs as real allocations of the GPU pool.
//!
//! Ground rules:
//! - A **slab** is one pool allocation (`blocks_per_slab` blocks) owned by a
//!   reserved session id that no session ever has, so the sweeper and every
//!   session release leave it alone; it goes only through [`KvStore::trim`]
//!   (all its blocks free for `slab_idle_trim`) or [`KvStore::release_all`]
//!   (shutdown), each a `release_allocations` of the pool, which answers
//!   only once the device has the memory back.
//! - Trims are **paced** like session releases: each slab waits for the
//!   release pacer's lowest tier (its governor limiter, shared with ordinary
//!   releases; cost in the pacing unit: one buffer, or the slab's bytes), so
//!   a mass of idle slabs never hits the device at once. Shutdown is not
//!   paced (its deadline matters more), as for sessions.
//! - The lock is never held across an await: an append that needs a slab
//!   drops it, has the pool create the buffer (bounded by
//!   `[supervision] step_timeout`), retakes it, adds the slab and retries.
//!   Two appends that both asked for a slab both add one (the budget refuses
//!   past the device limit, and a refused buffer is released at once).
//! - A session's table is released exactly once, by the session's end
//!   report (its `EndGuard`), whatever ended it, crashes included.

mod errors;
mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use errors::KvStoreError;
pub use view::{KvAppendReport, KvBlock};

use crate::cleanup::Pacer;
use crate::clock;
use crate::gpu::{AllocRequest, ByteRange, GpuError, GpuPool, ReleaseReport};
use crate::ids::{AllocationId, Owner, SessionId};
use crate::kv::{
    BlockLocation, BlockPool, Grant, KvPoolConfig, KvStats, ShareScope, SlabId, TableId, TokenId,
};

/// The KV block store of one engine.
pub(crate) struct KvStore {
    books: Mutex<BlockPool>,
    slabs: Mutex<HashMap<SlabId, AllocationId>>,
    /// The bytes of each offloaded table's blocks in host memory, in order.
    host: Mutex<HashMap<TableId, Vec<Vec<u8>>>>,
    pool: Arc<dyn GpuPool>,
    /// The release pacer: trims wait for its lowest tier.
    pacer: Arc<Pacer>,
    /// The reserved owner of every slab buffer.
    slab_session: SessionId,
    block_bytes: u64,
    step_timeout: Duration,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("block_bytes", &self.block_bytes)
            .finish_non_exhaustive()
    }
}

impl KvStore {
    pub(crate) fn new(
        config: KvPoolConfig,
        pool: Arc<dyn GpuPool>,
        pacer: Arc<Pacer>,
        step_timeout: Duration,
    ) -> Result<Self, crate::kv::KvConfigError> {
        let books = BlockPool::new(config, pool.info().max_buffer_size)?;
        let block_bytes = books.layout().block_bytes();
        Ok(KvStore {
            books: Mutex::new(books),
            slabs: Mutex::default(),
            host: Mutex::default(),
            pool,
            pacer,
            slab_session: SessionId::random(),
            block_bytes,
            step_timeout,
        })
    }

    /// Runs one grant of the books and takes, under the same lock, the
    /// blocks it handed out again: no other grant can take them off the list
    /// in between.
    fn grant<T>(
        &self,
        grant: impl FnOnce(&mut BlockPool) -> Result<Grant<T>, crate::kv::KvError>,
    ) -> Result<(Grant<T>, Vec<BlockLocation>), KvStoreError> {
        let mut books = self.books();
        let granted = grant(&mut books)?;
        Ok((granted, books.take_recycled()))
    }

    /// Zeroes `recycled` (blocks handed out again), so that their new holder
    /// never reads what a previous one (maybe another tenant) wrote. The
    /// writes are queued, not awaited: the pool runs requests in order, so
    /// every later read or write of these blocks comes after them, and a
    /// device that fails them fails everything after too.
    fn clear(&self, recycled: Vec<BlockLocation>) {
        if recycled.is_empty() {
            return;
        }
        let slabs = self.slabs.lock().unwrap_or_else(|p| p.into_inner());
        for block in recycled {
            let Some(&buffer) = slabs.get(&block.slab) else {
                continue;
            };
            let (reply, _) = oneshot::channel();
            self.pool.write(
                self.slab_session,
                buffer,
                block.offset,
                vec![0; self.block_bytes as usize],
                reply,
            );
        }
    }

    /// Bytes of one block.
    pub(crate) fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    /// Blocks `table` holds on the device (0 for an unknown table).
    pub(crate) fn table_blocks(&self, table: TableId) -> usize {
        self.books().table(table).map_or(0, |t| t.blocks().len())
    }

    /// The reserved owner of every slab buffer (the sweeper leaves it alone).
    pub(crate) fn slab_session(&self) -> SessionId {
        self.slab_session
    }

    fn books(&self) -> MutexGuard<'_, BlockPool> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new, empty table for a session.
    pub(crate) fn open_table(&self, owner: Owner, scope: ShareScope) -> TableId {
        self.books().open_table(owner, scope)
    }

    /// Appends `tokens` to `table`. On an empty table, the longest cached
    /// prefix of `tokens` in the table's scope is referenced first instead
    /// of allocated (a prefix hit); the rest is appended into new blocks.
    pub(crate) async fn append(
        &self,
        table: TableId,
        tokens: &[TokenId],
    ) -> Result<KvAppendReport, KvStoreError> {
        let shared_tokens = self.claim_cached_prefix(table, tokens)?;
        let rest = &tokens[shared_tokens as usize..];
        loop {
            let (grant, recycled) = self.grant(|b| b.append(table, rest, clock::now()))?;
            match grant {
                Grant::Granted(appended) => {
                    self.clear(recycled);
                    let books = self.books();
                    let blocks = books.table(table).map_or(0, |t| t.blocks().len());
                    return Ok(KvAppendReport {
                        tokens: appended.tokens,
                        blocks: blocks as u64,
                        new_blocks: appended.new_blocks as u64,
                        shared_prefix_tokens: shared_tokens,
                    });
                }
                Grant::NeedSlab(request) => self.add_slab(request.slab_bytes).await?,
            }
        }
    }

    /// References the cached prefix of `tokens` if `table` is empty; the
    /// number of tokens it covers.
    fn claim_cached_prefix(&self, table: TableId, tokens: &[TokenId]) -> Result<u64, KvStoreError> {
        let mut books = self.books();
        let empty = books
            .table(table)
            .ok_or(crate::kv::KvError::UnknownTable(table))?
            .tokens()
            == 0;
        if !empty {
            return Ok(0);
        }
        let scope = books.table(table).expect("checked").scope().clone();
        let found = books.match_prefix(&scope, tokens);
        if found.blocks().is_empty() {
            return Ok(0);
        }
        let covered = found.tokens();
        books.claim_prefix(table, &found, &tokens[..covered as usize])?;
        Ok(covered)
    }

    /// Has the pool create one slab buffer, then adds it to the books; a
    /// slab the budget refuses meanwhile is released at once.
    async fn add_slab(&self, bytes: u64) -> Result<(), KvStoreError> {
        let id = AllocationId::next();
        let (reply, allocated) = oneshot::channel();
        let request = AllocRequest {
            session: self.slab_session,
            id,
            bytes,
        };
        self.pool.allocate(request, reply);
        match tokio::time::timeout(self.step_timeout, allocated).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(error))) => return Err(KvStoreError::Slab(error)),
            Ok(Err(_)) => return Err(KvStoreError::Slab(crate::gpu::GpuError::Unavailable)),
            Err(_) => {
                // The buffer may still be created: a release queued after
                // the allocation (the pool runs requests in order) frees it
                // then, so no slab the books never saw outlives the wait.
                let (reply, _) = oneshot::channel();
                self.pool
                    .release_allocations(self.slab_session, vec![id], reply);
                return Err(KvStoreError::Slab(crate::gpu::GpuError::TimedOut {
                    operation: "KV slab allocation",
                    waited: self.step_timeout,
                }));
            }
        }
        // The slab's buffer is filed under the books' lock (books, then
        // slabs: the order `take_slabs` keeps): a session on another shard
        // may be granted a block in the new slab as soon as the books know
        // it, and must find its buffer (a fork's copy indexed a slab not
        // filed yet and panicked: the fresh-clone run of stop 20).
        let added = {
            let mut books = self.books();
            let added = books.add_slab(clock::now());
            if let Ok(slab) = added {
                self.slabs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(slab, id);
            }
            added
        };
        match added {
            Ok(_) => Ok(()),
            Err(refused) => {
                self.release_buffers(vec![id]).await;
                Err(KvStoreError::SlabRefused(refused))
            }
        }
    }

    /// A new table sharing every full block of `parent`; its partial last
    /// block is copied into a fresh one (copy-on-write) through host memory
    /// before this answers. On a failed copy the new table is released.
    pub(crate) async fn fork(&self, parent: TableId) -> Result<TableId, KvStoreError> {
        let forked = loop {
            let (grant, recycled) = self.grant(|b| b.fork(parent, clock::now()))?;
            match grant {
                Grant::Granted(forked) => {
                    // Cleared before the copy: the pool runs writes in order.
                    self.clear(recycled);
                    break forked;
                }
                Grant::NeedSlab(request) => self.add_slab(request.slab_bytes).await?,
            }
        };
        if let Some(copy) = forked.copy
            && let Err(error) = self.copy_block(copy).await
        {
            self.release_table(forked.table);
            return Err(error);
        }
        Ok(forked.table)
    }

    /// Copies the first `copy.tokens` tokens of one block into another.
    async fn copy_block(&self, copy: crate::kv::BlockCopy) -> Result<(), KvStoreError> {
        let (from, to) = {
            let slabs = self.slabs.lock().unwrap_or_else(|p| p.into_inner());
            (slabs[&copy.from.slab], slabs[&copy.to.slab])
        };
        let bytes = u64::from(copy.tokens) * self.books().layout().bytes_per_token;
        let data = self
            .read_span(from, copy.from.offset, bytes, "KV block copy")
            .await?;
        let (reply, written) = oneshot::channel();
        self.pool
            .write(self.slab_session, to, copy.to.offset, data, reply);
        self.answer(written, "KV block copy").await
    }

    /// Whether `n` more blocks for `table` could fit if every other session
    /// ended (see `BlockPool::could_fit_if_others_ended`).
    pub(crate) fn could_fit_if_others_ended(&self, table: TableId, n: u64) -> bool {
        self.books().could_fit_if_others_ended(table, n)
    }

    /// Drops every reference of `table`, exactly once (the table is gone),
    /// and its host copies; answers the bytes those copies held.
    pub(crate) fn release_table(&self, table: TableId) -> u64 {
        self.host().remove(&table);
        // A table already released is a bookkeeping bug elsewhere; it must not take the engine down.
        match self.books().release_table(table, clock::now()) {
            Ok(released) => released.offloaded * self.block_bytes,
            Err(error) => {
                tracing::error!(
                    target: "sessionbus::supervisor",
                    event = "kv.release_failed",
                    %error,
                    "a session's KV block table could not be released"
                );
                0
            }
        }
    }

    /// Where each block of `table` is, in order: (buffer, byte offset).
    pub(crate) fn blocks(&self, table: TableId) -> Result<Vec<KvBlock>, KvStoreError> {
        let locations = self.books().snapshot(table)?;
        let slabs = self.slabs.lock().unwrap_or_else(|p| p.into_inner());
        Ok(locations
            .into_iter()
            .map(|location| KvBlock {
                buffer: slabs[&location.slab],
                offset: location.offset,
                bytes: self.block_bytes,
            })
            .collect())
    }

    /// Writes `data` into block `index` of `table` at `offset` within the block.
    pub(crate) async fn write(
        &self,
        table: TableId,
        index: usize,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), KvStoreError> {
        let block = self.block_for(table, index, offset, data.len() as u64)?;
        let (reply, written) = oneshot::channel();
        self.pool.write(
            self.slab_session,
            block.buffer,
            block.offset + offset,
            data,
            reply,
        );
        self.answer(written, "KV block write").await
    }

    /// Reads block `index` of `table` back to host memory.
    pub(crate) async fn read(&self, table: TableId, index: usize) -> Result<Vec<u8>, KvStoreError> {
        let block = self.block_for(table, index, 0, 0)?;
        self.read_span(
            block.buffer,
            block.offset,
            self.block_bytes,
            "KV block read",
        )
        .await
    }

    /// Bytes `offset..offset + len` of slab buffer `buffer`.
    async fn read_span(
        &self,
        buffer: AllocationId,
        offset: u64,
        len: u64,
        operation: &'static str,
    ) -> Result<Vec<u8>, KvStoreError> {
        let range = ByteRange {
            id: buffer,
            offset,
            len,
        };
        let mut read = self.read_spans(vec![range], operation).await?;
        Ok(read.pop().unwrap_or_default())
    }

    /// Each range of slab buffers, in order: one ranged read for all of them
    /// (one device wait), or whole slabs cut down where the pool cannot read
    /// ranges.
    async fn read_spans(
        &self,
        ranges: Vec<ByteRange>,
        operation: &'static str,
    ) -> Result<Vec<Vec<u8>>, KvStoreError> {
        let (reply, read) = oneshot::channel();
        self.pool
            .read_ranges(self.slab_session, ranges.clone(), reply);
        match self.answer(read, operation).await {
            Err(KvStoreError::Slab(GpuError::Unsupported(_))) => {}
            answer => return answer,
        }
        let mut slabs: HashMap<AllocationId, Vec<u8>> = HashMap::new();
        let mut copies = Vec::with_capacity(ranges.len());
        for range in ranges {
            let slab = match slabs.entry(range.id) {
                std::collections::hash_map::Entry::Occupied(slab) => slab.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    let (reply, read) = oneshot::channel();
                    self.pool.read(self.slab_session, range.id, reply);
                    slot.insert(self.answer(read, operation).await?)
                }
            };
            let start = range.offset as usize;
            copies.push(slab[start..start + range.len as usize].to_vec());
        }
        Ok(copies)
    }

    fn host(&self) -> MutexGuard<'_, HashMap<TableId, Vec<Vec<u8>>>> {
        self.host.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slab_buffer(&self, slab: SlabId) -> AllocationId {
        self.slabs.lock().unwrap_or_else(|p| p.into_inner())[&slab]
    }

    /// Copies the blocks only `table` references to host memory, then gives
    /// them back to the pool (see `crate::kv` offload). Shared blocks stay on
    /// the device. On a failed copy nothing changes. Answers the blocks moved.
    ///
    /// With `host_limit` (offloads the engine makes under memory pressure:
    /// `budget.offload_host_memory`), an offload that would take the host
    /// copies (the pool's and these) past it is refused and nothing moves.
    pub(crate) async fn offload(
        &self,
        table: TableId,
        host_limit: Option<u64>,
    ) -> Result<u64, KvStoreError> {
        let plan = self.books().offload_plan(table)?;
        if let Some(limit) = host_limit {
            let held = self.host_bytes() + self.pool.stats().offloaded_bytes;
            let needed = plan.blocks.len() as u64 * self.block_bytes;
            if held + needed > limit {
                return Err(KvStoreError::HostMemoryFull {
                    needed,
                    held,
                    limit,
                });
            }
        }
        let ranges = plan
            .blocks
            .iter()
            .map(|block| ByteRange {
                id: self.slab_buffer(block.slab),
                offset: block.offset,
                len: self.block_bytes,
            })
            .collect();
        let mut copies = self.read_spans(ranges, "KV offload").await?;
        let first = self.books().offload(table, plan.first, clock::now())?;
        // Blocks claimed by another table during the copies stayed.
        copies.drain(..first - plan.first);
        let moved = copies.len() as u64;
        if moved > 0 {
            self.host().insert(table, copies);
        }
        Ok(moved)
    }

    /// Brings `table`'s offloaded blocks back into fresh blocks, bit for bit.
    /// On a failed copy the blocks stay in host memory and the error is
    /// answered. Answers the blocks restored.
    pub(crate) async fn restore(&self, table: TableId) -> Result<u64, KvStoreError> {
        let restore = loop {
            // Every restored block is written whole below: no clearing.
            let (grant, _recycled) = self.grant(|b| b.restore(table, clock::now()))?;
            match grant {
                Grant::Granted(restore) => break restore,
                Grant::NeedSlab(request) => self.add_slab(request.slab_bytes).await?,
            }
        };
        if restore.blocks.is_empty() {
            return Ok(0);
        }
        let copies = self.host().remove(&table).unwrap_or_default();
        if copies.len() != restore.blocks.len() {
            // The books and the host copies disagree: a bug elsewhere. Put the
            // table back as it was rather than hand out blocks of garbage.
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "kv.restore_mismatch",
                blocks = restore.blocks.len(),
                copies = copies.len(),
                "a KV restore found fewer host copies than offloaded blocks; left offloaded"
            );
            self.back_to_host(table, restore, copies)?;
            return Err(KvStoreError::Slab(GpuError::Unavailable));
        }
        // Every write queued first (the pool runs them in order), then every
        // answer awaited: one round trip for the lot, not one per block.
        let answers: Vec<_> = restore
            .blocks
            .iter()
            .zip(&copies)
            .map(|(block, data)| {
                let buffer = self.slab_buffer(block.slab);
                let (reply, answer) = oneshot::channel();
                self.pool
                    .write(self.slab_session, buffer, block.offset, data.clone(), reply);
                answer
            })
            .collect();
        let mut written = Ok(());
        for answer in answers {
            written = written.and(self.answer(answer, "KV restore").await);
        }
        let n = restore.blocks.len() as u64;
        match written {
            Ok(()) => {
                self.books().restored(table, restore)?;
                Ok(n)
            }
            Err(error) => {
                self.back_to_host(table, restore, copies)?;
                Err(error)
            }
        }
    }

    /// Undoes a restore: its fresh blocks go back to the pool (unhashed, so
    /// free) and the table is offloaded again with its hashes and `copies`.
    fn back_to_host(
        &self,
        table: TableId,
        restore: crate::kv::Restore,
        copies: Vec<Vec<u8>>,
    ) -> Result<(), KvStoreError> {
        let mut books = self.books();
        books.offload(table, restore.first, clock::now())?;
        books.keep_offloaded(table, restore.hashes)?;
        drop(books);
        if !copies.is_empty() {
            self.host().insert(table, copies);
        }
        Ok(())
    }

    /// Bytes of KV blocks held in host memory now.
    pub(crate) fn host_bytes(&self) -> u64 {
        self.books().offloaded_blocks() * self.block_bytes
    }

    fn block_for(
        &self,
        table: TableId,
        index: usize,
        offset: u64,
        len: u64,
    ) -> Result<KvBlock, KvStoreError> {
        // One block's place, not the whole table's: this runs for every
        // token written.
        let location = {
            let books = self.books();
            books.check_on_device(table)?;
            let blocks = books
                .table(table)
                .ok_or(crate::kv::KvError::UnknownTable(table))?
                .blocks();
            let count = blocks.len();
            let block = *blocks
                .get(index)
                .ok_or(KvStoreError::NoSuchBlock { index, count })?;
            books.location(block)
        };
        let buffer = self.slabs.lock().unwrap_or_else(|p| p.into_inner())[&location.slab];
        let block = KvBlock {
            buffer,
            offset: location.offset,
            bytes: self.block_bytes,
        };
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.block_bytes)
        {
            return Err(KvStoreError::OutsideBlock {
                offset,
                len,
                block_bytes: self.block_bytes,
            });
        }
        Ok(block)
    }

    async fn answer<T>(
        &self,
        answer: oneshot::Receiver<Result<T, crate::gpu::GpuError>>,
        operation: &'static str,
    ) -> Result<T, KvStoreError> {
        match tokio::time::timeout(self.step_timeout, answer).await {
            Ok(Ok(result)) => result.map_err(KvStoreError::Slab),
            Ok(Err(_)) => Err(KvStoreError::Slab(crate::gpu::GpuError::Unavailable)),
            Err(_) => Err(KvStoreError::Slab(crate::gpu::GpuError::TimedOut {
                operation,
                waited: self.step_timeout,
            })),
        }
    }

    /// Gives back every slab whose blocks have all been free for
    /// `slab_idle_trim`, one at a time as the release pacer admits it;
    /// answers how many, once the device has the memory back.
    ///
    /// The slabs leave the books first (an append racing the trim takes
    /// other blocks or asks for a new slab), so a slab waiting for the pacer
    /// is never handed out again.
    pub(crate) async fn trim(&self, now: Instant) -> u64 {
        let buffers = {
            let mut books = self.books();
            let idle: Vec<SlabId> = books.trimmable_slabs(now).collect();
            self.take_slabs(&mut books, idle)
        };
        let n = buffers.len() as u64;
        let slab_bytes = self.block_bytes * u64::from(self.books().config().blocks_per_slab);
        for buffer in buffers {
            let cost = self.pacer.unit().cost(1, slab_bytes);
            self.pacer.admit(0, cost).await;
            self.release_buffers(vec![buffer]).await;
        }
        n
    }

    /// At shutdown, once every session has ended: evicts every cached block
    /// and gives back every slab.
    pub(crate) async fn release_all(&self) -> u64 {
        let buffers = {
            let mut books = self.books();
            let now = clock::now();
            books.evict_cached(u64::MAX, now);
            let all: Vec<SlabId> = self
                .slabs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .copied()
                .collect();
            self.take_slabs(&mut books, all)
        };
        let n = buffers.len() as u64;
        self.release_buffers(buffers).await;
        n
    }

    /// Takes `slabs` out of the books (those still in use stay) and returns their buffers.
    fn take_slabs(&self, books: &mut BlockPool, slabs: Vec<SlabId>) -> Vec<AllocationId> {
        let mut ids = self.slabs.lock().unwrap_or_else(|p| p.into_inner());
        slabs
            .into_iter()
            .filter(|slab| books.remove_slab(*slab).is_ok())
            .filter_map(|slab| ids.remove(&slab))
            .collect()
    }

    async fn release_buffers(&self, buffers: Vec<AllocationId>) -> Option<ReleaseReport> {
        if buffers.is_empty() {
            return None;
        }
        let (reply, released) = oneshot::channel();
        self.pool
            .release_allocations(self.slab_session, buffers, reply);
        tokio::time::timeout(self.step_timeout, released)
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// The block pool's counters.
    pub(crate) fn stats(&self) -> KvStats {
        self.books().stats()
    }
}
