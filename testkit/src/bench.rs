//! Shared by the benches: a single-threaded tokio runtime to drive the async
//! APIs from criterion's `iter_custom`, and timing loops (percentiles are in
//! [`crate::percentiles`]).

use std::future::Future;
use std::time::{Duration, Instant};

use sessionbus::config::Config;
use sessionbus::{Runtime, SessionHandle};

/// A current-thread tokio runtime with timers: the bench thread awaits, the
/// engine and the GPU worker run on their own threads.
pub fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A sessionbus runtime with the default configuration, on the real adapter.
pub fn start(tokio: &tokio::runtime::Runtime) -> Runtime {
    tokio
        .block_on(Runtime::start(Config::default()))
        .expect("runtime on a real adapter")
}

/// Times `iters` awaits of `f(i)` as one span.
pub fn timed<F, Fut>(tokio: &tokio::runtime::Runtime, iters: u64, mut f: F) -> Duration
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    tokio.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            f(i).await;
        }
        start.elapsed()
    })
}

/// Sums the durations `f(i)` measured itself, so its set-up is not counted.
pub fn summed<F, Fut>(tokio: &tokio::runtime::Runtime, iters: u64, mut f: F) -> Duration
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Duration>,
{
    tokio.block_on(async {
        let mut total = Duration::ZERO;
        for i in 0..iters {
            total += f(i).await;
        }
        total
    })
}

/// Opens a session of `owner` holding `buffers` buffers of `bytes` each.
pub async fn session_with_buffers(
    rt: &Runtime,
    owner: String,
    buffers: usize,
    bytes: u64,
) -> SessionHandle {
    let session = rt.open(owner).await.expect("open");
    for _ in 0..buffers {
        session.allocate(bytes).await.expect("allocate");
    }
    session
}
