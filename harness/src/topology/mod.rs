//! The emulated cluster's network: a fabric namespace with a bridge joining
//! the nodes, per node a namespace with an uplink (node IP) and a `cni0`
//! bridge (pod gateway), per pod a namespace with `eth0`, and optionally an
//! `external` client namespace on the fabric (and `external-2`, with a load
//! balancer pool, which both route to the first node). Routing is host-gw: every node
//! routes the other nodes' pod CIDRs via their node IPs.
//!
//! Built through rtnetlink, concurrently; torn down by deleting the
//! namespaces (which destroys every link in them). Nothing is done in the
//! host's own network namespace.

pub(crate) mod build;
pub mod names;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::netns::{NetNs, NetNsError};
use crate::scenario::Scenario;
pub use names::RunId;

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    #[error("{ns}: {op}: {source}")]
    Netlink {
        ns: String,
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{ns}: {op}: {message}")]
    Other {
        ns: String,
        op: String,
        message: String,
    },
}

/// A node's namespace and addresses.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeNet {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The IPv6 twins, in a lab with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
}

/// A pod's namespace and address.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodNet {
    pub namespace: String,
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub node: usize,
    /// Name of its veth's node side.
    pub host_port: String,
}

impl NodeNet {
    /// The node's address of `family`; `None` for IPv6 in a lab without it.
    pub fn ip_of(&self, family: svclab_backends::model::IpFamily) -> Option<std::net::IpAddr> {
        match family {
            svclab_backends::model::IpFamily::IPv4 => Some(self.ip.into()),
            svclab_backends::model::IpFamily::IPv6 => self.ip6.map(Into::into),
        }
    }

    /// The node's pod CIDR of `family`; `None` for IPv6 in a lab without it.
    pub fn pod_cidr_of(&self, family: svclab_backends::model::IpFamily) -> Option<ipnet::IpNet> {
        match family {
            svclab_backends::model::IpFamily::IPv4 => Some(self.pod_cidr.into()),
            svclab_backends::model::IpFamily::IPv6 => self.pod_cidr6.map(Into::into),
        }
    }

    /// `ip` is one of the node's addresses.
    pub fn has_ip(&self, ip: std::net::IpAddr) -> bool {
        ip == self.ip || Some(ip) == self.ip6.map(Into::into)
    }
}

impl PodNet {
    /// The pod's address of `family`; `None` for IPv6 in a lab without it.
    pub fn ip_of(&self, family: svclab_backends::model::IpFamily) -> Option<std::net::IpAddr> {
        match family {
            svclab_backends::model::IpFamily::IPv4 => Some(self.ip.into()),
            svclab_backends::model::IpFamily::IPv6 => self.ip6.map(Into::into),
        }
    }
}

/// Everything one run's network is made of.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    pub run: RunId,
    pub fabric: String,
    pub fabric_gateway: Ipv4Addr,
    pub node_network: Ipv4Net,
    pub external: Option<String>,
    pub external_ip: Option<Ipv4Addr>,
    /// The second external client, on the node network too (with a load
    /// balancer pool: the one outside the source ranges).
    #[serde(default)]
    pub external2: Option<String>,
    #[serde(default)]
    pub external2_ip: Option<Ipv4Addr>,
    /// The load balancer pool, which the external clients route to the
    /// first node (as a load balancer forwards to some node).
    #[serde(default)]
    /// The load balancer pools of both families, routed to the first node
    /// from the external clients.
    pub lb_pool: Vec<ipnet::IpNet>,
    pub nodes: Vec<NodeNet>,
    pub pods: Vec<PodNet>,
    /// The fabric's IPv6 side, in a lab with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<FabricV6>,
}

/// The node network's IPv6 range and its fixed addresses.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FabricV6 {
    pub node_network: Ipv6Net,
    pub fabric_gateway: Ipv6Addr,
    #[serde(default)]
    pub external_ip: Option<Ipv6Addr>,
    #[serde(default)]
    pub external2_ip: Option<Ipv6Addr>,
}

/// How long building took, by phase.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildTimes {
    pub namespaces: Duration,
    pub links: Duration,
    pub total: Duration,
}

impl Topology {
    /// The plan for `scenario` under run `run`; nothing is created yet.
    pub fn plan(scenario: &Scenario, run: &RunId) -> Topology {
        let nodes = scenario
            .nodes
            .iter()
            .map(|n| NodeNet {
                name: n.name.clone(),
                netns: run.node_ns(&n.name),
                ip: n.ip,
                pod_cidr: n.pod_cidr,
                gateway: n.gateway,
                ip6: n.ip6,
                pod_cidr6: n.pod_cidr6,
                gateway6: n.gateway6,
            })
            .collect();
        let pods = scenario
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| PodNet {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                netns: run.pod_ns(&p.namespace, &p.name),
                ip: p.ip,
                ip6: p.ip6,
                node: p.node,
                host_port: run.pod_port(i),
            })
            .collect();
        Topology {
            run: run.clone(),
            fabric: run.fabric_ns(),
            fabric_gateway: scenario.fabric_gateway,
            node_network: scenario.lab.node_network,
            external: scenario.lab.external.then(|| run.external_ns()),
            external_ip: scenario.external_ip,
            external2: scenario.external2_ip.map(|_| run.external2_ns()),
            external2_ip: scenario.external2_ip,
            lb_pool: [
                &scenario.lab.load_balancer_pool,
                &scenario.lab.load_balancer_pool_v6,
            ]
            .into_iter()
            .flatten()
            .flat_map(|p| p.nets())
            .collect(),
            nodes,
            pods,
            v6: scenario.stack.v6.as_ref().map(|v| FabricV6 {
                node_network: v.node_network,
                fabric_gateway: v.fabric_gateway,
                external_ip: v.external_ip.filter(|_| scenario.lab.external),
                external2_ip: v.external2_ip.filter(|_| scenario.external2_ip.is_some()),
            }),
        }
    }

    /// Every namespace of the plan, fabric first.
    pub fn namespaces(&self) -> Vec<NetNs> {
        std::iter::once(self.fabric.clone())
            .chain(self.external.clone())
            .chain(self.external2.clone())
            .chain(self.nodes.iter().map(|n| n.netns.clone()))
            .chain(self.pods.iter().map(|p| p.netns.clone()))
            .map(NetNs::new)
            .collect()
    }

    /// Creates everything. On error, whatever was created is removed again
    /// before the error is returned.
    pub async fn create(&self) -> Result<BuildTimes, TopologyError> {
        match build::create(self).await {
            Ok(t) => Ok(t),
            Err(e) => {
                let _ = self.destroy();
                Err(e)
            }
        }
    }

    /// Deletes every namespace of this run (links die with them). Keeps
    /// going after an error and returns every error.
    pub fn destroy(&self) -> Result<(), Vec<NetNsError>> {
        destroy_prefix(&self.run.ns_prefix())
    }

    pub fn node(&self, name: &str) -> Option<&NodeNet> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodNet> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }
}

/// Deletes every namespace whose name starts with `prefix`, in parallel.
pub fn destroy_prefix(prefix: &str) -> Result<(), Vec<NetNsError>> {
    let all = crate::netns::list_with_prefix(prefix);
    let workers = 4.min(all.len().max(1));
    let chunk = all.len().div_ceil(workers).max(1);
    let errors: Vec<NetNsError> = std::thread::scope(|s| {
        let handles: Vec<_> = all
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .filter_map(|ns| ns.delete().err())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
