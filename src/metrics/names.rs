//! Every metric sessionbus emits: its name, and for histograms the bucket
//! bounds an exporter should use.
//!
//! Names follow Prometheus conventions: the `sessionbus_` prefix, the unit as
//! a suffix (`_seconds`, `_bytes`), and `_total` on every counter, already in
//! the name (so an exporter's own suffixing, such as
//! `PrometheusBuilder::with_recommended_naming`, should stay off). Labels are
//! bounded sets only: `reason` (an end or stale reason) and `state`. No metric
//! carries a session id, owner or trace id.

use metrics::Unit;

// ── Sessions ────────────────────────────────────────────────────────────────

/// Gauge, label `state`: sessions now `live` (established or draining their
/// leases) and `releasing` (ended, memory not yet back).
pub const SESSIONS: &str = "sessionbus_sessions";
/// Counter: sessions opened.
pub const SESSIONS_STARTED_TOTAL: &str = "sessionbus_sessions_started_total";
/// Counter, label `reason`: sessions ended (`closed`, `disconnected`,
/// `idle_timeout`, `ttl_expired`, `evicted`, `shutdown`, `crashed`, `lease_lost`).
pub const SESSIONS_ENDED_TOTAL: &str = "sessionbus_sessions_ended_total";
/// Counter, label `reason`: sessions whose GPU memory is back.
pub const SESSIONS_RELEASED_TOTAL: &str = "sessionbus_sessions_released_total";
/// Counter, label `reason` (`low_similarity`, `decayed`, `intent_switch`,
/// `negation`): conversation contexts that went stale and were released.
pub const CONTEXT_RESETS_TOTAL: &str = "sessionbus_context_resets_total";

// ── Latency histograms ──────────────────────────────────────────────────────

/// Histogram (seconds), label `reason`: from a session's end (close,
/// disconnect, expiry, …) to its GPU buffers destroyed and the device polled.
pub const CLOSE_TO_RELEASE_SECONDS: &str = "sessionbus_close_to_release_seconds";
/// Histogram (seconds), label `reason` (`idle_timeout`, `ttl_expired`): from
/// the deadline that ended a session to its memory being back.
pub const EXPIRY_LATENESS_SECONDS: &str = "sessionbus_expiry_lateness_seconds";
/// Histogram (seconds), label `reason`: from a deadline to the engine's timer
/// noticing it (the first part of the expiry lateness).
pub const EXPIRY_TIMER_LATENESS_SECONDS: &str = "sessionbus_expiry_timer_lateness_seconds";

// ── GPU memory and release ──────────────────────────────────────────────────

