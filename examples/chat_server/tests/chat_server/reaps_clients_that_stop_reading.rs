//! Issue 15, defect 2: "a client that stops reading may pin its session and
//! memory". A real WebSocket client with a 2 KiB socket receive buffer sends
//! chats and never reads; its session must end as `disconnected` with its
//! lease returned (no forced drain) and its GPU memory released (wgpu's
//! counters at baseline), while an honest client on the same server keeps
//! being served.

use std::time::Duration;

use super::client::*;
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket to session `id` over a TCP socket with a tiny receive buffer.
async fn tiny_buffer_socket(url: String, server: &ChatServer) -> Socket {
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(2048).unwrap();
    let stream = tcp.connect(server.addr).await.unwrap();
    let (socket, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .expect("the WebSocket upgrade is accepted");
    socket
}

/// Sends chats and never reads, until its session has ended, the server
/// stops taking frames (the socket errors, or a send does not complete), or
/// two minutes have passed (a liveness bound: the assertions below say which).
async fn flood_without_reading(socket: &mut Socket, http: &Http) -> usize {
    // Twelve long words: a dozen reply tokens are 3 000 bytes each.
    let word = "w".repeat(3000);
    let prompt = vec![word; 12].join(" ");
    let frame = json!({"type": "message", "text": prompt}).to_string();
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut sent = 0;
    while tokio::time::Instant::now() < until {
        let sending = socket.send(Message::text(frame.clone()));
        match tokio::time::timeout(Duration::from_secs(1), sending).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) | Err(_) => break,
        }
        if sent % 50 == 0 && ended(&http.status().await, "disconnected") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    sent
}

#[actix_web::test]
async fn a_client_that_never_reads_ends_as_disconnected_and_others_are_served() {
    let server = start(Settings {
        // Replies as fast as the GPU writes go: the socket's buffers fill quickly.
        token_interval_ms: 0,
        send_timeout_ms: 500,
        // Long prompts, so that every reply is tens of kilobytes.
        max_message_chars: 40_000,
        max_frame_bytes: 64 * 1024,
        // Only a timed-out send can end the stalled session within the test.
        idle_timeout_ms: 600_000,
        ..test_settings()
    })
    .await;
    let http = Http::new(&server);
    let (staller, honest) = (http.token("staller").await, http.token("honest").await);
    let ((stalled_id, ticket), honest_id) = (
        http.open_with_ticket(&staller).await,
        http.open(&honest).await,
    );
    let mut honest_socket = connect(&server, &honest_id, &honest).await;
    let mut stalled = tiny_buffer_socket(ws_url(&server, &stalled_id, &ticket), &server).await;

    let sent = flood_without_reading(&mut stalled, &http).await;
    println!("the stalled client sent {sent} chats, never reading");

    // The honest client is served meanwhile.
    let (reply, _, _) = chat(&mut honest_socket, "are you still there?").await;
    assert_eq!(
        reply,
        server::model::reply_tokens("are you still there?").concat()
    );

    // The stalled session ends as disconnected (a liveness bound, not a speed check).
    let mut status = http.status().await;
    for _ in 0..600 {
        if ended(&status, "disconnected") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = http.status().await;
    }
    assert_eq!(
        ended(&status, "disconnected"),
        1,
        "the stalled session never ended within 60 s: {status}"
    );
    let stats = server.state().engine.stats().await.unwrap();
    assert_eq!(
        stats.drains_forced, 0,
        "its lease was returned, not forced: {stats:?}"
    );

    // The honest client still chats, then closes.
    chat(&mut honest_socket, "one more").await;
    send(&mut honest_socket, json!({"type": "close"})).await;
    assert_eq!(next_json(&mut honest_socket).await["type"], "closed");
    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "disconnected"), 1, "{status}");
    assert_eq!(ended(&status, "closed"), 1, "{status}");
    drop(stalled);
}
