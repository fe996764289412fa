//! Which deadline a session is waiting on, and when it falls.

use std::time::Instant;

use super::ExpiryPolicy;

/// The kind of deadline that ended a session on its own.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeadlineKind {
    /// Last activity + idle timeout.
    Idle,
    /// Opened + TTL.
    Ttl,
}

/// A deadline that fired, carried on the end event so lateness is measurable
/// per session: `fired_at - at` is the timer's lateness, and the release
/// receipt's `released_at - at` is deadline → memory back.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub struct Deadline {
    /// Idle or TTL.
    pub kind: DeadlineKind,
    /// When the session was due to end.
    pub at: Instant,
    /// When the engine noticed and ended it.
    pub fired_at: Instant,
}

impl Deadline {
    /// How late the end was (zero if it fired early, which it never does).
    pub fn lateness(&self) -> std::time::Duration {
        self.fired_at.saturating_duration_since(self.at)
    }
}

/// The earlier of the idle and TTL deadlines, in microseconds on the
/// engine's epoch, or `None` if the policy never expires.
pub(crate) fn next_due(
    policy: &ExpiryPolicy,
    opened_us: u64,
    last_active_us: u64,
) -> Option<(DeadlineKind, u64)> {
    let idle = policy.idle_timeout.map(|t| {
        (
            DeadlineKind::Idle,
            last_active_us.saturating_add(crate::clock::micros(t)),
        )
    });
    let ttl = policy.ttl.map(|t| {
        (
            DeadlineKind::Ttl,
            opened_us.saturating_add(crate::clock::micros(t)),
        )
    });
    let due = match (idle, ttl) {
        // A tie is a TTL end: the stricter limit names it.
        (Some(i), Some(t)) => Some(if t.1 <= i.1 { t } else { i }),
        (one, None) | (None, one) => one,
    };
    // A deadline past the clock's end is filed at its last microsecond but
    // one: the registry marks a session not filed with `u64::MAX`.
    due.map(|(kind, at)| (kind, at.min(LATEST_DUE_US)))
}

/// The latest due time `next_due` gives (584 000 years after the engine's
/// epoch): `u64::MAX` is never a due time.
pub(crate) const LATEST_DUE_US: u64 = u64::MAX - 1;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_earlier_deadline_wins() {
        let policy = ExpiryPolicy {
            idle_timeout: Some(Duration::from_millis(10)),
            ttl: Some(Duration::from_millis(100)),
        };
        assert_eq!(next_due(&policy, 0, 0), Some((DeadlineKind::Idle, 10_000)));
        assert_eq!(
            next_due(&policy, 0, 95_000),
            Some((DeadlineKind::Ttl, 100_000))
        );
        assert_eq!(next_due(&ExpiryPolicy::NEVER, 0, 0), None);
    }
}
