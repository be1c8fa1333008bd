//! What kube-proxy's IPVS mode programs for one service port (its
//! `syncProxyRules` loop body): virtual servers with their real servers,
//! the addresses bound to `kube-ipvs0`, and the ipset entries. Pure; the
//! backend diffs plans against the kernel or against the previous plan.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::ipsets::{self, Entry, IpSet};
use super::netlink::{
    Op, RealServer, SVC_F_PERSISTENT, SVC_F_SCHED_SH_PORT, ServiceKey, VirtualServer,
};
use crate::model::{Endpoint, ServicePort, V4, V4Net, categorize_endpoints};

/// Real servers of one virtual server: (address, port) -> weight.
pub type Dests = BTreeMap<(Ipv4Addr, u16), u32>;

/// A virtual server and the real servers it should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedServer {
    pub server: VirtualServer,
    pub dests: Dests,
}

/// Everything one service port contributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortPlan {
    pub servers: Vec<PlannedServer>,
    /// Addresses to bind to `kube-ipvs0`.
    pub addresses: Vec<Ipv4Addr>,
    pub entries: Vec<Entry>,
    /// Load balancer IP, protocol and port the node itself may not reach:
    /// source ranges that leave the node out (kube-proxy's
    /// `lbNoNodeAccessIPPortProtocolEntries`, kubernetes/kubernetes#119656).
    pub node_denied: Vec<(Ipv4Addr, crate::model::Protocol, u16)>,
}

/// Node facts and options the plan depends on.
#[derive(Clone, Copy, Debug)]
pub struct PlanContext<'a> {
    pub node_ip: Ipv4Addr,
    /// The addresses NodePorts answer on ([`NodeContext::nodeport_ips`]).
    ///
    /// [`NodeContext::nodeport_ips`]: crate::model::NodeContext::nodeport_ips
    pub node_port_ips: &'a [Ipv4Addr],
    pub scheduler: &'a str,
}

/// Which endpoints a virtual server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// Cluster-wide endpoints.
    Cluster,
    /// internalTrafficPolicy Local: this node's endpoints or none.
    Local,
    /// externalTrafficPolicy Local, kube-proxy's `onlyNodeLocalEndpoints`:
    /// this node's endpoints when there are any, otherwise the cluster's
    /// (kubernetes/kubernetes#97081: pods on a node without local
    /// endpoints still reach the NodePort; external clients get no answer,
    /// as the reply, not masqueraded, bypasses this node).
    LocalOrCluster,
}

impl Policy {
    /// For the ClusterIP virtual server.
    fn internal(svc: &ServicePort) -> Policy {
        if svc.internal_policy_local {
            Policy::Local
        } else {
            Policy::Cluster
        }
    }

    /// For NodePort and external IP virtual servers.
    fn external(svc: &ServicePort) -> Policy {
        if svc.external_policy_local {
            Policy::LocalOrCluster
        } else {
            Policy::Cluster
        }
    }
}

/// The real servers for one virtual server. Endpoints that are terminating
/// but not chosen stay at weight 0, so established connections drain while
/// new ones go elsewhere (kube-proxy's graceful termination).
fn dests(svc: &ServicePort, endpoints: &[Endpoint], policy: Policy) -> Dests {
    let cat = categorize_endpoints(svc, endpoints);
    let (chosen, scope_local) = match policy {
        Policy::Cluster => (cat.cluster, false),
        Policy::Local => (cat.local, true),
        Policy::LocalOrCluster if !cat.local.is_empty() => (cat.local, true),
        Policy::LocalOrCluster => (cat.cluster, false),
    };
    let mut out = Dests::new();
    for e in endpoints {
        if e.terminating && (e.is_local || !scope_local) {
            out.insert((e.ip.v4(), e.port), 0);
        }
    }
    for e in chosen {
        out.insert((e.ip.v4(), e.port), 1);
    }
    out
}

fn virtual_server(
    svc: &ServicePort,
    addr: Ipv4Addr,
    port: u16,
    ctx: &PlanContext,
) -> VirtualServer {
    let mut flags = 0;
    let mut timeout = 0;
    if let Some(seconds) = svc.session_affinity_seconds {
        flags |= SVC_F_PERSISTENT;
        timeout = seconds;
    }
    if ctx.scheduler == "mh" {
        flags |= SVC_F_SCHED_SH_PORT;
    }
    VirtualServer {
        key: ServiceKey {
            protocol: svc.protocol,
            addr,
            port,
        },
        scheduler: ctx.scheduler.to_string(),
        flags,
        timeout,
    }
}

