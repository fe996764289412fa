//! The chat server: an actix-web app around one `sessionbus::Runtime`.
//!
//! Ground rules: REST handlers and WebSocket loops talk to the runtime only
//! through its `EngineHandle` (any executor may await it). The `Runtime`
//! itself sits in `AppState::runtime` only to read wgpu's counters and to be
//! taken out, once, by the graceful shutdown (`shutdown.rs`).

pub mod auth;
pub mod cli;
pub mod error;
pub mod health;
pub mod identity;
pub mod incidents;
pub mod limits;
pub mod model;
pub mod routes;
pub mod sessions;
pub mod shutdown;
pub mod state;
pub mod status;
pub mod tickets;
pub mod ws;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sessionbus::Runtime;
use sessionbus::config::Config;

pub use identity::{DemoIssuer, Identity};
pub use shutdown::ShutdownReport;
pub use state::{AppState, Settings};

/// How to start a chat server.
#[derive(Clone)]
pub struct Options {
    /// Where to listen; port 0 picks a free one.
    pub bind: SocketAddr,
    /// Who bearer tokens name; `None`: the demo issuer (short-lived tokens
    /// for any name, signed with a key drawn at start; for demos only).
    pub identity: Option<Arc<dyn Identity>>,
    /// The runtime's configuration (`[metrics] enabled` is switched on).
    pub config: Config,
    /// The simulated model's and the limits' knobs.
    pub settings: Settings,
    /// Where WARN/ERROR supervisor lines are kept for `/status` (filled only
    /// when `incidents::layer` is installed in the tracing subscriber).
    pub incidents: incidents::Incidents,
    /// HTTP worker threads.
    pub workers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            identity: None,
            config: Config::default(),
            settings: Settings::default(),
            incidents: incidents::Incidents::default(),
            workers: 2,
        }
    }
}

/// The Prometheus recorder: one per process (the `metrics` facade has one
/// global recorder), installed on first use with sessionbus's buckets.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (name, buckets) in sessionbus::metrics::HISTOGRAM_BUCKETS {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
                    .expect("sessionbus's buckets are valid");
            }
            builder
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// A running chat server. Must be started inside an actix `System`
/// (`#[actix_web::main]`, `#[actix_web::test]`).
pub struct ChatServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: web::Data<AppState>,
    server: actix_web::dev::ServerHandle,
    running: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ChatServer {
    /// Starts the runtime and the HTTP server; returns once it listens.
    pub async fn start(mut options: Options) -> anyhow::Result<ChatServer> {
        let metrics = prometheus();
        options.config.metrics.enabled = true;
        if options.settings.kv_blocks && options.config.kv.is_none() {
            options.config.kv = Some(model::kv_config(&options.settings));
        }
        let runtime = Runtime::start(options.config).await?;
        let identity = options.identity.unwrap_or_else(|| {
            Arc::new(DemoIssuer::new(Duration::from_secs(
                options.settings.token_ttl_secs,
            )))
        });
        let state = web::Data::new(AppState::new(
            runtime,
            options.settings,
            identity,
            options.incidents,
            metrics,
        ));
        state.sessions.follow_ends().await;
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .configure(routes::configure)
        })
        // A token stream is many small frames: send each one at once
        // (without this, Nagle and delayed ACKs hold a frame for ~40 ms).
        .on_connect(|connection, _| {
            if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
        })
        .workers(options.workers)
        // Signals are ours (shutdown.rs): the runtime must end its sessions
        // before the HTTP workers drop their connections.
        .disable_signals()
        .shutdown_timeout(2)
        .bind(options.bind)?;
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        let running = actix_web::rt::spawn(server);
        Ok(ChatServer {
            addr,
            state,
            server: handle,
            running,
        })
    }

    /// The shared state (the tests read it; the binary does not).
    #[allow(dead_code)]
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The graceful shutdown; see `shutdown.rs`.
    pub async fn shutdown(self) -> ShutdownReport {
        shutdown::graceful(self.state, self.server, self.running).await
    }
}
