//! What the HTML report plots: a sampler that follows the run from the
//! outside, like a dashboard would. Every `every` it records GPU bytes live
//! (the pool's own count), live sessions and buffers released so far (both
//! from the bus); from every release receipt it keeps end → released and,
//! for expiries, deadline → released.

use std::time::{Duration, Instant};

use anyhow::Context;
use sessionbus::{Delivery, EngineHandle, EventKinds, LifecycleEvent, Runtime};
use tokio::sync::mpsc;

/// One sample of the run.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    /// Since the sampler started.
    pub at: Duration,
    pub gpu_live_bytes: u64,
    pub live_sessions: u64,
    /// Buffers released since the start (the release rate is its slope).
    pub released_buffers: u64,
}

/// Everything the sampler saw.
#[derive(Default, Debug)]
pub struct Recording {
    pub every: Duration,
    pub points: Vec<Point>,
    /// End → memory released, per session (µs).
    pub close_to_release_us: Vec<u64>,
    /// Deadline → memory released, per expired session (µs).
    pub expiry_lateness_us: Vec<u64>,
}

/// The running sampler.
pub struct Timeline {
    task: tokio::task::JoinHandle<Recording>,
}

impl Timeline {
    /// Subscribes (reliably: every receipt counts) and starts sampling.
    pub async fn start(rt: &Runtime, every: Duration) -> anyhow::Result<Timeline> {
        let events = rt
            .subscribe_channel(EventKinds::ALL, Delivery::Reliable)
            .await
            .context("subscribing the report's sampler to the bus")?;
        let engine = rt.engine().clone();
        let task = tokio::spawn(sample(engine, events, every));
        Ok(Timeline { task })
    }

    /// Everything recorded. Call after `Runtime::shutdown`, which closes the
    /// subscription once every event is delivered.
    pub async fn finish(self) -> anyhow::Result<Recording> {
        Ok(self.task.await?)
    }
}

async fn sample(
    engine: EngineHandle,
    mut events: mpsc::Receiver<LifecycleEvent>,
    every: Duration,
) -> Recording {
    let start = Instant::now();
    let mut recording = Recording {
        every,
        ..Recording::default()
    };
    let (mut live, mut released) = (0u64, 0u64);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let point = |live: u64, released: u64, recording: &mut Recording| {
        recording.points.push(Point {
            at: start.elapsed(),
            gpu_live_bytes: engine.pool_stats().live_bytes,
            live_sessions: live,
            released_buffers: released,
        });
    };
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(LifecycleEvent::Started(_)) => live += 1,
                Some(LifecycleEvent::Ended(_)) => live = live.saturating_sub(1),
                Some(LifecycleEvent::Released(receipt)) => {
                    released += receipt.buffers;
                    recording
                        .close_to_release_us
                        .push(receipt.end_to_release().as_micros() as u64);
                    if let Some(deadline) = receipt.deadline {
                        let late = receipt.released_at.saturating_duration_since(deadline.at);
                        recording.expiry_lateness_us.push(late.as_micros() as u64);
                    }
                }
                Some(_) => {} // context resets, and kinds added later
                None => break, // shutdown: every event is in
            },
            _ = tick.tick() => point(live, released, &mut recording),
        }
    }
    point(live, released, &mut recording);
    recording
}