/// kube-proxy's IPVS objects for one service port.
pub fn plan_port(svc: &ServicePort, endpoints: &[Endpoint], ctx: &PlanContext) -> PortPlan {
    let mut plan = PortPlan::default();
    let proto = svc.protocol;
    // Hairpin: an endpoint on this node that reaches itself through the
    // Service is masqueraded (matched dst ip, dst port, src ip).
    for e in endpoints.iter().filter(|e| e.is_local) {
        plan.entries.push((
            IpSet::LoopBack,
            ipsets::ip_port_ip(e.ip.v4(), proto, e.port, e.ip.v4()),
        ));
    }

    let cluster_ip = svc.cluster_ip.v4();
    plan.entries.push((
        IpSet::ClusterIp,
        ipsets::ip_port(cluster_ip, proto, svc.port),
    ));
    plan.servers.push(PlannedServer {
        server: virtual_server(svc, cluster_ip, svc.port, ctx),
        dests: dests(svc, endpoints, Policy::internal(svc)),
    });
    plan.addresses.push(cluster_ip);

    for ext in svc.external_ips.iter().map(V4::v4) {
        let set = if svc.external_policy_local {
            IpSet::ExternalIpLocal
        } else {
            IpSet::ExternalIp
        };
        plan.entries
            .push((set, ipsets::ip_port(ext, proto, svc.port)));
        plan.servers.push(PlannedServer {
            server: virtual_server(svc, ext, svc.port, ctx),
            dests: dests(svc, endpoints, Policy::external(svc)),
        });
        // An external IP that is the node's own address is already local.
        if ext != ctx.node_ip {
            plan.addresses.push(ext);
        }
    }

    for lb in svc.load_balancer_ips.iter().map(V4::v4) {
        let entry = ipsets::ip_port(lb, proto, svc.port);
        plan.entries.push((IpSet::LoadBalancer, entry.clone()));
        if svc.external_policy_local {
            plan.entries.push((IpSet::LoadBalancerLocal, entry.clone()));
        }
        if !svc.load_balancer_source_ranges.is_empty() {
            plan.entries.push((IpSet::LoadBalancerFw, entry));
            let mut allow_from_node = false;
            for cidr in svc.load_balancer_source_ranges.iter().map(V4Net::v4) {
                plan.entries.push((
                    IpSet::LoadBalancerSourceCidr,
                    ipsets::ip_port_net(lb, proto, svc.port, cidr),
                ));
                allow_from_node |= cidr.contains(&ctx.node_ip);
            }
            // The node reaches its own bound VIP from the VIP itself: let
            // that in when a range holds the node, and drop it otherwise.
            if allow_from_node {
                plan.entries.push((
                    IpSet::LoadBalancerSourceIp,
                    ipsets::ip_port_ip(lb, proto, svc.port, lb),
                ));
            } else {
                plan.node_denied.push((lb, proto, svc.port));
            }
        }
        plan.servers.push(PlannedServer {
            server: virtual_server(svc, lb, svc.port, ctx),
            dests: dests(svc, endpoints, Policy::external(svc)),
        });
        if lb != ctx.node_ip {
            plan.addresses.push(lb);
        }
    }

    if let Some(node_port) = svc.node_port {
        // SCTP's sets hold ip,port (one entry per NodePort address); the
        // others hold the port.
        let entries = if proto == crate::model::Protocol::Sctp {
            ctx.node_port_ips
                .iter()
                .map(|&ip| ipsets::ip_port(ip, proto, node_port))
                .collect()
        } else {
            vec![node_port.to_string()]
        };
        for entry in entries {
            plan.entries
                .push((IpSet::node_port(proto, false), entry.clone()));
            if svc.external_policy_local {
                plan.entries.push((IpSet::node_port(proto, true), entry));
            }
        }
        for &ip in ctx.node_port_ips {
            plan.servers.push(PlannedServer {
                server: virtual_server(svc, ip, node_port, ctx),
                dests: dests(svc, endpoints, Policy::external(svc)),
            });
        }
    }

    if let Some(hc) = svc.health_check_node_port {
        plan.entries
            .push((IpSet::HealthCheckNodePort, hc.to_string()));
    }
    for &addr in &plan.addresses {
        plan.entries.push((IpSet::IpvsIps, addr.to_string()));
    }
    plan
}

/// The operations that turn virtual servers `old` into `new`: additions
/// and updates first, then removals of whole virtual servers.
pub fn server_ops(
    old: &BTreeMap<ServiceKey, PlannedServer>,
    new: &BTreeMap<ServiceKey, PlannedServer>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let empty = Dests::new();
    for (key, n) in new {
        let before = match old.get(key) {
            None => {
                ops.push(Op::NewService(n.server.clone()));
                &empty
            }
            Some(o) => {
                if o.server != n.server {
                    ops.push(Op::SetService(n.server.clone()));
                }
                &o.dests
            }
        };
        for (&(addr, port), &weight) in &n.dests {
            let rs = RealServer { addr, port, weight };
            match before.get(&(addr, port)) {
                None => ops.push(Op::NewDest(*key, rs)),
                Some(&w) if w != weight => ops.push(Op::SetDest(*key, rs)),
                Some(_) => {}
            }
        }
        for (&(addr, port), &weight) in before {
            if !n.dests.contains_key(&(addr, port)) {
                ops.push(Op::DelDest(*key, RealServer { addr, port, weight }));
            }
        }
    }
    for key in old.keys().filter(|k| !new.contains_key(k)) {
        ops.push(Op::DelService(*key));
    }
    ops
}

/// Virtual servers of several plans, by key.
pub fn servers_of<'a>(
    plans: impl IntoIterator<Item = &'a PortPlan>,
) -> BTreeMap<ServiceKey, PlannedServer> {
    plans
        .into_iter()
        .flat_map(|p| p.servers.iter())
        .map(|s| (s.server.key, s.clone()))
        .collect()
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
