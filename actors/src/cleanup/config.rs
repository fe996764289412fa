//! `[release]`: how fast ended sessions' memory goes back to the GPU.
//!
//! Release is paced by a GCRA limiter whose rate, burst and concurrency come
//! from a **load tier**. The tier is chosen per release from live load:
//! the deeper the release queue, the higher the tier (memory held by ended
//! sessions is memory nobody can use); many live sessions lower it by one
//! (live traffic first); and while allocations wait for memory the limiter
//! is bypassed altogether, so pacing never holds release below that demand.
//! While live sessions exist, release also watches how long a live message
//! would wait (the engine thread's queueing delay, the GPU thread's queue:
//! `live_lag`) and backs off while either runs late, so a storm slows live
//! traffic down less.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, at_least};

/// What a release rate counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PaceUnit {
    /// Buffers destroyed (each destroy is a driver call; the usual bottleneck).
    Buffers,
    /// Mebibytes given back (for drivers whose cost grows with size); a
    /// release costs its bytes rounded up to whole MiB, at least one.
    Mib,
}

impl PaceUnit {
    /// What releasing `buffers` buffers holding `bytes` costs, in this unit.
    pub(crate) fn cost(self, buffers: u64, bytes: u64) -> u64 {
        match self {
            PaceUnit::Buffers => buffers,
            PaceUnit::Mib => bytes.div_ceil(1 << 20).max(1),
        }
    }

    fn name(self) -> &'static str {
        match self {
            PaceUnit::Buffers => "buffers",
            PaceUnit::Mib => "MiB",
        }
    }
}

/// One load tier: how fast, how bursty and how concurrent release may be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseTier {
    /// A name for logs and reports ("low", "medium", "high").
    pub name: String,
    /// The tier applies once the release queue holds at least this much
    /// (in `release.unit`). The first tier must start at 0.
    pub from_queue: u64,
    /// Sustained release rate, in `release.unit` per second.
    pub rate: u32,
    /// How much may go at once before pacing starts, in `release.unit`.
    pub burst: u32,
    /// Releases handed to the GPU thread and not yet answered, at most.
    pub max_in_flight: u32,
}

/// Pacing of GPU release.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReleaseConfig {
    /// What `rate`, `burst` and `from_queue` count. Default `"buffers"`.
    pub unit: PaceUnit,
    /// The load tiers, lowest first (ascending `from_queue`).
    ///
    /// Defaults, chosen from measurements on lavapipe (BENCHMARKS.md, "Storms"):
    /// a destroy costs about 0.5 µs and each batch one device poll, so the GPU
    /// thread can give back about a million buffers a second; the tiers keep
    /// the ordinary case below that and let a real storm use it. The low
    /// tier's 100 000/s with a burst of 8 192 releases 500 sessions of 8
    /// buffers in ~25 ms (50 000/s with 4 096 took ~65 ms). Each tier has its
    /// own limiter, so moving up a tier grants that tier's burst at once: a
    /// deep backlog is drained fast on purpose. A storm starts in the low tier
    /// (its ends arrive one by one) and moves up as the queue deepens.
    ///
    /// | tier | from queue | rate/s | burst | in flight |
    /// |---|---|---|---|---|
    /// | low | 0 | 100 000 | 8 192 | 64 |
    /// | medium | 8 192 | 200 000 | 16 384 | 256 |
    /// | high | 65 536 | 1 000 000 | 65 536 | 1 024 |
    pub tiers: Vec<ReleaseTier>,
    /// Live sessions at or above this count lower the tier by one (never
    /// below the first): a busy GPU serves live traffic first. Default 100 000.
    pub busy_live_sessions: u64,
    /// Live traffic first: while live sessions exist and a live message
    /// would wait longer than this (the engine thread's queueing delay,
    /// probed before each release, or the longest a release waited for the
    /// GPU thread since the last probe), release gives way (pauses this
    /// long, then probes again) and halves the tier's `max_in_flight`, one
    /// halving per late probe; probes within half of it restore full speed
    /// one step at a time. With no live session left, with allocations
    /// waiting for memory, or at shutdown nothing is held back, so a storm
    /// alone still goes at full speed. `"off"` (`None`): release follows the
    /// tiers alone. Default 500 µs: live messages took about 0.1–2 ms p99
    /// before a storm on the 2-vCPU bench machine (BENCHMARKS.md, "Storms"),
    /// so a thread 500 µs behind is one that live traffic feels. Measured
    /// against 200 µs and 1 ms (10 alternating runs of the unthrottled
    /// storm of 2 000): 200 µs gave the same live p99 and a storm 1.8× as
    /// long, 1 ms a slightly higher live p99.
    #[serde(with = "crate::units::duration_or_off")]
    pub live_lag: Option<Duration>,
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        let tier = |name: &str, from_queue, rate, burst, max_in_flight| ReleaseTier {
            name: name.into(),
            from_queue,
            rate,
            burst,
            max_in_flight,
        };
        ReleaseConfig {
            unit: PaceUnit::Buffers,
            tiers: vec![
                tier("low", 0, 100_000, 8_192, 64),
                tier("medium", 8_192, 200_000, 16_384, 256),
                tier("high", 65_536, 1_000_000, 65_536, 1_024),
            ],
            busy_live_sessions: 100_000,
            live_lag: Some(Duration::from_micros(500)),
        }
    }
}

