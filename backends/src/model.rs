//! The proxy's view of the cluster, as kube-proxy keeps it: one entry per
//! service port (`ServicePortName`) with its endpoints, derived from Services
//! and EndpointSlices by [`crate::tracker::ChangeTracker`].
//!
//! Backends render rules from these types; they never look at raw API objects.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// L4 protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Kubernetes' spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_k8s(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The lowercase form iptables, nft and kube-proxy's chain hashes use.
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    pub fn parse_k8s(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_k8s())
    }
}

/// An IP family, as Kubernetes names them (`IPv4`, `IPv6`). kube-proxy runs
/// one proxier per family; a dual-stack lab has both.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum IpFamily {
    #[default]
    IPv4,
    IPv6,
}

impl IpFamily {
    pub const ALL: [IpFamily; 2] = [IpFamily::IPv4, IpFamily::IPv6];

    /// Kubernetes' spelling: `IPv4`, `IPv6`.
    pub fn as_k8s(self) -> &'static str {
        match self {
            IpFamily::IPv4 => "IPv4",
            IpFamily::IPv6 => "IPv6",
        }
    }

    /// The lowercase form result names carry (`clusterip-tcp/ipv6`).
    pub fn lower(self) -> &'static str {
        match self {
            IpFamily::IPv4 => "ipv4",
            IpFamily::IPv6 => "ipv6",
        }
    }

    pub fn parse_k8s(s: &str) -> Option<IpFamily> {
        match s {
            "IPv4" => Some(IpFamily::IPv4),
            "IPv6" => Some(IpFamily::IPv6),
            _ => None,
        }
    }

    pub fn of(ip: &IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::IPv4
        } else {
            IpFamily::IPv6
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_k8s())
    }
}

/// kube-proxy's `ServicePortName`: a Service's namespace and name, one of its
/// port names (possibly empty), and the port's protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The port's `name` field; empty for a single unnamed port.
    pub port: String,
    pub protocol: Protocol,
}

impl ServicePortName {
    pub fn new(namespace: &str, name: &str, port: &str, protocol: Protocol) -> Self {
        ServicePortName {
            namespace: namespace.to_string(),
            name: name.to_string(),
            port: port.to_string(),
            protocol,
        }
    }

    /// `namespace/name`, the Service this port belongs to.
    pub fn service(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Formats as kube-proxy's `ServicePortName.String()`: `ns/name:port`, or
/// `ns/name` when the port has no name. This string feeds the chain hashes.
impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// One port of one Service, as the proxy needs it (kube-proxy's
/// `BaseServicePortInfo`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: ServicePortName,
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Allocated NodePort, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// ClientIP session affinity timeout in seconds, when affinity is on.
    pub session_affinity_seconds: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `healthCheckNodePort`, for externalTrafficPolicy Local Services.
    pub health_check_node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress` IPs in VIP mode (kube-proxy's
    /// `LoadBalancerVIPs`); `ipMode: Proxy` addresses are left to the load
    /// balancer and are not here.
    #[serde(default)]
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`, trimmed; empty when unset or when a
    /// range is 0.0.0.0/0 (which allows everyone, as no ranges do).
    #[serde(default)]
    pub load_balancer_source_ranges: Vec<IpNet>,
}

impl ServicePort {
    /// Reachable from outside the cluster (kube-proxy's
    /// `ExternallyAccessible`): NodePort, external IPs or load balancer IPs.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some()
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// Load balancer traffic goes through a firewall of source ranges
    /// (kube-proxy's `usesFWChain`, before its endpoint condition).
    pub fn uses_firewall(&self) -> bool {
        !self.load_balancer_ips.is_empty() && !self.load_balancer_source_ranges.is_empty()
    }

    /// kube-proxy's `UsesClusterEndpoints`.
    pub fn uses_cluster_endpoints(&self) -> bool {
        // Even with externalTrafficPolicy Local, external traffic from pods
        // and the node itself short-circuits to the cluster endpoints.
        !self.internal_policy_local || self.externally_accessible()
    }

    /// kube-proxy's `UsesLocalEndpoints`.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.externally_accessible() && self.external_policy_local)
    }
}

/// One endpoint of one service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    /// On the node this agent runs on.
    pub is_local: bool,
    /// The endpoint's topology hints, read against this agent's node.
    #[serde(default)]
    pub hints: Hints,
}

/// An endpoint's topology hints (`hints.forZones` and `hints.forNodes` in
/// its EndpointSlice) as this agent sees them: resolved against its own
/// zone and node name when the slice is read, as `is_local` is.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub struct Hints {
    pub zone: Hint,
    pub node: Hint,
}

