//! The `sessionbus` command (feature `cli`):
//!
//! ```text
//! sessionbus config check FILE      # loads and validates; exit 1 names the bad key
//! sessionbus config print-default   # every key at its default, commented (sessionbus.toml)
//! sessionbus audit verify DIR       # the audit trail's hash chain; exit 1 names the first bad record
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sessionbus::config::{Config, DEFAULT_TOML};

mod audit_verify;

/// Checks sessionbus configuration files and audit trails.
#[derive(Parser, Debug)]
#[command(name = "sessionbus", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Loads and validates FILE as the runtime would at start (an `[audit]`
    /// key named by `key_env` must be set); exit 1 names the bad key.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
    /// Prints every key at its default, with a comment each.
    PrintDefault,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Verifies a trail; exit 1 names the first bad record, 2 when it cannot be checked.
    Verify(audit_verify::Args),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Config(ConfigCommand::Check { file }) => match Config::from_file(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(1)
            }
        },
        Command::Config(ConfigCommand::PrintDefault) => {
            print!("{DEFAULT_TOML}");
            ExitCode::SUCCESS
        }
        Command::Audit(AuditCommand::Verify(args)) => audit_verify::run(&args),
    }
}
