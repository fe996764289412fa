//! What a session holds on the GPU, as the engine counts it.

use super::messages::Binding;
use crate::gpu::Allocated;
/// Buffers a session owns, plus bytes reserved for allocations still in flight
/// (so two concurrent requests cannot both squeeze under the budget).
///
/// One vector holds both kinds: session-lifetime buffers first, then the
/// context-bound ones from `context_from` on (one vector, not two: an idle
/// session's size is multiplied by a million). Boxed, and only once the
/// session asks for memory: a session that never did carries 8 bytes, not 56
/// (a session that did pays one small allocation next to its buffers).
#[derive(Debug, Default)]
pub(crate) struct Ledger(Option<Box<Held>>);

#[derive(Debug, Default)]
struct Held {
    live: Vec<Allocated>,
    live_bytes: u64,
    /// Charged to the budget, asked of the pool, not yet answered.
    reserved: u64,
    /// Waiting for room in a budget (counted against the session cap only).
    waiting: u64,
    context_from: u32,
    /// The live buffers are in host memory (offloaded), not on the GPU.
    offloaded: bool,
}

impl Ledger {
    fn read<T: Default>(&self, field: impl FnOnce(&Held) -> T) -> T {
        self.0.as_deref().map(field).unwrap_or_default()
    }

    fn held(&mut self) -> &mut Held {
        self.0.get_or_insert_with(Box::default)
    }

    /// Nothing held, asked for, waited for or offloaded: the box can go.
    pub(crate) fn is_clear(&self) -> bool {
        self.0.as_deref().is_none_or(|l| {
            l.live.is_empty()
                && l.live_bytes == 0
                && l.reserved == 0
                && l.waiting == 0
                && !l.offloaded
        })
    }

    /// Bytes held plus bytes reserved or waited for: what the session cap limits.
    pub(crate) fn committed(&self) -> u64 {
        self.read(|l| l.live_bytes + l.reserved + l.waiting)
    }

    /// GPU bytes charged to the budgets: buffers on the GPU, allocations in flight.
    pub(crate) fn charged(&self) -> u64 {
        self.read(|l| match l.offloaded {
            true => l.reserved,
            false => l.live_bytes + l.reserved,
        })
    }

    pub(crate) fn reserve(&mut self, bytes: u64) {
        self.held().reserved += bytes;
    }

    pub(crate) fn wait(&mut self, bytes: u64) {
        self.held().waiting += bytes;
    }

    pub(crate) fn stop_waiting(&mut self, bytes: u64) {
        self.held().waiting -= bytes;
    }

    /// An allocation waits for room in a budget.
    pub(crate) fn is_waiting(&self) -> bool {
        self.read(|l| l.waiting > 0)
    }

    pub(crate) fn is_offloaded(&self) -> bool {
        self.read(|l| l.offloaded)
    }

    pub(crate) fn set_offloaded(&mut self, offloaded: bool) {
        if offloaded || self.0.is_some() {
            self.held().offloaded = offloaded;
        }
    }

    pub(crate) fn confirm(&mut self, reserved: u64, allocation: Allocated, binding: Binding) {
        let l = self.held();
        l.reserved -= reserved;
        l.live_bytes += allocation.bytes;
        match binding {
            Binding::Context => l.live.push(allocation),
            Binding::Session => {
                l.live.insert(l.context_from as usize, allocation);
                l.context_from += 1;
            }
        }
    }

    pub(crate) fn cancel(&mut self, reserved: u64) {
        self.held().reserved -= reserved;
    }

    pub(crate) fn live(&self) -> &[Allocated] {
        self.0.as_deref().map_or(&[], |l| &l.live)
    }

    pub(crate) fn live_bytes(&self) -> u64 {
        self.read(|l| l.live_bytes)
    }

    /// Removes the context-bound allocations; returns them.
    pub(crate) fn take_context(&mut self) -> Vec<Allocated> {
        let Some(l) = self.0.as_deref_mut() else {
            return Vec::new();
        };
        let context = l.live.split_off(l.context_from as usize);
        l.live_bytes -= context.iter().map(|a| a.bytes).sum::<u64>();
        context
    }

    /// Bytes of allocations requested and not yet answered.
    pub(crate) fn in_flight(&self) -> u64 {
        self.read(|l| l.reserved)
    }

    /// Every buffer and their bytes, taken out; what is reserved or waited
    /// for stays counted (its answers are still to come).
    pub(crate) fn take(&mut self) -> (Vec<Allocated>, u64) {
        let Some(l) = self.0.as_deref_mut() else {
            return (Vec::new(), 0);
        };
        l.context_from = 0;
        l.offloaded = false;
        let bytes = std::mem::take(&mut l.live_bytes);
        (std::mem::take(&mut l.live), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::AllocationId;

    fn buffer(id: u64) -> Allocated {
        Allocated {
            id: AllocationId(id),
            bytes: 10 * id,
        }
    }

    #[test]
    fn a_context_reset_takes_exactly_the_context_bound_buffers() {
        let mut ledger = Ledger::default();
        for (id, binding) in [
            (1, Binding::Context),
            (2, Binding::Session),
            (3, Binding::Context),
            (4, Binding::Session),
        ] {
            ledger.reserve(10 * id);
            ledger.confirm(10 * id, buffer(id), binding);
        }
        let context: Vec<_> = ledger.take_context().iter().map(|a| a.id.0).collect();
        assert_eq!(context, vec![1, 3]);
        assert_eq!(ledger.live_bytes(), 60);
        assert!(ledger.take_context().is_empty());
        ledger.reserve(50);
        ledger.confirm(50, buffer(5), Binding::Context);
        let (all, bytes) = ledger.take();
        assert_eq!(
            all.iter().map(|a| a.id.0).collect::<Vec<_>>(),
            vec![2, 4, 5]
        );
        assert_eq!((bytes, ledger.committed()), (110, 0));
    }
}
