//! The expiry scenario: a population of sessions that end on their own within
//! a few seconds (idle timeouts, TTLs, revoked remote leases), closes that
//! have to drain a token stream, and context resets along the way. Then the
//! same checks as ever: every session ended once, and wgpu's counters are
//! back at their baseline.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use sessionbus::config::Config;
use sessionbus::{EndReason, SessionId, State};

use crate::expiry_clients::{self, Client, Outcome, Plan};
use crate::percentiles::Percentiles;
use crate::report::{self, Books, Checks, row};
use crate::{Args, Demo};

/// Every session has ended by itself well before this (its TTL is at most 2 s).
const RELEASE_WAIT: Duration = Duration::from_secs(30);

/// The expiry scenario's JSON report.
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    books: Books,
    scenario: &'static str,
    never_released: usize,
    handles_not_closed: usize,
    /// Sessions per plan.
    plans: BTreeMap<&'static str, usize>,
    /// `{"plan → reason": n}`.
    unplanned_ends: BTreeMap<String, u64>,
    expiry_lateness_us: Percentiles,
    timer_lateness_us: Percentiles,
    context_resets: u64,
    context_resets_by: BTreeMap<&'static str, u64>,
    stale_verdicts: u64,
    leases_revoked: u64,
    drains: u64,
    drains_forced: u64,
    sweeps: u64,
    sweeper_incidents: u64,
    errors: usize,
}

/// The scenario's lease and sweeper timings, short enough to matter within
/// sessions that live for a second or two.
pub fn configure(config: &mut Config) {
    // Remote lease holders heartbeat every 50 ms and are revoked after three
    // silent intervals, so a dead worker costs its session 150-200 ms.
    config.leases.heartbeat_interval = std::time::Duration::from_secs_f64(0.05);
    config.leases.missed_heartbeats = 3;
    // An end waits this long at most for in-flight work; every client here
    // lets go long before.
    config.leases.drain_timeout = std::time::Duration::from_secs(1);
    // The safety net looks every 250 ms, so anything the events missed would
    // show up as a sweeper incident during the run.
    config.expiry.sweep_interval = std::time::Duration::from_secs_f64(0.25);
}

pub async fn run(demo: Demo, args: &Args) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let clients: Vec<Client> = (0..args.sessions)
        .map(|i| Client::draw(i, &mut rng))
        .collect();

    // Every client runs at once (arriving over half a second): the sessions'
    // clocks run side by side, as they would on a server.
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let engine = demo.rt.engine().clone();
            let kv_bytes = args.kv_bytes_per_turn;
            tokio::spawn(async move {
                expiry_clients::run(&engine, client, kv_bytes)
                    .await
                    .map_err(|e| format!("client {i}: {e:#}"))
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    let mut errors = Vec::new();
    let Some(finished) = demo
        .stop
        .unless_stopped(futures::future::join_all(tasks))
        .await
    else {
        return crate::interrupted::report(demo, args).await;
    };
    for task in finished {
        match task? {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => errors.push(e),
        }
    }

    // No client closes its session but the mid-stream closers: wait for the
    // engine to end and release every one of them.
    let ids: Vec<SessionId> = outcomes.iter().map(|o| o.id).collect();
    let never_released = demo.watch.until_released(&ids, RELEASE_WAIT).await;
    // What the application sees: every handle it still holds reads `closed`.
    let handles_not_closed = outcomes
        .iter()
        .filter(|o| o.handle.state() != State::Closed)
        .count();

    let pool = demo.rt.pool_stats();
    let end = demo.finish().await?;
    let (stop, seen) = (&end.stop, &end.seen);
    let stats = &stop.sessions.stats;
    let double_ends = seen.double_ends();
    let stale_verdicts: u64 = outcomes.iter().map(|o| o.stale_verdicts).sum();
    let unplanned = unplanned_ends(&outcomes, &seen.ends);

    let report = Report {
        books: Books::of(&end, &pool),
        scenario: "expiry",
        never_released,
        handles_not_closed,
        plans: plans(&outcomes),
        unplanned_ends: unplanned,
        expiry_lateness_us: Percentiles::of(&seen.expiry_lateness_us),
        timer_lateness_us: Percentiles::of(&seen.timer_lateness_us),
        context_resets: seen.context_reset_count(),
        context_resets_by: seen.context_resets.clone(),
        stale_verdicts,
        leases_revoked: stats.leases_revoked,
        drains: seen.drains,
        drains_forced: seen.drains_forced,
        sweeps: stats.sweeps,
        sweeper_incidents: stats.sweeper_incidents,
        errors: errors.len(),
    };

    if args.json {
        report::print_json(&report)?;
    } else {
        print_summary(&report, &errors);
    }
    let mut checks = Checks::default();
    checks.require(
        seen.ends.len() as u64 == stats.opened && double_ends == 0,
        "every opened session ended exactly once",
    );
    checks.require(
        never_released == 0 && handles_not_closed == 0 && stop.sessions.sessions_ended == 0,
        "every session was released before shutdown",
    );
    checks.require(
        end.leak.buffers == 0 && end.leak.bytes == 0,
        "wgpu hal.buffers and hal.buffer_memory back at baseline",
    );
    checks.require(
        stale_verdicts == seen.context_reset_count() && stale_verdicts == stats.context_resets,
        "every stale verdict published one context reset",
    );
    checks.require(stats.sweeper_incidents == 0, "the sweeper found nothing");
    checks.require(stats.incidents == 0, "no incidents");
    checks.require(stop.bus_undelivered == 0, "the bus delivered every event");
    checks.require(errors.is_empty(), "no client errors");
    checks.conclude()
}

/// Sessions per plan.
fn plans(outcomes: &[Outcome]) -> BTreeMap<&'static str, usize> {
    Plan::ALL
        .iter()
        .map(|plan| {
            let n = outcomes.iter().filter(|o| o.plan == *plan).count();
            (plan.as_str(), n)
        })
        .collect()
}

