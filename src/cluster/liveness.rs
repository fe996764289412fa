//! Heartbeats, and finding nodes that stopped beating.
//!
//! Every `heartbeat_interval` the node refreshes its heartbeat key (TTL
//! `node_ttl`). A node whose key has expired may be declared lost by the
//! takeover script, which replaces its epoch token (fencing it: none of its
//! writes will ever be accepted again) and ends its sessions with
//! `node_lost`; the survivor that won publishes a signed invalidation for each.
//!
//! **The rule against takeover storms.** A node declares a peer lost only
//! when it has itself been connected and heartbeating, without a gap, for at
//! least `node_ttl` since its last reconnect, and the peer's heartbeat key
//! has been absent (it did not beat for a whole TTL, by Redis's clock). So an
//! outage of any length in which every node loses Redis ends nothing, as long
//! as the nodes come back within `node_ttl` of each other: whoever is back
//! first waits a TTL, and by then the others have beaten. The cost: a node
//! that really died during an outage is declared lost one TTL later than it
//! would be otherwise. A real partition of one node (it cannot reach Redis,
//! the others can) is declared lost after one TTL, as before; when it comes
//! back, its heartbeat is refused and it ends its own sessions.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::error::ClusterError;
use super::state::Shared;
use super::wire::Invalidation;
use sessionbus_actors::EndReason;

/// Whether this node has been heartbeating without a gap for a whole TTL.
#[derive(Debug)]
pub(crate) struct Continuity {
    ttl: Duration,
    since: Option<Instant>,
    last_ok: Option<Instant>,
}

impl Continuity {
    pub(crate) fn new(ttl: Duration) -> Self {
        Continuity {
            ttl,
            since: None,
            last_ok: None,
        }
    }

    /// A heartbeat succeeded at `now`. A gap as long as a TTL since the last
    /// one (a stall, a pause) starts the count again.
    pub(crate) fn beat(&mut self, now: Instant) {
        let gap = self.last_ok.is_none_or(|last| now - last >= self.ttl);
        if gap || self.since.is_none() {
            self.since = Some(now);
        }
        self.last_ok = Some(now);
    }

    /// A heartbeat failed: disconnected, until the next success.
    pub(crate) fn lost(&mut self) {
        self.since = None;
    }

    /// Whether this node may judge others silent at `now`.
    pub(crate) fn may_declare_lost(&self, now: Instant) -> bool {
        self.since.is_some_and(|since| now - since >= self.ttl)
    }
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let period = shared.config.heartbeat_interval;
    let ttl = shared.config.node_ttl;
    let mut continuity = Continuity::new(ttl);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.unpaused().await;
        if !shared.is_active() {
            return;
        }
        // A heartbeat slower than half a TTL counts as a failed one (a frozen
        // Redis must not keep this node counting itself connected).
        let beat = tokio::time::timeout(ttl / 2, shared.directory.heartbeat(&shared.stamp)).await;
        match beat {
            Ok(Ok(())) => {
                continuity.beat(Instant::now());
                if shared.resync_pending() {
                    shared.resync.notify_one();
                }
            }
            Ok(Err(ClusterError::Fenced { current, .. })) => {
                shared.fenced(current).await;
                return;
            }
            Ok(Err(error)) => {
                tracing::debug!(target: "sessionbus::cluster", node = %shared.node(), %error, "heartbeat failed");
                continuity.lost();
                shared.degraded("heartbeat", &error);
                continue;
            }
            Err(_) => {
                tracing::debug!(target: "sessionbus::cluster", node = %shared.node(), "heartbeat timed out");
                continuity.lost();
                shared.degraded("heartbeat", &"no answer within half of node_ttl");
                continue;
            }
        }
        if !continuity.may_declare_lost(Instant::now()) {
            continue;
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
        if let Some(takeover) = shared.directory.takeover(&node, &shared.stamp).await? {
            shared.counters.takeovers.fetch_add(1, Ordering::Relaxed);
            shared.forget_routes_to(&node);
            tracing::warn!(
                target: "sessionbus::cluster",
                event = "cluster.node_lost",
                node = %takeover.node,
                fenced_at_epoch = takeover.epoch,
                sessions_ended = takeover.sessions_ended,
                by = %me,
                "node stopped heartbeating: fenced, its sessions ended with node_lost"
            );
            publish_ends(shared, &node, &takeover.ended).await?;
        }
    }
    Ok(())
}

/// Signed invalidations for sessions a script ended with `node_lost`
/// (a takeover of `node`, or this node's own previous run).
pub(crate) async fn publish_ends(
    shared: &Shared,
    node: &str,
    ended: &[(sessionbus_actors::SessionId, u64)],
) -> Result<(), ClusterError> {
    let channel = shared.directory.keys().invalidations();
    let sender = shared.sender();
    let frames: Vec<String> = ended
        .iter()
        .map(|(id, version)| {
            let invalidation = Invalidation {
                id: *id,
                version: *version,
                reason: EndReason::NodeLost,
                node: node.to_string(),
                by: shared.node().to_string(),
            };
            shared.keyring.seal(&sender, &channel, &invalidation)
        })
        .collect();
    shared.directory.publish_all(&channel, &frames).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_millis(500);

    #[test]
    fn a_node_judges_others_only_after_a_whole_ttl_connected() {
        let t0 = Instant::now();
        let mut c = Continuity::new(TTL);
        assert!(!c.may_declare_lost(t0));
        c.beat(t0);
        assert!(!c.may_declare_lost(t0 + Duration::from_millis(499)));
        c.beat(t0 + Duration::from_millis(100));
        assert!(c.may_declare_lost(t0 + TTL));
    }

    #[test]
    fn a_failed_heartbeat_starts_the_count_again() {
        let t0 = Instant::now();
        let mut c = Continuity::new(TTL);
        c.beat(t0);
        c.lost();
        assert!(!c.may_declare_lost(t0 + 2 * TTL));
        c.beat(t0 + 2 * TTL);
        assert!(!c.may_declare_lost(t0 + 2 * TTL + Duration::from_millis(100)));
        assert!(c.may_declare_lost(t0 + 3 * TTL));
    }

    #[test]
    fn a_gap_as_long_as_a_ttl_between_beats_is_a_reconnect() {
        let t0 = Instant::now();
        let mut c = Continuity::new(TTL);
        c.beat(t0);
        c.beat(t0 + 3 * TTL); // stalled (paused) in between, no failure seen
        assert!(!c.may_declare_lost(t0 + 3 * TTL + Duration::from_millis(1)));
        assert!(c.may_declare_lost(t0 + 4 * TTL));
    }
}
