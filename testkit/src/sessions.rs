//! Many sessions holding known bytes, and waiting for the engine to reach a
//! state: polled and bounded, never a timing threshold.

use std::future::Future;
use std::time::Duration;

use sessionbus::{AllocationId, LifecycleEvent, RegistryStats, Runtime, SessionHandle};
use tokio::sync::mpsc;

/// "Must answer eventually": a bound on a wait, never a timing assertion.
pub const EVENTUALLY: Duration = Duration::from_secs(90);

/// `future`'s output; panics naming `what` if it takes past [`EVENTUALLY`].
pub async fn eventually<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(EVENTUALLY, future)
        .await
        .unwrap_or_else(|_| panic!("{what} never answered"))
}

/// Reads every event until the bus closes (the engine stopped).
pub fn collect_until_closed(
    mut events: mpsc::Receiver<LifecycleEvent>,
) -> tokio::task::JoinHandle<Vec<LifecycleEvent>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) = events.recv().await {
            seen.push(event);
        }
        seen
    })
}

/// `len` bytes that differ from seed to seed.
pub fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(97)) as u8)
        .collect()
}

/// Opens `n` sessions (owners `user-0`, `user-1`, …) at once, each holding
/// one buffer of `bytes` filled with `pattern(i, bytes)`; in order of `i`.
pub async fn open_holding(
    rt: &Runtime,
    n: usize,
    bytes: u64,
) -> Vec<(SessionHandle, AllocationId, Vec<u8>)> {
    let opening: Vec<_> = (0..n)
        .map(|i| {
            let engine = rt.engine().clone();
            tokio::spawn(async move {
                let session = engine.open(format!("user-{i}")).await.unwrap();
                let buffer = session.allocate(bytes).await.unwrap();
                let data = pattern(i, bytes as usize);
                session
                    .write_buffer(buffer.id, 0, data.clone())
                    .await
                    .unwrap();
                (session, buffer.id, data)
            })
        })
        .collect();
    let mut sessions = Vec::with_capacity(n);
    for open in opening {
        sessions.push(open.await.expect("opening task"));
    }
    sessions
}

/// Polls the engine's stats (bounded) until `ready` holds; returns them.
pub async fn until_stats(
    rt: &Runtime,
    what: &str,
    ready: impl Fn(&RegistryStats) -> bool,
) -> RegistryStats {
    for _ in 0..2_400 {
        let stats = rt.stats().await.unwrap();
        if ready(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: never reached, {:?}", rt.stats().await.unwrap());
}
