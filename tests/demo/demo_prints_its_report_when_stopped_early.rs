//! Issue 15, defect 6: "the main job dies on Ctrl-C". The demo binary gets a
//! SIGTERM (and, in a second run, a SIGINT) as soon as it prints its first
//! line, long before its scenario is done: it must shut down gracefully,
//! print its report, keep its invariants (wgpu's counters back at baseline)
//! and exit 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs the demo, sends `signal` `after` its first line is out; answers
/// (exit code, stdout).
fn stopped_early(signal: &str, after: Duration, args: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut child = Command::new(sessionbus_testkit::demo_binary())
        .args(args)
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var_os("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
        )
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the demo starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("the demo prints a first line").unwrap();
    // Not a speed check: only where in the run the signal lands.
    std::thread::sleep(after);
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let mut out = vec![first];
    out.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    (status.code(), out)
}

fn check(signal: &str, after: Duration, args: &[&str]) -> serde_json::Value {
    let (code, out) = stopped_early(signal, after, args);
    let text = out.join("\n");
    assert_eq!(code, Some(0), "exits 0 after {signal}:\n{text}");
    let json: serde_json::Value = serde_json::from_str(out.last().unwrap())
        .unwrap_or_else(|e| panic!("the last line is the JSON report ({e}):\n{text}"));
    assert!(
        json["interrupted"].as_str().is_some(),
        "the report says it was interrupted: {json}"
    );
    assert_eq!(json["leaked_buffers"], 0, "{json}");
    let adapter = &json["adapter"];
    assert!(
        adapter["backend"].as_str().is_some_and(|b| !b.is_empty()),
        "the report names the GPU backend it found: {json}"
    );
    assert!(
        adapter.get("faster").is_some(),
        "the report says how to get a faster adapter (null when there is none): {json}"
    );
    assert_eq!(
        json["wgpu_hal_buffers_after"], json["wgpu_hal_buffers_baseline"],
        "{json}"
    );
    assert_eq!(json["double_ends"], 0, "{json}");
    assert_eq!(
        json["sessions_ended"], json["sessions_opened"],
        "every opened session ended: {json}"
    );
    json
}

#[test]
fn sigterm_right_after_start_prints_the_report_and_exits_0() {
    check(
        "-TERM",
        Duration::ZERO,
        &["--sessions", "20000", "--turns", "8", "--json"],
    );
}

#[test]
fn ctrl_c_while_clients_chat_prints_the_report_and_exits_0() {
    let json = check(
        "-INT",
        // Long enough for a loaded CI machine to have clients chatting (the
        // 100 000 sessions take far longer than this to finish).
        Duration::from_secs(5),
        &["--sessions", "100000", "--turns", "8", "--json"],
    );
    assert!(
        json["sessions_opened"].as_u64().unwrap() > 0,
        "the signal came while clients were chatting: {json}"
    );
}

#[test]
fn ctrl_c_in_the_storm_scenario_prints_the_report_and_exits_0() {
    check(
        "-INT",
        Duration::ZERO,
        &["--scenario", "storm", "--storm-size", "20000", "--json"],
    );
}
