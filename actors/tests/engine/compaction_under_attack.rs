//! The per-session records trimmed (4db14f6 and d0f0763) under attack: ids
//! as two words (hash, order, print, shard), a handle's link counted per
//! clone and per lease (dropped on other threads, around a park), a parked
//! session compacted into its slot (everything it held must come back, and
//! its end must say what a session that never parked says), a crash right
//! after a revival, and the registry's "not filed" sentinel for deadlines.
//! The expected behaviour is always what passivation off gives.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use sessionbus_actors::*;

const SEC: Duration = Duration::from_secs(1);
const KIB: u64 = 1 << 10;
const BLOCK: usize = 16 * 64;

fn passivating(after: Duration) -> EngineConfig {
    let mut config = no_expiry();
    config.sessions.passivate_after = Some(after);
    config
}

fn with_passivation(mut config: EngineConfig, after: Option<Duration>) -> EngineConfig {
    config.sessions.passivate_after = after;
    config
}

/// Every end event queued on the fixture's channel now (none are awaited).
fn ends_queued(f: &mut Fixture) -> Vec<Arc<SessionEndEvent>> {
    let mut ends = Vec::new();
    while let Ok(event) = f.events.try_recv() {
        if let LifecycleEvent::Ended(end) = event {
            ends.push(end);
        }
    }
    ends
}

/// Records what a hasher is fed.
#[derive(Default)]
struct Recorder(Vec<String>);

impl Hasher for Recorder {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.push(format!("bytes {bytes:?}"));
    }
    fn write_u128(&mut self, i: u128) {
        self.0.push(format!("u128 {i}"));
    }
    fn write_u64(&mut self, i: u64) {
        self.0.push(format!("u64 {i}"));
    }
    fn write_usize(&mut self, i: usize) {
        self.0.push(format!("usize {i}"));
    }
}

/// An id hashes, orders, prints and parses as the 128-bit number it was.
#[test]
fn session_ids_hash_order_print_and_parse_as_the_number_they_are() {
    let mut raws: Vec<u128> = vec![
        0,
        1,
        u64::MAX as u128,
        (u64::MAX as u128) + 1,
        1u128 << 127,
        u128::MAX,
        u128::MAX - 1,
        0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
    ];
    for _ in 0..200 {
        raws.push(SessionId::random().as_u128());
    }
    for &raw in &raws {
        let id = SessionId::from_u128(raw);
        assert_eq!(id.as_u128(), raw);
        let mut fed = Recorder::default();
        id.hash(&mut fed);
        let mut number = Recorder::default();
        raw.hash(&mut number);
        assert_eq!(fed.0, number.0, "hashed as the number");
        let mut a = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut a);
        let mut b = std::collections::hash_map::DefaultHasher::new();
        raw.hash(&mut b);
        assert_eq!(a.finish(), b.finish());
        assert_eq!(id.to_string(), format!("{raw:032x}"));
        assert_eq!(id.to_string().parse::<SessionId>().unwrap(), id);
        for shards in [1usize, 2, 3, 7, 64] {
            assert_eq!(
                shard_of(id, shards),
                ((raw >> 64) as u64 % shards as u64) as usize
            );
        }
    }
    let by_id: Vec<u128> = raws
        .iter()
        .map(|&r| SessionId::from_u128(r))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(SessionId::as_u128)
        .collect();
    let by_number: Vec<u128> = raws
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(by_id, by_number, "ordered as the numbers");
}

/// An expiry saturated at the end of the engine clock (u64::MAX
/// microseconds) is a real filing in the deadline queue: the session's end
/// must take it out again, as it does for any other deadline.
#[test]
fn a_deadline_at_the_end_of_time_leaves_the_queue_with_its_session() {
    on_paused_time(|| async {
        let mut f = start(no_expiry()).await;
        let forever = policy(Some(Duration::MAX), Some(Duration::MAX));
        let session = f
            .engine
            .open_with(OpenOptions::new("patient").expiry(forever))
            .await
            .unwrap();
        let short = f
            .engine
            .open_with(OpenOptions::new("brief").expiry(policy(None, Some(3600 * SEC))))
            .await
            .unwrap();
        assert_eq!(f.stats().await.scheduled_deadlines, 2, "both filed");
        session.touch().await.unwrap();
        settle(SEC).await;
        session.close().await.unwrap();
        short.close().await.unwrap();
        let _ = f.next_end().await;
        let _ = f.next_end().await;
        settle(SEC).await;
        let stats = f.stats().await;
        assert_eq!(stats.live, 0);
        assert_eq!(
            stats.scheduled_deadlines, 0,
            "a deadline is still filed for a session that ended"
        );
        f.shutdown_clean().await;
    });
}

