//! Finding an adapter and opening the pool's device. Runs on the worker thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sessionbus_actors::PoolInfo;

use super::config::GpuConfig;
use super::error::{GpuInitError, INSTALL_HINT};
use super::given::WgpuDevice;

/// The device the worker owns, and what the engine is told about it.
pub(crate) struct OpenedDevice {
    pub(crate) device: wgpu::Device,
    /// Carries writes and the copies of reads, offloads and restores.
    pub(crate) queue: wgpu::Queue,
    /// The adapter, as wgpu describes it.
    pub(crate) adapter: wgpu::AdapterInfo,
    pub(crate) info: PoolInfo,
    /// Set by the device-lost callback, so the worker stops creating buffers
    /// that wgpu would silently hand back invalid.
    pub(crate) lost: Arc<AtomicBool>,
}

/// Backends in tie-break order: when two adapters are of the same kind, the
/// earlier backend wins (Vulkan reports memory exactly; GL does not).
const BACKEND_ORDER: [wgpu::Backend; 4] = [
    wgpu::Backend::Vulkan,
    wgpu::Backend::Metal,
    wgpu::Backend::Dx12,
    wgpu::Backend::Gl,
];

/// Opens the best matching device for `config`.
pub(crate) fn open_device(config: &GpuConfig) -> Result<OpenedDevice, GpuInitError> {
    let backends = config.backend.backends();
    // `with_env` lets WGPU_DEBUG / WGPU_VALIDATION and backend options apply as
    // usual; the backend set itself is ours (it already honoured WGPU_BACKEND for auto).
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle().with_env();
    descriptor.backends = backends;
    let instance = wgpu::Instance::new(descriptor);

    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    let filter = config.adapter_filter();
    let seen: Vec<wgpu::AdapterInfo> = adapters.iter().map(wgpu::Adapter::get_info).collect();
    let best = adapters
        .into_iter()
        .zip(seen.iter())
        .filter(|(_, info)| {
            filter
                .as_deref()
                .is_none_or(|f| info.name.to_lowercase().contains(f))
        })
        .max_by_key(|(_, info)| rank(info.device_type, info.backend));
    let Some((adapter, info)) = best else {
        return Err(GpuInitError::NoAdapter {
            tried: backend_names(backends),
            hint: no_adapter_hint(backends, filter.as_deref(), &seen),
        });
    };
    let info = info.clone();
    let backend = info.backend.to_str().to_owned();
    tracing::info!(
        adapter = %info.name,
        backend,
        device_type = device_type_name(info.device_type),
        driver = %info.driver,
        driver_info = %info.driver_info,
        candidates = seen.len(),
        "GPU adapter chosen"
    );

    // The adapter's own limits, not wgpu's conservative defaults: otherwise
    // max_buffer_size would be capped at 256 MiB whatever the hardware offers.
    let limits = adapter.limits();
    let request = adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("sessionbus-gpu"),
        required_features: wgpu::Features::empty(),
        required_limits: limits.clone(),
        // Smaller allocator blocks: freed sessions give memory back to the
        // driver sooner, which is the point of a release.
        memory_hints: wgpu::MemoryHints::MemoryUsage,
        ..Default::default()
    });
    let (device, queue) =
        pollster::block_on(request).map_err(|error| GpuInitError::RequestDevice {
            adapter: info.name.clone(),
            backend: backend.clone(),
            source: error,
        })?;
    Ok(prepare(device, queue, info, limits.max_buffer_size))
}

/// Takes over a device the application opened (`WgpuPool::start_on`): the
/// same preparation as a device of our own, with the limits it was opened with.
pub(crate) fn adopt_device(given: WgpuDevice) -> OpenedDevice {
    let max_buffer_size = given.device.limits().max_buffer_size;
    tracing::info!(
        adapter = %given.adapter.name,
        backend = given.adapter.backend.to_str(),
        "GPU device given by the application"
    );
    prepare(given.device, given.queue, given.adapter, max_buffer_size)
}

fn prepare(
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    max_buffer_size: u64,
) -> OpenedDevice {
    let backend = info.backend.to_str().to_owned();
    // Without a handler wgpu panics on any error outside an error scope; the
    // worker must survive, so log instead.
    device.on_uncaptured_error(Arc::new(|error: wgpu::Error| {
        tracing::error!(%error, "uncaptured GPU error");
    }));
    let lost = Arc::new(AtomicBool::new(false));
    let lost_flag = Arc::clone(&lost);
    device.set_device_lost_callback(move |reason, message| {
        lost_flag.store(true, Ordering::Release);
        tracing::error!(?reason, %message, "GPU device lost; the pool refuses new allocations");
    });

    // wgpu keeps some start-up work of its own (and a little memory for it)
    // queued until the first submission; retire it now, so the counters read
    // next are a baseline that the first read or offload does not move.
    queue.submit([]);
    let _ = device.poll(wgpu::PollType::wait_indefinitely());
    let min_buffer_bytes = smallest_buffer_footprint(&device);
    tracing::debug!(
        min_buffer_bytes,
        "measured the smallest buffer's device memory"
    );

    OpenedDevice {
        device,
        queue,
        adapter: info.clone(),
        info: PoolInfo {
            adapter: info.name.clone(),
            backend,
            device_type: device_type_name(info.device_type).to_owned(),
            // Rounded down to whole copy units: every request up to this
            // figure still fits once the worker rounds it up (lavapipe
            // reports 2^31 - 1, where a request of exactly that would fail).
            max_buffer_size: max_buffer_size / wgpu::COPY_BUFFER_ALIGNMENT
                * wgpu::COPY_BUFFER_ALIGNMENT,
            size_alignment: wgpu::COPY_BUFFER_ALIGNMENT,
            min_buffer_bytes,
        },
        lost,
    }
}

