//! Passivation under attack at the product level: the real `Runtime` on
//! real wgpu buffers, three registry shards on their own threads, both tokio
//! workers sending, and a `passivate_after` of a few milliseconds so that
//! sessions park and come back all the time. Writers and readers racing
//! parks, every kind of end racing parks on every shard, a device recovery,
//! a short shutdown, memory pressure and KV blocks with parked sessions, and
//! a runtime dropped without shutdown. Each scenario runs with passivation
//! off too (the reference): what it gives is what passivation must give.
//! No timing thresholds: states are waited for by polling, bounded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::join_all;
use sessionbus::config::{BlockBudget, Config, KvLayout, KvPoolConfig, WhenExhausted};
use sessionbus::*;
use sessionbus_testkit::*;

const SHARDS: usize = 3;
/// Short enough that sessions park between almost any two steps.
const AFTER: Duration = Duration::from_millis(2);

fn config(after: Option<Duration>) -> Config {
    let mut config = Config::default();
    config.sessions.shards = SHARDS;
    config.sessions.passivate_after = after;
    config.expiry.idle_timeout = None;
    config
}

/// A jitter of 0, 1 or a few milliseconds (around `AFTER`), deterministic.
async fn jitter(seed: usize) {
    match seed % 4 {
        0 => {}
        1 => tokio::task::yield_now().await,
        2 => tokio::time::sleep(Duration::from_millis(1)).await,
        _ => tokio::time::sleep(Duration::from_millis(4)).await,
    }
}

// ---------------------------------------------------------------------------
// 1. Writers and readers on both workers, sessions parking between steps.

const REGION: usize = 256;
const WRITERS: usize = 4;
const ROUNDS: usize = 30;

