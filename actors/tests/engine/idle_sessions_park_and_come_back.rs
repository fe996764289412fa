//! Passivation (`sessions.passivate_after`): a session idle past it gives up
//! its actor and mailbox and keeps its state; the next thing sent to it
//! (a message, an attach's request, a close, an expiry, an eviction, an
//! offload, a shutdown, a dropped last handle) starts it again from that
//! state, and it behaves exactly as if it had never parked. On paused time,
//! on the in-memory pool.

use std::time::Duration;

use crate::common::*;
use sessionbus_actors::*;

const SEC: Duration = Duration::from_secs(1);
const KIB: u64 = 1 << 10;

fn passivating(after: Duration) -> EngineConfig {
    let mut config = no_expiry();
    config.sessions.passivate_after = Some(after);
    config
}

#[test]
fn an_idle_session_parks_and_its_next_message_brings_it_back_as_it_was() {
    on_paused_time(|| async {
        let f = start(passivating(SEC)).await;
        let (session, buffer, data) = holding_bytes(&f, "alice").await;
        session.chat(Turn::new()).await.unwrap();
        let before = session.info().await.unwrap();
        settle(3 * SEC).await;
        assert_eq!(
            f.passivation().await,
            PassivationStats {
                parked: 1,
                parks: 1,
                revivals: 0
            },
            "idle past passivate_after: parked"
        );
        assert_eq!(session.state(), State::Established, "parked is still live");
        assert_eq!(f.stats().await.live, 1);

        // The next message starts it again, with its turns, version and memory.
        assert_eq!(session.read_buffer(buffer).await.unwrap(), data);
        let after = session.info().await.unwrap();
        assert_eq!(after.turns, before.turns);
        assert_eq!(after.buffers, before.buffers);
        assert_eq!(after.bytes, before.bytes);
        let ack = session.chat(Turn::new()).await.unwrap();
        assert_eq!(ack.turn, before.turns + 1, "the turn count goes on");
        let stats = f.passivation().await;
        assert_eq!((stats.parked, stats.revivals), (0, 1));

        // Idle again: parks again.
        settle(3 * SEC).await;
        assert_eq!(f.passivation().await.parks, 2);
        let receipt = session.close().await.unwrap();
        assert_eq!((receipt.buffers, receipt.bytes), (1, 4 * KIB));
        let stats = f.shutdown_clean().await;
        assert_eq!((stats.ended, stats.incidents), (1, 0));
        assert_eq!(stats.passivation.parked, 0);
    });
}

#[test]
fn messages_sent_to_a_parked_session_at_once_are_all_handled_in_order() {
    on_paused_time(|| async {
        let f = start(passivating(SEC)).await;
        let session = f.engine.open("bob").await.unwrap();
        settle(3 * SEC).await;
        assert_eq!(f.passivation().await.parked, 1);
        // Ten turns sent without waiting, from clones: each is handled once,
        // and the acks count 1..=10 in the order they were sent.
        let sends: Vec<_> = (0..10)
            .map(|_| {
                let session = session.clone();
                actix::spawn(async move { session.chat(Turn::new()).await.unwrap().turn })
            })
            .collect();
        let mut turns = Vec::new();
        for send in sends {
            turns.push(send.await.unwrap());
        }
        assert_eq!(turns, (1..=10).collect::<Vec<_>>());
        let stats = f.passivation().await;
        assert_eq!(
            (stats.parks, stats.revivals),
            (1, 1),
            "one revival for all ten"
        );
        drop(session);
        f.shutdown_clean().await;
    });
}

#[test]
fn a_parked_session_expires_on_its_deadline_exactly_once() {
    on_paused_time(|| async {
        let mut f = start(passivating(SEC)).await;
        let options = OpenOptions::new("carol").expiry(policy(Some(10 * SEC), None));
        let session = f.engine.open_with(options).await.unwrap();
        session.allocate(KIB).await.unwrap();
        let opened = tokio::time::Instant::now();
        settle(5 * SEC).await;
        assert_eq!(f.passivation().await.parked, 1);
        let end = f.next_end().await;
        assert_eq!(end.reason, EndReason::IdleTimeout);
        let deadline = end.deadline.expect("an expiry carries its deadline");
        assert_eq!(
            deadline.at,
            opened.into_std() + 10 * SEC,
            "due at its idle deadline"
        );
        assert_eq!(
            deadline.lateness(),
            Duration::ZERO,
            "and not late for being parked"
        );
        assert_eq!(f.next_release().await.buffers, 1);
        let stats = f.stats().await;
        assert_eq!((stats.ended, stats.live), (1, 0));
        assert_eq!(stats.passivation.parked, 0);
        drop(session);
        let stats = f.shutdown_clean().await;
        assert_eq!(stats.ended, 1, "exactly one end");
    });
}

