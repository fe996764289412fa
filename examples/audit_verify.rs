//! Verifies an audit trail: every record intact under its key, every link in
//! place, the start accounted for, the end where the head note says. The
//! same code as `sessionbus audit verify` (the `cli` feature's binary).
//!
//! ```text
//! SESSIONBUS_AUDIT_KEY=<hex key> cargo run --example audit_verify -- /var/lib/sessionbus/audit
//! # after a key change: every key, as id:hex (or hex), comma-separated
//! SESSIONBUS_AUDIT_KEYS="<id1>:<hex1>,<id2>:<hex2>" cargo run --example audit_verify -- DIR
//! cargo run --example audit_verify -- --key-env MY_KEY_VAR DIR
//! cargo run --example audit_verify -- --config sessionbus.toml   # dir and keys from [audit]
//! ```
//!
//! Exit status: 0 when the trail verifies, 1 naming the first bad record
//! (file, line, seq, why: changed, removed or reordered, truncated, sealed
//! under a key not given, files or tail missing), 2 when it could not be
//! checked (no key, unreadable configuration).

use std::process::ExitCode;

use clap::Parser;

#[path = "../src/bin/sessionbus/audit_verify.rs"]
mod audit_verify;

/// Verifies a sessionbus audit trail's hash chain.
#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: audit_verify::Args,
}

fn main() -> ExitCode {
    audit_verify::run(&Cli::parse().args)
}
