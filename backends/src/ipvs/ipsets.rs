//! kube-proxy's IPVS-mode ipsets: the fixed set list, the entry formats, and
//! the `ipset restore` / `ipset save` text this backend writes and reads.
//! ipset names are global within a network namespace; the agent runs in the
//! node's own namespace, so kube-proxy's names are used unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::model::Protocol;

/// Every set kube-proxy's IPVS mode creates, in its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpSet {
    LoopBack,
    ClusterIp,
    ExternalIp,
    ExternalIpLocal,
    LoadBalancer,
    LoadBalancerFw,
    LoadBalancerLocal,
    LoadBalancerSourceIp,
    LoadBalancerSourceCidr,
    NodePortTcp,
    NodePortLocalTcp,
    NodePortUdp,
    NodePortLocalUdp,
    NodePortSctp,
    NodePortLocalSctp,
    HealthCheckNodePort,
    IpvsIps,
}

/// A set and one entry in `ipset save` form.
pub type Entry = (IpSet, String);

/// Entries per set.
pub type Entries = BTreeMap<IpSet, BTreeSet<String>>;

impl IpSet {
    pub const ALL: [IpSet; 17] = [
        IpSet::LoopBack,
        IpSet::ClusterIp,
        IpSet::ExternalIp,
        IpSet::ExternalIpLocal,
        IpSet::LoadBalancer,
        IpSet::LoadBalancerFw,
        IpSet::LoadBalancerLocal,
        IpSet::LoadBalancerSourceIp,
        IpSet::LoadBalancerSourceCidr,
        IpSet::NodePortTcp,
        IpSet::NodePortLocalTcp,
        IpSet::NodePortUdp,
        IpSet::NodePortLocalUdp,
        IpSet::NodePortSctp,
        IpSet::NodePortLocalSctp,
        IpSet::HealthCheckNodePort,
        IpSet::IpvsIps,
    ];

    pub fn name(self) -> &'static str {
        match self {
            IpSet::LoopBack => "KUBE-LOOP-BACK",
            IpSet::ClusterIp => "KUBE-CLUSTER-IP",
            IpSet::ExternalIp => "KUBE-EXTERNAL-IP",
            IpSet::ExternalIpLocal => "KUBE-EXTERNAL-IP-LOCAL",
            IpSet::LoadBalancer => "KUBE-LOAD-BALANCER",
            IpSet::LoadBalancerFw => "KUBE-LOAD-BALANCER-FW",
            IpSet::LoadBalancerLocal => "KUBE-LOAD-BALANCER-LOCAL",
            IpSet::LoadBalancerSourceIp => "KUBE-LOAD-BALANCER-SOURCE-IP",
            IpSet::LoadBalancerSourceCidr => "KUBE-LOAD-BALANCER-SOURCE-CIDR",
            IpSet::NodePortTcp => "KUBE-NODE-PORT-TCP",
            IpSet::NodePortLocalTcp => "KUBE-NODE-PORT-LOCAL-TCP",
            IpSet::NodePortUdp => "KUBE-NODE-PORT-UDP",
            IpSet::NodePortLocalUdp => "KUBE-NODE-PORT-LOCAL-UDP",
            IpSet::NodePortSctp => "KUBE-NODE-PORT-SCTP-HASH",
            IpSet::NodePortLocalSctp => "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
            IpSet::HealthCheckNodePort => "KUBE-HEALTH-CHECK-NODE-PORT",
            IpSet::IpvsIps => "KUBE-IPVS-IPS",
        }
    }

    pub fn from_name(name: &str) -> Option<IpSet> {
        IpSet::ALL.into_iter().find(|s| s.name() == name)
    }

    fn set_type(self) -> &'static str {
        match self {
            IpSet::LoopBack | IpSet::LoadBalancerSourceIp => "hash:ip,port,ip",
            IpSet::LoadBalancerSourceCidr => "hash:ip,port,net",
            IpSet::NodePortTcp
            | IpSet::NodePortLocalTcp
            | IpSet::NodePortUdp
            | IpSet::NodePortLocalUdp
            | IpSet::HealthCheckNodePort => "bitmap:port",
            IpSet::IpvsIps => "hash:ip",
            _ => "hash:ip,port",
        }
    }

    /// The comment kube-proxy puts on the iptables rule that matches the set.
    pub fn comment(self) -> &'static str {
        match self {
            IpSet::LoopBack => {
                "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"
            }
            IpSet::ClusterIp => "Kubernetes service cluster ip + port for masquerade purpose",
            IpSet::ExternalIp => {
                "Kubernetes service external ip + port for masquerade and filter purpose"
            }
            IpSet::ExternalIpLocal => {
                "Kubernetes service external ip + port with externalTrafficPolicy=local"
            }
            IpSet::LoadBalancer => "Kubernetes service lb portal",
            IpSet::LoadBalancerFw => {
                "Kubernetes service load balancer ip + port for load balancer with sourceRange"
            }
            IpSet::LoadBalancerLocal => {
                "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"
            }
            IpSet::LoadBalancerSourceIp => {
                "Kubernetes service load balancer ip + port + source IP for packet filter purpose"
            }
            IpSet::LoadBalancerSourceCidr => {
                "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"
            }
            IpSet::NodePortTcp => "Kubernetes nodeport TCP port for masquerade purpose",
            IpSet::NodePortLocalTcp => {
                "Kubernetes nodeport TCP port with externalTrafficPolicy=local"
            }
            IpSet::NodePortUdp => "Kubernetes nodeport UDP port for masquerade purpose",
            IpSet::NodePortLocalUdp => {
                "Kubernetes nodeport UDP port with externalTrafficPolicy=local"
            }
            IpSet::NodePortSctp => {
                "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"
            }
            IpSet::NodePortLocalSctp => {
                "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"
            }
            IpSet::HealthCheckNodePort => "Kubernetes health check node port",
            IpSet::IpvsIps => "Addresses on the ipvs interface",
        }
    }

    /// The `create` line, with kube-proxy's defaults.
    pub fn create_line(self) -> String {
        self.create_line_as(self.name())
    }

    /// A `create` line for a set `name` of this set's type.
    fn create_line_as(self, name: &str) -> String {
        let t = self.set_type();
        if t == "bitmap:port" {
            format!("create {name} {t} range 0-65535")
        } else {
            format!("create {name} {t} family inet hashsize 1024 maxelem 65536")
        }
    }

    /// The scratch set a full sync fills and swaps in for this one.
    fn swap_name(self) -> String {
        let index = IpSet::ALL.iter().position(|s| *s == self).unwrap_or(0);
        format!("{SWAP_PREFIX}{index}")
    }

    /// The NodePort set for `protocol`, plain or with externalTrafficPolicy
    /// Local.
    pub fn node_port(protocol: Protocol, local: bool) -> IpSet {
        match (protocol, local) {
            (Protocol::Tcp, false) => IpSet::NodePortTcp,
            (Protocol::Tcp, true) => IpSet::NodePortLocalTcp,
            (Protocol::Udp, false) => IpSet::NodePortUdp,
            (Protocol::Udp, true) => IpSet::NodePortLocalUdp,
            (Protocol::Sctp, false) => IpSet::NodePortSctp,
            (Protocol::Sctp, true) => IpSet::NodePortLocalSctp,
        }
    }
}

