//! The Lab's IP families (`spec.ipFamilies`) and their address ranges: the
//! cluster's pod and service CIDRs per family (`podCIDRs`, `serviceCIDRs`,
//! or the IPv4-only `podCIDR` and `serviceCIDR`) and the IPv6 node network.
//!
//! IPv6 addresses mirror the IPv4 plan: a node, pod or client has the IPv6
//! address at the same host offset in the IPv6 range as its IPv4 address
//! has in the IPv4 one. The lab's namespaces keep their IPv4 addresses in an
//! IPv6-only lab too (the lab's own plumbing); the Kubernetes objects (Node
//! and Pod addresses, Services, EndpointSlices) carry only the cluster's
//! families.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use svclab_backends::model::IpFamily;

use super::yaml::Document;
use super::{Errs, LabSpec, NodePlan, Pod};

/// The cluster's families, primary first, and its IPv6 ranges when it has
/// IPv6.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stack {
    pub families: Vec<IpFamily>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<V6Plan>,
}

impl Default for Stack {
    fn default() -> Self {
        Stack {
            families: vec![IpFamily::IPv4],
            v6: None,
        }
    }
}

impl Stack {
    pub fn has(&self, f: IpFamily) -> bool {
        self.families.contains(&f)
    }

    pub fn primary(&self) -> IpFamily {
        self.families[0]
    }

    pub fn dual(&self) -> bool {
        self.families.len() == 2
    }

    /// The families as the API server names them, primary first.
    pub fn names(&self) -> Vec<&'static str> {
        self.families.iter().map(|f| f.as_k8s()).collect()
    }
}

/// The lab's IPv6 ranges and the fabric's fixed IPv6 addresses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct V6Plan {
    pub node_network: Ipv6Net,
    pub pod_cidr: Ipv6Net,
    pub service_cidr: Ipv6Net,
    pub node_cidr_mask_size: u8,
    pub fabric_gateway: Ipv6Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ip: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external2_ip: Option<Ipv6Addr>,
}

/// `net`'s address `offset` hosts past its network address.
pub fn offset6(net: Ipv6Net, offset: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) + offset)
}

/// Where `ip` sits in `net`, counted from its network address.
fn offset4(net: Ipv4Net, ip: Ipv4Addr) -> u128 {
    u128::from(u32::from(ip) - u32::from(net.network()))
}

