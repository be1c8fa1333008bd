//! The agent-restart and healthcheck-terminating checks catch what they
//! are about: each fault that breaks one makes exactly that check fail on
//! iptables and nftables, with evidence that names the defect, while the
//! other still passes. (The positive runs are in checks_matrix.rs, with
//! every other check on every backend.)

mod common;

/// (fault, the check that must fail, a phrase its evidence must contain,
/// the check that must still pass)
const FAULTS: [(&str, &str, &str, &str); 2] = [
    (
        "flush-conntrack-on-start",
        "agent-restart",
        "after the restart",
        "healthcheck-terminating",
    ),
    (
        "health-counts-terminating",
        "healthcheck-terminating",
        "HTTP 200",
        "agent-restart",
    ),
];

#[test]
fn faults_fail_agent_restart_and_healthcheck_terminating_with_evidence() {
    require_root!();
    let _lab = common::lab_lock();
    for (fault, check, phrase, other) in FAULTS {
        let dir = common::results_dir(&format!("restart-health-{fault}"));
        let out = common::run(&[
            "run",
            "scenarios/behaviours.yaml",
            "--backend",
            "iptables,nftables",
            "--check",
            "^(agent-restart|healthcheck-terminating)$",
            "--fault",
            fault,
            "--results",
            dir.to_str().unwrap(),
        ]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{fault}: {}",
            common::text(&out)
        );
        let (_, json) = common::results_json(&dir);
        let verdicts = common::verdicts(&json);
        for backend in ["iptables", "nftables"] {
            let row = |c: &str| {
                verdicts
                    .iter()
                    .find(|r| r.0 == backend && r.1 == c)
                    .unwrap_or_else(|| panic!("{backend}/{c} did not run: {verdicts:?}"))
                    .clone()
            };
            let bad = row(check);
            assert_eq!(bad.2, "FAIL", "{backend} with {fault}: {check}: {}", bad.3);
            let good = row(other);
            assert_eq!(
                good.2, "PASS",
                "{backend} with {fault}: {other}: {}",
                good.3
            );
            let evidence = json["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["backend"] == backend)
                .and_then(|b| b["checks"].as_array())
                .and_then(|cs| cs.iter().find(|c| c["name"] == check))
                .map(|c| c["evidence"].to_string())
                .unwrap_or_default();
            assert!(
                evidence.contains(phrase),
                "{backend} {fault}: evidence lacks {phrase:?}: {evidence}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