/// Every clone of a handle and every lease counts: dropping all but one,
/// on other threads, while the session is parked or running, ends nothing;
/// the last one (a lease, dropped on another thread) ends it once, as a
/// disconnect, with its memory.
#[test]
fn clones_attaches_and_leases_each_count_and_only_the_last_drop_disconnects() {
    for after in [None, Some(SEC)] {
        on_paused_time(|| async move {
            let mut f = start(with_passivation(no_expiry(), after)).await;
            let (session, _buffer, _) = holding_bytes(&f, "many").await;
            let id = session.id();
            let clones: Vec<SessionHandle> = (0..4).map(|_| session.clone()).collect();
            let attached = f.engine.attach(id, Owner::new("many")).await.unwrap();
            let attached_clone = attached.clone();
            settle(3 * SEC).await;
            // Dropped on other threads, the session parked (when it parks).
            let mut threads = Vec::new();
            for handle in clones {
                threads.push(std::thread::spawn(move || drop(handle)));
            }
            threads.push(std::thread::spawn(move || drop(attached_clone)));
            for t in threads {
                t.join().unwrap();
            }
            settle(3 * SEC).await;
            assert!(ends_queued(&mut f).is_empty(), "handles are still alive");
            // A lease through the attached handle; then every handle goes.
            let lease = attached.lease().await.unwrap();
            let second = session.lease().await.unwrap();
            drop(session);
            drop(attached);
            settle(3 * SEC).await;
            assert!(ends_queued(&mut f).is_empty(), "two leases are still alive");
            drop(second);
            settle(3 * SEC).await;
            assert!(ends_queued(&mut f).is_empty(), "a lease is still alive");
            assert_eq!(f.stats().await.live, 1);
            std::thread::spawn(move || drop(lease)).join().unwrap();
            let end = f.next_end().await;
            assert_eq!(end.id, id);
            assert_eq!(end.reason, EndReason::Disconnected);
            assert_eq!((end.allocations.len(), end.bytes), (1, 4 * KIB));
            settle(3 * SEC).await;
            assert!(ends_queued(&mut f).is_empty(), "a second end");
            let stats = f.shutdown_clean().await;
            assert_eq!((stats.ended, stats.incidents), (1, 0));
        });
    }
}

/// A fork's handle is its own session's: dropping every handle of the
/// parked original ends it alone, and the fork goes on (then ends once).
#[test]
fn a_fork_of_a_parked_session_counts_its_own_handles() {
    on_paused_time(|| async {
        let mut f = start(with_passivation(kv_engine(64), Some(SEC))).await;
        let session = f.engine.open("forker").await.unwrap();
        session
            .append_tokens(&(0..40).collect::<Vec<u32>>())
            .await
            .unwrap();
        let clone = session.clone();
        settle(3 * SEC).await;
        let fork = clone.fork().await.unwrap();
        let fork_clone = fork.clone();
        settle(3 * SEC).await;
        let original = session.id();
        drop(session);
        std::thread::spawn(move || drop(clone)).join().unwrap();
        let end = f.next_end().await;
        assert_eq!((end.id, end.reason), (original, EndReason::Disconnected));
        drop(fork_clone);
        settle(3 * SEC).await;
        assert!(
            ends_queued(&mut f).is_empty(),
            "the fork still has a handle"
        );
        assert_eq!(fork.kv_blocks().await.unwrap().len(), 3);
        let fork_id = fork.id();
        drop(fork);
        let end = f.next_end().await;
        assert_eq!((end.id, end.reason), (fork_id, EndReason::Disconnected));
        let stats = f.shutdown_clean().await;
        assert_eq!((stats.ended, stats.incidents), (2, 0));
        let kv = stats.kv.unwrap();
        assert_eq!(kv.blocks_referenced, 0, "{kv:?}");
    });
}

