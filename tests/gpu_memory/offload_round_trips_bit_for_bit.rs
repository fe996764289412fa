//! Offloading a session's GPU buffers to host memory and restoring them gives
//! back every byte, under the same ids, on a real adapter; wgpu's own
//! counters drop by exactly the offloaded buffers and come back with them.

use rand::{Rng, SeedableRng, rngs::StdRng};
use sessionbus::config::{BackendChoice, GpuConfig};
use sessionbus::pool::{AllocRequest, GpuCounters, GpuPool, WgpuPool};
use sessionbus::{Allocated, AllocationId, SessionId};
use tokio::sync::oneshot;

/// Vulkan, where wgpu counts buffer memory exactly (lavapipe without a GPU).
fn start() -> WgpuPool {
    let config = GpuConfig {
        backend: BackendChoice::Vulkan,
        ..GpuConfig::default()
    };
    WgpuPool::start(&config).expect("a Vulkan adapter (install mesa-vulkan-drivers)")
}

fn ask<T>(send: impl FnOnce(oneshot::Sender<T>)) -> T {
    let (reply, answer) = oneshot::channel();
    send(reply);
    answer.blocking_recv().expect("the pool answers")
}

/// A session's buffers and what was written into each.
struct Filled {
    session: SessionId,
    buffers: Vec<(Allocated, Vec<u8>)>,
}

impl Filled {
    /// Allocates `count` buffers of random odd sizes (rounded by the pool)
    /// for a new session.
    fn allocate(pool: &WgpuPool, rng: &mut StdRng, count: usize) -> Filled {
        Filled::allocate_for(SessionId::random(), pool, rng, count)
    }

    /// As `allocate`, for `session`.
    fn allocate_for(session: SessionId, pool: &WgpuPool, rng: &mut StdRng, count: usize) -> Filled {
        let buffers = (0..count)
            .map(|_| {
                let bytes = rng.random_range(1..200_000u64) | 1;
                let allocated = ask(|reply| {
                    pool.allocate(
                        AllocRequest {
                            session,
                            id: AllocationId::next(),
                            bytes,
                        },
                        reply,
                    )
                })
                .expect("allocate");
                assert_eq!(allocated.bytes, pool.info().rounded(bytes));
                (allocated, Vec::new())
            })
            .collect();
        Filled { session, buffers }
    }

    /// Writes random contents into every buffer, in two aligned pieces.
    fn fill(&mut self, pool: &WgpuPool, rng: &mut StdRng) {
        for (buffer, contents) in &mut self.buffers {
            let mut data = vec![0; buffer.bytes as usize];
            rng.fill(&mut data[..]);
            let split = (buffer.bytes / 2) / 4 * 4;
            for (offset, piece) in [
                (0, &data[..split as usize]),
                (split, &data[split as usize..]),
            ] {
                ask(|reply| pool.write(self.session, buffer.id, offset, piece.to_vec(), reply))
                    .expect("write");
            }
            *contents = data;
        }
    }

    fn bytes(&self) -> u64 {
        self.buffers.iter().map(|(buffer, _)| buffer.bytes).sum()
    }

    fn assert_intact(&self, pool: &WgpuPool) {
        for (buffer, contents) in &self.buffers {
            let read = ask(|reply| pool.read(self.session, buffer.id, reply)).expect("read");
            assert!(
                read == *contents,
                "buffer {} ({} bytes) differs after the round trip",
                buffer.id,
                buffer.bytes
            );
        }
    }
}

