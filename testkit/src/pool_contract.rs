//! The properties every [`GpuPool`] must have, written once and run against
//! every pool (the in-memory test double, the wgpu pool on the real adapter,
//! an application's own pool):
//!
//! ```ignore
//! sessionbus_testkit::pool_contract_tests!(in_memory, InMemoryPool::new(1 << 30, 1 << 28));
//! ```
//!
//! expands to one `#[test]` per property, each on a fresh pool made by the
//! expression. Every property is also a plain function taking `&dyn GpuPool`.
//! Properties about optional operations (write, read, offload, restore) are
//! skipped where the pool answers [`GpuError::Unsupported`].
//!
//! The functions block on the pool's replies: call them outside an async
//! runtime (plain `#[test]`s).

use sessionbus::pool::{AllocRequest, Allocated, GpuError, GpuPool, PoolStats, ReleaseReport};
use sessionbus::{AllocationId, SessionId};
use tokio::sync::oneshot;

/// Generates one `#[test]` per contract property in module `$name`, each on
/// a fresh pool made by `$make` (an expression of a type that implements `GpuPool`).
#[macro_export]
macro_rules! pool_contract_tests {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $crate::pool_contract_tests!(@each $make;
                release_session_frees_everything_and_answers_when_done,
                releasing_twice_reports_zero,
                release_allocations_frees_only_listed_live_ids_of_the_session,
                in_flight_allocations_are_freed_by_a_later_release_session,
                sessions_holding_memory_is_sorted_and_exact,
                stats_balance_through_every_operation,
                write_then_read_round_trips,
                bad_accesses_are_typed_errors,
                offload_then_restore_round_trips_bit_for_bit,
                offload_then_release_frees_the_host_copies,
            );
        }
    };
    (@each $make:expr; $($property:ident),* $(,)?) => {
        $(
            #[test]
            fn $property() {
                let pool = $make;
                $crate::pool_contract::$property(&pool);
            }
        )*
    };
}

/// Buffers of this many alignment units (small, so that any pool holds many).
const UNITS: u64 = 64;

/// A buffer size the pool takes without rounding: `units` alignment units,
/// at least the pool's minimum.
fn size(pool: &dyn GpuPool, units: u64) -> u64 {
    let info = pool.info();
    (units * info.size_alignment.max(1)).max(info.min_buffer_bytes)
}

/// Allocates a buffer of `bytes` for `session` and waits for the answer.
pub fn allocate(pool: &dyn GpuPool, session: SessionId, bytes: u64) -> Allocated {
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
        .expect("the pool answers every allocation")
        .expect("a small allocation succeeds")
}

/// Releases every buffer of `session` and waits for the report.
pub fn release_session(pool: &dyn GpuPool, session: SessionId) -> ReleaseReport {
    let (reply, answer) = oneshot::channel();
    pool.release_session(session, reply);
    answer
        .blocking_recv()
        .expect("the pool answers every release_session")
}

/// Releases the listed buffers of `session` and waits for the report.
pub fn release_allocations(
    pool: &dyn GpuPool,
    session: SessionId,
    ids: &[AllocationId],
) -> ReleaseReport {
    let (reply, answer) = oneshot::channel();
    pool.release_allocations(session, ids.to_vec(), reply);
    answer
        .blocking_recv()
        .expect("the pool answers every release_allocations")
}

/// The sessions holding memory, as the pool answers them.
pub fn holders(pool: &dyn GpuPool) -> Vec<SessionId> {
    let (reply, answer) = oneshot::channel();
    pool.sessions_holding_memory(reply);
    answer
        .blocking_recv()
        .expect("the pool answers sessions_holding_memory")
}

fn write(
    pool: &dyn GpuPool,
    session: SessionId,
    id: AllocationId,
    offset: u64,
    data: Vec<u8>,
) -> Result<(), GpuError> {
    let (reply, answer) = oneshot::channel();
    pool.write(session, id, offset, data, reply);
    answer
        .blocking_recv()
        .expect("the pool answers every write")
}

