//! kube-proxy's `/metrics` (127.0.0.1:10249) and `/healthz` (0.0.0.0:10256),
//! served from the agent inside the node's namespace at kube-proxy's default
//! addresses, with kube-proxy's metric names and histogram buckets so
//! existing dashboards and habits apply.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use svclab_backends::BackendKind;
use svclab_backends::protocol::{SyncMode, SyncReport};

use super::health::HealthState;
use super::http::serve;
use super::{AgentArgs, Input};

/// kube-proxy's network programming latency buckets.
fn programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b
}

pub struct AgentMetrics {
    registry: Registry,
    sync: Histogram,
    sync_full: Histogram,
    sync_partial: Histogram,
    programming: Histogram,
    last_sync: Gauge<f64, std::sync::atomic::AtomicU64>,
    endpoint_changes: Counter,
    service_changes: Counter,
    syncs: Counter,
    sync_errors: Counter,
    sync_retries: Counter,
    /// kube-proxy's iptables (and IPVS) mode: failed iptables-restore runs.
    restore_failures: Option<Counter>,
    /// kube-proxy's iptables mode: failed restores of a partial sync.
    partial_restore_failures: Option<Counter>,
    /// kube-proxy's nftables mode: failed `nft` transactions.
    nftables_failures: Option<Counter>,
    rules: Gauge,
    pub last_updated: Option<f64>,
    pub healthy: bool,
}

impl AgentMetrics {
    pub fn new(node: &str) -> Self {
        AgentMetrics::for_backend(node, &BackendKind::None)
    }

    /// The metrics of an agent running `backend`: the common ones, plus the
    /// failure counters kube-proxy registers in the matching mode.
    pub fn for_backend(node: &str, backend: &BackendKind) -> Self {
        let mut registry = Registry::with_labels(
            [(
                std::borrow::Cow::Borrowed("node"),
                std::borrow::Cow::Owned(node.to_string()),
            )]
            .into_iter(),
        );
        let buckets = || exponential_buckets(0.001, 2.0, 15);
        let m = AgentMetrics {
            sync: Histogram::new(buckets()),
            sync_full: Histogram::new(buckets()),
            sync_partial: Histogram::new(buckets()),
            programming: Histogram::new(programming_buckets()),
            last_sync: Gauge::default(),
            endpoint_changes: Counter::default(),
            service_changes: Counter::default(),
            syncs: Counter::default(),
            sync_errors: Counter::default(),
            sync_retries: Counter::default(),
            restore_failures: matches!(
                *backend,
                BackendKind::Iptables | BackendKind::IptablesLegacy | BackendKind::Ipvs
            )
            .then(Counter::default),
            partial_restore_failures: matches!(
                *backend,
                BackendKind::Iptables | BackendKind::IptablesLegacy
            )
            .then(Counter::default),
            nftables_failures: matches!(
                *backend,
                BackendKind::Nftables | BackendKind::NftablesFlat
            )
            .then(Counter::default),
            rules: Gauge::default(),
            last_updated: None,
            healthy: false,
            registry: Registry::default(),
        };
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync.clone(),
        );
        registry.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.sync_full.clone(),
        );
        registry.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.sync_partial.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.programming.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            m.endpoint_changes.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.service_changes.clone(),
        );
        registry.register("svclab_agent_syncs", "Syncs the agent ran", m.syncs.clone());
        registry.register(
            "svclab_agent_sync_errors",
            "Syncs that failed",
            m.sync_errors.clone(),
        );
        registry.register(
            "svclab_agent_sync_retries",
            "Failed syncs retried after a backoff (as kube-proxy retries)",
            m.sync_retries.clone(),
        );
        if let Some(c) = &m.restore_failures {
            registry.register(
                "kubeproxy_sync_proxy_rules_iptables_restore_failures",
                "Cumulative proxy iptables restore failures",
                c.clone(),
            );
        }
        if let Some(c) = &m.partial_restore_failures {
            registry.register(
                "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures",
                "Cumulative proxy iptables partial restore failures",
                c.clone(),
            );
        }
        if let Some(c) = &m.nftables_failures {
            registry.register(
                "kubeproxy_sync_proxy_rules_nftables_sync_failures",
                "Cumulative proxy nftables sync failures",
                c.clone(),
            );
        }
        registry.register(
            "svclab_agent_rules",
            "Rules or objects the backend has programmed",
            m.rules.clone(),
        );
        AgentMetrics { registry, ..m }
    }

    pub fn record(&mut self, r: &SyncReport) {
        self.syncs.inc();
        self.endpoint_changes.inc_by(r.endpoint_events);
        self.service_changes.inc_by(r.service_events);
        if let Some(error) = &r.error {
            self.sync_errors.inc();
            // kube-proxy counts a failed restore (iptables, IPVS's iptables
            // part) or a failed nft transaction, not every failed sync.
            if error.contains("restore") {
                if let Some(c) = &self.restore_failures {
                    c.inc();
                }
                if r.mode == SyncMode::Partial
                    && let Some(c) = &self.partial_restore_failures
                {
                    c.inc();
                }
            }
            if let Some(c) = &self.nftables_failures {
                c.inc();
            }
            self.healthy = false;
            return;
        }
        self.sync.observe(r.wall_seconds);
        match r.mode {
            SyncMode::Full => self.sync_full.observe(r.wall_seconds),
            SyncMode::Partial => self.sync_partial.observe(r.wall_seconds),
        }
        for p in &r.programming_seconds {
            self.programming.observe(*p);
        }
        let end = r.started_at + r.wall_seconds;
        self.last_sync.set(end);
        self.rules.set(r.rules as i64);
        self.last_updated = Some(end);
        self.healthy = true;
    }

    /// A failed sync is retried after a backoff.
    pub fn record_retry(&mut self) {
        self.sync_retries.inc();
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String cannot fail");
        s
    }
}

