//! The sweeper: a low-frequency safety net for what events missed.
//!
//! It looks for two things that cannot happen when everything works:
//! sessions stuck in Closing past their drain deadline (they are forced to
//! end), and GPU memory held for a session the registry no longer knows
//! (it is released). Each find is an incident: a WARN supervisor log line and
//! a counter. A healthy run reports zero.
//!
//! Memory is called orphaned only when two consecutive passes both find it:
//! a pool's answer can trail a release that completes in between, and a real
//! orphan does not go away on its own.

use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::actor::RegistryActor;
use crate::clock;
use crate::ids::{IdSet, SessionId};
use crate::protocol::session::ForceEnd;

pub(crate) struct SweeperState {
    pub(super) every: Duration,
    /// Closing for longer than this (drain deadline + one pass) is stuck.
    stuck_after: Duration,
    /// Sessions holding memory without a registry entry at the last pass.
    suspects: IdSet,
}

impl SweeperState {
    pub(super) fn new(every: Duration, drain_timeout: Duration) -> Self {
        SweeperState {
            every,
            stuck_after: drain_timeout + every,
            suspects: IdSet::default(),
        }
    }
}

impl RegistryActor {
    pub(super) fn sweep(&mut self, ctx: &mut Context<Self>) {
        self.counters.sweeps += 1;
        self.force_stuck_closing();
        // The KV store is one for every shard: the coordinator trims it.
        if let Some(kv) = self.settings.kv.clone().filter(|_| self.shard == 0) {
            // Slabs idle past `kv.slab_idle_trim` go back to the device.
            ctx.spawn(
                async move { kv.trim(clock::now()).await }
                    .into_actor(self)
                    .map(|_, _, _| ()),
            );
        }
        let (reply, holders) = oneshot::channel();
        self.settings.pool.sessions_holding_memory(reply);
        ctx.spawn(
            async move { holders.await.unwrap_or_default() }
                .into_actor(self)
                .map(|holders, registry, _ctx| registry.release_orphans(holders)),
        );
    }

    fn force_stuck_closing(&mut self) {
        let now_us = self.settings.epoch.now_micros();
        let stuck_after = clock::micros(self.sweeper.stuck_after);
        let stuck: Vec<_> = self
            .sessions
            .iter()
            .filter_map(|(id, live)| {
                let since = live.shared.closing_since_us()?;
                (now_us.saturating_sub(since) > stuck_after).then_some((*id, since))
            })
            .collect();
        for (id, since) in stuck {
            self.incident();
            self.counters.sweeper_incidents += 1;
            tracing::warn!(
                target: "sessionbus::supervisor",
                event = "sweeper.stuck_closing",
                session_id = %id,
                closing_for_us = now_us.saturating_sub(since),
                "sweeper: session stuck in closing past its drain deadline; forcing its end"
            );
            if let Some(live) = self.sessions.get(&id) {
                live.shared.deliver(ForceEnd);
            }
        }
    }

    fn release_orphans(&mut self, holders: Vec<SessionId>) {
        // The KV slabs' owner is no session, and never an orphan.
        let slabs = self.settings.kv.as_ref().map(|kv| kv.slab_session());
        let shards = self.settings.shards.count();
        let unknown: IdSet = holders
            .into_iter()
            // Each shard answers for the ids placed on it, so every holder is looked at once.
            .filter(|id| id.shard_of(shards) == self.shard)
            .filter(|id| !self.sessions.contains_key(id) && !self.tombstones.contains(id))
            .filter(|id| Some(*id) != slabs)
            .collect();
        let confirmed: Vec<SessionId> = unknown
            .intersection(&self.sweeper.suspects)
            .copied()
            .collect();
        self.sweeper.suspects = unknown;
        for id in confirmed {
            self.sweeper.suspects.remove(&id);
            self.incident();
            self.counters.sweeper_incidents += 1;
            let (reply, report) = oneshot::channel();
            self.settings.pool.release_session(id, reply);
            actix::spawn(async move {
                let (buffers, bytes) = report
                    .await
                    .map(|r| (r.buffers, r.bytes))
                    .unwrap_or_default();
                tracing::warn!(
                    target: "sessionbus::supervisor",
                    event = "sweeper.orphaned_memory",
                    session_id = %id,
                    buffers,
                    bytes,
                    "sweeper: released GPU memory whose session no longer exists"
                );
            });
        }
    }
}
