//! The trait an application implements to replace the context policy.

use std::sync::Arc;
use std::time::Instant;

use super::{ContextError, ContextVerdict, TurnSignal};

/// Decides, turn by turn, whether a conversation's context is stale.
///
/// One policy value serves one session and sees its turns in order. It is
/// pure: `now` is the turn's time, passed in, never read from a clock.
///
/// Contract for implementations:
/// - **Validate first.** The whole turn is validated before anything changes,
///   so an `Err` leaves the policy's state exactly as it was, and the next
///   turn is assessed as if the bad one never came.
/// - **Stale restarts.** After a [`ContextVerdict::Stale`] verdict the policy's
///   context restarts from this turn: it is the first turn of the new context.
pub trait ContextPolicy: Send + 'static {
    /// Assesses one turn that arrived at `now`, and updates the context.
    fn assess(&mut self, turn: &TurnSignal, now: Instant) -> Result<ContextVerdict, ContextError>;
}

/// Builds a fresh policy for each new session, so an application can replace
/// the default ([`DecayingContext`](super::DecayingContext)) per session.
pub type ContextPolicyFactory = Arc<dyn Fn() -> Box<dyn ContextPolicy> + Send + Sync>;
