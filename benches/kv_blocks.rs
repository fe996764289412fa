//! KV blocks against whole buffers (issue 17), on the real adapter:
//!
//! 1. `append`: cost per block of appending tokens into blocks of an existing
//!    slab, and of freeing them with the session's end, against one wgpu
//!    buffer create (`allocate`) and destroy per allocation.
//! 2. `sharing`: device memory for N sessions sharing a P-block prompt, read
//!    from wgpu's own counters, with sharing (one owner) and without (N owners).
//! 3. `cycles`: random open / append / fork / offload / crash / disconnect /
//!    context reset / close with sharing on; afterwards no block is held by an ended session
//!    and, after the trim, wgpu's counters are back at their baseline.
//! 4. `burst`: the SGLang #27024 shape: a burst of sessions pinning a shared
//!    prompt under a tight budget; every append answers (success or refusal),
//!    p50/p99 time-to-answer.
//!
//! ```text
//! 5. `reads`: one block read back (a ranged copy of the slab) against the
//!    read-back of a whole 1 MiB buffer; offload of a conversation's own
//!    blocks to host memory, and its restore on the next use, per block.
//!
//! cargo bench -p sessionbus-benches --bench kv_blocks [-- --quick]
//! ```

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sessionbus::config::{BlockBudget, Config, KvLayout, KvPoolConfig};
use sessionbus::{Runtime, SessionHandle, Turn};
use sessionbus_testkit::percentiles::Latencies;

const TOKENS_PER_BLOCK: u32 = 16;
const TOKEN_BYTES: u64 = 256; // 4 KiB blocks

fn kv(blocks_per_slab: u32, device_blocks: u64, cache_blocks: u64, trim: Duration) -> Config {
    let mut config = Config::default();
    config.expiry.sweep_interval = Duration::from_millis(100);
    config.kv = Some(KvPoolConfig {
        layout: KvLayout {
            tokens_per_block: TOKENS_PER_BLOCK,
            bytes_per_token: TOKEN_BYTES,
        },
        blocks_per_slab,
        device_budget: BlockBudget::Blocks(device_blocks),
        cache_budget: BlockBudget::Blocks(cache_blocks),
        owner_budget: None,
        table_cap_blocks: None,
        keep_alive: Duration::ZERO,
        slab_idle_trim: trim,
    });
    config
}

fn block_bytes() -> u64 {
    u64::from(TOKENS_PER_BLOCK) * TOKEN_BYTES
}

fn tokens(from: u32, blocks: u32) -> Vec<u32> {
    (from..from + blocks * TOKENS_PER_BLOCK).collect()
}

async fn append_vs_buffers(blocks: u32) -> anyhow::Result<()> {
    let rt = Runtime::builder()
        .config(kv(
            blocks + 16,
            u64::from(blocks) * 4,
            0,
            Duration::from_secs(3600),
        ))
        .start()
        .await?;
    // Warm: the slab exists before the timed appends (a block append makes no wgpu call).
    let warm = rt.open("warm").await?;
    warm.append_tokens(&tokens(0, 1)).await?;
    warm.close().await?;

    let mut rows = Vec::new();
    for _round in 0..3 {
        let session = rt.open("blocks").await?;
        let started = Instant::now();
        for b in 0..blocks {
            session
                .append_tokens(&tokens(b * TOKENS_PER_BLOCK, 1))
                .await?;
        }
        let append = started.elapsed();
        let started = Instant::now();
        session.close().await?;
        let free = started.elapsed();

        let session = rt.open("buffers").await?;
        let started = Instant::now();
        for _ in 0..blocks {
            session.allocate(block_bytes()).await?;
        }
        let create = started.elapsed();
        let started = Instant::now();
        session.close().await?;
        let destroy = started.elapsed();
        rows.push((append, free, create, destroy));
    }
    rows.sort_by_key(|r| r.0);
    let (append, free, create, destroy) = rows[rows.len() / 2];
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(blocks);
    println!(
        "append   {blocks} blocks of {} B: append {:.2} µs/block, free {:.3} µs/block | \
         buffers: create {:.2} µs/buffer, destroy {:.3} µs/buffer | append/create {:.2}, free/destroy {:.2}  (median of 3 rounds)",
        block_bytes(),
        per(append),
        per(free),
        per(create),
        per(destroy),
        per(append) / per(create),
        per(free) / per(destroy),
    );
    rt.shutdown().await;
    Ok(())
}

