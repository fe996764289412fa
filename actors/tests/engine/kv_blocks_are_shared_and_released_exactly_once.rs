//! Issue 17: a session's KV memory as paged blocks in shared slabs. Sessions
//! of one owner share the full blocks of a common prompt; every end drops
//! each reference exactly once (crashes included); a slab whose blocks are
//! all free goes back to the pool; bad input gets a typed error.

use std::time::Duration;

use crate::common::*;
use sessionbus_actors::*;

const BLOCK: u64 = 16 * 64; // 16 tokens × 64 bytes

fn kv_config(cache_blocks: u64) -> EngineConfig {
    let mut config = no_expiry();
    config.expiry.sweep_interval = Duration::from_secs(1);
    config.kv = Some(KvPoolConfig {
        layout: KvLayout {
            tokens_per_block: 16,
            bytes_per_token: 64,
        },
        blocks_per_slab: 8,
        device_budget: BlockBudget::Blocks(64),
        cache_budget: BlockBudget::Blocks(cache_blocks),
        owner_budget: None,
        table_cap_blocks: Some(32),
        keep_alive: Duration::ZERO,
        slab_idle_trim: Duration::from_secs(5),
    });
    config
}

/// A system prompt of two full blocks and a partial third.
fn prompt() -> Vec<u32> {
    (0..40).collect()
}

#[test]
fn sessions_of_one_owner_share_a_prompt_and_release_it_exactly_once() {
    on_paused_time(|| async {
        let f = start(kv_config(16)).await;
        let first = f.engine.open("alice").await.unwrap();
        let appended = first.append_tokens(&prompt()).await.unwrap();
        assert_eq!(appended.shared_prefix_tokens, 0, "nothing cached yet");
        assert_eq!(
            (appended.tokens, appended.blocks, appended.new_blocks),
            (40, 3, 3)
        );

        let second = f.engine.open("alice").await.unwrap();
        let appended = second.append_tokens(&prompt()).await.unwrap();
        assert_eq!(appended.shared_prefix_tokens, 32, "two full blocks shared");
        assert_eq!(appended.new_blocks, 1, "only the partial block is its own");
        let (a, b) = (
            first.kv_blocks().await.unwrap(),
            second.kv_blocks().await.unwrap(),
        );
        assert_eq!(a[..2], b[..2], "the same blocks, not copies");
        assert_ne!(a[2], b[2], "partial blocks are never shared");

        // Another owner with the same tokens shares nothing (the default scope is the owner).
        let bob = f.engine.open("bob").await.unwrap();
        assert_eq!(
            bob.append_tokens(&prompt())
                .await
                .unwrap()
                .shared_prefix_tokens,
            0
        );

        let kv = f.stats().await.kv.expect("kv stats");
        assert_eq!(kv.blocks_shared, 2);
        assert_eq!(kv.blocks_referenced, 3 + 1 + 3);
        assert_eq!(kv.slabs_created, 1, "7 blocks fit one 8-block slab");

        // The first sharer ends: the shared blocks stay referenced by the second.
        first.close().await.unwrap();
        let kv = f.stats().await.kv.unwrap();
        assert_eq!(
            kv.blocks_referenced,
            1 + 3 + 3 - 1,
            "alice's own partial block is gone"
        );
        assert_eq!(kv.blocks_shared, 0);
        // The second ends (dropped: a disconnect): nobody references alice's prefix; it is cached.
        drop(second);
        settle(Duration::from_millis(10)).await;
        let kv = f.stats().await.kv.unwrap();
        assert_eq!(kv.blocks_referenced, 3, "only bob's");
        assert_eq!(kv.blocks_cached, 2, "the two full blocks of alice's prompt");
        assert_eq!(kv.blocks_held_by_released_tables, 0);

        // A third alice session hits the cache.
        let third = f.engine.open("alice").await.unwrap();
        assert_eq!(
            third
                .append_tokens(&prompt())
                .await
                .unwrap()
                .shared_prefix_tokens,
            32
        );
        let stats = f.shutdown_clean().await;
        let kv = stats.kv.unwrap();
        assert_eq!(kv.blocks_referenced, 0);
        assert_eq!(kv.blocks_total, 0, "every slab went back at shutdown");
    });
}

#[test]
fn a_salt_shares_across_owners() {
    on_paused_time(|| async {
        let f = start(kv_config(16)).await;
        let salt = Salt([7; 32]);
        let alice = f.engine.open("alice").await.unwrap();
        alice.append_tokens_in(Some(salt), &prompt()).await.unwrap();
        let bob = f.engine.open("bob").await.unwrap();
        let appended = bob.append_tokens_in(Some(salt), &prompt()).await.unwrap();
        assert_eq!(appended.shared_prefix_tokens, 32);
        f.shutdown_clean().await;
    });
}

