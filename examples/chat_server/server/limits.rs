//! Per-owner rate limits: one keyed `governor` limiter for session opens
//! and chat messages, over REST and WebSocket alike. Being limited is a
//! value (how long to wait), turned into 429 or a WebSocket error frame.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sessionbus::Owner;

/// The limiter, keyed by owner.
pub struct OwnerLimiter {
    limiter: DefaultKeyedRateLimiter<Owner>,
    clock: DefaultClock,
}

impl OwnerLimiter {
    pub(super) fn new(per_sec: u32, burst: u32) -> Self {
        let per_sec = NonZeroU32::new(per_sec.max(1)).unwrap();
        let burst = NonZeroU32::new(burst.max(1)).unwrap();
        OwnerLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    /// `Ok` if `owner` may act now, else how long until it may.
    pub fn check(&self, owner: &Owner) -> Result<(), Duration> {
        let checked = self
            .limiter
            .check_key(owner)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()));
        // Keys of owners that have been quiet long enough are dropped, so the
        // table stays as small as the set of active owners.
        if self.limiter.len() > 10_000 {
            self.limiter.retain_recent();
        }
        checked
    }
}
