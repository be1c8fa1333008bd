//! The iptables rules of kube-proxy's userspace mode, rendered per service
//! port: traffic to a portal (ClusterIP, external IP) or NodePort is sent to
//! the proxy's own port, REDIRECT for packets that arrive (PREROUTING), DNAT
//! to the node IP for the node's own packets (OUTPUT; REDIRECT there would
//! send them to 127.0.0.1 and break UDP replies). A service port without any
//! usable endpoint gets REJECT rules instead, so clients are refused at once.

use std::fmt;
use std::net::Ipv4Addr;

use crate::model::{NodeContext, ServicePort};

pub const CONTAINER_PORTALS: &str = "KUBE-PORTALS-CONTAINER";
pub const HOST_PORTALS: &str = "KUBE-PORTALS-HOST";
pub const CONTAINER_NODEPORTS: &str = "KUBE-NODEPORT-CONTAINER";
pub const HOST_NODEPORTS: &str = "KUBE-NODEPORT-HOST";
pub const REJECT_PORTALS: &str = "KUBE-PORTALS-REJECT";
pub const REJECT_NODEPORTS: &str = "KUBE-NODEPORT-REJECT";

/// Our chains, per table.
pub const NAT_CHAINS: [&str; 4] = [
    CONTAINER_PORTALS,
    HOST_PORTALS,
    CONTAINER_NODEPORTS,
    HOST_NODEPORTS,
];
pub const FILTER_CHAINS: [&str; 2] = [REJECT_PORTALS, REJECT_NODEPORTS];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Nat,
    Filter,
}

impl Table {
    pub const ALL: [Table; 2] = [Table::Nat, Table::Filter];

    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }

    pub fn chains(self) -> &'static [&'static str] {
        match self {
            Table::Nat => &NAT_CHAINS,
            Table::Filter => &FILTER_CHAINS,
        }
    }
}

/// One rule in one of our chains; `spec` is what follows `-A chain`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    pub table: Table,
    pub chain: &'static str,
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
    let matches = |dst: Ipv4Addr, port: u16, comment: &str| {
        format!(
            "-d {dst}/32 -p {proto} -m comment --comment \"{comment}\" -m {proto} --dport {port}"
        )
    };
    let mut portals = vec![(svc.cluster_ip, Some(ports.portal))];
    portals.extend(svc.external_ips.iter().map(|ip| (*ip, ports.external)));
    for (ip, to) in portals {
        let Some(to) = to else { continue };
        if has_endpoints {
            let m = matches(ip, svc.port, &name);
            out.push(redirect(Table::Nat, CONTAINER_PORTALS, &m, to));
            out.push(dnat(HOST_PORTALS, &m, node.node_ip, to));
        } else if reject {
            let m = matches(ip, svc.port, &format!("{name} has no endpoints"));
            out.push(reject_rule(REJECT_PORTALS, &m));
        }
    }
    if let (Some(np), Some(to)) = (svc.node_port, ports.external) {
        if has_endpoints {
            let m = matches(node.node_ip, np, &name);
            out.push(redirect(Table::Nat, CONTAINER_NODEPORTS, &m, to));
            out.push(dnat(HOST_NODEPORTS, &m, node.node_ip, to));
        } else if reject {
            let m = matches(node.node_ip, np, &format!("{name} has no endpoints"));
            out.push(reject_rule(REJECT_NODEPORTS, &m));
        }
    }
    out
}

fn redirect(table: Table, chain: &'static str, m: &str, to: u16) -> Rule {
    Rule {
        table,
        chain,
        spec: format!("{m} -j REDIRECT --to-ports {to}"),
    }
}

fn dnat(chain: &'static str, m: &str, node_ip: Ipv4Addr, to: u16) -> Rule {
    Rule {
        table: Table::Nat,
        chain,
        spec: format!("{m} -j DNAT --to-destination {node_ip}:{to}"),
    }
}

fn reject_rule(chain: &'static str, m: &str) -> Rule {
    Rule {
        table: Table::Filter,
        chain,
        spec: format!("{m} -j REJECT"),
    }
}

/// Restore input that flushes our chains and writes `rules` into them: the
/// whole programmed state in one transaction per table.
pub fn full_input<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> String {
    let rules: Vec<&Rule> = rules.into_iter().collect();
    let mut s = String::new();
    for table in Table::ALL {
        s.push_str(&format!("*{}\n", table.name()));
        for chain in table.chains() {
            s.push_str(&format!(":{chain} - [0:0]\n"));
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
    use super::*;
    use crate::model::{Protocol, ServicePortName};

    fn node() -> NodeContext {
        NodeContext {
            node_name: "n0".into(),
            node_ip: Ipv4Addr::new(192, 168, 0, 2),
            pod_cidr: "10.244.0.0/24".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            run_prefix: "t".into(),
            bridge: "cni0".into(),
            uplink: "eth0".into(),
        }
    }

    fn svc(protocol: Protocol) -> ServicePort {
        ServicePort {
            name: ServicePortName::new("ns1", "web", "http", protocol),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            protocol,
            node_port: Some(30080),
            session_affinity_seconds: None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
            external_ips: vec![Ipv4Addr::new(203, 0, 113, 7)],
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
                "nat -A KUBE-PORTALS-CONTAINER {} -j REDIRECT --to-ports 40001",
                m("10.96.0.10", 80)
            ),
            format!(
                "nat -A KUBE-PORTALS-HOST {} -j DNAT --to-destination 192.168.0.2:40001",
                m("10.96.0.10", 80)
            ),
            format!(
                "nat -A KUBE-PORTALS-CONTAINER {} -j REDIRECT --to-ports 40002",
                m("203.0.113.7", 80)
            ),
            format!(
                "nat -A KUBE-PORTALS-HOST {} -j DNAT --to-destination 192.168.0.2:40002",
                m("203.0.113.7", 80)
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
                "filter -A KUBE-PORTALS-REJECT {} -j REJECT",
                m("10.96.0.10", 80)
            ),
            format!(
                "filter -A KUBE-PORTALS-REJECT {} -j REJECT",
                m("203.0.113.7", 80)
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
        let full = full_input(&rules);
        assert!(full.starts_with(
            "*nat\n:KUBE-PORTALS-CONTAINER - [0:0]\n:KUBE-PORTALS-HOST - [0:0]\n\
             :KUBE-NODEPORT-CONTAINER - [0:0]\n:KUBE-NODEPORT-HOST - [0:0]\n-A KUBE-PORTALS-CONTAINER "
        ));
        assert!(full.ends_with(
            "COMMIT\n*filter\n:KUBE-PORTALS-REJECT - [0:0]\n:KUBE-NODEPORT-REJECT - [0:0]\nCOMMIT\n"
        ));
        let rejects = service_rules(&s, &node(), ports, false, true);
        let partial = partial_input(&rules, &rejects).unwrap();
        assert_eq!(partial.lines().filter(|l| l.starts_with("-D ")).count(), 2);
        assert_eq!(partial.lines().filter(|l| l.starts_with("-A ")).count(), 1);
        assert!(partial.starts_with("*nat\n-D KUBE-PORTALS-CONTAINER -d 10.96.0.10/32"));
        assert!(partial.contains("COMMIT\n*filter\n-A KUBE-PORTALS-REJECT"));
        assert_eq!(partial_input(&[], &[]), None);
    }
}
