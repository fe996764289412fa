//! The release queue: ended sessions whose memory is on its way back.
//!
//! Ground rules: the queue holds memory that is being given back, so nothing
//! in it is ever dropped; it is unbounded by design and bounded in practice
//! by the sessions that exist. Two classes, each FIFO: explicit ends and
//! pressure evictions (`urgent`) go before expiries (`deferred`), because an
//! application or an allocation is waiting for the former and nobody for the
//! latter.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::events::SessionEndEvent;
use crate::lifecycle::EndReason;

/// A release waiting in the queue.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) ended: Arc<SessionEndEvent>,
    /// What it costs in the pacing unit.
    pub(crate) cost: u64,
    /// When it entered the queue.
    pub(crate) queued_at: std::time::Instant,
    /// How long its pre-destroy hooks ran before it was queued.
    pub(crate) hooks_took: std::time::Duration,
}

#[derive(Debug, Default)]
struct Classes {
    urgent: VecDeque<Queued>,
    deferred: VecDeque<Queued>,
    cost: u64,
    bytes: u64,
}

/// What the queue holds, and the load gauges release is paced by.
#[derive(Debug, Default)]
pub(crate) struct ReleaseQueue {
    /// Messages live sessions handled since the engine started (turns,
    /// allocations, reads and writes: whatever marks a session active). The
    /// release back-off protects live traffic only when there is some.
    live_messages: std::sync::atomic::AtomicU64,
    /// `live_messages` when the release back-off last looked.
    live_messages_seen: AtomicU64,
    classes: Mutex<Classes>,
    arrived: Notify,
    /// Releases handed to the pool and not yet answered.
    in_flight: AtomicU64,
    /// GPU bytes of those.
    in_flight_bytes: AtomicU64,
    answered: Notify,
    /// Live sessions, kept by the registry.
    live_sessions: AtomicU64,
    /// Raised at shutdown: release at the top tier, without pacing, so the
    /// memory is back before the deadline.
    unpaced: AtomicBool,
    /// Halvings of the tier's `max_in_flight` in force for live traffic.
    backoff_level: AtomicU32,
    /// The longest a release waited for the GPU thread (µs) since the
    /// dispatcher last looked: how long a live allocation waits there too.
    pool_wait_us: AtomicU64,
}

/// Whether an end goes before others.
pub(crate) fn is_urgent(reason: EndReason) -> bool {
    !matches!(reason, EndReason::IdleTimeout | EndReason::TtlExpired)
}

/// How much the release queue holds, for stats and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReleaseQueueStats {
    /// Ended sessions waiting for their release to start.
    pub queued: u64,
    /// Of those, ends that go first (closes, disconnects, evictions, ...).
    pub queued_urgent: u64,
    /// GPU bytes the queued sessions hold.
    pub queued_bytes: u64,
    /// Releases handed to the GPU thread and not yet answered.
    pub in_flight: u64,
    /// GPU bytes of those.
    pub in_flight_bytes: u64,
    /// How far release has backed off for live traffic (`release.live_lag`):
    /// each level halves the tier's `max_in_flight`; 0 is full speed, and
    /// always 0 while nothing is queued or in flight.
    pub backoff_level: u32,
}

impl ReleaseQueue {
    fn classes(&self) -> std::sync::MutexGuard<'_, Classes> {
        self.classes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn push(&self, queued: Queued) {
        let classes = self.classes();
        self.push_locked(classes, queued);
    }

    fn push_locked(&self, mut classes: std::sync::MutexGuard<'_, Classes>, queued: Queued) {
        classes.cost += queued.cost;
        classes.bytes += queued.ended.gpu_bytes();
        if is_urgent(queued.ended.reason) {
            classes.urgent.push_back(queued);
        } else {
            classes.deferred.push_back(queued);
        }
        drop(classes);
        self.arrived.notify_one();
    }

