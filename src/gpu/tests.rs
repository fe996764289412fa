//! Tests on the real adapter (lavapipe on CPU-only hosts: `apt-get install
//! mesa-vulkan-drivers`). Vulkan is forced because only there does wgpu count
//! buffer memory exactly.

use std::time::Instant;

use sessionbus_actors::{AllocRequest, Allocated, GpuError, GpuPool, PoolStats, ReleaseReport};
use sessionbus_actors::{AllocationId, SessionId};
use tokio::sync::oneshot;

use super::*;

pub(super) const MIB: u64 = 1 << 20;

pub(super) fn vulkan() -> GpuConfig {
    GpuConfig {
        backend: BackendChoice::Vulkan,
        ..GpuConfig::default()
    }
}

pub(super) fn start() -> WgpuPool {
    match WgpuPool::start(&vulkan()) {
        Ok(pool) => pool,
        Err(error) => panic!("these tests need a Vulkan adapter: {error}"),
    }
}

pub(super) fn allocate(
    pool: &WgpuPool,
    session: SessionId,
    bytes: u64,
) -> Result<Allocated, GpuError> {
    let (reply, answer) = oneshot::channel();
    pool.allocate(
        AllocRequest {
            session,
            id: AllocationId::next(),
            bytes,
        },
        reply,
    );
    answer
        .blocking_recv()
        .expect("the pool dropped an allocation reply")
}

pub(super) fn release(pool: &WgpuPool, session: SessionId) -> ReleaseReport {
    let (reply, answer) = oneshot::channel();
    pool.release_session(session, reply);
    answer
        .blocking_recv()
        .expect("the pool dropped a release reply")
}

pub(super) fn release_allocations(
    pool: &WgpuPool,
    session: SessionId,
    ids: &[AllocationId],
) -> ReleaseReport {
    let (reply, answer) = oneshot::channel();
    pool.release_allocations(session, ids.to_vec(), reply);
    answer
        .blocking_recv()
        .expect("the pool dropped a release_allocations reply")
}

pub(super) fn holders(pool: &WgpuPool) -> Vec<SessionId> {
    let (reply, answer) = oneshot::channel();
    pool.sessions_holding_memory(reply);
    answer
        .blocking_recv()
        .expect("the pool dropped a sessions_holding_memory reply")
}

pub(super) fn sorted(mut sessions: Vec<SessionId>) -> Vec<SessionId> {
    sessions.sort_unstable();
    sessions
}

#[test]
fn pool_info_describes_the_vulkan_device() {
    let pool = start();
    let info = pool.info();
    assert_eq!(info.backend, "vulkan");
    assert!(!info.adapter.is_empty());
    assert!(
        [
            "cpu",
            "discrete-gpu",
            "integrated-gpu",
            "virtual-gpu",
            "other"
        ]
        .contains(&info.device_type.as_str())
    );
    // The adapter's real limit, not wgpu's 256 MiB default.
    assert!(
        info.max_buffer_size >= 256 * MIB,
        "max_buffer_size = {}",
        info.max_buffer_size
    );
}

#[test]
fn buffers_show_in_wgpu_counters_and_release_gives_exactly_them_back() {
    let pool = start();
    let (a, b) = (SessionId::random(), SessionId::random());
    let baseline = pool.counters();

    for _ in 0..2 {
        assert_eq!(
            allocate(&pool, b, 1001).unwrap().bytes,
            1004,
            "rounded up to COPY_BUFFER_ALIGNMENT"
        );
    }
    let only_b = pool.counters();
    assert_eq!(only_b.buffers, baseline.buffers + 2);
    assert!(only_b.buffer_memory >= baseline.buffer_memory + 2 * 1004);

    for _ in 0..3 {
        assert_eq!(allocate(&pool, a, MIB).unwrap().bytes, MIB);
    }
    let both = pool.counters();
    assert_eq!(both.buffers, baseline.buffers + 5);
    assert!(both.buffer_memory >= only_b.buffer_memory + 3 * MIB as i64);
    assert_eq!(
        pool.stats(),
        PoolStats {
            live_buffers: 5,
            live_bytes: 3 * MIB + 2 * 1004,
            peak_bytes: 3 * MIB + 2 * 1004,
            allocated_total: 5,
            released_total: 0,
            ..PoolStats::default()
        }
    );

    let report = release(&pool, a);
    assert_eq!(
        (report.session, report.buffers, report.bytes),
        (a, 3, 3 * MIB)
    );
    assert!(report.finished_at >= report.started_at);
    assert!(report.batch_len >= 1);
    assert_eq!(
        pool.counters(),
        only_b,
        "releasing A frees exactly A's buffers and memory"
    );

    let report = release(&pool, b);
    assert_eq!((report.buffers, report.bytes), (2, 2 * 1004));
    assert_eq!(pool.counters(), baseline);
    let stats = pool.stats();
    assert_eq!(
        (stats.live_buffers, stats.live_bytes, stats.released_total),
        (0, 0, 5)
    );
    assert_eq!(stats.peak_bytes, 3 * MIB + 2 * 1004);
}

