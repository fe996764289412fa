//! Counters: wgpu's own view of live buffers, and the pool's own bookkeeping.

#[cfg(feature = "wgpu")]
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(feature = "wgpu")]
use sessionbus_actors::PoolStats;

/// What wgpu-hal says is alive on the device: the ground truth for leak checks,
/// independent of the pool's own bookkeeping.
///
/// Includes a few buffers wgpu creates for itself when it opens a device, so
/// compare against a reading taken after start rather than against zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GpuCounters {
    /// Live buffers on the device.
    pub buffers: i64,
    /// Bytes of device memory held by buffers. Always 0 on GL, where wgpu does not track it.
    pub buffer_memory: i64,
}

impl GpuCounters {
    /// Reads the counters; atomics only, no GPU call, so any thread may do it.
    #[cfg(feature = "wgpu")]
    pub(crate) fn read(device: &wgpu::Device) -> GpuCounters {
        let counters = device.get_internal_counters();
        GpuCounters {
            buffers: counters.hal.buffers.read() as i64,
            buffer_memory: counters.hal.buffer_memory.read() as i64,
        }
    }
}

/// [`PoolStats`] as atomics: written by the worker only, read by anyone.
///
/// `allocated_total` and `released_total` count the engine's allocations;
/// offload and restore move buffers between `live_*` and `offloaded_*`, so
/// `allocated_total - released_total == live_buffers + offloaded_buffers`.
///
/// A reader may see fields from slightly different moments (each is loaded on
/// its own); good enough for metrics, and exact once the pool is idle.
#[cfg(feature = "wgpu")]
#[derive(Debug, Default)]
pub(crate) struct SharedStats {
    live_buffers: AtomicU64,
    live_bytes: AtomicU64,
    peak_bytes: AtomicU64,
    allocated_total: AtomicU64,
    released_total: AtomicU64,
    /// Host copies held after offloads, and their bytes.
    offloaded_buffers: AtomicU64,
    offloaded_bytes: AtomicU64,
    /// Commands whose execution panicked on the worker thread (caught; the
    /// thread went on with the next command).
    pub(crate) worker_panics: AtomicU64,
}

#[cfg(feature = "wgpu")]
impl SharedStats {
    pub(crate) fn record_allocated(&self, bytes: u64) {
        self.live_buffers.fetch_add(1, Ordering::Relaxed);
        let live = self.live_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak_bytes.fetch_max(live, Ordering::Relaxed);
        self.allocated_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_released(&self, buffers: u64, bytes: u64) {
        self.live_buffers.fetch_sub(buffers, Ordering::Relaxed);
        self.live_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.released_total.fetch_add(buffers, Ordering::Relaxed);
    }

    /// `buffers` of `bytes` moved from the device to host memory. Not a
    /// release: `released_total` counts them when a release drops the copies.
    pub(crate) fn record_offloaded(&self, buffers: u64, bytes: u64) {
        self.live_buffers.fetch_sub(buffers, Ordering::Relaxed);
        self.live_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.offloaded_buffers.fetch_add(buffers, Ordering::Relaxed);
        self.offloaded_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `buffers` of `bytes` back on the device from host memory. Not an
    /// allocation: `allocated_total` counted them when they were first made.
    pub(crate) fn record_restored(&self, buffers: u64, bytes: u64) {
        self.offloaded_buffers.fetch_sub(buffers, Ordering::Relaxed);
        self.offloaded_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.live_buffers.fetch_add(buffers, Ordering::Relaxed);
        let live = self.live_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak_bytes.fetch_max(live, Ordering::Relaxed);
    }

    /// Host copies of `bytes` dropped by a release: released buffers too.
    pub(crate) fn record_host_released(&self, buffers: u64, bytes: u64) {
        self.offloaded_buffers.fetch_sub(buffers, Ordering::Relaxed);
        self.offloaded_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.released_total.fetch_add(buffers, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> PoolStats {
        PoolStats {
            live_buffers: self.live_buffers.load(Ordering::Relaxed),
            live_bytes: self.live_bytes.load(Ordering::Relaxed),
            peak_bytes: self.peak_bytes.load(Ordering::Relaxed),
            allocated_total: self.allocated_total.load(Ordering::Relaxed),
            released_total: self.released_total.load(Ordering::Relaxed),
            offloaded_buffers: self.offloaded_buffers.load(Ordering::Relaxed),
            offloaded_bytes: self.offloaded_bytes.load(Ordering::Relaxed),
        }
    }
}