    /// Claims the release pipeline for one release of `bytes` if it is idle:
    /// nothing queued, taken or in flight. The release is then counted in
    /// flight, and the caller hands it to the pool itself (or gives the
    /// claim back with [`Self::push_unclaimed`]). Checked under the queue's
    /// lock, where the dispatcher takes releases, so a claim never overtakes
    /// a release queued or taken before it.
    pub(crate) fn claim_idle(&self, bytes: u64) -> bool {
        let classes = self.classes();
        let idle = classes.urgent.is_empty()
            && classes.deferred.is_empty()
            && self
                .in_flight
                .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if idle {
            self.in_flight_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        idle
    }

    /// Gives back a claim of [`Self::claim_idle`] and queues the release
    /// instead, in one step.
    pub(crate) fn push_unclaimed(&self, queued: Queued) {
        let classes = self.classes();
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.in_flight_bytes
            .fetch_sub(queued.ended.gpu_bytes(), Ordering::Relaxed);
        self.push_locked(classes, queued);
    }

    /// Puts back a release the dispatcher had taken but not handed to the
    /// pool (it panicked in between, or the pacer refused it a place in a
    /// batch): first in its class, as it was, and no longer in flight.
    pub(crate) fn requeue(&self, queued: Queued) {
        let mut classes = self.classes();
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.in_flight_bytes
            .fetch_sub(queued.ended.gpu_bytes(), Ordering::Relaxed);
        classes.cost += queued.cost;
        classes.bytes += queued.ended.gpu_bytes();
        if is_urgent(queued.ended.reason) {
            classes.urgent.push_front(queued);
        } else {
            classes.deferred.push_front(queued);
        }
        drop(classes);
        self.arrived.notify_one();
    }

    /// The queue's total cost and the cost of the release that would go next,
    /// if there is one.
    pub(crate) fn peek(&self) -> Option<(u64, u64)> {
        let classes = self.classes();
        let next = classes.urgent.front().or(classes.deferred.front())?;
        Some((classes.cost, next.cost))
    }

    /// Takes the most urgent release now (it may have arrived since `peek`),
    /// counted in flight from this moment, its bytes too: taken for the pool.
    /// Its bytes move from queued to in flight under the lock, so
    /// [`Self::bytes_pending`] never misses them while the dispatcher holds
    /// the release (waiting for the pacer, say).
    pub(crate) fn pop(&self) -> Option<Queued> {
        let mut classes = self.classes();
        let next = classes
            .urgent
            .pop_front()
            .or_else(|| classes.deferred.pop_front())?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.in_flight_bytes
            .fetch_add(next.ended.gpu_bytes(), Ordering::Relaxed);
        classes.cost -= next.cost;
        classes.bytes -= next.ended.gpu_bytes();
        Some(next)
    }

    /// Resolves when something may have been pushed since the last `pop`.
    pub(crate) async fn arrival(&self) {
        self.arrived.notified().await;
    }

    pub(crate) fn answered(&self, bytes: u64) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.in_flight_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.answered.notify_one();
    }

    /// Releases taken for the pool (handed over or about to be) and not yet answered.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Waits until fewer than `max` releases are in flight.
    pub(crate) async fn room_in_flight(&self, max: u64) {
        while self.in_flight.load(Ordering::Relaxed) >= max {
            self.answered.notified().await;
        }
    }

