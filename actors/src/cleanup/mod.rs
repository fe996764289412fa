//! Cleanup actors: turn each `SessionEndEvent` into released GPU memory.

mod actor;
mod pacer;

pub(crate) use actor::CleanupActor;
pub(crate) use pacer::Pacer;
