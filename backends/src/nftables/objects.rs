//! What one service port needs in the `kube-proxy` table, decided the way
//! kube-proxy's nftables proxier decides it: its chains and their rules, its
//! affinity sets, and its elements in the shared dispatch maps.

use std::fmt::Write as _;

use crate::model::{Endpoint, NodeContext, ServicePort, categorize_endpoints};
use crate::nftables::names::{
    CLUSTER_IPS_SET, EndpointNames, MARK_MASQ_CHAIN, NO_ENDPOINT_NODEPORTS_MAP,
    NO_ENDPOINT_SERVICES_MAP, PortNames, REJECT_CHAIN, SERVICE_IPS_MAP, SERVICE_NODEPORTS_MAP,
};
use crate::{BackendOptions, Fault};

/// A set or map whose elements belong to service ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Container {
    ClusterIps,
    ServiceIps,
    ServiceNodePorts,
    NoEndpointServices,
    NoEndpointNodePorts,
}

impl Container {
    pub const ALL: [Container; 5] = [
        Container::ClusterIps,
        Container::ServiceIps,
        Container::ServiceNodePorts,
        Container::NoEndpointServices,
        Container::NoEndpointNodePorts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Container::ClusterIps => CLUSTER_IPS_SET,
            Container::ServiceIps => SERVICE_IPS_MAP,
            Container::ServiceNodePorts => SERVICE_NODEPORTS_MAP,
            Container::NoEndpointServices => NO_ENDPOINT_SERVICES_MAP,
            Container::NoEndpointNodePorts => NO_ENDPOINT_NODEPORTS_MAP,
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
    /// Set on endpoint chains, whose rules follow from their name and from
    /// whether affinity is on: an existing one can be left as it is.
    pub endpoint: Option<EndpointChain>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointChain {
    pub affinity_set: String,
    pub affinity: bool,
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
    let vip_key = |ip: &std::net::Ipv4Addr| format!("{ip} . {proto} . {}", svc.port);
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

    if let Some(timeout) = svc.session_affinity_seconds {
        for n in &reachable_names {
            out.sets.push(AffinitySet {
                name: n.affinity_set.clone(),
                timeout_seconds: timeout,
            });
        }
    }

    if uses_cluster_chain {
        let mut rules = Vec::new();
        if has_internal && !internal_local {
            rules.push(masquerade_off_cluster(svc, pod_cidr));
        }
        write_dispatch(
            &mut rules,
            &ep_names(&cat.cluster),
            svc.session_affinity_seconds.is_some(),
            options,
        );
        out.chains.push(Chain {
            name: names.cluster.clone(),
            rules,
            endpoint: None,
        });
    }
    if uses_local_chain {
        let mut rules = Vec::new();
        if has_internal && internal_local {
            rules.push(masquerade_off_cluster(svc, pod_cidr));
        }
        write_dispatch(
            &mut rules,
            &ep_names(&cat.local),
            svc.session_affinity_seconds.is_some(),
            options,
        );
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
            rules.push(format!("jump {MARK_MASQ_CHAIN}"));
        } else {
            // Pods and the node itself reaching an external address are
            // treated as if they had gone out to a load balancer and back:
            // any endpoint will do.
            rules.push(format!(
                "ip saddr {pod_cidr} goto {} comment \"short-circuit pod traffic\"",
                names.cluster
            ));
            rules.push(format!(
                "fib saddr type local jump {MARK_MASQ_CHAIN} comment \"masquerade local traffic\""
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

    for (ep, n) in cat.all_reachable.iter().zip(&reachable_names) {
        let mut rules = Vec::with_capacity(3);
        // Hairpin: an endpoint reaching its own Service must be
        // masqueraded, or it would answer itself directly.
        rules.push(format!("ip saddr {} jump {MARK_MASQ_CHAIN}", ep.ip));
        if svc.session_affinity_seconds.is_some() {
            rules.push(format!("update @{} {{ ip saddr }}", n.affinity_set));
        }
        rules.push(format!(
            "meta l4proto {proto} dnat to {}:{}",
            ep.ip, ep.port
        ));
        out.chains.push(Chain {
            name: n.chain.clone(),
            rules,
            endpoint: Some(EndpointChain {
                affinity_set: n.affinity_set.clone(),
                affinity: svc.session_affinity_seconds.is_some(),
            }),
        });
    }
    out
}

/// Masquerades traffic to the ClusterIP that does not come from a pod (the
/// node itself, or off-cluster clients routed to the service CIDR), since
/// the reply might otherwise bypass this node.
fn masquerade_off_cluster(svc: &ServicePort, pod_cidr: ipnet::Ipv4Net) -> String {
    format!(
        "ip daddr {} ip saddr != {pod_cidr} jump {MARK_MASQ_CHAIN}",
        svc.cluster_ip
    )
}

/// The rules that pick an endpoint: affinity lookups first, then one
/// `numgen random mod N` verdict map (or, with the WrongProbability fault,
/// iptables' 1/n-at-every-step chain of guesses, which favours the first
/// endpoints when there are three or more).
fn write_dispatch(
    rules: &mut Vec<String>,
    endpoints: &[EndpointNames],
    affinity: bool,
    options: &BackendOptions,
) {
    if affinity {
        for n in endpoints {
            rules.push(format!("ip saddr @{} goto {}", n.affinity_set, n.chain));
        }
    }
    let n = endpoints.len();
    if options.has_fault(Fault::WrongProbability) {
        for (i, e) in endpoints.iter().enumerate() {
            if i + 1 == n {
                rules.push(format!("goto {}", e.chain));
            } else {
                rules.push(format!("numgen random mod {n} == 0 goto {}", e.chain));
            }
        }
        return;
    }
    let mut rule = format!("numgen random mod {n} vmap {{ ");
    for (i, e) in endpoints.iter().enumerate() {
        if i > 0 {
            rule.push_str(", ");
        }
        let _ = write!(rule, "{i} : goto {}", e.chain);
    }
    rule.push_str(" }");
    rules.push(rule);
}
