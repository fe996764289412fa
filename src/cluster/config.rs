//! The `[cluster]` section: where Redis is, who this node is, and the timings
//! of heartbeats, renewals and forwarding. Validation names the field.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sessionbus_actors::units::{self, format_duration};

/// How this node joins the cluster. `sessionbus.toml` shows the section,
/// commented out, with every key and its default.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The Redis server holding the directory. Credentials go in the URL
    /// (`redis://user:password@host:6379`); they are never logged.
    pub redis_url: String,
    /// This node's name in the directory. Must be unique among running nodes:
    /// a start while another process heartbeats under the same id is refused.
    pub node_id: String,
    /// Namespace for keys and channels, so several clusters (or test runs) can share one Redis.
    pub key_prefix: String,
    /// How often the node refreshes its heartbeat (and looks for lost nodes).
    #[serde(with = "units::duration")]
    pub heartbeat_interval: Duration,
    /// How long a heartbeat lives. A node silent this long is declared lost:
    /// its epoch is bumped (fenced) and its sessions end with `node_lost`.
    /// At least twice `heartbeat_interval`, so one late beat is not a loss.
    #[serde(with = "units::duration")]
    pub node_ttl: Duration,
    /// How long a session's entry lives without renewal: the last backstop
    /// when an end is lost. Keep it above `expiry.idle_timeout` so an idle
    /// session ends in the engine before its entry lapses.
    #[serde(with = "units::duration")]
    pub session_ttl: Duration,
    /// Renewals are coalesced: once per interval, one batch renews the entries
    /// of the sessions active since the last batch (not one write per message).
    #[serde(with = "units::duration")]
    pub renew_interval: Duration,
    /// Directory updates (registrations, ends) kept while Redis is unreachable.
    /// Updates beyond it are dropped and counted; the resync after reconnect
    /// rebuilds the directory from the node's live sessions anyway.
    pub queue_bound: usize,
    /// How long a request forwarded to another node may take before
    /// `ClusterError::OwnerUnreachable`.
    #[serde(with = "units::duration")]
    pub forward_timeout: Duration,
    /// Ended session ids remembered with their last version, so an
    /// invalidation older than one already seen is ignored.
    pub seen_ended: usize,
    /// The cluster's shared secrets, which sign every node-to-node message
    /// (HMAC-SHA256). The first key signs; every key listed verifies, so a
    /// secret is rotated without downtime: add the new key second on every
    /// node, then move it first, then drop the old one. Empty: the keys come
    /// from the `SESSIONBUS_CLUSTER_KEYS` environment variable
    /// (`id:hex,id:hex`), and a node with neither refuses to start.
    pub keys: Vec<ClusterKey>,
    /// How far a signed message's timestamp may be from this node's clock.
    /// Outside it the message is a replay (or a clock too far off) and is
    /// refused; inside it each message is accepted once (its nonce is remembered).
    #[serde(with = "units::duration")]
    pub replay_window: Duration,
    /// Nodes allowed to forward calls made with operator rights. A request
    /// from any other node that claims them is refused: owner checks cannot
    /// be skipped by writing to Redis.
    pub operator_nodes: Vec<String>,
    /// Forwarded requests this node serves at once. Past it a request is
    /// refused at once with a `busy` answer instead of being queued or spawned.
    pub max_served_requests: usize,
}

/// The environment variable holding the cluster's keys when `cluster.keys` is empty.
pub const KEYS_ENV: &str = "SESSIONBUS_CLUSTER_KEYS";

/// The shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// One cluster secret and its id (the id travels with each signed message,
/// so a receiver knows which key to verify it with).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterKey {
    /// Its id: 1 to 32 letters, digits, '-' or '_'.
    pub id: String,
    /// The secret, as hex: at least 32 bytes (64 hex digits).
    pub secret_hex: String,
}

