//! Semantic checks of a scenario and the derived address plan: nodes, pods
//! and their IPs. Nothing here touches the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use svclab_backends::model::{IpFamily, Protocol};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::controlplane::endpoints::TRAFFIC_DISTRIBUTIONS;

use super::limits::{Limits, MAX_CHURN_EVENTS, MAX_PODS_PER_NODE, MAX_QUOTED, elide, truncate};
use super::names;
use super::yaml::Document;
use super::{CLIENT_NAMESPACE, Errs, LabSpec, Labels, NodePlan, Nodes, Pod, PodPort};

pub(crate) struct Context<'a> {
    pub docs: &'a [Document],
    pub lab: &'a LabSpec,
    pub lab_doc: usize,
    pub services: &'a [(Service, usize)],
    pub deployments: &'a [(Deployment, usize)],
    pub limits: &'a Limits,
    /// The cluster's families and IPv6 ranges.
    pub stack: &'a super::stack::Stack,
}

pub(crate) struct Derived {
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<Pod>,
    pub fabric_gateway: Ipv4Addr,
    pub external_ip: Option<Ipv4Addr>,
    pub external2_ip: Option<Ipv4Addr>,
    pub node_port_range: (u16, u16),
}

const MAX_NODES: usize = 250;

/// The Lab's name names the results folder: a DNS-1123 subdomain of at
/// most 63 characters, so it can never leave that folder.
pub(crate) fn check_lab_name(doc: &Document, name: &str, errs: &mut Errs) {
    if name.is_empty() {
        return;
    }
    if name.len() > 63 {
        errs.at(
            doc,
            "metadata.name",
            format!(
                "{} must be no more than 63 characters (it has {}; it names the results folder)",
                elide(name),
                name.len()
            ),
        );
    } else if let Err(e) = names::dns1123_subdomain(name) {
        errs.at(doc, "metadata.name", e);
    }
}

/// A Namespace document: its name must be a DNS-1123 label.
pub(crate) fn check_namespace_doc(doc: &Document, errs: &mut Errs) {
    match doc.value.pointer("/metadata/name") {
        Some(Value::String(n)) => {
            if let Err(e) = names::dns1123_label(n) {
                errs.at(doc, "metadata.name", e);
            }
        }
        _ => errs.at(doc, "metadata.name", "required: a Namespace needs a name"),
    }
}

