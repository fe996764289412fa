use super::LeaseId;

/// Why a lease operation was refused. The session is not affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The lease was released already; releasing twice is a caller bug, and harmless.
    #[error("{lease} was already released")]
    AlreadyReleased {
        /// The lease.
        lease: LeaseId,
    },
    /// The lease was revoked because its heartbeats stopped.
    #[error("{lease} was revoked: no heartbeat for {missed} intervals")]
    Revoked {
        /// The lease.
        lease: LeaseId,
        /// Intervals it missed.
        missed: u32,
    },
    /// This session never granted the lease (or forgot it long ago).
    #[error("{lease} is not a lease on this session")]
    Unknown {
        /// The lease asked about.
        lease: LeaseId,
    },
}
