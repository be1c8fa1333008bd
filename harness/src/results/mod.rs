//! A run's results folder, `results/<timestamp>-<scenario>/`: `results.json`
//! (schema in `results/README.md`), `junit.xml`, `summary.md` and a
//! self-contained `report.html`.

pub mod charts;
pub mod html;
pub mod junit;
pub mod markdown;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use svclab_backends::protocol::SyncReport;

use crate::checks::{CheckResult, Verdict};

pub const SCHEMA: &str = "svclab.dev/results/v1";

/// Facts about the machine the run happened on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostFacts {
    pub hostname: String,
    pub kernel: String,
    pub os: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_mib: u64,
    pub svclab_version: String,
    /// Versions of the tools the backends drive.
    pub tools: std::collections::BTreeMap<String, String>,
    /// Inside an emulated VM (`svclab vm`): timings are not comparable with
    /// the host's.
    pub emulated: bool,
}

/// Software emulation (`svclab vm`, qemu without KVM) runs the lab several
/// times slower than the host: probe deadlines, sync timeouts and upstream
/// kube-proxy's stop and cleanup stretch by this much there, and the results
/// say they were emulated.
pub const EMULATION_SLOWDOWN: u32 = 4;

impl HostFacts {
    /// Inside `svclab vm`.
    pub fn in_vm() -> bool {
        std::env::var_os("SVCLAB_IN_VM").is_some()
    }

    /// How much longer waits are here: [`EMULATION_SLOWDOWN`] inside
    /// `svclab vm`, else 1.
    pub fn slowdown() -> u32 {
        if Self::in_vm() { EMULATION_SLOWDOWN } else { 1 }
    }

    pub fn collect() -> HostFacts {
        let uname = nix::sys::utsname::uname().ok();
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("PRETTY_NAME=")
                        .map(|v| v.trim_matches('"').to_string())
                })
            })
            .unwrap_or_default();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                })
            })
            .unwrap_or_default();
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("MemTotal:")
                        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
                })
            })
            .map_or(0, |kb| kb / 1024);
        let mut tools = std::collections::BTreeMap::new();
        for (tool, args) in [
            ("iptables", &["--version"][..]),
            ("nft", &["--version"][..]),
            ("ipset", &["--version"][..]),
            ("conntrack", &["--version"][..]),
            ("clang", &["--version"][..]),
        ] {
            if let Ok(out) = std::process::Command::new(tool).args(args).output() {
                let text = String::from_utf8_lossy(&out.stdout);
                let first = text.lines().next().unwrap_or("").trim().to_string();
                if !first.is_empty() {
                    tools.insert(tool.to_string(), first);
                }
            }
        }
        HostFacts {
            hostname: uname
                .as_ref()
                .map(|u| u.nodename().to_string_lossy().into_owned())
                .unwrap_or_default(),
            kernel: uname
                .as_ref()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            os,
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib,
            svclab_version: env!("CARGO_PKG_VERSION").to_string(),
            tools,
            emulated: HostFacts::in_vm(),
        }
    }
}

/// One backend's part of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRun {
    pub backend: String,
    /// Why the backend could not run at all, if it could not.
    pub unavailable: Option<String>,
    pub checks: Vec<CheckResult>,
    /// Every agent sync report of this backend's lab.
    pub syncs: Vec<SyncReport>,
    /// The agents' `/metrics`, scraped at the end, per node.
    #[serde(default)]
    pub metrics: std::collections::BTreeMap<String, serde_json::Value>,
    /// Agent metric counts against the harness's own sync counts.
    #[serde(default)]
    pub metrics_cross_check: Vec<String>,
    /// Seconds to bring the lab up, by step.
    #[serde(default)]
    pub lab_times: serde_json::Value,
    /// Agents that died and were restarted, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_events: Vec<crate::agent::supervisor::AgentEvent>,
    /// Checks that were due and did not finish (an interrupted run): they
    /// have no verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_run: Vec<String>,
    /// The lab's logs (agents, upstream kube-proxy, workloads) as the lab
    /// went down, each cut to its last [`LOG_TAIL_BYTES`]: written beside
    /// the results as `logs/<backend>/<file>`, not into results.json.
    #[serde(skip)]
    pub logs: Vec<(String, Vec<u8>)>,
}

/// How much of each lab log a results folder keeps.
pub const LOG_TAIL_BYTES: usize = 1 << 20;

/// The `*.log` files of a lab's run folder, each cut to its tail.
pub fn collect_logs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut logs: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".log") {
                return None;
            }
            Some((name, tail_bytes(&e.path(), LOG_TAIL_BYTES).ok()?))
        })
        .collect();
    logs.sort();
    logs
}

