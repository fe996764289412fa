//! Listing live sessions, for layers outside the engine that mirror them
//! elsewhere (the `sessionbus` cluster layer keeps a Redis directory of them
//! and renews the entries of the sessions that were active, in one batch).
//!
//! A scan reads one atomic per live session on the registry's thread; callers
//! ask every few seconds, not per message.

use actix::prelude::*;

use super::actor::RegistryActor;
use crate::ids::SessionId;
use crate::lifecycle::State;
use crate::protocol::registry::LiveSessions;

impl Handler<LiveSessions> for RegistryActor {
    type Result = Vec<SessionId>;

    fn handle(&mut self, msg: LiveSessions, _ctx: &mut Self::Context) -> Self::Result {
        let now_us = self.settings.epoch.now_micros();
        let since_us = msg
            .active_within
            .map(|window| now_us.saturating_sub(crate::clock::micros(window)))
            .unwrap_or(0);
        self.sessions
            .iter()
            .filter(|(_, live)| {
                live.shared.state() == State::Established
                    && live.shared.last_active_us() >= since_us
            })
            .map(|(id, _)| *id)
            .collect()
    }
}
