//! The cluster layer on real nodes (each a runtime on the real adapter)
//! against a real redis-server per test. `survives_redis_faults` has its own
//! binary: it re-executes itself as a node process that it freezes.

mod sessions_stay_consistent_across_nodes;
mod trusts_no_one_it_cannot_verify;
