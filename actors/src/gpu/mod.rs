//! The engine's only window onto GPU memory: the [`GpuPool`] trait.
//!
//! Ground rules: the engine never touches a GPU API. It asks a pool to allocate
//! and to release, and the pool answers on a oneshot channel. A real pool
//! (the `sessionbus` crate's wgpu pool) does the work on its own thread, so no
//! actor thread ever blocks on the driver.
//!
//! Ordering contract: a pool must execute requests in the order it received
//! them, whatever their kind (`allocate`, `release_session`,
//! `release_allocations`, `sessions_holding_memory`). The engine relies on it:
//!
//! - a session's last `allocate` is always sent before its `release_session`,
//!   so a release also frees buffers whose allocation was still in flight when
//!   the session ended;
//! - a `release_allocations` frees buffers allocated by any earlier request,
//!   and a later `release_session` of the same session frees only what is left
//!   (no buffer is ever destroyed, or counted, twice);
//! - `sessions_holding_memory` describes the pool as it stands after every
//!   earlier request and before every later one: a session whose
//!   `release_session` came first is not listed;
//! - `write`, `read`, `offload_session` and `restore_session` are ordered
//!   with everything else: a read after a write sees it, an offload copies
//!   every earlier write, and a release after an offload frees the host
//!   copies. `sessions_holding_memory` lists a session that holds only host
//!   copies too (host memory can leak as well).
//!
//! Only execution is ordered, not answers: a pool may answer a later request
//! (an allocation, a `sessions_holding_memory`) before an earlier release,
//! whose answer waits until the device has really given the memory back.

#[cfg(any(test, feature = "testing"))]
mod memory_pool;

#[cfg(any(test, feature = "testing"))]
pub use memory_pool::InMemoryPool;

use std::time::Instant;

use tokio::sync::oneshot;

use crate::ids::{AllocationId, SessionId};

/// What a pool tells the engine about the device behind it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PoolInfo {
    /// Adapter name as the driver reports it (e.g. "llvmpipe (LLVM 15.0.6, 256 bits)").
    pub adapter: String,
    /// Backend ("vulkan", "gl", "metal", "dx12", or "memory" for the in-memory pool).
    pub backend: String,
    /// Device type ("cpu", "discrete-gpu", ...).
    pub device_type: String,
    /// Largest single buffer the device accepts, in bytes.
    pub max_buffer_size: u64,
    /// Every buffer's size is its request rounded up to a multiple of this
    /// (wgpu: 4, `COPY_BUFFER_ALIGNMENT`), so `Allocated::bytes` is known
    /// before the pool answers. Budgets count rounded bytes.
    pub size_alignment: u64,
    /// Device memory the smallest buffer occupies, as measured by the pool at
    /// start. A GPU budget below it could not hold a single buffer.
    pub min_buffer_bytes: u64,
}

/// The contract's rules for a write of `len` bytes at `offset` into buffer
/// `id` of `size` bytes, for pool implementations: both ends on `alignment`
/// boundaries (`Misaligned`), and inside the buffer (`OutOfRange`).
pub fn check_write(
    id: AllocationId,
    offset: u64,
    len: u64,
    size: u64,
    alignment: u64,
) -> Result<(), GpuError> {
    let alignment = alignment.max(1);
    if !offset.is_multiple_of(alignment) || !len.is_multiple_of(alignment) {
        return Err(GpuError::Misaligned {
            offset,
            len,
            alignment,
        });
    }
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(GpuError::OutOfRange {
            id,
            offset,
            len,
            size,
        });
    }
    Ok(())
}

impl PoolInfo {
    /// `bytes` rounded up to the pool's size alignment: what a buffer of that
    /// request will really hold.
    pub fn rounded(&self, bytes: u64) -> u64 {
        let unit = self.size_alignment.max(1);
        bytes.div_ceil(unit).saturating_mul(unit)
    }
}

/// A request for one buffer on behalf of a session.
#[derive(Clone, Copy, Debug)]
pub struct AllocRequest {
    /// The session the buffer belongs to; `release_session` frees it.
    pub session: SessionId,
    /// The id the engine will use for this buffer.
    pub id: AllocationId,
    /// Requested size in bytes (non-zero, at most `PoolInfo::max_buffer_size`).
    pub bytes: u64,
}

/// A buffer that now exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Allocated {
    /// The buffer's id.
    pub id: AllocationId,
    /// Bytes actually reserved (the request rounded up to the device's alignment).
    pub bytes: u64,
}

/// What one `release_session` or `release_allocations` freed.
#[derive(Clone, Copy, Debug)]
pub struct ReleaseReport {
    /// The session whose buffers were freed.
    pub session: SessionId,
    /// Buffers destroyed (zero if the session had none, or was already
    /// released; for `release_allocations`, only listed ids that were live
    /// buffers of this session count).
    pub buffers: u64,
    /// Bytes those buffers held.
    pub bytes: u64,
    /// When the pool began this release.
    pub started_at: Instant,
    /// When the buffers were destroyed *and* the device polled, so the memory is back.
    pub finished_at: Instant,
    /// How many releases (of either kind) shared the batch (and its one device poll).
    pub batch_len: u32,
    /// Host memory freed with it: copies of buffers that had been offloaded
    /// (see [`GpuPool::offload_session`]) and were dropped by this release.
    /// Such buffers are counted in `buffers` too, but not in `bytes`, which is
    /// GPU memory only.
    pub host_bytes: u64,
}

