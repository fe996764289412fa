//! Issue 17 (7): KV blocks are real device memory. Two sessions share a
//! prompt's blocks in real wgpu slabs; the keys and values written through
//! their block tables feed a WGSL paged-attention kernel whose answer
//! matches a CPU reference, for a table spread over several slabs; and once
//! the sessions end and the runtime stops, wgpu's own counters are back at
//! their baseline (the slabs were really destroyed).

use std::collections::HashMap;
use std::time::Duration;

use sessionbus::config::{BlockBudget, Config, KvLayout, KvPoolConfig};
use sessionbus::kernels::{PagedAttention, cpu_attention};
use sessionbus::wgpu;
use sessionbus::{KvBlock, Runtime, SessionHandle};

const HEAD_DIM: usize = 8;
const TOKENS_PER_BLOCK: u32 = 4;
const TOKEN_BYTES: u64 = 2 * HEAD_DIM as u64 * 4;

fn config() -> Config {
    Config {
        kv: Some(KvPoolConfig {
            layout: KvLayout {
                tokens_per_block: TOKENS_PER_BLOCK,
                bytes_per_token: TOKEN_BYTES,
            },
            // Small slabs, so one table spans several of them.
            blocks_per_slab: 4,
            device_budget: BlockBudget::Blocks(64),
            cache_budget: BlockBudget::Blocks(16),
            owner_budget: None,
            table_cap_blocks: None,
            keep_alive: Duration::ZERO,
            slab_idle_trim: Duration::from_secs(3600),
        }),
        ..Config::default()
    }
}

/// Token `t`'s keys then values: deterministic, varied values.
fn kv_of(t: u32) -> Vec<f32> {
    (0..2 * HEAD_DIM)
        .map(|i| ((t as f32 + 1.0) * 0.37 + i as f32 * 0.91).sin())
        .collect()
}

