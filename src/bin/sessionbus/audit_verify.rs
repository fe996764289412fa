//! `sessionbus audit verify`: every record intact under its key, every link
//! in place, the start accounted for, the end where the head note says.
//!
//! Exit status: 0 when the trail verifies, 1 naming the first bad record
//! (file, line, seq, why: changed, removed or reordered, truncated, sealed
//! under a key not given, files or tail missing), 2 when it could not be
//! checked (no key, unreadable configuration). `examples/audit_verify.rs`
//! runs this same code.

use std::path::PathBuf;
use std::process::ExitCode;

use sessionbus::audit::{AuditKeyring, verify_with_keyring};
use sessionbus::config::{AuditConfig, Config};

/// Verifies a sessionbus audit trail's hash chain.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The audit directory (default: `audit.dir` of `--config`).
    dir: Option<PathBuf>,
    /// The environment variable holding the audit key as hex (optional when
    /// the keyring variable is set).
    #[arg(long, default_value = "SESSIONBUS_AUDIT_KEY")]
    key_env: String,
    /// The environment variable holding more keys: `id:hex,id:hex` (or `hex,hex`).
    #[arg(long, default_value = "SESSIONBUS_AUDIT_KEYS")]
    keys_env: String,
    /// A configuration file whose `[audit]` section gives the directory and the keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Verifies the trail `args` names; the exit status says how it went.
pub(crate) fn run(args: &Args) -> ExitCode {
    let (dir, keyring) = match keyring(args) {
        Ok(found) => found,
        Err(problem) => return usage(&problem),
    };
    match verify_with_keyring(&dir, &keyring) {
        Ok(report) => {
            if args.json {
                println!("{}", serde_json::to_string(&report).expect("serializes"));
                return ExitCode::SUCCESS;
            }
            println!(
                "ok: {} records in {} files (seq {:?}..={:?}), key ids {:?}{}",
                report.records,
                report.files.len(),
                report.first_seq,
                report.last_seq,
                report.key_ids,
                match report.closed {
                    Some(true) => ", closed in order",
                    Some(false) =>
                        "; still open (being written, or its process stopped out of order)",
                    None => "; no head note (format 1): whether its tail was cut cannot be told",
                }
            );
            if report.files_deleted > 0 {
                println!(
                    "  {} files deleted by retention, as recorded",
                    report.files_deleted
                );
            }
            for gap in &report.gaps {
                println!("  gap: {gap}");
            }
            if report.legacy_records > 0 {
                println!(
                    "  {} records in the older format 1 (no key id)",
                    report.legacy_records
                );
            }
            if report.start_unaccounted {
                println!(
                    "  begins at seq {:?}: format 1 did not record why (retention or deletion)",
                    report.first_seq
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

/// The directory and the keyring, from `--config` or from the environment.
fn keyring(args: &Args) -> Result<(PathBuf, AuditKeyring), String> {
    if let Some(path) = &args.config {
        let audit = match Config::from_file(path).map(|c| c.audit) {
            Ok(Some(audit)) => audit,
            Ok(None) => return Err(format!("{} has no [audit] section", path.display())),
            Err(e) => return Err(e.to_string()),
        };
        let dir = args.dir.clone().unwrap_or_else(|| audit.dir.clone());
        let mut keyring = audit.resolve_keyring().map_err(|e| e.to_string())?;
        add_env_list(&mut keyring, &args.keys_env)?;
        return Ok((dir, keyring));
    }
    let dir = args
        .dir
        .clone()
        .ok_or("give the audit directory, or --config FILE")?;
    let mut keyring = AuditKeyring::new();
    let set = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
    if set(&args.key_env) || !set(&args.keys_env) {
        let key = AuditConfig {
            key_env: Some(args.key_env.clone()),
            ..AuditConfig::new(&dir)
        }
        .resolve_key()
        .map_err(|e| e.to_string())?;
        keyring.add_key(&key).map_err(|e| e.to_string())?;
    }
    add_env_list(&mut keyring, &args.keys_env)?;
    Ok((dir, keyring))
}

fn add_env_list(keyring: &mut AuditKeyring, var: &str) -> Result<(), String> {
    match std::env::var(var) {
        Ok(list) => keyring
            .add_list("SESSIONBUS_AUDIT_KEYS", &list)
            .map_err(|e| format!("{var}: {e}")),
        Err(_) => Ok(()),
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("audit verify: {problem}");
    ExitCode::from(2)
}
