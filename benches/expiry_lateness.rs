//! Deadline → GPU memory released, for sessions that expire on their own:
//! sessionbus next to a 1 s polling sweeper. The expiry workload of
//! `benches/compare` (see there), with one peer.
//!
//! ```text
//! cargo bench -p sessionbus-benches --bench expiry_lateness                       # 10 000 and 100 000 sessions
//! cargo bench -p sessionbus-benches --bench expiry_lateness -- --quick            # a smaller smoke run
//! cargo bench -p sessionbus-benches --bench expiry_lateness -- --json out.json    # also write the figures as JSON
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
