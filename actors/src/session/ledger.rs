//! What a session holds on the GPU, as the engine counts it.

use crate::gpu::Allocated;

/// Buffers a session owns, plus bytes reserved for allocations still in flight
/// (so two concurrent requests cannot both squeeze under the budget).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    live: Vec<Allocated>,
    live_bytes: u64,
    reserved: u64,
}

impl Ledger {
    /// Bytes held plus bytes reserved.
    pub(crate) fn committed(&self) -> u64 {
        self.live_bytes + self.reserved
    }

    pub(crate) fn reserve(&mut self, bytes: u64) {
        self.reserved += bytes;
    }

    pub(crate) fn confirm(&mut self, reserved: u64, allocation: Allocated) {
        self.reserved -= reserved;
        self.live_bytes += allocation.bytes;
        self.live.push(allocation);
    }

    pub(crate) fn cancel(&mut self, reserved: u64) {
        self.reserved -= reserved;
    }

    pub(crate) fn live(&self) -> &[Allocated] {
        &self.live
    }

    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    pub(crate) fn take(&mut self) -> (Vec<Allocated>, u64) {
        let bytes = std::mem::take(&mut self.live_bytes);
        (std::mem::take(&mut self.live), bytes)
    }
}
