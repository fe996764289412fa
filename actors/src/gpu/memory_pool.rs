//! A GPU pool without a GPU: for tests of the engine itself (no device needed).
//! The product's tests use the real wgpu pool instead.
//!
//! It keeps what a device would: each buffer's size and contents (zeros until
//! the first write, materialised only then, so big pools of never-written
//! buffers cost nothing), and after an offload the session's host copies.
//! `capacity` bounds the bytes on the "device" only; host copies do not count
//! against it, as on a real machine. Restoring checks it for every buffer
//! before anything moves, which is how tests see an all-or-nothing restore
//! refused on a full device.
//!
//! Counting: `allocated_total` and `released_total` count the engine's
//! allocations (`allocate`, and the releases that end them). An offload and a
//! restore move buffers between `live_*` and `offloaded_*` without counting
//! as a release or an allocation, so at any time
//! `allocated_total - released_total == live_buffers + offloaded_buffers`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::oneshot;

use super::{
    AllocRequest, Allocated, GpuError, GpuPool, OffloadReport, PoolInfo, PoolStats, ReleaseReport,
    RestoreReport,
};
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

/// One buffer, on the "device" or (after an offload) as a host copy.
#[derive(Debug)]
struct Buffer {
    id: AllocationId,
    /// Its size: the request rounded up to the pool's alignment.
    bytes: u64,
    /// `None` until the first write: a buffer never written reads as zeros.
    contents: Option<Vec<u8>>,
}

impl Buffer {
    fn contents(&self) -> Vec<u8> {
        self.contents
            .clone()
            .unwrap_or_else(|| vec![0; self.bytes as usize])
    }
}

#[derive(Debug, Default)]
struct State {
    /// Buffers on the "device", per session. No empty entries:
    /// `sessions_holding_memory` lists the keys.
    sessions: HashMap<SessionId, Vec<Buffer>>,
    /// Host copies of offloaded buffers, per session. No empty entries either.
    offloaded: HashMap<SessionId, Vec<Buffer>>,
    stats: PoolStats,
}

/// Removes the listed buffers of `session` from `map` (all of them when
/// `listed` is `None`), dropping the entry if it becomes empty.
fn take(
    map: &mut HashMap<SessionId, Vec<Buffer>>,
    session: SessionId,
    listed: Option<&HashSet<AllocationId>>,
) -> Vec<Buffer> {
    let Some(held) = map.get_mut(&session) else {
        return Vec::new();
    };
    let Some(listed) = listed else {
        return map.remove(&session).unwrap_or_default();
    };
    let (taken, kept): (Vec<Buffer>, Vec<Buffer>) = std::mem::take(held)
        .into_iter()
        .partition(|buffer| listed.contains(&buffer.id));
    if kept.is_empty() {
        map.remove(&session);
    } else {
        *held = kept;
    }
    taken
}

fn total(buffers: &[Buffer]) -> (u64, u64) {
    (
        buffers.len() as u64,
        buffers.iter().map(|buffer| buffer.bytes).sum(),
    )
}

impl State {
    /// Frees the listed buffers of `session` (all when `listed` is `None`),
    /// on the device and in host memory alike: (buffers, device bytes, host bytes).
    fn release(
        &mut self,
        session: SessionId,
        listed: Option<&HashSet<AllocationId>>,
    ) -> (u64, u64, u64) {
        let (on_device, bytes) = total(&take(&mut self.sessions, session, listed));
        let (in_host, host_bytes) = total(&take(&mut self.offloaded, session, listed));
        let stats = &mut self.stats;
        stats.live_buffers -= on_device;
        stats.live_bytes -= bytes;
        stats.offloaded_buffers -= in_host;
        stats.offloaded_bytes -= host_bytes;
        stats.released_total += on_device + in_host;
        (on_device + in_host, bytes, host_bytes)
    }

