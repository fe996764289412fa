//! Reads, writes, offload and restore on the real adapter (lavapipe on
//! CPU-only hosts). Every test ends with wgpu's own counters at the baseline
//! it read before its first buffer.

use rand::{Rng, SeedableRng, rngs::StdRng};
use sessionbus_actors::{AllocationId, GpuError, GpuPool, OffloadReport, RestoreReport, SessionId};
use tokio::sync::oneshot;

use super::tests::{allocate, holders, release, release_allocations, sorted, start, vulkan};
use super::*;

const KIB: u64 = 1 << 10;

fn write(
    pool: &WgpuPool,
    session: SessionId,
    id: AllocationId,
    offset: u64,
    data: &[u8],
) -> Result<(), GpuError> {
    let (reply, answer) = oneshot::channel();
    pool.write(session, id, offset, data.to_vec(), reply);
    answer
        .blocking_recv()
        .expect("the pool dropped a write reply")
}

fn read(pool: &WgpuPool, session: SessionId, id: AllocationId) -> Result<Vec<u8>, GpuError> {
    let (reply, answer) = oneshot::channel();
    pool.read(session, id, reply);
    answer
        .blocking_recv()
        .expect("the pool dropped a read reply")
}

fn offload(pool: &WgpuPool, session: SessionId) -> Result<OffloadReport, GpuError> {
    let (reply, answer) = oneshot::channel();
    pool.offload_session(session, reply);
    answer
        .blocking_recv()
        .expect("the pool dropped an offload reply")
}

fn restore(pool: &WgpuPool, session: SessionId) -> Result<RestoreReport, GpuError> {
    let (reply, answer) = oneshot::channel();
    pool.restore_session(session, reply);
    answer
        .blocking_recv()
        .expect("the pool dropped a restore reply")
}

fn random_bytes(rng: &mut StdRng, len: u64) -> Vec<u8> {
    let mut bytes = vec![0; len as usize];
    rng.fill(&mut bytes[..]);
    bytes
}

#[test]
fn pool_info_says_alignment_and_the_measured_smallest_buffer() {
    let pool = start();
    let info = pool.info().clone();
    assert_eq!(info.size_alignment, wgpu::COPY_BUFFER_ALIGNMENT);
    assert_eq!(info.rounded(1001), 1004);
    assert!(info.min_buffer_bytes >= info.size_alignment);

    // What one smallest buffer really costs on the device is exactly the figure.
    let baseline = pool.counters();
    let session = SessionId::random();
    assert_eq!(allocate(&pool, session, 1).unwrap().bytes, 4);
    let with_one = pool.counters();
    assert_eq!(
        (with_one.buffer_memory - baseline.buffer_memory) as u64,
        info.min_buffer_bytes,
        "min_buffer_bytes is the device memory of a 1-byte request"
    );
    release(&pool, session);
    assert_eq!(pool.counters(), baseline);
}

#[test]
fn a_buffer_reads_as_zeros_until_written_then_as_written() {
    let pool = start();
    let baseline = pool.counters();
    let session = SessionId::random();
    let buffer = allocate(&pool, session, 1001).unwrap();
    assert_eq!(read(&pool, session, buffer.id).unwrap(), vec![0; 1004]);

    let mut rng = StdRng::seed_from_u64(1);
    let data = random_bytes(&mut rng, 96);
    write(&pool, session, buffer.id, 904, &data).unwrap();
    write(&pool, session, buffer.id, 1004, &[]).unwrap();
    let mut expected = vec![0; 1004];
    expected[904..1000].copy_from_slice(&data);
    assert_eq!(read(&pool, session, buffer.id).unwrap(), expected);

    // A read waits for the device, so its staging buffer (and the one wgpu
    // made for the write) are gone: only the buffer itself is counted.
    assert_eq!(pool.counters().buffers, baseline.buffers + 1);
    release(&pool, session);
    assert_eq!(pool.counters(), baseline);
}

