//! Issue 17 (5), attacked: KV offload and restore under interleavings a
//! flaky world produces. A prefix claim by another session while the
//! offload copies; sharers that fork, append and end while one of them is
//! offloaded; every end path while offloaded or while the offload is still
//! copying; a restore that runs out of blocks while idle holders exist; a
//! restore racing the sweeper's trim; a device loss with offloaded tables;
//! and the registry's pressure counters and host-memory limit.
//!
//! Each test states the guarantee it checks. Five of them failed when they
//! were written (the pressure gauges after a KV-only offload and after a
//! restore in two steps; admission counting a restore's blocks twice; an
//! offload that moved nothing counted as room; KV offloads past
//! `offload_host_memory`); they pass since the fixes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::common::*;
use sessionbus_actors::*;

const TOKENS_PER_BLOCK: u32 = 16;
const BLOCK: usize = 16 * 64; // 16 tokens × 64 bytes

/// `blocks` full blocks of tokens starting at `from` (distinct per `from`).
fn tokens(from: u32, blocks: u32) -> Vec<u32> {
    (from..from + blocks * TOKENS_PER_BLOCK).collect()
}

/// Fills every block of `session` with bytes no other block has.
async fn fill(session: &SessionHandle, seed: u8) -> Vec<Vec<u8>> {
    fill_kv_blocks(session, BLOCK, seed).await
}

/// Asserts that `actual` holds `expected`'s first `tokens` tokens (all of
/// them when `None`; a fork copies only its partial block's tokens), naming
/// the first block that differs instead of printing kilobytes.
fn assert_bytes(actual: &[Vec<u8>], expected: &[Vec<u8>], tokens: Option<usize>, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: block count");
    let len = tokens.map_or(usize::MAX, |t| t * BLOCK / TOKENS_PER_BLOCK as usize);
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let from = i * BLOCK;
        let end = len.saturating_sub(from).min(BLOCK);
        assert!(a[..end] == e[..end], "{what}: block {i} differs");
    }
}

async fn kv_stats(engine: &EngineHandle) -> KvStats {
    engine.stats().await.unwrap().kv.unwrap()
}

/// Nothing of any table is left: no reference, no host copy, no table.
async fn assert_no_kv_left(engine: &EngineHandle) {
    let kv = kv_stats(engine).await;
    assert_eq!(
        (
            kv.tables,
            kv.blocks_referenced,
            kv.blocks_offloaded,
            kv.blocks_held_by_released_tables
        ),
        (0, 0, 0, 0),
        "tables, references, host copies, references of released tables"
    );
}

/// An in-memory pool whose buffer reads and writes can be held (in arrival
/// order, replayed in that order when opened, as a device that answers late
/// would): the window between an offload's plan and its release, or between
/// a restore's fresh blocks and its writes.
struct GatedPool {
    inner: Arc<InMemoryPool>,
    closed: AtomicBool,
    held: Mutex<Vec<Held>>,
}

type ReadReply = oneshot::Sender<Result<Vec<u8>, GpuError>>;
type WriteReply = oneshot::Sender<Result<(), GpuError>>;

enum Held {
    Read(SessionId, AllocationId, ReadReply),
    Write(SessionId, AllocationId, u64, Vec<u8>, WriteReply),
}

impl GatedPool {
    fn new() -> Arc<Self> {
        Arc::new(GatedPool {
            inner: Arc::new(InMemoryPool::new(256 * MIB, 16 * MIB)),
            closed: AtomicBool::new(false),
            held: Mutex::new(Vec::new()),
        })
    }

    /// From now on, reads and writes wait for [`open`](Self::open).
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Reads and writes held now.
    fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    /// Carries out what was held, in order, and lets everything through again.
    fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
        let held = std::mem::take(&mut *self.held.lock().unwrap());
        for command in held {
            match command {
                Held::Read(session, id, reply) => self.inner.read(session, id, reply),
                Held::Write(session, id, offset, data, reply) => {
                    self.inner.write(session, id, offset, data, reply)
                }
            }
        }
    }
}

impl GpuPool for GatedPool {
    fn info(&self) -> &PoolInfo {
        self.inner.info()
    }

    fn allocate(&self, request: AllocRequest, reply: oneshot::Sender<Result<Allocated, GpuError>>) {
        self.inner.allocate(request, reply)
    }

    fn release_session(&self, session: SessionId, reply: oneshot::Sender<ReleaseReport>) {
        self.inner.release_session(session, reply)
    }

