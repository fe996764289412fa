//! SIGTERM to a running chat_server process: the graceful shutdown ends
//! every session (reason `shutdown`, a stream in flight included), tells
//! the open sockets, releases every KV block and slab, and prints its report.
//!
//! The server process is this test binary itself, re-run with only the
//! ignored `server_process` test, which calls the example's own `cli::run`
//! (the same code `cargo run -p sessionbus-chat-server` runs).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use super::client::*;
use serde_json::{Value, json};

const CHILD: &str = "CHAT_SERVER_TEST_CHILD";

#[test]
#[ignore = "the server process of sigterm_runs_the_graceful_shutdown (does nothing when run by hand)"]
fn server_process() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    use clap::Parser;
    let args = server::cli::Args::parse_from(["chat_server", "--port", "0", "--token-ms", "50"]);
    server::cli::run(args).expect("the server runs and shuts down cleanly");
}

#[actix_web::test]
async fn sigterm_runs_the_graceful_shutdown() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "shuts_down_on_sigterm::server_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var_os("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("the server process starts");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut log = Vec::new();
    let addr = loop {
        let line = lines.recv().await.expect("the server prints LISTENING");
        log.push(line.clone());
        if let Some(addr) = line.strip_prefix("LISTENING ") {
            break addr.to_string();
        }
    };

    // A client mid-stream and an idle session parked, when the signal comes.
    let http = Http::at(&addr);
    let token = http.token("ada").await;
    let ((streaming, ticket), parked) =
        (http.open_with_ticket(&token).await, http.open(&token).await);
    let url = format!("ws://{addr}/sessions/{streaming}/ws?ticket={ticket}");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    send(
        &mut socket,
        json!({"type": "message", "text": "a long reply"}),
    )
    .await;
    assert_eq!(next_json(&mut socket).await["type"], "start");
    assert_eq!(next_json(&mut socket).await["type"], "token");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // The socket is told: the stream ends with session_gone (the shutdown
    // ended the session), then the server closes it as going away.
    let (code, why, frames) = close_code(&mut socket).await;
    assert_eq!(code, GOING_AWAY, "{why}; frames: {frames:?}");
    assert!(
        frames
            .iter()
            .any(|f| f["code"] == "session_gone"
                && f["message"].as_str().unwrap().contains("shutdown")),
        "{frames:?}"
    );

    let report: Value = loop {
        let line = lines
            .recv()
            .await
            .unwrap_or_else(|| panic!("no SHUTDOWN line; log:\n{}", log.join("\n")));
        log.push(line.clone());
        if let Some(json) = line.strip_prefix("SHUTDOWN ") {
            break serde_json::from_str(json).unwrap();
        }
    };
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "the server exits cleanly; log:\n{}",
        log.join("\n")
    );
    assert_eq!(report["leaked_buffers"], 0, "{report}");
    assert_eq!(
        report["runtime"]["gpu_after"], report["gpu_baseline"],
        "{report}"
    );
    assert_eq!(
        report["runtime"]["sessions"]["sessions_ended"], 2,
        "both sessions: {report}"
    );
    let ended_by = &report["runtime"]["sessions"]["stats"]["ended_by"];
    assert_eq!(ended_by, &json!([["shutdown", 2]]), "{report}");
    // The streaming conversation's KV blocks, in a slab given back at the end.
    let kv = &report["runtime"]["sessions"]["stats"]["kv"];
    assert!(
        kv["blocks_allocated_total"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert_eq!(kv["blocks_referenced"], 0, "{report}");
    assert_eq!(kv["blocks_total"], 0, "every slab destroyed: {report}");
    assert_eq!(kv["slabs_created"], kv["slabs_trimmed"], "{report}");
    assert_eq!(report["websockets_closed"], 1, "{report}");
    let _ = parked;
}
