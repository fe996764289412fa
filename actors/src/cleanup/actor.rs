//! Ground rules: a cleanup actor never touches the GPU. It queues each end
//! (urgent ends first), and one dispatcher task hands releases to the pool as
//! the load tier allows: at most `max_in_flight` unanswered, paced by the
//! tier's limiter, except while allocations wait for memory (then nothing
//! holds release back). Each pool answer refunds the budget and sends the
//! receipt to the registry.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::pacer::{Load, Pacer};
use super::queue::{Queued, ReleaseQueue};
use crate::budget::Budget;
use crate::clock;
use crate::events::{LifecycleEvent, ReleaseReceipt, SessionEndEvent};
use crate::gpu::GpuPool;
use crate::hooks::Hooks;
use crate::registry::ReleaseCompleted;

/// What the cleanup actor and its dispatcher share.
#[derive(Clone)]
pub(crate) struct Release {
    pub(crate) pool: Arc<dyn GpuPool>,
    pub(crate) pacer: Arc<Pacer>,
    pub(crate) queue: Arc<ReleaseQueue>,
    pub(crate) budget: Arc<Budget>,
    pub(crate) hooks: Arc<Hooks>,
    pub(crate) registry: Recipient<ReleaseCompleted>,
}

pub(crate) struct CleanupActor {
    release: Release,
    mailbox_capacity: usize,
}

impl CleanupActor {
    pub(crate) fn new(release: Release, mailbox_capacity: usize) -> Self {
        CleanupActor {
            release,
            mailbox_capacity,
        }
    }
}

impl Actor for CleanupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
        // A task of its own (not `ctx.spawn`): it runs as long as the engine.
        actix::spawn(dispatch(self.release.clone()));
    }
}

impl Handler<LifecycleEvent> for CleanupActor {
    type Result = ();

    fn handle(&mut self, event: LifecycleEvent, _ctx: &mut Self::Context) {
        let LifecycleEvent::Ended(ended) = event else {
            return;
        };
        if self.release.hooks.is_empty() {
            enqueue(&self.release, ended, std::time::Duration::ZERO);
            return;
        }
        // Hooks first, each bounded by its timeout; then the release.
        let release = self.release.clone();
        actix::spawn(async move {
            let started = clock::now();
            release.hooks.run(&ended).await;
            enqueue(&release, ended, clock::now().saturating_duration_since(started));
        });
    }
}

/// Queues the release of `ended`, unless it held nothing on the GPU.
fn enqueue(release: &Release, ended: Arc<SessionEndEvent>, hooks_took: std::time::Duration) {
    if ReleaseReceipt::nothing_to_release(&ended) {
        return; // the registry closed its books when it published the end
    }
    let cost = release
        .pacer
        .unit()
        .cost(ended.allocations.len().max(1) as u64, ended.gpu_bytes());
    release.queue.push(Queued {
        ended,
        cost,
        queued_at: clock::now(),
        hooks_took,
    });
}

/// Hands queued releases to the pool, by priority, as the load tier allows.
///
/// It waits for a release slot and for the pacer *before* it takes a release
/// off the queue, so whatever is most urgent at that moment goes next: an
/// explicit close that arrives while the pacer holds back an idle expiry
/// overtakes it.
async fn dispatch(release: Release) {
    loop {
        let Some((queued, cost)) = release.queue.peek() else {
            release.queue.arrival().await;
            continue;
        };
        let load = Load {
            queued,
            live_sessions: release.queue.live_sessions(),
            waiting_bytes: release.budget.waiting_bytes(),
        };
        // At shutdown the deadline matters more than smoothing the storm.
        let unpaced = release.queue.unpaced();
        let tier = match unpaced {
            true => release.pacer.top(),
            false => release.pacer.select(load),
        };
        let max_in_flight = u64::from(release.pacer.tier(tier).max_in_flight);
        release.queue.room_in_flight(max_in_flight).await;
        // Allocations waiting for memory: pacing must not hold release below
        // that demand, so it is skipped.
        let paced = release.budget.waiting_bytes() == 0 && !unpaced;
        if paced {
            release.pacer.admit(tier, cost).await;
        }
        let Some(next) = release.queue.pop() else {
            continue;
        };
        if paced && next.cost > cost {
            release.pacer.admit(tier, next.cost - cost).await;
        }
        let paced_for = clock::now().saturating_duration_since(next.queued_at);
        let gpu_bytes = next.ended.gpu_bytes();
        release.queue.dispatched(gpu_bytes);
        let (reply, report) = oneshot::channel();
        release.pool.release_session(next.ended.id, reply);
        actix::spawn(receipt(release.clone(), next.ended, report, paced_for));
    }
}

async fn receipt(
    release: Release,
    ended: Arc<SessionEndEvent>,
    report: oneshot::Receiver<crate::gpu::ReleaseReport>,
    paced_for: std::time::Duration,
) {
    let gpu_bytes = ended.gpu_bytes();
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
            // The memory is back: the budget may hand it out again.
            release.budget.refund(&ended.owner, gpu_bytes);
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
    release.queue.answered(gpu_bytes);
    // The receipt closes the session's books; it must reach the registry.
    let _ = release.registry.send(ReleaseCompleted { receipt }).await;
}
