//! Deadline → GPU memory released, for sessions that expire on their own.
//!
//! Two peers run one after the other in the same process, on the same kind of
//! wgpu device, with the same TTL draws:
//!
//! - **sessionbus**: a `Runtime` whose sessions carry a TTL. The registry's
//!   deadline queue fires, the session ends, cleanup releases its buffer.
//!   Measured per session from `ReleaseReceipt::deadline.at` (when it was due)
//!   to `released_at` (buffer destroyed, device polled), plus the timer alone
//!   (`fired_at - at`) and the rest (`released_at - fired_at`).
//! - **polling sweeper**, the usual practice: a map session → (deadline,
//!   allocation) behind a mutex, buffers in its own `WgpuPool`, and one thread
//!   that wakes every second, takes every expired entry, calls `release_session`
//!   for each and waits for the reports. Measured from the deadline to
//!   `ReleaseReport::finished_at`.
//!
//! Each session holds one 4 KiB buffer; TTLs are drawn uniformly in 1–3 s from
//! a seeded RNG. Every session must be released exactly once and wgpu's own
//! counters must be back at their baseline, or the bench exits non-zero.
//!
//! ```text
//! cargo bench --bench expiry_lateness                       # 10 000 and 100 000 sessions
//! cargo bench --bench expiry_lateness -- --quick            # 1 000 and 10 000 (or SESSIONBUS_BENCH_QUICK=1)
//! cargo bench --bench expiry_lateness -- --json out.json    # also write the figures as JSON
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sessionbus::{
    AllocRequest, AllocationId, Config, DeadlineKind, Delivery, EndReason, EventKinds,
    ExpiryPolicy, GpuConfig, GpuPool, LifecycleEvent, OpenOptions, Runtime, SessionHandle,
    SessionId, WgpuPool,
};
use tokio::sync::oneshot;

/// One buffer per session.
const BUFFER_BYTES: u64 = 4 * 1024;
/// TTLs are drawn uniformly in this range, in microseconds.
const TTL_MIN_US: u64 = 1_000_000;
const TTL_MAX_US: u64 = 3_000_000;
/// The sweeper's period.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Sessions being opened (and allocated) at once during set-up, for both peers.
const SETUP_CONCURRENCY: usize = 256;
/// Base seed; each workload mixes in its size.
const SEED: u64 = 0x5e55_10b5_e0f1_a7e5;
/// The brief's target: sessionbus p99 deadline → released at 100 000 live sessions.
const TARGET_P99: Duration = Duration::from_millis(5);
const TARGET_SESSIONS: usize = 100_000;
/// Longest silence tolerated while waiting for releases.
const QUIET_LIMIT: Duration = Duration::from_secs(30);

struct Args {
    quick: bool,
    json: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut args = Args {
        quick: std::env::var("SESSIONBUS_BENCH_QUICK").is_ok_and(|v| v == "1"),
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "--quick" {
            args.quick = true;
        } else if arg == "--json" {
            args.json = it.next().map(PathBuf::from);
        } else if let Some(path) = arg.strip_prefix("--json=") {
            args.json = Some(PathBuf::from(path));
        }
        // Anything else (`--bench` from cargo, filters) is ignored.
    }
    args
}

/// p50 / p99 / max over a set of samples (nearest rank).
#[derive(Clone, Copy, Debug)]
struct Summary {
    n: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Summary {
    fn of(samples: &mut [Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Some(Summary {
            n: samples.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: samples[samples.len() - 1],
        })
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "n": self.n,
            "p50_us": micros(self.p50),
            "p99_us": micros(self.p99),
            "max_us": micros(self.max),
        })
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn show(d: Duration) -> String {
    let us = micros(d);
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.3} s", us / 1e6)
    }
}

/// What one peer measured on one workload.
#[derive(Default)]
struct PeerRun {
    /// Deadline → memory back.
    released: Option<Summary>,
    /// sessionbus only: deadline → the timer fired.
    timer: Option<Summary>,
    /// sessionbus only: the timer fired → memory back.
    after_fire: Option<Summary>,
    /// sessionbus only: timer fires (distinct `fired_at`) and sessions ended per fire.
    fires: usize,
    per_fire: Option<(usize, usize, usize)>,
    /// How long opening and allocating every session took.
    setup: Duration,
    /// Sessions whose deadline fell before set-up had finished.
    due_during_setup: usize,
    /// From the end of set-up to the last release.
    window: Duration,
    /// CPU used by each busy thread over `window`, in % of one core (Linux only).
    cpu: Vec<(String, f64)>,
    /// Everything that went wrong; empty in a healthy run.
    errors: Vec<String>,
}

