//! Offload and restore: a session's buffers copied to host memory and
//! destroyed on the device, then recreated from those copies, each all or
//! nothing.

use std::sync::atomic::Ordering;
use std::time::Instant;

use sessionbus_actors::{GpuError, OffloadReport, RestoreReport, SessionId};

use super::buffers::scoped_create;
use super::{HostCopy, LiveBuffer, Worker};
use crate::gpu::host_copy::{self, Span};

impl Worker {
    /// Copies every device buffer of `session` to host memory; only once all
    /// copies are complete are the device buffers destroyed (and the device
    /// polled). A failed copy destroys nothing.
    pub(super) fn offload(&mut self, session: SessionId) -> Result<OffloadReport, GpuError> {
        let started_at = Instant::now();
        if self.lost.load(Ordering::Acquire) {
            return Err(GpuError::Unavailable);
        }
        let sources: Vec<Span<'_>> = self
            .sessions
            .get(&session)
            .map(|live| {
                live.iter()
                    .map(|buffer| Span::whole(&buffer.buffer))
                    .collect()
            })
            .unwrap_or_default();
        let (mut buffers, mut bytes) = (0, 0);
        if !sources.is_empty() {
            let contents = host_copy::read_back(&self.device, &self.queue, &sources)?;
            self.unsubmitted_writes = false;
            let live = self.sessions.remove(&session).unwrap_or_default();
            let copies = self.offloaded.entry(session).or_default();
            for (buffer, data) in live.into_iter().zip(contents) {
                buffer.buffer.destroy();
                buffers += 1;
                bytes += buffer.bytes;
                copies.push(HostCopy {
                    id: buffer.id,
                    data,
                });
            }
            self.stats.record_offloaded(buffers, bytes);
            self.wait_idle();
        }
        Ok(OffloadReport {
            session,
            buffers,
            bytes,
            started_at,
            finished_at: Instant::now(),
        })
    }

    /// Recreates every offloaded buffer of `session` under its old id and
    /// contents, all or nothing: on failure the host copies stay.
    pub(super) fn restore(&mut self, session: SessionId) -> Result<RestoreReport, GpuError> {
        let started_at = Instant::now();
        if self.lost.load(Ordering::Acquire) {
            return Err(GpuError::Unavailable);
        }
        let contents: Vec<&[u8]> = self
            .offloaded
            .get(&session)
            .map(|copies| copies.iter().map(|copy| copy.data.as_slice()).collect())
            .unwrap_or_default();
        let (mut buffers, mut bytes) = (0, 0);
        if !contents.is_empty() {
            let device = &self.device;
            let created = host_copy::upload(device, &self.queue, &contents, |descriptor| {
                scoped_create(device, descriptor, descriptor.size)
            })?;
            self.unsubmitted_writes = false;
            let copies = self.offloaded.remove(&session).unwrap_or_default();
            let live = self.sessions.entry(session).or_default();
            for (copy, buffer) in copies.into_iter().zip(created) {
                let size = copy.data.len() as u64;
                buffers += 1;
                bytes += size;
                live.push(LiveBuffer {
                    id: copy.id,
                    buffer,
                    bytes: size,
                });
            }
            self.stats.record_restored(buffers, bytes);
        }
        Ok(RestoreReport {
            session,
            buffers,
            bytes,
            started_at,
            finished_at: Instant::now(),
        })
    }
}
