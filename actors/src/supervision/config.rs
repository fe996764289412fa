//! The `[supervision]` section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::units;

/// Restart limits for the runtime's own tasks and deadlines for the steps of
/// the destroy path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// Restarts of one supervised task allowed `within` its window; one more
    /// escalates: logged at ERROR, the runtime is marked failed and admits no
    /// new sessions. Default 5, like OTP and kameo.
    pub max_restarts: u32,
    /// The window for `max_restarts` (`"5s"`). Default five seconds.
    #[serde(with = "units::duration")]
    pub within: Duration,
    /// How long a release handed to the GPU pool may go unanswered before it
    /// is declared stuck: the session is force-completed (receipt with an
    /// error), the incident logged and counted; a late answer still refunds
    /// the budget and never releases twice. Default 30 seconds.
    #[serde(with = "units::duration")]
    pub step_timeout: Duration,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            max_restarts: 5,
            within: Duration::from_secs(5),
            step_timeout: Duration::from_secs(30),
        }
    }
}

impl SupervisionConfig {
    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        units::check_duration("supervision.within", self.within)?;
        units::check_duration("supervision.step_timeout", self.step_timeout)
    }
}