/// Checks the scenario and derives the plan; `None` when errors were found.
/// `notes` gets what is accepted but worth saying.
pub(crate) fn derive(
    ctx: &Context<'_>,
    errs: &mut Errs,
    notes: &mut Vec<String>,
) -> Option<Derived> {
    let lab_doc = &ctx.docs[ctx.lab_doc];
    let lab = ctx.lab;
    let start = errs.count();

    // The count is checked before any name is made.
    let count = match &lab.nodes {
        Nodes::Count(n) => *n as usize,
        Nodes::Names(v) => v.len(),
    };
    if count == 0 || count > MAX_NODES {
        errs.at(
            lab_doc,
            "spec.nodes",
            format!("must be 1 to {MAX_NODES} nodes, not {count}"),
        );
        return None;
    }
    let names = lab.nodes.names();
    let mut seen = BTreeSet::new();
    for (i, n) in names.iter().enumerate() {
        if let Err(e) = names::dns1123_label(n) {
            errs.at(
                lab_doc,
                &format!("spec.nodes[{i}]"),
                format!("node name {e}"),
            );
        }
        if !seen.insert(n) {
            errs.at(
                lab_doc,
                &format!("spec.nodes[{i}]"),
                format!("duplicate node name {}", elide(n)),
            );
        }
    }
    check_settings(ctx, errs);
    for (node, zone) in &lab.zones {
        let at = format!("spec.zones.{node}");
        if !seen.contains(node) {
            errs.at(
                lab_doc,
                &at,
                format!("{} is not one of the Lab's nodes", elide(node)),
            );
        }
        // A label value, and not empty: an empty zone label is no zone.
        if zone.is_empty() {
            errs.at(lab_doc, &at, "zone must not be empty");
        } else if let Err(e) = names::label_value(zone) {
            errs.at(lab_doc, &at, format!("zone {e}"));
        }
    }

    // Address ranges must not overlap, or routing inside the lab is ambiguous.
    let ranges = [
        ("spec.podCIDR", lab.pod_cidr),
        ("spec.serviceCIDR", lab.service_cidr),
        ("spec.nodeNetwork", lab.node_network),
    ];
    for (field, net) in &ranges {
        if net.network() != net.addr() {
            errs.at(
                lab_doc,
                field,
                format!("{net} has host bits set; did you mean {}?", net.trunc()),
            );
        }
    }
    for (i, (fa, a)) in ranges.iter().enumerate() {
        for (fb, b) in &ranges[i + 1..] {
            if a.contains(&b.network()) || b.contains(&a.network()) {
                errs.at(lab_doc, fb, format!("{b} overlaps {fa} {a}"));
            }
        }
    }
    check_load_balancer_pool(ctx, &ranges, errs);
    if lab.node_cidr_mask_size <= lab.pod_cidr.prefix_len() || lab.node_cidr_mask_size > 28 {
        errs.at(
            lab_doc,
            "spec.nodeCIDRMaskSize",
            format!(
                "must be longer than the pod CIDR's /{} and at most 28",
                lab.pod_cidr.prefix_len()
            ),
        );
    }
    let node_port_range = match parse_port_range(&lab.node_port_range) {
        Some(r) => r,
        None => {
            errs.at(
                lab_doc,
                "spec.nodePortRange",
                format!("{:?} is not a range like 30000-32767", lab.node_port_range),
            );
            (30000, 32767)
        }
    };
    if lab.service_cidr.prefix_len() > 29 {
        errs.at(
            lab_doc,
            "spec.serviceCIDR",
            "is too small: use /29 or larger",
        );
    }
    if errs.count() > start {
        return None;
    }

    // Nodes: .1 of the node network is the fabric gateway, nodes from .2,
    // the external client at the last usable address, the second external
    // client (with a load balancer pool) just below it.
    let hosts: Vec<Ipv4Addr> = lab.node_network.hosts().collect();
    let second =
        lab.external && (lab.load_balancer_pool.is_some() || lab.load_balancer_pool_v6.is_some());
    let needed = names.len() + 1 + usize::from(lab.external) + usize::from(second);
    if hosts.len() < needed {
        errs.at(
            lab_doc,
            "spec.nodeNetwork",
            format!(
                "{} has room for {} hosts; the lab needs {needed}",
                lab.node_network,
                hosts.len()
            ),
        );
        return None;
    }
    let subnets: Vec<Ipv4Net> = match lab.pod_cidr.subnets(lab.node_cidr_mask_size) {
        Ok(s) => s.take(names.len()).collect(),
        Err(_) => Vec::new(),
    };
    if subnets.len() < names.len() {
        errs.at(
            lab_doc,
            "spec.podCIDR",
            format!(
                "{} splits into fewer than {} /{} node ranges",
                lab.pod_cidr,
                names.len(),
                lab.node_cidr_mask_size
            ),
        );
        return None;
    }
    let nodes: Vec<NodePlan> = names
        .iter()
        .enumerate()
        .map(|(i, name)| NodePlan {
            name: name.clone(),
            index: i,
            ip: hosts[i + 1],
            pod_cidr: subnets[i],
            gateway: subnets[i]
                .hosts()
                .next()
                .expect("a /28 or larger has hosts"),
            ip6: None,
            pod_cidr6: None,
            gateway6: None,
            zone: lab.zones.get(name).cloned(),
        })
        .collect();
    let fabric_gateway = hosts[0];
    let external_ip = lab.external.then(|| hosts[hosts.len() - 1]);
    let external2_ip = second.then(|| hosts[hosts.len() - 2]);

    check_churn(ctx, errs);
    if errs.count() > start {
        return None;
    }
    let mut pods = derive_pods(ctx, &nodes, errs)?;
    check_services(ctx, &pods, node_port_range, errs, notes);
    check_pod_states(ctx, &pods, errs);
    apply_pod_states(ctx, &mut pods);
    if errs.count() > start {
        return None;
    }
    Some(Derived {
        nodes,
        pods,
        fabric_gateway,
        external_ip,
        external2_ip,
        node_port_range,
    })
}

/// `spec.loadBalancerPool` and `spec.loadBalancerPoolIPv6`: each of its
/// family, every range a network address that holds at least one address to
/// hand out and overlaps none of the lab's ranges of the family. An IPv6
/// pool needs IPv6 in `spec.ipFamilies`.
fn check_load_balancer_pool(ctx: &Context<'_>, ranges: &[(&str, Ipv4Net)], errs: &mut Errs) {
    let v4: Vec<(String, IpNet)> = ranges
        .iter()
        .map(|(f, n)| (f.to_string(), IpNet::V4(*n)))
        .collect();
    check_pool(
        ctx,
        "spec.loadBalancerPool",
        ctx.lab.load_balancer_pool.as_ref(),
        IpFamily::IPv4,
        &v4,
        errs,
    );
    let Some(pool6) = &ctx.lab.load_balancer_pool_v6 else {
        return;
    };
    let Some(v6) = &ctx.stack.v6 else {
        errs.at(
            &ctx.docs[ctx.lab_doc],
            "spec.loadBalancerPoolIPv6",
            format!(
                "is an IPv6 pool, and spec.ipFamilies is {:?}",
                ctx.stack.names()
            ),
        );
        return;
    };
    let v6_ranges: Vec<(String, IpNet)> = [
        ("the IPv6 pod CIDR", v6.pod_cidr),
        ("the IPv6 service CIDR", v6.service_cidr),
        ("spec.nodeNetworkIPv6", v6.node_network),
    ]
    .into_iter()
    .map(|(f, n)| (f.to_string(), IpNet::V6(n)))
    .collect();
    check_pool(
        ctx,
        "spec.loadBalancerPoolIPv6",
        Some(pool6),
        IpFamily::IPv6,
        &v6_ranges,
        errs,
    );
}