#[test]
fn release_allocations_destroys_exactly_the_listed_buffers_of_the_session() {
    let pool = start();
    let (session, other) = (SessionId::random(), SessionId::random());
    let baseline = pool.counters();

    let kept = allocate(&pool, session, MIB).unwrap();
    let foreign = allocate(&pool, other, 4096).unwrap();
    let before_doomed = pool.counters();
    let x = allocate(&pool, session, 2 * MIB).unwrap();
    let y = allocate(&pool, session, 1001).unwrap();
    assert_eq!(y.bytes, 1004);
    let with_doomed = pool.counters();
    assert_eq!(with_doomed.buffers, before_doomed.buffers + 2);
    assert!(with_doomed.buffer_memory >= before_doomed.buffer_memory + (2 * MIB + 1004) as i64);

    // The other session's id and an unknown one are listed too: both skipped.
    let unknown = AllocationId::next();
    let report = release_allocations(&pool, session, &[x.id, foreign.id, y.id, unknown]);
    assert_eq!(
        (report.session, report.buffers, report.bytes),
        (session, 2, 2 * MIB + 1004),
        "counts exactly the two listed buffers of the session"
    );
    assert!(report.finished_at >= report.started_at);
    assert!(report.batch_len >= 1);
    assert_eq!(
        pool.counters(),
        before_doomed,
        "wgpu's buffers and buffer memory drop by exactly those two"
    );
    let stats = pool.stats();
    assert_eq!(
        (stats.live_buffers, stats.live_bytes, stats.released_total),
        (2, MIB + 4096, 2)
    );

    let again = release_allocations(&pool, session, &[x.id, y.id]);
    assert_eq!((again.buffers, again.bytes), (0, 0), "already released");
    let wrong_session = release_allocations(&pool, SessionId::random(), &[kept.id, foreign.id]);
    assert_eq!((wrong_session.buffers, wrong_session.bytes), (0, 0));
    assert_eq!(pool.counters(), before_doomed, "nothing else was destroyed");

    let rest = release(&pool, session);
    assert_eq!(
        (rest.buffers, rest.bytes),
        (1, MIB),
        "release_session frees only what is left"
    );
    let foreign_report = release(&pool, other);
    assert_eq!(
        (foreign_report.buffers, foreign_report.bytes),
        (1, 4096),
        "the other session's buffer survived being listed"
    );
    assert_eq!(pool.counters(), baseline);
    let stats = pool.stats();
    assert_eq!(
        (stats.live_buffers, stats.live_bytes, stats.released_total),
        (0, 0, 4)
    );
}

