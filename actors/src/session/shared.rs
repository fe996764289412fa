//! The little a session shares with its handles: its state and end reason,
//! so a handle can name them after the actor is gone.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::lifecycle::{EndReason, State};

#[derive(Debug)]
pub(crate) struct SessionShared {
    state: AtomicU8,
    /// 0 until ended, then 1 + the reason's index in `EndReason::ALL`.
    reason: AtomicU8,
}

const STATES: [State; 4] = [
    State::Init,
    State::Established,
    State::Closing,
    State::Closed,
];

impl SessionShared {
    pub(crate) fn new() -> Self {
        SessionShared {
            state: AtomicU8::new(1),
            reason: AtomicU8::new(0),
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

    pub(crate) fn set_closing(&self, reason: EndReason) {
        let index = EndReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.reason.store(index as u8 + 1, Ordering::Release);
        self.state.store(2, Ordering::Release);
    }

    pub(crate) fn set_closed(&self) {
        self.state.store(3, Ordering::Release);
    }
}