fn check_pool(
    ctx: &Context<'_>,
    name: &str,
    pool: Option<&crate::scenario::LoadBalancerPool>,
    family: IpFamily,
    ranges: &[(String, IpNet)],
    errs: &mut Errs,
) {
    let doc = &ctx.docs[ctx.lab_doc];
    let Some(pool) = pool else {
        return;
    };
    let list = matches!(pool, crate::scenario::LoadBalancerPool::Addresses(_));
    let nets = pool.nets();
    if nets.is_empty() {
        errs.at(doc, name, "is empty: give a CIDR or addresses");
    }
    let mut seen = BTreeSet::new();
    for (i, net) in nets.iter().enumerate() {
        let field = if list {
            format!("{name}[{i}]")
        } else {
            name.to_string()
        };
        if IpFamily::of(&net.addr()) != family {
            let other = match family {
                IpFamily::IPv4 => "IPv6 pools go in spec.loadBalancerPoolIPv6",
                IpFamily::IPv6 => "IPv4 pools go in spec.loadBalancerPool",
            };
            errs.at(doc, &field, format!("{net} is not {family}: {other}"));
            continue;
        }
        if net.network() != net.addr() {
            errs.at(
                doc,
                &field,
                format!("{net} has host bits set; did you mean {}?", net.trunc()),
            );
            continue;
        }
        if !list && pool.addresses().next().is_none() {
            errs.at(doc, &field, format!("{net} has no address to hand out"));
        }
        if net.addr().is_loopback() || net.addr().is_multicast() || net.addr().is_unspecified() {
            errs.at(
                doc,
                &field,
                format!("{} is not a unicast address", net.addr()),
            );
        }
        if !seen.insert(net.addr()) {
            errs.at(doc, &field, format!("duplicate address {}", net.addr()));
        }
        for (other, range) in ranges {
            if range.contains(&net.network()) || net.contains(&range.network()) {
                errs.at(doc, &field, format!("{net} overlaps {other} {range}"));
            }
        }
    }
}

fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a > 0 && a <= b).then_some((a, b))
}

/// Probe, balance and agent knobs within ranges that finish: a timeout of
/// years would hang a run without a word.
fn check_settings(ctx: &Context<'_>, errs: &mut Errs) {
    let doc = &ctx.docs[ctx.lab_doc];
    let lab = ctx.lab;
    let int = |v: u64| (v as f64, v.to_string());
    let ranges: [(&str, (f64, String), f64, f64); 7] = [
        (
            "spec.probes.timeoutMs",
            int(lab.probes.timeout_ms),
            1.0,
            60_000.0,
        ),
        (
            "spec.probes.concurrency",
            int(lab.probes.concurrency as u64),
            1.0,
            1024.0,
        ),
        (
            "spec.probes.perTarget",
            int(lab.probes.per_target as u64),
            1.0,
            10_000.0,
        ),
        (
            "spec.balance.connections",
            int(lab.balance.connections as u64),
            1.0,
            1_000_000.0,
        ),
        (
            "spec.balance.minPValue",
            (lab.balance.min_p_value, lab.balance.min_p_value.to_string()),
            0.0,
            1.0,
        ),
        (
            "spec.agent.minSyncPeriodMs",
            int(lab.agent.min_sync_period_ms),
            0.0,
            600_000.0,
        ),
        (
            "spec.agent.syncPeriodMs",
            int(lab.agent.sync_period_ms),
            1.0,
            86_400_000.0,
        ),
    ];
    for (field, (value, shown), lo, hi) in ranges {
        if !(lo..=hi).contains(&value) {
            errs.at(doc, field, format!("{shown} is out of range {lo}-{hi}"));
        }
    }
    for (i, entry) in lab.agent.node_port_addresses.iter().enumerate() {
        if let Err(e) = svclab_backends::nodeport_addresses::parse_entry(entry) {
            errs.at(doc, &format!("spec.agent.nodePortAddresses[{i}]"), e);
        }
    }
    if lab.agent.min_sync_period_ms > lab.agent.sync_period_ms {
        errs.at(
            doc,
            "spec.agent.minSyncPeriodMs",
            "must not be longer than syncPeriodMs (as kube-proxy requires)",
        );
    }
}