#[test]
fn release_allocations_and_release_session_sent_together_destroy_nothing_twice() {
    let pool = start();
    let baseline = pool.counters();
    let session = SessionId::random();
    let ids: Vec<AllocationId> = (0..4)
        .map(|_| allocate(&pool, session, 64 * 1024).unwrap().id)
        .collect();

    // Sent without waiting: FIFO decides, whether or not they share a batch.
    let (reply, partial) = oneshot::channel();
    pool.release_allocations(session, ids[..3].to_vec(), reply);
    let (reply, whole) = oneshot::channel();
    pool.release_session(session, reply);
    let (reply, twice) = oneshot::channel();
    pool.release_allocations(session, ids.clone(), reply);

    let partial = partial.blocking_recv().unwrap();
    let whole = whole.blocking_recv().unwrap();
    let twice = twice.blocking_recv().unwrap();
    assert_eq!((partial.buffers, partial.bytes), (3, 3 * 64 * 1024));
    assert_eq!((whole.buffers, whole.bytes), (1, 64 * 1024));
    assert_eq!((twice.buffers, twice.bytes), (0, 0));
    for report in [&partial, &whole, &twice] {
        let same_batch = [&partial, &whole, &twice]
            .iter()
            .filter(|r| r.finished_at == report.finished_at)
            .count();
        assert_eq!(
            same_batch as u32, report.batch_len,
            "both kinds of release count in batch_len"
        );
    }
    assert_eq!(pool.counters(), baseline);
    assert_eq!(pool.stats().released_total, 4);
}

#[test]
fn sessions_holding_memory_lists_the_holders_in_request_order() {
    let pool = start();
    let baseline = pool.counters();
    assert!(holders(&pool).is_empty());
    let (a, b, c) = (
        SessionId::random(),
        SessionId::random(),
        SessionId::random(),
    );
    let a_ids: Vec<AllocationId> = (0..2)
        .map(|_| allocate(&pool, a, 4096).unwrap().id)
        .collect();
    allocate(&pool, b, 4096).unwrap();
    allocate(&pool, c, 4096).unwrap();
    assert_eq!(holders(&pool), sorted(vec![a, b, c]));

    // The release is sent first and not awaited: its place in the order is
    // what counts, not its reply.
    let (reply, released) = oneshot::channel();
    pool.release_session(b, reply);
    assert_eq!(holders(&pool), sorted(vec![a, c]));
    assert_eq!(released.blocking_recv().unwrap().buffers, 1);

    assert_eq!(release_allocations(&pool, a, &a_ids[..1]).buffers, 1);
    assert_eq!(
        holders(&pool),
        sorted(vec![a, c]),
        "a still holds one buffer"
    );
    assert_eq!(release_allocations(&pool, a, &a_ids[1..]).buffers, 1);
    assert_eq!(
        holders(&pool),
        vec![c],
        "a session whose last buffer went by id holds nothing"
    );

    // A refused allocation makes no holder.
    allocate(&pool, b, 0).unwrap_err();
    assert_eq!(holders(&pool), vec![c]);

    assert_eq!(release(&pool, c).buffers, 1);
    assert!(holders(&pool).is_empty());
    assert_eq!(pool.counters(), baseline);
}

#[test]
fn releasing_twice_or_an_unknown_session_reports_nothing() {
    let pool = start();
    let session = SessionId::random();
    allocate(&pool, session, 4096).unwrap();
    assert_eq!(release(&pool, session).buffers, 1);
    let again = release(&pool, session);
    assert_eq!((again.buffers, again.bytes), (0, 0));
    let unknown = release(&pool, SessionId::random());
    assert_eq!((unknown.buffers, unknown.bytes), (0, 0));
}

#[test]
fn empty_and_oversized_requests_are_refused_without_touching_the_device() {
    let pool = start();
    let session = SessionId::random();
    let before = pool.counters();
    let max = pool.info().max_buffer_size;

    let zero = allocate(&pool, session, 0).unwrap_err();
    assert!(
        matches!(&zero, GpuError::Rejected(msg) if msg.contains("at least 1 byte")),
        "{zero}"
    );
    let huge = allocate(&pool, session, max + 1).unwrap_err();
    assert!(
        matches!(&huge, GpuError::Rejected(msg) if msg.contains(&max.to_string())),
        "{huge}"
    );

    assert_eq!(pool.counters(), before);
    assert_eq!(pool.stats(), PoolStats::default());
    assert_eq!(release(&pool, session).buffers, 0);
}

#[test]
fn max_buffer_size_is_whole_copy_units() {
    let pool = start();
    assert_eq!(pool.info().max_buffer_size % wgpu::COPY_BUFFER_ALIGNMENT, 0);
}

