//! Bad audit configuration refuses the start with an error naming the field:
//! a missing or short key, an unset key variable, an unwritable directory.

use sessionbus::audit::*;
use sessionbus::config::*;
use sessionbus::*;
use sessionbus_testkit::audit::*;

async fn refused(config: Config) -> StartError {
    match Runtime::start(config).await {
        Ok(_) => panic!("started with a bad [audit] section"),
        Err(e) => e,
    }
}

fn field(err: &StartError) -> Option<&str> {
    match err {
        StartError::Config(e) => e.field(),
        StartError::Audit(e) => e.field(),
        _ => None,
    }
}

#[tokio::test]
async fn a_missing_key_refuses_the_start() {
    let dir = scratch_dir("bad-no-key");
    let mut config = config_with_audit(&dir);
    config.audit.as_mut().unwrap().key = None;
    let err = refused(config).await;
    assert_eq!(field(&err), Some("audit.key"), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(trail_files(&dir).is_empty(), "nothing written");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_short_key_refuses_the_start() {
    let dir = scratch_dir("bad-short-key");
    let mut config = config_with_audit(&dir);
    config.audit.as_mut().unwrap().key = Some("ab".repeat(16));
    let err = refused(config).await;
    assert_eq!(field(&err), Some("audit.key"), "{err}");
    assert!(err.to_string().contains("16 bytes"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_key_with_signs_is_not_hex_and_refuses_the_start() {
    // `u8::from_str_radix` reads "+a" as 0x0a, so this once passed as a 32-byte key.
    let dir = scratch_dir("bad-plus-key");
    let mut config = config_with_audit(&dir);
    config.audit.as_mut().unwrap().key = Some("+a".repeat(32));
    let err = refused(config).await;
    assert_eq!(field(&err), Some("audit.key"), "{err}");
    assert!(err.to_string().contains("not hex"), "{err}");
    assert!(trail_files(&dir).is_empty(), "nothing written");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_unset_key_variable_refuses_the_start() {
    let dir = scratch_dir("bad-key-env");
    let mut config = config_with_audit(&dir);
    let audit = config.audit.as_mut().unwrap();
    audit.key = None;
    audit.key_env = Some("SESSIONBUS_TEST_KEY_THAT_IS_NOT_SET".into());
    let err = refused(config).await;
    assert_eq!(field(&err), Some("audit.key_env"), "{err}");
    assert!(
        err.to_string()
            .contains("SESSIONBUS_TEST_KEY_THAT_IS_NOT_SET")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_unwritable_directory_refuses_the_start() {
    // A directory under a regular file cannot exist, whoever runs the test (root included).
    let base = scratch_dir("bad-dir");
    let file = base.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let err = refused(config_with_audit(&file.join("audit"))).await;
    assert_eq!(field(&err), Some("audit.dir"), "{err}");
    assert!(
        matches!(err, StartError::Audit(AuditError::Unwritable { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("cannot write"), "{err}");
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn the_toml_section_is_checked_by_name() {
    let short = format!("[audit]\ndir = \"/tmp/x\"\nkey = \"{}\"\n", "ab".repeat(8));
    let err = Config::from_toml(&short).unwrap_err();
    assert_eq!(err.field(), Some("audit.key"), "{err}");
    let ok = format!("[audit]\ndir = \"/tmp/x\"\nkey = \"{TEST_KEY_HEX}\"\n");
    let config = Config::from_toml(&ok).unwrap();
    assert_eq!(
        config.audit.unwrap().retention,
        std::time::Duration::from_secs(180 * 86_400),
        "the default"
    );
    let err = Config::from_toml(&format!("{ok}retention = \"1h\"\n")).unwrap_err();
    assert_eq!(err.field(), Some("audit.retention"), "{err}");
    let err = Config::from_toml(&format!("{ok}rotate_size = \"512 B\"\n")).unwrap_err();
    assert_eq!(err.field(), Some("audit.rotate_size"), "{err}");
    let err = Config::from_toml(&format!("{ok}colour = 1\n")).unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
}
