//! Turns lifecycle events into counters and histograms, and the engine's
//! counts into gauges. Pure calls into the `metrics` facade: with no recorder
//! installed each one is a no-op (one atomic load), and nothing here
//! allocates: names are `&'static str`, label values are `&'static str` from
//! bounded sets. A session id never becomes a label.

use metrics::{counter, gauge, histogram};
use sessionbus_actors::{LifecycleEvent, PoolStats, RegistryStats};

use super::names::*;

/// Counts one lifecycle event.
pub(crate) fn event(event: &LifecycleEvent) {
    match event {
        LifecycleEvent::Started(_) => counter!(SESSIONS_STARTED_TOTAL).increment(1),
        LifecycleEvent::Ended(end) => {
            let reason = end.reason.as_str();
            counter!(SESSIONS_ENDED_TOTAL, "reason" => reason).increment(1);
            if let Some(deadline) = end.deadline {
                histogram!(EXPIRY_TIMER_LATENESS_SECONDS, "reason" => reason)
                    .record(deadline.lateness().as_secs_f64());
            }
        }
        LifecycleEvent::Released(receipt) => {
            let reason = receipt.reason.as_str();
            counter!(SESSIONS_RELEASED_TOTAL, "reason" => reason).increment(1);
            counter!(GPU_RELEASED_BUFFERS_TOTAL).increment(receipt.buffers);
            counter!(GPU_RELEASED_BYTES_TOTAL).increment(receipt.bytes);
            histogram!(CLOSE_TO_RELEASE_SECONDS, "reason" => reason)
                .record(receipt.end_to_release().as_secs_f64());
            let steps = &receipt.steps;
            for (step, took) in [
                ("hooks", steps.hooks),
                ("queued", steps.queued),
                ("pool_wait", steps.pool_wait),
                ("destroy_and_poll", steps.destroy_and_poll),
            ] {
                histogram!(RELEASE_STEP_SECONDS, "step" => step).record(took.as_secs_f64());
            }
            if let Some(deadline) = receipt.deadline {
                let late = receipt.released_at.saturating_duration_since(deadline.at);
                histogram!(EXPIRY_LATENESS_SECONDS, "reason" => reason).record(late.as_secs_f64());
            }
            if !receipt.paced_for.is_zero() {
                counter!(LIMITER_WAITS_TOTAL).increment(1);
                histogram!(LIMITER_WAIT_SECONDS).record(receipt.paced_for.as_secs_f64());
            }
            if receipt.error.is_some() {
                counter!(RELEASE_FAILURES_TOTAL).increment(1);
            }
        }
        LifecycleEvent::ContextReset(reset) => {
            counter!(CONTEXT_RESETS_TOTAL, "reason" => reset.reason.as_str()).increment(1);
        }
        _ => {} // a kind added later has no metric yet
    }
}

/// Sets the gauges (and the counters the registry keeps) from the engine's
/// counts. Counters go through `absolute`, so a sample never double-counts.
pub(crate) fn registry(stats: &RegistryStats) {
    gauge!(SESSIONS, "state" => "live").set(stats.live as f64);
    gauge!(SESSIONS, "state" => "releasing").set(stats.releasing as f64);
    let queue = &stats.release_queue;
    gauge!(RELEASE_QUEUE_DEPTH).set((queue.queued + queue.in_flight) as f64);
    gauge!(RELEASE_QUEUE_BYTES).set((queue.queued_bytes + queue.in_flight_bytes) as f64);
    gauge!(BUDGET_USED_BYTES).set(stats.budget.device_used as f64);
    gauge!(BUDGET_WAITING).set(stats.budget.waiting as f64);
    counter!(EVICTIONS_TOTAL).absolute(stats.pressure.evicted);
    let hooks = &stats.hooks;
    counter!(HOOK_FAILURES_TOTAL).absolute(hooks.failed + hooks.timed_out + hooks.panicked);
    counter!(RELEASES_STUCK_TOTAL).absolute(stats.steps.stuck);
    counter!(OFFLOADS_TOTAL).absolute(stats.pressure.offloaded);
    counter!(RESTORES_TOTAL).absolute(stats.pressure.restored);
    gauge!(OFFLOADED_BYTES).set(stats.pressure.offloaded_bytes as f64);
    gauge!(BUS_BACKLOG).set(stats.bus_backlog as f64);
    counter!(INCIDENTS_TOTAL).absolute(stats.incidents);
    counter!(SWEEPER_INCIDENTS_TOTAL).absolute(stats.sweeper_incidents);
    counter!(LEASES_REVOKED_TOTAL).absolute(stats.leases_revoked);
    counter!(DRAINS_FORCED_TOTAL).absolute(stats.drains_forced);
    counter!(BUS_DROPPED_TOTAL).absolute(stats.bus_dropped);
}

/// Sets the GPU gauges from the pool's counts.
pub(crate) fn pool(stats: &PoolStats) {
    gauge!(GPU_LIVE_BYTES).set(stats.live_bytes as f64);
    gauge!(GPU_PEAK_BYTES).set(stats.peak_bytes as f64);
    gauge!(GPU_LIVE_BUFFERS).set(stats.live_buffers as f64);
}

/// Registers the metrics nothing has emitted yet at zero, so that a scrape
/// lists them from the start (an alert on `rate(x_total)` needs the series).
/// `increment(0)` never resets a counter another part has moved.
pub(crate) fn register_zeroes() {
    counter!(HOOK_FAILURES_TOTAL).increment(0);
    counter!(RELEASE_FAILURES_TOTAL).increment(0);
    counter!(LIMITER_WAITS_TOTAL).increment(0);
    counter!(SESSIONS_STARTED_TOTAL).increment(0);
    counter!(GPU_RELEASED_BUFFERS_TOTAL).increment(0);
    counter!(GPU_RELEASED_BYTES_TOTAL).increment(0);
}
