//! The device as other threads see it, and its replacement after a loss.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sessionbus_actors::SessionId;

use super::{LiveBuffer, Worker, lock};
use crate::gpu::adapter::{OpenedDevice, open_device};
use crate::gpu::counters::GpuCounters;
use crate::gpu::error::GpuInitError;

/// The current device as other threads see it: wgpu's counters (atomics,
/// no GPU call) and the lost flag. The worker replaces what it holds when a
/// new device takes over after a loss, even if whoever asked for the new
/// device stopped waiting for it.
pub(crate) struct DeviceView {
    device: Mutex<wgpu::Device>,
    queue: Mutex<wgpu::Queue>,
    adapter: Mutex<wgpu::AdapterInfo>,
    /// Counters right after the device opened: wgpu's own buffers only.
    initial: Mutex<GpuCounters>,
    /// Raised by the device-lost callback.
    lost: Mutex<Arc<AtomicBool>>,
}

impl DeviceView {
    pub(super) fn new(opened: &OpenedDevice) -> Self {
        DeviceView {
            device: Mutex::new(opened.device.clone()),
            queue: Mutex::new(opened.queue.clone()),
            adapter: Mutex::new(opened.adapter.clone()),
            initial: Mutex::new(GpuCounters::read(&opened.device)),
            lost: Mutex::new(opened.lost.clone()),
        }
    }

    fn replace(&self, opened: &OpenedDevice) {
        *lock(&self.initial) = GpuCounters::read(&opened.device);
        *lock(&self.device) = opened.device.clone();
        *lock(&self.queue) = opened.queue.clone();
        *lock(&self.adapter) = opened.adapter.clone();
        *lock(&self.lost) = opened.lost.clone();
    }

    /// The current device, queue and adapter (clones of wgpu's handles).
    pub(crate) fn handles(&self) -> crate::gpu::WgpuDevice {
        crate::gpu::WgpuDevice {
            device: lock(&self.device).clone(),
            queue: lock(&self.queue).clone(),
            adapter: lock(&self.adapter).clone(),
        }
    }

    pub(crate) fn counters(&self) -> GpuCounters {
        GpuCounters::read(&lock(&self.device))
    }

    pub(crate) fn initial(&self) -> GpuCounters {
        *lock(&self.initial)
    }

    pub(crate) fn is_lost(&self) -> bool {
        lock(&self.lost).load(Ordering::Acquire)
    }
}

impl Worker {
    /// After a device loss: whatever the old device still holds is dropped
    /// (each leftover logged), then a new device takes its place. Host
    /// copies of offloaded buffers survive: they are host memory.
    pub(super) fn reopen(&mut self) -> Result<(), GpuInitError> {
        let leftovers: Vec<(SessionId, Vec<LiveBuffer>)> = self.sessions.drain().collect();
        for (session, live) in leftovers {
            let (buffers, bytes) = self.destroy_buffers(live);
            tracing::warn!(%session, buffers, bytes, "GPU buffers still held at device reopen; dropped with the old device");
        }
        if self.given {
            // The application's device: only the application can open another.
            return Err(GpuInitError::GivenDeviceLost);
        }
        let opened = open_device(&self.config)?;
        self.view.replace(&opened);
        let adapter = opened.info.adapter.clone();
        self.max_buffer_size = opened.info.max_buffer_size;
        self.device = opened.device;
        self.queue = opened.queue;
        self.lost = opened.lost;
        self.unsubmitted_writes = false;
        tracing::warn!(
            target: "sessionbus::supervisor",
            event = "gpu.reopened",
            %adapter,
            "a new GPU device replaces the lost one"
        );
        Ok(())
    }
}
