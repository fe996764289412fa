//! The last few incidents (WARN and ERROR lines of the supervisor logs),
//! kept for `/status` by a tracing layer next to the log formatter.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

/// How many incidents `/status` shows.
pub const KEPT: usize = 20;

/// The ring of recent incidents, shared by the layer and `/status`.
#[derive(Debug, Clone, Default)]
pub struct Incidents(Arc<Mutex<VecDeque<serde_json::Value>>>);

impl Incidents {
    /// The layer that records into this ring.
    pub fn layer(&self) -> IncidentLayer {
        IncidentLayer(self.clone())
    }

    /// Newest last.
    pub fn recent(&self) -> Vec<serde_json::Value> {
        self.0.lock().unwrap().iter().cloned().collect()
    }
}

/// Records WARN and ERROR events of the `sessionbus` crates.
#[derive(Debug)]
pub struct IncidentLayer(Incidents);

struct Fields(serde_json::Map<String, serde_json::Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

impl<S: tracing::Subscriber> Layer<S> for IncidentLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::WARN || !meta.target().starts_with("sessionbus") {
            return;
        }
        let mut fields = Fields(serde_json::Map::new());
        event.record(&mut fields);
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let record = serde_json::json!({
            "at_unix_ms": at_ms,
            "level": meta.level().as_str(),
            "target": meta.target(),
            "fields": fields.0,
        });
        let mut ring = (self.0).0.lock().unwrap();
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(record);
    }
}
