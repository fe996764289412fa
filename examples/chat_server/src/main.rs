//! A web chat backend with sessionbus embedded: actix-web over HTTP and
//! WebSocket, the way an application adopting the runtime would build it.
//!
//! ```text
//! cargo run --release -p sessionbus-chat-server -- --port 8080
//! open http://127.0.0.1:8080/           # the chat page with a live status panel
//! ```
//!
//! Flags: `--bind IP:PORT` (default 127.0.0.1:8080), `--port N` (0 picks a
//! free port), `--json-logs`, `--config FILE`
//! (a sessionbus TOML config), and the simulated model's and the limits'
//! knobs (`--help`). The server prints `LISTENING 127.0.0.1:PORT` when it is
//! ready and, after SIGTERM or SIGINT, one `SHUTDOWN {json}` line with the
//! shutdown report. The server itself is this package's library, so that
//! the tests and benches can run it in-process.

fn main() -> anyhow::Result<()> {
    use clap::Parser;
    use sessionbus_chat_server::cli;
    cli::run(cli::Args::parse())
}
