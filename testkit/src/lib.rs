//! Fixtures shared by sessionbus's tests, examples and benches: a real
//! runtime on a real wgpu adapter (Mesa's software Vulkan driver where there
//! is no GPU) with leak checks that read wgpu's own counters, audit and log
//! helpers, the example binaries, the [`GpuPool`](sessionbus::pool::GpuPool)
//! contract every pool is tested against ([`pool_contract`]), and, with the
//! `redis` feature, the Redis harness of the cluster tests.

use std::collections::HashMap;
use std::time::Duration;

use sessionbus::config::Config;
use sessionbus::pool::GpuCounters;
use sessionbus::{Delivery, EndReason, EventKinds, LifecycleEvent, Runtime, SessionId};
use tokio::sync::mpsc;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;

pub struct Harness {
    pub rt: Runtime,
    pub baseline: GpuCounters,
    pub events: mpsc::Receiver<LifecycleEvent>,
}

pub async fn start() -> Harness {
    start_with(Config::default()).await
}

pub async fn start_with(config: Config) -> Harness {
    let rt = Runtime::start(config)
        .await
        .expect("runtime starts on a real adapter (install mesa-vulkan-drivers)");
    let baseline = rt.gpu_counters().expect("the runtime's own wgpu pool");
    let events = rt
        .subscribe_channel(EventKinds::ALL, Delivery::Reliable)
        .await
        .expect("subscribe");
    Harness {
        rt,
        baseline,
        events,
    }
}

impl Harness {
    /// Reads events until `n` releases have been seen.
    pub async fn until_released(&mut self, n: usize) -> Vec<LifecycleEvent> {
        let mut seen = Vec::new();
        let mut released = 0;
        while released < n {
            let event = tokio::time::timeout(Duration::from_secs(30), self.events.recv())
                .await
                .expect("a release arrives")
                .expect("bus open");
            released += matches!(event, LifecycleEvent::Released(_)) as usize;
            seen.push(event);
        }
        seen
    }

    /// wgpu's own counters are back where they were before any session.
    pub fn assert_gpu_at_baseline(&self) {
        assert_eq!(
            self.rt.gpu_counters().expect("the runtime's own wgpu pool"),
            self.baseline,
            "wgpu counters (hal.buffers, hal.buffer_memory) not at baseline"
        );
    }

    /// Shuts down and checks wgpu's counters after the final poll.
    pub async fn shutdown_at_baseline(self) -> sessionbus::StopReport {
        let baseline = self.baseline;
        let report = self.rt.shutdown().await;
        assert_eq!(
            report.gpu_after.expect("wgpu counters"),
            baseline,
            "wgpu counters after shutdown"
        );
        assert_eq!(
            report.bus_undelivered, 0,
            "every reliable subscriber got every event"
        );
        report
    }
}

/// End events per session id, in arrival order.
pub fn ends_by_session(events: &[LifecycleEvent]) -> HashMap<SessionId, Vec<EndReason>> {
    let mut ends: HashMap<SessionId, Vec<EndReason>> = HashMap::new();
    for event in events {
        if let LifecycleEvent::Ended(end) = event {
            ends.entry(end.id).or_default().push(end.reason);
        }
    }
    ends
}
mod sessions;
pub use sessions::*;
pub mod audit;
pub mod bench;
#[cfg(feature = "redis")]
pub mod cluster;
pub mod logs;
pub mod percentiles;
pub mod pool_contract;
#[cfg(feature = "redis")]
pub mod redis_server;

/// For the `eventually!` macro's expansion.
#[doc(hidden)]
pub use tokio as __tokio;

/// The workspace's root (where `cargo build -p ...` is run from).
fn workspace_root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ lies in the workspace root")
}

/// The demo example's binary (package `sessionbus`), built through cargo
/// first (a no-op when fresh), so that a stale binary is never the one tested.
pub fn demo_binary() -> std::path::PathBuf {
    example_binary("sessionbus", "demo")
}

/// Builds example `name` of workspace package `package` (a no-op when it is
/// up to date) and returns its path, next to the calling test binary's
/// profile directory (`target/<profile>/examples/`).
pub fn example_binary(package: &str, name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>");
    let binary = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", package, "--example", name])
        .current_dir(workspace_root())
        .status()
        .unwrap_or_else(|e| panic!("running cargo build -p {package} --example {name}: {e}"));
    assert!(
        status.success(),
        "cargo build -p {package} --example {name} failed"
    );
    assert!(binary.is_file(), "no {name} binary at {}", binary.display());
    binary
}
