//! The supervisor logs of a whole workload (every level, JSON, with span
//! fields) never contain an owner's id or a client's IP in clear: they carry
//! the owner's pseudonym, the same one the audit trail writes, and the
//! request's trace id on every lifecycle line.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;
use sessionbus::audit::*;
use sessionbus::*;
use sessionbus_testkit::audit::*;
use sessionbus_testkit::*;

const OWNERS: [&str; 5] = [
    "owner-alice@example.com",
    "owner-bob@example.com",
    "owner-carol@example.com",
    "owner-dave@example.com",
    "owner-erin@example.com",
];

fn event<'a>(lines: &'a [Value], name: &str, session: SessionId) -> &'a Value {
    let id = session.to_string();
    lines
        .iter()
        .find(|l| l["fields"]["event"] == name && l["fields"]["session_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no {name} line for {id}"))
}

#[tokio::test]
async fn no_log_line_holds_a_raw_owner_or_ip_but_the_pseudonym_and_trace_are_there() {
    let logs = logs::capture();
    let dir = scratch_dir("logs-pseudonyms");
    let mut config = config_with_audit(&dir);
    config.leases.heartbeat_interval = std::time::Duration::from_secs_f64(0.02);
    config.leases.missed_heartbeats = 2;
    let mut h = start_with(config).await;
    let ip: IpAddr = "198.51.100.23".parse().unwrap();
    let open = |owner: &str, trace: u128| {
        OpenOptions::new(owner)
            .client_ip(ip)
            .trace_id(TraceId(trace))
    };

    // alice chats (TRACE turns), resets her context, closes with a trace of her own.
    let alice = h.rt.open_with(open(OWNERS[0], 0xa1)).await.unwrap();
    alice.allocate_for_context(32 * KIB).await.unwrap();
    alice
        .chat(Turn::new().embedding(vec![1.0, 0.0]))
        .await
        .unwrap();
    alice
        .chat(Turn::new().embedding(vec![0.0, 1.0]))
        .await
        .unwrap();
    // bob is refused alice's session (an error to bob, not a log line with names).
    assert!(
        h.rt.attach(alice.id(), Owner::new(OWNERS[1]))
            .await
            .is_err()
    );
    alice.close_traced(TraceId(0xb1)).await.unwrap();
    // bob's remote worker stops heartbeating: WARN lease.revoked, inside bob's span.
    let bob = h.rt.open_with(open(OWNERS[1], 0xa2)).await.unwrap();
    bob.allocate(8 * KIB).await.unwrap();
    bob.lease_remote().await.unwrap();
    // carol crashes (ERROR session.crashed), dave disconnects, erin expires.
    let carol = h.rt.open_with(open(OWNERS[2], 0xa3)).await.unwrap();
    carol.inject_panic().await;
    let dave = h.rt.open_with(open(OWNERS[3], 0xa4)).await.unwrap();
    drop(dave);
    let erin =
        h.rt.open_with(open(OWNERS[4], 0xa5).expiry(ExpiryPolicy {
            idle_timeout: None,
            ttl: Some(Duration::from_millis(30)),
        }))
        .await
        .unwrap();
    h.until_released(5).await;
    h.shutdown_at_baseline().await;

    let text = logs.text();
    assert!(!text.is_empty());
    for owner in OWNERS {
        let name = owner.split('@').next().unwrap();
        assert!(!text.contains(name), "{owner} appears in the logs");
    }
    assert!(
        !text.contains("198.51.100.23"),
        "the client IP appears in the logs"
    );

    // The pseudonyms are the audit trail's.
    let records = read_records(&dir);
    let opened = records
        .iter()
        .find(|r| r.action == action::SESSION_OPENED && r.resource == Some(alice.id().to_string()))
        .unwrap();
    let pseudonym = opened.owner.clone().unwrap();
    let computed = audit_config(&dir)
        .pseudonymizer()
        .unwrap()
        .owner(&Owner::new(OWNERS[0]));
    assert_eq!(
        pseudonym, computed,
        "a user's pseudonym can be computed with the key"
    );
    let lines = logs.lines();
    let started = event(&lines, "session.started", alice.id());
    assert_eq!(started["fields"]["owner"], pseudonym.as_str());
    assert_eq!(started["fields"]["trace_id"], TraceId(0xa1).to_string());
    let ended = event(&lines, "session.ended", alice.id());
    assert_eq!(ended["fields"]["owner"], pseudonym.as_str());
    assert_eq!(
        ended["fields"]["trace_id"],
        TraceId(0xb1).to_string(),
        "the close's trace"
    );
    assert_eq!(ended["fields"]["reason"], "closed");
    assert!(ended["fields"]["duration_us"].is_u64());
    let released = event(&lines, "session.released", alice.id());
    assert_eq!(released["fields"]["trace_id"], TraceId(0xb1).to_string());
    let reset = event(&lines, "session.context_reset", alice.id());
    assert_eq!(reset["fields"]["owner"], pseudonym.as_str());

    // Lines from inside a session's handlers carry its span: id, trace, owner pseudonym.
    let turn = lines
        .iter()
        .find(|l| l["fields"]["event"] == "session.turn")
        .expect("TRACE turn lines are captured");
    assert_eq!(turn["span"]["name"], "session");
    assert_eq!(turn["span"]["owner"], pseudonym.as_str());
    assert_eq!(turn["span"]["session_id"], alice.id().to_string());
    assert_eq!(turn["span"]["trace_id"], TraceId(0xa1).to_string());
    let revoked = lines
        .iter()
        .find(|l| l["fields"]["event"] == "lease.revoked")
        .expect("bob's lease was revoked");
    assert_eq!(revoked["level"], "WARN");
    assert_eq!(revoked["span"]["session_id"], bob.id().to_string());
    let crashed = event(&lines, "session.crashed", carol.id());
    assert_eq!(crashed["level"], "ERROR");
    let expired = event(&lines, "session.ended", erin.id());
    assert_eq!(expired["fields"]["reason"], "ttl_expired");
    std::fs::remove_dir_all(&dir).unwrap();
}
