//! Ground rules: a cleanup actor never touches the GPU. It queues each end
//! (urgent ends first), and one dispatcher task hands releases to the pool as
//! the load tier allows: at most `max_in_flight` unanswered, paced by the
//! tier's limiter, except while allocations wait for memory (then nothing
//! holds release back). Each pool answer refunds the budget and sends the
//! receipt to the registry.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::backoff::{self, Backoff, Verdict};
use super::lag_probe;
use super::pacer::{Load, Pacer};
use super::queue::{Queued, ReleaseQueue};
use crate::budget::Budget;
use crate::clock;
use crate::events::{LifecycleEvent, ReleaseReceipt, SessionEndEvent};
use crate::gpu::GpuPool;
use crate::hooks::Hooks;
use crate::protocol::registry::ReleasesCompleted;
use crate::supervision::{Health, ReleaseStep, ReleaseSteps, RestartIntensity, SupervisionConfig};

/// What the cleanup actor and its dispatcher share.
#[derive(Clone)]
pub(crate) struct Release {
    pub(crate) pool: Arc<dyn GpuPool>,
    pub(crate) pacer: Arc<Pacer>,
    pub(crate) queue: Arc<ReleaseQueue>,
    pub(crate) budget: Arc<Budget>,
    pub(crate) hooks: Arc<Hooks>,
    /// How long a release handed to the pool may go unanswered.
    pub(crate) step_timeout: std::time::Duration,
    /// The releases the dispatcher has taken off the queue and not yet
    /// handed to the pool (a batch, in queue order): put back if the
    /// dispatcher panics in between.
    pub(crate) hand: Arc<std::sync::Mutex<VecDeque<Queued>>>,
    pub(crate) health: Arc<Health>,
    pub(crate) limits: SupervisionConfig,
    /// Panics of release work (the dispatcher's, and the pool's on the idle
    /// shortcut) within `limits.within`: past `limits.max_restarts`, escalate.
    pub(crate) panics: Arc<std::sync::Mutex<Option<RestartIntensity>>>,
    /// Every registry shard: a receipt goes to its session's.
    pub(crate) registry: crate::registry::Shards,
}

/// Hosts the dispatcher (and restarts it after a panic). Ends do not pass
/// through its mailbox: the bus hands them to [`intake`] on the publishing
/// shard's thread.
pub(crate) struct CleanupActor {
    release: Release,
}

impl CleanupActor {
    pub(crate) fn new(release: Release) -> Self {
        CleanupActor { release }
    }
}

impl Actor for CleanupActor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        // A task of its own (not `ctx.spawn`): it runs as long as the engine.
        actix::spawn(supervise(self.release.clone()));
    }
}

/// The cleanup's intake, for the bus: every shard calls it as it publishes
/// an end, on its own thread, so the ends of every shard meet in the one
/// release queue without a mailbox in between (a mailbox hop per end was
/// what capped a mass expiry, and the ends waiting in front of it were
/// invisible to the pacer's tiers). The queue is unbounded by design (see
/// `queue.rs`), so the intake is never full.
pub(crate) fn intake(release: Release) -> crate::bus::Intake {
    Arc::new(move |event| take_in(&release, event))
}

fn take_in(release: &Release, event: LifecycleEvent) {
    let LifecycleEvent::Ended(ended) = event else {
        return;
    };
    if release.hooks.is_empty() {
        enqueue(release, ended, std::time::Duration::ZERO);
        return;
    }
    // Hooks first, each bounded by its timeout; then the release.
    let release = release.clone();
    actix::spawn(async move {
        let started = clock::now();
        release.hooks.run(&ended).await;
        enqueue(
            &release,
            ended,
            clock::now().saturating_duration_since(started),
        );
    });
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
    let queued = Queued {
        ended,
        cost,
        queued_at: clock::now(),
        hooks_took,
    };
    if let Some(queued) = hand_over_if_idle(release, queued) {
        release.queue.push(queued);
    }
}

