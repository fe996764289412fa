//! `GET /status` (JSON for the page and for people) and `GET /metrics`
//! (Prometheus text).

use std::sync::atomic::Ordering;

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::state::AppState;

/// The status document.
pub async fn snapshot(state: &AppState) -> serde_json::Value {
    let stats = state.engine.stats().await.ok(); // None once the runtime stopped
    let pool = state.engine.pool_stats();
    let counters = state.gpu_counters();
    let ended_by: serde_json::Map<String, serde_json::Value> = stats
        .as_ref()
        .map(|s| {
            s.ended_by
                .iter()
                .map(|(reason, n)| (reason.to_string(), (*n).into()))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "running": stats.is_some() && !state.is_draining(),
        "sessions": stats.as_ref().map(|s| json!({
            "live": s.live,
            "releasing": s.releasing,
            "opened": s.opened,
            "ended": s.ended,
            "released": s.released,
        })),
        "ended_by": ended_by,
        "websockets": state.websockets.load(Ordering::SeqCst),
        "admission": admission(state),
        "gpu": {
            "live_bytes": pool.live_bytes,
            "peak_bytes": pool.peak_bytes,
            "live_buffers": pool.live_buffers,
            "allocated_total": pool.allocated_total,
            "released_total": pool.released_total,
        },
        "gpu_counters": counters,
        "gpu_counters_baseline": state.baseline,
        "gpu_at_baseline": counters.map(|c| c == state.baseline),
        "release_queue": stats.as_ref().map(|s| &s.release_queue),
        "budget": stats.as_ref().map(|s| &s.budget),
        "pressure": stats.as_ref().map(|s| &s.pressure),
        "kv": stats.as_ref().and_then(|s| s.kv.as_ref()),
        "incidents": {
            "total": stats.as_ref().map(|s| s.incidents),
            "sweeper": stats.as_ref().map(|s| s.sweeper_incidents),
            "recent": state.incidents.recent(),
        },
    })
}

/// What the server's own admission holds: sessions waiting for a socket,
/// sessions it tracks, and the rate limiters' key counts (all bounded).
fn admission(state: &AppState) -> serde_json::Value {
    let (unattached, tracked) = state.sessions.counts();
    json!({
        "unattached": unattached,
        "tracked": tracked,
        "limiter_keys": {
            "owner": state.limiter.keys(),
            "address": state.address_limiter.keys(),
        },
    })
}

pub(super) async fn status(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(snapshot(&state).await)
}

pub(super) async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
