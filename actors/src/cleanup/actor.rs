//! Ground rules: a cleanup actor never touches the GPU. It waits for the
//! pacer, hands the session to the pool (whose own thread destroys and polls),
//! and reports the receipt to the registry. Each end is handled in a task
//! of its own, so one slow release does not hold up the others.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::pacer::Pacer;
use crate::events::{LifecycleEvent, ReleaseReceipt, SessionEndEvent};
use crate::gpu::GpuPool;
use crate::registry::ReleaseCompleted;

pub(crate) struct CleanupActor {
    pool: Arc<dyn GpuPool>,
    pacer: Arc<Pacer>,
    registry: Recipient<ReleaseCompleted>,
    mailbox_capacity: usize,
}

impl CleanupActor {
    pub(crate) fn new(
        pool: Arc<dyn GpuPool>,
        pacer: Arc<Pacer>,
        registry: Recipient<ReleaseCompleted>,
        mailbox_capacity: usize,
    ) -> Self {
        CleanupActor {
            pool,
            pacer,
            registry,
            mailbox_capacity,
        }
    }
}

impl Actor for CleanupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
    }
}

impl Handler<LifecycleEvent> for CleanupActor {
    type Result = ();

    fn handle(&mut self, event: LifecycleEvent, _ctx: &mut Self::Context) {
        let LifecycleEvent::Ended(ended) = event else {
            return;
        };
        if ReleaseReceipt::nothing_to_release(&ended) {
            return; // the registry closed its books when it published the end
        }
        // A task of its own (not `ctx.spawn`): the context would poll every
        // pending release on each wake-up, quadratic under a paced storm.
        let release = release(
            ended,
            self.pool.clone(),
            self.pacer.clone(),
            self.registry.clone(),
        );
        actix::spawn(release);
    }
}

async fn release(
    ended: Arc<SessionEndEvent>,
    pool: Arc<dyn GpuPool>,
    pacer: Arc<Pacer>,
    registry: Recipient<ReleaseCompleted>,
) {
    let paced_for = pacer.admit(ended.allocations.len() as u64).await;
    let (reply, report) = oneshot::channel();
    pool.release_session(ended.id, reply);
    let receipt = match report.await {
        Ok(report) => {
            if report.buffers < ended.allocations.len() as u64 {
                tracing::warn!(
                    target: "sessionbus::supervisor",
                    event = "release.short",
                    session_id = %ended.id,
                    expected = ended.allocations.len(),
                    released = report.buffers,
                    "the pool released fewer buffers than the session held"
                );
            }
            ReleaseReceipt {
                id: ended.id,
                reason: ended.reason,
                buffers: report.buffers,
                bytes: report.bytes,
                ended_at: ended.ended_instant,
                released_at: report.finished_at,
                paced_for,
                error: None,
                deadline: ended.deadline,
                trace_id: ended.request_trace_id(),
            }
        }
        Err(_) => {
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "release.failed",
                session_id = %ended.id,
                buffers = ended.allocations.len(),
                "the GPU pool dropped a release request; its memory may not be back"
            );
            ReleaseReceipt {
                paced_for,
                error: Some("the GPU pool is not running".into()),
                ..ReleaseReceipt::nothing_released(&ended)
            }
        }
    };
    // The receipt closes the session's books; it must reach the registry.
    let _ = registry.send(ReleaseCompleted { receipt }).await;
}
