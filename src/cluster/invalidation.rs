//! Hearing from the cluster: one pub/sub connection per node carries
//! invalidations, requests forwarded to this node, and answers to the
//! requests it forwarded.
//!
//! Pub/sub is at-most-once: what is published while the connection is down
//! is lost. So a reconnect marks the node for a resync (the writer rebuilds
//! the directory from the engine and this node drops every cached route), and
//! the entries' TTL is the last backstop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::oneshot;

use super::routing;
use super::state::Shared;
use super::wire::{Invalidation, Reply, Request};

pub(crate) async fn listen(shared: Arc<Shared>, subscribed: oneshot::Sender<()>) {
    let mut subscribed = Some(subscribed);
    let keys = shared.directory.keys().clone();
    let channels = [
        keys.invalidations(),
        keys.requests(shared.node()),
        keys.replies(shared.node()),
    ];
    let retry = Duration::from_millis(shared.config.heartbeat_interval_ms);
    let mut first = true;
    loop {
        shared.unpaused().await;
        if !shared.is_active() {
            return;
        }
        let mut pubsub = match shared.directory.client().get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(error) => {
                shared.degraded("pub/sub connect", &error);
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        if let Err(error) = pubsub.subscribe(&channels).await {
            shared.degraded("pub/sub subscribe", &error);
            tokio::time::sleep(retry).await;
            continue;
        }
        if let Some(subscribed) = subscribed.take() {
            let _ = subscribed.send(());
        }
        if !first {
            // Whatever was published while we were away is lost: resync.
            shared.resync_pending.store(true, Ordering::Release);
            shared.resync.notify_one();
        }
        first = false;
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            shared.unpaused().await;
            let Ok(payload) = message.get_payload::<String>() else {
                continue;
            };
            let channel = message.get_channel_name();
            if channel == channels[0] {
                match serde_json::from_str::<Invalidation>(&payload) {
                    Ok(invalidation) => apply(&shared, invalidation),
                    Err(error) => bad_message(channel, &error),
                }
            } else if channel == channels[1] {
                match serde_json::from_str::<Request>(&payload) {
                    Ok(request) => {
                        tokio::spawn(routing::serve(shared.clone(), request));
                    }
                    Err(error) => bad_message(channel, &error),
                }
            } else if channel == channels[2] {
                match serde_json::from_str::<Reply>(&payload) {
                    Ok(reply) => routing::answered(&shared, reply),
                    Err(error) => bad_message(channel, &error),
                }
            }
            if !shared.is_active() {
                return;
            }
        }
        shared.degraded("pub/sub", &"connection closed");
        tokio::time::sleep(retry).await;
    }
}

fn bad_message(channel: &str, error: &serde_json::Error) {
    tracing::warn!(
        target: "sessionbus::cluster",
        event = "cluster.bad_message",
        channel,
        %error,
        "ignored a message that is not in sessionbus's wire format"
    );
}

/// A session ended somewhere: drop what this node holds for it, once.
pub(crate) fn apply(shared: &Arc<Shared>, invalidation: Invalidation) {
    let id = invalidation.id;
    let fresh = shared.seen.lock().unwrap().record(
        id,
        invalidation.version,
        Some(invalidation.reason),
        shared.config.seen_ended,
    );
    // This node's own end as owner: it already dropped everything. (A
    // takeover this node ran is not: it held routes to the lost node.)
    let own_end = invalidation.node == shared.node() && invalidation.by == shared.node();
    // A route read at a version as new as this end is newer news than the end.
    let older_than_route = shared
        .routes
        .lock()
        .unwrap()
        .get(&id)
        .is_some_and(|route| route.version >= invalidation.version);
    if !fresh || own_end || older_than_route {
        shared
            .counters
            .invalidations_ignored
            .fetch_add(1, Ordering::Relaxed);
        return;
    }
    shared.routes.lock().unwrap().remove(&id);
    shared.leases.lock().unwrap().remove(&id);
    let owned_here = shared.owned.lock().unwrap().remove(&id).is_some();
    if owned_here {
        // Another node ended a session this node still runs: it declared this
        // node lost. The directory is the truth; end it here too.
        let shared = shared.clone();
        let reason = invalidation.reason;
        tokio::spawn(async move { shared.end_locally(id, reason).await });
    }
    shared
        .counters
        .invalidations_applied
        .fetch_add(1, Ordering::Relaxed);
    let _ = shared.invalidations.send(invalidation);
}