#[test]
fn a_crash_while_holding_shared_blocks_drops_each_reference_once() {
    on_paused_time(|| async {
        let f = start(kv_config(0)).await;
        let keeper = f.engine.open("alice").await.unwrap();
        keeper.append_tokens(&prompt()).await.unwrap();
        let crasher = f.engine.open("alice").await.unwrap();
        crasher.append_tokens(&prompt()).await.unwrap();
        assert_eq!(f.stats().await.kv.unwrap().blocks_shared, 2);
        crasher.inject_panic().await;
        settle(Duration::from_millis(10)).await;
        let kv = f.stats().await.kv.unwrap();
        assert_eq!(kv.blocks_shared, 0);
        assert_eq!(kv.blocks_referenced, 3, "the keeper's, counted once each");
        keeper.close().await.unwrap();
        let kv = f.stats().await.kv.unwrap();
        assert_eq!(
            (kv.blocks_referenced, kv.blocks_cached),
            (0, 0),
            "no cache budget: all free"
        );
        f.shutdown_clean().await;
    });
}

#[test]
fn an_idle_slab_goes_back_to_the_pool() {
    on_paused_time(|| async {
        let f = start(kv_config(0)).await;
        let baseline = f.pool.stats().live_buffers;
        let session = f.engine.open("alice").await.unwrap();
        session.append_tokens(&prompt()).await.unwrap();
        assert_eq!(f.pool.stats().live_buffers, baseline + 1, "one slab buffer");
        session.close().await.unwrap();
        // The sweeper (every second) trims a slab idle for slab_idle_trim (5 s).
        settle(Duration::from_secs(8)).await;
        assert_eq!(
            f.pool.stats().live_buffers,
            baseline,
            "the slab's buffer is released"
        );
        assert_eq!(f.stats().await.kv.unwrap().slabs_trimmed, 1);
        f.shutdown_clean().await;
    });
}

/// Issue 17 (1): slab trims go through the paced release path: at one
/// buffer per second (burst 1), four idle slabs leave one at a time, not
/// all at once (virtual time: the steps are exact, not timing guesses).
#[test]
fn idle_slabs_are_trimmed_at_the_release_pace() {
    on_paused_time(|| async {
        let mut config = kv_config(0);
        config.release = ReleaseConfig::fixed(PaceUnit::Buffers, 1, 1, 1);
        let f = start(config).await;
        let baseline = f.pool.stats().live_buffers;
        let mut sessions = Vec::new();
        for i in 0..4u32 {
            let s = f.engine.open("alice").await.unwrap();
            // One whole slab each (8 blocks of 16 tokens), no shared prefix.
            s.append_tokens(&(i * 1000..i * 1000 + 128).collect::<Vec<u32>>())
                .await
                .unwrap();
            sessions.push(s);
        }
        assert_eq!(f.pool.stats().live_buffers, baseline + 4);
        for s in &sessions {
            s.close().await.unwrap();
        }
        let mut seen = Vec::new();
        for _ in 0..200 {
            settle(Duration::from_millis(100)).await;
            let live = f.pool.stats().live_buffers - baseline;
            if seen.last() != Some(&live) {
                seen.push(live);
            }
        }
        assert_eq!(seen, vec![4, 3, 2, 1, 0], "one slab at a time");
        assert_eq!(f.stats().await.kv.unwrap().slabs_trimmed, 4);
        f.shutdown_clean().await;
    });
}

