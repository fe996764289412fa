//! Workload 6: destroy storms. Tiers of sessions, each holding buffers, all
//! closed at once; close → released per session (average and p99) and the
//! share of closes that failed, next to the field report's figures.

use std::time::Instant;

use serde_json::json;

use super::common::*;
use super::direct::{self, PeerKind};
use super::peer_sessionbus;
use super::wl_close::{BUFFER_BYTES, BUFFERS, close_direct, open_direct};

pub use super::field_report::TIERS;
use super::field_report::field;

/// A direct peer's storms: per tier, sessions with buffers set up, then all
/// taken out of the store and released at once.
fn direct_storms(
    tokio: &tokio::runtime::Runtime,
    kind: PeerKind,
    tiers: &[usize],
    errors: &mut Vec<String>,
) -> Vec<(String, usize, Option<Summary>, usize)> {
    let mut skipped = None;
    let Some(started) = direct::start(kind, &mut skipped, errors) else {
        if let Some(why) = skipped {
            println!("{}: skipped in the storms: {why}", kind.name());
        }
        return Vec::new();
    };
    let (pool, baseline, releaser, peer) = started.into_parts();
    let mut rows = Vec::new();
    tokio.block_on(async {
        for &tier in tiers {
            let opened = futures::future::join_all(
                (0..tier).map(|_| open_direct(&pool, &peer, BUFFERS, BUFFER_BYTES)),
            )
            .await;
            let sessions: Vec<_> = opened.into_iter().filter_map(Result::ok).collect();
            let asked = Instant::now();
            let closes = sessions
                .iter()
                .map(|s| close_direct(&pool, &peer, *s, BUFFERS as u64, asked));
            let results = futures::future::join_all(closes).await;
            let samples: Vec<_> = results
                .iter()
                .filter_map(|r| r.as_ref().ok().copied())
                .collect();
            let failed = tier - samples.len();
            rows.push((kind.name(), tier, Summary::of(&samples), failed));
        }
    });
    peer.stop();
    releaser.finish();
    let after = pool.shutdown();
    if after != baseline {
        errors.push(format!(
            "{}: wgpu counters {after:?} after the storms (baseline {baseline:?})",
            kind.name()
        ));
    }
    rows
}

pub fn run(
    tokio: &tokio::runtime::Runtime,
    tiers: &[usize],
    peers: &[PeerKind],
) -> (serde_json::Value, Vec<String>) {
    let mut errors = Vec::new();
    let mut rows = Vec::new();
    tokio.block_on(async {
        let largest = tiers.iter().copied().max().unwrap_or(0);
        let rt = match peer_sessionbus::start(largest, false).await {
            Ok(rt) => rt,
            Err(e) => {
                errors.push(e);
                return;
            }
        };
        let baseline = rt.gpu_counters().expect("the runtime's own wgpu pool");
        for &tier in tiers {
            eprintln!("[stress] {tier} concurrent destroys…");
            let opened =
                peer_sessionbus::open_many(&rt, "storm", tier, BUFFERS, BUFFER_BYTES).await;
            let sessions: Vec<_> = opened
                .into_iter()
                .filter_map(|s| {
                    s.map_err(|e| push_error(&mut errors, format!("sessionbus: storm set-up: {e}")))
                        .ok()
                })
                .collect();
            let asked = Instant::now();
            let receipts = futures::future::join_all(sessions.iter().map(|s| s.close())).await;
            let mut samples = Vec::with_capacity(tier);
            let mut failed = tier - sessions.len();
            for receipt in receipts {
                match receipt {
                    Ok(r) if r.error.is_none() && r.buffers == BUFFERS as u64 => {
                        samples.push(r.released_at.saturating_duration_since(asked))
                    }
                    _ => failed += 1,
                }
            }
            rows.push((
                "sessionbus".to_string(),
                tier,
                Summary::of(&samples),
                failed,
            ));
        }
        peer_sessionbus::finish(rt, baseline, &mut errors).await;
    });
    for &kind in peers {
        eprintln!("[stress] {}…", kind.name());
        let peer_rows = direct_storms(tokio, kind, tiers, &mut errors);
        rows.extend(peer_rows);
    }
    println!();
    println!(
        "6. destroy storms: N sessions with {BUFFERS} × {} KiB each, closed at once; close → released",
        BUFFER_BYTES / 1024
    );
    println!(
        "{:<34} | {:>6} | {:>10} | {:>10} | {:>10} | {:>8} | {:>15} | {:>12}",
        "peer", "tier", "mean", "p99", "max", "errors", "field avg (ms)", "field errors"
    );
    println!("{}", "-".repeat(125));
    let mut json_rows = Vec::new();
    for (peer, tier, s, failed) in &rows {
        let field = field(*tier);
        let rate = 100.0 * *failed as f64 / (*tier).max(1) as f64;
        println!(
            "{peer:<34} | {tier:>6} | {:>10} | {:>10} | {:>10} | {:>7.1}% | {:>15} | {:>12}",
            s.map_or("-".into(), |s| show(s.mean)),
            s.map_or("-".into(), |s| show(s.p99)),
            s.map_or("-".into(), |s| show(s.max)),
            rate,
            field.map_or("-".into(), |f| format!("{:.0}", f.0)),
            field.map_or("-".into(), |f| format!("{:.1}%", f.1)),
        );
        if *failed > 0 {
            errors.push(format!(
                "{peer}: {failed} of {tier} closes failed in the storm"
            ));
        }
        json_rows.push(json!({
            "peer": peer,
            "sessions": tier,
            "close_to_released": summary_json(s),
            "failed": failed,
            "error_percent": rate,
            "field_report": field.map(|f| json!({"avg_ms": f.0, "error_percent": f.1})),
        }));
    }
    println!(
        "(field figures are mapped to the tiers in order: 120 ms / 0 %, 480 ms / 1.2 %, 1100 ms / 8.7 %; none given for 2000)"
    );
    (
        json!({"buffers_per_session": BUFFERS, "buffer_bytes": BUFFER_BYTES, "tiers": json_rows}),
        errors,
    )
}
