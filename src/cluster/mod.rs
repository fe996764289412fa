//! Beyond one machine (cargo feature `redis`): a Redis session directory,
//! cross-node invalidation, routing to the owner node, and fencing.
//!
//! Each process runs a [`Runtime`](crate::Runtime) and a [`ClusterNode`]
//! next to it. The node mirrors the engine's sessions into the directory
//! (from the engine's bus: started → registered, ended → ended), heartbeats,
//! and answers for any session of the cluster:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use sessionbus::cluster::{ClusterConfig, ClusterNode};
//! use sessionbus::Runtime;
//! use sessionbus::config::Config;
//!
//! let runtime = Runtime::start(Config::default()).await?;
//! // The cluster key comes from `SESSIONBUS_CLUSTER_KEYS` (or `ClusterConfig::keys`).
//! let node = ClusterNode::start(runtime.engine(), ClusterConfig::new("redis://127.0.0.1:6379", "node-a")).await?;
//!
//! let session = node.open("user-42").await?;     // registered in the directory before it returns
//! // ... on any node: node.close(id, caller) is forwarded to the owner.
//! let receipt = node.close(session.id(), sessionbus::Owner::new("user-42")).await?;
//!
//! runtime.shutdown().await;                       // ends the rest; the node writes the ends
//! node.leave().await?;                            // then says goodbye
//! # Ok(()) }
//! ```
//!
//! # Consistency model
//!
//! - **Immediate (one atomic script):** a directory write checks the writer's
//!   fencing epoch and the entry's version; an end and its invalidation are
//!   published in the same script. A stale write is refused (`StaleVersion`),
//!   a fenced node's write is refused (`Fenced`).
//! - **Eventual, bounded by a round trip:** other nodes drop what they hold
//!   for an ended session when its invalidation arrives (pub/sub, sub-millisecond
//!   on a LAN; see BENCHMARKS.md).
//! - **Eventual, bounded by `node_ttl` + `heartbeat_interval`:** a dead
//!   node is declared lost, fenced, and its sessions ended.
//! - **After Redis comes back:** each node resyncs within one heartbeat interval.
//! - **Last backstop:** entries expire `session_ttl` after their last renewal.
//!
//! Every node-to-node message is signed with the cluster key
//! (`ClusterConfig::keys`); nothing that arrives through Redis is acted on
//! unverified. A missing epoch means fenced, so a Redis that forgot its data
//! (no persistence) fences every node: run it with AOF. ARCHITECTURE.md has
//! the rules, the takeover rule after outages, and what survives which loss.

mod config;
mod directory;
mod error;
mod invalidation;
mod keys;
mod liveness;
mod node;
mod routing;
mod scripts;
mod signing;
mod state;
mod sync;
mod wire;

pub use config::{ClusterConfig, ClusterConfigError, ClusterKey, KEYS_ENV, MIN_SECRET_BYTES};
pub use directory::{Directory, Entry, EntryState, Joined, NodeStamp, Renewal, Takeover};
pub use error::ClusterError;
pub use node::ClusterNode;
pub use signing::{MAX_FRAME_BYTES, MAX_NONCES, Rejection};
pub use state::{ClusterHealth, ClusterStats};
pub use wire::Invalidation;
