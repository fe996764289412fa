//! The graceful shutdown, in one place (SIGTERM and SIGINT end up here).
//!
//! Order matters: the runtime ends every session first (reason `shutdown`,
//! memory released, streams told `session_gone`), and only then are the
//! sockets closed (1001) and the HTTP workers stopped. The other way round,
//! dropped sockets would end their sessions as `disconnected`.
//!
//! `runtime.shutdown()` is bounded by `[shutdown] deadline` (leases
//! forced at 3/4 of it, what is left reported at it); use
//! `runtime.shutdown_within(deadline)` for another bound.

use std::sync::atomic::Ordering;

use actix_web::web;
use sessionbus::StopReport;
use sessionbus::pool::GpuCounters;

use super::state::AppState;

/// What the shutdown did; printed as `SHUTDOWN {json}`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShutdownReport {
    /// The runtime's own report (sessions ended, wgpu counters after).
    pub runtime: StopReport,
    /// wgpu's counters right after start.
    pub gpu_baseline: GpuCounters,
    /// `gpu_after.buffers - gpu_baseline.buffers`: zero when nothing leaked.
    pub leaked_buffers: i64,
    /// WebSockets open when the shutdown began.
    pub websockets_closed: usize,
}

/// How long the HTTP server's own stop is waited for.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) async fn graceful(
    state: web::Data<AppState>,
    server: actix_web::dev::ServerHandle,
    running: tokio::task::JoinHandle<std::io::Result<()>>,
) -> ShutdownReport {
    state.draining.store(true, Ordering::SeqCst);
    let websockets = state.websockets.load(Ordering::SeqCst);
    let runtime = state
        .runtime
        .lock()
        .unwrap()
        .take()
        .expect("the server shuts down once");
    let report = runtime.shutdown().await;
    state.sessions.clear();
    let _ = state.closing_sockets.send(true);
    // The workers get `shutdown_timeout` (2 s) to finish; bounded here too,
    // so that an HTTP server that never reports back cannot hold the
    // shutdown (the runtime's part, above, is done and reported either way).
    let stopped = tokio::time::timeout(STOP_WAIT, async {
        server.stop(true).await;
        let _ = running.await;
    })
    .await;
    if stopped.is_err() {
        tracing::error!(
            event = "chat_server.http_stop_timed_out",
            waited_ms = STOP_WAIT.as_millis() as u64,
            "the HTTP server did not report its stop in time; going on without it"
        );
    }
    ShutdownReport {
        leaked_buffers: report.gpu_after.expect("wgpu counters").buffers - state.baseline.buffers,
        gpu_baseline: state.baseline,
        runtime: report,
        websockets_closed: websockets,
    }
}

/// Resolves at the first SIGTERM or SIGINT.
pub async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}
