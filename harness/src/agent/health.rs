//! kube-proxy's per-Service health checks: for every
//! `externalTrafficPolicy: Local` Service with a `healthCheckNodePort`, the
//! node answers on that port with 200 and the local endpoint count when it
//! has local ready endpoints, and 503 when it has none, so an external load
//! balancer only sends traffic to nodes that can serve it locally.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use svclab_backends::model::{Endpoint, NodeContext, ProxyState};
use tokio::sync::watch;

/// Health-check node port -> (namespace/name, local ready endpoints).
pub type HealthTable = BTreeMap<u16, (String, String, usize)>;

#[derive(Clone)]
pub struct HealthState {
    tx: watch::Sender<HealthTable>,
    /// The `health-counts-terminating` fault: terminating endpoints that
    /// still serve are counted as if ready.
    counts_terminating: bool,
}

impl Default for HealthState {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthState {
    pub fn new() -> Self {
        HealthState {
            tx: watch::channel(HealthTable::new()).0,
            counts_terminating: false,
        }
    }

    /// With the `health-counts-terminating` fault when `yes`.
    pub fn counting_terminating(mut self, yes: bool) -> Self {
        self.counts_terminating = yes;
        self
    }

    /// Recomputes the table after a sync.
    /// Recomputes the table from every proxier's state (one per family).
    /// A Service in both families counts its local endpoints of the first
    /// family given; a single-stack one, those of its own.
    pub fn update(&self, states: &[&ProxyState], _node: &NodeContext, _healthy: bool) {
        let mut table = HealthTable::new();
        for state in states {
            let one = if self.counts_terminating {
                counted(state, |e| e.ready || e.serving)
            } else {
                self::table(state)
            };
            for (port, entry) in one {
                table.entry(port).or_insert(entry);
            }
        }
        self.tx.send_if_modified(|t| {
            if *t == table {
                false
            } else {
                *t = table;
                true
            }
        });
    }

    /// Opens and closes listeners as the table changes; runs until the
    /// runtime stops.
    pub async fn serve_node_ports(self) {
        let mut rx = self.tx.subscribe();
        let mut servers: HashMap<u16, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            let want: BTreeSet<u16> = rx.borrow_and_update().keys().copied().collect();
            servers.retain(|port, task| {
                let keep = want.contains(port);
                if !keep {
                    task.abort();
                }
                keep
            });
            for port in want {
                if servers.contains_key(&port) {
                    continue;
                }
                // `[::]` takes both families (the lab's namespaces keep
                // bindv6only off); a namespace without IPv6 takes 0.0.0.0.
                let listener = std::net::TcpListener::bind(SocketAddr::from((
                    std::net::Ipv6Addr::UNSPECIFIED,
                    port,
                )))
                .or_else(|_| {
                    std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
                });
                let listener = match listener.and_then(|l| l.set_nonblocking(true).map(|()| l)) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!("agent: health check node port {port}: {e}");
                        continue;
                    }
                };
                let rx = rx.clone();
                servers.insert(
                    port,
                    tokio::spawn(super::http::serve(listener, move |_path| {
                        let entry = rx.borrow().get(&port).cloned();
                        match entry {
                            Some((ns, name, n)) => reply(&ns, &name, n),
                            None => (503, "application/json", "{}".into()),
                        }
                    })),
                );
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// kube-proxy's health check answer.
pub fn reply(namespace: &str, name: &str, local: usize) -> (u16, &'static str, String) {
    let body = serde_json::json!({
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": local,
        "serviceProxyHealthy": true,
    });
    (
        if local > 0 { 200 } else { 503 },
        "application/json",
        body.to_string(),
    )
}

/// The health-check table for a proxy state: local ready endpoints per
/// Service (counted once per address across its ports).
pub fn table(state: &ProxyState) -> HealthTable {
    counted(state, |e| e.ready)
}

/// The health-check table counting the local endpoints `counts` accepts.
fn counted(state: &ProxyState, counts: impl Fn(&Endpoint) -> bool) -> HealthTable {
    let mut out = HealthTable::new();
    for (name, svc) in &state.services {
        let Some(port) = svc.health_check_node_port else {
            continue;
        };
        let local: BTreeSet<IpAddr> = state
            .services
            .keys()
            .filter(|n| n.namespace == name.namespace && n.name == name.name)
            .flat_map(|n| state.endpoints_of(n))
            .filter(|e| e.is_local && counts(e))
            .map(|e| e.ip)
            .collect();
        out.insert(
            port,
            (name.namespace.clone(), name.name.clone(), local.len()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use svclab_backends::model::{Endpoint, Protocol, ServicePort, ServicePortName};

    #[test]
    fn local_endpoints_decide_200_or_503() {
        let name = ServicePortName::new("default", "web", "http", Protocol::Tcp);
        let mut st = ProxyState::default();
        st.services.insert(
            name.clone(),
            ServicePort {
                name: name.clone(),
                cluster_ip: Ipv4Addr::new(10, 96, 0, 11).into(),
                port: 80,
                protocol: Protocol::Tcp,
                node_port: Some(30080),
                session_affinity_seconds: None,
                external_policy_local: true,
                internal_policy_local: false,
                health_check_node_port: Some(31000),
                external_ips: vec![],
                load_balancer_ips: vec![],
                load_balancer_source_ranges: vec![],
            },
        );
        let ep = |last, local, ready| Endpoint {
            ip: Ipv4Addr::new(10, 244, 0, last).into(),
            port: 8080,
            ready,
            serving: ready,
            terminating: false,
            node_name: None,
            is_local: local,
            hints: Default::default(),
        };
        st.endpoints.insert(
            name.clone(),
            vec![ep(2, true, true), ep(3, false, true), ep(4, true, false)],
        );
        let t = table(&st);
        assert_eq!(t[&31000], ("default".into(), "web".into(), 1));
        let (code, _, body) = reply("default", "web", 1);
        assert_eq!(code, 200);
        assert!(body.contains("\"localEndpoints\":1"));
        assert_eq!(reply("default", "web", 0).0, 503);
    }
}
