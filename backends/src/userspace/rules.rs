//! The iptables rules of kube-proxy's userspace mode, rendered per service
//! port: traffic to a portal (ClusterIP, external IP) or NodePort is sent to
//! the proxy's own port, REDIRECT for packets that arrive (PREROUTING), DNAT
//! to the node IP for the node's own packets (OUTPUT; REDIRECT there would
//! send them to 127.0.0.1 and break UDP replies). A service port without any
//! usable endpoint gets REJECT rules instead, so clients are refused at once.
//!
//! The portal chains hold a rule per Service, and iptables-nft deletes a
//! rule by comparing it with every rule of its chain, so they are split into
//! [`SHARDS`] sub-chains by the low bits of the destination address: at 10k
//! Services a partial sync that deletes a rule scans about 150 rules, not
//! 10k. The NodePort chains hold a rule per NodePort only and stay whole.

use std::fmt;
use std::net::IpAddr;

use crate::model::{IpFamily, NodeContext, ServicePort};

pub const CONTAINER_PORTALS: &str = "KUBE-PORTALS-CONTAINER";
pub const HOST_PORTALS: &str = "KUBE-PORTALS-HOST";
pub const CONTAINER_NODEPORTS: &str = "KUBE-NODEPORT-CONTAINER";
pub const HOST_NODEPORTS: &str = "KUBE-NODEPORT-HOST";
pub const REJECT_PORTALS: &str = "KUBE-PORTALS-REJECT";
pub const REJECT_NODEPORTS: &str = "KUBE-NODEPORT-REJECT";

/// Sub-chains per portal chain; a power of two, so a dispatch rule is a
/// destination mask.
pub const SHARDS: u8 = 64;

/// Our top chains, per table: the ones the built-in chains jump to.
pub const NAT_CHAINS: [&str; 4] = [
    CONTAINER_PORTALS,
    HOST_PORTALS,
    CONTAINER_NODEPORTS,
    HOST_NODEPORTS,
];
pub const FILTER_CHAINS: [&str; 2] = [REJECT_PORTALS, REJECT_NODEPORTS];

/// The top chains whose rules live in sub-chains.
const SHARDED: [&str; 3] = [CONTAINER_PORTALS, HOST_PORTALS, REJECT_PORTALS];

/// The sub-chain of `chain` that holds the rules for destination `ip`.
pub fn shard(chain: &str, ip: IpAddr) -> String {
    let last = match ip {
        IpAddr::V4(ip) => ip.octets()[3],
        IpAddr::V6(ip) => ip.octets()[15],
    };
    format!("{chain}-{:02X}", last & (SHARDS - 1))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Nat,
    Filter,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Nat, Table::Filter];

    pub const fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }

    /// Our top chains in this table.
    pub fn chains(self) -> &'static [&'static str] {
        match self {
            Table::Nat => &NAT_CHAINS,
            Table::Filter => &FILTER_CHAINS,
        }
    }

    /// Every chain of ours in this table, sub-chains after their top chain.
    pub fn all_chains(self) -> Vec<String> {
        let mut out = Vec::new();
        for top in self.chains() {
            out.push(top.to_string());
            if SHARDED.contains(top) {
                out.extend((0..SHARDS).map(|b| format!("{top}-{b:02X}")));
            }
        }
        out
    }

    /// Whether `chain` is one of ours (a top chain or a sub-chain).
    pub fn is_ours(self, chain: &str) -> bool {
        self.all_chains().iter().any(|c| c == chain)
    }

    /// The fixed rules that send each destination to its sub-chain.
    pub fn dispatch(self, family: IpFamily) -> Vec<Rule> {
        let mut out = Vec::new();
        for top in self.chains().iter().filter(|c| SHARDED.contains(c)) {
            for b in 0..SHARDS {
                // The last byte of the address, under a mask of the shard
                // bits (`::b/::m` for IPv6).
                let m = SHARDS - 1;
                let spec = match family {
                    IpFamily::IPv4 => format!("-d 0.0.0.{b}/0.0.0.{m} -j {top}-{b:02X}"),
                    IpFamily::IPv6 => format!("-d ::{b:x}/::{m:x} -j {top}-{b:02X}"),
                };
                out.push(Rule {
                    table: self,
                    chain: top.to_string(),
                    spec,
                });
            }
        }
        out
    }
}

