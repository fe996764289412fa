//! Workload 1: deadline → GPU memory released, for sessions that expire on
//! their own (TTL uniform in 1–3 s, one 4 KiB buffer each, the same TTL draws
//! for every peer). Every session must be released exactly once and wgpu's
//! counters must be back at their baseline.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use sessionbus::SessionId;

use super::common::{self, *};
use super::direct::{self, PeerKind, allocate};
use super::peer_sessionbus;

/// One buffer per session.
pub const BUFFER_BYTES: u64 = 4 * 1024;
/// The target: sessionbus p99 deadline → released at 100 000 live sessions.
pub const TARGET_P99: Duration = Duration::from_millis(5);
pub const TARGET_SESSIONS: usize = 100_000;

/// What one peer measured.
#[derive(Default)]
pub struct PeerRun {
    /// Deadline → memory back.
    pub released: Option<Summary>,
    /// sessionbus only: deadline → the timer fired, and fired → memory back.
    pub timer: Option<Summary>,
    pub after_fire: Option<Summary>,
    /// sessionbus only: timer fires and sessions ended per fire (p50, p99, max).
    pub fires: usize,
    pub per_fire: Option<(usize, usize, usize)>,
    /// How long opening and allocating every session took.
    pub setup: Duration,
    /// Sessions whose deadline fell before set-up had finished.
    pub due_during_setup: usize,
    /// From the end of set-up to the last release.
    pub window: Duration,
    /// CPU used by each busy thread over `window`, in % of one core.
    pub cpu: Vec<(String, f64)>,
    /// Why the peer did not run, if it did not.
    pub skipped: Option<String>,
    /// Everything that went wrong; empty in a healthy run.
    pub errors: Vec<String>,
}

impl PeerRun {
    pub fn json(&self) -> serde_json::Value {
        json!({
            "deadline_to_released": summary_json(&self.released),
            "timer_lateness": summary_json(&self.timer),
            "fired_to_released": summary_json(&self.after_fire),
            "timer_fires": self.fires,
            "sessions_per_fire": self.per_fire.map(|(p50, p99, max)| json!({"p50": p50, "p99": p99, "max": max})),
            "setup_us": micros(self.setup),
            "deadlines_during_setup": self.due_during_setup,
            "window_us": micros(self.window),
            "thread_cpu_percent": cpu_json(&self.cpu),
            "skipped": self.skipped,
            "errors": self.errors,
        })
    }
}

/// Counts releases per session: every one of `expected` exactly once, nothing else.
pub fn check_once(
    peer: &str,
    expected: impl IntoIterator<Item = SessionId>,
    released: impl IntoIterator<Item = SessionId>,
    errors: &mut Vec<String>,
) {
    let mut counts: HashMap<SessionId, u32> = expected.into_iter().map(|s| (s, 0)).collect();
    let mut stray = 0usize;
    for session in released {
        match counts.get_mut(&session) {
            Some(c) => *c += 1,
            None => stray += 1,
        }
    }
    let never = counts.values().filter(|&&c| c == 0).count();
    let twice = counts.values().filter(|&&c| c > 1).count();
    if never > 0 || twice > 0 || stray > 0 {
        push_error(
            errors,
            format!(
                "{peer}: {never} never released, {twice} released more than once, {stray} releases of unknown sessions"
            ),
        );
    }
}