/// The families the Lab asks for, checked, and its CIDR lists folded in:
/// an IPv4 entry of `podCIDRs`/`serviceCIDRs` becomes `podCIDR`/
/// `serviceCIDR` (which the IPv4 plan reads). `None` after any error.
pub(crate) fn resolve(doc: &Document, lab: &mut LabSpec, errs: &mut Errs) -> Option<Stack> {
    let start = errs.count();
    let mut families: Vec<IpFamily> = Vec::new();
    if lab.ip_families.is_empty() || lab.ip_families.len() > 2 {
        errs.at(
            doc,
            "spec.ipFamilies",
            format!(
                "must list one or two families (IPv4, IPv6), not {}",
                lab.ip_families.len()
            ),
        );
    }
    for (i, name) in lab.ip_families.iter().enumerate() {
        let at = format!("spec.ipFamilies[{i}]");
        match IpFamily::parse_k8s(name) {
            None => errs.at(
                doc,
                &at,
                format!(
                    "Unsupported value: {}: supported values: \"IPv4\", \"IPv6\"",
                    super::limits::elide(name)
                ),
            ),
            Some(f) if families.contains(&f) => {
                errs.at(doc, &at, format!("Duplicate value: {:?}", f.as_k8s()))
            }
            Some(f) => families.push(f),
        }
    }
    if errs.count() > start {
        return None;
    }

    let spec = doc.value.get("spec");
    let given = |key: &str| spec.and_then(|s| s.get(key)).is_some();
    let mut v6_pod = None;
    let mut v6_svc = None;
    for (list, single, slot) in [
        ("podCIDRs", "podCIDR", &mut v6_pod),
        ("serviceCIDRs", "serviceCIDR", &mut v6_svc),
    ] {
        let entries = if list == "podCIDRs" {
            &lab.pod_cidrs
        } else {
            &lab.service_cidrs
        };
        if !entries.is_empty() && given(single) {
            errs.at(
                doc,
                &format!("spec.{list}"),
                format!("give spec.{single} or spec.{list}, not both"),
            );
            continue;
        }
        let mut v4: Option<Ipv4Net> = None;
        for (i, net) in entries.iter().enumerate() {
            let at = format!("spec.{list}[{i}]");
            let family = IpFamily::of(&net.addr());
            if !families.contains(&family) {
                errs.at(
                    doc,
                    &at,
                    format!("{net} is {family}, which spec.ipFamilies does not list"),
                );
                continue;
            }
            match net {
                IpNet::V4(n) if v4.is_none() => v4 = Some(*n),
                IpNet::V6(n) if slot.is_none() => {
                    if is_v4_mapped(n) {
                        errs.at(
                            doc,
                            &at,
                            format!("{n} is an IPv4-mapped range, which overlaps the IPv4 ranges"),
                        );
                    }
                    *slot = Some(*n);
                }
                _ => errs.at(
                    doc,
                    &at,
                    format!("a second {family} CIDR: give one per family"),
                ),
            }
        }
        // The IPv4 range: the list's, or the single field's (which has a
        // default, so an IPv4 cluster needs neither).
        if let Some(n) = v4 {
            if list == "podCIDRs" {
                lab.pod_cidr = n;
            } else {
                lab.service_cidr = n;
            }
        }
        if families.contains(&IpFamily::IPv6) && slot.is_none() && errs.count() == start {
            if entries.is_empty() {
                errs.at(
                    doc,
                    "spec.ipFamilies",
                    format!(
                        "lists IPv6, and spec.{list} has no IPv6 CIDR (spec.{single} is IPv4 only)"
                    ),
                );
            } else {
                errs.at(
                    doc,
                    &format!("spec.{list}"),
                    "has no IPv6 CIDR, and spec.ipFamilies lists IPv6",
                );
            }
        }
        if families.contains(&IpFamily::IPv4) && !entries.is_empty() && v4.is_none() {
            errs.at(
                doc,
                &format!("spec.{list}"),
                "has no IPv4 CIDR, and spec.ipFamilies lists IPv4",
            );
        }
    }
    if errs.count() > start {
        return None;
    }
    let v6 = match (v6_pod, v6_svc) {
        (Some(pod), Some(svc)) => Some(check_v6(doc, lab, pod, svc, errs)?),
        _ => None,
    };
    (errs.count() == start).then_some(Stack { families, v6 })
}

fn is_v4_mapped(n: &Ipv6Net) -> bool {
    let mapped: Ipv6Net = "::ffff:0:0/96".parse().expect("constant");
    mapped.contains(&n.network()) || n.contains(&mapped.network())
}