#[test]
fn a_parked_session_is_attached_closed_by_id_and_closed_again_like_a_running_one() {
    on_paused_time(|| async {
        let f = start(passivating(SEC)).await;
        let (session, buffer, data) = holding_bytes(&f, "dave").await;
        let id = session.id();
        settle(3 * SEC).await;
        assert_eq!(f.passivation().await.parked, 1);

        // An operator attaches (no revival yet), then reads through its handle.
        let operator = f
            .engine
            .attach(id, Caller::Operator("support".into()))
            .await
            .unwrap();
        assert_eq!(
            f.passivation().await.parked,
            1,
            "an attach alone does not revive"
        );
        assert_eq!(operator.read_buffer(buffer).await.unwrap(), data);
        settle(3 * SEC).await;
        assert_eq!(f.passivation().await.parked, 1, "parked again");

        // Someone else's attach is refused, parked or not.
        let refused = f
            .engine
            .attach(id, Owner::new("mallory"))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, SessionError::Unauthorized { .. }),
            "{refused}"
        );

        let receipt = f.engine.close(id, Owner::new("dave")).await.unwrap();
        assert_eq!(receipt.reason, EndReason::Closed);
        assert_eq!(receipt.buffers, 1);
        assert_eq!(session.close().await.unwrap(), receipt, "the same receipt");
        assert!(matches!(
            operator.touch().await.unwrap_err(),
            SessionError::NotEstablished { .. }
        ));
        let stats = f.shutdown_clean().await;
        assert_eq!((stats.ended, stats.incidents), (1, 0));
    });
}

#[test]
fn dropping_the_last_handle_of_a_parked_session_is_a_disconnect() {
    on_paused_time(|| async {
        let mut f = start(passivating(SEC)).await;
        let (session, _, _) = holding_bytes(&f, "erin").await;
        let other = session.clone();
        settle(3 * SEC).await;
        assert_eq!(f.passivation().await.parked, 1);
        drop(session);
        settle(SEC).await;
        assert_eq!(f.stats().await.live, 1, "a clone is still alive");
        drop(other);
        let end = f.next_end().await;
        assert_eq!(end.reason, EndReason::Disconnected);
        assert_eq!(end.ended_by, None, "nobody asked: the client went away");
        assert_eq!(f.next_release().await.buffers, 1);
        f.shutdown_clean().await;
    });
}

#[test]
fn a_session_with_a_lease_or_an_allocation_waiting_never_parks() {
    on_paused_time(|| async {
        let mut config = passivating(SEC);
        config.sessions.max_session_memory = 8 * KIB;
        config.budget.device_memory = Some(8 * KIB);
        config.budget.when_exhausted = WhenExhausted::Wait;
        config.budget.wait_timeout = 60 * SEC;
        let f = start(config).await;
        let streaming = f.engine.open("frank").await.unwrap();
        let lease = streaming.lease().await.unwrap();
        // The lease holder's handle goes: the lease keeps it reachable.
        let id = streaming.id();
        drop(streaming);
        settle(10 * SEC).await;
        assert_eq!(
            f.passivation().await.parks,
            0,
            "a lease holder stays running"
        );
        assert_eq!(f.stats().await.live, 1);

        // An allocation waiting for room keeps its session running too.
        let holder = f.engine.open("grace").await.unwrap();
        holder.allocate(8 * KIB).await.unwrap();
        let waiter = f.engine.open("grace").await.unwrap();
        let waiting = {
            let waiter = waiter.clone();
            actix::spawn(async move { waiter.allocate(4 * KIB).await })
        };
        settle(10 * SEC).await;
        // The holder (idle) parked; the lease holder and the waiter did not.
        assert_eq!(f.passivation().await.parks, 1);
        holder.close().await.unwrap();
        assert!(
            waiting.await.unwrap().is_ok(),
            "room came: the waiter got it"
        );

        // Its lease was the last thing holding it: returning it is a disconnect.
        lease.release().await.unwrap();
        let end = f.engine.close(id, Owner::new("frank")).await.unwrap();
        assert_eq!(end.reason, EndReason::Disconnected);
        drop(waiter);
        f.shutdown_clean().await;
    });
}

#[test]
fn memory_pressure_offloads_or_evicts_a_parked_session_as_a_running_one() {
    on_paused_time(|| async {
        let mut config = passivating(SEC);
        config.sessions.max_session_memory = 8 * KIB;
        config.budget.device_memory = Some(8 * KIB);
        config.budget.when_exhausted = WhenExhausted::Evict;
        config.budget.evict_idle = SEC;
        config.budget.offload = true;
        let mut f = start(config).await;
        let (parked, buffer, data) = holding_bytes(&f, "heidi").await;
        let (evicted, _, _) = holding_bytes(&f, "ivan").await;
        settle(5 * SEC).await;
        assert_eq!(f.passivation().await.parked, 2);

        // Room for 8 KiB: the least recently active (heidi) is offloaded
        // first (host memory allows it), then ivan.
        let newcomer = f.engine.open("judy").await.unwrap();
        newcomer.allocate(8 * KIB).await.unwrap();
        let stats = f.stats().await;
        assert!(stats.pressure.offloaded >= 1, "{:?}", stats.pressure);
        assert_eq!(stats.incidents, 0);
        newcomer.close().await.unwrap();

        // The offloaded parked session's bytes come back, bit for bit.
        assert_eq!(parked.read_buffer(buffer).await.unwrap(), data);
        assert_eq!(evicted.state(), State::Established);
        drop((parked, evicted));
        while f.stats().await.live > 0 {
            f.next_end().await;
        }
        f.shutdown_clean().await;
    });
}

