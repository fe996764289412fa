//! sessionbus (work in progress).
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod config;
pub mod gpu;
mod runtime;

pub use config::{Config, ConfigError};
pub use runtime::{Runtime, RuntimeBuilder, StartError, StopReport};
pub use sessionbus_actors::*;
