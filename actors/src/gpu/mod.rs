//! The engine's only window onto GPU memory: the [`GpuPool`] trait.
//!
//! Ground rules: the engine never touches a GPU API. It asks a pool to allocate
//! and to release, and the pool answers on a oneshot channel. A real pool
//! (the `sessionbus` crate's wgpu pool) does the work on its own thread, so no
//! actor thread ever blocks on the driver.
//!
//! Ordering contract: a pool must execute requests in the order it received
//! them. The engine relies on it: a session's last `allocate` is always sent
//! before its `release_session`, so a release also frees buffers whose
//! allocation was still in flight when the session ended.

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

/// What one `release_session` freed.
#[derive(Clone, Copy, Debug)]
pub struct ReleaseReport {
    /// The session whose buffers were freed.
    pub session: SessionId,
    /// Buffers destroyed (zero if the session had none, or was already released).
    pub buffers: u64,
    /// Bytes those buffers held.
    pub bytes: u64,
    /// When the pool began this release.
    pub started_at: Instant,
    /// When the buffers were destroyed *and* the device polled, so the memory is back.
    pub finished_at: Instant,
    /// How many releases shared the batch (and its one device poll).
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

    /// The pool's own counters.
    fn stats(&self) -> PoolStats;
}