/// One kind of hint of one endpoint, from this agent's node.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum Hint {
    /// No hint of this kind.
    #[default]
    None,
    /// Hinted for this node's zone (or this node).
    Here,
    /// Hinted only for other zones (or nodes).
    Elsewhere,
}

impl Hint {
    /// Reads a hint list: `this` (the node's zone or name; `None` when the
    /// node has no zone) among `names`.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>, this: Option<&str>) -> Hint {
        let mut any = false;
        for n in names {
            if Some(n) == this {
                return Hint::Here;
            }
            any = true;
        }
        if any { Hint::Elsewhere } else { Hint::None }
    }
}

impl Endpoint {
    /// `ip:port`, the form kube-proxy hashes into endpoint chain names.
    /// IPv6 ones are bracketed (`[fd00::1]:80`), as Go's JoinHostPort.
    pub fn addr(&self) -> String {
        SocketAddr::new(self.ip, self.port).to_string()
    }
}

/// What this agent knows about its own node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeContext {
    pub node_name: String,
    /// The node's address in this proxier's family; every address and
    /// range below is of the same family.
    pub node_ip: IpAddr,
    /// This node's pod CIDR (the `cni0` subnet).
    pub pod_cidr: IpNet,
    /// The whole cluster's pod CIDR (kube-proxy's `--cluster-cidr`).
    pub cluster_cidr: IpNet,
    pub service_cidr: IpNet,
    /// The lab run's prefix; kernel objects a backend creates outside the
    /// fixed kube-proxy names (ipsets, pinned maps, links) start with it.
    pub run_prefix: String,
    /// Name of the pod bridge in the node namespace.
    pub bridge: String,
    /// Name of the node's link to the fabric (where node IP lives).
    pub uplink: String,
    /// The node's `topology.kubernetes.io/zone` label, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The node's own addresses that accept NodePort traffic: its
    /// `nodePortAddresses` resolved by [`crate::nodeport_addresses`]. `None`
    /// is svclab's default: the node IP alone.
    #[serde(default)]
    pub node_port_ips: Option<Vec<IpAddr>>,
    /// `nodePortAddresses` covers 127.0.0.1: a backend that can serve
    /// NodePorts on loopback from the node itself (kube-proxy's iptables
    /// mode, `iptables.localhostNodePorts`) does. Loopback is never among
    /// [`Self::node_port_ips`].
    #[serde(default)]
    pub localhost_node_ports: bool,
}

impl NodeContext {
    /// The addresses NodePorts answer on, in the order they were given.
    pub fn nodeport_ips(&self) -> Vec<IpAddr> {
        self.node_port_ips
            .clone()
            .unwrap_or_else(|| vec![self.node_ip])
    }

    /// The pod bridge's address: the first host of the node's pod CIDR.
    pub fn gateway_ip(&self) -> IpAddr {
        match self.pod_cidr.network() {
            IpAddr::V4(n) => Ipv4Addr::from(u32::from(n) + 1).into(),
            IpAddr::V6(n) => Ipv6Addr::from(u128::from(n) + 1).into(),
        }
    }

    /// The family this node context, and the proxier given it, serve.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.node_ip)
    }
}

/// The proxy's whole state: every service port and its endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyState {
    pub services: BTreeMap<ServicePortName, ServicePort>,
    /// Endpoints per service port, without duplicates, in kube-proxy's order:
    /// by their `ip:port` string.
    pub endpoints: BTreeMap<ServicePortName, Vec<Endpoint>>,
}

impl ProxyState {
    pub fn endpoints_of(&self, name: &ServicePortName) -> &[Endpoint] {
        self.endpoints.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.values().map(Vec::len).sum()
    }
}

/// What changed since the previous sync (kube-proxy's service and endpoint
/// change trackers' output). A full sync carries every service port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeSet {
    /// Service ports whose spec or endpoints changed, including ones that
    /// were deleted (then absent from `ProxyState::services`).
    pub changed: BTreeSet<ServicePortName>,
    /// Service ports that no longer exist, with their last known spec.
    pub deleted: BTreeMap<ServicePortName, ServicePort>,
    /// Endpoints that were serving before and are gone or no longer serving
    /// now, per service port: the stale conntrack candidates.
    pub removed_endpoints: BTreeMap<ServicePortName, Vec<Endpoint>>,
    /// UDP service ports that went from no endpoints to some: conntrack may
    /// hold ICMP-rejected flows for them (kube-proxy clears those too).
    pub became_ready: BTreeSet<ServicePortName>,
    /// Watch events folded into this change set.
    pub service_events: u64,
    pub endpoint_events: u64,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty()
    }
}

