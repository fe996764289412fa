//! Durations in configuration: a number of seconds (fractions allowed), or
//! `"never"` for an optional timeout that is switched off.

use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

use crate::config::ConfigError;

/// The longest timeout accepted: ten years. Longer is a typo, and would
/// overflow instant arithmetic on some platforms.
pub(crate) const MAX_SECS: f64 = 10.0 * 365.0 * 24.0 * 3600.0;

/// `secs` as a duration, or an error naming `field` if it is not a positive,
/// finite number of seconds up to ten years.
pub(crate) fn positive(field: &'static str, secs: f64) -> Result<Duration, ConfigError> {
    if !secs.is_finite() || secs <= 0.0 {
        return Err(ConfigError::new(
            field,
            format!("must be a positive number of seconds, got {secs}"),
        ));
    }
    if secs > MAX_SECS {
        return Err(ConfigError::new(
            field,
            format!("must be at most ten years ({MAX_SECS} s), got {secs}"),
        ));
    }
    let duration = Duration::from_secs_f64(secs);
    if duration < Duration::from_micros(1) {
        return Err(ConfigError::new(
            field,
            format!("must be at least one microsecond, got {secs} s"),
        ));
    }
    Ok(duration)
}

/// Like [`positive`], for an optional timeout (`None` = never).
pub(crate) fn optional(
    field: &'static str,
    secs: Option<f64>,
) -> Result<Option<Duration>, ConfigError> {
    secs.map(|secs| positive(field, secs)).transpose()
}

/// Serde for `Option<f64>` written as a number of seconds or `"never"`.
pub(crate) mod or_never {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(secs) => s.serialize_f64(*secs),
            None => s.serialize_str("never"),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        d.deserialize_any(SecsOrNever)
    }

    struct SecsOrNever;

    impl Visitor<'_> for SecsOrNever {
        type Value = Option<f64>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a number of seconds, or \"never\"")
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v as f64))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v as f64))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v == "never" {
                Ok(None)
            } else {
                Err(E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_negative_and_nan_are_refused_with_the_field() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-9, MAX_SECS * 2.0] {
            let err = positive("expiry.idle_timeout_secs", bad).unwrap_err();
            assert_eq!(err.field, "expiry.idle_timeout_secs");
        }
        assert_eq!(positive("x", 1.5).unwrap(), Duration::from_millis(1500));
    }
}
