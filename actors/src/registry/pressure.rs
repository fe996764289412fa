//! Memory pressure: making room in a full budget by evicting idle sessions,
//! least recently active first, softly (offload to host memory) when it can.
//!
//! Ground rules: only sessions that are Established, hold GPU memory, hold no
//! lease and were idle for `budget.evict_idle` are candidates; the session
//! itself re-checks (a lease may have come in since) and refuses rather than
//! lose data. Room already on its way (releases queued or in flight, sessions
//! asked to go) counts before anything more is evicted, so a burst of waiting
//! allocations does not evict more than it needs.

use std::sync::Arc;

use actix::prelude::*;

use super::actor::RegistryActor;
use crate::budget::{Budget, BudgetConfig, BudgetScope};
use crate::cleanup::ReleaseQueue;
use crate::ids::{Caller, IdMap, Owner, SessionId};
use crate::lifecycle::{EndReason, State};
use crate::protocol::registry::{
    CandidateFilter, EvictForKv, KvRoomMade, MakeRoom, MemoryMoved, PressureCandidate,
    PressureCandidates,
};
use crate::protocol::session::{End, Offload};
use crate::session::{SessionError, SessionShared};

/// What the registry keeps about pressure.
pub(super) struct PressureState {
    pub(super) budget: Arc<Budget>,
    pub(super) queue: Arc<ReleaseQueue>,
    evict_idle_us: u64,
    offload: bool,
    offload_host_bytes: u64,
    /// Sessions asked to go (offload or end) and the GPU bytes they held
    /// then, on any shard (kept by the coordinator, which alone decides).
    leaving: IdMap<Leaving>,
    caller: Caller,
    /// A request that could not be met yet, looked at again when sessions
    /// may have become idle enough (one re-check armed at a time).
    unmet: Vec<MakeRoom>,
    recheck_armed: bool,
    pub(super) counters: PressureCounters,
}

/// Counts of pressure actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PressureCounters {
    /// Requests to make room (allocations that found a budget full, under `evict`).
    pub make_room: u64,
    /// Sessions ended with reason `evicted` to make room.
    pub evicted: u64,
    /// Sessions offloaded to host memory (soft eviction).
    pub offloaded: u64,
    /// Offloaded sessions brought back by their next message.
    pub restored: u64,
    /// Evictions and offloads a session refused: work came in after it was
    /// picked (a lease, a message, an allocation).
    pub refused: u64,
    /// Sessions offloaded now.
    pub offloaded_now: u64,
    /// Host bytes they hold.
    pub offloaded_bytes: u64,
}

impl PressureState {
    pub(super) fn new(
        config: &BudgetConfig,
        budget: Arc<Budget>,
        queue: Arc<ReleaseQueue>,
    ) -> Self {
        PressureState {
            budget,
            queue,
            evict_idle_us: u64::try_from(config.evict_idle.as_micros()).unwrap_or(u64::MAX),
            offload: config.offload,
            offload_host_bytes: config.offload_host_memory,
            leaving: IdMap::default(),
            caller: Caller::Operator("sessionbus-pressure".into()),
            unmet: Vec::new(),
            recheck_armed: false,
            counters: PressureCounters::default(),
        }
    }
}

/// A session asked to go (offload or end), as the coordinator keeps it.
pub(super) struct Leaving {
    bytes: u64,
    owner: Owner,
    shared: Arc<SessionShared>,
}

impl RegistryActor {
    /// Bytes already on their way back to `scope` (for `owner` if per owner).
    fn room_coming(&mut self, scope: BudgetScope, owner: &Owner) -> u64 {
        // Still registered (on whichever shard) and still holding memory:
        // once its end is taken, its bytes are in the release queue instead.
        self.pressure
            .leaving
            .retain(|_, leaving| leaving.shared.is_registered() && leaving.shared.gpu_bytes() > 0);
        let leaving: u64 = self
            .pressure
            .leaving
            .values()
            .filter(|leaving| scope == BudgetScope::Device || &leaving.owner == owner)
            .map(|leaving| leaving.bytes)
            .sum();
        match scope {
            // Releases queued or in flight give back device memory; whose
            // owner they belong to is not tracked per owner, so they count
            // for the device budget only.
            BudgetScope::Device => leaving + self.pressure.queue.bytes_pending(),
            _ => leaving,
        }
    }

