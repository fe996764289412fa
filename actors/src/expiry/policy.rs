//! When a session ends on its own: idle timeout and absolute TTL.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::seconds;
use crate::config::ConfigError;

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
    /// Idle timeout in seconds, or `"never"`. Default 1 800 (30 minutes): a
    /// chat left alone that long is abandoned, and its KV cache is worth more
    /// to the next user.
    #[serde(with = "seconds::or_never")]
    pub idle_timeout_secs: Option<f64>,
    /// Absolute time to live in seconds, or `"never"`. Default 86 400 (a day):
    /// a backstop that bounds any session's life even if a client keeps it busy.
    #[serde(with = "seconds::or_never")]
    pub ttl_secs: Option<f64>,
    /// How often the sweeper looks for what events missed (sessions stuck in
    /// closing, GPU memory whose session is gone), in seconds. Default 30: it
    /// is a safety net, not the expiry mechanism, and finds nothing in a
    /// healthy run.
    pub sweep_interval_secs: f64,
}

impl Default for ExpiryConfig {
    fn default() -> Self {
        ExpiryConfig {
            idle_timeout_secs: Some(1_800.0),
            ttl_secs: Some(86_400.0),
            sweep_interval_secs: 30.0,
        }
    }
}

impl ExpiryConfig {
    /// Refuses zero, negative, NaN or absurdly long durations, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.policy()?;
        seconds::positive("expiry.sweep_interval_secs", self.sweep_interval_secs)?;
        Ok(())
    }

    /// The default policy for new sessions.
    pub fn policy(&self) -> Result<ExpiryPolicy, ConfigError> {
        Ok(ExpiryPolicy {
            idle_timeout: seconds::optional("expiry.idle_timeout_secs", self.idle_timeout_secs)?,
            ttl: seconds::optional("expiry.ttl_secs", self.ttl_secs)?,
        })
    }

    pub(crate) fn sweep_interval(&self) -> Duration {
        seconds::positive("expiry.sweep_interval_secs", self.sweep_interval_secs)
            .unwrap_or(Duration::from_secs(30))
    }
}
