//! Issue 17 (5): an offload copies the KV blocks only its session references
//! to host memory and gives them back to the block pool; shared prefix
//! blocks stay. The session's next KV use brings them back bit for bit. An
//! end while offloaded drops the host copy; a restore that cannot get blocks
//! keeps it, and succeeds once there is room.

use crate::common::*;
use sessionbus_actors::*;

const BLOCK: usize = 16 * 64; // 16 tokens × 64 bytes

/// Fills every block of `session` with bytes no other block has.
async fn fill(session: &SessionHandle, seed: u8) -> Vec<Vec<u8>> {
    fill_kv_blocks(session, BLOCK, seed).await
}

#[test]
fn an_offload_moves_own_blocks_to_host_and_the_next_use_restores_them_bit_for_bit() {
    on_paused_time(|| async {
        let f = start(kv_engine(64)).await;
        let prompt: Vec<u32> = (0..32).collect(); // two full blocks, shared
        let first = f.engine.open("alice").await.unwrap();
        first.append_tokens(&prompt).await.unwrap();
        let second = f.engine.open("alice").await.unwrap();
        let own: Vec<u32> = prompt.iter().copied().chain(500..570).collect();
        let appended = second.append_tokens(&own).await.unwrap();
        assert_eq!(appended.shared_prefix_tokens, 32);
        assert_eq!(appended.blocks, 7, "2 shared + 4 full + 1 partial");
        let _ = fill(&first, 1).await;
        let before = fill(&second, 2).await;
        let shared_before = first.kv_blocks().await.unwrap();

        let report = second.offload().await.unwrap();
        assert_eq!((report.buffers.buffers, report.kv_blocks), (0, 5));
        assert_eq!(report.kv_bytes, 5 * BLOCK as u64);
        let kv = f.engine.stats().await.unwrap().kv.unwrap();
        assert_eq!(kv.blocks_offloaded, 5);
        assert_eq!(
            kv.blocks_referenced, 2,
            "only the shared prompt is on the device"
        );
        assert_eq!(kv.blocks_shared, 2);
        let again = second.offload().await.unwrap_err();
        assert!(
            matches!(&again, SessionError::OffloadRefused { why, .. } if why == "already offloaded"),
            "{again:?}"
        );
        // The other sharer is untouched.
        assert_eq!(first.kv_blocks().await.unwrap(), shared_before);

        // The next use (any KV call) restores first: the bytes are exactly back.
        assert_eq!(
            read_kv_blocks(&second).await,
            before,
            "restored bit for bit"
        );
        let kv = f.engine.stats().await.unwrap().kv.unwrap();
        assert_eq!((kv.blocks_offloaded, kv.restores_total), (0, 1));
        assert_eq!(kv.blocks_referenced, 7);
        // And it goes on growing; its restored full blocks are a findable prefix again.
        second.append_tokens(&[1, 2, 3]).await.unwrap();
        let third = f.engine.open("alice").await.unwrap();
        let hit = third.append_tokens(&own[..96]).await.unwrap();
        assert_eq!(
            hit.shared_prefix_tokens, 96,
            "prompt + the four restored full blocks"
        );

        for s in [&first, &second, &third] {
            s.close().await.unwrap();
        }
        let kv = f.engine.stats().await.unwrap().kv.unwrap();
        assert_eq!(
            (kv.blocks_referenced, kv.blocks_held_by_released_tables),
            (0, 0)
        );
        f.shutdown_clean().await;
    });
}

#[test]
fn any_message_restores_and_an_end_while_offloaded_leaves_nothing_behind() {
    on_paused_time(|| async {
        let f = start(kv_engine(64)).await;
        let s = f.engine.open("alice").await.unwrap();
        s.append_tokens(&(0..100).collect::<Vec<u32>>())
            .await
            .unwrap();
        let before = fill(&s, 3).await;
        assert_eq!(s.offload().await.unwrap().kv_blocks, 7);
        // Any message brings everything back before it is handled (a turn here).
        s.chat(Turn::new()).await.unwrap();
        let kv = f.engine.stats().await.unwrap().kv.unwrap();
        assert_eq!(kv.blocks_offloaded, 0, "a turn restores the KV blocks too");
        assert_eq!(read_kv_blocks(&s).await, before);
        assert_eq!(s.offload().await.unwrap().kv_blocks, 7);
        s.close().await.unwrap();
        let kv = f.engine.stats().await.unwrap().kv.unwrap();
        assert_eq!(
            (kv.blocks_offloaded, kv.tables, kv.blocks_referenced),
            (0, 0, 0),
            "host copy and books are gone with the session"
        );
        let stats = f.shutdown_clean().await;
        assert_eq!(stats.kv.unwrap().blocks_total, 0, "every slab given back");
    });
}

#[test]
fn a_restore_without_room_keeps_the_host_copy_and_succeeds_once_there_is_room() {
    on_paused_time(|| async {
        let mut c = kv_engine(8);
        c.budget.offload = false; // nobody else is offloaded to make room
        let f = start(c).await;
        let sleeper = f.engine.open("alice").await.unwrap();
        sleeper
            .append_tokens(&(0..16 * 4).collect::<Vec<u32>>())
            .await
            .unwrap();
        let before = fill(&sleeper, 4).await;
        sleeper.offload().await.unwrap();
        // Someone else takes the whole pool and holds a lease (never evicted).
        let hog = f.engine.open("bob").await.unwrap();
        hog.append_tokens(&(0..16 * 8).collect::<Vec<u32>>())
            .await
            .unwrap();
        let lease = hog.lease().await.unwrap();

        let refused = sleeper.read_kv(0).await.unwrap_err();
        assert!(is_out_of_blocks(&refused), "{refused:?}");
        assert_eq!(sleeper.state(), State::Established);
        assert_eq!(
            f.engine.stats().await.unwrap().kv.unwrap().blocks_offloaded,
            4,
            "still in host memory"
        );

        drop(lease);
        hog.close().await.unwrap();
        assert_eq!(
            read_kv_blocks(&sleeper).await,
            before,
            "restored bit for bit"
        );
        sleeper.close().await.unwrap();
        f.shutdown_clean().await;
    });
}
