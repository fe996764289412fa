//! The metrics subscriber: one task on the engine thread that follows the bus
//! (every event, reliably, so counters are exact) and samples the gauges
//! every `metrics.sample_interval_ms`.
//!
//! Ground rules: it only reads. It never holds up an end or a release: the
//! bus hands it events without waiting, and if it falls behind its backlog
//! shows in `sessionbus_bus_backlog`. At shutdown the runtime asks it to
//! finish: it takes every event already delivered, samples once more, and
//! says it is done, so a scrape after `shutdown()` matches the run.

use std::time::Duration;

use sessionbus_actors::{Delivery, EngineHandle, EventKinds, LifecycleEvent};
use tokio::sync::{mpsc, oneshot};

use super::config::MetricsConfig;
use super::{names, record};

/// The running subscriber, as the runtime holds it.
#[derive(Debug)]
pub(crate) struct MetricsTask {
    finish: oneshot::Sender<oneshot::Sender<()>>,
}

impl MetricsTask {
    /// Subscribes and spawns the task on the current actix System (the
    /// engine thread). `None` when metrics are off or the engine is gone.
    pub(crate) async fn start(
        engine: &EngineHandle,
        config: &MetricsConfig,
    ) -> Option<MetricsTask> {
        if !config.enabled {
            return None;
        }
        names::describe();
        record::register_zeroes();
        let events = engine
            .subscribe_channel(EventKinds::ALL, Delivery::Reliable)
            .await?;
        let (finish, finish_rx) = oneshot::channel();
        let interval = Duration::from_millis(config.sample_interval_ms);
        actix::spawn(run(engine.clone(), events, interval, finish_rx));
        Some(MetricsTask { finish })
    }

    /// Records what the bus has delivered so far, samples the gauges once
    /// more, and stops. Call after the engine's shutdown and bus flush.
    pub(crate) async fn finish(self) {
        let (done, done_rx) = oneshot::channel();
        if self.finish.send(done).is_ok() {
            let _ = done_rx.await;
        }
    }
}

async fn run(
    engine: EngineHandle,
    mut events: mpsc::Receiver<LifecycleEvent>,
    interval: Duration,
    mut finish: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Why the loop ended: the runtime asked (answer when done), the runtime
    // is gone (nobody to answer), or the bus closed (wait to be asked).
    enum Stop {
        Asked(oneshot::Sender<()>),
        RuntimeGone,
        BusClosed,
    }
    let stop = loop {
        tokio::select! {
            biased;
            asked = &mut finish => break match asked {
                Ok(done) => Stop::Asked(done),
                Err(_) => Stop::RuntimeGone,
            },
            event = events.recv() => match event {
                Some(event) => record::event(&event),
                // The engine closed the subscription (shutdown): every event is in.
                None => break Stop::BusClosed,
            },
            _ = tick.tick() => sample(&engine).await,
        }
    };
    while let Ok(event) = events.try_recv() {
        record::event(&event);
    }
    sample(&engine).await;
    // Answer only now, so that the runtime's `finish` finds the last sample taken.
    let done = match stop {
        Stop::Asked(done) => Some(done),
        Stop::RuntimeGone => None,
        Stop::BusClosed => finish.await.ok(),
    };
    if let Some(done) = done {
        let _ = done.send(());
    }
}

async fn sample(engine: &EngineHandle) {
    record::pool(&engine.pool_stats());
    if let Some(stats) = engine.stats().await {
        record::registry(&stats);
    }
}
