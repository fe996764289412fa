//! Every end event says who asked for it (`ended_by`) and the trace of that
//! request (`end_trace_id`, also on the receipt); the client IP given at open
//! rides along in the start and end events. Ends nobody asked for have no caller.

use std::net::IpAddr;
use std::time::Duration;

use crate::common::*;
use sessionbus_actors::*;

#[test]
fn a_traced_close_by_the_owner_carries_the_owner_and_the_close_trace() {
    on_paused_time(|| async {
        let mut f = start(no_expiry()).await;
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let session = f
            .engine
            .open_with(OpenOptions::new("alice").client_ip(ip).trace_id(TraceId(1)))
            .await
            .unwrap();
        session.allocate(MIB).await.unwrap();
        let LifecycleEvent::Started(started) = f.next(EventKinds::STARTED).await else {
            unreachable!()
        };
        assert_eq!(started.client_ip.map(ClientIp::ip), Some(ip));
        let receipt = session.close_traced(TraceId(2)).await.unwrap();
        let end = f.next_end().await;
        assert_eq!(end.ended_by, Some(Caller::User(Owner::new("alice"))));
        assert_eq!(end.trace_id, TraceId(1), "the session's own trace stays");
        assert_eq!(end.end_trace_id, Some(TraceId(2)));
        assert_eq!(end.request_trace_id(), TraceId(2));
        assert_eq!(end.client_ip.map(ClientIp::ip), Some(ip));
        assert_eq!(receipt.trace_id, TraceId(2));
        assert_eq!(f.next_release().await.trace_id, TraceId(2));
        f.shutdown_clean().await;
    });
}

#[test]
fn an_operator_close_by_id_names_the_operator() {
    on_paused_time(|| async {
        let mut f = start(no_expiry()).await;
        let session = f.engine.open("bob").await.unwrap();
        let ops = Caller::Operator("ops".into());
        let receipt = f
            .engine
            .close_traced(session.id(), ops.clone(), TraceId(7))
            .await
            .unwrap();
        let end = f.next_end().await;
        assert_eq!(end.ended_by, Some(ops));
        assert_eq!(end.end_trace_id, Some(TraceId(7)));
        assert_eq!(receipt.trace_id, TraceId(7));
        f.shutdown_clean().await;
    });
}

#[test]
fn ends_nobody_asked_for_have_no_caller_and_the_session_trace() {
    on_paused_time(|| async {
        let mut f = start(no_expiry()).await;
        let session = f
            .engine
            .open_with(OpenOptions::new("carol").trace_id(TraceId(3)))
            .await
            .unwrap();
        drop(session);
        let end = f.next_end().await;
        assert_eq!(end.reason, EndReason::Disconnected);
        assert_eq!(end.ended_by, None);
        assert_eq!(end.end_trace_id, None);
        assert_eq!(f.next_release().await.trace_id, TraceId(3));

        // An expiry is asked for by the runtime's own operator, with no request trace.
        let expiring = OpenOptions::new("dave").expiry(policy(None, Some(Duration::from_secs(60))));
        let _dave = f.engine.open_with(expiring).await.unwrap();
        let end = f.next_end().await;
        assert_eq!(end.reason, EndReason::TtlExpired);
        assert!(matches!(end.ended_by, Some(Caller::Operator(_))));
        assert_eq!(end.end_trace_id, None);
        f.shutdown_clean().await;
    });
}