/// Device memory that the smallest buffer the pool can make really occupies:
/// a driver may round every buffer up to its own allocation granularity, so
/// a budget counting only requested bytes would undercount many small
/// buffers. (Lavapipe rounds nothing: it reports 4 bytes.)
///
/// Measured once, when the device opens: one buffer of one copy unit with the
/// pool's usage is created and destroyed, and the difference in wgpu's
/// `hal.buffer_memory` counter is the answer. Where the backend does not
/// count memory (GL reports 0), the answer is the size alignment, the least
/// any buffer holds.
fn smallest_buffer_footprint(device: &wgpu::Device) -> u64 {
    let memory = || device.get_internal_counters().hal.buffer_memory.read();
    let before = memory();
    let probe = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("sessionbus-footprint-probe"),
        size: wgpu::COPY_BUFFER_ALIGNMENT,
        usage: super::worker::USAGE,
        mapped_at_creation: false,
    });
    let after = memory();
    probe.destroy();
    drop(probe);
    // Never used by a submission, so destroyed at once; the poll is for
    // backends that defer it anyway, so the baseline taken next is clean.
    let _ = device.poll(wgpu::PollType::wait_indefinitely());
    let footprint = u64::try_from(after.saturating_sub(before)).unwrap_or(0);
    footprint.max(wgpu::COPY_BUFFER_ALIGNMENT)
}

/// Higher is better: device kind first, then backend.
fn rank(device_type: wgpu::DeviceType, backend: wgpu::Backend) -> (u8, u8) {
    let kind = match device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    };
    let backend = BACKEND_ORDER
        .iter()
        .position(|b| *b == backend)
        .map_or(0, |index| (BACKEND_ORDER.len() - index) as u8);
    (kind, backend)
}

/// Kebab-case, as the engine reports it.
pub(crate) fn device_type_name(device_type: wgpu::DeviceType) -> &'static str {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => "discrete-gpu",
        wgpu::DeviceType::IntegratedGpu => "integrated-gpu",
        wgpu::DeviceType::VirtualGpu => "virtual-gpu",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

/// "vulkan, gl" for the backends in `backends`, in tie-break order.
fn backend_names(backends: wgpu::Backends) -> String {
    let names: Vec<&str> = BACKEND_ORDER
        .iter()
        .filter(|backend| backends.contains(wgpu::Backends::from(**backend)))
        .map(|backend| backend.to_str())
        .collect();
    if names.is_empty() {
        "none (check WGPU_BACKEND)".to_owned()
    } else {
        names.join(", ")
    }
}

/// Backends in `backends` that this build cannot use on this OS at all.
fn unavailable_here(backends: wgpu::Backends) -> Vec<&'static str> {
    let mut out = Vec::new();
    if backends.contains(wgpu::Backends::METAL) && !cfg!(target_vendor = "apple") {
        out.push("metal");
    }
    if backends.contains(wgpu::Backends::DX12) && !cfg!(windows) {
        out.push("dx12");
    }
    out
}

fn no_adapter_hint(
    backends: wgpu::Backends,
    filter: Option<&str>,
    seen: &[wgpu::AdapterInfo],
) -> String {
    if let Some(filter) = filter.filter(|_| !seen.is_empty()) {
        let names: Vec<String> = seen
            .iter()
            .map(|info| format!("\"{}\" ({})", info.name, info.backend.to_str()))
            .collect();
        return format!(
            "no adapter name contains \"{filter}\" (gpu.adapter or WGPU_ADAPTER_NAME); found {}",
            names.join(", ")
        );
    }
    let mut hint = String::new();
    if backends.contains(wgpu::Backends::GL) && !cfg!(feature = "gl") {
        hint.push_str(
            "GL (asked for by WGPU_BACKEND) needs sessionbus built with its `gl` feature; \
             Vulkan is the faster choice where a driver exists. Otherwise ",
        );
    }
    let missing = unavailable_here(backends);
    if !missing.is_empty() {
        hint.push_str(&format!(
            "{} is not available on {}; set gpu.backend to \"auto\" or \"vulkan\" (\"gl\" with the `gl` feature). Otherwise ",
            missing.join(" and "),
            std::env::consts::OS
        ));
    }
    hint.push_str(INSTALL_HINT);
    hint
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_kind_outranks_backend() {
        use wgpu::Backend::{Dx12, Gl, Metal, Vulkan};
        use wgpu::DeviceType::{Cpu, DiscreteGpu, IntegratedGpu, Other, VirtualGpu};
        assert!(rank(DiscreteGpu, Gl) > rank(IntegratedGpu, Vulkan));
        assert!(rank(IntegratedGpu, Gl) > rank(VirtualGpu, Vulkan));
        assert!(rank(VirtualGpu, Gl) > rank(Cpu, Vulkan));
        assert!(rank(Cpu, Gl) > rank(Other, Vulkan));
        assert!(rank(Cpu, Vulkan) > rank(Cpu, Metal));
        assert!(rank(Cpu, Metal) > rank(Cpu, Dx12));
        assert!(rank(Cpu, Dx12) > rank(Cpu, Gl));
    }

    #[test]
    fn backend_list_is_readable() {
        assert_eq!(
            backend_names(wgpu::Backends::VULKAN | wgpu::Backends::GL),
            "vulkan, gl"
        );
    }
}
