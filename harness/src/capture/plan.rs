//! The captured Lab's address plan: a service CIDR that holds every
//! captured ClusterIP, a pod CIDR (the one the endpoints came from when it
//! fits, a fresh one otherwise) with per-node ranges big enough for the
//! busiest node, a node network apart from both, and a NodePort range that
//! holds every captured node port.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// What the plan needs to know.
#[derive(Clone, Debug, Default)]
pub struct Demand {
    pub cluster_ips: Vec<Ipv4Addr>,
    pub endpoint_ips: Vec<Ipv4Addr>,
    pub nodes: usize,
    /// Most pods any one node can get (client pod not included).
    pub pods_per_node: usize,
    /// Every nodePort and healthCheckNodePort.
    pub node_ports: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub service_cidr: Ipv4Net,
    pub pod_cidr: Ipv4Net,
    pub node_cidr_mask_size: u8,
    pub node_network: Ipv4Net,
    pub node_port_range: (u16, u16),
    /// Whether the pod CIDR is the endpoints' own.
    pub pod_cidr_from_endpoints: bool,
}

/// Kubernetes' defaults, the start of every widening.
const WIDEST_DEFAULT_PREFIX: u8 = 16;
const NODE_NETWORKS: [&str; 3] = ["172.18.0.0/24", "192.168.200.0/24", "100.127.0.0/24"];
const FRESH_POD_BASES: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 244, 0, 0),
    Ipv4Addr::new(10, 128, 0, 0),
    Ipv4Addr::new(172, 20, 0, 0),
    Ipv4Addr::new(100, 64, 0, 0),
];

/// The smallest network holding every address, or `None` for no address.
pub fn cover(ips: &[Ipv4Addr]) -> Option<Ipv4Net> {
    let lo = u32::from(*ips.iter().min()?);
    let hi = u32::from(*ips.iter().max()?);
    let prefix = (lo ^ hi).leading_zeros() as u8;
    Some(Ipv4Net::new(Ipv4Addr::from(lo), prefix).ok()?.trunc())
}

fn widen(net: Ipv4Net, prefix: u8) -> Ipv4Net {
    Ipv4Net::new(net.network(), prefix.min(net.prefix_len()))
        .expect("a shorter prefix is valid")
        .trunc()
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn bits_for(n: usize) -> u8 {
    (usize::BITS - n.saturating_sub(1).leading_zeros()) as u8
}

pub fn plan(d: &Demand) -> Result<Plan, String> {
    let service_cidr = service_cidr(&d.cluster_ips)?;
    let node_network = NODE_NETWORKS
        .iter()
        .map(|n| n.parse::<Ipv4Net>().expect("constant"))
        .find(|n| !overlaps(*n, service_cidr))
        .ok_or_else(|| format!("the service CIDR {service_cidr} overlaps every node network"))?;

    // Per node: its pods, the client pod, the gateway, network and
    // broadcast; never smaller than Kubernetes' usual /24.
    let per_node = d.pods_per_node + 4;
    let node_mask = (32 - bits_for(per_node)).min(24);
    let nodes = d.nodes.max(1);
    let pod_prefix_max = node_mask
        .checked_sub(bits_for(nodes).max(1))
        .ok_or_else(|| format!("{nodes} nodes of /{node_mask} do not fit in IPv4"))?;
    let fits = |net: Ipv4Net| {
        !overlaps(net, service_cidr) && !overlaps(net, node_network) && net.prefix_len() >= 8
    };
    let from_endpoints = cover(&d.endpoint_ips)
        .map(|c| widen(c, WIDEST_DEFAULT_PREFIX.min(pod_prefix_max)))
        .filter(|c| fits(*c));
    let (pod_cidr, own) = match from_endpoints {
        Some(c) => (c, true),
        None => {
            let prefix = WIDEST_DEFAULT_PREFIX.min(pod_prefix_max);
            let fresh = FRESH_POD_BASES
                .iter()
                .filter_map(|b| Ipv4Net::new(*b, prefix).ok().map(|n| n.trunc()))
                .find(|n| fits(*n))
                .ok_or_else(|| {
                    format!("no pod CIDR of /{prefix} fits beside the service CIDR {service_cidr}")
                })?;
            (fresh, false)
        }
    };
    let lo = d
        .node_ports
        .iter()
        .copied()
        .min()
        .unwrap_or(30000)
        .min(30000);
    let hi = d
        .node_ports
        .iter()
        .copied()
        .max()
        .unwrap_or(32767)
        .max(32767);
    Ok(Plan {
        service_cidr,
        pod_cidr,
        node_cidr_mask_size: node_mask,
        node_network,
        node_port_range: (lo, hi),
        pod_cidr_from_endpoints: own,
    })
}

/// Covers every ClusterIP, at least a /16, and never with a ClusterIP on
/// the network or broadcast address (those cannot be allocated).
fn service_cidr(ips: &[Ipv4Addr]) -> Result<Ipv4Net, String> {
    let Some(c) = cover(ips) else {
        return Ok("10.96.0.0/16".parse().expect("constant"));
    };
    let mut net = widen(c, WIDEST_DEFAULT_PREFIX);
    while ips
        .iter()
        .any(|ip| *ip == net.network() || *ip == net.broadcast())
    {
        if net.prefix_len() <= 8 {
            return Err(format!(
                "the ClusterIPs span {net}, which is too wide for one service CIDR"
            ));
        }
        net = widen(net, net.prefix_len() - 1);
    }
    if net.prefix_len() < 8 {
        return Err(format!(
            "the ClusterIPs span {net}, which is too wide for one service CIDR"
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn a_usual_cluster_keeps_its_ranges() {
        let p = plan(&Demand {
            cluster_ips: vec![ip("10.96.0.1"), ip("10.96.0.10"), ip("10.96.140.7")],
            endpoint_ips: vec![ip("10.244.0.5"), ip("10.244.3.9")],
            nodes: 3,
            pods_per_node: 40,
            node_ports: vec![30080, 31500],
        })
        .unwrap();
        assert_eq!(p.service_cidr.to_string(), "10.96.0.0/16");
        assert_eq!(p.pod_cidr.to_string(), "10.244.0.0/16");
        assert!(p.pod_cidr_from_endpoints);
        assert_eq!(p.node_cidr_mask_size, 24);
        assert_eq!(p.node_network.to_string(), "172.18.0.0/24");
        assert_eq!(p.node_port_range, (30000, 32767));
    }

    #[test]
    fn busy_nodes_wide_ranges_and_clashes() {
        let p = plan(&Demand {
            cluster_ips: vec![ip("172.18.0.1"), ip("172.18.200.1")],
            endpoint_ips: vec![ip("172.18.5.5")],
            nodes: 2,
            pods_per_node: 300,
            node_ports: vec![20000],
        })
        .unwrap();
        // The endpoints sit inside the service range: a fresh pod CIDR.
        assert_eq!(p.service_cidr.to_string(), "172.18.0.0/16");
        assert!(!p.pod_cidr_from_endpoints);
        assert_eq!(p.node_cidr_mask_size, 23);
        assert_eq!(p.node_network.to_string(), "192.168.200.0/24");
        assert_eq!(p.node_port_range, (20000, 32767));
    }

    #[test]
    fn cluster_ips_on_a_boundary_widen_the_range() {
        let p = plan(&Demand {
            cluster_ips: vec![ip("10.97.0.0"), ip("10.97.255.255")],
            ..Demand::default()
        })
        .unwrap();
        assert_eq!(p.service_cidr.to_string(), "10.96.0.0/14");
        assert_eq!(cover(&[]), None);
    }
}