    /// The device buffer `id` of `session`, or why there is none.
    fn on_device(&mut self, session: SessionId, id: AllocationId) -> Result<&mut Buffer, GpuError> {
        let held = |map: &HashMap<SessionId, Vec<Buffer>>| {
            map.get(&session)
                .is_some_and(|buffers| buffers.iter().any(|buffer| buffer.id == id))
        };
        if held(&self.offloaded) {
            return Err(GpuError::Offloaded { id });
        }
        // Only this session's list is searched: another session's buffer is
        // as unknown here as a made-up id.
        self.sessions
            .get_mut(&session)
            .and_then(|buffers| buffers.iter_mut().find(|buffer| buffer.id == id))
            .ok_or(GpuError::UnknownBuffer { id })
    }
}

impl InMemoryPool {
    /// A pool that holds at most `capacity` bytes, with buffers up to `max_buffer_size`.
    /// Sizes are not rounded (alignment 1); see [`InMemoryPool::with_size_alignment`].
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

    /// The same pool, rounding every buffer up to a multiple of `alignment`
    /// bytes (wgpu's is 4), refusing writes that are not aligned to it, and
    /// saying that the smallest buffer occupies `alignment` bytes. For tests
    /// of budgets that must count rounded bytes. An `alignment` of 0 counts as 1.
    pub fn with_size_alignment(mut self, alignment: u64) -> Self {
        let alignment = alignment.max(1);
        self.info.size_alignment = alignment;
        self.info.min_buffer_bytes = alignment;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the counters half-updated: no update
        // calls anything that can panic between its first and last statement.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Why `len` bytes at `offset` cannot be written to `buffer`, if they cannot.
    fn check_write(&self, buffer: &Buffer, offset: u64, len: u64) -> Result<(), GpuError> {
        super::check_write(
            buffer.id,
            offset,
            len,
            buffer.bytes,
            self.info.size_alignment,
        )
    }
}

fn release_report(
    session: SessionId,
    (buffers, bytes, host_bytes): (u64, u64, u64),
    started_at: Instant,
) -> ReleaseReport {
    ReleaseReport {
        session,
        buffers,
        bytes,
        started_at,
        finished_at: Instant::now(),
        batch_len: 1,
        host_bytes,
    }
}

impl GpuPool for InMemoryPool {
    fn info(&self) -> &PoolInfo {
        &self.info
    }

    fn allocate(&self, request: AllocRequest, reply: oneshot::Sender<Result<Allocated, GpuError>>) {
        let bytes = self.info.rounded(request.bytes);
        let mut state = self.lock();
        let result = if state.stats.live_bytes + bytes > self.capacity {
            Err(GpuError::OutOfMemory {
                bytes: request.bytes,
            })
        } else {
            state
                .sessions
                .entry(request.session)
                .or_default()
                .push(Buffer {
                    id: request.id,
                    bytes,
                    contents: None,
                });
            let stats = &mut state.stats;
            stats.live_buffers += 1;
            stats.live_bytes += bytes;
            stats.peak_bytes = stats.peak_bytes.max(stats.live_bytes);
            stats.allocated_total += 1;
            Ok(Allocated {
                id: request.id,
                bytes,
            })
        };
        drop(state);
        let _ = reply.send(result);
    }

    fn release_session(&self, session: SessionId, reply: oneshot::Sender<ReleaseReport>) {
        let started_at = Instant::now();
        let freed = self.lock().release(session, None);
        let _ = reply.send(release_report(session, freed, started_at));
    }

    fn release_allocations(
        &self,
        session: SessionId,
        ids: Vec<AllocationId>,
        reply: oneshot::Sender<ReleaseReport>,
    ) {
        let started_at = Instant::now();
        let listed: HashSet<AllocationId> = ids.into_iter().collect();
        // Only this session's entries are looked at, so another session's
        // buffer with a listed id is never touched.
        let freed = self.lock().release(session, Some(&listed));
        let _ = reply.send(release_report(session, freed, started_at));
    }

    fn sessions_holding_memory(&self, reply: oneshot::Sender<Vec<SessionId>>) {
        let state = self.lock();
        // Host copies are memory too: a session holding only those is listed.
        let mut holders: Vec<SessionId> = state
            .sessions
            .keys()
            .chain(state.offloaded.keys())
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        drop(state);
        holders.sort_unstable();
        let _ = reply.send(holders);
    }

