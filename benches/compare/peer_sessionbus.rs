//! sessionbus itself: a `Runtime` (engine thread + its own `WgpuPool`), driven
//! through its public API for every workload.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sessionbus::config::Config;
use sessionbus::{
    DeadlineKind, Delivery, EndReason, EventKinds, ExpiryPolicy, LifecycleEvent, OpenOptions,
    Runtime, SessionHandle,
};

use super::common::percentiles::Percentiles;
use super::common::*;
use super::wl_expiry::{PeerRun, check_once};

/// A runtime admitting at least `sessions` live sessions.
/// `SESSIONBUS_BENCH_CONFIG=path.toml`: the sessionbus peer runs on that
/// configuration instead of the defaults (to compare settings in one run).
pub async fn start(sessions: usize, idle_timeout: bool) -> Result<Runtime, String> {
    start_passivating(sessions, idle_timeout, None).await
}

/// [`start`], with idle sessions parking after `passivate_after` when given.
pub async fn start_passivating(
    sessions: usize,
    idle_timeout: bool,
    passivate_after: Option<Duration>,
) -> Result<Runtime, String> {
    let mut config = match std::env::var_os("SESSIONBUS_BENCH_CONFIG") {
        Some(path) => Config::from_file(&path)
            .map_err(|e| format!("sessionbus: SESSIONBUS_BENCH_CONFIG: {e}"))?,
        None => Config::default(),
    };
    config.sessions.max_sessions = config.sessions.max_sessions.max(2 * sessions);
    if !idle_timeout {
        config.expiry.idle_timeout = None;
    }
    if passivate_after.is_some() {
        config.sessions.passivate_after = passivate_after;
    }
    Runtime::start(config)
        .await
        .map_err(|e| format!("sessionbus: runtime did not start: {e}"))
}

/// Checks the registry is empty and wgpu's counters are back at `baseline`,
/// then shuts the runtime down and checks again.
pub async fn finish(
    rt: Runtime,
    baseline: sessionbus::pool::GpuCounters,
    errors: &mut Vec<String>,
) {
    let now = rt.gpu_counters().expect("the runtime's own wgpu pool");
    if now != baseline {
        push_error(
            errors,
            format!("sessionbus: wgpu counters not at baseline: {now:?} vs {baseline:?}"),
        );
    }
    if let Ok(stats) = rt.stats().await
        && (stats.incidents > 0 || stats.live > 0 || stats.releasing > 0)
    {
        push_error(
            errors,
            format!(
                "sessionbus: registry after the run: {} incidents, {} live, {} releasing",
                stats.incidents, stats.live, stats.releasing
            ),
        );
    }
    let report = rt.shutdown().await;
    if report.gpu_after.expect("wgpu counters") != baseline || report.sessions.sessions_ended != 0 {
        push_error(
            errors,
            format!(
                "sessionbus: after shutdown wgpu counters {:?} (baseline {baseline:?}), {} sessions ended by shutdown",
                report.gpu_after.expect("wgpu counters"),
                report.sessions.sessions_ended
            ),
        );
    }
}

/// Opens a session with `buffers` buffers of `bytes`.
pub async fn open_with_buffers(
    rt: &Runtime,
    options: OpenOptions,
    buffers: usize,
    bytes: u64,
) -> Result<SessionHandle, String> {
    let session = rt
        .open_with(options)
        .await
        .map_err(|e| format!("open: {e}"))?;
    for _ in 0..buffers {
        session
            .allocate(bytes)
            .await
            .map_err(|e| format!("allocate on {}: {e}", session.id()))?;
    }
    Ok(session)
}