/// The IPv6 ranges on their own and against each other, as the IPv4 ones
/// are checked; the node addresses are placed later ([`place`]).
fn check_v6(
    doc: &Document,
    lab: &LabSpec,
    pod: Ipv6Net,
    svc: Ipv6Net,
    errs: &mut Errs,
) -> Option<V6Plan> {
    let start = errs.count();
    let idx = |list: &[IpNet], want: &Ipv6Net| {
        list.iter()
            .position(|n| *n == IpNet::V6(*want))
            .unwrap_or(0)
    };
    let pod_at = format!("spec.podCIDRs[{}]", idx(&lab.pod_cidrs, &pod));
    let svc_at = format!("spec.serviceCIDRs[{}]", idx(&lab.service_cidrs, &svc));
    let node = lab.node_network_v6;
    let ranges = [
        (pod_at.as_str(), pod),
        (svc_at.as_str(), svc),
        ("spec.nodeNetworkIPv6", node),
    ];
    for (field, net) in &ranges {
        if net.network() != net.addr() {
            errs.at(
                doc,
                field,
                format!("{net} has host bits set; did you mean {}?", net.trunc()),
            );
        }
        let a = IpAddr::V6(net.addr());
        if a.is_loopback() || a.is_multicast() || a.is_unspecified() {
            errs.at(doc, field, format!("{net} is not a unicast range"));
        }
    }
    if is_v4_mapped(&node) {
        errs.at(
            doc,
            "spec.nodeNetworkIPv6",
            format!("{node} is an IPv4-mapped range"),
        );
    }
    for (i, (fa, a)) in ranges.iter().enumerate() {
        for (fb, b) in &ranges[i + 1..] {
            if a.contains(&b.network()) || b.contains(&a.network()) {
                errs.at(doc, fb, format!("{b} overlaps {fa} {a}"));
            }
        }
    }
    // Every IPv4 host offset has its IPv6 twin, so each IPv6 range is at
    // least as large as its IPv4 one.
    let v4_node_bits = 32 - u32::from(lab.node_network.prefix_len());
    if 128 - u32::from(node.prefix_len()) < v4_node_bits {
        errs.at(
            doc,
            "spec.nodeNetworkIPv6",
            format!(
                "{node} is smaller than spec.nodeNetwork {}: use /{} or larger",
                lab.node_network,
                128 - v4_node_bits
            ),
        );
    }
    let mask = lab.node_cidr_mask_size_v6;
    let v4_pod_bits = 32 - u32::from(lab.node_cidr_mask_size);
    if mask <= pod.prefix_len() || u32::from(mask) > 128 - v4_pod_bits {
        errs.at(
            doc,
            "spec.nodeCIDRMaskSizeIPv6",
            format!(
                "must be longer than the IPv6 pod CIDR's /{} and at most {} (a node's IPv4 pod range, /{}, has {} host bits)",
                pod.prefix_len(),
                128 - v4_pod_bits,
                lab.node_cidr_mask_size,
                v4_pod_bits
            ),
        );
    } else if u32::from(mask - pod.prefix_len()) < 32
        && (1u64 << (mask - pod.prefix_len())) < lab.nodes.names().len() as u64
    {
        errs.at(
            doc,
            &pod_at,
            format!(
                "{pod} splits into fewer than {} /{mask} node ranges",
                lab.nodes.names().len()
            ),
        );
    }
    if svc.prefix_len() > 125 || svc.prefix_len() < 64 {
        errs.at(
            doc,
            &svc_at,
            format!(
                "{svc} must be /64 to /125 (the API server allocates from at most 2^64 addresses)"
            ),
        );
    }
    (errs.count() == start).then_some(V6Plan {
        node_network: node,
        pod_cidr: pod,
        service_cidr: svc,
        node_cidr_mask_size: mask,
        fabric_gateway: offset6(node, 1),
        external_ip: None,
        external2_ip: None,
    })
}

/// Gives nodes, pods and the external clients their IPv6 addresses: the
/// IPv4 plan's host offsets in the IPv6 ranges.
pub(crate) fn place(
    lab: &LabSpec,
    v6: &mut V6Plan,
    nodes: &mut [NodePlan],
    pods: &mut [Pod],
    external: Option<Ipv4Addr>,
    external2: Option<Ipv4Addr>,
) {
    let on_fabric = |ip: Ipv4Addr| offset6(v6.node_network, offset4(lab.node_network, ip));
    v6.fabric_gateway = on_fabric(fabric_gateway_v4(lab));
    v6.external_ip = external.map(on_fabric);
    v6.external2_ip = external2.map(on_fabric);
    let mut slices = v6
        .pod_cidr
        .subnets(v6.node_cidr_mask_size)
        .expect("checked: the mask is longer than the prefix");
    for n in nodes.iter_mut() {
        let slice = slices.next().expect("checked: enough node ranges");
        n.ip6 = Some(on_fabric(n.ip));
        n.pod_cidr6 = Some(slice);
        n.gateway6 = Some(offset6(slice, offset4(n.pod_cidr, n.gateway)));
    }
    for p in pods.iter_mut() {
        let n = &nodes[p.node];
        let slice = n.pod_cidr6.expect("set above");
        p.ip6 = Some(offset6(slice, offset4(n.pod_cidr, p.ip)));
    }
}

fn fabric_gateway_v4(lab: &LabSpec) -> Ipv4Addr {
    lab.node_network
        .hosts()
        .next()
        .expect("checked: the node network has hosts")
}