/// Everything a session holds comes back after each park (context policy
/// with its count, session and context buffers, an offload, KV blocks
/// offloaded, a lease's history, a client address, a trace id, turns and
/// version), and its end says exactly what the same session's end says
/// with passivation off.
#[test]
fn a_session_parked_between_every_step_ends_as_one_that_never_parked() {
    let mut outcomes = Vec::new();
    for after in [None, Some(SEC)] {
        on_paused_time(|| async {
            let mut f = start(with_passivation(kv_engine(64), after)).await;
            let factory: ContextPolicyFactory = Arc::new(|| Box::new(EveryThird(0)));
            let ip: std::net::IpAddr = "198.51.100.7".parse().unwrap();
            let session = f
                .engine
                .open_with(
                    OpenOptions::new("hoarder")
                        .context_policy(factory)
                        .client_ip(ip)
                        .trace_id(TraceId(0xfeed_0000_0000_0000_0000_0000_0000_beef)),
                )
                .await
                .unwrap();
            let mut log = Vec::new();
            let kept = session.allocate(4 * KIB).await.unwrap();
            settle(3 * SEC).await;
            session.allocate_for_context(2 * KIB).await.unwrap();
            settle(3 * SEC).await;
            let lease = session.lease().await.unwrap();
            let lease_id = lease.id();
            lease.release().await.unwrap();
            settle(3 * SEC).await;
            for _ in 0..3 {
                let ack = session.chat(Turn::new().negation()).await.unwrap();
                log.push(format!(
                    "turn {} stale {}",
                    ack.turn,
                    ack.context.is_stale()
                ));
                settle(3 * SEC).await;
            }
            session.allocate_for_context(KIB).await.unwrap();
            settle(3 * SEC).await;
            session
                .append_tokens(&(0..40).collect::<Vec<u32>>())
                .await
                .unwrap();
            let written = fill_kv_blocks(&session, BLOCK, 3).await;
            settle(3 * SEC).await;
            let offload = session.offload().await.unwrap();
            log.push(format!(
                "offload {} buffers, {} kv blocks",
                offload.buffers.buffers, offload.kv_blocks
            ));
            settle(3 * SEC).await;
            let info = session.info().await.unwrap();
            log.push(format!(
                "info turns {} buffers {} bytes {} version {}",
                info.turns, info.buffers, info.bytes, info.version
            ));
            settle(3 * SEC).await;
            let again = session.release_lease(lease_id).await.unwrap_err();
            log.push(
                format!("lease again: {again}")
                    .replace(&session.id().to_string(), "ID")
                    .replace(&lease_id.to_string(), "LEASE"),
            );
            settle(3 * SEC).await;
            let ack = session.chat(Turn::new()).await.unwrap();
            log.push(format!(
                "turn {} stale {}",
                ack.turn,
                ack.context.is_stale()
            ));
            settle(3 * SEC).await;
            assert_eq!(read_kv_blocks(&session).await, written, "bit for bit");
            assert_eq!(
                session.read_buffer(kept.id).await.unwrap().len(),
                4 * KIB as usize
            );
            settle(3 * SEC).await;
            let stats = f.passivation().await;
            session.close().await.unwrap();
            let end = f.next_end().await;
            log.push(format!(
                "end {} allocations {} bytes {} in flight {} offloaded {} version {} trace {:?} ip {:?} drain {}/{}",
                end.reason,
                end.allocations.len(),
                end.bytes,
                end.in_flight_bytes,
                end.offloaded_bytes,
                end.version,
                end.trace_id,
                end.client_ip.map(ClientIp::ip),
                end.drain.leases,
                end.drain.forced,
            ));
            drop(session);
            let registry = f.shutdown_clean().await;
            assert_eq!(registry.budget.device_used, 0, "bytes still charged");
            let kv = registry.kv.unwrap();
            log.push(format!(
                "kv referenced {} offloaded {}",
                kv.blocks_referenced, kv.blocks_offloaded
            ));
            log.push(format!(
                "ended {} incidents {}",
                registry.ended, registry.incidents
            ));
            outcomes.push((log, stats));
        });
    }
    let (off, on) = (&outcomes[0], &outcomes[1]);
    assert!(on.1.parks >= 8, "parked between steps: {:?}", on.1);
    assert_eq!(off.0, on.0, "passivation changed what the session did");
}