/// Runs one direct peer (its own `WgpuPool`) on the TTL draws.
pub fn run_direct(tokio: &tokio::runtime::Runtime, kind: PeerKind, ttls: &[Duration]) -> PeerRun {
    let n = ttls.len();
    let mut run = PeerRun::default();
    let name = kind.name();
    let Some(started) = direct::start(kind, &mut run.skipped, &mut run.errors) else {
        return run;
    };
    let (pool, baseline, releaser, peer) = started.into_parts();

    let started = Instant::now();
    let opened: Vec<Result<SessionId, String>> = tokio.block_on(
        futures::stream::iter(ttls.iter().copied())
            .map(|ttl| {
                let (pool, peer) = (&pool, &peer);
                async move {
                    let session = SessionId::random();
                    let opened = Instant::now();
                    allocate(pool, session, BUFFER_BYTES).await?;
                    peer.insert(session, opened + ttl).await?;
                    Ok(session)
                }
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .collect(),
    );
    let setup_done = Instant::now();
    let ticks_before = thread_ticks();
    run.setup = setup_done - started;
    let mut sessions = Vec::with_capacity(n);
    for result in opened {
        match result {
            Ok(session) => sessions.push(session),
            Err(e) => push_error(&mut run.errors, format!("{name}: set-up: {e}")),
        }
    }

    // Wait for every release, giving up after a long silence.
    let mut last_count = 0;
    let mut last_change = Instant::now();
    let mut last_release = Instant::now();
    while releaser.done() < sessions.len() {
        std::thread::sleep(Duration::from_millis(10));
        let done = releaser.done();
        if done != last_count {
            (last_count, last_change, last_release) = (done, Instant::now(), Instant::now());
        } else if last_change.elapsed() > QUIET_LIMIT + kind_slack(kind) {
            push_error(
                &mut run.errors,
                format!(
                    "{name}: no release for {QUIET_LIMIT:?} with {done} of {} received",
                    sessions.len()
                ),
            );
            break;
        }
    }
    run.window = last_release.saturating_duration_since(setup_done);
    run.cpu = cpu_use(&ticks_before, &thread_ticks(), run.window);
    // Anything past n would be a second release of some session: give it a moment to show.
    std::thread::sleep(Duration::from_millis(200));
    peer.stop();
    let log = releaser.finish();

    if log.lost > 0 {
        push_error(
            &mut run.errors,
            format!("{name}: {} release reports never came", log.lost),
        );
    }
    let bad = log
        .released
        .iter()
        .filter(|(_, _, buffers)| *buffers != 1)
        .count();
    if bad > 0 {
        push_error(
            &mut run.errors,
            format!("{name}: {bad} releases freed other than one buffer"),
        );
    }
    check_once(
        &name,
        sessions.iter().copied(),
        log.released.iter().map(|r| r.0),
        &mut run.errors,
    );
    let now = pool.counters();
    if now != baseline {
        push_error(
            &mut run.errors,
            format!(
                "{name}: wgpu counters not at baseline after every release: {now:?} vs {baseline:?}"
            ),
        );
    }
    let after = pool.shutdown();
    if after != baseline {
        push_error(
            &mut run.errors,
            format!("{name}: after shutdown wgpu counters {after:?} (baseline {baseline:?})"),
        );
    }
    let released: Vec<Duration> = log.released.iter().map(|r| r.1).collect();
    run.due_during_setup = ttls.iter().filter(|&&t| started + t < setup_done).count();
    run.released = Summary::of(&released);
    run
}

/// A slow sweeper is silent for a whole period.
fn kind_slack(kind: PeerKind) -> Duration {
    match kind {
        PeerKind::Sweeper(period) => period,
        _ => Duration::ZERO,
    }
}

/// How the TTLs are drawn: uniform over `spread` from 1 s, plus `offset`.
#[derive(Clone, Copy)]
pub struct Ttls {
    pub offset: Duration,
    pub spread: Duration,
}

/// Runs every peer at every size; prints the table; returns the JSON and the errors.
pub fn run(
    tokio: &tokio::runtime::Runtime,
    sizes: &[usize],
    ttl: Ttls,
    peers: &[PeerKind],
    adapter: &mut String,
) -> (serde_json::Value, Vec<String>) {
    let mut results = Vec::new();
    for &n in sizes {
        let ttls: Vec<Duration> = ttl_draws(n, ttl.spread)
            .into_iter()
            .map(|t| t + ttl.offset)
            .collect();
        eprintln!("[expiry, {n} sessions] sessionbus…");
        let (bus, bus_adapter) = tokio.block_on(peer_sessionbus::expiry(&ttls, BUFFER_BYTES));
        if adapter.is_empty() {
            *adapter = bus_adapter;
        }
        let mut others = Vec::new();
        for &kind in peers {
            eprintln!("[expiry, {n} sessions] {}…", kind.name());
            others.push((kind, run_direct(tokio, kind, &ttls)));
        }
        results.push((n, bus, others));
    }

    println!();
    println!(
        "1. expiry: deadline → GPU memory released; {} KiB buffer per session, TTL uniform in {}–{} s",
        BUFFER_BYTES / 1024,
        TTL_MIN_US / 1_000_000 + ttl.offset.as_secs(),
        TTL_MIN_US / 1_000_000 + ttl.offset.as_secs() + ttl.spread.as_secs(),
    );
    println!(
        "{:>9} | {:<34} | {:>7} | {:>10} | {:>10} | {:>10} | {:>10} | {:>9} | {:>9}",
        "sessions", "peer", "n", "mean", "p50", "p99", "max", "p50 ×bus", "p99 ×bus"
    );
    println!("{}", "-".repeat(133));
    let mut errors = Vec::new();
    let mut json_sizes = Vec::new();
    for (n, bus, others) in &results {
        let row = |peer: &str, s: &Option<Summary>, ratios: Option<(f64, f64)>| match s {
            Some(s) => println!("{n:>9} | {peer:<34} | {}", summary_cells(s, ratios)),
            None => println!(
                "{n:>9} | {peer:<34} | {:>7} | {:>10} | {:>10} | {:>10} |",
                0, "-", "-", "-"
            ),
        };
        row("sessionbus", &bus.released, None);
        row("  timer only (fired - due)", &bus.timer, None);
        row("  fired → released", &bus.after_fire, None);
        let mut peers_json = serde_json::Map::new();
        peers_json.insert("sessionbus".into(), bus.json());
        let mut ratios_json = serde_json::Map::new();
        for (kind, r) in others {
            let ratios = ratios(&bus.released, &r.released);
            if let Some(why) = &r.skipped {
                println!("{n:>9} | {:<34} | skipped: {why}", kind.name());
            } else {
                row(&kind.name(), &r.released, ratios);
            }
            peers_json.insert(kind.key(), r.json());
            ratios_json.insert(kind.key(), common::ratios_json(ratios));
            errors.extend(r.errors.iter().cloned());
        }
        println!(
            "{:>9} | sessionbus set-up (open + allocate) {}, deadlines during set-up {}; timer fires {}, sessions per fire {:?}",
            "",
            show(bus.setup),
            bus.due_during_setup,
            bus.fires,
            bus.per_fire
        );
        println!(
            "{:>9} | sessionbus CPU after set-up: {}",
            "",
            cpu_line(&bus.cpu)
        );
        for (kind, r) in others {
            if r.skipped.is_none() {
                println!(
                    "{:>9} | {} CPU after set-up: {}",
                    "",
                    kind.name(),
                    cpu_line(&r.cpu)
                );
            }
        }
        println!("{}", "-".repeat(133));
        errors.extend(bus.errors.iter().cloned());
        json_sizes.push(json!({
            "sessions": n,
            "peers": peers_json,
            "ratio_peer_over_sessionbus": ratios_json,
        }));
    }
    let target = results
        .iter()
        .find(|(n, _, _)| *n == TARGET_SESSIONS)
        .and_then(|(_, bus, _)| bus.released);
    let verdict = p99_verdict(&target, TARGET_P99);
    println!(
        "notes: moka files per-entry expiry in its timer wheel, whose finest level spans ~1.07 s; \
         redis expires keys in its active cycle (hz 10, sampled) or on access; the 16 s sweeper's \
         phase is spread over its period (see peer_sweeper.rs)"
    );
    println!(
        "target: sessionbus p99 ≤ {} at {TARGET_SESSIONS} sessions: {verdict}",
        show(TARGET_P99)
    );
    let json = json!({
        "buffer_bytes": BUFFER_BYTES,
        "ttl_us": {
            "min": TTL_MIN_US + ttl.offset.as_micros() as u64,
            "max": TTL_MIN_US + (ttl.offset + ttl.spread).as_micros() as u64,
        },
        "seed": SEED,
        "sizes": json_sizes,
        "target": {
            "sessions": TARGET_SESSIONS,
            "p99_us": micros(TARGET_P99),
            "measured_p99_us": target.map(|s| micros(s.p99)),
            "met": target.map(|s| s.p99 <= TARGET_P99),
        },
    });
    (json, errors)
}
