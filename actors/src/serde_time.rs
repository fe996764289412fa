//! How time is written when events and receipts are serialised: wall-clock
//! moments as RFC 3339 text (UTC, microseconds), durations as whole
//! microseconds in fields whose names end in `_us`. Monotonic instants are
//! meaningful only inside this process and are never serialised.

use std::time::{Duration, SystemTime};

use serde::Serializer;

/// A wall-clock moment as RFC 3339 (`2026-12-05T15:24:18.123456Z`).
pub(crate) fn wall<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*at))
}

/// A duration as whole microseconds (saturating at `u64::MAX`).
pub(crate) fn micros<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(as_micros(*d))
}

pub(crate) fn as_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