/// With the pipeline idle (nothing queued, taken or in flight; release not
/// giving way to live traffic), the release goes to the pool from here, on
/// the publishing shard's thread, as the dispatcher would have handed it:
/// the pacer admits it first, and its receipt task runs on this thread.
/// What this saves is waking the dispatcher's thread for one release (a
/// cross-thread wake-up for every shard but the first). Gives the release
/// back when it must be queued instead.
fn hand_over_if_idle(release: &Release, queued: Queued) -> Option<Queued> {
    // Only where the back-off would not look (nobody live, no live message
    // since it last looked, ...): otherwise the dispatcher probes first.
    // Not after release work escalated: ends stay queued, as behind the
    // stopped dispatcher (a shutdown counts them unfinished).
    if release.health.is_failed()
        || !backoff_overridden(release, release.queue.live_quiet())
        || !release.queue.claim_idle(queued.ended.gpu_bytes())
    {
        return Some(queued);
    }
    let waiting_bytes = release.budget.waiting_bytes();
    if waiting_bytes == 0 && !release.queue.unpaced() {
        let load = Load {
            queued: queued.cost,
            live_sessions: release.queue.live_sessions(),
            waiting_bytes,
        };
        if !release
            .pacer
            .try_admit(release.pacer.select(load), queued.cost)
        {
            release.queue.push_unclaimed(queued);
            return None;
        }
    }
    let mut handing = Handing::new(release, 1);
    // On the registry's thread, inside its publish: a pool that panics must
    // not take the registry down with it (on the dispatcher's path the
    // supervisor catches it). The release is already recorded, so its reply,
    // dropped by the unwinding, makes an error receipt.
    let id = queued.ended.id;
    let handed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handing.hand(queued)));
    if handed.is_err() {
        tracing::error!(
            target: "sessionbus::supervisor",
            event = "release.failed",
            session_id = %id,
            "the GPU pool panicked while taking a release; it fails with an error receipt"
        );
        // Counted as the dispatcher's panics are: a pool that panics on
        // every release escalates here too.
        note_panic(release, "cleanup.release", 0);
    }
    None
}

/// Runs the dispatcher and restarts it after a panic, up to
/// `supervision.max_restarts` within `supervision.within`; past that it escalates:
/// logged at ERROR, and the runtime marked failed (no new sessions). Work
/// survives a restart: the queue is shared, and a release taken but not yet
/// handed to the pool is put back. A release already handed over is the
/// pool's, answered to its own receipt task, so nothing is released twice.
async fn supervise(release: Release) {
    use futures::FutureExt;
    loop {
        let run = std::panic::AssertUnwindSafe(dispatch(release.clone())).catch_unwind();
        if run.await.is_ok() {
            return;
        }
        let held = std::mem::take(&mut *hand(&release));
        let requeued = held.len();
        // Back in front, in the order they were taken.
        for queued in held.into_iter().rev() {
            release.queue.requeue(queued);
        }
        if !note_panic(&release, "cleanup.dispatch", requeued) {
            return;
        }
    }
}

/// Counts a panic of release work against `supervision.max_restarts` within
/// `supervision.within`: logged at ERROR as a restart, or, past the limit,
/// escalated (the runtime marked failed: no new sessions). `false`: escalated.
fn note_panic(release: &Release, task: &'static str, requeued: usize) -> bool {
    let allowed = {
        let mut panics = release.panics.lock().unwrap_or_else(|p| p.into_inner());
        panics
            .get_or_insert_with(|| {
                RestartIntensity::new(release.limits.max_restarts, release.limits.within)
            })
            .allow(clock::now())
    };
    if !allowed {
        let what = format!(
            "release work ({task}) panicked more than {} times within {}",
            release.limits.max_restarts,
            crate::units::format_duration(release.limits.within)
        );
        tracing::error!(
            target: "sessionbus::supervisor",
            event = "supervisor.escalated",
            task,
            queued = release.queue.stats().queued,
            "{what}; the runtime admits no new sessions"
        );
        release.health.fail(what);
        return false;
    }
    release.health.restarted();
    tracing::error!(
        target: "sessionbus::supervisor",
        event = "supervisor.restarted",
        task,
        requeued,
        queued = release.queue.stats().queued,
        "release work panicked; it goes on with its queue intact"
    );
    true
}

fn hand(release: &Release) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
    release.hand.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hands queued releases to the pool, by priority, as the load tier allows.
