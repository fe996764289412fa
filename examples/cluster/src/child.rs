//! Node `c`: a separate process, so that killing it is a real SIGKILL.
//! It opens its sessions, prints `ready <ids>` on stdout, and waits to die.

use sessionbus::Runtime;
use sessionbus::cluster::ClusterNode;
use sessionbus::config::Config;

pub(crate) async fn run(node: &str, url: &str, sessions: usize) -> anyhow::Result<()> {
    let runtime = Runtime::start(Config::default()).await?;
    let prefix = std::env::var("SESSIONBUS_EXAMPLE_PREFIX")?;
    let config = sessionbus::cluster::ClusterConfig {
        key_prefix: prefix,
        ..crate::cluster_config(url, node)
    };
    let cluster = ClusterNode::start(runtime.engine(), config).await?;
    let mut handles = Vec::new();
    for _ in 0..sessions {
        let session = cluster.open("carol").await?;
        session.allocate(64 * 1024).await?;
        handles.push(session);
    }
    let ids: Vec<String> = handles.iter().map(|s| s.id().to_string()).collect();
    println!("ready {}", ids.join(" "));
    // Until the parent kills this process.
    std::future::pending::<()>().await;
    Ok(())
}
