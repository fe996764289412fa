//! Pre-destroy hooks: application code that runs after a session ends and
//! before its GPU memory is released (persist the conversation, flush a
//! cache, close a connection).
//!
//! Ground rules: a hook never holds a release back past its timeout. Every
//! hook of one end runs concurrently, each under `[hooks] timeout_ms` and
//! panic isolation; a hook that fails, panics or times out is logged (WARN)
//! and counted, and the release goes ahead regardless. Hooks run on the
//! engine's thread as tasks: they must not block (spawn blocking work
//! elsewhere and await it).

mod config;
mod runner;

pub use config::HooksConfig;
pub(crate) use runner::Hooks;
pub use runner::{BeforeRelease, HookStats};