    /// What is still short for `msg`'s waiting allocations, after the room
    /// that is free and the room already on its way.
    fn room_short(&mut self, msg: &MakeRoom) -> u64 {
        let owner = (msg.scope == BudgetScope::Owner).then_some(&msg.owner);
        let demand = self.pressure.budget.waiting_for(owner);
        let room = self
            .pressure
            .budget
            .room(msg.scope, &msg.owner)
            .unwrap_or(u64::MAX);
        let coming = self.room_coming(msg.scope, &msg.owner);
        demand.saturating_sub(room).saturating_sub(coming)
    }

    /// Sessions idle since `evict_idle` ago that pressure may pick for
    /// `requester`; `None` while the engine is younger than `evict_idle`.
    fn candidate_filter(
        &self,
        requester: SessionId,
        owner: Option<Owner>,
        kv: bool,
    ) -> Option<CandidateFilter> {
        let now_us = self.settings.epoch.now_micros();
        let idle_since_us = now_us.checked_sub(self.pressure.evict_idle_us)?;
        Some(CandidateFilter {
            requester,
            owner,
            kv,
            idle_since_us,
        })
    }

    /// This shard's sessions that `want` matches (established, no lease,
    /// not waiting for memory, holding what pressure looks for, idle enough).
    pub(super) fn candidates(&self, want: &CandidateFilter) -> Vec<PressureCandidate> {
        self.sessions
            .iter()
            .filter(|(id, live)| {
                **id != want.requester
                    && want
                        .owner
                        .as_ref()
                        .is_none_or(|owner| live.shared.owner() == owner)
                    && live.shared.state() == State::Established
                    && live.shared.leases() == 0
                    && !live.shared.is_waiting()
                    && match want.kv {
                        true => live.shared.holds_kv(),
                        false => live.shared.gpu_bytes() > 0,
                    }
                    && live.shared.last_active_us() <= want.idle_since_us
            })
            .map(|(id, live)| PressureCandidate {
                id: *id,
                last_active_us: live.shared.last_active_us(),
                bytes: live.shared.gpu_bytes(),
                owner: live.shared.owner().clone(),
                shared: live.shared.clone(),
            })
            .collect()
    }