/// The Redis URL with its password redacted; the keys by id only.
impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &self.redacted_url())
            .field("node_id", &self.node_id)
            .field("key_prefix", &self.key_prefix)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("node_ttl", &self.node_ttl)
            .field("session_ttl", &self.session_ttl)
            .field("renew_interval", &self.renew_interval)
            .field("queue_bound", &self.queue_bound)
            .field("forward_timeout", &self.forward_timeout)
            .field("seen_ended", &self.seen_ended)
            .field("keys", &self.keys)
            .field("replay_window", &self.replay_window)
            .field("operator_nodes", &self.operator_nodes)
            .field("max_served_requests", &self.max_served_requests)
            .finish()
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKey")
            .field("id", &self.id)
            .field("secret_hex", &"***")
            .finish()
    }
}

impl ClusterKey {
    /// A key from its id and raw secret bytes.
    pub fn new(id: impl Into<String>, secret: &[u8]) -> Self {
        ClusterKey {
            id: id.into(),
            secret_hex: data_encoding::HEXLOWER.encode(secret),
        }
    }

    /// The secret's bytes, or why they are not a usable secret.
    pub(crate) fn secret(&self) -> Result<Vec<u8>, String> {
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(self.secret_hex.trim().as_bytes())
            .map_err(|e| format!("key {:?}: its secret is not hex ({e})", self.id))?;
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "key {:?}: its secret has {} bytes, at least {MIN_SECRET_BYTES} are needed",
                self.id,
                bytes.len()
            ));
        }
        Ok(bytes)
    }

    /// Parses `SESSIONBUS_CLUSTER_KEYS`' form: `id:hex,id:hex`.
    pub fn parse_list(text: &str) -> Result<Vec<ClusterKey>, ClusterConfigError> {
        text.split(',')
            .map(str::trim)
            .filter(|one| !one.is_empty())
            .map(|one| {
                let (id, secret) = one.split_once(':').ok_or_else(|| {
                    bad(
                        "cluster.keys",
                        format!("{KEYS_ENV}: expected id:hex, got an entry without ':'"),
                    )
                })?;
                Ok(ClusterKey {
                    id: id.to_string(),
                    secret_hex: secret.to_string(),
                })
            })
            .collect()
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: "redis://127.0.0.1:6379".into(),
            node_id: "node-a".into(),
            key_prefix: "sessionbus".into(),
            heartbeat_interval: Duration::from_secs(1),
            node_ttl: Duration::from_secs(5),
            session_ttl: Duration::from_secs(3600),
            renew_interval: Duration::from_secs(10),
            queue_bound: 100_000,
            forward_timeout: Duration::from_secs(2),
            seen_ended: 100_000,
            keys: Vec::new(),
            replay_window: Duration::from_secs(30),
            operator_nodes: Vec::new(),
            max_served_requests: 256,
        }
    }
}

/// A `[cluster]` value that cannot work. Names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ClusterConfigError {
    /// The field's path, e.g. `cluster.node_id`.
    pub field: &'static str,
    /// What is wrong and what would work.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> ClusterConfigError {
    ClusterConfigError {
        field,
        reason: reason.into(),
    }
}

