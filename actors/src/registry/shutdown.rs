//! Graceful shutdown, bounded by a deadline.
//!
//! Ground rules: from the first `Shutdown` on, the registry admits nothing.
//! Every live session is asked to end with reason `shutdown`; releases go out
//! unpaced at the top tier. At three quarters of the deadline, sessions still
//! draining leases are forced (`ForceEnd`), so the memory they held still has
//! a quarter of the deadline to come back. At the deadline the report is sent
//! whatever is left: releases not yet answered are counted in it, never
//! skipped silently, and the GPU thread destroys their buffers on its way out.

use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::actor::RegistryActor;
use super::stats::{DeviceLossReport, ShutdownReport};
use crate::clock;
use crate::ids::Caller;
use crate::lifecycle::EndReason;
use crate::protocol::registry::{AfterAllEnded, EndAll, ReleaseSharedAfterEnds, Shutdown};
use crate::protocol::session::{End, ForceEnd};

pub(super) struct ShutdownInProgress {
    started: Instant,
    deadline: Duration,
    sessions_ended: u64,
    sessions_forced: u64,
    buffers_before: u64,
    bytes_before: u64,
    drains_forced_before: u64,
    /// Set once the report went out (everything back, or the deadline passed).
    reported: bool,
    waiters: Vec<oneshot::Sender<ShutdownReport>>,
}

/// The share of the deadline given to draining leases; the rest is for the
/// releases that the forced ends queue.
const DRAIN_SHARE: f64 = 0.75;

impl RegistryActor {
    pub(super) fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    /// A session ended during the shutdown: counted if the shutdown ended it.
    pub(super) fn note_end(&mut self, reason: EndReason) {
        if let Some(shutdown) = self.shutdown.as_mut()
            && reason == EndReason::Shutdown
        {
            shutdown.sessions_ended += 1;
        }
    }

    fn begin_shutdown(&mut self, deadline: Duration, ctx: &mut Context<Self>) {
        tracing::info!(
            target: "sessionbus::supervisor",
            event = "runtime.shutdown",
            live = self.sessions.len(),
            deadline_ms = deadline.as_millis() as u64,
            "shutdown: ending every session"
        );
        self.shutdown = Some(ShutdownInProgress {
            started: clock::now(),
            deadline,
            // Counted as they end (`note_end`): a session that was already
            // ending (a close racing the shutdown) ends for its own reason.
            sessions_ended: 0,
            sessions_forced: 0,
            buffers_before: self.counters.released_buffers,
            bytes_before: self.counters.released_bytes,
            drains_forced_before: self.counters.drains_forced,
            reported: false,
            waiters: Vec::new(),
        });
        self.pressure.queue.lift_pacing();
        let operator = Caller::Operator("sessionbus-shutdown".into());
        for live in self.sessions.values() {
            // A parked session starts again to take it; one already gone is
            // stopping, and its end guard reports it.
            let end = End {
                caller: operator.clone(),
                reason: EndReason::Shutdown,
                waiter: None,
                deadline: None,
                seen_active_us: crate::protocol::session::NOT_SEEN_IDLE,
                trace_id: None,
            };
            live.shared.deliver(end);
        }
        ctx.run_later(deadline.mul_f64(DRAIN_SHARE), |registry, _ctx| {
            registry.force_draining()
        });
        ctx.run_later(deadline, |registry, _ctx| registry.shutdown_deadline());
    }

    /// Ends every session still live (draining leases) now.
    fn force_draining(&mut self) {
        let Some(shutdown) = self.shutdown.as_mut() else {
            return;
        };
        if shutdown.reported || self.sessions.is_empty() {
            return;
        }
        shutdown.sessions_forced = self.sessions.len() as u64;
        tracing::warn!(
            target: "sessionbus::supervisor",
            event = "runtime.shutdown_forcing",
            sessions = self.sessions.len(),
            "shutdown: forcing the ends of sessions still draining leases"
        );
        for live in self.sessions.values() {
            live.shared.deliver(ForceEnd);
        }
    }

    /// The deadline passed: report now, with what is still unreleased.
    fn shutdown_deadline(&mut self) {
        if self.shutdown.as_ref().is_none_or(|s| s.reported) {
            return;
        }
        self.send_shutdown_report();
    }

    pub(super) fn finish_shutdown_if_done(&mut self) {
        if !self.sessions.is_empty() || self.releasing > 0 {
            return;
        }
        match self.shutdown.as_ref() {
            Some(shutdown) if !shutdown.reported => self.send_shutdown_report(),
            Some(_) | None => {}
        }
    }

    fn send_shutdown_report(&mut self) {
        let stats = self.stats();
        let Some(shutdown) = self.shutdown.as_mut() else {
            return;
        };
        let unfinished = stats.release_queue;
        let report = ShutdownReport {
            deadline: shutdown.deadline,
            sessions_ended: shutdown.sessions_ended,
            sessions_forced: shutdown.sessions_forced,
            drains_forced: self.counters.drains_forced - shutdown.drains_forced_before,
            buffers_released: self.counters.released_buffers - shutdown.buffers_before,
            bytes_released: self.counters.released_bytes - shutdown.bytes_before,
            sessions_unfinished: self.sessions.len() as u64,
            releases_unfinished: self.releasing as u64,
            bytes_unfinished: unfinished.queued_bytes + unfinished.in_flight_bytes,
            completed: self.sessions.is_empty() && self.releasing == 0,
            took: clock::now().saturating_duration_since(shutdown.started),
            stats,
        };
        shutdown.reported = true;
        let waiters = std::mem::take(&mut shutdown.waiters);
        if report.completed {
            tracing::info!(
                target: "sessionbus::supervisor",
                event = "runtime.shutdown_complete",
                sessions_ended = report.sessions_ended,
                sessions_forced = report.sessions_forced,
                bytes = report.bytes_released,
                duration_us = report.took.as_micros() as u64,
                "shutdown complete: every session ended and all GPU memory released"
            );
        } else {
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "runtime.shutdown_deadline",
                sessions_unfinished = report.sessions_unfinished,
                releases_unfinished = report.releases_unfinished,
                bytes_unfinished = report.bytes_unfinished,
                deadline_ms = report.deadline.as_millis() as u64,
                "shutdown deadline passed with memory unreleased; the GPU thread destroys it on exit"
            );
        }
        for waiter in waiters {
            let _ = waiter.send(report.clone());
        }
    }
}

