//! The ecosystem's protocols in a running lab, checked with curl as a user
//! would: agnhost netexec answers from pods, kube-proxy's /healthz and
//! /metrics from agents (parsed with a Prometheus text-format parser).

mod common;

fn curl(ns: &str, url: &str) -> (u16, String) {
    let out = common::in_netns(ns, &["curl", "-s", "-m", "3", "-w", "\n%{http_code}", url]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn netexec_healthz_and_metrics_answer_like_the_real_thing() {
    require_root!();
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        common::skip("curl is not installed (ci/setup installs it)");
        return;
    }
    let _lab = common::lab_lock();
    let up = common::run(&["up", "scenarios/smoke.yaml", "--backend", "iptables"]);
    assert!(up.status.success(), "{}", common::text(&up));
    let run = common::run_id(&String::from_utf8_lossy(&up.stdout));
    let _guard = common::LabGuard(run.clone());
    let client = format!("svclab-{run}-svclab-system.client-node-0");
    let node = format!("svclab-{run}-node-0");

    // agnhost netexec on a pod, directly and through the Service VIP.
    let (code, body) = curl(&client, "http://10.244.1.3:8080/hostname");
    assert_eq!((code, body.as_str()), (200, "web-1"));
    let (code, body) = curl(&client, "http://10.244.1.3:8080/clientip");
    assert_eq!(code, 200);
    assert!(body.starts_with("10.244.0.2:"), "{body}");
    let (code, body) = curl(&client, "http://10.244.1.3:8080/echo?msg=hello%20lab");
    assert_eq!((code, body.as_str()), (200, "hello lab"));
    let (code, body) = curl(&client, "http://10.96.0.11/hostname");
    assert_eq!(code, 200);
    assert!(body.starts_with("web-"), "{body}");

    // kube-proxy's /healthz on 10256, from another namespace too.
    let ext = format!("svclab-{run}-external");
    let (code, body) = curl(&ext, "http://172.18.0.2:10256/healthz");
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    for key in ["lastUpdated", "currentTime", "nodeHealthy"] {
        assert!(health.get(key).is_some(), "{key} missing: {body}");
    }
    assert_eq!(health["nodeHealthy"], true);

    // kube-proxy's /metrics on 10249, parsed by a Prometheus parser.
    let (code, body) = curl(&node, "http://127.0.0.1:10249/metrics");
    assert_eq!(code, 200);
    let scrape =
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses");
    let names: std::collections::BTreeSet<&str> =
        scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for want in [
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "kubeproxy_sync_full_proxy_rules_duration_seconds",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds",
        "kubeproxy_network_programming_duration_seconds",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kubeproxy_sync_proxy_rules_service_changes_total",
    ] {
        assert!(
            names.contains(want),
            "{want} missing from /metrics: {names:?}"
        );
    }
    let syncs = scrape
        .samples
        .iter()
        .find(|s| s.metric == "kubeproxy_sync_full_proxy_rules_duration_seconds")
        .unwrap();
    match &syncs.value {
        prometheus_parse::Value::Histogram(b) => {
            assert!(
                b.iter().map(|c| c.count).fold(0.0, f64::max) >= 1.0,
                "a full sync is counted"
            )
        }
        other => panic!("not a histogram: {other:?}"),
    }
}
