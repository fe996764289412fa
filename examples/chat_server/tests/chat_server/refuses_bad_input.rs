//! Bad input to the chat_server example, each case as a real client sends
//! it: a clear HTTP status or WebSocket answer, everyone else still served,
//! and nothing leaked (wgpu's counters at baseline at the end of each test).

use super::client::*;
use serde_json::json;

/// Checks an HTTP answer has this status and this `error` code; returns its body.
fn refused((code, body): (u16, serde_json::Value), status: u16, error: &str) -> serde_json::Value {
    assert_eq!(
        (code, body["error"].as_str()),
        (status, Some(error)),
        "{body}"
    );
    body
}

#[actix_web::test]
async fn unknown_forged_and_malformed_ids_and_tokens_are_refused() {
    let server = start(test_settings()).await;
    let http = Http::new(&server);
    let token = http.token("ada").await;
    let forged_id = "0123456789abcdef0123456789abcdef";

    refused(
        http.call(
            "DELETE",
            &format!("/sessions/{forged_id}"),
            Some(&token),
            None,
        )
        .await,
        404,
        "unknown_session",
    );
    refused(
        http.call(
            "POST",
            &format!("/sessions/{forged_id}/messages"),
            Some(&token),
            Some(json!({"text": "hi"})),
        )
        .await,
        404,
        "unknown_session",
    );
    assert_eq!(
        refused_upgrade(with_bearer(&bare_ws_url(&server, forged_id), &token)).await,
        404
    );
    refused(
        http.call(
            "POST",
            &format!("/sessions/{forged_id}/tickets"),
            Some(&token),
            None,
        )
        .await,
        404,
        "unknown_session",
    );
    refused(
        http.call("DELETE", "/sessions/not-a-session", Some(&token), None)
            .await,
        400,
        "bad_session_id",
    );

    // Tokens: none, malformed, forged (right shape, wrong MAC), another user's name on ada's MAC.
    let mac = token.split_once('.').unwrap().1;
    for bad in [
        None,
        Some("garbage"),
        Some(&format!("ada.{}", "0".repeat(64))[..]),
        Some(&format!("eve.{mac}")[..]),
    ] {
        let (code, body) = http.call("POST", "/sessions", bad, None).await;
        assert_eq!(
            (code, body["error"].as_str()),
            (401, Some("unauthenticated")),
            "{bad:?}: {body}"
        );
    }
    let id = http.open(&token).await;
    assert_eq!(
        refused_upgrade(ws_url(&server, &id, "eve.forged")).await,
        401
    );
    // A token in the URL is refused outright (URLs end up in logs), and so
    // is an upgrade with no credentials at all.
    assert_eq!(
        refused_upgrade(format!("{}?token={token}", bare_ws_url(&server, &id))).await,
        401
    );
    assert_eq!(refused_upgrade(bare_ws_url(&server, &id)).await, 401);
    // A ticket opens one socket once, for its own session only.
    let ticket = http.ticket(&token, &id).await;
    let other = http.open(&token).await;
    assert_eq!(
        refused_upgrade(ws_url(&server, &other, &ticket)).await,
        401,
        "another session's ticket"
    );
    assert_eq!(
        refused_upgrade(ws_url(&server, &id, &ticket)).await,
        401,
        "the ticket was used up by the refused attempt"
    );
    let (code, _) = http
        .call("DELETE", &format!("/sessions/{other}"), Some(&token), None)
        .await;
    assert_eq!(code, 200);

    // Bodies: not JSON, unknown fields, a user name that cannot be a token.
    refused(
        http.call("POST", "/tokens", None, Some(json!("not an object")))
            .await,
        400,
        "bad_body",
    );
    refused(
        http.call(
            "POST",
            "/tokens",
            None,
            Some(json!({"user": "a", "admin": true})),
        )
        .await,
        400,
        "bad_body",
    );
    refused(
        http.call("POST", "/tokens", None, Some(json!({"user": "<script>"})))
            .await,
        400,
        "bad_user",
    );

    // A plain GET on the socket's path (no upgrade) is refused and does not
    // take the session's handle with it.
    refused(
        http.call("GET", &format!("/sessions/{id}/ws"), Some(&token), None)
            .await,
        400,
        "bad_handshake",
    );

    // The refused requests changed nothing: ada's session still works.
    let mut socket = connect(&server, &id, &token).await;
    chat(&mut socket, "still fine").await;
    let (code, _) = http
        .call("DELETE", &format!("/sessions/{id}"), Some(&token), None)
        .await;
    assert_eq!(code, 200);
    drop(socket);
    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "closed"), 2, "{status}");
}

