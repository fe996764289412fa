//! What the scenarios share for their reports: percentiles, the leak check
//! on wgpu's counters, the invariant checks, and printing.

use serde_json::{Value, json};
use sessionbus::{GpuCounters, PoolInfo, PoolStats};

use crate::Finished;

/// `{p50, p99, max, n}` of `samples` (nulls when there are none).
pub fn percentiles(samples: &[u64]) -> Value {
    if samples.is_empty() {
        return json!({ "p50": null, "p99": null, "max": null, "n": 0 });
    }
    let mut samples = samples.to_vec();
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    json!({ "p50": at(0.50), "p99": at(0.99), "max": samples[samples.len() - 1], "n": samples.len() })
}

pub fn adapter_json(adapter: &PoolInfo) -> Value {
    json!({ "name": adapter.adapter, "backend": adapter.backend, "device_type": adapter.device_type })
}

/// What every scenario's JSON report holds: the adapter, the sessions' ends,
/// the GPU's books by the pool and by wgpu's own counters, incidents and wall
/// time. `pool` is read before the shutdown; `extra` holds the scenario's own
/// fields.
pub fn with_books(end: &Finished, pool: &PoolStats, extra: Value) -> Value {
    let (stop, seen) = (&end.stop, &end.seen);
    let mut report = json!({
        "adapter": adapter_json(&end.adapter),
        "sessions_opened": stop.sessions.stats.opened,
        "sessions_ended": seen.ends.len(),
        "double_ends": seen.double_ends(),
        "ended_by": seen.ended_by(),
        "gpu_buffers_allocated": pool.allocated_total,
        // Context resets give buffers back too, without ending the session.
        "gpu_buffers_released": seen.released_buffers + seen.context_reset_buffers,
        "gpu_bytes_peak": pool.peak_bytes,
        "wgpu_hal_buffers_baseline": end.baseline.buffers,
        "wgpu_hal_buffers_after": stop.gpu_after.buffers,
        "wgpu_hal_buffer_memory_baseline": end.baseline.buffer_memory,
        "wgpu_hal_buffer_memory_after": stop.gpu_after.buffer_memory,
        "leaked_buffers": end.leak.buffers,
        "leaked_bytes": end.leak.bytes,
        "incidents": stop.sessions.stats.incidents,
        "wall_ms": end.wall_ms,
    });
    if let (Some(report), Value::Object(extra)) = (report.as_object_mut(), extra) {
        report.extend(extra);
    }
    report
}

/// What wgpu's own counters say is still alive beyond the baseline.
pub struct Leak {
    pub buffers: i64,
    pub bytes: i64,
}

impl Leak {
    pub fn between(baseline: GpuCounters, after: GpuCounters) -> Leak {
        Leak {
            buffers: after.buffers - baseline.buffers,
            bytes: after.buffer_memory - baseline.buffer_memory,
        }
    }
}

/// The invariants a run must keep; the demo exits non-zero if one is broken.
#[derive(Default)]
pub struct Checks {
    broken: Vec<&'static str>,
}

impl Checks {
    pub fn require(&mut self, holds: bool, invariant: &'static str) {
        if !holds {
            self.broken.push(invariant);
        }
    }

    pub fn conclude(self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.broken.is_empty(),
            "invariants violated (see the report): {}",
            self.broken.join("; ")
        );
        Ok(())
    }
}

/// The JSON report, as the last line of stdout.
pub fn print_json(report: &Value) {
    println!("{report}");
}

/// One line of a human report: the label in a 22-character column, then the text.
pub fn row(label: &str, text: impl std::fmt::Display) {
    println!("{label:<22}{text}");
}

/// `p50 … µs, p99 … µs, max … µs (n=…)` of a `percentiles` value.
pub fn latency(p: &Value) -> String {
    format!(
        "p50 {} µs, p99 {} µs, max {} µs (n={})",
        p["p50"], p["p99"], p["max"], p["n"]
    )
}

/// One `latency` row per `(label, key)` of `report`.
pub fn latency_rows(report: &Value, rows: &[(&str, &str)]) {
    for (label, key) in rows {
        row(label, latency(&report[*key]));
    }
}

/// `name count, …` of a JSON object of counts, leaving out the zeros.
pub fn counts(map: &Value) -> String {
    let nonzero: Vec<String> = map
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_u64() != Some(0))
                .map(|(k, v)| format!("{k} {v}"))
                .collect()
        })
        .unwrap_or_default();
    nonzero.join(", ")
}

/// The human report's title rule and the adapter it ran on.
pub fn heading(title: &str, report: &Value) {
    let rule = 63usize.saturating_sub(title.chars().count() + 4);
    println!();
    println!("── {title} {}", "─".repeat(rule));
    let adapter = &report["adapter"];
    row(
        "adapter",
        format!("{} ({})", adapter["name"], adapter["backend"]),
    );
}

/// wgpu's live buffers against their baseline.
pub fn leak_row(report: &Value) {
    row(
        "wgpu hal.buffers",
        format!(
            "baseline {}, after {}  → leaked {}",
            report["wgpu_hal_buffers_baseline"],
            report["wgpu_hal_buffers_after"],
            report["leaked_buffers"]
        ),
    );
}

pub fn print_errors(errors: &[String]) {
    for e in errors.iter().take(5) {
        println!("error: {e}");
    }
}
