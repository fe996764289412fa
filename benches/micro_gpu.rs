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
//!
//! ```text
//! cargo bench --bench micro_gpu
//! ```

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sessionbus::{AllocRequest, AllocationId, GpuConfig, GpuPool, SessionId, WgpuPool};
use tokio::sync::oneshot;

#[path = "common/mod.rs"]
mod common;

const SIZES: [(&str, u64); 4] = [
    ("4KiB", 4 << 10),
    ("64KiB", 64 << 10),
    ("1MiB", 1 << 20),
    ("16MiB", 16 << 20),
];
const HELD_AT_MOST: u64 = 8;

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
