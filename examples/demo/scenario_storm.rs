//! The storm scenario: a live population chats while a storm population of
//! sessions, each holding KV-cache buffers, disconnects all at once. Release
//! goes at the default load tiers, or at a fixed rate (`--release-rate`).
//! Reports the live messages' latency before and during the storm, the rate
//! release achieved, and when wgpu's counters were back at the live
//! population's level; then the usual checks after shutdown.

use std::time::Duration;

use serde::Serialize;
use sessionbus::config::Config;

use crate::percentiles::Percentiles;
use crate::report::{self, Books, Checks, row};
use crate::storm::{self, Plan, StormEnd};
use crate::{Args, Demo};

/// Live latency is measured this long before the storm.
const BEFORE: Duration = Duration::from_secs(1);

/// The storm scenario's JSON report.
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    books: Books,
    live_sessions: usize,
    storm_size: usize,
    storm_buffers: usize,
    storm_buffers_released: u64,
    storm_sessions_released: usize,
    /// Buffers per second; null: the load tiers.
    release_rate_configured: Option<u32>,
    release_burst: Option<u32>,
    /// Buffers per second.
    release_rate_achieved: Option<f64>,
    release_span_ms: f64,
    storm_to_release_us: Percentiles,
    release_queue_us: Percentiles,
    live_message_latency_us_before: Percentiles,
    live_message_latency_us_during: Percentiles,
    time_to_baseline_ms: Option<f64>,
    errors: usize,
}

/// A fixed release rate, if one was asked for; otherwise the default tiers.
pub fn configure(config: &mut Config, args: &Args) {
    if let Some(rate) = args.release_rate {
        config.release = storm::fixed_release(rate, args.turns);
    }
}

pub async fn run(demo: Demo, args: &Args) -> anyhow::Result<()> {
    let burst = args
        .release_rate
        .map(|rate| storm::fixed_release(rate, args.turns).tiers[0].burst);
    let plan = Plan {
        live: args.live,
        storm: args.storm_size,
        buffers: args.turns,
        buffer_bytes: args.kv_bytes_per_turn,
        before: BEFORE,
        end: StormEnd::Disconnect,
        burst: burst.map_or(0, u64::from),
    };
    if !args.json {
        println!(
            "{} live sessions chatting; {} sessions with {} × {} B each disconnect at once after {BEFORE:?}",
            plan.live, plan.storm, plan.buffers, plan.buffer_bytes
        );
    }
    let Some(outcome) = demo
        .stop
        .unless_stopped(storm::run(&demo.rt, &demo.watch, &plan))
        .await
    else {
        return crate::interrupted::report(demo, args).await;
    };
    let outcome = outcome?;
    let pool = demo.rt.pool_stats();
    let end = demo.finish().await?;
    // The live population ended with the shutdown, not by a dropped handle.
    drop(outcome.live);
    let (stop, seen) = (&end.stop, &end.seen);

    let double_ends = seen.double_ends();
    let leaked = end.leak.buffers;
    let errors = &outcome.errors;
    let report = Report {
        books: Books::of(&end, &pool),
        live_sessions: plan.live,
        storm_size: plan.storm,
        storm_buffers: plan.storm * plan.buffers,
        storm_buffers_released: outcome.released_buffers,
        storm_sessions_released: outcome.released_ok,
        release_rate_configured: args.release_rate,
        release_burst: burst,
        release_rate_achieved: outcome.achieved_rate.map(|r| r.round()),
        release_span_ms: outcome.release_span.as_secs_f64() * 1e3,
        storm_to_release_us: Percentiles::of(&outcome.release_us),
        release_queue_us: Percentiles::of(&outcome.paced_for_us),
        live_message_latency_us_before: Percentiles::of(&outcome.live_before_us),
        live_message_latency_us_during: Percentiles::of(&outcome.live_during_us),
        time_to_baseline_ms: outcome.time_to_baseline.map(|t| t.as_secs_f64() * 1e3),
        errors: errors.len(),
    };

    print_human(&report, errors);
    if args.json {
        report::print_json(&report)?;
    }
    let mut checks = Checks::default();
    checks.require(leaked == 0, "wgpu hal.buffers back at baseline");
    checks.require(double_ends == 0, "no session ended twice");
    checks.require(errors.is_empty(), "no errors in the storm or the live chat");
    checks.require(
        outcome.released_ok == plan.storm,
        "every storm session released whole",
    );
    checks.require(
        outcome.time_to_baseline.is_some(),
        "wgpu counters back at the live population's level after the storm",
    );
    checks.require(
        seen.ends.len() as u64 == stop.sessions.stats.opened,
        "every opened session ended",
    );
    checks.conclude()
}

fn print_human(r: &Report, errors: &[String]) {
    let books = &r.books;
    let or_null = |v: Option<f64>| v.map_or("null".to_string(), |v| v.to_string());
    report::heading("sessionbus storm report", &books.adapter);
    row(
        "storm",
        format!(
            "{} sessions, {} buffers, {} released",
            r.storm_size, r.storm_buffers, r.storm_buffers_released
        ),
    );
    let configured = match (r.release_rate_configured, r.release_burst) {
        (Some(rate), Some(burst)) => format!("{rate} buffers/s (burst {burst})"),
        _ => "the load tiers".to_string(),
    };
    row(
        "release rate",
        format!(
            "configured {configured}, achieved {} buffers/s over {:.1} ms",
            or_null(r.release_rate_achieved),
            r.release_span_ms
        ),
    );
    report::latency_rows(&[
        ("storm → released", &r.storm_to_release_us),
        ("in release queue", &r.release_queue_us),
        ("live msg before", &r.live_message_latency_us_before),
        ("live msg during", &r.live_message_latency_us_during),
    ]);
    row(
        "back to baseline",
        format!(
            "{} ms after the storm began",
            or_null(r.time_to_baseline_ms)
        ),
    );
    row("ended by", report::counts(&books.ended_by));
    report::leak_row(books);
    row(
        "errors",
        format!("{}, incidents {}", r.errors, books.incidents),
    );
    row("wall", format!("{} ms", books.wall_ms));
    report::print_errors(errors);
}
