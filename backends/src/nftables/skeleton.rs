//! The fixed part of the `ip kube-proxy` table: base chains on the netfilter
//! hooks with kube-proxy's priorities, the dispatch chains they jump to, the
//! masquerade chains, and the shared sets and maps (kube-proxy's
//! `setupNFTables`). Written at the start of every full sync, which also
//! empties the shared sets and maps so the sync can refill them.

use crate::model::NodeContext;
use crate::nftables::names::{
    CLUSTER_IPS_CHECK_CHAIN, CLUSTER_IPS_SET, FIREWALL_CHECK_CHAIN, FIREWALL_IPS_MAP, HAIRPIN_SET,
    MARK_MASQ, MASQ_MARK, MASQUERADING_CHAIN, NO_ENDPOINT_NODEPORTS_MAP, NO_ENDPOINT_SERVICES_MAP,
    NODEPORT_ENDPOINTS_CHECK_CHAIN, NODEPORT_IPS_SET, REJECT_CHAIN, SERVICE_ENDPOINTS_CHECK_CHAIN,
    SERVICE_IPS_MAP, SERVICE_NODEPORTS_MAP, SERVICES_CHAIN, TABLE,
};
use crate::nftables::objects::Container;
use crate::nftables::tx::Tx;
use crate::{BackendOptions, Fault};

/// A chain attached to a netfilter hook.
struct BaseChain {
    name: &'static str,
    kind: &'static str,
    hook: &'static str,
    priority: i32,
}

/// Filter chains that look at the pre-DNAT destination run just before
/// DNAT (-100); the others at the filter priority (0), after it.
const BASE_CHAINS: [BaseChain; 8] = [
    BaseChain {
        name: "filter-prerouting-pre-dnat",
        kind: "filter",
        hook: "prerouting",
        priority: -110,
    },
    BaseChain {
        name: "filter-output-pre-dnat",
        kind: "filter",
        hook: "output",
        priority: -110,
    },
    BaseChain {
        name: "filter-input",
        kind: "filter",
        hook: "input",
        priority: 0,
    },
    BaseChain {
        name: "filter-forward",
        kind: "filter",
        hook: "forward",
        priority: 0,
    },
    BaseChain {
        name: "filter-output",
        kind: "filter",
        hook: "output",
        priority: 0,
    },
    BaseChain {
        name: "nat-prerouting",
        kind: "nat",
        hook: "prerouting",
        priority: -100,
    },
    BaseChain {
        name: "nat-output",
        kind: "nat",
        hook: "output",
        priority: -100,
    },
    BaseChain {
        name: "nat-postrouting",
        kind: "nat",
        hook: "postrouting",
        priority: 100,
    },
];

/// (target chain, base chain it is jumped to from, match before the jump).
/// The reject-capable checks hang off input/forward/output because reject
/// is only valid there on older kernels.
const JUMPS: [(&str, &str, &str); 11] = [
    (
        NODEPORT_ENDPOINTS_CHECK_CHAIN,
        "filter-input",
        "ct state new ",
    ),
    (
        SERVICE_ENDPOINTS_CHECK_CHAIN,
        "filter-input",
        "ct state new ",
    ),
    (
        SERVICE_ENDPOINTS_CHECK_CHAIN,
        "filter-forward",
        "ct state new ",
    ),
    (
        SERVICE_ENDPOINTS_CHECK_CHAIN,
        "filter-output",
        "ct state new ",
    ),
    (
        FIREWALL_CHECK_CHAIN,
        "filter-prerouting-pre-dnat",
        "ct state new ",
    ),
    (
        FIREWALL_CHECK_CHAIN,
        "filter-output-pre-dnat",
        "ct state new ",
    ),
    (SERVICES_CHAIN, "nat-output", ""),
    (SERVICES_CHAIN, "nat-prerouting", ""),
    (MASQUERADING_CHAIN, "nat-postrouting", ""),
    (CLUSTER_IPS_CHECK_CHAIN, "filter-forward", "ct state new "),
    (CLUSTER_IPS_CHECK_CHAIN, "filter-output", "ct state new "),
];

const NODEPORT_MAP_TYPE: &str = "inet_proto . inet_service : verdict";

/// Elements the skeleton itself programs (the node IP in `nodeport-ips`).
pub const SKELETON_ELEMENTS: u64 = 1;

