//! The `[leases]` section: draining in-flight work and remote heartbeats.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::units;

/// How leases drain and how remote ones stay alive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeasesConfig {
    /// How long an ending session waits for its leases (in-flight token
    /// streams) before it forces the end (`"30s"`). Default 30 seconds:
    /// longer than a typical generation, short enough that a stuck stream
    /// cannot pin GPU memory for long.
    #[serde(with = "units::duration")]
    pub drain_timeout: Duration,
    /// How often a remote lease holder must heartbeat (`"5s"`). Default 5 seconds.
    #[serde(with = "units::duration")]
    pub heartbeat_interval: Duration,
    /// Heartbeat intervals a remote lease may miss before it is revoked.
    /// Default 3: one lost packet or GC pause is not a dead holder.
    pub missed_heartbeats: u32,
    /// Whether revoking a lease of an established session also ends the
    /// session (reason `lease_lost`). Default true: the work the lease guarded
    /// is lost, and so is the state it was writing.
    pub end_session_on_lease_lost: bool,
}

impl Default for LeasesConfig {
    fn default() -> Self {
        LeasesConfig {
            drain_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            missed_heartbeats: 3,
            end_session_on_lease_lost: true,
        }
    }
}

impl LeasesConfig {
    /// Refuses values that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        units::check_duration("leases.drain_timeout", self.drain_timeout)?;
        units::check_duration("leases.heartbeat_interval", self.heartbeat_interval)?;
        if self.missed_heartbeats == 0 {
            return Err(ConfigError::new(
                "leases.missed_heartbeats",
                "must be at least 1 (0 would revoke every remote lease at once)",
            ));
        }
        Ok(())
    }

    /// Silence after which a remote lease is revoked.
    pub(crate) fn revoke_after(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats
    }
}
