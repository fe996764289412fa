//! Destroy storms by tier (issue 4), next to the field report's table.
//!
//! 1. **Tiers**, unthrottled (the default release tiers): 50 / 200 / 500 /
//!    2000 sessions, each holding 8 × 64 KiB real wgpu buffers, closed
//!    concurrently; per destroy, `close()` → buffers destroyed and the device
//!    polled (`ReleaseReceipt::released_at`), average and p99, and the share
//!    that failed. Several rounds per tier on one runtime.
//! 2. **Paced**: a mass disconnect of 2000 such sessions at fixed release
//!    rates; the rate configured next to the rate achieved (as the storm demo
//!    defines it: `examples/demo/storm.rs`, `achieved_rate`).
//! 3. **Live traffic**: in every storm of part 2, and in an unthrottled one,
//!    200 live sessions chat (a turn and an allocation every 50 ms each);
//!    their message p99 before the storm next to the p99 during it.
//!
//! Targets: 0 errors at every tier; 500 destroys all released within 50 ms
//! unthrottled; achieved rate within ±5 % of the configured one; live p99
//! during a storm at most 2× the p99 before it. Each is printed PASS or MISS.
//! The storms themselves are the demo's (`storm.rs`, included by path), so the
//! bench and `--scenario storm` measure the same thing.
//!
//! ```text
//! cargo bench -p sessionbus-benches --bench stress_tiers
//! cargo bench -p sessionbus-benches --bench stress_tiers -- --rounds 10 --rates 5000,20000 --json storms.json
//! cargo bench -p sessionbus-benches --bench stress_tiers -- --config tiers.toml   # other release tiers
//! ```

#[path = "compare/common.rs"]
#[allow(dead_code)] // the comparison's shared helpers; this bench uses a few
mod common;
#[path = "compare/field_report.rs"]
mod field_report;
#[path = "../examples/demo/storm.rs"]
#[allow(dead_code)] // the demo reports a few fields this bench does not
mod storm;
#[path = "../examples/demo/watch.rs"]
#[allow(dead_code)] // the demo's bus watch; the storms read its receipts
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use sessionbus::Runtime;
use sessionbus::config::Config;

use common::{Summary, describe_adapter, machine, show, summary_json};
use field_report::{TIERS, field};
use storm::{Outcome, Plan, StormEnd};
use watch::Watch;

const BUFFERS: usize = 8;
const BUFFER_BYTES: u64 = 64 * 1024;
/// The storm of parts 2 and 3.
const STORM: usize = 2000;
const LIVE: usize = 200;
/// Live latency measured before each storm of parts 2 and 3.
const BEFORE: Duration = Duration::from_secs(1);
/// The unthrottled target: this many destroys, all released within this long.
const FAST_TIER: usize = 500;
const FAST_WITHIN: Duration = Duration::from_millis(50);
const RATE_TOLERANCE: f64 = 0.05;
const LIVE_P99_FACTOR: f64 = 2.0;

struct Args {
    /// A TOML configuration for the unthrottled runs (default: the embedded
    /// defaults), to try other release tiers.
    config: Option<PathBuf>,
    rounds: usize,
    rates: Vec<u32>,
    json: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        config: None,
        rounds: 5,
        rates: vec![5_000, 20_000, 100_000],
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => args.rounds = it.next().and_then(|n| n.parse().ok()).unwrap_or(5),
            "--rates" => {
                args.rates = it
                    .next()
                    .map(|r| r.split(',').filter_map(|r| r.parse().ok()).collect())
                    .unwrap_or_default()
            }
            "--json" => args.json = it.next().map(PathBuf::from),
            "--config" => args.config = it.next().map(PathBuf::from),
            // Anything else (`--bench` from cargo, filters) is ignored.
            _ => {}
        }
    }
    args
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn summary_of(micros: &[u64]) -> Option<Summary> {
    let samples: Vec<Duration> = micros.iter().map(|us| Duration::from_micros(*us)).collect();
    Summary::of(&samples)
}

