//! The `[hooks]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::units;

/// How long pre-destroy hooks may take.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// How long one hook may run before its session's release goes ahead
    /// without it (`"5s"`). Default five seconds.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            timeout: Duration::from_secs(5),
        }
    }
}

impl HooksConfig {
    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        units::check_duration("hooks.timeout", self.timeout)
    }
}
