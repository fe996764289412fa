//! The `[audit]` section: where the trail goes, its key, rotation and retention.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sessionbus_actors::Pseudonymizer;
use sessionbus_actors::units::{self, format_duration, format_size};

use super::chain::AuditKeys;
use super::error::AuditConfigError;
use super::keyring::{AuditKeyring, parse_key};

/// The audit trail's configuration. Present (`[audit]` in TOML) means on;
/// `sessionbus.toml` shows the section, commented out, with every key.
///
/// At start the trail is checked before anything is appended: the previous
/// run's tail under its key, and against the head note. Records that are
/// missing (a cut tail, files deleted while stopped, a head note gone)
/// refuse the start, or with `on_lost_records = "record_gap"` are recorded
/// as an `audit.gap` and the chain goes on. Changed records, and records
/// under a key that is not configured, always refuse.
///
/// The key never appears in `Debug` output.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The directory for the trail's files (`audit-<first seq>.jsonl`).
    pub dir: PathBuf,
    /// The key inline, as hex. For tests; in production use `key_env`.
    #[serde(default, skip_serializing)]
    pub key: Option<String>,
    /// The environment variable that holds the key, as hex.
    #[serde(default)]
    pub key_env: Option<String>,
    /// How identities are hidden. Only `"hmac"` (keyed-hash pseudonyms) today.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// A file is rotated once it holds this much (`"64 MiB"`, at least 1 KiB).
    #[serde(default = "default_rotate_size", with = "units::size")]
    pub rotate_size: u64,
    /// A file is rotated once it is this old (`"1d"`, at least one second).
    #[serde(default = "default_rotate_age", with = "units::duration")]
    pub rotate_age: Duration,
    /// Files last written longer ago than this are deleted (`"180d"`, at least a day).
    #[serde(default = "default_retention", with = "units::duration")]
    pub retention: Duration,
    /// The environment variable holding earlier keys (`id:hex,id:hex`, or
    /// `hex,hex`): after a key change, the previous run's tail is verified
    /// under the key that sealed it.
    #[serde(default)]
    pub old_keys_env: Option<String>,
    /// Earlier keys inline, in the same form. For tests; in production use `old_keys_env`.
    #[serde(default, skip_serializing)]
    pub old_keys: Option<String>,
    /// What a start does when records of earlier runs are missing.
    #[serde(default)]
    pub on_lost_records: LostRecords,
}

/// What a start does when records written by earlier runs are missing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostRecords {
    /// Refuse to start (`AuditError::PreviousTrail`), so an operator looks first.
    #[default]
    Refuse,
    /// Record an `audit.gap` naming what was lost, and go on from the last
    /// record that verifies.
    RecordGap,
}

fn default_mode() -> String {
    "hmac".into()
}
fn default_rotate_size() -> u64 {
    64 << 20
}
fn default_rotate_age() -> Duration {
    Duration::from_secs(86_400)
}
fn default_retention() -> Duration {
    Duration::from_secs(180 * 86_400)
}

