//! Sessions end and their GPU memory comes back, exactly once, on the real
//! adapter (wgpu counters checked); KV blocks on real slabs.

mod bad_input_is_refused;
mod close_releases_gpu_memory_exactly_once;
mod crashed_session_releases_everything;
mod dropped_handle_ends_as_disconnect;
mod kv_blocks_feed_a_paged_attention_kernel;
mod offload_round_trips_bit_for_bit;
mod parked_sessions_keep_and_release_their_buffers;
mod parked_sessions_under_attack;
mod sessions_on_shard_threads_release_everything;
mod sessions_that_end_on_their_own_release_gpu_memory;
mod shard_threads_under_attack;
mod shutdown_releases_everything;
mod storms_and_memory_pressure_release_everything;
mod works_inside_an_actix_system;
