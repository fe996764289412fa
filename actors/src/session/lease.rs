//! The guard an application holds while work is in flight on a session.

use super::error::SessionError;
use super::messages::LeaseGrant;
use crate::ids::{Caller, SessionId};
use crate::lease::LeaseId;
use crate::protocol::session::{LeaseDropped, ReturnLease};

/// A local lease: in-flight work (a token stream) on a session. While it is
/// held, an end of the session waits for it (up to the drain deadline), and
/// the session does not count as idle. Returned by [`Lease::release`], or by
/// dropping it.
///
/// Holding a lease keeps the session reachable: the session does not end as
/// disconnected while a lease is alive, even if every handle is dropped.
pub struct Lease {
    session: SessionId,
    grant: LeaseGrant,
    caller: Caller,
    /// The session, reached through its slot (it may have parked since the
    /// lease came back by id); a lease keeps it reachable, as a handle does.
    link: super::slot::Link,
    /// Returned through this guard already.
    returned: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("session", &self.session)
            .field("id", &self.grant.id)
            .finish()
    }
}

impl Lease {
    pub(crate) fn new(
        session: SessionId,
        grant: LeaseGrant,
        caller: Caller,
        link: super::slot::Link,
    ) -> Self {
        Lease {
            session,
            grant,
            caller,
            link,
            returned: false,
        }
    }

    /// The lease's id.
    pub fn id(&self) -> LeaseId {
        self.grant.id
    }

    /// The session it is on.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// Returns the lease and waits until the session has taken it back (if
    /// the session was draining, its end proceeds from here).
    pub async fn release(mut self) -> Result<(), SessionError> {
        self.returned = true;
        let release = ReturnLease {
            caller: self.caller.clone(),
            lease: self.grant.id,
        };
        match self.link.shared.send(release) {
            Some(request) => match request.await {
                Ok(answer) => answer,
                // The session is gone; its end forced the lease already.
                Err(_) => Ok(()),
            },
            None => Ok(()),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.returned {
            // Returning a lease can unblock a drain (memory to give back), so
            // it must not be refused; the overflow is bounded by live leases.
            self.link.shared.deliver(LeaseDropped(self.grant.id));
        }
    }
}
