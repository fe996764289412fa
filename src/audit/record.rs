//! One audit record: what happened, to what, by whom (pseudonymised), when.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::facts::TrailFacts;

/// What an audit record says happened.
pub mod action {
    /// The audit trail started (first record of a process).
    pub const RUNTIME_STARTED: &str = "runtime.started";
    /// A session was opened.
    pub const SESSION_OPENED: &str = "session.opened";
    /// A session was closed by its owner or an operator.
    pub const SESSION_CLOSED: &str = "session.closed";
    /// A session's idle timeout or TTL ran out.
    pub const SESSION_EXPIRED: &str = "session.expired";
    /// A session was ended to make room.
    pub const SESSION_EVICTED: &str = "session.evicted";
    /// A session was ended by the runtime's shutdown.
    pub const SESSION_SHUTDOWN: &str = "session.shutdown";
    /// A session ended otherwise (disconnected, crashed, lease lost): see `reason`.
    pub const SESSION_ENDED: &str = "session.ended";
    /// A session's conversation context was reset (its context memory released).
    pub const CONTEXT_RESET: &str = "context.reset";
    /// A session's GPU memory was released.
    pub const RESOURCES_RELEASED: &str = "resources.released";
    /// Records could not be written (disk full, I/O error); `reason` says how many.
    pub const RECORDS_LOST: &str = "audit.records_lost";
    /// Records of earlier runs are missing, or a torn line was found at start:
    /// `reason` says what, `trail` names it (`lost`, `torn`).
    pub const GAP: &str = "audit.gap";
    /// Retention deleted files (`trail.files`); `trail.trail_from` is where the trail now begins.
    pub const FILES_DELETED: &str = "audit.files_deleted";
    /// The runtime shut down; the last record a clean shutdown writes.
    pub const RUNTIME_SHUTDOWN: &str = "runtime.shutdown";
}

/// One line of the trail. Serialized in this field order, which is part of
/// the format: the chain hashes the exact bytes.
///
/// Operator, owner and client IP are pseudonyms (`p:` + 32 hex digits,
/// HMAC-SHA256 under the audit key), never the identities themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the trail, from 0, across files and restarts.
    pub seq: u64,
    /// When (RFC 3339, UTC, microseconds).
    pub ts: String,
    /// What happened (see [`action`]).
    pub action: String,
    /// The resource acted on: a session id; `null` for runtime records.
    pub resource: Option<String>,
    /// Who acted (pseudonym): the owner who opened, the caller who closed,
    /// the runtime's own operator for expiry and shutdown; `null` when no
    /// request did it (a disconnect, a crash, a lost lease).
    pub operator: Option<String>,
    /// The session's owner (pseudonym).
    pub owner: Option<String>,
    /// The client's IP address given at open (pseudonym).
    pub client_ip: Option<String>,
    /// The trace of the request that caused it (32 hex digits).
    pub trace_id: Option<String>,
    /// Why (an end reason, a context-reset reason, …).
    pub reason: Option<String>,
    /// GPU bytes concerned (held at the end, released, …).
    pub bytes: Option<u64>,
    /// The id of the key that sealed it (16 hex digits); absent in format 1 records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Facts about the trail itself, on `runtime.started`, `audit.gap` and
    /// `audit.files_deleted` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trail: Option<TrailFacts>,
    /// The hash of the record before it (64 hex digits; zeros for the very first).
    pub prev: String,
}

impl AuditRecord {
    /// A record of `action` at `at`, every optional field empty; the chain
    /// fills `seq` and `prev`.
    pub fn new(action: &str, at: SystemTime) -> Self {
        AuditRecord {
            seq: 0,
            ts: rfc3339_utc(at),
            action: action.into(),
            resource: None,
            operator: None,
            owner: None,
            client_ip: None,
            trace_id: None,
            reason: None,
            bytes: None,
            key_id: None,
            trail: None,
            prev: String::new(),
        }
    }
}

/// `at` as RFC 3339 in UTC with microseconds, e.g. `2026-11-25T21:50:00.123456Z`.
pub(crate) fn rfc3339_utc(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, micros: u64| {
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)
        };
        assert_eq!(rfc3339_utc(at(0, 0)), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day in a year divisible by 400)
        assert_eq!(
            rfc3339_utc(at(951_782_400, 5)),
            "2000-02-29T00:00:00.000005Z"
        );
        assert_eq!(
            rfc3339_utc(at(1_700_000_000, 123_456)),
            "2023-11-14T22:13:20.123456Z"
        );
        // 2100-03-01 (2100 is not a leap year)
        assert_eq!(
            rfc3339_utc(at(4_107_542_400, 0)),
            "2100-03-01T00:00:00.000000Z"
        );
    }
}