/// Writes the fixed objects and rules, and empties the shared containers.
pub fn write_skeleton(tx: &mut Tx, node: &NodeContext, options: &BackendOptions) {
    let f = tx.family();
    let (ip, addr) = (f.ip(), f.addr_type());
    let vip_map_type = format!("{addr} . inet_proto . inet_service : verdict");
    tx.raw(format_args!(
        "add table {ip} {TABLE} {{ comment \"rules for kube-proxy\" ; }}"
    ));
    for bc in &BASE_CHAINS {
        tx.raw(format_args!(
            "add chain {ip} {TABLE} {} {{ type {} hook {} priority {} ; }}",
            bc.name, bc.kind, bc.hook, bc.priority
        ));
        tx.flush_chain(bc.name);
    }

    let mut created: Vec<&str> = Vec::new();
    let mut ensure = |tx: &mut Tx, name: &'static str| {
        if !created.contains(&name) {
            created.push(name);
            tx.ensure_chain(name);
        }
    };
    for (target, base, matches) in JUMPS {
        ensure(tx, target);
        tx.add_rule(base, &format!("{matches}jump {target}"));
    }
    for name in [SERVICES_CHAIN, CLUSTER_IPS_CHECK_CHAIN, MASQUERADING_CHAIN] {
        ensure(tx, name);
    }

    // Masquerade what was marked on the way in, and hairpin connections
    // (an endpoint on this node reaching itself through its Service). The
    // MissingMasquerade fault clears the mark without masquerading and
    // leaves the hairpin set empty.
    tx.raw(format_args!(
        "add set {ip} {TABLE} {HAIRPIN_SET} {{ type {addr} . {addr} . inet_proto . inet_service ; comment \"service hairpin connections\" ; }}"
    ));
    let masquerade = if options.has_fault(Fault::MissingMasquerade) {
        ""
    } else {
        " masquerade fully-random"
    };
    tx.add_rule(
        MASQUERADING_CHAIN,
        &format!("mark and {MASQ_MARK} != 0 mark set mark xor {MASQ_MARK}{masquerade}"),
    );
    tx.add_rule(
        MASQUERADING_CHAIN,
        &format!(
            "ct status dnat {ip} saddr . {ip} daddr . meta l4proto . th dport @{HAIRPIN_SET}{masquerade}"
        ),
    );

    // With the NoReject fault, everything kube-proxy refuses is dropped
    // instead, so clients time out.
    let refuse = if options.has_fault(Fault::NoReject) {
        "drop"
    } else {
        "reject"
    };

    tx.raw(format_args!(
        "add set {ip} {TABLE} {CLUSTER_IPS_SET} {{ type {addr} ; comment \"Active ClusterIPs\" ; }}"
    ));
    tx.add_rule(
        CLUSTER_IPS_CHECK_CHAIN,
        &format!(
            "{ip} daddr @{CLUSTER_IPS_SET} {refuse} comment \"Reject traffic to invalid ports of ClusterIPs\""
        ),
    );
    tx.add_rule(
        CLUSTER_IPS_CHECK_CHAIN,
        &format!(
            "{ip} daddr {{ {} }} {} comment \"Drop traffic to unallocated ClusterIPs\"",
            node.service_cidr,
            // The fault refuses it instead, as kube-proxy never does.
            if options.has_fault(Fault::RejectUnallocated) {
                f.host_unreachable()
            } else {
                "drop"
            }
        ),
    );

    // NodePorts answer on the addresses of nodePortAddresses (kube-proxy's
    // nftables default is `primary`, the node IP).
    tx.raw(format_args!(
        "add set {ip} {TABLE} {NODEPORT_IPS_SET} {{ type {addr} ; comment \"IPs that accept NodePort traffic\" ; }}"
    ));
    tx.raw(format_args!("flush set {ip} {TABLE} {NODEPORT_IPS_SET}"));
    let ips = node.nodeport_ips();
    if !ips.is_empty() {
        let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
        tx.raw(format_args!(
            "add element {ip} {TABLE} {NODEPORT_IPS_SET} {{ {} }}",
            ips.join(", ")
        ));
    }

    tx.raw(format_args!(
        "add map {ip} {TABLE} {NO_ENDPOINT_SERVICES_MAP} {{ type {vip_map_type} ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
    ));
    tx.raw(format_args!(
        "add map {ip} {TABLE} {NO_ENDPOINT_NODEPORTS_MAP} {{ type {NODEPORT_MAP_TYPE} ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
    ));
    tx.raw(format_args!(
        "add chain {ip} {TABLE} {REJECT_CHAIN} {{ comment \"helper for @{NO_ENDPOINT_SERVICES_MAP} / @{NO_ENDPOINT_NODEPORTS_MAP}\" ; }}"
    ));
    tx.flush_chain(REJECT_CHAIN);
    tx.add_rule(REJECT_CHAIN, refuse);
    tx.add_rule(
        SERVICE_ENDPOINTS_CHECK_CHAIN,
        &format!("{ip} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES_MAP}"),
    );
    tx.add_rule(
        NODEPORT_ENDPOINTS_CHECK_CHAIN,
        &format!(
            "{ip} daddr @{NODEPORT_IPS_SET} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS_MAP}"
        ),
    );

    // LoadBalancer source ranges: a load balancer IP whose Service has
    // them goes to its firewall chain first.
    tx.raw(format_args!(
        "add map {ip} {TABLE} {FIREWALL_IPS_MAP} {{ type {vip_map_type} ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
    ));
    tx.add_rule(
        FIREWALL_CHECK_CHAIN,
        &format!("{ip} daddr . meta l4proto . th dport vmap @{FIREWALL_IPS_MAP}"),
    );

    tx.raw(format_args!(
        "add map {ip} {TABLE} {SERVICE_IPS_MAP} {{ type {vip_map_type} ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    ));
    tx.raw(format_args!(
        "add map {ip} {TABLE} {SERVICE_NODEPORTS_MAP} {{ type {NODEPORT_MAP_TYPE} ; comment \"NodePort traffic\" ; }}"
    ));
    // Traffic to a ClusterIP from outside the cluster (the node itself, or
    // a client routed to the service CIDR) may be answered from another
    // node: masquerade it.
    tx.add_rule(
        SERVICES_CHAIN,
        &format!(
            "{ip} daddr @{CLUSTER_IPS_SET} {ip} saddr != {} {MARK_MASQ} comment \"masquerade clusterIP traffic from outside cluster\"",
            node.cluster_cidr
        ),
    );
    tx.add_rule(
        SERVICES_CHAIN,
        &format!("{ip} daddr . meta l4proto . th dport vmap @{SERVICE_IPS_MAP}"),
    );
    tx.add_rule(
        SERVICES_CHAIN,
        &format!(
            "{ip} daddr @{NODEPORT_IPS_SET} meta l4proto . th dport vmap @{SERVICE_NODEPORTS_MAP}"
        ),
    );

    for c in Container::ALL {
        tx.flush_container(c);
    }
}
