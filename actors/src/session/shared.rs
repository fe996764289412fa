//! The little a session shares with its handles: its state and end reason,
//! so a handle can name them after the actor is gone.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use crate::ids::Owner;
use crate::lifecycle::{EndReason, State};

#[derive(Debug)]
pub(crate) struct SessionShared {
    /// Who owns the session: kept here once for the actor, its parked
    /// state, the registry's entry and its tombstone (16 bytes each).
    owner: Owner,
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
    /// The yes-or-no facts below (`WAITING` …), one bit each: one byte, not
    /// five, which keeps this record in a smaller allocation size.
    flags: AtomicU8,
    /// Where the actor is: running, parked, or gone (`slot.rs`).
    pub(super) slot: std::sync::Mutex<super::slot::Slot>,
    /// Messages queued through the slot and not yet handled: a session
    /// parks only at zero.
    pub(super) inbox: AtomicU32,
    /// Live handles (and leases): the last one dropped is a disconnect.
    pub(super) handles: AtomicU32,
}

/// An allocation waits for room: a session asking for memory is not evicted.
const WAITING: u8 = 1;
/// It holds a KV block table: ending it gives KV blocks back.
const HOLDS_KV: u8 = 1 << 1;
/// Still in its registry shard's table (cleared when the shard takes its
/// end): memory pressure on another shard's behalf reads it.
const REGISTERED: u8 = 1 << 2;
/// Parked (its actor stopped, its state in `slot`): read without the lock.
const PARKED: u8 = 1 << 3;
/// Passivation is on: messages are counted in `inbox` (off, a session
/// never parks, and sending skips the count). Set before it is shared.
const COUNTS_INBOX: u8 = 1 << 4;

const STATES: [State; 4] = [
    State::Init,
    State::Established,
    State::Closing,
    State::Closed,
];

impl SessionShared {
    pub(crate) fn new(now_us: u64, owner: Owner) -> Self {
        SessionShared {
            owner,
            state: AtomicU8::new(1),
            reason: AtomicU8::new(0),
            last_active_us: AtomicU64::new(now_us),
            closing_since_us: AtomicU64::new(u64::MAX),
            gpu_bytes: AtomicU64::new(0),
            leases: AtomicU32::new(0),
            flags: AtomicU8::new(REGISTERED),
            slot: std::sync::Mutex::new(super::slot::Slot::Gone),
            inbox: AtomicU32::new(0),
            handles: AtomicU32::new(0),
        }
    }

    /// With messages counted in `inbox`, as a session that may park needs.
    pub(crate) fn counting_inbox(self) -> Self {
        self.set_flag(COUNTS_INBOX, true);
        self
    }

    fn flag(&self, bit: u8) -> bool {
        self.flags.load(Ordering::Acquire) & bit != 0
    }

    fn set_flag(&self, bit: u8, on: bool) {
        match on {
            true => self.flags.fetch_or(bit, Ordering::AcqRel),
            false => self.flags.fetch_and(!bit, Ordering::AcqRel),
        };
    }

    /// Messages are counted in `inbox` (passivation is on).
    pub(super) fn counts_inbox(&self) -> bool {
        self.flag(COUNTS_INBOX)
    }

    /// Parked now (read without the slot's lock).
    pub(crate) fn is_parked(&self) -> bool {
        self.flag(PARKED)
    }

    pub(super) fn set_parked(&self, parked: bool) {
        self.set_flag(PARKED, parked);
    }

    pub(crate) fn owner(&self) -> &Owner {
        &self.owner
    }

    pub(crate) fn is_registered(&self) -> bool {
        self.flag(REGISTERED)
    }

    pub(crate) fn set_unregistered(&self) {
        self.set_flag(REGISTERED, false);
    }

    pub(crate) fn holds_kv(&self) -> bool {
        self.flag(HOLDS_KV)
    }

    pub(crate) fn set_holds_kv(&self, holds: bool) {
        self.set_flag(HOLDS_KV, holds);
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
        self.flag(WAITING)
    }

    pub(crate) fn set_waiting(&self, waiting: bool) {
        self.set_flag(WAITING, waiting);
    }

    pub(crate) fn set_closed(&self) {
        self.state.store(3, Ordering::Release);
    }
}
