//! The engine end to end on its in-memory pool: every way a session ends
//! produces exactly one end event and one release, and bad requests are refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sessionbus_actors::*;
use tokio::sync::mpsc;

const MIB: u64 = 1 << 20;

struct Fixture {
    engine: EngineHandle,
    pool: Arc<InMemoryPool>,
    events: mpsc::Receiver<LifecycleEvent>,
}

async fn start(config: EngineConfig) -> Fixture {
    let pool = Arc::new(InMemoryPool::new(64 * MIB, 16 * MIB));
    let engine = Engine::start(config, pool.clone()).expect("valid config");
    let events = engine
        .subscribe_channel(EventKinds::ALL, Delivery::Reliable)
        .await
        .unwrap();
    Fixture {
        engine,
        pool,
        events,
    }
}

impl Fixture {
    /// Collects events until `n` sessions have been released.
    async fn until_released(&mut self, n: usize) -> Vec<LifecycleEvent> {
        let mut seen = Vec::new();
        let mut released = 0;
        while released < n {
            let event = tokio::time::timeout(Duration::from_secs(10), self.events.recv())
                .await
                .expect("events keep coming")
                .expect("bus open");
            released += matches!(event, LifecycleEvent::Released(_)) as usize;
            seen.push(event);
        }
        seen
    }
}

fn ends_by_session(events: &[LifecycleEvent]) -> HashMap<SessionId, Vec<EndReason>> {
    let mut ends: HashMap<SessionId, Vec<EndReason>> = HashMap::new();
    for event in events {
        if let LifecycleEvent::Ended(end) = event {
            ends.entry(end.id).or_default().push(end.reason);
        }
    }
    ends
}

#[actix::test]
async fn close_releases_everything_once_and_a_second_close_gets_the_same_receipt() {
    let mut f = start(EngineConfig::default()).await;
    let session = f.engine.open("alice").await.unwrap();
    session.chat(Turn::default()).await.unwrap();
    session.allocate(MIB).await.unwrap();
    session.allocate(2 * MIB).await.unwrap();
    assert_eq!(f.pool.stats().live_buffers, 2);

    let receipt = session.close().await.unwrap();
    assert_eq!(
        (receipt.buffers, receipt.bytes, receipt.reason),
        (2, 3 * MIB, EndReason::Closed)
    );
    assert_eq!(f.pool.stats().live_buffers, 0);
    assert_eq!(session.state(), State::Closed);

    let again = session.close().await.unwrap();
    assert_eq!(again, receipt);
    let by_id = f
        .engine
        .close(session.id(), Owner::new("alice"))
        .await
        .unwrap();
    assert_eq!(by_id, receipt);
    assert_eq!(f.pool.stats().released_total, 2, "nothing released twice");

    let events = f.until_released(1).await;
    assert_eq!(
        ends_by_session(&events)[&session.id()],
        vec![EndReason::Closed]
    );
}

#[actix::test]
async fn dropping_the_last_handle_is_a_disconnect() {
    let mut f = start(EngineConfig::default()).await;
    let session = f.engine.open("bob").await.unwrap();
    let id = session.id();
    let clone = session.clone();
    session.allocate(MIB).await.unwrap();
    drop(session);
    clone
        .touch()
        .await
        .expect("a clone keeps the session alive");
    drop(clone);

    let events = f.until_released(1).await;
    assert_eq!(ends_by_session(&events)[&id], vec![EndReason::Disconnected]);
    assert_eq!(f.pool.stats().live_buffers, 0);
}

#[actix::test]
async fn a_panicking_handler_still_ends_the_session_once_and_releases_it() {
    let mut f = start(EngineConfig::default()).await;
    let session = f.engine.open("carol").await.unwrap();
    session.allocate(MIB).await.unwrap();
    session.allocate(MIB).await.unwrap();
    session.inject_panic().await;

    let events = f.until_released(1).await;
    assert_eq!(
        ends_by_session(&events)[&session.id()],
        vec![EndReason::Crashed]
    );
    assert_eq!(f.pool.stats().live_buffers, 0);
    let late = session.chat(Turn::default()).await.unwrap_err();
    assert!(late.is_gone(), "{late}");
    let receipt = session.close().await.unwrap();
    assert_eq!((receipt.reason, receipt.buffers), (EndReason::Crashed, 2));
    assert_eq!(
        f.engine.stats().await.unwrap().incidents,
        1,
        "a crash is an incident"
    );
}