///
/// It waits for a release slot and for the pacer *before* it takes a release
/// off the queue, so whatever is most urgent at that moment goes next: an
/// explicit close that arrives while the pacer holds back an idle expiry
/// overtakes it.
async fn dispatch(release: Release) {
    let mut backoff = backoff::State::default();
    loop {
        // Release work escalated (a pool panic on the shortcut can do it
        // while this task runs): it stops here, its queue kept.
        if release.health.is_failed() {
            return;
        }
        let Some((queued, cost)) = release.queue.peek() else {
            // Nothing queued, nothing held back: the next storm starts from
            // full speed and its own probes.
            backoff = backoff::State::default();
            release.queue.set_backoff_level(0);
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
        let level = give_way_to_live_traffic(&release, &mut backoff).await;
        let max_in_flight = Backoff::in_flight(level, release.pacer.tier(tier).max_in_flight);
        release.queue.room_in_flight(u64::from(max_in_flight)).await;
        // Allocations waiting for memory: pacing must not hold release below
        // that demand, so it is skipped.
        let paced = release.budget.waiting_bytes() == 0 && !unpaced;
        if paced {
            release.pacer.admit(tier, cost).await;
        }
        let Some(next) = release.queue.pop() else {
            continue;
        };
        let extra = next.cost.saturating_sub(cost);
        hand(&release).push_back(next);
        if paced && extra > 0 {
            release.pacer.admit(tier, extra).await;
        }
        take_more(&release, tier, paced, u64::from(max_in_flight));
        #[cfg(feature = "testing")]
        if release.health.take_injected_panic() {
            panic!("injected panic in the cleanup dispatcher (fault-injection)");
        }
        hand_over(&release);
    }
}

/// At most this many releases go to the pool as one batch (one receipt task,
/// one message to each shard), so that the first receipts of a long queue
/// are not held back behind the last.
const BATCH_MAX: usize = 256;

/// Adds to the batch at hand whatever may go now as well: while there is
/// room in flight and the pacer admits it without waiting. A release the
/// pacer refuses goes back in front of the queue, for the next turn.
fn take_more(release: &Release, tier: usize, paced: bool, max_in_flight: u64) {
    let mut hand = hand(release);
    let room = max_in_flight.saturating_sub(release.queue.in_flight());
    let wanted = (room as usize).min(BATCH_MAX.saturating_sub(hand.len()));
    hand.reserve(wanted);
    // Every release at hand is counted in flight already (taken by `pop`).
    while hand.len() < BATCH_MAX && release.queue.in_flight() < max_in_flight {
        let Some(more) = release.queue.pop() else {
            break;
        };
        if paced && !release.pacer.try_admit(tier, more.cost) {
            release.queue.requeue(more);
            break;
        }
        hand.push_back(more);
    }
}

/// A release handed to the pool, waiting for its answer.
struct Handed {
    ended: Arc<SessionEndEvent>,
    report: oneshot::Receiver<crate::gpu::ReleaseReport>,
    steps: ReleaseSteps,
    /// The pool's answer once it is in (an error: the pool dropped the reply).
    answer: Option<Result<crate::gpu::ReleaseReport, oneshot::error::RecvError>>,
}

/// Hands the batch at hand to the pool, in order, and starts its receipt
/// task. Each release leaves the hand only as it is handed over, and is
/// counted in flight with its reply's receiver already kept: if the pool
/// panics on one of them, the ones not yet handed over stay at hand (the
/// supervisor puts them back in the queue), and the ones handed over, that
/// one included (its reply was dropped: an error receipt), still get their
/// receipt task, from [`Handing`]'s drop.
fn hand_over(release: &Release) {
    let mut handing = Handing::new(release, hand(release).len());
    loop {
        let Some(next) = hand(release).pop_front() else {
            break;
        };
        handing.hand(next);
    }
}

/// The releases of a batch handed over so far; dropped (at the end of the
/// batch, or while a panic unwinds), it starts their receipt task.
struct Handing {
    release: Release,
    handed: Vec<Handed>,
    handed_at: std::time::Instant,
}

impl Handing {
    /// For a batch of `releases` (sized up front: growing it one release at
    /// a time showed in the profile of a million sessions expiring).
    fn new(release: &Release, releases: usize) -> Self {
        Handing {
            release: release.clone(),
            handed: Vec::with_capacity(releases),
            handed_at: clock::now(),
        }
    }

    /// Hands `next` (counted in flight, its bytes too) to the pool, its
    /// reply's receiver kept first.
    fn hand(&mut self, next: Queued) {
        let steps = ReleaseSteps {
            hooks: next.hooks_took,
            queued: self.handed_at.saturating_duration_since(next.queued_at),
            ..ReleaseSteps::default()
        };
        let (reply, report) = oneshot::channel();
        let id = next.ended.id;
        self.handed.push(Handed {
            ended: next.ended,
            report,
            steps,
            answer: None,
        });
        self.release.pool.release_session(id, reply);
    }
}

impl Drop for Handing {
    fn drop(&mut self) {
        let handed = std::mem::take(&mut self.handed);
        if !handed.is_empty() {
            actix::spawn(receipts(self.release.clone(), handed, self.handed_at));
        }
    }
}

/// Live traffic first (`release.live_lag`): probes the engine thread's
/// queueing delay, takes the GPU thread's (how long releases waited there),
/// and while either runs late gives way (pauses, then probes again) instead
/// of handing out a release. Returns the backoff level now in force;
/// `state` is the controller's memory, kept by the dispatcher.
///
/// Only while live traffic exists and nothing overrides pacing: with nobody
/// live, or no live session handling a message since the last probe (a mass
/// expiry of idle sessions: the engine is late only with the ends
/// themselves), or allocations waiting for memory, or at shutdown, release
/// goes at the tier's full speed (the storm alone is what the engine is
/// there for).
async fn give_way_to_live_traffic(release: &Release, state: &mut backoff::State) -> u32 {
    let backoff = release.pacer.backoff();
    loop {
        if backoff_overridden(release, release.queue.see_live_messages()) {
            *state = backoff::State::default();
            release.queue.set_backoff_level(0);
            return 0;
        }
        // Live messages wait on two threads: the engine's (probed now) and
        // the GPU's (as long as the releases ahead of them there waited).
        let lag = lag_probe::queueing_delay()
            .await
            .max(release.queue.take_pool_wait());
        let verdict;
        (*state, verdict) = backoff.observe(*state, lag);
        release.queue.set_backoff_level(state.level);
        match verdict {
            Verdict::Go => return state.level,
            Verdict::GiveWay => {
                tracing::debug!(
                    target: "sessionbus::supervisor",
                    event = "release.gave_way",
                    lag_us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
                    level = state.level,
                    "release gave way to live traffic: the engine or GPU thread runs late"
                );
                // Step aside for a while rather than spin on the probe:
                // each probe is itself a turn of the engine thread.
                tokio::time::sleep(backoff.pause()).await;
            }
        }
    }
}

/// Whether release goes at the tier's full speed without probing live
/// traffic: the back-off is off, or at shutdown, or nobody is live, or no
/// live session handled a message since the back-off last looked (`quiet`),
/// or allocations wait for memory.
fn backoff_overridden(release: &Release, quiet: bool) -> bool {
    !release.pacer.backoff().is_on()
        || release.queue.unpaced()
        || release.queue.live_sessions() == 0
        || quiet
        || release.budget.waiting_bytes() > 0
}

/// Waits for the pool's answers, at most `step_timeout` after the batch was
/// handed over, and sends the receipts to their shards as the answers come
/// in: whatever has been answered goes at once (one message per shard),
/// whichever order the pool answers in, so no receipt, refund or room in
/// flight waits behind a release still unanswered. At the deadline every
/// release still unanswered is declared stuck.
async fn receipts(release: Release, mut handed: Vec<Handed>, handed_at: std::time::Instant) {
    let deadline = tokio::time::Instant::now() + release.step_timeout;
    let mut ready: Vec<Vec<ReleaseReceipt>> = vec![Vec::new(); release.registry.count()];
    while !handed.is_empty() {
        let answered = tokio::time::timeout_at(deadline, answers(&mut handed)).await;
        let stuck = answered.is_err();
        let mut unanswered = Vec::new();
        for mut one in handed.drain(..) {
            let answer = match one.answer.take() {
                Some(answer) => Some(answer),
                None if stuck => None,
                None => {
                    unanswered.push(one);
                    continue;
                }
            };
            let receipt = receipt(
                &release, &one.ended, answer, one.report, handed_at, one.steps,
            );
            release.queue.answered(one.ended.gpu_bytes());
            ready[release.registry.index_of(receipt.id)].push(receipt);
        }
        send_receipts(&release, &mut ready);
        handed = unanswered;
    }
}

/// Resolves once at least one release of `handed` has its answer (and takes
/// every answer that is in by then).
async fn answers(handed: &mut [Handed]) {
    std::future::poll_fn(|cx| {
        let mut any = false;
        for one in handed.iter_mut().filter(|one| one.answer.is_none()) {
            if let std::task::Poll::Ready(answer) = std::pin::Pin::new(&mut one.report).poll(cx) {
                one.answer = Some(answer);
                any = true;
            }
        }
        match any {
            true => std::task::Poll::Ready(()),
            false => std::task::Poll::Pending,
        }
    })
    .await
}

/// Sends every receipt collected, one message per shard. The receipts close
/// the sessions' books, so they must reach the registry: `do_send` queues
/// them whatever the mailbox holds.
fn send_receipts(release: &Release, ready: &mut [Vec<ReleaseReceipt>]) {
    for (shard, receipts) in ready.iter_mut().enumerate() {
        if !receipts.is_empty() {
            release.registry.all()[shard].do_send(ReleasesCompleted {
                receipts: std::mem::take(receipts),
            });
        }
    }
}

/// The receipt for one release, from the pool's answer (or its absence).
fn receipt(
    release: &Release,
    ended: &Arc<SessionEndEvent>,
    answer: Option<Result<crate::gpu::ReleaseReport, oneshot::error::RecvError>>,
    report: oneshot::Receiver<crate::gpu::ReleaseReport>,
    handed_at: std::time::Instant,
    mut steps: ReleaseSteps,
) -> ReleaseReceipt {
    let gpu_bytes = ended.gpu_bytes();
    match answer {
        Some(Ok(report)) => {
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
            steps.pool_wait = report.started_at.saturating_duration_since(handed_at);
            release.queue.note_pool_wait(steps.pool_wait);
            steps.destroy_and_poll = report
                .finished_at
                .saturating_duration_since(report.started_at);
            ReleaseReceipt {
                id: ended.id,
                reason: ended.reason,
                buffers: report.buffers,
                bytes: report.bytes,
                ended_at: ended.ended_instant,
                released_at: report.finished_at,
                paced_for: steps.queued,
                error: None,
                deadline: ended.deadline,
                trace_id: ended.request_trace_id(),
                steps,
            }
        }
        Some(Err(_)) => {
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "release.failed",
                session_id = %ended.id,
                buffers = ended.allocations.len(),
                "the GPU pool dropped a release request; its memory may not be back"
            );
            ReleaseReceipt {
                paced_for: steps.queued,
                error: Some("the GPU pool is not running".into()),
                steps,
                ..ReleaseReceipt::nothing_released(ended)
            }
        }
        None => {
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "release.stuck",
                session_id = %ended.id,
                step = "destroy_and_poll",
                buffers = ended.allocations.len(),
                timeout_ms = release.step_timeout.as_millis() as u64,
                "a GPU release neither completed nor failed in time; session force-completed"
            );
            steps.stuck = Some(ReleaseStep::DestroyAndPoll);
            // A late answer still gives the budget its bytes back; the pool
            // releases by session, so nothing is released twice.
            let (budget, owner, id) = (release.budget.clone(), ended.owner.clone(), ended.id);
            actix::spawn(async move {
                if let Ok(late) = report.await {
                    budget.refund(&owner, gpu_bytes);
                    tracing::warn!(
                        target: "sessionbus::supervisor",
                        event = "release.late_answer",
                        session_id = %id,
                        buffers = late.buffers,
                        "a release declared stuck was answered late; its memory is back"
                    );
                }
            });
            ReleaseReceipt {
                paced_for: steps.queued,
                error: Some(format!(
                    "stuck: the GPU release did not answer within {:?}",
                    release.step_timeout
                )),
                steps,
                ..ReleaseReceipt::nothing_released(ended)
            }
        }
    }
}
