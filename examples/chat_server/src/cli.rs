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
    /// Address to listen on (port 0 picks a free one; the LISTENING line names it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: std::net::SocketAddr,
    /// Port on the `--bind` address, overriding its port.
    #[arg(long)]
    pub port: Option<u16>,
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
    /// Hold each KV block in a GPU buffer of its own instead of paged blocks
    /// in shared slabs (the default, where the system prompt's blocks are
    /// shared by every conversation).
    #[arg(long)]
    pub kv_buffers: bool,
    /// Largest WebSocket frame, in bytes (larger: close 1009).
    #[arg(long, default_value_t = Settings::default().max_frame_bytes)]
    pub max_frame_bytes: usize,
    /// Messages and session opens per second per user.
    #[arg(long, default_value_t = Settings::default().rate_per_sec)]
    pub rate_per_sec: u32,
    /// Of those, how many may come at once.
    #[arg(long, default_value_t = Settings::default().rate_burst)]
    pub rate_burst: u32,
    /// Token mints and session opens per second per client address.
    #[arg(long, default_value_t = Settings::default().address_rate_per_sec)]
    pub address_rate_per_sec: u32,
    /// Of those, how many may come at once.
    #[arg(long, default_value_t = Settings::default().address_rate_burst)]
    pub address_rate_burst: u32,
    /// Live sessions one owner may have.
    #[arg(long, default_value_t = Settings::default().max_sessions_per_owner)]
    pub max_sessions_per_owner: usize,
    /// Sessions waiting for their WebSocket, all owners together.
    #[arg(long, default_value_t = Settings::default().max_unattached_sessions)]
    pub max_unattached_sessions: usize,
    /// Milliseconds an opened session waits for its WebSocket.
    #[arg(long, default_value_t = Settings::default().attach_timeout_ms)]
    pub attach_timeout_ms: u64,
    /// Seconds a demo token is valid.
    #[arg(long, default_value_t = Settings::default().token_ttl_secs)]
    pub token_ttl_secs: u64,
    /// Milliseconds between the server's WebSocket pings.
    #[arg(long, default_value_t = Settings::default().ping_interval_ms)]
    pub ping_interval_ms: u64,
    /// Milliseconds a WebSocket may stay silent (no frame, no pong).
    #[arg(long, default_value_t = Settings::default().idle_timeout_ms)]
    pub idle_timeout_ms: u64,
    /// Milliseconds a send to a client that stopped reading may take.
    #[arg(long, default_value_t = Settings::default().send_timeout_ms)]
    pub send_timeout_ms: u64,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

impl Args {
    /// The server options these flags describe.
    pub fn options(&self) -> anyhow::Result<Options> {
        anyhow::ensure!(
            self.kv_bytes_per_token > 0 && self.kv_bytes_per_token.is_multiple_of(4),
            "--kv-bytes-per-token must be a positive multiple of 4 (wgpu's write alignment)"
        );
        let config = match &self.config {
            Some(path) => sessionbus::config::Config::from_file(path)
                .with_context(|| format!("reading {}", path.display()))?,
            None => sessionbus::config::Config::default(),
        };
        let mut bind = self.bind;
        if let Some(port) = self.port {
            bind.set_port(port);
        }
        Ok(Options {
            bind,
            identity: None,
            config,
            settings: Settings {
                token_interval_ms: self.token_ms,
                kv_bytes_per_token: self.kv_bytes_per_token,
                block_tokens: self.block_tokens.max(1),
                kv_blocks: !self.kv_buffers,
                max_frame_bytes: self.max_frame_bytes,
                rate_per_sec: self.rate_per_sec,
                rate_burst: self.rate_burst,
                address_rate_per_sec: self.address_rate_per_sec,
                address_rate_burst: self.address_rate_burst,
                max_sessions_per_owner: self.max_sessions_per_owner,
                max_unattached_sessions: self.max_unattached_sessions,
                attach_timeout_ms: self.attach_timeout_ms,
                token_ttl_secs: self.token_ttl_secs,
                ping_interval_ms: self.ping_interval_ms,
                idle_timeout_ms: self.idle_timeout_ms,
                send_timeout_ms: self.send_timeout_ms,
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
