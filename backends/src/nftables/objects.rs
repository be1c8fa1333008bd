//! What one service port needs in the `kube-proxy` table, decided the way
//! kube-proxy's nftables proxier decides it (the layout of v1.35 and later):
//! its chains and their rules, its affinity sets, and its elements in the
//! shared sets and dispatch maps.
//!
//! A service chain DNATs straight to an endpoint picked by `numgen` from an
//! anonymous map of address . port (`dnat to` for a single endpoint); only
//! ClientIP affinity keeps kube-proxy's older per-endpoint chains, which
//! record the client in an affinity set. Marking for masquerade is inline
//! (`meta mark set meta mark | 0x4000`), and hairpin traffic (an endpoint
//! reaching itself through its Service) is masqueraded in postrouting by the
//! `hairpin-connections` set of this node's endpoints, instead of a rule in
//! every endpoint chain. Traffic to a ClusterIP from outside the cluster is
//! marked once, in the `services` chain, against `@cluster-ips`.

use std::fmt::Write as _;

use crate::model::{Endpoint, NodeContext, ServicePort, categorize_endpoints};
use crate::nftables::names::{
    CLUSTER_IPS_SET, EndpointNames, FIREWALL_IPS_MAP, Family, HAIRPIN_SET, MARK_MASQ,
    NO_ENDPOINT_NODEPORTS_MAP, NO_ENDPOINT_SERVICES_MAP, PortNames, REJECT_CHAIN, SERVICE_IPS_MAP,
    SERVICE_NODEPORTS_MAP,
};
use crate::{BackendOptions, Fault, NftablesLayout};

/// A set or map whose elements belong to service ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Container {
    ClusterIps,
    ServiceIps,
    ServiceNodePorts,
    NoEndpointServices,
    NoEndpointNodePorts,
    /// `endpoint . endpoint . proto . port` of this node's endpoints.
    HairpinConnections,
    /// Load balancer IPs subject to LoadBalancerSourceRanges.
    FirewallIps,
}

impl Container {
    /// In the order a full sync flushes them (kube-proxy's).
    pub const ALL: [Container; 7] = [
        Container::FirewallIps,
        Container::ClusterIps,
        Container::ServiceIps,
        Container::ServiceNodePorts,
        Container::NoEndpointServices,
        Container::NoEndpointNodePorts,
        Container::HairpinConnections,
    ];

    /// A set (no verdicts), as opposed to a verdict map.
    pub fn is_set(self) -> bool {
        matches!(self, Container::ClusterIps | Container::HairpinConnections)
    }

    pub fn name(self) -> &'static str {
        match self {
            Container::ClusterIps => CLUSTER_IPS_SET,
            Container::ServiceIps => SERVICE_IPS_MAP,
            Container::ServiceNodePorts => SERVICE_NODEPORTS_MAP,
            Container::NoEndpointServices => NO_ENDPOINT_SERVICES_MAP,
            Container::NoEndpointNodePorts => NO_ENDPOINT_NODEPORTS_MAP,
            Container::HairpinConnections => HAIRPIN_SET,
            Container::FirewallIps => FIREWALL_IPS_MAP,
        }
    }
}

/// What an element carries besides its key: the verdict (maps only) and
/// kube-proxy's comment (the service port's name, on no-endpoint entries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementValue {
    pub verdict: Option<String>,
    pub comment: Option<String>,
}

/// One element of a shared set or map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub container: Container,
    /// nft's spelling of the key, as in `172.30.0.41 . tcp . 80`.
    pub key: String,
    pub value: ElementValue,
}

/// A regular chain and its rules, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub rules: Vec<String>,
    /// Set on endpoint chains (ClientIP affinity only), whose rules follow
    /// from their name: an existing one can be left as it is.
    pub endpoint: Option<EndpointChain>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointChain {
    pub affinity_set: String,
}

/// A per-endpoint ClientIP affinity set (`ipv4_addr`, dynamic, with timeout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinitySet {
    pub name: String,
    pub timeout_seconds: u32,
}

/// Everything one service port owns or contributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortObjects {
    pub sets: Vec<AffinitySet>,
    pub chains: Vec<Chain>,
    pub elements: Vec<Element>,
}

impl PortObjects {
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }
}

