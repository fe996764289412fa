//! The main job: a simulated chat backend on embedded defaults.
//!
//! Two scenarios, each checking the invariants against wgpu's own counters:
//!
//! - `default`: many clients open sessions and chat for several turns; each
//!   turn grows the session's KV cache by one GPU buffer. Then some clients
//!   close, some just drop their handle (a disconnect), and the rest are ended
//!   by shutdown.
//! - `expiry`: sessions that end on their own, in a few seconds: idle
//!   timeouts, TTLs, revoked remote leases, closes that drain a token stream,
//!   and context resets along the way. Each revoked lease is logged at WARN
//!   (`lease.revoked`) on stderr; `RUST_LOG=error` hides them.
//! - `storm`: live sessions chat while a storm population (each session holding
//!   `--turns` KV-cache buffers) disconnects at once; release is paced by the
//!   default load tiers or at a fixed `--release-rate`.
//!
//! - `shutdown`: a busy population gets a real SIGTERM mid-storm; the report
//!   adds the shutdown report.
//!
//! Every run names the GPU adapter it found on its first line; on the GL
//! fallback or a CPU adapter it also logs (and reports as `adapter.faster`)
//! how to get a faster one.
//!
//! ```text
//! cargo run --release --example demo -- --sessions 2000 --json
//! cargo run --release --example demo -- --scenario expiry --json
//! cargo run --release --example demo -- --scenario storm --release-rate 20000 --json
//! cargo run --release --example demo -- --scenario kv --sessions 200 --json
//! ```

mod adapter;
mod conversation;
mod expiry_clients;
mod html_report;
mod interrupted;
mod percentiles;
mod report;
mod scenario_default;
mod scenario_expiry;
mod scenario_kv;
mod scenario_shutdown;
mod scenario_storm;
mod stop;
mod storm;
mod timeline;
mod watch;

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use sessionbus::config::Config;
use sessionbus::pool::GpuCounters;
use sessionbus::{Runtime, StopReport};

use crate::adapter::AdapterReport;
use crate::report::Leak;
use crate::stop::Stop;
use crate::watch::{Observed, Watch};

/// Simulates a chat backend on sessionbus and reports what happened to every byte.
#[derive(Parser, Debug)]
pub struct Args {
    /// What the clients do: `default` (chat, then close, disconnect or wait for
    /// shutdown) or `expiry` (sessions end on their own: idle timeout, TTL, lease lost).
    #[arg(long, value_enum, default_value_t = Scenario::Default)]
    scenario: Scenario,
    /// Chat sessions to open.
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    /// Turns per session; each turn allocates one KV-cache buffer (default
    /// scenario; in `storm`, the buffers each storm session holds).
    #[arg(long, default_value_t = 8)]
    turns: usize,
    /// Bytes of KV cache each turn adds.
    #[arg(long, default_value_t = 64 * 1024)]
    kv_bytes_per_turn: u64,
    /// Clients chatting at the same time (default scenario; in `expiry` every client runs at once).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Storm scenario: sessions that disconnect at once.
    #[arg(long, default_value_t = 2000)]
    storm_size: usize,
    /// Storm scenario: release at this fixed rate, in buffers per second
    /// (default: the configured load tiers, unthrottled for a storm this size).
    #[arg(long)]
    release_rate: Option<u32>,
    /// Storm scenario: live sessions chatting through the storm (a message every 20 ms each).
    #[arg(long, default_value_t = 200)]
    live: usize,
    /// Seed for the clients' choices (who closes, who disconnects, who stays).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A TOML configuration file (defaults are embedded). The `expiry`
    /// scenario sets its own lease and sweeper timings on top of it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// `--scenario shutdown`: the deadline the SIGTERM handler shuts down within.
    #[arg(long, default_value_t = 4.0)]
    deadline_secs: f64,
    /// Print the report as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Supervisor logs as JSON lines on stderr (level from RUST_LOG, default warn).
    #[arg(long)]
    json_logs: bool,
    /// Also write an HTML report with charts (GPU bytes and live sessions over
    /// time, latency distributions, release rate) to this file.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// Write the audit trail to this directory; the key is read (as hex)
    /// from the environment variable SESSIONBUS_AUDIT_KEY. Check it afterwards
    /// with `cargo run --example audit_verify -- DIR`.
    #[arg(long)]
    audit_dir: Option<std::path::PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Default,
    Expiry,
    Storm,
    Shutdown,
    /// KV memory as paged blocks: a shared system prompt, chats, a
    /// paged-attention kernel, every kind of end.
    Kv,
}