#[actix::test]
async fn shutdown_ends_every_session_and_releases_all_memory() {
    let mut f = start(EngineConfig::default()).await;
    let mut handles = Vec::new();
    for i in 0..50 {
        let session = f.engine.open(format!("user-{i}")).await.unwrap();
        session.allocate(MIB / 4).await.unwrap();
        handles.push(session);
    }
    let report = f.engine.shutdown().await.unwrap();
    assert_eq!(report.sessions_ended, 50);
    assert_eq!(report.buffers_released, 50);
    assert_eq!(f.pool.stats().live_buffers, 0);
    assert!(matches!(
        f.engine.open("late").await,
        Err(OpenError::ShuttingDown)
    ));

    let events = f.until_released(50).await;
    let ends = ends_by_session(&events);
    assert_eq!(ends.len(), 50);
    assert!(ends.values().all(|r| r == &vec![EndReason::Shutdown]));
    drop(handles); // dropping after the end is not a second end
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(f.engine.stats().await.unwrap().ended, 50);
}

#[actix::test]
async fn only_the_owner_or_an_operator_may_act() {
    let f = start(EngineConfig::default()).await;
    let session = f.engine.open("alice").await.unwrap();
    let id = session.id();
    let err = f
        .engine
        .attach(id, Owner::new("mallory"))
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::Unauthorized { .. }), "{err}");
    let err = f.engine.close(id, Owner::new("mallory")).await.unwrap_err();
    assert!(matches!(err, SessionError::Unauthorized { .. }), "{err}");
    assert_eq!(
        session.info().await.unwrap().state,
        State::Established,
        "nothing changed"
    );

    let operator = f
        .engine
        .attach(id, Caller::Operator("ops".into()))
        .await
        .unwrap();
    operator.close().await.unwrap();
    let err = f.engine.close(id, Owner::new("mallory")).await.unwrap_err();
    assert!(
        matches!(err, SessionError::Unauthorized { .. }),
        "an ended session still checks its owner: {err}"
    );
}

#[actix::test]
async fn unknown_ids_and_ended_sessions_get_clear_errors() {
    let f = start(EngineConfig::default()).await;
    let unknown = SessionId::random();
    let err = f.engine.close(unknown, Owner::new("x")).await.unwrap_err();
    assert_eq!(err, SessionError::Unknown { id: unknown });
    assert!(f.engine.attach(unknown, Owner::new("x")).await.is_err());

    let session = f.engine.open("dave").await.unwrap();
    session.close().await.unwrap();
    let err = session.chat(Turn::default()).await.unwrap_err();
    assert!(err.is_gone());
    assert!(err.to_string().contains("closed"), "{err}");
    let err = session.allocate(MIB).await.unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::NotEstablished {
                event: Event::Allocate,
                ..
            }
        ),
        "{err}"
    );
    let err = f
        .engine
        .attach(session.id(), Owner::new("dave"))
        .await
        .unwrap_err();
    assert!(err.is_gone(), "{err}");
}

#[actix::test]
async fn bad_allocations_are_refused_and_nothing_is_allocated() {
    let config = EngineConfig {
        sessions: SessionsConfig {
            max_session_memory: 4 * MIB,
            ..Default::default()
        },
        ..Default::default()
    };
    let f = start(config).await;
    let session = f.engine.open("erin").await.unwrap();
    let refused = |e: SessionError| match e {
        SessionError::Allocation { source, .. } => source,
        other => panic!("expected an allocation error, got {other}"),
    };
    assert_eq!(
        refused(session.allocate(0).await.unwrap_err()),
        AllocError::ZeroSize
    );
    assert!(
        matches!(refused(session.allocate(17 * MIB).await.unwrap_err()), AllocError::TooLarge { max, .. } if max == 16 * MIB)
    );
    session.allocate(3 * MIB).await.unwrap();
    assert!(
        matches!(refused(session.allocate(2 * MIB).await.unwrap_err()), AllocError::OverSessionBudget { used, .. } if used == 3 * MIB)
    );
    assert_eq!(f.pool.stats().live_buffers, 1);
    assert_eq!(session.info().await.unwrap().bytes, 3 * MIB);
}

