//! The one answer every engine call gives once the runtime has stopped.

/// The runtime is stopped (shut down, or its engine thread is gone): the call
/// could not be answered. Every engine call that has no other error answers
/// `Err(Stopped)`; [`OpenError`](crate::OpenError) and
/// [`SessionError`](crate::SessionError) carry it as their `RuntimeStopped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the sessionbus runtime is stopped")]
pub struct Stopped;

impl From<Stopped> for crate::OpenError {
    fn from(_: Stopped) -> Self {
        crate::OpenError::RuntimeStopped
    }
}

impl From<Stopped> for crate::SessionError {
    fn from(_: Stopped) -> Self {
        crate::SessionError::RuntimeStopped
    }
}
