//! Keeping the runtime's own machinery alive and honest: the `[supervision]`
//! configuration, per-step timings of the destroy path with stuck-step
//! detection (`steps.rs`), and the restart-intensity limit for the runtime's
//! long-lived tasks (`intensity.rs`).

mod config;
mod health;
mod intensity;
mod steps;

pub use config::SupervisionConfig;
pub(crate) use health::Health;
pub use health::SupervisionStats;
pub(crate) use intensity::RestartIntensity;
pub use steps::{ReleaseStep, ReleaseSteps, StepTiming, StepTimings};
