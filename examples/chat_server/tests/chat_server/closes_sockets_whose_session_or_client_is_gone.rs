//! The WebSocket side of issue 15, defect 2: the server pings; a socket
//! whose client answers nothing (half-open: the client vanished without a
//! FIN) is closed at its idle timeout and its session ends as
//! `disconnected`; a client that reads (and so answers pings) stays. When a
//! session ends for any reason while its socket is open (closed elsewhere,
//! idle timeout), the socket is told and closed with 4410. Real WebSocket
//! clients; wgpu's counters at baseline at the end.

use std::time::Duration;

use super::client::*;
use futures::StreamExt;
use serde_json::json;

#[actix_web::test]
async fn a_silent_client_is_closed_at_its_idle_timeout_and_a_reading_one_stays() {
    let server = start(Settings {
        ping_interval_ms: 100,
        idle_timeout_ms: 500,
        ..test_settings()
    })
    .await;
    let http = Http::new(&server);
    let (ghost, alive) = (http.token("ghost").await, http.token("alive").await);
    let (ghost_id, alive_id) = (http.open(&ghost).await, http.open(&alive).await);
    // The ghost never reads, so it never answers a ping: as a vanished peer.
    let ghost_socket = connect(&server, &ghost_id, &ghost).await;
    let mut alive_socket = connect(&server, &alive_id, &alive).await;

    // The reading client sees pings (tungstenite answers them as it reads)
    // and is still served after several idle timeouts' worth of pings.
    let mut pings = 0;
    while pings < 10 {
        // Bounded only so that a regression fails here instead of hanging.
        let frame = tokio::time::timeout(Duration::from_secs(60), alive_socket.next())
            .await
            .expect("a ping within a minute on a quiet socket");
        match frame {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) => pings += 1,
            other => panic!("expected pings on a quiet socket, got {other:?}"),
        }
    }
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
        "the ghost's session: {status}"
    );
    let (reply, _, _) = chat(&mut alive_socket, "still here").await;
    assert_eq!(reply, server::model::reply_tokens("still here").concat());
    send(&mut alive_socket, json!({"type": "close"})).await;
    let closed = loop {
        let frame = next_json(&mut alive_socket).await;
        if frame["type"] == "closed" {
            break frame;
        }
    };
    assert_eq!(closed["receipt"]["reason"], "closed");
    drop(ghost_socket);
    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "disconnected"), 1, "{status}");
    assert_eq!(ended(&status, "closed"), 1, "{status}");
}

#[actix_web::test]
async fn a_socket_is_closed_with_4410_when_its_session_is_closed_elsewhere() {
    let server = start(test_settings()).await;
    let http = Http::new(&server);
    let token = http.token("ada").await;
    let id = http.open(&token).await;
    let mut socket = connect(&server, &id, &token).await;
    chat(&mut socket, "a turn first").await;

    // Closed over REST (another tab): the open socket is told at once.
    let (code, _) = http
        .call("DELETE", &format!("/sessions/{id}"), Some(&token), None)
        .await;
    assert_eq!(code, 200);
    let (code, why, frames) = close_code(&mut socket).await;
    assert_eq!(code, SESSION_GONE, "{why}; {frames:?}");
    assert!(why.contains("closed"), "{why}");
    assert_eq!(frames.last().unwrap()["code"], "session_gone", "{frames:?}");
    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "closed"), 1, "{status}");
}

#[actix_web::test]
async fn a_socket_is_closed_with_4410_when_its_session_times_out() {
    let mut config = sessionbus::config::Config::default();
    config.expiry.idle_timeout = Some(std::time::Duration::from_secs_f64(0.5));
    let server = ChatServer::start(Options {
        config,
        settings: test_settings(),
        ..Options::default()
    })
    .await
    .unwrap();
    let http = Http::new(&server);
    let token = http.token("ada").await;
    let id = http.open(&token).await;
    let mut socket = connect(&server, &id, &token).await;

    // Ended by the runtime's idle timeout while its socket stays open.
    let (code, why, frames) = close_code(&mut socket).await;
    assert_eq!(code, SESSION_GONE, "{why}; {frames:?}");
    assert!(why.contains("idle_timeout"), "{why}");
    assert!(
        frames.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("idle_timeout"),
        "{frames:?}"
    );
    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "idle_timeout"), 1, "{status}");
}
