//! A touch costs the same with a thousand or a million live sessions.
//!
//! Every session is filed under an idle deadline (default `[expiry]`), and
//! the bench measures `SessionHandle::touch()` (a round trip to the session
//! actor, which stores one timestamp) with 1 000 and with 1 000 000 live
//! sessions. A design with a timer per session, re-armed on every touch,
//! would grow with the population; this one must not. Prints the resident
//! memory per live session as a by-product.
//!
//! ```text
//! cargo bench -p sessionbus-benches --bench touch_at_scale
//! ```

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sessionbus::SessionHandle;

use sessionbus_testkit::bench as common;
#[allow(dead_code)]
// Only `resident_bytes` is used here.
// Both shared modules carry the percentiles helper; this bench uses neither copy.
#[allow(clippy::duplicate_mod)]
#[path = "compare/common.rs"]
mod compare_common;
use compare_common::resident_bytes;

fn touch_at_scale(c: &mut Criterion) {
    let tokio = common::tokio();
    let rt = common::start(&tokio);
    let mut group = c.benchmark_group("touch");
    let mut live: Vec<SessionHandle> = Vec::new();
    for population in [1_000usize, 1_000_000] {
        let before = resident_bytes();
        let added = population - live.len();
        tokio.block_on(async {
            for chunk in 0..added.div_ceil(10_000) {
                let n = (added - chunk * 10_000).min(10_000);
                let opened =
                    futures::future::join_all((0..n).map(|i| rt.open(format!("user-{chunk}-{i}"))))
                        .await;
                live.extend(opened.into_iter().map(|s| s.expect("open")));
            }
        });
        let stats = tokio.block_on(rt.stats()).expect("running");
        println!(
            "touch: {} live sessions, {} filed deadlines; resident +{:.0} B per added session",
            stats.live,
            stats.scheduled_deadlines,
            resident_bytes().saturating_sub(before) as f64 / added as f64
        );
        let session = live[population / 2].clone();
        group.bench_with_input(BenchmarkId::from_parameter(population), &session, |b, s| {
            b.iter_custom(|iters| {
                tokio.block_on(async {
                    let start = std::time::Instant::now();
                    for _ in 0..iters {
                        s.touch().await.expect("touch");
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
    drop(live);
    let report = tokio.block_on(rt.shutdown());
    println!(
        "shutdown: {} sessions ended",
        report.sessions.sessions_ended
    );
}

criterion_group!(benches, touch_at_scale);
criterion_main!(benches);