    fn release_allocations(
        &self,
        session: SessionId,
        ids: Vec<AllocationId>,
        reply: oneshot::Sender<ReleaseReport>,
    ) {
        self.inner.release_allocations(session, ids, reply)
    }

    fn sessions_holding_memory(&self, reply: oneshot::Sender<Vec<SessionId>>) {
        self.inner.sessions_holding_memory(reply)
    }

    fn stats(&self) -> PoolStats {
        self.inner.stats()
    }

    fn write(
        &self,
        session: SessionId,
        id: AllocationId,
        offset: u64,
        data: Vec<u8>,
        reply: WriteReply,
    ) {
        if self.closed.load(Ordering::SeqCst) {
            let held = Held::Write(session, id, offset, data, reply);
            self.held.lock().unwrap().push(held);
        } else {
            self.inner.write(session, id, offset, data, reply)
        }
    }

    fn read(&self, session: SessionId, id: AllocationId, reply: ReadReply) {
        if self.closed.load(Ordering::SeqCst) {
            self.held
                .lock()
                .unwrap()
                .push(Held::Read(session, id, reply));
        } else {
            self.inner.read(session, id, reply)
        }
    }

    fn offload_session(
        &self,
        session: SessionId,
        reply: oneshot::Sender<Result<OffloadReport, GpuError>>,
    ) {
        self.inner.offload_session(session, reply)
    }

    fn restore_session(
        &self,
        session: SessionId,
        reply: oneshot::Sender<Result<RestoreReport, GpuError>>,
    ) {
        self.inner.restore_session(session, reply)
    }
}

async fn start_gated(config: EngineConfig) -> (EngineHandle, Arc<GatedPool>) {
    let pool = GatedPool::new();
    let engine = Engine::start(config, pool.clone()).expect("valid config");
    (engine, pool)
}

/// Step 3 re-checks sharing: a block another session claims while the
/// offload copies stays on the device, shared, and only the blocks still
/// unshared move; both sessions read exactly their bytes afterwards.
#[test]
fn a_prefix_claim_while_the_offload_copies_keeps_the_claimed_blocks_on_the_device() {
    on_paused_time(|| async {
        let (engine, gate) = start_gated(kv_engine(64)).await;
        let owner = engine.open("alice").await.unwrap();
        owner.append_tokens(&tokens(0, 4)).await.unwrap();
        let before = fill(&owner, 1).await;

        gate.close();
        let offloading = owner.clone();
        let offload = actix::spawn(async move { offloading.offload().await });
        settle(Duration::from_millis(1)).await;
        assert!(gate.held() > 0, "the offload is copying (plan made)");

        // Another session of the owner claims the first two blocks meanwhile.
        let claimer = engine.open("alice").await.unwrap();
        let claimed = claimer.append_tokens(&tokens(0, 2)).await.unwrap();
        assert_eq!(claimed.shared_prefix_tokens, 32);
        gate.open();

        let report = offload.await.unwrap().unwrap();
        assert_eq!(report.kv_blocks, 2, "only the two still unshared moved");
        let kv = kv_stats(&engine).await;
        assert_eq!((kv.blocks_offloaded, kv.blocks_shared), (2, 2));
        assert_bytes(
            &read_kv_blocks(&claimer).await,
            &before[..2],
            None,
            "claimer",
        );
        assert_bytes(
            &read_kv_blocks(&owner).await,
            &before,
            None,
            "owner restored",
        );
        assert_eq!(kv_stats(&engine).await.blocks_offloaded, 0);

        owner.close().await.unwrap();
        claimer.close().await.unwrap();
        assert_no_kv_left(&engine).await;
        engine.shutdown().await.unwrap();
        assert_eq!(gate.stats().live_buffers, 0);
    });
}

