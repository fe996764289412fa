//! The audit trail: every action recorded, chained and verified; bad input, restarts, rotation and old formats. (A write failure has its own binary: it captures the process's logs.)

mod bad_input_is_refused;
mod format_1_trails_still_verify;
mod records_every_action;
mod restarts_never_hide_what_happened;
mod rotates_and_retains;
mod verify_names_the_first_bad_record;
