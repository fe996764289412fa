//! The engine thread's queueing delay, measured the cheap way: the
//! dispatcher steps aside (`yield_now`) and times how long the thread takes
//! to come back to it. Whatever else is ready to run on the engine thread
//! (live sessions' messages, ends, receipts) runs in between, so the time is
//! how long a message that arrived just now would have waited. An idle
//! engine comes back within microseconds; a burst of thousands of ends, or a
//! core taken by the GPU thread, shows as milliseconds.
//!
//! It reads the engine clock, so on paused time it measures only what a test
//! makes pass (`tokio::time::advance` in a task that runs in between: a busy
//! engine thread, simulated exactly). It costs nothing when release is idle:
//! the dispatcher probes only before handing out a release.

use std::time::Duration;

use crate::clock;

/// How late the engine thread ran: the time it took to be polled again
/// after stepping aside for everything else that was ready.
pub(crate) async fn queueing_delay() -> Duration {
    let asked = clock::now();
    tokio::task::yield_now().await;
    clock::now().saturating_duration_since(asked)
}
