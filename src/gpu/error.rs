//! Why the GPU pool could not start.

use super::config::GpuConfigError;

/// Advice appended when no adapter shows up at all: on a server the usual
/// cause is a missing driver, and a software one is enough to run.
#[cfg(feature = "wgpu")]
pub(crate) const INSTALL_HINT: &str = "install a GPU driver, or a software one for CPU-only hosts \
     (on Debian/Ubuntu: apt-get install mesa-vulkan-drivers, which provides lavapipe); \
     check with `vulkaninfo --summary`";

/// The GPU pool could not start (or restart, after a device loss). Every
/// variant says what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuInitError {
    /// The `[gpu]` settings are unusable.
    #[error("invalid GPU settings: {0}")]
    Config(#[from] GpuConfigError),
    /// No adapter matched on the backends tried.
    #[error("no GPU adapter found on backend(s) {tried}: {hint}")]
    NoAdapter {
        /// The backends searched, e.g. `"vulkan, gl"`.
        tried: String,
        /// What to do about it (install a driver, loosen the adapter filter, ...).
        hint: String,
    },
    /// An adapter was found but refused to open a device.
    #[error(
        "the adapter \"{adapter}\" ({backend}) refused to open a device: {source}; \
         try another adapter (gpu.adapter) or backend (gpu.backend)"
    )]
    #[cfg(feature = "wgpu")]
    RequestDevice {
        /// The adapter's name.
        adapter: String,
        /// Its backend, lowercase.
        backend: String,
        /// wgpu's error.
        #[source]
        source: wgpu::RequestDeviceError,
    },
    /// The OS would not start the worker thread.
    #[error("could not start the sessionbus-gpu thread: {0}; check the process's thread limit")]
    Spawn(#[source] std::io::Error),
    /// The worker thread did not answer in time (a device reopen, after a
    /// loss): the device or its driver is hung. The request stays queued;
    /// if the thread comes back it is carried out then.
    #[error(
        "the sessionbus-gpu thread did not answer within {waited:?}: the GPU device or its \
         driver is hung; if it comes back the new device opens then, otherwise restart the process"
    )]
    Unresponsive {
        /// How long it was waited for.
        waited: std::time::Duration,
    },
    /// The worker thread ended (panicked inside the driver) before reporting.
    #[error(
        "the sessionbus-gpu thread died while opening the device; the driver crashed, \
         see the log above and try another backend (gpu.backend)"
    )]
    WorkerDied,
    /// The device the application gave (`WgpuPool::start_on`) is lost;
    /// sessionbus cannot open another in its place.
    #[error(
        "the GPU device the application gave is lost; open a new one and start a new pool on it"
    )]
    GivenDeviceLost,
    /// The runtime stopped before the device could be recovered.
    #[error(transparent)]
    Stopped(#[from] sessionbus_actors::Stopped),
}
