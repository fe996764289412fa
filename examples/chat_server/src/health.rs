//! Probes for an orchestrator. `GET /healthz` (liveness): the process
//! answers HTTP, 200. `GET /readyz` (readiness): 200 while the runtime runs
//! and takes sessions; 503 with the reason once the shutdown has begun, the
//! runtime has stopped, or its engine reports a failure (a lost GPU device).

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::state::AppState;

pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "alive"}))
}

pub(super) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let not_ready = if state.is_draining() {
        Some("shutting down".to_string())
    } else if state.engine.stats().await.is_err() {
        Some("the runtime has stopped".to_string())
    } else {
        state.engine.failure()
    };
    match not_ready {
        None => HttpResponse::Ok().json(json!({"status": "ready"})),
        Some(why) => HttpResponse::ServiceUnavailable().json(json!({
            "status": "not_ready",
            "error": "not_ready",
            "message": why,
        })),
    }
}