fn read(pool: &dyn GpuPool, session: SessionId, id: AllocationId) -> Result<Vec<u8>, GpuError> {
    let (reply, answer) = oneshot::channel();
    pool.read(session, id, reply);
    answer.blocking_recv().expect("the pool answers every read")
}

fn offload(pool: &dyn GpuPool, session: SessionId) -> Result<(u64, u64), GpuError> {
    let (reply, answer) = oneshot::channel();
    pool.offload_session(session, reply);
    let report = answer
        .blocking_recv()
        .expect("the pool answers every offload")?;
    assert_eq!(report.session, session);
    assert!(report.finished_at >= report.started_at);
    Ok((report.buffers, report.bytes))
}

fn restore(pool: &dyn GpuPool, session: SessionId) -> Result<(u64, u64), GpuError> {
    let (reply, answer) = oneshot::channel();
    pool.restore_session(session, reply);
    let report = answer
        .blocking_recv()
        .expect("the pool answers every restore")?;
    assert_eq!(report.session, session);
    assert!(report.finished_at >= report.started_at);
    Ok((report.buffers, report.bytes))
}

/// `allocated_total - released_total == live_buffers + offloaded_buffers`.
pub fn assert_balanced(pool: &dyn GpuPool) -> PoolStats {
    let stats = pool.stats();
    assert_eq!(
        stats.allocated_total - stats.released_total,
        stats.live_buffers + stats.offloaded_buffers,
        "stats do not balance: {stats:?}"
    );
    stats
}

/// A recognisable pattern of `len` bytes, different per `seed`.
fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `true` (and the property is skipped) where the pool does not implement
/// the operation.
fn unsupported<T>(result: &Result<T, GpuError>) -> bool {
    matches!(result, Err(GpuError::Unsupported(_)))
}

/// Allocate, then `release_session` destroys every buffer of the session and
/// answers only once they are gone: the report counts them, and the pool's
/// own counters are back where they were.
pub fn release_session_frees_everything_and_answers_when_done(pool: &dyn GpuPool) {
    let before = assert_balanced(pool);
    let session = SessionId::random();
    let buffers: Vec<Allocated> = (1..=3)
        .map(|units| allocate(pool, session, size(pool, units * UNITS)))
        .collect();
    let total: u64 = buffers.iter().map(|b| b.bytes).sum();
    let held = assert_balanced(pool);
    assert_eq!(held.live_buffers, before.live_buffers + 3);
    assert_eq!(held.live_bytes, before.live_bytes + total);

    let report = release_session(pool, session);
    assert_eq!(
        (
            report.session,
            report.buffers,
            report.bytes,
            report.host_bytes
        ),
        (session, 3, total, 0)
    );
    assert!(report.finished_at >= report.started_at);
    let after = assert_balanced(pool);
    assert_eq!(
        (after.live_buffers, after.live_bytes),
        (before.live_buffers, before.live_bytes),
        "the report came before the memory was back"
    );
    assert_eq!(after.released_total, before.released_total + 3);
}

/// Releasing a session twice (or one that never held anything) reports zero.
pub fn releasing_twice_reports_zero(pool: &dyn GpuPool) {
    let session = SessionId::random();
    allocate(pool, session, size(pool, UNITS));
    assert_eq!(release_session(pool, session).buffers, 1);
    let again = release_session(pool, session);
    assert_eq!((again.buffers, again.bytes, again.host_bytes), (0, 0, 0));
    let never = release_session(pool, SessionId::random());
    assert_eq!((never.buffers, never.bytes), (0, 0));
    assert_balanced(pool);
}

