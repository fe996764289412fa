//! The engine's configuration: sessions, release pacing, the bus.
//! Every field has a documented default; `validate` refuses nonsense with an
//! error that names the field.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::budget::BudgetConfig;
use crate::cleanup::ReleaseConfig;
use crate::context::ContextConfig;
use crate::expiry::ExpiryConfig;
use crate::hooks::HooksConfig;
use crate::lease::LeasesConfig;
use crate::shutdown::ShutdownConfig;
use crate::supervision::SupervisionConfig;
use crate::units;

/// A configuration value that cannot work, named by its path (`release.tiers[0].burst`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {field}: {reason}")]
pub struct ConfigError {
    /// The field's path, as written in TOML.
    pub field: String,
    /// What is wrong and what is accepted.
    pub reason: String,
}

impl ConfigError {
    /// An error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub(crate) fn at_least(field: &str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::new(
            field,
            format!("must be at least {min}, got {value}"),
        ));
    }
    Ok(())
}

/// Limits on sessions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Live sessions admitted at once; `open` past it is refused with `OpenError::AtCapacity`.
    /// Default 1 000 000: an idle session costs about a kilobyte.
    pub max_sessions: usize,
    /// GPU memory one session may hold (`"4 GiB"`); an allocation past it is
    /// refused. Default 4 GiB.
    #[serde(with = "units::size")]
    pub max_session_memory: u64,
    /// Messages that may wait in one session's mailbox before senders wait. Default 64.
    pub mailbox_capacity: usize,
    /// Ended sessions remembered, so late messages get "session gone" and a second
    /// close gets the same receipt. Default 100 000.
    pub tombstones: usize,
    /// How long an ended session is remembered (`"1h"`). Default one hour.
    #[serde(with = "units::duration")]
    pub tombstone_ttl: Duration,
    /// Registry shards: sessions are spread over this many, by id, each on
    /// an engine thread of its own (in a `Runtime`). `0`: one per core the
    /// process may use (at most 64). Default 0.
    pub shards: usize,
    /// Passivation: a session idle this long (no message, no lease, nothing
    /// in flight) gives up its actor and mailbox and keeps only its state;
    /// the next thing sent to it (a message, a close, an expiry, an
    /// eviction, a shutdown) starts it again, in order, on its shard's
    /// thread, and nothing else changes (expiry, leases, budgets, offloaded
    /// memory). `"off"` keeps every session's actor running. Default `"off"`.
    #[serde(with = "units::duration_or_off")]
    pub passivate_after: Option<Duration>,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            max_sessions: 1_000_000,
            max_session_memory: 4 << 30,
            mailbox_capacity: 64,
            tombstones: 100_000,
            tombstone_ttl: Duration::from_secs(3_600),
            shards: 0,
            passivate_after: None,
        }
    }
}

impl SessionsConfig {
    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least("sessions.max_sessions", self.max_sessions as u64, 1)?;
        at_least("sessions.max_session_memory", self.max_session_memory, 1)?;
        at_least("sessions.mailbox_capacity", self.mailbox_capacity as u64, 1)?;
        at_least("sessions.tombstones", self.tombstones as u64, 1)?;
        if self.shards > MAX_SHARDS {
            return Err(ConfigError::new(
                "sessions.shards",
                format!(
                    "{} shards is more than the {MAX_SHARDS} an engine runs; 0 means one per core",
                    self.shards
                ),
            ));
        }
        if let Some(after) = self.passivate_after {
            units::check_duration("sessions.passivate_after", after)?;
        }
        units::check_duration("sessions.tombstone_ttl", self.tombstone_ttl)
    }

    /// How long a session stays idle before it parks (`passivate_after`).
    pub fn passivation(&self) -> Option<Duration> {
        // Test builds: the suite runs again with passivation on, on any configuration.
        #[cfg(feature = "testing")]
        if let (None, Some(after)) = (
            self.passivate_after,
            std::env::var("SESSIONBUS_TEST_PASSIVATE")
                .ok()
                .and_then(|after| crate::units::parse_duration(&after).ok()),
        ) {
            return Some(after);
        }
        self.passivate_after
    }

    /// How many registry shards the engine runs: `shards`, or for 0 one
    /// per core the process may use (at most [`MAX_SHARDS`]).
    pub fn shard_count(&self) -> usize {
        // Test builds: the suite runs again with several shards on any machine.
        #[cfg(feature = "testing")]
        if let (0, Some(shards)) = (
            self.shards,
            std::env::var("SESSIONBUS_TEST_SHARDS")
                .ok()
                .and_then(|n| n.parse::<usize>().ok()),
        ) {
            return shards.clamp(1, MAX_SHARDS);
        }
        match self.shards {
            0 => std::thread::available_parallelism()
                .map_or(1, |cores| cores.get())
                .min(MAX_SHARDS),
            shards => shards,
        }
    }
}

/// The most registry shards one engine runs.
pub const MAX_SHARDS: usize = 64;

/// The lifecycle event bus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// Events that may wait for one channel subscriber before the bus applies its
    /// delivery policy (drop for best-effort subscribers, wait for reliable ones). Default 4 096.
    pub subscriber_capacity: usize,
    /// At shutdown, how long to wait for reliable subscribers that fell behind
    /// to take their queued events (`"5s"`). What is still queued then is
    /// reported as undelivered. Default five seconds.
    #[serde(with = "units::duration")]
    pub flush_timeout: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            subscriber_capacity: 4_096,
            flush_timeout: Duration::from_secs(5),
        }
    }
}

impl BusConfig {
    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least(
            "bus.subscriber_capacity",
            self.subscriber_capacity as u64,
            1,
        )?;
        units::check_duration("bus.flush_timeout", self.flush_timeout)
    }
}

/// Everything the engine needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Session limits.
    pub sessions: SessionsConfig,
    /// Idle timeout, TTL and the sweeper.
    pub expiry: ExpiryConfig,
    /// Lease draining and heartbeats.
    pub leases: LeasesConfig,
    /// Context expiry (the default policy).
    pub context: ContextConfig,
    /// Release pacing: the queue, its load tiers.
    pub release: ReleaseConfig,
    /// GPU memory budgets (device, owner) and what happens when one is exhausted.
    pub budget: BudgetConfig,
    /// The event bus.
    pub bus: BusConfig,
    /// Graceful shutdown: the default deadline.
    pub shutdown: ShutdownConfig,
    /// Pre-destroy hooks: how long each may run.
    pub hooks: HooksConfig,
    /// Restart limits and destroy-path step deadlines.
    pub supervision: SupervisionConfig,
    /// KV memory as paged blocks in slabs, with shared prefixes; `None`
    /// (the default): sessions hold whole buffers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv: Option<crate::kv::KvPoolConfig>,
}

impl EngineConfig {
    /// Refuses values that cannot work, naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.sessions.validate()?;
        self.expiry.validate()?;
        self.leases.validate()?;
        self.context.validate()?;
        self.release.validate()?;
        self.budget.validate(self.sessions.max_session_memory)?;
        self.bus.validate()?;
        self.shutdown.validate()?;
        self.hooks.validate()?;
        self.supervision.validate()
    }
}
