//! Where the runtime's memory comes from: its own wgpu device (feature
//! `wgpu`, the default), or a pool the application gave
//! (`RuntimeBuilder::pool`); and how each is stopped and reported.

use std::sync::Arc;
use std::time::Duration;

use sessionbus_actors::{GpuPool, PoolStats};

use super::error::StartError;
use crate::config::GpuConfig;
#[cfg(feature = "wgpu")]
use crate::gpu::WgpuPool;
use crate::gpu::{GpuCounters, GpuInitError};

/// The pool the runtime will run on.
pub(super) enum PoolChoice {
    /// A wgpu pool of the runtime's own: on a device opened from `[gpu]`,
    /// or on the application's (`RuntimeBuilder::wgpu_device`).
    #[cfg(feature = "wgpu")]
    OwnWgpu(Option<Box<crate::gpu::WgpuDevice>>),
    /// The application's; never stopped by the runtime.
    Application(Arc<dyn GpuPool>),
}

impl PoolChoice {
    /// The runtime's own pool, if this build has one.
    pub(super) fn own() -> Result<Self, StartError> {
        #[cfg(feature = "wgpu")]
        return Ok(PoolChoice::OwnWgpu(None));
        #[cfg(not(feature = "wgpu"))]
        Err(StartError::NoPool)
    }

    /// Opens the device (own wgpu pool) or takes the application's pool.
    pub(super) fn open(self, config: &GpuConfig) -> Result<OpenedPool, GpuInitError> {
        let _ = config; // only the own wgpu pool reads `[gpu]`
        match self {
            #[cfg(feature = "wgpu")]
            PoolChoice::OwnWgpu(given) => {
                let wgpu = Arc::new(match given {
                    Some(device) => WgpuPool::start_on(*device, config)?,
                    None => WgpuPool::start(config)?,
                });
                Ok(OpenedPool {
                    pool: wgpu.clone(),
                    wgpu: Some(wgpu),
                })
            }
            PoolChoice::Application(pool) => Ok(OpenedPool {
                pool,
                #[cfg(feature = "wgpu")]
                wgpu: None,
            }),
        }
    }
}

/// The pool in use.
#[derive(Clone)]
pub(super) struct OpenedPool {
    pub(super) pool: Arc<dyn GpuPool>,
    /// The same pool, when it is the runtime's own wgpu pool.
    #[cfg(feature = "wgpu")]
    pub(super) wgpu: Option<Arc<WgpuPool>>,
}

impl OpenedPool {
    /// Stops the runtime's own pool (waiting for its thread at most
    /// `timeout`); reports an application's pool as it stands.
    pub(super) fn stop(&self, timeout: Duration) -> PoolStop {
        #[cfg(feature = "wgpu")]
        if let Some(wgpu) = &self.wgpu {
            return PoolStop::wgpu(wgpu, timeout);
        }
        let _ = timeout;
        PoolStop::application(self.pool.as_ref())
    }
}

/// What stopping the pool did, for the `StopReport`.
#[derive(Clone, Copy, Debug)]
pub(super) struct PoolStop {
    /// wgpu's counters after the last release (own wgpu pool only).
    pub(super) counters: Option<GpuCounters>,
    /// wgpu's counters when the device had just opened (own wgpu pool only).
    pub(super) baseline: Option<GpuCounters>,
    /// Whether the pool's thread stopped in time (always for an application's pool).
    pub(super) stopped: bool,
    /// What the pool still held.
    pub(super) held: PoolStats,
}

impl PoolStop {
    #[cfg(feature = "wgpu")]
    pub(super) fn wgpu(wgpu: &WgpuPool, timeout: Duration) -> Self {
        let stop = wgpu.shutdown_within(timeout);
        PoolStop {
            counters: Some(stop.counters),
            baseline: Some(wgpu.initial_counters()),
            stopped: stop.stopped,
            held: stop.held,
        }
    }

    pub(super) fn application(pool: &dyn GpuPool) -> Self {
        PoolStop {
            counters: None,
            baseline: None,
            stopped: true,
            held: pool.stats(),
        }
    }
}
