//! A GPU pool that only counts: for tests of the engine itself (no device needed).
//! The product's tests use the real wgpu pool instead.

use std::collections::HashMap;
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

impl InMemoryPool {
    /// A pool that holds at most `capacity` bytes, with buffers up to `max_buffer_size`.
    pub fn new(capacity: u64, max_buffer_size: u64) -> Self {
        InMemoryPool {
            info: PoolInfo {
                adapter: "in-memory".into(),
                backend: "memory".into(),
                device_type: "none".into(),
                max_buffer_size,
            },
            capacity,
            state: Mutex::new(State::default()),
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
        let bytes: u64 = buffers.iter().map(|(_, b)| b).sum();
        let stats = &mut state.stats;
        stats.live_buffers -= buffers.len() as u64;
        stats.live_bytes -= bytes;
        stats.released_total += buffers.len() as u64;
        drop(state);
        let _ = reply.send(ReleaseReport {
            session,
            buffers: buffers.len() as u64,
            bytes,
            started_at,
            finished_at: Instant::now(),
            batch_len: 1,
        });
    }

    fn stats(&self) -> PoolStats {
        self.lock().stats
    }
}