/// Sessions that share a prompt go on with their lives while one of them
/// is offloaded: the other forks, grows and ends; a fork of the offloaded
/// one restores it first and the child reads its bytes; every reference is
/// dropped exactly once.
#[test]
fn sharers_fork_grow_and_end_around_an_offloaded_session_and_each_reference_drops_once() {
    on_paused_time(|| async {
        let f = start(kv_engine(64)).await;
        let prompt = tokens(0, 2);
        let a = f.engine.open("alice").await.unwrap();
        let a_tokens: Vec<u32> = prompt.iter().copied().chain(1_000..1_040).collect();
        a.append_tokens(&a_tokens).await.unwrap();
        let b = f.engine.open("alice").await.unwrap();
        let b_tokens: Vec<u32> = prompt.iter().copied().chain(2_000..2_050).collect();
        assert_eq!(
            b.append_tokens(&b_tokens)
                .await
                .unwrap()
                .shared_prefix_tokens,
            32
        );
        let _ = fill(&a, 2).await;
        // b writes every block it sees, the shared prompt's included (writes
        // are not copied on write), so a's bytes are read back, not assumed.
        let b_own = fill(&b, 3).await;
        let a_now = read_kv_blocks(&a).await;

        assert_eq!(b.offload().await.unwrap().kv_blocks, 4, "b's own 4 blocks");

        // a forks, grows and ends while b is offloaded.
        let child = a.fork().await.unwrap();
        assert_bytes(&read_kv_blocks(&child).await, &a_now, Some(72), "the child");
        a.append_tokens(&(3_000..3_100).collect::<Vec<u32>>())
            .await
            .unwrap();
        a.close().await.unwrap();
        assert_eq!(kv_stats(&f.engine).await.blocks_offloaded, 4);

        // b's next use restores it bit for bit.
        assert_bytes(&read_kv_blocks(&b).await, &b_own, None, "b restored");
        // A fork of b while offloaded restores b first.
        assert_eq!(b.offload().await.unwrap().kv_blocks, 4);
        let grandchild = b.fork().await.unwrap();
        assert_bytes(
            &read_kv_blocks(&grandchild).await,
            &b_own,
            Some(82),
            "b's fork",
        );
        assert_eq!(kv_stats(&f.engine).await.blocks_offloaded, 0);
        // Now only b's partial block is its own: that is all an offload moves.
        assert_eq!(b.offload().await.unwrap().kv_blocks, 1);

        for s in [&child, &grandchild, &b] {
            s.close().await.unwrap();
        }
        assert_no_kv_left(&f.engine).await;
        f.shutdown_clean().await;
    });
}

/// Whatever ends an offloaded session (close, crash, disconnect, a context
/// reset's turn, shutdown) drops its host copy and each of its references
/// exactly once; the shared prompt's other holder is untouched.
#[test]
fn every_end_path_of_an_offloaded_session_drops_its_host_copy_and_references_once() {
    on_paused_time(|| async {
        let f = start(kv_engine(64)).await;
        let prompt = tokens(0, 2);
        let keeper = f.engine.open("alice").await.unwrap();
        keeper.append_tokens(&prompt).await.unwrap();
        let kept = fill(&keeper, 9).await;
        let mut sessions = Vec::new();
        for i in 0..5u32 {
            let s = f.engine.open("alice").await.unwrap();
            let own: Vec<u32> = prompt
                .iter()
                .copied()
                .chain(10_000 * (i + 1)..10_000 * (i + 1) + 40)
                .collect();
            s.append_tokens(&own).await.unwrap();
            assert_eq!(s.offload().await.unwrap().kv_blocks, 3);
            sessions.push(s);
        }
        assert_eq!(kv_stats(&f.engine).await.blocks_offloaded, 15);
        let mut sessions = sessions.into_iter();
        let (closed, crashed, dropped, reset, at_shutdown) = (
            sessions.next().unwrap(),
            sessions.next().unwrap(),
            sessions.next().unwrap(),
            sessions.next().unwrap(),
            sessions.next().unwrap(),
        );

        closed.close().await.unwrap();
        assert_eq!(kv_stats(&f.engine).await.blocks_offloaded, 12);
        crashed.inject_panic().await;
        settle(Duration::from_millis(10)).await;
        assert_eq!(crashed.state(), State::Closed);
        assert_eq!(kv_stats(&f.engine).await.blocks_offloaded, 9);
        drop(dropped);
        settle(Duration::from_millis(10)).await;
        assert_eq!(kv_stats(&f.engine).await.blocks_offloaded, 6);
        // The turn brings the blocks back, then the reset drops them.
        let ack = reset.chat(Turn::new().negation()).await.unwrap();
        assert!(matches!(ack.context, ContextVerdict::Stale(_)), "{ack:?}");
        let kv = kv_stats(&f.engine).await;
        assert_eq!(kv.blocks_offloaded, 3);
        assert_eq!(kv.blocks_held_by_released_tables, 0);
        assert_bytes(
            &read_kv_blocks(&keeper).await,
            &kept,
            None,
            "the shared prompt",
        );
        keeper.close().await.unwrap();
        drop(at_shutdown);
        let stats = f.shutdown_clean().await;
        let kv = stats.kv.unwrap();
        assert_eq!(
            (
                kv.tables,
                kv.blocks_referenced,
                kv.blocks_offloaded,
                kv.blocks_held_by_released_tables
            ),
            (0, 0, 0, 0)
        );
    });
}

