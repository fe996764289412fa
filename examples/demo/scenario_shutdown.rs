//! `--scenario shutdown`: a busy population gets a real SIGTERM in the middle
//! of a paced release storm. The signal helper shuts the runtime down within
//! `--deadline-secs`; the report adds the shutdown report (sessions ended,
//! bytes released, leases forced, hooks, per-step timings of the destroy path).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use sessionbus::config::{Config, ReleaseTier};
use sessionbus::{Owner, ShutdownReport, Turn};

use crate::adapter::AdapterReport;
use crate::report::{self, Checks, Leak, row};
use crate::{Args, Demo};

/// The shutdown scenario's JSON report: the shutdown report instead of the
/// pool's books.
#[derive(Serialize)]
struct Report<'a> {
    adapter: &'a AdapterReport,
    sessions_opened: u64,
    sessions_ended: usize,
    double_ends: usize,
    ended_by: BTreeMap<&'static str, u64>,
    releases_queued_at_signal: u64,
    hooks_persisted: u64,
    gpu_buffers_released: u64,
    wgpu_hal_buffers_baseline: i64,
    wgpu_hal_buffers_after: i64,
    leaked_buffers: i64,
    shutdown: &'a ShutdownReport,
    wall_ms: u64,
}

/// A slow pace, so that the storm is still queued when the signal arrives;
/// leases that outlive the deadline, so that shutdown has to force them.
pub fn configure(config: &mut Config) {
    config.release.tiers = vec![ReleaseTier {
        name: "paced".into(),
        from_queue: 0,
        rate: 200,
        burst: 16,
        max_in_flight: 8,
    }];
    config.leases.drain_timeout = std::time::Duration::from_secs(600);
}

pub async fn run(demo: Demo, args: &Args) -> anyhow::Result<()> {
    let Demo {
        rt,
        watch,
        stop: stop_requested,
        baseline,
        adapter,
        wall,
    } = demo;
    // A pre-destroy hook, as an application would persist each conversation.
    let persisted = Arc::new(AtomicU64::new(0));
    let count = persisted.clone();
    rt.on_before_release("persist-conversation", move |_ended| {
        let count = count.clone();
        async move {
            tokio::time::sleep(Duration::from_micros(200)).await;
            count.fetch_add(1, Ordering::Relaxed);
            Ok::<(), std::io::Error>(())
        }
    });

    let engine = rt.engine().clone();
    let populate = async {
        let mut sessions = Vec::new();
        let mut leases = Vec::new();
        for i in 0..args.sessions {
            let session = engine.open(format!("user-{i}")).await?;
            for _ in 0..args.turns.min(4) {
                session.chat(Turn::default()).await?;
                session.allocate(args.kv_bytes_per_turn).await?;
            }
            if i % 10 == 0 {
                leases.push(session.lease().await?); // a token stream still running
            }
            sessions.push(session);
        }
        anyhow::Ok((sessions, leases))
    };
    // A Ctrl-C while the population opens: stop opening, shut down what is there.
    let (sessions, leases) = match stop_requested.unless_stopped(populate).await {
        Some(populated) => populated?,
        None => (Vec::new(), Vec::new()),
    };
    // The storm: half the clients close at once (not the streaming ones).
    for (i, session) in sessions.iter().enumerate() {
        if i % 2 == 1 {
            let (engine, id) = (engine.clone(), session.id());
            tokio::spawn(async move {
                let _ = engine.close(id, Owner::new(format!("user-{i}"))).await;
            });
        }
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let queued_at_signal = rt
        .stats()
        .await
        .map(|s| s.release_queue.queued)
        .unwrap_or(0);

    let deadline = Duration::from_secs_f64(args.deadline_secs);
    // The demo's handlers have been installed since `main` began; a signal
    // that came earlier (a Ctrl-C) is kept, and the shutdown starts at once.
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()?;
    anyhow::ensure!(sent.success(), "kill -TERM failed");
    stop_requested.wait().await;
    let stop = rt.shutdown_within(deadline).await;
    drop((sessions, leases));
    let seen = watch.finish().await?;
    let leak = Leak::between(baseline, stop.gpu_after.expect("wgpu counters"));
    let s = &stop.sessions;
    let double_ends = seen.double_ends();

    let report = Report {
        adapter: &adapter,
        sessions_opened: s.stats.opened,
        sessions_ended: seen.ends.len(),
        double_ends,
        ended_by: seen.ended_by(),
        releases_queued_at_signal: queued_at_signal,
        hooks_persisted: persisted.load(Ordering::Relaxed),
        gpu_buffers_released: seen.released_buffers,
        wgpu_hal_buffers_baseline: baseline.buffers,
        wgpu_hal_buffers_after: stop.gpu_after.expect("wgpu counters").buffers,
        leaked_buffers: leak.buffers,
        shutdown: s,
        wall_ms: wall.elapsed().as_millis() as u64,
    };
    report::heading("sessionbus shutdown report", &adapter);
    row(
        "signal",
        format!("SIGTERM with {queued_at_signal} releases queued"),
    );
    row(
        "shutdown",
        format!(
            "{} sessions ended ({} forced past leases), {} bytes released in {} ms, completed {}",
            s.sessions_ended,
            s.sessions_forced,
            s.bytes_released,
            s.took.as_millis(),
            s.completed
        ),
    );
    let step = |t: &sessionbus::StepTiming| {
        format!(
            "mean {} µs, max {} µs",
            t.total_us / t.count.max(1),
            t.max_us
        )
    };
    let steps = &s.stats.steps;
    row("step hooks", step(&steps.hooks));
    row("step queued", step(&steps.queued));
    row("step pool wait", step(&steps.pool_wait));
    row("step destroy+poll", step(&steps.destroy_and_poll));
    row(
        "wgpu hal.buffers",
        format!(
            "baseline {}, after {} → leaked {}",
            baseline.buffers,
            stop.gpu_after.expect("wgpu counters").buffers,
            leak.buffers
        ),
    );
    if args.json {
        report::print_json(&report)?;
    }
    let mut checks = Checks::default();
    checks.require(leak.buffers == 0, "wgpu hal.buffers back at baseline");
    checks.require(double_ends == 0, "no session ended twice");
    checks.require(
        seen.ends.len() as u64 == s.stats.opened,
        "every opened session ended",
    );
    checks.require(s.completed, "shutdown completed within its deadline");
    checks.require(s.stats.steps.stuck == 0, "no stuck release");
    checks.conclude()
}
