//! Anyone who can PUBLISH to Redis, replay what they overheard, or flood a
//! node's channels must not be able to end, touch or lease a session, nor
//! resolve someone else's forwarded request. Every test runs real nodes
//! (real wgpu devices) against a real `redis-server`, attacks them from a
//! plain Redis client, and ends with wgpu's counters at baseline.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sessionbus::cluster::{ClusterConfig, ClusterError, ClusterHealth, Rejection};
use sessionbus::{Caller, EndReason, Owner, SessionError, Turn};
use sessionbus_testkit::KIB;
use sessionbus_testkit::cluster::{Node, eventually, start_node, start_node_with};
use sessionbus_testkit::redis_server::RedisServer;
use sha2::Sha256;

fn alice() -> Owner {
    Owner::new("alice")
}

/// A frame in the cluster's format, signed by whoever holds `secret`.
fn frame(key_id: &str, secret: &[u8], json: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(json.as_bytes());
    format!(
        "sb1.{key_id}.{}.{json}",
        data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes())
    )
}

/// A frame signed with the test cluster's real key, as a node (or a
/// fenced node's leftover) would sign it: `from` and `body` as given.
fn signed(channel: &str, from: (&str, u64, u64), sent_ms: u128, nonce: u128, body: &str) -> String {
    let json = format!(
        r#"{{"from":{{"node":"{}","epoch":{},"incarnation":{}}},"channel":"{channel}","sent_ms":{sent_ms},"nonce":"{nonce:032x}","body":{body}}}"#,
        from.0, from.1, from.2
    );
    frame("test", &[7u8; 32], &json)
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Listens on `channel` from a plain client (as an eavesdropper on Redis
/// would) and hands over every message heard.
fn overhear(redis: &RedisServer, channel: &str) -> std_mpsc::Receiver<String> {
    let (tx, rx) = std_mpsc::channel();
    let mut conn = redis.client();
    let channel = channel.to_string();
    let (ready_tx, ready) = std_mpsc::channel();
    std::thread::spawn(move || {
        let mut pubsub = conn.as_pubsub();
        pubsub.subscribe(&channel).unwrap();
        ready_tx.send(()).unwrap();
        while let Ok(message) = pubsub.get_message() {
            if tx.send(message.get_payload::<String>().unwrap()).is_err() {
                return;
            }
        }
    });
    ready.recv().unwrap();
    rx
}

fn rejected(node: &Node, why: Rejection) -> u64 {
    node.node.stats().rejected.get(&why).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_closes_leases_invalidations_and_replies_from_a_plain_client_change_nothing() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = start_node(&url, "a").await;
    let b = start_node(&url, "b").await;
    let prefix = sessionbus_testkit::cluster::config(&url, "a").key_prefix;
    let session = a.node.open(alice()).await.unwrap();
    session.allocate(64 * KIB).await.unwrap();
    let id = session.id();
    assert_eq!(b.node.owner_of(id).await.unwrap().as_deref(), Some("a"));

    // The attack of the issue, as the old wire format had it: a close with
    // operator rights, "from" b, unsigned.
    let req = format!("{prefix}:req:a");
    let forged_close =
        format!(r#"{{"req":1,"from":"b","id":"{id}","caller":{{"Operator":"x"}},"op":"Close"}}"#);
    assert_eq!(redis.publish(&req, &forged_close), 1, "a listens");
    let forged_lease = format!(
        r#"{{"req":2,"from":"b","id":"{id}","caller":{{"User":"alice"}},"op":"LeaseRemote"}}"#
    );
    redis.publish(&req, &forged_lease);
    // Signed, but with a key the cluster does not hold (same id, other secret).
    let json = format!(
        r#"{{"from":{{"node":"b","epoch":1,"incarnation":1}},"channel":"{req}","sent_ms":{},"nonce":"{:032x}","body":{{"req":3,"id":"{id}","caller":{{"Operator":"x"}},"op":"Close"}}}}"#,
        now_ms(),
        3u128
    );
    redis.publish(&req, &frame("test", &[9u8; 32], &json));
    redis.publish(&req, &frame("nobody", &[7u8; 32], &json));
    // An invalidation of the live session, unsigned and with a poisoning version.
    let inval = format!("{prefix}:inval");
    let forged_end = format!(
        r#"{{"id":"{id}","version":18446744073709551615,"reason":"closed","node":"a","by":"a"}}"#
    );
    redis.publish(&inval, &forged_end);
    // A reply to whatever b may be waiting for.
    redis.publish(
        &format!("{prefix}:rep:b"),
        r#"{"req":1,"result":{"Ok":"Unit"}}"#,
    );

    eventually!(
        "a and b refused every forgery",
        rejected(&a, Rejection::Unsigned) >= 2
            && rejected(&a, Rejection::BadSignature) >= 1
            && rejected(&a, Rejection::UnknownKey) >= 1
            && rejected(&b, Rejection::Unsigned) >= 2
    );
    // Nothing happened: the session is live, owned, served, and b still routes to it.
    assert!(a.node.owns(id));
    session.chat(Turn::new()).await.unwrap();
    assert_eq!(b.node.owner_of(id).await.unwrap().as_deref(), Some("a"));
    b.node.touch(id, alice()).await.unwrap();
    assert_eq!(a.h.rt.live_sessions(None).await, Ok(vec![id]));
    assert_eq!(a.node.stats().served, 1, "only b's real touch was served");

    session.close().await.unwrap();
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_rights_cross_only_from_the_nodes_the_config_names() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = start_node_with(ClusterConfig {
        operator_nodes: vec!["ops".into()],
        ..sessionbus_testkit::cluster::config(&url, "a")
    })
    .await;
    let b = start_node(&url, "b").await;
    let ops = start_node(&url, "ops").await;
    let session = a.node.open(alice()).await.unwrap();
    session.allocate(16 * KIB).await.unwrap();
    let id = session.id();

    let admin = || Caller::Operator("admin".into());
    let err = b.node.close(id, admin()).await.unwrap_err();
    assert!(
        matches!(&err, ClusterError::Remote { message, .. } if message.contains("operator_nodes")),
        "{err}"
    );
    assert_eq!(rejected(&a, Rejection::NotPermitted), 1);
    assert!(a.node.owns(id), "b's operator close changed nothing");

    // A stranger through a legitimate node is refused as locally, and its
    // name never crossed: the refusal names it from b's own side.
    let err = b.node.close(id, Owner::new("mallory")).await.unwrap_err();
    assert!(
        matches!(&err, ClusterError::Session(SessionError::Unauthorized { caller, .. }) if caller.contains("mallory")),
        "{err}"
    );

    let receipt = ops.node.close(id, admin()).await.unwrap();
    assert_eq!((receipt.reason, receipt.buffers), (EndReason::Closed, 1));
    a.stop().await;
    b.stop().await;
    ops.stop().await;
    drop(session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_valid_request_or_invalidation_is_refused() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = start_node(&url, "a").await;
    let b = start_node(&url, "b").await;
    let prefix = sessionbus_testkit::cluster::config(&url, "a").key_prefix;
    let keep = a.node.open(alice()).await.unwrap();
    keep.allocate(16 * KIB).await.unwrap();
    let closing = a.node.open(alice()).await.unwrap();
    assert_eq!(
        b.node.owner_of(keep.id()).await.unwrap().as_deref(),
        Some("a")
    );

    // Overheard: b's request to a (a lease: replaying it would take another),
    // and a's invalidation of the session it closes.
    let requests = overhear(&redis, &format!("{prefix}:req:a"));
    let invalidations = overhear(&redis, &format!("{prefix}:inval"));
    let grant = b.node.lease_remote(keep.id(), alice()).await.unwrap();
    let request = requests.recv_timeout(Duration::from_secs(30)).unwrap();
    closing.close().await.unwrap();
    let invalidation = invalidations.recv_timeout(Duration::from_secs(30)).unwrap();
    let served = a.node.stats().served;

    redis.publish(&format!("{prefix}:req:a"), &request);
    redis.publish(&format!("{prefix}:inval"), &invalidation);
    eventually!(
        "both replays refused",
        rejected(&a, Rejection::Replayed) >= 1 && rejected(&b, Rejection::Replayed) >= 1
    );
    assert_eq!(
        a.node.stats().served,
        served,
        "the replayed lease was not served"
    );
    // A frame replayed on another channel than the one it was signed for.
    redis.publish(&format!("{prefix}:req:b"), &request);
    eventually!(
        "wrong channel refused",
        rejected(&b, Rejection::WrongChannel) >= 1
    );

    b.node
        .release_lease(keep.id(), alice(), grant.id)
        .await
        .unwrap();
    keep.close().await.unwrap();
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_forwards_dropped_by_their_callers_leave_nothing_pending() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = start_node(&url, "a").await;
    let b = start_node(&url, "b").await;
    let session = a.node.open(alice()).await.unwrap();
    let id = session.id();
    assert_eq!(b.node.owner_of(id).await.unwrap().as_deref(), Some("a"));

    // a answers nothing for now, so b's forwards wait (forward_timeout is 5 s).
    a.node.inject_pause();
    let b_node = std::sync::Arc::new(b.node);
    let calls: Vec<_> = (0..1000)
        .map(|_| {
            let node = b_node.clone();
            tokio::spawn(async move { node.touch(id, alice()).await })
        })
        .collect();
    eventually!(
        "1000 forwards waiting",
        b_node.stats().pending_forwards == 1000
    );
    // Their callers give up (an HTTP timeout, a client gone): the futures are dropped.
    for call in &calls {
        call.abort();
    }
    for call in calls {
        let _ = call.await;
    }
    assert_eq!(b_node.stats().pending_forwards, 0);

    a.node.inject_resume();
    let b_node = std::sync::Arc::into_inner(b_node).expect("no call holds the node");
    b_node.touch(id, alice()).await.unwrap();
    session.close().await.unwrap();
    a.stop().await;
    Node {
        h: b.h,
        node: b_node,
    }
    .stop()
    .await;
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_requests_is_refused_in_bounded_memory_while_sessions_are_served() {
    // Every message is delivered to the node, however far it falls behind
    // (the default would disconnect it past 32 MiB, and then none would be verified).
    let redis = RedisServer::start_with(&["--client-output-buffer-limit", "pubsub 0 0 0"]);
    let url = redis.url();
    let a = start_node(&url, "a").await;
    let b = start_node(&url, "b").await;
    let prefix = sessionbus_testkit::cluster::config(&url, "a").key_prefix;
    let local = a.node.open(alice()).await.unwrap();
    local.allocate(16 * KIB).await.unwrap();
    let remote = a.node.open(alice()).await.unwrap();
    assert_eq!(
        b.node.owner_of(remote.id()).await.unwrap().as_deref(),
        Some("a")
    );
    let rss_before = rss_bytes();

    // 100 000 forged requests: half unsigned, half signed with a wrong secret.
    let channel = format!("{prefix}:req:a");
    let id = remote.id();
    let flood = std::thread::spawn(move || {
        let mut conn = redis.client();
        for batch in 0..100 {
            let mut pipe = redis::pipe();
            for i in 0..1000u128 {
                let n = batch * 1000 + i;
                let json = format!(
                    r#"{{"from":{{"node":"b","epoch":1,"incarnation":1}},"channel":"{channel}","sent_ms":{},"nonce":"{n:032x}","body":{{"req":{n},"id":"{id}","caller":{{"Operator":"x"}},"op":"Close"}}}}"#,
                    now_ms()
                );
                let payload = match n % 2 {
                    0 => json,
                    _ => frame("test", &[9u8; 32], &json),
                };
                pipe.cmd("PUBLISH").arg(&channel).arg(payload).ignore();
            }
            let () = pipe.query(&mut conn).unwrap();
        }
        redis
    });
    // Local sessions keep being served meanwhile (a forwarded request waits
    // behind the flood in a's one pub/sub connection: it is checked after).
    let mut served = 0;
    while !flood.is_finished() {
        local.chat(Turn::new()).await.unwrap();
        served += 1;
    }
    let redis = flood.join().unwrap();
    b.node.touch(id, alice()).await.unwrap();
    eventually!(
        "every forged request was refused",
        a.node.stats().rejected_total() == 100_000
    );
    assert_eq!(a.node.stats().degraded_episodes, 0);
    let stats = a.node.stats();
    assert!(served > 0);
    assert_eq!(stats.pending_forwards, 0);
    assert!(
        stats.nonces_remembered < 1000,
        "forged frames add no nonces: {stats:?}"
    );
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(
        grown < 256 << 20,
        "memory grew by {grown} bytes under the flood"
    );
    assert!(a.node.owns(id) && a.node.owns(local.id()));
    local.close().await.unwrap();
    remote.close().await.unwrap();
    a.stop().await;
    b.stop().await;
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_epoch_key_fences_its_node_for_good() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut a = start_node(&url, "a").await;
    let b = start_node(&url, "b").await;
    let prefix = sessionbus_testkit::cluster::config(&url, "a").key_prefix;
    let session = a.node.open(alice()).await.unwrap();
    session.allocate(32 * KIB).await.unwrap();
    let stamp = a.node.stamp().clone();

    let deleted: u64 = redis.cmd("DEL", &[&format!("{prefix}:node:a:epoch")]);
    assert_eq!(deleted, 1);
    eventually!("a fenced", a.node.health() == ClusterHealth::Fenced);
    let events = a.h.until_released(1).await;
    let ends = sessionbus_testkit::ends_by_session(&events);
    assert_eq!(ends[&session.id()], vec![EndReason::NodeLost]);
    a.h.assert_gpu_at_baseline();
    // No write can bring the epoch back: not a heartbeat, not a registration.
    let err = a.node.directory().heartbeat(&stamp).await.unwrap_err();
    assert!(
        matches!(err, ClusterError::Fenced { current: 0, .. }),
        "{err}"
    );
    let exists: u64 = redis.cmd("EXISTS", &[&format!("{prefix}:node:a:epoch")]);
    assert_eq!(exists, 0, "nothing re-created the epoch");
    let err = a.node.open(alice()).await.unwrap_err();
    assert!(matches!(err, ClusterError::Fenced { .. }), "{err}");
    assert_eq!(b.node.health(), ClusterHealth::Healthy);
    drop(session);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_flushall_no_two_live_nodes_share_an_epoch() {
    let redis = RedisServer::start();
    let url = redis.url();
    let old = start_node(&url, "a").await;
    let old_stamp = old.node.stamp().clone();
    let session = old.node.open(alice()).await.unwrap();
    session.allocate(16 * KIB).await.unwrap();

    let () = redis.cmd("FLUSHALL", &[]);
    // The old run may linger (it has not noticed yet); a new run of "a" joins.
    let new = start_node(&url, "a").await;
    let new_stamp = new.node.stamp().clone();
    assert_eq!(new_stamp.epoch, 1, "the counter was lost with the data");
    assert_ne!(
        (new_stamp.epoch, new_stamp.incarnation),
        (old_stamp.epoch, old_stamp.incarnation),
        "the incarnation keeps the epochs apart"
    );
    let mut old = old;
    eventually!(
        "the old run is fenced",
        old.node.health() == ClusterHealth::Fenced
    );
    let err = old
        .node
        .directory()
        .heartbeat(&old_stamp)
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Fenced { .. }), "{err}");
    let events = old.h.until_released(1).await;
    assert_eq!(
        sessionbus_testkit::ends_by_session(&events)[&session.id()],
        vec![EndReason::NodeLost]
    );
    assert_eq!(new.node.health(), ClusterHealth::Healthy);
    drop(session);
    old.stop().await;
    new.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_signed_with_the_key_but_stale_expired_or_from_the_wrong_node_are_refused() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = start_node(&url, "a").await;
    let b = start_node(&url, "b").await;
    let c = start_node(&url, "c").await;
    let prefix = sessionbus_testkit::cluster::config(&url, "a").key_prefix;
    let session = a.node.open(alice()).await.unwrap();
    session.allocate(16 * KIB).await.unwrap();
    let id = session.id();
    let req = format!("{prefix}:req:a");
    let close =
        |n: u128| format!(r#"{{"req":{n},"id":"{id}","caller":{{"Operator":"x"}},"op":"Close"}}"#);
    let b_stamp = b.node.stamp().clone();

    // b's previous incarnation (a fenced or replaced run) still holds the key.
    let stale = (
        b_stamp.node.as_str(),
        b_stamp.epoch,
        b_stamp.incarnation ^ 1,
    );
    redis.publish(&req, &signed(&req, stale, now_ms(), 1, &close(1)));
    let older = (
        b_stamp.node.as_str(),
        b_stamp.epoch.saturating_sub(1),
        b_stamp.incarnation.wrapping_add(1),
    );
    redis.publish(&req, &signed(&req, older, now_ms(), 2, &close(2)));
    // A node that never joined.
    redis.publish(&req, &signed(&req, ("ghost", 1, 1), now_ms(), 3, &close(3)));
    // b as it is now, but a minute ago (outside the 30 s replay window).
    let current = (b_stamp.node.as_str(), b_stamp.epoch, b_stamp.incarnation);
    redis.publish(
        &req,
        &signed(&req, current, now_ms() - 60_000, 4, &close(4)),
    );
    eventually!(
        "stale senders and an old frame refused",
        rejected(&a, Rejection::StaleEpoch) >= 3 && rejected(&a, Rejection::Expired) >= 1
    );
    assert!(a.node.owns(id));

    // An invalidation of a's live session signed by b as it is now: a asks
    // the directory, which has the session live, and keeps it.
    let inval = format!("{prefix}:inval");
    let end = format!(r#"{{"id":"{id}","version":2,"reason":"node_lost","node":"a","by":"b"}}"#);
    redis.publish(&inval, &signed(&inval, current, now_ms(), 6, &end));
    eventually!(
        "the directory did not confirm it",
        a.node.stats().invalidations_unconfirmed == 1
    );
    assert!(a.node.owns(id));
    session.chat(Turn::new()).await.unwrap();

    // A reply to b's pending request, validly signed, but by c, not by the node asked.
    a.node.inject_pause();
    let requests = overhear(&redis, &req);
    let b_node = std::sync::Arc::new(b.node);
    let waiting = {
        let node = b_node.clone();
        tokio::spawn(async move { node.touch(id, alice()).await })
    };
    let overheard = requests.recv_timeout(Duration::from_secs(30)).unwrap();
    let req_id: u128 = {
        let at = overheard.find(r#""req":"#).unwrap() + 6;
        overheard[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let c_stamp = c.node.stamp().clone();
    let rep = format!("{prefix}:rep:b");
    let forged_reply = format!(r#"{{"req":{req_id},"result":{{"Ok":"Unit"}}}}"#);
    redis.publish(
        &rep,
        &signed(
            &rep,
            (c_stamp.node.as_str(), c_stamp.epoch, c_stamp.incarnation),
            now_ms(),
            5,
            &forged_reply,
        ),
    );
    eventually!(
        "the reply from the wrong node refused",
        b_node
            .stats()
            .rejected
            .get(&Rejection::NotPermitted)
            .copied()
            .unwrap_or(0)
            >= 1
    );
    assert!(
        !waiting.is_finished(),
        "the forged reply did not resolve b's request"
    );
    assert_eq!(b_node.stats().pending_forwards, 1);
    a.node.inject_resume();
    waiting.await.unwrap().unwrap();

    session.close().await.unwrap();
    a.stop().await;
    let b_node = std::sync::Arc::into_inner(b_node).unwrap();
    Node {
        h: b.h,
        node: b_node,
    }
    .stop()
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_workers_a_node_refuses_at_once_with_busy() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = start_node_with(ClusterConfig {
        max_served_requests: 1,
        ..sessionbus_testkit::cluster::config(&url, "a")
    })
    .await;
    let b = start_node(&url, "b").await;
    let draining = a.node.open(alice()).await.unwrap();
    let other = a.node.open(alice()).await.unwrap();
    for s in [&draining, &other] {
        assert_eq!(b.node.owner_of(s.id()).await.unwrap().as_deref(), Some("a"));
    }
    // A lease held on a: a forwarded close of that session waits for it to
    // drain, holding a's only worker.
    let lease = draining.lease().await.unwrap();
    let b_node = std::sync::Arc::new(b.node);
    let close = {
        let node = b_node.clone();
        let id = draining.id();
        tokio::spawn(async move { node.close(id, alice()).await })
    };
    eventually!("a serves the close", a.node.stats().served == 1);
    let err = b_node.touch(other.id(), alice()).await.unwrap_err();
    assert!(
        matches!(&err, ClusterError::Remote { message, .. } if message.contains("busy")),
        "{err}"
    );
    assert_eq!(a.node.stats().refused_busy, 1);
    drop(lease);
    let receipt = close.await.unwrap().unwrap();
    assert_eq!(receipt.reason, EndReason::Closed);
    b_node.touch(other.id(), alice()).await.unwrap();
    other.close().await.unwrap();
    a.stop().await;
    let b_node = std::sync::Arc::into_inner(b_node).unwrap();
    Node {
        h: b.h,
        node: b_node,
    }
    .stop()
    .await;
}
