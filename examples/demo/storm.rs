//! A destroy storm next to live traffic: the moving parts that the `storm`
//! scenario and `benches/stress_tiers.rs` share (the bench includes this file
//! by path, so both measure the same thing the same way).
//!
//! One run: a live population chats (a turn, and the turn's slice of KV cache
//! allocated, every [`LIVE_TURN_INTERVAL`]), a storm population holds buffers; after a
//! quiet stretch every storm session ends at once (handles dropped, or closed
//! concurrently) while the live population keeps chatting. The run records
//! each live message's round trip, each storm release, and when wgpu's
//! counters are back where the live population alone keeps them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use sessionbus::{AllocationId, ReleaseReceipt, Runtime, SessionHandle, SessionId, Turn};

use crate::watch::Watch;

/// How often each live session sends a message.
pub const LIVE_TURN_INTERVAL: Duration = Duration::from_millis(50);
/// The KV cache one live turn adds: small, so that a live population chatting
/// for seconds stays far below the storm's memory.
const LIVE_TURN_BYTES: u64 = 4 * 1024;
/// How much of a fixed rate may go at once (see [`fixed_release`]).
const BURST_WINDOW: Duration = Duration::from_millis(20);
/// Sessions being opened (and allocated) at once while the populations are set up.
const SETUP_CONCURRENCY: usize = 256;
/// Longest wait for the storm's releases before the run counts them missing.
const RELEASE_LIMIT: Duration = Duration::from_secs(60);

/// How the storm population ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StormEnd {
    /// Every handle dropped at once: a mass disconnect (reason `disconnected`).
    Disconnect,
    /// `close()` on every session concurrently (reason `closed`).
    #[allow(dead_code)] // the bench's tiers close; the demo disconnects
    Close,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Live chatting sessions.
    pub live: usize,
    /// Sessions that end in the storm.
    pub storm: usize,
    /// Buffers each storm session holds, and their size.
    pub buffers: usize,
    pub buffer_bytes: u64,
    /// How long live latency is measured before the storm.
    pub before: Duration,
    pub end: StormEnd,
    /// Buffers the release limiter may let go at once (its burst; 0 when
    /// release follows the load tiers): see [`achieved_rate`].
    pub burst: u64,
}

/// What a run measured.
pub struct Outcome {
    /// Live message round trips (µs) that started in the quiet stretch before the storm.
    pub live_before_us: Vec<u64>,
    /// Those that started between the storm and its last release.
    pub live_during_us: Vec<u64>,
    /// Per storm session: storm start → its buffers destroyed and the device polled (µs).
    pub release_us: Vec<u64>,
    /// Per storm session: time its release spent in the release queue (µs).
    pub paced_for_us: Vec<u64>,
    /// Buffers the storm's receipts say were destroyed.
    pub released_buffers: u64,
    /// Storm sessions released whole: a receipt without error, every buffer destroyed.
    pub released_ok: usize,
    /// See [`achieved_rate`].
    pub achieved_rate: Option<f64>,
    /// First storm release → last.
    pub release_span: Duration,
    /// Storm start → wgpu's counters back at what the live population alone
    /// holds: its level before the storm population opened, plus what live
    /// turns allocated since (`None` if they never got there).
    pub time_to_baseline: Option<Duration>,
    /// Failed opens, live messages, closes and releases; ends of the wrong reason.
    pub errors: Vec<String>,
    /// The live population, still live: the caller ends it.
    pub live: Vec<SessionHandle>,
}

/// Buffers released per second over the paced part of a storm: the buffers
/// released, less what went at the very start (the limiter's `burst`, or the
/// first release's buffers if that is more), over the time from the first
/// release to the last (`released_at` of the receipts). A token bucket lets
/// `burst` go at once and then `rate` a second, so for a paced storm this is
/// the rate the limiter held. `None` with fewer than two releases or a zero span.
pub fn achieved_rate(releases: &[(Instant, u64)], burst: u64) -> Option<f64> {
    let first = releases.iter().min_by_key(|(at, _)| *at)?;
    let last = releases.iter().map(|(at, _)| *at).max()?;
    let span = last.saturating_duration_since(first.0).as_secs_f64();
    let total: u64 = releases.iter().map(|(_, b)| b).sum();
    let paced = total.saturating_sub(burst.max(first.1));
    (releases.len() > 1 && span > 0.0).then(|| paced as f64 / span)
}

