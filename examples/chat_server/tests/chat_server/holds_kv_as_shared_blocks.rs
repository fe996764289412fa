//! Issue 17 (8): by default, each conversation's KV lives in paged
//! blocks of shared slabs, and the system prompt's full blocks are shared by
//! every conversation, whoever its user; every reference is dropped once the
//! sessions end, and the slabs go back to the device.

use std::time::Duration;

use super::client::*;
use server::{ChatServer, Options};
use sessionbus::config::{BlockBudget, Config};

#[actix_web::test]
async fn conversations_share_the_system_prompt_and_give_every_block_back() {
    let settings = test_settings();
    assert!(settings.kv_blocks, "paged blocks are the default");
    let mut kv = server::model::kv_config(&settings);
    kv.cache_budget = BlockBudget::Blocks(0); // nothing outlives its last sharer
    kv.slab_idle_trim = Duration::from_millis(100);
    let mut config = Config::default();
    config.expiry.sweep_interval = Duration::from_millis(100);
    config.kv = Some(kv);
    let server = ChatServer::start(Options {
        settings,
        config,
        ..Options::default()
    })
    .await
    .expect("the chat server starts on a real adapter");
    let http = Http::new(&server);

    let mut sockets = Vec::new();
    for user in ["ada", "grace"] {
        let token = http.token(user).await;
        let id = http.open(&token).await;
        let mut socket = connect(&server, &id, &token).await;
        let (reply, _, done) = chat(&mut socket, "hello there").await;
        assert_eq!(reply, server::model::reply_tokens("hello there").concat());
        assert!(done["kv_blocks"].as_u64().unwrap() > 0, "{done}");
        sockets.push((token, id, socket));
    }
    let status = http.status().await;
    let kv = &status["kv"];
    assert_eq!(
        kv["blocks_shared"], 2,
        "the system prompt's two full blocks, shared by both users: {status}"
    );
    assert!(kv["prefix_hit_lookups"].as_u64().unwrap() >= 1, "{status}");

    for (token, id, socket) in sockets {
        let (code, receipt) = http
            .call("DELETE", &format!("/sessions/{id}"), Some(&token), None)
            .await;
        assert_eq!(code, 200, "{receipt}");
        drop(socket);
    }
    // The slab, all of its blocks free, goes back at the next sweep past
    // `slab_idle_trim`; then: no session, wgpu's counters at baseline.
    for _ in 0..3000 {
        if http.status().await["kv"]["slabs_trimmed"].as_u64() >= Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = finish(server, &http).await;
    let kv = &status["kv"];
    assert_eq!(kv["blocks_referenced"], 0, "{status}");
    assert_eq!(kv["blocks_held_by_released_tables"], 0, "{status}");
    assert!(kv["slabs_trimmed"].as_u64().unwrap() >= 1, "{status}");
}
