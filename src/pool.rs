//! For those who bring their own memory: the [`GpuPool`] trait the engine
//! reaches GPU (or any accelerator) memory through, what it is asked and
//! answers, and the wgpu pool the runtime uses unless it is given another
//! ([`RuntimeBuilder::pool`](crate::RuntimeBuilder::pool)).
//!
//! A pool executes requests in the order it receives them and answers each
//! on its oneshot; `release_session` must free everything the session holds,
//! in-flight allocations included, and answer only once the memory is really
//! back. The `app_pool` example implements one over an allocator owned by
//! "someone else" (freed through a callback), and a test runs it with audit,
//! metrics and shutdown.

pub use crate::gpu::GpuCounters;
#[cfg(feature = "wgpu")]
pub use crate::gpu::{WgpuDevice, WgpuPool};
pub use sessionbus_actors::{
    AllocRequest, Allocated, ByteRange, GpuError, GpuPool, OffloadReport, PoolInfo, PoolStats,
    ReleaseReport, RestoreReport, check_write,
};