/// Bytes `offset..offset + len` of buffer `id` (for `GpuPool::read_ranges`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// The buffer.
    pub id: AllocationId,
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// What one `offload_session` moved from the GPU to host memory.
#[derive(Clone, Copy, Debug)]
pub struct OffloadReport {
    /// The session whose buffers were offloaded.
    pub session: SessionId,
    /// Buffers copied to host memory and then destroyed on the GPU.
    pub buffers: u64,
    /// GPU bytes given back (the buffers' sizes; equal to the host bytes now held).
    pub bytes: u64,
    /// When the pool began the offload.
    pub started_at: Instant,
    /// When the copies were complete, the GPU buffers destroyed and the device polled.
    pub finished_at: Instant,
}

/// What one `restore_session` brought back from host memory.
#[derive(Clone, Copy, Debug)]
pub struct RestoreReport {
    /// The session whose buffers were restored.
    pub session: SessionId,
    /// Buffers recreated on the GPU (under their old ids, with their old contents).
    pub buffers: u64,
    /// GPU bytes they occupy again.
    pub bytes: u64,
    /// When the pool began the restore.
    pub started_at: Instant,
    /// When every buffer was recreated and filled.
    pub finished_at: Instant,
}

/// Counters a pool keeps about itself. Its own bookkeeping: leak checks should
/// also read the GPU API's counters (the `sessionbus` crate exposes wgpu's).
///
/// An offload is not a release and a restore is not an allocation, so
/// `allocated_total - released_total == live_buffers + offloaded_buffers`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Buffers alive now.
    pub live_buffers: u64,
    /// Bytes alive now.
    pub live_bytes: u64,
    /// Highest `live_bytes` ever seen.
    pub peak_bytes: u64,
    /// Buffers held in host memory after an offload (not on the GPU).
    pub offloaded_buffers: u64,
    /// Host bytes those offloaded buffers hold.
    pub offloaded_bytes: u64,
    /// Buffers created since start.
    pub allocated_total: u64,
    /// Buffers destroyed since start.
    pub released_total: u64,
}

/// Why a pool could not allocate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// The device is out of memory.
    #[error("GPU out of memory allocating {bytes} bytes")]
    OutOfMemory {
        /// The requested size.
        bytes: u64,
    },
    /// The device refused the request (the driver's message is kept).
    #[error("GPU refused the allocation: {0}")]
    Rejected(String),
    /// The pool's worker is gone (shut down or crashed); nothing can be allocated.
    #[error("the GPU pool is not running")]
    Unavailable,
    /// This pool does not implement the operation (e.g. offload).
    #[error("this GPU pool does not support {0}")]
    Unsupported(&'static str),
    /// The id is not a buffer of this session (unknown, released, or another session's).
    #[error("buffer {id} is not a live buffer of this session")]
    UnknownBuffer {
        /// The id asked for.
        id: AllocationId,
    },
    /// A read or write past the end of the buffer.
    #[error("{len} bytes at offset {offset} do not fit in buffer {id} of {size} bytes")]
    OutOfRange {
        /// The buffer.
        id: AllocationId,
        /// Where the access starts.
        offset: u64,
        /// How many bytes it covers.
        len: u64,
        /// The buffer's size.
        size: u64,
    },
    /// Offset and length of a write must be multiples of the size alignment.
    #[error(
        "writes must start and end on {alignment}-byte boundaries (offset {offset}, {len} bytes)"
    )]
    Misaligned {
        /// Where the write starts.
        offset: u64,
        /// How many bytes it covers.
        len: u64,
        /// `PoolInfo::size_alignment`.
        alignment: u64,
    },
    /// The buffer is in host memory after an offload; restore the session first.
    #[error("buffer {id} is offloaded to host memory; restore its session first")]
    Offloaded {
        /// The buffer.
        id: AllocationId,
    },
    /// The pool did not answer within `[supervision] step_timeout` (a hung
    /// device or driver). The engine stopped waiting; the operation may still
    /// complete later, and the session stays consistent either way (see
    /// `SessionHandle::offload`).
    #[error("the GPU did not answer the {operation} within {waited:?}; the device may be hung")]
    TimedOut {
        /// What was asked: `"offload"` or `"restore"`.
        operation: &'static str,
        /// How long the engine waited.
        waited: std::time::Duration,
    },
}

