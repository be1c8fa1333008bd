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

use std::net::{IpAddr, Ipv4Addr};

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

/// The IPv4 CIDRs `setting` stands for on a node whose primary IP is
/// `node_ip` (kube-proxy's keyword expansion; IPv6 entries drop out).
pub fn cidrs(setting: &[String], node_ip: Ipv4Addr) -> Result<Vec<Ipv4Net>, String> {
    let mut out = Vec::new();
    for entry in setting {
        parse_entry(entry)?;
        match entry.as_str() {
            "primary" => out.push(Ipv4Net::new(node_ip, 32).expect("/32")),
            "localhost" => out.push("127.0.0.0/8".parse().expect("constant")),
            "all" => out.push(Ipv4Net::default()),
            cidr => {
                if let Ok(IpNet::V4(net)) = cidr.parse::<IpNet>() {
                    out.push(net.trunc());
                }
            }
        }
    }
    Ok(out)
}

/// The node addresses that accept NodePorts: those of `addresses` inside
/// the setting's CIDRs, in their order. An empty setting is svclab's
/// default, `primary`: the node IP only.
pub fn resolve(
    setting: &[String],
    node_ip: Ipv4Addr,
    addresses: &[Ipv4Addr],
) -> Result<Vec<Ipv4Addr>, String> {
    if setting.is_empty() {
        return Ok(vec![node_ip]);
    }
    let nets = cidrs(setting, node_ip)?;
    Ok(addresses
        .iter()
        .copied()
        .filter(|a| !a.is_loopback() && nets.iter().any(|n| n.contains(a)))
        .collect())
}

/// Whether `addr` is inside one of `setting`'s entries as kube-proxy reads
/// them (`all` and an empty setting in iptables and IPVS mode match every
/// address; `primary` only `node_ip`).
pub fn matches(setting: &[String], node_ip: Ipv4Addr, addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => cidrs(setting, node_ip)
            .map(|nets| nets.iter().any(|n| n.contains(&a)))
            .unwrap_or(false),
        IpAddr::V6(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn resolves_keywords_and_cidrs_against_the_node_addresses() {
        let addrs = [NODE, GATEWAY];
        let table: &[(&[&str], &[Ipv4Addr])] = &[
            (&[], &[NODE]),
            (&["primary"], &[NODE]),
            (&["all"], &[NODE, GATEWAY]),
            (&["localhost"], &[]),
            (&["10.244.0.0/16"], &[GATEWAY]),
            (&["172.18.0.0/24", "10.244.0.0/24"], &[NODE, GATEWAY]),
            (&["10.99.0.0/16"], &[]),
            (&["fd00::/64"], &[]),
            (&["fd00::/64", "primary"], &[NODE]),
            (&["10.244.0.9/24"], &[GATEWAY]),
        ];
        for (setting, want) in table {
            assert_eq!(
                resolve(&s(setting), NODE, &addrs).unwrap(),
                want.to_vec(),
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
        assert!(resolve(&s(&["primary", "bogus"]), NODE, &[NODE]).is_err());
    }

    #[test]
    fn matches_reads_keywords_as_kube_proxy_does() {
        let gw = IpAddr::V4(GATEWAY);
        assert!(matches(&s(&["all"]), NODE, gw));
        assert!(!matches(&s(&["primary"]), NODE, gw));
        assert!(matches(&s(&["primary"]), NODE, IpAddr::V4(NODE)));
        assert!(matches(
            &s(&["localhost"]),
            NODE,
            "127.0.0.1".parse().unwrap()
        ));
    }
}
