//! `--from` and `--to` of `svclab trace`, resolved against a running lab's
//! record: which namespace the probe starts in, which address it dials.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use serde::{Deserialize, Serialize};
use svclab_backends::model::{IpFamily, Protocol};

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
    pub ip: IpAddr,
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
    pub address: SocketAddr,
    /// A NodePort on a node's address (rather than a ClusterIP).
    pub node_port: bool,
    /// The node whose address is dialled, for a NodePort.
    pub node: Option<String>,
}

/// The `<ip>` of an `<ip>:<port>` target (an IPv6 one in brackets).
fn literal(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok().map(Into::into),
        None => host.parse::<std::net::Ipv4Addr>().ok().map(Into::into),
    }
}

/// The IP family a trace runs in: the `--to` address's, else `asked`
/// (`--family`), else the Service's primary one (its first
/// `spec.ipFamilies`; IPv4 when unset, as in an IPv4-only lab).
pub fn family(
    to: &str,
    asked: Option<IpFamily>,
    services: &[Service],
) -> Result<IpFamily, TraceError> {
    let host = to.rsplit_once(':').map_or(to, |(h, _)| h);
    if let Some(ip) = literal(host) {
        let f = IpFamily::of(&ip);
        return match asked {
            Some(a) if a != f => Err(TraceError::Target(format!(
                "{to:?} is an {} address, and --family asks for {}",
                f.as_k8s(),
                a.as_k8s()
            ))),
            _ => Ok(f),
        };
    }
    if let Some(a) = asked {
        return Ok(a);
    }
    let (name, ns) = host.split_once('.').unwrap_or((host, "default"));
    Ok(services
        .iter()
        .find(|s| {
            s.metadata.name.as_deref() == Some(name)
                && s.metadata.namespace.as_deref().unwrap_or("default") == ns
        })
        .and_then(|s| s.spec.as_ref()?.ip_families.as_ref()?.first().cloned())
        .and_then(|f| IpFamily::parse_k8s(&f))
        .unwrap_or(IpFamily::IPv4))
}

/// Parses `pod/<ns>/<name>` (or `pod/<name>` in `default`),
/// `node/<name>` or `external`; the probe starts from its address of
/// `family`.
pub fn from(spec: &str, topology: &Topology, family: IpFamily) -> Result<From, TraceError> {
    let bad = |why: String| TraceError::Vantage(format!("{spec:?}: {why}"));
    let no_family = || {
        bad(format!(
            "it has no {} address: this lab is not {}",
            family.as_k8s(),
            family.as_k8s()
        ))
    };
    let v6 = topology.v6.as_ref();
    let external = |v4: Option<std::net::Ipv4Addr>, v6: Option<std::net::Ipv6Addr>| match family {
        IpFamily::IPv4 => v4.map(IpAddr::from),
        IpFamily::IPv6 => v6.map(IpAddr::from),
    };
    let parts: Vec<&str> = spec.split('/').collect();
    match parts.as_slice() {
        ["external"] => Ok(From {
            kind: "external".into(),
            name: "external".into(),
            netns: topology
                .external
                .clone()
                .ok_or_else(|| bad("this lab has no external client".into()))?,
            ip: external(topology.external_ip, v6.and_then(|v| v.external_ip))
                .ok_or_else(no_family)?,
            node: None,
        }),
        ["external-2"] => Ok(From {
            kind: "external".into(),
            name: "external-2".into(),
            netns: topology
                .external2
                .clone()
                .ok_or_else(|| bad("this lab has no second external client".into()))?,
            ip: external(topology.external2_ip, v6.and_then(|v| v.external2_ip))
                .ok_or_else(no_family)?,
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
                ip: n.ip_of(family).ok_or_else(no_family)?,
                node: Some(n.name.clone()),
            })
        }
        ["pod", ns, name] => pod(topology, ns, name, family, bad),
        ["pod", name] => pod(topology, "default", name, family, bad),
        _ => Err(bad(
            "expected pod/<namespace>/<name>, node/<name> or external".into(),
        )),
    }
}

fn pod(
    topology: &Topology,
    ns: &str,
    name: &str,
    family: IpFamily,
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
        ip: p.ip_of(family).ok_or_else(|| {
            bad(format!(
                "it has no {} address: this lab is not {}",
                family.as_k8s(),
                family.as_k8s()
            ))
        })?,
        node: topology.nodes.get(p.node).map(|n| n.name.clone()),
    })
}

/// Parses `<service>[.<namespace>]:<port>` (or `<ip>:<port>`). The port is
/// a Service port, or one of its node ports. From `external`, which has no
/// route to ClusterIPs, a Service port means its NodePort. A NodePort is
/// dialled on `via_node`, else the client's node, else the first node,
/// at its address of the client's family; a ClusterIP is the Service's of
/// that family.
pub fn to(
    spec: &str,
    protocol: Protocol,
    from: &From,
    via_node: Option<&str>,
    services: &[Service],
    topology: &Topology,
) -> Result<To, TraceError> {
    let family = IpFamily::of(&from.ip);
    let bad = |why: String| TraceError::Target(format!("{spec:?}: {why}"));
    let (host, port) = spec
        .rsplit_once(':')
        .ok_or_else(|| bad("expected <service>[.<namespace>]:<port>".into()))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad(format!("{port:?} is not a port number")))?;
    if let Some(ip) = literal(host) {
        return Ok(To {
            service: None,
            port_name: None,
            protocol,
            address: SocketAddr::new(ip, port),
            node_port: topology.nodes.iter().any(|n| n.has_ip(ip)),
            node: topology
                .nodes
                .iter()
                .find(|n| n.has_ip(ip))
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
        let ip = node.ip_of(family).ok_or_else(|| {
            bad(format!(
                "node {} has no {} address",
                node.name,
                family.as_k8s()
            ))
        })?;
        SocketAddr::new(ip, np)
    } else {
        let vip = spec_
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec_.cluster_ip.as_ref())
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .find(|ip| IpFamily::of(ip) == family)
            .ok_or_else(|| {
                bad(format!(
                    "Service {ns}/{name} has no {} ClusterIP (headless, or not of that family: \
                     its ipFamilies are {:?})",
                    family.as_k8s(),
                    spec_.ip_families.clone().unwrap_or_default()
                ))
            })?;
        SocketAddr::new(vip, port)
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
                    .find(|n| n.has_ip(address.ip()))
                    .map(|n| n.name.clone())
            })
            .flatten(),
    })
}