/// Where GPU memory comes from. Implemented by the `sessionbus` crate on wgpu,
/// and by `InMemoryPool` (feature `testing`) for the engine's own tests.
pub trait GpuPool: Send + Sync + 'static {
    /// The device behind the pool.
    fn info(&self) -> &PoolInfo;

    /// Creates one buffer for `request.session` and answers on `reply`.
    /// Must not block: the work happens elsewhere.
    fn allocate(&self, request: AllocRequest, reply: oneshot::Sender<Result<Allocated, GpuError>>);

    /// Destroys every buffer of `session` (including ones whose allocation was
    /// requested earlier and not yet answered), makes sure the device has
    /// actually freed them, and answers on `reply`. Releasing twice is harmless:
    /// the second report counts zero buffers. Must not block.
    fn release_session(&self, session: SessionId, reply: oneshot::Sender<ReleaseReport>);

    /// Destroys only the buffers of `session` whose ids are listed (e.g. the
    /// KV-cache buffers bound to a context that went stale, while the session
    /// lives on), makes sure the device has actually freed them, and answers on
    /// `reply` with exactly what was destroyed.
    ///
    /// Listed ids that are not live buffers of `session` (unknown, already
    /// released, or another session's) are skipped and not counted: another
    /// session's buffer is never touched. Listing an id twice counts it once.
    /// Releasing the same ids again reports zero, and a later
    /// `release_session` frees only the buffers left. Must not block.
    ///
    /// A pool that is shut down (or whose worker is gone) drops `reply`
    /// without answering, like `release_session`.
    fn release_allocations(
        &self,
        session: SessionId,
        ids: Vec<AllocationId>,
        reply: oneshot::Sender<ReleaseReport>,
    );

    /// Answers on `reply` with every session that holds at least one live
    /// buffer, sorted ascending, as the pool stands at this point in the
    /// request order (see the ordering contract). For a low-frequency sweeper
    /// looking for buffers whose session no longer exists; it is a snapshot,
    /// and may be stale by the time it arrives. Must not block.
    ///
    /// A pool that is shut down (or whose worker is gone) drops `reply`
    /// without answering.
    fn sessions_holding_memory(&self, reply: oneshot::Sender<Vec<SessionId>>);

    /// The pool's own counters.
    fn stats(&self) -> PoolStats;

    /// Writes `data` into buffer `id` of `session` at `offset` (both multiples
    /// of `PoolInfo::size_alignment`) and answers once the write is queued on
    /// the device; a later `read` or offload sees it. Must not block.
    ///
    /// Errors: `UnknownBuffer` (not a live buffer of `session`), `OutOfRange`,
    /// `Misaligned`, `Offloaded`. A pool that is shut down drops `reply`.
    fn write(
        &self,
        session: SessionId,
        id: AllocationId,
        offset: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), GpuError>>,
    ) {
        let _ = (session, id, offset, data);
        let _ = reply.send(Err(GpuError::Unsupported("buffer writes")));
    }

    /// Reads the whole of buffer `id` of `session` back to host memory.
    /// Errors as for `write`. Must not block.
    fn read(
        &self,
        session: SessionId,
        id: AllocationId,
        reply: oneshot::Sender<Result<Vec<u8>, GpuError>>,
    ) {
        let _ = (session, id);
        let _ = reply.send(Err(GpuError::Unsupported("buffer reads")));
    }

    /// Each range of `ranges` (bytes `offset..offset + len` of buffer `id`
    /// of `session`, any alignment) copied back to host memory, in order,
    /// all or nothing (`OutOfRange` past a buffer's end). The engine reads
    /// KV blocks this way: one block of a large slab, or every block of an
    /// offload in one go. A pool that cannot copy ranges may keep this
    /// default, which answers `Unsupported`: the engine then reads whole
    /// buffers and cuts the ranges out. Must not block.
    fn read_ranges(
        &self,
        session: SessionId,
        ranges: Vec<ByteRange>,
        reply: oneshot::Sender<Result<Vec<Vec<u8>>, GpuError>>,
    ) {
        let _ = (session, ranges);
        let _ = reply.send(Err(GpuError::Unsupported("ranged reads")));
    }

    /// Soft eviction: copies every live GPU buffer of `session` to host
    /// memory, bit for bit, and only once *all* copies are complete destroys
    /// the GPU buffers and polls the device. On any failure nothing is
    /// destroyed and the error is answered (no data is ever lost). The host
    /// copies stay with the pool under the session: `restore_session` brings
    /// them back, `release_session` (and `release_allocations` for listed
    /// ids) drops them. A session with no live GPU buffer reports zero.
    /// Must not block.
    fn offload_session(
        &self,
        session: SessionId,
        reply: oneshot::Sender<Result<OffloadReport, GpuError>>,
    ) {
        let _ = session;
        let _ = reply.send(Err(GpuError::Unsupported("offload")));
    }

    /// Recreates every offloaded buffer of `session` on the GPU under its old
    /// id, with its old size and contents, then drops the host copies. All or
    /// nothing: if one buffer cannot be created (out of memory), the ones
    /// already created are destroyed, the host copies are kept, and the error
    /// is answered. A session with nothing offloaded reports zero.
    /// Must not block.
    fn restore_session(
        &self,
        session: SessionId,
        reply: oneshot::Sender<Result<RestoreReport, GpuError>>,
    ) {
        let _ = session;
        let _ = reply.send(Err(GpuError::Unsupported("restore")));
    }
}
