//! kube-proxy's nftables object names: fixed chains, sets and maps, and the
//! hashed per-service-port and per-endpoint names
//! (`service-ULMVA6XW-ns1/svc1/tcp/p80`,
//! `endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80`).

use data_encoding::BASE32;
use sha2::{Digest, Sha256};

use crate::model::{Endpoint, IpFamily, ServicePortName};

/// The one table everything lives in (`ip kube-proxy`, or `ip6 kube-proxy`
/// for the IPv6 proxier, as kube-proxy's two nftables proxiers).
pub const TABLE: &str = "kube-proxy";

/// The nft spellings of one family: its table family and address match
/// (`ip`/`ip6`, as in `ip6 daddr`) and its address type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family(pub IpFamily);

impl Family {
    /// `ip` or `ip6`: the table's family and the address match keyword.
    pub fn ip(self) -> &'static str {
        match self.0 {
            IpFamily::IPv4 => "ip",
            IpFamily::IPv6 => "ip6",
        }
    }

    /// `ipv4_addr` or `ipv6_addr`.
    pub fn addr_type(self) -> &'static str {
        match self.0 {
            IpFamily::IPv4 => "ipv4_addr",
            IpFamily::IPv6 => "ipv6_addr",
        }
    }

    /// `ip kube-proxy` or `ip6 kube-proxy`: the prefix of every command on
    /// the table.
    pub fn table(self) -> String {
        format!("{} {TABLE}", self.ip())
    }

    /// The ICMP type that refuses an address (the reject-unallocated fault).
    pub fn host_unreachable(self) -> &'static str {
        match self.0 {
            IpFamily::IPv4 => "reject with icmp type host-unreachable",
            IpFamily::IPv6 => "reject with icmpv6 type addr-unreachable",
        }
    }
}

pub const SERVICES_CHAIN: &str = "services";
pub const SERVICE_IPS_MAP: &str = "service-ips";
pub const SERVICE_NODEPORTS_MAP: &str = "service-nodeports";
pub const NODEPORT_IPS_SET: &str = "nodeport-ips";
pub const CLUSTER_IPS_SET: &str = "cluster-ips";
pub const SERVICE_ENDPOINTS_CHECK_CHAIN: &str = "service-endpoints-check";
pub const NODEPORT_ENDPOINTS_CHECK_CHAIN: &str = "nodeport-endpoints-check";
pub const NO_ENDPOINT_SERVICES_MAP: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS_MAP: &str = "no-endpoint-nodeports";
pub const REJECT_CHAIN: &str = "reject-chain";
pub const CLUSTER_IPS_CHECK_CHAIN: &str = "cluster-ips-check";
pub const FIREWALL_IPS_MAP: &str = "firewall-ips";
pub const FIREWALL_CHECK_CHAIN: &str = "firewall-check";
pub const MASQUERADING_CHAIN: &str = "masquerading";
pub const HAIRPIN_SET: &str = "hairpin-connections";

/// The masquerade mark (kube-proxy's default `--masquerade-bit` 14).
pub const MASQ_MARK: &str = "0x4000";
/// Sets that mark on a packet: its masquerade is decided in postrouting.
pub const MARK_MASQ: &str = "mark set mark or 0x4000";

/// nft's limit on object names, less the longest prefix kube-proxy puts in
/// front of a hashed base name.
const BASE_NAME_MAX: usize = 256 - 16;

/// The chain and set names of one service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortNames {
    /// Endpoints for Cluster traffic policy.
    pub cluster: String,
    /// Endpoints for Local traffic policy.
    pub local: String,
    /// Entry point for NodePort and external IP traffic.
    pub external: String,
    /// LoadBalancerSourceRanges filter for load balancer IP traffic.
    pub firewall: String,
}

impl PortNames {
    pub fn new(name: &ServicePortName) -> Self {
        let base = hash_and_truncate(&format!(
            "{}/{}/{}/{}",
            name.namespace,
            name.name,
            name.protocol.lower(),
            name.port
        ));
        PortNames {
            cluster: format!("service-{base}"),
            local: format!("local-{base}"),
            external: format!("external-{base}"),
            firewall: format!("firewall-{base}"),
        }
    }
}

/// The chain and affinity-set names of one endpoint of one service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointNames {
    pub chain: String,
    pub affinity_set: String,
}

impl EndpointNames {
    pub fn new(name: &ServicePortName, ep: &Endpoint) -> Self {
        let base = hash_and_truncate(&format!(
            "{}/{}/{}/{}__{}/{}",
            name.namespace,
            name.name,
            name.protocol.lower(),
            name.port,
            // nft names take no `:`; kube-proxy writes IPv6 ones with `.`.
            ep.ip.to_string().replace(':', "."),
            ep.port
        ));
        EndpointNames {
            chain: format!("endpoint-{base}"),
            affinity_set: format!("affinity-{base}"),
        }
    }
}

/// Prefixes `name` with 8 base32 characters of its SHA-256, so names stay
/// unique and tell apart at a glance, and truncates to nft's limit.
fn hash_and_truncate(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    let encoded = BASE32.encode(&digest);
    let mut out = String::with_capacity(9 + name.len());
    out.push_str(&encoded[..8]);
    out.push('-');
    out.push_str(name);
    if out.len() > BASE_NAME_MAX {
        out.truncate(BASE_NAME_MAX - 3);
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use crate::testkit;
    use std::net::Ipv4Addr;

    fn ep(ip: [u8; 4], port: u16) -> Endpoint {
        testkit::endpoint(Ipv4Addr::from(ip), port, None, false)
    }

    /// The expected names are the ones in kube-proxy's own golden rulesets.
    #[test]
    fn names_match_kube_proxy() {
        let p = ServicePortName::new("ns1", "svc1", "p80", Protocol::Tcp);
        let n = PortNames::new(&p);
        assert_eq!(n.cluster, "service-ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(n.local, "local-ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(n.external, "external-ULMVA6XW-ns1/svc1/tcp/p80");
        let e = EndpointNames::new(&p, &ep([10, 180, 0, 1], 80));
        assert_eq!(e.chain, "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80");
        assert!(MARK_MASQ.ends_with(MASQ_MARK));
        assert_eq!(
            e.affinity_set,
            "affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
        let p2 = ServicePortName::new("ns2", "svc2", "p8080", Protocol::Tcp);
        assert_eq!(
            PortNames::new(&p2).cluster,
            "service-MHHHYRWA-ns2/svc2/tcp/p8080"
        );
    }

    #[test]
    fn long_names_are_truncated_with_an_ellipsis() {
        let long = "x".repeat(300);
        let p = ServicePortName::new(&long, "svc", "", Protocol::Udp);
        let n = PortNames::new(&p);
        let base = n.cluster.strip_prefix("service-").unwrap();
        assert_eq!(base.len(), BASE_NAME_MAX);
        assert!(base.ends_with("..."));
    }
}
