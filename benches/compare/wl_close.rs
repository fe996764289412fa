//! Workload 2: explicit close → GPU memory released, one close at a time,
//! while a population of other sessions stays live. sessionbus: `close()` to
//! `ReleaseReceipt::released_at`. Peers: taking the session out of the store
//! (map remove, cache remove, task abort, `DEL`) and releasing its buffers
//! through their pool, to `ReleaseReport::finished_at`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use sessionbus::{OpenOptions, SessionId};

use super::common::{self, *};
use super::direct::{self, Peer, PeerKind, allocate, release_now};
use super::peer_sessionbus;
use sessionbus::pool::WgpuPool;

/// The sessions being closed hold this many buffers of this size.
pub const BUFFERS: usize = 4;
pub const BUFFER_BYTES: u64 = 64 * 1024;
/// The live population holds one small buffer each.
const LIVE_BYTES: u64 = 4 * 1024;
/// Far beyond the run: nothing expires on its own here.
const FAR: Duration = Duration::from_secs(3_600);
pub const TARGET_P99: Duration = Duration::from_millis(1);

#[derive(Default)]
pub struct CloseRun {
    pub released: Option<Summary>,
    pub skipped: Option<String>,
    pub errors: Vec<String>,
}

async fn sessionbus(live: usize, closes: usize) -> CloseRun {
    let mut run = CloseRun::default();
    let rt = match peer_sessionbus::start(live + closes, false).await {
        Ok(rt) => rt,
        Err(e) => {
            run.errors.push(e);
            return run;
        }
    };
    let baseline = rt.gpu_counters().expect("the runtime's own wgpu pool");
    let population = peer_sessionbus::open_many(&rt, "live", live, 1, LIVE_BYTES).await;
    let mut samples = Vec::with_capacity(closes);
    for i in 0..closes {
        let opened = peer_sessionbus::open_with_buffers(
            &rt,
            OpenOptions::new(format!("closed-{i}")),
            BUFFERS,
            BUFFER_BYTES,
        )
        .await;
        let session = match opened {
            Ok(s) => s,
            Err(e) => {
                push_error(&mut run.errors, format!("sessionbus: {e}"));
                continue;
            }
        };
        let asked = Instant::now();
        match session.close().await {
            Ok(receipt) if receipt.buffers == BUFFERS as u64 && receipt.error.is_none() => {
                samples.push(receipt.released_at.saturating_duration_since(asked));
            }
            Ok(receipt) => push_error(
                &mut run.errors,
                format!(
                    "sessionbus: close freed {} buffers, error {:?}",
                    receipt.buffers, receipt.error
                ),
            ),
            Err(e) => push_error(&mut run.errors, format!("sessionbus: close: {e}")),
        }
    }
    for session in population {
        match session {
            Ok(s) => {
                if let Err(e) = s.close().await {
                    push_error(
                        &mut run.errors,
                        format!("sessionbus: close of the population: {e}"),
                    );
                }
            }
            Err(e) => push_error(&mut run.errors, format!("sessionbus: population: {e}")),
        }
    }
    peer_sessionbus::finish(rt, baseline, &mut run.errors).await;
    run.released = Summary::of(&samples);
    run
}

/// A session in a direct peer's store holding `buffers` buffers of `bytes`.
pub async fn open_direct(
    pool: &WgpuPool,
    peer: &Peer,
    buffers: usize,
    bytes: u64,
) -> Result<SessionId, String> {
    let session = SessionId::random();
    for _ in 0..buffers {
        allocate(pool, session, bytes).await?;
    }
    peer.insert(session, Instant::now() + FAR).await?;
    Ok(session)
}

/// A direct peer's explicit close: out of the store, then its buffers
/// released through the pool; the time from `asked` to the memory being back.
pub async fn close_direct(
    pool: &WgpuPool,
    peer: &Peer,
    session: SessionId,
    buffers: u64,
    asked: Instant,
) -> Result<Duration, String> {
    if !peer.remove(session).await? {
        return Err("not in the store".into());
    }
    let report = release_now(pool, session).await?;
    if report.buffers != buffers {
        return Err(format!("freed {} buffers of {buffers}", report.buffers));
    }
    Ok(report.finished_at.saturating_duration_since(asked))
}

