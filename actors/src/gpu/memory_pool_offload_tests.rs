//! `InMemoryPool`: reads, writes, offload and restore, one test per rule of
//! the `GpuPool` contract.

use super::*;

const KIB: u64 = 1 << 10;

fn pool(capacity: u64) -> InMemoryPool {
    InMemoryPool::new(capacity, 1 << 20).with_size_alignment(4)
}

fn allocate(pool: &InMemoryPool, session: SessionId, bytes: u64) -> Allocated {
    let (reply, answer) = oneshot::channel();
    let id = AllocationId::next();
    pool.allocate(AllocRequest { session, id, bytes }, reply);
    answer.blocking_recv().unwrap().unwrap()
}

fn write(
    pool: &InMemoryPool,
    session: SessionId,
    id: AllocationId,
    offset: u64,
    data: &[u8],
) -> Result<(), GpuError> {
    let (reply, answer) = oneshot::channel();
    pool.write(session, id, offset, data.to_vec(), reply);
    answer.blocking_recv().unwrap()
}

fn read(pool: &InMemoryPool, session: SessionId, id: AllocationId) -> Result<Vec<u8>, GpuError> {
    let (reply, answer) = oneshot::channel();
    pool.read(session, id, reply);
    answer.blocking_recv().unwrap()
}

fn offload(pool: &InMemoryPool, session: SessionId) -> OffloadReport {
    let (reply, answer) = oneshot::channel();
    pool.offload_session(session, reply);
    answer
        .blocking_recv()
        .unwrap()
        .expect("the in-memory pool always offloads")
}

fn restore(pool: &InMemoryPool, session: SessionId) -> Result<RestoreReport, GpuError> {
    let (reply, answer) = oneshot::channel();
    pool.restore_session(session, reply);
    answer.blocking_recv().unwrap()
}

pub(super) fn release(pool: &InMemoryPool, session: SessionId) -> ReleaseReport {
    let (reply, answer) = oneshot::channel();
    pool.release_session(session, reply);
    answer.blocking_recv().unwrap()
}

pub(super) fn release_allocations(
    pool: &InMemoryPool,
    session: SessionId,
    ids: &[AllocationId],
) -> ReleaseReport {
    let (reply, answer) = oneshot::channel();
    pool.release_allocations(session, ids.to_vec(), reply);
    answer.blocking_recv().unwrap()
}

pub(super) fn holders(pool: &InMemoryPool) -> Vec<SessionId> {
    let (reply, answer) = oneshot::channel();
    pool.sessions_holding_memory(reply);
    answer.blocking_recv().unwrap()
}

/// Deterministic, non-repeating bytes, so a misplaced copy cannot pass.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn sizes_are_rounded_to_the_alignment_and_counted_rounded() {
    let pool = pool(1 << 30);
    assert_eq!(pool.info().size_alignment, 4);
    assert_eq!(pool.info().min_buffer_bytes, 4);
    assert_eq!(pool.info().rounded(1001), 1004);
    let session = SessionId::random();
    assert_eq!(allocate(&pool, session, 1001).bytes, 1004);
    assert_eq!(pool.stats().live_bytes, 1004);
    let unknown = AllocationId::next();
    assert_eq!(
        read(&pool, session, unknown),
        Err(GpuError::UnknownBuffer { id: unknown }),
        "an id that was never allocated is unknown"
    );
}

