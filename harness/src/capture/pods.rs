//! Pods, reconstructed from EndpointSlices: each endpoint is a pod (its
//! `targetRef`, or its address when it has none) on a node, with the
//! container ports its Services' targetPorts resolved to and the readiness
//! its conditions report. A pod that backs several Services is one pod.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use svclab_backends::model::Protocol;
use svclab_backends::tracker::SERVICE_NAME_LABEL;

/// A container port a pod must have: number, protocol, and the name a
/// Service's named targetPort looks up.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerPort {
    pub port: u16,
    pub protocol: Protocol,
    pub name: Option<String>,
}

/// What the slices say about one pod.
#[derive(Clone, Debug)]
pub struct PodRecord {
    /// The pod's name (`targetRef`), or its address for endpoints without one.
    pub name: String,
    pub node: Option<String>,
    pub address: Ipv4Addr,
    /// Whether the endpoint names a pod (`targetRef`); others are often
    /// node or external addresses.
    pub is_pod: bool,
    /// Serving (the pod's own readiness); a terminating pod is never ready.
    pub ready: bool,
    pub terminating: bool,
    /// Whether `ready` came from a Service that does not publish not-ready
    /// addresses (such a Service reports every endpoint ready).
    pub state_known: bool,
    /// Indices of the Services it backs (into the caller's Service list).
    pub services: BTreeSet<usize>,
    pub ports: BTreeMap<(u16, Protocol), Option<String>>,
}

/// Something in the slices the scenario cannot reproduce. Notes carry real
/// names; the caller words them (and anonymizes them when asked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// A slice without the label that names its Service.
    NoServiceLabel { namespace: String, slice: String },
    /// An IPv6 or FQDN slice.
    AddressType {
        service: usize,
        address_type: String,
    },
    /// A slice port no Service port has.
    UnknownPort {
        service: usize,
        name: String,
        port: u16,
        protocol: Protocol,
    },
    /// Two Services name one container port differently.
    PortNamedTwice {
        service: usize,
        pod: String,
        port: u16,
        protocol: Protocol,
        kept: String,
    },
}

/// The captured view of one Service the pods are matched against.
pub struct ServiceView<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub ports: &'a [ServicePort],
    pub publish_not_ready: bool,
}

/// Pods by (namespace, name), and notes about what could not be used.
pub fn collect(
    services: &[ServiceView<'_>],
    slices: &[EndpointSlice],
    notes: &mut Vec<Note>,
) -> BTreeMap<(String, String), PodRecord> {
    let index: BTreeMap<(&str, &str), usize> = services
        .iter()
        .enumerate()
        .map(|(i, s)| ((s.namespace, s.name), i))
        .collect();
    let mut pods: BTreeMap<(String, String), PodRecord> = BTreeMap::new();
    for slice in slices {
        let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
        let slice_name = slice.metadata.name.as_deref().unwrap_or("");
        let Some(svc_name) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            notes.push(Note::NoServiceLabel {
                namespace: ns.to_string(),
                slice: slice_name.to_string(),
            });
            continue;
        };
        let Some(&si) = index.get(&(ns, svc_name.as_str())) else {
            // Its Service was skipped (and noted) or is outside the capture.
            continue;
        };
        if slice.address_type != "IPv4" {
            notes.push(Note::AddressType {
                service: si,
                address_type: slice.address_type.clone(),
            });
            continue;
        }
        let svc = &services[si];
        let ports = resolve_ports(si, svc, slice, notes);
        for ep in slice.endpoints.as_deref().unwrap_or(&[]) {
            add_endpoint(&mut pods, ns, si, svc, ep, &ports, notes);
        }
    }
    pods
}

