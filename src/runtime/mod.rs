//! The runtime an application embeds: start it, open sessions, shut it down.

mod error;
mod runtime;

pub use error::StartError;
pub use runtime::{Runtime, RuntimeBuilder, StopReport};