impl Handler<EndAll> for RegistryActor {
    type Result = ResponseFuture<DeviceLossReport>;

    /// Counts only the ends it began: a session already ending (draining a
    /// lease for a close) joins its own end, whose reason stands. Every
    /// release is waited for by the session's id, whatever the reason of the
    /// end that makes it, so the wait cannot miss one; and only up to the
    /// deadline. The waiting happens in the answer's future: the registry
    /// goes on handling messages meanwhile.
    fn handle(&mut self, msg: EndAll, _ctx: &mut Self::Context) -> Self::Result {
        let started = clock::now();
        tracing::warn!(
            target: "sessionbus::supervisor",
            event = "runtime.end_all",
            reason = %msg.reason,
            live = self.sessions.len(),
            "ending every live session"
        );
        let operator = Caller::Operator(format!("sessionbus-{}", msg.reason).into());
        let mut asks = Vec::with_capacity(self.sessions.len());
        let mut receipts = Vec::new();
        let mut stopping = 0;
        for live in self.sessions.values_mut() {
            if msg.wait_for_releases.is_some() {
                let (waiter, receipt) = oneshot::channel();
                live.waiters.get_or_insert_default().push(waiter);
                receipts.push(receipt);
            }
            let end = End {
                caller: operator.clone(),
                reason: msg.reason,
                waiter: None,
                deadline: None,
                seen_active_us: crate::protocol::session::NOT_SEEN_IDLE,
                trace_id: None,
            };
            // A parked session starts again to take it; one already gone is
            // stopping, and its end guard reports it.
            match live.shared.send(end) {
                Some(ask) => asks.push(ask),
                None => stopping += 1,
            }
        }
        let deadline = msg
            .wait_for_releases
            .map(|wait| tokio::time::Instant::from_std(started + wait));
        Box::pin(async move {
            let asked = asks.len();
            let answers = futures::future::join_all(asks);
            // Past the deadline, a session that has not answered yet (its
            // mailbox full, an offload holding it) counts as ended: it was
            // live, and it will take the end when it gets to it.
            let began = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, answers).await.ok(),
                None => Some(answers.await),
            };
            let ended = match began {
                Some(answers) => answers
                    .iter()
                    .filter(|answer| matches!(answer, Ok(Ok(true))))
                    .count(),
                None => asked,
            };
            let mut unreleased = 0;
            if let Some(deadline) = deadline {
                for receipt in receipts {
                    // A receipt dropped unsent (the engine stopping) is not waited for.
                    if tokio::time::timeout_at(deadline, receipt).await.is_err() {
                        unreleased += 1;
                    }
                }
            }
            DeviceLossReport {
                ended,
                already_ending: stopping + asked - ended,
                unreleased,
                completed: unreleased == 0,
                took: clock::now().saturating_duration_since(started),
            }
        })
    }
}

impl Handler<Shutdown> for RegistryActor {
    type Result = ResponseFuture<ShutdownReport>;

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let (waiter, report) = oneshot::channel();
        if self.shutdown.is_none() {
            self.begin_shutdown(msg.deadline, ctx);
        }
        if let Some(shutdown) = self.shutdown.as_mut() {
            shutdown.waiters.push(waiter);
            if shutdown.reported {
                // A second caller after the report: report again, as things are now.
                shutdown.reported = false;
                self.send_shutdown_report();
            }
        }
        self.finish_shutdown_if_done();
        Box::pin(async move { report.await.unwrap_or_default() })
    }
}

impl Handler<ReleaseSharedAfterEnds> for RegistryActor {
    type Result = ResponseFuture<AfterAllEnded>;

    /// Every shard's sessions have ended (a shutdown, a device loss), so
    /// every KV block is free or cached: the slabs go back to the device
    /// (after a device loss they are on the lost one, and new blocks must
    /// come from slabs on the new one). Hooks of sessions that held no GPU
    /// memory hold no release back, so no shard's report waited for them;
    /// this waits, with `wait_for_hooks`, up to this shard's shutdown
    /// deadline (here, on an engine thread, where the timers are).
    fn handle(&mut self, msg: ReleaseSharedAfterEnds, _ctx: &mut Self::Context) -> Self::Result {
        let hooks = self.hooks.clone();
        let kv = self.settings.kv.clone();
        let (budget, queue) = (self.pressure.budget.clone(), self.pressure.queue.clone());
        let until = match msg.wait_for_hooks {
            true => self.shutdown.as_ref().map(|s| s.started + s.deadline),
            false => None,
        };
        Box::pin(async move {
            if let Some(kv) = &kv {
                kv.release_all().await;
            }
            if let Some(until) = until {
                while hooks.stats().running > 0 && clock::now() < until {
                    actix::clock::sleep(Duration::from_millis(1)).await;
                }
            }
            AfterAllEnded {
                kv: kv.map(|kv| kv.stats()),
                hooks: hooks.stats(),
                budget: budget.snapshot(),
                release_queue: queue.stats(),
            }
        })
    }
}
