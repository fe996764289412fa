//! sessionbus next to the usual ways of ending sessions, in one process, on
//! the same kind of real wgpu buffers. Every peer other than sessionbus
//! releases through a `WgpuPool` of its own.
//!
//! Peers: sessionbus (`Runtime`); a polling sweeper at 1 s and at 16 s; a moka
//! cache with per-entry expiry and an eviction listener; one tokio task per
//! session; Redis keys with TTLs and keyspace notifications (a throwaway
//! `redis-server`, skipped with a reason if it cannot start).
//!
//! Workloads: 1. expiry lateness; 2. explicit close → released; 3. open +
//! close throughput; 4. resident memory per idle session; 5. idle CPU;
//! 6. destroy storms. Each prints a table; ratios peer / sessionbus are
//! computed pair by pair in the same run. Every workload checks that every
//! session was released once and wgpu's counters are back at their baseline;
//! a violation makes the bench exit non-zero.
//!
//! ```text
//! cargo bench -p sessionbus-benches --bench compare                          # everything, full sizes
//! cargo bench -p sessionbus-benches --bench compare -- --quick               # a short smoke run
//! cargo bench -p sessionbus-benches --bench compare -- --json out.json       # also write every figure as JSON
//! cargo bench -p sessionbus-benches --bench compare -- --only expiry,close   # some workloads
//! cargo bench -p sessionbus-benches --bench compare -- --only expiry --expiry-sizes 1000000 --ttl-offset 90
//! cargo bench -p sessionbus-benches --bench compare -- --only expiry --expiry-sizes 1000000 --ttl-offset 15 --ttl-spread 20
//! ```

/// `--features mimalloc`: every peer of the process on mimalloc (the
/// application's choice; glibc's malloc otherwise). The memory workload's
/// heap figure reads glibc's counters, so it reads nothing then.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
mod direct;
mod field_report;
mod peer_moka;
mod peer_redis;
mod peer_sessionbus;
mod peer_sweeper;
mod peer_tokio;
mod wl_close;
mod wl_expiry;
mod wl_idle;
mod wl_stress;
mod wl_throughput;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use common::machine;
pub use direct::PeerKind;

pub const ALL_WORKLOADS: &[&str] = &["expiry", "close", "throughput", "memory", "idle", "stress"];

struct Args {
    quick: bool,
    json: Option<PathBuf>,
    only: Option<Vec<String>>,
    /// `--expiry-sizes 1000000`: the expiry workload's session counts.
    expiry_sizes: Option<Vec<usize>>,
    /// `--ttl-offset 60`: seconds added to every expiry TTL, so that the
    /// deadlines fall after a long set-up (a million sessions) instead of
    /// during it.
    ttl_offset: Duration,
    /// `--ttl-spread 20`: the TTLs are uniform over this many seconds (2 by
    /// default), so that a million sessions can expire at the rate 100 000
    /// do over the default 2 s.
    ttl_spread: Duration,
}

fn parse_args() -> Args {
    let mut args = Args {
        quick: std::env::var("SESSIONBUS_BENCH_QUICK").is_ok_and(|v| v == "1"),
        json: None,
        only: None,
        expiry_sizes: None,
        ttl_offset: Duration::ZERO,
        ttl_spread: Duration::from_micros(common::TTL_MAX_US - common::TTL_MIN_US),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--quick" {
            args.quick = true;
        } else if arg == "--json" {
            args.json = it.next().map(PathBuf::from);
        } else if let Some(path) = arg.strip_prefix("--json=") {
            args.json = Some(PathBuf::from(path));
        } else if arg == "--only" {
            args.only = it
                .next()
                .map(|s| s.split(',').map(str::to_string).collect());
        } else if arg == "--expiry-sizes" {
            args.expiry_sizes = it
                .next()
                .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect());
        } else if arg == "--ttl-offset" {
            let secs = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            args.ttl_offset = Duration::from_secs(secs);
        } else if arg == "--ttl-spread" {
            if let Some(secs) = it.next().and_then(|s| s.parse::<u64>().ok()) {
                args.ttl_spread = Duration::from_secs(secs.max(1));
            }
        } else if arg == "--child" {
            let rest: Vec<String> = it.by_ref().take(4).collect();
            if let [what, peer, n, window_ms] = rest.as_slice() {
                let n = n.parse().unwrap_or(0);
                let window = Duration::from_millis(window_ms.parse().unwrap_or(0));
                wl_idle::child(what, peer, n, window);
            }
            eprintln!("--child needs: what peer sessions window_ms");
            std::process::exit(2);
        }
        // Anything else (`--bench` from cargo, filters) is ignored.
    }
    args
}

