use std::fmt;

use super::EndReason;

/// Where a session is in its life.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// Created, not yet accepting work.
    Init,
    /// Live: accepts messages, touches and allocations.
    Established,
    /// Ended; its memory is being released. Refuses new work.
    Closing,
    /// Ended and its memory released. Final.
    Closed,
}

impl State {
    /// The stable lowercase name used in errors and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Init => "init",
            State::Established => "established",
            State::Closing => "closing",
            State::Closed => "closed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happens to a session.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The session is ready for work.
    Establish,
    /// A chat message (a turn).
    Message,
    /// Activity without a turn (keeps an idle session alive).
    Touch,
    /// A request for GPU memory.
    Allocate,
    /// The conversation's context went stale and was dropped; the session lives on.
    ContextReset,
    /// The session ends, for this reason.
    End(EndReason),
    /// The session's memory has been given back.
    Released,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Establish => f.write_str("establish"),
            Event::Message => f.write_str("message"),
            Event::Touch => f.write_str("touch"),
            Event::Allocate => f.write_str("allocate"),
            Event::ContextReset => f.write_str("context reset"),
            Event::End(reason) => write!(f, "end ({reason})"),
            Event::Released => f.write_str("released"),
        }
    }
}

/// An event that the session's current state does not allow.
#[derive(Copy, Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("a session in state {state} cannot take {event}")]
pub struct LifecycleError {
    /// The state the session was (and still is) in.
    pub state: State,
    /// The refused event.
    pub event: Event,
}

/// A session's lifecycle: the current state plus how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    state: State,
    end_reason: Option<EndReason>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            state: State::Init,
            end_reason: None,
        }
    }
}

impl Lifecycle {
    /// A new lifecycle in `Init`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// How the session ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.end_reason
    }

    /// Whether the session still takes work.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Applies `event`. On success returns the new state; on refusal the
    /// state is unchanged and the error names the state and the event.
    pub fn apply(&mut self, event: Event) -> Result<State, LifecycleError> {
        let next = match (self.state, event) {
            (State::Init, Event::Establish) => State::Established,
            (State::Init | State::Established, Event::End(reason)) => {
                self.end_reason = Some(reason);
                State::Closing
            }
            (
                State::Established,
                Event::Message | Event::Touch | Event::Allocate | Event::ContextReset,
            ) => State::Established,
            (State::Closing, Event::Released) => State::Closed,
            (state, event) => return Err(LifecycleError { state, event }),
        };
        self.state = next;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_reason() -> impl Strategy<Value = EndReason> {
        proptest::sample::select(EndReason::ALL.to_vec())
    }

    fn any_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Establish),
            Just(Event::Message),
            Just(Event::Touch),
            Just(Event::Allocate),
            Just(Event::ContextReset),
            any_reason().prop_map(Event::End),
            Just(Event::Released),
        ]
    }

    /// The reference model, written independently of `apply`'s match: the legal
    /// successor of each state, or None.
    fn model(state: State, event: Event) -> Option<State> {
        use Event::*;
        match state {
            State::Init => match event {
                Establish => Some(State::Established),
                End(_) => Some(State::Closing),
                _ => None,
            },
            State::Established => match event {
                Message | Touch | Allocate | ContextReset => Some(State::Established),
                End(_) => Some(State::Closing),
                Establish | Released => None,
            },
            State::Closing => (event == Released).then_some(State::Closed),
            State::Closed => None,
        }
    }

    proptest! {
        #[test]
        fn only_legal_transitions_happen(events in proptest::collection::vec(any_event(), 0..64)) {
            let mut lifecycle = Lifecycle::new();
            let mut ends = 0;
            for event in events {
                let before = lifecycle.state();
                match (lifecycle.apply(event), model(before, event)) {
                    (Ok(after), Some(expected)) => {
                        prop_assert_eq!(after, expected);
                        if let Event::End(reason) = event {
                            ends += 1;
                            prop_assert_eq!(lifecycle.end_reason(), Some(reason));
                        }
                    }
                    (Err(err), None) => {
                        prop_assert_eq!(err, LifecycleError { state: before, event });
                        prop_assert_eq!(lifecycle.state(), before, "a refused event changed the state");
                    }
                    (got, expected) => prop_assert!(false, "{before} + {event}: got {got:?}, model says {expected:?}"),
                }
            }
            // Invariant 1 at the smallest scale: a lifecycle ends at most once.
            prop_assert!(ends <= 1);
        }

        #[test]
        fn closed_is_final(events in proptest::collection::vec(any_event(), 0..32)) {
            let mut lifecycle = Lifecycle::new();
            lifecycle.apply(Event::Establish).unwrap();
            lifecycle.apply(Event::End(EndReason::Closed)).unwrap();
            lifecycle.apply(Event::Released).unwrap();
            for event in events {
                prop_assert!(lifecycle.apply(event).is_err());
                prop_assert_eq!(lifecycle.state(), State::Closed);
                prop_assert_eq!(lifecycle.end_reason(), Some(EndReason::Closed));
            }
        }
    }

    #[test]
    fn the_error_names_state_and_event() {
        let mut lifecycle = Lifecycle::new();
        lifecycle.apply(Event::Establish).unwrap();
        lifecycle.apply(Event::End(EndReason::Closed)).unwrap();
        let err = lifecycle.apply(Event::Message).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a session in state closing cannot take message"
        );
    }
}