fn direct(tokio: &tokio::runtime::Runtime, kind: PeerKind, live: usize, closes: usize) -> CloseRun {
    let mut run = CloseRun::default();
    let name = kind.name();
    let Some(started) = direct::start(kind, &mut run.skipped, &mut run.errors) else {
        return run;
    };
    let (pool, baseline, releaser, peer) = started.into_parts();
    let mut samples = Vec::with_capacity(closes);
    tokio.block_on(async {
        let population: Vec<Result<SessionId, String>> = futures::stream::iter(0..live)
            .map(|_| {
                let (pool, peer) = (&pool, &peer);
                async move {
                    let session = SessionId::random();
                    allocate(pool, session, LIVE_BYTES).await?;
                    peer.insert(session, Instant::now() + FAR).await?;
                    Ok(session)
                }
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .collect()
            .await;
        let close = async |session: SessionId, buffers: u64| {
            close_direct(&pool, &peer, session, buffers, Instant::now()).await
        };
        for _ in 0..closes {
            let result = match open_direct(&pool, &peer, BUFFERS, BUFFER_BYTES).await {
                Ok(session) => close(session, BUFFERS as u64).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(took) => samples.push(took),
                Err(e) => push_error(&mut run.errors, format!("{name}: close: {e}")),
            }
        }
        for session in population {
            if let Err(e) = async { close(session?, 1).await }.await {
                push_error(&mut run.errors, format!("{name}: population: {e}"));
            }
        }
    });
    peer.stop();
    let log = releaser.finish();
    if !log.released.is_empty() {
        push_error(
            &mut run.errors,
            format!(
                "{name}: {} sessions expired during the close run",
                log.released.len()
            ),
        );
    }
    let after = pool.shutdown();
    if after != baseline {
        push_error(
            &mut run.errors,
            format!("{name}: wgpu counters {after:?} after the run (baseline {baseline:?})"),
        );
    }
    run.released = Summary::of(&samples);
    run
}

pub fn run(
    tokio: &tokio::runtime::Runtime,
    live: usize,
    closes: usize,
    peers: &[PeerKind],
) -> (serde_json::Value, Vec<String>) {
    eprintln!("[close, {live} live] sessionbus…");
    let bus = tokio.block_on(sessionbus(live, closes));
    let mut others = Vec::new();
    for &kind in peers {
        eprintln!("[close, {live} live] {}…", kind.name());
        others.push((kind, direct(tokio, kind, live, closes)));
    }
    println!();
    println!(
        "2. explicit close → GPU memory released; {closes} closes one at a time, {BUFFERS} × {} KiB each, {live} other sessions live",
        BUFFER_BYTES / 1024
    );
    println!(
        "{:<34} | {:>7} | {:>10} | {:>10} | {:>10} | {:>10} | {:>9} | {:>9}",
        "peer", "n", "mean", "p50", "p99", "max", "p50 ×bus", "p99 ×bus"
    );
    println!("{}", "-".repeat(120));
    let row = |peer: &str, r: &CloseRun, ratios: Option<(f64, f64)>| {
        if let Some(why) = &r.skipped {
            println!("{peer:<34} | skipped: {why}");
            return;
        }
        match &r.released {
            Some(s) => println!("{peer:<34} | {}", summary_cells(s, ratios)),
            None => println!("{peer:<34} | {:>7} | no samples", 0),
        }
    };
    row("sessionbus", &bus, None);
    let mut errors = bus.errors.clone();
    let mut peers_json = serde_json::Map::new();
    peers_json.insert(
        "sessionbus".into(),
        json!({"close_to_released": summary_json(&bus.released), "errors": bus.errors}),
    );
    let mut ratios_json = serde_json::Map::new();
    for (kind, r) in &others {
        let ratios = ratios(&bus.released, &r.released);
        row(&kind.name(), r, ratios);
        peers_json.insert(
            kind.key(),
            json!({"close_to_released": summary_json(&r.released), "skipped": r.skipped, "errors": r.errors}),
        );
        ratios_json.insert(kind.key(), common::ratios_json(ratios));
        errors.extend(r.errors.iter().cloned());
    }
    let verdict = p99_verdict(&bus.released, TARGET_P99);
    println!(
        "target: sessionbus close → released p99 ≤ {}: {verdict}",
        show(TARGET_P99)
    );
    let json = json!({
        "live_sessions": live,
        "closes": closes,
        "buffers_per_session": BUFFERS,
        "buffer_bytes": BUFFER_BYTES,
        "peers": peers_json,
        "ratio_peer_over_sessionbus": ratios_json,
        "target": {"p99_us": micros(TARGET_P99), "met": bus.released.map(|s| s.p99 <= TARGET_P99)},
    });
    (json, errors)
}