async fn sharing(sessions: u32, prompt_blocks: u32, own_blocks: u32) -> anyhow::Result<()> {
    let mut memory = Vec::new();
    for shared in [true, false] {
        let rt = Runtime::builder()
            .config(kv(8, 1 << 20, 1 << 16, Duration::from_secs(3600)))
            .start()
            .await?;
        let baseline = rt.gpu_counters().expect("wgpu counters");
        let mut held = Vec::new();
        for i in 0..sessions {
            let owner = if shared {
                "tenant".to_string()
            } else {
                format!("tenant-{i}")
            };
            let session = rt.open(owner).await?;
            let mut all = tokens(0, prompt_blocks);
            all.extend(tokens(1_000_000 + i * 10_000, own_blocks));
            session.append_tokens(&all).await?;
            held.push(session);
        }
        let used = rt.gpu_counters().expect("wgpu counters").buffer_memory - baseline.buffer_memory;
        memory.push(used);
        drop(held);
        rt.shutdown().await;
    }
    let ideal_shared = (prompt_blocks + sessions * own_blocks) as u64 * block_bytes();
    let ideal_copies = (sessions * (prompt_blocks + own_blocks)) as u64 * block_bytes();
    println!(
        "sharing  {sessions} sessions × ({prompt_blocks} prompt + {own_blocks} own) blocks: \
         shared {} KiB (P + N×own = {} KiB), not shared {} KiB (N×(P+own) = {} KiB), ratio {:.2}  (wgpu hal.buffer_memory, slabs of 8 blocks)",
        memory[0] / 1024,
        ideal_shared / 1024,
        memory[1] / 1024,
        ideal_copies / 1024,
        memory[0] as f64 / memory[1] as f64,
    );
    Ok(())
}

async fn cycles(n: u64) -> anyhow::Result<()> {
    let rt = Runtime::builder()
        .config(kv(32, 8192, 256, Duration::from_millis(200)))
        .start()
        .await?;
    let baseline = rt.gpu_counters().expect("wgpu counters");
    let mut rng = StdRng::seed_from_u64(17);
    let mut live: Vec<SessionHandle> = Vec::new();
    let (mut crashed, mut refused, mut forks, mut offloads) = (0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    for _ in 0..n {
        match rng.random_range(0..12) {
            0..=2 if live.len() < 64 => {
                let owner = format!("t{}", rng.random_range(0..4));
                live.push(rt.open(owner).await?);
            }
            3..=5 if !live.is_empty() => {
                let s = &live[rng.random_range(0..live.len())];
                // Half the time a common prompt (a prefix hit), else fresh tokens.
                let from = if rng.random_bool(0.5) {
                    0
                } else {
                    rng.random_range(1..1_000_000)
                };
                let blocks = rng.random_range(1..4);
                if s.append_tokens(&tokens(from, blocks)).await.is_err() {
                    refused += 1;
                }
            }
            6 if !live.is_empty() => {
                let s = live.swap_remove(rng.random_range(0..live.len()));
                s.inject_panic().await;
                crashed += 1;
            }
            7 if !live.is_empty() => drop(live.swap_remove(rng.random_range(0..live.len()))),
            8 if !live.is_empty() => {
                let s = &live[rng.random_range(0..live.len())];
                let _ = s.chat(Turn::new().negation()).await;
            }
            9 if !live.is_empty() && live.len() < 64 => {
                let s = &live[rng.random_range(0..live.len())];
                if let Ok(fork) = s.fork().await {
                    live.push(fork);
                    forks += 1;
                }
            }
            10 if !live.is_empty() => {
                // Offloaded now; its next call (any op above) restores it.
                let s = &live[rng.random_range(0..live.len())];
                offloads += u64::from(s.offload().await.is_ok());
            }
            _ if !live.is_empty() => {
                let s = live.swap_remove(rng.random_range(0..live.len()));
                let _ = s.close().await;
            }
            _ => {}
        }
    }
    let took = started.elapsed();
    for s in live.drain(..) {
        let _ = s.close().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kv = rt.stats().await?.kv.expect("kv stats");
    // Cached blocks stay in their slabs until evicted: the shutdown evicts and trims all.
    let report = rt.shutdown().await;
    println!(
        "cycles   {n} random ops in {:.1} s ({:.1} µs/op): {crashed} crashes, {forks} forks, {offloads} offloads, {refused} refused appends; \
         after: referenced {}, held by ended {}, slabs created {}, trimmed {}; wgpu counters at baseline: {}",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / n as f64,
        kv.blocks_referenced,
        kv.blocks_held_by_released_tables,
        kv.slabs_created,
        kv.slabs_trimmed,
        report.gpu_after == Some(baseline),
    );
    anyhow::ensure!(kv.blocks_referenced == 0 && kv.blocks_held_by_released_tables == 0);
    anyhow::ensure!(
        report.gpu_after == Some(baseline),
        "wgpu counters not at baseline"
    );
    Ok(())
}

async fn burst(sessions: u32) -> anyhow::Result<()> {
    // 64 blocks for everyone; each session wants the 4-block prompt (shared) + 8 own.
    let rt = Runtime::builder()
        .config(kv(16, 64, 0, Duration::from_secs(3600)))
        .start()
        .await?;
    let engine = rt.engine().clone();
    let mut tasks = Vec::new();
    let started = Instant::now();
    for i in 0..sessions {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let session = engine.open("tenant").await.expect("open");
            let asked = Instant::now();
            let mut all = tokens(0, 4);
            all.extend(tokens(1_000_000 + i * 1_000, 8));
            let answer = session.append_tokens(&all).await;
            (asked.elapsed(), answer.is_ok(), session)
        }));
    }
    let mut latencies = Latencies::default();
    let (mut ok, mut held) = (0, Vec::new());
    for task in tasks {
        let (took, granted, session) = task.await?;
        latencies.record(took);
        ok += u32::from(granted);
        held.push(session);
    }
    let wall = started.elapsed();
    println!(
        "burst    {sessions} sessions pin a shared 4-block prompt + 8 own under a 64-block budget: \
         {ok} granted, {} refused at once; time to answer p50 {:?} p99 {:?} max {:?}; all answered in {:?}",
        sessions - ok,
        latencies.at(0.5).unwrap_or_default(),
        latencies.at(0.99).unwrap_or_default(),
        latencies.at(1.0).unwrap_or_default(),
        wall,
    );
    drop(held);
    rt.shutdown().await;
    Ok(())
}

