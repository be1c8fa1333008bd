//! Scraping the agents' `/metrics` from inside each node's namespace (a
//! reqwest client whose sockets open there), and cross-checking what the
//! agents say against what the harness measured itself.

use std::collections::BTreeMap;

use svclab_backends::protocol::SyncReport;

use crate::lab::Lab;
use crate::results::BackendRun;

/// Fetches `http://127.0.0.1:<port><path>` from inside `netns`.
pub async fn get_in(
    lab: &Lab,
    netns: &str,
    port: u16,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let rt = lab.prober.vantage(netns)?;
    let url = format!("http://127.0.0.1:{port}{path}");
    let fetch = rt.spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .no_proxy()
            .build()?;
        let resp = client.get(&url).send().await?;
        let status = resp.status().as_u16();
        Ok::<_, reqwest::Error>((status, resp.text().await?))
    });
    Ok(fetch.await??)
}

/// Every sample as `name{labels}` -> value (histograms as `_count`/`_sum`).
pub fn samples(text: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?;
    let mut out = BTreeMap::new();
    for s in scrape.samples {
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => {
                out.insert(s.metric.clone(), v);
            }
            prometheus_parse::Value::Histogram(buckets) => {
                let count = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
                out.insert(format!("{}_count", s.metric), count);
            }
            prometheus_parse::Value::Summary(_) => {}
        }
    }
    Ok(out)
}

/// What the agent's counters must equal, from the harness's own reports.
pub fn cross_check(node: &str, reports: &[&SyncReport], m: &BTreeMap<String, f64>) -> Vec<String> {
    let ok: Vec<&&SyncReport> = reports.iter().filter(|r| r.error.is_none()).collect();
    let mut expect: Vec<(&str, f64)> = vec![
        ("svclab_agent_syncs_total", reports.len() as f64),
        (
            "kubeproxy_sync_proxy_rules_duration_seconds_count",
            ok.len() as f64,
        ),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            reports.iter().map(|r| r.endpoint_events as f64).sum(),
        ),
        (
            "kubeproxy_sync_proxy_rules_service_changes_total",
            reports.iter().map(|r| r.service_events as f64).sum(),
        ),
    ];
    expect.push((
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
        ok.iter()
            .filter(|r| r.mode == svclab_backends::protocol::SyncMode::Full)
            .count() as f64,
    ));
    let mut problems = Vec::new();
    for (name, want) in expect {
        match m.get(name) {
            Some(got) if (got - want).abs() < 1e-9 => {}
            Some(got) => problems.push(format!(
                "{node}: {name} is {got}, the harness counted {want}"
            )),
            None => problems.push(format!("{node}: {name} missing from /metrics")),
        }
    }
    problems
}

/// For `kube-proxy:` backends, whose reports the agent derives from these
/// very metrics (it serves none of its own): kube-proxy's counts can only
/// have grown since the agent's last report.
pub fn cross_check_kube_proxy(
    node: &str,
    reports: &[&SyncReport],
    m: &BTreeMap<String, f64>,
) -> Vec<String> {
    let expect = [
        (
            "kubeproxy_sync_proxy_rules_duration_seconds_count",
            reports.iter().map(|r| r.seq).max().unwrap_or(0) as f64,
        ),
        (
            "kubeproxy_sync_proxy_rules_service_changes_total",
            reports.iter().map(|r| r.service_events as f64).sum(),
        ),
        (
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            reports.iter().map(|r| r.endpoint_events as f64).sum(),
        ),
    ];
    let mut problems = Vec::new();
    for (name, at_least) in expect {
        match m.get(name) {
            Some(got) if *got + 1e-9 >= at_least => {}
            Some(got) => problems.push(format!(
                "{node}: kube-proxy's {name} is {got}, below the {at_least} the agent reported"
            )),
            None => problems.push(format!("{node}: {name} missing from kube-proxy's /metrics")),
        }
    }
    problems
}

/// `node`'s reports from its running agent: a restarted agent counts from
/// zero again, and its first sync is `seq` 1.
pub fn current_incarnation<'a>(reports: &'a [SyncReport], node: &str) -> Vec<&'a SyncReport> {
    let mine: Vec<&SyncReport> = reports.iter().filter(|r| r.node == node).collect();
    let from = mine.iter().rposition(|r| r.seq == 1).unwrap_or(0);
    mine[from..].to_vec()
}

/// Scrapes every agent and records metrics and the cross-check in `run`.
pub async fn attach(lab: &mut Lab, run: &mut BackendRun) {
    let nodes = lab.topology.nodes.clone();
    let mut texts = BTreeMap::new();
    for n in &nodes {
        match get_in(lab, &n.netns, 10249, "/metrics").await {
            Ok((200, text)) => {
                texts.insert(n.name.clone(), text);
            }
            Ok((code, _)) => run
                .metrics_cross_check
                .push(format!("{}: /metrics answered HTTP {code}", n.name)),
            Err(e) => run
                .metrics_cross_check
                .push(format!("{}: scraping /metrics: {e:#}", n.name)),
        }
    }
    if let Some(agents) = lab.agents.as_mut() {
        agents.drain();
        run.syncs = agents.reports.clone();
    }
    for (node, text) in texts {
        match samples(&text) {
            Ok(m) => {
                let reports = current_incarnation(&run.syncs, &node);
                let problems = if run.backend.starts_with("kube-proxy:") {
                    cross_check_kube_proxy(&node, &reports, &m)
                } else {
                    cross_check(&node, &reports, &m)
                };
                run.metrics_cross_check.extend(problems);
                run.metrics
                    .insert(node, serde_json::to_value(&m).unwrap_or_default());
            }
            Err(e) => run
                .metrics_cross_check
                .push(format!("{node}: /metrics does not parse: {e}")),
        }
    }
    if run.metrics_cross_check.is_empty() && !run.metrics.is_empty() {
        run.metrics_cross_check.push(format!(
            "all {} agents' counters match the harness's sync counts",
            run.metrics.len()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::metrics::AgentMetrics;
    use svclab_backends::protocol::SyncMode;

    #[test]
    fn agent_metrics_parse_and_cross_check() {
        let mut m = AgentMetrics::new("node-0");
        let mut r = SyncReport {
            node: "node-0".into(),
            backend: "none".into(),
            seq: 1,
            mode: SyncMode::Full,
            started_at: 1.0,
            wall_seconds: 0.01,
            cpu: Default::default(),
            rules: 0,
            written: 0,
            services: 1,
            endpoints: 1,
            service_ports_changed: 1,
            service_events: 3,
            endpoint_events: 4,
            resource_version: 7,
            versions: Default::default(),
            programming_seconds: vec![],
            error: None,
            family: None,
        };
        m.record(&r);
        let first = r.clone();
        r.seq = 2;
        r.mode = SyncMode::Partial;
        r.service_events = 0;
        r.endpoint_events = 1;
        m.record(&r);
        let parsed = samples(&m.encode()).unwrap();
        assert_eq!(
            parsed["kubeproxy_sync_proxy_rules_endpoint_changes_total"],
            5.0
        );
        assert!(cross_check("node-0", &[&first, &r], &parsed).is_empty());
        // A restarted agent's counters start again: only its own reports count.
        let mut before = first.clone();
        before.seq = 7;
        let all = vec![before.clone(), first.clone(), r.clone()];
        assert_eq!(current_incarnation(&all, "node-0").len(), 2);
        let problems = cross_check("node-0", &[&first], &parsed);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("svclab_agent_syncs_total is 2")),
            "{problems:?}"
        );
    }
}
