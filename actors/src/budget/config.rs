//! `[budget]`: how much GPU memory the device and each owner may hold, and
//! what an allocation past a budget does.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{ConfigError, at_least};

/// What an allocation does when a budget (device or owner) has no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenExhausted {
    /// Fail at once with `AllocError::OverBudget`.
    Fail,
    /// Wait (FIFO, at most `wait_timeout_ms`) for memory to come back.
    Wait,
    /// Make room from idle sessions, least recently active first (offloading
    /// them to host memory when `offload` allows, ending them with reason
    /// `evicted` otherwise), and wait for it as `Wait` does.
    Evict,
}

/// GPU memory budgets. The per-session cap is `sessions.max_session_bytes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Bytes all sessions together may hold on the device, or `"none"`.
    /// Default `"none"`: the device's own out-of-memory is the limit.
    #[serde(with = "bytes_or_none")]
    pub device_bytes: Option<u64>,
    /// Bytes the sessions of one owner (tenant) may hold together, or `"none"` (default).
    #[serde(with = "bytes_or_none")]
    pub owner_bytes: Option<u64>,
    /// What an allocation past a budget does. Default `"evict"`.
    pub when_exhausted: WhenExhausted,
    /// How long an allocation may wait for memory (`wait` and `evict`), in
    /// milliseconds; then it fails with `AllocError::BudgetWaitTimedOut`. Default 5 000.
    pub wait_timeout_ms: u64,
    /// Only sessions idle at least this long (no message, no lease held) may
    /// be evicted or offloaded, in milliseconds. Default 1 000.
    pub evict_idle_ms: u64,
    /// Evict softly: copy an idle session's buffers to host memory and free
    /// them on the GPU, keeping the session alive; its next message brings
    /// them back. Needs a pool that can offload (the wgpu pool can). Default true.
    pub offload: bool,
    /// Host memory offloaded sessions may hold together, in bytes; past it,
    /// eviction ends sessions instead. Default 8 GiB.
    pub offload_host_bytes: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            device_bytes: None,
            owner_bytes: None,
            when_exhausted: WhenExhausted::Evict,
            wait_timeout_ms: 5_000,
            evict_idle_ms: 1_000,
            offload: true,
            offload_host_bytes: 8 << 30,
        }
    }
}

impl BudgetConfig {
    /// Refuses values that cannot work; `max_session_bytes` is the per-session cap.
    pub fn validate(&self, max_session_bytes: u64) -> Result<(), ConfigError> {
        if let Some(device) = self.device_bytes {
            at_least("budget.device_bytes", device, 1)?;
            if max_session_bytes > device {
                return Err(ConfigError::new(
                    "sessions.max_session_bytes",
                    format!(
                        "the per-session cap ({max_session_bytes} bytes) is above the \
                         device budget (budget.device_bytes = {device}); no session could use it"
                    ),
                ));
            }
            if let Some(owner) = self.owner_bytes.filter(|owner| *owner > device) {
                return Err(ConfigError::new(
                    "budget.owner_bytes",
                    format!("the owner budget ({owner}) is above the device budget ({device})"),
                ));
            }
        }
        if let Some(owner) = self.owner_bytes {
            at_least("budget.owner_bytes", owner, 1)?;
        }
        at_least("budget.wait_timeout_ms", self.wait_timeout_ms, 1)?;
        Ok(())
    }

    /// Refuses budgets that could not hold one buffer of the device
    /// (`min_buffer_bytes`, measured by the pool at start).
    pub fn validate_for_device(&self, min_buffer_bytes: u64) -> Result<(), ConfigError> {
        for (field, budget) in [
            ("budget.device_bytes", self.device_bytes),
            ("budget.owner_bytes", self.owner_bytes),
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

/// Serde for `Option<u64>` written as a number of bytes or `"none"`.
mod bytes_or_none {
    use super::*;

    pub(super) fn serialize<S: Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.serialize_u64(*bytes),
            None => s.serialize_str("none"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(BytesOrNone)
    }

    struct BytesOrNone;

    impl Visitor<'_> for BytesOrNone {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a number of bytes, or \"none\"")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v == "none" {
                Ok(None)
            } else {
                Err(E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_cap_above_the_device_budget_is_refused() {
        let config = BudgetConfig {
            device_bytes: Some(1 << 20),
            ..BudgetConfig::default()
        };
        let err = config.validate(2 << 20).unwrap_err();
        assert_eq!(err.field, "sessions.max_session_bytes");
        config.validate(1 << 20).unwrap();
        let err = BudgetConfig {
            device_bytes: Some(0),
            ..BudgetConfig::default()
        }
        .validate(0)
        .unwrap_err();
        assert_eq!(err.field, "budget.device_bytes");
    }

    #[test]
    fn a_budget_below_one_buffer_is_refused_for_the_device() {
        let config = BudgetConfig {
            owner_bytes: Some(100),
            ..BudgetConfig::default()
        };
        let err = config.validate_for_device(256).unwrap_err();
        assert_eq!(err.field, "budget.owner_bytes");
        assert!(err.to_string().contains("256"), "{err}");
        config.validate_for_device(64).unwrap();
    }
}
