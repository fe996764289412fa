//! What the HTTP API answers when a request is refused: a status code and
//! `{"error": code, "message": what was wrong}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use sessionbus::SessionError;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No, a malformed, or a forged bearer token (401).
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A well-formed, correctly signed token past its expiry (401).
    #[error("the bearer token has expired: get a new one")]
    TokenExpired,
    /// This server's identity does not issue tokens itself (404).
    #[error("this server does not issue tokens: get one from its identity provider")]
    NoIssuer,
    /// A user name that cannot be issued a token (400).
    #[error("{0}")]
    BadUser(String),
    /// A request body that is not what the endpoint takes (400).
    #[error("bad request body: {0}")]
    BadBody(String),
    /// A session id that is not 32 hex digits (400).
    #[error("'{0}' is not a session id (32 hex digits)")]
    BadSessionId(String),
    /// No such session (404): never opened, forged, or long forgotten.
    #[error("no session {0}")]
    UnknownSession(String),
    /// The session belongs to someone else (403). The runtime decided.
    #[error("{0}")]
    NotOwner(String),
    /// The session has ended (410).
    #[error("{0}")]
    Gone(String),
    /// Too many requests from this owner (429).
    #[error("rate limited: retry in {retry_after_ms} ms")]
    RateLimited {
        /// How long until the owner may act again.
        retry_after_ms: u64,
    },
    /// The owner has as many live sessions as one owner may (429).
    #[error("{owner_cap} live sessions is the most one owner may have: close one first")]
    TooManySessions {
        /// `Settings::max_sessions_per_owner`.
        owner_cap: usize,
    },
    /// Too many sessions wait for their WebSocket (503, retry later).
    #[error("{cap} sessions already wait for their WebSocket: retry shortly")]
    TooManyUnattached {
        /// `Settings::max_unattached_sessions`.
        cap: usize,
    },
    /// A bounded table of the server's own is full (503, retry later).
    #[error("{0}")]
    Busy(&'static str),
    /// The server is shutting down (503).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The runtime refused (a limit, a budget): 503 with its reason.
    #[error("{0}")]
    Refused(String),
    /// The WebSocket handshake failed (400).
    #[error("WebSocket handshake: {0}")]
    Handshake(String),
}

impl ApiError {
    /// The short code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::TokenExpired => "token_expired",
            ApiError::NoIssuer => "no_issuer",
            ApiError::TooManySessions { .. } => "too_many_sessions",
            ApiError::TooManyUnattached { .. } => "too_many_unattached",
            ApiError::Busy(_) => "overloaded",
            ApiError::BadUser(_) => "bad_user",
            ApiError::BadBody(_) => "bad_body",
            ApiError::BadSessionId(_) => "bad_session_id",
            ApiError::UnknownSession(_) => "unknown_session",
            ApiError::NotOwner(_) => "not_owner",
            ApiError::Gone(_) => "session_gone",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Refused(_) => "refused",
            ApiError::Handshake(_) => "bad_handshake",
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Unauthorized { .. } => ApiError::NotOwner(e.to_string()),
            SessionError::Unknown { id } => ApiError::UnknownSession(id.to_string()),
            SessionError::RuntimeStopped => ApiError::ShuttingDown,
            e if e.is_gone() => ApiError::Gone(e.to_string()),
            e => ApiError::Refused(e.to_string()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) | ApiError::TokenExpired => StatusCode::UNAUTHORIZED,
            ApiError::NoIssuer => StatusCode::NOT_FOUND,
            ApiError::TooManySessions { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooManyUnattached { .. } | ApiError::Busy(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::BadUser(_)
            | ApiError::BadBody(_)
            | ApiError::BadSessionId(_)
            | ApiError::Handshake(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownSession(_) => StatusCode::NOT_FOUND,
            ApiError::NotOwner(_) => StatusCode::FORBIDDEN,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ShuttingDown | ApiError::Refused(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::RateLimited { retry_after_ms } => {
                response.insert_header((
                    "Retry-After",
                    retry_after_ms.div_ceil(1000).max(1).to_string(),
                ));
            }
            ApiError::TooManyUnattached { .. } | ApiError::Busy(_) => {
                response.insert_header(("Retry-After", "1"));
            }
            _ => {}
        }
        response.json(serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
        }))
    }
}