impl AuditConfig {
    /// A configuration for `dir` with every other field at its default and no key.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        AuditConfig {
            dir: dir.into(),
            key: None,
            key_env: None,
            mode: default_mode(),
            rotate_size: default_rotate_size(),
            rotate_age: default_rotate_age(),
            retention: default_retention(),
            old_keys_env: None,
            old_keys: None,
            on_lost_records: LostRecords::default(),
        }
    }

    /// Refuses values that cannot work, naming the field; this includes
    /// resolving the key (missing, not hex, or too short).
    pub fn validate(&self) -> Result<(), AuditConfigError> {
        self.resolve_keyring()?;
        let bad = |field: &'static str, problem: String| Err(AuditConfigError { field, problem });
        if self.mode != "hmac" {
            return bad(
                "audit.mode",
                format!("must be \"hmac\", got {:?}", self.mode),
            );
        }
        if self.dir.as_os_str().is_empty() {
            return bad("audit.dir", "must name a directory".into());
        }
        if self.rotate_size < 1024 {
            return bad(
                "audit.rotate_size",
                format!(
                    "must be at least \"1 KiB\", got \"{}\"",
                    format_size(self.rotate_size)
                ),
            );
        }
        if self.rotate_age < Duration::from_secs(1) {
            return bad(
                "audit.rotate_age",
                format!(
                    "must be at least \"1s\", got \"{}\"",
                    format_duration(self.rotate_age)
                ),
            );
        }
        if self.retention < Duration::from_secs(86_400) {
            return bad(
                "audit.retention",
                format!(
                    "must be at least \"1d\", got \"{}\"",
                    format_duration(self.retention)
                ),
            );
        }
        Ok(())
    }

    /// The pseudonymizer the trail (and the runtime's log lines) use under
    /// this configuration's key: to find a user's records, compute their
    /// pseudonym with it (`pseudonymizer()?.owner(&owner)`).
    pub fn pseudonymizer(&self) -> Result<Pseudonymizer, AuditConfigError> {
        Ok(AuditKeys::derive(&self.resolve_key()?).pseudonyms)
    }

    /// The key's bytes, from `key` or the variable `key_env` names.
    pub fn resolve_key(&self) -> Result<Vec<u8>, AuditConfigError> {
        let (field, text) = match (&self.key, &self.key_env) {
            (Some(_), Some(_)) => {
                return Err(AuditConfigError {
                    field: "audit.key",
                    problem: "set either key or key_env, not both".into(),
                });
            }
            (Some(key), None) => ("audit.key", key.clone()),
            (None, Some(var)) => match std::env::var(var) {
                Ok(text) => ("audit.key_env", text),
                Err(_) => {
                    return Err(AuditConfigError {
                        field: "audit.key_env",
                        problem: format!("the environment variable {var} is not set"),
                    });
                }
            },
            (None, None) => {
                return Err(AuditConfigError {
                    field: "audit.key",
                    problem: "missing: the audit trail needs a key (key_env naming an \
                              environment variable that holds it as hex, or key)"
                        .into(),
                });
            }
        };
        parse_key(field, &text)
    }

    /// The keyring: the key (which writes) first, then the old keys.
    pub fn resolve_keyring(&self) -> Result<AuditKeyring, AuditConfigError> {
        let mut keyring = AuditKeyring::new();
        keyring.add_key(&self.resolve_key()?)?;
        match (&self.old_keys, &self.old_keys_env) {
            (Some(_), Some(_)) => Err(AuditConfigError {
                field: "audit.old_keys",
                problem: "set either old_keys or old_keys_env, not both".into(),
            }),
            (Some(list), None) => keyring.add_list("audit.old_keys", list),
            (None, Some(var)) => match std::env::var(var) {
                Ok(list) => keyring.add_list("audit.old_keys_env", &list),
                Err(_) => Err(AuditConfigError {
                    field: "audit.old_keys_env",
                    problem: format!("the environment variable {var} is not set"),
                }),
            },
            (None, None) => Ok(()),
        }?;
        Ok(keyring)
    }
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field("dir", &self.dir)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("key_env", &self.key_env)
            .field("mode", &self.mode)
            .field("rotate_size", &self.rotate_size)
            .field("rotate_age", &self.rotate_age)
            .field("retention", &self.retention)
            .field("old_keys_env", &self.old_keys_env)
            .field("old_keys", &self.old_keys.as_ref().map(|_| "<redacted>"))
            .field("on_lost_records", &self.on_lost_records)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(key: &str) -> AuditConfig {
        AuditConfig {
            key: Some(key.into()),
            ..AuditConfig::new("/tmp/x")
        }
    }

    #[test]
    fn a_missing_key_names_the_field() {
        let err = AuditConfig::new("/tmp/x").validate().unwrap_err();
        assert_eq!(err.field, "audit.key");
        assert!(err.problem.contains("missing"), "{err}");
    }

    #[test]
    fn a_short_or_malformed_key_names_the_field() {
        let err = with_key(&"ab".repeat(31)).validate().unwrap_err();
        assert_eq!(err.field, "audit.key");
        assert!(err.problem.contains("31 bytes"), "{err}");
        let err = with_key("xyz").validate().unwrap_err();
        assert!(err.problem.contains("not hex"), "{err}");
        assert!(with_key(&"ab".repeat(32)).validate().is_ok());
    }

    #[test]
    fn an_unset_key_variable_names_the_field() {
        let config = AuditConfig {
            key_env: Some("SESSIONBUS_TEST_SURELY_UNSET_KEY".into()),
            ..AuditConfig::new("/tmp/x")
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.field, "audit.key_env");
    }

    #[test]
    fn the_key_never_shows_in_debug() {
        let key = "cd".repeat(32);
        assert!(!format!("{:?}", with_key(&key)).contains(&key));
    }

    #[test]
    fn a_key_with_signs_is_not_hex() {
        // `u8::from_str_radix` reads "+a" as 10: such a key once passed.
        let err = with_key(&"+a".repeat(32)).validate().unwrap_err();
        assert_eq!(err.field, "audit.key");
        assert!(err.problem.contains("not hex"), "{err}");
    }

    #[test]
    fn old_keys_join_the_keyring_after_the_key() {
        let old = "cd".repeat(32);
        let config = AuditConfig {
            old_keys: Some(old.clone()),
            ..with_key(&"ab".repeat(32))
        };
        let ring = config.resolve_keyring().unwrap();
        assert_eq!(ring.key_ids().len(), 2);
        let err = AuditConfig {
            old_keys: Some("+a".repeat(32)),
            ..config
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.field, "audit.old_keys");
    }
}
