//! Close → released with 10 000 live sessions, on the real wgpu adapter.
//!
//! Measures, per close, the time from calling `SessionHandle::close()` to the
//! moment the pool had destroyed the session's buffers and polled the device
//! (`ReleaseReceipt::released_at`). Criterion reports the mean and median; the
//! tail (p50 / p99 / max over every sample) is printed after the run, since the
//! target is a p99.
//!
//! ```text
//! cargo bench -p sessionbus-benches --bench close_to_release
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sessionbus::{Runtime, SessionHandle};

use sessionbus_testkit::bench as common;

use sessionbus_testkit::percentiles::Latencies;

const LIVE_SESSIONS: usize = 10_000;
const BUFFERS_PER_SESSION: usize = 4;
const KV_BYTES: u64 = 64 * 1024;

async fn session_with_buffers(rt: &Runtime, owner: String) -> SessionHandle {
    common::session_with_buffers(rt, owner, BUFFERS_PER_SESSION, KV_BYTES).await
}

fn close_to_release(c: &mut Criterion) {
    let tokio = common::tokio();
    let rt = common::start(&tokio);
    let adapter = rt.pool_info().clone();
    let live: Vec<SessionHandle> = tokio.block_on(async {
        futures::future::join_all(
            (0..LIVE_SESSIONS).map(|i| session_with_buffers(&rt, format!("live-{i}"))),
        )
        .await
    });
    let samples = Mutex::new(Vec::<Duration>::new());

    let mut group = c.benchmark_group(format!("close_to_release/{LIVE_SESSIONS}_live"));
    group.sample_size(100);
    group.bench_function(format!("{BUFFERS_PER_SESSION}x64KiB"), |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let session = session_with_buffers(&rt, format!("bench-{i}")).await;
                    let asked = Instant::now();
                    let receipt = session.close().await.expect("close");
                    let took = receipt.released_at.saturating_duration_since(asked);
                    assert_eq!(receipt.buffers, BUFFERS_PER_SESSION as u64);
                    samples.lock().unwrap().push(took);
                    total += took;
                }
                total
            })
        })
    });
    group.finish();

    let all: Latencies = samples.into_inner().unwrap().into_iter().collect();
    let at = |q: f64| all.at(q).unwrap_or_default();
    println!(
        "close_to_release ({} live sessions, {} on {}): n={} p50={:?} p99={:?} max={:?}",
        LIVE_SESSIONS,
        adapter.adapter,
        adapter.backend,
        all.len(),
        at(0.50),
        at(0.99),
        at(1.0)
    );
    let baseline = rt.gpu_counters().expect("the runtime's own wgpu pool");
    drop(live);
    let report = tokio.block_on(rt.shutdown());
    println!(
        "shutdown of the live population: {:?}; wgpu buffers after {} (live during bench {})",
        report.sessions.took,
        report.gpu_after.expect("wgpu counters").buffers,
        baseline.buffers
    );
}

criterion_group!(benches, close_to_release);
criterion_main!(benches);
