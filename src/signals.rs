//! Shutting down on SIGTERM or SIGINT, as an orchestrator asks a process to.
//!
//! Kubernetes, systemd and docker send SIGTERM, wait a grace period, then
//! SIGKILL. Give [`shutdown_on_signal`] a deadline shorter than that grace
//! period, and every session ends with reason `shutdown` and every GPU
//! buffer is released before the process is killed:
//!
//! ```no_run
//! # async fn serve() -> Result<(), sessionbus::StartError> {
//! use std::time::Duration;
//!
//! let runtime = sessionbus::Runtime::builder().start().await?;
//! // ... hand `runtime.engine().clone()` to the request handlers ...
//! let report = sessionbus::signals::shutdown_on_signal(runtime, Duration::from_secs(20)).await;
//! println!("{} sessions ended, completed: {}", report.sessions.sessions_ended, report.sessions.completed);
//! # Ok(())
//! # }
//! ```
//!
//! The helper needs a tokio runtime with I/O enabled (signal handling uses
//! tokio's signal driver); `#[tokio::main]` and `#[actix::main]` both have one.

use std::time::Duration;

use crate::{Runtime, StopReport};

/// The signal that asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopSignal {
    /// SIGTERM (orchestrators, `kill`).
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

/// Resolves when the process receives SIGTERM or SIGINT (on non-Unix
/// systems: Ctrl-C). Handlers are installed on the first poll, so call it
/// before the signal can arrive.
///
/// # Errors
/// When the signal handlers cannot be installed (no tokio runtime with I/O).
pub async fn stop_requested() -> std::io::Result<StopSignal> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = terminate.recv() => Ok(StopSignal::Terminate),
            _ = interrupt.recv() => Ok(StopSignal::Interrupt),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok(StopSignal::Interrupt)
    }
}

/// Waits for SIGTERM or SIGINT, then shuts `runtime` down within
/// `deadline` (see [`Runtime::shutdown_within`]) and returns its report.
/// If the signal handlers cannot be installed, it logs an error and shuts
/// down at once rather than running unstoppable.
pub async fn shutdown_on_signal(runtime: Runtime, deadline: Duration) -> StopReport {
    match stop_requested().await {
        Ok(signal) => tracing::info!(
            target: "sessionbus::supervisor",
            event = "runtime.signal",
            ?signal,
            deadline_ms = deadline.as_millis() as u64,
            "stop signal received: shutting down"
        ),
        Err(error) => tracing::error!(
            target: "sessionbus::supervisor",
            event = "runtime.signal_unavailable",
            %error,
            "cannot listen for stop signals; shutting down now"
        ),
    }
    runtime.shutdown_within(deadline).await
}
