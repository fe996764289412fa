//! Metrics through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! The runtime emits; the application installs a recorder (an exporter) and
//! sets `[metrics] enabled = true`. Off (the default), there is no subscriber
//! and nothing is paid. On without a recorder, every facade call is a no-op
//! (one atomic load); the subscriber's bus subscription and thread remain.
//!
//! What is emitted, with names, units, labels and meanings, is listed in
//! [`names`] (and in the table of [`crate::reference::metrics`]). Counters and histograms
//! follow the bus event by event; gauges are sampled every
//! `metrics.sample_interval`. Labels come from bounded sets only (`reason`,
//! `state`): never a session id, owner or trace id.
//!
//! Histograms have explicit buckets in [`names::HISTOGRAM_BUCKETS`]; apply
//! them in the exporter. With `metrics-exporter-prometheus`:
//!
//! ```rust,ignore
//! let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new();
//! for (name, buckets) in sessionbus::metrics::HISTOGRAM_BUCKETS {
//!     builder = builder.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)?;
//! }
//! let handle = builder.install_recorder()?; // before Runtime::start
//! let mut config = sessionbus::Config::default();
//! config.metrics.enabled = true;
//! let runtime = sessionbus::Runtime::start(config).await?;
//! println!("{}", handle.render());
//! ```
//!
//! `examples/prometheus.rs` serves `/metrics` this way.

mod config;
pub mod names;
mod record;
mod subscriber;

pub use config::MetricsConfig;
pub use names::{HISTOGRAM_BUCKETS, describe};
pub(crate) use subscriber::MetricsTask;
