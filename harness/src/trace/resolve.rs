//! `--from` and `--to` of `svclab trace`, resolved against a running lab's
//! record: which namespace the probe starts in, which address it dials.

use std::net::{Ipv4Addr, SocketAddrV4};

use k8s_openapi::api::core::v1::Service;
use serde::{Deserialize, Serialize};
use svclab_backends::model::Protocol;

use super::TraceError;
use crate::topology::Topology;

/// Where the probe starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct From {
    /// `pod`, `node` or `external`.
    pub kind: String,
    pub name: String,
    #[serde(skip)]
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The node it sits on (none for `external`).
    pub node: Option<String>,
}

/// What the probe dials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct To {
    /// `namespace/name`, when the address belongs to a Service.
    pub service: Option<String>,
    pub port_name: Option<String>,
    pub protocol: Protocol,
    pub address: SocketAddrV4,
    /// A NodePort on a node's address (rather than a ClusterIP).
    pub node_port: bool,
    /// The node whose address is dialled, for a NodePort.
    pub node: Option<String>,
}

/// Parses `pod/<ns>/<name>` (or `pod/<name>` in `default`),
/// `node/<name>` or `external`.
pub fn from(spec: &str, topology: &Topology) -> Result<From, TraceError> {
    let bad = |why: String| TraceError::Vantage(format!("{spec:?}: {why}"));
    let parts: Vec<&str> = spec.split('/').collect();
    match parts.as_slice() {
        ["external"] => Ok(From {
            kind: "external".into(),
            name: "external".into(),
            netns: topology
                .external
                .clone()
                .ok_or_else(|| bad("this lab has no external client".into()))?,
            ip: topology
                .external_ip
                .ok_or_else(|| bad("this lab has no external client".into()))?,
            node: None,
        }),
        ["external-2"] => Ok(From {
            kind: "external".into(),
            name: "external-2".into(),
            netns: topology
                .external2
                .clone()
                .ok_or_else(|| bad("this lab has no second external client".into()))?,
            ip: topology
                .external2_ip
                .ok_or_else(|| bad("this lab has no second external client".into()))?,
            node: None,
        }),
        ["node", name] => {
            let n = topology.node(name).ok_or_else(|| {
                bad(format!(
                    "no node {name:?}; nodes: {}",
                    topology
                        .nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            Ok(From {
                kind: "node".into(),
                name: n.name.clone(),
                netns: n.netns.clone(),
                ip: n.ip,
                node: Some(n.name.clone()),
            })
        }
        ["pod", ns, name] => pod(topology, ns, name, bad),
        ["pod", name] => pod(topology, "default", name, bad),
        _ => Err(bad(
            "expected pod/<namespace>/<name>, node/<name> or external".into(),
        )),
    }
}

fn pod(
    topology: &Topology,
    ns: &str,
    name: &str,
    bad: impl Fn(String) -> TraceError,
) -> Result<From, TraceError> {
    let p = topology.pod(ns, name).ok_or_else(|| {
        let some: Vec<String> = topology
            .pods
            .iter()
            .take(8)
            .map(|p| format!("pod/{}/{}", p.namespace, p.name))
            .collect();
        bad(format!("no pod {ns}/{name}; e.g. {}", some.join(", ")))
    })?;
    Ok(From {
        kind: "pod".into(),
        name: format!("{ns}/{name}"),
        netns: p.netns.clone(),
        ip: p.ip,
        node: topology.nodes.get(p.node).map(|n| n.name.clone()),
    })
}

/// Parses `<service>[.<namespace>]:<port>` (or `<ip>:<port>`). The port is
/// a Service port, or one of its node ports. From `external`, which has no
/// route to ClusterIPs, a Service port means its NodePort. A NodePort is
/// dialled on `via_node`, else the client's node, else the first node.
pub fn to(
    spec: &str,
    protocol: Protocol,
    from: &From,
    via_node: Option<&str>,
    services: &[Service],
    topology: &Topology,
) -> Result<To, TraceError> {
    let bad = |why: String| TraceError::Target(format!("{spec:?}: {why}"));
    let (host, port) = spec
        .rsplit_once(':')
        .ok_or_else(|| bad("expected <service>[.<namespace>]:<port>".into()))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad(format!("{port:?} is not a port number")))?;
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(To {
            service: None,
            port_name: None,
            protocol,
            address: SocketAddrV4::new(ip, port),
            node_port: topology.nodes.iter().any(|n| n.ip == ip),
            node: topology
                .nodes
                .iter()
                .find(|n| n.ip == ip)
                .map(|n| n.name.clone()),
        });
    }
    let (name, ns) = host.split_once('.').unwrap_or((host, "default"));
    let svc = services
        .iter()
        .find(|s| {
            s.metadata.name.as_deref() == Some(name)
                && s.metadata.namespace.as_deref().unwrap_or("default") == ns
        })
        .ok_or_else(|| bad(format!("no Service {ns}/{name} in this lab")))?;
    let spec_ = svc.spec.clone().unwrap_or_default();
    let ports = spec_.ports.clone().unwrap_or_default();
    let proto_of = |p: &k8s_openapi::api::core::v1::ServicePort| {
        Protocol::parse_k8s(p.protocol.as_deref()).unwrap_or(Protocol::Tcp)
    };
    let by_port = ports
        .iter()
        .find(|p| p.port == i32::from(port) && proto_of(p) == protocol);
    let by_node_port = ports
        .iter()
        .find(|p| p.node_port == Some(i32::from(port)) && proto_of(p) == protocol);
    let Some(sp) = by_port.or(by_node_port) else {
        let have: Vec<String> = ports
            .iter()
            .map(|p| match p.node_port {
                Some(np) => format!("{}/{} (nodePort {np})", p.port, proto_of(p)),
                None => format!("{}/{}", p.port, proto_of(p)),
            })
            .collect();
        return Err(bad(format!(
            "Service {ns}/{name} has no {protocol} port or node port {port}; it has {}",
            have.join(", ")
        )));
    };
    let node_port = by_port.is_none() || from.kind == "external";
    let address = if node_port {
        let np = sp
            .node_port
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| {
                bad(format!(
                    "Service {ns}/{name} has no node port, and {} cannot reach ClusterIPs",
                    from.kind
                ))
            })?;
        let node = match via_node.or(from.node.as_deref()) {
            Some(n) => topology
                .node(n)
                .ok_or_else(|| bad(format!("no node {n:?}")))?,
            None => topology
                .nodes
                .first()
                .ok_or_else(|| bad("the lab has no nodes".into()))?,
        };
        SocketAddrV4::new(node.ip, np)
    } else {
        let vip = spec_
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .ok_or_else(|| bad(format!("Service {ns}/{name} has no ClusterIP (headless?)")))?;
        SocketAddrV4::new(vip, port)
    };
    Ok(To {
        service: Some(format!("{ns}/{name}")),
        port_name: sp.name.clone().filter(|n| !n.is_empty()),
        protocol,
        address,
        node_port,
        node: node_port
            .then(|| {
                topology
                    .nodes
                    .iter()
                    .find(|n| n.ip == *address.ip())
                    .map(|n| n.name.clone())
            })
            .flatten(),
    })
}
