//! The metrics subscriber: a thread of its own (`sessionbus-metrics`) that
//! follows the bus (every event, reliably, so counters are exact) and samples
//! the gauges every `metrics.sample_interval`.
//!
//! Ground rules: it only reads. It never holds up an end or a release: the
//! bus hands it events without waiting, and if it falls behind its backlog
//! shows in `sessionbus_bus_backlog`. It runs on its own thread, not as a task
//! on the engine thread, because the engine thread is the serial path of
//! every end: in a storm, a task there would be polled between the registry's
//! and the cleanup's work. It takes events in batches, so a storm wakes it a
//! few times, not once per event. At shutdown the runtime asks it to
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
    /// Subscribes (before any session can open) and starts the thread.
    /// `None` when metrics are off, the engine is gone, or no thread can start.
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
            .await
            .ok()?;
        let (finish, finish_rx) = oneshot::channel();
        let interval = config.sample_interval;
        let engine = engine.clone();
        let thread = std::thread::Builder::new()
            .name("sessionbus-metrics".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build();
                match rt {
                    Ok(rt) => rt.block_on(run(engine, events, interval, finish_rx)),
                    Err(e) => tracing::error!(
                        target: "sessionbus::supervisor",
                        event = "metrics.not_started",
                        error = %e,
                        "metrics subscriber could not start its timer runtime"
                    ),
                }
            });
        if let Err(e) = thread {
            tracing::error!(
                target: "sessionbus::supervisor",
                event = "metrics.not_started",
                error = %e,
                "metrics subscriber thread could not start"
            );
            return None;
        }
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

/// Events taken from the channel per wake-up.
const BATCH: usize = 256;

async fn run(
    engine: EngineHandle,
    mut events: mpsc::Receiver<LifecycleEvent>,
    interval: Duration,
    mut finish: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let mut batch = Vec::with_capacity(BATCH);
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
            n = events.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    // The engine closed the subscription (shutdown): every event is in.
                    break Stop::BusClosed;
                }
                batch.drain(..).for_each(|event| record::event(&event));
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
    if let Ok(stats) = engine.stats().await {
        record::registry(&stats);
    }
}
