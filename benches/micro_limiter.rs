//! The release pacer's limiter check: governor's GCRA `check_n`, on a limiter
//! built like the ones `cleanup::Pacer` builds (one per load tier,
//! `Quota::per_second(rate).allow_burst(burst)`, here the default `[release]`
//! config's first tier; the pacer reads the engine clock, this one governor's
//! default clock).
//! The pacer is crate-private, so the limiter is rebuilt here from the same
//! public config.
//!
//! What it measures: one call, i.e. one clock read and one compare-and-swap
//! on the limiter's state, on one uncontended thread. It does not include the
//! pacer's wait (`until_n_ready`) once a burst is used up.
//!
//! - `limiter/check_n_admitted/<n>`: `check_n(n)` answers `Ok(Ok(_))`, the
//!   pacer's fast path when a session of `n` buffers ends (n = 1 and 4; 4 is
//!   the close bench's buffers per session). The limiter is rebuilt, outside
//!   the timing, before its burst could run out, so every call admits.
//! - `limiter/check_n_refused/1`: the same limiter type with its burst used
//!   up and one buffer a day, so every call answers `Ok(Err(NotUntil))`: the cost
//!   of being told to wait.
//!
//! ```text
//! cargo bench -p sessionbus-benches --bench micro_limiter
//! ```

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sessionbus::config::ReleaseConfig;

fn pacer_limiter(config: &ReleaseConfig) -> DefaultDirectRateLimiter {
    let tier = &config.tiers[0];
    let rate = NonZeroU32::new(tier.rate).expect("validated");
    let burst = NonZeroU32::new(tier.burst).expect("validated");
    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

fn micro_limiter(c: &mut Criterion) {
    let config = ReleaseConfig::default();
    let mut group = c.benchmark_group("limiter");
    for n in [1u32, 4] {
        let step = NonZeroU32::new(n).unwrap();
        // Checks per fresh limiter: within the burst even if no time passed.
        let per_limiter = u64::from(config.tiers[0].burst / n);
        group.bench_function(BenchmarkId::new("check_n_admitted", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let batch = left.min(per_limiter);
                    let limiter = pacer_limiter(&config);
                    let start = Instant::now();
                    let mut admitted = 0u64;
                    for _ in 0..batch {
                        admitted +=
                            u64::from(black_box(&limiter).check_n(step).is_ok_and(|ok| ok.is_ok()));
                    }
                    total += start.elapsed();
                    assert_eq!(admitted, batch, "every check within the burst admits");
                    left -= batch;
                }
                total
            })
        });
    }

    // One buffer a day: nothing comes back while the bench runs.
    let exhausted = RateLimiter::direct(
        Quota::with_period(Duration::from_secs(86_400))
            .expect("non-zero period")
            .allow_burst(NonZeroU32::new(config.tiers[0].burst).unwrap()),
    );
    let burst = NonZeroU32::new(config.tiers[0].burst).unwrap();
    assert!(exhausted.check_n(burst).is_ok_and(|ok| ok.is_ok()));
    group.bench_function(BenchmarkId::new("check_n_refused", 1), |b| {
        b.iter(|| {
            let answer = black_box(&exhausted).check_n(NonZeroU32::MIN);
            assert!(answer.is_ok_and(|ok| ok.is_err()));
        })
    });
    group.finish();
}

criterion_group!(benches, micro_limiter);
criterion_main!(benches);
