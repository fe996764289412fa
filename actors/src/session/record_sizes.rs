//! What a session costs in memory is the sum of a few records, multiplied by
//! every live session (a million idle sessions is a design point: see
//! BENCHMARKS.md, "Passivation"). These bounds keep each record inside the
//! allocation size it was trimmed to; growing one is a decision to measure,
//! not an accident. On 64-bit targets (the sizes differ elsewhere).

#![cfg(all(test, target_pointer_width = "64"))]

use std::mem::size_of;

use super::actor::{ParkedSession, SessionActor};
use super::handle::SessionHandle;
use super::shared::SessionShared;
use super::slot::Slot;

#[test]
fn a_parked_session_is_its_shared_record_and_nothing_else() {
    // The parked state lives in the slot itself, the slot's tag in a niche
    // of the parked state: parking allocates nothing.
    assert_eq!(size_of::<Slot>(), size_of::<ParkedSession>());
    assert!(
        size_of::<ParkedSession>() <= 72,
        "{}",
        size_of::<ParkedSession>()
    );
    // Behind an `Arc` (16 bytes of counts) and glibc's 8-byte header: a
    // 160-byte chunk.
    assert!(
        size_of::<SessionShared>() <= 136,
        "{}",
        size_of::<SessionShared>()
    );
}

#[test]
fn a_running_session_and_a_handle_stay_small() {
    assert!(
        size_of::<SessionActor>() <= 184,
        "{}",
        size_of::<SessionActor>()
    );
    assert!(
        size_of::<SessionHandle>() <= 56,
        "{}",
        size_of::<SessionHandle>()
    );
}