#[test]
fn a_parked_session_keeps_its_identity_its_client_address_and_its_lease_history() {
    on_paused_time(|| async {
        let mut f = start(passivating(SEC)).await;
        let ip: std::net::IpAddr = "192.0.2.9".parse().unwrap();
        let before_open = std::time::SystemTime::now();
        // Nothing but its identity (parked in the compact form) ...
        let bare = f
            .engine
            .open_with(OpenOptions::new("alice").trace_id(TraceId(5)))
            .await
            .unwrap();
        // ... one that also has a client address, one a released lease.
        let with_ip = f
            .engine
            .open_with(OpenOptions::new("bob").client_ip(ip).trace_id(TraceId(6)))
            .await
            .unwrap();
        let leased = f
            .engine
            .open_with(OpenOptions::new("carol").trace_id(TraceId(7)))
            .await
            .unwrap();
        let lease = leased.lease().await.unwrap();
        let lease_id = lease.id();
        lease.release().await.unwrap();
        let mut started = Vec::new();
        for _ in 0..3 {
            let LifecycleEvent::Started(event) = f.next(EventKinds::STARTED).await else {
                unreachable!()
            };
            started.push(event);
        }
        settle(3 * SEC).await;
        assert_eq!(f.passivation().await.parked, 3);

        // Back, the lease is still known as released (not "never granted").
        let again = leased.release_lease(lease_id).await.unwrap_err();
        assert!(
            matches!(
                again,
                SessionError::Lease {
                    source: LeaseError::AlreadyReleased { .. },
                    ..
                }
            ),
            "{again:?}"
        );
        bare.touch().await.unwrap();
        assert_eq!(f.passivation().await.revivals, 2);
        for (handle, trace, client_ip) in [
            (&bare, TraceId(5), None),
            (&with_ip, TraceId(6), Some(ip)),
            (&leased, TraceId(7), None),
        ] {
            handle.close().await.unwrap();
            let end = f.next_end().await;
            let start = started.iter().find(|s| s.id == handle.id()).unwrap();
            assert_eq!(end.id, handle.id());
            assert_eq!(end.owner, start.owner);
            assert_eq!(end.trace_id, trace);
            assert!(
                before_open <= end.created_at && end.created_at <= start.at,
                "opened when it was opened"
            );
            assert_eq!(end.client_ip.map(ClientIp::ip), client_ip);
        }
        f.shutdown_clean().await;
    });
}

#[test]
fn shutdown_ends_parked_sessions_and_releases_everything() {
    on_paused_time(|| async {
        let f = start(passivating(SEC)).await;
        let mut sessions = Vec::new();
        for i in 0..20 {
            sessions.push(holding_bytes(&f, &format!("user-{i}")).await.0);
        }
        settle(3 * SEC).await;
        assert_eq!(f.passivation().await.parked, 20);
        let stats = f.shutdown_clean().await;
        assert_eq!(stats.ended_by, vec![(EndReason::Shutdown, 20)]);
        assert_eq!((stats.released_buffers, stats.incidents), (20, 0));
        assert_eq!(stats.passivation.parked, 0);
        assert_eq!(stats.passivation.revivals, 20);
    });
}

#[test]
fn passivation_off_or_zero_and_sharded_engines() {
    // `"off"` is the default; zero is refused, naming the key.
    assert_eq!(EngineConfig::default().sessions.passivate_after, None);
    let mut zero = no_expiry();
    zero.sessions.passivate_after = Some(Duration::ZERO);
    let err = zero.sessions.validate().unwrap_err();
    assert_eq!(err.field, "sessions.passivate_after");

    on_paused_time(|| async {
        let mut config = sharded(3);
        config.sessions.passivate_after = Some(SEC);
        let f = start(config).await;
        let mut sessions = Vec::new();
        for i in 0..12 {
            sessions.push(holding_bytes(&f, &format!("u{i}")).await);
        }
        settle(3 * SEC).await;
        assert_eq!(
            f.passivation().await.parked,
            12,
            "every shard parks its own"
        );
        for (session, buffer, data) in &sessions {
            assert_eq!(session.read_buffer(*buffer).await.unwrap(), *data);
        }
        assert_eq!(f.passivation().await.revivals, 12);
        drop(sessions);
        let stats = f.shutdown_clean().await;
        assert_eq!(stats.incidents, 0);
    });
}
