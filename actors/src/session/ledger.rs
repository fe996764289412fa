//! What a session holds on the GPU, as the engine counts it.

use super::messages::Binding;
use crate::gpu::Allocated;
use crate::ids::AllocationId;

/// Buffers a session owns, plus bytes reserved for allocations still in flight
/// (so two concurrent requests cannot both squeeze under the budget).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    live: Vec<Allocated>,
    live_bytes: u64,
    reserved: u64,
    /// Which of `live` are context-bound (released on a context reset).
    context_bound: Vec<AllocationId>,
}

impl Ledger {
    /// Bytes held plus bytes reserved.
    pub(crate) fn committed(&self) -> u64 {
        self.live_bytes + self.reserved
    }

    pub(crate) fn reserve(&mut self, bytes: u64) {
        self.reserved += bytes;
    }

    pub(crate) fn confirm(&mut self, reserved: u64, allocation: Allocated, binding: Binding) {
        if binding == Binding::Context {
            self.context_bound.push(allocation.id);
        }
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

    /// Removes the context-bound allocations; returns them.
    pub(crate) fn take_context(&mut self) -> Vec<Allocated> {
        if self.context_bound.is_empty() {
            return Vec::new();
        }
        let bound = std::mem::take(&mut self.context_bound);
        let (context, session): (Vec<_>, Vec<_>) =
            self.live.drain(..).partition(|a| bound.contains(&a.id));
        self.live = session;
        self.live_bytes -= context.iter().map(|a| a.bytes).sum::<u64>();
        context
    }

    pub(crate) fn take(&mut self) -> (Vec<Allocated>, u64) {
        self.context_bound.clear();
        let bytes = std::mem::take(&mut self.live_bytes);
        (std::mem::take(&mut self.live), bytes)
    }
}