/// `release_allocations` destroys only listed ids that are live buffers of
/// that session: unknown, already released and other sessions' ids are
/// skipped, a duplicate counts once, and `release_session` frees the rest.
pub fn release_allocations_frees_only_listed_live_ids_of_the_session(pool: &dyn GpuPool) {
    let (session, other) = (SessionId::random(), SessionId::random());
    let kept = allocate(pool, session, size(pool, UNITS));
    let foreign = allocate(pool, other, size(pool, UNITS));
    let x = allocate(pool, session, size(pool, 2 * UNITS));
    let y = allocate(pool, session, size(pool, 3 * UNITS));
    let before = assert_balanced(pool);

    let unknown = AllocationId::next();
    let report = release_allocations(pool, session, &[x.id, foreign.id, y.id, x.id, unknown]);
    assert_eq!(
        (report.session, report.buffers, report.bytes),
        (session, 2, x.bytes + y.bytes),
        "exactly the two listed buffers of the session, the duplicate once"
    );
    assert!(report.finished_at >= report.started_at);
    let after = assert_balanced(pool);
    assert_eq!(after.live_buffers, before.live_buffers - 2);
    assert_eq!(after.live_bytes, before.live_bytes - x.bytes - y.bytes);

    let again = release_allocations(pool, session, &[x.id, y.id]);
    assert_eq!((again.buffers, again.bytes), (0, 0), "already released");
    let wrong = release_allocations(pool, SessionId::random(), &[kept.id, foreign.id]);
    assert_eq!((wrong.buffers, wrong.bytes), (0, 0), "not that session's");

    let rest = release_session(pool, session);
    assert_eq!((rest.buffers, rest.bytes), (1, kept.bytes));
    let foreign_report = release_session(pool, other);
    assert_eq!(
        (foreign_report.buffers, foreign_report.bytes),
        (1, foreign.bytes),
        "the other session's buffer survived being listed"
    );
    assert_balanced(pool);
}

/// Requests are executed in order: allocations asked for before a
/// `release_session` (and not yet answered) are freed by it.
pub fn in_flight_allocations_are_freed_by_a_later_release_session(pool: &dyn GpuPool) {
    let before = assert_balanced(pool);
    let session = SessionId::random();
    let bytes = size(pool, UNITS);
    let answers: Vec<_> = (0..4)
        .map(|_| {
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
        })
        .collect();
    let (reply, released) = oneshot::channel();
    pool.release_session(session, reply);

    let allocated: u64 = answers
        .into_iter()
        .map(|answer| {
            answer
                .blocking_recv()
                .expect("answered")
                .expect("allocated")
                .bytes
        })
        .sum();
    let report = released.blocking_recv().expect("answered");
    assert_eq!(
        (report.buffers, report.bytes),
        (4, allocated),
        "the release counts the allocations sent before it"
    );
    let after = assert_balanced(pool);
    assert_eq!(
        (after.live_buffers, after.live_bytes),
        (before.live_buffers, before.live_bytes)
    );
    assert!(!holders(pool).contains(&session));
}

/// `sessions_holding_memory` lists exactly the sessions with a live buffer,
/// sorted ascending.
pub fn sessions_holding_memory_is_sorted_and_exact(pool: &dyn GpuPool) {
    let already = holders(pool);
    let sessions: Vec<SessionId> = (0..5).map(|_| SessionId::random()).collect();
    let mut ids = Vec::new();
    for session in &sessions {
        ids.push(allocate(pool, *session, size(pool, UNITS)).id);
        allocate(pool, *session, size(pool, UNITS));
    }
    let mut expected: Vec<SessionId> = already.iter().chain(&sessions).copied().collect();
    expected.sort_unstable();
    assert_eq!(holders(pool), expected, "sorted, every holder once");

    // One buffer of sessions[0] released: it still holds the other.
    release_allocations(pool, sessions[0], &[ids[0]]);
    assert_eq!(holders(pool), expected);
    release_session(pool, sessions[0]);
    release_session(pool, sessions[3]);
    expected.retain(|s| *s != sessions[0] && *s != sessions[3]);
    assert_eq!(holders(pool), expected, "released sessions are gone");
    for session in &sessions {
        release_session(pool, *session);
    }
    assert_eq!(holders(pool), already);
}