/// `hash:ip,port` entry: `10.96.0.10,tcp:80`.
pub fn ip_port(ip: Ipv4Addr, protocol: Protocol, port: u16) -> String {
    format!("{ip},{}:{port}", protocol.lower())
}

/// `hash:ip,port,ip` entry: `10.244.0.5,tcp:8080,10.244.0.5`.
pub fn ip_port_ip(ip: Ipv4Addr, protocol: Protocol, port: u16, ip2: Ipv4Addr) -> String {
    format!("{ip},{}:{port},{ip2}", protocol.lower())
}

/// `hash:ip,port,net` entry: `198.51.100.1,tcp:80,192.0.2.0/24`.
pub fn ip_port_net(ip: Ipv4Addr, protocol: Protocol, port: u16, net: ipnet::Ipv4Net) -> String {
    format!("{ip},{}:{port},{net}", protocol.lower())
}

/// Scratch sets live only inside one `ipset restore` (and are destroyed by
/// cleanup should a restore have died halfway).
const SWAP_PREFIX: &str = "svclab-ipvs-swap-";

/// An entry as `ipset restore` reads it: the protocol by number, because a
/// name costs ipset a lookup in /etc/protocols per entry (a file read each
/// time, which is slow on a VM's shared root filesystem).
fn wire(entry: &str) -> String {
    for (name, number) in [(",tcp:", ",6:"), (",udp:", ",17:"), (",sctp:", ",132:")] {
        if entry.contains(name) {
            return entry.replacen(name, number, 1);
        }
    }
    entry.to_string()
}

/// `create` lines for every set; with `ipset restore -exist`, sets that
/// exist alike are left as they are.
pub fn create_input() -> String {
    IpSet::ALL.iter().map(|s| s.create_line() + "\n").collect()
}

/// The deletions and additions of a partial sync.
pub fn changes_input(add: &[Entry], del: &[Entry]) -> String {
    let mut s = String::new();
    for (set, entry) in del {
        let _ = writeln!(s, "del {} {}", set.name(), wire(entry));
    }
    for (set, entry) in add {
        let _ = writeln!(s, "add {} {}", set.name(), wire(entry));
    }
    s
}

/// A full sync's input: every set is filled afresh in a scratch set and
/// swapped in whole, so the entries become exactly `desired` without the
/// current ones being read, and no packet sees a half-filled set. Rules
/// that match a set keep matching it across the swap.
pub fn replace_input(desired: &Entries) -> String {
    let mut s = create_input();
    let none = BTreeSet::new();
    for set in IpSet::ALL {
        let scratch = set.swap_name();
        let _ = writeln!(s, "{}", set.create_line_as(&scratch));
        let _ = writeln!(s, "flush {scratch}");
        for entry in desired.get(&set).unwrap_or(&none) {
            let _ = writeln!(s, "add {scratch} {}", wire(entry));
        }
        let _ = writeln!(s, "swap {scratch} {}", set.name());
        let _ = writeln!(s, "destroy {scratch}");
    }
    s
}

