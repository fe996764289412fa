//! A paged-attention kernel (one head, one query) that reads keys and values
//! through a session's block table: the proof that KV blocks are real device
//! memory a kernel can use where it lies.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sessionbus_actors::{AllocationId, KvBlock};
use wgpu::util::DeviceExt;

use crate::gpu::WgpuDevice;

/// Why the kernel could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The shapes do not fit: a block's size is not `tokens_per_block × 2 ×
    /// head_dim × 4` bytes, more tokens than the blocks hold, a query of
    /// the wrong length.
    #[error("paged attention: {0}")]
    Shape(String),
    /// No buffer was given for a slab the blocks lie in.
    #[error("paged attention: no buffer for slab {0}")]
    MissingSlab(AllocationId),
    /// The device refused the work or could not map the result back.
    #[error("paged attention: the device failed: {0}")]
    Device(String),
}

/// The compiled kernel on one device.
#[derive(Debug)]
pub struct PagedAttention {
    device: WgpuDevice,
    pipeline: wgpu::ComputePipeline,
}

/// What one dispatch over one slab returns: a partial softmax.
struct Partial {
    max: f32,
    sum: f32,
    weighted: Vec<f32>,
}

impl PagedAttention {
    /// Compiles the kernel for `device` (the runtime's, from
    /// `Runtime::wgpu_device`, or the application's own given to the runtime).
    pub fn new(device: &WgpuDevice) -> Self {
        let module = device
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("sessionbus-paged-attention"),
                source: wgpu::ShaderSource::Wgsl(include_str!("paged_attention.wgsl").into()),
            });
        let pipeline = device
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("sessionbus-paged-attention"),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        PagedAttention {
            device: device.clone(),
            pipeline,
        }
    }

    /// `softmax(q·Kᵀ / √d) · V` for one query over the first `tokens` tokens
    /// held in `blocks` (a session's block table, in order; each token is
    /// `head_dim` f32 keys then `head_dim` f32 values). `slabs` maps each
    /// block's buffer to its wgpu buffer (`Runtime::wgpu_buffer`). One
    /// dispatch per slab; the partial results merge on the host. Blocks
    /// until the device has answered.
    pub fn run(
        &self,
        slabs: &HashMap<AllocationId, wgpu::Buffer>,
        blocks: &[KvBlock],
        tokens: u64,
        tokens_per_block: u32,
        query: &[f32],
    ) -> Result<Vec<f32>, KernelError> {
        let head_dim = query.len() as u64;
        let token_bytes = 2 * head_dim * 4;
        let tpb = u64::from(tokens_per_block);
        if head_dim == 0 || blocks.iter().any(|b| b.bytes != tpb * token_bytes) {
            return Err(KernelError::Shape(format!(
                "blocks must be {tokens_per_block} tokens × {token_bytes} bytes (head_dim {head_dim})"
            )));
        }
        if tokens > blocks.len() as u64 * tpb {
            return Err(KernelError::Shape(format!(
                "{tokens} tokens, but {} blocks hold at most {}",
                blocks.len(),
                blocks.len() as u64 * tpb
            )));
        }
        // Per slab: each block's offset (in f32 units) and token count, in table order.
        let mut per_slab: Vec<(AllocationId, Vec<u32>, Vec<u32>)> = Vec::new();
        for (index, block) in blocks.iter().enumerate() {
            let held = tokens.saturating_sub(index as u64 * tpb).min(tpb) as u32;
            if held == 0 {
                break;
            }
            let entry = match per_slab.iter_mut().find(|(slab, ..)| *slab == block.buffer) {
                Some(entry) => entry,
                None => {
                    per_slab.push((block.buffer, Vec::new(), Vec::new()));
                    per_slab.last_mut().expect("just pushed")
                }
            };
            entry.1.push((block.offset / 4) as u32);
            entry.2.push(held);
        }
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut partials = Vec::with_capacity(per_slab.len());
        for (slab, offsets, counts) in &per_slab {
            let buffer = slabs.get(slab).ok_or(KernelError::MissingSlab(*slab))?;
            partials.push(self.dispatch(buffer, offsets, counts, query, scale)?);
        }
        Ok(merge(&partials, head_dim as usize))
    }

    fn dispatch(
        &self,
        slab: &wgpu::Buffer,
        offsets: &[u32],
        counts: &[u32],
        query: &[f32],
        scale: f32,
    ) -> Result<Partial, KernelError> {
        let device = &self.device.device;
        let storage = |label: &str, bytes: &[u8]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytes,
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        let offsets = storage("offsets", &words(offsets.iter().copied()));
        let counts = storage("counts", &words(counts.iter().copied()));
        let query_buffer = storage("query", &floats(query.iter().copied()));
        let head_dim = query.len() as u32;
        let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: &[
                head_dim.to_le_bytes(),
                (offsets.size() as u32 / 4).to_le_bytes(),
                scale.to_le_bytes(),
                0u32.to_le_bytes(),
            ]
            .concat(),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let result_bytes = u64::from(head_dim + 2) * 4;
        let result = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("partial"),
            size: result_bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("partial-read-back"),
            size: result_bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("sessionbus-paged-attention"),
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &[
                entry(0, slab),
                entry(1, &offsets),
                entry(2, &counts),
                entry(3, &query_buffer),
                entry(4, &result),
                entry(5, &params),
            ],
        });
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        encoder.copy_buffer_to_buffer(&result, 0, &staging, 0, result_bytes);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        self.device.queue.submit([encoder.finish()]);
        if let Some(error) = pollster::block_on(validation.pop()) {
            return Err(KernelError::Device(error.to_string()));
        }
        let mapped = Arc::new(AtomicBool::new(false));
        let flag = mapped.clone();
        staging.map_async(wgpu::MapMode::Read, .., move |answer| {
            flag.store(answer.is_ok(), Ordering::Release);
        });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|error| KernelError::Device(error.to_string()))?;
        if !mapped.load(Ordering::Acquire) {
            return Err(KernelError::Device("the result could not be mapped".into()));
        }
        let values: Vec<f32> = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|error| KernelError::Device(error.to_string()))?;
            view.chunks_exact(4)
                .map(|word| f32::from_le_bytes(word.try_into().expect("4 bytes")))
                .collect()
        };
        for buffer in [&offsets, &counts, &query_buffer, &params, &result, &staging] {
            buffer.destroy();
        }
        Ok(Partial {
            max: values[0],
            sum: values[1],
            weighted: values[2..].to_vec(),
        })
    }
}