/// One rule in one of our chains; `spec` is what follows `-A chain`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    pub table: Table,
    pub chain: String,
    pub spec: String,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {} {}", self.chain, self.spec)
    }
}

/// Where a service port's traffic goes in this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyPorts {
    /// The listener for the ClusterIP.
    pub portal: u16,
    /// The listener for NodePort and external IPs, if it has any.
    pub external: Option<u16>,
}

/// Everything `svc` needs: redirects to its listeners when `has_endpoints`,
/// rejects otherwise (none with `reject` off, the lab's NoReject fault).
pub fn service_rules(
    svc: &ServicePort,
    node: &NodeContext,
    ports: ProxyPorts,
    has_endpoints: bool,
    reject: bool,
) -> Vec<Rule> {
    let mut out = Vec::new();
    let proto = svc.protocol.lower();
    let name = svc.name.to_string();
    let matches = |dst: IpAddr, port: u16, comment: &str| {
        let host = if dst.is_ipv4() { 32 } else { 128 };
        format!(
            "-d {dst}/{host} -p {proto} -m comment --comment \"{comment}\" -m {proto} --dport {port}"
        )
    };
    let node_ip = node.node_ip;
    let mut portals = vec![(svc.cluster_ip, Some(ports.portal))];
    portals.extend(svc.external_ips.iter().map(|ip| (*ip, ports.external)));
    portals.extend(svc.load_balancer_ips.iter().map(|ip| (*ip, ports.external)));
    for (ip, to) in portals {
        let Some(to) = to else { continue };
        if has_endpoints {
            let m = matches(ip, svc.port, &name);
            out.push(redirect(shard(CONTAINER_PORTALS, ip), &m, to));
            out.push(dnat(shard(HOST_PORTALS, ip), &m, node_ip, to));
        } else if reject {
            let m = matches(ip, svc.port, &format!("{name} has no endpoints"));
            out.push(reject_rule(shard(REJECT_PORTALS, ip), &m));
        }
    }
    if let (Some(np), Some(to)) = (svc.node_port, ports.external) {
        for ip in node.nodeport_ips() {
            if has_endpoints {
                let m = matches(ip, np, &name);
                out.push(redirect(CONTAINER_NODEPORTS.into(), &m, to));
                out.push(dnat(HOST_NODEPORTS.into(), &m, node_ip, to));
            } else if reject {
                let m = matches(ip, np, &format!("{name} has no endpoints"));
                out.push(reject_rule(REJECT_NODEPORTS.into(), &m));
            }
        }
    }
    out
}

fn redirect(chain: String, m: &str, to: u16) -> Rule {
    Rule {
        table: Table::Nat,
        chain,
        spec: format!("{m} -j REDIRECT --to-ports {to}"),
    }
}

fn dnat(chain: String, m: &str, node_ip: IpAddr, to: u16) -> Rule {
    Rule {
        table: Table::Nat,
        chain,
        spec: format!(
            "{m} -j DNAT --to-destination {}",
            std::net::SocketAddr::new(node_ip, to)
        ),
    }
}

fn reject_rule(chain: String, m: &str) -> Rule {
    Rule {
        table: Table::Filter,
        chain,
        spec: format!("{m} -j REJECT"),
    }
}

