//! The metrics the runtime emits, scraped the way Prometheus would, after a
//! real workload on a real adapter: closes, disconnects, TTL expiries, a
//! shutdown, a context reset, and releases paced by the limiter. The counts
//! must match what the bus said happened, the names must follow Prometheus
//! conventions, histograms must have the explicit buckets, and no label
//! value may be a session id.
//!
//! One test per file: the recorder is global to the process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sessionbus::config::*;
use sessionbus::metrics::names::{self, Kind};
use sessionbus::*;
use sessionbus_testkit::*;

const CLOSED: usize = 12;
const DISCONNECTED: usize = 5;
const EXPIRED: usize = 3;
const KEPT: usize = 4;
const BUFFERS: u64 = 2;

fn install_prometheus() -> PrometheusHandle {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in names::HISTOGRAM_BUCKETS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            .expect("buckets are not empty");
    }
    builder
        .install_recorder()
        .expect("first recorder in this process")
}

/// One sample line of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(scrape: &str) -> (Vec<Sample>, HashMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = HashMap::new();
    for line in scrape.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("label=value");
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value: value.parse().unwrap_or_else(|_| panic!("number in {line}")),
        });
    }
    (samples, types)
}

/// The value of the series `name` whose labels include `labels` (0 if absent).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_real_workload() {
    let prometheus = install_prometheus();
    let mut config = Config::default();
    config.metrics.enabled = true;
    // A narrow limiter, so that closing a dozen sessions at once is paced.
    config.release = ReleaseConfig::fixed(PaceUnit::Buffers, 200, BUFFERS as u32, 64);
    let Harness {
        rt,
        baseline,
        mut events,
    } = start_with(config).await;

    let mut ids = BTreeSet::new();
    let open = |owner: String, ttl: Option<Duration>| {
        let rt = &rt;
        async move {
            let mut options = OpenOptions::new(owner);
            if let Some(ttl) = ttl {
                options = options.expiry(ExpiryPolicy {
                    idle_timeout: None,
                    ttl: Some(ttl),
                });
            }
            let session = rt.open_with(options).await.expect("open");
            for _ in 0..BUFFERS {
                session.allocate(64 * KIB).await.expect("allocate");
            }
            session
        }
    };
    let mut closing = Vec::new();
    for i in 0..CLOSED {
        closing.push(open(format!("closer-{i}"), None).await);
    }
    let mut dropping = Vec::new();
    for i in 0..DISCONNECTED {
        dropping.push(open(format!("leaver-{i}"), None).await);
    }
    let mut expiring = Vec::new();
    for i in 0..EXPIRED {
        expiring.push(open(format!("sleeper-{i}"), Some(Duration::from_millis(50))).await);
    }
    let mut kept = Vec::new();
    for i in 0..KEPT {
        kept.push(open(format!("stayer-{i}"), None).await);
    }
    for s in closing
        .iter()
        .chain(&dropping)
        .chain(&expiring)
        .chain(&kept)
    {
        ids.insert(s.id().to_string());
    }

    // A topic change resets one conversation's context (not an end).
    let talker = &closing[0];
    talker
        .chat(Turn::new().embedding(vec![1.0, 0.0, 0.0]))
        .await
        .unwrap();
    let ack = talker
        .chat(Turn::new().embedding(vec![0.0, 1.0, 0.0]))
        .await
        .unwrap();
    assert!(ack.context.is_stale(), "an orthogonal turn is a new topic");

    // A dozen closes at once: more buffers than the limiter's burst.
    let receipts = futures::future::join_all(closing.iter().map(|s| s.close())).await;
    assert!(receipts.iter().all(Result::is_ok));
    drop(closing);
    drop(dropping);
    // Wait (on events, not time) for the disconnects and the expiries.
    let mut seen = Vec::new();
    let mut released = 0;
    while released < CLOSED + DISCONNECTED + EXPIRED {
        let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("a release arrives")
            .expect("bus open");
        released += matches!(event, LifecycleEvent::Released(_)) as usize;
        seen.push(event);
    }
    // The kept sessions are still held: shutdown ends them (a drop would be a disconnect).
    let stop = rt.shutdown().await;
    drop((expiring, kept));
    while let Some(event) = events.recv().await {
        seen.push(event);
    }
    assert_eq!(
        stop.gpu_after.expect("wgpu counters"),
        baseline,
        "wgpu counters back at baseline"
    );

    // What the bus says happened.
    let mut ended_by: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut buffers, mut bytes, mut paced, mut resets, mut expiries) = (0, 0, 0, 0, 0);
    for event in &seen {
        match event {
            LifecycleEvent::Ended(end) => *ended_by.entry(end.reason.as_str()).or_default() += 1,
            LifecycleEvent::Released(r) => {
                buffers += r.buffers;
                bytes += r.bytes;
                paced += (!r.paced_for.is_zero()) as u64;
                expiries += r.deadline.is_some() as u64;
            }
            LifecycleEvent::ContextReset(_) => resets += 1,
            LifecycleEvent::Started(_) => {}
            _ => {}
        }
    }
    assert_eq!(ended_by["closed"], CLOSED as u64);
    assert_eq!(ended_by["disconnected"], DISCONNECTED as u64);
    assert_eq!(ended_by["ttl_expired"], EXPIRED as u64);
    assert_eq!(ended_by["shutdown"], KEPT as u64);
    assert!(paced > 0, "the narrow limiter made some release wait");

    let scrape = prometheus.render();
    let (samples, types) = parse(&scrape);

    // Every documented metric is exported under its name, with its type.
    for d in names::ALL {
        let expected = match d.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        assert_eq!(
            types.get(d.name).map(String::as_str),
            Some(expected),
            "{} missing or of the wrong type in:\n{scrape}",
            d.name
        );
    }
    // Nothing undocumented, and every sample follows the naming rules.
    for s in &samples {
        assert!(s.name.starts_with("sessionbus_"), "{}", s.name);
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                s.name
                    .strip_suffix(suffix)
                    .filter(|b| types.get(*b).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&s.name);
        let d = names::ALL
            .iter()
            .find(|d| d.name == base)
            .unwrap_or_else(|| panic!("{} is not documented in names::ALL", s.name));
        if d.kind == Kind::Counter {
            assert!(d.name.ends_with("_total"));
        }
        for (key, label) in &s.labels {
            assert!(
                Some(key.as_str()) == d.label || key == "le",
                "{}: unexpected label {key}",
                s.name
            );
            assert!(
                !ids.contains(label),
                "{}: a session id as a label value",
                s.name
            );
            assert!(
                !(label.len() == 32 && label.chars().all(|c| c.is_ascii_hexdigit())),
                "{}: label value {label} looks like a session id",
                s.name
            );
        }
    }
    for id in &ids {
        assert!(
            !scrape.contains(id.as_str()),
            "session id {id} in the scrape"
        );
    }

    // Counters match the bus, reason by reason.
    for (reason, n) in &ended_by {
        let labels = [("reason", *reason)];
        assert_eq!(
            value(&samples, names::SESSIONS_ENDED_TOTAL, &labels),
            *n as f64,
            "{reason}"
        );
        assert_eq!(
            value(&samples, names::SESSIONS_RELEASED_TOTAL, &labels),
            *n as f64,
            "{reason}"
        );
        let count = format!("{}_count", names::CLOSE_TO_RELEASE_SECONDS);
        assert_eq!(value(&samples, &count, &labels), *n as f64, "{reason}");
    }
    let opened = (CLOSED + DISCONNECTED + EXPIRED + KEPT) as f64;
    assert_eq!(value(&samples, names::SESSIONS_STARTED_TOTAL, &[]), opened);
    assert_eq!(
        value(&samples, names::GPU_RELEASED_BUFFERS_TOTAL, &[]),
        buffers as f64
    );
    assert_eq!(
        value(&samples, names::GPU_RELEASED_BYTES_TOTAL, &[]),
        bytes as f64
    );
    assert_eq!(buffers, opened as u64 * BUFFERS);
    assert_eq!(
        value(&samples, names::LIMITER_WAITS_TOTAL, &[]),
        paced as f64
    );
    let waits = format!("{}_count", names::LIMITER_WAIT_SECONDS);
    assert_eq!(value(&samples, &waits, &[]), paced as f64);
    assert_eq!(
        value(
            &samples,
            names::CONTEXT_RESETS_TOTAL,
            &[("reason", "low_similarity")]
        ),
        resets as f64
    );
    assert_eq!(resets, 1);
    let lateness = format!("{}_count", names::EXPIRY_LATENESS_SECONDS);
    assert_eq!(
        value(&samples, &lateness, &[("reason", "ttl_expired")]),
        expiries as f64
    );
    assert_eq!(expiries, EXPIRED as u64);
    assert_eq!(value(&samples, names::INCIDENTS_TOTAL, &[]), 0.0);
    assert_eq!(value(&samples, names::RELEASE_FAILURES_TOTAL, &[]), 0.0);
    assert_eq!(value(&samples, names::HOOK_FAILURES_TOTAL, &[]), 0.0);

    // The explicit buckets were applied: a true histogram with our bounds.
    let bucket = format!("{}_bucket", names::CLOSE_TO_RELEASE_SECONDS);
    let bounds: BTreeSet<String> = samples
        .iter()
        .filter(|s| {
            s.name == bucket && s.labels.get("reason").map(String::as_str) == Some("closed")
        })
        .map(|s| s.labels["le"].clone())
        .collect();
    assert_eq!(
        bounds.len(),
        names::CLOSE_TO_RELEASE_BUCKETS.len() + 1,
        "{bounds:?}"
    );
    assert!(bounds.contains("+Inf"));
    let inf = value(&samples, &bucket, &[("reason", "closed"), ("le", "+Inf")]);
    assert_eq!(inf, CLOSED as f64);

    // The last sample was taken after the shutdown: nothing live, nothing on the GPU.
    assert_eq!(value(&samples, names::SESSIONS, &[("state", "live")]), 0.0);
    assert_eq!(
        value(&samples, names::SESSIONS, &[("state", "releasing")]),
        0.0
    );
    assert_eq!(value(&samples, names::RELEASE_QUEUE_DEPTH, &[]), 0.0);
    assert_eq!(value(&samples, names::GPU_LIVE_BYTES, &[]), 0.0);
    assert_eq!(value(&samples, names::GPU_LIVE_BUFFERS, &[]), 0.0);
    let peak = value(&samples, names::GPU_PEAK_BYTES, &[]);
    assert!(
        peak >= (opened as u64 * BUFFERS * 64 * KIB) as f64,
        "every session held its buffers at once: peak {peak}"
    );
}