    /// Counts one more live session unless `max` are live already (every
    /// shard's opens count against the one limit); `false`: refused.
    pub(crate) fn admit_session(&self, max: u64) -> bool {
        self.live_sessions
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |live| {
                (live < max).then_some(live + 1)
            })
            .is_ok()
    }

    /// A live session ended (or an admitted open was refused after all).
    pub(crate) fn session_gone(&self) {
        let _ = self
            .live_sessions
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |live| {
                Some(live.saturating_sub(1))
            });
    }

    /// From now on, release as fast as the pool answers (shutdown).
    pub(crate) fn lift_pacing(&self) {
        self.unpaced.store(true, Ordering::Relaxed);
        // The dispatcher may be asleep in the pacer or waiting for arrivals.
        self.arrived.notify_one();
    }

    pub(crate) fn unpaced(&self) -> bool {
        self.unpaced.load(Ordering::Relaxed)
    }

    pub(crate) fn set_backoff_level(&self, level: u32) {
        self.backoff_level.store(level, Ordering::Relaxed);
    }

    /// A release waited `wait` for the GPU thread to take it.
    pub(crate) fn note_pool_wait(&self, wait: std::time::Duration) {
        let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.pool_wait_us.fetch_max(micros, Ordering::Relaxed);
    }

    /// The longest wait noted since the last call.
    pub(crate) fn take_pool_wait(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.pool_wait_us.swap(0, Ordering::Relaxed))
    }

    pub(crate) fn live_sessions(&self) -> u64 {
        self.live_sessions.load(Ordering::Relaxed)
    }

    /// A live session handled a message (see `live_messages`).
    pub(crate) fn note_live_message(&self) {
        self.live_messages.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the live messages so far as seen by the release back-off;
    /// `true` if none came since it last looked.
    pub(crate) fn see_live_messages(&self) -> bool {
        let messages = self.live_messages.load(Ordering::Relaxed);
        self.live_messages_seen.swap(messages, Ordering::Relaxed) == messages
    }

    /// Whether no live message came since the back-off last looked (a look
    /// that marks nothing seen: the dispatcher's probe still gets to see them).
    pub(crate) fn live_quiet(&self) -> bool {
        self.live_messages.load(Ordering::Relaxed)
            == self.live_messages_seen.load(Ordering::Relaxed)
    }

    /// GPU bytes on their way back: queued or in flight.
    pub(crate) fn bytes_pending(&self) -> u64 {
        self.classes().bytes + self.in_flight_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> ReleaseQueueStats {
        let classes = self.classes();
        ReleaseQueueStats {
            queued: (classes.urgent.len() + classes.deferred.len()) as u64,
            queued_urgent: classes.urgent.len() as u64,
            queued_bytes: classes.bytes,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            in_flight_bytes: self.in_flight_bytes.load(Ordering::Relaxed),
            backoff_level: self.backoff_level.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use super::*;
    use crate::events::Drain;
    use crate::ids::{Owner, SessionId, TraceId};

    fn queued(bytes: u64) -> Queued {
        let ended = SessionEndEvent {
            id: SessionId::random(),
            owner: Owner::new("queue-test"),
            reason: EndReason::Closed,
            allocations: Vec::new(),
            bytes,
            in_flight_bytes: 0,
            offloaded_bytes: 0,
            created_at: SystemTime::now(),
            last_active_at: SystemTime::now(),
            ended_at: SystemTime::now(),
            ended_instant: Instant::now(),
            deadline: None,
            drain: Drain::default(),
            version: 1,
            trace_id: TraceId::random(),
            ended_by: None,
            end_trace_id: None,
            client_ip: None,
        };
        Queued {
            ended: Arc::new(ended),
            cost: 1,
            queued_at: Instant::now(),
            hooks_took: std::time::Duration::ZERO,
        }
    }

    /// Memory pressure counts the bytes on their way back before it evicts
    /// anyone: a release the dispatcher has taken but not yet handed to the
    /// pool (waiting for the pacer) is still on its way back.
    #[test]
    fn bytes_taken_by_the_dispatcher_stay_pending_until_answered() {
        let queue = ReleaseQueue::default();
        queue.push(queued(4096));
        queue.push(queued(1024));
        assert_eq!(queue.bytes_pending(), 5120);
        let taken = queue.pop().expect("queued");
        assert_eq!(queue.bytes_pending(), 5120, "taken, not yet handed over");
        assert_eq!(queue.stats().in_flight_bytes, 4096);
        queue.requeue(taken);
        assert_eq!(queue.bytes_pending(), 5120, "put back");
        assert_eq!(queue.stats().in_flight_bytes, 0);
        assert_eq!(queue.stats().queued_bytes, 5120);
        let taken = queue.pop().expect("queued");
        queue.answered(taken.ended.gpu_bytes());
        assert_eq!(queue.bytes_pending(), 1024, "answered: back");
        assert_eq!(queue.in_flight(), 0);
    }

    /// The idle shortcut's claim counts one release and its bytes in
    /// flight; given back, they are queued instead, nothing counted twice.
    #[test]
    fn a_claim_given_back_is_queued_and_counted_once() {
        let queue = ReleaseQueue::default();
        assert!(queue.claim_idle(4096));
        assert!(!queue.claim_idle(1), "one release in flight: not idle");
        assert_eq!(queue.bytes_pending(), 4096);
        queue.push_unclaimed(queued(4096));
        assert_eq!(queue.bytes_pending(), 4096);
        assert_eq!(queue.in_flight(), 0);
        assert!(!queue.claim_idle(1), "one release queued: not idle");
    }
}
