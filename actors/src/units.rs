//! Durations and sizes in configuration files, written the way people say
//! them: `"30s"`, `"1500ms"`, `"30m"`, `"24h"`; `"64 KiB"`, `"4 GiB"`; and
//! `"off"` for a limit that is switched off.
//!
//! One rule for every section: a key names what it measures, never the unit
//! it is written in (`idle_timeout`, not `idle_timeout_secs`; `device_memory`,
//! not `device_bytes`), and the value carries its unit. Bare numbers are
//! refused for durations and sizes, so `1800` is never read as seconds by one
//! key and milliseconds by the next. Counts (sessions, rates, bursts) stay
//! plain integers.
//!
//! Durations are parsed by [`humantime`] (`"1h 30m"` works too); sizes by
//! [`parse_size`]: an integer or decimal number, an optional space, and one of
//! `B`, `KiB`, `MiB`, `GiB`, `TiB` (powers of 1 024) or `KB`, `MB`, `GB`, `TB`
//! (powers of 1 000), any case. Both are written back exactly, in the
//! largest unit that divides the value (`"24h"`, `"4 GiB"`).
//!
//! The serde modules here (`duration`, `duration_or_off`, `size`,
//! `size_or_off`) are public so that an application embedding these sections
//! in its own configuration gets the same syntax.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

use crate::config::ConfigError;

/// The word that switches an optional limit off, in every section.
pub const OFF: &str = "off";

/// The longest duration accepted: ten years. Longer is a typo, and would
/// overflow instant arithmetic on some platforms.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses a human duration (`"30s"`, `"1500ms"`, `"30m"`, `"24h"`, `"1h 30m"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{text:?} is not a duration ({e}): use e.g. \"30s\", \"1500ms\", \"5m\" or \"24h\"")
    })
}

/// Writes a duration exactly, in the largest unit that divides it: `"30m"`,
/// `"1500ms"`, `"1d"`; `"0s"` for zero.
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    const UNITS: [(u128, &str); 7] = [
        (86_400_000_000_000, "d"),
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let (size, unit) = UNITS
        .into_iter()
        .find(|(size, _)| nanos.is_multiple_of(*size))
        .unwrap_or((1, "ns"));
    format!("{}{unit}", nanos / size)
}

const SIZE_UNITS: [(&str, u64); 9] = [
    ("b", 1),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
];

/// Parses a human size into bytes: `"64 KiB"`, `"4 GiB"`, `"1.5 GiB"`,
/// `"500 MB"`, `"4096 B"`. A fraction must come out as whole bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let hint = "use e.g. \"64 KiB\", \"4 GiB\" or \"4096 B\"";
    let bad = |why: &str| format!("{text:?} is not a size ({why}): {hint}");
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    if number.is_empty() {
        return Err(bad("no number"));
    }
    if unit.is_empty() {
        return Err(bad("no unit"));
    }
    let Some((_, scale)) = SIZE_UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(bad(&format!(
            "unknown unit {unit:?}; units: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB"
        )));
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') {
        return Err(bad("not a number"));
    }
    let whole: u64 = whole.parse().map_err(|_| bad("too large"))?;
    let mut bytes = whole.checked_mul(*scale).ok_or_else(|| bad("too large"))?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).map_err(|_| bad("too many digits"))?;
        let denominator = 10u128
            .checked_pow(digits)
            .ok_or_else(|| bad("too many digits"))?;
        let numerator: u128 = fraction.parse().map_err(|_| bad("not a number"))?;
        let scaled = numerator * u128::from(*scale);
        if !scaled.is_multiple_of(denominator) {
            return Err(bad("not a whole number of bytes"));
        }
        let extra = u64::try_from(scaled / denominator).map_err(|_| bad("too large"))?;
        bytes = bytes.checked_add(extra).ok_or_else(|| bad("too large"))?;
    }
    Ok(bytes)
}