#[actix::test]
async fn a_gpu_out_of_memory_is_an_error_not_a_leak() {
    let f = start(EngineConfig::default()).await;
    let a = f.engine.open("a").await.unwrap();
    for _ in 0..4 {
        a.allocate(16 * MIB).await.unwrap();
    }
    let b = f.engine.open("b").await.unwrap();
    let err = b.allocate(MIB).await.unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Allocation {
                source: AllocError::Gpu(GpuError::OutOfMemory { .. }),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(b.info().await.unwrap().bytes, 0);
    a.close().await.unwrap();
    b.allocate(MIB).await.unwrap();
}

#[actix::test]
async fn sessions_past_the_limit_are_refused() {
    let config = EngineConfig {
        sessions: SessionsConfig {
            max_sessions: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let f = start(config).await;
    let _a = f.engine.open("a").await.unwrap();
    let b = f.engine.open("b").await.unwrap();
    assert_eq!(
        f.engine.open("c").await.unwrap_err(),
        OpenError::AtCapacity { limit: 2 }
    );
    b.close().await.unwrap();
    f.engine.open("c").await.expect("room again after a close");
}

#[actix::test]
async fn a_slow_best_effort_subscriber_does_not_stall_ends() {
    let config = EngineConfig {
        bus: BusConfig {
            subscriber_capacity: 4,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut f = start(config).await;
    // Never read: its queue fills after four events.
    let _stalled = f
        .engine
        .subscribe_channel(EventKinds::ALL, Delivery::BestEffort)
        .await
        .unwrap();
    for i in 0..20 {
        let session = f.engine.open(format!("u{i}")).await.unwrap();
        session.allocate(MIB / 8).await.unwrap();
        session.close().await.unwrap();
    }
    let stats = f.engine.stats().await.unwrap();
    assert_eq!(stats.released, 20);
    assert!(
        stats.bus_dropped > 0,
        "the stalled subscriber lost events instead of stalling the registry"
    );
    let events = f.until_released(20).await;
    assert_eq!(
        ends_by_session(&events).len(),
        20,
        "the reliable subscriber got every end"
    );
}

#[actix::test]
async fn invalid_configuration_names_the_field() {
    let pool = Arc::new(InMemoryPool::new(MIB, MIB));
    let config = EngineConfig {
        release: ReleaseConfig::fixed(PaceUnit::Buffers, 100, 0, 4),
        ..Default::default()
    };
    let err = Engine::start(config, pool).unwrap_err();
    assert_eq!(err.field, "release.tiers[0].burst");
    assert!(err.to_string().contains("release.tiers[0].burst"), "{err}");
}

#[actix::test]
async fn a_reliable_subscriber_that_falls_behind_still_gets_every_event_in_order() {
    let config = EngineConfig {
        bus: BusConfig {
            subscriber_capacity: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    // Only this test's own slow subscriber: no fixture subscriber to fill up.
    let pool = Arc::new(InMemoryPool::new(64 * MIB, 16 * MIB));
    let engine = Engine::start(config, pool).expect("valid config");
    // Not read until the very end: its queue holds 2, the rest waits in the bus backlog.
    let mut slow = engine
        .subscribe_channel(EventKinds::ALL, Delivery::Reliable)
        .await
        .unwrap();
    let mut expected = Vec::new();
    for i in 0..10 {
        let session = engine.open(format!("u{i}")).await.unwrap();
        session.allocate(MIB / 8).await.unwrap();
        session.close().await.unwrap();
        expected.push(session.id());
    }
    assert!(
        engine.stats().await.unwrap().bus_backlog > 0,
        "events are waiting in the backlog"
    );
    engine.shutdown().await.unwrap();
    let reader = async {
        let mut got = Vec::new();
        while got.len() < 30 {
            let event = slow.recv().await.expect("bus open");
            got.push((event.kind(), event.session_id()));
        }
        got
    };
    // The reader and the flush run together: the backlog drains as the reader takes events.
    let (got, undelivered) = futures::join!(reader, async {
        engine.flush_bus(Duration::from_secs(10)).await.unwrap()
    });
    assert_eq!(undelivered, 0, "everything was delivered");
    let started: Vec<_> = got
        .iter()
        .filter(|(k, _)| *k == EventKinds::STARTED)
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(started, expected, "in publish order");
    for id in &expected {
        let kinds: Vec<_> = got
            .iter()
            .filter(|(_, i)| i == id)
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(
            kinds,
            vec![EventKinds::STARTED, EventKinds::ENDED, EventKinds::RELEASED]
        );
    }
}

#[actix::test]
async fn unsubscribing_application_subscribers_never_stops_release() {
    let f = start(EngineConfig::default()).await;
    let mut ids = Vec::new();
    // Subscribers that go away are removed; release is unaffected.
    for _ in 0..3 {
        let sub = f
            .engine
            .subscribe_channel(EventKinds::ALL, Delivery::Reliable)
            .await
            .unwrap();
        drop(sub);
    }
    // Subscription ids are opaque: an application can only remove its own.
    struct Sink;
    impl actix::Actor for Sink {
        type Context = actix::Context<Self>;
    }
    impl actix::Handler<LifecycleEvent> for Sink {
        type Result = ();
        fn handle(&mut self, _: LifecycleEvent, _: &mut Self::Context) {}
    }
    use actix::Actor;
    let sink = Sink.start();
    ids.push(
        f.engine
            .subscribe(sink.recipient(), EventKinds::ALL, Delivery::BestEffort)
            .await
            .unwrap(),
    );
    assert_eq!(f.engine.unsubscribe(ids[0]).await, Ok(true));
    assert_eq!(
        f.engine.unsubscribe(ids[0]).await,
        Ok(false),
        "already gone"
    );
    let session = f.engine.open("x").await.unwrap();
    session.allocate(MIB).await.unwrap();
    assert_eq!(
        session.close().await.unwrap().buffers,
        1,
        "release still works"
    );
}

#[actix::test]
async fn a_refused_request_changes_nothing_and_each_accepted_event_bumps_the_version_once() {
    let pool = Arc::new(InMemoryPool::new(2 * MIB, 16 * MIB));
    let engine = Engine::start(EngineConfig::default(), pool.clone()).unwrap();
    let mut events = engine
        .subscribe_channel(EventKinds::ENDED, Delivery::Reliable)
        .await
        .unwrap();
    let session = engine.open("v").await.unwrap();
    let v0 = session.info().await.unwrap().version;
    // Passes the session's checks, refused by the GPU: no activity recorded.
    assert!(session.allocate(4 * MIB).await.is_err());
    assert!(session.allocate(0).await.is_err());
    let stranger = Caller::User(Owner::new("mallory"));
    assert!(engine.close(session.id(), stranger).await.is_err());
    assert_eq!(session.info().await.unwrap().version, v0);
    let ack = session.chat(Turn::default()).await.unwrap();
    assert_eq!(ack.version, v0 + 1);
    session.allocate(MIB).await.unwrap();
    assert_eq!(session.info().await.unwrap().version, v0 + 2);
    session.close().await.unwrap();
    let Some(LifecycleEvent::Ended(end)) = events.recv().await else {
        panic!("an end")
    };
    assert_eq!(end.version, v0 + 3, "the end is one more accepted event");

    // A disconnect's end carries the same rule.
    let other = engine.open("w").await.unwrap();
    other.touch().await.unwrap();
    let v = other.info().await.unwrap().version;
    drop(other);
    let Some(LifecycleEvent::Ended(end)) = events.recv().await else {
        panic!("an end")
    };
    assert_eq!((end.reason, end.version), (EndReason::Disconnected, v + 1));
}
