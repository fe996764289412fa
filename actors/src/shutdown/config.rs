//! The `[shutdown]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::units;

/// How long a graceful shutdown may take.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// The deadline `shutdown()` uses when none is given (`"30s"`). Leases
    /// still held at three quarters of it are forced, so the releases they
    /// held back still fit; what is not released at the deadline is reported
    /// and destroyed by the GPU thread on its way out. Default 30 seconds,
    /// like Kubernetes' `terminationGracePeriodSeconds`.
    #[serde(with = "units::duration")]
    pub deadline: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            deadline: Duration::from_secs(30),
        }
    }
}

impl ShutdownConfig {
    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        units::check_duration("shutdown.deadline", self.deadline)
    }
}
