//! Settings of the default context policy, [`DecayingContext`](super::DecayingContext).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::units;

/// Settings of the default context policy. Every field has a default, so an
/// empty `[context]` table is valid; `validate` refuses values that cannot work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContextConfig {
    /// Whether the engine tracks context at all. When false, a
    /// `DecayingContext` still refuses bad turns but answers every good one
    /// `Fresh` and keeps no state, so turning it off never resets a
    /// conversation. Default true.
    pub enabled: bool,
    /// A turn whose embedding has a cosine similarity to the context below
    /// this is off-topic, and the context is stale. Within `[-1, 1]`; `-1`
    /// never triggers. Default 0.4: sentence embeddings of one topic usually
    /// score well above it, unrelated ones near 0.
    pub similarity_threshold: f32,
    /// Idle time after which the context counts half as much as a new turn
    /// (`"10m"`); it is what makes an old conversation fade. Must be longer
    /// than zero. Default ten minutes.
    #[serde(with = "units::duration")]
    pub half_life: Duration,
    /// A context whose decayed weight is below this is stale when the next
    /// turn arrives. Within `[0, 1)`; `0` never triggers. The idle time that
    /// triggers it is `half_life * log2(1 / min_weight)`. Default 0.05:
    /// about 4.3 half-lives, 43 minutes with the default half-life.
    pub min_weight: f32,
    /// The embedding length, if known in advance; `None` fixes it from the
    /// first embedding seen. Setting it catches a misconfigured embedder on
    /// the very first turn. Default `None`.
    pub dimension: Option<usize>,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            enabled: true,
            similarity_threshold: 0.4,
            half_life: Duration::from_secs(600),
            min_weight: 0.05,
            dimension: None,
        }
    }
}

impl ContextConfig {
    /// Refuses values that cannot work, naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let threshold = self.similarity_threshold;
        if !(threshold.is_finite() && (-1.0..=1.0).contains(&threshold)) {
            return Err(ConfigError::new(
                "context.similarity_threshold",
                format!("must be a finite number within [-1, 1], got {threshold}"),
            ));
        }
        units::check_duration("context.half_life", self.half_life)?;
        let min_weight = self.min_weight;
        if !(min_weight.is_finite() && (0.0..1.0).contains(&min_weight)) {
            return Err(ConfigError::new(
                "context.min_weight",
                format!("must be a finite number within [0, 1), got {min_weight}"),
            ));
        }
        if self.dimension == Some(0) {
            return Err(ConfigError::new(
                "context.dimension",
                "must be at least 1 when set, got 0",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: ContextConfig) -> String {
        config.validate().expect_err("should be refused").field
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ContextConfig::default().validate(), Ok(()));
    }

    #[test]
    fn threshold_outside_range_or_nan_is_refused() {
        for bad in [1.01, -1.01, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let config = ContextConfig {
                similarity_threshold: bad,
                ..Default::default()
            };
            assert_eq!(field_of(config), "context.similarity_threshold", "{bad}");
        }
        for good in [-1.0, 0.0, 1.0] {
            let config = ContextConfig {
                similarity_threshold: good,
                ..Default::default()
            };
            assert_eq!(config.validate(), Ok(()), "{good}");
        }
    }

    #[test]
    fn half_life_must_be_longer_than_zero() {
        for bad in [Duration::ZERO, units::MAX_DURATION * 2] {
            let config = ContextConfig {
                half_life: bad,
                ..Default::default()
            };
            let err = config.validate().expect_err("refused");
            assert_eq!(err.field, "context.half_life", "{bad:?}");
            assert!(err.to_string().contains("context.half_life"));
        }
    }

    #[test]
    fn min_weight_within_zero_to_one() {
        for bad in [1.0, 1.5, -0.1, f32::NAN] {
            let config = ContextConfig {
                min_weight: bad,
                ..Default::default()
            };
            assert_eq!(field_of(config), "context.min_weight", "{bad}");
        }
        let zero = ContextConfig {
            min_weight: 0.0,
            ..Default::default()
        };
        assert_eq!(zero.validate(), Ok(()));
    }

    #[test]
    fn dimension_zero_is_refused() {
        let config = ContextConfig {
            dimension: Some(0),
            ..Default::default()
        };
        assert_eq!(field_of(config), "context.dimension");
        let config = ContextConfig {
            dimension: Some(1),
            ..Default::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }
}
