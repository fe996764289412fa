//! `GET /sessions/{id}/ws?ticket=…`: the chat over a WebSocket. The ticket
//! is a one-time one from `POST /sessions` or `POST /sessions/{id}/tickets`;
//! clients that can set headers may send `Authorization: Bearer …` instead.
//!
//! Client → server (JSON text frames):
//! `{"type":"message","text":"…"}` (one turn), `{"type":"close"}`.
//! Server → client: `{"type":"start","turn":N}`, one `{"type":"token",
//! "index":i,"text":"…"}` per token, `{"type":"done",…}`, `{"type":"closed",
//! "receipt":{…}}`, and `{"type":"error","code":"…","message":"…"}`.
//!
//! Bad input: invalid JSON or an unknown message → an error frame, the
//! socket stays; a flood → `rate_limited` error frames (with
//! `retry_after_ms`); a frame over `max_frame_bytes` → close 1009; a binary
//! or fragmented frame → close 1003; a message to an ended session → a
//! `session_gone` error frame and close 4410.
//!
//! Liveness: the server pings every `ping_interval_ms`; a socket silent (no
//! frame, no pong) for `idle_timeout_ms` is closed (1001). When the session
//! ends for any reason (closed elsewhere, idle, TTL, evicted), the socket is
//! told (`session_gone`) and closed with 4410 (1001 at shutdown). Every send
//! is bounded by `send_timeout_ms`: a client that stopped reading has its
//! reply stream ended (the lease goes back at once) and its socket dropped.
//! The socket owns the session's handle: when it goes away without a close
//! (tab closed, network gone, stalled, silent), the session ends as
//! `disconnected`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, ProtocolError};
use serde_json::json;
use sessionbus::{Owner, SessionHandle, Turn};

use super::auth::{SocketQuery, socket_caller};
use super::error::ApiError;
use super::model::{self, StreamError, TokenSink};
use super::routes::{parse_session_id, receipt_json};
use super::sessions::Ended;
use super::state::AppState;

/// Close code for "session gone" (4000–4999 are the application's).
pub const CLOSE_SESSION_GONE: u16 = 4410;

#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    Message { text: String },
    Close,
}

/// The upgrade: authenticated, the session attached (the runtime checks the
/// owner), then the socket's loop runs on this worker.
pub(super) async fn connect(
    req: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    query: web::Query<SocketQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.is_draining() {
        return Err(ApiError::ShuttingDown);
    }
    let id = parse_session_id(&path)?;
    let owner = socket_caller(&state, &req, &query, id)?;
    // The handshake first: a request that is no WebSocket upgrade must not
    // take (and drop) the session's parked handle.
    let (response, socket, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::Handshake(e.to_string()))?;
    let session = match state.sessions.take_parked(id, &owner) {
        Some(handle) => handle,
        None => state.engine.attach(id, owner.clone()).await?,
    };
    let ended = state.sessions.ended(id);
    let stream = stream.max_frame_size(state.settings.max_frame_bytes);
    let frames = Frames::new(
        socket,
        Duration::from_millis(state.settings.send_timeout_ms),
    );
    actix_web::rt::spawn(chat_loop(
        state.into_inner(),
        owner,
        session,
        frames,
        stream,
        ended,
    ));
    Ok(response)
}

/// Sends JSON frames, each within the send timeout; `false` once the client
/// is gone or has stopped reading (then `stalled()` says which).
#[derive(Clone)]
struct Frames {
    socket: actix_ws::Session,
    timeout: Duration,
    stalled: Arc<AtomicBool>,
}

impl Frames {
    fn new(socket: actix_ws::Session, timeout: Duration) -> Self {
        Frames {
            socket,
            timeout,
            stalled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A send timed out: the client stopped reading.
    fn stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }

    async fn send(&mut self, value: serde_json::Value) -> bool {
        if self.stalled() {
            return false;
        }
        match tokio::time::timeout(self.timeout, self.socket.text(value.to_string())).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                self.stalled.store(true, Ordering::SeqCst);
                false
            }
        }
    }

    async fn ping(&mut self) -> bool {
        match tokio::time::timeout(self.timeout, self.socket.ping(b"")).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                self.stalled.store(true, Ordering::SeqCst);
                false
            }
        }
    }

    async fn error(&mut self, code: &str, message: impl std::fmt::Display) -> bool {
        self.send(json!({"type": "error", "code": code, "message": message.to_string()}))
            .await
    }

    /// Closes the socket, unless the client is not reading (a close frame
    /// would wait behind everything else it has not read).
    async fn close(self, reason: Option<CloseReason>) {
        if !self.stalled() {
            let _ = tokio::time::timeout(self.timeout, self.socket.close(reason)).await;
        }
    }
}