fn ns_of(meta: &ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

/// Checks an object's name (with `name_rule`), namespace, labels and
/// annotation keys as the API server does. False when the name or the
/// namespace is bad (the object cannot be identified).
fn check_meta(
    errs: &mut Errs,
    doc: &Document,
    meta: &ObjectMeta,
    name_rule: fn(&str) -> Result<(), String>,
) -> bool {
    let mut ok = true;
    match meta.name.as_deref() {
        None | Some("") => {
            errs.at(doc, "metadata.name", "required");
            ok = false;
        }
        Some(n) => {
            if let Err(e) = name_rule(n) {
                errs.at(doc, "metadata.name", e);
                ok = false;
            }
        }
    }
    if let Some(ns) = meta.namespace.as_deref()
        && let Err(e) = names::dns1123_label(ns)
    {
        errs.at(doc, "metadata.namespace", e);
        ok = false;
    }
    check_labels(errs, doc, "metadata.labels", meta.labels.as_ref());
    let mut size = 0;
    for (k, v) in meta.annotations.iter().flatten() {
        if let Err(e) = names::qualified_name(k) {
            errs.at(doc, &format!("metadata.annotations.{k}"), e);
        }
        size += k.len() + v.len();
    }
    if size > 256 * 1024 {
        errs.at(
            doc,
            "metadata.annotations",
            format!("{size} bytes in all; at most 262144 are allowed"),
        );
    }
    ok
}

/// Label (or selector) keys and values.
fn check_labels(
    errs: &mut Errs,
    doc: &Document,
    path: &str,
    labels: Option<&BTreeMap<String, String>>,
) {
    for (k, v) in labels.into_iter().flatten() {
        let at = format!("{path}.{k}");
        if let Err(e) = names::qualified_name(k) {
            errs.at(doc, &at, format!("key {e}"));
        }
        if let Err(e) = names::label_value(v) {
            errs.at(doc, &at, e);
        }
    }
}

/// The name of pod `ordinal` of Deployment `name`: `<name>-<ordinal>`, or,
/// when that is longer than a DNS label (Deployment names may have 253
/// characters), the name cut short plus a hash of it, as Kubernetes cuts
/// generated pod names to fit.
pub(crate) fn pod_name(name: &str, ordinal: u64) -> String {
    let plain = format!("{name}-{ordinal}");
    if plain.len() <= 63 {
        return plain;
    }
    // FNV-1a: stable across builds, unlike the std hasher.
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let cut = name[..40].trim_end_matches(['-', '.']);
    format!("{cut}-{hash:08x}-{ordinal}")
}

fn parse_protocol(
    errs: &mut Errs,
    doc: &Document,
    path: &str,
    p: Option<&String>,
) -> Option<Protocol> {
    let proto = Protocol::parse_k8s(p.map(String::as_str));
    if proto.is_none() {
        errs.at(
            doc,
            path,
            format!(
                "{:?} is not TCP, UDP or SCTP",
                p.map(String::as_str).unwrap_or("")
            ),
        );
    }
    proto
}

/// Pods from Deployments, spread over nodes, plus one client pod per node.
fn derive_pods(ctx: &Context<'_>, nodes: &[NodePlan], errs: &mut Errs) -> Option<Vec<Pod>> {
    let start = errs.count();
    plan_pod_counts(ctx, nodes, errs)?;
    let node_index: BTreeMap<&str, usize> =
        nodes.iter().map(|n| (n.name.as_str(), n.index)).collect();
    let mut next_ip: Vec<Ipv4Addr> = nodes
        .iter()
        .map(|n| Ipv4Addr::from(u32::from(n.gateway) + 1))
        .collect();
    let mut pods = Vec::new();
    let mut take_ip = |node: usize, errs: &mut Errs, doc: &Document, path: &str| {
        let ip = next_ip[node];
        if !nodes[node].pod_cidr.contains(&ip) || ip == nodes[node].pod_cidr.broadcast() {
            errs.at(
                doc,
                path,
                format!(
                    "node {} has no pod address left in {}",
                    nodes[node].name, nodes[node].pod_cidr
                ),
            );
            return None;
        }
        next_ip[node] = Ipv4Addr::from(u32::from(ip) + 1);
        Some(ip)
    };

    let lab_doc = &ctx.docs[ctx.lab_doc];
    if ctx.lab.client_pods {
        for n in nodes {
            let ip = take_ip(n.index, errs, lab_doc, "spec.clientPods")?;
            pods.push(Pod {
                name: format!("client-{}", n.name),
                namespace: CLIENT_NAMESPACE.into(),
                labels: Labels::from([("svclab.dev/role".into(), "client".into())]),
                node: n.index,
                ip,
                ip6: None,
                ports: Vec::new(),
                ready: true,
                terminating: false,
                active: true,
                deployment: None,
                client: true,
            });
        }
    }

    let mut names = BTreeSet::new();
    for (dep, di) in ctx.deployments {
        let doc = &ctx.docs[*di];
        let name = dep.metadata.name.clone().unwrap_or_default();
        let ns = ns_of(&dep.metadata);
        if !check_meta(errs, doc, &dep.metadata, names::dns1123_subdomain) {
            continue;
        }
        if !names.insert((ns.clone(), name.clone())) {
            errs.at(
                doc,
                "metadata.name",
                format!("duplicate Deployment {ns}/{name}"),
            );
            continue;
        }
        let spec = &dep.spec;
        let replicas = spec.replicas.unwrap_or(1);
        if replicas < 0 {
            errs.at(doc, "spec.replicas", format!("{replicas} is negative"));
            continue;
        }
        check_labels(
            errs,
            doc,
            "spec.selector.matchLabels",
            spec.selector.match_labels.as_ref(),
        );
        check_labels(
            errs,
            doc,
            "spec.template.metadata.labels",
            spec.template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.as_ref()),
        );
        if spec
            .selector
            .match_labels
            .as_ref()
            .is_none_or(BTreeMap::is_empty)
            && spec
                .selector
                .match_expressions
                .as_ref()
                .is_none_or(Vec::is_empty)
        {
            errs.at(
                doc,
                "spec.selector",
                "required: a Deployment needs a selector",
            );
        }
        let labels: Labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        for (k, v) in spec.selector.match_labels.iter().flatten() {
            if labels.get(k) != Some(v) {
                errs.at(
                    doc,
                    "spec.selector.matchLabels",
                    format!("{k}={v} does not match the pod template's labels"),
                );
            }
        }
        let mut ports = Vec::new();
        let pod_spec = spec.template.spec.as_ref();
        for (ci, c) in pod_spec
            .map(|s| s.containers.as_slice())
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let path = format!("spec.template.spec.containers[{ci}].ports[{pi}]");
                if let Some(n) = p.name.as_deref()
                    && let Err(e) = names::iana_svc_name(n)
                {
                    errs.at(doc, &format!("{path}.name"), e);
                }
                let Ok(port) = u16::try_from(p.container_port) else {
                    errs.at(
                        doc,
                        &format!("{path}.containerPort"),
                        format!("{} is out of range 1-65535", p.container_port),
                    );
                    continue;
                };
                if port == 0 {
                    errs.at(
                        doc,
                        &format!("{path}.containerPort"),
                        "0 is out of range 1-65535",
                    );
                    continue;
                }
                let Some(protocol) =
                    parse_protocol(errs, doc, &format!("{path}.protocol"), p.protocol.as_ref())
                else {
                    continue;
                };
                if ports
                    .iter()
                    .any(|q: &PodPort| q.port == port && q.protocol == protocol)
                {
                    errs.at(
                        doc,
                        &format!("{path}.containerPort"),
                        format!("{port}/{protocol} is declared twice"),
                    );
                }
                ports.push(PodPort {
                    name: p.name.clone(),
                    port,
                    protocol,
                });
            }
        }
        // Pinned pods go to one node; the rest spread round-robin.
        let pinned = pod_spec.and_then(|s| {
            s.node_name.clone().or_else(|| {
                s.node_selector
                    .as_ref()
                    .and_then(|sel| sel.get("kubernetes.io/hostname").cloned())
            })
        });
        let pinned_index = match &pinned {
            Some(n) => match node_index.get(n.as_str()) {
                Some(i) => Some(*i),
                None => {
                    errs.at(
                        doc,
                        "spec.template.spec.nodeName",
                        format!("no node named {} in the Lab", elide(n)),
                    );
                    continue;
                }
            },
            None => None,
        };
        let wanted = pods_wanted(ctx, dep);
        for ordinal in 0..wanted {
            let node = pinned_index.unwrap_or(ordinal as usize % nodes.len());
            let ip = take_ip(node, errs, doc, "spec.replicas")?;
            pods.push(Pod {
                name: pod_name(&name, ordinal),
                namespace: ns.clone(),
                labels: labels.clone(),
                node,
                ip,
                ip6: None,
                ports: ports.clone(),
                ready: true,
                terminating: false,
                active: ordinal < replicas as u64,
                deployment: Some(name.clone()),
                client: false,
            });
        }
    }
    (errs.count() == start).then_some(pods)
}

