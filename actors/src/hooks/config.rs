//! The `[hooks]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, at_least};

/// How long pre-destroy hooks may take.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// How long one hook may run before its session's release goes ahead
    /// without it, in milliseconds. Default 5 000.
    pub timeout_ms: u64,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig { timeout_ms: 5_000 }
    }
}

impl HooksConfig {
    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least("hooks.timeout_ms", self.timeout_ms, 1)
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}
