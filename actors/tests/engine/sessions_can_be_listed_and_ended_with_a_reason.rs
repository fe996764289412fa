//! What layers outside the engine (the cluster layer) use: listing live
//! sessions by recent activity, and ending a session with a reason decided
//! elsewhere (`node_lost`).

use std::time::Duration;

use crate::common::{no_expiry, on_paused_time, start};
use sessionbus_actors::*;

#[test]
fn live_sessions_lists_the_established_ones_and_filters_by_activity() {
    on_paused_time(|| async {
        let mut f = start(no_expiry()).await;
        let quiet = f.engine.open("alice").await.unwrap();
        let busy = f.engine.open("alice").await.unwrap();
        let closed = f.engine.open("alice").await.unwrap();
        closed.close().await.unwrap();
        f.next_end().await;

        tokio::time::advance(Duration::from_secs(60)).await;
        busy.touch().await.unwrap();

        let mut all = f.engine.live_sessions(None).await.unwrap();
        all.sort();
        let mut expected = vec![quiet.id(), busy.id()];
        expected.sort();
        assert_eq!(all, expected, "ended sessions are not listed");
        let active = f
            .engine
            .live_sessions(Some(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(active, vec![busy.id()]);
    });
}

#[test]
fn end_with_a_reason_ends_once_and_keeps_the_first_reason() {
    on_paused_time(|| async {
        let mut f = start(no_expiry()).await;
        let session = f.engine.open("alice").await.unwrap();
        let id = session.id();
        let err = f
            .engine
            .end(id, Owner::new("mallory"), EndReason::NodeLost)
            .await
            .unwrap_err();
        assert!(matches!(err, SessionError::Unauthorized { .. }), "{err}");

        let operator = Caller::Operator("cluster".into());
        let receipt = f
            .engine
            .end(id, operator.clone(), EndReason::NodeLost)
            .await
            .unwrap();
        assert_eq!(receipt.reason, EndReason::NodeLost);
        let end = f.next_end().await;
        assert_eq!((end.id, end.reason), (id, EndReason::NodeLost));
        assert_eq!(EndReason::NodeLost.as_str(), "node_lost");
        assert!(EndReason::ALL.contains(&EndReason::NodeLost));

        // A second end, with any reason, returns the first end's receipt.
        let again = f.engine.end(id, operator, EndReason::Closed).await.unwrap();
        assert_eq!(again, receipt);
        let stats = f.engine.stats().await.unwrap();
        assert_eq!(stats.ended_by, vec![(EndReason::NodeLost, 1)]);
    });
}

#[test]
fn an_operator_end_as_evicted_ends_a_session_that_was_active_since_it_opened() {
    on_paused_time(|| async {
        let mut f = start(no_expiry()).await;
        let session = f.engine.open("alice").await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        session.touch().await.unwrap();
        // Not pressure's conditional eviction: nobody saw the session idle,
        // so its activity since does not make it refuse.
        let operator = Caller::Operator("ops".into());
        let receipt = tokio::time::timeout(
            Duration::from_secs(3_600),
            f.engine.end(session.id(), operator, EndReason::Evicted),
        )
        .await
        .expect("an operator's end answers")
        .unwrap();
        assert_eq!(receipt.reason, EndReason::Evicted);
        let end = f.next_end().await;
        assert_eq!((end.id, end.reason), (session.id(), EndReason::Evicted));
        assert_eq!(f.engine.stats().await.unwrap().pressure.refused, 0);
    });
}