fn entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

fn words(values: impl Iterator<Item = u32>) -> Vec<u8> {
    values.flat_map(u32::to_le_bytes).collect()
}

fn floats(values: impl Iterator<Item = f32>) -> Vec<u8> {
    values.flat_map(f32::to_le_bytes).collect()
}

/// The same attention on the CPU, in f32, for checking the kernel: each
/// item of `tokens` is one token's `head_dim` keys then `head_dim` values.
pub fn cpu_attention<'a>(tokens: impl IntoIterator<Item = &'a [f32]>, query: &[f32]) -> Vec<f32> {
    let d = query.len();
    let scale = 1.0 / (d as f32).sqrt();
    let tokens: Vec<&[f32]> = tokens.into_iter().collect();
    let scores: Vec<f32> = tokens
        .iter()
        .map(|kv| kv[..d].iter().zip(query).map(|(k, q)| k * q).sum::<f32>() * scale)
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f32 = weights.iter().sum();
    (0..d)
        .map(|i| {
            tokens
                .iter()
                .zip(&weights)
                .map(|(kv, w)| kv[d + i] * w)
                .sum::<f32>()
                / sum
        })
        .collect()
}

/// Merges per-slab partial softmaxes into the attention output.
fn merge(partials: &[Partial], head_dim: usize) -> Vec<f32> {
    let max = partials
        .iter()
        .map(|p| p.max)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    let mut out = vec![0.0f32; head_dim];
    for partial in partials {
        let weight = (partial.max - max).exp();
        sum += partial.sum * weight;
        for (o, w) in out.iter_mut().zip(&partial.weighted) {
            *o += w * weight;
        }
    }
    if sum > 0.0 {
        out.iter_mut().for_each(|o| *o /= sum);
    }
    out
}
