//! The one seam through which the engine reads time.
//!
//! Every deadline, lease and drain timer reads `now()`, which follows tokio's
//! clock: in production that is the system's monotonic clock; in tests on a
//! paused runtime (`start_paused`) it is virtual time that jumps straight to
//! the next timer, so time-dependent behaviour is tested without sleeping.
//! The actors never call `Instant::now()` themselves: an instant from the
//! system clock compared with one from here would be wrong on paused time.
//! (`SystemTime::now()` is read directly where an event needs a wall-clock
//! timestamp.)
//!
//! Deadlines are stored as microseconds since an [`Epoch`] so that hot state
//! (a session's last activity) fits in one atomic word.

use std::time::{Duration, Instant};

/// Now, on the engine's clock.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A fixed origin for turning instants into `u64` microseconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epoch(Instant);

impl Epoch {
    pub(crate) fn now() -> Self {
        Epoch(now())
    }

    /// Microseconds from the epoch to `at` (zero before it, saturating far after it).
    pub(crate) fn micros(self, at: Instant) -> u64 {
        at.saturating_duration_since(self.0)
            .as_micros()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// The instant `micros` after the epoch.
    pub(crate) fn instant(self, micros: u64) -> Instant {
        self.0 + Duration::from_micros(micros)
    }

    /// Microseconds from the epoch to now.
    pub(crate) fn now_micros(self) -> u64 {
        self.micros(now())
    }
}

/// `duration` in microseconds, saturating (a "never" deadline stays far away, not wrapped).
pub(crate) fn micros(duration: Duration) -> u64 {
    duration.as_micros().try_into().unwrap_or(u64::MAX)
}
