//! The `sessionbus-engine` thread: opens the GPU pool, runs the engine's
//! actix System until `Runtime::shutdown` stops it, then stops the GPU worker
//! (waiting for it at most `[supervision] step_timeout`: a hung device is
//! given up on, never waited for forever) and hands back how that went.

use std::sync::Arc;

use sessionbus_actors::{Engine, EngineHandle, GpuPool, Pseudonymizer};
use tokio::sync::oneshot;

use super::error::StartError;
use super::pool_choice::{OpenedPool, PoolChoice, PoolStop};
use crate::config::Config;
#[cfg(feature = "wgpu")]
use crate::gpu::WgpuPool;
use crate::metrics::MetricsTask;

/// What the thread hands back once the engine is up.
pub(super) struct Running {
    pub(super) engine: EngineHandle,
    pub(super) pool: Arc<dyn GpuPool>,
    #[cfg(feature = "wgpu")]
    pub(super) wgpu: Option<Arc<WgpuPool>>,
    pub(super) system: actix::System,
    pub(super) metrics: Option<MetricsTask>,
}

pub(super) type Started = Result<Running, StartError>;

pub(super) fn run(
    config: Config,
    choice: PoolChoice,
    pseudonyms: Pseudonymizer,
    started: oneshot::Sender<Started>,
    exit: oneshot::Sender<PoolStop>,
) {
    let gpu_step_timeout = config.supervision.step_timeout;
    let opened: OpenedPool = match choice.open(&config.gpu) {
        Ok(opened) => opened,
        Err(e) => {
            let _ = started.send(Err(e.into()));
            return;
        }
    };
    let runner = actix::System::new();
    // The metrics subscriber subscribes here, before anything can open a
    // session, so its counters see the whole run (it then runs on its own thread).
    // Registry shard 0 runs on this thread, every other shard on a thread
    // of its own (`[sessions] shards`).
    let engine = runner.block_on(async {
        let (engine, threads) =
            Engine::start_on_threads(config.engine(), opened.pool.clone(), pseudonyms)?;
        let metrics = MetricsTask::start(&engine, &config.metrics).await;
        Ok::<_, sessionbus_actors::ConfigError>((engine, threads, metrics))
    });
    let threads = match engine {
        Ok((engine, threads, metrics)) => {
            let system = actix::System::current();
            let running = Running {
                engine,
                pool: opened.pool.clone(),
                #[cfg(feature = "wgpu")]
                wgpu: opened.wgpu.clone(),
                system,
                metrics,
            };
            if started.send(Ok(running)).is_err() {
                threads.stop_and_join();
                return; // the caller gave up on start; nothing to run
            }
            threads
        }
        Err(e) => {
            // Tear the device down before answering: a caller that gives up
            // and exits must not race this thread's teardown of the driver.
            opened.stop(gpu_step_timeout);
            drop(opened);
            drop(runner);
            let _ = started.send(Err(StartError::Config(e.into())));
            return;
        }
    };
    let _ = runner.run();
    // Every shard thread's actors go before the GPU worker stops.
    threads.stop_and_join();
    // The engine is stopped, so nothing can ask for GPU work any more. Stopping
    // the worker joins its thread: done here, never on the application's
    // thread, and bounded: a worker hung in the driver is left behind, and
    // the report says what it still holds.
    let stopped = opened.stop(gpu_step_timeout);
    // Let go of the device before answering, so that the last reference is
    // the `Runtime`'s and wgpu's instance is torn down before `shutdown()`
    // returns. Dropped here after the answer, it raced the process's exit
    // (a program that returned from main while this thread was still in
    // Mesa's EGL teardown crashed in the exit handlers).
    drop(opened);
    let _ = exit.send(stopped);
}
