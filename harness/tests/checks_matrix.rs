//! The checks against real backends in real labs: the scenarios pass on
//! every backend this host can run, and deliberately broken backends make
//! exactly the right checks fail, with readable evidence.

mod common;

fn available(backend: &str) -> bool {
    let out = common::run(&["doctor"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains(&format!("✔ {backend} ")) && l.contains("can run here"))
}

/// A SKIP that only the host's kernel explains (no SCTP here).
fn kernel_skip(check: &str, verdict: &str, why: &str) -> bool {
    check == "sctp" && verdict == "SKIP" && why.contains("kernel has no SCTP")
}

fn run_checks(
    name: &str,
    scenario: &str,
    backends: &str,
    extra: &[&str],
) -> (std::process::Output, serde_json::Value) {
    let dir = common::results_dir(name);
    let mut args = vec![
        "run",
        scenario,
        "--backend",
        backends,
        "--results",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = common::run(&args);
    let (_, json) = common::results_json(&dir);
    (out, json)
}

/// Upstream kube-proxy, both supported versions and both modes this host
/// runs (IPVS runs in the VM), passes every behaviour: nothing failed,
/// nothing skipped.
#[test]
fn upstream_kube_proxy_passes_every_behaviour_in_both_versions() {
    require_root!();
    let old = svclab::kubeproxy::SUPPORTED_VERSIONS[0];
    if !common::have_kube_proxy() {
        return;
    }
    let _lab = common::lab_lock();
    let backends = format!("kube-proxy:nftables,kube-proxy:iptables@{old}");
    let (out, json) = run_checks(
        "kube-proxy-behaviours",
        "scenarios/behaviours.yaml",
        &backends,
        &[],
    );
    let verdicts = common::verdicts(&json);
    let bad: Vec<_> = verdicts
        .iter()
        .filter(|v| v.2 != "PASS" && !kernel_skip(&v.1, &v.2, &v.3))
        .collect();
    assert!(
        bad.is_empty(),
        "not passed: {bad:#?}\n{}",
        common::text(&out)
    );
    for b in ["kube-proxy:nftables", &format!("kube-proxy:iptables@{old}")] {
        let n = verdicts.iter().filter(|v| v.0 == *b).count();
        assert!(n >= 20, "{b}: {n} verdicts\n{}", common::text(&out));
    }
    assert!(out.status.success(), "{}", common::text(&out));
}

#[test]
fn behaviours_pass_on_every_backend_this_host_runs() {
    require_root!();
    let _lab = common::lab_lock();
    let backends: Vec<&str> = [
        "iptables",
        "iptables-legacy",
        "nftables",
        "nftables-flat",
        "userspace",
        "ebpf",
    ]
    .into_iter()
    .filter(|b| available(b))
    .collect();
    assert!(
        backends.contains(&"iptables"),
        "iptables must run on this host"
    );
    let (out, json) = run_checks(
        "behaviours",
        "scenarios/behaviours.yaml",
        &backends.join(","),
        &[],
    );
    let failed: Vec<_> = common::verdicts(&json)
        .into_iter()
        .filter(|v| v.2 == "FAIL")
        .collect();
    assert!(
        failed.is_empty(),
        "failures: {failed:#?}\n{}",
        common::text(&out)
    );
    assert!(out.status.success(), "{}", common::text(&out));
    // Every skip names its reason.
    for (b, c, v, why) in common::verdicts(&json) {
        if v == "SKIP" {
            assert!(
                why.len() > 20,
                "{b}/{c} skipped without a real reason: {why:?}"
            );
        }
    }
    // iptables and both nftables layouts implement every behaviour:
    // nothing skipped.
    for (b, c, v, why) in common::verdicts(&json) {
        if ["iptables", "nftables", "nftables-flat"].contains(&b.as_str())
            && !kernel_skip(&c, &v, &why)
        {
            assert_eq!(v, "PASS", "{b}/{c}: {why}");
        }
    }
}

/// The demo's scenario gives every check something to test: on backends
/// that implement every behaviour nothing is skipped, and the `none`
/// baseline skips only because it programs nothing.
#[test]
fn the_demo_scenario_exercises_every_check() {
    require_root!();
    let _lab = common::lab_lock();
    let (out, json) = run_checks(
        "demo-scenario",
        "scenarios/demo.yaml",
        "none,iptables,nftables",
        &[],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    let verdicts = common::verdicts(&json);
    for b in ["iptables", "nftables"] {
        let n = verdicts.iter().filter(|v| v.0 == b).count();
        assert_eq!(n, svclab::checks::CHECKS.len(), "{b}: {n} verdicts");
    }
    for (b, c, v, why) in verdicts {
        assert!(!why.starts_with("the scenario has no"), "{b}/{c}: {why}");
        if b == "none" {
            // It programs nothing; the health check node port is the
            // agent's own server, so those checks pass even here.
            assert!(
                (v == "SKIP" && why.contains("programs no rules"))
                    || (v == "PASS"
                        && (c == "etp-local-healthcheck" || c == "healthcheck-terminating")),
                "none/{c}: {v}: {why}"
            );
        } else if !kernel_skip(&c, &v, &why) {
            assert_eq!(v, "PASS", "{b}/{c}: {why}");
        }
    }
    // The agents' own metrics agree with the harness's sync counts.
    let iptables = &json["backends"][1];
    let cross = iptables["metricsCrossCheck"].as_array().unwrap();
    assert!(
        cross
            .iter()
            .any(|c| c.as_str().unwrap().contains("match the harness")),
        "{cross:?}"
    );
}

/// `svclab demo` runs that scenario on every backend this host can run
/// but the `none` baseline, so its report has no SKIP but a backend's
/// declared limitation (userspace cannot preserve the client's source).
#[test]
fn the_demo_report_has_no_skips() {
    require_root!();
    let _lab = common::lab_lock();
    let dir = common::results_dir("demo");
    // Two quick checks keep it short; the scenario test above has them all.
    let out = common::run(&[
        "demo",
        "--check",
        "^(itp-local|etp-local-preserves-source)$",
        "--results",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", common::text(&out));
    let (_, json) = common::results_json(&dir);
    let verdicts = common::verdicts(&json);
    assert!(verdicts.iter().any(|v| v.0 == "iptables"), "{verdicts:?}");
    for (b, c, v, why) in verdicts {
        assert_ne!(b, "none", "the demo runs the none baseline");
        if v == "SKIP" {
            assert!(
                b == "userspace" && c == "etp-local-preserves-source",
                "{b}/{c} skipped in the demo: {why}"
            );
        } else {
            assert_eq!(v, "PASS", "{b}/{c}: {why}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// (fault, the check that must fail, a phrase its evidence must contain)
const FAULTS: [(&str, &str, &str); 3] = [
    (
        "missing-masquerade",
        "hairpin-masquerade",
        "source is masqueraded",
    ),
    ("wrong-probability", "balance-uniform", "uniform over"),
    ("no-reject", "no-endpoints-reject", "timeout"),
];

#[test]
fn broken_rules_fail_the_right_check_with_evidence() {
    require_root!();
    let _lab = common::lab_lock();
    for backend in ["iptables", "nftables"] {
        for (fault, check, phrase) in FAULTS {
            // The check the fault must fail, and the plain DNAT check that
            // must still pass: the other checks add minutes, not coverage.
            let only = format!("^(clusterip-tcp|{check})$");
            let (out, json) = run_checks(
                &format!("{backend}-{fault}"),
                "scenarios/smoke.yaml",
                backend,
                &["--fault", fault, "--check", &only],
            );
            assert_eq!(
                out.status.code(),
                Some(1),
                "{backend} {fault}: {}",
                common::text(&out)
            );
            let v = common::verdicts(&json);
            let row = v.iter().find(|r| r.1 == check).expect("the check ran");
            assert_eq!(
                row.2, "FAIL",
                "{backend} with {fault}: {check} should fail: {}",
                row.3
            );
            let evidence = json["backends"][0]["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == check)
                .unwrap()["evidence"]
                .to_string();
            assert!(
                evidence.contains(phrase),
                "{backend} {fault}: evidence lacks {phrase:?}: {evidence}"
            );
            // The defect is specific: the plain DNAT checks still pass.
            let plain = v.iter().find(|r| r.1 == "clusterip-tcp").unwrap();
            assert_eq!(
                plain.2, "PASS",
                "{backend} {fault}: clusterip-tcp: {}",
                plain.3
            );
        }
    }
}
