//! The caller of a request. REST: `Authorization: Bearer <token>`, checked
//! by the server's [`Identity`](super::identity::Identity). WebSocket: the
//! same header (non-browser clients), or `?ticket=` (a one-time ticket, see
//! `tickets.rs`). A token in the URL (`?token=`) is refused: URLs end up in
//! logs and proxies, and a token there would be good until it expires.

use actix_web::HttpRequest;
use actix_web::http::header::AUTHORIZATION;
use sessionbus::{Owner, SessionId};

use super::error::ApiError;
use super::state::AppState;

/// The bearer token of `req`'s `Authorization` header, if it has one.
fn bearer(req: &HttpRequest) -> Result<Option<&str>, ApiError> {
    let Some(header) = req.headers().get(AUTHORIZATION) else {
        return Ok(None);
    };
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(Some)
        .ok_or(ApiError::Unauthenticated(
            "Authorization must be 'Bearer <token>'",
        ))
}

/// The caller of a REST request.
pub fn caller(state: &AppState, req: &HttpRequest) -> Result<Owner, ApiError> {
    match bearer(req)? {
        Some(token) => state.identity.verify(token),
        None => Err(ApiError::Unauthenticated(
            "no bearer token: send 'Authorization: Bearer <token>' (POST /tokens issues demo tokens)",
        )),
    }
}

/// The query string a WebSocket upgrade may carry.
#[derive(serde::Deserialize)]
pub(super) struct SocketQuery {
    ticket: Option<String>,
    token: Option<String>,
}

/// The caller of a WebSocket upgrade to `session`.
pub(super) fn socket_caller(
    state: &AppState,
    req: &HttpRequest,
    query: &SocketQuery,
    session: SessionId,
) -> Result<Owner, ApiError> {
    if query.token.is_some() {
        return Err(ApiError::Unauthenticated(
            "a token is not accepted in a URL: get a one-time ticket from POST /sessions/{id}/tickets and connect with ?ticket=",
        ));
    }
    match (bearer(req)?, query.ticket.as_deref()) {
        (Some(token), _) => state.identity.verify(token),
        (None, Some(ticket)) => state.tickets.redeem(ticket, session),
        (None, None) => Err(ApiError::Unauthenticated(
            "no credentials: connect with ?ticket= (POST /sessions/{id}/tickets) or an Authorization header",
        )),
    }
}
