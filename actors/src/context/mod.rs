//! Context expiry: deciding, turn by turn, whether a conversation's context
//! is stale. Pure code: no actix, no clock, no I/O; the turn's time is passed in.
//!
//! **Stale** means the turns so far no longer help with the next one, so the
//! session should drop its context (history, cached state) and start a new
//! one from this turn. The session itself lives on.
//!
//! Each turn brings a [`TurnSignal`], and four signals can make it stale
//! ([`StaleReason`]):
//! - **negation**: the user rejected what came before;
//! - **decay**: the conversation sat idle so long that its weight, halving
//!   every `half_life`, fell below `min_weight`;
//! - **intent switch**: a different intent, more confident than the current one;
//! - **low similarity**: the turn's embedding points away from the context's
//!   (cosine below `similarity_threshold`).
//!
//! The default policy, [`DecayingContext`], is built from a [`ContextConfig`];
//! its documentation gives the exact rules and math. To replace it, implement
//! [`ContextPolicy`] and give the engine a [`ContextPolicyFactory`] that builds
//! one per session. Either way, a bad turn is a [`ContextError`] that leaves
//! the policy as it was, and a `Stale` verdict restarts the context from the
//! turn that caused it.
//!
//! ```
//! use std::time::Instant;
//! use sessionbus_actors::{ContextConfig, ContextPolicy, DecayingContext, TurnSignal};
//!
//! let mut policy = DecayingContext::new(ContextConfig::default()).unwrap();
//! let turn = |v: Vec<f32>| TurnSignal { embedding: Some(v), ..Default::default() };
//! let now = Instant::now();
//! assert!(!policy.assess(&turn(vec![1.0, 0.0]), now).unwrap().is_stale());
//! assert!(!policy.assess(&turn(vec![0.9, 0.1]), now).unwrap().is_stale());
//! assert!(policy.assess(&turn(vec![0.0, 1.0]), now).unwrap().is_stale());
//! ```

mod config;
mod decaying;
mod error;
mod policy;
mod signal;
mod vector;
mod verdict;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

pub use config::ContextConfig;
pub use decaying::DecayingContext;
pub use error::ContextError;
pub use policy::{ContextPolicy, ContextPolicyFactory};
pub use signal::{Intent, TurnSignal};
pub use verdict::{ContextVerdict, StaleReason};
