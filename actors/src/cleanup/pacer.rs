//! Paces GPU release with a GCRA limiter (governor), counted in buffers, so a
//! mass disconnect becomes a steady stream instead of an avalanche.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::ReleaseConfig;

#[derive(Debug)]
pub(crate) struct Pacer {
    limiter: DefaultDirectRateLimiter,
    burst: NonZeroU32,
}

impl Pacer {
    /// Builds the limiter; `config` must have been validated (non-zero rate and burst).
    pub(crate) fn new(config: &ReleaseConfig) -> Self {
        let rate = NonZeroU32::new(config.buffers_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        Pacer {
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            burst,
        }
    }

    /// Waits until `buffers` may be destroyed; returns how long that took.
    /// Larger requests than the burst are admitted in burst-sized steps.
    pub(crate) async fn admit(&self, buffers: u64) -> Duration {
        let mut left = buffers;
        let mut start = None;
        while left > 0 {
            let step = left.min(u64::from(self.burst.get())) as u32;
            let step = NonZeroU32::new(step).unwrap_or(NonZeroU32::MIN);
            if self.limiter.check_n(step).is_ok_and(|ok| ok.is_ok()) {
                left -= u64::from(step.get());
                continue;
            }
            start.get_or_insert_with(Instant::now);
            // `step` never exceeds the burst, so this cannot report insufficient capacity.
            let _ = self.limiter.until_n_ready(step).await;
            left -= u64::from(step.get());
        }
        start.map(|s| s.elapsed()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn within_the_burst_nothing_waits() {
        let pacer = Pacer::new(&ReleaseConfig {
            buffers_per_second: 10,
            burst: 100,
        });
        assert_eq!(pacer.admit(100).await, Duration::ZERO);
        assert_eq!(pacer.admit(0).await, Duration::ZERO);
    }

    #[tokio::test]
    async fn past_the_burst_release_is_paced() {
        let pacer = Pacer::new(&ReleaseConfig {
            buffers_per_second: 1000,
            burst: 10,
        });
        pacer.admit(10).await;
        // 20 more buffers at 1000/s cannot be admitted at once.
        assert!(pacer.admit(20).await > Duration::ZERO);
    }
}