/// `ipset restore` input that destroys the sets named in `existing` (the
/// output of `ipset list -n`) that are ours.
pub fn destroy_input(existing: &str) -> String {
    existing
        .lines()
        .map(str::trim)
        .filter(|l| IpSet::from_name(l).is_some() || l.starts_with(SWAP_PREFIX))
        .map(|name| format!("destroy {name}\n"))
        .collect()
}

/// Reads the entries of our sets from `ipset save` output; other sets and
/// the `create` lines are skipped.
#[cfg(test)]
pub fn parse_save(text: &str) -> Entries {
    let mut out = Entries::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("add") {
            continue;
        }
        let (Some(set), Some(entry)) = (words.next().and_then(IpSet::from_name), words.next())
        else {
            continue;
        };
        out.entry(set).or_default().insert(entry.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ipset_and_round_trip() {
        for set in IpSet::ALL {
            assert!(set.name().len() <= 31, "{}", set.name());
            assert_eq!(IpSet::from_name(set.name()), Some(set));
        }
    }

    #[test]
    fn create_lines_use_kube_proxy_defaults() {
        assert_eq!(
            IpSet::ClusterIp.create_line(),
            "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536"
        );
        assert_eq!(
            IpSet::NodePortLocalUdp.create_line(),
            "create KUBE-NODE-PORT-LOCAL-UDP bitmap:port range 0-65535"
        );
        assert_eq!(
            IpSet::LoopBack.create_line(),
            "create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536"
        );
    }

    /// `ipset save` output as ipset 7.17 prints it, with a foreign set.
    #[test]
    fn parses_save_output() {
        let saved = "\
create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x5e0bd0a1
add KUBE-CLUSTER-IP 10.96.0.10,tcp:80
add KUBE-CLUSTER-IP 10.96.0.11,udp:53
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
add KUBE-NODE-PORT-TCP 30080
create other hash:ip family inet hashsize 1024 maxelem 65536
add other 192.0.2.1
";
        let current = parse_save(saved);
        assert_eq!(current.len(), 2);
        assert_eq!(current[&IpSet::ClusterIp].len(), 2);
        assert!(current[&IpSet::NodePortTcp].contains("30080"));
    }

    #[test]
    fn partial_input_names_protocols_by_number() {
        let vip = Ipv4Addr::new(10, 96, 0, 10);
        let ep = Ipv4Addr::new(10, 244, 1, 5);
        let input = changes_input(
            &[
                (IpSet::ClusterIp, ip_port(vip, Protocol::Tcp, 443)),
                (IpSet::LoopBack, ip_port_ip(ep, Protocol::Sctp, 9, ep)),
            ],
            &[(IpSet::NodePortUdp, "30053".into())],
        );
        assert_eq!(
            input,
            "del KUBE-NODE-PORT-UDP 30053\n\
             add KUBE-CLUSTER-IP 10.96.0.10,6:443\n\
             add KUBE-LOOP-BACK 10.244.1.5,132:9,10.244.1.5\n"
        );
    }

    #[test]
    fn full_input_swaps_every_set_in_whole() {
        let mut desired = Entries::new();
        desired.entry(IpSet::ClusterIp).or_default().insert(ip_port(
            Ipv4Addr::new(10, 96, 0, 53),
            Protocol::Udp,
            53,
        ));
        let input = replace_input(&desired);
        assert!(input.starts_with(&create_input()));
        let cluster: Vec<&str> = input
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("svclab-ipvs-swap-1"))
            .collect();
        assert_eq!(
            cluster,
            [
                "create svclab-ipvs-swap-1 hash:ip,port family inet hashsize 1024 maxelem 65536",
                "flush svclab-ipvs-swap-1",
                "add svclab-ipvs-swap-1 10.96.0.53,17:53",
                "swap svclab-ipvs-swap-1 KUBE-CLUSTER-IP",
                "destroy svclab-ipvs-swap-1",
            ]
        );
        assert_eq!(input.matches("swap svclab").count(), IpSet::ALL.len());
    }

    #[test]
    fn destroys_only_our_sets() {
        let listed = "KUBE-CLUSTER-IP\nother\nKUBE-IPVS-IPS\nsvclab-ipvs-swap-3\n";
        assert_eq!(
            destroy_input(listed),
            "destroy KUBE-CLUSTER-IP\ndestroy KUBE-IPVS-IPS\ndestroy svclab-ipvs-swap-3\n"
        );
    }

    #[test]
    fn entry_formats() {
        let ep = Ipv4Addr::new(10, 244, 1, 5);
        assert_eq!(
            ip_port_ip(ep, Protocol::Udp, 5353, ep),
            "10.244.1.5,udp:5353,10.244.1.5"
        );
        assert_eq!(
            IpSet::node_port(Protocol::Sctp, true).name(),
            "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
        );
    }
}
