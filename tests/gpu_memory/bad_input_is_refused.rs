//! Bad input gets a clear, typed error, and nothing is allocated, changed or leaked.

use sessionbus::config::Config;
use sessionbus::{
    AllocError, Caller, Event, OpenError, Owner, SessionError, SessionId, State, Turn,
};
use sessionbus_testkit::*;

fn allocation_error(err: SessionError) -> AllocError {
    match err {
        SessionError::Allocation { source, .. } => source,
        other => panic!("expected an allocation error, got: {other}"),
    }
}

#[tokio::test]
async fn zero_huge_and_over_budget_allocations_allocate_nothing() {
    let mut config = Config::default();
    config.sessions.max_session_memory = 2 * MIB;
    let h = start_with(config).await;
    let max = h.rt.pool_info().max_buffer_size;
    let session = h.rt.open("erin").await.unwrap();

    assert_eq!(
        allocation_error(session.allocate(0).await.unwrap_err()),
        AllocError::ZeroSize
    );
    let err = allocation_error(session.allocate(max + 1).await.unwrap_err());
    assert_eq!(
        err,
        AllocError::TooLarge {
            requested: max + 1,
            max
        }
    );
    assert!(err.to_string().contains("largest buffer"), "{err}");
    assert!(matches!(
        allocation_error(session.allocate(u64::MAX).await.unwrap_err()),
        AllocError::TooLarge { .. }
    ));
    session.allocate(MIB + MIB / 2).await.unwrap();
    let err = allocation_error(session.allocate(MIB).await.unwrap_err());
    assert!(
        matches!(err, AllocError::OverSessionBudget { budget, .. } if budget == 2 * MIB),
        "{err}"
    );

    assert_eq!(
        h.rt.gpu_counters()
            .expect("the runtime's own wgpu pool")
            .buffers
            - h.baseline.buffers,
        1,
        "only the one good allocation exists"
    );
    assert_eq!(session.info().await.unwrap().buffers, 1);
    session.close().await.unwrap();
    h.assert_gpu_at_baseline();
    h.shutdown_at_baseline().await;
}

#[tokio::test]
async fn unknown_ids_wrong_owners_and_late_messages_are_refused() {
    let h = start().await;
    let unknown = SessionId::random();
    assert_eq!(
        h.rt.close(unknown, Owner::new("x")).await.unwrap_err(),
        SessionError::Unknown { id: unknown }
    );
    assert_eq!(
        h.rt.attach(unknown, Owner::new("x")).await.unwrap_err(),
        SessionError::Unknown { id: unknown }
    );
    assert!("not-an-id".parse::<SessionId>().is_err());

    let session = h.rt.open("alice").await.unwrap();
    session.allocate(64 * KIB).await.unwrap();
    let err =
        h.rt.attach(session.id(), Owner::new("mallory"))
            .await
            .unwrap_err();
    assert!(matches!(err, SessionError::Unauthorized { .. }), "{err}");
    let err =
        h.rt.close(session.id(), Owner::new("mallory"))
            .await
            .unwrap_err();
    assert!(err.to_string().contains("mallory"), "{err}");
    let info = session.info().await.unwrap();
    assert_eq!(
        (info.state, info.buffers),
        (State::Established, 1),
        "a refused close changed nothing"
    );

    let receipt =
        h.rt.close(session.id(), Caller::Operator("oncall".into()))
            .await
            .unwrap();
    assert_eq!(receipt.buffers, 1);
    let late = session.chat(Turn::default()).await.unwrap_err();
    match &late {
        SessionError::NotEstablished { state, event, .. } => {
            assert_eq!((*state, *event), (State::Closed, Event::Message));
        }
        other => panic!("expected session gone, got {other}"),
    }
    assert!(
        late.to_string().contains("closed"),
        "the error names the state: {late}"
    );
    assert!(session.allocate(KIB).await.unwrap_err().is_gone());
    h.assert_gpu_at_baseline();
    h.shutdown_at_baseline().await;
}

#[tokio::test]
async fn sessions_past_the_limit_are_refused_with_the_limit_named() {
    let mut config = Config::default();
    config.sessions.max_sessions = 3;
    let h = start_with(config).await;
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(h.rt.open(format!("u{i}")).await.unwrap());
    }
    let err = h.rt.open("one-too-many").await.unwrap_err();
    assert_eq!(err, OpenError::AtCapacity { limit: 3 });
    assert!(err.to_string().contains("sessions.max_sessions"), "{err}");
    open.pop().unwrap().close().await.unwrap();
    h.rt.open("fits-again").await.unwrap();
    h.shutdown_at_baseline().await;
}
