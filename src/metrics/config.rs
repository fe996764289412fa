//! The `[metrics]` configuration section.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sessionbus_actors::ConfigError;
use sessionbus_actors::units;

/// Whether the runtime feeds the `metrics` facade, and how often it samples gauges.
/// Defaults: off, sampled every second (see `sessionbus.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Off by default, so that a runtime without a recorder pays nothing: the
    /// subscriber costs a reliable bus subscription and a thread (measured in
    /// BENCHMARKS.md). Turn it on where an exporter is installed.
    pub enabled: bool,
    /// Gauges are read from the registry and the pool this often; counters and
    /// histograms follow the bus event by event. Default one second.
    #[serde(with = "units::duration")]
    pub sample_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: false,
            sample_interval: Duration::from_secs(1),
        }
    }
}

impl MetricsConfig {
    /// Refuses a zero interval.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sample_interval < Duration::from_millis(1) {
            return Err(ConfigError::new(
                "metrics.sample_interval",
                format!(
                    "must be at least \"1ms\", got \"{}\"",
                    units::format_duration(self.sample_interval)
                ),
            ));
        }
        Ok(())
    }
}