#[actix_web::test]
async fn someone_elses_session_is_refused_by_the_runtimes_owner_check() {
    let server = start(test_settings()).await;
    let http = Http::new(&server);
    let (ada, mallory) = (http.token("ada").await, http.token("mallory").await);
    let id = http.open(&ada).await;

    assert_eq!(
        refused_upgrade(with_bearer(&bare_ws_url(&server, &id), &mallory)).await,
        403
    );
    refused(
        http.call(
            "POST",
            &format!("/sessions/{id}/tickets"),
            Some(&mallory),
            None,
        )
        .await,
        403,
        "not_owner",
    );
    refused(
        http.call(
            "POST",
            &format!("/sessions/{id}/messages"),
            Some(&mallory),
            Some(json!({"text": "hi"})),
        )
        .await,
        403,
        "not_owner",
    );
    refused(
        http.call("DELETE", &format!("/sessions/{id}"), Some(&mallory), None)
            .await,
        403,
        "not_owner",
    );

    // Ada's session is untouched, and her socket still picks up her session.
    let mut socket = connect(&server, &id, &ada).await;
    chat(&mut socket, "mine").await;
    let (code, receipt) = http
        .call("DELETE", &format!("/sessions/{id}"), Some(&ada), None)
        .await;
    assert_eq!((code, receipt["reason"].as_str()), (200, Some("closed")));
    drop(socket);
    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "closed"), 1, "{status}");
}

#[actix_web::test]
async fn malformed_frames_get_an_error_and_the_socket_keeps_working() {
    let server = start(test_settings()).await;
    let http = Http::new(&server);
    let token = http.token("ada").await;
    let id = http.open(&token).await;
    let mut socket = connect(&server, &id, &token).await;

    for (frame, code) in [
        ("{not json".to_string(), "malformed"),
        (
            json!({"type": "shout", "text": "hi"}).to_string(),
            "malformed",
        ),
        (json!({"type": "message"}).to_string(), "malformed"),
        (
            json!({"type": "message", "text": ""}).to_string(),
            "bad_message",
        ),
        (
            json!({"type": "message", "text": "x".repeat(4001)}).to_string(),
            "bad_message",
        ),
    ] {
        futures::SinkExt::send(
            &mut socket,
            tokio_tungstenite::tungstenite::Message::text(frame.clone()),
        )
        .await
        .unwrap();
        let answer = next_json(&mut socket).await;
        assert_eq!(
            (answer["type"].as_str(), answer["code"].as_str()),
            (Some("error"), Some(code)),
            "{frame}: {answer}"
        );
    }
    let (reply, _, _) = chat(&mut socket, "after the garbage").await;
    assert_eq!(
        reply,
        server::model::reply_tokens("after the garbage").concat()
    );
    send(&mut socket, json!({"type": "close"})).await;
    assert_eq!(next_json(&mut socket).await["type"], "closed");
    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "closed"), 1, "{status}");
}

#[actix_web::test]
async fn oversized_and_binary_frames_close_the_socket_with_their_code() {
    let server = start(test_settings()).await;
    let http = Http::new(&server);
    let token = http.token("ada").await;
    let (big, binary) = (http.open(&token).await, http.open(&token).await);

    let mut socket = connect(&server, &big, &token).await;
    chat(&mut socket, "first a normal turn").await;
    let huge = json!({"type": "message", "text": "x".repeat(64 * 1024)}).to_string();
    futures::SinkExt::send(
        &mut socket,
        tokio_tungstenite::tungstenite::Message::text(huge),
    )
    .await
    .unwrap();
    let (code, why, _) = close_code(&mut socket).await;
    assert_eq!(code, TOO_BIG, "{why}");
    assert!(why.contains("16384"), "{why}");

    let mut socket = connect(&server, &binary, &token).await;
    futures::SinkExt::send(
        &mut socket,
        tokio_tungstenite::tungstenite::Message::binary(vec![0u8, 159, 146, 150]),
    )
    .await
    .unwrap();
    let (code, why, _) = close_code(&mut socket).await;
    assert_eq!(code, UNSUPPORTED, "{why}");

    // A closed socket is a gone client: both sessions ended as disconnected, memory back.
    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "disconnected"), 2, "{status}");
}

