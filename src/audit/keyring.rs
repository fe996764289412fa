//! Keys, key ids and the keyring: which key sealed a record, and the set of
//! keys a trail written under several (before and after a key change) verifies with.
//!
//! Ground rules: a key id is derived from the key (HMAC-SHA256 of a fixed
//! label, first 8 bytes as 16 hex digits), never chosen by hand, so an id
//! cannot name the wrong key and publishing it reveals nothing about the key.
//! The first key added is the one that writes; the others only verify.

use data_encoding::{HEXLOWER, HEXLOWER_PERMISSIVE};
use hmac::{Hmac, Mac};
use sessionbus_actors::MIN_KEY_BYTES;
use sha2::Sha256;

use super::chain::AuditKeys;
use super::error::AuditConfigError;

/// Hex text (either case) to bytes; `None` if it is not hex. Unlike
/// `u8::from_str_radix`, a sign (`+a`) is not a digit.
pub(crate) fn decode_hex(text: &str) -> Option<Vec<u8>> {
    HEXLOWER_PERMISSIVE.decode(text.as_bytes()).ok()
}

/// Bytes to lowercase hex.
pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    HEXLOWER.encode(bytes)
}

/// The id of `key`: 16 hex digits.
pub(crate) fn key_id(key: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(b"sessionbus audit key id v1");
    encode_hex(&mac.finalize().into_bytes()[..8])
}

/// A key given as hex, checked: hex digits only, at least [`MIN_KEY_BYTES`].
/// `field` names where it came from in the error.
pub(crate) fn parse_key(field: &'static str, text: &str) -> Result<Vec<u8>, AuditConfigError> {
    let bytes = decode_hex(text.trim()).ok_or_else(|| AuditConfigError {
        field,
        problem: "not hex (expected an even number of 0-9a-f digits, nothing else)".into(),
    })?;
    if bytes.len() < MIN_KEY_BYTES {
        return Err(AuditConfigError {
            field,
            problem: format!(
                "too short: {} bytes, at least {MIN_KEY_BYTES} needed ({} hex digits)",
                bytes.len(),
                MIN_KEY_BYTES * 2
            ),
        });
    }
    Ok(bytes)
}

/// The keys a trail is sealed and verified with, each under its id.
#[derive(Clone, Default)]
pub struct AuditKeyring {
    keys: Vec<AuditKeys>,
}

impl std::fmt::Debug for AuditKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKeyring")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

impl AuditKeyring {
    /// An empty keyring.
    pub fn new() -> Self {
        AuditKeyring::default()
    }

    /// Adds `key` (raw bytes, at least 32) and returns its id. The first key
    /// added is the one a trail opened with this keyring writes with.
    pub fn add_key(&mut self, key: &[u8]) -> Result<String, AuditConfigError> {
        if key.len() < MIN_KEY_BYTES {
            return Err(AuditConfigError {
                field: "audit.key",
                problem: format!("too short: {} bytes, at least {MIN_KEY_BYTES}", key.len()),
            });
        }
        let keys = AuditKeys::derive(key);
        let id = keys.id.clone();
        if self.get(&id).is_none() {
            self.keys.push(keys);
        }
        Ok(id)
    }

    /// Adds the keys of a list `id:hex,id:hex` (the id is optional: `hex,hex`).
    /// A given id must be the key's own, so a list cannot mislabel a key.
    /// `field` names the list in errors; a key is never shown.
    pub fn add_list(&mut self, field: &'static str, text: &str) -> Result<(), AuditConfigError> {
        for (n, entry) in text.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let (claimed, hex) = match entry.split_once(':') {
                Some((id, hex)) => (Some(id.trim()), hex),
                None => (None, entry),
            };
            let key = parse_key(field, hex).map_err(|e| AuditConfigError {
                field,
                problem: format!("entry {}: {}", n + 1, e.problem),
            })?;
            let id = key_id(&key);
            if let Some(claimed) = claimed.filter(|c| *c != id) {
                return Err(AuditConfigError {
                    field,
                    problem: format!(
                        "entry {}: labelled key id {claimed:?}, but the key's id is {id}",
                        n + 1
                    ),
                });
            }
            self.add_key(&key)?;
        }
        Ok(())
    }

    /// The ids of the keys, the writing key first.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// Whether the keyring holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The writing key.
    pub(crate) fn current(&self) -> Option<&AuditKeys> {
        self.keys.first()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&AuditKeys> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub(crate) fn all(&self) -> &[AuditKeys] {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_a_sign_is_not_a_digit() {
        let bytes = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(decode_hex(&encode_hex(&bytes)), Some(bytes));
        assert_eq!(decode_hex("AB"), Some(vec![0xab]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("+a"), None);
        assert_eq!(decode_hex("-a"), None);
    }

    #[test]
    fn a_list_adds_keys_and_refuses_a_mislabelled_one() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut ring = AuditKeyring::new();
        let list = format!("{}:{}, {}", key_id(&a), encode_hex(&a), encode_hex(&b));
        ring.add_list("keys", &list).unwrap();
        assert_eq!(ring.key_ids(), vec![key_id(&a), key_id(&b)]);
        let err = ring
            .add_list("keys", &format!("{}:{}", key_id(&a), encode_hex(&b)))
            .unwrap_err();
        assert!(err.problem.contains("labelled"), "{err}");
        assert!(
            !err.to_string().contains(&encode_hex(&b)),
            "no key in errors"
        );
    }
}
