//! The wgpu-backed GPU pool: the engine's [`GpuPool`](sessionbus_actors::GpuPool)
//! on a real device.
//!
//! - `config`: the `[gpu]` settings ([`GpuConfig`]).
//! - `adapter`: picks the adapter and opens the device.
//! - `worker`: the `sessionbus-gpu` thread, the only one calling into wgpu.
//! - `host_copy`: moves buffer contents to host memory and back (reads,
//!   offload, restore), on that thread.
//! - `pool`: [`WgpuPool`], the handle the engine holds.
//! - `counters`: wgpu's live-buffer counters ([`GpuCounters`]) and the pool's stats.

#[cfg(feature = "wgpu")]
mod adapter;
mod config;
mod counters;
mod error;
#[cfg(feature = "wgpu")]
mod given;
#[cfg(feature = "wgpu")]
mod host_copy;
#[cfg(feature = "wgpu")]
mod pool;
#[cfg(feature = "wgpu")]
mod worker;

#[cfg(all(test, feature = "wgpu"))]
mod offload_tests;
#[cfg(all(test, feature = "wgpu"))]
mod tests;

pub use config::{BackendChoice, GpuConfig, GpuConfigError};
pub use counters::GpuCounters;
pub use error::GpuInitError;
#[cfg(feature = "wgpu")]
pub use given::WgpuDevice;
#[cfg(all(feature = "testing", feature = "wgpu"))]
pub use pool::GpuHang;
#[cfg(feature = "wgpu")]
pub use pool::WgpuPool;
