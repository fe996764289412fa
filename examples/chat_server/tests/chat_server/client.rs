//! Real clients for the chat_server example: an HTTP client (awc) and a
//! WebSocket client (tokio-tungstenite, an implementation independent of
//! the server's), plus the server itself, run in-process on a free port.
#![allow(dead_code)]

/// The example's server (this package's library).
pub use sessionbus_chat_server as server;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub use server::{ChatServer, Options, Settings};

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Knobs for tests: quick tokens, generous rate limits and caps unless a
/// test floods (every test client comes from 127.0.0.1).
pub fn test_settings() -> Settings {
    Settings {
        token_interval_ms: 1,
        rate_per_sec: 1000,
        rate_burst: 1000,
        address_rate_per_sec: 1000,
        address_rate_burst: 1000,
        max_sessions_per_owner: 1000,
        ..Settings::default()
    }
}

/// `test_settings` on the whole-buffer path: one wgpu buffer per KV block.
pub fn buffer_settings() -> Settings {
    Settings {
        kv_blocks: false,
        ..test_settings()
    }
}

pub async fn start(settings: Settings) -> ChatServer {
    ChatServer::start(Options {
        settings,
        ..Options::default()
    })
    .await
    .expect("the chat server starts on a real adapter (install mesa-vulkan-drivers)")
}

/// An HTTP client of one server.
pub struct Http {
    base: String,
    client: awc::Client,
}

impl Http {
    pub fn new(server: &ChatServer) -> Self {
        Self::at(&server.addr.to_string())
    }

    /// A client of the server at `addr` (`host:port`).
    pub fn at(addr: &str) -> Self {
        Http {
            base: format!("http://{addr}"),
            client: awc::Client::builder()
                .timeout(Duration::from_secs(60))
                .finish(),
        }
    }

    /// A client whose connections come from `ip` (any 127.x.y.z is this
    /// machine's loopback), so that tests can play several client addresses.
    pub fn from_address(server: &ChatServer, ip: [u8; 4]) -> Self {
        let connector = awc::Connector::new().local_address(std::net::IpAddr::from(ip));
        Http {
            base: format!("http://{}", server.addr),
            client: awc::Client::builder()
                .connector(connector)
                .timeout(Duration::from_secs(60))
                .finish(),
        }
    }

    /// Any request; answers the status and the body (JSON, or a string).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.insert_header(("authorization", format!("Bearer {token}")));
        }
        let mut response = match body {
            Some(body) => request.send_json(&body).await,
            None => request.send().await,
        }
        .expect("the server answers");
        let status = response.status().as_u16();
        let bytes = response.body().limit(8 << 20).await.expect("a body");
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    pub async fn token(&self, user: &str) -> String {
        let (status, body) = self
            .call("POST", "/tokens", None, Some(json!({"user": user})))
            .await;
        assert_eq!(status, 201, "token for {user}: {body}");
        body["token"].as_str().unwrap().to_string()
    }

    pub async fn open(&self, token: &str) -> String {
        self.open_with_ticket(token).await.0
    }

    /// Opens a session: its id and the one-time ticket for its socket.
    pub async fn open_with_ticket(&self, token: &str) -> (String, String) {
        let (status, body) = self.call("POST", "/sessions", Some(token), None).await;
        assert_eq!(status, 201, "open: {body}");
        let field = |k: &str| body[k].as_str().unwrap().to_string();
        (field("id"), field("ticket"))
    }

    /// A fresh one-time ticket for session `id`'s socket.
    pub async fn ticket(&self, token: &str, id: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                &format!("/sessions/{id}/tickets"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status, 201, "ticket: {body}");
        body["ticket"].as_str().unwrap().to_string()
    }

    pub async fn status(&self) -> Value {
        let (status, body) = self.call("GET", "/status", None, None).await;
        assert_eq!(status, 200);
        body
    }

    /// Waits until no session is live or releasing and nothing is queued,
    /// then checks wgpu's own counters against their baseline. With KV
    /// blocks, the slabs stay while they hold a cached prefix (by design:
    /// `finish` checks the counters after the shutdown); what must be back
    /// is every block reference.
    pub async fn until_quiet_at_baseline(&self) -> Value {
        for _ in 0..3000 {
            let s = self.status().await;
            let quiet = s["sessions"]["live"] == 0
                && s["sessions"]["releasing"] == 0
                && s["release_queue"]["queued"] == 0
                && s["release_queue"]["in_flight"] == 0;
            if quiet {
                let kv = &s["kv"];
                if kv.is_null() || kv["blocks_total"] == 0 {
                    assert_eq!(
                        s["gpu_counters"], s["gpu_counters_baseline"],
                        "wgpu counters (hal.buffers, hal.buffer_memory) back at baseline: {s}"
                    );
                    assert_eq!(s["gpu"]["live_buffers"], 0, "{s}");
                } else {
                    assert_eq!(kv["blocks_referenced"], 0, "every block given back: {s}");
                    assert_eq!(kv["blocks_held_by_released_tables"], 0, "{s}");
                }
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the server never became quiet: {}", self.status().await);
    }
}

/// The socket URL of session `id` with a one-time `ticket`.
pub fn ws_url(server: &ChatServer, id: &str, ticket: &str) -> String {
    format!("ws://{}/sessions/{id}/ws?ticket={ticket}", server.addr)
}

/// Opens the chat socket of session `id`, as a browser does: a one-time
/// ticket (asked for with the bearer token), then the upgrade with it.
pub async fn connect(server: &ChatServer, id: &str, token: &str) -> Socket {
    let ticket = Http::new(server).ticket(token, id).await;
    let (socket, _) = tokio_tungstenite::connect_async(ws_url(server, id, &ticket))
        .await
        .expect("the WebSocket upgrade is accepted");
    socket
}

/// The upgrade request for `url` with `Authorization: Bearer token` (how a
/// client that can set headers connects).
pub fn with_bearer(
    url: &str,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The socket URL of session `id` with no credentials in it.
pub fn bare_ws_url(server: &ChatServer, id: &str) -> String {
    format!("ws://{}/sessions/{id}/ws", server.addr)
}

/// The HTTP status a refused upgrade answered with.
pub async fn refused_upgrade(
    url: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected the upgrade to be refused"),
    }
}

pub async fn send(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::text(frame.to_string()))
        .await
        .expect("the socket takes the frame");
}