/// Runs `workloads` (unless `--only` says otherwise), with `expiry_peers` next
/// to sessionbus in the expiry workload; `bench` names the JSON document.
pub fn run(bench: &str, workloads: &[&str], expiry_peers: &[PeerKind]) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args();
    let selected: Vec<&str> = workloads
        .iter()
        .copied()
        .filter(|w| {
            args.only
                .as_ref()
                .is_none_or(|only| only.iter().any(|o| o == w))
        })
        .collect();
    let (cpu, listed, usable) = machine();
    println!("machine: {cpu}, {listed} cores listed, {usable} usable");
    println!(
        "mode: {}; workloads: {}",
        if args.quick { "quick" } else { "full" },
        selected.join(", ")
    );

    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let close_peers: Vec<PeerKind> = expiry_peers
        .iter()
        .copied()
        // One sweeper is enough for a close: its period plays no part.
        .filter(|k| !matches!(k, PeerKind::Sweeper(p) if *p != Duration::from_secs(1)))
        .collect();
    let idle_peers: Vec<String> = std::iter::once("sessionbus".to_string())
        .chain(
            close_peers
                .iter()
                .filter(|k| **k != PeerKind::Redis)
                .map(|k| k.key()),
        )
        .collect();
    let idle_peers: Vec<&str> = idle_peers.iter().map(String::as_str).collect();

    let mut adapter = String::new();
    let mut errors = Vec::new();
    let mut results = serde_json::Map::new();
    for workload in &selected {
        let (json, errs) = match *workload {
            "expiry" => {
                let sizes: &[usize] = match &args.expiry_sizes {
                    Some(sizes) => sizes,
                    None if args.quick => &[2_000],
                    None => &[10_000, 100_000],
                };
                let ttls = wl_expiry::Ttls {
                    offset: args.ttl_offset,
                    spread: args.ttl_spread,
                };
                let out = wl_expiry::run(&tokio, sizes, ttls, expiry_peers, &mut adapter);
                println!("adapter: {adapter}");
                out
            }
            "close" => {
                let (live, closes) = if args.quick {
                    (1_000, 500)
                } else {
                    (10_000, 5_000)
                };
                wl_close::run(&tokio, live, closes, &close_peers)
            }
            "throughput" => {
                let window = Duration::from_secs(if args.quick { 1 } else { 3 });
                wl_throughput::run(&tokio, window, 1_024, &close_peers)
            }
            "memory" => {
                let sizes: &[usize] = if args.quick {
                    &[100_000]
                } else {
                    &[100_000, 1_000_000]
                };
                let mut peers = idle_peers.clone();
                peers.insert(1, wl_idle::PARKED);
                wl_idle::memory(sizes, &peers)
            }
            "idle" => {
                let (n, window) = if args.quick {
                    (10_000, 1)
                } else {
                    (100_000, 3)
                };
                wl_idle::idle_cpu(n, Duration::from_secs(window), &idle_peers)
            }
            "stress" => wl_stress::run(&tokio, &wl_stress::TIERS, &close_peers),
            other => {
                eprintln!("unknown workload {other}");
                continue;
            }
        };
        results.insert(workload.to_string(), json);
        errors.extend(errs);
    }

    println!();
    if errors.is_empty() {
        println!("correctness: every session released once, wgpu counters back at baseline: OK");
    } else {
        println!(
            "correctness: {} VIOLATIONS (listed on stderr)",
            errors.len()
        );
    }
    if let Some(path) = &args.json {
        let document = json!({
            "bench": bench,
            "quick": args.quick,
            "machine": {"cpu": cpu, "cores_listed": listed, "cores_usable": usable},
            "adapter": adapter,
            "workloads": results,
            "errors": errors,
            "ok": errors.is_empty(),
        });
        let text = serde_json::to_string_pretty(&document).expect("JSON");
        if let Err(e) = std::fs::write(path, text + "\n") {
            errors.push(format!("cannot write {}: {e}", path.display()));
        } else {
            println!("wrote {}", path.display());
        }
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        std::process::exit(1);
    }
}

#[allow(dead_code)] // Unused where another bench includes this file as a module.
fn main() {
    run(
        "compare",
        ALL_WORKLOADS,
        &[
            PeerKind::Sweeper(Duration::from_secs(1)),
            PeerKind::Sweeper(Duration::from_secs(16)),
            PeerKind::Moka,
            PeerKind::TokioTask,
            PeerKind::Redis,
        ],
    );
}
