//! `[budget]`: how much GPU memory the device and each owner may hold, and
//! what an allocation past a budget does.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, at_least};
use crate::units::{self, format_size};

/// What an allocation does when a budget (device or owner) has no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WhenExhausted {
    /// Fail at once with `AllocError::OverBudget`.
    Fail,
    /// Wait (FIFO, at most `wait_timeout`) for memory to come back.
    Wait,
    /// Make room from idle sessions, least recently active first (offloading
    /// them to host memory when `offload` allows, ending them with reason
    /// `evicted` otherwise), and wait for it as `Wait` does.
    Evict,
}

/// GPU memory budgets. The per-session cap is `sessions.max_session_memory`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// GPU memory all sessions together may hold on the device (`"16 GiB"`),
    /// or `"off"`. Default `"off"`: the device's own out-of-memory is the limit.
    #[serde(with = "units::size_or_off")]
    pub device_memory: Option<u64>,
    /// GPU memory the sessions of one owner (tenant) may hold together, or
    /// `"off"` (default).
    #[serde(with = "units::size_or_off")]
    pub owner_memory: Option<u64>,
    /// What an allocation past a budget does. Default `"evict"`.
    pub when_exhausted: WhenExhausted,
    /// How long an allocation may wait for memory (`wait` and `evict`); then
    /// it fails with `AllocError::BudgetWaitTimedOut`. Default five seconds.
    #[serde(with = "units::duration")]
    pub wait_timeout: Duration,
    /// Only sessions idle at least this long (no message, no lease held) may
    /// be evicted or offloaded. Default one second.
    #[serde(with = "units::duration")]
    pub evict_idle: Duration,
    /// Evict softly: copy an idle session's buffers to host memory and free
    /// them on the GPU, keeping the session alive; its next message brings
    /// them back. Needs a pool that can offload (the wgpu pool can). Default true.
    pub offload: bool,
    /// Host memory offloaded sessions may hold together (`"8 GiB"`); past it,
    /// eviction ends sessions instead. Default 8 GiB.
    #[serde(with = "units::size")]
    pub offload_host_memory: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            device_memory: None,
            owner_memory: None,
            when_exhausted: WhenExhausted::Evict,
            wait_timeout: Duration::from_secs(5),
            evict_idle: Duration::from_secs(1),
            offload: true,
            offload_host_memory: 8 << 30,
        }
    }
}

impl BudgetConfig {
    /// Refuses values that cannot work; `max_session_memory` is the per-session cap.
    pub fn validate(&self, max_session_memory: u64) -> Result<(), ConfigError> {
        if let Some(device) = self.device_memory {
            at_least("budget.device_memory", device, 1)?;
            if max_session_memory > device {
                return Err(ConfigError::new(
                    "sessions.max_session_memory",
                    format!(
                        "the per-session cap ({}) is above the device budget \
                         (budget.device_memory = \"{}\"); no session could use it",
                        format_size(max_session_memory),
                        format_size(device)
                    ),
                ));
            }
            if let Some(owner) = self.owner_memory.filter(|owner| *owner > device) {
                return Err(ConfigError::new(
                    "budget.owner_memory",
                    format!(
                        "the owner budget ({}) is above the device budget ({})",
                        format_size(owner),
                        format_size(device)
                    ),
                ));
            }
        }
        if let Some(owner) = self.owner_memory {
            at_least("budget.owner_memory", owner, 1)?;
        }
        units::check_duration("budget.wait_timeout", self.wait_timeout)?;
        Ok(())
    }

    /// Refuses budgets that could not hold one buffer of the device
    /// (`min_buffer_bytes`, measured by the pool at start).
    pub fn validate_for_device(&self, min_buffer_bytes: u64) -> Result<(), ConfigError> {
        for (field, budget) in [
            ("budget.device_memory", self.device_memory),
            ("budget.owner_memory", self.owner_memory),
        ] {
            if let Some(budget) = budget.filter(|budget| *budget < min_buffer_bytes) {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{budget} bytes cannot hold a single buffer: the smallest buffer \
                         takes {min_buffer_bytes} bytes on this device"
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_cap_above_the_device_budget_is_refused() {
        let config = BudgetConfig {
            device_memory: Some(1 << 20),
            ..BudgetConfig::default()
        };
        let err = config.validate(2 << 20).unwrap_err();
        assert_eq!(err.field, "sessions.max_session_memory");
        config.validate(1 << 20).unwrap();
        let err = BudgetConfig {
            device_memory: Some(0),
            ..BudgetConfig::default()
        }
        .validate(0)
        .unwrap_err();
        assert_eq!(err.field, "budget.device_memory");
    }

    #[test]
    fn a_budget_below_one_buffer_is_refused_for_the_device() {
        let config = BudgetConfig {
            owner_memory: Some(100),
            ..BudgetConfig::default()
        };
        let err = config.validate_for_device(256).unwrap_err();
        assert_eq!(err.field, "budget.owner_memory");
        assert!(err.to_string().contains("256"), "{err}");
        config.validate_for_device(64).unwrap();
    }
}
