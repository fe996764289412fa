//! Every key and channel the cluster uses, in one place.
//!
//! ```text
//! {p}:s:{session}          hash: node, epoch, owner, version, state (live|ended), reason; TTL
//! {p}:node:{id}:hb         the node's heartbeat (value: its epoch); TTL node_ttl
//! {p}:node:{id}:epoch      the node's fencing epoch token, `<epoch>-<incarnation>` (set on join; replaced when declared lost)
//! {p}:node:{id}:epochs     the counter the epoch numbers come from
//! {p}:node:{id}:sessions   set of the ids it owns (what a takeover ends)
//! {p}:nodes                set of node ids that joined and were not declared lost
//! {p}:inval                channel: one JSON invalidation per ended session
//! {p}:req:{id}             channel: requests forwarded to node {id}
//! {p}:rep:{id}             channel: answers to node {id}'s forwarded requests
//! ```

use sessionbus_actors::SessionId;

#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// What precedes a session id in its key (scripts build keys from ids).
    pub(crate) fn session_prefix(&self) -> String {
        format!("{}:s:", self.prefix)
    }

    pub(crate) fn session(&self, id: SessionId) -> String {
        format!("{}:s:{id}", self.prefix)
    }

    pub(crate) fn heartbeat(&self, node: &str) -> String {
        format!("{}:node:{node}:hb", self.prefix)
    }

    pub(crate) fn epoch(&self, node: &str) -> String {
        format!("{}:node:{node}:epoch", self.prefix)
    }

    pub(crate) fn epoch_counter(&self, node: &str) -> String {
        format!("{}:node:{node}:epochs", self.prefix)
    }

    pub(crate) fn node_sessions(&self, node: &str) -> String {
        format!("{}:node:{node}:sessions", self.prefix)
    }

    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    pub(crate) fn invalidations(&self) -> String {
        format!("{}:inval", self.prefix)
    }

    pub(crate) fn requests(&self, node: &str) -> String {
        format!("{}:req:{node}", self.prefix)
    }

    pub(crate) fn replies(&self, node: &str) -> String {
        format!("{}:rep:{node}", self.prefix)
    }
}