/// CPU time (user + system, in clock ticks) of every thread of this process,
/// by thread id, with its name. Empty where `/proc` is not available.
fn thread_ticks() -> HashMap<u32, (String, u64)> {
    let mut threads = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return threads;
    };
    for task in dir.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let path = task.path();
        let (Ok(stat), Ok(comm)) = (
            std::fs::read_to_string(path.join("stat")),
            std::fs::read_to_string(path.join("comm")),
        ) else {
            continue;
        };
        // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        threads.insert(tid, (comm.trim().to_string(), tick(11) + tick(12)));
    }
    threads
}

/// Per-thread CPU between two readings, in % of one core over `window`,
/// busiest first; threads below 1 % are left out.
fn cpu_use(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
    window: Duration,
) -> Vec<(String, f64)> {
    // Linux reports thread times in USER_HZ, which is 100 on every mainstream platform.
    const TICKS_PER_SEC: f64 = 100.0;
    let mut used: Vec<(String, f64)> = after
        .iter()
        .map(|(tid, (name, ticks))| {
            let start = before.get(tid).map_or(0, |(_, t)| *t);
            let secs = ticks.saturating_sub(start) as f64 / TICKS_PER_SEC;
            (name.clone(), 100.0 * secs / window.as_secs_f64().max(1e-9))
        })
        .filter(|(_, pct)| *pct >= 1.0)
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used
}

fn ttl_draws(n: usize) -> Vec<Duration> {
    let mut rng = StdRng::seed_from_u64(SEED ^ n as u64);
    (0..n)
        .map(|_| Duration::from_micros(rng.random_range(TTL_MIN_US..=TTL_MAX_US)))
        .collect()
}

// ---------------------------------------------------------------- sessionbus

fn run_sessionbus(tokio: &tokio::runtime::Runtime, ttls: &[Duration]) -> (PeerRun, String) {
    tokio.block_on(sessionbus_peer(ttls))
}

