//! The runtime's configuration: one serde struct, [`Config`], loadable from
//! TOML, with a documented default for every field, and the type of each
//! section. Invalid values are refused at start with an error that names the
//! field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sessionbus_actors::EngineConfig;

pub use crate::audit::{AuditConfig, AuditConfigError, LostRecords};
#[cfg(feature = "redis")]
pub use crate::cluster::{ClusterConfig, ClusterConfigError, ClusterKey};
pub use crate::gpu::{BackendChoice, GpuConfig, GpuConfigError};
pub use crate::metrics::MetricsConfig;
/// A value out of range, named by its path (`release.tiers[0].burst`); also
/// what [`OpenError::InvalidOptions`](crate::OpenError::InvalidOptions) carries.
pub use sessionbus_actors::ConfigError as InvalidValue;
pub use sessionbus_actors::units;
pub use sessionbus_actors::{BlockBudget, KvConfigError, KvLayout, KvPoolConfig};
pub use sessionbus_actors::{
    BudgetConfig, BudgetScope, BusConfig, ContextConfig, ExpiryConfig, HooksConfig, LeasesConfig,
    PaceUnit, ReleaseConfig, ReleaseTier, SessionsConfig, ShutdownConfig, SupervisionConfig,
    WhenExhausted,
};

/// The shipped `sessionbus.toml`: every key, its default and a comment.
pub const DEFAULT_TOML: &str = include_str!("../sessionbus.toml");

/// Deserializes `text`, naming the key an error is about (`expiry.idle_timeout`).
fn parse_named<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let parse_error = |field: Option<String>, e: toml::de::Error| ConfigError::Parse {
        field,
        message: e.to_string().trim_end().to_string(),
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| parse_error(None, e))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != "." && !path.is_empty()).then_some(path);
        parse_error(field, e.into_inner())
    })
}