async fn reads_and_offload(rounds: usize) -> anyhow::Result<()> {
    // One slab of 256 blocks of 4 KiB (1 MiB), and a 1 MiB whole buffer.
    let rt = Runtime::builder()
        .config(kv(256, 512, 0, Duration::from_secs(3600)))
        .start()
        .await?;
    let session = rt.open("tenant").await?;
    session.append_tokens(&tokens(0, 64)).await?;
    let other = rt.open("tenant").await?;
    let whole = other.allocate(256 * block_bytes()).await?;
    let (mut block, mut buffer) = (Latencies::default(), Latencies::default());
    for i in 0..rounds {
        let t = Instant::now();
        session.read_kv(i % 64).await?;
        block.record(t.elapsed());
        let t = Instant::now();
        other.read_buffer(whole.id).await?;
        buffer.record(t.elapsed());
    }
    other.close().await?;
    let (mut offload, mut restore) = (Latencies::default(), Latencies::default());
    for _ in 0..rounds.min(50) {
        let t = Instant::now();
        let moved = session.offload().await?;
        offload.record(t.elapsed() / moved.kv_blocks.max(1) as u32);
        let t = Instant::now();
        session.kv_blocks().await?; // restores first
        restore.record(t.elapsed() / moved.kv_blocks.max(1) as u32);
    }
    let p50 = |l: &Latencies| l.at(0.5).unwrap_or_default();
    println!(
        "reads    one 4 KiB block of a 1 MiB slab {:?} p50 ({:?} p99) vs a whole 1 MiB buffer {:?} p50 ({:?} p99): {:.1}x | \
         offload {:?}/block, restore {:?}/block (64 own blocks, p50 of {} rounds)",
        p50(&block),
        block.at(0.99).unwrap_or_default(),
        p50(&buffer),
        buffer.at(0.99).unwrap_or_default(),
        p50(&buffer).as_secs_f64() / p50(&block).as_secs_f64().max(1e-9),
        p50(&offload),
        p50(&restore),
        rounds.min(50),
    );
    session.close().await?;
    rt.shutdown().await;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // The cycles crash sessions on purpose; their panics are not news.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("injected panic") {
            report(info);
        }
    }));
    let quick = std::env::args().any(|a| a == "--quick");
    append_vs_buffers(if quick { 200 } else { 2_000 }).await?;
    sharing(if quick { 20 } else { 100 }, 8, 2).await?;
    cycles(if quick { 5_000 } else { 100_000 }).await?;
    burst(if quick { 100 } else { 1_000 }).await?;
    reads_and_offload(if quick { 20 } else { 200 }).await?;
    Ok(())
}
