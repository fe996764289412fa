//! What the scenarios share for their reports: the books every report
//! holds, the leak check on wgpu's counters, the invariant checks, and
//! printing.

use std::collections::BTreeMap;

use serde::Serialize;
use sessionbus::pool::{GpuCounters, PoolStats};

use crate::Finished;
use crate::adapter::AdapterReport;
use crate::percentiles::Percentiles;

/// What every scenario's JSON report holds (its own fields come next to
/// these, through `#[serde(flatten)]`): the adapter, the sessions' ends, the
/// GPU's books by the pool and by wgpu's own counters, incidents and wall time.
#[derive(Debug, Serialize)]
pub struct Books {
    pub adapter: AdapterReport,
    pub sessions_opened: u64,
    pub sessions_ended: usize,
    pub double_ends: usize,
    pub ended_by: BTreeMap<&'static str, u64>,
    pub gpu_buffers_allocated: u64,
    /// Context resets give buffers back too, without ending the session.
    pub gpu_buffers_released: u64,
    pub gpu_bytes_peak: u64,
    pub wgpu_hal_buffers_baseline: i64,
    pub wgpu_hal_buffers_after: i64,
    pub wgpu_hal_buffer_memory_baseline: i64,
    pub wgpu_hal_buffer_memory_after: i64,
    pub leaked_buffers: i64,
    pub leaked_bytes: i64,
    pub incidents: u64,
    pub wall_ms: u64,
}

impl Books {
    /// `pool` is read before the shutdown.
    pub fn of(end: &Finished, pool: &PoolStats) -> Books {
        let (stop, seen) = (&end.stop, &end.seen);
        Books {
            adapter: end.adapter.clone(),
            sessions_opened: stop.sessions.stats.opened,
            sessions_ended: seen.ends.len(),
            double_ends: seen.double_ends(),
            ended_by: seen.ended_by(),
            gpu_buffers_allocated: pool.allocated_total,
            gpu_buffers_released: seen.released_buffers + seen.context_reset_buffers,
            gpu_bytes_peak: pool.peak_bytes,
            wgpu_hal_buffers_baseline: end.baseline.buffers,
            wgpu_hal_buffers_after: stop.gpu_after.expect("wgpu counters").buffers,
            wgpu_hal_buffer_memory_baseline: end.baseline.buffer_memory,
            wgpu_hal_buffer_memory_after: stop.gpu_after.expect("wgpu counters").buffer_memory,
            leaked_buffers: end.leak.buffers,
            leaked_bytes: end.leak.bytes,
            incidents: stop.sessions.stats.incidents,
            wall_ms: end.wall_ms,
        }
    }
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
pub fn print_json(report: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(report)?);
    Ok(())
}

/// One line of a human report: the label in a 22-character column, then the text.
pub fn row(label: &str, text: impl std::fmt::Display) {
    println!("{label:<22}{text}");
}

/// One latency row per `(label, percentiles)`.
pub fn latency_rows(rows: &[(&str, &Percentiles)]) {
    for (label, percentiles) in rows {
        row(label, percentiles);
    }
}

/// `name count, …` of counts by name, leaving out the zeros.
pub fn counts<K: std::fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    let nonzero: Vec<String> = map
        .iter()
        .filter(|(_, n)| **n != 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    nonzero.join(", ")
}

/// The human report's title rule, and the adapter it ran on (with how to
/// get a faster one, where there is one).
pub fn heading(title: &str, adapter: &AdapterReport) {
    title_rule(title);
    adapter_rows(adapter);
}

/// `── title ───…`, after an empty line.
pub fn title_rule(title: &str) {
    let rule = 63usize.saturating_sub(title.chars().count() + 4);
    println!();
    println!("── {title} {}", "─".repeat(rule));
}

pub fn adapter_rows(adapter: &AdapterReport) {
    row("adapter", adapter.found());
    if let Some(faster) = &adapter.faster {
        row("faster adapter", faster);
    }
}

/// wgpu's live buffers against their baseline.
pub fn leak_row(books: &Books) {
    row(
        "wgpu hal.buffers",
        format!(
            "baseline {}, after {}  → leaked {}",
            books.wgpu_hal_buffers_baseline, books.wgpu_hal_buffers_after, books.leaked_buffers
        ),
    );
}

pub fn print_errors(errors: &[String]) {
    for e in errors.iter().take(5) {
        println!("error: {e}");
    }
}
