//! Which endpoints a connection may use, from the listener it came in on
//! and the client's address: Kubernetes' traffic policies, decided in the
//! proxy because REDIRECT keeps the client's own source address.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::model::{Endpoint, ServicePort, categorize_endpoints};

/// The listener a connection arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Front {
    /// The ClusterIP portal: internal traffic.
    Portal,
    /// NodePort and external IPs: external traffic.
    External,
}

impl Front {
    pub fn as_str(self) -> &'static str {
        match self {
            Front::Portal => "portal",
            Front::External => "external",
        }
    }
}

/// The two endpoint sets of kube-proxy's `CategorizeEndpoints`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pool {
    Cluster,
    Local,
}

/// What the proxy needs of a service port's spec to route a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub internal_local: bool,
    pub external_local: bool,
    /// The cluster's pod CIDR: pods calling an external front of an
    /// `externalTrafficPolicy: Local` Service short-circuit to the cluster
    /// endpoints, as kube-proxy's iptables rules make them.
    pub cluster_cidr: IpNet,
    pub node_ip: IpAddr,
}

impl Policy {
    pub fn new(svc: &ServicePort, cluster_cidr: IpNet, node_ip: IpAddr) -> Self {
        Policy {
            internal_local: svc.internal_policy_local,
            external_local: svc.external_policy_local && svc.externally_accessible(),
            cluster_cidr,
            node_ip,
        }
    }

    pub fn pool(&self, front: Front, client: IpAddr) -> Pool {
        let local = match front {
            Front::Portal => self.internal_local,
            Front::External => self.external_local && !self.short_circuits(client),
        };
        if local { Pool::Local } else { Pool::Cluster }
    }

    /// Pods and the node itself are not "external" clients.
    fn short_circuits(&self, client: IpAddr) -> bool {
        self.cluster_cidr.contains(&client) || client == self.node_ip || client.is_loopback()
    }
}

/// The cluster and local endpoint lists of a service port, as socket
/// addresses.
pub fn pools(svc: &ServicePort, endpoints: &[Endpoint]) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let c = categorize_endpoints(svc, endpoints);
    let addrs = |v: &[&Endpoint]| {
        v.iter()
            .map(|e| SocketAddr::new(e.ip, e.port))
            .collect::<Vec<_>>()
    };
    (addrs(&c.cluster), addrs(&c.local))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{Protocol, ServicePortName};

    fn svc(itp_local: bool, etp_local: bool, node_port: Option<u16>) -> ServicePort {
        ServicePort {
            name: ServicePortName::new("ns", "s", "", Protocol::Tcp),
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

    #[test]
    fn pool_table() {
        let pod: IpAddr = Ipv4Addr::new(10, 244, 1, 7).into();
        let node: IpAddr = Ipv4Addr::new(192, 168, 0, 2).into();
        let outside: IpAddr = Ipv4Addr::new(192, 168, 100, 9).into();
        let cases = [
            // (what, svc, front, client, pool)
            (
                "cluster policy portal",
                svc(false, false, Some(30080)),
                Front::Portal,
                pod,
                Pool::Cluster,
            ),
            (
                "cluster policy nodeport",
                svc(false, false, Some(30080)),
                Front::External,
                outside,
                Pool::Cluster,
            ),
            (
                "itp local portal",
                svc(true, false, None),
                Front::Portal,
                pod,
                Pool::Local,
            ),
            (
                "itp local, nodeport is cluster",
                svc(true, false, Some(30080)),
                Front::External,
                outside,
                Pool::Cluster,
            ),
            (
                "etp local from outside",
                svc(false, true, Some(30080)),
                Front::External,
                outside,
                Pool::Local,
            ),
            (
                "etp local from a pod short-circuits",
                svc(false, true, Some(30080)),
                Front::External,
                pod,
                Pool::Cluster,
            ),
            (
                "etp local from the node short-circuits",
                svc(false, true, Some(30080)),
                Front::External,
                node,
                Pool::Cluster,
            ),
            (
                "etp local from loopback short-circuits",
                svc(false, true, Some(30080)),
                Front::External,
                Ipv4Addr::LOCALHOST.into(),
                Pool::Cluster,
            ),
            (
                "etp local portal stays cluster",
                svc(false, true, Some(30080)),
                Front::Portal,
                outside,
                Pool::Cluster,
            ),
        ];
        for (what, s, front, client, want) in cases {
            let p = Policy::new(&s, "10.244.0.0/16".parse().unwrap(), node);
            assert_eq!(p.pool(front, client), want, "{what}");
        }
    }

    #[test]
    fn pools_follow_categorize() {
        let s = svc(false, true, Some(30080));
        let ep = |last: u8, local: bool, ready: bool| Endpoint {
            ip: Ipv4Addr::new(10, 244, 0, last).into(),
            port: 8080,
            ready,
            serving: true,
            terminating: !ready,
            node_name: None,
            is_local: local,
            hints: Default::default(),
        };
        let (cluster, local) = pools(&s, &[ep(1, false, true), ep(2, true, false)]);
        let addr = |last| SocketAddr::from((Ipv4Addr::new(10, 244, 0, last), 8080));
        assert_eq!(cluster, [addr(1)]);
        // Only a terminating local endpoint: local traffic falls back to it.
        assert_eq!(local, [addr(2)]);
    }
}
