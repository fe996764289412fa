//! Faults the runtime survives: blocking hooks, a hung or panicking GPU thread, device loss, no adapter.

mod a_blocking_hook_does_not_stall_the_engine;
mod a_hung_gpu_never_hangs_the_runtime;
mod device_loss_during_a_drain_is_recovered_within_a_deadline;
mod device_loss_ends_sessions_and_a_new_device_serves;
mod gpu_worker_survives_a_panic;
mod no_adapter_refuses_to_start;