/// Endpoints a service port uses on this node, split by traffic policy: the
/// result of kube-proxy's `CategorizeEndpoints`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categorized<'a> {
    /// For traffic with cluster policy; ready endpoints (only those hinted
    /// for this node or zone when topology hints apply), or serving and
    /// terminating ones when none is.
    pub cluster: Vec<&'a Endpoint>,
    /// For traffic with local policy; local ready endpoints, or local serving
    /// and terminating ones when none is ready.
    pub local: Vec<&'a Endpoint>,
    /// Union of the two, for the endpoint chains a backend must create.
    pub all_reachable: Vec<&'a Endpoint>,
    /// Whether any usable endpoint exists anywhere in the cluster.
    pub has_any: bool,
}

/// Which topology hints a service port's cluster endpoints follow on this
/// node (kube-proxy's topologyModeFromHints): node hints when every ready
/// endpoint has one and one is for this node, else zone hints likewise, else
/// none. Hints of not-ready endpoints do not count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologyMode {
    All,
    SameNode,
    SameZone,
}

pub fn topology_mode(endpoints: &[Endpoint]) -> TopologyMode {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    let applies = |hint: fn(&Endpoint) -> Hint| {
        !ready.is_empty()
            && ready.iter().all(|e| hint(e) != Hint::None)
            && ready.iter().any(|e| hint(e) == Hint::Here)
    };
    if applies(|e| e.hints.node) {
        TopologyMode::SameNode
    } else if applies(|e| e.hints.zone) {
        TopologyMode::SameZone
    } else {
        TopologyMode::All
    }
}