#[test]
fn kv_data_round_trips_and_bad_input_is_refused() {
    on_paused_time(|| async {
        let f = start(kv_config(0)).await;
        let session = f.engine.open("alice").await.unwrap();
        session.append_tokens(&prompt()).await.unwrap();
        let data: Vec<u8> = (0..BLOCK).map(|i| (i % 251) as u8).collect();
        session.write_kv(1, 0, data.clone()).await.unwrap();
        assert_eq!(session.read_kv(1).await.unwrap(), data);
        assert_eq!(
            session.read_kv(0).await.unwrap(),
            vec![0; BLOCK as usize],
            "untouched"
        );

        let outside = session
            .write_kv(0, BLOCK - 4, vec![1; 8])
            .await
            .unwrap_err();
        assert!(
            matches!(
                &outside,
                SessionError::Kv {
                    source: KvStoreError::OutsideBlock { .. },
                    ..
                }
            ),
            "{outside:?}"
        );
        let missing = session.read_kv(3).await.unwrap_err();
        assert!(
            matches!(
                &missing,
                SessionError::Kv {
                    source: KvStoreError::NoSuchBlock { index: 3, count: 3 },
                    ..
                }
            ),
            "{missing:?}"
        );
        // Past the session's cap (32 blocks): refused, nothing appended.
        let too_many: Vec<u32> = (0..40 * 16).collect();
        let capped = session.append_tokens(&too_many).await.unwrap_err();
        assert!(
            matches!(
                &capped,
                SessionError::Kv {
                    source: KvStoreError::Blocks(_),
                    ..
                }
            ),
            "{capped:?}"
        );
        assert_eq!(session.kv_blocks().await.unwrap().len(), 3);

        // Another owner cannot touch the session's blocks.
        let bob = f.engine.attach(session.id(), Owner::new("bob")).await;
        assert!(
            matches!(bob, Err(SessionError::Unauthorized { .. })),
            "{bob:?}"
        );
        f.shutdown_clean().await;
    });
}

