//! What travels between nodes through Redis, as JSON inside a signed frame
//! (`signing.rs`): invalidations, and requests forwarded to a session's owner
//! with their answers. Who sent a message is the frame's signed sender, never
//! a field of the message.
//!
//! Engine types stay free of serde-for-the-wire: this module maps them to
//! small wire types and back, so a forwarded call returns exactly the result
//! type of a local one. Instants cannot cross machines: a forwarded receipt
//! carries durations and is rebuilt on the caller's clock (see `into_receipt`).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sessionbus_actors::{
    Caller, ContextVerdict, EndReason, Event, Intent, LeaseGrant, LeaseId, ReleaseReceipt,
    SessionError, SessionId, StaleReason, State, TraceId, Turn, TurnAck,
};

/// A session ended somewhere in the cluster: every node drops what it holds for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    /// The session.
    pub id: SessionId,
    /// Its directory version after the end. Older versions are ignored.
    pub version: u64,
    /// Why it ended.
    pub reason: EndReason,
    /// The node that owned it.
    pub node: String,
    /// The node that ended it in the directory (the owner, or the survivor that took over).
    pub by: String,
}

/// A request forwarded to a session's owner node. `req` is a random 128-bit
/// id: the reply must carry it and come from the node asked.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) req: u128,
    pub(crate) id: SessionId,
    pub(crate) caller: WireCaller,
    pub(crate) op: Op,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Op {
    Close,
    Chat(WireTurn),
    Touch,
    LeaseRemote,
    LeaseHeartbeat(u64),
    LeaseRelease(u64),
}

/// The owner's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub(crate) req: u128,
    pub(crate) result: Result<Done, WireError>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Done {
    Receipt(WireReceipt),
    Ack(WireAck),
    Lease {
        id: u64,
        heartbeat_interval_us: u64,
        revoked_after_us: u64,
    },
    Unit,
}