/// The pool's counters balance after every kind of operation, offloads
/// included (an offload is not a release, a restore not an allocation).
pub fn stats_balance_through_every_operation(pool: &dyn GpuPool) {
    let before = assert_balanced(pool);
    let (a, b) = (SessionId::random(), SessionId::random());
    let first = allocate(pool, a, size(pool, UNITS));
    allocate(pool, a, size(pool, 2 * UNITS));
    allocate(pool, b, size(pool, UNITS));
    let held = assert_balanced(pool);
    assert_eq!(held.allocated_total, before.allocated_total + 3);
    assert!(held.peak_bytes >= held.live_bytes);

    release_allocations(pool, a, &[first.id]);
    assert_balanced(pool);
    let offloaded = offload(pool, b);
    let stats = assert_balanced(pool);
    if offloaded.is_ok() {
        assert_eq!(stats.offloaded_buffers, before.offloaded_buffers + 1);
        assert_eq!(restore(pool, b).expect("restore"), (1, size(pool, UNITS)));
        assert_balanced(pool);
    }
    release_session(pool, a);
    release_session(pool, b);
    let after = assert_balanced(pool);
    assert_eq!(after.released_total, before.released_total + 3);
    assert_eq!(
        (
            after.live_buffers,
            after.live_bytes,
            after.offloaded_buffers
        ),
        (
            before.live_buffers,
            before.live_bytes,
            before.offloaded_buffers
        )
    );
}

/// What is written is read back, bit for bit.
pub fn write_then_read_round_trips(pool: &dyn GpuPool) {
    let session = SessionId::random();
    let buffer = allocate(pool, session, size(pool, UNITS));
    let data = pattern(buffer.bytes, 7);
    let written = write(pool, session, buffer.id, 0, data.clone());
    if unsupported(&written) {
        release_session(pool, session);
        return;
    }
    written.expect("a whole-buffer write");
    let align = pool.info().size_alignment.max(1);
    // A second, partial write at an aligned offset replaces only its range.
    let patch = pattern(align * 2, 99);
    write(pool, session, buffer.id, align * 4, patch.clone()).expect("a partial write");
    let mut expected = data;
    expected[(align * 4) as usize..(align * 6) as usize].copy_from_slice(&patch);

    let back = read(pool, session, buffer.id);
    if !unsupported(&back) {
        assert_eq!(back.expect("read"), expected, "read back what was written");
    }
    release_session(pool, session);
}

/// Accesses outside a buffer, off the alignment, or to a buffer that is not
/// the session's are refused with their own errors, and change nothing.
pub fn bad_accesses_are_typed_errors(pool: &dyn GpuPool) {
    let (session, other) = (SessionId::random(), SessionId::random());
    let buffer = allocate(pool, session, size(pool, UNITS));
    let foreign = allocate(pool, other, size(pool, UNITS));
    let align = pool.info().size_alignment.max(1);
    let theirs = pattern(foreign.bytes, 3);
    let probe = write(pool, other, foreign.id, 0, theirs.clone());
    if unsupported(&probe) {
        release_session(pool, session);
        release_session(pool, other);
        return;
    }
    probe.expect("a whole-buffer write");

    let past_end = write(
        pool,
        session,
        buffer.id,
        buffer.bytes,
        vec![1; align as usize],
    );
    assert!(
        matches!(past_end, Err(GpuError::OutOfRange { id, size, .. }) if id == buffer.id && size == buffer.bytes),
        "{past_end:?}"
    );
    if align > 1 {
        let misaligned = write(pool, session, buffer.id, 1, vec![1; align as usize]);
        assert!(
            matches!(misaligned, Err(GpuError::Misaligned { alignment, .. }) if alignment == align),
            "{misaligned:?}"
        );
    }
    let unknown = AllocationId::next();
    let result = write(pool, session, unknown, 0, vec![1; align as usize]);
    assert!(
        matches!(result, Err(GpuError::UnknownBuffer { id }) if id == unknown),
        "{result:?}"
    );
    let result = write(pool, session, foreign.id, 0, vec![1; align as usize]);
    assert!(
        matches!(result, Err(GpuError::UnknownBuffer { id }) if id == foreign.id),
        "another session's buffer: {result:?}"
    );
    let result = read(pool, session, foreign.id);
    if !unsupported(&result) {
        assert!(
            matches!(result, Err(GpuError::UnknownBuffer { id }) if id == foreign.id),
            "another session's buffer: {result:?}"
        );
        assert_eq!(
            read(pool, other, foreign.id).expect("read"),
            theirs,
            "a refused write changed nothing"
        );
    }
    release_session(pool, session);
    release_session(pool, other);
    assert_balanced(pool);
}

