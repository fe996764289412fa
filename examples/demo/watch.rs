//! Watching the bus like an application would: every end, every release and
//! every context reset, recorded for the report.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use sessionbus::{
    Delivery, EndReason, EventKinds, LifecycleEvent, ReleaseReceipt, Runtime, SessionId,
};

/// What the bus said.
#[derive(Default)]
pub struct Observed {
    /// End reasons per session, in arrival order (exactly one each, if all is well).
    pub ends: HashMap<SessionId, Vec<EndReason>>,
    /// Buffers the release receipts say were destroyed.
    pub released_buffers: u64,
    pub released_at: HashMap<SessionId, Instant>,
    /// Every release receipt, whole (the storm scenario reads rates and errors off them).
    pub receipts: HashMap<SessionId, Arc<ReleaseReceipt>>,
    /// For ends by a deadline: `fired_at - at`, how late the engine's timer noticed (µs).
    pub timer_lateness_us: Vec<u64>,
    /// For ends by a deadline: `released_at - at`, deadline → memory back (µs).
    pub expiry_lateness_us: Vec<u64>,
    /// Ends that had to wait for leases (in-flight work) first.
    pub drains: u64,
    /// Of those, ends forced past leases still held.
    pub drains_forced: u64,
    /// Context resets per stale reason.
    pub context_resets: BTreeMap<&'static str, u64>,
    /// Context-bound buffers those resets released.
    pub context_reset_buffers: u64,
}

impl Observed {
    fn record(&mut self, event: LifecycleEvent) {
        match event {
            LifecycleEvent::Ended(end) => {
                self.ends.entry(end.id).or_default().push(end.reason);
                if let Some(deadline) = end.deadline {
                    self.timer_lateness_us
                        .push(deadline.lateness().as_micros() as u64);
                }
                if end.drain.leases > 0 {
                    self.drains += 1;
                }
                if end.drain.was_forced() {
                    self.drains_forced += 1;
                }
            }
            LifecycleEvent::Released(receipt) => {
                self.released_buffers += receipt.buffers;
                self.released_at.insert(receipt.id, receipt.released_at);
                self.receipts.insert(receipt.id, receipt.clone());
                if let Some(deadline) = receipt.deadline {
                    let late = receipt.released_at.saturating_duration_since(deadline.at);
                    self.expiry_lateness_us.push(late.as_micros() as u64);
                }
            }
            LifecycleEvent::ContextReset(reset) => {
                *self
                    .context_resets
                    .entry(reset.reason.as_str())
                    .or_default() += 1;
                self.context_reset_buffers += reset.buffers;
            }
            _ => {} // starts, and kinds added later
        }
    }

    /// Ends per reason, every reason listed (zero where none occurred).
    pub fn ended_by(&self) -> BTreeMap<&'static str, u64> {
        let mut by: BTreeMap<&str, u64> = EndReason::ALL.iter().map(|r| (r.as_str(), 0)).collect();
        for reason in self.ends.values().flatten() {
            *by.entry(reason.as_str()).or_default() += 1;
        }
        by
    }

    /// End events beyond the first, over all sessions (zero if all is well).
    pub fn double_ends(&self) -> usize {
        self.ends
            .values()
            .map(|reasons| reasons.len().saturating_sub(1))
            .sum()
    }

    /// Context resets over all reasons.
    pub fn context_reset_count(&self) -> u64 {
        self.context_resets.values().sum()
    }
}

/// A reliable subscription and the task that records what it delivers.
pub struct Watch {
    observed: Arc<Mutex<Observed>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Subscribes before any session opens, so nothing is missed.
    pub async fn subscribe(rt: &Runtime) -> anyhow::Result<Watch> {
        let kinds = EventKinds::ENDED | EventKinds::RELEASED | EventKinds::CONTEXT_RESET;
        let mut events = rt
            .subscribe_channel(kinds, Delivery::Reliable)
            .await
            .context("subscribing to the bus")?;
        let observed = Arc::new(Mutex::new(Observed::default()));
        let task = tokio::spawn({
            let observed = observed.clone();
            async move {
                while let Some(event) = events.recv().await {
                    observed.lock().unwrap().record(event);
                }
            }
        });
        Ok(Watch { observed, task })
    }

    /// What has been seen so far.
    pub fn seen(&self) -> MutexGuard<'_, Observed> {
        self.observed.lock().unwrap()
    }

    /// Waits until the release of every session in `ids` was seen, or `within`
    /// has passed; returns how many were not released by then.
    pub async fn until_released(&self, ids: &[SessionId], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let missing = {
                let seen = self.seen();
                ids.iter()
                    .filter(|id| !seen.released_at.contains_key(id))
                    .count()
            };
            if missing == 0 || Instant::now() >= deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Everything the bus delivered. Call after `Runtime::shutdown`, which
    /// closes the subscription once every event is delivered.
    pub async fn finish(self) -> anyhow::Result<Observed> {
        self.task.await?;
        let observed = Arc::into_inner(self.observed).context("the watch task has ended")?;
        Ok(observed.into_inner().unwrap())
    }
}
