//! What the metrics subscriber costs on close → released, side by side in
//! one process, on the real wgpu adapter.
//!
//! Three configurations, each with 1 000 live sessions holding 4 × 64 KiB:
//!
//! - `off`: `metrics.enabled = false` (no subscriber at all);
//! - `on, no recorder`: the subscriber runs, every facade call is a no-op;
//! - `on, prometheus`: `metrics-exporter-prometheus`'s recorder installed.
//!
//! The recorder is global and cannot be removed, so the run has two phases:
//! first `off` and `on, no recorder` alternate, then the recorder is installed
//! and `off` and `on, prometheus` alternate. Each round closes sessions one at
//! a time and takes, per close, `close()` → `ReleaseReceipt::released_at`.
//!
//! ```text
//! cargo bench --bench metrics_cost
//! ```

use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use sessionbus::{Config, Runtime, SessionHandle};

mod common;

const LIVE_SESSIONS: usize = 1_000;
const BUFFERS_PER_SESSION: usize = 4;
const KV_BYTES: u64 = 64 * 1024;
const ROUNDS: usize = 6;
const CLOSES_PER_ROUND: usize = 500;

async fn session_with_buffers(rt: &Runtime, owner: String) -> SessionHandle {
    let session = rt.open(owner).await.expect("open");
    for _ in 0..BUFFERS_PER_SESSION {
        session.allocate(KV_BYTES).await.expect("allocate");
    }
    session
}

/// A runtime with its live population, ready to measure.
struct Setup {
    rt: Runtime,
    live: Vec<SessionHandle>,
}

fn setup(tokio: &tokio::runtime::Runtime, metrics: bool) -> Setup {
    let mut config = Config::default();
    config.metrics.enabled = metrics;
    tokio.block_on(async {
        let rt = Runtime::start(config).await.expect("runtime on a real adapter");
        let live = futures::future::join_all(
            (0..LIVE_SESSIONS).map(|i| session_with_buffers(&rt, format!("live-{i}"))),
        )
        .await;
        Setup { rt, live }
    })
}

fn round(tokio: &tokio::runtime::Runtime, setup: &Setup, into: &mut Vec<Duration>) {
    tokio.block_on(async {
        for i in 0..CLOSES_PER_ROUND {
            let session = session_with_buffers(&setup.rt, format!("bench-{i}")).await;
            let asked = Instant::now();
            let receipt = session.close().await.expect("close");
            into.push(receipt.released_at.saturating_duration_since(asked));
        }
    });
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn summary(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    (percentile(samples, 0.50), percentile(samples, 0.99))
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Alternates `off` and `on` for ROUNDS rounds and prints one table row pair.
fn phase(tokio: &tokio::runtime::Runtime, on_label: &str) {
    let off = setup(tokio, false);
    let on = setup(tokio, true);
    let (mut off_samples, mut on_samples) = (Vec::new(), Vec::new());
    // Warm-up round each, not counted.
    round(tokio, &off, &mut Vec::new());
    round(tokio, &on, &mut Vec::new());
    for _ in 0..ROUNDS {
        round(tokio, &off, &mut off_samples);
        round(tokio, &on, &mut on_samples);
    }
    let (off_p50, off_p99) = summary(&mut off_samples);
    let (on_p50, on_p99) = summary(&mut on_samples);
    println!(
        "| off                 | {:>6} | {:>8.1} | {:>8.1} | 1.00 |",
        off_samples.len(),
        micros(off_p50),
        micros(off_p99)
    );
    println!(
        "| {on_label:<19} | {:>6} | {:>8.1} | {:>8.1} | {:.2} |",
        on_samples.len(),
        micros(on_p50),
        micros(on_p99),
        micros(on_p50) / micros(off_p50)
    );
    for setup in [off, on] {
        drop(setup.live);
        tokio.block_on(setup.rt.shutdown());
    }
}

fn main() {
    let tokio = common::tokio();
    println!(
        "metrics_cost: close → released, {LIVE_SESSIONS} live sessions, {BUFFERS_PER_SESSION}x64KiB, \
         {ROUNDS} alternating rounds of {CLOSES_PER_ROUND} closes per configuration"
    );
    println!("| configuration       |      n | p50 (µs) | p99 (µs) | p50 ratio to off |");
    println!("|---|---:|---:|---:|---:|");
    phase(&tokio, "on, no recorder");
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in sessionbus::metrics::HISTOGRAM_BUCKETS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            .expect("buckets");
    }
    let handle = builder.install_recorder().expect("recorder");
    phase(&tokio, "on, prometheus");
    let scrape = handle.render();
    println!(
        "(the scrape after the run has {} lines)",
        scrape.lines().count()
    );
}
