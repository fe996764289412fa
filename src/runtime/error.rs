use crate::audit::AuditError;
use crate::config::ConfigError;
use crate::gpu::GpuInitError;

/// Why the runtime did not start. Nothing is left running after one of these.
#[derive(Debug, thiserror::Error)]
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
    /// The engine thread could not be started.
    #[error("could not start the sessionbus engine thread: {0}")]
    Thread(String),
}
