//! Bus fan-out: one `Ended` event delivered to N = 1, 8, 64 channel
//! subscribers (`subscribe_channel(EventKinds::ENDED, Delivery::Reliable)`).
//!
//! Each iteration opens a session (not timed) and closes it while the bench
//! thread awaits the session's `Ended` event on every receiver in turn. The
//! time counted is from the end (`SessionEndEvent::ended_instant`, taken on
//! the engine thread just before the event is published) to the moment the
//! last of the N receivers has it, as seen by one consumer task that reads
//! them one after another. The close itself (its release receipt) is awaited
//! alongside, outside the count.
//!
//! ```text
//! cargo bench -p sessionbus-benches --bench micro_bus
//! ```

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sessionbus::{Delivery, EventKinds, LifecycleEvent, SessionId};
use tokio::sync::mpsc::Receiver;

use sessionbus_testkit::bench as common;

/// Waits for `session`'s `Ended` on every receiver; returns when it ended
/// and when the last receiver had it.
async fn ended_everywhere(
    receivers: &mut [Receiver<LifecycleEvent>],
    session: SessionId,
) -> (Instant, Instant) {
    let mut ended = None;
    for rx in receivers.iter_mut() {
        loop {
            match rx.recv().await.expect("bus open") {
                LifecycleEvent::Ended(e) if e.id == session => {
                    ended = Some(e.ended_instant);
                    break;
                }
                _ => {}
            }
        }
    }
    (ended.expect("at least one subscriber"), Instant::now())
}

fn micro_bus(c: &mut Criterion) {
    let tokio = common::tokio();
    let rt = common::start(&tokio);
    let mut group = c.benchmark_group("bus_fanout");
    let mut receivers: Vec<Receiver<LifecycleEvent>> = Vec::new();
    for subscribers in [1usize, 8, 64] {
        while receivers.len() < subscribers {
            let rx = tokio
                .block_on(rt.subscribe_channel(EventKinds::ENDED, Delivery::Reliable))
                .expect("subscribe");
            receivers.push(rx);
        }
        group.bench_function(BenchmarkId::new("ended", subscribers), |b| {
            b.iter_custom(|iters| {
                tokio.block_on(async {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let session = rt.open(format!("fanout-{i}")).await.expect("open");
                        let (closed, (ended, last)) = futures::join!(
                            session.close(),
                            ended_everywhere(&mut receivers, session.id())
                        );
                        closed.expect("close");
                        total += last.saturating_duration_since(ended);
                    }
                    total
                })
            })
        });
    }
    group.finish();
    drop(receivers);
    let report = tokio.block_on(rt.shutdown());
    println!(
        "shutdown: {} sessions ended, {} bus events undelivered",
        report.sessions.sessions_ended, report.bus_undelivered
    );
}

criterion_group!(benches, micro_bus);
criterion_main!(benches);
