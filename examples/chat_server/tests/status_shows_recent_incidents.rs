//! `/status` of the chat_server example lists recent incidents: the WARN and
//! ERROR supervisor lines its tracing layer keeps. The incident here is a
//! real one: GPU memory without a session (fault injection), found and
//! released by the runtime's sweeper.

#[path = "chat_server/client.rs"]
mod client;

use client::*;
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[actix_web::test]
async fn status_shows_the_sweepers_find_as_a_recent_incident() {
    let incidents = server::incidents::Incidents::default();
    // This test binary's only test: the layer is the process's subscriber.
    tracing_subscriber::registry()
        .with(incidents.layer())
        .init();
    let mut config = sessionbus::config::Config::default();
    config.expiry.sweep_interval = std::time::Duration::from_secs_f64(0.05);
    let server = ChatServer::start(Options {
        config,
        settings: test_settings(),
        incidents,
        ..Options::default()
    })
    .await
    .unwrap();
    let http = Http::new(&server);
    let token = http.token("ada").await;
    let id = http.open(&token).await;
    let mut socket = connect(&server, &id, &token).await;
    chat(&mut socket, "a live session next to the orphan").await;

    let status = http.status().await;
    assert_eq!(status["incidents"]["recent"], json!([]), "{status}");
    server
        .state()
        .engine
        .inject_orphan_allocation(64 * 1024)
        .await
        .unwrap();
    let incident = loop {
        let status = http.status().await;
        if let Some(first) = status["incidents"]["recent"]
            .as_array()
            .and_then(|r| r.first())
        {
            assert_eq!(status["incidents"]["sweeper"], 1, "{status}");
            break first.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(incident["level"], "WARN", "{incident}");
    assert_eq!(incident["target"], "sessionbus::supervisor", "{incident}");
    assert_eq!(
        incident["fields"]["event"], "sweeper.orphaned_memory",
        "{incident}"
    );

    // The live session is untouched; the orphan's memory comes back too.
    let (reply, _, _) = chat(&mut socket, "still here").await;
    assert_eq!(reply, server::model::reply_tokens("still here").concat());
    send(&mut socket, json!({"type": "close"})).await;
    assert_eq!(next_json(&mut socket).await["type"], "closed");
    let status = finish(server, &http).await;
    assert_eq!(ended(&status, "closed"), 1, "{status}");
}