    fn stats(&self) -> PoolStats {
        self.lock().stats
    }

    fn write(
        &self,
        session: SessionId,
        id: AllocationId,
        offset: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), GpuError>>,
    ) {
        let mut state = self.lock();
        let result = state.on_device(session, id).and_then(|buffer| {
            self.check_write(buffer, offset, data.len() as u64)?;
            let size = buffer.bytes as usize;
            let contents = buffer.contents.get_or_insert_with(|| vec![0; size]);
            let start = offset as usize;
            contents[start..start + data.len()].copy_from_slice(&data);
            Ok(())
        });
        drop(state);
        let _ = reply.send(result);
    }

    fn read(
        &self,
        session: SessionId,
        id: AllocationId,
        reply: oneshot::Sender<Result<Vec<u8>, GpuError>>,
    ) {
        let result = self
            .lock()
            .on_device(session, id)
            .map(|buffer| buffer.contents());
        let _ = reply.send(result);
    }

    fn offload_session(
        &self,
        session: SessionId,
        reply: oneshot::Sender<Result<OffloadReport, GpuError>>,
    ) {
        let started_at = Instant::now();
        let mut state = self.lock();
        // Copying cannot fail here, so the whole list moves at once.
        let moved = take(&mut state.sessions, session, None);
        let (buffers, bytes) = total(&moved);
        if !moved.is_empty() {
            state.offloaded.entry(session).or_default().extend(moved);
        }
        let stats = &mut state.stats;
        stats.live_buffers -= buffers;
        stats.live_bytes -= bytes;
        stats.offloaded_buffers += buffers;
        stats.offloaded_bytes += bytes;
        drop(state);
        let _ = reply.send(Ok(OffloadReport {
            session,
            buffers,
            bytes,
            started_at,
            finished_at: Instant::now(),
        }));
    }

    fn restore_session(
        &self,
        session: SessionId,
        reply: oneshot::Sender<Result<RestoreReport, GpuError>>,
    ) {
        let started_at = Instant::now();
        let mut state = self.lock();
        let host = state.offloaded.get(&session).map_or(&[][..], Vec::as_slice);
        // Every buffer is checked against the capacity before any moves: the
        // first that would not fit refuses the whole restore, as a failed
        // creation does on a real device.
        let mut needed = 0;
        let mut refused = None;
        for buffer in host {
            needed += buffer.bytes;
            if state.stats.live_bytes + needed > self.capacity {
                refused = Some(GpuError::OutOfMemory {
                    bytes: buffer.bytes,
                });
                break;
            }
        }
        let result = match refused {
            Some(error) => Err(error),
            None => {
                let moved = take(&mut state.offloaded, session, None);
                let (buffers, bytes) = total(&moved);
                if !moved.is_empty() {
                    state.sessions.entry(session).or_default().extend(moved);
                }
                let stats = &mut state.stats;
                stats.offloaded_buffers -= buffers;
                stats.offloaded_bytes -= bytes;
                stats.live_buffers += buffers;
                stats.live_bytes += bytes;
                stats.peak_bytes = stats.peak_bytes.max(stats.live_bytes);
                Ok(RestoreReport {
                    session,
                    buffers,
                    bytes,
                    started_at,
                    finished_at: Instant::now(),
                })
            }
        };
        drop(state);
        let _ = reply.send(result);
    }
}

#[cfg(test)]
#[path = "memory_pool_offload_tests.rs"]
mod offload_tests;

#[cfg(test)]
mod tests {
    use super::offload_tests::{holders, release as release_session, release_allocations};
    use super::*;

    fn allocate(pool: &InMemoryPool, session: SessionId, bytes: u64) -> AllocationId {
        let (reply, answer) = oneshot::channel();
        let id = AllocationId::next();
        pool.allocate(AllocRequest { session, id, bytes }, reply);
        answer.blocking_recv().unwrap().unwrap().id
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