#[test]
fn offload_then_restore_round_trips_bit_for_bit_and_the_counters_follow() {
    let pool = start();
    let baseline = pool.counters();
    let mut rng = StdRng::seed_from_u64(7);
    let (session, bystander) = (SessionId::random(), SessionId::random());
    let kept = allocate(&pool, bystander, 64 * KIB).unwrap();
    let without = pool.counters();

    let sizes = [1, 1001, 4096, 65_537, 3 * KIB + 3];
    let buffers: Vec<_> = sizes
        .iter()
        .map(|&bytes| allocate(&pool, session, bytes).unwrap())
        .collect();
    // Read before any write: wgpu stages each write in memory of its own
    // until the next poll (which the offload does).
    let with = pool.counters();
    let kept_data = random_bytes(&mut rng, 64 * KIB);
    write(&pool, bystander, kept.id, 0, &kept_data).unwrap();
    let contents: Vec<Vec<u8>> = buffers
        .iter()
        .map(|buffer| random_bytes(&mut rng, buffer.bytes))
        .collect();
    for (buffer, data) in buffers.iter().zip(&contents) {
        write(&pool, session, buffer.id, 0, data).unwrap();
    }
    let total: u64 = buffers.iter().map(|buffer| buffer.bytes).sum();

    let report = offload(&pool, session).unwrap();
    assert_eq!(
        (report.session, report.buffers, report.bytes),
        (session, 5, total)
    );
    assert!(report.finished_at >= report.started_at);
    assert_eq!(
        pool.counters(),
        without,
        "hal.buffers and hal.buffer_memory drop by exactly the session's buffers"
    );
    let stats = pool.stats();
    assert_eq!((stats.live_buffers, stats.live_bytes), (1, 64 * KIB));
    assert_eq!((stats.offloaded_buffers, stats.offloaded_bytes), (5, total));
    assert_eq!(holders(&pool), sorted(vec![session, bystander]));

    let restored = restore(&pool, session).unwrap();
    assert_eq!(
        (restored.session, restored.buffers, restored.bytes),
        (session, 5, total)
    );
    assert_eq!(
        pool.counters(),
        with,
        "the same buffers and memory again, no staging left"
    );
    for (buffer, data) in buffers.iter().zip(&contents) {
        assert_eq!(
            &read(&pool, session, buffer.id).unwrap(),
            data,
            "buffer {} of {} bytes",
            buffer.id,
            buffer.bytes
        );
    }
    assert_eq!(read(&pool, bystander, kept.id).unwrap(), kept_data);
    let stats = pool.stats();
    assert_eq!((stats.offloaded_buffers, stats.offloaded_bytes), (0, 0));
    assert_eq!((stats.allocated_total, stats.released_total), (6, 0));

    let released = release(&pool, session);
    assert_eq!(
        (released.buffers, released.bytes, released.host_bytes),
        (5, total, 0)
    );
    release(&pool, bystander);
    assert_eq!(pool.counters(), baseline);
}

#[test]
fn offload_sees_a_write_sent_just_before_it() {
    let pool = start();
    let baseline = pool.counters();
    let session = SessionId::random();
    let buffer = allocate(&pool, session, 4 * KIB).unwrap();
    let data = random_bytes(&mut StdRng::seed_from_u64(3), 4 * KIB);

    // Not awaited: FIFO puts the write before the offload's copies.
    let (reply, written) = oneshot::channel();
    pool.write(session, buffer.id, 0, data.clone(), reply);
    let offloaded = offload(&pool, session).unwrap();
    written.blocking_recv().unwrap().unwrap();
    assert_eq!(offloaded.buffers, 1);
    restore(&pool, session).unwrap();
    assert_eq!(read(&pool, session, buffer.id).unwrap(), data);
    release(&pool, session);
    assert_eq!(pool.counters(), baseline);
}