/// Starts a runtime with `config`, runs `storms` on it, shuts it down and
/// checks wgpu's counters are back at their baseline.
async fn on_runtime<T>(
    config: Config,
    errors: &mut Vec<String>,
    storms: impl AsyncFnOnce(&Runtime, &Watch, &mut Vec<String>) -> T,
) -> anyhow::Result<T> {
    let rt = Runtime::start(config).await?;
    let baseline = rt.gpu_counters().expect("the runtime's own wgpu pool");
    let watch = Watch::subscribe(&rt).await?;
    let result = storms(&rt, &watch, errors).await;
    let stop = rt.shutdown().await;
    if stop.gpu_after.expect("wgpu counters") != baseline {
        errors.push(format!(
            "wgpu counters {:?} after shutdown (baseline {baseline:?})",
            stop.gpu_after.expect("wgpu counters")
        ));
    }
    Ok(result)
}

/// One storm; its live population disconnects when the outcome is dropped.
async fn one_storm(
    rt: &Runtime,
    watch: &Watch,
    plan: &Plan,
    errors: &mut Vec<String>,
) -> anyhow::Result<Outcome> {
    let mut outcome = storm::run(rt, watch, plan).await?;
    errors.append(&mut outcome.errors);
    Ok(outcome)
}

/// Part 1: per tier, every round's destroys.
struct TierRow {
    tier: usize,
    destroys: usize,
    failed: usize,
    latency: Option<Summary>,
    /// The slowest round's last release.
    worst_round: Duration,
}

async fn tiers(
    rt: &Runtime,
    watch: &Watch,
    rounds: usize,
    errors: &mut Vec<String>,
) -> anyhow::Result<Vec<TierRow>> {
    let mut rows = Vec::new();
    for tier in TIERS {
        eprintln!("[stress_tiers] {tier} concurrent destroys × {rounds} rounds…");
        let plan = Plan {
            live: 0,
            storm: tier,
            buffers: BUFFERS,
            buffer_bytes: BUFFER_BYTES,
            before: Duration::ZERO,
            end: StormEnd::Close,
            burst: 0,
        };
        let (mut all, mut failed, mut worst) = (Vec::new(), 0, Duration::ZERO);
        for _ in 0..rounds {
            let outcome = one_storm(rt, watch, &plan, errors).await?;
            failed += tier - outcome.released_ok;
            let last = outcome.release_us.iter().copied().max().unwrap_or(0);
            worst = worst.max(Duration::from_micros(last));
            all.extend(outcome.release_us);
        }
        rows.push(TierRow {
            tier,
            destroys: tier * rounds,
            failed,
            latency: summary_of(&all),
            worst_round: worst,
        });
    }
    Ok(rows)
}

/// Parts 2 and 3: a mass disconnect next to live chat.
struct StormRow {
    rate: Option<u32>,
    achieved: Option<f64>,
    span: Duration,
    before: Option<Summary>,
    during: Option<Summary>,
    to_baseline: Option<Duration>,
}

impl StormRow {
    fn rate_ok(&self) -> Option<bool> {
        let rate = f64::from(self.rate?);
        Some(
            self.achieved
                .is_some_and(|a| (a - rate).abs() <= RATE_TOLERANCE * rate),
        )
    }

    fn live_ratio(&self) -> Option<f64> {
        Some(common::ratio(self.during?.p99, self.before?.p99))
    }
}

async fn live_storm(
    rt: &Runtime,
    watch: &Watch,
    rate: Option<u32>,
    errors: &mut Vec<String>,
) -> anyhow::Result<StormRow> {
    eprintln!(
        "[stress_tiers] {STORM} disconnects next to {LIVE} live sessions, release {}…",
        rate.map_or("unthrottled".into(), |r| format!("at {r} buffers/s"))
    );
    let plan = Plan {
        live: LIVE,
        storm: STORM,
        buffers: BUFFERS,
        buffer_bytes: BUFFER_BYTES,
        before: BEFORE,
        end: StormEnd::Disconnect,
        burst: rate.map_or(0, |r| {
            u64::from(storm::fixed_release(r, BUFFERS).tiers[0].burst)
        }),
    };
    let outcome = one_storm(rt, watch, &plan, errors).await?;
    Ok(StormRow {
        rate,
        achieved: outcome.achieved_rate,
        span: outcome.release_span,
        before: summary_of(&outcome.live_before_us),
        during: summary_of(&outcome.live_during_us),
        to_baseline: outcome.time_to_baseline,
    })
}