#[actix_web::test]
async fn a_message_after_close_is_refused_as_gone() {
    let server = start(test_settings()).await;
    let http = Http::new(&server);
    let token = http.token("ada").await;
    let id = http.open(&token).await;
    let mut socket = connect(&server, &id, &token).await;
    chat(&mut socket, "before").await;

    let (code, first) = http
        .call("DELETE", &format!("/sessions/{id}"), Some(&token), None)
        .await;
    assert_eq!(code, 200);
    // Closing again is harmless and answers the same receipt.
    let (code, second) = http
        .call("DELETE", &format!("/sessions/{id}"), Some(&token), None)
        .await;
    assert_eq!((code, &second), (200, &first));

    let body = refused(
        http.call(
            "POST",
            &format!("/sessions/{id}/messages"),
            Some(&token),
            Some(json!({"text": "late"})),
        )
        .await,
        410,
        "session_gone",
    );
    assert!(
        body["message"].as_str().unwrap().contains("closed"),
        "{body}"
    );
    assert_eq!(
        refused_upgrade(with_bearer(&bare_ws_url(&server, &id), &token)).await,
        410
    );

    // The socket that was open: a late message gets session_gone, then close 4410.
    send(&mut socket, json!({"type": "message", "text": "late"})).await;
    let (code, why, before) = close_code(&mut socket).await;
    assert_eq!(code, SESSION_GONE, "{why}");
    assert_eq!(before.last().unwrap()["code"], "session_gone", "{before:?}");

    let status = finish(server, &http).await;
    assert_eq!(status["sessions"]["ended"], 1, "exactly one end: {status}");
    assert_eq!(ended(&status, "closed"), 1, "{status}");
}

#[actix_web::test]
async fn a_flood_from_one_owner_is_rate_limited_and_others_keep_being_served() {
    let server = start(Settings {
        rate_per_sec: 1,
        rate_burst: 3,
        ..test_settings()
    })
    .await;
    let http = Http::new(&server);
    let (flooder, carol) = (http.token("flooder").await, http.token("carol").await);
    let id = http.open(&flooder).await;

    // REST: the burst is spent at once; then 429 with a retry hint.
    let mut limited = 0;
    for _ in 0..8 {
        let (code, body) = http
            .call(
                "POST",
                &format!("/sessions/{id}/messages"),
                Some(&flooder),
                Some(json!({"text": "spam"})),
            )
            .await;
        if code == 429 {
            assert_eq!(body["error"], "rate_limited", "{body}");
            limited += 1;
        } else {
            assert_eq!(code, 200, "{body}");
        }
    }
    assert!(limited >= 1, "a flood over REST is limited");

    // WebSocket: every message gets exactly one answer: a reply, busy, or rate_limited.
    let mut socket = connect(&server, &id, &flooder).await;
    const FLOOD: usize = 30;
    for _ in 0..FLOOD {
        send(&mut socket, json!({"type": "message", "text": "spam"})).await;
    }
    // Carol is served meanwhile.
    let carol_id = http.open(&carol).await;
    let mut carol_socket = connect(&server, &carol_id, &carol).await;
    chat(&mut carol_socket, "hello?").await;

    let (mut answers, mut started, mut done, mut rate_limited) = (0, 0, 0, 0);
    while answers < FLOOD || done < started {
        let frame = next_json(&mut socket).await;
        match (frame["type"].as_str().unwrap(), frame["code"].as_str()) {
            ("start", _) => {
                started += 1;
                answers += 1;
            }
            ("done", _) => done += 1,
            ("token", _) => {}
            ("error", Some("rate_limited")) => {
                assert!(frame["retry_after_ms"].as_u64().unwrap() > 0, "{frame}");
                rate_limited += 1;
                answers += 1;
            }
            ("error", Some("busy")) => answers += 1,
            _ => panic!("unexpected frame: {frame}"),
        }
    }
    assert!(rate_limited >= 1, "a flood over the socket is limited");
    // The flooder's socket is still open and usable.
    send(&mut socket, json!({"type": "close"})).await;
    loop {
        let frame = next_json(&mut socket).await;
        if frame["type"] == "closed" {
            break;
        }
        assert!(
            frame["code"] == "rate_limited" || frame["type"] == "token",
            "{frame}"
        );
    }
    send(&mut carol_socket, json!({"type": "close"})).await;
    assert_eq!(next_json(&mut carol_socket).await["type"], "closed");
    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "closed"), 2, "{status}");
}
