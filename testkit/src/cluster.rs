//! The cluster tests' node configuration: quick timings, and the test
//! cluster's key (a fixed test value, not a secret of anything real).

use std::time::Duration;

use sessionbus::cluster::{ClusterConfig, ClusterKey};

/// The key every test node signs with.
pub fn test_key() -> ClusterKey {
    ClusterKey::new("test", &[7u8; 32])
}

/// A node of the test cluster: a heartbeat every 100 ms, lost after 500 ms.
pub fn config(url: &str, node: &str) -> ClusterConfig {
    ClusterConfig {
        heartbeat_interval: Duration::from_millis(100),
        node_ttl: Duration::from_millis(500),
        renew_interval: Duration::from_millis(200),
        session_ttl: Duration::from_secs(60),
        forward_timeout: Duration::from_secs(5),
        keys: vec![test_key()],
        ..ClusterConfig::new(url, node)
    }
}

use sessionbus::cluster::{ClusterNode, Invalidation};
use sessionbus::config::Config;

use crate::Harness;

/// Polls `$cond` until it holds; fails naming `$what` if it never does (a
/// liveness bound, not a speed check).
#[macro_export]
macro_rules! eventually {
    ($what:expr, $cond:expr) => {{
        let started = std::time::Instant::now();
        loop {
            if $cond {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(120),
                "never happened: {}",
                $what
            );
            $crate::__tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}
pub use crate::eventually;

/// A node of a test cluster: a runtime on the real adapter, and its cluster layer.
pub struct Node {
    pub h: Harness,
    pub node: ClusterNode,
}

/// A node named `name` against the Redis at `url`, with the test timings.
pub async fn start_node(url: &str, name: &str) -> Node {
    start_node_with(config(url, name)).await
}

pub async fn start_node_with(config: ClusterConfig) -> Node {
    let h = crate::start_with(Config::default()).await;
    let node = ClusterNode::start(h.rt.engine(), config)
        .await
        .expect("node joins");
    Node { h, node }
}

impl Node {
    /// Shuts the runtime down (its ends are written to the directory), leaves,
    /// and checks wgpu's counters.
    pub async fn stop(self) {
        let Node { h, node } = self;
        h.shutdown_at_baseline().await;
        node.leave().await.expect("leave");
    }
}

pub async fn next_invalidation(
    rx: &mut tokio::sync::broadcast::Receiver<Invalidation>,
) -> Invalidation {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("an invalidation arrives")
        .expect("invalidation stream open")
}
