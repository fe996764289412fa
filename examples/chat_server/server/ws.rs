//! `GET /sessions/{id}/ws?token=…`: the chat over a WebSocket.
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
//! `session_gone` error frame and close 4410. The socket owns the session's
//! handle: when it goes away without a close (tab closed, network gone), the
//! session ends as `disconnected`.

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, ProtocolError};
use serde_json::json;
use sessionbus::{Owner, SessionHandle, Turn};

use super::error::ApiError;
use super::model::{self, StreamError, TokenSink};
use super::routes::{parse_session_id, receipt_json};
use super::state::AppState;

/// Close code for "session gone" (4000–4999 are the application's).
pub const CLOSE_SESSION_GONE: u16 = 4410;

#[derive(serde::Deserialize)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

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
    query: web::Query<TokenQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.is_draining() {
        return Err(ApiError::ShuttingDown);
    }
    let owner = state.auth.caller(&req, query.token.as_deref())?;
    let id = parse_session_id(&path)?;
    // The handshake first: a request that is no WebSocket upgrade must not
    // take (and drop) the session's parked handle.
    let (response, socket, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::Handshake(e.to_string()))?;
    let session = match state.take_parked(id, &owner) {
        Some(handle) => handle,
        None => state.engine.attach(id, owner.clone()).await?,
    };
    let stream = stream.max_frame_size(state.settings.max_frame_bytes);
    actix_web::rt::spawn(chat_loop(
        state.into_inner(),
        owner,
        session,
        socket,
        stream,
    ));
    Ok(response)
}

/// Sends JSON frames; `false` once the client is gone.
struct Frames(actix_ws::Session);

impl Frames {
    async fn send(&mut self, value: serde_json::Value) -> bool {
        self.0.text(value.to_string()).await.is_ok()
    }

    async fn error(&mut self, code: &str, message: impl std::fmt::Display) -> bool {
        self.send(json!({"type": "error", "code": code, "message": message.to_string()}))
            .await
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

async fn chat_loop(
    state: std::sync::Arc<AppState>,
    owner: Owner,
    session: SessionHandle,
    socket: actix_ws::Session,
    mut stream: MessageStream,
) {
    state
        .websockets
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut shutdown = state.closing_sockets.subscribe();
    let mut frames = Frames(socket.clone());
    let mut reply: Option<tokio::task::JoinHandle<()>> = None;
    let mut turn = 0u64;
    let reason = loop {
        let message = tokio::select! {
            message = stream.recv() => message,
            _ = shutdown.wait_for(|closing| *closing) => {
                break close(CloseCode::Away, "the server is shutting down");
            }
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
                let _ = frames.0.pong(&bytes).await;
                continue;
            }
            Some(Ok(Message::Pong(_) | Message::Nop)) => continue,
            Some(Ok(Message::Binary(_) | Message::Continuation(_))) => {
                break close(
                    CloseCode::Unsupported,
                    "only unfragmented JSON text frames are accepted",
                );
            }
            Some(Ok(Message::Text(text))) => text,
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
                        state.unpark(session.id());
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
            Frames(socket.clone()),
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
    let _ = socket.close(reason).await;
    state
        .websockets
        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
}

async fn stream_one(
    state: std::sync::Arc<AppState>,
    session: SessionHandle,
    mut frames: Frames,
    prompt: String,
    turn: u64,
) {
    if !frames.send(json!({"type": "start", "turn": turn})).await {
        return;
    }
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
