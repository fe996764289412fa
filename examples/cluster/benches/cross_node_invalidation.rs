//! Cross-node invalidation latency: a session ends on node A → node B has
//! dropped what it held for it (its cached route), over a real redis-server.
//!
//! ```text
//! cargo bench -p sessionbus-cluster-example --bench cross_node_invalidation            # 3000 sessions
//! SESSIONS=10000 cargo bench -p sessionbus-cluster-example --bench cross_node_invalidation
//! ```
//!
//! Both nodes run in this process (two runtimes, two wgpu devices), so A's
//! end instant (`SessionEndEvent::ended_instant`, on A's bus) and B's drop
//! instant (when B's invalidation subscriber hears of it, just after the
//! drop) are on one clock. Two modes:
//! - **one at a time**: close, wait until B dropped it, next: the latency of one invalidation;
//! - **all at once**: every session closed concurrently: what a mass logout costs.

use sessionbus_testkit::redis_server;

use sessionbus_testkit::percentiles::Latencies;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sessionbus::cluster::{ClusterConfig, ClusterNode};
use sessionbus::config::Config;
use sessionbus::{Delivery, EventKinds, LifecycleEvent, Runtime, SessionId};

fn show(mode: &str, samples: Vec<Duration>) {
    let latencies: Latencies = samples.into_iter().collect();
    let micros = |q: f64| latencies.at(q).unwrap_or_default().as_secs_f64() * 1e6;
    println!(
        "| {mode} | {} | {:.1} µs | {:.1} µs | {:.1} µs |",
        latencies.len(),
        micros(0.5),
        micros(0.99),
        micros(1.0),
    );
}

async fn node(url: &str, name: &str) -> (Runtime, ClusterNode) {
    let runtime = Runtime::start(Config::default()).await.expect("runtime");
    let config = ClusterConfig {
        session_ttl: std::time::Duration::from_secs(600),
        keys: vec![sessionbus::cluster::ClusterKey::new("bench", &[1u8; 32])],
        ..ClusterConfig::new(url, name)
    };
    let node = ClusterNode::start(runtime.engine(), config)
        .await
        .expect("node joins");
    (runtime, node)
}

/// Opens `n` sessions on A and has B cache a route to each (what B will drop).
async fn open(a: &ClusterNode, b: &ClusterNode, n: usize) -> Vec<sessionbus::SessionHandle> {
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let s = a.open("bench").await.expect("open");
        assert_eq!(b.owner_of(s.id()).await.unwrap().as_deref(), Some("a"));
        handles.push(s);
    }
    handles
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sessions: usize = std::env::var("SESSIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let redis = redis_server::RedisServer::start();
    let (rt_a, a) = node(&redis.url(), "a").await;
    let (rt_b, b) = node(&redis.url(), "b").await;
    let mut ended = rt_a
        .subscribe_channel(EventKinds::ENDED, Delivery::Reliable)
        .await
        .unwrap();
    let mut heard = b.invalidations();

    println!("| mode | sessions | p50 | p99 | max |");
    println!("|---|---|---|---|---|");

    // One at a time.
    let handles = open(&a, &b, sessions).await;
    let mut samples = Vec::with_capacity(sessions);
    for s in &handles {
        s.close().await.unwrap();
        let LifecycleEvent::Ended(end) = ended.recv().await.unwrap() else {
            unreachable!()
        };
        let inv = heard.recv().await.unwrap();
        let dropped_at = Instant::now();
        assert_eq!(inv.id, s.id());
        assert!(!b.holds(s.id()));
        samples.push(dropped_at - end.ended_instant);
    }
    show("one at a time", samples);
    drop(handles);

    // All at once.
    let handles = open(&a, &b, sessions).await;
    let collector = tokio::spawn(async move {
        let mut at = HashMap::<SessionId, Instant>::with_capacity(sessions);
        while at.len() < sessions {
            let inv = heard.recv().await.expect("no invalidation lost");
            at.insert(inv.id, Instant::now());
        }
        at
    });
    let closes = handles.iter().map(|s| s.close());
    futures::future::join_all(closes).await;
    let mut ends = HashMap::with_capacity(sessions);
    while ends.len() < sessions {
        if let LifecycleEvent::Ended(end) = ended.recv().await.unwrap() {
            ends.insert(end.id, end.ended_instant);
        }
    }
    let dropped = collector.await.unwrap();
    let samples = ends.iter().map(|(id, end)| dropped[id] - *end).collect();
    show("all at once", samples);
    drop(handles);

    rt_a.shutdown().await;
    rt_b.shutdown().await;
    a.leave().await.unwrap();
    b.leave().await.unwrap();
}
