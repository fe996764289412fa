#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod config;
mod gpu;
pub mod metrics;
mod runtime;

pub use config::{Config, ConfigError};
pub use gpu::{BackendChoice, GpuConfig, GpuConfigError, GpuCounters, GpuInitError, WgpuPool};
pub use metrics::MetricsConfig;
pub use runtime::{Runtime, RuntimeBuilder, StartError, StopReport};
pub use sessionbus_actors::*;
