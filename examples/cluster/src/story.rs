//! The parent process: nodes `a` and `b`, and the three acts.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use sessionbus::cluster::{ClusterHealth, ClusterKey, ClusterNode, Invalidation, KEYS_ENV};
use sessionbus::config::Config;
use sessionbus::pool::GpuCounters;
use sessionbus::{EndReason, Owner, Runtime, SessionId, Turn};
use tokio::sync::broadcast;

use sessionbus_testkit::redis_server::RedisServer;

struct Node {
    name: &'static str,
    runtime: Runtime,
    baseline: GpuCounters,
    cluster: ClusterNode,
}

async fn start(
    name: &'static str,
    url: &str,
    prefix: &str,
    key: &ClusterKey,
) -> anyhow::Result<Node> {
    let runtime = Runtime::start(Config::default()).await?;
    let config = sessionbus::cluster::ClusterConfig {
        key_prefix: prefix.to_string(),
        keys: vec![key.clone()],
        ..crate::cluster_config(url, name)
    };
    let cluster = ClusterNode::start(runtime.engine(), config)
        .await
        .with_context(|| format!("starting node {name}"))?;
    Ok(Node {
        name,
        baseline: runtime.gpu_counters().expect("the runtime's own wgpu pool"),
        runtime,
        cluster,
    })
}

async fn next(rx: &mut broadcast::Receiver<Invalidation>) -> anyhow::Result<Invalidation> {
    Ok(tokio::time::timeout(Duration::from_secs(30), rx.recv()).await??)
}

