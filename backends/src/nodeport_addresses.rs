//! kube-proxy's `nodePortAddresses`: which of a node's own addresses accept
//! NodePort traffic. The setting is a list of CIDRs and the keywords
//! `primary` (the node's IP), `localhost` (127.0.0.0/8) and `all`
//! (0.0.0.0/0); each node resolves it against its addresses.
//!
//! svclab's backends resolve it once per node into
//! [`NodeContext::node_port_ips`](crate::model::NodeContext): the node IP and
//! the pod bridge's address are the addresses a lab node has. Loopback is
//! never among them: whether the setting covers 127.0.0.1 is
//! [`NodeContext::localhost_node_ports`](crate::model::NodeContext), which
//! only the iptables backends act on (as kube-proxy's iptables mode alone
//! serves localhost NodePorts).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// The keywords kube-proxy accepts besides CIDRs.
pub const KEYWORDS: [&str; 3] = ["primary", "localhost", "all"];

/// One entry of the setting, checked: a keyword or a CIDR of either family
/// (kube-proxy accepts IPv6 CIDRs in an IPv4 cluster; they match nothing
/// here).
pub fn parse_entry(entry: &str) -> Result<(), String> {
    if KEYWORDS.contains(&entry) {
        return Ok(());
    }
    // kube-proxy parses CIDRs as Go's net.ParseCIDR does: host bits are
    // allowed and masked off.
    match entry.parse::<IpNet>() {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "{entry:?} is neither a CIDR (such as 172.18.0.0/24) nor one of {}",
            KEYWORDS.join(", ")
        )),
    }
}

/// The CIDRs of `node_ip`'s family that `setting` stands for on a node
/// whose primary IP of that family is `node_ip`, as kube-proxy reads it per
/// proxier (NewNodePortAddresses): keywords expand in the family (`primary`
/// to the node IP, `all` to the family's zero CIDR, `localhost` to
/// 127.0.0.0/8 for IPv4 only), CIDRs of the other family drop out, and a
/// setting with nothing left for the family means all of it. An empty
/// setting is svclab's default, `primary`.
pub fn cidrs(setting: &[String], node_ip: IpAddr) -> Result<Vec<IpNet>, String> {
    let v4 = node_ip.is_ipv4();
    let zero = || {
        if v4 {
            IpNet::V4(Ipv4Net::default())
        } else {
            IpNet::V6(ipnet::Ipv6Net::default())
        }
    };
    if setting.is_empty() {
        return Ok(vec![IpNet::from(node_ip)]);
    }
    let mut out = Vec::new();
    for entry in setting {
        parse_entry(entry)?;
        match entry.as_str() {
            "primary" => out.push(IpNet::from(node_ip)),
            "localhost" if v4 => out.push("127.0.0.0/8".parse().expect("constant")),
            "localhost" => {}
            "all" => out.push(zero()),
            cidr => {
                if let Ok(net) = cidr.parse::<IpNet>()
                    && net.addr().is_ipv4() == v4
                {
                    out.push(net.trunc());
                }
            }
        }
    }
    if out.is_empty() {
        out.push(zero());
    }
    Ok(out)
}

/// The node addresses that accept NodePorts: those of `addresses` inside
/// the setting's CIDRs, in their order. An empty setting is svclab's
/// default, `primary`: the node IP only.
pub fn resolve(
    setting: &[String],
    node_ip: IpAddr,
    addresses: &[IpAddr],
) -> Result<Vec<IpAddr>, String> {
    let nets = cidrs(setting, node_ip)?;
    Ok(addresses
        .iter()
        .copied()
        .filter(|a| !a.is_loopback() && nets.iter().any(|n| n.contains(a)))
        .collect())
}

/// Whether `addr` is inside one of `setting`'s entries as kube-proxy's
/// proxier of `addr`'s family reads them; `node_ip` is the node's primary
/// IP of that family. IPv6 loopback never is (kube-proxy serves loopback
/// NodePorts on IPv4 only, where route_localnet exists).
pub fn matches(setting: &[String], node_ip: IpAddr, addr: IpAddr) -> bool {
    if addr.is_ipv6() && addr.is_loopback() || node_ip.is_ipv4() != addr.is_ipv4() {
        return false;
    }
    cidrs(setting, node_ip)
        .map(|nets| nets.iter().any(|n| n.contains(&addr)))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const NODE: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn resolves_keywords_and_cidrs_against_the_node_addresses() {
        let addrs = [IpAddr::V4(NODE), IpAddr::V4(GATEWAY)];
        let table: &[(&[&str], &[Ipv4Addr])] = &[
            (&[], &[NODE]),
            (&["primary"], &[NODE]),
            (&["all"], &[NODE, GATEWAY]),
            (&["localhost"], &[]),
            (&["10.244.0.0/16"], &[GATEWAY]),
            (&["172.18.0.0/24", "10.244.0.0/24"], &[NODE, GATEWAY]),
            (&["10.99.0.0/16"], &[]),
            // Nothing of the family left: all of it, as kube-proxy.
            (&["fd00::/64"], &[NODE, GATEWAY]),
            (&["fd00::/64", "primary"], &[NODE]),
            (&["10.244.0.9/24"], &[GATEWAY]),
        ];
        for (setting, want) in table {
            assert_eq!(
                resolve(&s(setting), NODE.into(), &addrs).unwrap(),
                want.iter().map(|a| IpAddr::V4(*a)).collect::<Vec<_>>(),
                "{setting:?}"
            );
        }
    }

    #[test]
    fn rejects_what_kube_proxy_rejects() {
        assert!(
            parse_entry("172.18.0.5/24").is_ok(),
            "host bits are masked, as Go does"
        );
        assert!(
            parse_entry("172.18.0.5").is_err(),
            "an address is not a CIDR"
        );
        let e = parse_entry("nodes").unwrap_err();
        assert!(e.contains("primary, localhost, all"), "{e}");
        assert!(resolve(&s(&["primary", "bogus"]), NODE.into(), &[NODE.into()]).is_err());
    }

    #[test]
    fn matches_reads_keywords_as_kube_proxy_does() {
        let node = IpAddr::V4(NODE);
        let gw = IpAddr::V4(GATEWAY);
        assert!(matches(&s(&["all"]), node, gw));
        assert!(!matches(&s(&["primary"]), node, gw));
        assert!(matches(&s(&["primary"]), node, node));
        assert!(matches(
            &s(&["localhost"]),
            node,
            "127.0.0.1".parse().unwrap()
        ));
        assert!(!matches(&[], node, "127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn each_family_reads_its_own_entries() {
        let node6: IpAddr = "fd00:172:18::2".parse().unwrap();
        let gw6: IpAddr = "fd00:10:244::1".parse().unwrap();
        let lab = s(&["172.18.0.0/24", "127.0.0.0/8", "fd00:172:18::/64"]);
        assert!(matches(&lab, node6, node6));
        assert!(!matches(&lab, node6, gw6), "outside the IPv6 CIDR");
        // Only IPv4 entries: the IPv6 proxier takes every address.
        let v4_only = s(&["172.18.0.0/24"]);
        assert!(matches(&v4_only, node6, gw6));
        assert!(matches(&s(&["primary"]), node6, node6));
        assert!(!matches(&s(&["primary"]), node6, gw6));
        // Never IPv6 loopback, never across families.
        assert!(!matches(&s(&["all"]), node6, "::1".parse().unwrap()));
        assert!(!matches(&s(&["all"]), node6, IpAddr::V4(NODE)));
    }
}