/// Writes a size exactly, in the largest binary unit that divides it:
/// `"4 GiB"`, `"64 KiB"`, `"1000 B"`.
pub fn format_size(bytes: u64) -> String {
    let unit = [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ]
    .into_iter()
    .find(|(_, scale)| bytes != 0 && bytes.is_multiple_of(*scale));
    match unit {
        Some((name, scale)) => format!("{} {name}", bytes / scale),
        None => format!("{bytes} B"),
    }
}

/// Refuses a zero duration or one past ten years, naming `field`.
pub(crate) fn check_duration(field: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(
            field,
            "must be longer than zero, e.g. \"30s\"",
        ));
    }
    if value > MAX_DURATION {
        return Err(ConfigError::new(
            field,
            format!("must be at most ten years, got {}", format_duration(value)),
        ));
    }
    Ok(())
}

/// Like [`check_duration`] for a limit that can be switched off: zero is
/// refused with the hint to write `"off"`.
pub(crate) fn check_optional_duration(
    field: &str,
    value: Option<Duration>,
) -> Result<(), ConfigError> {
    match value {
        Some(Duration::ZERO) => Err(ConfigError::new(
            field,
            "must be longer than zero; write \"off\" to switch it off",
        )),
        Some(value) => check_duration(field, value),
        None => Ok(()),
    }
}

/// What a value is; the `Kind` a visitor accepts.
#[derive(Clone, Copy)]
enum Kind {
    Duration,
    Size,
}

impl Kind {
    fn parse(self, text: &str) -> Result<u128, String> {
        match self {
            Kind::Duration => parse_duration(text).map(|d| d.as_nanos()),
            Kind::Size => parse_size(text).map(u128::from),
        }
    }

    fn example(self) -> &'static str {
        match self {
            Kind::Duration => "a duration with its unit, e.g. \"30s\", \"1500ms\" or \"5m\"",
            Kind::Size => "a size with its unit, e.g. \"64 KiB\" or \"4 GiB\"",
        }
    }
}

/// Accepts a string of `kind`, or `"off"` when `off_allowed`; `None` is off.
struct HumanVisitor {
    kind: Kind,
    off_allowed: bool,
}

impl HumanVisitor {
    fn bare_number<E: de::Error>(&self, shown: String) -> E {
        let off = if self.off_allowed {
            " (or \"off\")"
        } else {
            ""
        };
        E::custom(format!(
            "{shown} is a bare number: write {}{off}",
            self.kind.example()
        ))
    }
}

impl Visitor<'_> for HumanVisitor {
    type Value = Option<u128>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.example())?;
        if self.off_allowed {
            f.write_str(", or \"off\"")?;
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if v.trim() == OFF {
            return match self.off_allowed {
                true => Ok(None),
                false => Err(E::custom(format!(
                    "cannot be \"off\": write {}",
                    self.kind.example()
                ))),
            };
        }
        match self.kind.parse(v) {
            Ok(value) => Ok(Some(value)),
            Err(why) if self.off_allowed => Err(E::custom(format!("{why}, or \"off\""))),
            Err(why) => Err(E::custom(why)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Err(self.bare_number(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Err(self.bare_number(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Err(self.bare_number(v.to_string()))
    }
}

fn deserialize_human<'de, D: Deserializer<'de>>(
    d: D,
    kind: Kind,
    off_allowed: bool,
) -> Result<Option<u128>, D::Error> {
    d.deserialize_any(HumanVisitor { kind, off_allowed })
}

fn nanos_to_duration<E: de::Error>(nanos: u128) -> Result<Duration, E> {
    let secs = u64::try_from(nanos / 1_000_000_000)
        .map_err(|_| E::custom("duration too long (at most ten years)"))?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

fn bytes<E: de::Error>(value: u128) -> Result<u64, E> {
    u64::try_from(value).map_err(|_| E::custom("size too large"))
}

/// Serde for a [`Duration`] written as `"30s"`.
pub mod duration {
    use super::*;

    /// Writes `"30s"`.
    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*value))
    }

    /// Reads `"30s"`; refuses bare numbers and `"off"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match deserialize_human(d, Kind::Duration, false)? {
            Some(nanos) => nanos_to_duration(nanos),
            None => Err(de::Error::custom("a duration is required")),
        }
    }
}

/// Serde for an `Option<Duration>` written as `"30s"` or `"off"` (`None`).
pub mod duration_or_off {
    use super::*;

    /// Writes `"30s"`, or `"off"` for `None`.
    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => s.serialize_str(&format_duration(*value)),
            None => s.serialize_str(OFF),
        }
    }

    /// Reads `"30s"` or `"off"`; refuses bare numbers.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        deserialize_human(d, Kind::Duration, true)?
            .map(nanos_to_duration)
            .transpose()
    }
}

