//! The messages actors send each other, one file per receiving actor, so
//! that the registry, the sessions and the cleanup actors depend on this
//! protocol and on shared types, not on each other's modules.
//!
//! Cleanup actors receive only bus events (`LifecycleEvent`, in `events`).
//! Messages an actor sends only to itself stay beside their handler (e.g.
//! `registry/pressure.rs`'s `OffloadAnswered`).

pub(crate) mod registry;
pub(crate) mod session;
