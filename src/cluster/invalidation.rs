//! Hearing from the cluster: one pub/sub connection per node carries
//! invalidations, requests forwarded to this node, and answers to the
//! requests it forwarded. Every message is verified (`signing.rs`) before it
//! is parsed; what fails is counted, logged and dropped.
//!
//! Pub/sub is at-most-once: what is published while the connection is down
//! is lost. So a reconnect marks the node for a resync (the writer rebuilds
//! the directory from the engine and this node drops every cached route), and
//! the entries' TTL is the last backstop.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use tokio::sync::oneshot;

use super::routing;
use super::signing::{Rejection, Verified};
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
    // Reconnects back off from an eighth of a heartbeat interval up to one,
    // with jitter, so the nodes of a cluster do not reconnect in lockstep.
    let retry = shared.config.heartbeat_interval;
    let backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(retry / 8)
            .with_max_delay(retry)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
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
                tokio::time::sleep(delays.next().unwrap_or(retry)).await;
                continue;
            }
        };
        if let Err(error) = pubsub.subscribe(&channels).await {
            shared.degraded("pub/sub subscribe", &error);
            tokio::time::sleep(delays.next().unwrap_or(retry)).await;
            continue;
        }
        delays = backoff();
        if let Some(subscribed) = subscribed.take() {
            let _ = subscribed.send(());
        }
        if !first {
            // Whatever was published while we were away is lost: resync.
            shared.request_resync();
            shared.resync.notify_one();
        }
        first = false;
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            shared.unpaused().await;
            let channel = message.get_channel_name();
            let Ok(frame) = message.get_payload::<String>() else {
                shared.rejected(channel, Rejection::Unsigned, None);
                continue;
            };
            if channel == channels[0] {
                match shared.keyring.open::<Invalidation>(channel, &frame) {
                    Ok(verified) => on_invalidation(&shared, channel, verified).await,
                    Err(why) => shared.rejected(channel, why, None),
                }
            } else if channel == channels[1] {
                match shared.keyring.open::<Request>(channel, &frame) {
                    Ok(verified) => match shared.check_sender(&verified.from).await {
                        Ok(()) => routing::accept(&shared, verified).await,
                        Err(why) => shared.rejected(channel, why, Some(&verified.from.node)),
                    },
                    Err(why) => shared.rejected(channel, why, None),
                }
            } else if channel == channels[2] {
                match shared.keyring.open::<Reply>(channel, &frame) {
                    Ok(verified) => match shared.check_sender(&verified.from).await {
                        Ok(()) => routing::answered(&shared, verified),
                        Err(why) => shared.rejected(channel, why, Some(&verified.from.node)),
                    },
                    Err(why) => shared.rejected(channel, why, None),
                }
            }
            if !shared.is_active() {
                return;
            }
        }
        shared.degraded("pub/sub", &"connection closed");
        tokio::time::sleep(delays.next().unwrap_or(retry)).await;
    }
}

/// A verified invalidation. It must come from the node it names as `by`;
/// that node's epoch is checked for ends of sessions this node owns, which
/// are also confirmed with the directory before anything ends.
async fn on_invalidation(shared: &Arc<Shared>, channel: &str, verified: Verified<Invalidation>) {
    let invalidation = verified.body;
    if invalidation.by != verified.from.node {
        shared.rejected(channel, Rejection::NotPermitted, Some(&verified.from.node));
        return;
    }
    if let Err(why) = shared.check_sender(&verified.from).await {
        shared.rejected(channel, why, Some(&verified.from.node));
        return;
    }
    apply(shared, invalidation);
}

/// A session ended somewhere: drop what this node holds for it, once.
pub(crate) fn apply(shared: &Arc<Shared>, invalidation: Invalidation) {
    let id = invalidation.id;
    // This node's own end as owner: it already dropped everything. (A
    // takeover this node ran is not: it held routes to the lost node.)
    let own_end = invalidation.node == shared.node() && invalidation.by == shared.node();
    if own_end {
        ignored(shared);
        return;
    }
    if shared.owned.lock().unwrap().contains_key(&id) {
        // Another node says a session this node still runs has ended (it
        // declared this node lost). Never on the message alone: the
        // directory must agree, by script, at that version; only then is
        // anything recorded, dropped or told to the application.
        let shared = shared.clone();
        tokio::spawn(async move {
            match shared
                .directory
                .confirms_end(id, invalidation.version)
                .await
            {
                Ok(true) => {
                    if shared.disown(id).is_some() {
                        shared.end_soon(id, invalidation.reason);
                    }
                    drop_held(&shared, invalidation);
                }
                Ok(false) => {
                    shared
                        .counters
                        .invalidations_unconfirmed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        target: "sessionbus::cluster",
                        event = "cluster.invalidation_unconfirmed",
                        node = %shared.node(),
                        session_id = %id,
                        version = invalidation.version,
                        by = %invalidation.by,
                        "an invalidation for a session this node owns was not confirmed by the directory; the session stays"
                    );
                }
                // Redis away: the heartbeat finds out whether this node was fenced.
                Err(error) => shared.degraded("invalidation check", &error),
            }
        });
        return;
    }
    drop_held(shared, invalidation);
}

/// Records the end (once) and drops the route and leases held for it.
fn drop_held(shared: &Shared, invalidation: Invalidation) {
    let id = invalidation.id;
    let fresh = shared.seen.lock().unwrap().record(
        id,
        invalidation.version,
        Some(invalidation.reason),
        shared.config.seen_ended,
    );
    // A route read at a version as new as this end is newer news than the end.
    let older_than_route = shared
        .routes
        .lock()
        .unwrap()
        .get(&id)
        .is_some_and(|route| route.version >= invalidation.version);
    if !fresh || older_than_route {
        ignored(shared);
        return;
    }
    shared.routes.lock().unwrap().remove(&id);
    shared.leases.lock().unwrap().remove(&id);
    shared
        .counters
        .invalidations_applied
        .fetch_add(1, Ordering::Relaxed);
    let _ = shared.invalidations.send(invalidation);
}

fn ignored(shared: &Shared) {
    shared
        .counters
        .invalidations_ignored
        .fetch_add(1, Ordering::Relaxed);
}
