//! Typed publish/subscribe for lifecycle events.
//!
//! Ground rules: the bus lives inside the registry actor and is only touched
//! from its thread (so it uses `Rc`, not locks). Publishing never blocks and
//! never waits for a subscriber:
//!
//! - **Reliable** subscribers (the cleanup's intake, and any application
//!   subscriber that asks for it) receive every event, in publish order. When
//!   their queue is full, events wait in a backlog owned by the bus, drained by
//!   one task per subscriber as room appears. A reliable subscriber that stops
//!   reading makes its backlog grow: the backlog is visible in
//!   `RegistryStats::bus_backlog` and logged at WARN every 1 024 events. At
//!   shutdown the runtime waits up to `bus.flush_timeout` for backlogs to
//!   drain and reports what could not be delivered.
//! - **Best-effort** subscribers (the default for the application) get what
//!   fits in their queue. When it is full the event is dropped *for that
//!   subscriber only*, counted, and logged (first drop, then every 1 024th).
//!   A slow dashboard can never stall session ends or GPU release.
//!
//! Internal subscriptions (the cleanup's intake, called on the publishing
//! thread and never full) cannot be unsubscribed. A
//! subscriber whose actor or channel is gone is removed at the next publish.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use actix::Recipient;
use actix::dev::SendError;
use tokio::sync::mpsc;

use crate::events::{EventKinds, LifecycleEvent};

/// How the bus treats a subscriber that falls behind.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Delivery {
    /// Every event is delivered; a full queue makes the event wait (memory bounded by sessions).
    Reliable,
    /// Events that do not fit in the queue are dropped for this subscriber and counted.
    BestEffort,
}

/// A runtime component that takes events in a call, on the publishing
/// thread, and is never full (the cleanup's release queue).
pub(crate) type Intake = std::sync::Arc<dyn Fn(LifecycleEvent) + Send + Sync>;

/// Where a subscriber receives events.
#[derive(Clone)]
pub(crate) enum Sink {
    /// An actix actor (bounded by its mailbox capacity).
    Actor(Recipient<LifecycleEvent>),
    /// A tokio channel, for applications without actix (bounded by its capacity).
    Channel(mpsc::Sender<LifecycleEvent>),
    /// The runtime's own intake (never full).
    Intake(Intake),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Actor(recipient) => f.debug_tuple("Actor").field(recipient).finish(),
            Sink::Channel(sender) => f.debug_tuple("Channel").field(sender).finish(),
            Sink::Intake(_) => f.write_str("Intake"),
        }
    }
}

/// Identifies a subscription.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct SubscriptionId(u64);

struct Subscriber {
    id: SubscriptionId,
    kinds: EventKinds,
    delivery: Delivery,
    sink: Sink,
    dropped: u64,
    backlog: Rc<RefCell<Backlog>>,
    /// The runtime's own subscription (cleanup): cannot be unsubscribed.
    internal: bool,
}

enum Outcome {
    Delivered,
    Full(LifecycleEvent),
    Gone,
}

impl Sink {
    fn try_deliver(&self, event: LifecycleEvent) -> Outcome {
        match self {
            Sink::Actor(recipient) => match recipient.try_send(event) {
                Ok(()) => Outcome::Delivered,
                Err(SendError::Full(event)) => Outcome::Full(event),
                Err(SendError::Closed(_)) => Outcome::Gone,
            },
            Sink::Channel(sender) => match sender.try_send(event) {
                Ok(()) => Outcome::Delivered,
                Err(mpsc::error::TrySendError::Full(event)) => Outcome::Full(event),
                Err(mpsc::error::TrySendError::Closed(_)) => Outcome::Gone,
            },
            Sink::Intake(intake) => {
                intake(event);
                Outcome::Delivered
            }
        }
    }

    /// Delivers, waiting for room. `false` if the subscriber is gone.
    async fn send(&self, event: LifecycleEvent) -> bool {
        match self {
            Sink::Actor(recipient) => recipient.send(event).await.is_ok(),
            Sink::Channel(sender) => sender.send(event).await.is_ok(),
            Sink::Intake(intake) => {
                intake(event);
                true
            }
        }
    }
}

/// Events waiting for a reliable subscriber, and whether a task is draining them.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    queue: VecDeque<LifecycleEvent>,
    draining: bool,
}

impl Backlog {
    /// Events still waiting.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

/// Drains `backlog` into `sink` in order, then steps aside.
async fn drain(sink: Sink, backlog: Rc<RefCell<Backlog>>) {
    loop {
        let next = backlog.borrow_mut().queue.pop_front();
        let Some(event) = next else { break };
        if !sink.send(event).await {
            backlog.borrow_mut().queue.clear();
            break;
        }
    }
    backlog.borrow_mut().draining = false;
}

/// The bus. Owned by the registry: one per registry shard, all shards
/// drawing subscription ids from one counter (`ids`), so that one
/// subscription has the same id on every shard.
#[derive(Default)]
pub(crate) struct Bus {
    subscribers: Vec<Subscriber>,
    ids: std::sync::Arc<std::sync::atomic::AtomicU64>,
    dropped_total: u64,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("subscribers", &self.subscribers.len())
            .field("dropped_total", &self.dropped_total)
            .finish()
    }
}