/// Who a forwarded call is made for: a user, by its owner pseudonym (never
/// in clear), or an operator role (honoured only from `cluster.operator_nodes`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireCaller {
    User(String),
    Operator(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireTurn {
    trace_id: Option<u128>,
    embedding: Option<Vec<f32>>,
    intent: Option<(String, f32)>,
    negation: bool,
}

impl From<&Turn> for WireTurn {
    fn from(turn: &Turn) -> Self {
        WireTurn {
            trace_id: turn.trace_id.map(|t| t.0),
            embedding: turn.signal.embedding.clone(),
            intent: turn
                .signal
                .intent
                .as_ref()
                .map(|i| (i.label.clone(), i.confidence)),
            negation: turn.signal.negation,
        }
    }
}

impl From<WireTurn> for Turn {
    fn from(wire: WireTurn) -> Self {
        let mut turn = Turn::new();
        turn.trace_id = wire.trace_id.map(TraceId);
        turn.signal.embedding = wire.embedding;
        turn.signal.intent = wire
            .intent
            .map(|(label, confidence)| Intent::new(label, confidence));
        turn.signal.negation = wire.negation;
        turn
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireAck {
    turn: u64,
    version: u64,
    verdict: WireVerdict,
}

#[derive(Debug, Serialize, Deserialize)]
enum WireVerdict {
    Fresh(Option<f32>),
    LowSimilarity(f32, f32),
    Decayed(f32, f32),
    IntentSwitch(String, String, f32),
    Negation,
}

impl From<&TurnAck> for WireAck {
    fn from(ack: &TurnAck) -> Self {
        let verdict = match &ack.context {
            ContextVerdict::Fresh { similarity } => WireVerdict::Fresh(*similarity),
            ContextVerdict::Stale(StaleReason::LowSimilarity {
                similarity,
                threshold,
            }) => WireVerdict::LowSimilarity(*similarity, *threshold),
            ContextVerdict::Stale(StaleReason::Decayed { weight, min_weight }) => {
                WireVerdict::Decayed(*weight, *min_weight)
            }
            ContextVerdict::Stale(StaleReason::IntentSwitch {
                from,
                to,
                confidence,
            }) => WireVerdict::IntentSwitch(from.clone(), to.clone(), *confidence),
            ContextVerdict::Stale(StaleReason::Negation) => WireVerdict::Negation,
        };
        WireAck {
            turn: ack.turn,
            version: ack.version,
            verdict,
        }
    }
}

impl From<WireAck> for TurnAck {
    fn from(wire: WireAck) -> Self {
        let context = match wire.verdict {
            WireVerdict::Fresh(similarity) => ContextVerdict::Fresh { similarity },
            WireVerdict::LowSimilarity(similarity, threshold) => {
                ContextVerdict::Stale(StaleReason::LowSimilarity {
                    similarity,
                    threshold,
                })
            }
            WireVerdict::Decayed(weight, min_weight) => {
                ContextVerdict::Stale(StaleReason::Decayed { weight, min_weight })
            }
            WireVerdict::IntentSwitch(from, to, confidence) => {
                ContextVerdict::Stale(StaleReason::IntentSwitch {
                    from,
                    to,
                    confidence,
                })
            }
            WireVerdict::Negation => ContextVerdict::Stale(StaleReason::Negation),
        };
        TurnAck {
            turn: wire.turn,
            version: wire.version,
            context,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireReceipt {
    reason: EndReason,
    buffers: u64,
    bytes: u64,
    end_to_release_us: u64,
    paced_for_us: u64,
    error: Option<String>,
    /// The end's trace id (`TraceId`'s 128 bits), so a forwarded close keeps it.
    #[serde(default)]
    trace_id: u128,
}

fn us(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

impl From<&ReleaseReceipt> for WireReceipt {
    fn from(r: &ReleaseReceipt) -> Self {
        WireReceipt {
            reason: r.reason,
            buffers: r.buffers,
            bytes: r.bytes,
            end_to_release_us: us(r.end_to_release()),
            paced_for_us: us(r.paced_for),
            error: r.error.clone(),
            trace_id: r.trace_id.0,
        }
    }
}

impl WireReceipt {
    /// The receipt on the caller's clock: `released_at` is when the answer
    /// arrived, `ended_at` that minus the owner's end-to-release time. The
    /// deadline (instants on the owner's clock) does not cross.
    pub(crate) fn into_receipt(self, id: SessionId) -> ReleaseReceipt {
        let released_at = Instant::now();
        let end_to_release = Duration::from_micros(self.end_to_release_us);
        ReleaseReceipt {
            id,
            reason: self.reason,
            buffers: self.buffers,
            bytes: self.bytes,
            ended_at: released_at
                .checked_sub(end_to_release)
                .unwrap_or(released_at),
            released_at,
            paced_for: Duration::from_micros(self.paced_for_us),
            error: self.error,
            deadline: None,
            trace_id: TraceId(self.trace_id),
            // The steps were the owner's; the forwarded answer carries none.
            steps: Default::default(),
        }
    }
}

impl Done {
    pub(crate) fn lease(grant: &LeaseGrant) -> Self {
        Done::Lease {
            id: grant.id.0,
            heartbeat_interval_us: us(grant.heartbeat_interval),
            revoked_after_us: us(grant.revoked_after),
        }
    }

    pub(crate) fn to_grant(
        id: u64,
        heartbeat_interval_us: u64,
        revoked_after_us: u64,
    ) -> LeaseGrant {
        LeaseGrant {
            id: LeaseId(id),
            heartbeat_interval: Duration::from_micros(heartbeat_interval_us),
            revoked_after: Duration::from_micros(revoked_after_us),
        }
    }
}

/// The session errors that have an exact wire form; others travel as text.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireError {
    /// The caller may not act on the session (its name stays on the asking node).
    Unauthorized,
    /// The owner node serves `limit` forwarded requests at once and had no room.
    Busy {
        limit: usize,
    },
    /// The asking node may not make this call (operator rights not granted to it).
    NotPermitted(String),
    NotEstablished {
        state: String,
        event: String,
        reason: Option<EndReason>,
    },
    Unknown,
    RuntimeStopped,
    Other(String),
}

fn state_name(state: State) -> &'static str {
    state.as_str()
}

fn state_from(name: &str) -> State {
    [
        State::Init,
        State::Established,
        State::Closing,
        State::Closed,
    ]
    .into_iter()
    .find(|s| s.as_str() == name)
    .unwrap_or(State::Closed)
}

fn event_name(event: Event) -> String {
    match event {
        Event::End(reason) => format!("end:{reason}"),
        other => other.to_string(),
    }
}

fn event_from(name: &str) -> Event {
    if let Some(reason) = name.strip_prefix("end:") {
        let reason = EndReason::ALL
            .into_iter()
            .find(|r| r.as_str() == reason)
            .unwrap_or(EndReason::Closed);
        return Event::End(reason);
    }
    [
        Event::Establish,
        Event::Message,
        Event::Touch,
        Event::Allocate,
        Event::ContextReset,
        Event::Released,
    ]
    .into_iter()
    .find(|e| e.to_string() == name)
    .unwrap_or(Event::Touch)
}

impl From<&SessionError> for WireError {
    fn from(e: &SessionError) -> Self {
        match e {
            SessionError::Unauthorized { .. } => WireError::Unauthorized,
            SessionError::NotEstablished {
                state,
                event,
                reason,
                ..
            } => WireError::NotEstablished {
                state: state_name(*state).into(),
                event: event_name(*event),
                reason: *reason,
            },
            SessionError::Unknown { .. } => WireError::Unknown,
            SessionError::RuntimeStopped => WireError::RuntimeStopped,
            other => WireError::Other(other.to_string()),
        }
    }
}

impl WireError {
    /// The error a local call would have given, where it has an exact form.
    /// `caller` is the asking node's own caller (its name never travelled).
    pub(crate) fn into_session_error(
        self,
        id: SessionId,
        caller: &Caller,
    ) -> Result<SessionError, String> {
        Ok(match self {
            WireError::Unauthorized => SessionError::Unauthorized {
                id,
                caller: caller.to_string(),
            },
            WireError::Busy { limit } => {
                return Err(format!("busy: serving {limit} forwarded requests already"));
            }
            WireError::NotPermitted(why) => return Err(format!("not permitted: {why}")),
            WireError::NotEstablished {
                state,
                event,
                reason,
            } => SessionError::NotEstablished {
                id,
                state: state_from(&state),
                event: event_from(&event),
                reason,
            },
            WireError::Unknown => SessionError::Unknown { id },
            WireError::RuntimeStopped => SessionError::RuntimeStopped,
            WireError::Other(message) => return Err(message),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionbus_actors::Owner;

    #[test]
    fn session_errors_cross_unchanged() {
        let id = SessionId::random();
        let bob = Caller::User(Owner::new("bob"));
        for e in [
            SessionError::Unauthorized {
                id,
                caller: bob.to_string(),
            },
            SessionError::NotEstablished {
                id,
                state: State::Closed,
                event: Event::End(EndReason::Closed),
                reason: Some(EndReason::NodeLost),
            },
            SessionError::NotEstablished {
                id,
                state: State::Closing,
                event: Event::Message,
                reason: None,
            },
            SessionError::Unknown { id },
            SessionError::RuntimeStopped,
        ] {
            let text = serde_json::to_string(&WireError::from(&e)).unwrap();
            let back: WireError = serde_json::from_str(&text).unwrap();
            assert!(!text.contains("bob"), "{text}");
            assert_eq!(back.into_session_error(id, &bob), Ok(e));
        }
    }

    #[test]
    fn turns_and_acks_cross_unchanged() {
        let turn = Turn::new().trace_id(TraceId(7)).embedding(vec![0.5, -1.0]);
        let wire: WireTurn =
            serde_json::from_str(&serde_json::to_string(&WireTurn::from(&turn)).unwrap()).unwrap();
        let back = Turn::from(wire);
        assert_eq!(back.trace_id, turn.trace_id);
        assert_eq!(back.signal, turn.signal);
        let ack = TurnAck {
            turn: 3,
            version: 9,
            context: ContextVerdict::Stale(StaleReason::IntentSwitch {
                from: "a".into(),
                to: "b".into(),
                confidence: 0.9,
            }),
        };
        let wire: WireAck =
            serde_json::from_str(&serde_json::to_string(&WireAck::from(&ack)).unwrap()).unwrap();
        assert_eq!(TurnAck::from(wire), ack);
    }
}
