//! The restart-intensity limit, as OTP supervisors and kameo keep it: at
//! most `max` restarts within `window`; one more means the failure is not
//! transient, and restarting again would only hide it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct RestartIntensity {
    max: u32,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartIntensity {
    pub(crate) fn new(max: u32, window: Duration) -> Self {
        RestartIntensity {
            max,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a failure at `now`; whether a restart is still allowed.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        while let Some(oldest) = self.recent.front() {
            if now.saturating_duration_since(*oldest) >= self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        self.recent.len() <= self.max as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_max_restarts_per_window_then_refuses() {
        let start = Instant::now();
        let mut limit = RestartIntensity::new(2, Duration::from_secs(5));
        assert!(limit.allow(start));
        assert!(limit.allow(start + Duration::from_secs(1)));
        assert!(!limit.allow(start + Duration::from_secs(2)));
        // Old failures leave the window.
        let mut limit = RestartIntensity::new(2, Duration::from_secs(5));
        assert!(limit.allow(start));
        assert!(limit.allow(start + Duration::from_secs(1)));
        assert!(limit.allow(start + Duration::from_secs(6)));
    }
}
