//! A session's buffers on the device: allocation (with wgpu's refusals
//! turned into the engine's errors), writes and reads.

use std::sync::atomic::Ordering;

use sessionbus_actors::{AllocRequest, Allocated, AllocationId, ByteRange, GpuError, SessionId};

use super::{LiveBuffer, Worker};
use crate::gpu::host_copy::{self, Span};

/// Every buffer is usable as compute storage and as a copy source/target:
/// what a model's KV cache or activations need, without mapping. Writes
/// (`queue.write_buffer`) need COPY_DST; reads and offloads copy out of the
/// buffer, which needs COPY_SRC.
pub(in crate::gpu) const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);
const _: () = assert!(
    USAGE.contains(wgpu::BufferUsages::COPY_SRC.union(wgpu::BufferUsages::COPY_DST)),
    "reads, writes, offload and restore copy into and out of every buffer"
);

impl Worker {
    pub(super) fn allocate(&mut self, request: AllocRequest) -> Result<Allocated, GpuError> {
        if self.lost.load(Ordering::Acquire) {
            // wgpu would hand back an invalid buffer without any error.
            return Err(GpuError::Unavailable);
        }
        if request.bytes == 0 {
            return Err(GpuError::Rejected(
                "a buffer must hold at least 1 byte; 0 were requested".into(),
            ));
        }
        let too_big = || {
            GpuError::Rejected(format!(
                "{} bytes is more than this device's largest buffer ({} bytes); split the allocation",
                request.bytes, self.max_buffer_size
            ))
        };
        if request.bytes > self.max_buffer_size {
            return Err(too_big());
        }
        // wgpu requires sizes in whole copy units; the engine is told the real size.
        let size = request
            .bytes
            .checked_next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
            .ok_or_else(too_big)?;

        let buffer = create_buffer(&self.device, request.bytes, size)?;
        self.stats.record_allocated(size);
        self.sessions
            .entry(request.session)
            .or_default()
            .push(LiveBuffer {
                id: request.id,
                buffer,
                bytes: size,
            });
        Ok(Allocated {
            id: request.id,
            bytes: size,
        })
    }

    /// The device buffer `id` of `session`, or why there is none. Only this
    /// session's lists are searched: another session's buffer is unknown.
    /// The buffer of allocation `id` in any session (one scan of the
    /// sessions: for kernels that look a slab up once, not per token).
    pub(super) fn buffer_by_id(&self, id: AllocationId) -> Result<wgpu::Buffer, GpuError> {
        if self.lost.load(Ordering::Acquire) {
            return Err(GpuError::Unavailable);
        }
        self.sessions
            .values()
            .flat_map(|live| live.iter())
            .find(|buffer| buffer.id == id)
            .map(|buffer| buffer.buffer.clone())
            .ok_or(GpuError::UnknownBuffer { id })
    }

    fn live_buffer(&self, session: SessionId, id: AllocationId) -> Result<&LiveBuffer, GpuError> {
        if self.lost.load(Ordering::Acquire) {
            return Err(GpuError::Unavailable);
        }
        let offloaded = self
            .offloaded
            .get(&session)
            .is_some_and(|copies| copies.iter().any(|copy| copy.id == id));
        if offloaded {
            return Err(GpuError::Offloaded { id });
        }
        self.sessions
            .get(&session)
            .and_then(|live| live.iter().find(|buffer| buffer.id == id))
            .ok_or(GpuError::UnknownBuffer { id })
    }

    /// Queues `data` for buffer `id` at `offset`. It reaches the device with
    /// the next submission: a read, offload or restore (whose copies it
    /// precedes) or the end of the batch.
    pub(super) fn write(
        &mut self,
        session: SessionId,
        id: AllocationId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), GpuError> {
        let buffer = self.live_buffer(session, id)?;
        let len = data.len() as u64;
        sessionbus_actors::check_write(id, offset, len, buffer.bytes, wgpu::COPY_BUFFER_ALIGNMENT)?;
        if data.is_empty() {
            return Ok(());
        }
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        self.queue.write_buffer(&buffer.buffer, offset, data);
        if let Some(error) = pollster::block_on(validation.pop()) {
            return Err(GpuError::Rejected(error.to_string().trim_end().to_owned()));
        }
        self.unsubmitted_writes = true;
        Ok(())
    }

