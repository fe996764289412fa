//! A GPU pool that only counts: for tests of the engine itself (no device needed).
//! The product's tests use the real wgpu pool instead.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::oneshot;

use super::{AllocRequest, Allocated, GpuError, GpuPool, PoolInfo, PoolStats, ReleaseReport};
use crate::ids::{AllocationId, SessionId};

/// An in-memory stand-in for a GPU: allocations are entries in a map.
///
/// Answers synchronously on the caller's thread; it never blocks for long
/// because there is no device behind it. `capacity` simulates a full device.
#[derive(Debug)]
pub struct InMemoryPool {
    info: PoolInfo,
    capacity: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<SessionId, Vec<(AllocationId, u64)>>,
    stats: PoolStats,
}

impl State {
    /// Counts `buffers` (already out of the map) as released; returns (buffers, bytes).
    fn forget(&mut self, buffers: &[(AllocationId, u64)]) -> (u64, u64) {
        let count = buffers.len() as u64;
        let bytes: u64 = buffers.iter().map(|(_, b)| b).sum();
        self.stats.live_buffers -= count;
        self.stats.live_bytes -= bytes;
        self.stats.released_total += count;
        (count, bytes)
    }
}

impl InMemoryPool {
    /// A pool that holds at most `capacity` bytes, with buffers up to `max_buffer_size`.
    pub fn new(capacity: u64, max_buffer_size: u64) -> Self {
        InMemoryPool {
            info: PoolInfo {
                adapter: "in-memory".into(),
                backend: "memory".into(),
                device_type: "none".into(),
                max_buffer_size,
                size_alignment: 1,
                min_buffer_bytes: 1,
            },
            capacity,
            state: Mutex::new(State::default()),
        }
    }