/// What the server sent next.
#[derive(Debug)]
pub enum Received {
    Json(Value),
    Closed(Option<(u16, String)>),
}

pub async fn next(socket: &mut Socket) -> Received {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), socket.next())
            .await
            .expect("the server sends something");
        match message {
            None => return Received::Closed(None),
            Some(Err(e)) => panic!("socket error: {e}"),
            Some(Ok(Message::Text(text))) => {
                return Received::Json(serde_json::from_str(&text).expect("JSON frames"));
            }
            Some(Ok(Message::Close(frame))) => {
                return Received::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
            Some(Ok(_)) => continue,
        }
    }
}

pub async fn next_json(socket: &mut Socket) -> Value {
    match next(socket).await {
        Received::Json(v) => v,
        Received::Closed(c) => panic!("expected a frame, the socket closed: {c:?}"),
    }
}

/// The close code the server ends the socket with (skipping frames before it).
pub async fn close_code(socket: &mut Socket) -> (u16, String, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        match next(socket).await {
            Received::Json(v) => before.push(v),
            Received::Closed(Some((code, why))) => return (code, why, before),
            Received::Closed(None) => panic!("closed without a close frame; before: {before:?}"),
        }
    }
}

/// Sends one message and reads its streamed reply: (reply text, token frames, done frame).
pub async fn chat(socket: &mut Socket, text: &str) -> (String, usize, Value) {
    send(socket, json!({"type": "message", "text": text})).await;
    let start = next_json(socket).await;
    assert_eq!(start["type"], "start", "{start}");
    let (mut reply, mut tokens) = (String::new(), 0);
    loop {
        let frame = next_json(socket).await;
        match frame["type"].as_str() {
            Some("token") => {
                assert_eq!(frame["index"], tokens, "tokens arrive in order");
                reply.push_str(frame["text"].as_str().unwrap());
                tokens += 1;
            }
            Some("done") => return (reply, tokens, frame),
            _ => panic!("unexpected frame mid-stream: {frame}"),
        }
    }
}

pub const SESSION_GONE: u16 = server::ws::CLOSE_SESSION_GONE;
pub const TOO_BIG: u16 = 1009;
pub const UNSUPPORTED: u16 = 1003;
pub const GOING_AWAY: u16 = 1001;
pub fn normal() -> u16 {
    u16::from(CloseCode::Normal)
}

/// The end of every test: everything released (wgpu's counters at their
/// baseline), then a graceful shutdown that leaks nothing either.
pub async fn finish(server: ChatServer, http: &Http) -> Value {
    let status = http.until_quiet_at_baseline().await;
    // Bounded only so that a hung shutdown fails here instead of hanging
    // the suite (the runtime's own deadline is 30 s).
    let report = tokio::time::timeout(Duration::from_secs(120), server.shutdown())
        .await
        .expect("the chat server shut down within two minutes");
    assert_eq!(report.leaked_buffers, 0, "{report:?}");
    assert_eq!(
        report.runtime.gpu_after.expect("wgpu counters"),
        report.gpu_baseline,
        "{report:?}"
    );
    status
}

/// How many sessions ended for `reason`, per `/status`.
pub fn ended(status: &Value, reason: &str) -> u64 {
    status["ended_by"][reason].as_u64().unwrap_or(0)
}