/// Serde for a byte count written as `"4 GiB"`.
pub mod size {
    use super::*;

    /// Writes `"4 GiB"`.
    pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(*value))
    }

    /// Reads `"4 GiB"`; refuses bare numbers and `"off"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match deserialize_human(d, Kind::Size, false)? {
            Some(value) => bytes(value),
            None => Err(de::Error::custom("a size is required")),
        }
    }
}

/// Serde for an `Option<u64>` byte count written as `"4 GiB"` or `"off"` (`None`).
pub mod size_or_off {
    use super::*;

    /// Writes `"4 GiB"`, or `"off"` for `None`.
    pub fn serialize<S: Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => s.serialize_str(&format_size(*value)),
            None => s.serialize_str(OFF),
        }
    }

    /// Reads `"4 GiB"` or `"off"`; refuses bare numbers.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        deserialize_human(d, Kind::Size, true)?
            .map(bytes)
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_write_back_exactly() {
        for (text, value) in [
            ("30s", Duration::from_secs(30)),
            ("1500ms", Duration::from_millis(1500)),
            ("30m", Duration::from_secs(1800)),
            ("24h", Duration::from_secs(86_400)),
            ("1h 30m", Duration::from_secs(5400)),
            ("250us", Duration::from_micros(250)),
        ] {
            assert_eq!(parse_duration(text), Ok(value), "{text}");
            assert_eq!(parse_duration(&format_duration(value)), Ok(value));
        }
        assert_eq!(format_duration(Duration::from_secs(1800)), "30m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        let err = parse_duration("30x").unwrap_err();
        assert!(err.contains("\"30x\" is not a duration"), "{err}");
    }

    #[test]
    fn sizes_read_and_write_back_exactly() {
        for (text, value) in [
            ("64 KiB", 64 << 10),
            ("4 GiB", 4 << 30),
            ("4GiB", 4 << 30),
            ("1.5 gib", 3 << 29),
            ("500 MB", 500_000_000),
            ("4096 B", 4096),
            ("0 B", 0),
        ] {
            assert_eq!(parse_size(text), Ok(value), "{text}");
            assert_eq!(parse_size(&format_size(value)), Ok(value));
        }
        assert_eq!(format_size(8 << 30), "8 GiB");
        assert_eq!(format_size(1000), "1000 B");
        for bad in [
            "4096",
            "GiB",
            "4 GB B",
            "1.2.3 KiB",
            "0.1 B",
            "-1 KiB",
            "99999999999 TiB",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(err.contains("is not a size"), "{bad}: {err}");
        }
    }

    #[test]
    fn zero_and_ten_years_are_refused_with_the_field() {
        let err = check_duration("bus.flush_timeout", Duration::ZERO).unwrap_err();
        assert_eq!(err.field, "bus.flush_timeout");
        let err = check_optional_duration("expiry.ttl", Some(Duration::ZERO)).unwrap_err();
        assert!(err.reason.contains("\"off\""), "{err}");
        assert!(check_duration("x", MAX_DURATION * 2).is_err());
        check_optional_duration("expiry.ttl", None).unwrap();
    }
}
