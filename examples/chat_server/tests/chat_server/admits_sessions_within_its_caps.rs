//! What keeps one client from filling the chat_server (issue 15): a cap on
//! each owner's live sessions, a global cap on sessions nobody has attached
//! to yet, an attach timeout for those, short-lived tokens, and probes an
//! orchestrator can read. Real HTTP and WebSocket clients; wgpu's counters
//! back at baseline at the end of each test.

use std::time::{Duration, SystemTime};

use super::client::*;
use serde_json::json;

fn refused((code, body): (u16, serde_json::Value), status: u16, error: &str) {
    assert_eq!(
        (code, body["error"].as_str()),
        (status, Some(error)),
        "{body}"
    );
}

#[actix_web::test]
async fn one_owner_has_at_most_its_cap_of_live_sessions() {
    let server = start(Settings {
        max_sessions_per_owner: 3,
        ..test_settings()
    })
    .await;
    let http = Http::new(&server);
    let (ada, bob) = (http.token("ada").await, http.token("bob").await);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(http.open(&ada).await);
    }
    refused(
        http.call("POST", "/sessions", Some(&ada), None).await,
        429,
        "too_many_sessions",
    );
    // Others are not affected.
    let bobs = http.open(&bob).await;
    // Attached or not, a live session counts; a closed one frees its place.
    let socket = connect(&server, &ids[0], &ada).await;
    refused(
        http.call("POST", "/sessions", Some(&ada), None).await,
        429,
        "too_many_sessions",
    );
    let (code, _) = http
        .call("DELETE", &format!("/sessions/{}", ids[1]), Some(&ada), None)
        .await;
    assert_eq!(code, 200);
    ids.push(http.open(&ada).await);

    drop(socket);
    for id in ids.iter().skip(1).chain([&bobs]) {
        let token = if id == &bobs { &bob } else { &ada };
        let _ = http
            .call("DELETE", &format!("/sessions/{id}"), Some(token), None)
            .await;
    }
    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "closed"), 4, "{status}");
    assert_eq!(ended(&status, "disconnected"), 1, "{status}");
}

#[actix_web::test]
async fn sessions_nobody_attaches_to_are_capped_then_end_as_disconnected() {
    let server = start(Settings {
        max_unattached_sessions: 2,
        attach_timeout_ms: 300,
        ..test_settings()
    })
    .await;
    let http = Http::new(&server);
    let token = http.token("ada").await;
    let (first, second) = (http.open(&token).await, http.open(&token).await);
    let (code, body) = http.call("POST", "/sessions", Some(&token), None).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (503, Some("too_many_unattached")),
        "{body}"
    );
    // Attaching one frees its place at once.
    let mut socket = connect(&server, &first, &token).await;
    let third = http.open(&token).await;

    // Nobody attaches to the other two: they end as disconnected, memory back.
    let mut status = http.status().await;
    for _ in 0..600 {
        if ended(&status, "disconnected") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = http.status().await;
    }
    assert_eq!(ended(&status, "disconnected"), 2, "{status}");
    assert_eq!(status["admission"]["unattached"], 0, "{status}");
    // A late socket for one of them is told it is gone.
    assert_eq!(
        refused_upgrade(with_bearer(&bare_ws_url(&server, &second), &token)).await,
        410
    );
    let _ = third;
    // The attached one is still served.
    chat(&mut socket, "still mine").await;
    send(&mut socket, json!({"type": "close"})).await;
    assert_eq!(next_json(&mut socket).await["type"], "closed");
    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "closed"), 1, "{status}");
    assert_eq!(ended(&status, "disconnected"), 2, "{status}");
}

#[actix_web::test]
async fn parked_sessions_that_end_on_their_own_free_their_places() {
    // The runtime ends idle sessions after 200 ms; the parked handles must
    // not keep the unattached cap full.
    let mut config = sessionbus::config::Config::default();
    config.expiry.idle_timeout = Some(std::time::Duration::from_secs_f64(0.2));
    let server = ChatServer::start(Options {
        config,
        settings: Settings {
            max_unattached_sessions: 3,
            ..test_settings()
        },
        ..Options::default()
    })
    .await
    .unwrap();
    let http = Http::new(&server);
    let token = http.token("ada").await;
    for _ in 0..3 {
        http.open(&token).await;
    }
    let mut status = http.status().await;
    for _ in 0..600 {
        if ended(&status, "idle_timeout") == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = http.status().await;
    }
    assert_eq!(ended(&status, "idle_timeout"), 3, "{status}");
    // All three places are free again.
    let ids: Vec<String> = futures::future::join_all((0..3).map(|_| http.open(&token))).await;
    for id in &ids {
        let (code, _) = http
            .call("DELETE", &format!("/sessions/{id}"), Some(&token), None)
            .await;
        assert_eq!(code, 200);
    }
    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "closed"), 3, "{status}");
}