/// The last `max` bytes of a file, read from there (a long kube-proxy log
/// is not read whole to keep its end).
fn tail_bytes(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max as u64)))?;
    let mut bytes = Vec::with_capacity(max.min(len as usize));
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A backend name as a folder name (`kube-proxy:nftables@v1.34.4` ->
/// `kube-proxy_nftables_v1.34.4`).
pub(crate) fn folder_name(backend: &str) -> String {
    backend
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl BackendRun {
    /// A backend's part before anything ran: no checks, syncs or logs.
    pub fn new(backend: &str) -> BackendRun {
        BackendRun {
            backend: backend.to_string(),
            unavailable: None,
            checks: Vec::new(),
            syncs: Vec::new(),
            metrics: Default::default(),
            metrics_cross_check: Vec::new(),
            lab_times: serde_json::Value::Null,
            agent_events: Vec::new(),
            not_run: Vec::new(),
            logs: Vec::new(),
        }
    }

    pub fn count(&self, v: Verdict) -> usize {
        self.checks.iter().filter(|c| c.verdict == v).count()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResults {
    pub schema: String,
    pub run: String,
    pub scenario: String,
    pub scenario_file: String,
    pub started_at: String,
    pub finished_at: String,
    pub host: HostFacts,
    pub backends: Vec<BackendRun>,
    /// Set when a stop signal cut the run short: only the verdicts of the
    /// checks that finished before it are here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interruption>,
}

/// How a run was cut short.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interruption {
    /// `SIGINT`, `SIGTERM`, `SIGHUP`.
    pub signal: String,
    /// 128 + the signal: what `svclab` exits with.
    pub exit_code: u8,
    /// RFC 3339.
    pub at: String,
    /// `backend/check` for every check that was due and has no verdict
    /// (backends not started included).
    pub not_run: Vec<String>,
}

impl Interruption {
    pub fn line(&self) -> String {
        format!(
            "INTERRUPTED by {} at {}: {} check(s) not run; the verdicts here are only those of the checks that finished before it",
            self.signal,
            self.at,
            self.not_run.len()
        )
    }
}

/// The marker file an interrupted run's folder carries.
pub const INTERRUPTED_MARKER: &str = "INTERRUPTED";

impl RunResults {
    pub fn failed(&self) -> usize {
        self.backends.iter().map(|b| b.count(Verdict::Fail)).sum()
    }

    /// The check names in report order.
    pub fn check_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for b in &self.backends {
            for c in &b.checks {
                if !names.contains(&c.name) {
                    names.push(c.name.clone());
                }
            }
        }
        names
    }

    pub fn verdict(&self, backend: &BackendRun, check: &str) -> Option<Verdict> {
        backend
            .checks
            .iter()
            .find(|c| c.name == check)
            .map(|c| c.verdict)
    }
}

/// `results/<UTC timestamp>-<scenario>`, created.
pub fn new_run_dir(base: &Path, scenario: &str) -> std::io::Result<PathBuf> {
    // The name is one path component, or the folder could land anywhere.
    if scenario.is_empty() || scenario.len() > 200 || scenario.contains(['/', '\\', '\0']) {
        return Err(std::io::Error::other(format!(
            "scenario name {:?} cannot name a results folder",
            scenario.chars().take(64).collect::<String>()
        )));
    }
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let mut dir = base.join(format!("{stamp}-{scenario}"));
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = base.join(format!("{stamp}-{scenario}-{n}"));
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes every file of the results folder (an interrupted run's first:
/// its marker, so no reader ever sees its verdicts unmarked).
pub fn write_all(dir: &Path, r: &RunResults) -> anyhow::Result<()> {
    if let Some(i) = &r.interrupted {
        std::fs::write(dir.join(INTERRUPTED_MARKER), format!("{}\n", i.line()))?;
    }
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(dir.join("junit.xml"), junit::render(r)?)?;
    std::fs::write(dir.join("summary.md"), markdown::render(r))?;
    std::fs::write(dir.join("report.html"), html::render(r))?;
    for b in r.backends.iter().filter(|b| !b.logs.is_empty()) {
        let d = dir.join("logs").join(folder_name(&b.backend));
        std::fs::create_dir_all(&d)?;
        for (name, bytes) in &b.logs {
            std::fs::write(d.join(name), bytes)?;
        }
    }
    Ok(())
}

/// How many wrong cases of a failed check the terminal shows.
const FAILED_EVIDENCE_SHOWN: usize = 5;

/// The checks × backends table for the terminal, then each failed check's
/// wrong cases.
pub fn terminal_table(r: &RunResults) -> String {
    let names = r.check_names();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(5).max(5);
    let mut s = format!("{:width$}", "check");
    for b in &r.backends {
        s.push_str(&format!("  {:>w$}", b.backend, w = b.backend.len().max(4)));
    }
    s.push('\n');
    for n in &names {
        s.push_str(&format!("{n:width$}"));
        for b in &r.backends {
            let v = r.verdict(b, n).map_or("-".to_string(), |v| v.to_string());
            s.push_str(&format!("  {:>w$}", v, w = b.backend.len().max(4)));
        }
        s.push('\n');
    }
    if let Some(i) = &r.interrupted {
        s.push_str(&i.line());
        s.push('\n');
    }
    // A failure's evidence, so a CI log says what went wrong without the
    // results folder (which a CI runner may not keep).
    for b in &r.backends {
        for c in b.checks.iter().filter(|c| c.verdict == Verdict::Fail) {
            s.push_str(&format!("FAIL {}/{}: {}\n", b.backend, c.name, c.summary));
            let wrong: Vec<_> = c.evidence.iter().filter(|e| !e.ok).collect();
            for e in wrong.iter().take(FAILED_EVIDENCE_SHOWN) {
                s.push_str(&format!(
                    "  {} -> {}: expected {}; observed {}\n",
                    e.vantage, e.target, e.expected, e.observed
                ));
            }
            if wrong.len() > FAILED_EVIDENCE_SHOWN {
                s.push_str(&format!(
                    "  ... and {} more (report.html has them all)\n",
                    wrong.len() - FAILED_EVIDENCE_SHOWN
                ));
            }
        }
    }
    for b in &r.backends {
        match &b.unavailable {
            Some(why) => s.push_str(&format!("{}: not run: {why}\n", b.backend)),
            None => s.push_str(&format!(
                "{}: {} passed, {} failed, {} skipped\n",
                b.backend,
                b.count(Verdict::Pass),
                b.count(Verdict::Fail),
                b.count(Verdict::Skip)
            )),
        }
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checks::balance::table;
    use crate::checks::{CheckResult, Evidence, Verdict};

    /// A run with one pass, one fail with evidence, one skip and a balance table.
    pub fn sample() -> RunResults {
        let mut balance = CheckResult::skip("balance-uniform", "");
        balance.verdict = Verdict::Pass;
        balance.summary = "1 case(s), 2000 probe(s), all as expected".into();
        balance.balance = vec![table(
            "default/web:http 10.96.0.11:80/TCP".into(),
            vec![
                ("default/web-0".into(), 650),
                ("default/web-1".into(), 690),
                ("default/web-2".into(), 660),
            ],
            0.001,
        )];
        let fail = CheckResult {
            name: "hairpin-masquerade".into(),
            verdict: Verdict::Fail,
            summary: "1 of 1 case(s) wrong".into(),
            evidence: vec![Evidence {
                vantage: "hairpin default/web-0".into(),
                target: "default/web:http 10.96.0.11:80/TCP".into(),
                expected: "masqueraded <not 10.244.0.3>".into(),
                observed: "timeout ×7".into(),
                ok: false,
                probes: 20,
            }],
            balance: Vec::new(),
            trace: Some("KUBE-SERVICES -> KUBE-SVC-X".into()),
            seconds: 1.5,
        };
        RunResults {
            schema: SCHEMA.into(),
            run: "20261123T000000Z".into(),
            scenario: "smoke".into(),
            scenario_file: "scenarios/smoke.yaml".into(),
            started_at: "2026-11-23T00:00:00Z".into(),
            finished_at: "2026-11-23T00:00:30Z".into(),
            host: HostFacts::default(),
            backends: vec![BackendRun {
                checks: vec![
                    balance,
                    fail,
                    CheckResult::skip(
                        "itp-local",
                        "the scenario has no internalTrafficPolicy: Local Service",
                    ),
                ],
                logs: vec![(
                    "agent-node-0.log".into(),
                    b"agent node-0: synced\n".to_vec(),
                )],
                ..BackendRun::new("iptables")
            }],
            interrupted: None,
        }
    }

    #[test]
    fn an_interrupted_run_is_marked_in_every_format() {
        let mut r = sample();
        r.backends[0].not_run = vec!["service-update".into()];
        r.backends[0].agent_events = vec![crate::agent::supervisor::AgentEvent {
            at: 1.7e9,
            node: "node-1".into(),
            kind: "exited".into(),
            detail: "pid 42 exited with signal: 9 (SIGKILL)".into(),
        }];
        r.interrupted = Some(Interruption {
            signal: "SIGINT".into(),
            exit_code: 130,
            at: "2026-11-23T00:00:10Z".into(),
            not_run: vec!["iptables/service-update".into()],
        });
        let dir = std::env::temp_dir().join(format!("svclab-interrupted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        write_all(&dir, &r).unwrap();
        let marker = std::fs::read_to_string(dir.join(INTERRUPTED_MARKER)).unwrap();
        assert!(marker.contains("INTERRUPTED by SIGINT"), "{marker}");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
        assert_eq!(json["interrupted"]["signal"], "SIGINT");
        assert_eq!(json["interrupted"]["exitCode"], 130);
        assert_eq!(json["backends"][0]["notRun"][0], "service-update");
        assert_eq!(json["backends"][0]["agentEvents"][0]["kind"], "exited");
        // The lab's logs sit beside the results, not in them.
        assert_eq!(
            std::fs::read_to_string(dir.join("logs/iptables/agent-node-0.log")).unwrap(),
            "agent node-0: synced\n"
        );
        assert!(json["backends"][0].get("logs").is_none());
        let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
        assert!(md.contains("INTERRUPTED by SIGINT"), "{md}");
        assert!(
            md.contains("node-1"),
            "agent events are in the summary: {md}"
        );
        let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
        assert!(html.contains("INTERRUPTED by SIGINT"), "report.html");
        assert!(
            html.contains("pid 42 exited"),
            "agent events in report.html"
        );
        let xml = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
        assert!(xml.contains("interrupted"), "{xml}");
        assert!(
            xml.contains("<error"),
            "an interrupted run is an error in CI: {xml}"
        );
        assert!(terminal_table(&r).contains("INTERRUPTED by SIGINT"));
        // A complete run carries no mark.
        let clean = sample();
        let json = serde_json::to_value(&clean).unwrap();
        assert!(json.get("interrupted").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_format_carries_the_verdicts() {
        let r = sample();
        let md = markdown::render(&r);
        assert!(md.contains("| hairpin-masquerade | **FAIL** |"), "{md}");
        assert!(md.contains("itp-local: the scenario has no"), "{md}");
        let xml = junit::render(&r).unwrap();
        assert!(
            xml.contains("<failure message=\"1 of 1 case(s) wrong\""),
            "{xml}"
        );
        assert!(xml.contains("<skipped message="), "{xml}");
        let html = html::render(&r);
        assert!(
            html.contains("&lt;not 10.244.0.3&gt;"),
            "evidence is escaped"
        );
        assert!(html.contains("<svg"), "balance chart inline");
        // Self-contained: no scripts, no external resources.
        for banned in ["<script", "src=\"http", "href=\"http", "<link"] {
            assert!(!html.contains(banned), "{banned} in report.html");
        }
        let table = terminal_table(&r);
        assert!(table.contains("hairpin-masquerade") && table.contains("FAIL"));
        // The failure's wrong case is in the terminal too.
        assert!(
            table.contains("FAIL iptables/hairpin-masquerade: ")
                && table.contains("expected masqueraded <not 10.244.0.3>; observed timeout ×7"),
            "{table}"
        );
        let back: RunResults = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.failed(), 1);
    }

    /// Renders report.html in headless Chromium: the DOM has the tables and
    /// charts, and the screenshot is a real picture.
    #[test]
    fn report_renders_in_headless_chromium() {
        let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok()
        }) else {
            eprintln!("SKIP: chromium is not installed (ci/setup --browser installs it)");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        write_all(&dir, &sample()).unwrap();
        let page = format!("file://{}", dir.join("report.html").display());
        let shot = dir.join("report.png");
        let profile = dir.join("profile");
        let base = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ];
        let dom = std::process::Command::new(chromium)
            .args(base)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--dump-dom", &page])
            .output()
            .unwrap();
        let dom = String::from_utf8_lossy(&dom.stdout);
        assert!(dom.contains("<table"), "no table in the rendered DOM");
        assert!(
            dom.matches("<rect").count() >= 3,
            "the balance bars did not render"
        );
        assert!(dom.contains("hairpin-masquerade"));
        let out = std::process::Command::new(chromium)
            .args(base)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args([
                "--window-size=1200,1600",
                &format!("--screenshot={}", shot.display()),
                &page,
            ])
            .output()
            .unwrap();
        let png = std::fs::read(&shot)
            .unwrap_or_else(|_| panic!("no screenshot: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(&png[1..4], b"PNG");
        // A blank page compresses to a few KB; tables and charts do not.
        assert!(
            png.len() > 30_000,
            "the screenshot looks empty ({} bytes)",
            png.len()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lab_logs_keep_their_tails_and_only_logs() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(LOG_TAIL_BYTES + 3) + "end";
        std::fs::write(dir.path().join("agent-node-0.log"), long).unwrap();
        std::fs::write(dir.path().join("kube-proxy-node-0.log"), "E1206 ...").unwrap();
        std::fs::write(dir.path().join("state.json"), "{}").unwrap();
        let logs = collect_logs(dir.path());
        let names: Vec<&str> = logs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["agent-node-0.log", "kube-proxy-node-0.log"]);
        assert_eq!(logs[0].1.len(), LOG_TAIL_BYTES);
        assert!(logs[0].1.ends_with(b"end"));
        assert_eq!(
            folder_name("kube-proxy:nftables@v1.34.4"),
            "kube-proxy_nftables_v1.34.4"
        );
    }
}