/// What every scenario starts from: a running runtime, wgpu's counters
/// before any session, and a watch on the bus subscribed before the first open.
pub struct Demo {
    pub rt: Runtime,
    pub watch: Watch,
    /// Set by SIGTERM or Ctrl-C: the scenario stops its clients and reports.
    pub stop: Stop,
    baseline: GpuCounters,
    adapter: AdapterReport,
    wall: Instant,
}

/// What every scenario ends with.
pub struct Finished {
    pub stop: StopReport,
    /// Everything the bus delivered, up to the shutdown.
    pub seen: Observed,
    /// wgpu's counters after the shutdown, less the baseline.
    pub leak: Leak,
    pub baseline: GpuCounters,
    pub adapter: AdapterReport,
    pub wall_ms: u64,
    /// The signal that stopped the run early, if one did.
    pub interrupted: Option<&'static str>,
}

impl Demo {
    async fn start(config: Config, stop: Stop) -> anyhow::Result<Demo> {
        let wall = Instant::now();
        let rt = Runtime::start(config.clone())
            .await
            .context("starting the sessionbus runtime")?;
        let baseline = rt.gpu_counters().expect("the runtime's own wgpu pool");
        let adapter = AdapterReport::new(rt.pool_info(), &config);
        // Also with --json (whose report is the *last* line): a supervisor
        // can tell from this line that the run has begun.
        println!("sessionbus demo on {}", adapter.found());
        if let Some(faster) = &adapter.faster {
            tracing::warn!(adapter = %adapter.found(), "a faster adapter is possible: {faster}");
        }
        let watch = Watch::subscribe(&rt).await?;
        Ok(Demo {
            rt,
            baseline,
            adapter,
            watch,
            stop,
            wall,
        })
    }

    /// Shuts the runtime down (ending what is still live) and collects the results.
    pub async fn finish(self) -> anyhow::Result<Finished> {
        let stop = self.rt.shutdown().await;
        let seen = self.watch.finish().await?;
        Ok(Finished {
            interrupted: self.stop.requested(),
            leak: Leak::between(self.baseline, stop.gpu_after.expect("wgpu counters")),
            stop,
            seen,
            baseline: self.baseline,
            adapter: self.adapter,
            wall_ms: self.wall.elapsed().as_millis() as u64,
        })
    }
}

fn init_logs(json_logs: bool) {
    let filter =
        // wgpu probes every backend while picking an adapter; without a GL driver
        // its EGL probe logs an error that does not matter once Vulkan is chosen.
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "warn,wgpu_hal::gles::egl=off".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_logs {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // First: from here on a signal asks the demo to stop, it no longer kills it.
    let stop = Stop::install()?;
    init_logs(args.json_logs);
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    match args.scenario {
        Scenario::Expiry => scenario_expiry::configure(&mut config),
        Scenario::Storm => scenario_storm::configure(&mut config, &args),
        Scenario::Shutdown => scenario_shutdown::configure(&mut config),
        Scenario::Kv => scenario_kv::configure(&mut config),
        Scenario::Default => {}
    }
    if let Some(dir) = &args.audit_dir {
        config.audit = Some(sessionbus::config::AuditConfig {
            key_env: Some("SESSIONBUS_AUDIT_KEY".into()),
            ..sessionbus::config::AuditConfig::new(dir)
        });
    }
    if args.scenario == Scenario::Shutdown {
        scenario_shutdown::configure(&mut config);
    }
    let demo = Demo::start(config, stop).await?;
    let report = html_report::Recorder::start(&demo.rt, &args).await?;
    let outcome = match args.scenario {
        Scenario::Default => scenario_default::run(demo, &args).await,
        Scenario::Expiry => scenario_expiry::run(demo, &args).await,
        Scenario::Storm => scenario_storm::run(demo, &args).await,
        Scenario::Shutdown => scenario_shutdown::run(demo, &args).await,
        Scenario::Kv => scenario_kv::run(demo, &args).await,
    };
    report.finish(outcome).await
}
