//! What applications exchange with a session: turns and their
//! acknowledgements, buffer bindings, snapshots and lease grants.
//!
//! The messages the session actor receives are in `protocol::session`;
//! they are re-exported here for the handle.

use std::time::Duration;

use crate::context::{ContextVerdict, Intent, TurnSignal};
use crate::ids::TraceId;
use crate::lease::LeaseId;
use crate::lifecycle::State;

pub(crate) use crate::protocol::session::*;

/// One chat turn.
#[derive(Clone, Debug, Default)]
pub struct Turn {
    /// The application request's trace id, if it has one.
    pub trace_id: Option<TraceId>,
    /// What the context policy looks at: the turn's embedding, intent and
    /// negation. Empty by default (the context is then only kept fresh).
    pub signal: TurnSignal,
}

impl Turn {
    /// A turn with no trace id and no signal.
    pub fn new() -> Self {
        Turn::default()
    }

    /// With the request's trace id.
    pub fn trace_id(mut self, trace_id: TraceId) -> Self {
        self.trace_id = Some(trace_id);
        self
    }

    /// With the turn's embedding.
    pub fn embedding(mut self, embedding: Vec<f32>) -> Self {
        self.signal.embedding = Some(embedding);
        self
    }

    /// With the turn's intent and the classifier's confidence in it.
    pub fn intent(mut self, label: impl Into<String>, confidence: f32) -> Self {
        self.signal.intent = Some(Intent::new(label, confidence));
        self
    }

    /// Marks the turn as rejecting what came before.
    pub fn negation(mut self) -> Self {
        self.signal.negation = true;
        self
    }
}

/// How long an allocation lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Binding {
    /// Until the session ends.
    #[default]
    Session,
    /// Until the conversation's context goes stale (or the session ends),
    /// like the KV cache of the turns so far.
    Context,
}

/// A turn was accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct TurnAck {
    /// Turns the session has taken, this one included.
    pub turn: u64,
    /// The session's version after the turn.
    pub version: u64,
    /// What the context policy decided. `Stale` means the context was reset:
    /// its context-bound buffers are being released and a `ContextReset`
    /// event is published; the session stays established.
    pub context: ContextVerdict,
}

/// A snapshot of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Its state.
    pub state: State,
    /// Turns taken.
    pub turns: u64,
    /// GPU buffers held.
    pub buffers: usize,
    /// GPU bytes held.
    pub bytes: u64,
    /// Its version.
    pub version: u64,
}

/// What an offload of a session moved to host memory: its buffers (as the
/// pool reported them) and the KV blocks only it referenced. Blocks shared
/// with other sessions stay on the device.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct SessionOffload {
    /// The buffers moved (zero buffers when the session had none).
    pub buffers: crate::gpu::OffloadReport,
    /// KV blocks copied to host memory and given back to the block pool.
    pub kv_blocks: u64,
    /// Their bytes.
    pub kv_bytes: u64,
}

/// A lease that was granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease's id (for heartbeats and release).
    pub id: LeaseId,
    /// For a remote lease: how often to heartbeat. Zero for a local lease.
    pub heartbeat_interval: Duration,
    /// For a remote lease: silence after which it is revoked. Zero for a local lease.
    pub revoked_after: Duration,
}
