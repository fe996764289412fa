//! The little a session shares with its handles: its state and end reason,
//! so a handle can name them after the actor is gone.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use crate::lifecycle::{EndReason, State};

#[derive(Debug)]
pub(crate) struct SessionShared {
    state: AtomicU8,
    /// 0 until ended, then 1 + the reason's index in `EndReason::ALL`.
    reason: AtomicU8,
    /// Last activity, in microseconds on the engine epoch. Written by the
    /// session actor on every accepted activity (one relaxed store: this is
    /// all a touch costs the expiry machinery); read by the registry when a
    /// deadline comes due.
    last_active_us: AtomicU64,
    /// When the session entered Closing (microseconds on the engine epoch);
    /// the sweeper reads it to find sessions stuck there.
    closing_since_us: AtomicU64,
    /// GPU bytes charged to the budgets (0 when offloaded): how much an
    /// eviction of this session would give back.
    gpu_bytes: AtomicU64,
    /// Leases held: a session with work in flight is never evicted.
    leases: AtomicU32,
    /// An allocation waits for room: a session asking for memory is not evicted.
    waiting: AtomicBool,
    /// It holds a KV block table: ending it gives KV blocks back.
    holds_kv: AtomicBool,
    /// Still in its registry shard's table (cleared when the shard takes its
    /// end): memory pressure on another shard's behalf reads it.
    registered: AtomicBool,
    /// Where the actor is: running, parked, or gone (`slot.rs`).
    pub(super) slot: std::sync::Mutex<super::slot::Slot>,
    /// Messages queued through the slot and not yet handled: a session
    /// parks only at zero.
    pub(super) inbox: AtomicU32,
    /// Live handles (and leases): the last one dropped is a disconnect.
    pub(super) handles: AtomicU32,
    /// Parked (its actor stopped, its state in `slot`): read without the lock.
    pub(super) parked: AtomicBool,
    /// Passivation is on: messages are counted in `inbox` (off, a session
    /// never parks, and sending skips the count).
    pub(super) counts_inbox: bool,
}

const STATES: [State; 4] = [
    State::Init,
    State::Established,
    State::Closing,
    State::Closed,
];

impl SessionShared {
    pub(crate) fn new(now_us: u64) -> Self {
        SessionShared {
            state: AtomicU8::new(1),
            reason: AtomicU8::new(0),
            last_active_us: AtomicU64::new(now_us),
            closing_since_us: AtomicU64::new(u64::MAX),
            gpu_bytes: AtomicU64::new(0),
            leases: AtomicU32::new(0),
            waiting: AtomicBool::new(false),
            holds_kv: AtomicBool::new(false),
            registered: AtomicBool::new(true),
            slot: std::sync::Mutex::new(super::slot::Slot::Gone),
            inbox: AtomicU32::new(0),
            handles: AtomicU32::new(0),
            parked: AtomicBool::new(false),
            counts_inbox: false,
        }
    }

    /// With messages counted in `inbox`, as a session that may park needs.
    pub(crate) fn counting_inbox(mut self) -> Self {
        self.counts_inbox = true;
        self
    }

    pub(crate) fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    pub(crate) fn set_unregistered(&self) {
        self.registered.store(false, Ordering::Relaxed);
    }

    pub(crate) fn holds_kv(&self) -> bool {
        self.holds_kv.load(Ordering::Relaxed)
    }

    pub(crate) fn set_holds_kv(&self, holds: bool) {
        self.holds_kv.store(holds, Ordering::Relaxed);
    }

    pub(crate) fn last_active_us(&self) -> u64 {
        self.last_active_us.load(Ordering::Relaxed)
    }

    pub(crate) fn set_last_active_us(&self, now_us: u64) {
        self.last_active_us.store(now_us, Ordering::Relaxed);
    }

    /// When the session entered Closing, if it has.
    pub(crate) fn closing_since_us(&self) -> Option<u64> {
        match self.closing_since_us.load(Ordering::Acquire) {
            u64::MAX => None,
            at => Some(at),
        }
    }

    pub(crate) fn state(&self) -> State {
        STATES[self.state.load(Ordering::Acquire) as usize]
    }

    pub(crate) fn reason(&self) -> Option<EndReason> {
        match self.reason.load(Ordering::Acquire) {
            0 => None,
            n => Some(EndReason::ALL[n as usize - 1]),
        }
    }

    pub(crate) fn set_closing(&self, reason: EndReason, now_us: u64) {
        let _ = self.closing_since_us.compare_exchange(
            u64::MAX,
            now_us,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let index = EndReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.reason.store(index as u8 + 1, Ordering::Release);
        self.state.store(2, Ordering::Release);
    }

    pub(crate) fn gpu_bytes(&self) -> u64 {
        self.gpu_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn set_gpu_bytes(&self, bytes: u64) {
        self.gpu_bytes.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn leases(&self) -> u32 {
        self.leases.load(Ordering::Relaxed)
    }

    pub(crate) fn set_leases(&self, leases: u32) {
        self.leases.store(leases, Ordering::Relaxed);
    }

    pub(crate) fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
    }

    pub(crate) fn set_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, Ordering::Relaxed);
    }

    pub(crate) fn set_closed(&self) {
        self.state.store(3, Ordering::Release);
    }
}