pub(crate) async fn run(
    url: String,
    redis: Option<&mut RedisServer>,
    sessions: usize,
) -> anyhow::Result<()> {
    let prefix = crate::cluster_config(&url, "x").key_prefix;
    let key = ClusterKey::new("example", &rand::random::<[u8; 32]>());
    let a = start("a", &url, &prefix, &key).await?;
    let b = start("b", &url, &prefix, &key).await?;

    // Node c, in its own process.
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--child-node",
            "c",
            "--redis",
            &url,
            "--sessions",
            &sessions.to_string(),
        ])
        .env("SESSIONBUS_EXAMPLE_PREFIX", &prefix)
        .env(KEYS_ENV, format!("{}:{}", key.id, key.secret_hex))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting node c")?;
    let mut ready = String::new();
    BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut ready)?;
    let c_sessions: Vec<SessionId> = ready
        .strip_prefix("ready ")
        .context("node c did not start")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    println!(
        "3 nodes up: a and b in this process, c in process {} — {} sessions each",
        child.id(),
        c_sessions.len()
    );

    let mut a_sessions = Vec::new();
    for _ in 0..sessions {
        let s = a.cluster.open("alice").await?;
        s.allocate(64 * 1024).await?;
        a_sessions.push(s);
    }
    for s in &a_sessions {
        ensure!(b.cluster.owner_of(s.id()).await?.as_deref() == Some("a"));
    }

    // Act 1: closed on its owner, dropped everywhere else.
    let mut b_heard = b.cluster.invalidations();
    let first = a_sessions.remove(0);
    let closed_at = Instant::now();
    first.close().await?;
    let heard = next(&mut b_heard).await?;
    ensure!(heard.id == first.id() && !b.cluster.holds(first.id()));
    println!(
        "act 1: session {} closed on node a; node b dropped its route {:?} later (version {}, {})",
        heard.id,
        closed_at.elapsed(),
        heard.version,
        heard.reason
    );

    // Act 2: a close sent to the wrong node is answered by the owner (another process).
    let target = c_sessions[0];
    let receipt = a.cluster.close(target, Owner::new("carol")).await?;
    println!(
        "act 2: node a closed session {target} owned by node c: {} buffer(s), {} bytes released on c",
        receipt.buffers, receipt.bytes
    );
    let heard = next(&mut b_heard).await?;
    ensure!(heard.id == target && heard.node == "c");

    // Act 3: node c is killed; the survivors detect it, fence it, end its sessions.
    for id in &c_sessions[1..] {
        ensure!(b.cluster.owner_of(*id).await?.as_deref() == Some("c"));
    }
    let c_epoch = a.cluster.directory().node_epoch("c").await?;
    let killed_at = Instant::now();
    child.kill()?; // SIGKILL: no goodbye
    child.wait()?;
    let mut lost = HashSet::new();
    while lost.len() < c_sessions.len() - 1 {
        let heard = next(&mut b_heard).await?;
        if heard.reason == EndReason::NodeLost {
            lost.insert(heard.id);
        }
    }
    let detected = killed_at.elapsed();
    let fenced_epoch = a.cluster.directory().node_epoch("c").await?;
    ensure!(fenced_epoch > c_epoch, "node c was not fenced");
    for id in &c_sessions[1..] {
        ensure!(!a.cluster.holds(*id) && !b.cluster.holds(*id));
        if b.cluster.close(*id, Owner::new("carol")).await.is_ok() {
            bail!("a session of the lost node still answered");
        }
    }
    println!(
        "act 3: node c killed (SIGKILL); {} sessions ended as node_lost {:?} later; c fenced (epoch {c_epoch} → {fenced_epoch})",
        lost.len(),
        detected
    );
    let takeovers = a.cluster.stats().takeovers + b.cluster.stats().takeovers;
    ensure!(
        takeovers == 1,
        "exactly one survivor runs the takeover, got {takeovers}"
    );

    // Act 4: Redis goes away for three TTLs and comes back from its append-only file.
    match redis {
        Some(redis) => {
            let ttl = crate::cluster_config(&url, "x").node_ttl;
            let resyncs = a.cluster.stats().resyncs + b.cluster.stats().resyncs;
            redis.kill();
            tokio::time::sleep(3 * ttl).await;
            redis.restart();
            let back = Instant::now();
            while a.cluster.health() != ClusterHealth::Healthy
                || b.cluster.health() != ClusterHealth::Healthy
                || a.cluster.stats().resyncs + b.cluster.stats().resyncs < resyncs + 2
            {
                ensure!(
                    back.elapsed() < Duration::from_secs(60),
                    "the nodes did not resync"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(2 * ttl).await; // a takeover would have happened by now
            let mut lost = 0;
            for s in &a_sessions {
                lost += s.chat(Turn::new()).await.is_err() as usize;
            }
            let takeovers = a.cluster.stats().takeovers + b.cluster.stats().takeovers;
            ensure!(
                lost == 0 && takeovers == 1,
                "{lost} sessions lost, {takeovers} takeovers"
            );
            println!(
                "act 4: Redis killed for {:?} and restarted from its append-only file: no node fenced, {lost} of {} sessions lost",
                3 * ttl,
                a_sessions.len()
            );
        }
        None => {
            println!("act 4: skipped (it restarts Redis: only with the throwaway redis-server)")
        }
    }

    // Act 5: anyone who can PUBLISH to Redis tries to close a's session.
    let victim = a_sessions[0].id();
    let forged = format!(
        r#"{{"req":1,"from":"b","id":"{victim}","caller":{{"Operator":"admin"}},"op":"Close"}}"#
    );
    let mut plain = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let heard: u64 = redis::cmd("PUBLISH")
        .arg(format!("{prefix}:req:a"))
        .arg(&forged)
        .query_async(&mut plain)
        .await?;
    let refused = Instant::now();
    while a.cluster.stats().rejected_total() == 0 {
        ensure!(
            refused.elapsed() < Duration::from_secs(30),
            "the forgery was not refused"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a_sessions[0]
        .chat(Turn::new())
        .await
        .context("the victim is still live")?;
    println!(
        "act 5: a close forged from a plain Redis client (heard by {heard} node): refused as {:?}, session {victim} still live",
        a.cluster.stats().rejected
    );

    // Shutdown: ends the rest, writes the ends, leaves; wgpu's counters say nothing leaked.
    drop(a_sessions);
    for node in [a, b] {
        let report = node.runtime.shutdown().await;
        node.cluster.leave().await?;
        println!(
            "node {}: shut down, {} sessions ended, wgpu buffers {} → {} (baseline → after)",
            node.name,
            report.sessions.sessions_ended,
            node.baseline.buffers,
            report.gpu_after.expect("wgpu counters").buffers
        );
        ensure!(
            report.gpu_after.expect("wgpu counters") == node.baseline,
            "node {} leaked GPU memory: {:?} after, {:?} before",
            node.name,
            report.gpu_after.expect("wgpu counters"),
            node.baseline
        );
    }
    println!("ok: every node consistent, nothing leaked");
    Ok(())
}