fn bytes_of(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes the KV of `tokens[from..]` into the session's blocks.
async fn write_tokens(session: &SessionHandle, tokens: &[u32], from: usize) {
    for (position, &token) in tokens.iter().enumerate().skip(from) {
        let block = position / TOKENS_PER_BLOCK as usize;
        let slot = (position % TOKENS_PER_BLOCK as usize) as u64;
        session
            .write_kv(block, slot * TOKEN_BYTES, bytes_of(&kv_of(token)))
            .await
            .unwrap();
    }
}

/// The kernel's answer for `tokens` (held in `blocks`) matches the CPU's.
fn assert_matches_cpu(
    kernel: &PagedAttention,
    slabs: &HashMap<sessionbus::AllocationId, wgpu::Buffer>,
    blocks: &[KvBlock],
    tokens: &[u32],
    query: &[f32],
) {
    let gpu = kernel
        .run(slabs, blocks, tokens.len() as u64, TOKENS_PER_BLOCK, query)
        .unwrap();
    let kvs: Vec<Vec<f32>> = tokens.iter().map(|&t| kv_of(t)).collect();
    let cpu = cpu_attention(kvs.iter().map(Vec::as_slice), query);
    for (g, c) in gpu.iter().zip(&cpu) {
        assert!(
            (g - c).abs() <= 1e-4 * c.abs().max(1.0),
            "gpu {gpu:?} cpu {cpu:?}"
        );
    }
}

async fn slabs_of(
    rt: &Runtime,
    blocks: &[KvBlock],
) -> HashMap<sessionbus::AllocationId, wgpu::Buffer> {
    let mut slabs = HashMap::new();
    for block in blocks {
        if let std::collections::hash_map::Entry::Vacant(slot) = slabs.entry(block.buffer) {
            slot.insert(rt.wgpu_buffer(block.buffer).await.unwrap());
        }
    }
    slabs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_blocks_feed_the_kernel_and_go_back_to_the_device() {
    let rt = Runtime::builder().config(config()).start().await.unwrap();
    let baseline = rt.gpu_counters().unwrap();
    let device = rt.wgpu_device().expect("the runtime's own wgpu device");
    let kernel = PagedAttention::new(&device);

    // A 10-token system prompt: two full blocks (shared) and a partial one.
    let prompt: Vec<u32> = (100..110).collect();
    let first = rt.open("alice").await.unwrap();
    first.append_tokens(&prompt).await.unwrap();
    write_tokens(&first, &prompt, 0).await;

    // The second session reuses the two full blocks and adds its own turn.
    let mut second_tokens = prompt.clone();
    second_tokens.extend(200..211);
    let second = rt.open("alice").await.unwrap();
    let appended = second.append_tokens(&second_tokens).await.unwrap();
    assert_eq!(appended.shared_prefix_tokens, 8, "two full blocks shared");
    // Only what is not shared is written: the shared keys and values are the first session's.
    write_tokens(&second, &second_tokens, 8).await;

    let blocks = second.kv_blocks().await.unwrap();
    assert_eq!(blocks.len(), 6, "21 tokens in blocks of 4");
    assert_eq!(blocks[..2], first.kv_blocks().await.unwrap()[..2]);
    let slabs = slabs_of(&rt, &blocks).await;
    assert!(slabs.len() >= 2, "the table spans several slabs");

    let query: Vec<f32> = (0..HEAD_DIM).map(|i| (i as f32 * 0.5).cos()).collect();
    for (session, tokens) in [(&first, &prompt), (&second, &second_tokens)] {
        let blocks = session.kv_blocks().await.unwrap();
        let slabs = slabs_of(&rt, &blocks).await;
        assert_matches_cpu(&kernel, &slabs, &blocks, tokens, &query);
    }
    // Shapes that do not fit are refused, not misread.
    assert!(
        kernel
            .run(&slabs, &blocks, 25, TOKENS_PER_BLOCK, &query)
            .is_err()
    );
    assert!(
        kernel
            .run(&slabs, &blocks, 21, TOKENS_PER_BLOCK, &query[..4])
            .is_err()
    );
    drop(slabs);

    first.close().await.unwrap();
    second.close().await.unwrap();
    let kv = rt.stats().await.unwrap().kv.unwrap();
    assert_eq!(kv.blocks_referenced, 0);
    assert_eq!(kv.blocks_held_by_released_tables, 0);
    let report = rt.shutdown().await;
    assert_eq!(
        report.gpu_after,
        Some(baseline),
        "the slabs were destroyed on the device"
    );
    assert_eq!(report.sessions.stats.kv.unwrap().blocks_total, 0);
}

/// Issue 17 (5): a session's own blocks go to host memory (copied back from
/// the real slabs) while the shared prompt stays; other sessions take the
/// freed blocks; the session's next use restores its blocks elsewhere, and
/// the kernel's answer is what it was. wgpu's counters end at baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offloaded_session_comes_back_bit_for_bit_and_its_kernel_answer_is_unchanged() {
    let rt = Runtime::builder().config(config()).start().await.unwrap();
    let baseline = rt.gpu_counters().unwrap();
    let device = rt.wgpu_device().expect("the runtime's own wgpu device");
    let kernel = PagedAttention::new(&device);
    let query: Vec<f32> = (0..HEAD_DIM).map(|i| (i as f32 * 0.3).sin()).collect();

    let prompt: Vec<u32> = (100..110).collect();
    let first = rt.open("alice").await.unwrap();
    first.append_tokens(&prompt).await.unwrap();
    write_tokens(&first, &prompt, 0).await;
    let mut tokens = prompt.clone();
    tokens.extend(300..315);
    let second = rt.open("alice").await.unwrap();
    second.append_tokens(&tokens).await.unwrap();
    write_tokens(&second, &tokens, 8).await;
    let before = second.kv_blocks().await.unwrap();

    let report = second.offload().await.unwrap();
    assert_eq!(
        report.kv_blocks, 5,
        "25 tokens: 2 shared blocks stay, 5 own go"
    );
    assert_eq!(
        report.kv_bytes,
        5 * u64::from(TOKENS_PER_BLOCK) * TOKEN_BYTES
    );
    // Someone else takes the freed blocks meanwhile.
    let other: Vec<u32> = (900..920).collect();
    let third = rt.open("bob").await.unwrap();
    third.append_tokens(&other).await.unwrap();
    write_tokens(&third, &other, 0).await;

    let after = second.kv_blocks().await.unwrap(); // restores first
    assert_eq!(after[..2], before[..2], "the shared prompt never moved");
    assert_ne!(
        after[2..],
        before[2..],
        "its own blocks came back elsewhere"
    );
    for (session, tokens) in [(&second, &tokens), (&third, &other), (&first, &prompt)] {
        let blocks = session.kv_blocks().await.unwrap();
        let slabs = slabs_of(&rt, &blocks).await;
        assert_matches_cpu(&kernel, &slabs, &blocks, tokens, &query);
    }

    for s in [&first, &second, &third] {
        s.close().await.unwrap();
    }
    let report = rt.shutdown().await;
    assert_eq!(report.gpu_after, Some(baseline), "every slab destroyed");
    let kv = report.sessions.stats.kv.unwrap();
    assert_eq!((kv.blocks_offloaded, kv.restores_total), (0, 1));
}

/// Issue 17 (6): the application opens the device, gives it to the runtime,
/// and its own kernel reads the session's blocks on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applications_own_device_serves_the_blocks_its_kernels_read() {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions::default())
        .await
        .expect("a Vulkan adapter (install mesa-vulkan-drivers)");
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor::default())
        .await
        .unwrap();
    let mine = sessionbus::pool::WgpuDevice {
        device: device.clone(),
        queue,
        adapter: adapter.get_info(),
    };
    // A pool and a device both given: which would it run on? Refused, by name.
    let pool = sessionbus::pool::WgpuPool::start_on(mine.clone(), &Default::default()).unwrap();
    let both = Runtime::builder()
        .pool(std::sync::Arc::new(pool))
        .wgpu_device(mine.clone())
        .start()
        .await;
    assert!(
        matches!(both, Err(sessionbus::StartError::PoolAndDevice)),
        "{:?}",
        both.err()
    );

    let rt = Runtime::builder()
        .config(config())
        .wgpu_device(mine.clone())
        .start()
        .await
        .unwrap();
    let baseline = rt.gpu_counters().unwrap();
    assert_eq!(rt.pool_info().adapter, adapter.get_info().name);

    let tokens: Vec<u32> = (0..13).collect();
    let session = rt.open("alice").await.unwrap();
    session.append_tokens(&tokens).await.unwrap();
    write_tokens(&session, &tokens, 0).await;
    let blocks = session.kv_blocks().await.unwrap();
    let slabs = slabs_of(&rt, &blocks).await;

    // The application's kernel, on the application's own device handle.
    let kernel = PagedAttention::new(&mine);
    let query: Vec<f32> = (0..HEAD_DIM).map(|i| i as f32 * 0.1 - 0.3).collect();
    assert_matches_cpu(&kernel, &slabs, &blocks, &tokens, &query);
    drop(slabs);
    session.close().await.unwrap();
    let report = rt.shutdown().await;
    assert_eq!(report.gpu_after, Some(baseline));
}