/// Decides one service port's objects (kube-proxy's per-service loop body in
/// `syncProxyRules`, IPv4, with a cluster-CIDR local-traffic detector).
pub fn port_objects(
    svc: &ServicePort,
    endpoints: &[Endpoint],
    node: &NodeContext,
    options: &BackendOptions,
) -> PortObjects {
    let cat = categorize_endpoints(svc, endpoints);
    let names = PortNames::new(&svc.name);
    let proto = svc.protocol.lower();
    let pod_cidr = node.cluster_cidr;
    let ip = Family(node.family()).ip();
    let externally_accessible = svc.externally_accessible();
    let external_local = svc.external_policy_local && externally_accessible;
    let internal_local = svc.internal_policy_local;

    let ep_names = |eps: &[&Endpoint]| -> Vec<EndpointNames> {
        eps.iter()
            .map(|e| EndpointNames::new(&svc.name, e))
            .collect()
    };
    let reachable_names = ep_names(&cat.all_reachable);

    let uses_cluster_chain = !cat.cluster.is_empty() && svc.uses_cluster_endpoints();
    let uses_local_chain = !cat.local.is_empty() && svc.uses_local_endpoints();
    let (internal_chain, has_internal) = if internal_local {
        (&names.local, cat.has_any && !cat.local.is_empty())
    } else {
        (&names.cluster, cat.has_any)
    };
    let (external_policy_chain, has_external) = if external_local {
        (&names.local, cat.has_any && !cat.local.is_empty())
    } else {
        (&names.cluster, cat.has_any)
    };
    // Built from has_any, not has_external: the short-circuit rules for
    // traffic from this node and its pods are needed even with no local
    // endpoint.
    let uses_external_chain = cat.has_any && externally_accessible;

    // No endpoints anywhere: refuse at once. Endpoints elsewhere but none
    // here for a Local policy: drop, as kube-proxy does.
    let filter_verdict = if cat.has_any {
        "drop".to_string()
    } else {
        format!("goto {REJECT_CHAIN}")
    };

    let mut out = PortObjects::default();
    let comment = Some(svc.name.to_string());
    let vip_key = |ip: &std::net::IpAddr| format!("{ip} . {proto} . {}", svc.port);
    let push = |out: &mut PortObjects, container, key, verdict: Option<String>, comment| {
        out.elements.push(Element {
            container,
            key,
            value: ElementValue { verdict, comment },
        })
    };

    push(
        &mut out,
        Container::ClusterIps,
        svc.cluster_ip.to_string(),
        None,
        None,
    );
    if has_internal {
        push(
            &mut out,
            Container::ServiceIps,
            vip_key(&svc.cluster_ip),
            Some(format!("goto {internal_chain}")),
            None,
        );
    } else {
        push(
            &mut out,
            Container::NoEndpointServices,
            vip_key(&svc.cluster_ip),
            Some(filter_verdict.clone()),
            comment.clone(),
        );
    }
    for ext in &svc.external_ips {
        if cat.has_any {
            push(
                &mut out,
                Container::ServiceIps,
                vip_key(ext),
                Some(format!("goto {}", names.external)),
                None,
            );
        }
        if !has_external {
            push(
                &mut out,
                Container::NoEndpointServices,
                vip_key(ext),
                Some(filter_verdict.clone()),
                comment.clone(),
            );
        }
    }
    // Load balancer IPs: to the external chain, and first through the
    // firewall chain when source ranges restrict them (even without
    // endpoints, unlike iptables).
    let uses_firewall = svc.uses_firewall();
    for lbip in &svc.load_balancer_ips {
        if cat.has_any {
            push(
                &mut out,
                Container::ServiceIps,
                vip_key(lbip),
                Some(format!("goto {}", names.external)),
                None,
            );
        }
        if uses_firewall {
            push(
                &mut out,
                Container::FirewallIps,
                vip_key(lbip),
                Some(format!("goto {}", names.firewall)),
                None,
            );
        }
    }
    if !has_external {
        for lbip in &svc.load_balancer_ips {
            push(
                &mut out,
                Container::NoEndpointServices,
                vip_key(lbip),
                Some(filter_verdict.clone()),
                comment.clone(),
            );
        }
    }
    if uses_firewall {
        // A range holding this node's IP lets the load balancer IP in as a
        // source too: the node's own traffic to a VIP it holds locally.
        let mut sources: Vec<String> = svc
            .load_balancer_source_ranges
            .iter()
            .map(ToString::to_string)
            .collect();
        if svc
            .load_balancer_source_ranges
            .iter()
            .any(|c| c.contains(&node.node_ip))
        {
            sources.extend(svc.load_balancer_ips.iter().map(ToString::to_string));
        }
        out.chains.push(Chain {
            name: names.firewall.clone(),
            rules: vec![format!("{ip} saddr != {{ {} }} drop", sources.join(", "))],
            endpoint: None,
        });
    }
    if let Some(np) = svc.node_port {
        let key = format!("{proto} . {np}");
        if cat.has_any {
            push(
                &mut out,
                Container::ServiceNodePorts,
                key.clone(),
                Some(format!("goto {}", names.external)),
                None,
            );
        }
        if !has_external {
            push(
                &mut out,
                Container::NoEndpointNodePorts,
                key,
                Some(filter_verdict),
                comment,
            );
        }
    }

    let affinity = svc.session_affinity_seconds.is_some();
    if let Some(timeout) = svc.session_affinity_seconds {
        for n in &reachable_names {
            out.sets.push(AffinitySet {
                name: n.affinity_set.clone(),
                timeout_seconds: timeout,
            });
        }
    }
    // Hairpin: an endpoint on this node reaching its own Service must be
    // masqueraded, or it would answer itself directly.
    if !options.has_fault(Fault::MissingMasquerade) {
        for ep in cat.all_reachable.iter().filter(|e| e.is_local) {
            push(
                &mut out,
                Container::HairpinConnections,
                format!("{0} . {0} . {proto} . {1}", ep.ip, ep.port),
                None,
                None,
            );
        }
    }

    if uses_cluster_chain {
        let mut rules = Vec::new();
        write_dispatch(&mut rules, ip, svc, &cat.cluster, affinity, options);
        out.chains.push(Chain {
            name: names.cluster.clone(),
            rules,
            endpoint: None,
        });
    }
    if uses_local_chain {
        let mut rules = Vec::new();
        write_dispatch(&mut rules, ip, svc, &cat.local, affinity, options);
        out.chains.push(Chain {
            name: names.local.clone(),
            rules,
            endpoint: None,
        });
    }
    if uses_external_chain {
        let mut rules = Vec::new();
        if !external_local {
            // Cluster policy may send the packet to another node, so its
            // source must be rewritten for the reply to come back here.
            rules.push(format!("{MARK_MASQ} comment \"masquerade\""));
        } else {
            // Pods and the node itself reaching an external address are
            // treated as if they had gone out to a load balancer and back:
            // any endpoint will do.
            rules.push(format!(
                "{ip} saddr {pod_cidr} goto {} comment \"short-circuit pod traffic\"",
                names.cluster
            ));
            rules.push(format!(
                "fib saddr type local {MARK_MASQ} comment \"masquerade local traffic\""
            ));
            rules.push(format!(
                "fib saddr type local goto {} comment \"short-circuit local traffic\"",
                names.cluster
            ));
        }
        if has_external {
            rules.push(format!("goto {external_policy_chain}"));
        }
        out.chains.push(Chain {
            name: names.external.clone(),
            rules,
            endpoint: None,
        });
    }

    if affinity {
        for (ep, n) in cat.all_reachable.iter().zip(&reachable_names) {
            out.chains.push(Chain {
                name: n.chain.clone(),
                rules: vec![
                    format!("update @{} {{ {ip} saddr }}", n.affinity_set),
                    format!("meta l4proto {proto} dnat to {}", ep.addr()),
                ],
                endpoint: Some(EndpointChain {
                    affinity_set: n.affinity_set.clone(),
                }),
            });
        }
    }
    out
}

