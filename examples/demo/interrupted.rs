//! The report of a run stopped early by SIGTERM or Ctrl-C: the clients were
//! dropped (their sessions disconnected), the runtime shut down as in every
//! run (ending what was live with reason `shutdown`), and the invariants are
//! checked as ever: every opened session ended once, and wgpu's counters are
//! back at their baseline. A run that keeps them exits 0.

use serde::Serialize;

use crate::report::{self, Books, Checks, row};
use crate::{Args, Demo};

/// The JSON report of a run stopped early.
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    books: Books,
    /// The scenario that was running: "default", "expiry", "storm", "shutdown".
    scenario: String,
    /// "SIGTERM", "SIGINT" or "a stop request".
    interrupted: &'static str,
    shutdown_completed: bool,
}

pub async fn report(demo: Demo, args: &Args) -> anyhow::Result<()> {
    let pool = demo.rt.pool_stats();
    let end = demo.finish().await?;
    let signal = end.interrupted.unwrap_or("a stop request");
    let (stop, seen) = (&end.stop, &end.seen);
    let double_ends = seen.double_ends();
    let report = Report {
        books: Books::of(&end, &pool),
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        interrupted: signal,
        shutdown_completed: stop.sessions.completed,
    };
    let books = &report.books;

    report::heading("sessionbus demo report (interrupted)", &books.adapter);
    row(
        "interrupted",
        format!("by {signal}: clients stopped, runtime shut down"),
    );
    row(
        "sessions",
        format!(
            "{} opened, {} ended, {} ended twice",
            books.sessions_opened, books.sessions_ended, double_ends
        ),
    );
    row("ended by", report::counts(&books.ended_by));
    report::leak_row(books);
    row("wall", format!("{} ms", books.wall_ms));
    if args.json {
        report::print_json(&report)?;
    }
    let mut checks = Checks::default();
    checks.require(end.leak.buffers == 0, "wgpu hal.buffers back at baseline");
    checks.require(double_ends == 0, "no session ended twice");
    checks.require(
        seen.ends.len() as u64 == stop.sessions.stats.opened,
        "every opened session ended",
    );
    checks.require(
        stop.sessions.completed,
        "shutdown completed within its deadline",
    );
    checks.conclude()
}