/// Pods the lab makes for a Deployment: its replicas, or more when scale
/// churn may grow it.
fn pods_wanted(ctx: &Context<'_>, dep: &Deployment) -> u64 {
    let name = dep.metadata.name.as_deref().unwrap_or("");
    let ns = ns_of(&dep.metadata);
    let scale_max = ctx
        .lab
        .churn
        .iter()
        .flat_map(|c| &c.scale)
        .filter(|s| s.deployment == name && s.namespace == ns)
        .map(|s| u64::from(s.max))
        .max()
        .unwrap_or(0);
    (dep.spec.replicas.unwrap_or(1).max(0) as u64).max(scale_max)
}

/// Counts the pods per node before any is made: no node may hold more than
/// its bridge takes, nor the lab more than this machine holds.
fn plan_pod_counts(ctx: &Context<'_>, nodes: &[NodePlan], errs: &mut Errs) -> Option<()> {
    let mut per_node = vec![u64::from(ctx.lab.client_pods); nodes.len()];
    let limit = ctx.limits.max_pods as u64;
    for (dep, di) in ctx.deployments {
        let doc = &ctx.docs[*di];
        let wanted = pods_wanted(ctx, dep);
        let pinned = dep.spec.template.spec.as_ref().and_then(|s| {
            s.node_name.clone().or_else(|| {
                s.node_selector
                    .as_ref()
                    .and_then(|sel| sel.get("kubernetes.io/hostname").cloned())
            })
        });
        match pinned.and_then(|p| nodes.iter().position(|n| n.name == p)) {
            Some(i) => per_node[i] += wanted,
            None => {
                let n = nodes.len() as u64;
                for (i, c) in per_node.iter_mut().enumerate() {
                    *c += wanted / n + u64::from((i as u64) < wanted % n);
                }
            }
        }
        let total: u64 = per_node.iter().sum();
        if total > limit {
            errs.at(
                doc,
                "spec.replicas",
                format!(
                    "the lab would run {total} pods by here; this machine holds at most {limit} \
                     ({})",
                    ctx.limits.max_pods_why
                ),
            );
            return None;
        }
        if let Some((i, c)) = per_node
            .iter()
            .enumerate()
            .find(|(_, c)| **c > MAX_PODS_PER_NODE as u64)
        {
            errs.at(
                doc,
                "spec.replicas",
                format!(
                    "node {} would run {c} pods by here; at most {MAX_PODS_PER_NODE} fit on one \
                     node (its cni0 bridge takes at most 1024 ports)",
                    nodes[i].name
                ),
            );
            return None;
        }
    }
    Some(())
}

