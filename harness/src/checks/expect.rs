//! What Kubernetes says should happen, worked out from the Service and
//! EndpointSlice objects alone, never from the backend under test.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use svclab_backends::model::{IpFamily, Protocol};

use crate::controlplane::ControlPlane;

/// One port of one Service, as a probe target.
#[derive(Clone, Debug)]
pub struct Target {
    pub namespace: String,
    pub service: String,
    pub port_name: String,
    pub protocol: Protocol,
    /// The ClusterIP of the family the checks run in.
    pub vip: IpAddr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub etp_local: bool,
    pub itp_local: bool,
    pub affinity: bool,
    pub health_check_node_port: Option<u16>,
    /// Every endpoint of this port, from the slices.
    pub endpoints: Vec<Ep>,
}

/// One endpoint, as the slices describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ep {
    /// `namespace/name` of the pod.
    pub pod: String,
    pub ip: IpAddr,
    pub port: u16,
    pub node: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Target {
    pub fn label(&self) -> String {
        let port = if self.port_name.is_empty() {
            String::new()
        } else {
            format!(":{}", self.port_name)
        };
        format!(
            "{}/{}{port} {}/{}",
            self.namespace,
            self.service,
            self.vip_addr(),
            self.protocol
        )
    }

    pub fn vip_addr(&self) -> SocketAddr {
        SocketAddr::new(self.vip, self.port)
    }

    /// Endpoints traffic with cluster policy may reach: the ready ones, or
    /// the serving-and-terminating ones when none is ready.
    pub fn cluster(&self) -> Vec<&Ep> {
        let ready: Vec<&Ep> = self.endpoints.iter().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        self.endpoints
            .iter()
            .filter(|e| e.serving && e.terminating)
            .collect()
    }

    /// Endpoints traffic with local policy on `node` may reach: local ready
    /// ones, or local serving-and-terminating ones when none is ready.
    pub fn local(&self, node: &str) -> Vec<&Ep> {
        let mine = || self.endpoints.iter().filter(move |e| e.node == node);
        let ready: Vec<&Ep> = mine().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        mine().filter(|e| e.serving && e.terminating).collect()
    }

    /// What a client inside the cluster on `node` may reach through the VIP.
    pub fn internal(&self, node: &str) -> Vec<&Ep> {
        if self.itp_local {
            self.local(node)
        } else {
            self.cluster()
        }
    }

    /// What a client outside the cluster may reach through `node`'s NodePort.
    pub fn external(&self, node: &str) -> Vec<&Ep> {
        if self.etp_local {
            self.local(node)
        } else {
            self.cluster()
        }
    }

    /// Usable endpoints exist anywhere (else: reject, not drop).
    pub fn has_any(&self) -> bool {
        !self.cluster().is_empty()
    }

    pub fn nodes_with_endpoints(&self) -> Vec<String> {
        let mut v: Vec<String> = self.cluster().iter().map(|e| e.node.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Every service port the default proxy programs now in `family`, with its
/// endpoints of that family (Services labelled for another proxy or
/// headless are not its own, nor are Services without a ClusterIP of the
/// family: kube-proxy runs one proxier per family, each blind to the other).
/// Services with a traffic distribution are left to the
/// traffic-distribution check: which endpoints they reach depends on the
/// client's zone, which the other checks' expectations do not know.
pub fn targets(cp: &ControlPlane, family: IpFamily) -> Vec<Target> {
    cp.services()
        .filter(|s| crate::controlplane::store::proxied_labels(s.metadata.labels.as_ref()))
        .filter(|s| !super::traffic_distribution::distributed(s))
        .flat_map(|svc| targets_of(cp, svc, family))
        .collect()
}

/// The Service's ClusterIP of `family`: from `clusterIPs`, or `clusterIP`
/// for an object that lists only that.
pub fn cluster_ip(svc: &Service, family: IpFamily) -> Option<IpAddr> {
    let spec = svc.spec.as_ref()?;
    spec.cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .find(|ip| IpFamily::of(ip) == family)
}

pub fn targets_of(cp: &ControlPlane, svc: &Service, family: IpFamily) -> Vec<Target> {
    let ns = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let Some(vip) = cluster_ip(svc, family) else {
        return Vec::new();
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    let node_ports = matches!(ty, "NodePort" | "LoadBalancer");
    let slices: Vec<_> = cp
        .slices_of(&ns, &name)
        .iter()
        .filter(|s| s.address_type == family.as_k8s())
        .collect();
    let node_of: BTreeMap<String, String> = cp
        .pods()
        .iter()
        .map(|p| (p.key(), cp.node_names()[p.node].clone()))
        .collect();
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let protocol = Protocol::parse_k8s(p.protocol.as_deref()).unwrap_or(Protocol::Tcp);
        let port_name = p.name.clone().unwrap_or_default();
        let mut endpoints = Vec::new();
        for slice in &slices {
            let Some(sp) = slice.ports.iter().flatten().find(|sp| {
                sp.name.clone().unwrap_or_default() == port_name
                    && Protocol::parse_k8s(sp.protocol.as_deref()) == Some(protocol)
            }) else {
                continue;
            };
            let Some(port) = sp.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            for e in slice.endpoints.iter().flatten() {
                let Some(ip) = e.addresses.first().and_then(|a| a.parse().ok()) else {
                    continue;
                };
                let c = e.conditions.clone().unwrap_or_default();
                let ready = c.ready.unwrap_or(true);
                let pod = e
                    .target_ref
                    .as_ref()
                    .map(|r| {
                        format!(
                            "{}/{}",
                            r.namespace.clone().unwrap_or_default(),
                            r.name.clone().unwrap_or_default()
                        )
                    })
                    .unwrap_or_default();
                endpoints.push(Ep {
                    node: e
                        .node_name
                        .clone()
                        .or_else(|| node_of.get(&pod).cloned())
                        .unwrap_or_default(),
                    pod,
                    ip,
                    port,
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating.unwrap_or(false),
                });
            }
        }
        out.push(Target {
            namespace: ns.clone(),
            service: name.clone(),
            port_name,
            protocol,
            vip,
            port: p.port as u16,
            node_port: if node_ports {
                p.node_port.and_then(|n| u16::try_from(n).ok())
            } else {
                None
            },
            etp_local: node_ports && spec.external_traffic_policy.as_deref() == Some("Local"),
            itp_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            affinity: spec.session_affinity.as_deref() == Some("ClientIP"),
            health_check_node_port: spec
                .health_check_node_port
                .and_then(|n| u16::try_from(n).ok()),
            endpoints,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(node: &str, ready: bool, serving: bool, terminating: bool) -> Ep {
        Ep {
            pod: format!("default/p-{node}-{ready}-{terminating}"),
            ip: [10, 244, 0, 2].into(),
            port: 8080,
            node: node.into(),
            ready,
            serving,
            terminating,
        }
    }

    fn target(itp_local: bool, etp_local: bool, eps: Vec<Ep>) -> Target {
        Target {
            namespace: "default".into(),
            service: "s".into(),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            vip: [10, 96, 0, 11].into(),
            port: 80,
            node_port: Some(30080),
            etp_local,
            itp_local,
            affinity: false,
            health_check_node_port: None,
            endpoints: eps,
        }
    }

    #[test]
    fn kubernetes_semantics_table() {
        // (what, target, node, internal count, external count)
        let cases = vec![
            (
                "cluster, ready everywhere",
                target(
                    false,
                    false,
                    vec![ep("a", true, true, false), ep("b", true, true, false)],
                ),
                "a",
                2,
                2,
            ),
            (
                "cluster, one not ready",
                target(
                    false,
                    false,
                    vec![ep("a", false, false, false), ep("b", true, true, false)],
                ),
                "a",
                1,
                1,
            ),
            (
                "cluster, only terminating",
                target(
                    false,
                    false,
                    vec![ep("a", false, true, true), ep("b", false, false, true)],
                ),
                "a",
                1,
                1,
            ),
            (
                "itp local, local endpoint",
                target(
                    true,
                    false,
                    vec![ep("a", true, true, false), ep("b", true, true, false)],
                ),
                "a",
                1,
                2,
            ),
            (
                "itp local, none local",
                target(true, false, vec![ep("b", true, true, false)]),
                "a",
                0,
                1,
            ),
            (
                "etp local, falls back to local terminating",
                target(
                    false,
                    true,
                    vec![ep("a", false, true, true), ep("b", true, true, false)],
                ),
                "a",
                1,
                1,
            ),
            (
                "etp local, nothing local",
                target(false, true, vec![ep("b", true, true, false)]),
                "a",
                1,
                0,
            ),
        ];
        for (what, t, node, internal, external) in cases {
            assert_eq!(t.internal(node).len(), internal, "{what}: internal");
            assert_eq!(t.external(node).len(), external, "{what}: external");
        }
    }
}
