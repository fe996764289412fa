//! The `[metrics]` configuration section.

use serde::{Deserialize, Serialize};
use sessionbus_actors::ConfigError;

/// Whether the runtime feeds the `metrics` facade, and how often it samples gauges.
///
/// ```toml
/// [metrics]
/// enabled = false           # true: a subscriber turns bus events into metrics (install a recorder)
/// sample_interval_ms = 1000 # gauges (sessions, GPU bytes, queue depth) are sampled this often
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Off by default, so that a runtime without a recorder pays nothing: the
    /// subscriber costs a reliable bus subscription and a thread (measured in
    /// BENCHMARKS.md). Turn it on where an exporter is installed.
    pub enabled: bool,
    /// Gauges are read from the registry and the pool this often; counters and
    /// histograms follow the bus event by event.
    pub sample_interval_ms: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: false,
            sample_interval_ms: 1000,
        }
    }
}

impl MetricsConfig {
    /// Refuses a zero interval.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sample_interval_ms == 0 {
            return Err(ConfigError::new(
                "metrics.sample_interval_ms",
                "must be at least 1 (milliseconds), got 0",
            ));
        }
        Ok(())
    }
}
