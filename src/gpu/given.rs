//! A wgpu device and its queue, as they cross between the runtime and the
//! application: the application's own, given to the runtime
//! ([`WgpuPool::start_on`](super::WgpuPool::start_on),
//! `RuntimeBuilder::wgpu_device`), or the runtime's, handed to the
//! application's kernels (`Runtime::wgpu_device`), so that kernels read a
//! session's KV blocks where they are.

/// A wgpu device, its queue and its adapter. Cheap to clone (wgpu handles).
#[derive(Clone, Debug)]
pub struct WgpuDevice {
    /// The device.
    pub device: wgpu::Device,
    /// Its queue. Writes the pool queued are carried out at the next
    /// submission on it, so a kernel submitted here sees them.
    pub queue: wgpu::Queue,
    /// The adapter the device was opened on.
    pub adapter: wgpu::AdapterInfo,
}
