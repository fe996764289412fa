//! The cluster tests' node configuration: quick timings, and the test
//! cluster's key (a fixed test value, not a secret of anything real).

use sessionbus::cluster::{ClusterConfig, ClusterKey};

/// The key every test node signs with.
pub fn test_key() -> ClusterKey {
    ClusterKey::new("test", &[7u8; 32])
}

/// A node of the test cluster: a heartbeat every 100 ms, lost after 500 ms.
pub fn config(url: &str, node: &str) -> ClusterConfig {
    ClusterConfig {
        heartbeat_interval_ms: 100,
        node_ttl_ms: 500,
        renew_interval_ms: 200,
        session_ttl_secs: 60,
        forward_timeout_ms: 5000,
        keys: vec![test_key()],
        ..ClusterConfig::new(url, node)
    }
}
