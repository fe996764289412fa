//! What every handler shares.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use metrics_exporter_prometheus::PrometheusHandle;
use sessionbus::{
    Delivery, EngineHandle, EventKinds, GpuCounters, LifecycleEvent, Owner, Runtime, SessionHandle,
    SessionId,
};
use tokio::sync::watch;

use super::auth::Auth;
use super::incidents::Incidents;
use super::limits::OwnerLimiter;

/// The simulated model's and the limits' knobs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Pause before each generated token (the "model" thinking).
    pub token_interval_ms: u64,
    /// KV-cache bytes each token adds (written into the current block).
    pub kv_bytes_per_token: u64,
    /// Tokens per KV block: a new `allocate_for_context` every this many tokens.
    pub block_tokens: u64,
    /// Largest WebSocket frame accepted; a larger one closes with 1009.
    pub max_frame_bytes: usize,
    /// Longest chat message, in characters.
    pub max_message_chars: usize,
    /// Messages (and session opens) per second per owner, sustained.
    pub rate_per_sec: u32,
    /// How many of them may come at once.
    pub rate_burst: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token_interval_ms: 15,
            kv_bytes_per_token: 4096,
            block_tokens: 16,
            max_frame_bytes: 16 * 1024,
            max_message_chars: 4000,
            rate_per_sec: 5,
            rate_burst: 10,
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
    /// Bearer tokens.
    pub auth: Auth,
    /// Per-owner rate limits.
    pub limiter: OwnerLimiter,
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
    /// Handles of sessions opened by `POST /sessions` and not yet picked up
    /// by a WebSocket (the WebSocket then owns it: its drop is the disconnect).
    parked: Mutex<HashMap<SessionId, (Owner, SessionHandle)>>,
}

impl AppState {
    pub(super) fn new(
        runtime: Runtime,
        settings: Settings,
        incidents: Incidents,
        metrics: PrometheusHandle,
    ) -> Self {
        AppState {
            engine: runtime.engine().clone(),
            baseline: runtime.gpu_counters(),
            runtime: Mutex::new(Some(runtime)),
            auth: Auth::new(),
            limiter: OwnerLimiter::new(settings.rate_per_sec, settings.rate_burst),
            settings,
            incidents,
            metrics,
            draining: AtomicBool::new(false),
            closing_sockets: watch::channel(false).0,
            websockets: AtomicUsize::new(0),
            parked: Mutex::new(HashMap::new()),
        }
    }

    /// wgpu's counters now; `None` once the runtime has shut down.
    pub fn gpu_counters(&self) -> Option<GpuCounters> {
        self.runtime
            .lock()
            .unwrap()
            .as_ref()
            .map(Runtime::gpu_counters)
    }

    /// True once the graceful shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub(super) fn park(&self, handle: SessionHandle, owner: Owner) {
        self.parked
            .lock()
            .unwrap()
            .insert(handle.id(), (owner, handle));
    }

    /// The parked handle of `id`, if `owner` owns it; someone else's stays parked.
    pub(super) fn take_parked(&self, id: SessionId, owner: &Owner) -> Option<SessionHandle> {
        let mut parked = self.parked.lock().unwrap();
        match parked.get(&id) {
            Some((parked_owner, _)) if parked_owner == owner => parked.remove(&id).map(|(_, h)| h),
            _ => None,
        }
    }

    pub(super) fn unpark(&self, id: SessionId) {
        self.parked.lock().unwrap().remove(&id);
    }

    pub(super) fn clear_parked(&self) {
        self.parked.lock().unwrap().clear();
    }

    /// Parked handles of sessions that ended on their own (idle, TTL,
    /// eviction) are dropped when their end goes by on the bus.
    pub(super) async fn forget_ended_sessions(this: &actix_web::web::Data<Self>) {
        let Some(mut ends) = this
            .engine
            .subscribe_channel(EventKinds::ENDED, Delivery::BestEffort)
            .await
        else {
            return;
        };
        let state = this.clone();
        actix_web::rt::spawn(async move {
            while let Some(event) = ends.recv().await {
                if let LifecycleEvent::Ended(end) = event {
                    state.unpark(end.id);
                }
            }
        });
    }
}