/// The rules that pick an endpoint. Without affinity: one DNAT through a
/// `numgen random mod N` map of address . port, or a plain `dnat to` for a
/// single endpoint (with the WrongProbability fault, iptables' 1/n at every
/// step instead, which favours the first endpoints when there are three or
/// more). With affinity: lookups in each endpoint's affinity set first,
/// then a `numgen` verdict map to the endpoint chains. The flat layout
/// writes no map: endpoint i of n is taken when `numgen random mod (n-i)`
/// is 0, given the ones before it were not, which is 1/n for each.
fn write_dispatch(
    rules: &mut Vec<String>,
    ip: &str,
    svc: &ServicePort,
    endpoints: &[&Endpoint],
    affinity: bool,
    options: &BackendOptions,
) {
    let proto = svc.protocol.lower();
    let n = endpoints.len();
    let flat = options.nftables_layout == NftablesLayout::Flat;
    // `numgen random mod k == 0` for the endpoint at `i`, none for the last.
    let cascade = |i: usize| -> Option<String> {
        let k = if options.has_fault(Fault::WrongProbability) {
            n
        } else {
            n - i
        };
        (i + 1 < n).then(|| format!("numgen random mod {k} == 0 "))
    };
    if affinity {
        let names: Vec<EndpointNames> = endpoints
            .iter()
            .map(|e| EndpointNames::new(&svc.name, e))
            .collect();
        for e in &names {
            rules.push(format!("{ip} saddr @{} goto {}", e.affinity_set, e.chain));
        }
        if flat {
            for (i, e) in names.iter().enumerate() {
                rules.push(format!(
                    "{}goto {}",
                    cascade(i).unwrap_or_default(),
                    e.chain
                ));
            }
            return;
        }
        let mut rule = format!("numgen random mod {n} vmap {{ ");
        for (i, e) in names.iter().enumerate() {
            if i > 0 {
                rule.push_str(", ");
            }
            let _ = write!(rule, "{i} : goto {}", e.chain);
        }
        rule.push_str(" }");
        rules.push(rule);
        return;
    }
    if flat || (options.has_fault(Fault::WrongProbability) && n > 1) {
        for (i, e) in endpoints.iter().enumerate() {
            rules.push(format!(
                "meta l4proto {proto} {}dnat to {}",
                cascade(i).unwrap_or_default(),
                e.addr()
            ));
        }
        return;
    }
    if let [e] = endpoints {
        rules.push(format!("meta l4proto {proto} dnat to {}", e.addr()));
        return;
    }
    let mut rule = format!("meta l4proto {proto} dnat {ip} to numgen random mod {n} map {{ ");
    for (i, e) in endpoints.iter().enumerate() {
        if i > 0 {
            rule.push_str(", ");
        }
        let _ = write!(rule, "{i} : {} . {}", e.ip, e.port);
    }
    rule.push_str(" }");
    rules.push(rule);
}
