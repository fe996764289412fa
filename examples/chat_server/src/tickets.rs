//! One-time WebSocket tickets. Browsers cannot set headers on a WebSocket,
//! so the token would have to ride in the URL, where proxies and logs keep
//! it. Instead `POST /sessions/{id}/tickets` (with the bearer token in a
//! header) hands out a random ticket that opens that one session's socket,
//! once, within `ttl`. The table is bounded: expired tickets are pruned when
//! it is full, and a table still full refuses (503) rather than grow.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sessionbus::{Owner, SessionId};

use super::error::ApiError;

struct Ticket {
    session: SessionId,
    owner: Owner,
    expires: Instant,
}

/// Outstanding tickets.
pub struct Tickets {
    table: Mutex<HashMap<String, Ticket>>,
    ttl: Duration,
    max: usize,
}

impl Tickets {
    pub(super) fn new(ttl: Duration, max: usize) -> Self {
        Tickets {
            table: Mutex::new(HashMap::new()),
            ttl,
            max: max.max(1),
        }
    }

    /// How long a ticket is valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A ticket that opens `session`'s socket for `owner`, once.
    pub fn issue(&self, session: SessionId, owner: Owner) -> Result<String, ApiError> {
        let now = Instant::now();
        let mut table = self.table.lock().unwrap();
        if table.len() >= self.max {
            table.retain(|_, t| t.expires > now);
            if table.len() >= self.max {
                return Err(ApiError::Busy("too many WebSocket tickets outstanding"));
            }
        }
        let ticket = super::identity::hex(&rand::random::<[u8; 16]>());
        table.insert(
            ticket.clone(),
            Ticket {
                session,
                owner,
                expires: now + self.ttl,
            },
        );
        Ok(ticket)
    }

    /// The owner a ticket was issued to, if it is for `session` and still
    /// valid; it is used up either way.
    pub fn redeem(&self, ticket: &str, session: SessionId) -> Result<Owner, ApiError> {
        let found = self.table.lock().unwrap().remove(ticket);
        match found {
            Some(t) if t.session == session && t.expires > Instant::now() => Ok(t.owner),
            Some(t) if t.session == session => Err(ApiError::Unauthenticated(
                "the ticket has expired: get a new one from POST /sessions/{id}/tickets",
            )),
            _ => Err(ApiError::Unauthenticated(
                "unknown, used, or another session's ticket: get one from POST /sessions/{id}/tickets",
            )),
        }
    }
}