async fn sessionbus_peer(ttls: &[Duration]) -> (PeerRun, String) {
    let n = ttls.len();
    let mut run = PeerRun::default();
    let mut config = Config::default();
    config.sessions.max_sessions = config.sessions.max_sessions.max(2 * n);
    config.expiry.idle_timeout_secs = None;
    let rt = match Runtime::start(config).await {
        Ok(rt) => rt,
        Err(e) => {
            run.errors
                .push(format!("sessionbus: runtime did not start: {e}"));
            return (run, String::new());
        }
    };
    let adapter = describe_adapter(rt.adapter());
    let baseline = rt.gpu_counters();
    let Some(mut events) = rt
        .subscribe_channel(EventKinds::RELEASED, Delivery::Reliable)
        .await
    else {
        run.errors.push("sessionbus: subscribe failed".into());
        return (run, adapter);
    };

    // Set-up and the receipts run together: early deadlines can fall while
    // later sessions are still being opened, and the bus must be read meanwhile.
    let started = Instant::now();
    let setup_done: Mutex<Option<Instant>> = Mutex::new(None);
    let setup = async {
        let opened: Vec<Result<SessionHandle, String>> =
            futures::stream::iter(ttls.iter().enumerate())
                .map(|(i, &ttl)| {
                    let rt = &rt;
                    async move {
                        let options = OpenOptions::new(format!("user-{i}")).expiry(ExpiryPolicy {
                            idle_timeout: None,
                            ttl: Some(ttl),
                        });
                        let session = rt
                            .open_with(options)
                            .await
                            .map_err(|e| format!("open: {e}"))?;
                        session
                            .allocate(BUFFER_BYTES)
                            .await
                            .map_err(|e| format!("allocate on {}: {e}", session.id()))?;
                        Ok(session)
                    }
                })
                .buffer_unordered(SETUP_CONCURRENCY)
                .collect()
                .await;
        *setup_done.lock().unwrap() = Some(Instant::now());
        let ticks = thread_ticks();
        (opened, ticks)
    };
    let collect = async {
        let mut receipts = Vec::with_capacity(n);
        let mut problem = None;
        while receipts.len() < n {
            match tokio::time::timeout(QUIET_LIMIT, events.recv()).await {
                Ok(Some(LifecycleEvent::Released(receipt))) => receipts.push(receipt),
                Ok(Some(_)) => {}
                Ok(None) => {
                    problem = Some("the bus closed".to_string());
                    break;
                }
                Err(_) => {
                    problem = Some(format!(
                        "no release for {QUIET_LIMIT:?} with {} of {n} received",
                        receipts.len()
                    ));
                    break;
                }
            }
        }
        (receipts, problem, Instant::now(), thread_ticks())
    };
    let ((opened, ticks_before), (mut receipts, problem, last, ticks_after)) =
        futures::join!(setup, collect);
    let setup_done = setup_done.into_inner().unwrap().unwrap_or(started);
    run.setup = setup_done - started;
    run.window = last.saturating_duration_since(setup_done);
    run.cpu = cpu_use(&ticks_before, &ticks_after, run.window);
    if let Some(problem) = problem {
        run.errors.push(format!("sessionbus: {problem}"));
    }

    let mut handles = Vec::with_capacity(n);
    let mut expected: HashMap<SessionId, u32> = HashMap::with_capacity(n);
    for result in opened {
        match result {
            Ok(session) => {
                expected.insert(session.id(), 0);
                handles.push(session);
            }
            Err(e) => {
                if run.errors.len() < 20 {
                    run.errors.push(format!("sessionbus: set-up: {e}"));
                }
            }
        }
    }

    // Anything past n would be a second release of some session: give it a moment to show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    while let Ok(event) = events.try_recv() {
        if let LifecycleEvent::Released(receipt) = event {
            receipts.push(receipt);
        }
    }

    let mut released = Vec::with_capacity(n);
    let mut timer = Vec::with_capacity(n);
    let mut after_fire = Vec::with_capacity(n);
    let mut bad = 0usize;
    for receipt in &receipts {
        match expected.get_mut(&receipt.id) {
            Some(count) => *count += 1,
            None => bad += 1,
        }
        let Some(deadline) = receipt.deadline else {
            bad += 1;
            continue;
        };
        if receipt.reason != EndReason::TtlExpired
            || deadline.kind != DeadlineKind::Ttl
            || receipt.buffers != 1
            || receipt.error.is_some()
        {
            if run.errors.len() < 20 {
                run.errors.push(format!(
                    "sessionbus: unexpected receipt for {}: reason {}, {} buffers, error {:?}",
                    receipt.id, receipt.reason, receipt.buffers, receipt.error
                ));
            }
            bad += 1;
        }
        released.push(receipt.released_at.saturating_duration_since(deadline.at));
        timer.push(deadline.fired_at.saturating_duration_since(deadline.at));
        after_fire.push(
            receipt
                .released_at
                .saturating_duration_since(deadline.fired_at),
        );
        run.due_during_setup += (deadline.at < setup_done) as usize;
    }
    // Sessions that share a `fired_at` were ended by the same timer fire.
    let mut fires: HashMap<Instant, usize> = HashMap::new();
    for receipt in &receipts {
        if let Some(deadline) = receipt.deadline {
            *fires.entry(deadline.fired_at).or_default() += 1;
        }
    }
    let mut sizes: Vec<usize> = fires.into_values().collect();
    sizes.sort_unstable();
    run.fires = sizes.len();
    if !sizes.is_empty() {
        let at = |q: f64| sizes[((sizes.len() - 1) as f64 * q).round() as usize];
        run.per_fire = Some((at(0.5), at(0.99), sizes[sizes.len() - 1]));
    }
    let never = expected.values().filter(|&&c| c == 0).count();
    let twice = expected.values().filter(|&&c| c > 1).count();
    if never > 0 || twice > 0 || bad > 0 || expected.len() != n {
        run.errors.push(format!(
            "sessionbus: {} opened of {n}; {never} never released, {twice} released more than once, {bad} bad receipts",
            expected.len()
        ));
    }
    let now = rt.gpu_counters();
    if now != baseline {
        run.errors.push(format!(
            "sessionbus: wgpu counters not at baseline after every release: {now:?} vs {baseline:?}"
        ));
    }
    if let Some(stats) = rt.stats().await {
        if stats.incidents > 0 || stats.live > 0 || stats.releasing > 0 {
            run.errors.push(format!(
                "sessionbus: registry after the run: {} incidents, {} live, {} releasing",
                stats.incidents, stats.live, stats.releasing
            ));
        }
    }
    drop(handles);
    let report = rt.shutdown().await;
    if report.gpu_after != baseline || report.sessions.sessions_ended != 0 {
        run.errors.push(format!(
            "sessionbus: after shutdown wgpu counters {:?} (baseline {baseline:?}), {} sessions ended by shutdown",
            report.gpu_after, report.sessions.sessions_ended
        ));
    }

    run.released = Summary::of(&mut released);
    run.timer = Summary::of(&mut timer);
    run.after_fire = Summary::of(&mut after_fire);
    (run, adapter)
}