fn selector_matches(selector: &BTreeMap<String, String>, labels: &Labels) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn check_services(
    ctx: &Context<'_>,
    pods: &[Pod],
    node_ports: (u16, u16),
    errs: &mut Errs,
    notes: &mut Vec<String>,
) {
    let mut names = BTreeSet::new();
    let mut cluster_ips = BTreeMap::new();
    let mut node_port_owner = BTreeMap::new();
    let file = errs.file.clone();
    let mut note = |doc: &Document, path: &str, what: String| {
        let pos = doc.pos(path);
        notes.push(format!("{file}:{}:{}: {what}", pos.line, pos.col));
    };
    for (svc, si) in ctx.services {
        let doc = &ctx.docs[*si];
        let name = svc.metadata.name.clone().unwrap_or_default();
        let ns = ns_of(&svc.metadata);
        if !check_meta(errs, doc, &svc.metadata, names::dns1035_label) {
            continue;
        }
        if !names.insert((ns.clone(), name.clone())) {
            errs.at(
                doc,
                "metadata.name",
                format!("duplicate Service {ns}/{name}"),
            );
            continue;
        }
        let Some(spec) = &svc.spec else {
            errs.at(doc, "spec", "missing");
            continue;
        };
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !matches!(
            ty,
            "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
        ) {
            errs.at(
                doc,
                "spec.type",
                format!(
                    "{} is not ClusterIP, NodePort, LoadBalancer or ExternalName",
                    elide(ty)
                ),
            );
        }
        let external_name = ty == "ExternalName";
        if external_name {
            // A DNS alias: no address, no proxy rules, no endpoints.
            let target = spec.external_name.as_deref().unwrap_or("");
            let target = target.strip_suffix('.').unwrap_or(target);
            if target.is_empty() {
                errs.at(doc, "spec.externalName", "required for type ExternalName");
            } else if let Err(e) = names::dns1123_subdomain(target) {
                errs.at(doc, "spec.externalName", e);
            }
            if spec.cluster_ip.as_deref().is_some_and(|ip| !ip.is_empty())
                || spec.cluster_ips.as_ref().is_some_and(|ips| !ips.is_empty())
            {
                errs.at(
                    doc,
                    "spec.clusterIP",
                    "may not be set for ExternalName Services",
                );
            }
        }
        let family_errs = crate::controlplane::families::check(spec, &ctx.stack.names());
        let families_ok = family_errs.is_empty();
        for e in family_errs {
            errs.at(doc, &e.path, e.message);
        }
        // `clusterIP`, then the other family's `clusterIPs[1]`: each inside
        // its family's service CIDR and nobody else's.
        let asked: Vec<(String, &str)> = match spec.cluster_ips.as_deref() {
            Some(ips) if !ips.is_empty() => ips
                .iter()
                .enumerate()
                .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
                .collect(),
            _ => spec
                .cluster_ip
                .as_deref()
                .map(|ip| vec![("spec.clusterIP".to_string(), ip)])
                .unwrap_or_default(),
        };
        for (at, ip) in asked {
            if external_name || ip.is_empty() || ip == "None" {
                continue;
            }
            let at = if at == "spec.clusterIPs[0]" {
                "spec.clusterIP".to_string()
            } else {
                at
            };
            let cidr = |a: &std::net::IpAddr| -> Option<ipnet::IpNet> {
                match a {
                    std::net::IpAddr::V4(_) if ctx.stack.has(IpFamily::IPv4) => {
                        Some(ctx.lab.service_cidr.into())
                    }
                    std::net::IpAddr::V6(_) => ctx.stack.v6.as_ref().map(|v| v.service_cidr.into()),
                    _ => None,
                }
            };
            match ip.parse::<std::net::IpAddr>() {
                Ok(a) => match cidr(&a) {
                    // Refused above, with the API server's reason.
                    None if !families_ok => {}
                    None => errs.at(
                        doc,
                        &at,
                        format!("{a} is {}, which this lab does not serve", IpFamily::of(&a)),
                    ),
                    Some(net) if !net.contains(&a) => {
                        errs.at(doc, &at, format!("{a} is outside the service CIDR {net}"))
                    }
                    Some(_) => {
                        if let Some(other) = cluster_ips.insert(a, format!("{ns}/{name}")) {
                            errs.at(doc, &at, format!("{a} is already used by Service {other}"));
                        }
                    }
                },
                // Refused above (clusterIPs), or not an address at all.
                Err(_) if at != "spec.clusterIP" => {}
                Err(_) => errs.at(doc, &at, format!("{} is not an IP address", elide(ip))),
            }
        }
        if let Some(p) = spec.external_traffic_policy.as_deref() {
            if !matches!(p, "Cluster" | "Local") {
                errs.at(
                    doc,
                    "spec.externalTrafficPolicy",
                    format!("{p:?} is not Cluster or Local"),
                );
            } else if p == "Local" && ty == "ClusterIP" {
                errs.at(
                    doc,
                    "spec.externalTrafficPolicy",
                    "Local needs type NodePort or LoadBalancer",
                );
            }
        }
        if let Some(p) = spec.internal_traffic_policy.as_deref()
            && !matches!(p, "Cluster" | "Local")
        {
            errs.at(
                doc,
                "spec.internalTrafficPolicy",
                format!("{p:?} is not Cluster or Local"),
            );
        }
        if let Some(td) = spec.traffic_distribution.as_deref()
            && !TRAFFIC_DISTRIBUTIONS.contains(&td)
        {
            errs.at(
                doc,
                "spec.trafficDistribution",
                format!(
                    "{} is not one of {}",
                    elide(td),
                    TRAFFIC_DISTRIBUTIONS.join(", ")
                ),
            );
        }
        if let Some(a) = spec.session_affinity.as_deref()
            && !matches!(a, "None" | "ClientIP")
        {
            errs.at(
                doc,
                "spec.sessionAffinity",
                format!("{a:?} is not None or ClientIP"),
            );
        }
        if let Some(t) = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            && !(1..=86400).contains(&t)
        {
            errs.at(
                doc,
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                format!("{t} is out of range 1-86400"),
            );
        }
        if let Some(hc) = spec.health_check_node_port {
            if !(1..=65535).contains(&hc) {
                errs.at(
                    doc,
                    "spec.healthCheckNodePort",
                    format!("{hc} is out of range 1-65535"),
                );
            } else if ty != "LoadBalancer"
                || spec.external_traffic_policy.as_deref() != Some("Local")
            {
                // As the API server: only those Services get one.
                errs.at(
                    doc,
                    "spec.healthCheckNodePort",
                    "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` \
                     is 'Local'",
                );
            }
        }

        if let Err(v) = crate::controlplane::lb_ip_mode(svc) {
            errs.at(
                doc,
                &format!(
                    "metadata.annotations.{}",
                    crate::controlplane::LB_IP_MODE_ANNOTATION
                ),
                format!("{} is not VIP or Proxy", elide(&v)),
            );
        }
        for (i, r) in spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .enumerate()
        {
            // Either family, as the API server takes them; each family's
            // proxier reads its own.
            if r.trim().parse::<IpNet>().is_err() {
                errs.at(
                    doc,
                    &format!("spec.loadBalancerSourceRanges[{i}]"),
                    format!("{} is not a CIDR", elide(r)),
                );
            }
        }
        check_labels(errs, doc, "spec.selector", spec.selector.as_ref());
        let selector: BTreeMap<String, String> = spec
            .selector
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let selected: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.namespace == ns && !p.client && selector_matches(&selector, &p.labels))
            .collect();
        let label = format!("Service {}/{}", truncate(ns.clone(), MAX_QUOTED), name);
        if external_name {
            note(
                doc,
                "spec.type",
                format!("{label} is ExternalName: a DNS alias, so no proxy rules and no endpoints"),
            );
        } else if !selector.is_empty() && selected.is_empty() {
            let sel: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            note(
                doc,
                "spec.selector",
                format!(
                    "{label}: selector {} matches no pod in namespace {}: it has no endpoints",
                    truncate(sel.join(","), MAX_QUOTED),
                    truncate(ns.clone(), MAX_QUOTED)
                ),
            );
        }

        let ports = spec.ports.as_deref().unwrap_or(&[]);
        if ports.is_empty() && spec.cluster_ip.as_deref() != Some("None") && !external_name {
            errs.at(doc, "spec.ports", "a Service needs at least one port");
        }
        let mut port_names = BTreeSet::new();
        let mut port_keys = BTreeSet::new();
        for (i, p) in ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            if ports.len() > 1 && p.name.as_deref().unwrap_or("").is_empty() {
                errs.at(
                    doc,
                    &format!("{path}.name"),
                    "required when a Service has several ports",
                );
            }
            if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
                if let Err(e) = names::dns1123_label(n) {
                    errs.at(doc, &format!("{path}.name"), e);
                } else if !port_names.insert(n.to_string()) {
                    errs.at(
                        doc,
                        &format!("{path}.name"),
                        format!("duplicate port name {n:?}"),
                    );
                }
            }
            if !(1..=65535).contains(&p.port) {
                errs.at(
                    doc,
                    &format!("{path}.port"),
                    format!("{} is out of range 1-65535", p.port),
                );
            }
            let Some(protocol) =
                parse_protocol(errs, doc, &format!("{path}.protocol"), p.protocol.as_ref())
            else {
                continue;
            };
            if !port_keys.insert((p.port, protocol)) {
                errs.at(
                    doc,
                    &format!("{path}.port"),
                    format!("{}/{protocol} is declared twice", p.port),
                );
            }
            match &p.target_port {
                Some(IntOrString::Int(t)) if !(1..=65535).contains(t) => errs.at(
                    doc,
                    &format!("{path}.targetPort"),
                    format!("{t} is out of range 1-65535"),
                ),
                Some(IntOrString::String(n)) => {
                    if let Err(e) = names::iana_svc_name(n) {
                        errs.at(doc, &format!("{path}.targetPort"), e);
                        continue;
                    }
                    // As the EndpointSlice controller: pods without the
                    // named port are endpoints without this port.
                    let lacking = selected
                        .iter()
                        .filter(|pod| {
                            !pod.ports.iter().any(|pp| {
                                pp.name.as_deref() == Some(n.as_str()) && pp.protocol == protocol
                            })
                        })
                        .count();
                    if lacking > 0 && !external_name {
                        note(
                            doc,
                            &format!("{path}.targetPort"),
                            format!(
                                "{label}: {lacking} of {} selected pod(s) have no {protocol} \
                                 containerPort named {n:?}: their endpoints lack this port",
                                selected.len()
                            ),
                        );
                    }
                }
                _ => {}
            }
            if let Some(np) = p.node_port {
                if matches!(ty, "ClusterIP" | "ExternalName") {
                    errs.at(
                        doc,
                        &format!("{path}.nodePort"),
                        "only NodePort and LoadBalancer Services have node ports",
                    );
                } else if !(i32::from(node_ports.0)..=i32::from(node_ports.1)).contains(&np) {
                    errs.at(
                        doc,
                        &format!("{path}.nodePort"),
                        format!(
                            "{np} is outside the node port range {}-{}",
                            node_ports.0, node_ports.1
                        ),
                    );
                } else if let Some(other) =
                    node_port_owner.insert((np, protocol), format!("{ns}/{name}"))
                {
                    errs.at(
                        doc,
                        &format!("{path}.nodePort"),
                        format!("{np}/{protocol} is already used by Service {other}"),
                    );
                }
            }
        }
    }
}

