//! Deadline → GPU memory released, for sessions that expire on their own:
//! sessionbus next to a 1 s polling sweeper. The expiry workload of
//! `benches/compare` (see there), with one peer.
//!
//! ```text
//! cargo bench -p sessionbus-benches --bench expiry_lateness                       # 10 000 and 100 000 sessions
//! cargo bench -p sessionbus-benches --bench expiry_lateness -- --quick            # a smaller smoke run
//! cargo bench -p sessionbus-benches --bench expiry_lateness -- --json out.json    # also write the figures as JSON
//! cargo bench -p sessionbus-benches --bench expiry_lateness -- --expiry-sizes 1000000 --ttl-offset 15 --ttl-spread 20
//!     # a million sessions expiring at the rate of 100 000 over the default 2 s
//! ```

#[path = "compare/main.rs"]
mod compare;

fn main() {
    compare::run(
        "expiry_lateness",
        &["expiry"],
        &[compare::PeerKind::Sweeper(std::time::Duration::from_secs(
            1,
        ))],
    );
}
