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

mod adapter;
mod config;
mod counters;
mod error;
mod host_copy;
mod pool;
mod worker;

#[cfg(test)]
mod offload_tests;
#[cfg(test)]
mod tests;

pub use config::{BackendChoice, GpuConfig, GpuConfigError};
pub use counters::GpuCounters;
pub use error::GpuInitError;
#[cfg(feature = "fault-injection")]
pub use pool::GpuHang;
pub(crate) use pool::GpuStop;
pub use pool::WgpuPool;