impl ReleaseConfig {
    /// One tier, no load adaptation (nor `live_lag`): `rate` per second with `burst`, as
    /// concurrent as `max_in_flight`. For tests, benchmarks and operators who
    /// want a fixed rate. Give it a burst of at least ~20 ms of the rate: a
    /// burst shorter than timer jitter makes the achieved rate fall short
    /// (measured: a 4 ms burst achieved 7–13 % less, a 20 ms burst within 3 %).
    pub fn fixed(unit: PaceUnit, rate: u32, burst: u32, max_in_flight: u32) -> Self {
        ReleaseConfig {
            unit,
            tiers: vec![ReleaseTier {
                name: "fixed".into(),
                from_queue: 0,
                rate,
                burst,
                max_in_flight,
            }],
            busy_live_sessions: u64::MAX,
            live_lag: None,
        }
    }

    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let Some(first) = self.tiers.first() else {
            return Err(ConfigError::new("release.tiers", "needs at least one tier"));
        };
        if first.from_queue != 0 {
            return Err(ConfigError::new(
                "release.tiers[0].from_queue",
                format!(
                    "the first tier must start at 0 (an empty queue needs a tier), got {}",
                    first.from_queue
                ),
            ));
        }
        for (index, tier) in self.tiers.iter().enumerate() {
            let field = |name: &str| format!("release.tiers[{index}].{name}");
            at_least(&field("rate"), tier.rate.into(), 1)?;
            at_least(&field("burst"), tier.burst.into(), 1)?;
            at_least(&field("max_in_flight"), tier.max_in_flight.into(), 1)?;
            if index > 0 && tier.from_queue <= self.tiers[index - 1].from_queue {
                return Err(ConfigError::new(
                    field("from_queue"),
                    format!(
                        "tiers must be in ascending order of from_queue ({} {} after {})",
                        tier.from_queue,
                        self.unit.name(),
                        self.tiers[index - 1].from_queue
                    ),
                ));
            }
        }
        at_least("release.busy_live_sessions", self.busy_live_sessions, 1)?;
        crate::units::check_optional_duration("release.live_lag", self.live_lag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_zero_rates_or_bursts_are_named() {
        ReleaseConfig::default().validate().unwrap();
        let mut config = ReleaseConfig::default();
        config.tiers[1].rate = 0;
        assert_eq!(
            config.validate().unwrap_err().field,
            "release.tiers[1].rate"
        );
        let config = ReleaseConfig::fixed(PaceUnit::Buffers, 10, 0, 1);
        assert_eq!(
            config.validate().unwrap_err().field,
            "release.tiers[0].burst"
        );
        let mut config = ReleaseConfig::default();
        config.tiers.swap(1, 2);
        assert_eq!(
            config.validate().unwrap_err().field,
            "release.tiers[2].from_queue"
        );
        let config = ReleaseConfig {
            tiers: vec![],
            ..ReleaseConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "release.tiers");
        let config = ReleaseConfig {
            live_lag: Some(Duration::ZERO),
            ..ReleaseConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "release.live_lag");
    }

    #[test]
    fn mebibytes_round_up_and_never_cost_nothing() {
        assert_eq!(PaceUnit::Mib.cost(3, 1), 1);
        assert_eq!(PaceUnit::Mib.cost(3, (2 << 20) + 1), 3);
        assert_eq!(PaceUnit::Buffers.cost(3, 1 << 30), 3);
    }
}