/// A handler that panics on the first message after a revival ends the
/// session once, as crashed, with every buffer it held (on the GPU or
/// offloaded), as it does with passivation off.
#[test]
fn a_panic_right_after_a_revival_reports_the_crash_with_the_ledger() {
    let mut outcomes = Vec::new();
    for after in [None, Some(SEC)] {
        on_paused_time(|| async {
            let mut f = start(with_passivation(no_expiry(), after)).await;
            let (plain, _, _) = holding_bytes(&f, "plain").await;
            let (moved, _, _) = holding_bytes(&f, "moved").await;
            moved.allocate(KIB).await.unwrap();
            moved.offload().await.unwrap();
            let bare = f.engine.open("bare").await.unwrap();
            settle(3 * SEC).await;
            let parked = f.passivation().await.parked;
            let mut seen = Vec::new();
            for handle in [&plain, &moved, &bare] {
                handle.inject_panic().await;
                let end = f.next_end().await;
                assert_eq!(end.id, handle.id());
                seen.push((
                    end.reason,
                    end.allocations.len(),
                    end.bytes,
                    end.offloaded_bytes,
                    end.in_flight_bytes,
                ));
            }
            settle(3 * SEC).await;
            assert!(ends_queued(&mut f).is_empty(), "a second end");
            drop((plain, moved, bare));
            let stats = f.shutdown_clean().await;
            assert_eq!(stats.budget.device_used, 0);
            outcomes.push((seen, stats.ended, stats.incidents, parked));
        });
    }
    let (off, on) = (&outcomes[0], &outcomes[1]);
    assert_eq!(on.3, 3, "all three parked before the panic");
    assert_eq!(
        off.0,
        vec![
            (EndReason::Crashed, 1, 4 * KIB, 0, 0),
            (EndReason::Crashed, 2, 5 * KIB, 5 * KIB, 0),
            (EndReason::Crashed, 0, 0, 0, 0),
        ]
    );
    assert_eq!((off.0.clone(), off.1, off.2), (on.0.clone(), on.1, on.2));
}

/// A session that never asked for memory parks with nothing but its
/// record; back, it asks for memory, parks holding it, and its end
/// carries it. One whose buffers all went with a context reset parks
/// bare again.
#[test]
fn a_session_that_never_held_memory_parks_bare_and_holds_memory_after() {
    on_paused_time(|| async {
        let mut f = start(passivating(SEC)).await;
        let factory: ContextPolicyFactory = Arc::new(|| Box::new(EveryThird(0)));
        let session = f
            .engine
            .open_with(OpenOptions::new("late").context_policy(factory))
            .await
            .unwrap();
        settle(3 * SEC).await;
        assert_eq!(f.passivation().await.parked, 1);
        let buffer = session.allocate_for_context(2 * KIB).await.unwrap();
        settle(3 * SEC).await;
        assert_eq!(f.passivation().await.parked, 1, "parked holding memory");
        assert_eq!(f.stats().await.budget.device_used, 2 * KIB);
        assert_eq!(session.read_buffer(buffer.id).await.unwrap().len(), 2048);
        for _ in 0..3 {
            session.chat(Turn::new().negation()).await.unwrap();
            settle(3 * SEC).await;
        }
        let info = session.info().await.unwrap();
        assert_eq!((info.turns, info.buffers, info.bytes), (3, 0, 0));
        settle(3 * SEC).await;
        assert_eq!(f.stats().await.budget.device_used, 0);
        let held = session.allocate(KIB).await.unwrap();
        settle(3 * SEC).await;
        let before = f.passivation().await;
        session.close().await.unwrap();
        let end = f.next_end().await;
        assert_eq!(
            end.allocations.iter().map(|a| a.id).collect::<Vec<_>>(),
            vec![held.id]
        );
        assert_eq!(end.bytes, KIB);
        assert!(before.parks >= 4, "{before:?}");
        drop(session);
        let stats = f.shutdown_clean().await;
        assert_eq!(
            (stats.ended, stats.incidents, stats.budget.device_used),
            (1, 0, 0)
        );
    });
}

