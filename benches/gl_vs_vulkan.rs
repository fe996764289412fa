//! Close → released on the GL fallback against Vulkan, side by side in one
//! process, on the real adapters (llvmpipe through EGL, lavapipe).
//!
//! Two runtimes run at once, one per backend (`[gpu] backend`), each with
//! 1 000 live sessions holding 4 × 64 KiB. Sessions are closed one at a
//! time, alternating which backend goes first, and each close is timed from
//! `close()` to `ReleaseReceipt::released_at`; the GPU thread's own share
//! (`steps.destroy_and_poll`) is reported next to it. Then the demo's shape:
//! 64 clients at once, each running sessions one after the other (8
//! allocations of 64 KiB, then close), one backend at a time, alternating,
//! so that closes meet other clients' allocations on the GPU thread. Warm-up
//! rounds are not counted. Needs sessionbus's `gl` feature:
//!
//! ```text
//! cargo bench -p sessionbus-benches --bench gl_vs_vulkan --features sessionbus/gl
//! ```

use std::time::{Duration, Instant};

use sessionbus::config::{BackendChoice, Config};
use sessionbus::{Runtime, SessionHandle};

use sessionbus_testkit::bench as common;
use sessionbus_testkit::percentiles::Latencies;

const LIVE_SESSIONS: usize = 1_000;
const BUFFERS_PER_SESSION: usize = 4;
const KV_BYTES: u64 = 64 * 1024;
const ROUNDS: usize = 10;
const CLOSES_PER_ROUND: usize = 200;
/// Busy phase, as the demo runs: clients at once, each opening sessions one
/// after the other, allocating a buffer per turn, and closing them.
const CLIENTS: usize = 64;
const TURNS: usize = 8;
const SESSIONS_PER_CLIENT: usize = 5;
const BUSY_ROUNDS: usize = 4;

async fn session_with_buffers(rt: &Runtime, owner: String) -> SessionHandle {
    common::session_with_buffers(rt, owner, BUFFERS_PER_SESSION, KV_BYTES).await
}

/// A runtime on one backend, with its live population.
struct Setup {
    label: &'static str,
    rt: Runtime,
    live: Vec<SessionHandle>,
}

fn setup(tokio: &tokio::runtime::Runtime, label: &'static str, backend: BackendChoice) -> Setup {
    let mut config = Config::default();
    config.gpu.backend = backend;
    tokio.block_on(async {
        let rt = Runtime::start(config)
            .await
            .unwrap_or_else(|error| panic!("a runtime on {label}: {error}"));
        let live = futures::future::join_all(
            (0..LIVE_SESSIONS).map(|i| session_with_buffers(&rt, format!("live-{i}"))),
        )
        .await;
        Setup { label, rt, live }
    })
}

/// Per backend: close → released, and the GPU thread's destroy + poll.
#[derive(Default)]
struct Samples {
    released: Vec<Duration>,
    gpu_thread: Vec<Duration>,
}

async fn one_close(setup: &Setup, i: usize, into: &mut Samples) {
    let session = session_with_buffers(&setup.rt, format!("bench-{i}")).await;
    let asked = Instant::now();
    let receipt = session.close().await.expect("close");
    assert_eq!(receipt.buffers, BUFFERS_PER_SESSION as u64);
    into.released
        .push(receipt.released_at.saturating_duration_since(asked));
    into.gpu_thread.push(receipt.steps.destroy_and_poll);
}

/// One close on each backend per step, alternating which goes first, so
/// that the machine's noise falls on both alike.
fn round(tokio: &tokio::runtime::Runtime, setups: &[Setup; 2], into: &mut [Samples; 2]) {
    tokio.block_on(async {
        for i in 0..CLOSES_PER_ROUND {
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                one_close(&setups[which], i, &mut into[which]).await;
            }
        }
    });
}

