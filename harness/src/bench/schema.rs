//! `bench.json` (schema `svclab.dev/bench/v1`, documented in
//! `results/README.md`) and `bench.csv`: every benchmark kind writes the
//! same envelope, a flat list of figures that `svclab compare` matches by
//! (backend, size, metric, stat), and per-case detail.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::stats::Summary;
use crate::results::HostFacts;

pub const SCHEMA: &str = "svclab.dev/bench/v1";

/// Which way is better for a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Lower,
    Higher,
}

/// One number: a statistic of one metric of one backend at one size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Figure {
    pub backend: String,
    /// Services (sync), pods (topology), endpoints (probes).
    pub size: u64,
    pub metric: String,
    /// `p50`, `p90`, `p99`, `max`, `min` for distributions; `value` for
    /// single numbers.
    pub stat: String,
    pub value: f64,
    /// `seconds`, `ratio` (an overhead: agent over floor, harness over
    /// agent), `bytes`, `per-second`, `speedup` (how many times faster).
    pub unit: String,
    pub better: Better,
}

impl Figure {
    pub fn key(&self) -> (String, u64, String, String) {
        (
            self.backend.clone(),
            self.size,
            self.metric.clone(),
            self.stat.clone(),
        )
    }
}

/// How one backend at one size went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    /// The full sync did not finish within the per-size budget.
    NotFinished,
    /// The backend cannot run on this host (the reason says why).
    Unavailable,
    /// Not attempted (a smaller size already blew the budget).
    Skipped,
    Failed,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::NotFinished => "not finished",
            Status::Unavailable => "unavailable",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Case {
    pub backend: String,
    pub size: u64,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Kind-specific measurements (see `results/README.md`).
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// The machine's load average (1, 5, 15 minutes): other work competed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Load(pub [f64; 3]);

impl Load {
    pub fn now() -> Load {
        let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let mut v = [0.0; 3];
        for (slot, word) in v.iter_mut().zip(text.split_whitespace()) {
            *slot = word.parse().unwrap_or(0.0);
        }
        Load(v)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BenchResults {
    pub schema: String,
    /// `sync`, `topology` or `probes`.
    pub kind: String,
    pub run: String,
    pub started_at: String,
    pub finished_at: String,
    pub host: HostFacts,
    pub load_at_start: Load,
    pub load_at_end: Load,
    /// The command's parameters.
    pub settings: serde_json::Value,
    pub figures: Vec<Figure>,
    pub cases: Vec<Case>,
}

impl BenchResults {
    pub fn new(kind: &str, run: &str, settings: serde_json::Value) -> BenchResults {
        BenchResults {
            schema: SCHEMA.into(),
            kind: kind.into(),
            run: run.into(),
            started_at: jiff::Timestamp::now().to_string(),
            finished_at: String::new(),
            host: HostFacts::collect(),
            load_at_start: Load::now(),
            load_at_end: Load::default(),
            settings,
            figures: Vec::new(),
            cases: Vec::new(),
        }
    }

    pub fn load(path: &Path) -> anyhow::Result<BenchResults> {
        let file = if path.is_dir() {
            path.join("bench.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
        let r: BenchResults = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a bench.json: {e}", file.display()))?;
        if r.schema != SCHEMA {
            anyhow::bail!(
                "{}: schema {:?}, expected {SCHEMA:?}",
                file.display(),
                r.schema
            );
        }
        Ok(r)
    }

    /// Adds a single number.
    pub fn value(&mut self, backend: &str, size: u64, metric: &str, unit: &str, value: f64) {
        self.figures.push(Figure {
            backend: backend.into(),
            size,
            metric: metric.into(),
            stat: "value".into(),
            value,
            unit: unit.into(),
            better: better_of(unit),
        });
    }

    /// Adds the named statistics of a distribution.
    pub fn dist(
        &mut self,
        backend: &str,
        size: u64,
        metric: &str,
        unit: &str,
        summary: &Summary,
        stats: &[&str],
    ) {
        for s in stats {
            if let Some(v) = summary.stat(s) {
                self.figures.push(Figure {
                    backend: backend.into(),
                    size,
                    metric: metric.into(),
                    stat: (*s).into(),
                    value: v,
                    unit: unit.into(),
                    better: better_of(unit),
                });
            }
        }
    }

    pub fn figure(&self, backend: &str, size: u64, metric: &str, stat: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| {
                f.backend == backend && f.size == size && f.metric == metric && f.stat == stat
            })
            .map(|f| f.value)
    }

    pub fn case(&self, backend: &str, size: u64) -> Option<&Case> {
        self.cases
            .iter()
            .find(|c| c.backend == backend && c.size == size)
    }

    /// Backends in first-seen order.
    pub fn backends(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in &self.cases {
            if !out.contains(&c.backend) {
                out.push(c.backend.clone());
            }
        }
        out
    }

    pub fn sizes(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.cases.iter().map(|c| c.size).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Writes `bench.json` and `bench.csv` (and nothing else) into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("bench.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("bench.csv"), self.csv())?;
        Ok(())
    }

    /// One row per backend × size × metric; distributions fill the
    /// quantile columns, single numbers the `value` column. Written by the
    /// `csv` crate, so a backend name with a comma or a quote (an
    /// `exec:` program path) stays one field.
    pub fn csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut rows: Vec<(String, u64, String)> = Vec::new();
        for f in &self.figures {
            let k = (f.backend.clone(), f.size, f.metric.clone());
            if !rows.contains(&k) {
                rows.push(k);
            }
        }
        let header = [
            "backend", "size", "metric", "unit", "better", "value", "min", "p50", "p90", "p99",
            "max",
        ];
        // Writing to memory cannot fail; the record shapes are fixed.
        w.write_record(header).expect("csv header");
        for (backend, size, metric) in rows {
            let of = |stat: &str| {
                self.figure(&backend, size, &metric, stat)
                    .map_or(String::new(), |v| format!("{v}"))
            };
            let first = self
                .figures
                .iter()
                .find(|f| f.backend == backend && f.size == size && f.metric == metric)
                .expect("row from a figure");
            let better = match first.better {
                Better::Lower => "lower",
                Better::Higher => "higher",
            };
            w.write_record([
                backend.clone(),
                size.to_string(),
                metric.clone(),
                first.unit.clone(),
                better.to_string(),
                of("value"),
                of("min"),
                of("p50"),
                of("p90"),
                of("p99"),
                of("max"),
            ])
            .expect("csv row");
        }
        String::from_utf8(w.into_inner().expect("csv flush")).expect("csv of UTF-8 fields")
    }
}

/// Throughput and speedups are better higher; times, CPU, memory and
/// overhead ratios lower.
fn better_of(unit: &str) -> Better {
    if unit == "per-second" || unit == "speedup" {
        Better::Higher
    } else {
        Better::Lower
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_round_trip_and_make_one_csv_row_per_metric() {
        let mut r = BenchResults::new("sync", "x", serde_json::json!({}));
        let s = super::super::stats::Recorder::from_values([0.1, 0.2, 0.3])
            .summary()
            .unwrap();
        r.dist(
            "iptables",
            1000,
            "sync_partial_proxy_rules_duration_seconds",
            "seconds",
            &s,
            &["p50", "p99"],
        );
        r.value("iptables", 1000, "probes", "per-second", 12000.0);
        let back: BenchResults = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.figures, r.figures);
        assert_eq!(back.figures[2].better, Better::Higher);
        let csv = r.csv();
        assert_eq!(csv.lines().count(), 3, "{csv}");
        assert!(
            csv.contains("iptables,1000,probes,per-second,higher,12000,,,,,"),
            "{csv}"
        );
    }

    /// A backend name with a comma and a quote (an `exec:` program path)
    /// is quoted, and a CSV reader gets it back as one field.
    #[test]
    fn csv_quotes_backend_names_with_commas() {
        let mut r = BenchResults::new("sync", "x", serde_json::json!({}));
        let name = "exec:/opt/proxy,v2 \"beta\"";
        r.value(name, 10, "probes", "per-second", 5.0);
        let text = r.csv();
        assert!(
            text.contains("\"exec:/opt/proxy,v2 \"\"beta\"\"\",10,probes,"),
            "{text}"
        );
        let mut rd = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(rd.headers().unwrap().len(), 11);
        let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].len(), 11);
        assert_eq!(&rows[0][0], name);
        assert_eq!(&rows[0][5], "5");
    }
}
