//! GPU allocate and release per size class (4 KiB, 64 KiB, 1 MiB, 16 MiB),
//! straight through `WgpuPool` (no engine, no actors), on the real adapter.
//!
//! - `gpu_allocate/<size>`: `GpuPool::allocate` → the `sessionbus-gpu`
//!   thread creates the buffer (inside validation and out-of-memory error
//!   scopes) → the oneshot reply is received. Every 8 buffers the session is
//!   released, outside the timing, so memory stays bounded.
//! - `gpu_release/<size>`: `GpuPool::release_session` of a session holding
//!   one buffer of that size (allocated outside the timing) → the worker
//!   destroys it and polls the device → the reply is received.
//! - `gpu_offload/<n>x64KiB`: `GpuPool::offload_session` of a session holding
//!   `n` written 64 KiB buffers → the worker copies them to staging buffers
//!   (one submission), maps and reads them (one poll), destroys the buffers
//!   and polls → the reply is received. Allocating, writing, restoring and
//!   releasing are outside the timing.
//! - `gpu_restore/<n>x64KiB`: `GpuPool::restore_session` of that session
//!   once offloaded → the worker recreates the `n` buffers mapped, copies the
//!   contents in, submits and polls → the reply is received.
//!
//! ```text
//! cargo bench -p sessionbus-benches --bench micro_gpu
//! ```

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sessionbus::config::GpuConfig;
use sessionbus::pool::{AllocRequest, GpuPool, WgpuPool};
use sessionbus::{AllocationId, SessionId};
use tokio::sync::oneshot;

use sessionbus_testkit::bench as common;

const SIZES: [(&str, u64); 4] = [
    ("4KiB", 4 << 10),
    ("64KiB", 64 << 10),
    ("1MiB", 1 << 20),
    ("16MiB", 16 << 20),
];
const HELD_AT_MOST: u64 = 8;
/// Buffers per session in the offload and restore benches.
const OFFLOADED: [u64; 3] = [1, 16, 64];
const KV_BLOCK: u64 = 64 << 10;

async fn allocate(pool: &WgpuPool, session: SessionId, bytes: u64) {
    let (reply, answer) = oneshot::channel();
    let id = AllocationId::next();
    pool.allocate(AllocRequest { session, id, bytes }, reply);
    let allocated = answer.await.expect("reply").expect("allocate");
    assert!(allocated.bytes >= bytes);
}

async fn release(pool: &WgpuPool, session: SessionId) -> u64 {
    let (reply, answer) = oneshot::channel();
    pool.release_session(session, reply);
    answer.await.expect("reply").buffers
}

/// Gives `session` `n` buffers of 64 KiB, each written in full.
async fn fill(pool: &WgpuPool, session: SessionId, n: u64) {
    for i in 0..n {
        let (reply, answer) = oneshot::channel();
        let id = AllocationId::next();
        pool.allocate(
            AllocRequest {
                session,
                id,
                bytes: KV_BLOCK,
            },
            reply,
        );
        answer.await.expect("reply").expect("allocate");
        let (reply, answer) = oneshot::channel();
        pool.write(session, id, 0, vec![i as u8; KV_BLOCK as usize], reply);
        answer.await.expect("reply").expect("write");
    }
}

async fn offload(pool: &WgpuPool, session: SessionId) -> u64 {
    let (reply, answer) = oneshot::channel();
    pool.offload_session(session, reply);
    answer.await.expect("reply").expect("offload").buffers
}

async fn restore(pool: &WgpuPool, session: SessionId) -> u64 {
    let (reply, answer) = oneshot::channel();
    pool.restore_session(session, reply);
    answer.await.expect("reply").expect("restore").buffers
}

/// One offload-and-restore cycle of `n` buffers; returns the time of the
/// offload or of the restore alone (`timing_restore`).
async fn offload_restore(pool: &WgpuPool, n: u64, timing_restore: bool) -> Duration {
    let session = SessionId::random();
    fill(pool, session, n).await;
    let start = Instant::now();
    let offloaded = offload(pool, session).await;
    let offload_took = start.elapsed();
    let start = Instant::now();
    let restored = restore(pool, session).await;
    let restore_took = start.elapsed();
    assert_eq!((offloaded, restored), (n, n));
    assert_eq!(release(pool, session).await, n);
    if timing_restore {
        restore_took
    } else {
        offload_took
    }
}

/// What a `gpu_*` bench times.
#[derive(Clone, Copy)]
enum Op {
    Allocate,
    Release,
}

impl Op {
    fn group(self) -> &'static str {
        match self {
            Op::Allocate => "gpu_allocate",
            Op::Release => "gpu_release",
        }
    }

    /// One iteration; returns the time of the timed step only. `last` ends
    /// the sample with nothing held.
    async fn timed(self, pool: &WgpuPool, session: SessionId, bytes: u64, last: bool) -> Duration {
        match self {
            Op::Allocate => {
                let start = Instant::now();
                allocate(pool, session, bytes).await;
                let took = start.elapsed();
                let held = pool.stats().live_buffers;
                if held >= HELD_AT_MOST || last {
                    release(pool, session).await;
                }
                took
            }
            Op::Release => {
                allocate(pool, session, bytes).await;
                let start = Instant::now();
                let freed = release(pool, session).await;
                let took = start.elapsed();
                assert_eq!(freed, 1);
                took
            }
        }
    }
}

fn micro_gpu(c: &mut Criterion) {
    let tokio = common::tokio();
    let pool = WgpuPool::start(&GpuConfig::default()).expect("a real adapter");
    println!("adapter: {} ({})", pool.info().adapter, pool.info().backend);
    let session = SessionId::random();

    for op in [Op::Allocate, Op::Release] {
        let mut group = c.benchmark_group(op.group());
        for (name, bytes) in SIZES {
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|iters| {
                    common::summed(&tokio, iters, |i| {
                        op.timed(&pool, session, bytes, i + 1 == iters)
                    })
                })
            });
        }
        group.finish();
    }

    for (group, timing_restore) in [("gpu_offload", false), ("gpu_restore", true)] {
        let mut group = c.benchmark_group(group);
        for n in OFFLOADED {
            group.bench_function(BenchmarkId::from_parameter(format!("{n}x64KiB")), |b| {
                b.iter_custom(|iters| {
                    common::summed(&tokio, iters, |_| offload_restore(&pool, n, timing_restore))
                })
            });
        }
        group.finish();
    }

    let initial = pool.initial_counters();
    let after = pool.shutdown();
    println!(
        "wgpu buffers: initial {}, after shutdown {} (leaked {})",
        initial.buffers,
        after.buffers,
        after.buffers - initial.buffers
    );
}

criterion_group!(benches, micro_gpu);
criterion_main!(benches);
