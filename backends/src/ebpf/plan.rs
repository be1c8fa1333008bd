//! What one service port asks of the maps: its service entries (ClusterIP,
//! external IPs, NodePort) and its two endpoint sets, computed from the
//! model alone with kube-proxy's endpoint categorization.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::abi::{self, Backend, SvcKey};
use crate::model::{Endpoint, ServicePort, V4, categorize_endpoints};

/// The desired programming of one service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePlan {
    /// Every address the port answers on, with that entry's `SVC_*` flags.
    pub entries: BTreeMap<SvcKey, u8>,
    pub affinity_seconds: u32,
    /// The cluster set ([`abi::SET_CLUSTER`]) and the local set
    /// ([`abi::SET_LOCAL`]), sorted by address and port.
    pub sets: [Vec<Backend>; 2],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("Service port {service} uses SCTP, which the eBPF programs do not balance")]
    Sctp { service: String },
    #[error("Service port {service} has {count} endpoints in one set; at most {max} fit")]
    TooManyEndpoints {
        service: String,
        count: usize,
        max: usize,
    },
}

impl ServicePlan {
    /// The plan for `svc` with `endpoints` on this node.
    pub fn new(svc: &ServicePort, endpoints: &[Endpoint]) -> Result<Self, PlanError> {
        let proto = abi::ip_proto(svc.protocol).ok_or_else(|| PlanError::Sctp {
            service: svc.name.to_string(),
        })?;
        let cat = categorize_endpoints(svc, endpoints);
        let mut flags = 0;
        if cat.has_any {
            flags |= abi::SVC_HAS_ANY;
        }
        if svc.internal_policy_local {
            flags |= abi::SVC_ITP_LOCAL;
        }
        if svc.external_policy_local {
            flags |= abi::SVC_ETP_LOCAL;
        }
        let key = |addr: Ipv4Addr, port: u16| SvcKey {
            addr: abi::be_addr(addr),
            port: abi::be_port(port),
            proto,
            pad: 0,
        };
        let mut entries = BTreeMap::new();
        if !svc.cluster_ip.is_unspecified() {
            entries.insert(key(svc.cluster_ip.v4(), svc.port), flags);
        }
        for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
            entries.insert(key(ip.v4(), svc.port), flags | abi::SVC_EXTERNAL);
        }
        if let Some(np) = svc.node_port {
            entries.insert(key(Ipv4Addr::UNSPECIFIED, np), flags | abi::SVC_EXTERNAL);
        }
        let set = |eps: &[&Endpoint]| -> Result<Vec<Backend>, PlanError> {
            if eps.len() > usize::from(u16::MAX) {
                return Err(PlanError::TooManyEndpoints {
                    service: svc.name.to_string(),
                    count: eps.len(),
                    max: usize::from(u16::MAX),
                });
            }
            let mut v: Vec<Backend> = eps
                .iter()
                .map(|e| Backend {
                    addr: abi::be_addr(e.ip.v4()),
                    port: abi::be_port(e.port),
                    pad: 0,
                })
                .collect();
            v.sort_by_key(|b| (abi::addr_of(b.addr), abi::port_of(b.port)));
            Ok(v)
        };
        Ok(ServicePlan {
            entries,
            affinity_seconds: svc.session_affinity_seconds.unwrap_or(0),
            sets: [set(&cat.cluster)?, set(&cat.local)?],
        })
    }

    /// Every endpoint of either set, once.
    pub fn endpoints(&self) -> Vec<Backend> {
        let mut all: Vec<Backend> = self.sets.iter().flatten().copied().collect();
        all.sort();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServicePortName};

    fn svc(node_port: Option<u16>, etp_local: bool, itp_local: bool) -> ServicePort {
        ServicePort {
            name: ServicePortName::new("ns", "web", "http", Protocol::Tcp),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10).into(),
            port: 80,
            protocol: Protocol::Tcp,
            node_port,
            session_affinity_seconds: Some(30),
            external_policy_local: etp_local,
            internal_policy_local: itp_local,
            health_check_node_port: None,
            external_ips: vec![Ipv4Addr::new(192, 0, 2, 1).into()],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
        }
    }

    fn ep(last: u8, local: bool, ready: bool) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 244, 0, last).into(),
            port: 8080,
            ready,
            serving: true,
            terminating: !ready,
            node_name: None,
            is_local: local,
            hints: Default::default(),
        }
    }

    fn ips(set: &[Backend]) -> Vec<u8> {
        set.iter()
            .map(|b| abi::addr_of(b.addr).octets()[3])
            .collect()
    }

    #[test]
    fn entries_for_clusterip_external_ip_and_nodeport() {
        let p = ServicePlan::new(&svc(Some(30080), true, false), &[ep(2, true, true)]).unwrap();
        let mut got: Vec<(Ipv4Addr, u16, u8)> = p
            .entries
            .iter()
            .map(|(k, f)| (abi::addr_of(k.addr), abi::port_of(k.port), *f))
            .collect();
        got.sort();
        let base = abi::SVC_HAS_ANY | abi::SVC_ETP_LOCAL;
        assert_eq!(
            got,
            vec![
                (Ipv4Addr::UNSPECIFIED, 30080, base | abi::SVC_EXTERNAL),
                (Ipv4Addr::new(10, 96, 0, 10), 80, base),
                (Ipv4Addr::new(192, 0, 2, 1), 80, base | abi::SVC_EXTERNAL),
            ]
        );
        assert!(p.entries.keys().all(|k| k.proto == libc::IPPROTO_TCP as u8));
        assert_eq!(p.affinity_seconds, 30);
    }

    #[test]
    fn sets_follow_traffic_policy() {
        let eps = [ep(3, false, true), ep(1, true, true), ep(2, true, false)];
        let cluster = ServicePlan::new(&svc(None, false, false), &eps).unwrap();
        assert_eq!(ips(&cluster.sets[0]), vec![1, 3]);
        assert!(cluster.sets[1].is_empty());

        // Not externally accessible, so no cluster set for short-circuits.
        let mut internal = svc(None, false, true);
        internal.external_ips.clear();
        let itp = ServicePlan::new(&internal, &eps).unwrap();
        assert!(itp.sets[0].is_empty());
        assert_eq!(ips(&itp.sets[1]), vec![1]);
        assert_eq!(
            itp.entries.values().next(),
            Some(&(abi::SVC_HAS_ANY | abi::SVC_ITP_LOCAL))
        );

        // Only a terminating local endpoint: Local falls back to it.
        let eps = [ep(3, false, true), ep(2, true, false)];
        let etp = ServicePlan::new(&svc(Some(30080), true, false), &eps).unwrap();
        assert_eq!(ips(&etp.sets[0]), vec![3]);
        assert_eq!(ips(&etp.sets[1]), vec![2]);
        assert_eq!(ips(&etp.endpoints()), vec![2, 3]);
    }

    #[test]
    fn no_endpoints_means_reject() {
        let p = ServicePlan::new(&svc(None, false, false), &[]).unwrap();
        assert!(p.entries.values().all(|f| f & abi::SVC_HAS_ANY == 0));
        assert!(p.sets.iter().all(Vec::is_empty));
    }

    #[test]
    fn sctp_is_refused_by_name() {
        let mut s = svc(None, false, false);
        s.protocol = Protocol::Sctp;
        let err = ServicePlan::new(&s, &[]).unwrap_err();
        assert!(err.to_string().contains("ns/web:http"), "{err}");
    }
}