/// An end that arrives while the offload is still copying waits for it
/// (the session handles nothing in between) and then drops everything:
/// nothing is released twice and no host copy outlives the session.
#[test]
fn an_end_while_the_offload_is_copying_waits_for_it_and_leaves_nothing() {
    #[derive(Clone, Copy, Debug)]
    enum End {
        Close,
        Crash,
        Disconnect,
    }
    for end in [End::Close, End::Crash, End::Disconnect] {
        on_paused_time(|| async move {
            let (engine, gate) = start_gated(kv_engine(64)).await;
            let s = engine.open("alice").await.unwrap();
            s.append_tokens(&tokens(0, 5)).await.unwrap();
            let _ = fill(&s, 5).await;
            gate.close();
            let offloading = s.clone();
            let offload = actix::spawn(async move { offloading.offload().await });
            settle(Duration::from_millis(1)).await;
            assert!(gate.held() > 0, "{end:?}: the offload is copying");
            let ending = match end {
                End::Close => {
                    let closing = s.clone();
                    Some(actix::spawn(async move {
                        let _ = closing.close().await;
                    }))
                }
                End::Crash => {
                    let crashing = s.clone();
                    Some(actix::spawn(async move { crashing.inject_panic().await }))
                }
                End::Disconnect => None,
            };
            let id = s.id();
            drop(s); // the spawned tasks hold the only handles now
            settle(Duration::from_millis(1)).await;
            gate.open();
            let _ = offload.await.unwrap();
            if let Some(ending) = ending {
                ending.await.unwrap();
            }
            settle(Duration::from_millis(10)).await;
            let stats = engine.stats().await.unwrap();
            assert_eq!(stats.live, 0, "{end:?}: {id} ended");
            assert_eq!(stats.ended, 1, "{end:?}: exactly one end");
            assert_no_kv_left(&engine).await;
            engine.shutdown().await.unwrap();
            assert_eq!(gate.stats().live_buffers, 0, "{end:?}");
        });
    }
}

/// A restore that finds no free block makes room from another idle holder
/// (offloading it): both hold exactly their bytes afterwards, and the
/// registry counts one session offloaded now.
#[test]
fn a_restore_out_of_blocks_offloads_another_idle_holder_and_comes_back_bit_for_bit() {
    on_paused_time(|| async {
        let f = start(kv_engine(8)).await;
        let x = f.engine.open("alice").await.unwrap();
        x.append_tokens(&tokens(0, 4)).await.unwrap();
        let x_bytes = fill(&x, 11).await;
        assert_eq!(x.offload().await.unwrap().kv_blocks, 4);
        let y = f.engine.open("bob").await.unwrap();
        y.append_tokens(&tokens(5_000, 8)).await.unwrap();
        let y_bytes = fill(&y, 12).await;
        settle(Duration::from_secs(2)).await; // both idle past `evict_idle`

        assert_bytes(&read_kv_blocks(&x).await, &x_bytes, None, "x restored");
        assert_eq!(y.state(), State::Established, "y offloaded, not ended");
        let stats = f.stats().await;
        assert_eq!(stats.kv.unwrap().blocks_offloaded, 8, "y's blocks");
        assert_eq!(stats.pressure.offloaded_now, 1, "y only");

        x.close().await.unwrap();
        assert_bytes(&read_kv_blocks(&y).await, &y_bytes, None, "y restored");
        y.close().await.unwrap();
        assert_no_kv_left(&f.engine).await;
        f.shutdown_clean().await;
    });
}

/// The admission check ("could it fit if every other session ended?")
/// must count an offloaded table's blocks once: restoring 8 offloaded
/// blocks on an 8-block device, with an idle holder of the other blocks,
/// can make room.
#[test]

fn a_restore_of_more_than_half_the_device_makes_room_instead_of_being_refused() {
    on_paused_time(|| async {
        let f = start(kv_engine(8)).await;
        let y = f.engine.open("bob").await.unwrap();
        y.append_tokens(&tokens(5_000, 8)).await.unwrap();
        let y_bytes = fill(&y, 12).await;
        assert_eq!(y.offload().await.unwrap().kv_blocks, 8);
        let x = f.engine.open("alice").await.unwrap();
        x.append_tokens(&tokens(0, 4)).await.unwrap();
        settle(Duration::from_secs(2)).await; // x idle past `evict_idle`

        let restored = read_kv_blocks(&y).await; // panics on OutOfBlocks today
        assert_bytes(&restored, &y_bytes, None, "y restored");
        assert_eq!(x.state(), State::Established, "x offloaded, not ended");
        f.shutdown_clean().await;
    });
}

