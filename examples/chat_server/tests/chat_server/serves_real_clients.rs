//! The chat_server example, driven as real clients drive it: an HTTP client
//! and a WebSocket client against the server on a free port. The first two
//! tests run the whole-buffer path (`--kv-buffers`: one real wgpu buffer per
//! KV block, counted in the receipts); the rest run the default, paged
//! blocks in shared slabs.

use super::client::*;
use serde_json::json;

#[actix_web::test]
async fn a_chat_streams_its_reply_token_by_token_and_delete_answers_the_receipt() {
    let server = start(buffer_settings()).await;
    let http = Http::new(&server);
    let token = http.token("ada").await;
    let id = http.open(&token).await;
    let mut socket = connect(&server, &id, &token).await;

    let mut blocks = 0;
    for prompt in ["hello there", "tell me more about leases"] {
        let (reply, tokens, done) = chat(&mut socket, prompt).await;
        let expected = server::model::reply_tokens(prompt);
        assert_eq!(reply, expected.concat(), "the reply, token by token");
        assert_eq!(tokens, expected.len());
        assert_eq!(done["tokens"], tokens);
        blocks += done["kv_blocks"].as_u64().unwrap();
    }
    let status = http.status().await;
    assert_eq!(status["sessions"]["live"], 1, "{status}");
    assert_eq!(status["websockets"], 1, "{status}");
    assert_eq!(
        status["gpu"]["live_buffers"], blocks,
        "one GPU buffer per KV block: {status}"
    );
    assert!(status["gpu"]["live_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        status["gpu_at_baseline"], false,
        "the KV cache is on the GPU: {status}"
    );

    let (code, receipt) = http
        .call("DELETE", &format!("/sessions/{id}"), Some(&token), None)
        .await;
    assert_eq!(code, 200, "{receipt}");
    assert_eq!(receipt["id"], id);
    assert_eq!(receipt["reason"], "closed");
    assert_eq!(
        receipt["buffers"], blocks,
        "every KV block released: {receipt}"
    );
    assert_eq!(receipt["error"], serde_json::Value::Null);
    drop(socket);

    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "closed"), 1, "{status}");
    assert_eq!(ended(&status, "disconnected"), 0, "{status}");
}

#[actix_web::test]
async fn a_close_over_the_socket_answers_the_receipt_and_closes_normally() {
    let server = start(buffer_settings()).await;
    let http = Http::new(&server);
    let token = http.token("ada").await;
    let id = http.open(&token).await;
    let mut socket = connect(&server, &id, &token).await;
    let (_, _, done) = chat(&mut socket, "one turn").await;

    send(&mut socket, json!({"type": "close"})).await;
    let closed = next_json(&mut socket).await;
    assert_eq!(closed["type"], "closed", "{closed}");
    assert_eq!(closed["receipt"]["reason"], "closed");
    assert_eq!(closed["receipt"]["buffers"], done["kv_blocks"]);
    let (code, _, _) = close_code(&mut socket).await;
    assert_eq!(code, normal());

    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "closed"), 1, "{status}");
}

#[actix_web::test]
async fn rest_turns_status_metrics_and_the_page_are_served() {
    let server = start(test_settings()).await;
    let http = Http::new(&server);
    let token = http.token("grace").await;
    let id = http.open(&token).await;
    let (code, body) = http
        .call(
            "POST",
            &format!("/sessions/{id}/messages"),
            Some(&token),
            Some(json!({"text": "hi"})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["reply"], server::model::reply_tokens("hi").concat());

    let (code, page) = http.call("GET", "/", None, None).await;
    assert_eq!(code, 200);
    let page = page.as_str().unwrap();
    assert!(page.contains("<title>sessionbus chat</title>") && page.contains("/status"));

    let (code, _) = http
        .call("DELETE", &format!("/sessions/{id}"), Some(&token), None)
        .await;
    assert_eq!(code, 200);
    let (code, scrape) = http.call("GET", "/metrics", None, None).await;
    assert_eq!(code, 200);
    let scrape = scrape.as_str().unwrap();
    assert!(
        scrape.contains("sessionbus_sessions_started_total"),
        "{scrape}"
    );
    assert!(!scrape.contains(&id), "no session id in a metric");

    let status = finish(server, &http).await;
    assert_eq!(status["sessions"]["opened"], 1);
    assert_eq!(ended(&status, "closed"), 1, "{status}");
}

#[actix_web::test]
async fn a_socket_dropped_mid_stream_ends_its_session_as_disconnected() {
    let server = start(Settings {
        token_interval_ms: 20,
        ..test_settings()
    })
    .await;
    let http = Http::new(&server);
    let (ada, bob) = (http.token("ada").await, http.token("bob").await);
    let (ada_id, bob_id) = (http.open(&ada).await, http.open(&bob).await);
    let mut ada_socket = connect(&server, &ada_id, &ada).await;
    let mut bob_socket = connect(&server, &bob_id, &bob).await;

    send(
        &mut ada_socket,
        json!({"type": "message", "text": "a long answer please"}),
    )
    .await;
    assert_eq!(next_json(&mut ada_socket).await["type"], "start");
    let first = next_json(&mut ada_socket).await;
    assert_eq!(first["type"], "token", "{first}");
    // The tab closes mid-stream: the TCP connection goes, no close frame.
    drop(ada_socket);

    // Everyone else keeps being served.
    let (reply, _, _) = chat(&mut bob_socket, "still there?").await;
    assert_eq!(reply, server::model::reply_tokens("still there?").concat());
    let (code, receipt) = http
        .call("DELETE", &format!("/sessions/{bob_id}"), Some(&bob), None)
        .await;
    assert_eq!((code, receipt["reason"].as_str()), (200, Some("closed")));
    drop(bob_socket);

    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "disconnected"), 1, "ada's tab: {status}");
    assert_eq!(ended(&status, "closed"), 1, "bob's close: {status}");
}
