//! Live traffic first: how far release backs off while the engine thread or
//! the GPU thread runs late. Pure (no clock, no actors): the dispatcher feeds
//! it each lag it measured (the engine thread's queueing delay from
//! `lag_probe.rs`, or the longest a release waited for the GPU thread,
//! whichever is more) and follows its answers.
//!
//! The rule is multiplicative-decrease, step-wise recovery on the releases in
//! flight, much as TCP does with its window: a late thread raises the level
//! by one (each level halves the tier's `max_in_flight`) and the dispatcher
//! gives way (pauses, then probes again, instead of handing out a release);
//! threads back within half the limit lower the level by one per probe, so a
//! storm with nothing else running climbs back to full speed within a few
//! releases.
//!
//! One probe is noisy (a busy thread alternates long rounds and short ones),
//! so the controller follows an envelope of the lags: the latest lag, or
//! half the previous envelope if that is more. A single on-time probe after
//! a late one does not let a release through; two or three in a row do.

use std::time::Duration;

/// Levels past this change nothing: `max_in_flight` of at most 65 536 is
/// down to one release in flight.
pub(crate) const MAX_LEVEL: u32 = 16;

/// What release does after a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The engine thread is on time: hand out the next release.
    Go,
    /// The engine thread runs late: let live traffic through first.
    GiveWay,
}

/// What the controller remembers between probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    /// Halvings of the tier's `max_in_flight` in force; 0 is full speed.
    pub(crate) level: u32,
    /// The envelope of recent lags.
    recent: Duration,
}

impl State {
    #[cfg(test)]
    fn at(level: u32) -> Self {
        State {
            level,
            recent: Duration::ZERO,
        }
    }
}

/// The controller: `limit` is `release.live_lag` (`None`: never back off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    limit: Option<Duration>,
}

impl Backoff {
    pub(crate) fn new(limit: Option<Duration>) -> Self {
        Backoff { limit }
    }

    /// Whether release watches live traffic at all (`live_lag` not `"off"`).
    pub(crate) fn is_on(&self) -> bool {
        self.limit.is_some()
    }

    /// The state after a probe found the engine thread `lag` late, and
    /// whether release goes on now.
    pub(crate) fn observe(&self, state: State, lag: Duration) -> (State, Verdict) {
        let Some(limit) = self.limit else {
            return (State::default(), Verdict::Go);
        };
        let recent = lag.max(state.recent / 2);
        let (level, verdict) = if recent > limit {
            ((state.level + 1).min(MAX_LEVEL), Verdict::GiveWay)
        } else if recent <= limit / 2 {
            (state.level.saturating_sub(1), Verdict::Go)
        } else {
            // Between half the limit and the limit: hold the level.
            (state.level, Verdict::Go)
        };
        (State { level, recent }, verdict)
    }

    /// How long release steps aside after a late probe: the limit itself
    /// (tokio's timer rounds it up to its 1 ms tick).
    pub(crate) fn pause(&self) -> Duration {
        self.limit.unwrap_or_default()
    }

    /// The releases allowed in flight at `level` when the tier allows `max`:
    /// halved per level, never below one.
    pub(crate) fn in_flight(level: u32, max: u32) -> u32 {
        max.checked_shr(level).unwrap_or(0).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_micros(500);
    const LATE: Duration = Duration::from_millis(2);
    const ON_TIME: Duration = Duration::from_micros(10);

    fn level_and_verdict((state, verdict): (State, Verdict)) -> (u32, Verdict) {
        (state.level, verdict)
    }

    #[test]
    fn a_late_probe_raises_the_level_and_gives_way() {
        let backoff = Backoff::new(Some(LIMIT));
        assert_eq!(
            level_and_verdict(backoff.observe(State::at(0), LATE)),
            (1, Verdict::GiveWay)
        );
        assert_eq!(
            level_and_verdict(backoff.observe(State::at(MAX_LEVEL), LATE)),
            (MAX_LEVEL, Verdict::GiveWay),
            "the level stops rising"
        );
    }

    #[test]
    fn one_on_time_probe_between_late_ones_lets_nothing_through() {
        let backoff = Backoff::new(Some(LIMIT));
        let mut state = State::default();
        for lag in [LATE, ON_TIME, LATE, ON_TIME, LATE, ON_TIME] {
            let (next, verdict) = backoff.observe(state, lag);
            assert_eq!(verdict, Verdict::GiveWay, "after {lag:?}");
            state = next;
        }
        assert_eq!(state.level, 6);
    }

    #[test]
    fn on_time_probes_return_to_full_speed_one_level_each() {
        let backoff = Backoff::new(Some(LIMIT));
        let (mut state, _) = backoff.observe(State::at(3), LATE);
        assert_eq!(state.level, 4);
        let mut verdicts = Vec::new();
        while state.level > 0 {
            let (next, verdict) = backoff.observe(state, ON_TIME);
            verdicts.push(verdict);
            state = next;
        }
        // 2 ms decays to 1 ms (still late), 500 µs (held), then 250 µs and on:
        // down one level per probe.
        assert_eq!(verdicts[0], Verdict::GiveWay);
        assert!(
            verdicts[1..].iter().all(|v| *v == Verdict::Go),
            "{verdicts:?}"
        );
        assert_eq!(backoff.observe(state, Duration::ZERO).0.level, 0);
    }

    #[test]
    fn between_half_the_limit_and_the_limit_the_level_holds() {
        let backoff = Backoff::new(Some(LIMIT));
        assert_eq!(
            level_and_verdict(backoff.observe(State::at(3), LIMIT)),
            (3, Verdict::Go)
        );
        assert_eq!(
            level_and_verdict(backoff.observe(State::at(3), LIMIT / 2 + Duration::from_micros(1))),
            (3, Verdict::Go)
        );
    }

    #[test]
    fn switched_off_it_never_backs_off() {
        let backoff = Backoff::new(None);
        assert!(!backoff.is_on());
        assert_eq!(
            level_and_verdict(backoff.observe(State::at(5), Duration::from_secs(1))),
            (0, Verdict::Go)
        );
    }

    #[test]
    fn each_level_halves_the_releases_in_flight_down_to_one() {
        assert_eq!(Backoff::in_flight(0, 256), 256);
        assert_eq!(Backoff::in_flight(1, 256), 128);
        assert_eq!(Backoff::in_flight(3, 256), 32);
        assert_eq!(Backoff::in_flight(8, 256), 1);
        assert_eq!(Backoff::in_flight(MAX_LEVEL, 65_536), 1);
        assert_eq!(Backoff::in_flight(40, 64), 1);
    }
}