async fn writers_and_readers(after: Option<Duration>) -> PassivationStats {
    let mut h = start_with(config(after)).await;
    let sessions = join_all((0..9).map(|i| {
        let rt = &h.rt;
        async move {
            let session = rt.open(format!("writer-{i}")).await.unwrap();
            let buffer = session.allocate((WRITERS * REGION) as u64).await.unwrap();
            (session, buffer.id)
        }
    }))
    .await;
    let mut tasks = Vec::new();
    for (s, (session, id)) in sessions.iter().enumerate() {
        for w in 0..WRITERS {
            let (session, id) = (session.clone(), *id);
            tasks.push(tokio::spawn(async move {
                let offset = (w * REGION) as u64;
                for round in 0..ROUNDS {
                    // Three writes pipelined (queued in this order), then a read:
                    // the last one must be what is there.
                    let seeds: Vec<usize> = (0..3).map(|k| (s * 1000 + w * 100 + round) * 3 + k).collect();
                    let writes = seeds
                        .iter()
                        .map(|&seed| session.write_buffer(id, offset, pattern(seed, REGION)));
                    for written in join_all(writes).await {
                        written.unwrap();
                    }
                    let read = session.read_buffer(id).await.unwrap();
                    let mine = &read[w * REGION..(w + 1) * REGION];
                    assert!(
                        mine == pattern(seeds[2], REGION),
                        "session {s} writer {w} round {round}: not its last write (lost or reordered)"
                    );
                    jitter(round + w).await;
                    if round % 10 == 9 {
                        // Every writer pauses: the session parks here.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
    }
    for task in tasks {
        eventually("a writer", task).await.unwrap();
    }
    let stats = h.rt.stats().await.unwrap();
    for (session, _) in &sessions {
        assert_eq!(
            eventually("a close", session.close())
                .await
                .unwrap()
                .buffers,
            1
        );
    }
    let events = h.until_released(9).await;
    let ends = ends_by_session(&events);
    for (session, _) in &sessions {
        assert_eq!(ends[&session.id()], vec![EndReason::Closed]);
    }
    h.assert_gpu_at_baseline();
    let after_stats = h.rt.stats().await.unwrap();
    assert_eq!(
        (after_stats.live, after_stats.ended, after_stats.incidents),
        (0, 9, 0)
    );
    drop(sessions);
    h.shutdown_at_baseline().await;
    stats.passivation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_both_workers_lose_and_reorder_nothing_while_their_sessions_park() {
    let off = writers_and_readers(None).await;
    assert_eq!(off.parks, 0);
    let on = writers_and_readers(Some(AFTER)).await;
    assert!(on.parks > 0 && on.revivals > 0, "{on:?}");
}

// ---------------------------------------------------------------------------
// 2. Every kind of end racing parks, on every shard.

async fn ends_racing_parks(after: Option<Duration>) {
    const N: usize = 90;
    let Harness {
        rt,
        baseline,
        events,
    } = start_with(config(after)).await;
    let seen = collect_until_closed(events);
    let rt = Arc::new(rt);
    let sessions = join_all((0..N).map(|i| {
        let rt = rt.clone();
        async move {
            let owner = format!("user-{i}");
            let session = rt.open(owner.as_str()).await.unwrap();
            let buffer = session.allocate(16 * KIB).await.unwrap();
            let data = pattern(i, 16 * KIB as usize);
            session
                .write_buffer(buffer.id, 0, data.clone())
                .await
                .unwrap();
            (owner, session, buffer.id, data)
        }
    }))
    .await;
    let ids: Vec<SessionId> = sessions.iter().map(|(_, s, _, _)| s.id()).collect();
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, (owner, session, id, data))| {
            let engine = rt.engine().clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis((i % 7) as u64)).await;
                match i % 6 {
                    0 => assert_eq!(session.close().await.unwrap().buffers, 1),
                    1 => drop(session),
                    2 => {
                        let receipt = engine.close(session.id(), Owner::new(owner)).await.unwrap();
                        assert_eq!(receipt.buffers, 1);
                        drop(session);
                    }
                    3 => {
                        session.offload().await.unwrap();
                        jitter(i).await;
                        assert!(session.read_buffer(id).await.unwrap() == data);
                        assert_eq!(session.close().await.unwrap().buffers, 1);
                    }
                    4 => {
                        let more = session.allocate(8 * KIB).await.unwrap();
                        jitter(i).await;
                        session
                            .write_buffer(more.id, 0, pattern(i + 1, 8 * KIB as usize))
                            .await
                            .unwrap();
                        jitter(i + 1).await;
                        assert!(
                            session.read_buffer(more.id).await.unwrap()
                                == pattern(i + 1, 8 * KIB as usize)
                        );
                        assert!(session.read_buffer(id).await.unwrap() == data);
                        assert_eq!(session.close().await.unwrap().buffers, 2);
                    }
                    _ => {
                        // A close by id and the last handle's drop, in the same instant.
                        let clone = session.clone();
                        let closing = tokio::spawn(async move {
                            engine.close(clone.id(), Owner::new(owner)).await
                        });
                        drop(session);
                        let receipt = closing.await.unwrap().unwrap();
                        assert_eq!(receipt.buffers, 1);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        eventually("an end", task).await.unwrap();
    }
    let stats = until_stats(&rt, "every session released", |s| {
        s.live == 0 && s.releasing == 0
    })
    .await;
    assert_eq!((stats.ended, stats.incidents), (N as u64, 0), "{stats:?}");
    assert_eq!(
        rt.gpu_counters().unwrap(),
        baseline,
        "wgpu counters at baseline"
    );
    let rt = Arc::into_inner(rt).expect("one runtime");
    let report = eventually("shutdown", rt.shutdown()).await;
    assert_eq!(report.gpu_after, Some(baseline));
    let events = eventually("the bus closing", seen).await.unwrap();
    let ends = ends_by_session(&events);
    for (i, id) in ids.iter().enumerate() {
        let expected = match i % 6 {
            1 => EndReason::Disconnected,
            // Close by id racing the drop: whichever got there first, once.
            5 => ends[id][0],
            _ => EndReason::Closed,
        };
        assert_eq!(ends[id], vec![expected], "session {i}");
    }
    assert_eq!(ends.len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_drops_closes_by_id_offloads_and_allocations_racing_parks_end_each_once() {
    ends_racing_parks(None).await;
    for _ in 0..3 {
        ends_racing_parks(Some(AFTER)).await;
    }
}

// ---------------------------------------------------------------------------
// 3. A device recovery with parked sessions and sends in flight.

async fn recovery_with_traffic(after: Option<Duration>) {
    const N: usize = 30;
    let Harness { rt, events, .. } = start_with(config(after)).await;
    let seen = collect_until_closed(events);
    let sessions = open_holding(&rt, N, 8 * KIB).await;
    if after.is_some() {
        until_stats(&rt, "every session parked", |s| {
            s.passivation.parked == N as u64
        })
        .await;
    }
    // Half the sessions get traffic; the other half stay parked.
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = sessions
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(i, (session, id, data))| {
            let (session, id, data, stop) = (session.clone(), *id, data.clone(), stop.clone());
            tokio::spawn(async move {
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    match session.read_buffer(id).await {
                        Ok(read) => assert!(read == data, "session {i}: bytes changed"),
                        Err(_) => return round,
                    }
                    if session.write_buffer(id, 0, data.clone()).await.is_err() {
                        return round;
                    }
                    jitter(round).await;
                }
                round
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    rt.inject_gpu_device_loss();
    let report = eventually(
        "recover_gpu",
        rt.recover_gpu_within(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert!(report.completed, "{report:?}");
    assert_eq!(report.ended + report.already_ending, N, "{report:?}");
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        eventually("a sender", sender).await.unwrap();
    }
    for (session, _, _) in &sessions {
        let receipt = eventually("a close after the loss", session.close())
            .await
            .unwrap();
        assert_eq!(receipt.reason, EndReason::DeviceLost);
    }
    // The new device works, for a session that parks on it too.
    let fresh = rt.open("after").await.unwrap();
    let buffer = fresh.allocate(8 * KIB).await.unwrap();
    fresh
        .write_buffer(buffer.id, 0, pattern(7, 8 * KIB as usize))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(fresh.read_buffer(buffer.id).await.unwrap() == pattern(7, 8 * KIB as usize));
    fresh.close().await.unwrap();
    let stats = rt.stats().await.unwrap();
    assert_eq!((stats.live, stats.incidents), (0, 0), "{stats:?}");
    let stop = eventually("shutdown", rt.shutdown()).await;
    assert_eq!(
        stop.gpu_after, stop.gpu_baseline,
        "the new device at its baseline"
    );
    let events = eventually("the bus closing", seen).await.unwrap();
    let ends = ends_by_session(&events);
    for (session, _, _) in &sessions {
        assert_eq!(ends[&session.id()], vec![EndReason::DeviceLost]);
    }
    assert_eq!(ends.len(), N + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_recovery_with_parked_sessions_and_sends_in_flight_ends_each_once() {
    recovery_with_traffic(None).await;
    recovery_with_traffic(Some(AFTER)).await;
}

// ---------------------------------------------------------------------------
// 4. A short shutdown with many parked sessions and traffic.

async fn short_shutdown(after: Option<Duration>) {
    const N: usize = 90;
    let Harness {
        rt,
        baseline,
        events,
    } = start_with(config(after)).await;
    let seen = collect_until_closed(events);
    let sessions = open_holding(&rt, N, 16 * KIB)
        .await
        .into_iter()
        .map(|(session, id, _)| (session, id))
        .collect::<Vec<_>>();
    if after.is_some() {
        until_stats(&rt, "every session parked", |s| {
            s.passivation.parked == N as u64
        })
        .await;
    }
    let senders: Vec<_> = sessions
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
        .map(|(i, (session, id))| {
            let (session, id) = (session.clone(), *id);
            tokio::spawn(async move {
                for round in 0.. {
                    match session.read_buffer(id).await {
                        Ok(read) => assert!(read == pattern(i, 16 * KIB as usize)),
                        Err(_) => return round,
                    }
                    jitter(round + i).await;
                }
                unreachable!()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let report = eventually(
        "shutdown_within",
        rt.shutdown_within(Duration::from_secs(2)),
    )
    .await;
    assert!(report.sessions.completed, "{:?}", report.sessions);
    assert_eq!(report.sessions.sessions_ended, N as u64);
    assert_eq!(report.sessions.stats.passivation.parked, 0);
    assert_eq!(report.sessions.stats.incidents, 0);
    assert_eq!(
        report.gpu_after,
        Some(baseline),
        "wgpu counters after shutdown"
    );
    assert_eq!(report.bus_undelivered, 0);
    for sender in senders {
        eventually("a sender", sender).await.unwrap();
    }
    let events = eventually("the bus closing", seen).await.unwrap();
    let ends = ends_by_session(&events);
    assert_eq!(ends.len(), N);
    for (session, _) in &sessions {
        assert_eq!(ends[&session.id()], vec![EndReason::Shutdown]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_shutdown_with_parked_sessions_and_traffic_completes_at_baseline() {
    short_shutdown(None).await;
    short_shutdown(Some(AFTER)).await;
}

// ---------------------------------------------------------------------------
// 5. Memory pressure offloads parked sessions while their handles read.

async fn pressure_while_reading(after: Option<Duration>) -> RegistryStats {
    const N: usize = 12;
    const SIZE: u64 = 64 * KIB;
    let mut config = config(after);
    config.sessions.max_session_memory = SIZE;
    config.budget.device_memory = Some(8 * SIZE);
    config.budget.when_exhausted = WhenExhausted::Evict;
    config.budget.evict_idle = Duration::from_millis(5);
    config.budget.offload = true;
    config.budget.wait_timeout = Duration::from_secs(30);
    let mut h = start_with(config).await;
    let sessions = open_holding(&h.rt, N, SIZE).await;
    let readers: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(i, (session, id, data))| {
            let (session, id, data) = (session.clone(), *id, data.clone());
            tokio::spawn(async move {
                for round in 0..15 {
                    let read = session.read_buffer(id).await.unwrap();
                    assert!(read == data, "session {i} round {round}: bytes changed");
                    tokio::time::sleep(Duration::from_millis(((i + round) % 4 * 4) as u64)).await;
                }
            })
        })
        .collect();
    for reader in readers {
        eventually("a reader", reader).await.unwrap();
    }
    let stats = h.rt.stats().await.unwrap();
    assert_eq!(
        (stats.live, stats.ended, stats.incidents),
        (N, 0, 0),
        "{stats:?}"
    );
    for (session, id, data) in &sessions {
        assert!(session.read_buffer(*id).await.unwrap() == *data);
        session.close().await.unwrap();
    }
    let events = h.until_released(N).await;
    let ends = ends_by_session(&events);
    for (session, _, _) in &sessions {
        assert_eq!(ends[&session.id()], vec![EndReason::Closed]);
    }
    h.assert_gpu_at_baseline();
    let budget = h.rt.stats().await.unwrap().budget;
    drop(sessions);
    h.shutdown_at_baseline().await;
    let _ = budget;
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_offloads_parked_sessions_while_their_handles_read() {
    let off = pressure_while_reading(None).await;
    let on = pressure_while_reading(Some(AFTER)).await;
    assert!(on.passivation.parks > 0, "{:?}", on.passivation);
    eprintln!(
        "pressure off: {:?}\npressure on: {:?}",
        off.pressure, on.pressure
    );
}

// ---------------------------------------------------------------------------
// 6. KV blocks appended, written and forked across parks.

const TPB: u32 = 4;
const TOKEN_BYTES: u64 = 64;
const BLOCK: usize = (TPB as u64 * TOKEN_BYTES) as usize;

fn kv_config(after: Option<Duration>) -> Config {
    let mut config = config(after);
    config.kv = Some(KvPoolConfig {
        layout: KvLayout {
            tokens_per_block: TPB,
            bytes_per_token: TOKEN_BYTES,
        },
        blocks_per_slab: 4,
        device_budget: BlockBudget::Blocks(256),
        cache_budget: BlockBudget::Blocks(32),
        owner_budget: None,
        table_cap_blocks: None,
        keep_alive: Duration::ZERO,
        slab_idle_trim: Duration::from_secs(3600),
    });
    config
}

async fn kv_across_parks(after: Option<Duration>) {
    const OWNERS: usize = 8;
    let mut h = start_with(kv_config(after)).await;
    let tasks: Vec<_> = (0..OWNERS)
        .map(|i| {
            let engine = h.rt.engine().clone();
            tokio::spawn(async move {
                let parent = engine.open(format!("kv-{i}")).await.unwrap();
                // 14 tokens: three full blocks and a partial one.
                let prompt: Vec<u32> = (0..14).map(|t| (i * 100 + t) as u32).collect();
                parent.append_tokens(&prompt).await.unwrap();
                for b in 0..4 {
                    parent
                        .write_kv(b, 0, pattern(i * 10 + b, BLOCK))
                        .await
                        .unwrap();
                    jitter(i + b).await;
                }
                tokio::time::sleep(Duration::from_millis(6)).await;
                let child = parent.fork().await.unwrap();
                jitter(i).await;
                // Each writes its own copy of the partial block, in the same instant.
                let (a, b) = futures::join!(
                    parent.write_kv(3, 0, pattern(i * 10 + 100, BLOCK)),
                    child.write_kv(3, 0, pattern(i * 10 + 200, BLOCK)),
                );
                a.unwrap();
                b.unwrap();
                tokio::time::sleep(Duration::from_millis(6)).await;
                let (a, b) = futures::join!(
                    parent.append_tokens(&[1, 2, 3, 4, 5, 6]),
                    child.append_tokens(&[7, 8, 9, 10, 11, 12]),
                );
                a.unwrap();
                b.unwrap();
                jitter(i + 3).await;
                for b in 0..3 {
                    assert_eq!(
                        parent.read_kv(b).await.unwrap(),
                        pattern(i * 10 + b, BLOCK),
                        "owner {i} block {b}"
                    );
                    assert_eq!(
                        child.read_kv(b).await.unwrap(),
                        pattern(i * 10 + b, BLOCK),
                        "owner {i} fork block {b}"
                    );
                }
                assert_eq!(
                    parent.read_kv(3).await.unwrap()[..2 * TOKEN_BYTES as usize],
                    pattern(i * 10 + 100, BLOCK)[..2 * TOKEN_BYTES as usize]
                );
                assert_eq!(
                    child.read_kv(3).await.unwrap()[..2 * TOKEN_BYTES as usize],
                    pattern(i * 10 + 200, BLOCK)[..2 * TOKEN_BYTES as usize]
                );
                let (pb, cb) = (
                    parent.kv_blocks().await.unwrap(),
                    child.kv_blocks().await.unwrap(),
                );
                assert_eq!((pb.len(), cb.len()), (5, 5));
                assert_eq!(pb[..3], cb[..3], "full blocks shared");
                assert_ne!(pb[3], cb[3], "the partial block copied");
                tokio::time::sleep(Duration::from_millis(6)).await;
                // Offloaded while (perhaps) parked, then read back.
                child.offload().await.unwrap();
                jitter(i).await;
                assert_eq!(
                    child.read_kv(3).await.unwrap()[..2 * TOKEN_BYTES as usize],
                    pattern(i * 10 + 200, BLOCK)[..2 * TOKEN_BYTES as usize]
                );
                (parent, child)
            })
        })
        .collect();
    let mut held = Vec::new();
    for task in tasks {
        held.push(eventually("a kv owner", task).await.unwrap());
    }
    for (parent, child) in &held {
        parent.close().await.unwrap();
        child.close().await.unwrap();
    }
    let events = h.until_released(2 * OWNERS).await;
    let ends = ends_by_session(&events);
    for (parent, child) in &held {
        assert_eq!(ends[&parent.id()], vec![EndReason::Closed]);
        assert_eq!(ends[&child.id()], vec![EndReason::Closed]);
    }
    let stats = h.rt.stats().await.unwrap();
    let kv = stats.kv.unwrap();
    assert_eq!(kv.blocks_referenced, 0, "{kv:?}");
    assert_eq!(kv.blocks_held_by_released_tables, 0, "{kv:?}");
    assert_eq!(stats.incidents, 0);
    drop(held);
    let report = h.shutdown_at_baseline().await;
    assert_eq!(report.sessions.stats.kv.unwrap().blocks_total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_blocks_appended_written_forked_and_offloaded_across_parks_read_back() {
    kv_across_parks(None).await;
    kv_across_parks(Some(AFTER)).await;
}

// ---------------------------------------------------------------------------
// 7. A runtime dropped without shutdown while parked sessions get traffic.

fn dropped_with_traffic(after: Option<Duration>) -> HashMap<SessionId, Vec<EndReason>> {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let tokio_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ends = tokio_rt.block_on(async move {
            const N: usize = 30;
            let Harness { rt, events, .. } = start_with(config(after)).await;
            let seen = collect_until_closed(events);
            let sessions = open_holding(&rt, N, 8 * KIB)
                .await
                .into_iter()
                .map(|(session, id, _)| (session, id))
                .collect::<Vec<_>>();
            if after.is_some() {
                until_stats(&rt, "every session parked", |s| {
                    s.passivation.parked == N as u64
                })
                .await;
            }
            // Every other session's only handle goes to a sender task.
            let mut kept = Vec::new();
            let mut senders = Vec::new();
            for (i, (session, id)) in sessions.into_iter().enumerate() {
                if i % 2 == 1 {
                    kept.push(session);
                    continue;
                }
                senders.push(tokio::spawn(async move {
                    for round in 0.. {
                        match session.read_buffer(id).await {
                            Ok(read) => assert!(read == pattern(i, 8 * KIB as usize)),
                            Err(_) => return round,
                        }
                        jitter(round + i).await;
                    }
                    unreachable!()
                }));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            tokio::task::spawn_blocking(move || drop(rt)).await.unwrap();
            for sender in senders {
                eventually("a sender after the drop", sender).await.unwrap();
            }
            drop(kept);
            let events = eventually("the bus closing", seen).await.unwrap();
            ends_by_session(&events)
        });
        drop(tokio_rt);
        let _ = done.send(ends);
    });
    finished
        .recv_timeout(EVENTUALLY)
        .expect("a runtime dropped with parked sessions and traffic: no hang, no panic")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_dropped_without_shutdown_while_parked_sessions_get_traffic_does_not_hang() {
    let off = tokio::task::spawn_blocking(|| dropped_with_traffic(None))
        .await
        .unwrap();
    let on = tokio::task::spawn_blocking(|| dropped_with_traffic(Some(AFTER)))
        .await
        .unwrap();
    // Whatever ends got out, none is reported twice.
    for ends in [&off, &on] {
        assert!(ends.values().all(|r| r.len() == 1), "{ends:?}");
    }
    eprintln!("ends reported: off {}, on {}", off.len(), on.len());
}

// ---------------------------------------------------------------------------
// 8. Memory pressure evicts (no offload) parked sessions, decided on any
//    shard, while their handles read and newcomers allocate.

async fn eviction_while_reading(after: Option<Duration>) -> PressureCounters {
    const N: usize = 12;
    const SIZE: u64 = 64 * KIB;
    let mut config = config(after);
    config.sessions.max_session_memory = SIZE;
    config.budget.device_memory = Some(6 * SIZE);
    config.budget.when_exhausted = WhenExhausted::Evict;
    config.budget.evict_idle = Duration::from_millis(5);
    config.budget.offload = false;
    config.budget.wait_timeout = Duration::from_secs(30);
    let Harness {
        rt,
        baseline,
        events,
    } = start_with(config).await;
    let seen = collect_until_closed(events);
    let rt = Arc::new(rt);
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let engine = rt.engine().clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis((i * 3) as u64)).await;
                let session = engine.open(format!("user-{i}")).await.unwrap();
                let data = pattern(i, SIZE as usize);
                let buffer = match session.allocate(SIZE).await {
                    Ok(buffer) => buffer,
                    // Evicted before its allocation was answered: an error, typed.
                    Err(e) => {
                        // Only an eviction may refuse it (as with passivation off).
                        assert_ne!(
                            session.state(),
                            State::Established,
                            "session {i}: allocation refused while the session lives: {e:?}"
                        );
                        return (session.id(), session, 0, false);
                    }
                };
                if let Err(e) = session.write_buffer(buffer.id, 0, data.clone()).await {
                    eprintln!("session {i}: write: {e:?} ({:?})", session.state());
                    return (session.id(), session, 0, false);
                }
                let mut reads = 0;
                for round in 0..15 {
                    match session.read_buffer(buffer.id).await {
                        Ok(read) => {
                            assert!(read == data, "session {i} round {round}: bytes changed");
                            reads += 1;
                        }
                        Err(e) => {
                            eprintln!("session {i}: read {round}: {e:?} ({:?})", session.state());
                            return (session.id(), session, reads, false);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(((i + round) % 4 * 4) as u64)).await;
                }
                (session.id(), session, reads, true)
            })
        })
        .collect();
    let mut held = Vec::new();
    for task in tasks {
        held.push(eventually("a reader", task).await.unwrap());
    }
    let mut closed = Vec::new();
    for (id, session, _, alive) in &held {
        if *alive && session.state() == State::Established {
            // It may be evicted between its last read and this close.
            let receipt = session.close().await.unwrap();
            if receipt.reason == EndReason::Closed {
                closed.push(*id);
            }
        }
    }
    for (id, session, reads, alive) in &held {
        eprintln!(
            "{id}: reads {reads} alive {alive} state {:?}",
            session.state()
        );
    }
    let stats = until_stats(&rt, "every session released", |s| {
        s.live == 0 && s.releasing == 0
    })
    .await;
    assert_eq!((stats.ended, stats.incidents), (N as u64, 0), "{stats:?}");
    assert_eq!(rt.gpu_counters().unwrap(), baseline);
    let rt = Arc::into_inner(rt).expect("one runtime");
    let report = eventually("shutdown", rt.shutdown()).await;
    assert_eq!(report.gpu_after, Some(baseline));
    let events = eventually("the bus closing", seen).await.unwrap();
    let ends = ends_by_session(&events);
    assert_eq!(ends.len(), N);
    for (id, _, _, _) in &held {
        let expected = if closed.contains(id) {
            EndReason::Closed
        } else {
            EndReason::Evicted
        };
        assert_eq!(ends[id], vec![expected]);
    }
    drop(held);
    stats.pressure
}

// Found failing (about 1 run in 5-10 under load, passivation on) by the
// review that wrote it: a newcomer's allocation waited its whole
// `wait_timeout` while idle sessions held the budget. Memory pressure counted
// the bytes of a session it had asked to go as on their way, so it stopped
// looking; the session had answered `Kept` (a read came in first), and
// nothing looked again. Pressure now looks again while any allocation waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_evicts_parked_sessions_while_their_handles_read_each_ends_once() {
    let off = eviction_while_reading(None).await;
    let on = eviction_while_reading(Some(AFTER)).await;
    assert!(off.evicted > 0 && on.evicted > 0, "off {off:?} on {on:?}");
}