/// Sessions that ended otherwise than their plan says, as `{"plan → reason": n}`.
/// Timing decides some ends (a worker's heartbeat delayed past revocation on
/// a loaded machine ends its session as `lease_lost`), so this is reported,
/// not an invariant.
fn unplanned_ends(
    outcomes: &[Outcome],
    ends: &HashMap<SessionId, Vec<EndReason>>,
) -> BTreeMap<String, u64> {
    let mut unplanned = BTreeMap::new();
    for outcome in outcomes {
        let ended = ends.get(&outcome.id).and_then(|reasons| reasons.first());
        if ended != Some(&outcome.plan.expected_end()) {
            let ended = ended.map_or("nothing", |r| r.as_str());
            let key = format!("{} → {ended}", outcome.plan.as_str());
            *unplanned.entry(key).or_default() += 1;
        }
    }
    unplanned
}

fn print_summary(r: &Report, errors: &[String]) {
    let books = &r.books;
    let unplanned: u64 = r.unplanned_ends.values().sum();
    report::heading("sessionbus demo report: expiry", &books.adapter);
    row(
        "sessions",
        format!(
            "{} opened, {} ended, {} ended twice, {} never released",
            books.sessions_opened, books.sessions_ended, books.double_ends, r.never_released
        ),
    );
    row("ended by", report::counts(&books.ended_by));
    if unplanned == 0 {
        row("as planned", "every session");
    } else {
        let detail = report::counts(&r.unplanned_ends);
        row("not as planned", format!("{unplanned}: {detail} (timing)"));
    }
    // Includes any wait for leases: a remote worker lets go on its next heartbeat.
    row("deadline → released", r.expiry_lateness_us);
    row("timer lateness", r.timer_lateness_us);
    row(
        "context resets",
        format!(
            "{} ({})",
            r.context_resets,
            report::counts(&r.context_resets_by)
        ),
    );
    row(
        "leases",
        format!(
            "{} revoked (each logged as lease.revoked); {} ends drained leases, {} forced",
            r.leases_revoked, r.drains, r.drains_forced
        ),
    );
    row(
        "sweeper",
        format!(
            "{} passes, {} incidents; incidents {}, errors {}",
            r.sweeps, r.sweeper_incidents, books.incidents, r.errors
        ),
    );
    row(
        "wgpu hal",
        format!(
            "buffers {} → {}, memory {} → {} bytes: leaked {} buffers, {} bytes",
            books.wgpu_hal_buffers_baseline,
            books.wgpu_hal_buffers_after,
            books.wgpu_hal_buffer_memory_baseline,
            books.wgpu_hal_buffer_memory_after,
            books.leaked_buffers,
            books.leaked_bytes
        ),
    );
    row("wall", format!("{} ms", books.wall_ms));
    report::print_errors(errors);
}
