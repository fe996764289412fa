//! The `sessionbus-engine` thread: opens the GPU pool, runs the engine's
//! actix System until `Runtime::shutdown` stops it, then stops the GPU worker
//! (waiting for it at most `[supervision] step_timeout`: a hung device is
//! given up on, never waited for forever) and hands back how that went.

use std::sync::Arc;

use sessionbus_actors::{Engine, EngineHandle, Pseudonymizer};
use tokio::sync::oneshot;

use super::error::StartError;
use crate::config::Config;
use crate::gpu::{GpuStop, WgpuPool};
use crate::metrics::MetricsTask;

/// What the thread hands back once the engine is up.
pub(super) type Started = Result<
    (
        EngineHandle,
        Arc<WgpuPool>,
        actix::System,
        Option<MetricsTask>,
    ),
    StartError,
>;

pub(super) fn run(
    config: Config,
    pseudonyms: Pseudonymizer,
    started: oneshot::Sender<Started>,
    exit: oneshot::Sender<GpuStop>,
) {
    let gpu_step_timeout = config.supervision.step_timeout;
    let gpu = match WgpuPool::start(&config.gpu) {
        Ok(pool) => Arc::new(pool),
        Err(e) => {
            let _ = started.send(Err(e.into()));
            return;
        }
    };
    let runner = actix::System::new();
    // The metrics subscriber subscribes here, before anything can open a
    // session, so its counters see the whole run (it then runs on its own thread).
    let engine = runner.block_on(async {
        let engine = Engine::start_with(config.engine(), gpu.clone(), pseudonyms)?;
        let metrics = MetricsTask::start(&engine, &config.metrics).await;
        Ok::<_, sessionbus_actors::ConfigError>((engine, metrics))
    });
    match engine {
        Ok((engine, metrics)) => {
            let system = actix::System::current();
            if started
                .send(Ok((engine, gpu.clone(), system, metrics)))
                .is_err()
            {
                return; // the caller gave up on start; nothing to run
            }
        }
        Err(e) => {
            // Tear the device down before answering: a caller that gives up
            // and exits must not race this thread's teardown of the driver.
            gpu.shutdown_within(gpu_step_timeout);
            drop(gpu);
            drop(runner);
            let _ = started.send(Err(StartError::Config(e.into())));
            return;
        }
    }
    let _ = runner.run();
    // The engine is stopped, so nothing can ask for GPU work any more. Stopping
    // the worker joins its thread: done here, never on the application's
    // thread, and bounded: a worker hung in the driver is left behind, and
    // the report says what it still holds.
    let stopped = gpu.shutdown_within(gpu_step_timeout);
    // Let go of the device before answering, so that the last reference is
    // the `Runtime`'s and wgpu's instance is torn down before `shutdown()`
    // returns. Dropped here after the answer, it raced the process's exit
    // (a program that returned from main while this thread was still in
    // Mesa's EGL teardown crashed in the exit handlers).
    drop(gpu);
    let _ = exit.send(stopped);
}