    /// Calls `then` with every shard's candidates for `want`, least
    /// recently active first, leaving out sessions already asked to go.
    /// With one shard, at once; with more, once every shard answered, and
    /// this shard (the coordinator) takes no other message meanwhile, so
    /// two decisions never pick from the same stale view.
    fn with_candidates(
        &mut self,
        want: CandidateFilter,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, Vec<PressureCandidate>, &mut Context<Self>) + 'static,
    ) {
        let mut mine = self.candidates(&want);
        let others: Vec<_> = self
            .settings
            .shards
            .all()
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != self.shard)
            .map(|(_, shard)| shard.send(PressureCandidates { want: want.clone() }))
            .collect();
        let sorted = |registry: &Self, mut all: Vec<PressureCandidate>| {
            // A session whose end its shard took while the others answered
            // is no candidate: its bytes already count as on their way back.
            all.retain(|c| {
                !registry.pressure.leaving.contains_key(&c.id) && c.shared.is_registered()
            });
            all.sort_unstable_by_key(|c| (c.last_active_us, c.id));
            all
        };
        if others.is_empty() {
            let all = sorted(self, mine);
            return then(self, all, ctx);
        }
        ctx.wait(futures::future::join_all(others).into_actor(self).map(
            move |answers, registry, ctx| {
                mine.extend(answers.into_iter().flatten().flatten());
                let all = sorted(registry, mine);
                then(registry, all, ctx)
            },
        ));
    }

    /// Asks `candidates` (in order) to go until `need` bytes are covered.
    fn pick_for_room(&mut self, msg: &MakeRoom, candidates: Vec<PressureCandidate>) {
        let mut need = self.room_short(msg);
        if need == 0 {
            return;
        }
        let mut host_bytes = self.settings.pool.stats().offloaded_bytes;
        for candidate in candidates {
            let bytes = candidate.bytes;
            self.pressure.leaving.insert(
                candidate.id,
                Leaving {
                    bytes,
                    owner: candidate.owner.clone(),
                    shared: candidate.shared.clone(),
                },
            );
            let soft =
                self.pressure.offload && host_bytes + bytes <= self.pressure.offload_host_bytes;
            if soft {
                host_bytes += bytes;
                self.offload_or_evict(candidate);
            } else {
                self.evict(&candidate.shared, candidate.last_active_us);
            }
            need = need.saturating_sub(bytes);
            if need == 0 {
                break;
            }
        }
        if need > 0 {
            tracing::debug!(
                target: "sessionbus::supervisor",
                event = "budget.no_candidates",
                scope = %msg.scope,
                short_bytes = need,
                "not enough idle sessions to make room; the allocation waits for releases"
            );
        }
    }

    /// Makes room now, and while some of it is still short and allocations
    /// wait, looks again as sessions grow idle enough to be evicted.
    fn make_room_or_recheck(&mut self, msg: MakeRoom, ctx: &mut Context<Self>) {
        let short = self.room_short(&msg);
        let owner = (msg.scope == BudgetScope::Owner).then(|| msg.owner.clone());
        let want = match short {
            0 => None,
            _ => self.candidate_filter(msg.requester, owner, false),
        };
        let Some(want) = want else {
            return self.recheck_while_waiting(msg, ctx);
        };
        self.with_candidates(want, ctx, move |registry, candidates, ctx| {
            registry.pick_for_room(&msg, candidates);
            registry.recheck_while_waiting(msg, ctx);
        });
    }

    fn recheck_while_waiting(&mut self, msg: MakeRoom, ctx: &mut Context<Self>) {
        // One unmet request per budget (the device's, or one owner's).
        let same = |other: &MakeRoom| {
            other.scope == msg.scope
                && (msg.scope == BudgetScope::Device || other.owner == msg.owner)
        };
        self.pressure.unmet.retain(|other| !same(other));
        // Looked at again while allocations wait, even when the room asked
        // for seems covered (`short == 0`): a session asked to go may yet
        // answer `Kept` (work came in), and its bytes are then not coming.
        if self.pressure.budget.waiting_bytes() == 0 {
            return;
        }
        self.pressure.unmet.push(msg);
        if std::mem::replace(&mut self.pressure.recheck_armed, true) {
            return;
        }
        let every = std::time::Duration::from_micros((self.pressure.evict_idle_us / 4).max(1_000));
        ctx.run_later(every, |registry, ctx| {
            registry.pressure.recheck_armed = false;
            for unmet in std::mem::take(&mut registry.pressure.unmet) {
                registry.make_room_or_recheck(unmet, ctx);
            }
        });
    }

    /// KV blocks ran out: picks up to `msg.sessions` idle sessions holding
    /// KV blocks (established, no lease, not waiting, idle for
    /// `evict_idle`), least recently active first, if `when_exhausted` is
    /// `evict`: to offload while `offload` is on and host memory is within
    /// `offload_host_memory` (the asker sends the offload and waits for it),
    /// else to end as `evicted`. Each checks that it is still that idle
    /// before it goes.
    fn evict_for_kv(
        &mut self,
        msg: EvictForKv,
        ctx: &mut Context<Self>,
        answer: impl FnOnce(KvRoomMade) + 'static,
    ) {
        let made = KvRoomMade {
            host_limit: self.pressure.offload_host_bytes,
            ..KvRoomMade::default()
        };
        if self.settings.wait_rules.when_exhausted != crate::budget::WhenExhausted::Evict {
            return answer(made);
        }
        let Some(want) = self.candidate_filter(msg.requester, None, true) else {
            return answer(made);
        };
        self.with_candidates(want, ctx, move |registry, candidates, _ctx| {
            answer(registry.pick_for_kv(&msg, candidates, made))
        });
    }

    fn pick_for_kv(
        &mut self,
        msg: &EvictForKv,
        candidates: Vec<PressureCandidate>,
        mut made: KvRoomMade,
    ) -> KvRoomMade {
        let kv_host = self.settings.kv.as_ref().map_or(0, |kv| kv.host_bytes());
        // The limit is checked here against the candidates' buffers; each
        // session checks its KV blocks against it as it offloads them
        // (`Offload::host_limit`), and refuses to move them past it.
        let mut host_bytes = self.settings.pool.stats().offloaded_bytes + kv_host;
        for candidate in candidates.into_iter().take(msg.sessions) {
            let bytes = candidate.bytes;
            if msg.offload
                && self.pressure.offload
                && host_bytes + bytes <= self.pressure.offload_host_bytes
            {
                host_bytes += bytes;
                made.offloading.push(candidate.shared);
            } else {
                self.evict(&candidate.shared, candidate.last_active_us);
                made.ended.push(candidate.id);
            }
        }
        made
    }

    /// Ends the session as `evicted` if it is still as idle as it was seen
    /// (`seen_active_us`); the session checks, and answers `Kept` if not.
    fn evict(&mut self, session: &Arc<crate::session::SessionShared>, seen_active_us: u64) {
        let end = End {
            caller: self.pressure.caller.clone(),
            reason: EndReason::Evicted,
            waiter: None,
            deadline: None,
            seen_active_us,
            trace_id: None,
        };
        // Parked, it starts again to take it (and answers `Kept` if active since).
        session.deliver(end);
    }

    /// Offloads the session; if the pool cannot offload, ends it instead.
    /// A session that refuses (work came in) is left alone.
    fn offload_or_evict(&mut self, candidate: PressureCandidate) {
        let caller = self.pressure.caller.clone();
        let host_limit = self.pressure.offload_host_bytes;
        let me = self.settings.registry.clone();
        let offload = candidate.shared.send(Offload {
            caller,
            host_limit: Some(host_limit),
        });
        actix::spawn(async move {
            let answer = match offload {
                Some(offload) => offload.await.unwrap_or(Err(SessionError::RuntimeStopped)),
                None => Err(SessionError::RuntimeStopped),
            };
            let _ = me
                .send(OffloadAnswered {
                    candidate,
                    answer: answer.map(|_| ()),
                })
                .await;
        });
    }
}

