//! The engine's integration tests, one binary: an engine on the in-memory
//! pool, on paused time (`common::on_paused_time`). One module per behaviour,
//! named after it.

#[path = "../common/mod.rs"]
mod common;

mod a_hung_pool_or_a_drain_never_hangs_an_operator_end;
mod batched_release_under_attack;
mod budgets_fail_wait_or_evict;
mod cleanup_survives_panics_up_to_its_restart_limit;
mod compaction_under_attack;
mod context_reset_releases_context_memory;
mod ends_say_who_asked_and_which_trace;
mod engine_lifecycle;
mod events_serialise_and_never_debug_print_an_owner_or_address;
mod hooks_never_block_a_release;
mod idle_sessions_park_and_come_back;
mod idle_shortcut_under_attack;
mod kv_blocks_are_shared_and_released_exactly_once;
mod kv_blocks_offload_to_host_and_restore_bit_for_bit;
mod kv_offload_under_attack;
mod leases_drain_and_heartbeats;
mod offload_keeps_idle_sessions_alive;
mod passivation_under_attack;
mod releases_go_in_batches_within_their_limits;
mod session_matches_its_model;
mod sessions_can_be_listed_and_ended_with_a_reason;
mod sessions_expire_on_time;
mod sessions_spread_over_registry_shards;
mod sharded_engine_under_attack;
mod shutdown_meets_its_deadline;
mod storms_are_paced_and_prioritised;
mod storms_give_way_to_live_traffic;
mod stuck_releases_are_detected_and_timed;
mod sweeper_finds_what_events_missed;