#[test]
fn without_a_kv_section_kv_calls_say_so() {
    on_paused_time(|| async {
        let f = start(no_expiry()).await;
        let session = f.engine.open("alice").await.unwrap();
        let refused = session.append_tokens(&[1, 2, 3]).await.unwrap_err();
        assert!(
            matches!(
                &refused,
                SessionError::Kv {
                    source: KvStoreError::NotConfigured,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(session.kv_blocks().await.unwrap().is_empty());
        f.shutdown_clean().await;
    });
}

#[test]
fn a_kv_layout_that_cannot_work_is_refused_at_start_by_name() {
    on_paused_time(|| async {
        let pool = std::sync::Arc::new(InMemoryPool::new(256 * MIB, 16 * MIB));
        let mut zero = kv_config(0);
        zero.kv.as_mut().unwrap().layout.tokens_per_block = 0;
        let error = Engine::start(zero, pool.clone()).unwrap_err();
        assert!(error.field.starts_with("kv."), "{error}");
        assert!(error.field.contains("tokens_per_block"), "{error}");

        let mut no_bytes = kv_config(0);
        no_bytes.kv.as_mut().unwrap().layout.bytes_per_token = 0;
        let error = Engine::start(no_bytes, pool.clone()).unwrap_err();
        assert!(error.field.contains("bytes_per_token"), "{error}");

        // A slab larger than the device's largest buffer (16 MiB here).
        let mut huge = kv_config(0);
        huge.kv.as_mut().unwrap().layout.bytes_per_token = MIB;
        let error = Engine::start(huge, pool).unwrap_err();
        assert!(error.field.starts_with("kv."), "{error}");
        assert!(
            error.reason.contains("largest buffer") || error.reason.contains("max"),
            "{error}"
        );
    });
}

#[test]
fn a_context_reset_drops_the_sessions_blocks_and_the_next_turn_starts_afresh() {
    on_paused_time(|| async {
        let f = start(kv_config(0)).await;
        let keeper = f.engine.open("alice").await.unwrap();
        keeper.append_tokens(&prompt()).await.unwrap();
        let session = f.engine.open("alice").await.unwrap();
        session.append_tokens(&prompt()).await.unwrap();
        assert_eq!(f.stats().await.kv.unwrap().blocks_shared, 2);
        // The user rejects what came before: the context is stale and reset.
        let ack = session.chat(Turn::new().negation()).await.unwrap();
        assert!(matches!(ack.context, ContextVerdict::Stale(_)), "{ack:?}");
        assert!(session.kv_blocks().await.unwrap().is_empty());
        let kv = f.stats().await.kv.unwrap();
        assert_eq!(kv.blocks_shared, 0, "its shared references dropped once");
        assert_eq!(kv.blocks_referenced, 3, "the keeper's only");
        // The next append opens a new table (and finds the keeper's prefix).
        let again = session.append_tokens(&prompt()).await.unwrap();
        assert_eq!((again.tokens, again.shared_prefix_tokens), (40, 32));
        f.shutdown_clean().await;
    });
}

/// Found by the demo: the sweeper took the slabs' reserved owner for a
/// session that had vanished and released live slabs under the sessions.
#[test]
fn the_sweeper_never_takes_live_slabs_for_orphaned_memory() {
    on_paused_time(|| async {
        let f = start(kv_config(0)).await;
        let session = f.engine.open("alice").await.unwrap();
        session.append_tokens(&prompt()).await.unwrap();
        // Many sweeps (every second): two would confirm an orphan.
        settle(Duration::from_secs(10)).await;
        let stats = f.stats().await;
        assert_eq!(stats.sweeper_incidents, 0);
        session.write_kv(0, 0, vec![1; 64]).await.unwrap();
        assert_eq!(session.read_kv(0).await.unwrap()[..64], [1; 64]);
        f.shutdown_clean().await;
    });
}

#[test]
fn a_fork_shares_full_blocks_copies_the_partial_one_and_goes_on_alone() {
    on_paused_time(|| async {
        let f = start(kv_config(0)).await;
        let parent = f.engine.open("alice").await.unwrap();
        parent.append_tokens(&prompt()).await.unwrap(); // 2 full blocks + 8 tokens
        let partial: Vec<u8> = (0..8 * 64).map(|i| (i % 253) as u8).collect();
        parent.write_kv(2, 0, partial.clone()).await.unwrap();

        let child = parent.fork().await.unwrap();
        assert_ne!(child.id(), parent.id());
        let (p, c) = (
            parent.kv_blocks().await.unwrap(),
            child.kv_blocks().await.unwrap(),
        );
        assert_eq!(p[..2], c[..2], "full blocks shared");
        assert_ne!(p[2], c[2], "the partial block is the child's own copy");
        assert_eq!(
            child.read_kv(2).await.unwrap()[..partial.len()],
            partial[..],
            "copied"
        );
        let kv = f.stats().await.kv.unwrap();
        assert_eq!((kv.blocks_shared, kv.blocks_referenced), (2, 4));

        // They go on independently.
        child.write_kv(2, 0, vec![9; 64]).await.unwrap();
        assert_eq!(parent.read_kv(2).await.unwrap()[..64], partial[..64]);
        child.append_tokens(&[7; 20]).await.unwrap();
        assert_eq!(parent.kv_blocks().await.unwrap().len(), 3);
        assert_eq!(child.kv_blocks().await.unwrap().len(), 4);

        // Each end drops its own references once.
        parent.close().await.unwrap();
        assert_eq!(
            f.stats().await.kv.unwrap().blocks_referenced,
            4,
            "the child's"
        );
        child.close().await.unwrap();
        let kv = f.stats().await.kv.unwrap();
        assert_eq!(
            (kv.blocks_referenced, kv.blocks_held_by_released_tables),
            (0, 0)
        );
        f.shutdown_clean().await;
    });
}

#[test]
fn a_fork_refused_at_the_session_limit_releases_its_table() {
    on_paused_time(|| async {
        let mut config = kv_config(0);
        config.sessions.max_sessions = 1;
        let f = start(config).await;
        let parent = f.engine.open("alice").await.unwrap();
        parent.append_tokens(&prompt()).await.unwrap();
        let refused = parent.fork().await.unwrap_err();
        assert!(
            matches!(
                &refused,
                SessionError::ForkRefused {
                    source: OpenError::AtCapacity { .. },
                    ..
                }
            ),
            "{refused:?}"
        );
        let kv = f.stats().await.kv.unwrap();
        assert_eq!(
            (kv.blocks_shared, kv.blocks_referenced),
            (0, 3),
            "the fork's references went"
        );
        f.shutdown_clean().await;
    });
}

/// Issue 17 (4): out of blocks, an append offloads idle sessions holding KV
/// blocks to host memory (`budget.offload`, the default), or ends them
/// (offload off) — never one with a lease, never itself — and succeeds;
/// with `when_exhausted = "fail"` it is refused at once.
#[test]
fn out_of_blocks_an_append_evicts_idle_holders_but_never_a_busy_one() {
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Offload,
        Evict,
        Fail,
    }
    for mode in [Mode::Offload, Mode::Evict, Mode::Fail] {
        on_paused_time(|| async move {
            let mut config = kv_config(0);
            let kv = config.kv.as_mut().unwrap();
            kv.device_budget = BlockBudget::Blocks(16); // two slabs of 8
            match mode {
                Mode::Offload => {}
                Mode::Evict => config.budget.offload = false,
                Mode::Fail => config.budget.when_exhausted = WhenExhausted::Fail,
            }
            let mut f = start(config).await;
            let idle = f.engine.open("alice").await.unwrap();
            idle.append_tokens(&(0..16 * 6).collect::<Vec<u32>>())
                .await
                .unwrap();
            let busy = f.engine.open("bob").await.unwrap();
            busy.append_tokens(&(0..16 * 6).collect::<Vec<u32>>())
                .await
                .unwrap();
            let _lease = busy.lease().await.unwrap();
            settle(Duration::from_secs(2)).await; // both idle past `evict_idle` (1 s)

            let newcomer = f.engine.open("carol").await.unwrap();
            let wanted: Vec<u32> = (1_000..1_000 + 16 * 8).collect();
            let answer = newcomer.append_tokens(&wanted).await;
            match mode {
                Mode::Offload => {
                    assert_eq!(answer.unwrap().blocks, 8);
                    assert_eq!(idle.state(), State::Established, "offloaded, not ended");
                    let kv = f.engine.stats().await.unwrap().kv.unwrap();
                    assert_eq!(
                        kv.blocks_offloaded, 6,
                        "the idle holder's blocks are on the host"
                    );
                }
                Mode::Evict => {
                    assert_eq!(answer.unwrap().blocks, 8);
                    let end = f.next_end().await;
                    assert_eq!((end.id, end.reason), (idle.id(), EndReason::Evicted));
                }
                Mode::Fail => {
                    let refused = answer.unwrap_err();
                    assert!(is_out_of_blocks(&refused), "{refused:?}");
                    assert_eq!(idle.state(), State::Established, "nobody evicted");
                }
            }
            assert_eq!(
                busy.state(),
                State::Established,
                "a lease holder is never evicted"
            );
            drop(_lease);
            f.shutdown_clean().await;
        });
    }
}

/// Issue 17 (4), admission: an append that no number of ends could make
/// room for is refused at once, and nobody is evicted for it.
#[test]
fn an_append_that_could_never_fit_is_refused_without_evicting_anyone() {
    on_paused_time(|| async {
        let mut config = kv_config(0);
        config.kv.as_mut().unwrap().device_budget = BlockBudget::Blocks(16);
        let f = start(config).await;
        let idle = f.engine.open("alice").await.unwrap();
        idle.append_tokens(&(0..16 * 6).collect::<Vec<u32>>())
            .await
            .unwrap();
        settle(Duration::from_secs(2)).await; // idle past `evict_idle`
        let greedy = f.engine.open("bob").await.unwrap();
        let too_many: Vec<u32> = (0..16 * 17).collect(); // 17 blocks > the 16 of the device budget
        let refused = greedy.append_tokens(&too_many).await.unwrap_err();
        assert!(is_out_of_blocks(&refused), "{refused:?}");
        assert_eq!(
            idle.state(),
            State::Established,
            "nobody was evicted for it"
        );
        assert_eq!(f.stats().await.kv.unwrap().blocks_referenced, 6);
        f.shutdown_clean().await;
    });
}

/// A block handed out again never shows its last holder's bytes: another
/// tenant's session that gets the freed block (and a fork that gets it as
/// its copy of the partial block) reads zeros where nothing was written.
#[test]
fn a_recycled_block_reads_as_zeros_not_as_its_last_holders_bytes() {
    on_paused_time(|| async {
        let f = start(kv_config(0)).await; // no cache: a freed block is free at once
        let alice = f.engine.open("alice").await.unwrap();
        alice
            .append_tokens(&(0..16).collect::<Vec<u32>>())
            .await
            .unwrap();
        let secret = vec![0xA5; BLOCK as usize];
        alice.write_kv(0, 0, secret.clone()).await.unwrap();
        assert_eq!(alice.read_kv(0).await.unwrap(), secret);
        let hers = alice.kv_blocks().await.unwrap()[0];
        alice.close().await.unwrap();

        let mallory = f.engine.open("mallory").await.unwrap();
        mallory.append_tokens(&[1]).await.unwrap();
        assert_eq!(
            mallory.kv_blocks().await.unwrap()[0],
            hers,
            "the same block, handed out again"
        );
        assert_eq!(
            mallory.read_kv(0).await.unwrap(),
            vec![0; BLOCK as usize],
            "the last holder's bytes are gone"
        );

        // A fork's fresh copy of a partial block: only the copied tokens.
        mallory.write_kv(0, 0, vec![7; 64]).await.unwrap();
        let bob = f.engine.open("bob").await.unwrap();
        bob.append_tokens(&(100..116).collect::<Vec<u32>>())
            .await
            .unwrap();
        bob.write_kv(0, 0, vec![0x5A; BLOCK as usize])
            .await
            .unwrap();
        bob.close().await.unwrap();
        let fork = mallory.fork().await.unwrap();
        let copy = fork.read_kv(0).await.unwrap();
        assert_eq!(copy[..64], [7; 64], "the copied token");
        assert!(copy[64..].iter().all(|&b| b == 0), "nothing of bob's");
        f.shutdown_clean().await;
    });
}