fn check_pod_states(ctx: &Context<'_>, pods: &[Pod], errs: &mut Errs) {
    let doc = &ctx.docs[ctx.lab_doc];
    let known: BTreeSet<(&str, &str)> = pods
        .iter()
        .filter(|p| !p.client)
        .map(|p| (p.namespace.as_str(), p.name.as_str()))
        .collect();
    for (i, st) in ctx.lab.pods.iter().enumerate() {
        if !known.contains(&(st.namespace.as_str(), st.name.as_str())) {
            errs.at(
                doc,
                &format!("spec.pods[{i}].name"),
                format!(
                    "no pod {}/{} (pods are named <deployment>-<ordinal>)",
                    truncate(st.namespace.clone(), MAX_QUOTED),
                    truncate(st.name.clone(), MAX_QUOTED)
                ),
            );
        }
    }
}

/// `spec.pods`: pods that start not ready or terminating.
fn apply_pod_states(ctx: &Context<'_>, pods: &mut [Pod]) {
    let states: BTreeMap<(&str, &str), (bool, bool)> = ctx
        .lab
        .pods
        .iter()
        .map(|st| {
            (
                (st.namespace.as_str(), st.name.as_str()),
                (st.ready, st.terminating),
            )
        })
        .collect();
    for p in pods.iter_mut().filter(|p| !p.client) {
        if let Some((ready, terminating)) = states.get(&(p.namespace.as_str(), p.name.as_str())) {
            p.ready = *ready;
            p.terminating = *terminating;
        }
    }
}

