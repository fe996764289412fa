//! What the scenarios share for their reports: percentiles, the leak check
//! on wgpu's counters, the invariant checks, and printing.

use serde_json::{Value, json};
use sessionbus::{GpuCounters, PoolInfo};

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

pub fn print_errors(errors: &[String]) {
    for e in errors.iter().take(5) {
        println!("error: {e}");
    }
}
