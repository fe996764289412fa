//! The `sessionbus` command: `config check` accepts a good file and names the
//! bad key of a bad one; `config print-default` prints the defaults.

use std::path::PathBuf;
use std::process::{Command, Output};

use sessionbus::config::Config;

fn sessionbus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sessionbus"))
        .args(args)
        .output()
        .expect("the sessionbus binary runs")
}

fn file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sessionbus-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_good_file_passes_the_check() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/sessionbus.toml");
    let out = sessionbus(&["config", "check", shipped]);
    assert!(out.status.success(), "{out:?}");
    let path = file(
        "good.toml",
        "[expiry]\nidle_timeout = \"5m\"\nttl = \"off\"\n[budget]\ndevice_memory = \"16 GiB\"\n",
    );
    let out = sessionbus(&["config", "check", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{out:?}"
    );
}

#[test]
fn a_bad_value_fails_the_check_naming_the_key() {
    for (name, text, says) in [
        (
            "unit.toml",
            "[expiry]\nidle_timeout = \"30x\"\n",
            "expiry.idle_timeout",
        ),
        (
            "bare.toml",
            "[budget]\nwait_timeout = 5000\n",
            "budget.wait_timeout",
        ),
        (
            "zero.toml",
            "[shutdown]\ndeadline = \"0s\"\n",
            "shutdown.deadline",
        ),
        (
            "size.toml",
            "[sessions]\nmax_session_memory = \"4 GiB\"\n[budget]\ndevice_memory = \"1 GiB\"\n",
            "sessions.max_session_memory",
        ),
        (
            "unknown.toml",
            "[sessions]\nmax_session_bytes = \"4 GiB\"\n",
            "max_session_bytes",
        ),
    ] {
        let path = file(name, text);
        let out = sessionbus(&["config", "check", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{name}: {stderr}");
    }
    let out = sessionbus(&["config", "check", "/nonexistent/sessionbus.toml"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn the_printed_default_reads_back_as_the_default() {
    let out = sessionbus(&["config", "print-default"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(Config::from_toml(&text).unwrap(), Config::default());
    assert!(text.contains("# "), "commented: {text}");
}

#[test]
fn audit_verify_without_a_key_says_so() {
    let dir = file("x", "").parent().unwrap().join("no-trail");
    let out = Command::new(env!("CARGO_BIN_EXE_sessionbus"))
        .args([
            "audit",
            "verify",
            "--key-env",
            "SESSIONBUS_TEST_SURELY_UNSET_KEY",
        ])
        .arg(&dir)
        .env_remove("SESSIONBUS_AUDIT_KEYS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SESSIONBUS_TEST_SURELY_UNSET_KEY"),
        "{out:?}"
    );
}
