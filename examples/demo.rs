//! The main job: a simulated chat backend on embedded defaults.
//!
//! Many clients open sessions and chat for several turns; each turn grows the
//! session's KV cache by one GPU buffer. Then some clients close, some just
//! drop their handle (a disconnect), and the rest are ended by shutdown. The
//! report checks the invariants against wgpu's own counters.
//!
//! ```text
//! cargo run --release --example demo -- --sessions 2000 --json
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sessionbus::{
    Config, Delivery, EndReason, EventKinds, LifecycleEvent, Runtime, SessionHandle, SessionId,
    Turn,
};

/// Simulates a chat backend on sessionbus and reports what happened to every byte.
#[derive(Parser, Debug)]
struct Args {
    /// Chat sessions to open.
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    /// Turns per session; each turn allocates one KV-cache buffer.
    #[arg(long, default_value_t = 8)]
    turns: usize,
    /// Bytes of KV cache each turn adds.
    #[arg(long, default_value_t = 64 * 1024)]
    kv_bytes_per_turn: u64,
    /// Clients chatting at the same time.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seed for the clients' choices (who closes, who disconnects, who stays).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A TOML configuration file (defaults are embedded).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Print the report as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Supervisor logs as JSON lines on stderr (level from RUST_LOG, default warn).
    #[arg(long)]
    json_logs: bool,
}

/// What a client does once it has chatted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Close,
    Disconnect,
    StayUntilShutdown,
}

#[derive(Default)]
struct Observed {
    ends: HashMap<SessionId, Vec<EndReason>>,
    released_buffers: u64,
    released_at: HashMap<SessionId, Instant>,
}

