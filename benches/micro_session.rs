//! Micro-benchmarks of a session's life through the public API, each awaited
//! from the bench thread (so every figure includes the cross-thread hops to
//! the engine thread and back):
//!
//! - `session/open`: `Runtime::open` round trip (registry → new session actor
//!   → handle). The handles are kept until the end of the sample, then
//!   closed outside the timing, so no disconnect runs meanwhile.
//! - `session/open_close`: open, then `close()` until its release receipt
//!   (the session holds no buffers, so the GPU worker only polls).
//! - `session/chat`: `chat(Turn::new())` on one live session (no signal: the
//!   context is only kept fresh).
//! - `session/chat_embedding_384`: the same with a 384-dim embedding, which
//!   the default context policy (`DecayingContext`) compares with the
//!   context (cosine); the same vector every turn, so every verdict is `Fresh`.
//!
//! ```text
//! cargo bench -p sessionbus-benches --bench micro_session
//! MICRO_SESSION_LOGS=1 cargo bench -p sessionbus-benches --bench micro_session   # with a subscriber at INFO
//! ```

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use sessionbus::{ContextVerdict, SessionHandle, Turn};

use sessionbus_testkit::bench as common;

const EMBEDDING_DIM: usize = 384;

fn micro_session(c: &mut Criterion) {
    // `MICRO_SESSION_LOGS=1`: a subscriber wants the supervisor's INFO lines
    // (written to a sink), so each session has its span and the lifecycle
    // lines are formatted: what logging costs, next to the run without.
    if std::env::var_os("MICRO_SESSION_LOGS").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter("sessionbus::supervisor=info")
            .with_writer(std::io::sink)
            .init();
    }
    let tokio = common::tokio();
    let rt = common::start(&tokio);
    let mut group = c.benchmark_group("session");

    group.bench_function("open", |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let mut opened: Vec<SessionHandle> = Vec::with_capacity(iters as usize);
                let start = Instant::now();
                for i in 0..iters {
                    opened.push(rt.open(format!("open-{i}")).await.expect("open"));
                }
                let took = start.elapsed();
                futures::future::join_all(opened.iter().map(SessionHandle::close)).await;
                took
            })
        })
    });

    group.bench_function("open_close", |b| {
        b.iter_custom(|iters| {
            common::timed(&tokio, iters, |i| {
                let rt = &rt;
                async move {
                    let session = rt.open(format!("open-close-{i}")).await.expect("open");
                    session.close().await.expect("close");
                }
            })
        })
    });

    let session = tokio.block_on(rt.open("chatter")).expect("open");
    group.bench_function("chat", |b| {
        b.iter_custom(|iters| {
            common::timed(&tokio, iters, |_| {
                let chat = session.chat(Turn::new());
                async move {
                    chat.await.expect("chat");
                }
            })
        })
    });

    let embedding: Vec<f32> = (0..EMBEDDING_DIM)
        .map(|i| ((i as f32) * 0.37).sin())
        .collect();
    let session_e = tokio.block_on(rt.open("embedder")).expect("open");
    group.bench_function(format!("chat_embedding_{EMBEDDING_DIM}"), |b| {
        b.iter_custom(|iters| {
            common::timed(&tokio, iters, |_| {
                let chat = session_e.chat(Turn::new().embedding(embedding.clone()));
                async move {
                    let ack = chat.await.expect("chat");
                    assert!(
                        matches!(ack.context, ContextVerdict::Fresh { .. }),
                        "{:?}",
                        ack.context
                    );
                }
            })
        })
    });
    group.finish();

    drop((session, session_e));
    let report = tokio.block_on(rt.shutdown());
    println!(
        "shutdown: {} sessions ended; wgpu buffers after {}",
        report.sessions.sessions_ended,
        report.gpu_after.expect("wgpu counters").buffers
    );
}

criterion_group!(benches, micro_session);
criterion_main!(benches);
