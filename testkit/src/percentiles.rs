//! Percentiles (p50, p99, max, mean) of the benches' samples, through an HDR
//! histogram: the one place every bench takes its percentiles from.
//!
//! Three significant digits: every figure is within 0.1 % of the exact sample
//! at its rank, far below the run-to-run noise of anything measured here.

use std::time::Duration;

use hdrhistogram::Histogram;

const SIGNIFICANT_DIGITS: u8 = 3;

/// Samples of a count (sessions per timer fire, ...).
pub struct Percentiles {
    histogram: Histogram<u64>,
}

impl Percentiles {
    pub fn new() -> Percentiles {
        Percentiles {
            // Resizes itself to whatever is recorded.
            histogram: Histogram::new(SIGNIFICANT_DIGITS).expect("3 significant digits are valid"),
        }
    }

    pub fn record(&mut self, value: u64) {
        // `record` grows the histogram to fit (`saturating_record` would
        // clamp to its current top instead); it fails only where usize
        // cannot index that far, and then the value is clamped.
        if self.histogram.record(value).is_err() {
            self.histogram.saturating_record(value);
        }
    }

    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    /// The sample at quantile `q` (0.5 is the median, 1.0 the largest);
    /// `None` without samples.
    pub fn at(&self, q: f64) -> Option<u64> {
        (!self.is_empty()).then(|| self.histogram.value_at_quantile(q))
    }

    pub fn mean(&self) -> Option<f64> {
        (!self.is_empty()).then(|| self.histogram.mean())
    }
}

impl Default for Percentiles {
    fn default() -> Self {
        Percentiles::new()
    }
}

impl FromIterator<u64> for Percentiles {
    fn from_iter<I: IntoIterator<Item = u64>>(samples: I) -> Self {
        let mut percentiles = Percentiles::new();
        for sample in samples {
            percentiles.record(sample);
        }
        percentiles
    }
}

/// Samples of a duration, recorded in nanoseconds.
#[derive(Default)]
pub struct Latencies(Percentiles);

impl Latencies {
    pub fn record(&mut self, sample: Duration) {
        self.0
            .record(u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The duration at quantile `q` (0.5 is the median, 1.0 the longest);
    /// `None` without samples.
    pub fn at(&self, q: f64) -> Option<Duration> {
        self.0.at(q).map(Duration::from_nanos)
    }

    pub fn mean(&self) -> Option<Duration> {
        self.0
            .mean()
            .map(|ns| Duration::from_nanos(ns.round() as u64))
    }
}

impl<'a> FromIterator<&'a Duration> for Latencies {
    fn from_iter<I: IntoIterator<Item = &'a Duration>>(samples: I) -> Self {
        samples.into_iter().copied().collect()
    }
}

impl FromIterator<Duration> for Latencies {
    fn from_iter<I: IntoIterator<Item = Duration>>(samples: I) -> Self {
        let mut latencies = Latencies::default();
        for sample in samples {
            latencies.record(sample);
        }
        latencies
    }
}
