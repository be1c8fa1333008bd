//! `svclab bench sync` end to end at a small size, and `svclab compare` on
//! its output: the schema holds, every figure the backends should have is
//! there and positive, a run compared with itself passes, a doctored slower
//! copy fails, and an emulated run is not compared with a host run. No
//! timing is asserted.

mod common;

use std::path::Path;

use serde_json::Value;

/// Figures every backend has, and those only a dataplane (with a tool to
/// replay) has.
const EVERY: [&str; 9] = [
    "sync_proxy_rules_duration_seconds",
    "sync_full_proxy_rules_duration_seconds",
    "sync_partial_proxy_rules_duration_seconds",
    "sync_full_cpu_seconds",
    "sync_partial_cpu_seconds",
    "sync_full_agent_max_rss_bytes",
    "first_sync_end_to_end_seconds",
    "datapath_connect_latency_seconds",
    "harness_cpu_full_sync_seconds",
];
const DATAPLANE: [&str; 6] = [
    "network_programming_duration_seconds",
    "floor_full_seconds",
    "floor_full_ratio",
    "floor_partial_seconds",
    "floor_partial_ratio",
    "sync_full_tool_max_rss_bytes",
];

fn bench_dir(base: &Path) -> std::path::PathBuf {
    std::fs::read_dir(base)
        .expect("results folder")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("bench.json").is_file())
        .unwrap_or_else(|| panic!("no bench.json under {}", base.display()))
}

fn compare(base: &Path, candidate: &Path) -> std::process::Output {
    common::run(&[
        "compare",
        &base.display().to_string(),
        &candidate.display().to_string(),
        "--threshold",
        "10%",
    ])
}

fn check_schema(b: &Value) {
    assert_eq!(b["schema"], "svclab.dev/bench/v1");
    assert_eq!(b["kind"], "sync");
    for field in ["run", "startedAt", "finishedAt"] {
        assert!(b[field].as_str().is_some_and(|s| !s.is_empty()), "{field}");
    }
    assert!(b["host"]["emulated"].is_boolean());
    assert_eq!(b["loadAtStart"].as_array().map(Vec::len), Some(3));
    let cases = b["cases"].as_array().expect("cases");
    for backend in ["none", "iptables"] {
        let c = cases
            .iter()
            .find(|c| c["backend"] == backend && c["size"] == 200)
            .unwrap_or_else(|| panic!("no {backend} case"));
        assert_eq!(c["status"], "ok", "{backend}: {c:#}");
        let d = &c["detail"];
        assert_eq!(d["services"], 200);
        assert_eq!(d["partials"].as_array().map(Vec::len), Some(4), "{backend}");
        assert!(!d["full"].as_array().expect("full").is_empty(), "{backend}");
    }
}

fn check_figures(b: &Value) {
    let figures = b["figures"].as_array().expect("figures");
    for f in figures {
        let v = f["value"].as_f64().unwrap_or(f64::NAN);
        let metric = f["metric"].as_str().unwrap_or("");
        // A sync that does nothing (the none backend) may use no
        // measurable CPU at all; everything else took some time or space.
        let ok = if metric.contains("cpu") {
            v.is_finite() && v >= 0.0
        } else {
            v.is_finite() && v > 0.0
        };
        assert!(ok, "figure not positive: {f}");
        assert!(["lower", "higher"].contains(&f["better"].as_str().unwrap_or("")));
    }
    let has = |backend: &str, metric: &str| {
        figures
            .iter()
            .any(|f| f["backend"] == backend && f["metric"] == metric && f["size"] == 200)
    };
    for m in EVERY {
        for backend in ["none", "iptables"] {
            assert!(has(backend, m), "{backend} lacks {m}");
        }
    }
    for m in DATAPLANE {
        assert!(has("iptables", m), "iptables lacks {m}");
    }
    for stat in ["p50", "p90", "p99", "max"] {
        assert!(
            figures.iter().any(|f| f["backend"] == "iptables"
                && f["metric"] == "sync_partial_proxy_rules_duration_seconds"
                && f["stat"] == stat),
            "no partial sync {stat}"
        );
    }
}

/// A copy of the run in `to` with every time doubled.
fn doctor_slower(from: &Path, to: &Path) {
    let mut b: Value =
        serde_json::from_slice(&std::fs::read(from.join("bench.json")).unwrap()).unwrap();
    for f in b["figures"].as_array_mut().unwrap() {
        if f["unit"] == "seconds" {
            let v = f["value"].as_f64().unwrap();
            f["value"] = (v * 2.0).into();
        }
    }
    std::fs::create_dir_all(to).unwrap();
    std::fs::write(to.join("bench.json"), serde_json::to_vec(&b).unwrap()).unwrap();
}