/// Opens `count` sessions owned by `{prefix}-{i}`, each holding `buffers`
/// buffers of `bytes`; the allocation ids come back with each handle.
pub async fn open_population(
    rt: &Runtime,
    prefix: &str,
    count: usize,
    buffers: usize,
    bytes: u64,
) -> anyhow::Result<Vec<(SessionHandle, Vec<AllocationId>)>> {
    futures::stream::iter(0..count)
        .map(|i| async move {
            let session = rt.open(format!("{prefix}-{i}")).await?;
            let mut ids = Vec::with_capacity(buffers);
            for _ in 0..buffers {
                ids.push(session.allocate(bytes).await?.id);
            }
            anyhow::Ok((session, ids))
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .enumerate()
        .map(|(i, opened)| opened.with_context(|| format!("opening {prefix} session {i}")))
        .collect()
}

/// One message's round trip: when it was sent, and how long until both
/// answers were back.
type Sample = (Instant, Duration);

/// What a live client hands back when it stops: its session, its round
/// trips, and the error that stopped it early, if one did.
type ClientEnd = (SessionHandle, Vec<Sample>, Option<String>);

/// The live population's clients, each on a task of its own.
struct LiveChat {
    stop: Arc<AtomicBool>,
    /// Live turns' allocations asked for so far (counted before each is sent,
    /// so one in flight counts as live memory already).
    allocating: Arc<AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<ClientEnd>>,
}

impl LiveChat {
    async fn start(rt: &Runtime, count: usize) -> anyhow::Result<LiveChat> {
        let opened = open_population(rt, "live", count, 0, 0).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let allocating = Arc::new(AtomicU64::new(0));
        let clients = opened
            .into_iter()
            .enumerate()
            .map(|(i, (session, _))| {
                // Spread the clients' turns evenly over the interval.
                let phase = LIVE_TURN_INTERVAL.mul_f64(i as f64 / count as f64);
                tokio::spawn(chat(session, phase, stop.clone(), allocating.clone()))
            })
            .collect();
        Ok(LiveChat {
            stop,
            allocating,
            clients,
        })
    }

    async fn stop(self) -> (Vec<SessionHandle>, Vec<Sample>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut handles, mut samples, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for client in self.clients {
            match client.await {
                Ok((session, mine, error)) => {
                    handles.push(session);
                    samples.extend(mine);
                    errors.extend(error);
                }
                Err(e) => errors.push(format!("live client task: {e}")),
            }
        }
        (handles, samples, errors)
    }
}

/// A live user: a turn, then the turn's KV cache allocated, as a chat backend
/// does; one message every `LIVE_TURN_INTERVAL`.
async fn chat(
    session: SessionHandle,
    phase: Duration,
    stop: Arc<AtomicBool>,
    allocating: Arc<AtomicU64>,
) -> ClientEnd {
    let mut samples = Vec::new();
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + phase, LIVE_TURN_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let sent = Instant::now();
        let answered = async {
            session.chat(Turn::default()).await?;
            allocating.fetch_add(1, Ordering::Relaxed);
            session.allocate(LIVE_TURN_BYTES).await
        }
        .await;
        if let Err(e) = answered {
            return (session, samples, Some(format!("live message: {e}")));
        }
        samples.push((sent, sent.elapsed()));
    }
    (session, samples, None)
}

/// Runs one storm (see the module docs).
/// `watch` must have been subscribed before the storm (it reads the receipts).
pub async fn run(rt: &Runtime, watch: &Watch, plan: &Plan) -> anyhow::Result<Outcome> {
    // What the live population holds: nothing at first, then its turns'
    // allocations (counted as they are asked for). The storm must give back
    // everything else.
    let live_baseline = rt.gpu_counters().expect("the runtime's own wgpu pool");
    let live = LiveChat::start(rt, plan.live).await?;
    let storm = open_population(rt, "storm", plan.storm, plan.buffers, plan.buffer_bytes).await?;
    let storm_ids: HashSet<SessionId> = storm.iter().map(|(s, _)| s.id()).collect();

    let quiet_from = Instant::now();
    tokio::time::sleep(plan.before).await;

    let storm_at = Instant::now();
    let closes = match plan.end {
        StormEnd::Disconnect => {
            drop(storm);
            None
        }
        StormEnd::Close => Some(tokio::spawn(async move {
            let closes = storm.iter().map(|(s, _)| s.close());
            futures::future::join_all(closes).await
        })),
    };

    let mut errors = Vec::new();
    let mut time_to_baseline = None;
    let mut got = 0;
    while storm_at.elapsed() < RELEASE_LIMIT {
        let live_turns = live.allocating.load(Ordering::Relaxed) as i64;
        let storm_left = rt
            .gpu_counters()
            .expect("the runtime's own wgpu pool")
            .buffers
            - live_baseline.buffers
            - live_turns;
        if time_to_baseline.is_none() && storm_left <= 0 {
            time_to_baseline = Some(storm_at.elapsed());
        }
        // The receipts follow the buffers; looking them up only once the
        // buffers are gone keeps this loop off the CPU the storm is using.
        if time_to_baseline.is_some() {
            got = receipts_of(watch, &storm_ids).len();
            if got == storm_ids.len() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if got < storm_ids.len() {
        errors.push(format!(
            "{} of {} storm sessions not released within {RELEASE_LIMIT:?}",
            storm_ids.len() - got,
            storm_ids.len()
        ));
    }
    if let Some(closes) = closes {
        for result in closes.await? {
            if let Err(e) = result {
                errors.push(format!("storm close: {e}"));
            }
        }
    }

    let storm_receipts = receipts_of(watch, &storm_ids);
    let expected_reason = match plan.end {
        StormEnd::Disconnect => sessionbus::EndReason::Disconnected,
        StormEnd::Close => sessionbus::EndReason::Closed,
    };
    let mut released_ok = 0;
    for r in &storm_receipts {
        if r.error.is_none() && r.buffers == plan.buffers as u64 {
            released_ok += 1;
        }
        if let Some(e) = &r.error {
            errors.push(format!("release of {}: {e}", r.id));
        } else if r.buffers != plan.buffers as u64 {
            errors.push(format!(
                "release of {}: {} of {} buffers",
                r.id, r.buffers, plan.buffers
            ));
        }
        if r.reason != expected_reason {
            errors.push(format!(
                "{} ended as {}, not {expected_reason}",
                r.id, r.reason
            ));
        }
    }
    let last_release = storm_receipts
        .iter()
        .map(|r| r.released_at)
        .max()
        .unwrap_or(storm_at);
    let first_release = storm_receipts
        .iter()
        .map(|r| r.released_at)
        .min()
        .unwrap_or(storm_at);
    let releases: Vec<(Instant, u64)> = storm_receipts
        .iter()
        .map(|r| (r.released_at, r.buffers))
        .collect();

    let (live, samples, live_errors) = live.stop().await;
    errors.extend(live_errors);
    let window = |from: Instant, to: Instant| -> Vec<u64> {
        samples
            .iter()
            .filter(|(sent, _)| *sent >= from && *sent < to)
            .map(|(_, took)| took.as_micros() as u64)
            .collect()
    };
    let micros_since = |at: Instant| at.saturating_duration_since(storm_at).as_micros() as u64;
    Ok(Outcome {
        live_before_us: window(quiet_from, storm_at),
        live_during_us: window(storm_at, last_release),
        release_us: storm_receipts
            .iter()
            .map(|r| micros_since(r.released_at))
            .collect(),
        paced_for_us: storm_receipts
            .iter()
            .map(|r| r.paced_for.as_micros() as u64)
            .collect(),
        released_buffers: releases.iter().map(|(_, b)| b).sum(),
        released_ok,
        achieved_rate: achieved_rate(&releases, plan.burst),
        release_span: last_release.saturating_duration_since(first_release),
        time_to_baseline,
        errors,
        live,
    })
}

/// The receipts `watch` has seen of the sessions in `ids`.
fn receipts_of(watch: &Watch, ids: &HashSet<SessionId>) -> Vec<Arc<ReleaseReceipt>> {
    let seen = watch.seen();
    ids.iter()
        .filter_map(|id| seen.receipts.get(id).cloned())
        .collect()
}

/// A fixed release rate of `rate` buffers a second, as the storm scenario and
/// the bench configure it. The burst is `BURST_WINDOW` worth of the rate (at
/// least one session's `buffers`): the pacer sleeps on tokio's timer, which
/// wakes on 1 ms ticks and, on a busy machine, later; tokens that accrue
/// beyond the burst while it sleeps are lost, and release falls below the rate.
pub fn fixed_release(rate: u32, buffers: usize) -> sessionbus::config::ReleaseConfig {
    let window = BURST_WINDOW.as_secs_f64();
    let burst = ((f64::from(rate) * window) as u32)
        .max(buffers as u32)
        .max(1);
    sessionbus::config::ReleaseConfig::fixed(sessionbus::config::PaceUnit::Buffers, rate, burst, 64)
}