/// Offload copies the session's buffers to host memory and frees them on the
/// device; restore brings them back under their old ids, bit for bit.
pub fn offload_then_restore_round_trips_bit_for_bit(pool: &dyn GpuPool) {
    let session = SessionId::random();
    let buffers: Vec<Allocated> = (1..=2)
        .map(|units| allocate(pool, session, size(pool, units * UNITS)))
        .collect();
    let total: u64 = buffers.iter().map(|b| b.bytes).sum();
    let mut contents = Vec::new();
    for (seed, buffer) in buffers.iter().enumerate() {
        let data = pattern(buffer.bytes, seed as u8 + 1);
        if unsupported(&write(pool, session, buffer.id, 0, data.clone())) {
            release_session(pool, session);
            return;
        }
        contents.push(data);
    }
    let before = assert_balanced(pool);
    let offloaded = offload(pool, session);
    if unsupported(&offloaded) {
        release_session(pool, session);
        return;
    }
    assert_eq!(offloaded.expect("offload"), (2, total));
    let stats = assert_balanced(pool);
    assert_eq!(stats.live_buffers, before.live_buffers - 2);
    assert_eq!(stats.offloaded_buffers, before.offloaded_buffers + 2);
    assert_eq!(stats.offloaded_bytes, before.offloaded_bytes + total);
    let while_offloaded = read(pool, session, buffers[0].id);
    assert!(
        matches!(while_offloaded, Err(GpuError::Offloaded { id }) if id == buffers[0].id),
        "{while_offloaded:?}"
    );
    assert_eq!(
        offload(pool, session).expect("offload"),
        (0, 0),
        "nothing left on the device"
    );

    assert_eq!(restore(pool, session).expect("restore"), (2, total));
    let restored = assert_balanced(pool);
    assert_eq!(
        (restored.live_buffers, restored.offloaded_buffers),
        (before.live_buffers, before.offloaded_buffers)
    );
    for (buffer, data) in buffers.iter().zip(&contents) {
        assert_eq!(
            &read(pool, session, buffer.id).expect("read after restore"),
            data,
            "buffer {} restored bit for bit",
            buffer.id
        );
    }
    assert_eq!(restore(pool, session).expect("restore"), (0, 0));
    release_session(pool, session);
    assert_balanced(pool);
}

/// Releasing an offloaded session drops its host copies: counted as buffers
/// and host bytes of the release, not GPU bytes.
pub fn offload_then_release_frees_the_host_copies(pool: &dyn GpuPool) {
    let before = assert_balanced(pool);
    let session = SessionId::random();
    let kept = allocate(pool, session, size(pool, UNITS));
    let offloaded = offload(pool, session);
    if unsupported(&offloaded) {
        release_session(pool, session);
        return;
    }
    assert_eq!(offloaded.expect("offload"), (1, kept.bytes));
    let report = release_session(pool, session);
    assert_eq!(
        (report.buffers, report.bytes, report.host_bytes),
        (1, 0, kept.bytes),
        "the host copy is freed and counted as host bytes"
    );
    let after = assert_balanced(pool);
    assert_eq!(
        (
            after.live_buffers,
            after.offloaded_buffers,
            after.offloaded_bytes
        ),
        (
            before.live_buffers,
            before.offloaded_buffers,
            before.offloaded_bytes
        )
    );
    assert_eq!(
        restore(pool, session).expect("restore"),
        (0, 0),
        "nothing left to restore"
    );
}
