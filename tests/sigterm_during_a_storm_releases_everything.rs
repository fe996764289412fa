//! A real SIGTERM, sent to a child process in the middle of a paced release
//! storm: the child's signal helper shuts the runtime down within its
//! deadline, prints the report and exits 0; every session ended once and
//! wgpu's counters are back at their baseline after the final poll.
//!
//! The child is this same test binary, re-run with one test selected and
//! `SESSIONBUS_SIGTERM_CHILD` set; in a normal run that test does nothing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use sessionbus::Runtime;
use sessionbus::config::{Config, ReleaseTier};
use sessionbus_testkit::*;

const CHILD_ENV: &str = "SESSIONBUS_SIGTERM_CHILD";
const READY: &str = "SESSIONBUS_CHILD_READY";
const POPULATION: usize = 200;
const LEASED: usize = 20;
/// Closed by the storm before and while the signal arrives.
const CLOSED_BY_STORM: usize = 100;

/// A slow release pace, so that the storm's releases are still queued when
/// the signal arrives; shutdown must lift it to meet its deadline.
fn storm_config() -> Config {
    let mut config = Config::default();
    config.release.tiers = vec![ReleaseTier {
        name: "slow".into(),
        from_queue: 0,
        rate: 20,
        burst: 5,
        max_in_flight: 4,
    }];
    // Longer than the shutdown deadline: only the shutdown can force the leases.
    config.leases.drain_timeout = std::time::Duration::from_secs(600);
    config
}

#[test]
fn sigterm_child_process() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return; // only meaningful as the child of the test below
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(child());
}

async fn child() {
    let runtime = Runtime::start(storm_config())
        .await
        .expect("runtime starts");
    let baseline = runtime.gpu_counters().expect("the runtime's own wgpu pool");
    let engine = runtime.engine().clone();
    let mut sessions = Vec::new();
    let mut leases = Vec::new();
    for i in 0..POPULATION {
        let session = engine.open(format!("user-{i}")).await.unwrap();
        session.allocate(16 * KIB).await.unwrap();
        session.allocate(48 * KIB).await.unwrap();
        if i < LEASED {
            leases.push(session.lease().await.unwrap()); // a stream that never finishes
        }
        sessions.push(session);
    }
    // The storm: closes by id, all at once; the pacer lets them out slowly.
    let owner_ids: Vec<_> = sessions[LEASED..LEASED + CLOSED_BY_STORM]
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("user-{}", i + LEASED), s.id()))
        .collect();
    for (owner, id) in owner_ids {
        let engine = engine.clone();
        tokio::spawn(async move {
            let _ = engine.close(id, sessionbus::Owner::new(owner)).await;
        });
    }
    // Room for a loaded machine: the releases must finish within it for the
    // report to say `completed` (a 4 s deadline failed about 1 run in 10 in
    // the whole suite on 2 cores).
    let shutdown = sessionbus::signals::shutdown_on_signal(runtime, Duration::from_secs(10));
    tokio::pin!(shutdown);
    // The first poll installs the signal handlers; only then may the parent signal.
    assert!(futures::poll!(&mut shutdown).is_pending());
    // On a line of its own: libtest has already printed "test ... " without a newline.
    println!("\n{READY}");
    let report = shutdown.await;
    let line = serde_json::json!({ "report": report, "baseline": baseline });
    println!("REPORT {line}");
    drop((sessions, leases));
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    std::process::exit(0);
}

#[test]
fn sigterm_mid_storm_ends_every_session_and_releases_every_buffer() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "sigterm_child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the child starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("the child printed READY").unwrap();
        if line == READY {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let report = lines
        .map(Result::unwrap)
        .find_map(|line| line.strip_prefix("REPORT ").map(str::to_owned))
        .expect("the child printed its report");
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "the child exits 0 after a SIGTERM");

    let json: serde_json::Value = serde_json::from_str(&report).unwrap();
    let report = &json["report"];
    let sessions = &report["sessions"];
    let stats = &sessions["stats"];
    assert_eq!(stats["opened"], POPULATION);
    assert_eq!(stats["ended"], POPULATION, "every session ended once");
    assert_eq!(stats["released"], POPULATION, "every release completed");
    assert_eq!(stats["released_buffers"], 2 * POPULATION);
    assert_eq!(stats["live"], 0);
    assert_eq!(
        stats["steps"]["destroy_and_poll"]["count"], POPULATION,
        "every release timed"
    );
    assert_eq!(stats["steps"]["stuck"], 0);
    assert_eq!(stats["releasing"], 0);
    assert_eq!(sessions["completed"], true);
    assert_eq!(sessions["releases_unfinished"], 0);
    // The leased sessions could only end by being forced at 3/4 of the deadline.
    assert_eq!(sessions["sessions_forced"], LEASED);
    assert_eq!(sessions["drains_forced"], LEASED);
    // Everything the storm had not closed yet was ended by the shutdown.
    let ended_by_shutdown = sessions["sessions_ended"].as_u64().unwrap();
    assert!(ended_by_shutdown >= (POPULATION - CLOSED_BY_STORM) as u64);
    let by_reason: Vec<(String, u64)> = serde_json::from_value(stats["ended_by"].clone()).unwrap();
    let shutdown_ends = by_reason
        .iter()
        .find(|(r, _)| r == "shutdown")
        .map(|(_, n)| *n)
        .unwrap_or(0);
    assert_eq!(shutdown_ends, ended_by_shutdown);
    assert_eq!(report["bus_undelivered"], 0);
    assert_eq!(
        report["gpu_after"], json["baseline"],
        "wgpu counters at baseline"
    );
    assert_eq!(report["gpu_after"], report["gpu_baseline"]);
}
