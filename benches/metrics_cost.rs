//! What the metrics subscriber costs on close → released, side by side in
//! one process, on the real wgpu adapter.
//!
//! Three configurations, each with 1 000 live sessions holding 4 × 64 KiB:
//!
//! - `off`: `metrics.enabled = false`, the default (no subscriber at all);
//! - `on, no recorder`: the subscriber runs, every facade call is a no-op;
//! - `on, prometheus`: `metrics-exporter-prometheus`'s recorder installed.
//!
//! The recorder is global and cannot be removed, so the run has two phases:
//! first `off` and `on, no recorder` alternate close by close, then the
//! recorder is installed and `off` and `on, prometheus` alternate. Sessions
//! are closed one at a time and takes, per close, `close()` → `ReleaseReceipt::released_at`;
//! then storms close 500 sessions at once (close of all → each release).
//!
//! ```text
//! cargo bench -p sessionbus-benches --bench metrics_cost
//! ```

use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use sessionbus::config::Config;
use sessionbus::{Runtime, SessionHandle};

use sessionbus_testkit::bench as common;

use sessionbus_testkit::percentiles::Latencies;

const LIVE_SESSIONS: usize = 1_000;
const BUFFERS_PER_SESSION: usize = 4;
const KV_BYTES: u64 = 64 * 1024;
const ROUNDS: usize = 10;
const CLOSES_PER_ROUND: usize = 1_000;
/// Sessions closed at once in a storm round.
const STORM: usize = 500;
const STORM_ROUNDS: usize = 20;

async fn session_with_buffers(rt: &Runtime, owner: String) -> SessionHandle {
    common::session_with_buffers(rt, owner, BUFFERS_PER_SESSION, KV_BYTES).await
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
        let rt = Runtime::start(config)
            .await
            .expect("runtime on a real adapter");
        let live = futures::future::join_all(
            (0..LIVE_SESSIONS).map(|i| session_with_buffers(&rt, format!("live-{i}"))),
        )
        .await;
        Setup { rt, live }
    })
}

/// One close on `setup`: `close()` → `released_at`.
async fn one_close(setup: &Setup, i: usize) -> Duration {
    let session = session_with_buffers(&setup.rt, format!("bench-{i}")).await;
    let asked = Instant::now();
    let receipt = session.close().await.expect("close");
    receipt.released_at.saturating_duration_since(asked)
}

/// Closes one session on each runtime per step, alternating which goes
/// first, so that the machine's noise falls on both alike.
fn round(tokio: &tokio::runtime::Runtime, off: &Setup, on: &Setup, into: &mut [Vec<Duration>; 2]) {
    tokio.block_on(async {
        for i in 0..CLOSES_PER_ROUND {
            if i % 2 == 0 {
                into[0].push(one_close(off, i).await);
                into[1].push(one_close(on, i).await);
            } else {
                into[1].push(one_close(on, i).await);
                into[0].push(one_close(off, i).await);
            }
        }
    });
}

/// Closes STORM sessions at once; returns each one's close → released.
fn storm(tokio: &tokio::runtime::Runtime, setup: &Setup, into: &mut Vec<Duration>) {
    tokio.block_on(async {
        let sessions = futures::future::join_all(
            (0..STORM).map(|i| session_with_buffers(&setup.rt, format!("storm-{i}"))),
        )
        .await;
        let asked = Instant::now();
        let receipts = futures::future::join_all(sessions.iter().map(|s| s.close())).await;
        for receipt in receipts {
            into.push(
                receipt
                    .expect("close")
                    .released_at
                    .saturating_duration_since(asked),
            );
        }
    });
}

fn summary(samples: &[Duration]) -> (Duration, Duration) {
    let latencies: Latencies = samples.iter().collect();
    let at = |q: f64| latencies.at(q).unwrap_or_default();
    (at(0.50), at(0.99))
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn row(
    label: &str,
    samples: &[Duration],
    base: Option<(Duration, Duration)>,
) -> (Duration, Duration) {
    let (p50, p99) = summary(samples);
    let (b50, b99) = base.unwrap_or((p50, p99));
    println!(
        "| {label:<28} | {:>6} | {:>8.1} | {:>8.1} | {:.2} | {:.2} |",
        samples.len(),
        micros(p50),
        micros(p99),
        micros(p50) / micros(b50),
        micros(p99) / micros(b99)
    );
    (p50, p99)
}

/// Alternates `off` and `on`: one close at a time, then storms.
fn phase(tokio: &tokio::runtime::Runtime, on_label: &str) {
    let off = setup(tokio, false);
    let on = setup(tokio, true);
    let mut samples = [Vec::new(), Vec::new()];
    // Warm-up round, not counted.
    round(tokio, &off, &on, &mut [Vec::new(), Vec::new()]);
    for _ in 0..ROUNDS {
        round(tokio, &off, &on, &mut samples);
    }
    let [off_samples, on_samples] = samples;
    let base = row("off, one close at a time", &off_samples, None);
    row(
        &format!("{on_label}, one at a time"),
        &on_samples,
        Some(base),
    );
    let (mut off_storm, mut on_storm) = (Vec::new(), Vec::new());
    for i in 0..STORM_ROUNDS {
        if i % 2 == 0 {
            storm(tokio, &off, &mut off_storm);
            storm(tokio, &on, &mut on_storm);
        } else {
            storm(tokio, &on, &mut on_storm);
            storm(tokio, &off, &mut off_storm);
        }
    }
    let base = row(&format!("off, {STORM} at once"), &off_storm, None);
    row(
        &format!("{on_label}, {STORM} at once"),
        &on_storm,
        Some(base),
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
         {} closes per configuration alternating one by one, {STORM_ROUNDS} storms of {STORM}",
        ROUNDS * CLOSES_PER_ROUND
    );
    println!(
        "| configuration                |      n | p50 (µs) | p99 (µs) | p50 / off | p99 / off |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
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