    fn report(
        session: SessionId,
        (buffers, bytes): (u64, u64),
        started_at: Instant,
    ) -> ReleaseReport {
        ReleaseReport {
            session,
            buffers,
            bytes,
            started_at,
            finished_at: Instant::now(),
            batch_len: 1,
            host_bytes: 0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the counters half-updated: every update is one statement.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl GpuPool for InMemoryPool {
    fn info(&self) -> &PoolInfo {
        &self.info
    }

    fn allocate(&self, request: AllocRequest, reply: oneshot::Sender<Result<Allocated, GpuError>>) {
        let mut state = self.lock();
        let result = if state.stats.live_bytes + request.bytes > self.capacity {
            Err(GpuError::OutOfMemory {
                bytes: request.bytes,
            })
        } else {
            state
                .sessions
                .entry(request.session)
                .or_default()
                .push((request.id, request.bytes));
            let stats = &mut state.stats;
            stats.live_buffers += 1;
            stats.live_bytes += request.bytes;
            stats.peak_bytes = stats.peak_bytes.max(stats.live_bytes);
            stats.allocated_total += 1;
            Ok(Allocated {
                id: request.id,
                bytes: request.bytes,
            })
        };
        drop(state);
        let _ = reply.send(result);
    }

    fn release_session(&self, session: SessionId, reply: oneshot::Sender<ReleaseReport>) {
        let started_at = Instant::now();
        let mut state = self.lock();
        let buffers = state.sessions.remove(&session).unwrap_or_default();
        let freed = state.forget(&buffers);
        drop(state);
        let _ = reply.send(Self::report(session, freed, started_at));
    }

    fn release_allocations(
        &self,
        session: SessionId,
        ids: Vec<AllocationId>,
        reply: oneshot::Sender<ReleaseReport>,
    ) {
        let started_at = Instant::now();
        let listed: HashSet<AllocationId> = ids.into_iter().collect();
        let mut state = self.lock();
        // Only this session's entry is looked at, so another session's buffer
        // with a listed id is never touched.
        let released = match state.sessions.get_mut(&session) {
            Some(live) => {
                let (released, kept) = std::mem::take(live)
                    .into_iter()
                    .partition(|(id, _)| listed.contains(id));
                *live = kept;
                if live.is_empty() {
                    // No empty entries: `sessions_holding_memory` lists the map's keys.
                    state.sessions.remove(&session);
                }
                released
            }
            None => Vec::new(),
        };
        let freed = state.forget(&released);
        drop(state);
        let _ = reply.send(Self::report(session, freed, started_at));
    }

    fn sessions_holding_memory(&self, reply: oneshot::Sender<Vec<SessionId>>) {
        let mut holders: Vec<SessionId> = self.lock().sessions.keys().copied().collect();
        holders.sort_unstable();
        let _ = reply.send(holders);
    }

    fn stats(&self) -> PoolStats {
        self.lock().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocate(pool: &InMemoryPool, session: SessionId, bytes: u64) -> AllocationId {
        let (reply, answer) = oneshot::channel();
        let id = AllocationId::next();
        pool.allocate(AllocRequest { session, id, bytes }, reply);
        answer.blocking_recv().unwrap().unwrap().id
    }

    fn release_allocations(
        pool: &InMemoryPool,
        session: SessionId,
        ids: &[AllocationId],
    ) -> ReleaseReport {
        let (reply, answer) = oneshot::channel();
        pool.release_allocations(session, ids.to_vec(), reply);
        answer.blocking_recv().unwrap()
    }

    fn release_session(pool: &InMemoryPool, session: SessionId) -> ReleaseReport {
        let (reply, answer) = oneshot::channel();
        pool.release_session(session, reply);
        answer.blocking_recv().unwrap()
    }

    fn holders(pool: &InMemoryPool) -> Vec<SessionId> {
        let (reply, answer) = oneshot::channel();
        pool.sessions_holding_memory(reply);
        answer.blocking_recv().unwrap()
    }

    #[test]
    fn partial_release_counts_only_the_listed_live_buffers() {
        let pool = InMemoryPool::new(1 << 30, 1 << 20);
        let session = SessionId::random();
        let a = allocate(&pool, session, 100);
        let b = allocate(&pool, session, 200);
        let c = allocate(&pool, session, 400);

        let report = release_allocations(&pool, session, &[a, c, a]);
        assert_eq!(
            (report.session, report.buffers, report.bytes),
            (session, 2, 500),
            "an id listed twice counts once"
        );
        assert!(report.finished_at >= report.started_at);
        let stats = pool.stats();
        assert_eq!(
            (stats.live_buffers, stats.live_bytes, stats.released_total),
            (1, 200, 2)
        );

        let again = release_allocations(&pool, session, &[a, c]);
        assert_eq!((again.buffers, again.bytes), (0, 0), "already released");

        let rest = release_session(&pool, session);
        assert_eq!(
            (rest.buffers, rest.bytes),
            (1, 200),
            "release_session frees only what is left"
        );
        assert_eq!(release_allocations(&pool, session, &[b]).buffers, 0);
        let stats = pool.stats();
        assert_eq!(
            (stats.live_buffers, stats.live_bytes, stats.released_total),
            (0, 0, 3)
        );
        assert_eq!(stats.allocated_total, 3);
    }

    #[test]
    fn foreign_and_unknown_ids_are_skipped() {
        let pool = InMemoryPool::new(1 << 30, 1 << 20);
        let (mine, other) = (SessionId::random(), SessionId::random());
        let kept = allocate(&pool, mine, 64);
        let foreign = allocate(&pool, other, 128);
        let unknown = AllocationId::next();

        let report = release_allocations(&pool, mine, &[foreign, unknown]);
        assert_eq!((report.buffers, report.bytes), (0, 0));
        let report = release_allocations(&pool, SessionId::random(), &[kept, foreign]);
        assert_eq!(
            (report.buffers, report.bytes),
            (0, 0),
            "a session with no buffers frees nothing"
        );
        assert_eq!(release_allocations(&pool, mine, &[]).buffers, 0);
        assert_eq!(pool.stats().live_buffers, 2);

        assert_eq!(release_session(&pool, other).bytes, 128);
        assert_eq!(release_session(&pool, mine).bytes, 64);
    }

    #[test]
    fn sessions_holding_memory_lists_exactly_the_holders() {
        let pool = InMemoryPool::new(1 << 30, 1 << 20);
        assert_eq!(holders(&pool), Vec::<SessionId>::new());
        let (a, b, c) = (
            SessionId::random(),
            SessionId::random(),
            SessionId::random(),
        );
        let a1 = allocate(&pool, a, 10);
        let a2 = allocate(&pool, a, 10);
        allocate(&pool, b, 10);
        allocate(&pool, c, 10);

        let mut expected = vec![a, b, c];
        expected.sort_unstable();
        assert_eq!(holders(&pool), expected, "sorted, one entry per session");

        release_session(&pool, b);
        release_allocations(&pool, a, &[a1]);
        let mut expected = vec![a, c];
        expected.sort_unstable();
        assert_eq!(holders(&pool), expected, "a still holds a2");

        release_allocations(&pool, a, &[a2]);
        assert_eq!(
            holders(&pool),
            vec![c],
            "a session whose last buffer went by id is no holder"
        );

        // A failed allocation does not make a holder.
        let small = InMemoryPool::new(5, 100);
        let (reply, answer) = oneshot::channel();
        small.allocate(
            AllocRequest {
                session: a,
                id: AllocationId::next(),
                bytes: 10,
            },
            reply,
        );
        assert!(answer.blocking_recv().unwrap().is_err());
        assert!(holders(&small).is_empty());
    }
}
