//! Reference: what the runtime writes for operators to read.
//!
//! Three stable formats a pipeline can be built on, each checked against the
//! code that writes it:
//!
//! - [`logs`]: the supervisor's `tracing` events (targets, levels, the
//!   `event` names and their fields);
//! - [`metrics`]: every metric the runtime emits through the `metrics`
//!   facade (name, type, labels, unit) and its histogram buckets;
//! - [`audit`]: the audit trail's JSON Lines records (actions, fields, the
//!   hash chain, rotation, retention, key handling and verification).
//!
//! This module holds documentation only: no item in it is code.

#[doc = include_str!("logs.md")]
pub mod logs {}

#[doc = include_str!("metrics.md")]
pub mod metrics {}

#[doc = include_str!("audit.md")]
pub mod audit {}
