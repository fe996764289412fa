//! Requests for sessions owned by another node: forwarded to the owner over
//! Redis pub/sub (request id, reply channel, timeout) and answered with the
//! same result a local call gives. No network stack of our own: Redis is the
//! transport every node already reaches.
//!
//! Delivery is at-most-once. A request that reaches no subscriber (the owner
//! is gone) fails at once; one that gets no answer within
//! `forward_timeout_ms` fails with `ClusterError::OwnerUnreachable`. Closing
//! twice is harmless, so a caller may retry a close.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sessionbus_actors::{Caller, LeaseId, SessionError, SessionId};
use tokio::sync::oneshot;

use super::error::ClusterError;
use super::state::Shared;
use super::wire::{Done, Op, Reply, Request, WireError};

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

/// Sends `op` to `node`, the owner of `id`, and waits for its answer.
pub(crate) async fn forward(
    shared: &Shared,
    node: &str,
    id: SessionId,
    caller: &Caller,
    op: Op,
) -> Result<Done, ClusterError> {
    let timeout = Duration::from_millis(shared.config.forward_timeout_ms);
    let unreachable = || ClusterError::OwnerUnreachable {
        id,
        node: node.to_string(),
        timeout,
    };
    let req = shared.next_request.fetch_add(1, Ordering::Relaxed);
    let (answer, answered) = oneshot::channel();
    shared.pending.lock().unwrap().insert(req, answer);
    let request = Request {
        req,
        from: shared.node().to_string(),
        id,
        caller: caller.into(),
        op,
    };
    let payload = serde_json::to_string(&request).expect("requests serialize");
    let channel = shared.directory.keys().requests(node);
    shared.counters.forwarded.fetch_add(1, Ordering::Relaxed);
    let reply = match shared.directory.publish(&channel, &payload).await {
        Ok(0) => Err(unreachable()),
        Ok(_) => match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(unreachable()),
        },
        Err(error) => Err(error),
    };
    shared.pending.lock().unwrap().remove(&req);
    match reply?.result {
        Ok(done) => Ok(done),
        Err(error) => Err(match error.into_session_error(id) {
            Ok(error) => ClusterError::Session(error),
            Err(message) => ClusterError::Remote {
                id,
                node: node.to_string(),
                message,
            },
        }),
    }
}

/// Answers a request another node forwarded here.
pub(crate) async fn serve(shared: Arc<Shared>, request: Request) {
    shared.counters.served.fetch_add(1, Ordering::Relaxed);
    let result = execute(&shared, request.id, request.caller.into(), request.op).await;
    let reply = Reply {
        req: request.req,
        result: result.map_err(|e| WireError::from(&e)),
    };
    let payload = serde_json::to_string(&reply).expect("replies serialize");
    let channel = shared.directory.keys().replies(&request.from);
    if let Err(error) = shared.directory.publish(&channel, &payload).await {
        shared.degraded("forwarded reply", &error);
    }
}

/// An answer to one of this node's forwarded requests.
pub(crate) fn answered(shared: &Shared, reply: Reply) {
    let waiting = shared.pending.lock().unwrap().remove(&reply.req);
    if let Some(waiting) = waiting {
        let _ = waiting.send(reply);
    }
}
