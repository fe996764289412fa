use crate::config::ConfigError;

/// Why a session could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// `sessions.max_sessions` are live; close some or raise the limit.
    #[error(
        "session limit reached: {limit} live sessions (sessions.max_sessions); close sessions or raise the limit"
    )]
    AtCapacity {
        /// The configured limit.
        limit: usize,
    },
    /// The options for the session cannot work (a zero timeout); nothing was opened.
    #[error("invalid session options: {0}")]
    InvalidOptions(#[source] ConfigError),
    /// The runtime is shutting down and admits no new sessions.
    #[error("the runtime is shutting down and admits no new sessions")]
    ShuttingDown,
    /// A runtime task failed past its restart limit; the runtime admits no
    /// new sessions (see `stats().supervision`). Shut it down and restart the process.
    #[error("the runtime has failed and admits no new sessions: {0}")]
    RuntimeFailed(String),
    /// The GPU device was lost and is being replaced (`Runtime::recover_gpu`):
    /// a session admitted now would put its memory on the lost device, so
    /// none is until the recovery returns. Retry after it.
    #[error(
        "the GPU device was lost and is being replaced; no session is admitted until the recovery ends (retry after it)"
    )]
    DeviceRecovering,
    /// The runtime is stopped.
    #[error("the sessionbus runtime is stopped")]
    RuntimeStopped,
}
