//! Pre-destroy hooks: application code that runs after a session ends and
//! before its GPU memory is released (persist the conversation, flush a
//! cache, close a connection).
//!
//! Ground rules: a hook never holds a release back past its timeout. Every
//! hook of one end runs concurrently, each under `[hooks] timeout` and
//! panic isolation; a hook that fails, panics or times out is logged (WARN)
//! and counted, and the release goes ahead regardless. Hook code (the call
//! and every poll of its future) runs on `sessionbus-hook` threads, never on
//! the engine's: a hook that blocks its thread (a synchronous client, a
//! sleep) holds only that thread, and is cut off at its timeout while the
//! engine keeps answering. Hooks still run inside the engine's tokio context
//! (timers, channels, sockets work as before); actix's thread-local APIs
//! (`actix::spawn`) are not available to them.

mod config;
mod executor;
mod runner;

pub use config::HooksConfig;
pub(crate) use runner::Hooks;
pub use runner::{BeforeRelease, HookError, HookStats};
