//! Helpers for the audit trail's tests: a test key, scratch directories, and
//! reading a trail back.

use std::path::{Path, PathBuf};

use sessionbus::audit::AuditRecord;
use sessionbus::config::{AuditConfig, Config};

/// A key for tests only (32 bytes of hex); real keys come from `key_env`.
pub const TEST_KEY_HEX: &str = "7e57a0d17e57a0d17e57a0d17e57a0d17e57a0d17e57a0d17e57a0d17e57a0d1";

/// The test key's bytes.
pub fn test_key() -> Vec<u8> {
    (0..TEST_KEY_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&TEST_KEY_HEX[i..i + 2], 16).unwrap())
        .collect()
}

/// A fresh, empty directory under the system's temp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir =
        std::env::temp_dir().join(format!("sessionbus-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `[audit]` on `dir` with the test key.
pub fn audit_config(dir: &Path) -> AuditConfig {
    AuditConfig {
        key: Some(TEST_KEY_HEX.into()),
        ..AuditConfig::new(dir)
    }
}

/// The default configuration with the audit trail in `dir`.
pub fn config_with_audit(dir: &Path) -> Config {
    Config {
        audit: Some(audit_config(dir)),
        ..Config::default()
    }
}

/// The trail's files in chain order.
pub fn trail_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

/// Every whole record of the trail, in order (a torn last line is skipped).
pub fn read_records(dir: &Path) -> Vec<AuditRecord> {
    trail_files(dir)
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let whole = text.rfind('\n').map_or(0, |i| i + 1);
            text[..whole]
                .lines()
                .map(|l| serde_json::from_str::<AuditRecord>(l).expect("a whole record"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The whole trail as text.
pub fn trail_text(dir: &Path) -> String {
    trail_files(dir)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

/// One run of a runtime on `config`: a session opens, holds GPU memory and
/// closes; then a clean shutdown with wgpu's counters back at baseline.
pub async fn one_run(config: Config) {
    let mut h = crate::start_with(config).await;
    let session = h.rt.open("someone@example.com").await.unwrap();
    session.allocate(4 * crate::KIB).await.unwrap();
    session.close().await.unwrap();
    h.until_released(1).await;
    h.shutdown_at_baseline().await;
}

/// The start's error; a start that succeeds is shut down and fails the test.
pub async fn refused_start(config: Config) -> sessionbus::StartError {
    match sessionbus::Runtime::start(config).await {
        Ok(rt) => {
            rt.shutdown().await;
            panic!("the runtime started")
        }
        Err(e) => e,
    }
}

/// Removes the last `n` lines of `file`, as someone cutting the tail would.
pub fn cut_last_lines(file: &Path, n: usize) {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = lines[..lines.len() - n].join("\n");
    kept.push('\n');
    std::fs::write(file, kept).unwrap();
}

/// The bytes of every file in `dir`, by name.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}
