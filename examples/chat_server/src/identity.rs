//! Who is calling: identity is pluggable. The server asks an [`Identity`]
//! what owner a bearer token names; an application puts its own behind it
//! (its session cookie, its OIDC verifier). [`DemoIssuer`] is the default,
//! **for demos only**: it hands a short-lived token to anyone who asks for a
//! name (`POST /tokens`), so it proves nothing about who the caller is.
//! What keeps it from filling the server is elsewhere: per-address limits on
//! minting and opening, per-owner and unattached-session caps (`sessions.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sessionbus::Owner;
use sha2::Sha256;

use super::error::ApiError;

type HmacSha256 = Hmac<Sha256>;

/// Longest user name accepted.
pub const MAX_USER_CHARS: usize = 64;

/// A token and when it stops working.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The bearer token.
    pub token: String,
    /// How long it is valid from now.
    pub expires_in: Duration,
}

/// Turns bearer tokens into owners. Implement it to plug in real identity.
pub trait Identity: Send + Sync + 'static {
    /// The owner `token` names. A malformed, forged or expired token is
    /// refused (`ApiError::Unauthenticated` or `ApiError::TokenExpired`).
    fn verify(&self, token: &str) -> Result<Owner, ApiError>;

    /// `POST /tokens`: a token for `user`, if this identity issues tokens
    /// itself. By default it does not (404: tokens come from elsewhere).
    fn issue(&self, user: &str) -> Result<IssuedToken, ApiError> {
        let _ = user;
        Err(ApiError::NoIssuer)
    }
}

/// The demo issuer: `user.expiry.mac`, an HMAC-SHA256 over the name and the
/// expiry (Unix milliseconds) under a key drawn at start. No table to keep;
/// a token cannot be forged or extended without the key; a restart
/// invalidates every token; each one expires after `ttl`.
pub struct DemoIssuer {
    key: [u8; 32],
    ttl: Duration,
}

impl std::fmt::Debug for DemoIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoIssuer")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl DemoIssuer {
    /// Tokens valid for `ttl`, under a fresh random key.
    pub fn new(ttl: Duration) -> Self {
        DemoIssuer {
            key: rand::random(),
            ttl,
        }
    }

    fn mac(&self, user: &str, expires_ms: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(format!("{user}.{expires_ms}").as_bytes());
        mac
    }

    /// A token for `user` that expires at `expires` (tests use a time in the past).
    pub fn issue_until(&self, user: &str, expires: SystemTime) -> Result<String, ApiError> {
        let valid = !user.is_empty()
            && user.chars().count() <= MAX_USER_CHARS
            && user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(ApiError::BadUser(format!(
                "user must be 1 to {MAX_USER_CHARS} letters, digits, '-' or '_'"
            )));
        }
        let expires_ms = unix_ms(expires);
        let tag = self.mac(user, expires_ms).finalize().into_bytes();
        Ok(format!("{user}.{expires_ms}.{}", hex(&tag)))
    }
}

impl Identity for DemoIssuer {
    fn verify(&self, token: &str) -> Result<Owner, ApiError> {
        let forged = || ApiError::Unauthenticated("the bearer token is malformed or forged");
        let mut parts = token.rsplitn(3, '.');
        let (Some(tag), Some(expires), Some(user)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(forged());
        };
        let expires_ms: u64 = expires.parse().map_err(|_| forged())?;
        let tag = unhex(tag).ok_or_else(forged)?;
        // Constant-time comparison; the expiry is only trusted once signed.
        self.mac(user, expires_ms)
            .verify_slice(&tag)
            .map_err(|_| forged())?;
        if unix_ms(SystemTime::now()) >= expires_ms {
            return Err(ApiError::TokenExpired);
        }
        Ok(Owner::new(user))
    }

    fn issue(&self, user: &str) -> Result<IssuedToken, ApiError> {
        Ok(IssuedToken {
            token: self.issue_until(user, SystemTime::now() + self.ttl)?,
            expires_in: self.ttl,
        })
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}