// ----------------------------------------------------------- polling sweeper

/// What the sweeper tracks per session.
struct Entry {
    deadline: Instant,
    /// Kept as a real sweeper would; releasing by session frees it.
    _allocation: AllocationId,
}

type Entries = Arc<Mutex<HashMap<SessionId, Entry>>>;

/// What the sweeper thread saw.
struct SweepLog {
    /// Deadline → `ReleaseReport::finished_at`.
    released: Vec<Duration>,
    deadlines: Vec<Instant>,
    /// Reports that freed something other than one buffer, or never came.
    bad: usize,
}

/// Wakes every `SWEEP_EVERY`, releases everything past its deadline, and waits
/// for the pool's reports; stops after `n` releases or when told to.
fn spawn_sweeper(
    pool: Arc<WgpuPool>,
    entries: Entries,
    n: usize,
    stop: Arc<AtomicBool>,
) -> JoinHandle<SweepLog> {
    std::thread::Builder::new()
        .name("polling-sweeper".into())
        .spawn(move || {
            let mut log = SweepLog {
                released: Vec::with_capacity(n),
                deadlines: Vec::with_capacity(n),
                bad: 0,
            };
            let mut tick = Instant::now();
            while log.released.len() + log.bad < n && !stop.load(Ordering::Relaxed) {
                tick += SWEEP_EVERY;
                std::thread::sleep(tick.saturating_duration_since(Instant::now()));
                let now = Instant::now();
                let mut expired = Vec::new();
                entries.lock().unwrap().retain(|&session, entry| {
                    let due = entry.deadline <= now;
                    if due {
                        expired.push((session, entry.deadline));
                    }
                    !due
                });
                let waiting: Vec<_> = expired
                    .into_iter()
                    .map(|(session, deadline)| {
                        let (reply, answer) = oneshot::channel();
                        pool.release_session(session, reply);
                        (deadline, answer)
                    })
                    .collect();
                for (deadline, answer) in waiting {
                    match answer.blocking_recv() {
                        Ok(report) if report.buffers == 1 => {
                            log.released
                                .push(report.finished_at.saturating_duration_since(deadline));
                            log.deadlines.push(deadline);
                        }
                        _ => log.bad += 1,
                    }
                }
            }
            log
        })
        .expect("spawn the sweeper thread")
}

fn run_sweeper(tokio: &tokio::runtime::Runtime, ttls: &[Duration]) -> PeerRun {
    let n = ttls.len();
    let mut run = PeerRun::default();
    let pool = match WgpuPool::start(&GpuConfig::default()) {
        Ok(pool) => Arc::new(pool),
        Err(e) => {
            run.errors.push(format!("sweeper: pool did not start: {e}"));
            return run;
        }
    };
    let baseline = pool.counters();
    let entries: Entries = Arc::new(Mutex::new(HashMap::with_capacity(n)));
    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = spawn_sweeper(pool.clone(), entries.clone(), n, stop.clone());

    let started = Instant::now();
    let failures: Vec<String> = tokio.block_on(
        futures::stream::iter(ttls.iter().copied())
            .map(|ttl| {
                let (pool, entries) = (&pool, &entries);
                async move {
                    let session = SessionId::random();
                    let opened = Instant::now();
                    let (reply, answer) = oneshot::channel();
                    let id = AllocationId::next();
                    pool.allocate(
                        AllocRequest {
                            session,
                            id,
                            bytes: BUFFER_BYTES,
                        },
                        reply,
                    );
                    match answer.await {
                        Ok(Ok(_)) => {
                            let entry = Entry {
                                deadline: opened + ttl,
                                _allocation: id,
                            };
                            entries.lock().unwrap().insert(session, entry);
                            None
                        }
                        Ok(Err(e)) => Some(format!("allocate: {e}")),
                        Err(_) => Some("allocate: no reply".to_string()),
                    }
                }
            })
            .buffer_unordered(SETUP_CONCURRENCY)
            .filter_map(futures::future::ready)
            .collect(),
    );
    let setup_done = Instant::now();
    let ticks_before = thread_ticks();
    run.setup = setup_done - started;
    let opened = n - failures.len();
    run.errors.extend(
        failures
            .iter()
            .take(20)
            .map(|e| format!("sweeper: set-up: {e}")),
    );

    // With failures the thread would wait for releases that cannot come.
    if opened < n {
        stop.store(true, Ordering::Relaxed);
    }
    let log = match sweeper.join() {
        Ok(log) => log,
        Err(_) => {
            run.errors
                .push("sweeper: the sweeper thread panicked".into());
            return run;
        }
    };
    run.window = setup_done.elapsed();
    run.cpu = cpu_use(&ticks_before, &thread_ticks(), run.window);
    let left = entries.lock().unwrap().len();
    if log.released.len() != opened || log.bad > 0 || left > 0 {
        run.errors.push(format!(
            "sweeper: {} released of {opened} opened, {} bad reports, {left} still in the map",
            log.released.len(),
            log.bad
        ));
    }
    let now = pool.counters();
    if now != baseline {
        run.errors.push(format!(
            "sweeper: wgpu counters not at baseline after every release: {now:?} vs {baseline:?}"
        ));
    }
    let after = pool.shutdown();
    if after != baseline {
        run.errors.push(format!(
            "sweeper: after shutdown wgpu counters {after:?} (baseline {baseline:?})"
        ));
    }
    run.due_during_setup = log.deadlines.iter().filter(|&&d| d < setup_done).count();
    let mut released = log.released;
    run.released = Summary::of(&mut released);
    run
}

