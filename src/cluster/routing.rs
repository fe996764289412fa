//! Requests for sessions owned by another node: forwarded to the owner over
//! Redis pub/sub (request id, reply channel, timeout) and answered with the
//! same result a local call gives. No network stack of our own: Redis is the
//! transport every node already reaches.
//!
//! Every request and reply is signed (`signing.rs`); a request names its user
//! by pseudonym, and the owner node turns it back into the session's owner
//! only if it matches. Operator rights cross only from `cluster.operator_nodes`.
//! Requests are served by at most `cluster.max_served_requests` workers.
//!
//! Delivery is at-most-once. A request that reaches no subscriber (the owner
//! is gone) fails at once; one that gets no answer within
//! `forward_timeout` fails with `ClusterError::OwnerUnreachable`. Closing
//! twice is harmless, so a caller may retry a close.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use sessionbus_actors::{Caller, LeaseId, SessionError, SessionId};
use tokio::sync::oneshot;

use super::error::ClusterError;
use super::signing::{Rejection, Verified};
use super::state::{Pending, Shared};
use super::wire::{Done, Op, Reply, Request, WireCaller, WireError};

/// Runs `op` on a session of the local engine.
pub(crate) async fn execute(
    shared: &Shared,
    id: SessionId,
    caller: Caller,
    op: Op,
) -> Result<Done, SessionError> {
    let engine = &shared.engine;
    Ok(match op {
        Op::Close => Done::Receipt((&engine.close(id, caller).await?).into()),
        Op::Chat(turn) => {
            let handle = engine.attach(id, caller).await?;
            Done::Ack((&handle.chat(turn.into()).await?).into())
        }
        Op::Touch => {
            engine.attach(id, caller).await?.touch().await?;
            Done::Unit
        }
        Op::LeaseRemote => Done::lease(&engine.attach(id, caller).await?.lease_remote().await?),
        Op::LeaseHeartbeat(lease) => {
            engine
                .attach(id, caller)
                .await?
                .heartbeat(LeaseId(lease))
                .await?;
            Done::Unit
        }
        Op::LeaseRelease(lease) => {
            engine
                .attach(id, caller)
                .await?
                .release_lease(LeaseId(lease))
                .await?;
            Done::Unit
        }
    })
}

/// Removes a forwarded request's `pending` entry however its wait ends:
/// answered, timed out, or dropped by a caller that stopped waiting.
struct PendingGuard<'a> {
    shared: &'a Shared,
    req: u128,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.pending.lock().unwrap().remove(&self.req);
    }
}

/// The wire form of a local caller: a user by pseudonym, never in clear.
fn wire_caller(shared: &Shared, caller: &Caller) -> WireCaller {
    match caller {
        Caller::User(owner) => WireCaller::User(shared.keyring.owner_pseudonym(owner)),
        Caller::Operator(name) => WireCaller::Operator(name.to_string()),
    }
}

/// Sends `op` to `node`, the owner of `id`, and waits for its answer.
pub(crate) async fn forward(
    shared: &Shared,
    node: &str,
    id: SessionId,
    caller: &Caller,
    op: Op,
) -> Result<Done, ClusterError> {
    let timeout = shared.config.forward_timeout;
    let unreachable = || ClusterError::OwnerUnreachable {
        id,
        node: node.to_string(),
        timeout,
    };
    let req: u128 = rand::random();
    let (answer, answered) = oneshot::channel();
    shared.pending.lock().unwrap().insert(
        req,
        Pending {
            node: node.to_string(),
            answer,
        },
    );
    let _guard = PendingGuard { shared, req };
    let request = Request {
        req,
        id,
        caller: wire_caller(shared, caller),
        op,
    };
    let channel = shared.directory.keys().requests(node);
    let frame = shared.keyring.seal(&shared.sender(), &channel, &request);
    shared.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    let reply = match shared.directory.publish(&channel, &frame).await {
        Ok(0) => {
            // Nobody listens for that node: whatever this node cached for it is dead.
            shared.forget_routes_to(node);
            Err(unreachable())
        }
        Ok(_) => match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(unreachable()),
        },
        Err(error) => Err(error),
    };
    match reply?.result {
        Ok(done) => Ok(done),
        Err(error) => Err(match error.into_session_error(id, caller) {
            Ok(error) => ClusterError::Session(error),
            Err(message) => ClusterError::Remote {
                id,
                node: node.to_string(),
                message,
            },
        }),
    }
}

/// A verified request from another node: served by a bounded set of
/// workers, or refused at once with `busy` when all are taken.
pub(crate) async fn accept(shared: &Arc<Shared>, request: Verified<Request>) {
    let from = request.from.node.clone();
    let Verified { key_id, body, .. } = request;
    let caller = match body.caller {
        WireCaller::Operator(name) => {
            if !shared.config.operator_nodes.contains(&from) {
                let channel = shared.directory.keys().requests(shared.node());
                shared.rejected(&channel, Rejection::NotPermitted, Some(&from));
                let why = format!("node {from} is not in cluster.operator_nodes");
                reply(shared, &from, body.req, Err(WireError::NotPermitted(why))).await;
                return;
            }
            Caller::Operator(Arc::from(format!("{from}/{name}")))
        }
        WireCaller::User(pseudonym) => shared.user_for(body.id, &key_id, &pseudonym),
    };
    let Ok(permit) = shared.serving.clone().try_acquire_owned() else {
        shared.counters.refused_busy.fetch_add(1, Ordering::Relaxed);
        let limit = shared.config.max_served_requests;
        reply(shared, &from, body.req, Err(WireError::Busy { limit })).await;
        return;
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        shared.counters.served.fetch_add(1, Ordering::Relaxed);
        // The asking node stops waiting after forward_timeout: so does the
        // worker, so one slow close cannot hold a permit for long.
        let limit = shared.config.forward_timeout;
        let work = execute(&shared, body.id, caller, body.op);
        let result = match tokio::time::timeout(limit, work).await {
            Ok(result) => result.map_err(|e| WireError::from(&e)),
            Err(_) => Err(WireError::Other(format!(
                "not done within forward_timeout ({} ms); it goes on on the owner node",
                limit.as_millis()
            ))),
        };
        // Free before answering: once the asker has its answer, the worker is free.
        drop(permit);
        reply(&shared, &from, body.req, result).await;
    });
}

async fn reply(shared: &Shared, to: &str, req: u128, result: Result<Done, WireError>) {
    let channel = shared.directory.keys().replies(to);
    let frame = shared
        .keyring
        .seal(&shared.sender(), &channel, &Reply { req, result });
    if let Err(error) = shared.directory.publish(&channel, &frame).await {
        shared.degraded("forwarded reply", &error);
    }
}

/// A verified answer: handed to the request it answers, if this node asked
/// it of that very node; anything else is refused.
pub(crate) fn answered(shared: &Shared, reply: Verified<Reply>) {
    let mut pending = shared.pending.lock().unwrap();
    let asked = pending
        .get(&reply.body.req)
        .is_some_and(|p| p.node == reply.from.node);
    if !asked {
        drop(pending);
        let channel = shared.directory.keys().replies(shared.node());
        shared.rejected(&channel, Rejection::NotPermitted, Some(&reply.from.node));
        return;
    }
    if let Some(waiting) = pending.remove(&reply.body.req) {
        let _ = waiting.answer.send(reply.body);
    }
}