/// The busy phase on one backend: CLIENTS clients at once, each running
/// SESSIONS_PER_CLIENT sessions one after the other (open, TURNS
/// allocations, close), so that closes meet other clients' allocations.
async fn busy(setup: &Setup, round: usize, into: &mut Samples) {
    let clients = (0..CLIENTS).map(|client| async move {
        let mut taken = Vec::with_capacity(SESSIONS_PER_CLIENT);
        for n in 0..SESSIONS_PER_CLIENT {
            let owner = format!("busy-{round}-{client}-{n}");
            let session = setup.rt.open(owner).await.expect("open");
            for _ in 0..TURNS {
                session.allocate(KV_BYTES).await.expect("allocate");
            }
            let asked = Instant::now();
            let receipt = session.close().await.expect("close");
            taken.push((
                receipt.released_at.saturating_duration_since(asked),
                receipt.steps.destroy_and_poll,
            ));
        }
        taken
    });
    for (released, gpu_thread) in futures::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
    {
        into.released.push(released);
        into.gpu_thread.push(gpu_thread);
    }
}

/// Busy rounds on each backend in turn, alternating which goes first.
fn busy_rounds(tokio: &tokio::runtime::Runtime, setups: &[Setup; 2], into: &mut [Samples; 2]) {
    tokio.block_on(async {
        for round in 0..BUSY_ROUNDS {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                busy(&setups[which], round, &mut into[which]).await;
            }
        }
    });
}

fn quantiles(samples: &[Duration]) -> (Duration, Duration) {
    let latencies: Latencies = samples.iter().collect();
    let at = |q: f64| latencies.at(q).unwrap_or_default();
    (at(0.50), at(0.99))
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let tokio = common::tokio();
    let setups = [
        setup(&tokio, "vulkan", BackendChoice::Vulkan),
        setup(&tokio, "gl", BackendChoice::Gl),
    ];
    for s in &setups {
        let info = s.rt.pool_info();
        println!("{}: {} on {}", s.label, info.adapter, info.backend);
    }
    round(&tokio, &setups, &mut Default::default());
    let mut samples: [Samples; 2] = Default::default();
    for _ in 0..ROUNDS {
        round(&tokio, &setups, &mut samples);
    }

    table("one close at a time", &setups, &samples);
    let mut busy_samples: [Samples; 2] = Default::default();
    busy_rounds(&tokio, &setups, &mut Default::default());
    busy_rounds(&tokio, &setups, &mut busy_samples);
    table(
        &format!(
            "{CLIENTS} clients at once, each {SESSIONS_PER_CLIENT} sessions in turn: {TURNS} allocations, then close"
        ),
        &setups,
        &busy_samples,
    );

    for s in setups {
        let baseline = s.rt.gpu_counters().expect("the runtime's own wgpu pool");
        drop(s.live);
        let report = tokio.block_on(s.rt.shutdown());
        println!(
            "{}: wgpu buffers {} while live, {} after shutdown",
            s.label,
            baseline.buffers,
            report.gpu_after.expect("wgpu counters").buffers
        );
    }
}

/// The table of one phase, and GL's ratio to Vulkan.
fn table(phase: &str, setups: &[Setup; 2], samples: &[Samples; 2]) {
    println!("\n{phase}:");
    println!(
        "| backend | closes | close → released p50 µs | p99 µs | GPU thread p50 µs | p99 µs |"
    );
    println!("|---|---|---|---|---|---|");
    let mut p99s = Vec::new();
    for (s, taken) in setups.iter().zip(samples) {
        let (p50, p99) = quantiles(&taken.released);
        let (g50, g99) = quantiles(&taken.gpu_thread);
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            s.label,
            taken.released.len(),
            micros(p50),
            micros(p99),
            micros(g50),
            micros(g99)
        );
        p99s.push((p50, p99));
    }
    let ratio =
        |q: fn(&(Duration, Duration)) -> Duration| micros(q(&p99s[1])) / micros(q(&p99s[0]));
    println!(
        "gl ÷ vulkan: p50 {:.2}, p99 {:.2}",
        ratio(|p| p.0),
        ratio(|p| p.1)
    );
}
