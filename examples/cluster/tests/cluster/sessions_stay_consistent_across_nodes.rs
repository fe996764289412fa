//! Several nodes (each a `Runtime` with its own wgpu device on a real adapter,
//! plus a `ClusterNode`) against one real `redis-server` started by the test.
//! Each test proves one behaviour of the cluster layer; wgpu's own counters
//! are checked on every node at the end.

use std::collections::HashSet;

use sessionbus_testkit::cluster::{Node, eventually, next_invalidation};
use sessionbus_testkit::redis_server::RedisServer;
use std::time::Duration;

use sessionbus::cluster::{
    ClusterConfig, ClusterError, ClusterHealth, ClusterNode, Directory, EntryState,
};
use sessionbus::config::Config;
use sessionbus::{EndReason, Owner, SessionError, SessionId, Turn};
use sessionbus_testkit::{KIB, ends_by_session};

fn cluster_config(redis: &RedisServer, node: &str) -> ClusterConfig {
    sessionbus_testkit::cluster::config(&redis.url(), node)
}

async fn start_node(redis: &RedisServer, name: &str) -> Node {
    sessionbus_testkit::cluster::start_node(&redis.url(), name).await
}

fn alice() -> Owner {
    Owner::new("alice")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_sent_to_a_non_owner_is_forwarded_and_the_other_node_drops_its_route() {
    let redis = RedisServer::start();
    let mut a = start_node(&redis, "a").await;
    let b = start_node(&redis, "b").await;

    let session = a.node.open(alice()).await.unwrap();
    session.allocate(64 * KIB).await.unwrap();
    let id = session.id();
    assert!(a.node.owns(id));
    assert_eq!(b.node.owner_of(id).await.unwrap().as_deref(), Some("a"));
    assert!(b.node.holds(id), "b cached the route");
    let mut b_heard = b.node.invalidations();

    // Someone else may not close it, through any node: the owner's answer, unchanged.
    let refused = b.node.close(id, Owner::new("mallory")).await.unwrap_err();
    assert!(
        matches!(
            refused,
            ClusterError::Session(SessionError::Unauthorized { .. })
        ),
        "{refused}"
    );

    let receipt = b.node.close(id, alice()).await.unwrap();
    assert_eq!(
        (receipt.id, receipt.reason, receipt.buffers),
        (id, EndReason::Closed, 1)
    );
    assert_eq!(receipt.bytes, 64 * KIB);

    let heard = next_invalidation(&mut b_heard).await;
    assert_eq!(
        (heard.id, heard.reason, heard.by.as_str()),
        (id, EndReason::Closed, "a")
    );
    assert!(!b.node.holds(id), "b dropped its route");
    assert!(!a.node.holds(id));

    let entry = a.node.directory().entry(id).await.unwrap().unwrap();
    assert_eq!(
        (entry.state, entry.reason, entry.version),
        (EntryState::Ended, Some(EndReason::Closed), 2)
    );

    // A second close through the non-owner gets the first close's receipt, as locally.
    let again = b.node.close(id, alice()).await.unwrap();
    assert_eq!((again.buffers, again.bytes), (1, 64 * KIB));
    // A late message through the non-owner: "session gone", as locally.
    let late = b.node.chat(id, alice(), Turn::new()).await.unwrap_err();
    assert!(late.is_gone(), "{late}");

    let events = a.h.until_released(1).await;
    assert_eq!(ends_by_session(&events)[&id], vec![EndReason::Closed]);
    a.h.assert_gpu_at_baseline();
    drop(session);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_leases_are_forwarded_to_the_owner_with_local_results() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "a").await;
    let b = start_node(&redis, "b").await;
    let session = a.node.open(alice()).await.unwrap();
    let id = session.id();

    let ack = b.node.chat(id, alice(), Turn::new()).await.unwrap();
    assert_eq!(ack.turn, 1);
    b.node.touch(id, alice()).await.unwrap();
    let grant = b.node.lease_remote(id, alice()).await.unwrap();
    assert!(grant.heartbeat_interval > Duration::ZERO);
    b.node.heartbeat_lease(id, alice(), grant.id).await.unwrap();
    assert_eq!(
        session.info().await.unwrap().turns,
        1,
        "the turn ran on the owner"
    );
    b.node.release_lease(id, alice(), grant.id).await.unwrap();
    assert!(
        b.node.release_lease(id, alice(), grant.id).await.is_err(),
        "released twice"
    );

    // A session no node knows: the same "unknown" a local engine gives.
    let unknown = SessionId::random();
    let err = b.node.close(unknown, alice()).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::Session(SessionError::Unknown { .. })),
        "{err}"
    );

    assert!(b.node.stats().forwarded >= 5 && a.node.stats().served >= 5);
    drop(session);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_every_other_node_drops_a_session_ended_on_its_owner() {
    let redis = RedisServer::start();
    let mut a = start_node(&redis, "a").await;
    let b = start_node(&redis, "b").await;
    let c = start_node(&redis, "c").await;
    let session = a.node.open(alice()).await.unwrap();
    session.allocate(16 * KIB).await.unwrap();
    let id = session.id();
    for other in [&b, &c] {
        assert_eq!(other.node.owner_of(id).await.unwrap().as_deref(), Some("a"));
        assert!(other.node.holds(id));
    }
    let (mut b_heard, mut c_heard) = (b.node.invalidations(), c.node.invalidations());

    session.close().await.unwrap();

    for (other, heard) in [(&b, &mut b_heard), (&c, &mut c_heard)] {
        let heard = next_invalidation(heard).await;
        assert_eq!((heard.id, heard.version), (id, 2));
        assert!(!other.node.holds(id));
    }
    a.h.until_released(1).await;
    a.h.assert_gpu_at_baseline();
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_version_is_refused_and_changes_nothing() {
    let redis = RedisServer::start();
    let config = cluster_config(&redis, "writer");
    let directory = Directory::connect(&config).await.unwrap();
    let stamp = directory.join("writer").await.unwrap().stamp;
    let id = SessionId::random();
    assert_eq!(directory.register(&stamp, id, "alice", 5).await.unwrap(), 5);

    let err = directory
        .register(&stamp, id, "alice", 3)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClusterError::StaleVersion {
                expected: 3,
                current: 5,
                ..
            }
        ),
        "{err}"
    );
    let err = directory
        .end(&stamp, id, 4, EndReason::Closed, "unsigned")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClusterError::StaleVersion {
                expected: 4,
                current: 5,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("expected version 4"), "{err}");
    let entry = directory.entry(id).await.unwrap().unwrap();
    assert_eq!(
        (entry.state, entry.version),
        (EntryState::Live, 5),
        "nothing written"
    );

    // Another node may not write it at all.
    let other = directory.join("other").await.unwrap().stamp;
    let err = directory
        .end(&other, id, 5, EndReason::Closed, "unsigned")
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::NotOwner { .. }), "{err}");

    assert_eq!(
        directory
            .end(&stamp, id, 5, EndReason::Closed, "unsigned")
            .await
            .unwrap(),
        6
    );
    let err = directory
        .end(&stamp, id, 6, EndReason::Closed, "unsigned")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::Ended { version: 6, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_cluster_layer_dies_has_its_sessions_ended_as_node_lost_by_a_survivor() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "a").await;
    let mut b = start_node(&redis, "b").await;
    let a_stamp = a.node.stamp().clone();

    let mut lost = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..3 {
        let s = a.node.open(alice()).await.unwrap();
        s.allocate(32 * KIB).await.unwrap();
        lost.push(s.id());
        handles.push(s);
    }
    let mine = b.node.open(alice()).await.unwrap();
    mine.allocate(32 * KIB).await.unwrap();
    for id in &lost {
        assert_eq!(b.node.owner_of(*id).await.unwrap().as_deref(), Some("a"));
    }
    let grant = b.node.lease_remote(lost[0], alice()).await.unwrap();
    assert!(b.node.holds(lost[0]));
    let mut b_heard = b.node.invalidations();

    // A crash of a's cluster layer: its heartbeat stops, it says no goodbye.
    let Node {
        h: a_h,
        node: a_node,
    } = a;
    a_node.inject_kill();

    let mut ended = HashSet::new();
    while ended.len() < lost.len() {
        let heard = next_invalidation(&mut b_heard).await;
        assert_eq!(
            (heard.reason, heard.node.as_str(), heard.by.as_str()),
            (EndReason::NodeLost, "a", "b")
        );
        ended.insert(heard.id);
    }
    assert_eq!(ended, lost.iter().copied().collect());
    for id in &lost {
        assert!(!b.node.holds(*id), "b dropped route and lease of {id}");
        let entry = b.node.directory().entry(*id).await.unwrap().unwrap();
        assert_eq!(
            (entry.state, entry.reason),
            (EntryState::Ended, Some(EndReason::NodeLost))
        );
        let err = b.node.close(*id, alice()).await.unwrap_err();
        assert!(err.is_gone(), "{err}");
    }
    assert!(
        b.node.directory().node_epoch("a").await.unwrap() > a_stamp.epoch,
        "a was fenced"
    );
    assert_eq!(b.node.stats().takeovers, 1);
    assert!(
        b.node
            .release_lease(lost[0], alice(), grant.id)
            .await
            .is_err()
    );

    // The survivor's own session is untouched; its memory comes back on close.
    assert!(b.node.owns(mine.id()));
    mine.close().await.unwrap();
    b.h.until_released(1).await;
    b.h.assert_gpu_at_baseline();
    b.stop().await;
    // The dead node's process would take its memory with it; here its runtime
    // is shut down, and every buffer is still released exactly once.
    drop(handles);
    a_h.shutdown_at_baseline().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_that_comes_back_is_fenced_and_can_never_act_as_owner() {
    let redis = RedisServer::start();
    let mut a = start_node(&redis, "a").await;
    let b = start_node(&redis, "b").await;
    let mut ids = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..2 {
        let s = a.node.open(alice()).await.unwrap();
        s.allocate(48 * KIB).await.unwrap();
        ids.push(s.id());
        handles.push(s);
    }
    let stamp = a.node.stamp().clone();
    let mut b_heard = b.node.invalidations();

    // a stops in its tracks (as under SIGSTOP or a long GC pause); b declares it lost.
    a.node.inject_pause();
    for _ in 0..2 {
        let heard = next_invalidation(&mut b_heard).await;
        assert_eq!(heard.reason, EndReason::NodeLost);
    }

    // Redis itself refuses a's writes as owner: fencing does not rely on a
    // noticing anything. Split brain cannot happen.
    let directory = a.node.directory();
    let err = directory
        .end(&stamp, ids[0], 1, EndReason::Closed, "unsigned")
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Fenced { .. }), "{err}");
    let err = directory
        .register(&stamp, SessionId::random(), "alice", 1)
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Fenced { .. }), "{err}");
    let err = directory.heartbeat(&stamp).await.unwrap_err();
    assert!(matches!(err, ClusterError::Fenced { .. }), "{err}");
    let err = directory.renew(&stamp, &[(ids[1], 1)]).await.unwrap_err();
    assert!(matches!(err, ClusterError::Fenced { .. }), "{err}");

    a.node.inject_resume();
    eventually!(
        "a notices it was fenced",
        a.node.health() == ClusterHealth::Fenced
    );

    // Its local sessions end exactly once, as node_lost, and give their memory back.
    let events = a.h.until_released(2).await;
    let ends = ends_by_session(&events);
    for id in &ids {
        assert_eq!(ends[id], vec![EndReason::NodeLost]);
        let entry = b.node.directory().entry(*id).await.unwrap().unwrap();
        assert_eq!(
            (entry.state, entry.reason, entry.version),
            (EntryState::Ended, Some(EndReason::NodeLost), 2)
        );
    }
    a.h.assert_gpu_at_baseline();
    let err = a.node.open(alice()).await.unwrap_err();
    assert!(matches!(err, ClusterError::Fenced { .. }), "{err}");
    assert!(!a.node.owns(ids[0]));

    drop(handles);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_run_leaves_no_session_inconsistent_after_resync() {
    // Persistent: a Redis that forgets the epochs fences every node (see
    // cluster_survives_redis_faults.rs); one that keeps them resyncs.
    let mut redis = RedisServer::start_persistent();
    // Both nodes are back within this TTL of each other even on a loaded
    // machine, so neither may declare the other lost (liveness.rs's rule).
    let patient = |name| ClusterConfig {
        node_ttl: Duration::from_secs(3),
        ..cluster_config(&redis, name)
    };
    let a = sessionbus_testkit::cluster::start_node_with(patient("a")).await;
    let b = sessionbus_testkit::cluster::start_node_with(patient("b")).await;
    let s1 = a.node.open(alice()).await.unwrap();
    let s2 = a.node.open(alice()).await.unwrap();
    let s3 = b.node.open(alice()).await.unwrap();
    for s in [&s1, &s2, &s3] {
        s.allocate(8 * KIB).await.unwrap();
    }

    redis.kill();
    eventually!(
        "both nodes report degraded",
        a.node.health() == ClusterHealth::Degraded && b.node.health() == ClusterHealth::Degraded
    );
    // Local sessions are still served; directory updates wait in the queue.
    let receipt = s1.close().await.unwrap();
    assert_eq!(receipt.buffers, 1);
    let s4 = b.node.open(alice()).await.unwrap();
    s4.allocate(8 * KIB).await.unwrap();
    s2.chat(Turn::new()).await.unwrap();
    eventually!("a queued the end of s1", a.node.stats().queued_updates >= 1);

    // Counted from here: whether the resync a node asks for at start
    // completed before Redis went away depends on timing.
    let (a_before, b_before) = (a.node.stats().resyncs, b.node.stats().resyncs);
    redis.restart(); // same port, from its append-only file
    eventually!(
        "both nodes resynced",
        a.node.health() == ClusterHealth::Healthy
            && b.node.health() == ClusterHealth::Healthy
            && a.node.stats().resyncs > a_before
            && b.node.stats().resyncs > b_before
    );

    // Every node's live sessions are live in the directory under that node, ...
    for node in [&a, &b] {
        let live = node.h.rt.live_sessions(None).await.unwrap();
        for id in &live {
            let entry = node
                .node
                .directory()
                .entry(*id)
                .await
                .unwrap()
                .expect("entry");
            assert_eq!(
                (entry.state, entry.node.as_str()),
                (EntryState::Live, node.node.stamp().node.as_str()),
                "{id}"
            );
        }
        let listed: HashSet<SessionId> = node
            .node
            .directory()
            .node_sessions(&node.node.stamp().node)
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(listed, live.into_iter().collect::<HashSet<_>>());
    }
    // ... the session ended while Redis was away is ended there, ...
    let entry = a.node.directory().entry(s1.id()).await.unwrap().unwrap();
    assert_eq!(
        (entry.state, entry.reason),
        (EntryState::Ended, Some(EndReason::Closed))
    );
    // ... and routing works both ways again.
    assert_eq!(
        b.node.owner_of(s2.id()).await.unwrap().as_deref(),
        Some("a")
    );
    assert_eq!(
        a.node.owner_of(s4.id()).await.unwrap().as_deref(),
        Some("b")
    );
    let receipt = a.node.close(s4.id(), alice()).await.unwrap();
    assert_eq!(receipt.buffers, 1);

    drop((s1, s2, s3, s4));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfiguration_is_a_clear_error_at_start() {
    let redis = RedisServer::start();
    let h = sessionbus_testkit::start_with(Config::default()).await;
    let engine = h.rt.engine();
    let start = |config: ClusterConfig| ClusterNode::start(engine, config);

    let keyed = |url: &str, node: &str| sessionbus_testkit::cluster::config(url, node);
    let err = start(ClusterConfig {
        keys: Vec::new(),
        ..keyed(&redis.url(), "a")
    })
    .await
    .unwrap_err();
    assert_eq!(err.field(), Some("cluster.keys"), "{err}");
    assert!(err.to_string().contains("SESSIONBUS_CLUSTER_KEYS"), "{err}");
    let err = start(ClusterConfig {
        keys: vec![sessionbus::cluster::ClusterKey::new("k1", &[1; 16])],
        ..keyed(&redis.url(), "a")
    })
    .await
    .unwrap_err();
    assert_eq!(err.field(), Some("cluster.keys"), "{err}");
    assert!(err.to_string().contains("at least 32"), "{err}");
    let err = start(ClusterConfig {
        keys: vec![sessionbus::cluster::ClusterKey {
            id: "k1".into(),
            secret_hex: format!("+{}", "a".repeat(63)),
        }],
        ..keyed(&redis.url(), "a")
    })
    .await
    .unwrap_err();
    assert_eq!(err.field(), Some("cluster.keys"), "{err}");
    assert!(
        !err.to_string().contains("aaaa"),
        "the secret is not echoed: {err}"
    );
    let err = start(keyed("http://127.0.0.1:6379", "a"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::BadUrl { .. }), "{err}");
    assert_eq!(err.field(), Some("cluster.redis_url"));
    let err = start(keyed("redis://127.0.0.1:notaport", "a"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::BadUrl { .. }), "{err}");
    #[cfg(not(feature = "redis-tls"))]
    {
        let err = start(keyed("rediss://127.0.0.1:6380", "a"))
            .await
            .unwrap_err();
        assert!(matches!(err, ClusterError::TlsNotEnabled { .. }), "{err}");
        assert!(err.to_string().contains("redis-tls"), "{err}");
    }
    let err = start(keyed(&redis.url(), "a b")).await.unwrap_err();
    assert_eq!(err.field(), Some("cluster.node_id"), "{err}");
    let err = start(ClusterConfig {
        node_ttl: Duration::from_millis(100),
        ..keyed(&redis.url(), "a")
    })
    .await
    .unwrap_err();
    assert_eq!(err.field(), Some("cluster.node_ttl"), "{err}");

    // Well-formed but nobody listens: refused (a node cannot get an epoch without Redis).
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = start(ClusterConfig {
        forward_timeout: Duration::from_millis(500),
        ..keyed(&format!("redis://127.0.0.1:{closed_port}"), "a")
    })
    .await
    .unwrap_err();
    assert!(matches!(err, ClusterError::Unreachable { .. }), "{err}");

    // A node id another process is heartbeating under.
    let first = start(cluster_config(&redis, "same")).await.unwrap();
    let err = start(cluster_config(&redis, "same")).await.unwrap_err();
    assert!(matches!(err, ClusterError::NodeIdInUse { .. }), "{err}");
    first.leave().await.unwrap();
    h.shutdown_at_baseline().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_urls_work_and_a_wrong_password_is_refused_without_being_logged() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let h = sessionbus_testkit::start_with(Config::default()).await;
    let url = |password: &str| format!("redis://:{password}@127.0.0.1:{}", redis.port);

    let err = ClusterNode::start(
        h.rt.engine(),
        sessionbus_testkit::cluster::config(&url("wrong"), "a"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClusterError::Unreachable { .. }), "{err}");
    assert!(!err.to_string().contains("wrong"), "password leaked: {err}");

    let node = ClusterNode::start(
        h.rt.engine(),
        sessionbus_testkit::cluster::config(&url("s3cret"), "a"),
    )
    .await
    .unwrap();
    let session = node.open(alice()).await.unwrap();
    let entry = node.directory().entry(session.id()).await.unwrap().unwrap();
    assert_eq!(entry.node.as_str(), "a");
    // The owner reaches Redis only as a pseudonym.
    assert!(
        entry.owner.starts_with("p:") && !entry.owner.contains("alice"),
        "{}",
        entry.owner
    );
    drop(session);
    h.shutdown_at_baseline().await;
    node.leave().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_beyond_the_queue_bound_are_dropped_and_the_resync_repairs_them() {
    let mut redis = RedisServer::start_persistent();
    let h = sessionbus_testkit::start_with(Config::default()).await;
    let config = ClusterConfig {
        queue_bound: 2,
        ..cluster_config(&redis, "a")
    };
    let node = ClusterNode::start(h.rt.engine(), config).await.unwrap();
    let closed = node.open(alice()).await.unwrap();

    redis.kill();
    eventually!("degraded", node.health() == ClusterHealth::Degraded);
    closed.close().await.unwrap();
    let mut opened = Vec::new();
    for _ in 0..5 {
        opened.push(node.open(alice()).await.unwrap());
    }
    eventually!("updates dropped", node.stats().updates_dropped >= 4);
    assert_eq!(
        node.stats().queued_updates,
        2,
        "the queue holds no more than its bound"
    );

    // One resync per degraded episode: the heartbeat and the pub/sub
    // reconnect may each ask for one, or share it, depending on timing.
    let before = node.stats().resyncs;
    redis.restart();
    eventually!(
        "resynced",
        node.health() == ClusterHealth::Healthy && node.stats().resyncs > before
    );
    for session in &opened {
        let entry = node
            .directory()
            .entry(session.id())
            .await
            .unwrap()
            .expect("re-registered");
        assert_eq!((entry.state, entry.node.as_str()), (EntryState::Live, "a"));
    }
    let entry = node
        .directory()
        .entry(closed.id())
        .await
        .unwrap()
        .expect("its end was queued");
    assert_eq!(
        (entry.state, entry.reason),
        (EntryState::Ended, Some(EndReason::Closed))
    );
    drop((closed, opened));
    h.shutdown_at_baseline().await;
    node.leave().await.unwrap();
}