#[test]
fn a_release_right_after_a_write_frees_everything() {
    let pool = start();
    let baseline = pool.counters();
    let session = SessionId::random();
    let buffer = allocate(&pool, session, 64 * KIB).unwrap();
    // Sent together, so they can share a batch: the write is still queued in
    // wgpu when the buffer is destroyed.
    let (reply, written) = oneshot::channel();
    pool.write(session, buffer.id, 0, vec![7; 64 * KIB as usize], reply);
    let (reply, released) = oneshot::channel();
    pool.release_session(session, reply);
    written.blocking_recv().unwrap().unwrap();
    assert_eq!(released.blocking_recv().unwrap().bytes, 64 * KIB);
    assert_eq!(pool.counters(), baseline);
}

#[test]
fn release_after_offload_frees_the_host_copies() {
    let pool = start();
    let baseline = pool.counters();
    let session = SessionId::random();
    let a = allocate(&pool, session, 64 * KIB).unwrap();
    allocate(&pool, session, 1001).unwrap();
    offload(&pool, session).unwrap();
    assert_eq!(pool.counters(), baseline, "nothing left on the device");
    assert_eq!(
        holders(&pool),
        vec![session],
        "host copies are memory held too"
    );
    let late = allocate(&pool, session, 4 * KIB).unwrap();

    let partial = release_allocations(&pool, session, &[a.id]);
    assert_eq!(
        (partial.buffers, partial.bytes, partial.host_bytes),
        (1, 0, 64 * KIB),
        "a listed host copy is freed, and counted as host bytes only"
    );
    let report = release(&pool, session);
    assert_eq!(
        (report.buffers, report.bytes, report.host_bytes),
        (2, late.bytes, 1004)
    );
    assert!(holders(&pool).is_empty());
    let stats = pool.stats();
    assert_eq!(
        (
            stats.live_buffers,
            stats.offloaded_buffers,
            stats.offloaded_bytes,
            stats.released_total
        ),
        (0, 0, 0, 3)
    );

    let nothing = restore(&pool, session).unwrap();
    assert_eq!(
        (nothing.buffers, nothing.bytes),
        (0, 0),
        "a session released meanwhile has nothing to restore"
    );
    assert_eq!(
        read(&pool, session, a.id),
        Err(GpuError::UnknownBuffer { id: a.id })
    );
    let never = offload(&pool, SessionId::random()).unwrap();
    assert_eq!((never.buffers, never.bytes), (0, 0));
    assert_eq!(pool.counters(), baseline);
}

#[test]
fn bad_reads_and_writes_are_refused_by_name_and_touch_nothing() {
    let pool = start();
    let baseline = pool.counters();
    let (mine, other) = (SessionId::random(), SessionId::random());
    let buffer = allocate(&pool, mine, 64).unwrap();
    let foreign = allocate(&pool, other, 64).unwrap();
    write(&pool, other, foreign.id, 0, &[9; 64]).unwrap();
    let unknown = AllocationId::next();

    assert_eq!(
        write(&pool, mine, foreign.id, 0, &[1; 64]),
        Err(GpuError::UnknownBuffer { id: foreign.id }),
        "another session's buffer"
    );
    assert_eq!(
        read(&pool, mine, foreign.id),
        Err(GpuError::UnknownBuffer { id: foreign.id })
    );
    assert_eq!(
        write(&pool, mine, unknown, 0, &[1; 4]),
        Err(GpuError::UnknownBuffer { id: unknown })
    );
    assert_eq!(
        write(&pool, mine, buffer.id, 2, &[1; 4]),
        Err(GpuError::Misaligned {
            offset: 2,
            len: 4,
            alignment: 4
        })
    );
    assert_eq!(
        write(&pool, mine, buffer.id, 0, &[1; 6]),
        Err(GpuError::Misaligned {
            offset: 0,
            len: 6,
            alignment: 4
        })
    );
    assert_eq!(
        write(&pool, mine, buffer.id, 32, &[1; 64]),
        Err(GpuError::OutOfRange {
            id: buffer.id,
            offset: 32,
            len: 64,
            size: 64
        })
    );
    assert!(matches!(
        write(&pool, mine, buffer.id, u64::MAX - 3, &[1; 4]),
        Err(GpuError::OutOfRange { .. })
    ));
    assert_eq!(
        read(&pool, other, foreign.id).unwrap(),
        vec![9; 64],
        "never touched"
    );
    assert_eq!(read(&pool, mine, buffer.id).unwrap(), vec![0; 64]);

    offload(&pool, mine).unwrap();
    assert_eq!(
        write(&pool, mine, buffer.id, 0, &[1; 4]),
        Err(GpuError::Offloaded { id: buffer.id })
    );
    assert_eq!(
        read(&pool, mine, buffer.id),
        Err(GpuError::Offloaded { id: buffer.id })
    );
    assert_eq!(
        read(&pool, other, buffer.id),
        Err(GpuError::UnknownBuffer { id: buffer.id }),
        "another session does not learn that it is offloaded"
    );
    release(&pool, mine);
    release(&pool, other);
    assert_eq!(pool.counters(), baseline);
}