fn check_churn(ctx: &Context<'_>, errs: &mut Errs) {
    let doc = &ctx.docs[ctx.lab_doc];
    let Some(churn) = &ctx.lab.churn else { return };
    if !(churn.duration_seconds > 0.0 && churn.duration_seconds <= 3600.0) {
        errs.at(
            doc,
            "spec.churn.durationSeconds",
            "must be above 0 and at most 3600",
        );
    }
    for (field, rate) in [
        ("endpointFlapsPerSecond", churn.endpoint_flaps_per_second),
        ("terminatingPerSecond", churn.terminating_per_second),
        (
            "servicesCreatedPerSecond",
            churn.services_created_per_second,
        ),
        (
            "servicesDeletedPerSecond",
            churn.services_deleted_per_second,
        ),
    ] {
        if !(0.0..=10_000.0).contains(&rate) {
            errs.at(
                doc,
                &format!("spec.churn.{field}"),
                format!("{rate} is out of range 0-10000"),
            );
        }
    }
    let d = churn.duration_seconds.clamp(0.0, 3600.0);
    let mut events = d
        * (churn.endpoint_flaps_per_second
            + churn.terminating_per_second
            + churn.services_created_per_second
            + churn.services_deleted_per_second);
    for s in &churn.scale {
        if s.every_seconds > 0.0 {
            events += d / s.every_seconds;
        }
    }
    if events > MAX_CHURN_EVENTS {
        errs.at(
            doc,
            "spec.churn",
            format!(
                "plans {events:.0} changes; at most {MAX_CHURN_EVENTS} in one run (lower the \
                 rates or durationSeconds)"
            ),
        );
    }
    for (i, s) in churn.scale.iter().enumerate() {
        let exists = ctx.deployments.iter().any(|(d, _)| {
            d.metadata.name.as_deref() == Some(s.deployment.as_str())
                && ns_of(&d.metadata) == s.namespace
        });
        if !exists {
            errs.at(
                doc,
                &format!("spec.churn.scale[{i}].deployment"),
                format!("no Deployment {}/{}", s.namespace, s.deployment),
            );
        }
        if s.min > s.max || s.max > 1000 {
            errs.at(
                doc,
                &format!("spec.churn.scale[{i}]"),
                "needs min <= max <= 1000",
            );
        }
        if s.every_seconds <= 0.0 {
            errs.at(
                doc,
                &format!("spec.churn.scale[{i}].everySeconds"),
                "must be above 0",
            );
        }
    }
}