#[test]
fn offload_and_restore_give_back_every_byte_and_exactly_the_memory() {
    let pool = start();
    let baseline = pool.counters();
    let mut rng = StdRng::seed_from_u64(0x5e55_10b5);

    let mut a = Filled::allocate(&pool, &mut rng, 6);
    let only_a = pool.counters();
    let mut b = Filled::allocate(&pool, &mut rng, 9);
    let both = pool.counters();
    assert_eq!(both.buffers, only_a.buffers + 9);
    a.fill(&pool, &mut rng);
    b.fill(&pool, &mut rng);

    let report = ask(|reply| pool.offload_session(b.session, reply)).expect("offload b");
    assert_eq!((report.buffers, report.bytes), (9, b.bytes()));
    assert_eq!(
        pool.counters(),
        only_a,
        "exactly b's buffers left the device"
    );
    let report = ask(|reply| pool.offload_session(a.session, reply)).expect("offload a");
    assert_eq!((report.buffers, report.bytes), (6, a.bytes()));
    assert_eq!(pool.counters(), baseline, "nothing of a or b on the device");
    let stats = pool.stats();
    assert_eq!(
        (
            stats.live_buffers,
            stats.offloaded_buffers,
            stats.offloaded_bytes
        ),
        (0, 15, a.bytes() + b.bytes())
    );
    let mut holders = ask(|reply| pool.sessions_holding_memory(reply));
    let mut expected = vec![a.session, b.session];
    holders.sort_unstable();
    expected.sort_unstable();
    assert_eq!(holders, expected, "host copies count as memory held");

    let report = ask(|reply| pool.restore_session(a.session, reply)).expect("restore a");
    assert_eq!((report.buffers, report.bytes), (6, a.bytes()));
    assert_eq!(pool.counters(), only_a);
    let report = ask(|reply| pool.restore_session(b.session, reply)).expect("restore b");
    assert_eq!((report.buffers, report.bytes), (9, b.bytes()));
    assert_eq!(
        pool.counters(),
        both,
        "the same buffers and memory as before"
    );
    a.assert_intact(&pool);
    b.assert_intact(&pool);

    for filled in [&a, &b] {
        let released = ask(|reply| pool.release_session(filled.session, reply));
        assert_eq!(
            (released.buffers, released.bytes, released.host_bytes),
            (filled.buffers.len() as u64, filled.bytes(), 0)
        );
    }
    assert_eq!(pool.counters(), baseline);
    assert_at_baseline_after_shutdown(&pool, baseline);
}

#[test]
fn a_session_offloaded_in_two_steps_comes_back_whole() {
    let pool = start();
    let baseline = pool.counters();
    let mut rng = StdRng::seed_from_u64(42);
    let mut first = Filled::allocate(&pool, &mut rng, 3);
    first.fill(&pool, &mut rng);
    let report = ask(|reply| pool.offload_session(first.session, reply)).expect("offload 1");
    assert_eq!(report.buffers, 3);

    // The session grows while offloaded, and is offloaded again: the new
    // host copies join the earlier ones.
    let mut second = Filled::allocate_for(first.session, &pool, &mut rng, 2);
    second.fill(&pool, &mut rng);
    let report = ask(|reply| pool.offload_session(first.session, reply)).expect("offload 2");
    assert_eq!(
        (report.buffers, report.bytes),
        (2, second.bytes()),
        "only what was on the device"
    );
    assert_eq!(pool.stats().offloaded_buffers, 5);
    assert_eq!(pool.counters(), baseline);

    let report = ask(|reply| pool.restore_session(first.session, reply)).expect("restore");
    assert_eq!(
        (report.buffers, report.bytes),
        (5, first.bytes() + second.bytes())
    );
    first.assert_intact(&pool);
    second.assert_intact(&pool);
    let released = ask(|reply| pool.release_session(first.session, reply));
    assert_eq!(released.buffers, 5);
    assert_eq!(pool.counters(), baseline);
    assert_at_baseline_after_shutdown(&pool, baseline);
}

fn assert_at_baseline_after_shutdown(pool: &WgpuPool, baseline: GpuCounters) {
    assert_eq!(
        pool.shutdown(),
        baseline,
        "wgpu counters after the final poll"
    );
    assert_eq!(pool.stats().offloaded_buffers, 0);
}
