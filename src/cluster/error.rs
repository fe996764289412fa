//! What can go wrong in the cluster layer. Session-level refusals keep their
//! engine type (`ClusterError::Session`), so a request answered by another
//! node reads exactly like a local one.

use std::time::Duration;

use sessionbus_actors::{EndReason, OpenError, SessionError, SessionId};

use super::config::ClusterConfigError;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A `[cluster]` value cannot work (names the field). Nothing was started.
    #[error(transparent)]
    Config(#[from] ClusterConfigError),
    /// `cluster.redis_url` is not a Redis URL. Nothing was started.
    #[error("invalid cluster.redis_url {url}: {reason}")]
    BadUrl {
        /// The URL, password redacted.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// A `rediss://` URL in a build without the `redis-tls` feature.
    #[error(
        "cluster.redis_url {url} asks for TLS, but sessionbus was built without the `redis-tls` feature; enable it or use redis://"
    )]
    TlsNotEnabled {
        /// The URL, password redacted.
        url: String,
    },
    /// Redis could not be reached (or refused the credentials) when the node
    /// started: a node cannot get its fencing epoch without it, so it does not start.
    #[error("cannot reach Redis at {url} to join the cluster: {source}")]
    Unreachable {
        /// The URL, password redacted.
        url: String,
        /// The client's error (connection refused, authentication failed, …).
        #[source]
        source: redis::RedisError,
    },
    /// Another process heartbeats under this node id (or a previous run of
    /// this node stopped less than `node_ttl` ago).
    #[error(
        "cluster.node_id {node:?} is in use: a node with this id heartbeated {ago_ms} ms ago; pick another id or wait for its heartbeat to expire"
    )]
    NodeIdInUse {
        /// The id.
        node: String,
        /// How long the current heartbeat still lives, in milliseconds.
        ago_ms: i64,
    },
    /// Redis failed a directory operation (unreachable, timed out). The node
    /// keeps serving its local sessions and queues the update.
    #[error("Redis directory unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    /// A versioned write carried a version that is no longer current: someone
    /// else changed the entry first. Nothing was written.
    #[error(
        "stale write to session {id}: expected version {expected}, the directory holds {current}"
    )]
    StaleVersion {
        /// The session.
        id: SessionId,
        /// The version the writer based its write on.
        expected: u64,
        /// The version in the directory.
        current: u64,
    },
    /// The node was declared lost and its epoch bumped: it may never act as
    /// owner again. Its local sessions have been (or are being) ended with `node_lost`.
    #[error(
        "node {node} is fenced: it writes with epoch {epoch}, the directory is at epoch {current}"
    )]
    Fenced {
        /// This node.
        node: String,
        /// The epoch this node holds.
        epoch: u64,
        /// The epoch in the directory.
        current: u64,
    },
    /// The session is owned by another node in the directory; only its owner writes it.
    #[error("session {id} is owned by node {owner}")]
    NotOwner {
        /// The session.
        id: SessionId,
        /// Its owner.
        owner: String,
    },
    /// The session has ended in the directory (possibly on another node).
    #[error("session {id} has ended (version {version}: {reason})")]
    Ended {
        /// The session.
        id: SessionId,
        /// Its last version.
        version: u64,
        /// Why it ended.
        reason: EndReason,
    },
    /// A request forwarded to the owner node got no answer in time.
    #[error("owner node {node} of session {id} did not answer within {timeout:?}")]
    OwnerUnreachable {
        /// The session.
        id: SessionId,
        /// Its owner.
        node: String,
        /// `cluster.forward_timeout`.
        timeout: Duration,
    },
    /// The session refused the request (same error as a local call).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The session could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The owner node refused with an error that has no exact local type.
    #[error("owner node {node} refused the request for session {id}: {message}")]
    Remote {
        /// The session.
        id: SessionId,
        /// The owner node.
        node: String,
        /// Its error, as text.
        message: String,
    },
    /// The node has left the cluster (or was stopped).
    #[error("the cluster node has stopped")]
    Stopped,
}

impl ClusterError {
    /// The offending field, for configuration errors.
    pub fn field(&self) -> Option<&str> {
        match self {
            ClusterError::Config(e) => Some(e.field),
            ClusterError::BadUrl { .. } | ClusterError::TlsNotEnabled { .. } => {
                Some("cluster.redis_url")
            }
            ClusterError::NodeIdInUse { .. } => Some("cluster.node_id"),
            _ => None,
        }
    }

    /// Whether the error says the session is gone (ended here or elsewhere).
    pub fn is_gone(&self) -> bool {
        match self {
            ClusterError::Session(e) => e.is_gone(),
            ClusterError::Ended { .. } => true,
            _ => false,
        }
    }
}
