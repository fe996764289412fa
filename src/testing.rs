//! For tests of applications built on sessionbus (feature `testing`).
//!
//! - [`InMemoryPool`]: a [`GpuPool`](crate::pool::GpuPool) over host memory,
//!   with the same accounting as a device pool, for tests that need no GPU.
//! - Every fault hook, each a method named `inject_*` on the type it breaks,
//!   compiled only with this feature:
//!   - [`SessionHandle::inject_panic`](crate::SessionHandle::inject_panic):
//!     the session's actor panics (it must still end once and release everything);
//!   - [`SessionHandle::inject_lost_drain_timer`](crate::SessionHandle::inject_lost_drain_timer):
//!     a closing session loses the timer that bounds its drain (the sweeper must end it);
//!   - [`EngineHandle::inject_cleanup_panics`](crate::EngineHandle::inject_cleanup_panics):
//!     the cleanup dispatcher panics at the worst moment;
//!   - [`EngineHandle::inject_orphan_allocation`](crate::EngineHandle::inject_orphan_allocation):
//!     a buffer no session owns (the sweeper must find it);
//!   - [`Runtime::inject_gpu_device_loss`](crate::Runtime::inject_gpu_device_loss),
//!     [`Runtime::inject_gpu_hang`](crate::Runtime::inject_gpu_hang) (returns a [`GpuHang`]),
//!     [`Runtime::inject_gpu_worker_panic`](crate::Runtime::inject_gpu_worker_panic):
//!     the device is lost, the driver hangs, the GPU thread panics;
//!   - `ClusterNode::inject_pause`, `inject_resume`, `inject_kill` (feature
//!     `redis`): a node stops heartbeating, or dies without a word.

#[cfg(feature = "wgpu")]
pub use crate::gpu::GpuHang;
pub use sessionbus_actors::InMemoryPool;
