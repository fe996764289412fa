//! The field report's destroy-storm figures, which the storm tables are
//! printed next to (shared by `compare`'s storm workload and
//! `benches/stress_tiers.rs`, which includes this file by path).

/// Concurrent destroys per tier.
pub const TIERS: [usize; 4] = [50, 200, 500, 2000];
/// The field report's figures (average latency in ms, error %) for the first
/// three tiers, in order; it gives none for the fourth.
pub const FIELD: [Option<(f64, f64)>; 4] = [
    Some((120.0, 0.0)),
    Some((480.0, 1.2)),
    Some((1100.0, 8.7)),
    None,
];

/// The field report's figures for `tier`, if it gives any.
pub fn field(tier: usize) -> Option<(f64, f64)> {
    TIERS.iter().position(|t| *t == tier).and_then(|p| FIELD[p])
}
