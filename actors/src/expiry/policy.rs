//! When a session ends on its own: idle timeout and absolute TTL.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::units;

/// A session's expiry policy. `None` switches a limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiryPolicy {
    /// Ends the session (reason `idle_timeout`) this long after its last
    /// activity: a message, touch, allocation or lease operation.
    pub idle_timeout: Option<Duration>,
    /// Ends the session (reason `ttl_expired`) this long after it opened, however busy it is.
    pub ttl: Option<Duration>,
}

impl ExpiryPolicy {
    /// A policy that never expires the session.
    pub const NEVER: ExpiryPolicy = ExpiryPolicy {
        idle_timeout: None,
        ttl: None,
    };

    /// Refuses zero durations (a session that expires as it opens is a mistake, not a policy).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [("idle_timeout", self.idle_timeout), ("ttl", self.ttl)] {
            if value == Some(Duration::ZERO) {
                return Err(ConfigError::new(
                    field,
                    "must be longer than zero (use None to switch it off)",
                ));
            }
        }
        Ok(())
    }
}

/// The `[expiry]` section: defaults for every session, and the sweeper.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpiryConfig {
    /// Idle timeout (`"30m"`), or `"off"`. Default 30 minutes: a chat left
    /// alone that long is abandoned, and its KV cache is worth more to the
    /// next user.
    #[serde(with = "units::duration_or_off")]
    pub idle_timeout: Option<Duration>,
    /// Absolute time to live (`"24h"`), or `"off"`. Default a day: a backstop
    /// that bounds any session's life even if a client keeps it busy.
    #[serde(with = "units::duration_or_off")]
    pub ttl: Option<Duration>,
    /// How often the sweeper looks for what events missed (sessions stuck in
    /// closing, GPU memory whose session is gone). Default 30 seconds: it is a
    /// safety net, not the expiry mechanism, and finds nothing in a healthy run.
    #[serde(with = "units::duration")]
    pub sweep_interval: Duration,
}

impl Default for ExpiryConfig {
    fn default() -> Self {
        ExpiryConfig {
            idle_timeout: Some(Duration::from_secs(1_800)),
            ttl: Some(Duration::from_secs(86_400)),
            sweep_interval: Duration::from_secs(30),
        }
    }
}

impl ExpiryConfig {
    /// Refuses zero or absurdly long durations, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        units::check_optional_duration("expiry.idle_timeout", self.idle_timeout)?;
        units::check_optional_duration("expiry.ttl", self.ttl)?;
        units::check_duration("expiry.sweep_interval", self.sweep_interval)
    }

    /// The default policy for new sessions.
    pub fn policy(&self) -> ExpiryPolicy {
        ExpiryPolicy {
            idle_timeout: self.idle_timeout,
            ttl: self.ttl,
        }
    }
}
