//! The KV scenario: KV memory as inference engines hold it. Sessions of
//! several tenants share a public system prompt's blocks (one salt), chat
//! (each turn appends tokens into blocks and writes their keys and values),
//! some conversations are offloaded (their own blocks to host memory, the
//! shared prompt stays) and come back on their next use, a paged-attention
//! kernel reads one such restored session's KV through its block table and
//! is checked against the CPU, some conversations fork (sharing every full
//! block, copying the partial one), and the sessions end every way: closed,
//! disconnected, context reset then closed, left to the shutdown. Then: no
//! block held by an ended session, idle slabs trimmed, wgpu's counters back
//! at their baseline.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use sessionbus::config::{BlockBudget, Config, KvLayout, KvPoolConfig};
use sessionbus::kernels::{PagedAttention, cpu_attention};
use sessionbus::{KvStats, Salt, SessionHandle, SessionId, Turn};

use crate::report::{self, Books, Checks, row};
use crate::{Args, Demo};

const HEAD_DIM: usize = 32;
const TOKENS_PER_BLOCK: u32 = 16;
const TOKEN_BYTES: u64 = 2 * HEAD_DIM as u64 * 4;
const PROMPT_TOKENS: u32 = 4 * TOKENS_PER_BLOCK + 5;
const TURN_TOKENS: u32 = 20;
/// The public system prompt's sharing scope (in an application: an HMAC of
/// the prompt template's name).
const PUBLIC_PROMPT: Salt = Salt([0x5b; 32]);

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    books: Books,
    scenario: &'static str,
    kv_blocks_allocated: u64,
    kv_blocks_shared_peak: u64,
    /// At the peak: device bytes that sessions reference without holding a copy.
    kv_blocks_cached: u64,
    kv_blocks_evicted: u64,
    kv_prefix_hit_rate: f64,
    kv_bytes_saved_by_sharing: u64,
    kv_slabs_created: u64,
    kv_slabs_trimmed: u64,
    blocks_held_by_ended_sessions: u64,
    /// Largest |GPU − CPU| over the attention output of one session.
    kernel_max_abs_error: f32,
    context_resets: u64,
    /// Conversations forked (each closed after a turn of its own).
    kv_forks: u64,
    /// Conversations offloaded to host memory and restored on their next use.
    kv_offloads: u64,
    /// KV blocks those offloads moved (the shared prompt's blocks stay).
    kv_blocks_offloaded: u64,
    /// Restored conversations whose every block read back as written.
    kv_restored_bit_for_bit: u64,
    never_released: usize,
}

pub fn configure(config: &mut Config) {
    config.kv = Some(KvPoolConfig {
        layout: KvLayout {
            tokens_per_block: TOKENS_PER_BLOCK,
            bytes_per_token: TOKEN_BYTES,
        },
        blocks_per_slab: 64,
        device_budget: BlockBudget::Bytes(256 << 20),
        cache_budget: BlockBudget::Blocks(256),
        owner_budget: None,
        table_cap_blocks: Some(1024),
        keep_alive: Duration::ZERO,
        slab_idle_trim: Duration::from_millis(300),
    });
    config.expiry.sweep_interval = Duration::from_millis(100);
}

/// Token `t`'s keys then values (deterministic).
fn kv_of(t: u32) -> Vec<f32> {
    (0..2 * HEAD_DIM)
        .map(|i| ((t as f32 + 1.0) * 0.013 + i as f32 * 0.7).sin())
        .collect()
}

async fn write_tokens(session: &SessionHandle, tokens: &[u32], from: usize) -> anyhow::Result<()> {
    for (position, &token) in tokens.iter().enumerate().skip(from) {
        let block = position / TOKENS_PER_BLOCK as usize;
        let slot = (position % TOKENS_PER_BLOCK as usize) as u64;
        let bytes = kv_of(token).iter().flat_map(|v| v.to_le_bytes()).collect();
        session.write_kv(block, slot * TOKEN_BYTES, bytes).await?;
    }
    Ok(())
}

/// One session's conversation: the shared prompt, then its own turns.
struct Chat {
    handle: SessionHandle,
    tokens: Vec<u32>,
}

