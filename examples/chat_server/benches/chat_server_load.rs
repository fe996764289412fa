//! Load on the chat_server example: N concurrent WebSocket clients, each
//! opening a session (HTTP), chatting M turns (every turn a streamed reply
//! with its KV cache growing on the real wgpu adapter), then half of them
//! closing and half simply disconnecting. Reports replies per second and
//! the reply latency (message sent → first token, and → done frame), p50
//! and p99, and checks that nothing leaked.
//!
//! ```text
//! cargo bench -p sessionbus-chat-server --bench chat_server_load -- --clients 200 --turns 5 --token-ms 1
//! ```
//!
//! The server runs in this process (HTTP workers on their own threads); the
//! clients run on a separate 2-thread tokio runtime, over real sockets.

use sessionbus_chat_server as server;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use sessionbus_testkit::percentiles::Latencies;

struct Flags {
    clients: usize,
    turns: usize,
    token_ms: u64,
}

fn flags() -> Flags {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    Flags {
        clients: value("--clients", 200) as usize,
        turns: value("--turns", 5) as usize,
        token_ms: value("--token-ms", 1),
    }
}

/// One client's measurements: (first-token latency, reply latency) per turn.
type Samples = Vec<(Duration, Duration)>;

async fn client(addr: String, id: String, ticket: String, turns: usize, close: bool) -> Samples {
    let url = format!("ws://{addr}/sessions/{id}/ws?ticket={ticket}");
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .expect("upgrade");
    let mut samples = Vec::with_capacity(turns);
    for turn in 0..turns {
        let sent = Instant::now();
        let message = json!({"type": "message", "text": format!("turn {turn} of a load test")});
        socket
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
        let mut first = None;
        loop {
            let Some(Ok(Message::Text(text))) = socket.next().await else {
                panic!("the socket closed mid-reply")
            };
            let frame: Value = serde_json::from_str(&text).unwrap();
            match frame["type"].as_str() {
                Some("token") if first.is_none() => first = Some(sent.elapsed()),
                Some("done") => break,
                Some("error") => panic!("error frame: {frame}"),
                _ => {}
            }
        }
        samples.push((first.expect("at least one token"), sent.elapsed()));
    }
    if close {
        socket
            .send(Message::text(json!({"type": "close"}).to_string()))
            .await
            .unwrap();
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message
                && text.contains("\"closed\"")
            {
                break;
            }
        }
    }
    // Else: dropped without a close frame, a disconnect.
    samples
}

/// `{p50, p99, max}` in milliseconds.
fn millis(samples: &Latencies) -> serde_json::Value {
    let at = |q: f64| samples.at(q).unwrap_or_default().as_secs_f64() * 1e3;
    json!({"p50": at(0.5), "p99": at(0.99), "max": at(1.0)})
}

fn main() -> anyhow::Result<()> {
    let flags = flags();
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let server = server::ChatServer::start(server::Options {
            settings: server::Settings {
                token_interval_ms: flags.token_ms,
                rate_per_sec: 1_000_000,
                rate_burst: 1_000_000,
                // Every load client comes from 127.0.0.1.
                address_rate_per_sec: 1_000_000,
                address_rate_burst: 1_000_000,
                max_unattached_sessions: 1_000_000,
                ..server::Settings::default()
            },
            ..server::Options::default()
        })
        .await?;
        let addr = server.addr.to_string();
        let http = awc::Client::default();
        let base = format!("http://{addr}");
        let mut sessions = Vec::new();
        for i in 0..flags.clients {
            let token: Value = http
                .post(format!("{base}/tokens"))
                .send_json(&json!({"user": format!("load-{i}")}))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .json()
                .await?;
            let token = token["token"].as_str().unwrap().to_string();
            let opened: Value = http
                .post(format!("{base}/sessions"))
                .insert_header(("authorization", format!("Bearer {token}")))
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .json()
                .await?;
            let field = |k: &str| opened[k].as_str().unwrap().to_string();
            sessions.push((field("id"), field("ticket")));
        }

        let turns = flags.turns;
        let client_addr = addr.clone();
        let started = Instant::now();
        let samples: Vec<Samples> = std::thread::spawn(move || {
            let clients = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            clients.block_on(async move {
                let tasks: Vec<_> = sessions
                    .into_iter()
                    .enumerate()
                    .map(|(i, (id, ticket))| {
                        tokio::spawn(client(client_addr.clone(), id, ticket, turns, i % 2 == 0))
                    })
                    .collect();
                let mut all = Vec::new();
                for task in tasks {
                    all.push(task.await.expect("client"));
                }
                all
            })
        })
        .join()
        .expect("clients");
        let elapsed = started.elapsed();

        // Wait for every session to be ended and released, then shut down.
        let status = loop {
            let status = server::status::snapshot(server.state()).await;
            if status["sessions"]["live"] == 0
                && status["sessions"]["releasing"] == 0
                && status["release_queue"]["queued"] == 0
                && status["release_queue"]["in_flight"] == 0
            {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let report = server.shutdown().await;

        let first: Latencies = samples.iter().flatten().map(|s| s.0).collect();
        let reply: Latencies = samples.iter().flatten().map(|s| s.1).collect();
        let tokens_per_reply = server::model::reply_tokens("turn 0 of a load test").len();
        let result = json!({
            "clients": flags.clients,
            "turns_per_client": turns,
            "token_ms": flags.token_ms,
            "tokens_per_reply": tokens_per_reply,
            "replies": reply.len(),
            "seconds": elapsed.as_secs_f64(),
            "replies_per_sec": reply.len() as f64 / elapsed.as_secs_f64(),
            "tokens_per_sec": (reply.len() * tokens_per_reply as u64) as f64 / elapsed.as_secs_f64(),
            "first_token_ms": millis(&first),
            "reply_ms": millis(&reply),
            "ended_by": status["ended_by"],
            "gpu_peak_bytes": status["gpu"]["peak_bytes"],
            "leaked_buffers": report.leaked_buffers,
        });
        println!("{}", serde_json::to_string_pretty(&result)?);
        anyhow::ensure!(report.leaked_buffers == 0, "leaked {} buffers", report.leaked_buffers);
        anyhow::ensure!(
            status["ended_by"]["closed"].as_u64().unwrap_or(0) as usize == flags.clients.div_ceil(2),
            "every closing client's session ended as closed: {}",
            status["ended_by"]
        );
        Ok(())
    })
}