/// Where `/healthz` listens in the node's namespace (kube-proxy's default).
pub const HEALTHZ_ADDRESS: Ipv4Addr = Ipv4Addr::UNSPECIFIED;
/// Where `/metrics` listens in the node's namespace (kube-proxy's default:
/// loopback only).
pub const METRICS_ADDRESS: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The agent's HTTP servers and signal handling, on their own small runtime.
pub struct Servers {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

pub(super) fn start_servers(
    args: &AgentArgs,
    metrics: Arc<Mutex<AgentMetrics>>,
    health: HealthState,
    stop: Sender<Input>,
) -> std::io::Result<Servers> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("agent-http")
        .enable_all()
        .build()?;
    let bind = |ip: Ipv4Addr, port: u16| -> std::io::Result<Option<std::net::TcpListener>> {
        if port == 0 {
            return Ok(None);
        }
        let l = std::net::TcpListener::bind(SocketAddr::from((ip, port)))?;
        l.set_nonblocking(true)?;
        Ok(Some(l))
    };
    // kube-proxy's defaults: --healthz-bind-address 0.0.0.0:10256 (a load
    // balancer asks every node), --metrics-bind-address 127.0.0.1:10249.
    let healthz = bind(HEALTHZ_ADDRESS, args.healthz_port)?;
    let metrics_l = bind(METRICS_ADDRESS, args.metrics_port)?;
    rt.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = stop.send(Input::Stop("signal"));
    });
    if let Some(l) = healthz {
        let m = metrics.clone();
        rt.spawn(serve(l, move |path| {
            let m = m.lock().expect("metrics lock");
            healthz_reply(path, m.last_updated, m.healthy)
        }));
    }
    if let Some(l) = metrics_l {
        rt.spawn(serve(l, move |path| match path {
            "/metrics" => (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.lock().expect("metrics lock").encode(),
            ),
            _ => (404, "text/plain", "404 page not found\n".into()),
        }));
    }
    rt.spawn(health.serve_node_ports());
    Ok(Servers { runtime: Some(rt) })
}