#[test]
fn an_upload_that_fails_half_way_destroys_what_it_made() {
    // The device rarely runs out of memory on cue, so the third creation is
    // made to fail; everything else is the real path on the real device.
    let opened = adapter::open_device(&vulkan()).unwrap();
    let (device, queue) = (&opened.device, &opened.queue);
    let before = GpuCounters::read(device);
    let contents: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 64 * KIB as usize]).collect();
    let slices: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
    let mut made = 0;
    let error = host_copy::upload(device, queue, &slices, |descriptor| {
        made += 1;
        if made == 3 {
            return Err(GpuError::OutOfMemory {
                bytes: descriptor.size,
            });
        }
        worker::scoped_create(device, descriptor, descriptor.size)
    })
    .unwrap_err();
    assert_eq!(error, GpuError::OutOfMemory { bytes: 64 * KIB });
    assert_eq!(
        GpuCounters::read(device),
        before,
        "the two buffers made (and wgpu's fill-in staging) are gone"
    );

    // The same upload without the failure works, and reads back intact.
    let buffers = host_copy::upload(device, queue, &slices, |descriptor| {
        worker::scoped_create(device, descriptor, descriptor.size)
    })
    .unwrap();
    let sources: Vec<host_copy::Span<'_>> = buffers.iter().map(host_copy::Span::whole).collect();
    assert_eq!(
        host_copy::read_back(device, queue, &sources).unwrap(),
        contents
    );
    // A span that is not on wgpu's 4-byte copy alignment comes back exactly.
    let span = host_copy::Span {
        buffer: &buffers[0],
        offset: 3,
        len: 6,
    };
    assert_eq!(
        host_copy::read_back(device, queue, &[span]).unwrap(),
        vec![contents[0][3..9].to_vec()]
    );
    assert_eq!(GpuCounters::read(device).buffers, before.buffers + 4);
    for buffer in &buffers {
        buffer.destroy();
    }
    let _ = device.poll(wgpu::PollType::wait_indefinitely());
    assert_eq!(GpuCounters::read(device), before);
}

#[test]
fn shutdown_drops_host_copies_and_refuses_later_offloads() {
    let pool = start();
    let baseline = pool.counters();
    let session = SessionId::random();
    let buffer = allocate(&pool, session, 64 * KIB).unwrap();
    offload(&pool, session).unwrap();
    assert_eq!(pool.stats().offloaded_buffers, 1);

    assert_eq!(pool.shutdown(), baseline);
    let stats = pool.stats();
    assert_eq!((stats.offloaded_buffers, stats.offloaded_bytes), (0, 0));
    assert_eq!(offload(&pool, session).unwrap_err(), GpuError::Unavailable);
    assert_eq!(restore(&pool, session).unwrap_err(), GpuError::Unavailable);
    let (reply, answer) = oneshot::channel();
    pool.write(session, buffer.id, 0, vec![0; 4], reply);
    assert!(
        answer.blocking_recv().is_err(),
        "a write after shutdown drops its reply"
    );
    let (reply, answer) = oneshot::channel();
    pool.read(session, buffer.id, reply);
    assert!(
        answer.blocking_recv().is_err(),
        "a read after shutdown drops its reply"
    );
}
