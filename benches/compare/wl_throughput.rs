//! Workload 3: open + close cycles per second, no GPU allocation, then open +
//! one message + close. sessionbus: many tasks opening and closing at once
//! from a multi-thread tokio runtime. Peers: the same number of concurrent
//! loops filing a session in the store and taking it out again, on one thread
//! (their stores need no hop to another thread, so this is their best case;
//! the task-per-session peer's message does hop, to the session's task).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::common::*;
use super::direct::{self, PeerKind};
use super::peer_sessionbus;

pub const TARGET_PER_SEC: f64 = 200_000.0;

/// Far beyond the run: nothing expires on its own here.
const FAR: Duration = Duration::from_secs(3_600);

/// What one cycle does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Open (file) a session and close (take it out) again.
    OpenClose,
    /// The same with one message in between: a chat turn for sessionbus, a
    /// round trip to the session's own task for the task-per-session peer
    /// (each task gets a mailbox), a lookup for the maps, `EXISTS` for Redis.
    /// So that no cost hides behind a session nobody ever touches.
    OpenMessageClose,
}

impl Shape {
    fn title(self) -> &'static str {
        match self {
            Shape::OpenClose => "open + close",
            Shape::OpenMessageClose => "open + one message + close",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Shape::OpenClose => "open_close",
            Shape::OpenMessageClose => "open_message_close",
        }
    }
}

