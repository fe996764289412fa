//! The `sessionbus-engine` thread: opens the GPU pool, runs the engine's
//! actix System until `Runtime::shutdown` stops it, then says so.

use std::sync::Arc;

use sessionbus_actors::{Engine, EngineHandle};
use tokio::sync::oneshot;

use super::error::StartError;
use crate::config::Config;
use crate::gpu::WgpuPool;

/// What the thread hands back once the engine is up.
pub(super) type Started = Result<(EngineHandle, Arc<WgpuPool>, actix::System), StartError>;

pub(super) fn run(config: Config, started: oneshot::Sender<Started>, exit: oneshot::Sender<()>) {
    let gpu = match WgpuPool::start(&config.gpu) {
        Ok(pool) => Arc::new(pool),
        Err(e) => {
            let _ = started.send(Err(e.into()));
            return;
        }
    };
    let runner = actix::System::new();
    let engine = runner.block_on(async { Engine::start(config.engine(), gpu.clone()) });
    match engine {
        Ok(engine) => {
            let system = actix::System::current();
            if started.send(Ok((engine, gpu, system))).is_err() {
                return; // the caller gave up on start; nothing to run
            }
        }
        Err(e) => {
            let _ = started.send(Err(StartError::Config(e.into())));
            return;
        }
    }
    let _ = runner.run();
    let _ = exit.send(());
}
