//! Semantic checks of a scenario and the derived address plan: nodes, pods
//! and their IPs. Nothing here touches the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use svclab_backends::model::Protocol;

use super::yaml::Document;
use super::{CLIENT_NAMESPACE, Errs, LabSpec, Labels, NodePlan, Pod, PodPort};

pub(crate) struct Context<'a> {
    pub docs: &'a [Document],
    pub lab: &'a LabSpec,
    pub lab_doc: usize,
    pub services: &'a [(Service, usize)],
    pub deployments: &'a [(Deployment, usize)],
}

pub(crate) struct Derived {
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<Pod>,
    pub fabric_gateway: Ipv4Addr,
    pub external_ip: Option<Ipv4Addr>,
    pub node_port_range: (u16, u16),
}

const MAX_NODES: usize = 250;

/// Checks the scenario and derives the plan; `None` when errors were found.
pub(crate) fn derive(ctx: &Context<'_>, errs: &mut Errs) -> Option<Derived> {
    let lab_doc = &ctx.docs[ctx.lab_doc];
    let lab = ctx.lab;
    let start = errs.list.len();

    let names = lab.nodes.names();
    if names.is_empty() || names.len() > MAX_NODES {
        errs.at(
            lab_doc,
            "spec.nodes",
            format!("must be 1 to {MAX_NODES} nodes, not {}", names.len()),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, n) in names.iter().enumerate() {
        if !is_dns_label(n) {
            errs.at(
                lab_doc,
                &format!("spec.nodes[{i}]"),
                format!("node name {n:?} is not a DNS label"),
            );
        }
        if !seen.insert(n) {
            errs.at(
                lab_doc,
                &format!("spec.nodes[{i}]"),
                format!("duplicate node name {n:?}"),
            );
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
    if errs.list.len() > start {
        return None;
    }

    // Nodes: .1 of the node network is the fabric gateway, nodes from .2,
    // the external client at the last usable address.
    let hosts: Vec<Ipv4Addr> = lab.node_network.hosts().collect();
    let needed = names.len() + 1 + usize::from(lab.external);
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
        })
        .collect();
    let fabric_gateway = hosts[0];
    let external_ip = lab.external.then(|| hosts[hosts.len() - 1]);

    let mut pods = derive_pods(ctx, &nodes, errs)?;
    check_services(ctx, &pods, node_port_range, errs);
    check_pod_states(ctx, &pods, errs);
    apply_pod_states(ctx, &mut pods);
    check_churn(ctx, errs);
    if errs.list.len() > start {
        return None;
    }
    Some(Derived {
        nodes,
        pods,
        fabric_gateway,
        external_ip,
        node_port_range,
    })
}

fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a > 0 && a <= b).then_some((a, b))
}

/// RFC 1123 label, as Kubernetes checks names.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn ns_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
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
    let start = errs.list.len();
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
        if !is_dns_label(&name) {
            errs.at(doc, "metadata.name", format!("{name:?} is not a DNS label"));
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
                        format!("no node named {n:?} in the Lab"),
                    );
                    continue;
                }
            },
            None => None,
        };
        let scale_max = ctx
            .lab
            .churn
            .iter()
            .flat_map(|c| &c.scale)
            .filter(|s| s.deployment == name && s.namespace == ns)
            .map(|s| s.max as i32)
            .max()
            .unwrap_or(0);
        for ordinal in 0..replicas.max(scale_max) {
            let node = pinned_index.unwrap_or(ordinal as usize % nodes.len());
            let ip = take_ip(node, errs, doc, "spec.replicas")?;
            pods.push(Pod {
                name: format!("{name}-{ordinal}"),
                namespace: ns.clone(),
                labels: labels.clone(),
                node,
                ip,
                ports: ports.clone(),
                ready: true,
                terminating: false,
                active: ordinal < replicas,
                deployment: Some(name.clone()),
                client: false,
            });
        }
    }
    (errs.list.len() == start).then_some(pods)
}