#[test]
fn a_buffer_wgpu_refuses_becomes_a_rejection_not_a_panic() {
    let opened = adapter::open_device(&vulkan()).unwrap();
    let before = GpuCounters::read(&opened.device);
    let too_big = opened.device.limits().max_buffer_size + 1;
    let error =
        worker::create_buffer(&opened.device, too_big, too_big.next_multiple_of(4)).unwrap_err();
    assert!(
        matches!(&error, GpuError::Rejected(msg) if msg.contains("maximum buffer size")),
        "{error}"
    );
    assert_eq!(GpuCounters::read(&opened.device), before);
}

#[test]
fn forcing_metal_on_linux_names_the_backend_and_the_fix() {
    if cfg!(target_vendor = "apple") {
        return;
    }
    let config = GpuConfig {
        backend: BackendChoice::Metal,
        ..GpuConfig::default()
    };
    let error = WgpuPool::start(&config).unwrap_err();
    assert!(
        matches!(&error, GpuInitError::NoAdapter { tried, .. } if tried == "metal"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("metal"), "{message}");
    assert!(message.contains("mesa-vulkan-drivers"), "{message}");
}

#[test]
fn an_adapter_filter_that_matches_nothing_lists_what_was_found() {
    let config = GpuConfig {
        adapter: Some("no-such-gpu-7f3a".into()),
        ..vulkan()
    };
    let message = WgpuPool::start(&config).unwrap_err().to_string();
    assert!(message.contains("no-such-gpu-7f3a"), "{message}");
    assert!(message.contains("(vulkan)"), "{message}");
}

#[test]
fn invalid_config_is_refused_before_any_thread_starts() {
    let config = GpuConfig {
        batch_max: 0,
        ..vulkan()
    };
    let error = WgpuPool::start(&config).unwrap_err();
    assert!(matches!(
        error,
        GpuInitError::Config(GpuConfigError::BatchMaxZero)
    ));
}

#[test]
fn releases_sent_together_are_all_answered() {
    let pool = start();
    let sessions: Vec<SessionId> = (0..16).map(|_| SessionId::random()).collect();
    for session in &sessions {
        for _ in 0..4 {
            allocate(&pool, *session, 64 * 1024).unwrap();
        }
    }
    let baseline_after = pool.counters();
    // Sent without waiting, so several can share a batch and its poll.
    let answers: Vec<_> = sessions
        .iter()
        .map(|session| {
            let (reply, answer) = oneshot::channel();
            pool.release_session(*session, reply);
            answer
        })
        .collect();
    let reports: Vec<ReleaseReport> = answers
        .into_iter()
        .map(|a| a.blocking_recv().unwrap())
        .collect();
    assert!(
        reports
            .iter()
            .all(|r| r.buffers == 4 && r.bytes == 4 * 64 * 1024)
    );
    for report in &reports {
        let same_batch = reports
            .iter()
            .filter(|r| r.finished_at == report.finished_at)
            .count();
        assert_eq!(
            same_batch as u32, report.batch_len,
            "batch_len counts the releases sharing a poll"
        );
    }
    assert_eq!(pool.counters().buffers, baseline_after.buffers - 64);
}

/// A release is answered after the poll that ends its run of releases, not
/// behind the later commands of its batch: here a hang stands for a slow
/// command (an allocation on GL takes several times Vulkan's).
#[cfg(feature = "testing")]
#[test]
fn a_release_is_answered_before_later_commands_of_its_batch() {
    let pool = start();
    let baseline = pool.counters();
    let session = SessionId::random();
    allocate(&pool, session, 64 * 1024).unwrap();
    // The first hang holds the worker while the release and the second hang
    // queue up behind it; once it ends, the worker takes both in the batch
    // the first hang began.
    let first = pool.inject_hang();
    let (reply, mut answer) = oneshot::channel();
    pool.release_session(session, reply);
    let second = pool.inject_hang();
    first.release();
    // A liveness guard, not a timing threshold: without the fix the reply
    // would come only after the second hang ends.
    let guard = Instant::now() + std::time::Duration::from_secs(60);
    let report = loop {
        match answer.try_recv() {
            Ok(report) => break report,
            Err(oneshot::error::TryRecvError::Empty) if Instant::now() < guard => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(error) => {
                second.release();
                panic!("the release was not answered while a later command ran: {error:?}");
            }
        }
    };
    assert_eq!((report.buffers, report.bytes), (1, 64 * 1024));
    assert_eq!(report.batch_len, 1);
    assert_eq!(pool.counters(), baseline, "freed before the answer");
    second.release();
}

#[test]
fn shutdown_destroys_leftovers_and_later_calls_are_refused() {
    let pool = start();
    let baseline = pool.counters();
    assert_eq!(baseline, pool.initial_counters());
    let session = SessionId::random();
    allocate(&pool, session, MIB).unwrap();
    allocate(&pool, SessionId::random(), MIB).unwrap();
    assert_eq!(pool.counters().buffers, baseline.buffers + 2);

    let last = pool.shutdown();
    assert_eq!(
        last, baseline,
        "shutdown destroys what the engine never released"
    );
    assert_eq!(pool.stats().live_buffers, 0);
    assert_eq!(allocate(&pool, session, MIB), Err(GpuError::Unavailable));
    let (reply, answer) = oneshot::channel();
    pool.release_session(session, reply);
    assert!(
        answer.blocking_recv().is_err(),
        "a release after shutdown drops its reply"
    );
    let (reply, answer) = oneshot::channel();
    pool.release_allocations(session, vec![AllocationId::next()], reply);
    assert!(
        answer.blocking_recv().is_err(),
        "a release_allocations after shutdown drops its reply"
    );
    let (reply, answer) = oneshot::channel();
    pool.sessions_holding_memory(reply);
    assert!(
        answer.blocking_recv().is_err(),
        "sessions_holding_memory after shutdown drops its reply"
    );
    // wgpu frees its own buffers with the device, so later readings are lower.
    assert!(
        pool.shutdown().buffers <= baseline.buffers,
        "a second shutdown is harmless"
    );
}

#[test]
fn dropping_a_pool_with_live_buffers_stops_the_thread() {
    let pool = start();
    allocate(&pool, SessionId::random(), MIB).unwrap();
    let started = Instant::now();
    drop(pool);
    assert!(started.elapsed().as_secs() < 10);
}

/// Rough timings for the report, not a test:
/// `cargo test --release --lib gpu::tests::timings -- --ignored --nocapture`.
#[test]
#[ignore]
fn timings() {
    fn median(mut samples: Vec<f64>) -> f64 {
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    }
    let pool = start();
    let rounds = 2000;

    let mut alloc_us = Vec::with_capacity(rounds);
    let mut release_us = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let session = SessionId::random();
        for i in 0..4 {
            let t = Instant::now();
            allocate(&pool, session, MIB).unwrap();
            if i == 0 {
                alloc_us.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        let t = Instant::now();
        let report = release(&pool, session);
        release_us.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(report.buffers, 4);
    }
    println!(
        "allocate round trip (1 MiB):        median {:.1} us",
        median(alloc_us)
    );
    println!(
        "release round trip (4 x 1 MiB):     median {:.1} us",
        median(release_us)
    );

    // The error scopes' own cost, on the bare device.
    let opened = adapter::open_device(&vulkan()).unwrap();
    let device = &opened.device;
    let desc = wgpu::BufferDescriptor {
        label: None,
        size: MIB,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    };
    let mut bare = Vec::new();
    let mut scoped = Vec::new();
    let mut scopes_only = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let buffer = device.create_buffer(&desc);
        bare.push(t.elapsed().as_secs_f64() * 1e6);
        buffer.destroy();

        let t = Instant::now();
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let buffer = device.create_buffer(&desc);
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        scoped.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(v.is_none() && o.is_none());
        buffer.destroy();

        let t = Instant::now();
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        scopes_only.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(v.is_none() && o.is_none());
    }
    let _ = device.poll(wgpu::PollType::wait_indefinitely());
    println!(
        "create_buffer bare:                 median {:.2} us",
        median(bare)
    );
    println!(
        "create_buffer in 2 error scopes:    median {:.2} us",
        median(scoped)
    );
    println!(
        "2 error scopes push+pop, no work:   median {:.2} us",
        median(scopes_only)
    );

    let t = Instant::now();
    for _ in 0..rounds {
        let _ = device.poll(wgpu::PollType::wait_indefinitely());
    }
    println!(
        "poll(wait) on an idle device:       mean {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );
}
