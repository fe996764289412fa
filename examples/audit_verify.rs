//! Verifies an audit trail: every record intact, every link in place.
//!
//! ```text
//! SESSIONBUS_AUDIT_KEY=<hex key> cargo run --example audit_verify -- /var/lib/sessionbus/audit
//! cargo run --example audit_verify -- --key-env MY_KEY_VAR DIR
//! cargo run --example audit_verify -- --config sessionbus.toml   # dir and key from [audit]
//! ```
//!
//! Exit status: 0 when the chain verifies, 1 naming the first bad record
//! (file, line, seq, why: changed, removed or reordered, truncated), 2 when
//! it could not be checked (no key, unreadable configuration).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sessionbus::{AuditConfig, Config, verify_dir};

/// Verifies a sessionbus audit trail's hash chain.
#[derive(Parser, Debug)]
struct Args {
    /// The audit directory (default: `audit.dir` of `--config`).
    dir: Option<PathBuf>,
    /// The environment variable holding the audit key as hex.
    #[arg(long, default_value = "SESSIONBUS_AUDIT_KEY")]
    key_env: String,
    /// A configuration file whose `[audit]` section gives the directory and the key.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let audit = match &args.config {
        Some(path) => match Config::from_file(path).map(|c| c.audit) {
            Ok(Some(audit)) => audit,
            Ok(None) => return usage(&format!("{} has no [audit] section", path.display())),
            Err(e) => return usage(&e.to_string()),
        },
        None => match &args.dir {
            Some(dir) => AuditConfig {
                key_env: Some(args.key_env.clone()),
                ..AuditConfig::new(dir)
            },
            None => return usage("give the audit directory, or --config FILE"),
        },
    };
    let dir = args.dir.clone().unwrap_or_else(|| audit.dir.clone());
    let key = match audit.resolve_key() {
        Ok(key) => key,
        Err(e) => return usage(&e.to_string()),
    };
    match verify_dir(&dir, &key) {
        Ok(report) => {
            if args.json {
                println!("{}", serde_json::to_string(&report).expect("serializes"));
            } else {
                println!(
                    "ok: {} records in {} files (seq {:?}..={:?}){}",
                    report.records,
                    report.files.len(),
                    report.first_seq,
                    report.last_seq,
                    if report.ends_with_shutdown {
                        ", ends with runtime.shutdown"
                    } else {
                        "; does not end with runtime.shutdown (still being written, or stopped out of order)"
                    }
                );
            }
            ExitCode::SUCCESS
        }
        Err(bad) => {
            eprintln!("first bad record: {bad}");
            if let Some(seq) = bad.seq {
                eprintln!("  (its seq: {seq})");
            }
            ExitCode::from(1)
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("audit_verify: {problem}");
    ExitCode::from(2)
}