/// Gauge (bytes): GPU memory held by live buffers now.
pub const GPU_LIVE_BYTES: &str = "sessionbus_gpu_live_bytes";
/// Gauge (bytes): the highest `sessionbus_gpu_live_bytes` since start.
pub const GPU_PEAK_BYTES: &str = "sessionbus_gpu_peak_bytes";
/// Gauge: GPU buffers alive now.
pub const GPU_LIVE_BUFFERS: &str = "sessionbus_gpu_live_buffers";
/// Counter (bytes): GPU memory released by session ends.
pub const GPU_RELEASED_BYTES_TOTAL: &str = "sessionbus_gpu_released_bytes_total";
/// Counter: GPU buffers released by session ends.
pub const GPU_RELEASED_BUFFERS_TOTAL: &str = "sessionbus_gpu_released_buffers_total";
/// Gauge: releases in the release queue or handed to the GPU thread and not
/// yet answered.
pub const RELEASE_QUEUE_DEPTH: &str = "sessionbus_release_queue_depth";
/// Histogram (seconds): one step of the destroy path (`step` = `hooks`,
/// `queued`, `pool_wait`, `destroy_and_poll`), so the slow step is visible.
pub const RELEASE_STEP_SECONDS: &str = "sessionbus_release_step_seconds";
/// Counter: releases force-completed because a step was stuck.
pub const RELEASES_STUCK_TOTAL: &str = "sessionbus_releases_stuck_total";
/// Gauge (bytes): GPU memory on its way back (queued or in flight).
pub const RELEASE_QUEUE_BYTES: &str = "sessionbus_release_queue_bytes";
/// Gauge (bytes): GPU memory charged to the device budget (held or being allocated).
pub const BUDGET_USED_BYTES: &str = "sessionbus_budget_used_bytes";
/// Gauge: allocations waiting for room in a budget.
pub const BUDGET_WAITING: &str = "sessionbus_budget_waiting_allocations";
/// Counter: sessions ended (`evicted`) to make room in a budget.
pub const EVICTIONS_TOTAL: &str = "sessionbus_evictions_total";
/// Counter: sessions offloaded to host memory (soft eviction).
pub const OFFLOADS_TOTAL: &str = "sessionbus_offloads_total";
/// Counter: offloaded sessions brought back to the GPU.
pub const RESTORES_TOTAL: &str = "sessionbus_restores_total";
/// Gauge (bytes): host memory held by offloaded sessions.
pub const OFFLOADED_BYTES: &str = "sessionbus_offloaded_bytes";
/// Counter: releases that failed (each is also an incident, logged at ERROR).
pub const RELEASE_FAILURES_TOTAL: &str = "sessionbus_release_failures_total";
/// Counter: releases the rate limiter made wait (a storm being paced).
pub const LIMITER_WAITS_TOTAL: &str = "sessionbus_limiter_waits_total";
/// Histogram (seconds): how long those releases waited for the limiter.
pub const LIMITER_WAIT_SECONDS: &str = "sessionbus_limiter_wait_seconds";

// ── Things that should not happen ───────────────────────────────────────────

/// Counter: incidents (every WARN and ERROR the supervisor logs, except
/// forced drains and revoked leases, which have their own counters).
pub const INCIDENTS_TOTAL: &str = "sessionbus_incidents_total";
/// Counter: of the incidents, those the sweeper found.
pub const SWEEPER_INCIDENTS_TOTAL: &str = "sessionbus_sweeper_incidents_total";
/// Counter: remote leases revoked because their heartbeats stopped.
pub const LEASES_REVOKED_TOTAL: &str = "sessionbus_leases_revoked_total";
/// Counter: ends forced past leases still held.
pub const DRAINS_FORCED_TOTAL: &str = "sessionbus_drains_forced_total";
/// Counter: lifecycle hooks that failed. Hooks do not exist yet, so this
/// stays at zero; it is registered so that dashboards and alerts can be set up.
pub const HOOK_FAILURES_TOTAL: &str = "sessionbus_hook_failures_total";

// ── The bus ─────────────────────────────────────────────────────────────────

/// Counter: events dropped for best-effort subscribers that fell behind.
pub const BUS_DROPPED_TOTAL: &str = "sessionbus_bus_dropped_total";
/// Gauge: events waiting for reliable subscribers that fell behind.
pub const BUS_BACKLOG: &str = "sessionbus_bus_backlog";

// ── Buckets ─────────────────────────────────────────────────────────────────