/// Draws subscription ids for a set of buses (every shard's).
pub(crate) fn next_subscription_id(ids: &std::sync::atomic::AtomicU64) -> SubscriptionId {
    SubscriptionId(ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1)
}

impl Bus {
    /// A bus drawing subscription ids from `ids` (shared by every shard's bus).
    pub(crate) fn new(ids: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        Bus {
            ids,
            ..Bus::default()
        }
    }

    /// Subscribes under `id` (drawn once for every shard's bus).
    pub(crate) fn subscribe_as(
        &mut self,
        id: SubscriptionId,
        sink: Sink,
        kinds: EventKinds,
        delivery: Delivery,
    ) -> SubscriptionId {
        self.add(id, sink, kinds, delivery, false)
    }

    /// Subscribes one of the runtime's own actors: always reliable, never removable.
    pub(crate) fn subscribe_internal(&mut self, sink: Sink, kinds: EventKinds) -> SubscriptionId {
        let id = next_subscription_id(&self.ids);
        self.add(id, sink, kinds, Delivery::Reliable, true)
    }

    fn add(
        &mut self,
        id: SubscriptionId,
        sink: Sink,
        kinds: EventKinds,
        delivery: Delivery,
        internal: bool,
    ) -> SubscriptionId {
        let backlog = Rc::default();
        self.subscribers.push(Subscriber {
            id,
            kinds,
            delivery,
            sink,
            dropped: 0,
            backlog,
            internal,
        });
        id
    }

    /// Removes an application subscription; `false` for unknown or internal ids.
    pub(crate) fn unsubscribe(&mut self, id: SubscriptionId) -> bool {
        let before = self.subscribers.len();
        self.subscribers.retain(|s| s.internal || s.id != id);
        self.subscribers.len() != before
    }

    /// Events dropped for best-effort subscribers since start.
    pub(crate) fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Events waiting for reliable subscribers now.
    pub(crate) fn backlog_len(&self) -> usize {
        self.subscribers
            .iter()
            .map(|s| s.backlog.borrow().queue.len())
            .sum()
    }

    /// The backlogs, so a flush can watch them drain.
    pub(crate) fn backlogs(&self) -> Vec<Rc<RefCell<Backlog>>> {
        self.subscribers.iter().map(|s| s.backlog.clone()).collect()
    }

    pub(crate) fn publish(&mut self, event: LifecycleEvent) {
        let kind = event.kind();
        let dropped_total = &mut self.dropped_total;
        self.subscribers.retain_mut(|sub| {
            if !sub.kinds.contains(kind) {
                return true;
            }
            if sub.delivery == Delivery::Reliable {
                let mut backlog = sub.backlog.borrow_mut();
                if backlog.draining {
                    // Keep publish order: behind what is already waiting.
                    backlog.queue.push_back(event.clone());
                    if backlog.queue.len() % 1024 == 0 {
                        tracing::warn!(
                            target: "sessionbus::supervisor",
                            event = "bus.backlog_growing",
                            subscription = sub.id.0,
                            backlog = backlog.queue.len(),
                            "a reliable subscriber is not keeping up; its events are queued"
                        );
                    }
                    return true;
                }
            }
            match sub.sink.try_deliver(event.clone()) {
                Outcome::Delivered => true,
                Outcome::Full(event) => {
                    match sub.delivery {
                        Delivery::Reliable => {
                            let mut backlog = sub.backlog.borrow_mut();
                            backlog.queue.push_back(event);
                            backlog.draining = true;
                            actix::spawn(drain(sub.sink.clone(), sub.backlog.clone()));
                        }
                        Delivery::BestEffort => {
                            sub.dropped += 1;
                            *dropped_total += 1;
                            if sub.dropped == 1 || sub.dropped % 1024 == 0 {
                                tracing::warn!(
                                    target: "sessionbus::supervisor",
                                    event = "bus.subscriber_lagging",
                                    subscription = sub.id.0,
                                    dropped = sub.dropped,
                                    "a best-effort subscriber is not keeping up; events for it are being dropped"
                                );
                            }
                        }
                    }
                    true
                }
                Outcome::Gone => {
                    if sub.internal {
                        tracing::error!(
                            target: "sessionbus::supervisor",
                            event = "bus.internal_subscriber_gone",
                            subscription = sub.id.0,
                            "a runtime actor stopped receiving lifecycle events"
                        );
                    }
                    false
                }
            }
        });
    }
}