/// Sessions on engine threads of their own (real time), parking every
/// millisecond: clones of their handles are made and dropped on many
/// threads at once (and send between), leases taken and dropped on other
/// threads, while one handle of each stays on the test thread. Nothing
/// ends while that one lives; dropped last, on several threads at the
/// same time as the sessions' own clones, each session ends exactly once,
/// as a disconnect, with its memory.
#[test]
fn handle_clones_churned_on_many_threads_end_each_parking_session_exactly_once() {
    for round in 0..3u64 {
        let system = actix::System::new();
        system.block_on(async move {
            let mut config = sharded(3);
            config.sessions.passivate_after = Some(Duration::from_millis(1));
            let pool = Arc::new(InMemoryPool::new(256 * MIB, 16 * MIB));
            let (engine, threads) =
                Engine::start_on_threads(config, pool.clone(), Pseudonymizer::random()).unwrap();
            let mut events = engine
                .subscribe_channel(EventKinds::ALL, Delivery::Reliable)
                .await
                .unwrap();
            let f = Fixture {
                engine: engine.clone(),
                pool: pool.clone(),
                events: tokio::sync::mpsc::channel(1).1,
            };
            let mut kept = Vec::new();
            for i in 0..12 {
                kept.push(holding_bytes(&f, &format!("churn-{round}-{i}")).await.0);
            }
            let ids: Vec<SessionId> = kept.iter().map(SessionHandle::id).collect();
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut workers = Vec::new();
            for w in 0..4u64 {
                let handles: Vec<SessionHandle> = kept.iter().map(SessionHandle::clone).collect();
                workers.push(std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        for k in 0..30u64 {
                            for (s, handle) in handles.iter().enumerate() {
                                let mine = handle.clone();
                                if (k + s as u64 + w).is_multiple_of(5) {
                                    let lease = mine.lease().await.unwrap();
                                    std::thread::spawn(move || drop(lease)).join().unwrap();
                                } else if (k + w) % 3 == 0 {
                                    mine.touch().await.unwrap();
                                }
                                drop(mine);
                            }
                            std::thread::sleep(Duration::from_micros(
                                200 + (k * 37 + w * 11) % 900,
                            ));
                        }
                        // The worker's own clones go, all at once.
                        drop(handles);
                    });
                }));
            }
            // Joined off this thread: it runs shard 0, which the workers need.
            for worker in workers {
                tokio::task::spawn_blocking(move || worker.join())
                    .await
                    .unwrap()
                    .expect("a worker panicked");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let stats = engine.stats().await.unwrap();
            assert_eq!(
                stats.live, 12,
                "round {round}: a session ended with a handle alive"
            );
            assert!(
                stats.passivation.parks > 0,
                "round {round}: {:?}",
                stats.passivation
            );
            while let Ok(event) = events.try_recv() {
                if let LifecycleEvent::Ended(end) = event {
                    panic!(
                        "round {round}: {} ended ({}) with a handle alive",
                        end.id, end.reason
                    );
                }
            }
            // The last handles, each on a thread of its own, at once, with
            // fresh clones of the same sessions dropped beside them.
            let droppers: Vec<_> = kept
                .into_iter()
                .flat_map(|handle| {
                    let twin = handle.clone();
                    [handle, twin]
                })
                .map(|handle| std::thread::spawn(move || drop(handle)))
                .collect();
            for dropper in droppers {
                tokio::task::spawn_blocking(move || dropper.join())
                    .await
                    .unwrap()
                    .unwrap();
            }
            let mut ends: std::collections::HashMap<SessionId, usize> = Default::default();
            while ends.values().sum::<usize>() < 12 {
                let event = tokio::time::timeout(10 * SEC, events.recv())
                    .await
                    .expect("every session ends")
                    .unwrap();
                if let LifecycleEvent::Ended(end) = event {
                    assert_eq!(end.reason, EndReason::Disconnected, "round {round}");
                    assert_eq!((end.allocations.len(), end.bytes), (1, 4 * KIB));
                    *ends.entry(end.id).or_insert(0) += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let report = engine.shutdown().await.unwrap();
            while let Ok(event) = events.try_recv() {
                if let LifecycleEvent::Ended(end) = event {
                    *ends.entry(end.id).or_insert(0) += 1;
                }
            }
            for id in &ids {
                assert_eq!(ends.get(id), Some(&1), "round {round}: {id} {ends:?}");
            }
            assert_eq!(ends.len(), 12);
            assert_eq!(pool.stats().live_buffers, 0, "buffers left");
            assert_eq!(report.stats.budget.device_used, 0);
            assert_eq!(report.stats.incidents, 0);
            threads.stop_and_join();
        });
    }
}