/// kube-proxy's `/healthz` body.
pub fn healthz_reply(
    path: &str,
    last_updated: Option<f64>,
    healthy: bool,
) -> (u16, &'static str, String) {
    if path != "/healthz" && path != "/livez" {
        return (404, "text/plain", "404 page not found\n".into());
    }
    let fmt = |t: f64| {
        jiff::Timestamp::from_nanosecond((t * 1e9) as i128)
            .map(|ts| ts.to_string())
            .unwrap_or_default()
    };
    let now = crate::state::now();
    let body = serde_json::json!({
        "lastUpdated": last_updated.map(fmt).unwrap_or_default(),
        "currentTime": fmt(now),
        "nodeHealthy": healthy,
        "nodeEligible": true,
    });
    (
        if healthy { 200 } else { 503 },
        "application/json",
        body.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_have_kube_proxy_names_and_counts() {
        let mut m = AgentMetrics::new("node-0");
        let report = SyncReport {
            node: "node-0".into(),
            backend: "none".into(),
            seq: 1,
            mode: SyncMode::Partial,
            started_at: 1000.0,
            wall_seconds: 0.004,
            cpu: Default::default(),
            rules: 12,
            written: 3,
            services: 2,
            endpoints: 4,
            service_ports_changed: 1,
            service_events: 1,
            endpoint_events: 2,
            resource_version: 9,
            versions: Default::default(),
            programming_seconds: vec![0.3],
            error: None,
            family: None,
        };
        m.record(&report);
        let text = m.encode();
        for needle in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{node=\"node-0\",le=\"0.004\"} 1",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{node=\"node-0\"} 1",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count{node=\"node-0\"} 0",
            "kubeproxy_network_programming_duration_seconds_bucket{node=\"node-0\",le=\"0.5\"} 1",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total{node=\"node-0\"} 2",
            "kubeproxy_sync_proxy_rules_service_changes_total{node=\"node-0\"} 1",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{node=\"node-0\"} 1000.004",
        ] {
            assert!(text.contains(needle), "{needle} missing in:\n{text}");
        }
    }

    #[test]
    fn failed_restores_are_counted_as_kube_proxy_counts_them() {
        let mut m = AgentMetrics::for_backend("node-0", &BackendKind::Iptables);
        let failed = |mode, error: &str| SyncReport {
            node: "node-0".into(),
            backend: "iptables".into(),
            seq: 1,
            mode,
            started_at: 1000.0,
            wall_seconds: 0.004,
            cpu: Default::default(),
            rules: 0,
            written: 0,
            services: 0,
            endpoints: 0,
            service_ports_changed: 0,
            service_events: 0,
            endpoint_events: 0,
            resource_version: 1,
            versions: Default::default(),
            programming_seconds: vec![],
            error: Some(error.into()),
            family: None,
        };
        m.record(&failed(
            SyncMode::Partial,
            "`iptables-nft-restore --noflush` exited with exit status: 1",
        ));
        m.record(&failed(
            SyncMode::Full,
            "`iptables-nft-restore --noflush` exited with exit status: 1",
        ));
        m.record(&failed(SyncMode::Full, "conntrack: netlink error"));
        m.record_retry();
        m.record_retry();
        let text = m.encode();
        for needle in [
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{node=\"node-0\"} 2",
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total{node=\"node-0\"} 1",
            "svclab_agent_sync_errors_total{node=\"node-0\"} 3",
            "svclab_agent_sync_retries_total{node=\"node-0\"} 2",
        ] {
            assert!(text.contains(needle), "{needle} missing in:\n{text}");
        }
        assert!(!text.contains("nftables_sync_failures"), "{text}");
        let nft = AgentMetrics::for_backend("node-0", &BackendKind::Nftables).encode();
        assert!(
            nft.contains("kubeproxy_sync_proxy_rules_nftables_sync_failures_total"),
            "{nft}"
        );
    }

    #[test]
    fn healthz_is_503_until_synced() {
        let (code, _, body) = healthz_reply("/healthz", None, false);
        assert_eq!(code, 503);
        assert!(body.contains("\"nodeHealthy\":false"), "{body}");
        let (code, _, body) = healthz_reply("/healthz", Some(1.7e9), true);
        assert_eq!(code, 200);
        assert!(
            body.contains("\"lastUpdated\":\"2023-11-14T22:13:20Z\""),
            "{body}"
        );
    }
}