/// A restore whose fresh blocks are still being written while the sweeper
/// runs keeps its slab (it is in use), and a restore after its old slab was
/// trimmed gets a new one; the bytes are exact both times and every slab
/// buffer the books know is a live buffer of the pool.
#[test]
fn a_restore_racing_the_sweepers_trim_keeps_its_slab_and_its_bytes() {
    on_paused_time(|| async {
        let mut c = kv_engine(64);
        c.expiry.sweep_interval = Duration::from_secs(1);
        c.kv.as_mut().unwrap().slab_idle_trim = Duration::from_secs(1);
        let (engine, gate) = start_gated(c).await;
        let s = engine.open("alice").await.unwrap();
        s.append_tokens(&tokens(0, 8)).await.unwrap(); // one whole slab
        let bytes = fill(&s, 21).await;
        assert_eq!(s.offload().await.unwrap().kv_blocks, 8);
        settle(Duration::from_millis(900)).await; // the slab is nearly trimmable

        gate.close();
        let restoring = s.clone();
        let first = actix::spawn(async move { restoring.read_kv(0).await });
        settle(Duration::from_millis(1)).await;
        assert!(gate.held() > 0, "the restore is writing");
        settle(Duration::from_secs(3)).await; // sweeps and trims run meanwhile
        gate.open();
        assert!(
            first.await.unwrap().unwrap() == bytes[0],
            "block 0 restored"
        );
        assert_bytes(&read_kv_blocks(&s).await, &bytes, None, "restored");
        let kv = kv_stats(&engine).await;
        assert_eq!((kv.slabs_trimmed, kv.blocks_total), (0, 8), "slab kept");

        // Offloaded long enough for the slab to go; the restore gets a new one.
        assert_eq!(s.offload().await.unwrap().kv_blocks, 8);
        settle(Duration::from_secs(5)).await;
        assert_eq!(kv_stats(&engine).await.slabs_trimmed, 1);
        assert_bytes(&read_kv_blocks(&s).await, &bytes, None, "restored");
        let kv = kv_stats(&engine).await;
        assert_eq!(kv.blocks_total, 8);
        assert_eq!(
            engine.stats().await.unwrap().kv.unwrap().slabs_created,
            2,
            "the first slab trimmed, a second for the restore"
        );
        assert_eq!(gate.stats().live_buffers, 1, "one slab buffer, live");
        s.close().await.unwrap();
        assert_no_kv_left(&engine).await;
        engine.shutdown().await.unwrap();
        assert_eq!(gate.stats().live_buffers, 0);
    });
}

