//! The runtime's configuration: one serde struct, loadable from TOML, with a
//! documented default for every field. Invalid values are refused at start
//! with an error that names the field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sessionbus_actors::{
    BudgetConfig, BusConfig, ContextConfig, EngineConfig, ExpiryConfig, HooksConfig, LeasesConfig,
    ReleaseConfig, SessionsConfig, ShutdownConfig, SupervisionConfig,
};

use crate::audit::{AuditConfig, AuditConfigError};
use crate::gpu::{GpuConfig, GpuConfigError};
use crate::metrics::MetricsConfig;

/// Everything the runtime can be told. `Config::default()` is the embedded
/// default the demo runs on.
///
/// ```toml
/// [sessions]
/// max_sessions = 1000000        # live sessions admitted at once
/// max_session_bytes = 4294967296 # GPU bytes one session may hold
/// mailbox_capacity = 64         # messages waiting per session before senders wait
/// tombstones = 100000           # ended sessions remembered (late messages get "session gone")
/// tombstone_ttl_secs = 3600
///
/// [expiry]
/// idle_timeout_secs = 1800      # seconds without activity, or "never"
/// ttl_secs = 86400              # absolute lifetime in seconds, or "never"
/// sweep_interval_secs = 30      # the safety-net sweeper (finds nothing when healthy)
///
/// [leases]
/// drain_timeout_secs = 30       # an ending session waits this long for in-flight work
/// heartbeat_interval_secs = 5   # remote lease holders heartbeat this often
/// missed_heartbeats = 3         # ...and are revoked after this many silent intervals
/// end_session_on_lease_lost = true
///
/// [context]
/// enabled = true                # context expiry on turns that carry a signal
/// similarity_threshold = 0.4    # cosine(new turn, context) below this: stale (within [-1, 1])
/// half_life_secs = 600          # the context's weight halves every this many idle seconds
/// min_weight = 0.05             # ...and below this weight it is stale
/// # dimension = 768             # embedding size (else fixed by the first embedding)
///
/// [release]
/// unit = "buffers"              # what rates count: "buffers" or "mib"
/// busy_live_sessions = 100000   # this many live sessions lower the tier by one
/// # Load tiers, chosen by the release queue's depth (see BENCHMARKS.md, "Storms").
/// [[release.tiers]]
/// name = "low"
/// from_queue = 0                # applies from this queue depth (in `unit`)
/// rate = 100000                 # sustained release rate per second (GCRA)
/// burst = 8192                  # released at once before pacing starts
/// max_in_flight = 64            # releases handed to the GPU thread at once
/// [[release.tiers]]
/// name = "medium"
/// from_queue = 8192
/// rate = 200000
/// burst = 16384
/// max_in_flight = 256
/// [[release.tiers]]
/// name = "high"
/// from_queue = 65536
/// rate = 1000000
/// burst = 65536
/// max_in_flight = 1024
///
/// [budget]
/// device_bytes = "none"         # GPU bytes all sessions may hold, or "none"
/// owner_bytes = "none"          # GPU bytes one owner's sessions may hold, or "none"
/// when_exhausted = "evict"      # fail | wait | evict (idle sessions, least recently active first)
/// wait_timeout_ms = 5000        # how long an allocation waits for room
/// evict_idle_ms = 1000          # only sessions idle this long are evicted or offloaded
/// offload = true                # evict softly: buffers to host memory, session stays alive
/// offload_host_bytes = 8589934592 # host memory offloaded sessions may hold
///
/// [bus]
/// subscriber_capacity = 4096    # queue per subscriber
/// flush_timeout_ms = 5000       # at shutdown, wait this long for lagging reliable subscribers
///
/// [gpu]
/// backend = "auto"              # auto | vulkan | gl | metal | dx12 (auto honours WGPU_BACKEND)
/// # adapter = "llvmpipe"        # prefer adapters whose name contains this (or WGPU_ADAPTER_NAME)
/// batch_max = 256               # GPU commands per batch, one device poll per batch
///
/// [metrics]
/// enabled = false               # true: emit through the `metrics` facade (install a recorder)
/// sample_interval_ms = 1000     # gauges (sessions, GPU bytes, queue depth) are sampled this often
///
/// [shutdown]
/// deadline_secs = 30            # shutdown() forces leases at 3/4 of it, reports what is left at it
///
/// [hooks]
/// timeout_ms = 5000             # each pre-destroy hook; past it the release goes ahead
///
/// [supervision]
/// max_restarts = 5              # restarts of a runtime task within within_secs, then escalate
/// within_secs = 5
/// step_timeout_ms = 30000       # a GPU release unanswered this long is stuck: force-completed
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Session limits.
    pub sessions: SessionsConfig,
    /// Idle timeout, TTL, the sweeper.
    pub expiry: ExpiryConfig,
    /// Lease draining and heartbeats.
    pub leases: LeasesConfig,
    /// Context expiry for multi-turn chat.
    pub context: ContextConfig,
    /// Pacing of GPU release: the queue's load tiers.
    pub release: ReleaseConfig,
    /// GPU memory budgets and eviction.
    pub budget: BudgetConfig,
    /// The lifecycle event bus.
    pub bus: BusConfig,
    /// The GPU device and its worker thread.
    pub gpu: GpuConfig,
    /// Metrics through the `metrics` facade.
    pub metrics: MetricsConfig,
    /// The audit trail; off unless the `[audit]` section is present (it then
    /// needs a key). See [`AuditConfig`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditConfig>,
    /// Beyond one machine: the Redis directory this node joins (`None`: a
    /// single node). Read by the application, which starts a
    /// [`ClusterNode`](crate::cluster::ClusterNode) with it next to the runtime.
    #[cfg(feature = "redis")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Graceful shutdown: the default deadline.
    pub shutdown: ShutdownConfig,
    /// Pre-destroy hooks.
    pub hooks: HooksConfig,
    /// Restart limits and destroy-path step deadlines.
    pub supervision: SupervisionConfig,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML for this configuration (unknown keys included).
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value is out of range (the error names the field).
    #[error(transparent)]
    Invalid(#[from] sessionbus_actors::ConfigError),
    /// A GPU setting is out of range (the error names the field).
    #[error(transparent)]
    Gpu(#[from] GpuConfigError),
    /// An `[audit]` setting cannot be used: a missing or short key, … (names the field).
    #[error(transparent)]
    Audit(#[from] AuditConfigError),
    /// A `[cluster]` setting is out of range (the error names the field).
    #[cfg(feature = "redis")]
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterConfigError),
}

impl ConfigError {
    /// The offending field's path, when the error is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid(e) => Some(&e.field),
            ConfigError::Gpu(e) => Some(e.field()),
            ConfigError::Audit(e) => Some(e.field),
            #[cfg(feature = "redis")]
            ConfigError::Cluster(e) => Some(e.field),
            _ => None,
        }
    }
}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Refuses values that cannot work, naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.engine().validate()?;
        self.gpu.validate()?;
        self.metrics.validate()?;
        if let Some(audit) = &self.audit {
            audit.validate()?;
        }
        #[cfg(feature = "redis")]
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
            // An idle session must end in the engine before its directory entry lapses.
            if let Some(idle) = self.expiry.idle_timeout_secs {
                if (cluster.session_ttl_secs as f64) < idle {
                    return Err(crate::cluster::ClusterConfigError {
                        field: "cluster.session_ttl_secs",
                        reason: format!(
                            "{} s is shorter than expiry.idle_timeout_secs ({idle} s): idle sessions would vanish from the directory while still live",
                            cluster.session_ttl_secs
                        ),
                    }
                    .into());
                }
            }
        }
        Ok(())
    }

    /// The engine's part.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            sessions: self.sessions.clone(),
            expiry: self.expiry.clone(),
            leases: self.leases.clone(),
            context: self.context.clone(),
            release: self.release.clone(),
            budget: self.budget.clone(),
            bus: self.bus.clone(),
            shutdown: self.shutdown.clone(),
            hooks: self.hooks.clone(),
            supervision: self.supervision.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_to_the_defaults() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.contains("```toml"))
            .skip(1)
            .take_while(|l| !l.contains("```"))
            .map(|l| l.trim_start_matches("///").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(Config::from_toml(&example).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = Config::from_toml("[sessions]\nmax_session = 5\n").unwrap_err();
        assert!(err.to_string().contains("max_session"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let err = Config::from_toml("[sessions]\nmax_sessions = 0\n").unwrap_err();
        assert_eq!(err.field(), Some("sessions.max_sessions"));
        let err = Config::from_toml("[[release.tiers]]\nname = \"x\"\nfrom_queue = 0\nrate = -1\nburst = 1\nmax_in_flight = 1\n").unwrap_err();
        assert!(err.to_string().contains("rate"), "{err}");
        let err = Config::from_toml("[gpu]\nbackend = \"glide\"\n").unwrap_err();
        assert!(err.to_string().contains("glide"), "{err}");
    }

    #[test]
    fn zero_negative_or_nan_timeouts_name_the_field() {
        for (text, field) in [
            (
                "[expiry]\nidle_timeout_secs = 0\n",
                "expiry.idle_timeout_secs",
            ),
            ("[expiry]\nttl_secs = -5\n", "expiry.ttl_secs"),
            (
                "[expiry]\nidle_timeout_secs = nan\n",
                "expiry.idle_timeout_secs",
            ),
            (
                "[expiry]\nsweep_interval_secs = 0\n",
                "expiry.sweep_interval_secs",
            ),
            (
                "[leases]\ndrain_timeout_secs = -1\n",
                "leases.drain_timeout_secs",
            ),
            (
                "[leases]\nmissed_heartbeats = 0\n",
                "leases.missed_heartbeats",
            ),
            (
                "[context]\nsimilarity_threshold = 1.5\n",
                "context.similarity_threshold",
            ),
            (
                "[context]\nsimilarity_threshold = -2\n",
                "context.similarity_threshold",
            ),
            (
                "[metrics]\nsample_interval_ms = 0\n",
                "metrics.sample_interval_ms",
            ),
        ] {
            let err = Config::from_toml(text).unwrap_err();
            assert_eq!(err.field(), Some(field), "{text}: {err}");
        }
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_bad_cluster_section_names_the_field() {
        let config = Config::from_toml(
            "[cluster]\nnode_id = \"b\"\nheartbeat_interval_ms = 100\nnode_ttl_ms = 300\n",
        )
        .unwrap();
        assert_eq!(config.cluster.unwrap().node_id, "b");
        let err = Config::from_toml("[cluster]\nnode_id = \"a b\"\n").unwrap_err();
        assert_eq!(err.field(), Some("cluster.node_id"), "{err}");
        let err = Config::from_toml("[cluster]\nnode_ttl_ms = 10\n").unwrap_err();
        assert_eq!(err.field(), Some("cluster.node_ttl_ms"), "{err}");
        let err = Config::from_toml(
            "[expiry]\nidle_timeout_secs = 600\n[cluster]\nsession_ttl_secs = 60\n",
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("cluster.session_ttl_secs"), "{err}");
        let err = Config::from_toml("[cluster]\nredis = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("redis"), "{err}");
    }

    #[test]
    fn zero_rates_bursts_and_budgets_that_cannot_work_name_the_field() {
        let tier = |rate: u32, burst: u32| {
            format!(
                "[[release.tiers]]\nname = \"t\"\nfrom_queue = 0\nrate = {rate}\nburst = {burst}\nmax_in_flight = 4\n"
            )
        };
        for (text, field) in [
            (tier(0, 10), "release.tiers[0].rate"),
            (tier(10, 0), "release.tiers[0].burst"),
            ("[release]\ntiers = []\n".into(), "release.tiers"),
            (
                "[budget]\ndevice_bytes = 1048576\n".into(),
                "sessions.max_session_bytes",
            ),
            ("[budget]\ndevice_bytes = 0\n".into(), "budget.device_bytes"),
            (
                "[budget]\ndevice_bytes = 100\nowner_bytes = 200\n[sessions]\nmax_session_bytes = 50\n"
                    .into(),
                "budget.owner_bytes",
            ),
            ("[budget]\nwait_timeout_ms = 0\n".into(), "budget.wait_timeout_ms"),
        ] {
            let err = Config::from_toml(&text).unwrap_err();
            assert_eq!(err.field(), Some(field), "{text}: {err}");
        }
        let err = Config::from_toml("[budget]\nwhen_exhausted = \"panic\"\n").unwrap_err();
        assert!(err.to_string().contains("panic"), "{err}");
        let config = Config::from_toml(
            "[budget]\ndevice_bytes = 1048576\n[sessions]\nmax_session_bytes = 65536\n",
        )
        .unwrap();
        assert_eq!(config.budget.device_bytes, Some(1 << 20));
    }

    #[test]
    fn timeouts_can_be_switched_off_and_take_fractions() {
        let config =
            Config::from_toml("[expiry]\nidle_timeout_secs = \"never\"\nttl_secs = 0.25\n")
                .unwrap();
        assert_eq!(config.expiry.idle_timeout_secs, None);
        assert_eq!(config.expiry.ttl_secs, Some(0.25));
        let err = Config::from_toml("[expiry]\nttl_secs = \"forever\"\n").unwrap_err();
        assert!(err.to_string().contains("never"), "{err}");
    }
}