#[test]
fn a_buffer_reads_as_zeros_until_written_and_then_as_written() {
    let pool = pool(1 << 30);
    let session = SessionId::random();
    let buffer = allocate(&pool, session, 64);
    assert_eq!(read(&pool, session, buffer.id).unwrap(), vec![0; 64]);

    write(&pool, session, buffer.id, 8, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    let mut expected = vec![0; 64];
    expected[8..16].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(read(&pool, session, buffer.id).unwrap(), expected);

    // A write that ends exactly at the end fits; an empty one changes nothing.
    write(&pool, session, buffer.id, 60, &[9, 9, 9, 9]).unwrap();
    write(&pool, session, buffer.id, 64, &[]).unwrap();
    expected[60..].copy_from_slice(&[9, 9, 9, 9]);
    assert_eq!(read(&pool, session, buffer.id).unwrap(), expected);
}

#[test]
fn bad_writes_are_refused_by_name_and_change_nothing() {
    let pool = pool(1 << 30);
    let (mine, other) = (SessionId::random(), SessionId::random());
    let buffer = allocate(&pool, mine, 16);
    let foreign = allocate(&pool, other, 16);
    write(&pool, other, foreign.id, 0, &[7; 16]).unwrap();
    let unknown = AllocationId::next();

    assert_eq!(
        write(&pool, mine, unknown, 0, &[1; 4]),
        Err(GpuError::UnknownBuffer { id: unknown })
    );
    assert_eq!(
        write(&pool, mine, foreign.id, 0, &[1; 4]),
        Err(GpuError::UnknownBuffer { id: foreign.id }),
        "another session's buffer is unknown to this one"
    );
    assert_eq!(
        read(&pool, mine, foreign.id),
        Err(GpuError::UnknownBuffer { id: foreign.id })
    );
    assert_eq!(
        read(&pool, other, foreign.id).unwrap(),
        vec![7; 16],
        "never touched"
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
        write(&pool, mine, buffer.id, 0, &[1; 3]),
        Err(GpuError::Misaligned {
            offset: 0,
            len: 3,
            alignment: 4
        })
    );
    assert_eq!(
        write(&pool, mine, buffer.id, 12, &[1; 8]),
        Err(GpuError::OutOfRange {
            id: buffer.id,
            offset: 12,
            len: 8,
            size: 16
        })
    );
    assert!(
        matches!(
            write(&pool, mine, buffer.id, u64::MAX - 3, &[1; 4]),
            Err(GpuError::OutOfRange { .. })
        ),
        "an offset near u64::MAX does not wrap around"
    );
    assert_eq!(read(&pool, mine, buffer.id).unwrap(), vec![0; 16]);
    let message = write(&pool, mine, buffer.id, 12, &[1; 8])
        .unwrap_err()
        .to_string();
    assert!(message.contains("16 bytes"), "{message}");
}

#[test]
fn offload_moves_every_device_buffer_to_host_memory() {
    let pool = pool(1 << 30);
    let (session, other) = (SessionId::random(), SessionId::random());
    let a = allocate(&pool, session, 4 * KIB);
    let b = allocate(&pool, session, 1001);
    let kept = allocate(&pool, other, KIB);
    write(&pool, session, a.id, 0, &pattern(4096, 1)).unwrap();

    let report = offload(&pool, session);
    assert_eq!(
        (report.session, report.buffers, report.bytes),
        (session, 2, 4 * KIB + 1004)
    );
    assert!(report.finished_at >= report.started_at);
    let stats = pool.stats();
    assert_eq!((stats.live_buffers, stats.live_bytes), (1, KIB));
    assert_eq!(
        (stats.offloaded_buffers, stats.offloaded_bytes),
        (2, 4 * KIB + 1004)
    );
    assert_eq!(
        (stats.allocated_total, stats.released_total),
        (3, 0),
        "an offload is not a release"
    );

    assert_eq!(
        read(&pool, session, a.id),
        Err(GpuError::Offloaded { id: a.id })
    );
    assert_eq!(
        write(&pool, session, b.id, 0, &[1; 4]),
        Err(GpuError::Offloaded { id: b.id })
    );
    assert_eq!(
        read(&pool, other, a.id),
        Err(GpuError::UnknownBuffer { id: a.id }),
        "another session does not learn that the buffer is offloaded"
    );
    let mut both = vec![session, other];
    both.sort_unstable();
    assert_eq!(holders(&pool), both, "host copies are memory held");

    let again = offload(&pool, session);
    assert_eq!(
        (again.buffers, again.bytes),
        (0, 0),
        "nothing left on the device"
    );
    let never = offload(&pool, SessionId::random());
    assert_eq!((never.buffers, never.bytes), (0, 0));
    assert_eq!(read(&pool, other, kept.id).unwrap(), vec![0; 1024]);
}

#[test]
fn restore_brings_back_every_buffer_under_its_id_bit_for_bit() {
    let pool = pool(1 << 30);
    let session = SessionId::random();
    let buffers: Vec<(Allocated, Vec<u8>)> = [4 * KIB, 1001, 12, 64 * KIB]
        .iter()
        .enumerate()
        .map(|(i, &bytes)| {
            let buffer = allocate(&pool, session, bytes);
            let data = pattern(buffer.bytes as usize, i as u8);
            write(&pool, session, buffer.id, 0, &data).unwrap();
            (buffer, data)
        })
        .collect();
    let never_written = allocate(&pool, session, 32);
    let total: u64 = buffers.iter().map(|(b, _)| b.bytes).sum::<u64>() + 32;
    let peak = pool.stats().peak_bytes;

    assert_eq!(offload(&pool, session).bytes, total);
    let report = restore(&pool, session).unwrap();
    assert_eq!(
        (report.session, report.buffers, report.bytes),
        (session, 5, total)
    );
    assert!(report.finished_at >= report.started_at);
    for (buffer, data) in &buffers {
        assert_eq!(&read(&pool, session, buffer.id).unwrap(), data);
    }
    assert_eq!(read(&pool, session, never_written.id).unwrap(), vec![0; 32]);
    let stats = pool.stats();
    assert_eq!((stats.live_buffers, stats.live_bytes), (5, total));
    assert_eq!((stats.offloaded_buffers, stats.offloaded_bytes), (0, 0));
    assert_eq!(stats.peak_bytes, peak);
    assert_eq!(stats.allocated_total, 5, "a restore is not an allocation");

    let nothing = restore(&pool, session).unwrap();
    assert_eq!(
        (nothing.buffers, nothing.bytes),
        (0, 0),
        "nothing offloaded any more"
    );
    // Restored buffers are ordinary again: writable, and freed by a release.
    write(&pool, session, never_written.id, 0, &[5; 32]).unwrap();
    let released = release(&pool, session);
    assert_eq!(
        (released.buffers, released.bytes, released.host_bytes),
        (5, total, 0)
    );
}

#[test]
fn a_restore_that_does_not_fit_moves_nothing_and_keeps_the_host_copies() {
    let pool = pool(10 * KIB);
    let (session, squatter) = (SessionId::random(), SessionId::random());
    let a = allocate(&pool, session, 4 * KIB);
    let b = allocate(&pool, session, 4 * KIB);
    write(&pool, session, a.id, 0, &pattern(4096, 3)).unwrap();
    write(&pool, session, b.id, 0, &pattern(4096, 4)).unwrap();
    assert_eq!(offload(&pool, session).buffers, 2);

    // The device fills up meanwhile: one buffer would fit, both do not.
    let filler = allocate(&pool, squatter, 4 * KIB);
    let refused = restore(&pool, session).unwrap_err();
    assert_eq!(refused, GpuError::OutOfMemory { bytes: 4 * KIB });
    let stats = pool.stats();
    assert_eq!(
        (stats.live_buffers, stats.live_bytes),
        (1, 4 * KIB),
        "not even the buffer that fitted was restored"
    );
    assert_eq!(
        (stats.offloaded_buffers, stats.offloaded_bytes),
        (2, 8 * KIB)
    );
    assert_eq!(
        read(&pool, session, a.id),
        Err(GpuError::Offloaded { id: a.id })
    );

    // Once there is room, the same host copies come back intact.
    assert_eq!(
        release_allocations(&pool, squatter, &[filler.id]).buffers,
        1
    );
    assert_eq!(restore(&pool, session).unwrap().buffers, 2);
    assert_eq!(read(&pool, session, a.id).unwrap(), pattern(4096, 3));
    assert_eq!(read(&pool, session, b.id).unwrap(), pattern(4096, 4));
    assert_eq!(release(&pool, session).bytes, 8 * KIB);
}

#[test]
fn release_after_offload_frees_the_host_copies() {
    let pool = pool(1 << 30);
    let session = SessionId::random();
    allocate(&pool, session, 4 * KIB);
    allocate(&pool, session, 2 * KIB);
    offload(&pool, session);
    // Allocated after the offload: on the device, next to the host copies.
    allocate(&pool, session, KIB);
    assert_eq!(holders(&pool), vec![session]);

    let report = release(&pool, session);
    assert_eq!(
        (report.buffers, report.bytes, report.host_bytes),
        (3, KIB, 6 * KIB),
        "host copies count as buffers, their bytes as host bytes"
    );
    assert!(
        holders(&pool).is_empty(),
        "nothing held, not even on the host"
    );
    assert_eq!(
        pool.stats(),
        PoolStats {
            peak_bytes: 6 * KIB,
            allocated_total: 3,
            released_total: 3,
            ..PoolStats::default()
        }
    );
    let restored = restore(&pool, session).unwrap();
    assert_eq!(
        (restored.buffers, restored.bytes),
        (0, 0),
        "a session released meanwhile has nothing to restore"
    );
    let again = release(&pool, session);
    assert_eq!((again.buffers, again.bytes, again.host_bytes), (0, 0, 0));
}

#[test]
fn release_allocations_frees_listed_host_copies_only() {
    let pool = pool(1 << 30);
    let (session, other) = (SessionId::random(), SessionId::random());
    let a = allocate(&pool, session, 4 * KIB);
    let b = allocate(&pool, session, 2 * KIB);
    let foreign = allocate(&pool, other, KIB);
    offload(&pool, session);
    offload(&pool, other);

    let report = release_allocations(&pool, session, &[a.id, foreign.id, a.id]);
    assert_eq!(
        (report.buffers, report.bytes, report.host_bytes),
        (1, 0, 4 * KIB),
        "only the listed host copy of this session"
    );
    let stats = pool.stats();
    assert_eq!(
        (stats.offloaded_buffers, stats.offloaded_bytes),
        (2, 3 * KIB)
    );
    assert_eq!(restore(&pool, session).unwrap().buffers, 1);
    assert_eq!(
        read(&pool, session, a.id),
        Err(GpuError::UnknownBuffer { id: a.id })
    );
    assert_eq!(read(&pool, session, b.id).unwrap(), vec![0; 2048]);

    // The other session's host copy survived being listed, and goes with it.
    let foreign_report = release(&pool, other);
    assert_eq!(
        (foreign_report.buffers, foreign_report.host_bytes),
        (1, KIB)
    );
    release(&pool, session);
    assert!(holders(&pool).is_empty());
    let stats = pool.stats();
    assert_eq!(
        (
            stats.live_buffers,
            stats.offloaded_buffers,
            stats.released_total
        ),
        (0, 0, 3)
    );
}
