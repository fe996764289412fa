//! The REST endpoints and the page.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;
use sessionbus::{ReleaseReceipt, SessionId, Turn};

use super::auth::caller;
use super::error::ApiError;
use super::limits::address_key;
use super::model::{self, Collect, StreamError};
use super::state::AppState;
use super::{health, status, ws};

/// Largest JSON body accepted on REST endpoints.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// Mounts every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY_BYTES)
            .error_handler(|e, _| ApiError::BadBody(e.to_string()).into()),
    )
    .app_data(
        web::PathConfig::default().error_handler(|e, _| ApiError::BadBody(e.to_string()).into()),
    )
    .route("/", web::get().to(page))
    .route("/tokens", web::post().to(issue_token))
    .route("/sessions", web::post().to(open_session))
    .route("/sessions/{id}", web::delete().to(close_session))
    .route("/sessions/{id}/messages", web::post().to(post_message))
    .route("/sessions/{id}/tickets", web::post().to(issue_ticket))
    .route("/sessions/{id}/ws", web::get().to(ws::connect))
    .route("/status", web::get().to(status::status))
    .route("/metrics", web::get().to(status::metrics))
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz));
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("../page.html"))
}

/// A session id from the path; anything but 32 hex digits → 400.
pub fn parse_session_id(text: &str) -> Result<SessionId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadSessionId(text.chars().take(80).collect()))
}

/// A receipt as JSON (durations in microseconds).
pub fn receipt_json(receipt: &ReleaseReceipt) -> serde_json::Value {
    json!({
        "id": receipt.id.to_string(),
        "reason": receipt.reason.to_string(),
        "buffers": receipt.buffers,
        "bytes": receipt.bytes,
        "end_to_release_us": receipt.end_to_release().as_micros() as u64,
        "paced_for_us": receipt.paced_for.as_micros() as u64,
        "error": receipt.error,
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
}

async fn issue_token(
    req: HttpRequest,
    body: web::Json<TokenRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    address_limited(&state, &req)?;
    let issued = state.identity.issue(&body.user)?;
    Ok(HttpResponse::Created().json(json!({
        "user": body.user,
        "token": issued.token,
        "expires_in_secs": issued.expires_in.as_secs(),
    })))
}

/// Opens a session: limited per client address and per owner, capped per
/// owner and in how many wait for their socket; answers a one-time ticket
/// for the socket.
async fn open_session(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.is_draining() {
        return Err(ApiError::ShuttingDown);
    }
    let owner = caller(&state, &req)?;
    address_limited(&state, &req)?;
    limited(&state, &owner)?;
    let place = state.sessions.reserve(&owner).await?;
    let session = state
        .engine
        .open_with(sessionbus::OpenOptions::new(owner.clone()).client_ip(client_ip(&req)))
        .await
        .map_err(|e| ApiError::Refused(e.to_string()))?;
    let id = session.id();
    place.park(session);
    let ticket = match state.tickets.issue(id, owner.clone()) {
        Ok(ticket) => ticket,
        Err(refused) => {
            // No way to attach: close it now rather than at the attach timeout.
            let _ = state.engine.close(id, owner).await;
            state.sessions.forget(id, "closed");
            return Err(refused);
        }
    };
    Ok(HttpResponse::Created().json(json!({
        "id": id.to_string(),
        "ws": format!("/sessions/{id}/ws"),
        "ticket": ticket,
        "ticket_expires_in_ms": state.tickets.ttl().as_millis() as u64,
    })))
}

/// A one-time ticket for the session's WebSocket (browsers cannot send the
/// bearer token on a socket). Only the session's owner gets one.
async fn issue_ticket(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let owner = caller(&state, &req)?;
    let id = parse_session_id(&path)?;
    // Tickets fill a shared (bounded) table: limited per address, like opens.
    address_limited(&state, &req)?;
    if !state.sessions.owns(id, &owner) {
        // The runtime's answer says why: unknown (404), not yours (403), gone (410).
        drop(state.engine.attach(id, owner.clone()).await?);
    }
    let ticket = state.tickets.issue(id, owner)?;
    Ok(HttpResponse::Created().json(json!({
        "ticket": ticket,
        "expires_in_ms": state.tickets.ttl().as_millis() as u64,
    })))
}

async fn close_session(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let owner = caller(&state, &req)?;
    let id = parse_session_id(&path)?;
    // Closing twice is harmless: the second close answers the same receipt.
    let receipt = state.engine.close(id, owner).await?;
    state.sessions.forget(id, &receipt.reason.to_string());
    Ok(HttpResponse::Ok().json(receipt_json(&receipt)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageRequest {
    text: String,
}

/// One turn over plain HTTP: the whole reply at once (the WebSocket streams it).
async fn post_message(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<MessageRequest>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let owner = caller(&state, &req)?;
    let id = parse_session_id(&path)?;
    let chars = body.text.chars().count();
    if chars == 0 || chars > state.settings.max_message_chars {
        return Err(ApiError::BadBody(format!(
            "a message has 1 to {} characters, not {chars}",
            state.settings.max_message_chars
        )));
    }
    limited(&state, &owner)?;
    let session = state.engine.attach(id, owner).await?;
    session.chat(Turn::default()).await?;
    let mut reply = Collect::default();
    let stats = model::stream_reply(&session, &body.text, &state.settings, &mut reply)
        .await
        .map_err(|e| match e {
            StreamError::Session(e) => ApiError::from(e),
            StreamError::ClientGone(_) => unreachable!("collecting never stops early"),
        })?;
    Ok(HttpResponse::Ok().json(json!({"reply": reply.0, "stats": stats})))
}

/// The client's address as the TCP connection shows it. A proxy in front
/// would make every client one address: put the limits there instead, or
/// read its header only when the proxy is trusted.
fn client_ip(req: &HttpRequest) -> std::net::IpAddr {
    req.peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into())
}

fn address_limited(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    state
        .address_limiter
        .check(&address_key(client_ip(req)))
        .map_err(|wait| ApiError::RateLimited {
            retry_after_ms: wait.as_millis() as u64,
        })
}

fn limited(state: &AppState, owner: &sessionbus::Owner) -> Result<(), ApiError> {
    state
        .limiter
        .check(owner)
        .map_err(|wait| ApiError::RateLimited {
            retry_after_ms: wait.as_millis() as u64,
        })
}
