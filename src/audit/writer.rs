//! The audit writer: its own thread, fed by a reliable bus subscription.
//!
//! Ground rules: no actor thread ever touches the trail's files. The
//! registry publishes lifecycle events as it always does (publishing never
//! waits); the writer is a `Reliable` subscriber, so an event that does not
//! fit in its queue waits in the bus's backlog instead of being dropped, and
//! a slow disk shows as `stats().bus_backlog` instead of as lost records or
//! as a stalled registry. At shutdown the runtime flushes the bus, stops the
//! engine, and only then tells the writer to stop: the writer drains every
//! event already queued, writes `runtime.shutdown`, syncs the file, and
//! reports. A write that fails (disk full) is counted and logged at ERROR;
//! the writer carries on with the next event, so session ends never wait
//! on the disk.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use sessionbus_actors::{LifecycleEvent, SessionEndEvent, SessionId};
use tokio::sync::{mpsc, oneshot};

use super::record::{AuditRecord, action};
use super::trail::{AuditStats, AuditTrail, Counters};

/// Who a session belonged to, kept from its end until its release so the
/// release record names the owner too (a receipt carries no owner).
struct Ended {
    owner: String,
    client_ip: Option<String>,
}

/// The running writer, held by the runtime.
pub(crate) struct AuditWriter {
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<AuditStats>>,
    counters: Arc<Counters>,
}

impl AuditWriter {
    /// Starts the writer thread on `trail`, reading `events`.
    pub(crate) fn spawn(
        trail: AuditTrail,
        events: mpsc::Receiver<LifecycleEvent>,
    ) -> std::io::Result<Self> {
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let counters = trail.counters();
        std::thread::Builder::new()
            .name("sessionbus-audit".into())
            .spawn(move || {
                let stats = run(trail, events, stop_rx);
                let _ = done_tx.send(stats);
            })?;
        Ok(AuditWriter {
            stop: Some(stop_tx),
            done: Some(done_rx),
            counters,
        })
    }

    /// The counters now.
    pub(crate) fn stats(&self) -> AuditStats {
        self.counters.snapshot()
    }

    /// Drains what is queued, writes `runtime.shutdown`, syncs, and reports.
    /// Call after the engine has stopped publishing.
    pub(crate) async fn finish(&mut self) -> AuditStats {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.done.take() {
            Some(done) => done.await.unwrap_or_else(|_| self.stats()),
            None => self.stats(),
        }
    }
}

/// The writer thread's loop. Blocks only this thread.
fn run(
    mut trail: AuditTrail,
    mut events: mpsc::Receiver<LifecycleEvent>,
    stop: oneshot::Receiver<()>,
) -> AuditStats {
    let mut writer = Writer {
        ended: HashMap::new(),
        lost: 0,
    };
    // `runtime.started` was written when the trail was opened, with what the
    // previous run left.
    let local = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime without drivers always builds");
    let stopped_in_order = local.block_on(async {
        let mut stop = stop;
        loop {
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(event) => writer.record(&mut trail, &event),
                    // The engine stopped; in order if the runtime asks us to stop next.
                    None => return (&mut stop).await.is_ok(),
                },
                asked = &mut stop => {
                    if asked.is_ok() {
                        return true;
                    }
                    // The runtime was dropped without shutdown: keep going until the bus closes.
                    while let Some(event) = events.recv().await {
                        writer.record(&mut trail, &event);
                    }
                    return false;
                }
            }
        }
    });
    // Whatever is still queued was published before the engine stopped.
    while let Ok(event) = events.try_recv() {
        writer.record(&mut trail, &event);
    }
    let now = trail.now();
    let mut last = AuditRecord::new(action::RUNTIME_SHUTDOWN, now);
    last.reason = Some(
        if stopped_in_order {
            "shutdown"
        } else {
            "runtime_dropped"
        }
        .into(),
    );
    writer.write(&mut trail, last);
    if let Err(e) = trail.close() {
        writer.failed(&trail, &e);
    }
    trail.stats()
}

struct Writer {
    ended: HashMap<SessionId, Ended>,
    /// Records lost to write failures since the last successful write.
    lost: u64,
}

impl Writer {
    fn record(&mut self, trail: &mut AuditTrail, event: &LifecycleEvent) {
        // An event kind added after this writer knows nothing to record.
        if let Some(record) = self.translate(trail, event) {
            self.write(trail, record);
        }
    }