/// Kubernetes' endpoint selection for one service port on this node.
pub fn categorize_endpoints<'a>(svc: &ServicePort, endpoints: &'a [Endpoint]) -> Categorized<'a> {
    let mut out = Categorized::default();
    if svc.uses_cluster_endpoints() {
        let mode = topology_mode(endpoints);
        let in_topology = |e: &Endpoint| match mode {
            TopologyMode::All => true,
            TopologyMode::SameNode => e.hints.node == Hint::Here,
            TopologyMode::SameZone => e.hints.zone == Hint::Here,
        };
        out.cluster = endpoints
            .iter()
            .filter(|e| e.ready && in_topology(e))
            .collect();
        if out.cluster.is_empty() {
            out.cluster = endpoints
                .iter()
                .filter(|e| e.serving && e.terminating)
                .collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !svc.uses_local_endpoints() {
        out.all_reachable = out.cluster.clone();
        return out;
    }
    let mut local_ready = false;
    let mut local_terminating = false;
    for e in endpoints {
        if e.ready {
            out.has_any = true;
            local_ready |= e.is_local;
        } else if e.serving && e.terminating {
            out.has_any = true;
            local_terminating |= e.is_local;
        }
    }
    if local_ready {
        out.local = endpoints.iter().filter(|e| e.is_local && e.ready).collect();
    } else if local_terminating {
        out.local = endpoints
            .iter()
            .filter(|e| e.is_local && e.serving && e.terminating)
            .collect();
    }
    if !svc.uses_cluster_endpoints() {
        out.all_reachable = out.local.clone();
        return out;
    }
    let mut all: Vec<&Endpoint> = out.cluster.clone();
    for e in &out.local {
        if !all.contains(e) {
            all.push(e);
        }
    }
    all.sort();
    out.all_reachable = all;
    out
}

/// An address an IPv4-only dataplane (IPVS's netlink, the eBPF maps) is
/// given. The agent runs such a backend as the IPv4 proxier alone (its
/// spec declares no IPv6), so every address it sees is IPv4; an IPv6 one
/// here is a bug in the agent, and stops it loudly.
pub trait V4 {
    fn v4(&self) -> Ipv4Addr;
}

impl V4 for IpAddr {
    fn v4(&self) -> Ipv4Addr {
        match self {
            IpAddr::V4(a) => *a,
            IpAddr::V6(a) => panic!(
                "an IPv4-only backend was given the IPv6 address {a}: the agent runs it for IPv4 only"
            ),
        }
    }
}

/// The IPv4 form of a range, for IPv4-only dataplanes (see [`V4`]).
pub trait V4Net {
    fn v4(&self) -> ipnet::Ipv4Net;
}

impl V4Net for IpNet {
    fn v4(&self) -> ipnet::Ipv4Net {
        match self {
            IpNet::V4(n) => *n,
            IpNet::V6(n) => panic!(
                "an IPv4-only backend was given the IPv6 range {n}: the agent runs it for IPv4 only"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(itp_local: bool, etp_local: bool, node_port: Option<u16>) -> ServicePort {
        ServicePort {
            name: ServicePortName::new("ns", "svc", "p", Protocol::Tcp),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10).into(),
            port: 80,
            protocol: Protocol::Tcp,
            node_port,
            session_affinity_seconds: None,
            external_policy_local: etp_local,
            internal_policy_local: itp_local,
            health_check_node_port: None,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
        }
    }

    fn ep(last: u8, ready: bool, terminating: bool, local: bool) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 244, 0, last).into(),
            port: 8080,
            ready,
            serving: ready || terminating,
            terminating,
            node_name: Some(if local { "n0" } else { "n1" }.into()),
            is_local: local,
            hints: Default::default(),
        }
    }

    fn ips(v: &[&Endpoint]) -> Vec<u8> {
        v.iter().map(|e| e.ip.v4().octets()[3]).collect()
    }

    #[test]
    fn port_name_formats_like_kube_proxy() {
        let named = ServicePortName::new("ns1", "svc1", "p80", Protocol::Tcp);
        assert_eq!(named.to_string(), "ns1/svc1:p80");
        let unnamed = ServicePortName::new("ns1", "svc1", "", Protocol::Udp);
        assert_eq!(unnamed.to_string(), "ns1/svc1");
    }

    #[test]
    fn categorize_table() {
        struct Case {
            name: &'static str,
            svc: ServicePort,
            eps: Vec<Endpoint>,
            cluster: Vec<u8>,
            local: Vec<u8>,
            all: Vec<u8>,
            has_any: bool,
        }
        let cases = vec![
            Case {
                name: "cluster policy uses ready endpoints only",
                svc: svc(false, false, None),
                eps: vec![ep(1, true, false, true), ep(2, false, false, false)],
                cluster: vec![1],
                local: vec![],
                all: vec![1],
                has_any: true,
            },
            Case {
                name: "cluster policy falls back to serving terminating",
                svc: svc(false, false, None),
                eps: vec![ep(1, false, true, false), ep(2, false, false, true)],
                cluster: vec![1],
                local: vec![],
                all: vec![1],
                has_any: true,
            },
            Case {
                name: "no endpoints at all",
                svc: svc(false, false, None),
                eps: vec![],
                cluster: vec![],
                local: vec![],
                all: vec![],
                has_any: false,
            },
            Case {
                name: "internal local uses only local ready",
                svc: svc(true, false, None),
                eps: vec![ep(1, true, false, true), ep(2, true, false, false)],
                cluster: vec![],
                local: vec![1],
                all: vec![1],
                has_any: true,
            },
            Case {
                name: "internal local with only remote endpoints has none locally",
                svc: svc(true, false, None),
                eps: vec![ep(2, true, false, false)],
                cluster: vec![],
                local: vec![],
                all: vec![],
                has_any: true,
            },
            Case {
                name: "external local nodeport: cluster for internal, local for external",
                svc: svc(false, true, Some(30080)),
                eps: vec![ep(1, true, false, false), ep(2, true, false, true)],
                cluster: vec![1, 2],
                local: vec![2],
                all: vec![1, 2],
                has_any: true,
            },
            Case {
                name: "local falls back to local terminating",
                svc: svc(false, true, Some(30080)),
                eps: vec![ep(1, true, false, false), ep(2, false, true, true)],
                cluster: vec![1],
                local: vec![2],
                all: vec![1, 2],
                has_any: true,
            },
            Case {
                name: "both policies local with a nodeport keeps cluster endpoints for short-circuits",
                svc: svc(true, true, Some(30080)),
                eps: vec![ep(1, true, false, false), ep(2, true, false, true)],
                cluster: vec![1, 2],
                local: vec![2],
                all: vec![1, 2],
                has_any: true,
            },
            Case {
                name: "external local without nodeport acts as cluster",
                svc: svc(false, true, None),
                eps: vec![ep(1, true, false, false)],
                cluster: vec![1],
                local: vec![],
                all: vec![1],
                has_any: true,
            },
        ];
        for c in cases {
            let got = categorize_endpoints(&c.svc, &c.eps);
            assert_eq!(ips(&got.cluster), c.cluster, "{}: cluster", c.name);
            assert_eq!(ips(&got.local), c.local, "{}: local", c.name);
            assert_eq!(ips(&got.all_reachable), c.all, "{}: all", c.name);
            assert_eq!(got.has_any, c.has_any, "{}: has_any", c.name);
        }
    }

    /// An endpoint with zone hint `zone` and node hint `node`, as read from
    /// this node.
    fn hinted(last: u8, ready: bool, local: bool, zone: Hint, node: Hint) -> Endpoint {
        let mut e = ep(last, ready, false, local);
        e.hints = Hints { zone, node };
        e
    }

    /// kube-proxy's topology rules (pkg/proxy/topology.go): hints are
    /// followed only when every ready endpoint has one and one is for this
    /// node's zone (or node); local traffic policy ignores them.
    #[test]
    fn categorize_topology_table() {
        use Hint::{Elsewhere, Here, None as No};
        struct Case {
            name: &'static str,
            svc: ServicePort,
            eps: Vec<Endpoint>,
            cluster: Vec<u8>,
            local: Vec<u8>,
            all: Vec<u8>,
        }
        let cases = vec![
            Case {
                name: "zone hints for this zone keep traffic in it",
                svc: svc(false, false, None),
                eps: vec![
                    hinted(1, true, true, Here, No),
                    hinted(2, true, false, Here, No),
                    hinted(3, true, false, Elsewhere, No),
                ],
                cluster: vec![1, 2],
                local: vec![],
                all: vec![1, 2],
            },
            Case {
                name: "no endpoint hinted for this zone: all of them",
                svc: svc(false, false, None),
                eps: vec![
                    hinted(1, true, false, Elsewhere, No),
                    hinted(2, true, false, Elsewhere, No),
                ],
                cluster: vec![1, 2],
                local: vec![],
                all: vec![1, 2],
            },
            Case {
                name: "one ready endpoint without a hint: hints ignored",
                svc: svc(false, false, None),
                eps: vec![
                    hinted(1, true, false, Here, No),
                    hinted(2, true, false, No, No),
                ],
                cluster: vec![1, 2],
                local: vec![],
                all: vec![1, 2],
            },
            Case {
                name: "a not-ready endpoint without a hint does not count",
                svc: svc(false, false, None),
                eps: vec![
                    hinted(1, true, false, Here, No),
                    hinted(2, true, false, Elsewhere, No),
                    hinted(3, false, false, No, No),
                ],
                cluster: vec![1],
                local: vec![],
                all: vec![1],
            },
            Case {
                name: "node hints win over zone hints",
                svc: svc(false, false, None),
                eps: vec![
                    hinted(1, true, true, Here, Here),
                    hinted(2, true, false, Here, Elsewhere),
                ],
                cluster: vec![1],
                local: vec![],
                all: vec![1],
            },
            Case {
                name: "node hints for other nodes only: zone hints",
                svc: svc(false, false, None),
                eps: vec![
                    hinted(1, true, false, Here, Elsewhere),
                    hinted(2, true, false, Elsewhere, Elsewhere),
                ],
                cluster: vec![1],
                local: vec![],
                all: vec![1],
            },
            Case {
                name: "internal traffic policy Local ignores hints",
                svc: svc(true, false, None),
                eps: vec![
                    hinted(1, true, true, Elsewhere, No),
                    hinted(2, true, false, Here, No),
                ],
                cluster: vec![],
                local: vec![1],
                all: vec![1],
            },
            Case {
                name: "external Local: cluster endpoints by hint, local ones whatever their hint",
                svc: svc(false, true, Some(30080)),
                eps: vec![
                    hinted(1, true, true, Elsewhere, No),
                    hinted(2, true, false, Here, No),
                ],
                cluster: vec![2],
                local: vec![1],
                all: vec![1, 2],
            },
        ];
        for c in cases {
            let got = categorize_endpoints(&c.svc, &c.eps);
            assert_eq!(ips(&got.cluster), c.cluster, "{}: cluster", c.name);
            assert_eq!(ips(&got.local), c.local, "{}: local", c.name);
            assert_eq!(ips(&got.all_reachable), c.all, "{}: all", c.name);
            assert!(got.has_any, "{}: has_any", c.name);
        }
    }

    #[test]
    fn hint_of_reads_a_list_from_here() {
        assert_eq!(Hint::of(["a", "b"], Some("b")), Hint::Here);
        assert_eq!(Hint::of(["a"], Some("b")), Hint::Elsewhere);
        assert_eq!(Hint::of(["a"], None), Hint::Elsewhere);
        assert_eq!(Hint::of([], Some("a")), Hint::None);
    }
}
