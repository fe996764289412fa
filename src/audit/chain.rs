//! The hash chain: every record carries the hash of the one before it.
//!
//! Ground rules: a line is the record's JSON (fields in declaration order,
//! `prev` last) with `,"hash":"<64 hex>"` spliced in before the closing
//! brace. The hash is HMAC-SHA256, under a key derived from the audit key,
//! of the exact bytes of the line without that hash field. So changing any
//! byte breaks the record's own hash; removing or reordering records breaks
//! `prev` (and `seq`) of the record after; and without the key nobody can
//! rebuild a consistent chain after editing it.
//!
//! Format 2 records name the key that sealed them (`key_id`), so a trail
//! written before and after a key change verifies with a keyring holding
//! both. Format 1 records (no `key_id`) are checked against every key of the
//! keyring.

use hmac::{Hmac, Mac};
use sessionbus_actors::Pseudonymizer;
use sha2::Sha256;

use super::keyring::{AuditKeyring, encode_hex, key_id};
use super::record::AuditRecord;

/// `prev` of the very first record.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash field as it ends every line: `,"hash":"` + 64 hex digits + `"}`.
const HASH_PREFIX: &str = ",\"hash\":\"";
const HASH_SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + 2;

/// The keys derived from the configured audit key, one per purpose, so the
/// chain's key is never the pseudonyms' key.
#[derive(Clone)]
pub(crate) struct AuditKeys {
    /// The key's id, written into every record it seals.
    pub(crate) id: String,
    chain: Hmac<Sha256>,
    pub(crate) pseudonyms: Pseudonymizer,
}

impl AuditKeys {
    /// Derives the keys from the configured key (already checked for length).
    pub(crate) fn derive(master: &[u8]) -> Self {
        let sub = |purpose: &str| {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(master).expect("HMAC takes keys of any length");
            mac.update(purpose.as_bytes());
            mac.finalize().into_bytes()
        };
        AuditKeys {
            id: key_id(master),
            chain: Hmac::<Sha256>::new_from_slice(&sub("sessionbus audit chain v1"))
                .expect("HMAC takes keys of any length"),
            pseudonyms: Pseudonymizer::new(&sub("sessionbus pseudonyms v1"))
                .expect("a derived key is 32 bytes"),
        }
    }

    pub(crate) fn hash(&self, body: &[u8]) -> String {
        let mut mac = self.chain.clone();
        mac.update(body);
        encode_hex(&mac.finalize().into_bytes())
    }
}

/// Where the chain stands: the next record's `seq` and `prev`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChainHead {
    pub(crate) next_seq: u64,
    pub(crate) prev: String,
}

impl ChainHead {
    pub(crate) fn genesis() -> Self {
        ChainHead {
            next_seq: 0,
            prev: GENESIS.into(),
        }
    }
}

/// Links `record` to `head` and returns its line (with the newline) and the
/// head after it. `head` is not changed, so a failed write can be retried.
pub(crate) fn seal(
    keys: &AuditKeys,
    head: &ChainHead,
    mut record: AuditRecord,
) -> (String, ChainHead) {
    record.seq = head.next_seq;
    record.prev = head.prev.clone();
    record.key_id = Some(keys.id.clone());
    let body = serde_json::to_string(&record).expect("an audit record always serializes");
    let hash = keys.hash(body.as_bytes());
    let mut line = String::with_capacity(body.len() + HASH_SUFFIX_LEN + 1);
    line.push_str(&body[..body.len() - 1]);
    line.push_str(HASH_PREFIX);
    line.push_str(&hash);
    line.push_str("\"}\n");
    let next = ChainHead {
        next_seq: record.seq + 1,
        prev: hash,
    };
    (line, next)
}

/// A line read back: the record and the hash it claims.
pub(crate) struct Opened {
    pub(crate) record: AuditRecord,
    pub(crate) hash: String,
    /// Whether the claimed hash is the content's under its key.
    pub(crate) check: Check,
}

/// What checking a record's hash found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// The hash is the content's under the key that sealed it.
    Intact,
    /// It is not: the record was changed (or sealed under a key that only claims this id).
    Changed,
    /// Sealed under a key the keyring does not hold.
    UnknownKey(String),
}

/// Reads a line (without its newline) and checks its hash under `keyring`.
pub(crate) fn open(keyring: &AuditKeyring, line: &str) -> Result<Opened, String> {
    if line.len() < HASH_SUFFIX_LEN + 2 || !line.ends_with("\"}") {
        return Err("the line does not end with its hash".into());
    }
    let split = line.len() - HASH_SUFFIX_LEN;
    let (body_open, suffix) = line.split_at(split);
    let Some(hash) = suffix
        .strip_prefix(HASH_PREFIX)
        .and_then(|rest| rest.strip_suffix("\"}"))
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    else {
        return Err("the line does not end with its hash".into());
    };
    let body = format!("{body_open}}}");
    let record: AuditRecord =
        serde_json::from_str(&body).map_err(|e| format!("not an audit record: {e}"))?;
    let sealed_by = |keys: &AuditKeys| keys.hash(body.as_bytes()) == hash;
    let check = match &record.key_id {
        Some(id) => match keyring.get(id) {
            Some(keys) if sealed_by(keys) => Check::Intact,
            Some(_) => Check::Changed,
            None => Check::UnknownKey(id.clone()),
        },
        None if keyring.all().iter().any(sealed_by) => Check::Intact,
        None => Check::Changed,
    };
    Ok(Opened {
        record,
        hash: hash.into(),
        check,
    })
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn ring(key: &[u8]) -> AuditKeyring {
        let mut ring = AuditKeyring::new();
        ring.add_key(key).unwrap();
        ring
    }

    #[test]
    fn a_sealed_line_opens_intact_and_links_to_the_head() {
        let keys = AuditKeys::derive(&[9u8; 32]);
        let head = ChainHead::genesis();
        let (line, next) = seal(&keys, &head, AuditRecord::new("session.opened", UNIX_EPOCH));
        assert!(line.ends_with("\"}\n"));
        let opened = open(&ring(&[9u8; 32]), line.trim_end()).unwrap();
        assert_eq!(opened.check, Check::Intact);
        assert_eq!(opened.record.key_id.as_deref(), Some(keys.id.as_str()));
        assert_eq!(opened.record.seq, 0);
        assert_eq!(opened.record.prev, GENESIS);
        assert_eq!(opened.hash, next.prev);
        assert_eq!(next.next_seq, 1);
    }

    #[test]
    fn a_changed_byte_or_another_key_breaks_the_hash() {
        let keys = AuditKeys::derive(&[9u8; 32]);
        let (line, _) = seal(
            &keys,
            &ChainHead::genesis(),
            AuditRecord::new("session.opened", UNIX_EPOCH),
        );
        let changed = line.trim_end().replace("session.opened", "session.closed");
        assert_eq!(
            open(&ring(&[9u8; 32]), &changed).unwrap().check,
            Check::Changed
        );
        assert_eq!(
            open(&ring(&[8u8; 32]), line.trim_end()).unwrap().check,
            Check::UnknownKey(keys.id.clone())
        );
    }

    #[test]
    fn a_truncated_line_is_not_a_record() {
        let keys = AuditKeys::derive(&[9u8; 32]);
        let (line, _) = seal(
            &keys,
            &ChainHead::genesis(),
            AuditRecord::new("session.opened", UNIX_EPOCH),
        );
        assert!(open(&ring(&[9u8; 32]), &line[..line.len() / 2]).is_err());
        assert!(open(&ring(&[9u8; 32]), &line[..line.len() - 3]).is_err());
    }
}
