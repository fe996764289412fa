//! Soak: the chat_server example with its default limits, for minutes, with
//! hostile and stalled clients next to honest ones. Reports what the honest
//! users saw (reply latency p50/p99/max, errors) and what the others got
//! (how often refused, how their sessions ended), then checks that nothing
//! leaked (wgpu's counters). It measures; it asserts no speed.
//!
//! ```text
//! cargo bench -p sessionbus-chat-server --bench soak -- --seconds 120 --honest 20 --hostile 4 --stalled 4 --silent 4
//! ```
//!
//! Every client plays its own loopback address (127.x.y.z), as separate
//! machines would:
//! - honest (127.1.0.n): one session each, a message, its whole streamed
//!   reply, a short pause, again;
//! - hostile (127.2.0.n): mint names and open sessions as fast as answered,
//!   never attaching;
//! - stalled (127.3.0.n): open, connect over a 2 KiB receive buffer, send
//!   chats and never read; when the server drops it, start over;
//! - silent (127.4.0.n): open, connect, then neither read nor send (a
//!   vanished peer); when reaped, start over.
//!
//! Server and clients share this process: the server's HTTP workers and the
//! runtime have their own threads, the clients run on the System's thread.

use sessionbus_chat_server as server;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use sessionbus_testkit::percentiles::Latencies;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Flags {
    seconds: u64,
    honest: usize,
    hostile: usize,
    stalled: usize,
    silent: usize,
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
        seconds: value("--seconds", 120),
        honest: value("--honest", 20) as usize,
        hostile: value("--hostile", 4) as usize,
        stalled: value("--stalled", 4) as usize,
        silent: value("--silent", 4) as usize,
    }
}

/// What the clients saw, by kind (the clients share one thread).
#[derive(Default)]
struct Tally {
    /// How long each honest reply took, from sending the message.
    honest_replies: Latencies,
    honest_errors: Vec<String>,
    /// HTTP answers to the hostile clients, by status.
    hostile: BTreeMap<u16, u64>,
    stalled_sessions: u64,
    silent_sessions: u64,
}

type Shared = Rc<RefCell<Tally>>;

/// An HTTP client whose connections come from `ip`.
struct Http {
    base: String,
    client: awc::Client,
}