/// Everything the runtime can be told. `Config::default()` is the embedded
/// default the demo runs on.
///
/// Durations and sizes are written with their unit (`"30s"`, `"4 GiB"`), and
/// `"off"` switches an optional limit off; see [`units`]. The
/// repository ships every key with its default and a comment in
/// `sessionbus.toml` (a test keeps it equal to `Config::default()`;
/// `sessionbus config print-default` prints it):
///
/// ```toml
#[doc = include_str!("../sessionbus.toml")]
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
    /// KV memory as paged blocks with shared prefixes; off unless the
    /// `[kv]` section is present. See [`KvPoolConfig`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv: Option<KvPoolConfig>,
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
#[non_exhaustive]
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
    /// The text is not valid TOML for this configuration: bad syntax, an
    /// unknown key, a value of the wrong type or unit.
    #[error("invalid configuration: {}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Parse {
        /// The key the error is about (`expiry.idle_timeout`), when it is about one.
        field: Option<String>,
        /// What is wrong (with the line, when known) and what would work.
        message: String,
    },
    /// A value is out of range (the error names the field).
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
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
            ConfigError::Parse { field, .. } => field.as_deref(),
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
        let config: Config = parse_named(text)?;
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
            if let Some(idle) = self.expiry.idle_timeout {
                if cluster.session_ttl < idle {
                    return Err(crate::cluster::ClusterConfigError {
                        field: "cluster.session_ttl",
                        reason: format!(
                            "\"{}\" is shorter than expiry.idle_timeout (\"{}\"): idle sessions would vanish from the directory while still live",
                            units::format_duration(cluster.session_ttl),
                            units::format_duration(idle)
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
            kv: self.kv.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;

    /// Every key of a TOML document, dotted; an array of tables counts its
    /// elements' keys once (`release.tiers[].rate`).
    fn keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
        for (key, value) in table {
            let path = format!("{prefix}{key}");
            match value {
                toml::Value::Table(inner) => keys(inner, &format!("{path}."), out),
                toml::Value::Array(items)
                    if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
                {
                    for item in items {
                        keys(
                            item.as_table().expect("a table"),
                            &format!("{path}[]."),
                            out,
                        );
                    }
                }
                _ => {
                    out.insert(path);
                }
            }
        }
    }

    fn keys_of(text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        keys(&text.parse::<toml::Table>().unwrap(), "", &mut out);
        out
    }

    /// The shipped file with its optional keys (`# key = …`) switched on.
    fn with_optional_keys_on() -> String {
        DEFAULT_TOML
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.starts_with('[') || rest.contains(" = ") => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_shipped_file_is_the_default_and_has_every_key() {
        let shipped = Config::from_toml(DEFAULT_TOML).unwrap();
        assert_eq!(shipped, Config::default());
        let default = toml::to_string(&Config::default()).unwrap();
        assert_eq!(keys_of(DEFAULT_TOML), keys_of(&default));
        // Written back, the default reads the same.
        assert_eq!(Config::from_toml(&default).unwrap(), Config::default());
    }

    #[cfg(feature = "redis")]
    #[test]
    fn the_shipped_optional_keys_are_every_optional_key_at_its_default() {
        let text = with_optional_keys_on();
        let parsed: Config = toml::from_str(&text).unwrap();
        let mut full = Config::default();
        full.context.dimension = Some(768);
        full.gpu.adapter = Some("llvmpipe".into());
        full.audit = Some(AuditConfig {
            key_env: Some("SESSIONBUS_AUDIT_KEY".into()),
            old_keys_env: Some("SESSIONBUS_AUDIT_OLD_KEYS".into()),
            ..AuditConfig::new("/var/lib/sessionbus/audit")
        });
        full.cluster = Some(crate::cluster::ClusterConfig::default());
        full.kv = Some(KvPoolConfig {
            layout: KvLayout {
                tokens_per_block: 16,
                bytes_per_token: 4096,
            },
            blocks_per_slab: 256,
            device_budget: BlockBudget::Bytes(4 << 30),
            cache_budget: BlockBudget::Bytes(512 << 20),
            owner_budget: None,
            table_cap_blocks: None,
            keep_alive: Duration::from_secs(300),
            slab_idle_trim: Duration::from_secs(30),
        });
        assert_eq!(parsed, full);
        assert_eq!(keys_of(&text), keys_of(&toml::to_string(&full).unwrap()));
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = Config::from_toml("[sessions]\nmax_session = 5\n").unwrap_err();
        assert!(err.to_string().contains("max_session"), "{err}");
        // Old names say they are unknown, not silently ignored.
        let err = Config::from_toml("[expiry]\nidle_timeout_secs = 60\n").unwrap_err();
        assert!(err.to_string().contains("idle_timeout_secs"), "{err}");
        assert_eq!(err.field(), Some("expiry.idle_timeout_secs"), "{err}");
    }

    #[test]
    fn bad_durations_and_sizes_name_the_field_and_say_what_works() {
        for (text, field, says) in [
            (
                "[expiry]\nidle_timeout = \"30x\"\n",
                "expiry.idle_timeout",
                "\"off\"",
            ),
            ("[expiry]\nttl = 1800\n", "expiry.ttl", "bare number"),
            ("[expiry]\nttl = \"never\"\n", "expiry.ttl", "\"30s\""),
            (
                "[leases]\ndrain_timeout = \"off\"\n",
                "leases.drain_timeout",
                "cannot be \"off\"",
            ),
            (
                "[sessions]\nmax_session_memory = 4096\n",
                "sessions.max_session_memory",
                "\"4 GiB\"",
            ),
            (
                "[budget]\ndevice_memory = \"none\"\n",
                "budget.device_memory",
                "\"off\"",
            ),
            (
                "[budget]\nowner_memory = \"4 GB B\"\n",
                "budget.owner_memory",
                "is not a size",
            ),
            (
                "[[release.tiers]]\nname = \"x\"\nfrom_queue = 0\nrate = -1\nburst = 1\nmax_in_flight = 1\n",
                "release.tiers[0].rate",
                "-1",
            ),
        ] {
            let err = Config::from_toml(text).unwrap_err();
            assert_eq!(err.field(), Some(field), "{text}: {err}");
            let shown = err.to_string();
            assert!(
                shown.contains(field) && shown.contains(says),
                "{text}: {shown}"
            );
        }
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let err = Config::from_toml("[sessions]\nmax_sessions = 0\n").unwrap_err();
        assert_eq!(err.field(), Some("sessions.max_sessions"));
        let err = Config::from_toml("[gpu]\nbackend = \"glide\"\n").unwrap_err();
        assert!(err.to_string().contains("glide"), "{err}");
        assert_eq!(err.field(), Some("gpu.backend"), "{err}");
    }

    #[test]
    fn zero_durations_name_the_field() {
        for (text, field) in [
            ("[expiry]\nidle_timeout = \"0s\"\n", "expiry.idle_timeout"),
            ("[expiry]\nttl = \"0ms\"\n", "expiry.ttl"),
            (
                "[expiry]\nsweep_interval = \"0s\"\n",
                "expiry.sweep_interval",
            ),
            ("[expiry]\nttl = \"20 years\"\n", "expiry.ttl"),
            ("[leases]\ndrain_timeout = \"0s\"\n", "leases.drain_timeout"),
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
            ("[context]\nhalf_life = \"0s\"\n", "context.half_life"),
            (
                "[metrics]\nsample_interval = \"0s\"\n",
                "metrics.sample_interval",
            ),
            ("[bus]\nflush_timeout = \"0s\"\n", "bus.flush_timeout"),
            ("[shutdown]\ndeadline = \"0s\"\n", "shutdown.deadline"),
            ("[hooks]\ntimeout = \"0s\"\n", "hooks.timeout"),
            ("[supervision]\nwithin = \"0s\"\n", "supervision.within"),
            (
                "[supervision]\nstep_timeout = \"0s\"\n",
                "supervision.step_timeout",
            ),
            (
                "[sessions]\ntombstone_ttl = \"0s\"\n",
                "sessions.tombstone_ttl",
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
            "[cluster]\nnode_id = \"b\"\nheartbeat_interval = \"100ms\"\nnode_ttl = \"300ms\"\n",
        )
        .unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.node_id, "b");
        assert_eq!(cluster.node_ttl, Duration::from_millis(300));
        let err = Config::from_toml("[cluster]\nnode_id = \"a b\"\n").unwrap_err();
        assert_eq!(err.field(), Some("cluster.node_id"), "{err}");
        let err = Config::from_toml("[cluster]\nnode_ttl = \"10ms\"\n").unwrap_err();
        assert_eq!(err.field(), Some("cluster.node_ttl"), "{err}");
        let err = Config::from_toml("[cluster]\nnode_ttl = 5000\n").unwrap_err();
        assert_eq!(err.field(), Some("cluster.node_ttl"), "{err}");
        let err = Config::from_toml(
            "[expiry]\nidle_timeout = \"10m\"\n[cluster]\nsession_ttl = \"1m\"\n",
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("cluster.session_ttl"), "{err}");
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
                "[budget]\ndevice_memory = \"1 MiB\"\n".into(),
                "sessions.max_session_memory",
            ),
            ("[budget]\ndevice_memory = \"0 B\"\n".into(), "budget.device_memory"),
            (
                "[budget]\ndevice_memory = \"100 B\"\nowner_memory = \"200 B\"\n[sessions]\nmax_session_memory = \"50 B\"\n"
                    .into(),
                "budget.owner_memory",
            ),
            ("[budget]\nwait_timeout = \"0s\"\n".into(), "budget.wait_timeout"),
        ] {
            let err = Config::from_toml(&text).unwrap_err();
            assert_eq!(err.field(), Some(field), "{text}: {err}");
        }
        let err = Config::from_toml("[budget]\nwhen_exhausted = \"panic\"\n").unwrap_err();
        assert!(err.to_string().contains("panic"), "{err}");
        let config = Config::from_toml(
            "[budget]\ndevice_memory = \"1 MiB\"\n[sessions]\nmax_session_memory = \"64 KiB\"\n",
        )
        .unwrap();
        assert_eq!(config.budget.device_memory, Some(1 << 20));
        assert_eq!(config.sessions.max_session_memory, 64 << 10);
    }

    #[test]
    fn limits_switch_off_with_one_word_and_take_any_unit() {
        let config = Config::from_toml(
            "[expiry]\nidle_timeout = \"off\"\nttl = \"250ms\"\n[budget]\ndevice_memory = \"off\"\n",
        )
        .unwrap();
        assert_eq!(config.expiry.idle_timeout, None);
        assert_eq!(config.expiry.ttl, Some(Duration::from_millis(250)));
        assert_eq!(config.budget.device_memory, None);
        let written = toml::to_string(&config).unwrap();
        assert!(written.contains("idle_timeout = \"off\""), "{written}");
        assert!(written.contains("ttl = \"250ms\""), "{written}");
        assert_eq!(Config::from_toml(&written).unwrap(), config);
    }
}
