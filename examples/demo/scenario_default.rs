//! The default scenario: clients chat, then close, disconnect, or stay until shutdown.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sessionbus::{Runtime, SessionHandle, SessionId, Turn};

use crate::percentiles::Percentiles;
use crate::report::{self, Books, Checks, row};
use crate::{Args, Demo};

/// What a client does once it has chatted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Close,
    Disconnect,
    StayUntilShutdown,
}

/// The default scenario's JSON report.
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    books: Books,
    kept_until_shutdown: usize,
    close_to_release_us: Percentiles,
    disconnect_to_release_us: Percentiles,
    shutdown_us: u64,
    errors: usize,
}

enum Outcome {
    Closed(Duration),
    Disconnected(SessionId, Instant),
    Kept(SessionHandle),
}

pub async fn run(demo: Demo, args: &Args) -> anyhow::Result<()> {
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

    let rt = &demo.rt;
    let errors = Mutex::new(Vec::<String>::new());
    let clients = futures::stream::iter(fates.into_iter().enumerate())
        .map(|(i, fate)| {
            let errors = &errors;
            let progress = progress.clone();
            let (turns, kv) = (args.turns, args.kv_bytes_per_turn);
            async move {
                let outcome = client(rt, i, fate, turns, kv).await;
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
        .collect::<Vec<_>>();
    let Some(outcomes) = demo.stop.unless_stopped(clients).await else {
        progress.abandon_with_message("stopped");
        return crate::interrupted::report(demo, args).await;
    };
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
    let disconnected: Vec<SessionId> = disconnected_at.iter().map(|(id, _)| *id).collect();
    demo.watch
        .until_released(&disconnected, Duration::from_secs(60))
        .await;
    let disconnect_us: Vec<u64> = {
        let seen = demo.watch.seen();
        disconnected_at
            .iter()
            .filter_map(|(id, at)| {
                seen.released_at
                    .get(id)
                    .map(|r| r.saturating_duration_since(*at).as_micros() as u64)
            })
            .collect()
    };

    let pool = demo.rt.pool_stats();
    let kept_count = kept.len();
    let end = demo.finish().await?;
    let (stop, seen) = (&end.stop, &end.seen);
    drop(kept);

    let double_ends = seen.double_ends();
    let errors = errors.into_inner().unwrap();
    let leaked = end.leak.buffers;
    let report = Report {
        books: Books::of(&end, &pool),
        kept_until_shutdown: kept_count,
        close_to_release_us: Percentiles::of(&close_us),
        disconnect_to_release_us: Percentiles::of(&disconnect_us),
        shutdown_us: stop.sessions.took.as_micros() as u64,
        errors: errors.len(),
    };

    print_human(&report, &errors);
    if args.json {
        report::print_json(&report)?;
    }
    let mut checks = Checks::default();
    checks.require(leaked == 0, "wgpu hal.buffers back at baseline");
    checks.require(double_ends == 0, "no session ended twice");
    checks.require(errors.is_empty(), "no client errors");
    checks.require(
        seen.ends.len() as u64 == stop.sessions.stats.opened,
        "every opened session ended",
    );
    checks.conclude()
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

fn print_human(r: &Report, errors: &[String]) {
    let books = &r.books;
    report::heading("sessionbus demo report", &books.adapter);
    row(
        "sessions",
        format!(
            "{} opened, {} ended, {} ended twice",
            books.sessions_opened, books.sessions_ended, books.double_ends
        ),
    );
    row("ended by", report::counts(&books.ended_by));
    row(
        "GPU buffers",
        format!(
            "{} allocated, {} released, peak {} bytes",
            books.gpu_buffers_allocated, books.gpu_buffers_released, books.gpu_bytes_peak
        ),
    );
    report::leak_row(books);
    report::latency_rows(&[
        ("close → released", &r.close_to_release_us),
        ("disconnect → released", &r.disconnect_to_release_us),
    ]);
    row(
        "shutdown",
        format!(
            "{} µs, incidents {}, errors {}",
            r.shutdown_us, books.incidents, r.errors
        ),
    );
    row("wall", format!("{} ms", books.wall_ms));
    report::print_errors(errors);
}
