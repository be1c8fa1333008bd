//! Distributions, kept in HdrHistograms (3 significant digits) and
//! summarised the way kube-proxy's dashboards read its histograms: p50,
//! p90, p99 and max (with min, mean and the count alongside).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Nanoseconds: a sync that does nothing (the `none` backend) takes well
/// under a microsecond, and a day still fits.
const UNITS_PER_SECOND: f64 = 1e9;
const HIGHEST: u64 = 86_400 * 1_000_000_000;

/// Records durations (or any non-negative quantity in seconds).
pub struct Recorder {
    hist: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            hist: Histogram::new_with_bounds(1, HIGHEST, 3).expect("constant bounds are valid"),
        }
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder::default()
    }

    pub fn record(&mut self, seconds: f64) {
        let v = (seconds.max(0.0) * UNITS_PER_SECOND).round() as u64;
        self.hist.saturating_record(v.min(HIGHEST));
    }

    pub fn from_values(values: impl IntoIterator<Item = f64>) -> Recorder {
        let mut r = Recorder::new();
        for v in values {
            r.record(v);
        }
        r
    }

    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The summary, or `None` when nothing was recorded.
    pub fn summary(&self) -> Option<Summary> {
        if self.hist.is_empty() {
            return None;
        }
        let q = |p: f64| self.hist.value_at_quantile(p) as f64 / UNITS_PER_SECOND;
        Some(Summary {
            count: self.hist.len(),
            min: self.hist.min() as f64 / UNITS_PER_SECOND,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            max: self.hist.max() as f64 / UNITS_PER_SECOND,
            mean: self.hist.mean() / UNITS_PER_SECOND,
        })
    }
}

/// One distribution, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// A named statistic (`p50`, `p90`, `p99`, `max`, `min`, `mean`).
    pub fn stat(&self, name: &str) -> Option<f64> {
        Some(match name {
            "min" => self.min,
            "p50" => self.p50,
            "p90" => self.p90,
            "p99" => self.p99,
            "max" => self.max,
            "mean" => self.mean,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_distribution() {
        let r = Recorder::from_values((1..=1000).map(|i| i as f64 * 1e-3));
        let s = r.summary().unwrap();
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 0.5).abs() < 0.001, "{s:?}");
        assert!((s.p90 - 0.9).abs() < 0.001, "{s:?}");
        assert!((s.p99 - 0.99).abs() < 0.001, "{s:?}");
        assert!((s.max - 1.0).abs() < 0.001, "{s:?}");
        assert!((s.min - 0.001).abs() < 1e-6, "{s:?}");
        let tiny = Recorder::from_values([7.2e-7]).summary().unwrap();
        assert!(tiny.p50 > 7.1e-7 && tiny.p50 < 7.3e-7, "{tiny:?}");
        assert!(Recorder::new().summary().is_none());
    }
}
