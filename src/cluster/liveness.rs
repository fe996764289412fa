//! Heartbeats, and finding nodes that stopped beating.
//!
//! Every `heartbeat_interval_ms` the node refreshes its heartbeat key (TTL
//! `node_ttl_ms`) with its epoch, then looks at the other nodes: one whose key
//! has expired is declared lost by the takeover script, which bumps its epoch
//! (fencing it: none of its writes will ever be accepted again) and ends its
//! sessions with `node_lost`, publishing an invalidation for each. Any
//! survivor may run it; the script lets exactly one win.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::error::ClusterError;
use super::state::Shared;

pub(crate) async fn run(shared: Arc<Shared>) {
    let period = Duration::from_millis(shared.config.heartbeat_interval_ms);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.unpaused().await;
        if !shared.is_active() {
            return;
        }
        match shared.directory.heartbeat(&shared.stamp).await {
            Ok(()) => {
                if shared.resync_pending.load(Ordering::Acquire) {
                    shared.resync.notify_one();
                }
            }
            Err(ClusterError::Fenced { current, .. }) => {
                shared.fenced(current).await;
                return;
            }
            Err(error) => {
                shared.degraded("heartbeat", &error);
                continue;
            }
        }
        if let Err(error) = find_lost_nodes(&shared).await {
            shared.degraded("lost-node scan", &error);
        }
    }
}

async fn find_lost_nodes(shared: &Shared) -> Result<(), ClusterError> {
    let me = shared.node();
    for node in shared.directory.nodes().await? {
        if node == me || shared.directory.is_alive(&node).await? {
            continue;
        }
        if let Some(takeover) = shared.directory.takeover(&node, me).await? {
            shared.counters.takeovers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target: "sessionbus::cluster",
                event = "cluster.node_lost",
                node = %takeover.node,
                fenced_at_epoch = takeover.epoch,
                sessions_ended = takeover.sessions_ended,
                by = %me,
                "node stopped heartbeating: fenced, its sessions ended with node_lost"
            );
        }
    }
    Ok(())
}