impl TokenSink for Frames {
    async fn token(&mut self, index: usize, text: &str) -> bool {
        self.send(json!({"type": "token", "index": index, "text": text}))
            .await
    }
}

fn close(code: CloseCode, why: impl Into<String>) -> Option<CloseReason> {
    Some(CloseReason {
        code,
        description: Some(why.into()),
    })
}

/// Resolves when the reply task finishes (never, when there is none).
async fn reply_finished(reply: &mut Option<tokio::task::JoinHandle<()>>) {
    match reply.as_mut() {
        Some(task) => {
            let _ = task.await;
            *reply = None;
        }
        None => std::future::pending().await,
    }
}

/// Resolves with the end reason once the session has ended (never, when
/// the server does not know the session).
async fn session_ended(ended: &mut Option<Ended>) -> String {
    let Some(ended) = ended.as_mut() else {
        return std::future::pending().await;
    };
    match ended.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        Err(_) => std::future::pending().await,
    }
}

async fn chat_loop(
    state: Arc<AppState>,
    owner: Owner,
    session: SessionHandle,
    mut frames: Frames,
    mut stream: MessageStream,
    mut ended: Option<Ended>,
) {
    state.websockets.fetch_add(1, Ordering::SeqCst);
    let mut shutdown = state.closing_sockets.subscribe();
    let idle_timeout = Duration::from_millis(state.settings.idle_timeout_ms);
    let mut ping = tokio::time::interval(Duration::from_millis(
        state.settings.ping_interval_ms.max(1),
    ));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await; // the first tick is immediate
    let mut heard = Instant::now();
    let mut reply: Option<tokio::task::JoinHandle<()>> = None;
    let mut turn = 0u64;
    let reason = loop {
        if frames.stalled() {
            tracing::info!(target: "chat_server", "websocket.stalled: the client stopped reading");
            break None;
        }
        let message = tokio::select! {
            message = stream.recv() => message,
            _ = shutdown.wait_for(|closing| *closing) => {
                break close(CloseCode::Away, "the server is shutting down");
            }
            _ = ping.tick() => {
                if heard.elapsed() >= idle_timeout {
                    tracing::info!(target: "chat_server", "websocket.idle: no frame or pong within the idle timeout");
                    break close(CloseCode::Away, format!("idle: nothing heard for {} ms", idle_timeout.as_millis()));
                }
                frames.ping().await;
                continue;
            }
            why = session_ended(&mut ended) => {
                frames
                    .error("session_gone", format!("session {} has ended: {why}", session.id()))
                    .await;
                if why == "shutdown" {
                    // The shutdown closes every socket (1001) once the runtime is done.
                    let mut closing = state.closing_sockets.subscribe();
                    let _ = closing.wait_for(|closing| *closing).await;
                    break close(CloseCode::Away, "the server is shutting down");
                }
                break close(CloseCode::Other(CLOSE_SESSION_GONE), format!("session gone: {why}"));
            }
            _ = reply_finished(&mut reply) => continue,
        };
        let text = match message {
            // The connection is gone (tab closed, network lost) or the client
            // closed the socket: either way nobody reads this session any more.
            None | Some(Ok(Message::Close(_))) => break None,
            Some(Err(ProtocolError::Overflow)) => {
                break close(
                    CloseCode::Size,
                    format!("frame larger than {} bytes", state.settings.max_frame_bytes),
                );
            }
            Some(Err(e)) => break close(CloseCode::Protocol, e.to_string()),
            Some(Ok(Message::Ping(bytes))) => {
                heard = Instant::now();
                let _ = tokio::time::timeout(frames.timeout, frames.socket.pong(&bytes)).await;
                continue;
            }
            Some(Ok(Message::Pong(_) | Message::Nop)) => {
                heard = Instant::now();
                continue;
            }
            Some(Ok(Message::Binary(_) | Message::Continuation(_))) => {
                break close(
                    CloseCode::Unsupported,
                    "only unfragmented JSON text frames are accepted",
                );
            }
            Some(Ok(Message::Text(text))) => {
                heard = Instant::now();
                text
            }
        };
        let frame = match serde_json::from_str::<ClientFrame>(&text) {
            Ok(frame) => frame,
            Err(e) => {
                frames
                    .error("malformed", format!("not a chat frame: {e}"))
                    .await;
                continue;
            }
        };
        let prompt = match frame {
            ClientFrame::Close => {
                if let Some(r) = reply.take() {
                    r.abort();
                }
                match session.close().await {
                    Ok(receipt) => {
                        state
                            .sessions
                            .forget(session.id(), &receipt.reason.to_string());
                        frames
                            .send(json!({"type": "closed", "receipt": receipt_json(&receipt)}))
                            .await;
                        break close(CloseCode::Normal, "session closed");
                    }
                    Err(e) => {
                        frames.error("session_gone", &e).await;
                        break close(CloseCode::Other(CLOSE_SESSION_GONE), "session gone");
                    }
                }
            }
            ClientFrame::Message { text } => text,
        };
        let chars = prompt.chars().count();
        if chars == 0 || chars > state.settings.max_message_chars {
            let max = state.settings.max_message_chars;
            frames
                .error(
                    "bad_message",
                    format!("a message has 1 to {max} characters, not {chars}"),
                )
                .await;
            continue;
        }
        if let Err(wait) = state.limiter.check(&owner) {
            frames
                .send(json!({
                    "type": "error",
                    "code": "rate_limited",
                    "message": format!("too many messages: retry in {} ms", wait.as_millis()),
                    "retry_after_ms": wait.as_millis() as u64,
                }))
                .await;
            continue;
        }
        if reply.as_ref().is_some_and(|r| !r.is_finished()) {
            frames
                .error(
                    "busy",
                    "a reply is still streaming: wait for its done frame",
                )
                .await;
            continue;
        }
        // The turn is accepted (or refused: the session is gone) before the
        // stream starts, so a late message gets its answer at once.
        if let Err(e) = session.chat(Turn::default()).await {
            let code = if e.is_gone() {
                "session_gone"
            } else {
                "refused"
            };
            frames.error(code, &e).await;
            if e.is_gone() {
                break close(CloseCode::Other(CLOSE_SESSION_GONE), "session gone");
            }
            continue;
        }
        turn += 1;
        reply = Some(actix_web::rt::spawn(stream_one(
            state.clone(),
            session.clone(),
            frames.clone(),
            prompt,
            turn,
        )));
    };
    // Stop a reply in flight: its lease and its handle clone go with it, so
    // dropping `session` below is the last handle (a disconnect, unless the
    // session was closed or shut down first).
    if let Some(r) = reply.take() {
        r.abort();
        let _ = r.await;
    }
    drop(session);
    frames.close(reason).await;
    drop(stream);
    state.websockets.fetch_sub(1, Ordering::SeqCst);
}

async fn stream_one(
    state: Arc<AppState>,
    session: SessionHandle,
    mut frames: Frames,
    prompt: String,
    turn: u64,
) {
    if !frames.send(json!({"type": "start", "turn": turn})).await {
        return;
    }
    // A client that stops reading makes a token's send time out: the stream
    // stops there and its lease is returned (`ClientGone`).
    match model::stream_reply(&session, &prompt, &state.settings, &mut frames).await {
        Ok(stats) => {
            frames
                .send(json!({"type": "done", "turn": turn, "tokens": stats.tokens,
                    "kv_blocks": stats.kv_blocks, "kv_bytes": stats.kv_bytes}))
                .await;
        }
        Err(StreamError::ClientGone(_)) => {}
        Err(StreamError::Session(e)) => {
            let code = if e.is_gone() {
                "session_gone"
            } else {
                "refused"
            };
            frames.error(code, &e).await;
        }
    }
}
