//! Stale conntrack cleanup, as kube-proxy does after a sync: UDP flows
//! DNATed to an endpoint that is gone keep going there until they time out,
//! unless their entries are deleted.

use std::net::Ipv4Addr;

use crate::BackendError;
use crate::kernel::cmd;
use crate::model::{ChangeSet, Protocol, ProxyState};

/// One conntrack deletion, named for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Flows to `vip:port` that were DNATed to `endpoint`.
    ServiceToEndpoint {
        vip: Ipv4Addr,
        port: u16,
        endpoint: Ipv4Addr,
    },
    /// Flows to any address on `node_port` DNATed to `endpoint`.
    NodePortToEndpoint { node_port: u16, endpoint: Ipv4Addr },
    /// Every UDP flow to `vip:port` (a Service that just got endpoints may
    /// have flows that were rejected while it had none).
    Service { vip: Ipv4Addr, port: u16 },
}

impl Flush {
    /// `conntrack -D` arguments for this deletion.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["-D".into(), "-p".into(), "udp".into()];
        match self {
            Flush::ServiceToEndpoint {
                vip,
                port,
                endpoint,
            } => a.extend([
                "--orig-dst".into(),
                vip.to_string(),
                "--orig-port-dst".into(),
                port.to_string(),
                "--dst-nat".into(),
                endpoint.to_string(),
            ]),
            Flush::NodePortToEndpoint {
                node_port,
                endpoint,
            } => a.extend([
                "--orig-port-dst".into(),
                node_port.to_string(),
                "--dst-nat".into(),
                endpoint.to_string(),
            ]),
            Flush::Service { vip, port } => a.extend([
                "--orig-dst".into(),
                vip.to_string(),
                "--orig-port-dst".into(),
                port.to_string(),
            ]),
        }
        a
    }
}

/// The deletions a change set calls for (UDP only, as in kube-proxy).
pub fn stale_flows(state: &ProxyState, changes: &ChangeSet) -> Vec<Flush> {
    let mut out = Vec::new();
    for (name, removed) in &changes.removed_endpoints {
        if name.protocol != Protocol::Udp {
            continue;
        }
        let Some(svc) = state
            .services
            .get(name)
            .or_else(|| changes.deleted.get(name))
        else {
            continue;
        };
        for ep in removed {
            out.push(Flush::ServiceToEndpoint {
                vip: svc.cluster_ip,
                port: svc.port,
                endpoint: ep.ip,
            });
            for ext in &svc.external_ips {
                out.push(Flush::ServiceToEndpoint {
                    vip: *ext,
                    port: svc.port,
                    endpoint: ep.ip,
                });
            }
            if let Some(np) = svc.node_port {
                out.push(Flush::NodePortToEndpoint {
                    node_port: np,
                    endpoint: ep.ip,
                });
            }
        }
    }
    for name in &changes.became_ready {
        if let Some(svc) = state.services.get(name) {
            out.push(Flush::Service {
                vip: svc.cluster_ip,
                port: svc.port,
            });
        }
    }
    out
}

/// Deletes the flows with the `conntrack` tool. "Nothing to delete" (exit 1)
/// is not an error. Returns how many deletions ran.
pub fn flush(flows: &[Flush]) -> Result<usize, BackendError> {
    for f in flows {
        let args = f.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cmd::run_accepting("conntrack", &args, None, &[0, 1])?;
    }
    Ok(flows.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, ServicePort, ServicePortName};

    #[test]
    fn removed_udp_endpoint_flushes_vip_and_nodeport() {
        let name = ServicePortName::new("ns", "dns", "", Protocol::Udp);
        let svc = ServicePort {
            name: name.clone(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 53),
            port: 53,
            protocol: Protocol::Udp,
            node_port: Some(30053),
            session_affinity_seconds: None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
            external_ips: vec![],
        };
        let ep = Endpoint {
            ip: Ipv4Addr::new(10, 244, 1, 5),
            port: 5353,
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            is_local: false,
        };
        let mut state = ProxyState::default();
        state.services.insert(name.clone(), svc);
        let mut cs = ChangeSet::default();
        cs.removed_endpoints.insert(name.clone(), vec![ep]);
        cs.became_ready.insert(name);
        let flows = stale_flows(&state, &cs);
        assert_eq!(flows.len(), 3);
        assert_eq!(
            flows[0].args().join(" "),
            "-D -p udp --orig-dst 10.96.0.53 --orig-port-dst 53 --dst-nat 10.244.1.5"
        );
        assert_eq!(
            flows[1].args().join(" "),
            "-D -p udp --orig-port-dst 30053 --dst-nat 10.244.1.5"
        );
        assert_eq!(
            flows[2].args().join(" "),
            "-D -p udp --orig-dst 10.96.0.53 --orig-port-dst 53"
        );
    }

    #[test]
    fn tcp_removals_need_no_flush() {
        let name = ServicePortName::new("ns", "web", "", Protocol::Tcp);
        let mut cs = ChangeSet::default();
        cs.removed_endpoints.insert(name, vec![]);
        assert!(stale_flows(&ProxyState::default(), &cs).is_empty());
    }
}