/// Node ids and prefixes go into key names and `:`-separated script answers.
fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl ClusterConfig {
    /// A configuration for `node_id` against `redis_url`, other fields at their defaults.
    pub fn new(redis_url: impl Into<String>, node_id: impl Into<String>) -> Self {
        ClusterConfig {
            redis_url: redis_url.into(),
            node_id: node_id.into(),
            ..ClusterConfig::default()
        }
    }

    /// Refuses values that cannot work, naming the first bad field. The URL's
    /// syntax is checked when the node starts (`ClusterError::BadUrl`).
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        if self.redis_url.trim().is_empty() {
            return Err(bad(
                "cluster.redis_url",
                "must not be empty (e.g. redis://127.0.0.1:6379)",
            ));
        }
        if !is_name(&self.node_id) {
            return Err(bad(
                "cluster.node_id",
                format!(
                    "{:?}: use 1 to 64 letters, digits, '-', '_' or '.'",
                    self.node_id
                ),
            ));
        }
        if !is_name(&self.key_prefix) {
            return Err(bad(
                "cluster.key_prefix",
                format!(
                    "{:?}: use 1 to 64 letters, digits, '-', '_' or '.'",
                    self.key_prefix
                ),
            ));
        }
        // Redis takes TTLs in whole milliseconds.
        for (field, value) in [
            ("cluster.heartbeat_interval", self.heartbeat_interval),
            ("cluster.node_ttl", self.node_ttl),
            ("cluster.session_ttl", self.session_ttl),
            ("cluster.renew_interval", self.renew_interval),
            ("cluster.forward_timeout", self.forward_timeout),
            ("cluster.replay_window", self.replay_window),
        ] {
            if value < Duration::from_millis(1) {
                return Err(bad(
                    field,
                    format!(
                        "must be at least \"1ms\", got \"{}\"",
                        format_duration(value)
                    ),
                ));
            }
            if value > units::MAX_DURATION {
                return Err(bad(field, "must be at most ten years"));
            }
        }
        if self.node_ttl < 2 * self.heartbeat_interval {
            return Err(bad(
                "cluster.node_ttl",
                format!(
                    "\"{}\" is less than twice heartbeat_interval (\"{}\"): one late heartbeat would declare the node lost",
                    format_duration(self.node_ttl),
                    format_duration(self.heartbeat_interval)
                ),
            ));
        }
        if self.renew_interval * 2 > self.session_ttl {
            return Err(bad(
                "cluster.renew_interval",
                format!(
                    "\"{}\" is more than half of session_ttl (\"{}\"): active sessions' entries would lapse between renewals",
                    format_duration(self.renew_interval),
                    format_duration(self.session_ttl)
                ),
            ));
        }
        if self.queue_bound == 0 {
            return Err(bad("cluster.queue_bound", "must be above zero"));
        }
        if self.seen_ended == 0 {
            return Err(bad("cluster.seen_ended", "must be above zero"));
        }
        self.validate_keys(&self.keys)?;
        if let Some(node) = self.operator_nodes.iter().find(|n| !is_name(n)) {
            return Err(bad(
                "cluster.operator_nodes",
                format!("{node:?} is not a node id: use 1 to 64 letters, digits, '-', '_' or '.'"),
            ));
        }
        if self.max_served_requests == 0 {
            return Err(bad("cluster.max_served_requests", "must be above zero"));
        }
        Ok(())
    }

    /// The keys this node signs and verifies with: `cluster.keys`, else the
    /// environment's. Refuses none, bad hex, short secrets and repeated ids.
    pub(crate) fn resolved_keys(&self) -> Result<Vec<ClusterKey>, ClusterConfigError> {
        let keys = match self.keys.is_empty() {
            false => self.keys.clone(),
            true => match std::env::var(KEYS_ENV) {
                Ok(text) => ClusterKey::parse_list(&text)?,
                Err(_) => Vec::new(),
            },
        };
        if keys.is_empty() {
            return Err(bad(
                "cluster.keys",
                format!(
                    "no cluster secret: every node-to-node message is signed, so set cluster.keys or {KEYS_ENV}=\"k1:<64 hex digits>\" (the same on every node; e.g. from `openssl rand -hex 32`)"
                ),
            ));
        }
        self.validate_keys(&keys)?;
        Ok(keys)
    }

    fn validate_keys(&self, keys: &[ClusterKey]) -> Result<(), ClusterConfigError> {
        let mut ids = std::collections::HashSet::new();
        for key in keys {
            let id_ok = !key.id.is_empty()
                && key.id.len() <= 32
                && key
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
            if !id_ok {
                return Err(bad(
                    "cluster.keys",
                    format!(
                        "key id {:?}: use 1 to 32 letters, digits, '-' or '_'",
                        key.id
                    ),
                ));
            }
            if !ids.insert(key.id.as_str()) {
                return Err(bad(
                    "cluster.keys",
                    format!("key id {:?} is listed twice", key.id),
                ));
            }
            key.secret().map_err(|reason| bad("cluster.keys", reason))?;
        }
        Ok(())
    }

    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact(&self.redis_url)
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or("");
            if credentials.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://***@{host}")
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_field() {
        let base = ClusterConfig::default;
        for (config, field) in [
            (
                ClusterConfig {
                    node_id: "".into(),
                    ..base()
                },
                "node_id",
            ),
            (
                ClusterConfig {
                    node_id: "a:b".into(),
                    ..base()
                },
                "node_id",
            ),
            (
                ClusterConfig {
                    key_prefix: "x y".into(),
                    ..base()
                },
                "key_prefix",
            ),
            (
                ClusterConfig {
                    redis_url: " ".into(),
                    ..base()
                },
                "redis_url",
            ),
            (
                ClusterConfig {
                    heartbeat_interval: Duration::ZERO,
                    ..base()
                },
                "heartbeat_interval",
            ),
            (
                ClusterConfig {
                    node_ttl: Duration::from_millis(1500),
                    ..base()
                },
                "node_ttl",
            ),
            (
                ClusterConfig {
                    session_ttl: Duration::ZERO,
                    ..base()
                },
                "session_ttl",
            ),
            (
                ClusterConfig {
                    renew_interval: Duration::ZERO,
                    ..base()
                },
                "renew_interval",
            ),
            (
                ClusterConfig {
                    session_ttl: Duration::from_secs(10),
                    ..base()
                },
                "renew_interval",
            ),
            (
                ClusterConfig {
                    queue_bound: 0,
                    ..base()
                },
                "queue_bound",
            ),
            (
                ClusterConfig {
                    forward_timeout: Duration::ZERO,
                    ..base()
                },
                "forward_timeout",
            ),
            (
                ClusterConfig {
                    seen_ended: 0,
                    ..base()
                },
                "seen_ended",
            ),
        ] {
            let err = config.validate().unwrap_err();
            assert_eq!(err.field, format!("cluster.{field}"), "{err}");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn cluster_keys_are_refused_naming_what_is_wrong_and_never_printed() {
        let with = |keys: Vec<ClusterKey>| ClusterConfig {
            keys,
            ..ClusterConfig::default()
        };
        let secret = "ab".repeat(32);
        let key = |id: &str, hex: &str| ClusterKey {
            id: id.into(),
            secret_hex: hex.into(),
        };
        for (keys, says) in [
            (vec![key("k1", &"ab".repeat(16))], "at least 32"),
            (vec![key("k1", &format!("+{}", "a".repeat(63)))], "not hex"),
            (vec![key("k1", &"zz".repeat(32))], "not hex"),
            (vec![key("k 1", &secret)], "key id"),
            (vec![key("k1", &secret), key("k1", &secret)], "twice"),
        ] {
            let err = with(keys).validate().unwrap_err();
            assert_eq!(err.field, "cluster.keys");
            assert!(err.to_string().contains(says), "{err}");
            assert!(!err.to_string().contains("abab"), "secret printed: {err}");
        }
        assert_eq!(with(vec![key("k1", &secret)]).validate(), Ok(()));
        let debug = format!("{:?}", with(vec![key("k1", &secret)]));
        assert!(!debug.contains("abab"), "{debug}");
        let listed = ClusterKey::parse_list(&format!("k2:{secret}, k1:{secret}")).unwrap();
        assert_eq!(
            listed.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            ["k2", "k1"]
        );
        assert!(ClusterKey::parse_list("k1").is_err());
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact("redis://:s3cret@h:6379"), "redis://:***@h:6379");
        assert_eq!(
            redact("rediss://bob:s3cret@h:6379/2"),
            "rediss://bob:***@h:6379/2"
        );
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        let config = ClusterConfig {
            redis_url: "redis://:s3cret@h:6379".into(),
            ..ClusterConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