#[actix_web::test]
async fn an_expired_token_is_refused_and_identity_is_pluggable() {
    let issuer = std::sync::Arc::new(server::DemoIssuer::new(Duration::from_secs(60)));
    let server = ChatServer::start(Options {
        settings: test_settings(),
        identity: Some(issuer.clone()),
        ..Options::default()
    })
    .await
    .unwrap();
    let http = Http::new(&server);
    let expired = issuer
        .issue_until("ada", SystemTime::now() - Duration::from_secs(1))
        .unwrap();
    refused(
        http.call("POST", "/sessions", Some(&expired), None).await,
        401,
        "token_expired",
    );
    // The expiry is signed: moving it forward makes the token a forgery.
    let (user_and_expiry, mac) = expired.rsplit_once('.').unwrap();
    let (user, _) = user_and_expiry.split_once('.').unwrap();
    let extended = format!("{user}.99999999999999.{mac}");
    refused(
        http.call("POST", "/sessions", Some(&extended), None).await,
        401,
        "unauthenticated",
    );
    // The issuer the test handed in is the one the server checks with.
    let (code, body) = http
        .call("POST", "/tokens", None, Some(json!({"user": "ada"})))
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["expires_in_secs"], 60, "{body}");
    let token = body["token"].as_str().unwrap();
    let id = http.open(token).await;
    let (code, _) = http
        .call("DELETE", &format!("/sessions/{id}"), Some(token), None)
        .await;
    assert_eq!(code, 200);
    finish(server, &http).await;
}

/// An identity that issues nothing: tokens come from elsewhere.
struct FixedUsers;

impl server::Identity for FixedUsers {
    fn verify(&self, token: &str) -> Result<sessionbus::Owner, server::error::ApiError> {
        match token {
            "secret-of-ada" => Ok(sessionbus::Owner::new("ada")),
            _ => Err(server::error::ApiError::Unauthenticated("unknown token")),
        }
    }
}

#[actix_web::test]
async fn an_application_identity_replaces_the_demo_issuer() {
    let server = ChatServer::start(Options {
        settings: test_settings(),
        identity: Some(std::sync::Arc::new(FixedUsers)),
        ..Options::default()
    })
    .await
    .unwrap();
    let http = Http::new(&server);
    refused(
        http.call("POST", "/tokens", None, Some(json!({"user": "eve"})))
            .await,
        404,
        "no_issuer",
    );
    let id = http.open("secret-of-ada").await;
    let mut socket = connect(&server, &id, "secret-of-ada").await;
    chat(&mut socket, "hello").await;
    send(&mut socket, json!({"type": "close"})).await;
    assert_eq!(next_json(&mut socket).await["type"], "closed");
    finish(server, &http).await;
}

#[actix_web::test]
async fn probes_say_alive_and_ready_until_the_shutdown_begins() {
    let server = start(test_settings()).await;
    let http = Http::new(&server);
    let (code, body) = http.call("GET", "/healthz", None, None).await;
    assert_eq!((code, &body["status"]), (200, &json!("alive")));
    let (code, body) = http.call("GET", "/readyz", None, None).await;
    assert_eq!((code, &body["status"]), (200, &json!("ready")));
    server
        .state()
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (code, body) = http.call("GET", "/readyz", None, None).await;
    assert_eq!((code, &body["error"]), (503, &json!("not_ready")), "{body}");
    let (code, _) = http.call("GET", "/healthz", None, None).await;
    assert_eq!(code, 200);
    finish(server, &http).await;
}

#[actix_web::test]
async fn the_rate_limiters_key_sets_stay_bounded() {
    let server = start(Settings {
        limiter_max_keys: 3,
        ..test_settings()
    })
    .await;
    // Twelve client addresses, each minting a name: at most three keys and
    // the shared overflow bucket are kept.
    for n in 1..=12u8 {
        let http = Http::from_address(&server, [127, 0, 1, n]);
        http.token(&format!("user-{n}")).await;
    }
    let http = Http::new(&server);
    let status = http.status().await;
    let keys = status["admission"]["limiter_keys"]["address"]
        .as_u64()
        .unwrap();
    assert!(
        keys <= 4,
        "at most max_keys + the overflow bucket: {status}"
    );
    finish(server, &http).await;
}

#[test]
fn bind_takes_an_address_and_port_overrides_its_port() {
    use clap::Parser;
    let args = server::cli::Args::parse_from(["chat_server", "--bind", "127.0.0.2:9000"]);
    assert_eq!(args.options().unwrap().bind.to_string(), "127.0.0.2:9000");
    let args =
        server::cli::Args::parse_from(["chat_server", "--bind", "127.0.0.2:9000", "--port", "0"]);
    assert_eq!(args.options().unwrap().bind.to_string(), "127.0.0.2:0");
    assert!(
        server::cli::Args::try_parse_from(["chat_server", "--bind", "localhost"]).is_err(),
        "not an IP:PORT"
    );
}
