//! The `[supervision]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, at_least};

/// Restart limits for the runtime's own tasks and deadlines for the steps of
/// the destroy path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// Restarts of one supervised task allowed within `within_secs`; one more
    /// escalates: logged at ERROR, the runtime is marked failed and admits no
    /// new sessions. Default 5, like OTP and kameo.
    pub max_restarts: u32,
    /// The window for `max_restarts`, in seconds. Default 5.
    pub within_secs: u64,
    /// How long a release handed to the GPU pool may go unanswered before it
    /// is declared stuck: the session is force-completed (receipt with an
    /// error), the incident logged and counted; a late answer still refunds
    /// the budget and never releases twice. Default 30 000.
    pub step_timeout_ms: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            max_restarts: 5,
            within_secs: 5,
            step_timeout_ms: 30_000,
        }
    }
}

impl SupervisionConfig {
    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least("supervision.within_secs", self.within_secs, 1)?;
        at_least("supervision.step_timeout_ms", self.step_timeout_ms, 1)
    }

    pub(crate) fn step_timeout(&self) -> Duration {
        Duration::from_millis(self.step_timeout_ms)
    }

    pub(crate) fn window(&self) -> Duration {
        Duration::from_secs(self.within_secs)
    }
}