/// One peer's cycles in `window`: (cycles, failed, window, why it was skipped).
fn direct_cycles(
    tokio: &tokio::runtime::Runtime,
    kind: PeerKind,
    shape: Shape,
    window: Duration,
    concurrency: usize,
    errors: &mut Vec<String>,
) -> (u64, u64, Duration, Option<String>) {
    let mut skipped = None;
    let mailboxes = shape == Shape::OpenMessageClose;
    let Some(started) = direct::start_with(kind, mailboxes, &mut skipped, errors) else {
        return (0, 0, Duration::ZERO, skipped);
    };
    let (_pool, _baseline, releaser, peer) = started.into_parts();
    let (cycles, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    let until = started + window;
    tokio.block_on(futures::future::join_all((0..concurrency).map(|_| async {
        while Instant::now() < until {
            let session = sessionbus::SessionId::random();
            let ok = peer.insert(session, Instant::now() + FAR).await.is_ok()
                && (!mailboxes || peer.message(session).await.unwrap_or(false))
                && peer.remove(session).await.unwrap_or(false);
            let counter = if ok { &cycles } else { &failed };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    })));
    let took = started.elapsed();
    peer.stop();
    releaser.finish();
    (cycles.into_inner(), failed.into_inner(), took, None)
}

/// Both shapes, one after the other, each next to every peer.
pub fn run(
    tokio_one: &tokio::runtime::Runtime,
    window: Duration,
    concurrency: usize,
    peers: &[PeerKind],
) -> (serde_json::Value, Vec<String>) {
    let (mut json, mut errors) = run_shape(tokio_one, Shape::OpenClose, window, concurrency, peers);
    let (with_message, more) = run_shape(
        tokio_one,
        Shape::OpenMessageClose,
        window,
        concurrency,
        peers,
    );
    errors.extend(more);
    json[Shape::OpenMessageClose.key()] = with_message;
    (json, errors)
}

fn run_shape(
    tokio_one: &tokio::runtime::Runtime,
    shape: Shape,
    window: Duration,
    concurrency: usize,
    peers: &[PeerKind],
) -> (serde_json::Value, Vec<String>) {
    eprintln!(
        "[throughput] {}: sessionbus, {concurrency} tasks for {window:?}…",
        shape.title()
    );
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("multi-thread tokio runtime");
    let mut errors = Vec::new();
    let (cycles, failures, took, cpu) = tokio.block_on(async {
        let rt = match peer_sessionbus::start(concurrency, false).await {
            Ok(rt) => Arc::new(rt),
            Err(e) => {
                errors.push(e);
                return (0, 0, Duration::ZERO, Vec::new());
            }
        };
        let baseline = rt.gpu_counters().expect("the runtime's own wgpu pool");
        let cycles = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let ticks = thread_ticks();
        let started = Instant::now();
        let until = started + window;
        let tasks: Vec<_> = (0..concurrency)
            .map(|t| {
                let (rt, cycles, failures) = (rt.clone(), cycles.clone(), failures.clone());
                tokio::spawn(async move {
                    let owner = sessionbus::Owner::new(format!("tput-{t}"));
                    while Instant::now() < until {
                        let ok = match rt.open(owner.clone()).await {
                            Ok(session) => {
                                (shape == Shape::OpenClose
                                    || session.chat(sessionbus::Turn::new()).await.is_ok())
                                    && session.close().await.is_ok_and(|r| r.error.is_none())
                            }
                            Err(_) => false,
                        };
                        if ok {
                            cycles.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
        let took = started.elapsed();
        let cpu = cpu_use(&ticks, &thread_ticks(), took);
        match Arc::try_unwrap(rt) {
            Ok(rt) => peer_sessionbus::finish(rt, baseline, &mut errors).await,
            Err(_) => errors.push("sessionbus: runtime still shared after the run".into()),
        }
        (
            cycles.load(Ordering::Relaxed),
            failures.load(Ordering::Relaxed),
            took,
            cpu,
        )
    });
    if failures > 0 {
        errors.push(format!(
            "sessionbus: {failures} {} cycles failed",
            shape.title()
        ));
    }
    let per_sec = cycles as f64 / took.as_secs_f64().max(1e-9);
    let mut peer_rows = Vec::new();
    for &kind in peers {
        eprintln!("[throughput] {}: {}…", shape.title(), kind.name());
        let row = direct_cycles(tokio_one, kind, shape, window, concurrency, &mut errors);
        if row.1 > 0 {
            errors.push(format!(
                "{}: {} insert/remove cycles failed",
                kind.name(),
                row.1
            ));
        }
        peer_rows.push((kind, row));
    }
    println!();
    println!(
        "3. {} throughput (no GPU allocation), sessionbus, {concurrency} concurrent tasks on {workers} tokio workers",
        shape.title()
    );
    println!(
        "{:<34} | {:>10} | {:>10} | {:>14} | {:>8}",
        "peer", "cycles", "window", "cycles/s", "failed"
    );
    println!("{}", "-".repeat(90));
    println!(
        "{:<34} | {cycles:>10} | {:>10} | {per_sec:>14.0} | {failures:>8}",
        "sessionbus",
        show(took)
    );
    println!("{:<34} | CPU: {}", "", cpu_line(&cpu));
    let mut peers_json = Vec::new();
    for (kind, (cycles, failed, took, skipped)) in &peer_rows {
        if let Some(why) = skipped {
            println!("{:<34} | skipped: {why}", kind.name());
            continue;
        }
        let peer_per_sec = *cycles as f64 / took.as_secs_f64().max(1e-9);
        println!(
            "{:<34} | {cycles:>10} | {:>10} | {peer_per_sec:>14.0} | {failed:>8} | bus ÷ peer {:.2}×",
            kind.name(),
            show(*took),
            per_sec / peer_per_sec.max(1e-9)
        );
        peers_json.push(json!({
            "peer": kind.key(),
            "cycles": cycles,
            "failed": failed,
            "window_us": micros(*took),
            "per_second": peer_per_sec,
            "bus_over_peer": per_sec / peer_per_sec.max(1e-9),
        }));
    }
    println!(
        "target: ≥ {TARGET_PER_SEC:.0} cycles/s: {} ({per_sec:.0}/s)",
        if per_sec >= TARGET_PER_SEC {
            "met"
        } else {
            "MISSED"
        }
    );
    let json = json!({
        "concurrency": concurrency,
        "tokio_workers": workers,
        "cycles": cycles,
        "failed": failures,
        "window_us": micros(took),
        "per_second": per_sec,
        "thread_cpu_percent": cpu_json(&cpu),
        "target": {"per_second": TARGET_PER_SEC, "met": per_sec >= TARGET_PER_SEC},
        "peers": peers_json,
    });
    (json, errors)
}