/// The slice's ports as container ports, each named when its Service port
/// has a named targetPort.
fn resolve_ports(
    si: usize,
    svc: &ServiceView<'_>,
    slice: &EndpointSlice,
    notes: &mut Vec<Note>,
) -> Vec<ContainerPort> {
    let mut out = Vec::new();
    for p in slice.ports.as_deref().unwrap_or(&[]) {
        let protocol = Protocol::parse_k8s(p.protocol.as_deref()).unwrap_or(Protocol::Tcp);
        let name = p.name.as_deref().unwrap_or("");
        let Some(number) = p
            .port
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
        else {
            continue;
        };
        let svc_port = svc.ports.iter().find(|sp| {
            sp.name.as_deref().unwrap_or("") == name
                && Protocol::parse_k8s(sp.protocol.as_deref()) == Some(protocol)
        });
        let Some(svc_port) = svc_port else {
            notes.push(Note::UnknownPort {
                service: si,
                name: name.to_string(),
                port: number,
                protocol,
            });
            continue;
        };
        let container_name = match &svc_port.target_port {
            Some(IntOrString::String(n)) => Some(n.clone()),
            _ => None,
        };
        out.push(ContainerPort {
            port: number,
            protocol,
            name: container_name,
        });
    }
    out
}

fn add_endpoint(
    pods: &mut BTreeMap<(String, String), PodRecord>,
    ns: &str,
    si: usize,
    svc: &ServiceView<'_>,
    ep: &Endpoint,
    ports: &[ContainerPort],
    notes: &mut Vec<Note>,
) {
    let Some(address) = ep
        .addresses
        .first()
        .and_then(|a| a.parse::<Ipv4Addr>().ok())
    else {
        return;
    };
    let pod_name = ep
        .target_ref
        .as_ref()
        .filter(|r| r.kind.as_deref() == Some("Pod"))
        .and_then(|r| r.name.clone());
    let is_pod = pod_name.is_some();
    let name = pod_name.unwrap_or_else(|| address.to_string());
    let c = ep.conditions.clone().unwrap_or_default();
    // An unset condition means ready (the API's documented default), and
    // serving defaults to ready.
    let ready = c.ready.unwrap_or(true);
    let serving = c.serving.unwrap_or(ready);
    let terminating = c.terminating.unwrap_or(false);
    let known = !svc.publish_not_ready;
    let pod = pods
        .entry((ns.to_string(), name.clone()))
        .or_insert_with(|| PodRecord {
            name,
            node: ep.node_name.clone(),
            address,
            is_pod,
            ready: true,
            terminating,
            state_known: false,
            services: BTreeSet::new(),
            ports: BTreeMap::new(),
        });
    if known && !pod.state_known {
        pod.ready = serving;
        pod.terminating = terminating;
        pod.state_known = true;
    }
    pod.terminating |= terminating;
    if pod.node.is_none() {
        pod.node = ep.node_name.clone();
    }
    pod.services.insert(si);
    for p in ports {
        match pod.ports.get(&(p.port, p.protocol)) {
            Some(existing) if p.name.is_some() && *existing != p.name => {
                if existing.is_none() {
                    pod.ports.insert((p.port, p.protocol), p.name.clone());
                } else {
                    notes.push(Note::PortNamedTwice {
                        service: si,
                        pod: pod.name.clone(),
                        port: p.port,
                        protocol: p.protocol,
                        kept: existing.clone().unwrap_or_default(),
                    });
                }
            }
            Some(_) => {}
            None => {
                pod.ports.insert((p.port, p.protocol), p.name.clone());
            }
        }
    }
}

/// The owning workload's name from a pod name: `web-7d9f8b6c4-x2x7q`
/// (Deployment) gives `web`, `db-0` (StatefulSet) gives `db`.
pub fn owner_name(pod: &str) -> Option<&str> {
    let parts: Vec<&str> = pod.split('-').collect();
    let is_hash = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let cut = match parts.as_slice() {
        [.., rs, p] if parts.len() >= 3 && is_hash(rs) && rs.len() >= 5 && p.len() == 5 => 2,
        [.., n] if parts.len() >= 2 && n.bytes().all(|b| b.is_ascii_digit()) => 1,
        [.., p] if parts.len() >= 2 && p.len() == 5 && is_hash(p) => 1,
        _ => return None,
    };
    let end: usize = parts[..parts.len() - cut].iter().map(|s| s.len() + 1).sum();
    Some(&pod[..end - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_names() {
        assert_eq!(owner_name("web-7d9f8b6c4-x2x7q"), Some("web"));
        assert_eq!(owner_name("my-api-5c8d7f9b-abcde"), Some("my-api"));
        assert_eq!(owner_name("db-0"), Some("db"));
        assert_eq!(owner_name("agent-x2x7q"), Some("agent"));
        assert_eq!(owner_name("10.0.0.1"), None);
        assert_eq!(owner_name("single"), None);
    }
}