impl Http {
    fn new(server: SocketAddr, ip: [u8; 4]) -> Self {
        Http {
            base: format!("http://{server}"),
            client: awc::Client::builder()
                .connector(awc::Connector::new().local_address(IpAddr::from(ip)))
                .timeout(Duration::from_secs(30))
                .finish(),
        }
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.post(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.insert_header(("authorization", format!("Bearer {token}")));
        }
        let sent = match body {
            Some(body) => request.send_json(&body).await,
            None => request.send().await,
        };
        match sent {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or(Value::Null);
                (status, body)
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// A token, a session and its ticket, or the refusal.
    async fn session(&self, user: &str) -> Result<(String, String), String> {
        let (code, token) = self
            .post("/tokens", None, Some(json!({"user": user})))
            .await;
        let token = token["token"]
            .as_str()
            .ok_or(format!("token {code}: {token}"))?
            .to_string();
        let (code, opened) = self.post("/sessions", Some(&token), None).await;
        match (opened["id"].as_str(), opened["ticket"].as_str()) {
            (Some(id), Some(ticket)) => Ok((id.to_string(), ticket.to_string())),
            _ => Err(format!("open {code}: {opened}")),
        }
    }
}

async fn socket(
    server: SocketAddr,
    ip: [u8; 4],
    id: &str,
    ticket: &str,
    tiny: bool,
) -> Option<Socket> {
    let tcp = tokio::net::TcpSocket::new_v4().ok()?;
    if tiny {
        tcp.set_recv_buffer_size(2048).ok()?;
    }
    tcp.bind(SocketAddr::from((ip, 0))).ok()?;
    let stream = tcp.connect(server).await.ok()?;
    let url = format!("ws://{server}/sessions/{id}/ws?ticket={ticket}");
    let (socket, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .ok()?;
    Some(socket)
}

async fn honest(server: SocketAddr, n: u8, until: Instant, tally: Shared) {
    let ip = [127, 1, 0, n];
    let http = Http::new(server, ip);
    let fail = |e: String| tally.borrow_mut().honest_errors.push(e);
    let (id, ticket) = match http.session(&format!("honest-{n}")).await {
        Ok(opened) => opened,
        Err(e) => return fail(e),
    };
    let Some(mut socket) = socket(server, ip, &id, &ticket, false).await else {
        return fail("the upgrade failed".into());
    };
    let mut turn = 0;
    while Instant::now() < until {
        turn += 1;
        let sent = Instant::now();
        let message = json!({"type": "message", "text": format!("turn {turn}, honest {n}")});
        if socket
            .send(Message::text(message.to_string()))
            .await
            .is_err()
        {
            return fail("the socket closed under an honest client".into());
        }
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    match frame["type"].as_str() {
                        Some("done") => break,
                        Some("error") => {
                            fail(format!("error frame: {frame}"));
                            break;
                        }
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                other => return fail(format!("the socket ended mid-reply: {other:?}")),
            }
        }
        tally.borrow_mut().honest_replies.record(sent.elapsed());
        // Well under the per-owner message rate (5/s by default).
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = socket
        .send(Message::text(json!({"type": "close"}).to_string()))
        .await;
    while let Some(Ok(message)) = socket.next().await {
        if matches!(&message, Message::Text(t) if t.contains("\"closed\"")) {
            break;
        }
    }
}

async fn hostile(server: SocketAddr, n: u8, until: Instant, tally: Shared) {
    let http = Http::new(server, [127, 2, 0, n]);
    let mut minted = 0u64;
    while Instant::now() < until {
        minted += 1;
        let (code, body) = http
            .post(
                "/tokens",
                None,
                Some(json!({"user": format!("mint-{n}-{minted}")})),
            )
            .await;
        *tally.borrow_mut().hostile.entry(code).or_default() += 1;
        let Some(token) = body["token"].as_str() else {
            // Refused: try again as soon as the server answers (no backoff).
            tokio::task::yield_now().await;
            continue;
        };
        for _ in 0..10 {
            let (code, _) = http.post("/sessions", Some(token), None).await;
            *tally.borrow_mut().hostile.entry(code).or_default() += 1;
        }
    }
}

async fn stalled(server: SocketAddr, n: u8, until: Instant, tally: Shared) {
    let ip = [127, 3, 0, n];
    let http = Http::new(server, ip);
    let word = "w".repeat(300);
    let frame = json!({"type": "message", "text": vec![word; 12].join(" ")}).to_string();
    let mut round = 0;
    while Instant::now() < until {
        round += 1;
        let Ok((id, ticket)) = http.session(&format!("stalled-{n}-{round}")).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let Some(mut socket) = socket(server, ip, &id, &ticket, true).await else {
            continue;
        };
        tally.borrow_mut().stalled_sessions += 1;
        while Instant::now() < until {
            let sending = socket.send(Message::text(frame.clone()));
            match tokio::time::timeout(Duration::from_secs(1), sending).await {
                Ok(Ok(())) => tokio::time::sleep(Duration::from_millis(5)).await,
                _ => break, // dropped by the server, or it stopped reading
            }
        }
    }
}

async fn silent(server: SocketAddr, n: u8, until: Instant, tally: Shared) {
    let ip = [127, 4, 0, n];
    let http = Http::new(server, ip);
    let mut round = 0;
    while Instant::now() < until {
        round += 1;
        let Ok((id, ticket)) = http.session(&format!("silent-{n}-{round}")).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let Some(socket) = socket(server, ip, &id, &ticket, false).await else {
            continue;
        };
        tally.borrow_mut().silent_sessions += 1;
        // Neither reads nor sends: holds the socket until the server's idle
        // timeout would have reaped it, then starts over.
        let idle = Duration::from_millis(server::Settings::default().idle_timeout_ms);
        tokio::time::sleep(idle + Duration::from_secs(1)).await;
        drop(socket);
    }
}

/// The reply time at quantile `q` in milliseconds; null without replies.
fn millis(replies: &Latencies, q: f64) -> Value {
    json!(replies.at(q).map(|d| d.as_secs_f64() * 1e3))
}

fn main() -> anyhow::Result<()> {
    let flags = flags();
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let server = server::ChatServer::start(server::Options {
            settings: server::Settings {
                token_interval_ms: 5,
                ..server::Settings::default()
            },
            ..server::Options::default()
        })
        .await?;
        let addr = server.addr;
        let until = Instant::now() + Duration::from_secs(flags.seconds);
        let tally: Shared = Rc::default();
        let mut tasks = Vec::new();
        for n in 1..=flags.hostile as u8 {
            tasks.push(actix_web::rt::spawn(hostile(addr, n, until, tally.clone())));
        }
        for n in 1..=flags.stalled as u8 {
            tasks.push(actix_web::rt::spawn(stalled(addr, n, until, tally.clone())));
        }
        for n in 1..=flags.silent as u8 {
            tasks.push(actix_web::rt::spawn(silent(addr, n, until, tally.clone())));
        }
        for n in 1..=flags.honest as u8 {
            tasks.push(actix_web::rt::spawn(honest(addr, n, until, tally.clone())));
        }
        eprintln!(
            "soak: {} honest, {} hostile, {} stalled, {} silent clients for {} s",
            flags.honest, flags.hostile, flags.stalled, flags.silent, flags.seconds
        );
        for task in tasks {
            let _ = task.await;
        }
        let status = server::status::snapshot(server.state()).await;
        let report = server.shutdown().await;

        let tally = tally.borrow();
        let replies = &tally.honest_replies;
        let result = json!({
            "seconds": flags.seconds,
            "honest": {
                "clients": flags.honest,
                "replies": replies.len(),
                "reply_ms": {
                    "p50": millis(replies, 0.5),
                    "p99": millis(replies, 0.99),
                    "max": millis(replies, 1.0),
                },
                "errors": tally.honest_errors.len(),
                "first_errors": tally.honest_errors.iter().take(5).collect::<Vec<_>>(),
            },
            "hostile": {
                "clients": flags.hostile,
                "answers_by_status": tally.hostile,
            },
            "stalled": { "clients": flags.stalled, "sessions": tally.stalled_sessions },
            "silent": { "clients": flags.silent, "sessions": tally.silent_sessions },
            "server": {
                "ended_by": status["ended_by"],
                "sessions": status["sessions"],
                "admission": status["admission"],
                "gpu_peak_bytes": status["gpu"]["peak_bytes"],
            },
            "leaked_buffers": report.leaked_buffers,
        });
        println!("{}", serde_json::to_string_pretty(&result)?);
        anyhow::ensure!(
            report.leaked_buffers == 0,
            "leaked {} buffers",
            report.leaked_buffers
        );
        Ok(())
    })
}
