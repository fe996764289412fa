//! `{p50, p99, max, n}` of the demo's latency samples (microseconds), through
//! an HDR histogram. Three significant digits: a figure is within 0.1 % of the
//! exact sample at its rank (exact below 2 048 µs).

use hdrhistogram::Histogram;
use serde::Serialize;

const SIGNIFICANT_DIGITS: u8 = 3;

/// Nulls when there were no samples.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Percentiles {
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
    pub n: u64,
}

impl Percentiles {
    pub fn of(samples: &[u64]) -> Percentiles {
        // Resizes itself to whatever is recorded.
        let mut histogram =
            Histogram::<u64>::new(SIGNIFICANT_DIGITS).expect("3 significant digits are valid");
        for sample in samples {
            // `record` grows the histogram to fit (`saturating_record` would
            // clamp to its current top instead); it fails only where usize
            // cannot index that far, and then the sample is clamped.
            if histogram.record(*sample).is_err() {
                histogram.saturating_record(*sample);
            }
        }
        let at = |q: f64| (!histogram.is_empty()).then(|| histogram.value_at_quantile(q));
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
            n: histogram.len(),
        }
    }
}

/// `p50 … µs, p99 … µs, max … µs (n=…)`.
impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        write!(
            f,
            "p50 {} µs, p99 {} µs, max {} µs (n={})",
            show(self.p50),
            show(self.p99),
            show(self.max),
            self.n
        )
    }
}
