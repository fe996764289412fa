//! Flags, logs, and the run: start, print `LISTENING`, wait for a signal,
//! shut down gracefully, print `SHUTDOWN {json}`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::incidents::Incidents;
use super::{ChatServer, Options, Settings};

/// The chat server's flags.
#[derive(clap::Parser, Debug, Clone)]
#[command(about = "A web chat backend with sessionbus embedded (actix-web, WebSocket)")]
pub struct Args {
    /// Port on 127.0.0.1 (0 picks a free one; the LISTENING line names it).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Supervisor logs (stdout) as JSON lines.
    #[arg(long)]
    pub json_logs: bool,
    /// A sessionbus configuration file (TOML; see the README).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Milliseconds before each generated token.
    #[arg(long, default_value_t = Settings::default().token_interval_ms)]
    pub token_ms: u64,
    /// KV-cache bytes per token (a multiple of 4).
    #[arg(long, default_value_t = Settings::default().kv_bytes_per_token)]
    pub kv_bytes_per_token: u64,
    /// Tokens per KV block (one GPU buffer).
    #[arg(long, default_value_t = Settings::default().block_tokens)]
    pub block_tokens: u64,
    /// Largest WebSocket frame, in bytes (larger: close 1009).
    #[arg(long, default_value_t = Settings::default().max_frame_bytes)]
    pub max_frame_bytes: usize,
    /// Messages and session opens per second per user.
    #[arg(long, default_value_t = Settings::default().rate_per_sec)]
    pub rate_per_sec: u32,
    /// Of those, how many may come at once.
    #[arg(long, default_value_t = Settings::default().rate_burst)]
    pub rate_burst: u32,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

impl Args {
    /// The server options these flags describe.
    pub fn options(&self) -> anyhow::Result<Options> {
        anyhow::ensure!(
            self.kv_bytes_per_token > 0 && self.kv_bytes_per_token % 4 == 0,
            "--kv-bytes-per-token must be a positive multiple of 4 (wgpu's write alignment)"
        );
        let config = match &self.config {
            Some(path) => sessionbus::Config::from_file(path)
                .with_context(|| format!("reading {}", path.display()))?,
            None => sessionbus::Config::default(),
        };
        Ok(Options {
            port: self.port,
            config,
            settings: Settings {
                token_interval_ms: self.token_ms,
                kv_bytes_per_token: self.kv_bytes_per_token,
                block_tokens: self.block_tokens.max(1),
                max_frame_bytes: self.max_frame_bytes,
                rate_per_sec: self.rate_per_sec,
                rate_burst: self.rate_burst,
                ..Settings::default()
            },
            incidents: Incidents::default(),
            workers: self.workers.max(1),
        })
    }
}

/// Supervisor logs on stdout (`RUST_LOG` overrides the level), plus the
/// layer that keeps recent incidents for `/status`.
fn init_logs(json: bool, incidents: &Incidents) {
    // wgpu probes every backend while picking an adapter; its EGL probe's
    // error does not matter once Vulkan is chosen.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        "info,wgpu_hal::gles::egl=off,wgpu_core=warn,wgpu_hal=warn,actix_server=warn".into()
    });
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(incidents.layer());
    let stdout = std::io::stdout;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    if json {
        registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(stdout))
            .init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(stdout),
            )
            .init();
    }
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(args: Args) -> anyhow::Result<()> {
    let options = args.options()?;
    init_logs(args.json_logs, &options.incidents);
    actix_web::rt::System::new().block_on(async move {
        let server = ChatServer::start(options).await?;
        println!("LISTENING {}", server.addr);
        std::io::stdout().flush()?;
        let signal = super::shutdown::signal().await;
        tracing::info!(signal, "chat_server.shutdown_requested");
        let report = server.shutdown().await;
        println!("SHUTDOWN {}", serde_json::to_string(&report)?);
        std::io::stdout().flush()?;
        anyhow::ensure!(
            report.leaked_buffers == 0,
            "leaked {} GPU buffers",
            report.leaked_buffers
        );
        Ok(())
    })
}
