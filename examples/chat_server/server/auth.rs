//! Bearer tokens: `POST /tokens {"user": "ada"}` issues `ada.<hmac>`, an
//! HMAC-SHA256 of the user name under a key drawn at start. No table to
//! keep; a token names its user and cannot be forged without the key; a
//! restart invalidates every token. Authorisation is not done here: the
//! runtime's owner check refuses a session to anyone but its owner.

use hmac::{Hmac, Mac};
use sessionbus::Owner;
use sha2::Sha256;

use super::error::ApiError;

type HmacSha256 = Hmac<Sha256>;

/// Longest user name accepted.
pub const MAX_USER_CHARS: usize = 64;

/// Issues and checks bearer tokens.
pub struct Auth {
    key: [u8; 32],
}

impl Auth {
    pub(super) fn new() -> Self {
        Auth {
            key: rand::random(),
        }
    }

    fn mac(&self, user: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(user.as_bytes());
        mac
    }

    /// A token for `user` (letters, digits, `-`, `_`; 1 to 64 characters).
    pub fn issue(&self, user: &str) -> Result<String, ApiError> {
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
        let tag = self.mac(user).finalize().into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("{user}.{hex}"))
    }

    /// The user a token was issued to; unknown, malformed or forged → 401.
    pub fn verify(&self, token: &str) -> Result<Owner, ApiError> {
        let forged = || ApiError::Unauthenticated("the bearer token is malformed or forged");
        let (user, hex) = token.rsplit_once('.').ok_or_else(forged)?;
        if hex.len() != 64 {
            return Err(forged());
        }
        let tag: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
            .collect::<Result<_, _>>()
            .map_err(|_| forged())?;
        // Constant-time comparison.
        self.mac(user).verify_slice(&tag).map_err(|_| forged())?;
        Ok(Owner::new(user))
    }

    /// The caller of an HTTP request: `Authorization: Bearer …`, or, for
    /// WebSockets (browsers cannot set headers on them), `?token=…`.
    pub fn caller(
        &self,
        req: &actix_web::HttpRequest,
        query_token: Option<&str>,
    ) -> Result<Owner, ApiError> {
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or(""));
        let token = match (header, query_token) {
            (Some(h), _) => h.strip_prefix("Bearer ").ok_or(ApiError::Unauthenticated(
                "Authorization must be 'Bearer <token>'",
            ))?,
            (None, Some(t)) => t,
            (None, None) => {
                return Err(ApiError::Unauthenticated(
                    "no bearer token: get one from POST /tokens",
                ));
            }
        };
        self.verify(token)
    }
}