fn selector_matches(selector: &BTreeMap<String, String>, labels: &Labels) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn check_services(ctx: &Context<'_>, pods: &[Pod], node_ports: (u16, u16), errs: &mut Errs) {
    let mut names = BTreeSet::new();
    let mut cluster_ips = BTreeMap::new();
    let mut node_port_owner = BTreeMap::new();
    for (svc, si) in ctx.services {
        let doc = &ctx.docs[*si];
        let name = svc.metadata.name.clone().unwrap_or_default();
        let ns = ns_of(&svc.metadata);
        if !is_dns_label(&name) {
            errs.at(doc, "metadata.name", format!("{name:?} is not a DNS label"));
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
        if !matches!(ty, "ClusterIP" | "NodePort" | "LoadBalancer") {
            errs.at(
                doc,
                "spec.type",
                format!("{ty:?} is not supported: use ClusterIP, NodePort or LoadBalancer"),
            );
        }
        match spec.cluster_ip.as_deref() {
            None | Some("") | Some("None") => {}
            Some(ip) => match ip.parse::<Ipv4Addr>() {
                Ok(a) if !ctx.lab.service_cidr.contains(&a) => errs.at(
                    doc,
                    "spec.clusterIP",
                    format!("{a} is outside the service CIDR {}", ctx.lab.service_cidr),
                ),
                Ok(a) => {
                    if let Some(other) = cluster_ips.insert(a, format!("{ns}/{name}")) {
                        errs.at(
                            doc,
                            "spec.clusterIP",
                            format!("{a} is already used by Service {other}"),
                        );
                    }
                }
                Err(_) => errs.at(
                    doc,
                    "spec.clusterIP",
                    format!("{ip:?} is not an IPv4 address"),
                ),
            },
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
        if let Some(hc) = spec.health_check_node_port
            && !(1..=65535).contains(&hc)
        {
            errs.at(
                doc,
                "spec.healthCheckNodePort",
                format!("{hc} is out of range 1-65535"),
            );
        }

        let selector: BTreeMap<String, String> = spec
            .selector
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let selected: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.namespace == ns && selector_matches(&selector, &p.labels))
            .collect();
        if !selector.is_empty() {
            let matches_template = ctx.deployments.iter().any(|(d, _)| {
                ns_of(&d.metadata) == ns
                    && selector_matches(
                        &selector,
                        &d.spec
                            .template
                            .metadata
                            .as_ref()
                            .and_then(|m| m.labels.clone())
                            .unwrap_or_default()
                            .into_iter()
                            .collect(),
                    )
            });
            if !matches_template {
                let sel: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                errs.at(
                    doc,
                    "spec.selector",
                    format!(
                        "{} matches no Deployment's pods in namespace {ns} (a Service without a \
                         selector has no endpoints, if that is what you want)",
                        sel.join(",")
                    ),
                );
            }
        }

        let ports = spec.ports.as_deref().unwrap_or(&[]);
        if ports.is_empty() && spec.cluster_ip.as_deref() != Some("None") {
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
            if let Some(n) = p.name.as_deref()
                && !port_names.insert(n.to_string())
            {
                errs.at(
                    doc,
                    &format!("{path}.name"),
                    format!("duplicate port name {n:?}"),
                );
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
                    let found = selected.is_empty()
                        || selected.iter().any(|pod| {
                            pod.ports.iter().any(|pp| {
                                pp.name.as_deref() == Some(n.as_str()) && pp.protocol == protocol
                            })
                        });
                    if !found {
                        errs.at(
                            doc,
                            &format!("{path}.targetPort"),
                            format!("no selected pod has a {protocol} containerPort named {n:?}"),
                        );
                    }
                }
                _ => {}
            }
            if let Some(np) = p.node_port {
                if ty == "ClusterIP" {
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
    for (i, st) in ctx.lab.pods.iter().enumerate() {
        if !pods
            .iter()
            .any(|p| p.name == st.name && p.namespace == st.namespace && !p.client)
        {
            errs.at(
                doc,
                &format!("spec.pods[{i}].name"),
                format!(
                    "no pod {}/{} (pods are named <deployment>-<ordinal>)",
                    st.namespace, st.name
                ),
            );
        }
    }
}

/// `spec.pods`: pods that start not ready or terminating.
fn apply_pod_states(ctx: &Context<'_>, pods: &mut [Pod]) {
    for st in &ctx.lab.pods {
        for p in pods
            .iter_mut()
            .filter(|p| p.name == st.name && p.namespace == st.namespace && !p.client)
        {
            p.ready = st.ready;
            p.terminating = st.terminating;
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
