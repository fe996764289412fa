//! What the pool handle asks of the worker: one command per request, each
//! with the reply its caller awaits.

#[cfg(feature = "testing")]
use crossbeam_channel::Receiver;
use sessionbus_actors::{
    AllocRequest, Allocated, AllocationId, ByteRange, GpuError, OffloadReport, ReleaseReport,
    RestoreReport, SessionId,
};
use tokio::sync::oneshot;

use crate::gpu::error::GpuInitError;

/// What the pool handle asks of the worker.
pub(crate) enum Command {
    Allocate {
        request: AllocRequest,
        reply: oneshot::Sender<Result<Allocated, GpuError>>,
    },
    Release {
        session: SessionId,
        reply: oneshot::Sender<ReleaseReport>,
    },
    /// Destroy only the listed buffers of `session`; batched like `Release`.
    ReleaseAllocations {
        session: SessionId,
        ids: Vec<AllocationId>,
        reply: oneshot::Sender<ReleaseReport>,
    },
    /// List the sessions holding at least one live buffer; needs no poll.
    SessionsHoldingMemory {
        reply: oneshot::Sender<Vec<SessionId>>,
    },
    /// Queue a write into one buffer; answered at once.
    Write {
        session: SessionId,
        id: AllocationId,
        offset: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), GpuError>>,
    },
    /// Copy one buffer back to host memory (waits for the device).
    Read {
        session: SessionId,
        id: AllocationId,
        reply: oneshot::Sender<Result<Vec<u8>, GpuError>>,
    },
    /// Copy ranges of buffers back to host memory, in one submission (waits
    /// for the device once).
    ReadRanges {
        session: SessionId,
        ranges: Vec<ByteRange>,
        reply: oneshot::Sender<Result<Vec<Vec<u8>>, GpuError>>,
    },
    /// The wgpu buffer behind allocation `id`, whichever session holds it
    /// (for the application's own kernels); answered at once.
    Buffer {
        id: AllocationId,
        reply: oneshot::Sender<Result<wgpu::Buffer, GpuError>>,
    },
    /// Copy a session's buffers to host memory, then destroy them on the device.
    Offload {
        session: SessionId,
        reply: oneshot::Sender<Result<OffloadReport, GpuError>>,
    },
    /// Recreate a session's offloaded buffers from their host copies.
    Restore {
        session: SessionId,
        reply: oneshot::Sender<Result<RestoreReport, GpuError>>,
    },
    /// Destroy whatever is left, poll, leave the counters in `WorkerExit`, and exit.
    Shutdown,
    /// Destroy what is left on the (lost) device, open a new device with the
    /// same configuration, and carry on with it (the `DeviceView` follows,
    /// even if the caller stopped waiting).
    Reopen {
        reply: oneshot::Sender<Result<(), GpuInitError>>,
    },
    /// Destroy the device, as a driver reset would (`testing` builds only).
    #[cfg(feature = "testing")]
    InjectDeviceLoss,
    /// Block until `until` is sent to or dropped, as a hung driver would
    /// (`testing` builds only).
    #[cfg(feature = "testing")]
    InjectHang { until: Receiver<()> },
    /// Panic while executing this command (`testing` builds only).
    #[cfg(feature = "testing")]
    InjectPanic,
}

impl Command {
    /// A release of memory (a whole session's or listed buffers): its reply
    /// waits for a device poll, which consecutive releases share.
    pub(super) fn is_release(&self) -> bool {
        matches!(
            self,
            Command::Release { .. } | Command::ReleaseAllocations { .. }
        )
    }
}
