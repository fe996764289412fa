//! Sessions that end on their own: idle timeout and absolute TTL.
//!
//! How it works: the registry files each session once in a [`DeadlineQueue`]
//! under its earliest possible deadline and keeps a single timer for the
//! earliest entry. Activity stores a timestamp in the session's shared
//! atomics and nothing else (O(1), no timer churn). When an entry comes due,
//! the registry recomputes the deadline from the timestamp: still due → the
//! session is asked to end (and checks once more, in case a message was
//! queued ahead of the request); not due → re-filed under the new deadline.

mod deadline;
mod policy;
mod queue;

pub use deadline::{Deadline, DeadlineKind};
pub(crate) use deadline::{LATEST_DUE_US, next_due};
pub use policy::{ExpiryConfig, ExpiryPolicy};
pub(crate) use queue::DeadlineQueue;
