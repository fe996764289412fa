//! Typed publish/subscribe for lifecycle events.
//!
//! Ground rules: the bus lives inside the registry actor and is only touched
//! from its thread, so it needs no locks. Publishing never blocks and never
//! waits for a subscriber:
//!
//! - **Reliable** subscribers (the cleanup actors, and any application
//!   subscriber that asks for it) receive every event. When their queue is
//!   full, the event waits in a small task of its own until there is room. This
//!   memory is bounded by the number of sessions, since each session ends once;
//!   under that pressure, order across sessions may change, order of one
//!   session's events does not matter to release.
//! - **Best-effort** subscribers (the default for the application) get what
//!   fits in their queue. When it is full the event is dropped *for that
//!   subscriber only*, counted, and logged (first drop, then every 1 024th).
//!   A slow dashboard can never stall session ends or GPU release.
//!
//! A subscriber whose actor or channel is gone is removed at the next publish.

use actix::Recipient;
use actix::dev::SendError;
use tokio::sync::mpsc;

use crate::events::{EventKinds, LifecycleEvent};

/// How the bus treats a subscriber that falls behind.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Delivery {
    /// Every event is delivered; a full queue makes the event wait (memory bounded by sessions).
    Reliable,
    /// Events that do not fit in the queue are dropped for this subscriber and counted.
    BestEffort,
}

/// Where a subscriber receives events.
#[derive(Debug)]
pub(crate) enum Sink {
    /// An actix actor (bounded by its mailbox capacity).
    Actor(Recipient<LifecycleEvent>),
    /// A tokio channel, for applications without actix (bounded by its capacity).
    Channel(mpsc::Sender<LifecycleEvent>),
}

/// Identifies a subscription.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct SubscriptionId(pub u64);

struct Subscriber {
    id: SubscriptionId,
    kinds: EventKinds,
    delivery: Delivery,
    sink: Sink,
    dropped: u64,
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
        }
    }

    /// Waits for room in a task of its own, so the publisher does not wait.
    fn deliver_later(&self, event: LifecycleEvent) {
        match self {
            Sink::Actor(recipient) => {
                let recipient = recipient.clone();
                actix::spawn(async move {
                    let _ = recipient.send(event).await;
                });
            }
            Sink::Channel(sender) => {
                let sender = sender.clone();
                actix::spawn(async move {
                    let _ = sender.send(event).await;
                });
            }
        }
    }
}

/// The bus. Owned by the registry.
#[derive(Default)]
pub(crate) struct Bus {
    subscribers: Vec<Subscriber>,
    next_id: u64,
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

impl Bus {
    pub(crate) fn subscribe(
        &mut self,
        sink: Sink,
        kinds: EventKinds,
        delivery: Delivery,
    ) -> SubscriptionId {
        self.next_id += 1;
        let id = SubscriptionId(self.next_id);
        self.subscribers.push(Subscriber {
            id,
            kinds,
            delivery,
            sink,
            dropped: 0,
        });
        id
    }

    pub(crate) fn unsubscribe(&mut self, id: SubscriptionId) -> bool {
        let before = self.subscribers.len();
        self.subscribers.retain(|s| s.id != id);
        self.subscribers.len() != before
    }

    /// Events dropped for best-effort subscribers since start.
    pub(crate) fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    pub(crate) fn publish(&mut self, event: LifecycleEvent) {
        let kind = event.kind();
        let dropped_total = &mut self.dropped_total;
        self.subscribers.retain_mut(|sub| {
            if !sub.kinds.contains(kind) {
                return true;
            }
            match sub.sink.try_deliver(event.clone()) {
                Outcome::Delivered => true,
                Outcome::Full(event) => {
                    match sub.delivery {
                        Delivery::Reliable => sub.sink.deliver_later(event),
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
                    tracing::debug!(target: "sessionbus::supervisor", subscription = sub.id.0, "subscriber gone; removed");
                    false
                }
            }
        });
    }
}