fn percentiles(mut samples: Vec<u64>) -> serde_json::Value {
    if samples.is_empty() {
        return json!({ "p50": null, "p99": null, "max": null, "n": 0 });
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    json!({ "p50": at(0.50), "p99": at(0.99), "max": samples[samples.len() - 1], "n": samples.len() })
}

fn init_logs(json_logs: bool) {
    let filter =
        // wgpu probes every backend while picking an adapter; without a GL driver
        // its EGL probe logs an error that does not matter once Vulkan is chosen.
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "warn,wgpu_hal::gles::egl=off".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_logs {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(args.json_logs);
    let config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let wall = Instant::now();
    let rt = Runtime::start(config)
        .await
        .context("starting the sessionbus runtime")?;
    let baseline = rt.gpu_counters();
    let adapter = rt.adapter().clone();
    if !args.json {
        println!(
            "sessionbus demo on {} ({}, {})",
            adapter.adapter, adapter.backend, adapter.device_type
        );
    }

    // Watch the bus like an application would: every end and every release.
    let mut events = rt
        .subscribe_channel(EventKinds::ENDED | EventKinds::RELEASED, Delivery::Reliable)
        .await
        .context("subscribing to the bus")?;
    let observed = Arc::new(Mutex::new(Observed::default()));
    let watcher = tokio::spawn({
        let observed = observed.clone();
        async move {
            while let Some(event) = events.recv().await {
                let mut seen = observed.lock().unwrap();
                match event {
                    LifecycleEvent::Ended(end) => {
                        seen.ends.entry(end.id).or_default().push(end.reason)
                    }
                    LifecycleEvent::Released(receipt) => {
                        seen.released_buffers += receipt.buffers;
                        seen.released_at.insert(receipt.id, receipt.released_at);
                    }
                    LifecycleEvent::Started(_) | LifecycleEvent::ContextReset(_) => {}
                }
            }
        }
    });

    let progress = ProgressBar::new(args.sessions as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} sessions  {msg}")?
            .progress_chars("=> "),
    );
    if args.json {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }

    let mut rng = StdRng::seed_from_u64(args.seed);
    let fates: Vec<Fate> = (0..args.sessions)
        .map(|_| match rng.random_range(0..10) {
            0..4 => Fate::Close,
            4..7 => Fate::Disconnect,
            _ => Fate::StayUntilShutdown,
        })
        .collect();

    let rt = Arc::new(rt);
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let outcomes: Vec<_> = futures::stream::iter(fates.into_iter().enumerate())
        .map(|(i, fate)| {
            let rt = rt.clone();
            let errors = errors.clone();
            let progress = progress.clone();
            let (turns, kv) = (args.turns, args.kv_bytes_per_turn);
            async move {
                let outcome = client(&rt, i, fate, turns, kv).await;
                progress.inc(1);
                match outcome {
                    Ok(outcome) => Some(outcome),
                    Err(e) => {
                        errors.lock().unwrap().push(format!("client {i}: {e:#}"));
                        None
                    }
                }
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    progress.finish_with_message("chatted");

    let mut close_us = Vec::new();
    let mut disconnected_at = Vec::new();
    let mut kept = Vec::new();
    for outcome in outcomes.into_iter().flatten() {
        match outcome {
            Outcome::Closed(latency) => close_us.push(latency.as_micros() as u64),
            Outcome::Disconnected(id, at) => disconnected_at.push((id, at)),
            Outcome::Kept(handle) => kept.push(handle),
        }
    }

    // Disconnects end asynchronously: wait until each one's release was seen.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let all_released = {
            let seen = observed.lock().unwrap();
            disconnected_at
                .iter()
                .all(|(id, _)| seen.released_at.contains_key(id))
        };
        if all_released {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let disconnect_us: Vec<u64> = {
        let seen = observed.lock().unwrap();
        disconnected_at
            .iter()
            .filter_map(|(id, at)| {
                seen.released_at
                    .get(id)
                    .map(|r| r.saturating_duration_since(*at).as_micros() as u64)
            })
            .collect()
    };

    let pool = rt.pool_stats();
    let kept_count = kept.len();
    let rt = Arc::into_inner(rt).context("every client finished, so the runtime has one owner")?;
    let stop = rt.shutdown().await;
    drop(kept);
    watcher.await?;

    let seen = observed.lock().unwrap();
    let mut ended_by: BTreeMap<&str, u64> =
        EndReason::ALL.iter().map(|r| (r.as_str(), 0)).collect();
    let mut double_ends = 0;
    for reasons in seen.ends.values() {
        double_ends += reasons.len().saturating_sub(1);
        for reason in reasons {
            *ended_by.entry(reason.as_str()).or_default() += 1;
        }
    }
    let errors = errors.lock().unwrap();
    let leaked = stop.gpu_after.buffers - baseline.buffers;
    let report = json!({
        "adapter": { "name": adapter.adapter, "backend": adapter.backend, "device_type": adapter.device_type },
        "sessions_opened": stop.sessions.stats.opened,
        "sessions_ended": seen.ends.len(),
        "double_ends": double_ends,
        "ended_by": ended_by,
        "kept_until_shutdown": kept_count,
        "gpu_buffers_allocated": pool.allocated_total,
        "gpu_buffers_released": seen.released_buffers,
        "gpu_bytes_peak": pool.peak_bytes,
        "wgpu_hal_buffers_baseline": baseline.buffers,
        "wgpu_hal_buffers_after": stop.gpu_after.buffers,
        "wgpu_hal_buffer_memory_baseline": baseline.buffer_memory,
        "wgpu_hal_buffer_memory_after": stop.gpu_after.buffer_memory,
        "leaked_buffers": leaked,
        "close_to_release_us": percentiles(close_us),
        "disconnect_to_release_us": percentiles(disconnect_us),
        "shutdown_us": stop.sessions.took.as_micros() as u64,
        "incidents": stop.sessions.stats.incidents,
        "errors": errors.len(),
        "wall_ms": wall.elapsed().as_millis() as u64,
    });

    print_human(&report, &errors);
    if args.json {
        println!("{report}");
    }
    let healthy = leaked == 0
        && double_ends == 0
        && errors.is_empty()
        && seen.ends.len() as u64 == stop.sessions.stats.opened;
    anyhow::ensure!(healthy, "invariants violated: see the report");
    Ok(())
}

enum Outcome {
    Closed(Duration),
    Disconnected(SessionId, Instant),
    Kept(SessionHandle),
}

async fn client(
    rt: &Runtime,
    i: usize,
    fate: Fate,
    turns: usize,
    kv_bytes: u64,
) -> anyhow::Result<Outcome> {
    let session = rt.open(format!("user-{i}")).await?;
    for _ in 0..turns {
        session.chat(Turn::default()).await?;
        session.allocate(kv_bytes).await?;
    }
    Ok(match fate {
        Fate::Close => {
            let asked = Instant::now();
            let receipt = session.close().await?;
            Outcome::Closed(receipt.released_at.saturating_duration_since(asked))
        }
        Fate::Disconnect => {
            let id = session.id();
            let at = Instant::now();
            drop(session);
            Outcome::Disconnected(id, at)
        }
        Fate::StayUntilShutdown => Outcome::Kept(session),
    })
}

fn print_human(report: &serde_json::Value, errors: &[String]) {
    let r = report;
    let line = |k: &str| r[k].to_string();
    let lat = |k: &str| {
        format!(
            "p50 {} µs, p99 {} µs, max {} µs (n={})",
            r[k]["p50"], r[k]["p99"], r[k]["max"], r[k]["n"]
        )
    };
    println!();
    println!("── sessionbus demo report ─────────────────────────────────────");
    println!(
        "adapter               {} ({})",
        r["adapter"]["name"], r["adapter"]["backend"]
    );
    println!(
        "sessions              {} opened, {} ended, {} ended twice",
        line("sessions_opened"),
        line("sessions_ended"),
        line("double_ends")
    );
    let by: Vec<String> = r["ended_by"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_u64() != Some(0))
                .map(|(k, v)| format!("{k} {v}"))
                .collect()
        })
        .unwrap_or_default();
    println!("ended by              {}", by.join(", "));
    println!(
        "GPU buffers           {} allocated, {} released, peak {} bytes",
        line("gpu_buffers_allocated"),
        line("gpu_buffers_released"),
        line("gpu_bytes_peak")
    );
    println!(
        "wgpu hal.buffers      baseline {}, after {}  → leaked {}",
        line("wgpu_hal_buffers_baseline"),
        line("wgpu_hal_buffers_after"),
        line("leaked_buffers")
    );
    println!("close → released      {}", lat("close_to_release_us"));
    println!("disconnect → released {}", lat("disconnect_to_release_us"));
    println!(
        "shutdown              {} µs, incidents {}, errors {}",
        line("shutdown_us"),
        line("incidents"),
        line("errors")
    );
    println!("wall                  {} ms", line("wall_ms"));
    for e in errors.iter().take(5) {
        println!("error: {e}");
    }
}