/// Opens `count` sessions owned by `{prefix}-{i}`, each with `buffers` buffers
/// of `bytes`, `SETUP_CONCURRENCY` at a time.
pub async fn open_many(
    rt: &Runtime,
    prefix: &str,
    count: usize,
    buffers: usize,
    bytes: u64,
) -> Vec<Result<SessionHandle, String>> {
    futures::stream::iter(0..count)
        .map(|i| {
            open_with_buffers(
                rt,
                OpenOptions::new(format!("{prefix}-{i}")),
                buffers,
                bytes,
            )
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await
}

/// Workload 1 for sessionbus: sessions with TTLs, one buffer each; measured
/// from `Deadline::at` to `ReleaseReceipt::released_at`.
pub async fn expiry(ttls: &[Duration], buffer_bytes: u64) -> (PeerRun, String) {
    let n = ttls.len();
    let mut run = PeerRun::default();
    let rt = match start(n, false).await {
        Ok(rt) => rt,
        Err(e) => {
            run.errors.push(e);
            return (run, String::new());
        }
    };
    let adapter = describe_adapter(rt.pool_info());
    let baseline = rt.gpu_counters().expect("the runtime's own wgpu pool");
    let Ok(mut events) = rt
        .subscribe_channel(EventKinds::RELEASED, Delivery::Reliable)
        .await
    else {
        run.errors.push("sessionbus: subscribe failed".into());
        return (run, adapter);
    };

    // Set-up and the receipts run together: early deadlines can fall while
    // later sessions are still being opened, and the bus must be read meanwhile.
    let started = Instant::now();
    let setup_done: Mutex<Option<Instant>> = Mutex::new(None);
    let setup = async {
        let opened: Vec<Result<SessionHandle, String>> =
            futures::stream::iter(ttls.iter().enumerate())
                .map(|(i, &ttl)| {
                    let options = OpenOptions::new(format!("user-{i}")).expiry(ExpiryPolicy {
                        idle_timeout: None,
                        ttl: Some(ttl),
                    });
                    open_with_buffers(&rt, options, 1, buffer_bytes)
                })
                .buffer_unordered(SETUP_CONCURRENCY)
                .collect()
                .await;
        *setup_done.lock().unwrap() = Some(Instant::now());
        (opened, thread_ticks())
    };
    let collect = async {
        let mut receipts = Vec::with_capacity(n);
        let mut problem = None;
        while receipts.len() < n {
            match tokio::time::timeout(QUIET_LIMIT, events.recv()).await {
                Ok(Some(LifecycleEvent::Released(receipt))) => receipts.push(receipt),
                Ok(Some(_)) => {}
                Ok(None) => {
                    problem = Some("the bus closed".to_string());
                    break;
                }
                Err(_) => {
                    problem = Some(format!(
                        "no release for {QUIET_LIMIT:?} with {} of {n} received",
                        receipts.len()
                    ));
                    break;
                }
            }
        }
        (receipts, problem, Instant::now(), thread_ticks())
    };
    let ((opened, ticks_before), (mut receipts, problem, last, ticks_after)) =
        futures::join!(setup, collect);
    let setup_done = setup_done.into_inner().unwrap().unwrap_or(started);
    run.setup = setup_done - started;
    run.window = last.saturating_duration_since(setup_done);
    run.cpu = cpu_use(&ticks_before, &ticks_after, run.window);
    if let Some(problem) = problem {
        run.errors.push(format!("sessionbus: {problem}"));
    }
    let mut handles = Vec::with_capacity(n);
    for result in opened {
        match result {
            Ok(session) => handles.push(session),
            Err(e) => push_error(&mut run.errors, format!("sessionbus: set-up: {e}")),
        }
    }

    // Anything past n would be a second release of some session: give it a moment to show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(event) = events.try_recv() {
        if let LifecycleEvent::Released(receipt) = event {
            receipts.push(receipt);
        }
    }

    let mut released = Vec::with_capacity(n);
    let mut timer = Vec::with_capacity(n);
    let mut after_fire = Vec::with_capacity(n);
    let mut fires: HashMap<Instant, usize> = HashMap::new();
    for receipt in &receipts {
        let Some(deadline) = receipt.deadline else {
            push_error(
                &mut run.errors,
                format!("sessionbus: receipt for {} without a deadline", receipt.id),
            );
            continue;
        };
        if receipt.reason != EndReason::TtlExpired
            || deadline.kind != DeadlineKind::Ttl
            || receipt.buffers != 1
            || receipt.error.is_some()
        {
            push_error(
                &mut run.errors,
                format!(
                    "sessionbus: unexpected receipt for {}: reason {}, {} buffers, error {:?}",
                    receipt.id, receipt.reason, receipt.buffers, receipt.error
                ),
            );
        }
        released.push(receipt.released_at.saturating_duration_since(deadline.at));
        timer.push(deadline.fired_at.saturating_duration_since(deadline.at));
        after_fire.push(
            receipt
                .released_at
                .saturating_duration_since(deadline.fired_at),
        );
        run.due_during_setup += (deadline.at < setup_done) as usize;
        // Sessions that share a `fired_at` were ended by the same timer fire.
        *fires.entry(deadline.fired_at).or_default() += 1;
    }
    run.fires = fires.len();
    let sizes: Percentiles = fires.into_values().map(|n| n as u64).collect();
    if let (Some(p50), Some(p99), Some(max)) = (sizes.at(0.5), sizes.at(0.99), sizes.at(1.0)) {
        run.per_fire = Some((p50 as usize, p99 as usize, max as usize));
    }
    if handles.len() != n {
        push_error(
            &mut run.errors,
            format!("sessionbus: {} opened of {n}", handles.len()),
        );
    }
    check_once(
        "sessionbus",
        handles.iter().map(|h| h.id()),
        receipts.iter().map(|r| r.id),
        &mut run.errors,
    );
    drop(handles);
    finish(rt, baseline, &mut run.errors).await;
    run.released = Summary::of(&released);
    run.timer = Summary::of(&timer);
    run.after_fire = Summary::of(&after_fire);
    (run, adapter)
}
