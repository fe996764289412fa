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
//!   `release_session` came first is not listed.
//!
//! Only execution is ordered, not answers: a pool may answer a later request
//! (an allocation, a `sessions_holding_memory`) before an earlier release,
//! whose answer waits until the device has really given the memory back.

mod memory_pool;

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
}

/// Counters a pool keeps about itself. Its own bookkeeping: leak checks should
/// also read the GPU API's counters (the `sessionbus` crate exposes wgpu's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    /// Buffers alive now.
    pub live_buffers: u64,
    /// Bytes alive now.
    pub live_bytes: u64,
    /// Highest `live_bytes` ever seen.
    pub peak_bytes: u64,
    /// Buffers created since start.
    pub allocated_total: u64,
    /// Buffers destroyed since start.
    pub released_total: u64,
}

/// Why a pool could not allocate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
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
}

/// Where GPU memory comes from. Implemented by the `sessionbus` crate on wgpu,
/// and by [`InMemoryPool`] for the engine's own tests.
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
}