    /// The whole of buffer `id`, copied back through a staging buffer.
    pub(super) fn read(
        &mut self,
        session: SessionId,
        id: AllocationId,
    ) -> Result<Vec<u8>, GpuError> {
        let buffer = self.live_buffer(session, id)?;
        let span = Span::whole(&buffer.buffer);
        let mut copies = host_copy::read_back(&self.device, &self.queue, &[span])?;
        self.unsubmitted_writes = false;
        Ok(copies.pop().unwrap_or_default())
    }

    /// Each range copied back through a staging buffer of its size (not the
    /// whole buffer's), all in one submission and one device wait.
    pub(super) fn read_ranges(
        &mut self,
        session: SessionId,
        ranges: &[ByteRange],
    ) -> Result<Vec<Vec<u8>>, GpuError> {
        let mut spans = Vec::with_capacity(ranges.len());
        for range in ranges {
            let buffer = self.live_buffer(session, range.id)?;
            // Any alignment: the copy is widened to wgpu's and cut back.
            sessionbus_actors::check_write(range.id, range.offset, range.len, buffer.bytes, 1)?;
            spans.push(Span {
                buffer: &buffer.buffer,
                offset: range.offset,
                len: range.len,
            });
        }
        // Empty ranges need no copy (wgpu refuses zero-sized staging buffers).
        let copied: Vec<Span<'_>> = spans.iter().copied().filter(|s| s.len > 0).collect();
        let mut copies = host_copy::read_back(&self.device, &self.queue, &copied)?.into_iter();
        let lens: Vec<u64> = spans.iter().map(|s| s.len).collect();
        self.unsubmitted_writes = false;
        Ok(lens
            .into_iter()
            .map(|len| match len {
                0 => Vec::new(),
                _ => copies.next().unwrap_or_default(),
            })
            .collect())
    }
}

/// Creates one buffer of `size` bytes (`requested` is for the error message),
/// turning wgpu's errors into the engine's instead of panics.
pub(in crate::gpu) fn create_buffer(
    device: &wgpu::Device,
    requested: u64,
    size: u64,
) -> Result<wgpu::Buffer, GpuError> {
    let descriptor = wgpu::BufferDescriptor {
        label: None,
        size,
        usage: USAGE,
        mapped_at_creation: false,
    };
    scoped_create(device, &descriptor, requested)
}

/// Creates the buffer `descriptor` describes inside error scopes, so that
/// wgpu's refusal (out of memory, validation) comes back as the engine's
/// error rather than a log line; `requested` is for the error message.
pub(in crate::gpu) fn scoped_create(
    device: &wgpu::Device,
    descriptor: &wgpu::BufferDescriptor<'_>,
    requested: u64,
) -> Result<wgpu::Buffer, GpuError> {
    // Scopes instead of the uncaptured handler, so the error reaches this
    // caller rather than a log line. Popped in reverse order, as wgpu requires;
    // on native backends the pop futures are already resolved.
    let oom_scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation_scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let buffer = device.create_buffer(descriptor);
    let validation = pollster::block_on(validation_scope.pop());
    let oom = pollster::block_on(oom_scope.pop());
    match oom.or(validation) {
        None => Ok(buffer),
        // The handle is invalid; dropping it is all there is to do.
        Some(wgpu::Error::OutOfMemory { .. }) => Err(GpuError::OutOfMemory { bytes: requested }),
        Some(other) => Err(GpuError::Rejected(other.to_string().trim_end().to_owned())),
    }
}
