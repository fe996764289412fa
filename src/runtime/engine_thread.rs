//! The `sessionbus-engine` thread: opens the GPU pool, runs the engine's
//! actix System until `Runtime::shutdown` stops it, then stops the GPU worker
//! and hands back wgpu's final counters.

use std::sync::Arc;

use sessionbus_actors::{Engine, EngineHandle, Pseudonymizer};
use tokio::sync::oneshot;

use super::error::StartError;
use crate::config::Config;
use crate::gpu::{GpuCounters, WgpuPool};

/// What the thread hands back once the engine is up.
pub(super) type Started = Result<(EngineHandle, Arc<WgpuPool>, actix::System), StartError>;

pub(super) fn run(
    config: Config,
    pseudonyms: Pseudonymizer,
    started: oneshot::Sender<Started>,
    exit: oneshot::Sender<GpuCounters>,
) {
    let gpu = match WgpuPool::start(&config.gpu) {
        Ok(pool) => Arc::new(pool),
        Err(e) => {
            let _ = started.send(Err(e.into()));
            return;
        }
    };
    let runner = actix::System::new();
    let engine =
        runner.block_on(async { Engine::start_with(config.engine(), gpu.clone(), pseudonyms) });
    match engine {
        Ok(engine) => {
            let system = actix::System::current();
            if started.send(Ok((engine, gpu.clone(), system))).is_err() {
                return; // the caller gave up on start; nothing to run
            }
        }
        Err(e) => {
            let _ = started.send(Err(StartError::Config(e.into())));
            return;
        }
    }
    let _ = runner.run();
    // The engine is stopped, so nothing can ask for GPU work any more. Stopping
    // the worker joins its thread: done here, never on the application's thread.
    let _ = exit.send(gpu.shutdown());
}