fn config(file: Option<&PathBuf>, rate: Option<u32>) -> anyhow::Result<Config> {
    let mut config = match file {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(rate) = rate {
        config.release = storm::fixed_release(rate, BUFFERS);
    }
    Ok(config)
}

fn print_tiers(rows: &[TierRow], rounds: usize, tiers: &str) -> Vec<Value> {
    println!();
    println!(
        "1. {BUFFERS} × {} KiB per session, N closed concurrently, release tiers: {tiers}, {rounds} rounds per tier; close → released",
        BUFFER_BYTES / 1024
    );
    println!(
        "{:>6} | {:>8} | {:>10} | {:>10} | {:>10} | {:>13} | {:>7} | {:>14} | {:>12}",
        "tier",
        "destroys",
        "mean",
        "p99",
        "max",
        "slowest round",
        "errors",
        "field avg",
        "field errors"
    );
    println!("{}", "-".repeat(112));
    rows.iter()
        .map(|row| {
            let field = field(row.tier);
            let rate = 100.0 * row.failed as f64 / row.destroys.max(1) as f64;
            let cell = |f: fn(&Summary) -> Duration| {
                row.latency.as_ref().map_or("-".into(), |s| show(f(s)))
            };
            println!(
                "{:>6} | {:>8} | {:>10} | {:>10} | {:>10} | {:>13} | {:>6.1}% | {:>14} | {:>12}",
                row.tier,
                row.destroys,
                cell(|s| s.mean),
                cell(|s| s.p99),
                cell(|s| s.max),
                show(row.worst_round),
                rate,
                field.map_or("-".into(), |f| format!("{:.0} ms", f.0)),
                field.map_or("-".into(), |f| format!("{:.1} %", f.1)),
            );
            json!({
                "sessions": row.tier,
                "destroys": row.destroys,
                "close_to_released": summary_json(&row.latency),
                "slowest_round_us": common::micros(row.worst_round),
                "failed": row.failed,
                "error_percent": rate,
                "field_report": field.map(|f| json!({"avg_ms": f.0, "error_percent": f.1})),
            })
        })
        .collect()
}

fn print_storms(rows: &[StormRow]) -> Vec<Value> {
    println!();
    println!(
        "2./3. {STORM} sessions × {BUFFERS} × {} KiB disconnect at once next to {LIVE} live sessions (a turn + an allocation every {:?} each)",
        BUFFER_BYTES / 1024,
        storm::LIVE_TURN_INTERVAL
    );
    println!(
        "{:>12} | {:>12} | {:>8} | {:>10} | {:>12} | {:>12} | {:>6} | {:>12}",
        "configured/s",
        "achieved/s",
        "off by",
        "span",
        "live p99 bef",
        "live p99 dur",
        "ratio",
        "to baseline"
    );
    println!("{}", "-".repeat(106));
    rows.iter()
        .map(|row| {
            let off = row
                .rate
                .zip(row.achieved)
                .map(|(r, a)| 100.0 * (a - f64::from(r)) / f64::from(r));
            let p99 = |s: &Option<Summary>| s.as_ref().map_or("-".into(), |s| show(s.p99));
            println!(
                "{:>12} | {:>12} | {:>8} | {:>10} | {:>12} | {:>12} | {:>6} | {:>12}",
                row.rate.map_or("unthrottled".into(), |r| r.to_string()),
                row.achieved.map_or("-".into(), |a| format!("{a:.0}")),
                off.map_or("-".into(), |o| format!("{o:+.1} %")),
                show(row.span),
                p99(&row.before),
                p99(&row.during),
                row.live_ratio().map_or("-".into(), |r| format!("{r:.2}×")),
                row.to_baseline.map_or("never".into(), show),
            );
            json!({
                "release_rate_configured": row.rate,
                "release_rate_achieved": row.achieved,
                "rate_off_percent": off,
                "release_span_us": common::micros(row.span),
                "live_before": summary_json(&row.before),
                "live_during": summary_json(&row.during),
                "live_p99_ratio": row.live_ratio(),
                "time_to_baseline_us": row.to_baseline.map(common::micros),
            })
        })
        .collect()
}

/// PASS/MISS per target; true if every target passed.
fn verdicts(tiers: &[TierRow], storms: &[StormRow]) -> (bool, Value) {
    println!();
    let no_errors = tiers.iter().all(|r| r.failed == 0);
    println!("{}  0 errors at every tier", pass(no_errors));
    let fast = tiers.iter().find(|r| r.tier == FAST_TIER);
    let fast_ok = fast.is_some_and(|r| r.failed == 0 && r.worst_round <= FAST_WITHIN);
    println!(
        "{}  {FAST_TIER} destroys released within {FAST_WITHIN:?} unthrottled (slowest round: {})",
        pass(fast_ok),
        fast.map_or("-".into(), |r| show(r.worst_round))
    );
    let rates: Vec<bool> = storms.iter().filter_map(StormRow::rate_ok).collect();
    let rates_ok = !rates.is_empty() && rates.iter().all(|ok| *ok);
    println!(
        "{}  achieved rate within ±5 % of the configured rate ({} of {} rates)",
        if rates.is_empty() {
            "n/a "
        } else {
            pass(rates_ok)
        },
        rates.iter().filter(|ok| **ok).count(),
        rates.len()
    );
    let ratios: Vec<f64> = storms.iter().filter_map(StormRow::live_ratio).collect();
    let live_ok = ratios.len() == storms.len() && ratios.iter().all(|r| *r <= LIVE_P99_FACTOR);
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}×")).collect();
    println!(
        "{}  live p99 during a storm ≤ {LIVE_P99_FACTOR}× before ({})",
        pass(live_ok),
        shown.join(", ")
    );
    let all = no_errors && fast_ok && rates_ok && live_ok;
    (
        all,
        json!({
            "zero_errors": no_errors,
            "fast_tier_within_50ms": fast_ok,
            "rate_within_5_percent": (!rates.is_empty()).then_some(rates_ok),
            "live_p99_within_2x": live_ok,
        }),
    )
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,wgpu_hal::gles::egl=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args();
    let (cpu, listed, usable) = machine();
    println!("machine: {cpu}, {listed} cores listed, {usable} usable");
    // Several workers, as a server has: live clients and the storm's driver
    // run side by side, next to the engine's and the GPU worker's threads.
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut errors = Vec::new();
    let (adapter, tier_rows, storm_rows) = tokio.block_on(async {
        let (adapter, tier_rows) = on_runtime(
            config(args.config.as_ref(), None)?,
            &mut errors,
            async |rt, watch, errors| {
                let adapter = describe_adapter(rt.pool_info());
                let rows = tiers(rt, watch, args.rounds.max(1), errors).await;
                (adapter, rows)
            },
        )
        .await?;
        let mut storm_rows = Vec::new();
        for rate in std::iter::once(None).chain(args.rates.iter().copied().map(Some)) {
            let row = on_runtime(
                config(args.config.as_ref(), rate)?,
                &mut errors,
                async |rt, watch, errors| live_storm(rt, watch, rate, errors).await,
            )
            .await??;
            storm_rows.push(row);
        }
        anyhow::Ok((adapter, tier_rows?, storm_rows))
    })?;
    println!("adapter: {adapter}");
    let tiers_from = args
        .config
        .as_ref()
        .map_or("the defaults".to_string(), |p| p.display().to_string());
    let tiers_json = print_tiers(&tier_rows, args.rounds, &tiers_from);
    println!(
        "(field report: 50 → 120 ms, 0 %; 200 → 480 ms, 1.2 %; 500 → 1100 ms, 8.7 %; none for 2000)"
    );
    let storms_json = print_storms(&storm_rows);
    let (all_pass, targets) = verdicts(&tier_rows, &storm_rows);
    for e in errors.iter().take(10) {
        println!("error: {e}");
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "bench": "stress_tiers",
            "machine": {"cpu": cpu, "cores_listed": listed, "cores_usable": usable},
            "adapter": adapter,
            "buffers_per_session": BUFFERS,
            "buffer_bytes": BUFFER_BYTES,
            "rounds": args.rounds,
            "release_tiers_from": tiers_from,
            "tiers": tiers_json,
            "storms": storms_json,
            "targets": targets,
            "all_targets_pass": all_pass,
            "errors": errors,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        println!("wrote {}", path.display());
    }
    // A missed speed target is a finding to report, not a failure; broken
    // invariants (errors, leaks) are.
    anyhow::ensure!(errors.is_empty(), "{} errors in the storms", errors.len());
    Ok(())
}