/// Close → released: tens of microseconds when healthy, up to seconds
/// during a paced storm.
#[rustfmt::skip]
pub const CLOSE_TO_RELEASE_BUCKETS: &[f64] = &[
    0.000_010, 0.000_025, 0.000_050, 0.000_100, 0.000_250, 0.000_500, 0.001, 0.002_5, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Expiry lateness: a millisecond or two when healthy; the upper buckets
/// are where a polling sweeper would land (0.5–1 s).
#[rustfmt::skip]
pub const EXPIRY_LATENESS_BUCKETS: &[f64] = &[
    0.000_100, 0.000_250, 0.000_500, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// Limiter waits: from a fraction of a millisecond to the seconds a large
/// storm is spread over.
#[rustfmt::skip]
pub const LIMITER_WAIT_BUCKETS: &[f64] = &[
    0.000_100, 0.000_500, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every histogram with its buckets, for an exporter to apply
/// (`PrometheusBuilder::set_buckets_for_metric(Matcher::Full(name), buckets)`).
pub const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    (CLOSE_TO_RELEASE_SECONDS, CLOSE_TO_RELEASE_BUCKETS),
    (EXPIRY_LATENESS_SECONDS, EXPIRY_LATENESS_BUCKETS),
    (EXPIRY_TIMER_LATENESS_SECONDS, EXPIRY_LATENESS_BUCKETS),
    (LIMITER_WAIT_SECONDS, LIMITER_WAIT_BUCKETS),
    (RELEASE_STEP_SECONDS, CLOSE_TO_RELEASE_BUCKETS),
];

/// The kind of a metric, for [`ALL`].
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of samples.
    Histogram,
}

/// One metric: name, kind, unit, the label it may carry, and what it means.
#[derive(Copy, Clone, Debug)]
pub struct Described {
    /// The full Prometheus name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its unit.
    pub unit: Unit,
    /// The one label it may carry (`reason` or `state`), if any.
    pub label: Option<&'static str>,
    /// What it means, as an exporter's `# HELP` line.
    pub help: &'static str,
}

const fn m(
    name: &'static str,
    kind: Kind,
    unit: Unit,
    label: Option<&'static str>,
    help: &'static str,
) -> Described {
    Described {
        name,
        kind,
        unit,
        label,
        help,
    }
}

use Kind::{Counter, Gauge, Histogram};
const REASON: Option<&str> = Some("reason");

/// Every metric sessionbus emits.
#[rustfmt::skip] // one metric per line reads as a table
pub const ALL: &[Described] = &[
    m(SESSIONS, Gauge, Unit::Count, Some("state"), "Sessions now, by state (live, releasing)."),
    m(SESSIONS_STARTED_TOTAL, Counter, Unit::Count, None, "Sessions opened."),
    m(SESSIONS_ENDED_TOTAL, Counter, Unit::Count, REASON, "Sessions ended, by reason."),
    m(SESSIONS_RELEASED_TOTAL, Counter, Unit::Count, REASON, "Sessions whose GPU memory is back, by end reason."),
    m(CONTEXT_RESETS_TOTAL, Counter, Unit::Count, REASON, "Conversation contexts reset, by stale reason."),
    m(CLOSE_TO_RELEASE_SECONDS, Histogram, Unit::Seconds, REASON, "Session end to GPU memory released."),
    m(EXPIRY_LATENESS_SECONDS, Histogram, Unit::Seconds, REASON, "Expiry deadline to GPU memory released."),
    m(EXPIRY_TIMER_LATENESS_SECONDS, Histogram, Unit::Seconds, REASON, "Expiry deadline to the engine's timer firing."),
    m(GPU_LIVE_BYTES, Gauge, Unit::Bytes, None, "GPU memory held by live buffers."),
    m(GPU_PEAK_BYTES, Gauge, Unit::Bytes, None, "Highest GPU memory held since start."),
    m(GPU_LIVE_BUFFERS, Gauge, Unit::Count, None, "GPU buffers alive."),
    m(GPU_RELEASED_BYTES_TOTAL, Counter, Unit::Bytes, None, "GPU memory released by session ends."),
    m(GPU_RELEASED_BUFFERS_TOTAL, Counter, Unit::Count, None, "GPU buffers released by session ends."),
    m(RELEASE_QUEUE_DEPTH, Gauge, Unit::Count, None, "Releases queued or in flight."),
    m(RELEASE_STEP_SECONDS, Histogram, Unit::Seconds, Some("step"), "One step of the destroy path (hooks, queued, pool_wait, destroy_and_poll)."),
    m(RELEASES_STUCK_TOTAL, Counter, Unit::Count, None, "Releases force-completed because a step was stuck."),
    m(RELEASE_QUEUE_BYTES, Gauge, Unit::Bytes, None, "GPU memory on its way back (queued or in flight)."),
    m(BUDGET_USED_BYTES, Gauge, Unit::Bytes, None, "GPU memory charged to the device budget."),
    m(BUDGET_WAITING, Gauge, Unit::Count, None, "Allocations waiting for room in a budget."),
    m(EVICTIONS_TOTAL, Counter, Unit::Count, None, "Sessions ended to make room in a budget."),
    m(OFFLOADS_TOTAL, Counter, Unit::Count, None, "Sessions offloaded to host memory."),
    m(RESTORES_TOTAL, Counter, Unit::Count, None, "Offloaded sessions brought back to the GPU."),
    m(OFFLOADED_BYTES, Gauge, Unit::Bytes, None, "Host memory held by offloaded sessions."),
    m(RELEASE_FAILURES_TOTAL, Counter, Unit::Count, None, "Releases that failed."),
    m(LIMITER_WAITS_TOTAL, Counter, Unit::Count, None, "Releases the rate limiter made wait."),
    m(LIMITER_WAIT_SECONDS, Histogram, Unit::Seconds, None, "Time releases waited for the rate limiter."),
    m(INCIDENTS_TOTAL, Counter, Unit::Count, None, "Incidents: things that should not happen, handled and logged."),
    m(SWEEPER_INCIDENTS_TOTAL, Counter, Unit::Count, None, "Incidents found by the sweeper."),
    m(LEASES_REVOKED_TOTAL, Counter, Unit::Count, None, "Remote leases revoked for missed heartbeats."),
    m(DRAINS_FORCED_TOTAL, Counter, Unit::Count, None, "Ends forced past leases still held."),
    m(HOOK_FAILURES_TOTAL, Counter, Unit::Count, None, "Lifecycle hooks that failed."),
    m(BUS_DROPPED_TOTAL, Counter, Unit::Count, None, "Events dropped for best-effort subscribers."),
    m(BUS_BACKLOG, Gauge, Unit::Count, None, "Events waiting for reliable subscribers."),
];

/// Sends every metric's description and unit to the installed recorder
/// (an exporter shows them as `# HELP` lines). The runtime calls this at
/// start; call it yourself if you install a recorder later.
pub fn describe() {
    for d in ALL {
        match d.kind {
            Counter => metrics::describe_counter!(d.name, d.unit, d.help),
            Gauge => metrics::describe_gauge!(d.name, d.unit, d.help),
            Histogram => metrics::describe_histogram!(d.name, d.unit, d.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for d in ALL {
            assert!(seen.insert(d.name), "{} listed twice", d.name);
            assert!(d.name.starts_with("sessionbus_"), "{}", d.name);
            assert!(
                d.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{}",
                d.name
            );
            assert_eq!(d.kind == Counter, d.name.ends_with("_total"), "{}", d.name);
            match d.unit {
                Unit::Seconds => assert!(d.name.ends_with("_seconds"), "{}", d.name),
                Unit::Bytes => assert!(
                    d.name.ends_with("_bytes") || d.name.ends_with("_bytes_total"),
                    "{}",
                    d.name
                ),
                _ => assert!(!d.name.contains("_seconds") && !d.name.contains("_bytes")),
            }
        }
    }

    #[test]
    fn every_histogram_has_increasing_buckets() {
        let histograms: Vec<_> = ALL.iter().filter(|d| d.kind == Histogram).collect();
        assert_eq!(histograms.len(), HISTOGRAM_BUCKETS.len());
        for d in histograms {
            let (_, buckets) = HISTOGRAM_BUCKETS
                .iter()
                .find(|(name, _)| *name == d.name)
                .unwrap_or_else(|| panic!("{} has no buckets", d.name));
            assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{}", d.name);
            assert!(buckets[0] > 0.0);
        }
    }

    #[test]
    fn the_reference_table_lists_every_metric() {
        let reference = include_str!("../reference/metrics.md");
        for d in ALL {
            assert!(
                reference.contains(&format!("| `{}` |", d.name)),
                "the metrics reference (src/reference/metrics.md) lacks {}",
                d.name
            );
        }
    }
}