pub async fn run(demo: Demo, args: &Args) -> anyhow::Result<()> {
    let prompt: Vec<u32> = (0..PROMPT_TOKENS).collect();
    let mut chats = Vec::with_capacity(args.sessions);
    let (mut shared_peak, mut saved_peak) = (0, 0);
    for i in 0..args.sessions {
        let handle = demo.rt.open(format!("tenant-{}", i % 7)).await?;
        let appended = handle
            .append_tokens_in(Some(PUBLIC_PROMPT), &prompt)
            .await?;
        // The prompt's full blocks are written once, by whoever allocated them.
        write_tokens(&handle, &prompt, appended.shared_prefix_tokens as usize).await?;
        let mut tokens = prompt.clone();
        for turn in 0..args.turns as u32 {
            let start = 10_000 * (i as u32 + 1) + turn * TURN_TOKENS;
            let new: Vec<u32> = (start..start + TURN_TOKENS).collect();
            handle.append_tokens(&new).await?;
            let from = tokens.len();
            tokens.extend(&new);
            write_tokens(&handle, &tokens, from).await?;
        }
        let now = kv_stats(&demo).await;
        shared_peak = shared_peak.max(now.blocks_shared);
        saved_peak = saved_peak.max(now.bytes_saved_by_sharing);
        chats.push(Chat { handle, tokens });
        if demo.stop.requested().is_some() {
            break;
        }
    }

    // Every 6th conversation (and the last) goes to host memory while idle;
    // its next use brings it back, and every block must read as written.
    let (mut offloads, mut offloaded_blocks, mut bit_for_bit) = (0u64, 0u64, 0u64);
    let last = chats.len().saturating_sub(1);
    for (i, chat) in chats.iter().enumerate() {
        if i % 6 != 3 && i != last {
            continue;
        }
        offloaded_blocks += chat.handle.offload().await?.kv_blocks;
        offloads += 1;
        if i != last {
            bit_for_bit += u64::from(reads_as_written(chat).await?);
        }
    }

    // The kernel reads the last session's KV where it lies (restored first).
    let kernel_max_abs_error = match chats.last() {
        Some(chat) => kernel_error(&demo, chat).await?,
        None => 0.0,
    };

    // Some conversations fork: the fork shares every full block, copies the
    // partial one, chats a turn of its own and is closed.
    let mut ids: Vec<SessionId> = Vec::new();
    let mut forks = 0u64;
    for (i, chat) in chats.iter().enumerate().step_by(5) {
        let fork = chat.handle.fork().await?;
        let start = 900_000 + 100 * i as u32;
        let new: Vec<u32> = (start..start + TURN_TOKENS).collect();
        fork.append_tokens(&new).await?;
        let mut tokens = chat.tokens.clone();
        let from = tokens.len();
        tokens.extend(&new);
        write_tokens(&fork, &tokens, from).await?;
        ids.push(fork.id());
        drop(fork.close().await?);
        forks += 1;
    }

    // Sessions end every way.
    let mut kept = Vec::new();
    let mut context_resets = 0;
    for (i, chat) in chats.into_iter().enumerate() {
        ids.push(chat.handle.id());
        match i % 4 {
            0 => drop(chat.handle.close().await?),
            1 => drop(chat.handle), // the client went away: disconnected
            2 => {
                // The user rejects what came before: its blocks go, the session stays.
                let ack = chat.handle.chat(Turn::new().negation()).await?;
                context_resets += u64::from(ack.context.is_stale());
                drop(chat.handle.close().await?);
            }
            _ => kept.push(chat.handle), // ended by the shutdown
        }
    }
    let ending: Vec<SessionId> = ids
        .iter()
        .copied()
        .filter(|id| !kept.iter().any(|k| k.id() == *id))
        .collect();
    let never_released = demo
        .watch
        .until_released(&ending, Duration::from_secs(30))
        .await;
    // Idle slabs go back to the device (the sweeper runs every 100 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pool = demo.rt.pool_stats();
    let end = demo.finish().await?;
    drop(kept); // ended by the shutdown, still held
    let kv = end
        .stop
        .sessions
        .stats
        .kv
        .ok_or_else(|| anyhow::anyhow!("no KV stats"))?;
    let report = Report {
        books: Books::of(&end, &pool),
        scenario: "kv",
        kv_blocks_allocated: kv.blocks_allocated_total,
        kv_blocks_shared_peak: shared_peak,
        kv_blocks_cached: kv.blocks_cached,
        kv_blocks_evicted: kv.blocks_evicted_total,
        kv_prefix_hit_rate: kv.prefix_hit_lookups as f64 / kv.prefix_lookups.max(1) as f64,
        kv_bytes_saved_by_sharing: saved_peak,
        kv_slabs_created: kv.slabs_created,
        kv_slabs_trimmed: kv.slabs_trimmed,
        blocks_held_by_ended_sessions: kv.blocks_held_by_released_tables + kv.blocks_referenced,
        kernel_max_abs_error,
        context_resets,
        kv_forks: forks,
        kv_offloads: offloads,
        kv_blocks_offloaded: offloaded_blocks,
        kv_restored_bit_for_bit: bit_for_bit,
        never_released,
    };
    if args.json {
        report::print_json(&report)?;
    } else {
        print_summary(&report);
    }
    let mut checks = Checks::default();
    checks.require(report.books.double_ends == 0, "every session ended once");
    checks.require(
        report.never_released == 0,
        "every ended session was released",
    );
    checks.require(
        report.blocks_held_by_ended_sessions == 0,
        "no block is held by an ended session",
    );
    checks.require(
        report.books.leaked_buffers == 0,
        "wgpu's counters back at baseline",
    );
    checks.require(
        report.kernel_max_abs_error <= 1e-3,
        "the kernel matches the CPU (on a restored session)",
    );
    checks.require(
        report.kv_restored_bit_for_bit + 1 == report.kv_offloads.max(1),
        "every offloaded conversation came back bit for bit",
    );
    checks.conclude()
}

