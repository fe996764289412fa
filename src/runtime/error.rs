use crate::audit::AuditError;
use crate::config::ConfigError;
use crate::gpu::GpuInitError;

/// Why the runtime did not start. Nothing is left running after one of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid (the error names the field).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No usable GPU adapter or device (the error names the backends tried and how to get one).
    #[error(transparent)]
    Gpu(#[from] GpuInitError),
    /// The audit trail cannot start: its directory is not writable, … (names the field).
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The OS would not start the engine thread.
    #[error("could not start the sessionbus engine thread; check the process's thread limit")]
    Thread(#[source] std::io::Error),
    /// The engine thread died while starting (a panic; see the log above).
    #[error("the sessionbus engine thread died while starting; see the log above")]
    EngineDied,
    /// This build has no memory pool of its own (the `wgpu` feature is off)
    /// and none was given.
    #[error(
        "no memory pool: build sessionbus with its `wgpu` feature (on by default), or give the \
         runtime your own pool with RuntimeBuilder::pool"
    )]
    NoPool,
    /// Both an application's pool and an application's wgpu device were
    /// given: the runtime can run on one of them, not both.
    #[error(
        "RuntimeBuilder::pool and RuntimeBuilder::wgpu_device were both given: give the pool          (it owns its memory), or the device (the runtime's wgpu pool runs on it), not both"
    )]
    PoolAndDevice,
}