#[test]
fn bench_sync_writes_every_figure_and_compare_gates_on_it() {
    require_root!();
    let _lab = common::lab_lock();
    let results = common::results_dir("bench-sync");
    let out = common::run(&[
        "bench",
        "sync",
        "--services",
        "200",
        "--endpoints",
        "3",
        "--backend",
        "none,iptables",
        "--partials",
        "4",
        "--budget",
        "120",
        "--connects",
        "200",
        "--results",
        &results.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", common::text(&out));
    let dir = bench_dir(&results);
    let b: Value = serde_json::from_slice(&std::fs::read(dir.join("bench.json")).unwrap()).unwrap();
    check_schema(&b);
    check_figures(&b);
    let csv = std::fs::read_to_string(dir.join("bench.csv")).unwrap();
    assert!(csv.starts_with("backend,size,metric,"), "{csv}");
    assert!(
        csv.contains("iptables,200,sync_full_proxy_rules_duration_seconds,"),
        "{csv}"
    );
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg") && !html.contains("<script"));

    let same = compare(&dir, &dir);
    assert_eq!(same.status.code(), Some(0), "{}", common::text(&same));
    let slower = results.join("doctored");
    doctor_slower(&dir, &slower);
    let worse = compare(&dir, &slower);
    assert_eq!(worse.status.code(), Some(1), "{}", common::text(&worse));
    assert!(String::from_utf8_lossy(&worse.stdout).contains("REGRESSION"));

    let emulated = results.join("emulated");
    let mut b2 = b.clone();
    b2["host"]["emulated"] = true.into();
    std::fs::create_dir_all(&emulated).unwrap();
    std::fs::write(
        emulated.join("bench.json"),
        serde_json::to_vec(&b2).unwrap(),
    )
    .unwrap();
    let refused = compare(&dir, &emulated);
    assert_eq!(refused.status.code(), Some(2), "{}", common::text(&refused));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("emulated"));
    let _ = std::fs::remove_dir_all(&results);
}

/// `--family ipv4,dual`: upstream kube-proxy measured in each family as its
/// own series, every change proven through both of its proxiers; svclab's
/// IPv4-only backend is unavailable in the dual series, with the reason.
#[test]
fn bench_sync_measures_each_family_as_its_own_series() {
    require_root!();
    if !common::have_kube_proxy() {
        return;
    }
    let _lab = common::lab_lock();
    let results = common::results_dir("bench-sync-families");
    let out = common::run(&[
        "bench",
        "sync",
        "--services",
        "100",
        "--endpoints",
        "2",
        "--backend",
        "kube-proxy:nftables,nftables,ipvs",
        "--family",
        "ipv4,dual",
        "--partials",
        "4",
        "--budget",
        "120",
        "--connects",
        "100",
        "--results",
        &results.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", common::text(&out));
    let b: Value =
        serde_json::from_slice(&std::fs::read(bench_dir(&results).join("bench.json")).unwrap())
            .unwrap();
    let cases = b["cases"].as_array().expect("cases");
    let case = |backend: &str| {
        cases
            .iter()
            .find(|c| c["backend"] == backend)
            .unwrap_or_else(|| panic!("no {backend} case: {cases:#?}"))
    };
    for backend in [
        "kube-proxy:nftables",
        "kube-proxy:nftables/dual",
        "nftables",
        "nftables/dual",
    ] {
        let c = case(backend);
        assert_eq!(c["status"], "ok", "{backend}: {c:#}");
        let partials = c["detail"]["partials"].as_array().expect("partials");
        assert_eq!(partials.len(), 4, "{backend}");
        // Every change was seen by the client, and proven programmed.
        for p in partials {
            assert!(p["nplSeconds"].as_f64().is_some(), "{backend}: {p:#}");
        }
    }
    // svclab's nftables runs a proxier per family: in the dual series
    // each sync round reports both.
    let families: std::collections::BTreeSet<&str> = case("nftables/dual")["detail"]["full"]
        .as_array()
        .expect("full syncs")
        .iter()
        .filter_map(|r| r["family"].as_str())
        .collect();
    assert_eq!(
        families,
        ["IPv4", "IPv6"].into(),
        "{:#}",
        case("nftables/dual")
    );
    // An IPv4-only backend is unavailable in the dual series for that
    // reason, before whether this host has IP_VS.
    let dual = case("ipvs/dual");
    assert_eq!(dual["status"], "unavailable", "{dual:#}");
    assert!(
        dual["reason"]
            .as_str()
            .is_some_and(|r| r.contains("IPv4 proxier only")),
        "{dual:#}"
    );
    let _ = std::fs::remove_dir_all(&results);
}