/// Whether every block of `chat` reads back as its tokens' keys and values
/// (the partial last block: its written slots only).
async fn reads_as_written(chat: &Chat) -> anyhow::Result<bool> {
    let blocks = chat.handle.kv_blocks().await?.len();
    for (index, tokens) in chat.tokens.chunks(TOKENS_PER_BLOCK as usize).enumerate() {
        let data = chat.handle.read_kv(index).await?;
        let expected: Vec<u8> = tokens
            .iter()
            .flat_map(|&t| kv_of(t))
            .flat_map(|v| v.to_le_bytes())
            .collect();
        if index >= blocks || data[..expected.len()] != expected[..] {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn kv_stats(demo: &Demo) -> KvStats {
    match demo.rt.stats().await {
        Ok(stats) => stats.kv.unwrap_or_default(),
        Err(_) => KvStats::default(),
    }
}

async fn kernel_error(demo: &Demo, chat: &Chat) -> anyhow::Result<f32> {
    let device = demo
        .rt
        .wgpu_device()
        .ok_or_else(|| anyhow::anyhow!("the runtime's own wgpu device"))?;
    let blocks = chat.handle.kv_blocks().await?;
    let mut slabs = HashMap::new();
    for block in &blocks {
        if let std::collections::hash_map::Entry::Vacant(slot) = slabs.entry(block.buffer) {
            slot.insert(demo.rt.wgpu_buffer(block.buffer).await?);
        }
    }
    let query: Vec<f32> = (0..HEAD_DIM).map(|i| (i as f32 * 0.3).cos()).collect();
    let kernel = PagedAttention::new(&device);
    let tokens = chat.tokens.len() as u64;
    let gpu = kernel.run(&slabs, &blocks, tokens, TOKENS_PER_BLOCK, &query)?;
    let kvs: Vec<Vec<f32>> = chat.tokens.iter().map(|&t| kv_of(t)).collect();
    let cpu = cpu_attention(kvs.iter().map(Vec::as_slice), &query);
    Ok(gpu
        .iter()
        .zip(&cpu)
        .map(|(g, c)| (g - c).abs())
        .fold(0.0, f32::max))
}

fn print_summary(r: &Report) {
    let books = &r.books;
    report::heading("sessionbus demo report: kv", &books.adapter);
    row(
        "sessions",
        format!(
            "{} opened, {} ended ({} twice), ended by {}",
            books.sessions_opened,
            books.sessions_ended,
            books.double_ends,
            report::counts(&books.ended_by)
        ),
    );
    row(
        "kv blocks",
        format!(
            "{} allocated, {} shared at peak, {} cached, {} evicted",
            r.kv_blocks_allocated, r.kv_blocks_shared_peak, r.kv_blocks_cached, r.kv_blocks_evicted
        ),
    );
    row(
        "prefix cache",
        format!(
            "hit rate {:.2}, {} bytes saved by sharing at the peak",
            r.kv_prefix_hit_rate, r.kv_bytes_saved_by_sharing
        ),
    );
    row(
        "offload",
        format!(
            "{} conversations, {} blocks to host memory; {} read back bit for bit",
            r.kv_offloads, r.kv_blocks_offloaded, r.kv_restored_bit_for_bit
        ),
    );
    row(
        "slabs",
        format!(
            "{} created, {} trimmed",
            r.kv_slabs_created, r.kv_slabs_trimmed
        ),
    );
    row(
        "held by ended",
        format!("{} blocks (must be 0)", r.blocks_held_by_ended_sessions),
    );
    row(
        "kernel vs CPU",
        format!("max |error| {:.2e}", r.kernel_max_abs_error),
    );
    row(
        "wgpu counters",
        format!(
            "buffers {} → {}, leaked {} buffers / {} bytes",
            books.wgpu_hal_buffers_baseline,
            books.wgpu_hal_buffers_after,
            books.leaked_buffers,
            books.leaked_bytes
        ),
    );
    row("wall", format!("{} ms", books.wall_ms));
}
