//! Graceful shutdown: the `[shutdown]` configuration. The registry runs the
//! shutdown itself (`registry/shutdown.rs`); this module holds what an
//! application configures about it.

mod config;

pub use config::ShutdownConfig;