/// Restore input that flushes our chains and writes the dispatch rules and
/// `rules` into them: the whole programmed state in one transaction per
/// table.
pub fn full_input<'a>(family: IpFamily, rules: impl IntoIterator<Item = &'a Rule>) -> String {
    let rules: Vec<&Rule> = rules.into_iter().collect();
    let mut s = String::new();
    for table in Table::ALL {
        s.push_str(&format!("*{}\n", table.name()));
        for chain in table.all_chains() {
            s.push_str(&format!(":{chain} - [0:0]\n"));
        }
        for r in table.dispatch(family) {
            s.push_str(&format!("{r}\n"));
        }
        for r in rules.iter().filter(|r| r.table == table) {
            s.push_str(&format!("{r}\n"));
        }
        s.push_str("COMMIT\n");
    }
    s
}

/// Restore input that deletes `removed` and appends `added`, touching no
/// other rule; `None` when both are empty.
pub fn partial_input(removed: &[Rule], added: &[Rule]) -> Option<String> {
    let mut s = String::new();
    for table in Table::ALL {
        let dels: Vec<&Rule> = removed.iter().filter(|r| r.table == table).collect();
        let adds: Vec<&Rule> = added.iter().filter(|r| r.table == table).collect();
        if dels.is_empty() && adds.is_empty() {
            continue;
        }
        s.push_str(&format!("*{}\n", table.name()));
        for r in dels {
            s.push_str(&format!("-D {} {}\n", r.chain, r.spec));
        }
        for r in adds {
            s.push_str(&format!("{r}\n"));
        }
        s.push_str("COMMIT\n");
    }
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{Protocol, ServicePortName};
    use crate::testkit::node;

    fn svc(protocol: Protocol) -> ServicePort {
        ServicePort {
            name: ServicePortName::new("ns1", "web", "http", protocol),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10).into(),
            port: 80,
            protocol,
            node_port: Some(30080),
            session_affinity_seconds: None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
            external_ips: vec![Ipv4Addr::new(203, 0, 113, 71).into()],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
        }
    }

    fn lines(rules: &[Rule]) -> Vec<String> {
        rules
            .iter()
            .map(|r| format!("{} {r}", r.table.name()))
            .collect()
    }

    #[test]
    fn service_with_endpoints_redirects_every_front_to_its_listener() {
        let ports = ProxyPorts {
            portal: 40001,
            external: Some(40002),
        };
        let got = lines(&service_rules(
            &svc(Protocol::Tcp),
            &node(),
            ports,
            true,
            true,
        ));
        let m = |d: &str, p: u16| {
            format!("-d {d}/32 -p tcp -m comment --comment \"ns1/web:http\" -m tcp --dport {p}")
        };
        let want = vec![
            format!(
                "nat -A KUBE-PORTALS-CONTAINER-0A {} -j REDIRECT --to-ports 40001",
                m("10.96.0.10", 80)
            ),
            format!(
                "nat -A KUBE-PORTALS-HOST-0A {} -j DNAT --to-destination 192.168.0.2:40001",
                m("10.96.0.10", 80)
            ),
            format!(
                "nat -A KUBE-PORTALS-CONTAINER-07 {} -j REDIRECT --to-ports 40002",
                m("203.0.113.71", 80)
            ),
            format!(
                "nat -A KUBE-PORTALS-HOST-07 {} -j DNAT --to-destination 192.168.0.2:40002",
                m("203.0.113.71", 80)
            ),
            format!(
                "nat -A KUBE-NODEPORT-CONTAINER {} -j REDIRECT --to-ports 40002",
                m("192.168.0.2", 30080)
            ),
            format!(
                "nat -A KUBE-NODEPORT-HOST {} -j DNAT --to-destination 192.168.0.2:40002",
                m("192.168.0.2", 30080)
            ),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn service_without_endpoints_is_rejected_or_left_alone_under_the_fault() {
        let ports = ProxyPorts {
            portal: 40001,
            external: Some(40002),
        };
        let got = lines(&service_rules(
            &svc(Protocol::Udp),
            &node(),
            ports,
            false,
            true,
        ));
        let m = |d: &str, p: u16| {
            format!(
                "-d {d}/32 -p udp -m comment --comment \"ns1/web:http has no endpoints\" -m udp --dport {p}"
            )
        };
        let want = vec![
            format!(
                "filter -A KUBE-PORTALS-REJECT-0A {} -j REJECT",
                m("10.96.0.10", 80)
            ),
            format!(
                "filter -A KUBE-PORTALS-REJECT-07 {} -j REJECT",
                m("203.0.113.71", 80)
            ),
            format!(
                "filter -A KUBE-NODEPORT-REJECT {} -j REJECT",
                m("192.168.0.2", 30080)
            ),
        ];
        assert_eq!(got, want);
        assert!(service_rules(&svc(Protocol::Udp), &node(), ports, false, false).is_empty());
    }

    #[test]
    fn full_input_flushes_our_chains_and_partial_touches_only_the_diff() {
        let ports = ProxyPorts {
            portal: 40001,
            external: None,
        };
        let mut s = svc(Protocol::Tcp);
        s.node_port = None;
        s.external_ips.clear();
        let rules = service_rules(&s, &node(), ports, true, true);
        let full = full_input(IpFamily::IPv4, &rules);
        let lines: Vec<&str> = full.lines().collect();
        // Per table: its chains declared (flushed), the dispatch rules, the
        // Service's rules, COMMIT.
        let nat_chains = 4 + 2 * usize::from(SHARDS);
        assert_eq!(lines[0], "*nat");
        assert_eq!(lines[1], ":KUBE-PORTALS-CONTAINER - [0:0]");
        assert_eq!(lines[2], ":KUBE-PORTALS-CONTAINER-00 - [0:0]");
        assert_eq!(lines[nat_chains], ":KUBE-NODEPORT-HOST - [0:0]");
        assert_eq!(
            lines[nat_chains + 1 + 10],
            "-A KUBE-PORTALS-CONTAINER -d 0.0.0.10/0.0.0.63 -j KUBE-PORTALS-CONTAINER-0A"
        );
        let service_lines: Vec<&str> = lines
            .iter()
            .filter(|l| l.contains("ns1/web"))
            .copied()
            .collect();
        assert_eq!(service_lines.len(), 2);
        assert!(service_lines[0].starts_with("-A KUBE-PORTALS-CONTAINER-0A -d 10.96.0.10/32"));
        assert_eq!(
            lines.iter().filter(|l| l.starts_with(':')).count(),
            6 + 3 * usize::from(SHARDS)
        );
        assert_eq!(
            Table::ALL
                .iter()
                .map(|t| t.dispatch(IpFamily::IPv4).len())
                .sum::<usize>(),
            3 * usize::from(SHARDS)
        );
        assert!(full.ends_with(
            "-A KUBE-PORTALS-REJECT -d 0.0.0.63/0.0.0.63 -j KUBE-PORTALS-REJECT-3F\nCOMMIT\n"
        ));
        assert!(Table::Filter.is_ours("KUBE-PORTALS-REJECT-3F"));
        assert!(Table::Nat.is_ours("KUBE-NODEPORT-HOST"));
        assert!(!Table::Nat.is_ours("KUBE-NODEPORT-HOST-00"));
        assert!(!Table::Nat.is_ours("KUBE-PORTALS-CONTAINER-40"));
        let rejects = service_rules(&s, &node(), ports, false, true);
        let partial = partial_input(&rules, &rejects).unwrap();
        assert_eq!(partial.lines().filter(|l| l.starts_with("-D ")).count(), 2);
        assert_eq!(partial.lines().filter(|l| l.starts_with("-A ")).count(), 1);
        assert!(partial.starts_with("*nat\n-D KUBE-PORTALS-CONTAINER-0A -d 10.96.0.10/32"));
        assert!(partial.contains("COMMIT\n*filter\n-A KUBE-PORTALS-REJECT-0A"));
        assert_eq!(partial_input(&[], &[]), None);
    }
}