/// A device loss with offloaded tables (one sharing a prompt with a live
/// session) ends everyone once and leaves no reference, host copy or slab.
#[test]
fn a_device_loss_with_offloaded_tables_leaves_no_reference_or_host_copy() {
    on_paused_time(|| async {
        let f = start(kv_engine(64)).await;
        let prompt = tokens(0, 2);
        let live = f.engine.open("alice").await.unwrap();
        live.append_tokens(&prompt).await.unwrap();
        let sharer = f.engine.open("alice").await.unwrap();
        let own: Vec<u32> = prompt.iter().copied().chain(700..760).collect();
        sharer.append_tokens(&own).await.unwrap();
        let alone = f.engine.open("bob").await.unwrap();
        alone.append_tokens(&tokens(0, 3)).await.unwrap();
        assert_eq!(sharer.offload().await.unwrap().kv_blocks, 4);
        assert_eq!(alone.offload().await.unwrap().kv_blocks, 3);

        let report = f
            .engine
            .end_sessions_on_device_loss_within(Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(report.ended, 3);
        assert_no_kv_left(&f.engine).await;
        let stats = f.shutdown_clean().await;
        assert_eq!(stats.kv.unwrap().blocks_total, 0, "every slab given back");
    });
}

/// The registry's `offloaded_now` counts sessions with anything in host
/// memory; one whose KV blocks (and nothing else) are offloaded and that
/// then ends must leave the count.
#[test]

fn a_kv_only_offloaded_session_that_ends_leaves_the_offloaded_count() {
    on_paused_time(|| async {
        let f = start(kv_engine(64)).await;
        let closed = f.engine.open("alice").await.unwrap();
        closed.append_tokens(&tokens(0, 3)).await.unwrap();
        let dropped = f.engine.open("alice").await.unwrap();
        dropped.append_tokens(&tokens(100, 3)).await.unwrap();
        closed.offload().await.unwrap();
        dropped.offload().await.unwrap();
        assert_eq!(f.stats().await.pressure.offloaded_now, 2);

        closed.close().await.unwrap();
        drop(dropped);
        settle(Duration::from_millis(10)).await;
        let stats = f.stats().await;
        assert_eq!(stats.live, 0);
        assert_eq!(stats.kv.unwrap().blocks_offloaded, 0, "the books agree");
        assert_eq!(
            (stats.pressure.offloaded_now, stats.pressure.offloaded_bytes),
            (0, 0),
            "no session is offloaded now"
        );
        f.shutdown_clean().await;
    });
}

/// Buffers and KV blocks offloaded together come back in two steps (a KV
/// call restores the blocks, a buffer read the buffers): the registry's
/// offloaded bytes must come back to zero.
#[test]

fn buffers_and_kv_blocks_restored_in_two_steps_leave_no_offloaded_bytes() {
    on_paused_time(|| async {
        let f = start(kv_engine(64)).await;
        let s = f.engine.open("alice").await.unwrap();
        let buffer = s.allocate(MIB).await.unwrap();
        s.append_tokens(&tokens(0, 3)).await.unwrap();
        let report = s.offload().await.unwrap();
        assert_eq!(report.kv_blocks, 3);
        assert!(report.buffers.buffers == 1);
        let stats = f.stats().await;
        assert_eq!(stats.pressure.offloaded_now, 1);
        assert_eq!(
            stats.pressure.offloaded_bytes,
            report.buffers.bytes + report.kv_bytes
        );

        s.read_kv(0).await.unwrap(); // the KV blocks come back
        s.read_buffer(buffer.id).await.unwrap(); // then the buffers
        let stats = f.stats().await;
        assert_eq!(stats.kv.unwrap().blocks_offloaded, 0);
        assert_eq!(
            (stats.pressure.offloaded_now, stats.pressure.offloaded_bytes),
            (0, 0),
            "everything is back on the device"
        );
        s.close().await.unwrap();
        f.shutdown_clean().await;
    });
}

/// Out of blocks, with two idle sessions that share all their blocks with
/// each other: offloading either frees nothing (every block is shared), so
/// room must be made some other way (ending them, as `offload = false`
/// does, which succeeds); the append must not fail while room can be made.
#[test]

fn kv_pressure_makes_room_when_the_idle_holders_share_all_their_blocks() {
    on_paused_time(|| async {
        let f = start(kv_engine(8)).await;
        let first = f.engine.open("alice").await.unwrap();
        first.append_tokens(&tokens(0, 8)).await.unwrap();
        let second = f.engine.open("alice").await.unwrap();
        let claimed = second.append_tokens(&tokens(0, 8)).await.unwrap();
        assert_eq!(claimed.shared_prefix_tokens, 128, "all 8 blocks shared");
        settle(Duration::from_secs(2)).await; // both idle past `evict_idle`

        let newcomer = f.engine.open("bob").await.unwrap();
        let answer = newcomer.append_tokens(&tokens(9_000, 2)).await;
        assert!(answer.is_ok(), "room could be made: {answer:?}");
        f.shutdown_clean().await;
    });
}

/// `budget.offload_host_memory` bounds the host memory offloaded sessions
/// hold together; KV pressure must not offload past it (it ends the idle
/// holders instead).
#[test]

fn kv_pressure_keeps_host_memory_within_offload_host_memory() {
    on_paused_time(|| async {
        let mut c = kv_engine(16);
        c.budget.offload_host_memory = 2 * BLOCK as u64;
        let f = start(c).await;
        let mut idle = Vec::new();
        for i in 0..4 {
            let s = f.engine.open("alice").await.unwrap();
            s.append_tokens(&tokens(1_000 * i, 4)).await.unwrap();
            idle.push(s);
        }
        settle(Duration::from_secs(2)).await; // idle past `evict_idle`

        let newcomer = f.engine.open("bob").await.unwrap();
        newcomer.append_tokens(&tokens(9_000, 4)).await.unwrap();
        let kv = kv_stats(&f.engine).await;
        assert!(
            kv.blocks_offloaded * BLOCK as u64 <= 2 * BLOCK as u64,
            "{} blocks in host memory, over the 2 allowed",
            kv.blocks_offloaded
        );
        f.shutdown_clean().await;
    });
}
