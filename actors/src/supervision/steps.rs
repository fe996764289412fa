//! The steps of the destroy path, timed for every release, so the slow step
//! is visible in receipts, `stats().steps` and the demo report.

use std::time::Duration;

/// One step of the destroy path after a session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReleaseStep {
    /// Pre-destroy hooks (bounded by `hooks.timeout`).
    Hooks,
    /// Waiting in the release queue: behind more urgent releases, for a
    /// release slot, for the pacer.
    Queued,
    /// Handed to the GPU pool, waiting for its thread to take it.
    PoolWait,
    /// Destroying the buffers and polling the device.
    DestroyAndPoll,
}

/// How long each step of one release took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReleaseSteps {
    /// Pre-destroy hooks.
    #[serde(rename = "hooks_us", serialize_with = "crate::serde_time::micros")]
    pub hooks: Duration,
    /// In the release queue.
    #[serde(rename = "queued_us", serialize_with = "crate::serde_time::micros")]
    pub queued: Duration,
    /// From handed to the pool until the GPU thread took it.
    #[serde(rename = "pool_wait_us", serialize_with = "crate::serde_time::micros")]
    pub pool_wait: Duration,
    /// Destroy and device poll on the GPU thread.
    #[serde(
        rename = "destroy_and_poll_us",
        serialize_with = "crate::serde_time::micros"
    )]
    pub destroy_and_poll: Duration,
    /// The step that neither completed nor failed within
    /// `supervision.step_timeout`, if one did not: the release was
    /// force-completed.
    pub stuck: Option<ReleaseStep>,
}

/// Count, sum and worst case of one step over all releases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StepTiming {
    /// Releases timed.
    pub count: u64,
    /// Sum of their durations, in microseconds (`total_us / count` is the mean).
    pub total_us: u64,
    /// The slowest, in microseconds.
    pub max_us: u64,
}

impl StepTiming {
    fn add(&mut self, took: Duration) {
        let us = took.as_micros() as u64;
        self.count += 1;
        self.total_us += us;
        self.max_us = self.max_us.max(us);
    }
}

/// Per-step timings of every completed release since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StepTimings {
    /// Pre-destroy hooks.
    pub hooks: StepTiming,
    /// In the release queue.
    pub queued: StepTiming,
    /// Waiting for the GPU thread.
    pub pool_wait: StepTiming,
    /// Destroy and device poll.
    pub destroy_and_poll: StepTiming,
    /// Releases force-completed because a step was stuck (each also an incident).
    pub stuck: u64,
}

impl StepTiming {
    fn merge(&mut self, other: &StepTiming) {
        self.count += other.count;
        self.total_us += other.total_us;
        self.max_us = self.max_us.max(other.max_us);
    }
}

impl StepTimings {
    /// Adds another registry shard's timings.
    pub(crate) fn merge(&mut self, other: &StepTimings) {
        self.hooks.merge(&other.hooks);
        self.queued.merge(&other.queued);
        self.pool_wait.merge(&other.pool_wait);
        self.destroy_and_poll.merge(&other.destroy_and_poll);
        self.stuck += other.stuck;
    }

    pub(crate) fn add(&mut self, steps: &ReleaseSteps) {
        self.hooks.add(steps.hooks);
        self.queued.add(steps.queued);
        if steps.stuck.is_some() {
            self.stuck += 1;
            return;
        }
        self.pool_wait.add(steps.pool_wait);
        self.destroy_and_poll.add(steps.destroy_and_poll);
    }
}
