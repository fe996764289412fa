//! What every handler shares.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use sessionbus::pool::GpuCounters;
use sessionbus::{EngineHandle, Owner, Runtime};
use tokio::sync::watch;

use super::identity::Identity;
use super::incidents::Incidents;
use super::limits::KeyedLimiter;
use super::sessions::{Caps, Sessions};
use super::tickets::Tickets;

/// The simulated model's knobs, and the limits that keep one client from
/// filling the server or pinning its memory.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Pause before each generated token (the "model" thinking).
    pub token_interval_ms: u64,
    /// KV-cache bytes each token adds (written into the current block).
    pub kv_bytes_per_token: u64,
    /// Tokens per KV block: a new `allocate_for_context` every this many tokens.
    pub block_tokens: u64,
    /// Hold each conversation's KV as paged blocks in shared slabs (the
    /// runtime's `[kv]`, derived from the two settings above unless the
    /// configuration has one), with a system prompt every conversation
    /// shares; `false`: one GPU buffer per block (`--kv-buffers`). Default true.
    pub kv_blocks: bool,
    /// Largest WebSocket frame accepted; a larger one closes with 1009.
    pub max_frame_bytes: usize,
    /// Longest chat message, in characters.
    pub max_message_chars: usize,
    /// Messages (and session opens) per second per owner, sustained.
    pub rate_per_sec: u32,
    /// How many of them may come at once.
    pub rate_burst: u32,
    /// Token mints and session opens per second per client address
    /// (an IPv4 address or an IPv6 /64): names are free, addresses are not.
    pub address_rate_per_sec: u32,
    /// How many of them may come at once.
    pub address_rate_burst: u32,
    /// Keys each rate limiter keeps at most (then new keys share one bucket).
    pub limiter_max_keys: usize,
    /// Live sessions one owner may have.
    pub max_sessions_per_owner: usize,
    /// Sessions opened but not yet attached to a WebSocket, all owners together.
    pub max_unattached_sessions: usize,
    /// An opened session nobody attaches to ends (`disconnected`) after this.
    pub attach_timeout_ms: u64,
    /// How long a demo token is valid.
    pub token_ttl_secs: u64,
    /// How long a one-time WebSocket ticket is valid.
    pub ticket_ttl_ms: u64,
    /// WebSocket tickets outstanding at most.
    pub max_tickets: usize,
    /// The server pings each WebSocket this often.
    pub ping_interval_ms: u64,
    /// A WebSocket that sends nothing (not even a pong) for this long is
    /// closed (1001) and its session ends as `disconnected`.
    pub idle_timeout_ms: u64,
    /// A send to a client that stopped reading gives up after this: the
    /// reply stream ends, its lease is returned, the socket is dropped and
    /// the session ends as `disconnected`.
    pub send_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token_interval_ms: 15,
            kv_bytes_per_token: 4096,
            block_tokens: 16,
            kv_blocks: true,
            max_frame_bytes: 16 * 1024,
            max_message_chars: 4000,
            rate_per_sec: 5,
            rate_burst: 10,
            address_rate_per_sec: 2,
            address_rate_burst: 20,
            limiter_max_keys: 10_000,
            max_sessions_per_owner: 8,
            max_unattached_sessions: 256,
            attach_timeout_ms: 30_000,
            token_ttl_secs: 15 * 60,
            ticket_ttl_ms: 30_000,
            max_tickets: 10_000,
            ping_interval_ms: 10_000,
            idle_timeout_ms: 30_000,
            send_timeout_ms: 10_000,
        }
    }
}

/// The server's shared state.
pub struct AppState {
    /// How handlers reach the runtime.
    pub engine: EngineHandle,
    /// The runtime itself, until the graceful shutdown takes it.
    pub runtime: Mutex<Option<Runtime>>,
    /// wgpu's counters right after start: "nothing leaks" means back here.
    pub baseline: GpuCounters,
    /// Who a bearer token names.
    pub identity: Arc<dyn Identity>,
    /// One-time WebSocket tickets.
    pub tickets: Tickets,
    /// The sessions opened here: per-owner and unattached caps, parked handles.
    pub sessions: Arc<Sessions>,
    /// Per-owner rate limits.
    pub limiter: KeyedLimiter<Owner>,
    /// Per-client-address rate limits on token mints and session opens.
    pub address_limiter: KeyedLimiter<IpAddr>,
    /// Knobs.
    pub settings: Settings,
    /// Recent WARN/ERROR supervisor lines.
    pub incidents: Incidents,
    /// The Prometheus scrape.
    pub metrics: PrometheusHandle,
    /// Set once shutdown begins: new sessions and sockets are refused.
    pub draining: AtomicBool,
    /// Tells every WebSocket loop to close (1001) at shutdown.
    pub closing_sockets: watch::Sender<bool>,
    /// WebSockets open now.
    pub websockets: AtomicUsize,
}

impl AppState {
    pub(super) fn new(
        runtime: Runtime,
        settings: Settings,
        identity: Arc<dyn Identity>,
        incidents: Incidents,
        metrics: PrometheusHandle,
    ) -> Self {
        let engine = runtime.engine().clone();
        let caps = Caps {
            per_owner: settings.max_sessions_per_owner,
            unattached: settings.max_unattached_sessions,
            attach_timeout: Duration::from_millis(settings.attach_timeout_ms),
        };
        AppState {
            sessions: Sessions::new(engine.clone(), caps),
            engine,
            baseline: runtime.gpu_counters().expect("the runtime's own wgpu pool"),
            runtime: Mutex::new(Some(runtime)),
            identity,
            tickets: Tickets::new(
                Duration::from_millis(settings.ticket_ttl_ms),
                settings.max_tickets,
            ),
            limiter: KeyedLimiter::new(
                settings.rate_per_sec,
                settings.rate_burst,
                settings.limiter_max_keys,
            ),
            address_limiter: KeyedLimiter::new(
                settings.address_rate_per_sec,
                settings.address_rate_burst,
                settings.limiter_max_keys,
            ),
            settings,
            incidents,
            metrics,
            draining: AtomicBool::new(false),
            closing_sockets: watch::channel(false).0,
            websockets: AtomicUsize::new(0),
        }
    }

    /// wgpu's counters now; `None` once the runtime has shut down.
    pub fn gpu_counters(&self) -> Option<GpuCounters> {
        self.runtime
            .lock()
            .unwrap()
            .as_ref()
            .and_then(Runtime::gpu_counters)
    }

    /// True once the graceful shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
