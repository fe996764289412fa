//! Issue 16 (1): events and receipts serialise (wall clock as RFC 3339,
//! durations as microseconds, ids and trace ids as their hex text, no
//! monotonic instants), and their `Debug` never shows the owner or the
//! client's address.

use std::net::IpAddr;

use crate::common::*;
use sessionbus_actors::*;

#[test]
fn events_serialise_with_wall_clock_and_durations_and_debug_hides_who() {
    on_paused_time(|| async {
        let mut f = start(no_expiry()).await;
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let trace: TraceId = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap();
        let session = f
            .engine
            .open_with(
                OpenOptions::new("alice@example.com")
                    .client_ip(ip)
                    .trace_id(trace),
            )
            .await
            .unwrap();
        session.allocate(MIB).await.unwrap();
        let started = f.next(EventKinds::STARTED).await;
        session.close().await.unwrap();
        let end = f.next_end().await;
        let receipt = f.next_release().await;

        let LifecycleEvent::Started(start) = &started else {
            unreachable!()
        };
        assert!(!format!("{start:?}").contains("192.0.2.7"), "{start:?}");
        let started = serde_json::to_value(&started).unwrap();
        assert_eq!(
            started["event"]["client_ip"], "192.0.2.7",
            "serialised on purpose"
        );
        assert_eq!(started["kind"], "started");
        assert_eq!(started["event"]["id"], session.id().to_string());
        assert_eq!(
            started["event"]["trace_id"],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let at = started["event"]["at"].as_str().unwrap();
        assert!(
            humantime::parse_rfc3339(at).is_ok(),
            "wall clock as RFC 3339: {at}"
        );

        let ended = serde_json::to_value(LifecycleEvent::Ended(end.clone())).unwrap();
        let event = &ended["event"];
        assert_eq!(ended["kind"], "ended");
        assert_eq!(event["reason"], "closed");
        assert_eq!(event["bytes"], MIB);
        assert!(event["drain"]["waited_us"].is_u64());
        assert!(
            event.get("ended_instant").is_none(),
            "no monotonic instants"
        );
        for field in ["created_at", "last_active_at", "ended_at"] {
            let text = event[field].as_str().unwrap();
            assert!(humantime::parse_rfc3339(text).is_ok(), "{field}: {text}");
        }
        assert_eq!(event["ended_by"]["user"], "alice@example.com");

        let released = serde_json::to_value(&*receipt).unwrap();
        assert_eq!(released["id"], session.id().to_string());
        assert_eq!(released["buffers"], 1);
        assert!(released["end_to_release_us"].is_u64());
        assert!(released["paced_for_us"].is_u64());
        assert!(released["steps"]["destroy_and_poll_us"].is_u64());
        assert!(
            released.get("released_at").is_none(),
            "no monotonic instants"
        );

        // Debug is for logs: the owner never shows.
        for shown in [
            format!("{end:?}"),
            format!("{receipt:?}"),
            format!("{session:?}"),
        ] {
            assert!(!shown.contains("alice"), "{shown}");
            assert!(!shown.contains("192.0.2.7"), "{shown}");
        }
        f.shutdown_clean().await;
    });
}
