#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod config;
mod gpu;
mod runtime;
pub mod signals;

pub use config::{Config, ConfigError};
pub use gpu::{BackendChoice, GpuConfig, GpuConfigError, GpuCounters, GpuInitError, WgpuPool};
pub use runtime::{Runtime, RuntimeBuilder, StartError, StopReport};
pub use sessionbus_actors::*;
