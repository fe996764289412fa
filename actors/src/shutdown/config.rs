//! The `[shutdown]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// How long a graceful shutdown may take.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// The deadline `shutdown()` uses when none is given, in seconds. Leases
    /// still held at three quarters of it are forced, so the releases they
    /// held back still fit; what is not released at the deadline is reported
    /// and destroyed by the GPU thread on its way out. Default 30, like
    /// Kubernetes' `terminationGracePeriodSeconds`.
    pub deadline_secs: f64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            deadline_secs: 30.0,
        }
    }
}

impl ShutdownConfig {
    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.deadline_secs.is_finite() && self.deadline_secs > 0.0) {
            return Err(ConfigError::new(
                "shutdown.deadline_secs",
                format!(
                    "must be a positive number of seconds, got {}",
                    self.deadline_secs
                ),
            ));
        }
        if Duration::try_from_secs_f64(self.deadline_secs).is_err() {
            return Err(ConfigError::new("shutdown.deadline_secs", "too large"));
        }
        Ok(())
    }

    /// The default deadline.
    pub fn deadline(&self) -> Duration {
        Duration::try_from_secs_f64(self.deadline_secs).unwrap_or(Duration::from_secs(30))
    }
}