/// What came of an offload the registry asked for.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct OffloadAnswered {
    candidate: PressureCandidate,
    answer: Result<(), SessionError>,
}

impl Handler<OffloadAnswered> for RegistryActor {
    type Result = ();

    fn handle(&mut self, msg: OffloadAnswered, _ctx: &mut Self::Context) {
        let candidate = msg.candidate;
        match msg.answer {
            Ok(()) => {}
            Err(SessionError::OffloadRefused { why, .. }) => {
                self.pressure.counters.refused += 1;
                self.pressure.leaving.remove(&candidate.id);
                tracing::debug!(
                    target: "sessionbus::supervisor",
                    event = "session.offload_refused",
                    session_id = %candidate.id,
                    why,
                    "an idle session refused to be offloaded; left alone"
                );
            }
            Err(other) => {
                // The pool cannot offload (or failed to): end the session instead.
                tracing::info!(
                    target: "sessionbus::supervisor",
                    event = "session.offload_failed",
                    session_id = %candidate.id,
                    error = %other,
                    "offload failed; evicting the session instead"
                );
                if candidate.shared.is_registered() {
                    let seen = candidate.shared.last_active_us();
                    self.evict(&candidate.shared, seen);
                }
            }
        }
    }
}

impl Handler<EvictForKv> for RegistryActor {
    type Result = ResponseFuture<KvRoomMade>;

    fn handle(&mut self, msg: EvictForKv, ctx: &mut Self::Context) -> Self::Result {
        let (answer, made) = tokio::sync::oneshot::channel();
        self.evict_for_kv(msg, ctx, move |made| {
            let _ = answer.send(made);
        });
        Box::pin(async move { made.await.unwrap_or_default() })
    }
}

impl Handler<PressureCandidates> for RegistryActor {
    type Result = MessageResult<PressureCandidates>;

    fn handle(&mut self, msg: PressureCandidates, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.candidates(&msg.want))
    }
}

impl Handler<MakeRoom> for RegistryActor {
    type Result = ();

    fn handle(&mut self, msg: MakeRoom, ctx: &mut Self::Context) {
        self.pressure.counters.make_room += 1;
        self.make_room_or_recheck(msg, ctx);
    }
}

impl Handler<MemoryMoved> for RegistryActor {
    type Result = ();

    fn handle(&mut self, msg: MemoryMoved, _ctx: &mut Self::Context) {
        let counters = &mut self.pressure.counters;
        match msg {
            MemoryMoved::Offloaded { id, bytes } => {
                counters.offloaded += 1;
                counters.offloaded_now += 1;
                counters.offloaded_bytes += bytes;
                tracing::info!(
                    target: "sessionbus::supervisor",
                    event = "session.offloaded",
                    session_id = %id,
                    bytes,
                    "an idle session's buffers moved to host memory"
                );
            }
            MemoryMoved::Kept { id } => {
                counters.refused += 1;
                self.pressure.leaving.remove(&id);
                tracing::debug!(
                    target: "sessionbus::supervisor",
                    event = "session.eviction_refused",
                    session_id = %id,
                    "a session picked for eviction was active again; left alone"
                );
            }
            MemoryMoved::Restored { id, bytes, whole } => {
                counters.offloaded_bytes = counters.offloaded_bytes.saturating_sub(bytes);
                if whole {
                    counters.restored += 1;
                    counters.offloaded_now = counters.offloaded_now.saturating_sub(1);
                    tracing::debug!(
                        target: "sessionbus::supervisor",
                        event = "session.restored",
                        session_id = %id,
                        bytes,
                        "an offloaded session's memory is back on the GPU"
                    );
                }
            }
        }
    }
}
