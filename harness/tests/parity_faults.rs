//! The issue-17 checks catch the defect each is about: a backend given the
//! fault fails exactly that check, with a failing piece of evidence that
//! says what went wrong, while plain ClusterIP traffic still passes.

mod common;

use svclab_backends::Fault;
use svclab_backends::faults::bent_before_backend;

/// (fault, the check that must fail, a phrase of its failing evidence)
const FAULTS: [(&str, &str, &str); 11] = [
    ("no-external-ips", "external-ips", "external IP"),
    ("require-serving", "publish-not-ready", "still reached"),
    (
        "ignore-proxy-labels",
        "proxy-name-and-headless-labels",
        "not programmed",
    ),
    ("affinity-no-timeout", "affinity-timeout", "balanced afresh"),
    (
        "keep-deleted-services",
        "service-recreate",
        "deleted: no answer",
    ),
    ("reject-unallocated", "unallocated-clusterip", "unreachable"),
    (
        "nodeport-any-address",
        "nodeport-addresses",
        "no endpoint answers",
    ),
    (
        "ignore-topology-hints",
        "traffic-distribution",
        "only zone zone-a's endpoints",
    ),
    ("lb-no-ingress", "loadbalancer-ingress", "load balancer IP"),
    (
        "lb-ignore-source-ranges",
        "loadbalancer-source-ranges",
        "is outside",
    ),
    (
        "no-route-localnet",
        "localhost-nodeport",
        "a ready endpoint",
    ),
];

/// The backends a fault is tried on. A fault bent before any backend sees
/// it (in the fault wrapper's input, or in the agent's watch) is the same
/// defect on every backend, so one shows that the check catches it; a fault
/// in a backend's own rules runs on both rule-writing backends, or on the
/// backends that have the behaviour it breaks.
fn backends_for(fault: &str) -> &'static [&'static str] {
    let f: Fault = fault.parse().expect("a known fault");
    if f == Fault::NoRouteLocalnet {
        // Only the iptables backends serve localhost NodePorts (nftables
        // declares it unsupported, as kube-proxy's nftables mode).
        &["iptables", "iptables-legacy"]
    } else if bent_before_backend(f) {
        &["iptables"]
    } else {
        &["iptables", "nftables"]
    }
}

#[test]
fn each_fault_fails_its_own_check_with_evidence() {
    require_root!();
    let _lab = common::lab_lock();
    for (fault, check, phrase) in FAULTS {
        for &backend in backends_for(fault) {
            let dir = common::results_dir(&format!("parity-{backend}-{fault}"));
            let filter = format!("^({check}|clusterip-tcp)$");
            let out = common::run(&[
                "run",
                "scenarios/behaviours.yaml",
                "--backend",
                backend,
                "--check",
                &filter,
                "--fault",
                fault,
                "--results",
                dir.to_str().unwrap(),
            ]);
            let (_, json) = common::results_json(&dir);
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
            let bad: Vec<String> = json["backends"][0]["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == check)
                .unwrap()["evidence"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["ok"] == false)
                .map(|e| e.to_string())
                .collect();
            assert!(
                bad.iter().any(|e| e.contains(phrase)),
                "{backend} {fault}: no failing evidence with {phrase:?}: {bad:#?}"
            );
            // The defect is specific: plain ClusterIP traffic still works.
            let plain = v.iter().find(|r| r.1 == "clusterip-tcp").unwrap();
            assert_eq!(
                plain.2, "PASS",
                "{backend} {fault}: clusterip-tcp: {}",
                plain.3
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
