//! The audit trail on a real runtime: one record per lifecycle and release
//! action, with its fields, pseudonyms instead of identities, the request's
//! trace id, and a chain that verifies. wgpu's counters end at baseline.

use std::net::IpAddr;
use std::time::Duration;

use sessionbus::audit::*;
use sessionbus::*;
use sessionbus_testkit::audit::*;
use sessionbus_testkit::*;

fn trace(n: u128) -> TraceId {
    TraceId(n)
}

fn of(records: &[AuditRecord], session: SessionId) -> Vec<&AuditRecord> {
    let id = session.to_string();
    records
        .iter()
        .filter(|r| r.resource.as_deref() == Some(id.as_str()))
        .collect()
}

#[tokio::test]
async fn every_action_is_recorded_with_its_fields_and_the_chain_verifies() {
    let dir = scratch_dir("audit-actions");
    let mut h = start_with(config_with_audit(&dir)).await;
    let ip: IpAddr = "203.0.113.7".parse().unwrap();

    // alice: opened with a client IP and a trace, a context reset, closed with its own trace.
    let alice =
        h.rt.open_with(
            OpenOptions::new("alice@example.com")
                .client_ip(ip)
                .trace_id(trace(0xa1)),
        )
        .await
        .unwrap();
    alice.allocate_for_context(64 * KIB).await.unwrap();
    alice
        .chat(Turn::new().embedding(vec![1.0, 0.0, 0.0]))
        .await
        .unwrap();
    let ack = alice
        .chat(
            Turn::new()
                .embedding(vec![0.0, 1.0, 0.0])
                .trace_id(trace(0xc2)),
        )
        .await
        .unwrap();
    assert!(
        ack.context.is_stale(),
        "an orthogonal turn resets the context"
    );
    // The reset is published once its memory is back; wait for it, so the
    // close below comes after it in the trail too.
    loop {
        let event = h.events.recv().await.expect("bus open");
        if matches!(event, LifecycleEvent::ContextReset(_)) {
            break;
        }
    }
    alice.allocate(32 * KIB).await.unwrap();
    let receipt = alice.close_traced(trace(0xb1)).await.unwrap();
    assert_eq!(receipt.trace_id, trace(0xb1));

    // bob: closed by an operator, by id.
    let bob = h.rt.open("bob@example.com").await.unwrap();
    bob.allocate(16 * KIB).await.unwrap();
    h.rt.close(bob.id(), Caller::Operator("ops-carol".into()))
        .await
        .unwrap();

    // dave: expires (TTL); erin: disconnects; frank: ended by shutdown.
    let dave =
        h.rt.open_with(OpenOptions::new("dave@example.com").expiry(ExpiryPolicy {
            idle_timeout: None,
            ttl: Some(Duration::from_millis(50)),
        }))
        .await
        .unwrap();
    dave.allocate(8 * KIB).await.unwrap();
    let erin = h.rt.open("erin@example.com").await.unwrap();
    erin.allocate(8 * KIB).await.unwrap();
    let erin_id = erin.id();
    drop(erin);
    let frank = h.rt.open("frank@example.com").await.unwrap();
    frank.allocate(8 * KIB).await.unwrap();
    h.until_released(4).await;

    let report = h.shutdown_at_baseline().await;
    let audit = report.audit.expect("the trail ran");
    assert_eq!(audit.write_failures, 0);
    let records = read_records(&dir);
    assert_eq!(audit.records_written, records.len() as u64);

    // The chain verifies and ends in order.
    let verified = verify_dir(&dir, &test_key()).expect("an untouched trail verifies");
    assert_eq!(verified.records, records.len() as u64);
    assert!(verified.ends_with_shutdown);
    assert_eq!(records.first().unwrap().action, action::RUNTIME_STARTED);
    assert_eq!(records.last().unwrap().action, action::RUNTIME_SHUTDOWN);
    let last = records.last().unwrap().reason.as_deref();
    assert_eq!(last, Some("shutdown"), "stopped in order");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64);
        assert!(
            r.ts.ends_with('Z') && r.ts.len() == 27,
            "RFC 3339 UTC: {}",
            r.ts
        );
    }

    // alice: opened → context reset → closed → released, with traces and pseudonyms.
    let a = of(&records, alice.id());
    let actions: Vec<_> = a.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            action::SESSION_OPENED,
            action::CONTEXT_RESET,
            action::SESSION_CLOSED,
            action::RESOURCES_RELEASED
        ]
    );
    let owner = a[0].owner.clone().unwrap();
    assert!(owner.starts_with("p:") && owner.len() == 34, "{owner}");
    let ip_pseudonym = a[0].client_ip.clone().expect("the client IP is recorded");
    assert!(ip_pseudonym.starts_with("p:") && ip_pseudonym != owner);
    for r in &a {
        assert_eq!(r.owner.as_deref(), Some(owner.as_str()), "{}", r.action);
        assert_eq!(
            r.client_ip.as_deref(),
            Some(ip_pseudonym.as_str()),
            "{}",
            r.action
        );
    }
    assert_eq!(
        a[0].operator.as_deref(),
        Some(owner.as_str()),
        "the owner opened it"
    );
    assert_eq!(a[0].trace_id, Some(trace(0xa1).to_string()));
    assert_eq!(
        a[1].trace_id,
        Some(trace(0xc2).to_string()),
        "the turn's trace"
    );
    assert_eq!(a[1].reason.as_deref(), Some("low_similarity"));
    assert_eq!(a[1].bytes, Some(64 * KIB));
    assert_eq!(
        a[2].operator.as_deref(),
        Some(owner.as_str()),
        "the owner closed it"
    );
    assert_eq!(
        a[2].trace_id,
        Some(trace(0xb1).to_string()),
        "the close's trace"
    );
    assert_eq!(a[2].reason.as_deref(), Some("closed"));
    assert_eq!(a[2].bytes, Some(32 * KIB));
    assert_eq!(a[3].trace_id, Some(trace(0xb1).to_string()));
    assert_eq!(a[3].bytes, Some(32 * KIB));

    // bob: closed by an operator, who is not the owner.
    let b = of(&records, bob.id());
    assert_eq!(b[1].action, action::SESSION_CLOSED);
    assert!(b[1].operator.is_some() && b[1].operator != b[1].owner);
    assert_eq!(b[0].client_ip, None, "no IP given, none recorded");

    // dave expired, erin disconnected (nobody asked), frank ended by shutdown.
    let d = of(&records, dave.id());
    assert_eq!(d[1].action, action::SESSION_EXPIRED);
    assert_eq!(d[1].reason.as_deref(), Some("ttl_expired"));
    let e = of(&records, erin_id);
    assert_eq!(e[1].action, action::SESSION_ENDED);
    assert_eq!(e[1].reason.as_deref(), Some("disconnected"));
    assert_eq!(e[1].operator, None);
    let f = of(&records, frank.id());
    assert_eq!(f[1].action, action::SESSION_SHUTDOWN);
    assert_eq!(f[2].action, action::RESOURCES_RELEASED);
    assert_eq!(f[2].bytes, Some(8 * KIB));

    // No identity in clear anywhere in the file.
    let text = trail_text(&dir);
    for secret in [
        "alice",
        "bob@",
        "dave@",
        "erin@",
        "frank@",
        "203.0.113.7",
        "ops-carol",
    ] {
        assert!(!text.contains(secret), "{secret} appears in the trail");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_restarted_runtime_continues_the_chain() {
    let dir = scratch_dir("audit-restart");
    for owner in ["first@example.com", "second@example.com"] {
        let h = start_with(config_with_audit(&dir)).await;
        let session = h.rt.open(owner).await.unwrap();
        session.close().await.unwrap();
        h.shutdown_at_baseline().await;
    }
    assert_eq!(trail_files(&dir).len(), 2, "one file per start");
    let report = verify_dir(&dir, &test_key()).expect("the chain spans both runs");
    assert_eq!(report.first_seq, Some(0));
    assert_eq!(report.records, read_records(&dir).len() as u64);
    std::fs::remove_dir_all(&dir).unwrap();
}