// -------------------------------------------------------------------- report

fn describe_adapter(info: &sessionbus::PoolInfo) -> String {
    format!(
        "{} ({}, device type {})",
        info.adapter, info.backend, info.device_type
    )
}

fn machine() -> (String, usize, usize) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name").then(|| value.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let listed = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    let usable = std::thread::available_parallelism().map_or(0, |n| n.get());
    (model, listed, usable)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args();
    let workloads: &[usize] = if args.quick {
        &[1_000, 10_000]
    } else {
        &[10_000, TARGET_SESSIONS]
    };
    let (cpu, listed, usable) = machine();
    let machine_line = format!("machine: {cpu}, {listed} cores listed, {usable} usable");
    println!("{machine_line}");

    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let mut adapter = String::new();
    let mut results = Vec::new();
    for &n in workloads {
        let ttls = ttl_draws(n);
        eprintln!("[{n} sessions] sessionbus…");
        let (bus, bus_adapter) = run_sessionbus(&tokio, &ttls);
        if adapter.is_empty() {
            adapter = bus_adapter;
            println!("adapter: {adapter}");
        }
        eprintln!(
            "[{n} sessions] sessionbus set-up {:?}; polling sweeper…",
            bus.setup
        );
        let sweep = run_sweeper(&tokio, &ttls);
        eprintln!("[{n} sessions] sweeper set-up {:?}", sweep.setup);
        results.push((n, bus, sweep));
    }

    println!();
    println!(
        "deadline → GPU memory released; {} KiB buffer per session, TTL uniform in {}–{} s, sweeper period {:?}",
        BUFFER_BYTES / 1024,
        TTL_MIN_US / 1_000_000,
        TTL_MAX_US / 1_000_000,
        SWEEP_EVERY
    );
    println!(
        "{:>9} | {:<29} | {:>7} | {:>10} | {:>10} | {:>10}",
        "sessions", "peer", "n", "p50", "p99", "max"
    );
    println!("{}", "-".repeat(90));
    let row = |n: usize, peer: &str, s: &Option<Summary>| match s {
        Some(s) => println!(
            "{n:>9} | {peer:<29} | {:>7} | {:>10} | {:>10} | {:>10}",
            s.n,
            show(s.p50),
            show(s.p99),
            show(s.max)
        ),
        None => println!(
            "{n:>9} | {peer:<29} | {:>7} | {:>10} | {:>10} | {:>10}",
            0, "-", "-", "-"
        ),
    };
    let mut json_workloads = Vec::new();
    let mut errors = Vec::new();
    for (n, bus, sweep) in &results {
        row(*n, "sessionbus", &bus.released);
        row(*n, "  timer only (fired - due)", &bus.timer);
        row(*n, "  fired → released", &bus.after_fire);
        row(*n, "polling sweeper (1 s)", &sweep.released);
        let ratios = match (&bus.released, &sweep.released) {
            (Some(b), Some(s)) => {
                let (p50, p99) = (ratio(s.p50, b.p50), ratio(s.p99, b.p99));
                println!(
                    "{n:>9} | {:<29} | {:>7} | {:>9.0}× | {:>9.0}× | {:>10}",
                    "ratio sweeper / sessionbus", "", p50, p99, ""
                );
                Some((p50, p99))
            }
            _ => None,
        };
        println!(
            "{:>9} | set-up (open + allocate) {} for sessionbus, {} for the sweeper; deadlines during set-up: {} / {}",
            "",
            show(bus.setup),
            show(sweep.setup),
            bus.due_during_setup,
            sweep.due_during_setup
        );
        if let Some((p50, p99, max)) = bus.per_fire {
            println!(
                "{:>9} | sessionbus timer fires: {}; sessions ended per fire p50 {p50}, p99 {p99}, max {max}",
                "", bus.fires
            );
        }
        for (peer, r) in [("sessionbus", bus), ("sweeper", sweep)] {
            let threads: Vec<String> = r
                .cpu
                .iter()
                .map(|(name, pct)| format!("{name} {pct:.0}%"))
                .collect();
            println!(
                "{:>9} | {peer} CPU over the {} after set-up: {}",
                "",
                show(r.window),
                if threads.is_empty() {
                    "n/a".to_string()
                } else {
                    threads.join(", ")
                }
            );
        }
        println!("{}", "-".repeat(90));
        errors.extend(bus.errors.iter().cloned());
        errors.extend(sweep.errors.iter().cloned());
        let peer_json = |run: &PeerRun| {
            json!({
                "deadline_to_released": run.released.map(|s| s.json()),
                "setup_us": micros(run.setup),
                "deadlines_during_setup": run.due_during_setup,
                "window_us": micros(run.window),
                "thread_cpu_percent": run.cpu.iter().map(|(name, pct)| json!({"thread": name, "percent": pct})).collect::<Vec<_>>(),
                "errors": run.errors,
            })
        };
        let mut bus_json = peer_json(bus);
        bus_json["timer_lateness"] = json!(bus.timer.map(|s| s.json()));
        bus_json["fired_to_released"] = json!(bus.after_fire.map(|s| s.json()));
        bus_json["timer_fires"] = json!(bus.fires);
        bus_json["sessions_per_fire"] = json!(
            bus.per_fire
                .map(|(p50, p99, max)| json!({"p50": p50, "p99": p99, "max": max}))
        );
        json_workloads.push(json!({
            "sessions": n,
            "sessionbus": bus_json,
            "polling_sweeper": peer_json(sweep),
            "ratio_sweeper_over_sessionbus": ratios.map(|(p50, p99)| json!({"p50": p50, "p99": p99})),
        }));
    }

    let target = results
        .iter()
        .find(|(n, _, _)| *n == TARGET_SESSIONS)
        .and_then(|(_, bus, _)| bus.released);
    match target {
        Some(s) => println!(
            "target: sessionbus p99 ≤ {} at {TARGET_SESSIONS} sessions: {} (p99 {})",
            show(TARGET_P99),
            if s.p99 <= TARGET_P99 { "met" } else { "MISSED" },
            show(s.p99)
        ),
        None => println!(
            "target: sessionbus p99 ≤ {} at {TARGET_SESSIONS} sessions: not measured in this run",
            show(TARGET_P99)
        ),
    }

    if let Some(path) = &args.json {
        let document = json!({
            "bench": "expiry_lateness",
            "machine": {"cpu": cpu, "cores_listed": listed, "cores_usable": usable},
            "adapter": adapter,
            "buffer_bytes": BUFFER_BYTES,
            "ttl_us": {"min": TTL_MIN_US, "max": TTL_MAX_US},
            "sweep_period_us": micros(SWEEP_EVERY),
            "seed": SEED,
            "workloads": json_workloads,
            "target": {
                "sessions": TARGET_SESSIONS,
                "p99_us": micros(TARGET_P99),
                "measured_p99_us": target.map(|s| micros(s.p99)),
                "met": target.map(|s| s.p99 <= TARGET_P99),
            },
            "ok": errors.is_empty(),
        });
        let text = serde_json::to_string_pretty(&document).expect("JSON");
        if let Err(e) = std::fs::write(path, text + "\n") {
            errors.push(format!("cannot write {}: {e}", path.display()));
        } else {
            println!("wrote {}", path.display());
        }
    }

    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        std::process::exit(1);
    }
}
