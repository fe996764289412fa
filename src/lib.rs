#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod audit;
#[cfg(feature = "redis")]
pub mod cluster;
mod config;
mod gpu;
pub mod metrics;
pub mod reference;
mod runtime;
pub mod signals;

pub use audit::action as audit_action;
pub use audit::{
    AuditClock, AuditConfig, AuditConfigError, AuditError, AuditRecord, AuditStats, AuditTrail,
    BreakKind, ChainBreak, SystemClock, VerifyReport, verify_dir,
};
pub use audit::{
    AuditKeyring, ChainPoint, FirstRecord, LostRecords, SeqRange, TornLine, TrailFacts,
    TrailProblem, verify_with_keyring,
};
pub use config::{Config, ConfigError, DEFAULT_TOML};
#[cfg(feature = "fault-injection")]
pub use gpu::GpuHang;
pub use gpu::{BackendChoice, GpuConfig, GpuConfigError, GpuCounters, GpuInitError, WgpuPool};
pub use metrics::MetricsConfig;
pub use runtime::{Runtime, RuntimeBuilder, StartError, StopReport};
pub use sessionbus_actors::*;