/// Issue 17 (faults): the device is lost while sessions share blocks. Every
/// session ends once as `device_lost`, every reference is dropped, the
/// slabs leave the books with the lost device, and new sessions get blocks
/// on the new device that hold what is written to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_loss_with_shared_blocks_live_starts_the_blocks_afresh() {
    let rt = Runtime::builder().config(config()).start().await.unwrap();
    let prompt: Vec<u32> = (0..12).collect();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let session = rt.open("alice").await.unwrap();
        session.append_tokens(&prompt).await.unwrap();
        sessions.push(session);
    }
    assert_eq!(rt.stats().await.unwrap().kv.unwrap().blocks_shared, 3);

    rt.inject_gpu_device_loss();
    let ended = rt.recover_gpu().await.unwrap();
    assert_eq!(ended, 3);
    let kv = rt.stats().await.unwrap().kv.unwrap();
    assert_eq!(kv.blocks_referenced, 0, "every reference dropped once");
    assert_eq!(
        kv.blocks_total, 0,
        "the lost device's slabs are gone from the books"
    );
    assert_eq!(kv.blocks_held_by_released_tables, 0);
    for session in &sessions {
        let refused = session.append_tokens(&[1]).await.unwrap_err();
        assert!(
            matches!(refused, sessionbus::SessionError::NotEstablished { .. }),
            "{refused:?}"
        );
    }

    let fresh = rt.gpu_counters().unwrap();
    let after = rt.open("alice").await.unwrap();
    assert_eq!(
        after
            .append_tokens(&prompt)
            .await
            .unwrap()
            .shared_prefix_tokens,
        0,
        "nothing cached survives the device"
    );
    write_tokens(&after, &prompt, 0).await;
    assert_eq!(
        after.read_kv(1).await.unwrap()[..TOKEN_BYTES as usize],
        bytes_of(&kv_of(prompt[4]))[..]
    );
    after.close().await.unwrap();
    drop(sessions);
    let report = rt.shutdown().await;
    assert_eq!(
        report.gpu_after,
        Some(fresh),
        "the new device's counters at its baseline"
    );
}
