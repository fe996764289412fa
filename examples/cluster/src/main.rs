//! Beyond one machine: several nodes against one Redis.
//!
//! ```text
//! cargo run --release -p sessionbus-cluster-example                       # starts a throwaway redis-server
//! cargo run --release -p sessionbus-cluster-example -- --redis redis://127.0.0.1:6379
//! ```
//!
//! Nodes `a` and `b` run in this process (each its own runtime and GPU
//! device); node `c` is a child process. The run shows:
//! 1. a session closed on its owner disappearing from the other nodes (invalidation);
//! 2. a close sent to a node that does not own the session, answered by the owner;
//! 3. node `c` killed with SIGKILL, detected by the survivors, fenced, and its
//!    sessions ended with `node_lost`;
//! 4. Redis killed for three node TTLs and restarted from its append-only
//!    file: no node fenced, no session lost (only with the throwaway server);
//! 5. a close forged from a plain Redis client (the old, unsigned format, with
//!    operator rights): refused and counted, the session still live.
//!
//! The nodes share a cluster key drawn at random for the run (node `c` gets
//! it through `SESSIONBUS_CLUSTER_KEYS`).
//!
//! Exits non-zero if anything is inconsistent or any GPU buffer leaked.

mod child;
mod story;

use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Several sessionbus nodes against one Redis")]
struct Args {
    /// Redis URL; without it a throwaway redis-server is started on a free port.
    #[arg(long)]
    redis: Option<String>,
    /// Sessions each node opens.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Internal: run as node `ID` in a child process.
    #[arg(long, hide = true)]
    child_node: Option<String>,
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "warn,wgpu_hal::gles::egl=off".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs();
    match (&args.child_node, &args.redis) {
        (Some(node), Some(url)) => child::run(node, url, args.sessions).await,
        (Some(_), None) => anyhow::bail!("--child-node needs --redis"),
        (None, Some(url)) => story::run(url.clone(), None, args.sessions).await,
        (None, None) => {
            let mut redis = sessionbus_testkit::redis_server::RedisServer::start_persistent();
            println!(
                "started a throwaway redis-server (append-only file on) on port {}",
                redis.port
            );
            story::run(redis.url(), Some(&mut redis), args.sessions).await
        }
    }
}

/// The cluster timing of the example: quick, so a lost node shows within a second.
pub(crate) fn cluster_config(url: &str, node: &str) -> sessionbus::cluster::ClusterConfig {
    sessionbus::cluster::ClusterConfig {
        heartbeat_interval: Duration::from_millis(200),
        node_ttl: Duration::from_secs(1),
        renew_interval: Duration::from_secs(1),
        forward_timeout: Duration::from_secs(3),
        key_prefix: format!("sessionbus-example-{}", std::process::id()),
        ..sessionbus::cluster::ClusterConfig::new(url, node)
    }
}
