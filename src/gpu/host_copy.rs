//! Moving buffer contents between the device and host memory: read-back
//! (for `read` and offload) and upload (for restore). Runs on the
//! `sessionbus-gpu` thread only.
//!
//! Ground rules: neither function leaves anything behind on failure. Staging
//! buffers are unmapped and destroyed on every path, and an upload that fails
//! half-way destroys the buffers it had created. Both wait for the device
//! before returning, so wgpu's counters show only what the caller now owns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sessionbus_actors::GpuError;

use super::worker::scoped_create;

/// Bytes `offset..offset + len` of one buffer (checked by the caller to lie
/// inside it).
#[derive(Clone, Copy)]
pub(super) struct Span<'a> {
    pub(super) buffer: &'a wgpu::Buffer,
    pub(super) offset: u64,
    pub(super) len: u64,
}

impl<'a> Span<'a> {
    /// The whole of `buffer`.
    pub(super) fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Span {
            buffer,
            offset: 0,
            len: buffer.size(),
        }
    }

    /// The range the copy moves: widened to wgpu's copy alignment (4 bytes)
    /// and clamped to the buffer; the span is cut out of it afterwards.
    fn copied(&self) -> (u64, u64) {
        let align = wgpu::COPY_BUFFER_ALIGNMENT;
        let start = self.offset - self.offset % align;
        let end = (self.offset + self.len)
            .div_ceil(align)
            .saturating_mul(align)
            .min(self.buffer.size());
        (start, end - start)
    }
}

/// Copies every span in `sources` to host memory: one staging buffer each,
/// one submission for all the copies, one device poll.
///
/// The sources are only read. On failure nothing the caller owns is touched
/// and the staging buffers are gone.
pub(super) fn read_back(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    sources: &[Span<'_>],
) -> Result<Vec<Vec<u8>>, GpuError> {
    let mut staging = Staging::default();
    for source in sources {
        let (_, size) = source.copied();
        let buffer = scoped_create(
            device,
            &wgpu::BufferDescriptor {
                label: Some("sessionbus-read-back"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            },
            size,
        )?;
        staging.buffers.push(buffer);
        staging.mapped.push(Arc::new(AtomicBool::new(false)));
    }

    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("sessionbus-read-back"),
    });
    for (source, target) in sources.iter().zip(&staging.buffers) {
        let (start, size) = source.copied();
        encoder.copy_buffer_to_buffer(source.buffer, start, target, 0, size);
    }
    // Writes queued earlier (`queue.write_buffer`) go first in this
    // submission, so the copies see them.
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    queue.submit([encoder.finish()]);
    if let Some(error) = pollster::block_on(validation.pop()) {
        return Err(rejected("copying to host memory", &error));
    }

    // Mapping requests resolve when the submission completes, inside the poll.
    for (buffer, mapped) in staging.buffers.iter().zip(&staging.mapped) {
        let mapped = Arc::clone(mapped);
        buffer.map_async(wgpu::MapMode::Read, .., move |result| {
            mapped.store(result.is_ok(), Ordering::Release);
        });
    }
    wait(device)?;
    if !staging
        .mapped
        .iter()
        .all(|mapped| mapped.load(Ordering::Acquire))
    {
        return Err(GpuError::Rejected(
            "the device could not map a read-back buffer; nothing was changed".into(),
        ));
    }

    let mut copies = Vec::with_capacity(staging.buffers.len());
    for (buffer, source) in staging.buffers.iter().zip(sources) {
        let view = buffer
            .get_mapped_range(..)
            .map_err(|error| rejected("reading a mapped buffer", &error))?;
        let skip = (source.offset - source.copied().0) as usize;
        copies.push(view[skip..skip + source.len as usize].to_vec());
    }
    Ok(copies)
}

/// Creates one buffer per host copy with `create` (all of them first: if one
/// fails, the ones created are destroyed and its error is answered), then
/// fills each with its copy and waits until the device holds the contents.
///
/// `create` is [`scoped_create`] in the pool; tests pass one that fails on
/// purpose, since a real device rarely runs out of memory on cue.
pub(super) fn upload(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    copies: &[&[u8]],
    mut create: impl FnMut(&wgpu::BufferDescriptor<'_>) -> Result<wgpu::Buffer, GpuError>,
) -> Result<Vec<wgpu::Buffer>, GpuError> {
    let mut created = Vec::with_capacity(copies.len());
    for copy in copies {
        let descriptor = wgpu::BufferDescriptor {
            label: None,
            size: copy.len() as u64,
            usage: super::worker::USAGE,
            // The contents go in through the mapping: no extra copy of the
            // data in the queue, and nothing to submit until all exist.
            mapped_at_creation: true,
        };
        match create(&descriptor) {
            Ok(buffer) => created.push(buffer),
            Err(error) => {
                discard(device, queue, &created);
                return Err(error);
            }
        }
    }
    for (buffer, copy) in created.iter().zip(copies) {
        match buffer.get_mapped_range_mut(..) {
            Ok(mut view) => view.copy_from_slice(copy),
            Err(error) => {
                discard(device, queue, &created);
                return Err(rejected("filling a restored buffer", &error));
            }
        }
    }
    for buffer in &created {
        buffer.unmap();
    }
    // Without a usage that maps for writing, wgpu fills the buffers from its
    // own staging memory on the next submission; submit it and wait, so the
    // contents are on the device and the staging memory is given back.
    queue.submit([]);
    wait(device)?;
    Ok(created)
}

/// Destroys buffers that `upload` created but will not hand out, and waits
/// until the device has really freed them.
fn discard(device: &wgpu::Device, queue: &wgpu::Queue, created: &[wgpu::Buffer]) {
    for buffer in created {
        // Unmapping hands wgpu's fill-in staging memory to the queue; the
        // submission below retires it, and the poll frees it with the buffer.
        buffer.unmap();
        buffer.destroy();
    }
    queue.submit([]);
    if let Err(error) = wait(device) {
        tracing::error!(%error, "GPU poll failed; a failed restore's memory may come back late");
    }
}

/// Read-back buffers that unmap and destroy themselves on every path.
#[derive(Default)]
struct Staging {
    buffers: Vec<wgpu::Buffer>,
    /// Set by each buffer's map callback: only a mapped buffer may be
    /// unmapped (wgpu reports unmapping any other as an error).
    mapped: Vec<Arc<AtomicBool>>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        for (buffer, mapped) in self.buffers.iter().zip(&self.mapped) {
            // A buffer destroyed while mapped is only freed once unmapped.
            if mapped.load(Ordering::Acquire) {
                buffer.unmap();
            }
            buffer.destroy();
        }
    }
}

fn wait(device: &wgpu::Device) -> Result<(), GpuError> {
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map(|_| ())
        .map_err(|error| rejected("waiting for the device", &error))
}

fn rejected(doing: &str, error: &dyn std::fmt::Display) -> GpuError {
    GpuError::Rejected(format!("{doing}: {}", error.to_string().trim_end()))
}
