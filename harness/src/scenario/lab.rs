//! The scenario's `kind: Lab` document: the emulated cluster's shape and how
//! the lab exercises it. Everything else in a scenario is plain Kubernetes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub const LAB_API_VERSION: &str = "svclab.dev/v1alpha1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabDoc {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: LabMeta,
    pub spec: LabSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabMeta {
    #[serde(default)]
    pub name: String,
}

/// Nodes as a count (`node-0`, `node-1`, ...) or as a list of names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Nodes {
    Count(u32),
    Names(Vec<String>),
}

impl Nodes {
    pub fn names(&self) -> Vec<String> {
        match self {
            Nodes::Count(n) => (0..*n).map(|i| format!("node-{i}")).collect(),
            Nodes::Names(v) => v.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabSpec {
    pub nodes: Nodes,
    /// The subnet that joins the nodes (and the external client).
    #[serde(default = "default_node_network")]
    pub node_network: Ipv4Net,
    /// The cluster's pod CIDR; every node gets a slice of it.
    #[serde(default = "default_pod_cidr", rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
    #[serde(default = "default_node_mask", rename = "nodeCIDRMaskSize")]
    pub node_cidr_mask_size: u8,
    #[serde(default = "default_service_cidr", rename = "serviceCIDR")]
    pub service_cidr: Ipv4Net,
    /// The cluster's IP families, primary first: `[IPv4]` (the default),
    /// `[IPv6]`, or both in either order (dual-stack).
    #[serde(default = "default_ip_families")]
    pub ip_families: Vec<String>,
    /// One pod CIDR per family in `ipFamilies`, in any order
    /// (kube-controller-manager's `--cluster-cidr`); instead of `podCIDR`.
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNet>,
    /// One service CIDR per family in `ipFamilies`, in any order (the API
    /// server's `--service-cluster-ip-range`); instead of `serviceCIDR`.
    #[serde(default, rename = "serviceCIDRs")]
    pub service_cidrs: Vec<IpNet>,
    /// The IPv6 subnet that joins the nodes, when `ipFamilies` has IPv6.
    #[serde(default = "default_node_network_v6", rename = "nodeNetworkIPv6")]
    pub node_network_v6: Ipv6Net,
    /// Each node's slice of the IPv6 pod CIDR.
    #[serde(default = "default_node_mask_v6", rename = "nodeCIDRMaskSizeIPv6")]
    pub node_cidr_mask_size_v6: u8,
    /// NodePort range, as the API server's `--service-node-port-range`.
    #[serde(default = "default_node_port_range")]
    pub node_port_range: String,
    /// An `external` namespace on the node network: an out-of-cluster client.
    #[serde(default = "yes")]
    pub external: bool,
    /// One client pod per node (namespace `svclab-system`), the
    /// `pod-same-node` and `pod-other-node` vantage points.
    #[serde(default = "yes")]
    pub client_pods: bool,
    /// Per-pod state overrides: pods that are not ready or terminating.
    #[serde(default)]
    pub pods: Vec<PodState>,
    #[serde(default)]
    pub probes: ProbeSettings,
    #[serde(default)]
    pub balance: BalanceSettings,
    #[serde(default)]
    pub churn: Option<Churn>,
    /// Agent knobs (kube-proxy's sync periods).
    #[serde(default)]
    pub agent: AgentSettings,
    /// Each node's zone, by node name (`node-0: zone-a`): the Node's
    /// `topology.kubernetes.io/zone` label. Nodes not named have no zone.
    #[serde(default)]
    pub zones: BTreeMap<String, String>,
    /// Addresses the lab's cloud controller gives `type: LoadBalancer`
    /// Services as `status.loadBalancer.ingress`: a CIDR or a list of
    /// addresses, outside the node network, pod and service CIDRs. Without
    /// it LoadBalancer Services stay pending, as in a cluster without a
    /// cloud controller. With it and `external`, the external clients route
    /// the pool to the first node, and a second client (`external-2`) joins
    /// the node network.
    #[serde(default)]
    pub load_balancer_pool: Option<LoadBalancerPool>,
    /// The IPv6 pool, in a lab with IPv6: a Service whose `ipFamilies`
    /// list IPv6 gets an IPv6 ingress address from it too, and the external
    /// clients route it to the first node's IPv6 address.
    #[serde(default, rename = "loadBalancerPoolIPv6")]
    pub load_balancer_pool_v6: Option<LoadBalancerPool>,
}

/// `spec.loadBalancerPool` (IPv4) or `spec.loadBalancerPoolIPv6`: one
/// CIDR, or a list of single addresses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LoadBalancerPool {
    Cidr(IpNet),
    Addresses(Vec<std::net::IpAddr>),
}

impl LoadBalancerPool {
    /// The pool as networks (an address is a /32 or a /128).
    pub fn nets(&self) -> Vec<IpNet> {
        match self {
            LoadBalancerPool::Cidr(n) => vec![*n],
            LoadBalancerPool::Addresses(v) => v.iter().map(|a| IpNet::from(*a)).collect(),
        }
    }

    /// Every address the cloud controller may hand out, in order: a CIDR's
    /// hosts (IPv4's without its network or broadcast address, IPv6's
    /// without the subnet-router anycast address), or the list as given.
    /// An IPv6 range is walked lazily.
    pub fn addresses(&self) -> Box<dyn Iterator<Item = std::net::IpAddr> + '_> {
        match self {
            LoadBalancerPool::Cidr(IpNet::V6(n)) if n.prefix_len() < 127 => {
                Box::new(n.hosts().skip(1).map(std::net::IpAddr::V6))
            }
            LoadBalancerPool::Cidr(n) => Box::new(n.hosts()),
            LoadBalancerPool::Addresses(v) => Box::new(v.iter().copied()),
        }
    }

    /// Whether the cloud controller may hand out `ip`, without walking an
    /// IPv6 range.
    pub fn holds(&self, ip: std::net::IpAddr) -> bool {
        match self {
            LoadBalancerPool::Cidr(IpNet::V4(n)) => {
                n.hosts().any(|a| std::net::IpAddr::V4(a) == ip)
            }
            LoadBalancerPool::Cidr(IpNet::V6(n)) if n.prefix_len() < 127 => {
                IpNet::V6(*n).contains(&ip) && ip != std::net::IpAddr::V6(n.network())
            }
            LoadBalancerPool::Cidr(n) => n.contains(&ip),
            LoadBalancerPool::Addresses(v) => v.contains(&ip),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodState {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default = "yes")]
    pub ready: bool,
    #[serde(default)]
    pub terminating: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeSettings {
    /// Per-probe timeout.
    #[serde(default = "default_probe_timeout")]
    pub timeout_ms: u64,
    /// Probes in flight at once, per vantage point.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Connections per service port and vantage point in the DNAT checks.
    #[serde(default = "default_per_target")]
    pub per_target: usize,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            timeout_ms: default_probe_timeout(),
            concurrency: default_concurrency(),
            per_target: default_per_target(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BalanceSettings {
    /// Connections per Service (K) in the balance check.
    #[serde(default = "default_balance_connections")]
    pub connections: usize,
    /// The chi-square p-value below which the check fails.
    #[serde(default = "default_min_p")]
    pub min_p_value: f64,
}

impl Default for BalanceSettings {
    fn default() -> Self {
        BalanceSettings {
            connections: default_balance_connections(),
            min_p_value: default_min_p(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSettings {
    /// Shortest time between syncs (kube-proxy's `--iptables-min-sync-period`).
    #[serde(default = "default_min_sync_ms")]
    pub min_sync_period_ms: u64,
    /// Full resync interval (kube-proxy's `--iptables-sync-period`).
    #[serde(default = "default_sync_period_ms")]
    pub sync_period_ms: u64,
    /// kube-proxy's `nodePortAddresses`: the node addresses that accept
    /// NodePorts, as CIDRs or the keywords `primary`, `localhost` and `all`.
    /// Unset, each backend keeps its default (svclab's: `primary`;
    /// kube-proxy's: `all` in iptables and IPVS mode, `primary` in nftables).
    #[serde(default)]
    pub node_port_addresses: Vec<String>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            min_sync_period_ms: default_min_sync_ms(),
            sync_period_ms: default_sync_period_ms(),
            node_port_addresses: Vec::new(),
        }
    }
}

/// Changes over time, reproducible from the seed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Churn {
    #[serde(default)]
    pub seed: u64,
    pub duration_seconds: f64,
    /// A random ready pod goes not-ready, and comes back at the next flap.
    #[serde(default)]
    pub endpoint_flaps_per_second: f64,
    /// A random ready pod starts terminating (it stays serving).
    #[serde(default)]
    pub terminating_per_second: f64,
    /// Services created (copies of an existing Service under a new name).
    #[serde(default)]
    pub services_created_per_second: f64,
    /// Services deleted (the ones churn created first).
    #[serde(default)]
    pub services_deleted_per_second: f64,
    #[serde(default)]
    pub scale: Vec<ScaleChurn>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleChurn {
    pub deployment: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub min: u32,
    pub max: u32,
    pub every_seconds: f64,
}

/// A derived address plan, for display and for the topology.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePlan {
    pub name: String,
    pub index: usize,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The node's IPv6 address, pod range and pod gateway, in a lab with
    /// IPv6 (the same host offsets as the IPv4 ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    /// `topology.kubernetes.io/zone`, from the Lab's `zones`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

pub type Labels = BTreeMap<String, String>;

fn yes() -> bool {
    true
}
fn default_namespace() -> String {
    "default".into()
}
fn default_node_network() -> Ipv4Net {
    "172.18.0.0/24".parse().expect("constant")
}
fn default_pod_cidr() -> Ipv4Net {
    "10.244.0.0/16".parse().expect("constant")
}
fn default_node_mask() -> u8 {
    24
}
fn default_service_cidr() -> Ipv4Net {
    "10.96.0.0/16".parse().expect("constant")
}
fn default_ip_families() -> Vec<String> {
    vec!["IPv4".to_string()]
}
fn default_node_network_v6() -> Ipv6Net {
    "fd00:172:18::/64".parse().expect("constant")
}
fn default_node_mask_v6() -> u8 {
    64
}
fn default_node_port_range() -> String {
    "30000-32767".into()
}
fn default_probe_timeout() -> u64 {
    1000
}
fn default_concurrency() -> usize {
    64
}
fn default_per_target() -> usize {
    20
}
fn default_balance_connections() -> usize {
    2000
}
fn default_min_p() -> f64 {
    0.001
}
fn default_min_sync_ms() -> u64 {
    100
}
fn default_sync_period_ms() -> u64 {
    60_000
}
