//! Exporting sessionbus metrics to Prometheus.
//!
//! Installs `metrics-exporter-prometheus`'s recorder with the explicit
//! histogram buckets from `sessionbus::metrics::HISTOGRAM_BUCKETS`, starts a
//! runtime, and runs a small chat workload in rounds (sessions open, fill their
//! KV cache, then close or disconnect). It serves the scrape on
//! `http://127.0.0.1:PORT/metrics` until stopped, or with `--once` runs one
//! round, shuts down and prints the scrape.
//!
//! ```text
//! cargo run --example prometheus -- --once
//! cargo run --example prometheus -- --port 9898 &  curl -s localhost:9898/metrics
//! ```
//!
//! The exporter is built without its HTTP feature (and so without hyper): the
//! scrape endpoint is twenty lines of `std::net` below. In a service that
//! already runs an HTTP server, serve `handle.render()` from it instead.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sessionbus::Runtime;
use sessionbus::config::Config;

#[derive(Parser, Debug)]
struct Args {
    /// Port of the scrape endpoint (on 127.0.0.1).
    #[arg(long, default_value_t = 9898)]
    port: u16,
    /// Run one round of the workload, shut down, print the scrape and exit.
    #[arg(long)]
    once: bool,
    /// Sessions per round.
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// Pause between rounds when serving.
    #[arg(long, default_value_t = 1000)]
    round_ms: u64,
}

fn install() -> anyhow::Result<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in sessionbus::metrics::HISTOGRAM_BUCKETS {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)?;
    }
    Ok(builder.install_recorder()?)
}

/// One round: every session chats a few turns (one KV buffer each), then
/// closes (most) or drops its handle (a disconnect).
async fn round(rt: &Runtime, round: u64, sessions: usize) -> anyhow::Result<()> {
    let clients = (0..sessions).map(|i| async move {
        let session = rt.open(format!("user-{round}-{i}")).await?;
        for _ in 0..4 {
            session.chat(sessionbus::Turn::default()).await?;
            session.allocate(64 * 1024).await?;
        }
        if i % 4 == 0 {
            drop(session); // a disconnect
        } else {
            session.close().await?;
        }
        anyhow::Ok(())
    });
    for result in futures::future::join_all(clients).await {
        result?;
    }
    Ok(())
}

fn serve(listener: TcpListener, handle: PrometheusHandle) {
    for stream in listener.incoming().flatten() {
        if let Err(e) = answer(stream, &handle) {
            eprintln!("scrape: {e}");
        }
    }
}

fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut request = String::new();
    BufReader::new(&stream).read_line(&mut request)?;
    let (status, body) = if request.starts_with("GET /metrics") {
        handle.run_upkeep();
        ("200 OK", handle.render())
    } else {
        ("404 Not Found", "try /metrics\n".to_string())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before the runtime starts, so that its metric descriptions reach the exporter.
    let handle = install()?;
    let mut config = Config::default();
    config.metrics.enabled = true;
    let rt = Runtime::start(config)
        .await
        .context("starting the sessionbus runtime")?;

    if args.once {
        round(&rt, 0, args.sessions).await?;
        let stop = rt.shutdown().await;
        anyhow::ensure!(stop.sessions.stats.incidents == 0, "incidents in the run");
        print!("{}", handle.render());
        return Ok(());
    }

    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .with_context(|| format!("binding 127.0.0.1:{}", args.port))?;
    eprintln!(
        "serving http://127.0.0.1:{}/metrics (Ctrl-C to stop)",
        args.port
    );
    std::thread::spawn(move || serve(listener, handle));
    let mut n = 0;
    loop {
        tokio::select! {
            result = round(&rt, n, args.sessions) => result?,
            _ = tokio::signal::ctrl_c() => break,
        }
        n += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(args.round_ms)) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let stop = rt.shutdown().await;
    eprintln!(
        "stopped: {} sessions ended at shutdown",
        stop.sessions.sessions_ended
    );
    Ok(())
}
