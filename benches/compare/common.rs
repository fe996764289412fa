//! Shared by every workload: samples and their summary, CPU and memory
//! readings from `/proc`, the machine, and formatting.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

pub use sessionbus_testkit::percentiles;

use percentiles::Latencies;

/// TTLs are drawn uniformly in this range, in microseconds.
pub const TTL_MIN_US: u64 = 1_000_000;
pub const TTL_MAX_US: u64 = 3_000_000;
/// Sessions being opened (and allocated) at once during set-up, for every peer.
pub const SETUP_CONCURRENCY: usize = 256;
/// Base seed; each workload mixes in its size.
pub const SEED: u64 = 0x5e55_10b5_e0f1_a7e5;
/// Longest silence tolerated while waiting for releases.
pub const QUIET_LIMIT: Duration = Duration::from_secs(30);
/// Errors kept per peer and workload; the rest are counted.
pub const MAX_ERRORS: usize = 20;

/// p50 / p99 / max (and mean) over a set of samples.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub n: usize,
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let latencies: Latencies = samples.iter().collect();
        Some(Summary {
            n: samples.len(),
            mean: latencies.mean()?,
            p50: latencies.at(0.50)?,
            p99: latencies.at(0.99)?,
            max: latencies.at(1.0)?,
        })
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "n": self.n,
            "mean_us": micros(self.mean),
            "p50_us": micros(self.p50),
            "p99_us": micros(self.p99),
            "max_us": micros(self.max),
        })
    }
}

pub fn summary_json(s: &Option<Summary>) -> serde_json::Value {
    s.map_or(serde_json::Value::Null, |s| s.json())
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn show(d: Duration) -> String {
    let us = micros(d);
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.3} s", us / 1e6)
    }
}

pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

/// (p50, p99) of `peer` over those of `bus`, when both were measured.
pub fn ratios(bus: &Option<Summary>, peer: &Option<Summary>) -> Option<(f64, f64)> {
    let (b, p) = (bus.as_ref()?, peer.as_ref()?);
    Some((ratio(p.p50, b.p50), ratio(p.p99, b.p99)))
}

pub fn ratios_json(ratios: Option<(f64, f64)>) -> serde_json::Value {
    ratios.map_or(
        serde_json::Value::Null,
        |(p50, p99)| json!({"p50": p50, "p99": p99}),
    )
}

/// The cells of a latency row: n, mean, p50, p99, max and the ratios to sessionbus.
pub fn summary_cells(s: &Summary, ratios: Option<(f64, f64)>) -> String {
    let times = |r: f64| {
        if r < 10.0 {
            format!("{r:.1}×")
        } else {
            format!("{r:.0}×")
        }
    };
    format!(
        "{:>7} | {:>10} | {:>10} | {:>10} | {:>10} | {:>9} | {:>9}",
        s.n,
        show(s.mean),
        show(s.p50),
        show(s.p99),
        show(s.max),
        ratios.map_or(String::new(), |r| times(r.0)),
        ratios.map_or(String::new(), |r| times(r.1)),
    )
}

/// "met (p99 …)" / "MISSED (p99 …)" / "not measured".
pub fn p99_verdict(s: &Option<Summary>, target: Duration) -> String {
    match s {
        Some(s) => format!(
            "{} (p99 {})",
            if s.p99 <= target { "met" } else { "MISSED" },
            show(s.p99)
        ),
        None => "not measured in this run".into(),
    }
}

/// Linux reports thread and process times in USER_HZ, which is 100 on every mainstream platform.
const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime (clock ticks) from the text of a `stat` file.
fn stat_ticks(stat: &str) -> Option<u64> {
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(tick(11)? + tick(12)?)
}

/// CPU time (user + system, in clock ticks) of every thread of this process,
/// by thread id, with its name. Empty where `/proc` is not available.
pub fn thread_ticks() -> HashMap<u32, (String, u64)> {
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
        if let Some(ticks) = stat_ticks(&stat) {
            threads.insert(tid, (comm.trim().to_string(), ticks));
        }
    }
    threads
}

/// CPU time used by the whole process so far (user + system), from `/proc/self/stat`.
pub fn process_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_ticks(&s))
        .unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / TICKS_PER_SEC)
}

/// CPU time run so far by every live thread of this process, in nanoseconds
/// (the first field of `/proc/self/task/*/schedstat`): finer than the 10 ms
/// ticks of `/proc/self/stat`. `None` where the kernel does not expose it.
pub fn threads_cpu_precise() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let text = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// Per-thread CPU between two readings, in % of one core over `window`,
/// busiest first; threads below 1 % are left out.
pub fn cpu_use(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
    window: Duration,
) -> Vec<(String, f64)> {
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

pub fn cpu_line(cpu: &[(String, f64)]) -> String {
    if cpu.is_empty() {
        return "n/a".to_string();
    }
    cpu.iter()
        .map(|(name, pct)| format!("{name} {pct:.0}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn cpu_json(cpu: &[(String, f64)]) -> serde_json::Value {
    cpu.iter()
        .map(|(name, pct)| json!({"thread": name, "percent": pct}))
        .collect()
}

/// Resident memory of this process, from `/proc/self/status`.
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Bytes the allocator has handed out and not had back (glibc's
/// `mallinfo2`, every arena), where there is glibc: set beside the resident
/// figure, it tells the records' own size from the allocator's fragmentation.
pub fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        #[repr(C)]
        struct MallInfo2 {
            arena: usize,
            ordblks: usize,
            smblks: usize,
            hblks: usize,
            hblkhd: usize,
            usmblks: usize,
            fsmblks: usize,
            uordblks: usize,
            fordblks: usize,
            keepcost: usize,
        }
        unsafe extern "C" {
            fn mallinfo2() -> MallInfo2;
        }
        // SAFETY: mallinfo2 takes nothing and returns a plain struct (glibc ≥ 2.33).
        let info = unsafe { mallinfo2() };
        Some((info.uordblks + info.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// `n` TTLs uniform in `TTL_MIN_US` .. `TTL_MIN_US + spread` (seeded; the
/// default spread is `TTL_MAX_US - TTL_MIN_US`).
pub fn ttl_draws(n: usize, spread: Duration) -> Vec<Duration> {
    let mut rng = StdRng::seed_from_u64(SEED ^ n as u64);
    let max = TTL_MIN_US + u64::try_from(spread.as_micros()).unwrap_or(u64::MAX - TTL_MIN_US);
    (0..n)
        .map(|_| Duration::from_micros(rng.random_range(TTL_MIN_US..=max)))
        .collect()
}

pub fn describe_adapter(info: &sessionbus::pool::PoolInfo) -> String {
    format!(
        "{} ({}, device type {})",
        info.adapter, info.backend, info.device_type
    )
}

/// CPU model, cores listed in `/proc/cpuinfo`, cores this process may use.
pub fn machine() -> (String, usize, usize) {
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

/// Keeps the first `MAX_ERRORS` errors, then counts.
pub fn push_error(errors: &mut Vec<String>, e: String) {
    if errors.len() < MAX_ERRORS {
        errors.push(e);
    } else if errors.len() == MAX_ERRORS {
        errors.push("(further errors left out)".into());
    }
}