    fn translate(&mut self, trail: &AuditTrail, event: &LifecycleEvent) -> Option<AuditRecord> {
        let p = &trail.keys().pseudonyms;
        let record = match event {
            LifecycleEvent::Started(started) => {
                let mut r = AuditRecord::new(action::SESSION_OPENED, started.at);
                r.resource = Some(started.id.to_string());
                r.owner = Some(p.owner(&started.owner));
                r.operator = r.owner.clone();
                r.client_ip = started.client_ip.map(|ip| p.ip(ip.ip()));
                r.trace_id = Some(started.trace_id.to_string());
                r
            }
            LifecycleEvent::Ended(end) => {
                let mut r = AuditRecord::new(end_action(end), end.ended_at);
                r.resource = Some(end.id.to_string());
                r.owner = Some(p.owner(&end.owner));
                r.operator = end.ended_by.as_ref().map(|caller| p.caller(caller));
                r.client_ip = end.client_ip.map(|ip| p.ip(ip.ip()));
                r.trace_id = Some(end.request_trace_id().to_string());
                r.reason = Some(end.reason.to_string());
                r.bytes = Some(end.bytes + end.in_flight_bytes);
                let ended = Ended {
                    owner: r.owner.clone().unwrap_or_default(),
                    client_ip: r.client_ip.clone(),
                };
                self.ended.insert(end.id, ended);
                r
            }
            LifecycleEvent::Released(receipt) => {
                let mut r = AuditRecord::new(action::RESOURCES_RELEASED, SystemTime::now());
                r.resource = Some(receipt.id.to_string());
                if let Some(ended) = self.ended.remove(&receipt.id) {
                    r.owner = Some(ended.owner);
                    r.client_ip = ended.client_ip;
                }
                r.trace_id = Some(receipt.trace_id.to_string());
                r.reason = Some(match &receipt.error {
                    None => receipt.reason.to_string(),
                    Some(error) => format!("{}; release failed: {error}", receipt.reason),
                });
                r.bytes = Some(receipt.bytes);
                r
            }
            LifecycleEvent::ContextReset(reset) => {
                let mut r = AuditRecord::new(action::CONTEXT_RESET, reset.at);
                r.resource = Some(reset.id.to_string());
                r.owner = Some(p.owner(&reset.owner));
                r.operator = r.owner.clone();
                r.client_ip = reset.client_ip.map(|ip| p.ip(ip.ip()));
                r.trace_id = Some(reset.trace_id.to_string());
                r.reason = Some(reset.reason.as_str().into());
                r.bytes = Some(reset.bytes);
                r
            }
            _ => return None,
        };
        Some(record)
    }

    fn write(&mut self, trail: &mut AuditTrail, record: AuditRecord) {
        if self.lost > 0 {
            // The disk is back (or the first try): say what is missing, in the chain itself.
            let now = trail.now();
            let mut gap = AuditRecord::new(action::RECORDS_LOST, now);
            gap.reason = Some(format!("{} records lost to write failures", self.lost));
            if trail.append_note(gap).is_err() {
                // Still failing: this record is lost too (and counted by `append`).
                if let Err(e) = trail.append(record) {
                    self.lost += 1;
                    self.failed(trail, &e);
                }
                return;
            }
            self.lost = 0;
        }
        if let Err(e) = trail.append(record) {
            self.lost += 1;
            self.failed(trail, &e);
        }
    }

    fn failed(&self, trail: &AuditTrail, error: &std::io::Error) {
        let failures = trail.stats().write_failures;
        // Every failure is counted; the log says so for the first of each
        // incident (since the last good write) and then every 1 024th.
        if self.lost <= 1 || self.lost.is_multiple_of(1024) {
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "audit.write_failed",
                file = trail.current_file().map(|f| tracing::field::display(f.display())),
                error = %error,
                write_failures = failures,
                "could not write to the audit trail; records are being lost"
            );
        }
    }
}

/// The action an end is recorded as. Matched by name, so a reason added to
/// the engine later is recorded as `session.ended` (with its reason) until
/// it gets an action of its own.
fn end_action(end: &SessionEndEvent) -> &'static str {
    match end.reason.as_str() {
        "closed" => action::SESSION_CLOSED,
        "idle_timeout" | "ttl_expired" => action::SESSION_EXPIRED,
        "evicted" => action::SESSION_EVICTED,
        "shutdown" => action::SESSION_SHUTDOWN,
        _ => action::SESSION_ENDED,
    }
}
