//! Releasing a session's memory: its buffers are destroyed at once (all of
//! them, or the listed ones), host copies dropped, and the replies of a
//! batch's releases wait for one poll of the device.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use sessionbus_actors::{AllocationId, ReleaseReport, SessionId};
use tokio::sync::oneshot;

use super::{HostCopy, LiveBuffer, Worker};

/// A release whose buffers are destroyed but whose reply waits for the batch's poll.
pub(super) struct PendingRelease {
    session: SessionId,
    reply: oneshot::Sender<ReleaseReport>,
    buffers: u64,
    bytes: u64,
    host_bytes: u64,
    started_at: Instant,
}

impl PendingRelease {
    /// A release whose buffers (`freed`: count, device bytes, host bytes) are
    /// destroyed; its reply waits for the poll.
    fn new(
        session: SessionId,
        reply: oneshot::Sender<ReleaseReport>,
        freed: Freed,
        started_at: Instant,
    ) -> Self {
        PendingRelease {
            session,
            reply,
            buffers: freed.buffers,
            bytes: freed.bytes,
            host_bytes: freed.host_bytes,
            started_at,
        }
    }
}

/// What one release destroyed: buffers on the device and host copies alike
/// (`buffers`), device bytes, host bytes.
#[derive(Clone, Copy, Default)]
pub(super) struct Freed {
    pub(super) buffers: u64,
    pub(super) bytes: u64,
    pub(super) host_bytes: u64,
}

impl Worker {
    /// Destroys the session's buffers now; the reply waits for the batch's poll.
    pub(super) fn release(
        &mut self,
        session: SessionId,
        reply: oneshot::Sender<ReleaseReport>,
    ) -> PendingRelease {
        let started_at = Instant::now();
        let freed = self.destroy_session(session);
        PendingRelease::new(session, reply, freed, started_at)
    }

    /// Destroys the listed buffers of `session` now; the reply waits for the batch's poll.
    pub(super) fn release_allocations(
        &mut self,
        session: SessionId,
        ids: &[AllocationId],
        reply: oneshot::Sender<ReleaseReport>,
    ) -> PendingRelease {
        let started_at = Instant::now();
        let freed = self.destroy_allocations(session, ids);
        PendingRelease::new(session, reply, freed, started_at)
    }

    /// Only `session`'s own lists are searched, so an id of another session's
    /// buffer (or an unknown or already-destroyed one) matches nothing.
    fn destroy_allocations(&mut self, session: SessionId, ids: &[AllocationId]) -> Freed {
        let listed: HashSet<AllocationId> = ids.iter().copied().collect();
        let doomed = take_listed(&mut self.sessions, session, |buffer| {
            listed.contains(&buffer.id)
        });
        let copies = take_listed(&mut self.offloaded, session, |copy| {
            listed.contains(&copy.id)
        });
        let (buffers, bytes) = self.destroy_buffers(doomed);
        self.free_host_copies(buffers, bytes, copies)
    }

    /// Sorted, so callers and logs see a stable order. A session holding
    /// only host copies is listed too: host memory can leak as well.
    pub(super) fn sessions_holding_memory(&self) -> Vec<SessionId> {
        let mut holders: Vec<SessionId> = self
            .sessions
            .keys()
            .chain(
                self.offloaded
                    .keys()
                    .filter(|s| !self.sessions.contains_key(s)),
            )
            .copied()
            .collect();
        holders.sort_unstable();
        holders
    }

    fn destroy_session(&mut self, session: SessionId) -> Freed {
        let (buffers, bytes) = match self.sessions.remove(&session) {
            Some(live) => self.destroy_buffers(live),
            None => (0, 0),
        };
        let copies = self.offloaded.remove(&session).unwrap_or_default();
        self.free_host_copies(buffers, bytes, copies)
    }

    /// Drops host copies along with a release that destroyed (`buffers`,
    /// `bytes`) on the device.
    pub(super) fn free_host_copies(
        &self,
        buffers: u64,
        bytes: u64,
        copies: Vec<HostCopy>,
    ) -> Freed {
        let count = copies.len() as u64;
        let host_bytes: u64 = copies.iter().map(|copy| copy.data.len() as u64).sum();
        self.stats.record_host_released(count, host_bytes);
        Freed {
            buffers: buffers + count,
            bytes,
            host_bytes,
        }
    }

    pub(super) fn destroy_buffers(&self, live: Vec<LiveBuffer>) -> (u64, u64) {
        let buffers = live.len() as u64;
        let mut bytes = 0;
        for LiveBuffer {
            buffer,
            bytes: size,
            ..
        } in live
        {
            // `destroy` frees the memory now even if a clone of the handle
            // lingers somewhere; dropping alone would wait for the last one.
            buffer.destroy();
            bytes += size;
        }
        self.stats.record_released(buffers, bytes);
        (buffers, bytes)
    }

    /// One poll for the whole batch, then every release reply.
    pub(super) fn finish_releases(&mut self, pending: Vec<PendingRelease>) {
        if pending.is_empty() {
            return;
        }
        // Dropping host copies needs no poll; destroying device buffers does.
        if pending.iter().any(|release| release.bytes > 0) {
            self.wait_idle();
        }
        let finished_at = Instant::now();
        let batch_len = u32::try_from(pending.len()).unwrap_or(u32::MAX);
        for release in pending {
            // A caller that stopped waiting is not our problem.
            let _ = release.reply.send(ReleaseReport {
                session: release.session,
                buffers: release.buffers,
                bytes: release.bytes,
                started_at: release.started_at,
                finished_at,
                batch_len,
                host_bytes: release.host_bytes,
            });
        }
    }
}

/// Removes the entries of `session` in `map` that `doomed` picks, dropping
/// the session's entry once it is empty (no empty entries: holders are keys).
fn take_listed<T>(
    map: &mut HashMap<SessionId, Vec<T>>,
    session: SessionId,
    doomed: impl Fn(&T) -> bool,
) -> Vec<T> {
    let Some(held) = map.get_mut(&session) else {
        return Vec::new();
    };
    let (taken, kept): (Vec<T>, Vec<T>) = std::mem::take(held).into_iter().partition(doomed);
    if kept.is_empty() {
        map.remove(&session);
    } else {
        *held = kept;
    }
    taken
}
