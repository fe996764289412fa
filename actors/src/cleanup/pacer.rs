//! Paces GPU release with governor GCRA limiters, one per load tier, so a
//! mass disconnect becomes a steady stream instead of an avalanche.
//!
//! The limiters read the engine's clock (`clock::now()`, tokio's), and waits
//! are tokio sleeps: on paused time a paced storm is tested exactly, without
//! sleeping.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::backoff::Backoff;
use super::config::{PaceUnit, ReleaseConfig, ReleaseTier};
use crate::clock;

/// Governor's view of the engine clock: nanoseconds since the pacer began.
#[derive(Clone, Debug)]
struct EngineClock {
    start: tokio::time::Instant,
}

impl Clock for EngineClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(clock::now().saturating_duration_since(self.start.into_std()))
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, EngineClock, NoOpMiddleware<Nanos>>;

/// The load a tier is chosen by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Load {
    /// What the release queue holds, in the pacing unit (including the release at hand).
    pub(crate) queued: u64,
    /// Sessions live now.
    pub(crate) live_sessions: u64,
    /// Bytes allocations are waiting for.
    pub(crate) waiting_bytes: u64,
}

#[derive(Debug)]
pub(crate) struct Pacer {
    unit: PaceUnit,
    tiers: Vec<(ReleaseTier, Limiter)>,
    busy_live_sessions: u64,
    backoff: Backoff,
    clock: EngineClock,
}

impl Pacer {
    /// Builds one limiter per tier; `config` must have been validated.
    pub(crate) fn new(config: &ReleaseConfig) -> Self {
        let clock = EngineClock {
            start: tokio::time::Instant::from_std(clock::now()),
        };
        let tiers = config
            .tiers
            .iter()
            .map(|tier| {
                let rate = NonZeroU32::new(tier.rate).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(tier.burst).unwrap_or(NonZeroU32::MIN);
                let quota = Quota::per_second(rate).allow_burst(burst);
                (
                    tier.clone(),
                    RateLimiter::direct_with_clock(quota, clock.clone()),
                )
            })
            .collect();
        Pacer {
            unit: config.unit,
            tiers,
            busy_live_sessions: config.busy_live_sessions,
            backoff: Backoff::new(config.live_lag),
            clock,
        }
    }

    /// Live traffic first (`release.live_lag`).
    pub(crate) fn backoff(&self) -> Backoff {
        self.backoff
    }

    pub(crate) fn unit(&self) -> PaceUnit {
        self.unit
    }

    /// The tier for `load`: the highest whose `from_queue` the queue reaches,
    /// one lower when live sessions are at `busy_live_sessions` or more.
    pub(crate) fn select(&self, load: Load) -> usize {
        let reached = self
            .tiers
            .iter()
            .rposition(|(tier, _)| load.queued >= tier.from_queue)
            .unwrap_or(0);
        if load.live_sessions >= self.busy_live_sessions {
            reached.saturating_sub(1)
        } else {
            reached
        }
    }

    /// The highest tier (most releases in flight), used at shutdown.
    pub(crate) fn top(&self) -> usize {
        self.tiers.len().saturating_sub(1)
    }

    pub(crate) fn tier(&self, index: usize) -> &ReleaseTier {
        &self.tiers[index].0
    }

    /// Admits `cost` now if tier `index`'s limiter has room for all of it,
    /// without waiting; `false` (nothing taken) if it has not.
    pub(crate) fn try_admit(&self, index: usize, cost: u64) -> bool {
        let Some(cost) = u32::try_from(cost).ok().and_then(NonZeroU32::new) else {
            return true; // nothing to pace (a zero cost, or no cost at all)
        };
        matches!(self.tiers[index].1.check_n(cost), Ok(Ok(())))
    }

    /// Waits until `cost` (in the pacing unit) may be released under tier
    /// `index`; returns how long that took. Costs above the burst are
    /// admitted in burst-sized steps.
    pub(crate) async fn admit(&self, index: usize, cost: u64) -> Duration {
        let (tier, limiter) = &self.tiers[index];
        let burst = u64::from(tier.burst.max(1));
        let started = clock::now();
        let mut left = cost;
        while left > 0 {
            let step = left.min(burst) as u32;
            let step = NonZeroU32::new(step).unwrap_or(NonZeroU32::MIN);
            match limiter.check_n(step) {
                Ok(Ok(())) => left -= u64::from(step.get()),
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    tokio::time::sleep(wait.max(Duration::from_micros(1))).await;
                }
                // `step` never exceeds the burst.
                Err(_) => left -= u64::from(step.get()),
            }
        }
        clock::now().saturating_duration_since(started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn within_the_burst_nothing_waits_past_it_release_is_paced_exactly() {
        let pacer = Pacer::new(&ReleaseConfig::fixed(PaceUnit::Buffers, 1000, 10, 1));
        assert_eq!(pacer.admit(0, 10).await, Duration::ZERO);
        assert_eq!(pacer.admit(0, 0).await, Duration::ZERO);
        // 20 more buffers at 1000/s: 20 ms on the engine clock.
        let waited = pacer.admit(0, 20).await;
        assert!(
            (Duration::from_millis(19)..=Duration::from_millis(21)).contains(&waited),
            "{waited:?}"
        );
    }

    #[test]
    fn the_queue_raises_the_tier_and_a_busy_gpu_lowers_it() {
        let pacer = Pacer::new(&ReleaseConfig::default());
        let load = |queued, live_sessions| Load {
            queued,
            live_sessions,
            waiting_bytes: 0,
        };
        assert_eq!(pacer.select(load(1, 10)), 0);
        assert_eq!(pacer.select(load(8_192, 10)), 1);
        assert_eq!(pacer.select(load(1 << 20, 10)), 2);
        assert_eq!(pacer.select(load(1 << 20, 100_000)), 1);
        assert_eq!(pacer.select(load(0, 100_000)), 0);
    }
}
